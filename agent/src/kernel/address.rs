//! Addresses and routes, read to find the underlay address.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{KernelError, Netlink};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressState {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// Global scope (not link- or host-local).
    pub global: bool,
}

impl Netlink {
    /// Every address in the namespace.
    pub async fn addresses(&self) -> Result<Vec<AddressState>, KernelError> {
        let replies = self
            .dump(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                &|| "dumping addresses".to_owned(),
            )
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    let addr = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })?;
                    Some(AddressState {
                        ifindex: a.header.index,
                        addr,
                        prefix_len: a.header.prefix_len,
                        global: a.header.scope == AddressScope::Universe,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// The output interface of the IPv4 default route, if there is one.
    pub async fn default_route_ifindex(&self) -> Result<Option<u32>, KernelError> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self
            .dump(RouteNetlinkMessage::GetRoute(req), &|| {
                "dumping routes".to_owned()
            })
            .await?;
        Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) if r.header.destination_prefix_length == 0 => {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                })
            }
            _ => None,
        }))
    }
}

fn address_message(ifindex: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = prefix_len;
    msg.header.index = ifindex;
    msg.header.scope = AddressScope::Universe;
    msg.attributes.push(AddressAttribute::Address(addr));
    if addr.is_ipv4() {
        msg.attributes.push(AddressAttribute::Local(addr));
    } else {
        // A floating IPv6 address must be usable at once, not after DAD.
        msg.header.flags = AddressHeaderFlags::Nodad;
    }
    msg
}

impl Netlink {
    /// Adds `addr/prefix_len` to interface `ifindex` (`ifname` is for
    /// messages). Returns `false` when it was already there.
    pub async fn add_address(
        &self,
        ifindex: u32,
        ifname: &str,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<bool, KernelError> {
        let result = self
            .write(
                RouteNetlinkMessage::NewAddress(address_message(ifindex, addr, prefix_len)),
                NLM_F_CREATE | NLM_F_EXCL,
                &|| format!("adding {addr}/{prefix_len} to {ifname}"),
            )
            .await;
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes `addr/prefix_len` from interface `ifindex`. Returns `false`
    /// when it was not there.
    pub async fn delete_address(
        &self,
        ifindex: u32,
        ifname: &str,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<bool, KernelError> {
        let result = self
            .write(
                RouteNetlinkMessage::DelAddress(address_message(ifindex, addr, prefix_len)),
                0,
                &|| format!("removing {addr}/{prefix_len} from {ifname}"),
            )
            .await;
        match result {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.errno(),
                    Some(libc::EADDRNOTAVAIL | libc::ENODEV | libc::ENOENT)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}
