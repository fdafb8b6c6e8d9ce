//! A segment device's entries: its forwarding (FDB) entries, one of two
//! shapes, and the neighbour entries `flood: none` answers ARP/ND from.
//!
//! - Head-end replication: one all-zero-MAC entry per peer (`NTF_SELF`,
//!   permanent, `NDA_DST` = the peer's underlay address), added with
//!   `NLM_F_APPEND`, the flag that lets one zero MAC carry many
//!   destinations (rtnetlink's builder cannot send it).
//! - Unicast (`flood: none`): one entry per peer, its device MAC to its
//!   underlay address, written with `NLM_F_REPLACE`.
//!
//! Only permanent `NTF_SELF` entries are ever listed or removed: learned
//! entries are not ours.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use std::sync::atomic::Ordering;

use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{KernelError, Netlink, batch};
use crate::addr::MacAddr;

/// One entry change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerOp {
    Add,
    Remove,
}

/// One entry of a segment device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Head-end replication to a peer's underlay address.
    Peer(IpAddr),
    /// A peer's device MAC, reached at its underlay address.
    Unicast(MacAddr, IpAddr),
    /// A peer's overlay address and its device MAC, in the device's
    /// ARP/ND table.
    Neighbour(IpAddr, MacAddr),
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Peer(dst) => write!(f, "FDB entry for peer {dst}"),
            Self::Unicast(mac, dst) => write!(f, "FDB entry {mac} via {dst}"),
            Self::Neighbour(ip, mac) => write!(f, "neighbour entry {ip} at {mac}"),
        }
    }
}

/// A device's own forwarding entries, as dumped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardingEntries {
    /// Zero-MAC destinations.
    pub peers: BTreeSet<IpAddr>,
    /// Unicast MACs and the destination each is sent to.
    pub unicast: BTreeMap<MacAddr, IpAddr>,
}

pub(super) fn dst_attr(dst: IpAddr) -> NeighbourAttribute {
    NeighbourAttribute::Destination(match dst {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    })
}

fn fdb_message(ifindex: u32, mac: MacAddr, dst: Option<IpAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes = vec![NeighbourAttribute::LinkLayerAddress(mac.0.to_vec())];
    msg.attributes.extend(dst.map(dst_attr));
    msg
}

/// The request for one entry change, with its flags.
fn entry_request(op: PeerOp, ifindex: u32, entry: Entry) -> (RouteNetlinkMessage, u16) {
    match (op, entry) {
        // `NLM_F_APPEND` lets one zero MAC carry many destinations.
        (PeerOp::Add, Entry::Peer(dst)) => (
            RouteNetlinkMessage::NewNeighbour(fdb_message(ifindex, MacAddr::ZERO, Some(dst))),
            NLM_F_CREATE | NLM_F_APPEND,
        ),
        (PeerOp::Remove, Entry::Peer(dst)) => (
            RouteNetlinkMessage::DelNeighbour(fdb_message(ifindex, MacAddr::ZERO, Some(dst))),
            0,
        ),
        (PeerOp::Add, Entry::Unicast(mac, dst)) => (
            RouteNetlinkMessage::NewNeighbour(fdb_message(ifindex, mac, Some(dst))),
            NLM_F_CREATE | NLM_F_REPLACE,
        ),
        // Without a destination the whole entry goes.
        (PeerOp::Remove, Entry::Unicast(mac, _)) => (
            RouteNetlinkMessage::DelNeighbour(fdb_message(ifindex, mac, None)),
            0,
        ),
        (op, Entry::Neighbour(ip, mac)) => super::neigh::request(op, ifindex, ip, mac),
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

/// A neighbour or forwarding entry's MAC (all zeros for head-end
/// replication) and its `NDA_DST`.
#[must_use]
pub fn mac_and_dst(m: &NeighbourMessage) -> (Option<MacAddr>, Option<IpAddr>) {
    let mut mac = None;
    let mut dst = None;
    for attr in &m.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(a) => {
                mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(MacAddr);
            }
            NeighbourAttribute::Destination(d) => dst = dst_of(d),
            _ => {}
        }
    }
    (mac, dst)
}

impl Netlink {
    /// The own entries of VXLAN device `ifindex`: its permanent
    /// `NTF_SELF` forwarding entries with a destination.
    pub async fn vxlan_entries(&self, ifindex: u32) -> Result<ForwardingEntries, KernelError> {
        self.counters.fdb_dumps.fetch_add(1, Ordering::Relaxed);
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        req.header.ifindex = ifindex;
        let replies = self
            .dump(RouteNetlinkMessage::GetNeighbour(req), &|| {
                format!("dumping the FDB of ifindex {ifindex}")
            })
            .await?;
        let mut out = ForwardingEntries::default();
        for m in &replies {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != ifindex
                || !is_permanent(n.header.state)
                || !n.header.flags.contains(NeighbourFlags::Own)
            {
                continue;
            }
            match mac_and_dst(n) {
                (Some(mac), Some(dst)) if mac.is_zero() => {
                    out.peers.insert(dst);
                }
                (Some(mac), Some(dst)) => {
                    out.unicast.insert(mac, dst);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Applies many entry changes in batches (see [`super::batch`]); each
    /// counts as one write. Returns one result per change.
    pub async fn change_entries(
        &self,
        ops: Vec<(PeerOp, u32, Entry)>,
    ) -> Result<Vec<Result<(), KernelError>>, KernelError> {
        let count = ops.len() as u64;
        // Built a chunk at a time on the sending thread.
        let requests = ops
            .clone()
            .into_iter()
            .map(|(op, ifindex, entry)| entry_request(op, ifindex, entry));
        let failed = |source| KernelError::Request {
            what: "applying FDB and neighbour changes".into(),
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
            .map(|(r, (op, ifindex, entry))| {
                r.map_err(|source| {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    KernelError::Request {
                        what: match op {
                            PeerOp::Add => format!("adding {entry} on ifindex {ifindex}"),
                            PeerOp::Remove => format!("removing {entry} on ifindex {ifindex}"),
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
