//! HTTPS for the API: a listener that hands axum only connections whose
//! TLS handshake finished.
//!
//! Handshakes run in their own tasks, so a client that connects and says
//! nothing holds up no one; one that fails the handshake (wrong CA, plain
//! HTTP on the TLS port) is logged and counted, never served. Each holds
//! one of the API's connection slots from its TCP accept on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::conns::{Guarded, Peer, Tracked};

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and yields those whose TLS handshake succeeded.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<Tracked<TcpStream>>, Peer)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts handshaking connections of `listener`. `failures` counts the
    /// handshakes that failed or timed out.
    #[must_use]
    pub fn new(
        listener: Guarded,
        config: Arc<rustls::ServerConfig>,
        failures: Arc<AtomicU64>,
    ) -> Self {
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            tx,
            failures,
        ));
        Self { ready, acceptor }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    mut listener: Guarded,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<Tracked<TcpStream>>, Peer)>,
    failures: Arc<AtomicU64>,
) {
    loop {
        let (stream, addr) = listener.next().await;
        let peer = Peer {
            addr,
            conn: Arc::clone(stream.conn()),
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        let failures = Arc::clone(&failures);
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(peer = %peer.addr, error = %e, "API TLS handshake failed");
                }
                Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(peer = %peer.addr, "API TLS handshake timed out");
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<Tracked<TcpStream>>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop never ends on its own; if it was aborted,
            // there is nothing more to serve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Err(std::io::Error::other(
            "a TLS listener has no peer of its own",
        ))
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}
