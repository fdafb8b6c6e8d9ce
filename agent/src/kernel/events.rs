//! Kernel change notifications (links, neighbours, addresses), so the agent
//! notices a device, an FDB entry or a floating IP's address removed by
//! hand and restores it.

use std::net::IpAddr;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::SocketAddr;
use rtnetlink::MulticastGroup;

use super::KernelError;
use crate::addr::MacAddr;

/// A change that may concern the agent's own objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// A link appeared or changed; `carrier`: up, with its link up.
    LinkChanged {
        index: u32,
        name: Option<String>,
        carrier: bool,
    },
    /// A link was deleted.
    LinkRemoved { index: u32, name: Option<String> },
    /// A bridge/VXLAN forwarding entry of `ifindex` was deleted: its MAC
    /// (all zeros for the head-end replication entries) and, for a VXLAN
    /// device, the remote `dst` it sent to (if any).
    FdbRemoved {
        ifindex: u32,
        mac: Option<MacAddr>,
        dst: Option<IpAddr>,
    },
    /// A neighbour (ARP/ND) entry of `ifindex` was deleted.
    NeighbourRemoved { ifindex: u32, ip: IpAddr },
    /// An address was deleted from link `ifindex`.
    AddressRemoved { ifindex: u32, addr: IpAddr },
}

/// A subscription to link and neighbour notifications.
pub struct KernelEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
}

impl KernelEvents {
    /// Subscribes in the current namespace. Must run inside a tokio runtime.
    pub fn subscribe() -> Result<Self, KernelError> {
        let (connection, _handle, messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link, MulticastGroup::Neigh])
                .map_err(KernelError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { messages })
    }

    /// Subscribes to link and address notifications (for the floating IPs).
    /// Must run inside a tokio runtime.
    pub fn subscribe_addresses() -> Result<Self, KernelError> {
        let (connection, _handle, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])
        .map_err(KernelError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { messages })
    }

    /// The next relevant event; `None` when the subscription ended.
    pub async fn next(&mut self) -> Option<KernelEvent> {
        while let Some((message, _)) = self.messages.next().await {
            if let NetlinkPayload::InnerMessage(m) = message.payload
                && let Some(event) = classify(m)
            {
                return Some(event);
            }
        }
        None
    }
}

fn link_name(attrs: &[LinkAttribute]) -> Option<String> {
    attrs.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn classify(m: RouteNetlinkMessage) -> Option<KernelEvent> {
    match m {
        RouteNetlinkMessage::NewLink(l) => Some(KernelEvent::LinkChanged {
            index: l.header.index,
            name: link_name(&l.attributes),
            carrier: super::link::has_carrier(l.header.flags),
        }),
        RouteNetlinkMessage::DelLink(l) => Some(KernelEvent::LinkRemoved {
            index: l.header.index,
            name: link_name(&l.attributes),
        }),
        RouteNetlinkMessage::DelAddress(a) => {
            let addr = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })?;
            Some(KernelEvent::AddressRemoved {
                ifindex: a.header.index,
                addr,
            })
        }
        RouteNetlinkMessage::DelNeighbour(n) if n.header.family == AddressFamily::Bridge => {
            let (mac, dst) = super::fdb::mac_and_dst(&n);
            Some(KernelEvent::FdbRemoved {
                ifindex: n.header.ifindex,
                mac,
                dst,
            })
        }
        RouteNetlinkMessage::DelNeighbour(n)
            if matches!(n.header.family, AddressFamily::Inet | AddressFamily::Inet6) =>
        {
            let (_, ip) = super::fdb::mac_and_dst(&n);
            Some(KernelEvent::NeighbourRemoved {
                ifindex: n.header.ifindex,
                ip: ip?,
            })
        }
        _ => None,
    }
}
