//! The one place the agent touches the kernel's network configuration:
//! rtnetlink requests built from `netlink-packet-route` types and sent
//! through an `rtnetlink` connection. One file per kernel object we own
//! (`link`, `fdb`, `address`), change notifications (`events`), many
//! requests per system call (`batch`), and raw frames out of an interface
//! (`packet`).
//!
//! Every request that changes state is counted, so "a restart with nothing
//! changed makes zero netlink writes" can be checked from outside.

pub mod address;
pub mod batch;
pub mod events;
pub mod fdb;
pub mod link;
pub mod neigh;
pub mod packet;
pub mod route;
pub mod tun;
pub mod veth;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("opening a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: the netlink connection is closed")]
    Closed { what: String },
    #[error("{what}: unexpected netlink reply")]
    Unexpected { what: String },
}

impl KernelError {
    /// The errno of a kernel refusal, if that is what this is.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Counters of requests that change kernel state, and of FDB dumps (each
/// costs one message per entry).
#[derive(Debug, Default)]
pub struct WriteCounters {
    pub writes: AtomicU64,
    pub errors: AtomicU64,
    pub fdb_dumps: AtomicU64,
}

/// An rtnetlink connection (in the namespace it was opened in).
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    pub(crate) counters: Arc<WriteCounters>,
    /// The kernel runs one dump at a time per netlink socket and answers a
    /// second one with EBUSY: the clones of a connection take turns.
    dumps: Arc<tokio::sync::Mutex<()>>,
    /// The named namespace this connection lives in (`None`: the agent's own).
    netns: Option<String>,
}

impl Netlink {
    /// Opens a connection with strict checking (the kernel rejects dump
    /// filters it does not understand instead of ignoring them). Must run
    /// inside a tokio runtime.
    pub fn connect() -> Result<Self, KernelError> {
        let (connection, handle, _) =
            rtnetlink::new_connection_with_strict_check().map_err(KernelError::Connect)?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            counters: Arc::new(WriteCounters::default()),
            dumps: Arc::default(),
            netns: None,
        })
    }

    /// Opens a connection inside the named namespace `/run/netns/<netns>`,
    /// sharing this connection's write counters. The socket is created on a
    /// short-lived thread that entered the namespace; it stays there.
    pub fn connect_in(&self, netns: &str) -> Result<Self, KernelError> {
        let mut nl = Self::connect_at(&netns_path(netns))?;
        nl.counters = self.counters.clone();
        nl.netns = Some(netns.to_owned());
        Ok(nl)
    }

    /// Opens a connection inside the namespace at `path` (a bind mount
    /// under `/run/netns`, or `/proc/PID/ns/net`). Must run inside a tokio
    /// runtime.
    pub fn connect_at(path: &std::path::Path) -> Result<Self, KernelError> {
        let runtime = tokio::runtime::Handle::current();
        let target = path.to_owned();
        let (connection, handle) = std::thread::spawn(move || {
            enter_netns_at(&target)?;
            let _guard = runtime.enter();
            let (connection, handle, _) = rtnetlink::new_connection_with_strict_check()?;
            Ok::<_, std::io::Error>((connection, handle))
        })
        .join()
        .map_err(|_| KernelError::Connect(std::io::Error::other("the netns thread panicked")))?
        .map_err(|source| KernelError::Request {
            what: format!(
                "opening a netlink socket in the namespace at {}",
                path.display()
            ),
            source,
        })?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            counters: Arc::default(),
            dumps: Arc::default(),
            netns: Some(path.display().to_string()),
        })
    }

    /// The named namespace of this connection, if not the agent's own.
    #[must_use]
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// State-changing requests sent so far (successful or not).
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.counters.writes.load(Ordering::Relaxed)
    }

    /// State-changing requests the kernel refused.
    #[must_use]
    pub fn write_errors(&self) -> u64 {
        self.counters.errors.load(Ordering::Relaxed)
    }

    /// FDB dumps requested so far.
    #[must_use]
    pub fn fdb_dumps(&self) -> u64 {
        self.counters.fdb_dumps.load(Ordering::Relaxed)
    }

    fn send(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<impl Stream<Item = NetlinkMessage<RouteNetlinkMessage>> + use<>, KernelError> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        let mut handle = self.handle.clone();
        handle
            .request(request)
            .map_err(|_| KernelError::Closed { what: what() })
    }

    /// Sends a state-changing request and waits for the kernel's ACK.
    async fn write(
        &self,
        message: RouteNetlinkMessage,
        extra_flags: u16,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<(), KernelError> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let result = self.write_inner(message, extra_flags, what).await;
        if result.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn write_inner(
        &self,
        message: RouteNetlinkMessage,
        extra_flags: u16,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<(), KernelError> {
        let mut replies = self.send(message, NLM_F_REQUEST | NLM_F_ACK | extra_flags, what)?;
        while let Some(reply) = replies.next().await {
            if let NetlinkPayload::Error(e) = reply.payload
                && e.code.is_some()
            {
                return Err(KernelError::Request {
                    what: what(),
                    source: e.to_io(),
                });
            }
        }
        Ok(())
    }

    /// Sends a request for one object and returns the kernel's answer.
    async fn get(
        &self,
        message: RouteNetlinkMessage,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<Option<RouteNetlinkMessage>, KernelError> {
        let mut replies = self.send(message, NLM_F_REQUEST, what)?;
        let mut answer = None;
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => answer = Some(m),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(KernelError::Request {
                        what: what(),
                        source: e.to_io(),
                    });
                }
                _ => {}
            }
        }
        Ok(answer)
    }

    /// Sends a dump request and collects the inner messages.
    async fn dump(
        &self,
        message: RouteNetlinkMessage,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<Vec<RouteNetlinkMessage>, KernelError> {
        let _turn = self.dumps.lock().await;
        let mut replies = self.send(message, NLM_F_REQUEST | NLM_F_DUMP, what)?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(KernelError::Request {
                        what: what(),
                        source: e.to_io(),
                    });
                }
                NetlinkPayload::Overrun(_) => {
                    return Err(KernelError::Unexpected { what: what() });
                }
                // Done, the ACK of a dump, and anything newer.
                _ => {}
            }
        }
        Ok(out)
    }
}

/// `/run/netns/<name>`, where `ip netns` keeps named namespaces.
#[must_use]
pub fn netns_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/run/netns").join(name)
}

/// Moves the calling thread into the named namespace (only ever called on
/// threads made for it, never on a runtime worker).
pub(crate) fn enter_netns(name: &str) -> std::io::Result<()> {
    enter_netns_at(&netns_path(name))
}

/// Moves the calling thread into the namespace at `path`.
fn enter_netns_at(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    // SAFETY: setns on a valid namespace fd changes only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
