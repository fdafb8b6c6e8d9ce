//! Addresses and routes, read to find the underlay address.

use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
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
