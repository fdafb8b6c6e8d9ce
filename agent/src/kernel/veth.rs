//! veth pairs: a workload's link to a segment's bridge (`linkmesh-cni`).

use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};

use super::link::new_link_up;
use super::{KernelError, Netlink};

/// A veth pair to create: one end here, enslaved and up; the other in
/// another namespace, down until its addresses are set there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethSpec {
    pub name: String,
    /// `IFLA_IFALIAS` of this end, set right after creation.
    pub alias: String,
    pub mtu: u32,
    /// The bridge this end joins.
    pub master: u32,
    pub peer_name: String,
}

impl Netlink {
    /// Creates the pair in one request, its peer inside the namespace of
    /// `peer_netns` (an open `/proc/PID/ns/net` or `/run/netns/NAME`).
    pub async fn create_veth(
        &self,
        spec: &VethSpec,
        peer_netns: &std::fs::File,
    ) -> Result<(), KernelError> {
        let mut peer = LinkMessage::default();
        peer.attributes = vec![
            LinkAttribute::IfName(spec.peer_name.clone()),
            LinkAttribute::Mtu(spec.mtu),
            LinkAttribute::NetNsFd(peer_netns.as_raw_fd()),
        ];
        let data = InfoData::Veth(InfoVeth::Peer(peer));
        let mut msg = new_link_up(&spec.name, InfoKind::Veth, Some(data));
        msg.attributes.extend([
            LinkAttribute::Mtu(spec.mtu),
            LinkAttribute::Controller(spec.master),
        ]);
        self.write(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &|| {
                format!(
                    "creating veth pair {} / {} (the peer in the workload's namespace)",
                    spec.name, spec.peer_name
                )
            },
        )
        .await
    }
}
