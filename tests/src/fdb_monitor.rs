//! Neighbour notifications of one VXLAN device, timestamped on arrival by a
//! thread inside its namespace: when each zero-MAC FDB entry (a peer) came
//! and went, as the kernel announced it.

use std::net::IpAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netns;

/// One FDB notification for a zero-MAC entry on the watched device.
#[derive(Clone, Copy, Debug)]
pub struct FdbEvent {
    pub dst: IpAddr,
    pub added: bool,
    pub at: Instant,
}

/// What the monitor thread saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub events: Vec<FdbEvent>,
    /// Times the socket's buffer overflowed (notifications lost).
    pub overruns: u64,
}

/// Neighbour notifications (`RTM_NEWNEIGH`/`RTM_DELNEIGH`) of one device,
/// timestamped on arrival by a thread inside the device's namespace.
pub struct Monitor {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Seen>>,
}

impl Monitor {
    /// Subscribes inside `ns` to the notifications of device `ifindex`.
    #[must_use]
    pub fn start(ns: &str, ifindex: u32) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = netns::spawn_in(ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the monitor's runtime");
            rt.block_on(async move {
                let (mut connection, _handle, mut messages) =
                    rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Neigh])
                        .expect("subscribing to neighbour notifications");
                // ARP for absent peers (heartbeats) shares the group.
                rtnetlink::sys::AsyncSocket::socket_mut(connection.socket_mut())
                    .set_rx_buf_sz(8 << 20)
                    .expect("enlarging the monitor's receive buffer");
                tokio::spawn(connection);
                let _ = ready_tx.send(());
                let mut seen = Seen::default();
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        message = messages.next() => {
                            let Some((message, _)) = message else { break };
                            let at = Instant::now();
                            match message.payload {
                                NetlinkPayload::Overrun(_) => seen.overruns += 1,
                                NetlinkPayload::InnerMessage(m) => {
                                    seen.events.extend(fdb_event(m, ifindex, at));
                                }
                                _ => {}
                            }
                        }
                    }
                }
                seen
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the neighbour monitor subscribed");
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops, and returns what was seen.
    #[must_use]
    pub fn finish(mut self) -> Seen {
        self.stop_and_join().unwrap_or_default()
    }

    fn stop_and_join(&mut self) -> Option<Seen> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let thread = self.thread.take()?;
        match thread.join() {
            Ok(seen) => Some(seen),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // The thread holds the namespace; let it go with the test.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A zero-MAC FDB notification of device `ifindex`, if `m` is one.
fn fdb_event(m: RouteNetlinkMessage, ifindex: u32, at: Instant) -> Option<FdbEvent> {
    let (n, added) = match m {
        RouteNetlinkMessage::NewNeighbour(n) => (n, true),
        RouteNetlinkMessage::DelNeighbour(n) => (n, false),
        _ => return None,
    };
    if n.header.family != AddressFamily::Bridge || n.header.ifindex != ifindex {
        return None;
    }
    let (mac, dst) = linkmesh::kernel::fdb::mac_and_dst(&n);
    if !mac.is_some_and(linkmesh::addr::MacAddr::is_zero) {
        return None;
    }
    Some(FdbEvent {
        dst: dst?,
        added,
        at,
    })
}
