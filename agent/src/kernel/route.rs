//! Host routes for routed VIPs: `VIP/32` (or `/128`) in the operator's
//! `--route-table`, which the host's BGP daemon exports. Each carries
//! linkmesh's own route protocol number, so a delete never touches a route
//! linkmesh did not add (the kernel matches the protocol on delete), and
//! `ip route show table T proto 200` lists exactly ours.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{KernelError, Netlink};

/// linkmesh's route protocol number (`rtm_protocol`; unassigned in
/// iproute2's `rt_protos`).
pub const ROUTE_PROTOCOL: u8 = 200;

/// The request for the host route of `addr` in `table`, through `ifindex`
/// (0: none, as a delete needs none).
#[must_use]
pub fn host_route(table: u32, ifindex: u32, addr: IpAddr) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
    // Tables above 255 only fit the attribute; the header says "see it".
    msg.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    msg.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    msg.header.scope = RouteScope::Link;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(addr)));
    msg.attributes.push(RouteAttribute::Table(table));
    if ifindex != 0 {
        msg.attributes.push(RouteAttribute::Oif(ifindex));
    }
    msg
}

impl Netlink {
    /// Adds a route to `dst/prefix_len` in the main table, through
    /// `gateway` (or on the link) out of `ifindex`, as `ip route add` would:
    /// what a workload's namespace gets from its IPAM result.
    pub async fn add_route(
        &self,
        dst: IpAddr,
        prefix_len: u8,
        gateway: Option<IpAddr>,
        ifindex: u32,
    ) -> Result<(), KernelError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = match dst {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.destination_prefix_length = prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.header.kind = RouteType::Unicast;
        if prefix_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        }
        if let Some(gw) = gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(ifindex));
        self.write(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &|| match gateway {
                Some(gw) => format!("adding the route to {dst}/{prefix_len} via {gw}"),
                None => format!("adding the route to {dst}/{prefix_len}"),
            },
        )
        .await
    }

    /// Installs (or replaces) the host route of `addr` in `table` through
    /// interface `ifindex`.
    pub async fn add_host_route(
        &self,
        table: u32,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<(), KernelError> {
        self.write(
            RouteNetlinkMessage::NewRoute(host_route(table, ifindex, addr)),
            NLM_F_CREATE | NLM_F_REPLACE,
            &|| format!("adding the route of {addr} to table {table}"),
        )
        .await
    }

    /// Removes linkmesh's host route of `addr` from `table`. Returns
    /// `false` when there was none.
    pub async fn delete_host_route(&self, table: u32, addr: IpAddr) -> Result<bool, KernelError> {
        let result = self
            .write(
                RouteNetlinkMessage::DelRoute(host_route(table, 0, addr)),
                0,
                &|| format!("removing the route of {addr} from table {table}"),
            )
            .await;
        match result {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ESRCH | libc::ENOENT)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The destinations of linkmesh's host routes in `table`.
    pub async fn host_routes(&self, table: u32) -> Result<Vec<IpAddr>, KernelError> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            let replies = self
                .dump(RouteNetlinkMessage::GetRoute(req), &|| {
                    format!("dumping the routes of table {table}")
                })
                .await?;
            out.extend(replies.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => ours(&r, table),
                _ => None,
            }));
        }
        Ok(out)
    }
}

/// The destination of `r` if it is one of linkmesh's host routes in `table`.
fn ours(r: &RouteMessage, table: u32) -> Option<IpAddr> {
    let in_table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if in_table != table || r.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
        return None;
    }
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn a_host_route_is_ours_in_its_table_only() {
        let addr = IpAddr::V4(Ipv4Addr::new(198, 19, 77, 10));
        let route = host_route(100, 7, addr);
        assert_eq!(route.header.destination_prefix_length, 32);
        assert_eq!(route.header.table, 100);
        assert_eq!(ours(&route, 100), Some(addr));
        assert_eq!(ours(&route, 101), None);
        let big = host_route(1000, 7, addr);
        assert_eq!(big.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert_eq!(ours(&big, 1000), Some(addr));
        let mut foreign = route;
        foreign.header.protocol = RouteProtocol::Static;
        assert_eq!(ours(&foreign, 100), None);
        let v6 = host_route(100, 7, "2001:db8::1".parse().expect("v6"));
        assert_eq!(v6.header.destination_prefix_length, 128);
    }
}
