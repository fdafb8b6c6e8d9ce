//! A `flood: none` segment device's neighbour (ARP/ND) entries: a peer's
//! overlay address and its device MAC, permanent, so the device's `proxy`
//! answers ARP and neighbour solicitations itself and the host's own stack
//! never asks. Only permanent entries are listed: the ones the kernel
//! resolves or ages are not ours.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::fdb::{PeerOp, dst_attr, is_permanent, mac_and_dst};
use super::{KernelError, Netlink};
use crate::addr::MacAddr;

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The request that adds (or replaces) or removes `ip`'s entry on device
/// `ifindex`, with its flags.
pub(super) fn request(
    op: PeerOp,
    ifindex: u32,
    ip: IpAddr,
    mac: MacAddr,
) -> (RouteNetlinkMessage, u16) {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(ip);
    msg.header.ifindex = ifindex;
    msg.attributes = vec![dst_attr(ip)];
    match op {
        PeerOp::Add => {
            msg.header.state = NeighbourState::Permanent;
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
            (
                RouteNetlinkMessage::NewNeighbour(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
        }
        PeerOp::Remove => (RouteNetlinkMessage::DelNeighbour(msg), 0),
    }
}

impl Netlink {
    /// The permanent neighbour entries of device `ifindex`, both families.
    pub async fn device_neighbours(
        &self,
        ifindex: u32,
    ) -> Result<BTreeMap<IpAddr, MacAddr>, KernelError> {
        let mut out = BTreeMap::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            // With strict checking the device is a filter attribute, not
            // the header's index.
            let mut req = NeighbourMessage::default();
            req.header.family = family;
            req.attributes = vec![NeighbourAttribute::IfIndex(ifindex)];
            let replies = self
                .dump(RouteNetlinkMessage::GetNeighbour(req), &|| {
                    format!("dumping the neighbour entries of ifindex {ifindex}")
                })
                .await?;
            for m in &replies {
                if let RouteNetlinkMessage::NewNeighbour(n) = m
                    && n.header.ifindex == ifindex
                    && is_permanent(n.header.state)
                    && let (Some(mac), Some(ip)) = mac_and_dst(n)
                {
                    out.insert(ip, mac);
                }
            }
        }
        Ok(out)
    }
}
