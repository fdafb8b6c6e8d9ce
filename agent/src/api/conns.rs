//! The API's connections, bounded: every accepted TCP connection holds a
//! slot from `accept` (before any TLS handshake) until it closes, so idle,
//! slow or half-open clients cannot take the agent's file descriptors.
//!
//! - At most [`Limits::max`] connections. At the cap, a new connection
//!   closes the one that has been idle longest (no request in flight), so a
//!   flood of idle connections cannot lock a real client out; if every
//!   connection is busy, the new one is closed.
//! - A connection must start a request (its headers read in full) within
//!   [`Limits::request`] of opening or of its last response, and may sit
//!   idle between requests no longer than [`Limits::idle`]: a client that
//!   trickles its headers (slowloris) is closed all the same.
//!
//! Closing is done from outside the connection's task: [`Tracked`] I/O
//! fails its next read or write once its connection is closed, and the
//! close wakes it.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max: usize,
    /// To read a request's headers, from the connection's opening or its
    /// last response.
    pub request: Duration,
    /// Idle between requests (keep-alive).
    pub idle: Duration,
}

impl Limits {
    /// The agent's: 512 connections (fewer if the process may not open
    /// four times as many files), 10 s to send a request, 60 s idle.
    #[must_use]
    pub fn for_process() -> Self {
        Self {
            max: 512
                .min(usize::try_from(raise_nofile() / 4).unwrap_or(usize::MAX))
                .max(16),
            request: Duration::from_secs(10),
            idle: Duration::from_mins(1),
        }
    }
}

/// Raises the soft open-files limit to the hard one; returns the soft
/// limit in force.
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to
        // the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}

/// One connection's state, shared by its I/O, the request middleware and
/// the table.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    closed: AtomicBool,
    waker: AtomicWaker,
    /// Requests in flight.
    busy: AtomicUsize,
    /// When it opened or last finished a request.
    since: Mutex<Instant>,
    /// Whether it finished a request (then `idle` applies, else `request`).
    served: AtomicBool,
}

impl Conn {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// A request's headers were read: it is being served until the guard
    /// is dropped (its response on its way, or the request abandoned).
    #[must_use]
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.begin();
        Busy(Arc::clone(self))
    }

    fn begin(&self) {
        self.busy.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        self.served.store(true, Ordering::Relaxed);
        *self
            .since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }

    fn idle_since(&self) -> Option<Instant> {
        (self.busy.load(Ordering::Acquire) == 0).then(|| {
            *self
                .since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        })
    }
}

