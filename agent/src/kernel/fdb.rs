//! VXLAN head-end replication: one all-zero-MAC FDB entry per peer
//! (`NTF_SELF`, permanent, `NDA_DST` = the peer's underlay address).
//!
//! Entries are added with `NLM_F_APPEND`, the flag that lets one zero MAC
//! carry many destinations (rtnetlink's builder cannot send it), and only
//! entries of exactly that shape are ever listed or removed: learned and
//! foreign entries are not ours.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use std::sync::atomic::Ordering;

use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{KernelError, Netlink, batch};

/// One peer change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerOp {
    Add,
    Remove,
}

fn dst_attr(dst: IpAddr) -> NeighbourAttribute {
    NeighbourAttribute::Destination(match dst {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    })
}

fn peer_message(ifindex: u32, dst: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(vec![0; 6]),
        dst_attr(dst),
    ];
    msg
}

/// The request for one peer change, with its flags: `NLM_F_APPEND` lets
/// one zero MAC carry many destinations.
fn peer_request(op: PeerOp, ifindex: u32, dst: IpAddr) -> (RouteNetlinkMessage, u16) {
    let msg = peer_message(ifindex, dst);
    match op {
        PeerOp::Add => (
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_APPEND,
        ),
        PeerOp::Remove => (RouteNetlinkMessage::DelNeighbour(msg), 0),
    }
}

/// `NDA_DST` of a neighbour entry (`AF_BRIDGE` dumps carry it as raw bytes).
#[must_use]
pub fn dst_of(addr: &NeighbourAddress) -> Option<IpAddr> {
    match addr {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(*a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice())
                .ok()
                .map(|o| IpAddr::V4(Ipv4Addr::from(o))),
            16 => <[u8; 16]>::try_from(b.as_slice())
                .ok()
                .map(|o| IpAddr::V6(Ipv6Addr::from(o))),
            _ => None,
        },
        _ => None,
    }
}

/// `NUD_PERMANENT`, alone or with other bits (iproute2 adds `NUD_NOARP`).
#[must_use]
pub fn is_permanent(state: NeighbourState) -> bool {
    const NUD_PERMANENT: u16 = 0x80;
    u16::from(state) & NUD_PERMANENT != 0
}

/// Whether a forwarding entry's MAC is all zeros (head-end replication,
/// the shape of the mesh's peer entries), and its `NDA_DST`.
#[must_use]
pub fn zero_mac_and_dst(m: &NeighbourMessage) -> (bool, Option<IpAddr>) {
    let mut zero_mac = false;
    let mut dst = None;
    for attr in &m.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(mac) => zero_mac = mac.iter().all(|b| *b == 0),
            NeighbourAttribute::Destination(d) => dst = dst_of(d),
            _ => {}
        }
    }
    (zero_mac, dst)
}

/// Whether a dumped entry is one of ours: zero MAC, `NTF_SELF`, permanent.
fn owned_peer(m: &NeighbourMessage) -> Option<IpAddr> {
    if !is_permanent(m.header.state) || !m.header.flags.contains(NeighbourFlags::Own) {
        return None;
    }
    match zero_mac_and_dst(m) {
        (true, dst) => dst,
        (false, _) => None,
    }
}

impl Netlink {
    /// The peers of VXLAN device `ifindex`: destinations of its zero-MAC,
    /// `NTF_SELF`, permanent entries.
    pub async fn vxlan_peers(&self, ifindex: u32) -> Result<BTreeSet<IpAddr>, KernelError> {
        self.counters.fdb_dumps.fetch_add(1, Ordering::Relaxed);
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        req.header.ifindex = ifindex;
        let replies = self
            .dump(RouteNetlinkMessage::GetNeighbour(req), &|| {
                format!("dumping the FDB of ifindex {ifindex}")
            })
            .await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == ifindex => {
                    owned_peer(n)
                }
                _ => None,
            })
            .collect())
    }

    /// Applies many peer changes in batches (see [`super::batch`]); each
    /// counts as one write. Returns one result per change.
    pub async fn change_peers(
        &self,
        ops: Vec<(PeerOp, u32, IpAddr)>,
    ) -> Result<Vec<Result<(), KernelError>>, KernelError> {
        let count = ops.len() as u64;
        let requests: Vec<_> = ops
            .iter()
            .map(|(op, ifindex, dst)| peer_request(*op, *ifindex, *dst))
            .collect();
        let failed = |source| KernelError::Request {
            what: "applying FDB changes".into(),
            source,
        };
        let results = match self.netns() {
            // A pooled blocking thread must never change namespace: use a
            // thread of its own.
            Some(ns) => {
                let ns = ns.to_owned();
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || {
                    let result = super::enter_netns(&ns).and_then(|()| batch::send(requests));
                    let _ = tx.send(result);
                });
                rx.await
                    .map_err(|_| failed(std::io::Error::other("the netns thread ended")))?
            }
            None => tokio::task::spawn_blocking(move || batch::send(requests))
                .await
                .map_err(|e| failed(std::io::Error::other(e.to_string())))?,
        }
        .map_err(failed)?;
        self.counters.writes.fetch_add(count, Ordering::Relaxed);
        Ok(results
            .into_iter()
            .zip(ops)
            .map(|(r, (op, ifindex, dst))| {
                r.map_err(|source| {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    KernelError::Request {
                        what: match op {
                            PeerOp::Add => {
                                format!("adding FDB entry for peer {dst} on ifindex {ifindex}")
                            }
                            PeerOp::Remove => {
                                format!("removing FDB entry for peer {dst} on ifindex {ifindex}")
                            }
                        },
                        source,
                    }
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_with_or_without_noarp() {
        assert!(is_permanent(NeighbourState::Permanent));
        assert!(is_permanent(NeighbourState::Other(0xc0)));
        assert!(!is_permanent(NeighbourState::Reachable));
        assert!(!is_permanent(NeighbourState::Noarp));
    }
}
