//! The heartbeat's wire format and the sockets heartbeats leave from.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};

use linkmesh_common::{HEARTBEAT_MAGIC, HEARTBEAT_TOKEN_OFFSET};
use tracing::{debug, warn};

/// The heartbeat wire format version (the byte after the magic): 2 carries
/// the sender's token.
pub(super) const HEARTBEAT_VERSION: u8 = 2;

/// The heartbeat payload: magic, version, three zero bytes, the sender's
/// token (zero until the sender has one), the sender's host name.
#[must_use]
pub fn heartbeat_payload(hostname: &str, token: [u8; 8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(HEARTBEAT_TOKEN_OFFSET + 8 + hostname.len());
    p.extend_from_slice(&HEARTBEAT_MAGIC);
    p.push(HEARTBEAT_VERSION);
    p.resize(HEARTBEAT_TOKEN_OFFSET, 0);
    p.extend_from_slice(&token);
    p.extend_from_slice(hostname.as_bytes());
    p
}

/// Quiet peers (not heard lately) with a socket of their own; more share one.
const QUIET_SOCKETS: usize = 64;

/// The sockets heartbeats leave from. A datagram to a host whose address
/// does not resolve waits in the kernel's ARP queue, charged to the socket
/// that sent it, until resolution fails (about 3 s); a few such hosts fill
/// a socket's send buffer, and from then on every send on it fails with
/// EAGAIN. So only live peers share the main socket, and each quiet peer
/// (crashed, cut off, or not heard yet) gets a socket of its own (up to
/// [`QUIET_SOCKETS`], then a shared one): a dead host's queue only ever
/// blocks heartbeats to itself.
pub(super) struct Senders {
    main: UdpSocket,
    address: IpAddr,
    quiet: BTreeMap<SocketAddr, UdpSocket>,
    overflow: Option<UdpSocket>,
    failures: u64,
}

impl Senders {
    /// Heartbeats from `main` (the heartbeat port) on `address`.
    pub(super) fn new(main: UdpSocket, address: IpAddr) -> Self {
        Self {
            main,
            address,
            quiet: BTreeMap::new(),
            overflow: None,
            failures: 0,
        }
    }

    pub(super) fn send(&mut self, payload: &[u8], targets: &[(SocketAddr, bool)]) {
        // Sockets of peers that are alive again or gone (one pass, not one
        // scan of the targets per socket: this runs every beat).
        let quiet: BTreeSet<SocketAddr> = targets
            .iter()
            .filter(|(_, alive)| !alive)
            .map(|(a, _)| *a)
            .collect();
        self.quiet.retain(|t, _| quiet.contains(t));
        for &(target, alive) in targets {
            let socket = if alive {
                Some(&self.main)
            } else if let Some(s) = self.quiet.get(&target) {
                Some(s)
            } else if self.quiet.len() < QUIET_SOCKETS {
                quiet_socket(self.address)
                    .ok()
                    .map(|s| &*self.quiet.entry(target).or_insert(s))
            } else {
                if self.overflow.is_none() {
                    self.overflow = quiet_socket(self.address).ok();
                }
                self.overflow.as_ref()
            };
            let Some(socket) = socket else { continue };
            if let Err(e) = socket.send_to(payload, target) {
                self.failures += 1;
                if self.failures.is_power_of_two() {
                    debug!(peer = %target, alive, error = %e, failures = self.failures, "sending a heartbeat failed");
                }
            }
        }
    }
}

/// A non-blocking socket on an ephemeral port of `address`.
fn quiet_socket(address: IpAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind((address, 0))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Opens the heartbeat socket on the heartbeat port, so that (with the
/// program detached) heartbeats are not answered with port-unreachables.
/// Falls back to an ephemeral port when the port is taken.
pub(super) fn heartbeat_socket(address: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind((address, port)).or_else(|e| {
        warn!(port, error = %e, "cannot bind the heartbeat port; sending from an ephemeral port");
        UdpSocket::bind((address, 0))
    })?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_starts_with_the_magic_and_carries_the_token() {
        let p = heartbeat_payload("h1", *b"12345678");
        assert_eq!(&p[..4], b"LMHB");
        assert_eq!(p[4], HEARTBEAT_VERSION);
        assert_eq!(&p[5..8], [0; 3]);
        assert_eq!(
            &p[HEARTBEAT_TOKEN_OFFSET..HEARTBEAT_TOKEN_OFFSET + 8],
            b"12345678"
        );
        assert_eq!(&p[16..], b"h1");
    }
}
