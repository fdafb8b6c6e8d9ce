//! Links: VXLAN segment devices and the optional bridge they join.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

use super::{KernelError, Netlink};
use crate::addr::MacAddr;

/// Settings of a VXLAN device as the kernel reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    /// Destination UDP port (the kernel's default, 8472, when absent).
    pub port: Option<u16>,
    pub learning: Option<bool>,
    /// ARP/ND answered from the device's neighbour table.
    pub proxy: Option<bool>,
    pub local: Option<IpAddr>,
    /// The underlay device's index.
    pub link: Option<u32>,
}

/// A link as dumped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// Up, with its link up (`IFF_LOWER_UP`).
    pub carrier: bool,
    pub master: Option<u32>,
    pub alias: Option<String>,
    pub vxlan: Option<VxlanInfo>,
}

/// Administratively up, and the link under it up (`IFF_LOWER_UP`): what
/// can carry a frame.
#[must_use]
pub fn has_carrier(flags: LinkFlags) -> bool {
    flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp)
}

/// A VXLAN device to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub learning: bool,
    pub proxy: bool,
    pub local: IpAddr,
    pub underlay_index: u32,
    pub mtu: u32,
    pub mac: MacAddr,
    /// Written to `IFLA_IFALIAS` right after creation: marks the device as ours.
    pub alias: String,
}

/// Changes to an existing link; `None` leaves a setting alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    pub up: Option<bool>,
    pub master: Option<u32>,
    pub local: Option<IpAddr>,
    /// `IFLA_IFALIAS` (the kernel ignores it on creation, so it is set after).
    pub alias: Option<String>,
}

fn parse_link(m: LinkMessage) -> LinkState {
    let mut link = LinkState {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: None,
        up: m.header.flags.contains(LinkFlags::Up),
        carrier: has_carrier(m.header.flags),
        master: None,
        alias: None,
        vxlan: None,
    };
    for attr in m.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) => {
                link.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(MacAddr);
            }
            LinkAttribute::Mtu(mtu) => link.mtu = Some(mtu),
            LinkAttribute::Controller(i) => link.master = Some(i),
            LinkAttribute::IfAlias(a) => link.alias = Some(a),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            link.vxlan = Some(parse_vxlan(data));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_vxlan(data: Vec<InfoVxlan>) -> VxlanInfo {
    let mut v = VxlanInfo {
        vni: None,
        port: None,
        learning: None,
        proxy: None,
        local: None,
        link: None,
    };
    for d in data {
        match d {
            InfoVxlan::Id(id) => v.vni = Some(id),
            InfoVxlan::Port(p) => v.port = Some(p),
            InfoVxlan::Learning(l) => v.learning = Some(l),
            InfoVxlan::Proxy(p) => v.proxy = Some(p),
            InfoVxlan::Local(a) => v.local = Some(IpAddr::V4(a)),
            InfoVxlan::Local6(a) => v.local = Some(IpAddr::V6(a)),
            InfoVxlan::Link(i) => v.link = Some(i),
            _ => {}
        }
    }
    v
}

/// A request for a new link named `name`, up, of `kind` with `data`;
/// callers add their own attributes.
pub(super) fn new_link_up(name: &str, kind: InfoKind, data: Option<InfoData>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    let mut info = vec![LinkInfo::Kind(kind)];
    info.extend(data.map(LinkInfo::Data));
    msg.attributes = vec![
        LinkAttribute::IfName(name.to_owned()),
        LinkAttribute::LinkInfo(info),
    ];
    msg
}

fn local_attr(local: IpAddr) -> InfoVxlan {
    match local {
        IpAddr::V4(a) => InfoVxlan::Local(a),
        IpAddr::V6(a) => InfoVxlan::Local6(a),
    }
}

impl Netlink {
    /// Every link in the namespace.
    pub async fn links(&self) -> Result<Vec<LinkState>, KernelError> {
        let replies = self
            .dump(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                &|| "dumping links".to_owned(),
            )
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })
            .collect())
    }

    /// The link named `name`, if it exists: one request for that link, not
    /// a dump of them all.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkState>, KernelError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let answer = self
            .get(RouteNetlinkMessage::GetLink(msg), &|| {
                format!("looking up link {name}")
            })
            .await;
        match answer {
            Ok(Some(RouteNetlinkMessage::NewLink(l))) => Ok(Some(parse_link(l))),
            Ok(_) => Ok(None),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a VXLAN device, up, with the given MAC and MTU; with
    /// `target`, inside that network namespace (its underlay stays here).
    pub async fn create_vxlan(
        &self,
        spec: &VxlanSpec,
        target: Option<&std::fs::File>,
    ) -> Result<(), KernelError> {
        let data = InfoData::Vxlan(vec![
            InfoVxlan::Id(spec.vni),
            local_attr(spec.local),
            InfoVxlan::Link(spec.underlay_index),
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(spec.learning),
            InfoVxlan::Proxy(spec.proxy),
        ]);
        let mut msg = new_link_up(&spec.name, InfoKind::Vxlan, Some(data));
        msg.attributes.extend([
            LinkAttribute::Mtu(spec.mtu),
            LinkAttribute::Address(spec.mac.0.to_vec()),
        ]);
        if let Some(file) = target {
            use std::os::fd::AsRawFd;
            msg.attributes
                .push(LinkAttribute::NetNsFd(file.as_raw_fd()));
        }
        self.write(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &|| format!("creating VXLAN device {} (vni {})", spec.name, spec.vni),
        )
        .await
    }

    /// Creates a Linux bridge, up.
    pub async fn create_bridge(&self, name: &str) -> Result<(), KernelError> {
        let msg = new_link_up(name, InfoKind::Bridge, None);
        self.write(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &|| format!("creating bridge {name}"),
        )
        .await
    }

    /// Applies `change` to link `index` (`name` is for messages).
    pub async fn change_link(
        &self,
        index: u32,
        name: &str,
        change: &LinkChange,
    ) -> Result<(), KernelError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(up) = change.up {
            msg.header.change_mask = LinkFlags::Up;
            if up {
                msg.header.flags = LinkFlags::Up;
            }
        }
        if let Some(mtu) = change.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = change.mac {
            msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        if let Some(master) = change.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        if let Some(alias) = &change.alias {
            msg.attributes.push(LinkAttribute::IfAlias(alias.clone()));
        }
        if let Some(local) = change.local {
            msg.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![local_attr(local)])),
            ]));
        }
        self.write(RouteNetlinkMessage::NewLink(msg), 0, &|| {
            format!("changing link {name} ({change:?})")
        })
        .await
    }

    /// Deletes link `index` (`name` is for messages).
    pub async fn delete_link(&self, index: u32, name: &str) -> Result<(), KernelError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.write(RouteNetlinkMessage::DelLink(msg), 0, &|| {
            format!("deleting link {name}")
        })
        .await
    }
}