/// A request in flight on a connection (see [`Conn::busy`]).
#[derive(Debug)]
pub struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Counts, for `GET /metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub open: AtomicUsize,
    /// Closed to make room at the cap, or refused with every slot busy.
    pub evicted: AtomicU64,
    /// Closed for sending no request in time, or idling too long.
    pub timed_out: AtomicU64,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    open: BTreeMap<u64, Arc<Conn>>,
}

/// The connection table.
#[derive(Clone, Debug)]
pub struct Conns {
    table: Arc<Mutex<Table>>,
    limits: Limits,
    pub stats: Arc<ConnStats>,
}

impl Conns {
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            table: Arc::default(),
            limits,
            stats: Arc::default(),
        }
    }

    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a new connection; at the cap, the longest-idle one is
    /// closed for it (`None`: every connection is busy).
    fn admit(&self) -> Option<Arc<Conn>> {
        let mut t = self.table();
        if t.open.len() >= self.limits.max {
            let victim = t
                .open
                .values()
                .filter_map(|c| c.idle_since().map(|s| (s, c.id)))
                .min()
                .map(|(_, id)| id);
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            let victim = t.open.remove(&victim?)?;
            victim.close();
        }
        t.next += 1;
        let conn = Arc::new(Conn {
            id: t.next,
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            busy: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
            served: AtomicBool::new(false),
        });
        t.open.insert(conn.id, Arc::clone(&conn));
        self.stats.open.store(t.open.len(), Ordering::Relaxed);
        Some(conn)
    }

    fn release(&self, id: u64) {
        let mut t = self.table();
        t.open.remove(&id);
        self.stats.open.store(t.open.len(), Ordering::Relaxed);
    }

    /// Closes the connections past their time; returns how many.
    fn reap(&self, now: Instant) -> usize {
        let mut t = self.table();
        let late: Vec<u64> = t
            .open
            .values()
            .filter(|c| {
                let limit = if c.served.load(Ordering::Relaxed) {
                    self.limits.idle
                } else {
                    self.limits.request
                };
                c.idle_since()
                    .is_some_and(|s| now.duration_since(s) > limit)
            })
            .map(|c| c.id)
            .collect();
        for id in &late {
            if let Some(c) = t.open.remove(id) {
                c.close();
            }
        }
        self.stats.open.store(t.open.len(), Ordering::Relaxed);
        self.stats
            .timed_out
            .fetch_add(late.len() as u64, Ordering::Relaxed);
        late.len()
    }

    /// Closes late connections, every quarter second, for as long as the
    /// table lives elsewhere.
    pub async fn reaper(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            if Arc::strong_count(&self.table) == 1 {
                return;
            }
            self.reap(Instant::now());
        }
    }

    /// Takes a slot for `stream`, or closes it.
    pub fn track(&self, stream: TcpStream) -> Option<Tracked<TcpStream>> {
        let conn = self.admit()?;
        Some(Tracked {
            io: stream,
            conn,
            conns: self.clone(),
        })
    }
}

/// A peer's address and its connection's state: what the API's handlers
/// see as the connection info.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub conn: Arc<Conn>,
}

/// I/O that holds a slot, and fails once its connection is closed.
#[derive(Debug)]
pub struct Tracked<IO> {
    io: IO,
    conn: Arc<Conn>,
    conns: Conns,
}

impl<IO> Tracked<IO> {
    #[must_use]
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    fn check(&self, cx: &Context<'_>) -> Result<(), io::Error> {
        self.conn.waker.register(cx.waker());
        if self.conn.closed.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the API's connection limits",
            ));
        }
        Ok(())
    }
}

impl<IO> Drop for Tracked<IO> {
    fn drop(&mut self) {
        self.conns.release(self.conn.id);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Plain TCP, tracked: what the API serves HTTP on (and TLS on top of).
pub struct Guarded {
    pub tcp: TcpListener,
    pub conns: Conns,
}

impl Guarded {
    /// The next connection that gets a slot.
    pub async fn next(&mut self) -> (Tracked<TcpStream>, SocketAddr) {
        loop {
            match self.tcp.accept().await {
                Ok((stream, addr)) => {
                    if let Some(tracked) = self.conns.track(stream) {
                        return (tracked, addr);
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum does.
                    tracing::warn!(error = %e, "API accept failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Guarded>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Guarded>) -> Self {
        stream.remote_addr().clone()
    }
}

impl axum::serve::Listener for Guarded {
    type Io = Tracked<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.next().await;
        let conn = Arc::clone(io.conn());
        (io, Peer { addr, conn })
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Err(io::Error::other(
            "a tracked listener has no peer of its own",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(max: usize) -> Conns {
        Conns::new(Limits {
            max,
            request: Duration::from_secs(10),
            idle: Duration::from_mins(1),
        })
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let c = conns(2);
        let a = c.admit().expect("a slot");
        let b = c.admit().expect("a slot");
        b.begin();
        // Full: the idle one (a) goes, the busy one (b) stays.
        let d = c.admit().expect("room made");
        assert!(a.closed.load(Ordering::Acquire));
        assert!(!b.closed.load(Ordering::Acquire));
        d.begin();
        // Every connection busy: the newcomer is refused.
        assert!(c.admit().is_none());
        assert_eq!(c.stats.evicted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn silent_and_idle_connections_are_closed_in_time() {
        let c = conns(10);
        let silent = c.admit().expect("a slot");
        let served = c.admit().expect("a slot");
        served.begin();
        served.end();
        let working = c.admit().expect("a slot");
        working.begin();
        let start = Instant::now();
        // No request within 10 s: closed. Served then idle 11 s: kept.
        assert_eq!(c.reap(start + Duration::from_secs(11)), 1);
        assert!(silent.closed.load(Ordering::Acquire));
        assert!(!served.closed.load(Ordering::Acquire));
        assert_eq!(c.reap(start + Duration::from_secs(61)), 1);
        assert!(served.closed.load(Ordering::Acquire));
        // A request in flight is never cut.
        assert!(!working.closed.load(Ordering::Acquire));
        assert_eq!(c.stats.timed_out.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn closed_connections_fail_their_io_and_free_their_slot() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let c = conns(1);
        let mut guarded = Guarded {
            tcp: listener,
            conns: c.clone(),
        };
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (mut io, _) = guarded.next().await;
        let conn = Arc::clone(io.conn());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            io.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        c.reap(Instant::now() + Duration::from_secs(11));
        let read = reader.await.expect("joined");
        assert!(read.is_err(), "{read:?}");
        assert!(conn.closed.load(Ordering::Acquire));
        assert_eq!(c.stats.open.load(Ordering::Relaxed), 0, "the slot is free");
    }
}
