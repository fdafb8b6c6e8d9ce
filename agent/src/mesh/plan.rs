//! The difference between desired and observed state, as a list of actions.
//! Pure: the reconciler dumps the kernel, calls [`plan`], and applies the
//! result; nothing else decides what to write.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::desired::{Desired, DesiredSegment, Underlay};
use crate::addr::MacAddr;
use crate::kernel::fdb::Entry;
use crate::kernel::link::{LinkChange, VxlanInfo};
use crate::registry::Cidr;

/// `IFLA_IFALIAS` of the devices this agent creates: `linkmesh:<segment>`.
pub const ALIAS_PREFIX: &str = "linkmesh:";

/// `IFLA_IFALIAS` of the bridges this agent creates.
pub const BRIDGE_ALIAS: &str = "linkmesh-bridge";

/// The kernel's default VXLAN port when `IFLA_VXLAN_PORT` is absent.
const KERNEL_DEFAULT_PORT: u16 = 8472;

/// A VXLAN device as dumped, with its own entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedDevice {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub master: Option<u32>,
    pub alias: Option<String>,
    pub vxlan: VxlanInfo,
    /// Zero-MAC (head-end replication) destinations.
    pub peers: BTreeSet<IpAddr>,
    /// Permanent unicast forwarding entries.
    pub unicast: BTreeMap<MacAddr, IpAddr>,
    /// Permanent neighbour entries (dumped for `flood: none` devices only).
    pub neighbours: BTreeMap<IpAddr, MacAddr>,
}

impl ObservedDevice {
    /// Created by a linkmesh agent (so it may be deleted when no longer wanted).
    #[must_use]
    pub fn is_ours(&self) -> bool {
        self.alias
            .as_deref()
            .is_some_and(|a| a.starts_with(ALIAS_PREFIX))
    }
}

/// What the kernel has that the plan needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// VXLAN devices by name.
    pub devices: BTreeMap<String, ObservedDevice>,
    /// Names of links that exist but are not VXLAN devices.
    pub other_links: BTreeSet<String>,
    /// Bridges that are wanted or ours, by name.
    pub bridges: BTreeMap<String, ObservedBridge>,
    /// Addresses of the devices overlay addresses go on, by link index.
    pub addresses: BTreeMap<u32, BTreeSet<Cidr>>,
}

/// A bridge as dumped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObservedBridge {
    pub index: u32,
    /// Created by a linkmesh agent (`BRIDGE_ALIAS`).
    pub ours: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create a bridge (up) and mark it ours.
    CreateBridge {
        name: String,
    },
    /// Delete a bridge of ours that no segment wants.
    DeleteBridge {
        index: u32,
        name: String,
    },
    /// Create the device (up), then append all its peers.
    Create {
        segment: DesiredSegment,
    },
    /// Delete and create: a setting the kernel cannot change in place differs.
    Recreate {
        index: u32,
        segment: DesiredSegment,
        reason: String,
    },
    Change {
        index: u32,
        name: String,
        change: LinkChange,
    },
    /// Enslave to `bridge` (after it exists); index 0: look it up.
    Enslave {
        index: u32,
        name: String,
        bridge: String,
    },
    /// Add (or, for unicast and neighbour entries, replace) an entry.
    AddEntry {
        index: u32,
        name: String,
        entry: Entry,
    },
    RemoveEntry {
        index: u32,
        name: String,
        entry: Entry,
    },
    /// Put this host's overlay address on `ifname` (the segment's device,
    /// or the bridge); index 0: look it up when applying.
    AddAddress {
        index: u32,
        ifname: String,
        cidr: Cidr,
    },
    Delete {
        index: u32,
        name: String,
    },
}

/// The plan, and problems that kept parts of it from being made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub problems: Vec<String>,
}

fn recreate_reason(
    want: &DesiredSegment,
    have: &ObservedDevice,
    underlay: &Underlay,
) -> Option<String> {
    let v = &have.vxlan;
    if v.vni != Some(want.vni) {
        return Some(format!("vni {:?} != {}", v.vni, want.vni));
    }
    let port = v.port.unwrap_or(KERNEL_DEFAULT_PORT);
    if port != want.port {
        return Some(format!("port {port} != {}", want.port));
    }
    // Absent means on (the kernel's default).
    let learning = v.learning.unwrap_or(true);
    if learning != want.learning {
        return Some(format!("learning {learning} != {}", want.learning));
    }
    let proxy = v.proxy.unwrap_or(false);
    if proxy != want.proxy {
        return Some(format!("proxy {proxy} != {}", want.proxy));
    }
    if v.link != Some(underlay.ifindex) {
        return Some(format!(
            "underlay device {:?} != {}",
            v.link, underlay.ifindex
        ));
    }
    None
}

/// The entries of a device that stays: add what is missing or differs,
/// remove what is not wanted. Unicast and neighbour entries are managed
/// only on `proxy` (`flood: none`) devices; on the others they are not
/// the mesh's.
fn entry_actions(want: &DesiredSegment, have: &ObservedDevice, actions: &mut Vec<Action>) {
    let add = |entry| Action::AddEntry {
        index: have.index,
        name: want.name.clone(),
        entry,
    };
    let remove = |entry| Action::RemoveEntry {
        index: have.index,
        name: want.name.clone(),
        entry,
    };
    for dst in want.peers.difference(&have.peers) {
        actions.push(add(Entry::Peer(*dst)));
    }
    for dst in have.peers.difference(&want.peers) {
        actions.push(remove(Entry::Peer(*dst)));
    }
    if !want.proxy {
        return;
    }
    for (mac, dst) in &want.unicast {
        if have.unicast.get(mac) != Some(dst) {
            actions.push(add(Entry::Unicast(*mac, *dst)));
        }
    }
    for (mac, dst) in &have.unicast {
        if !want.unicast.contains_key(mac) {
            actions.push(remove(Entry::Unicast(*mac, *dst)));
        }
    }
    for (ip, mac) in &want.neighbours {
        if have.neighbours.get(ip) != Some(mac) {
            actions.push(add(Entry::Neighbour(*ip, *mac)));
        }
    }
    for (ip, mac) in &have.neighbours {
        if !want.neighbours.contains_key(ip) {
            actions.push(remove(Entry::Neighbour(*ip, *mac)));
        }
    }
}

/// This host's overlay addresses that are missing where the segment's L3
/// lives: the bridge, or the device (`device`: its index, `None` when it
/// is about to be created).
fn address_actions(
    want: &DesiredSegment,
    device: Option<u32>,
    observed: &Observed,
    actions: &mut Vec<Action>,
) {
    let (index, ifname) = match &want.bridge {
        Some(b) => (observed.bridges.get(b).map_or(0, |o| o.index), b.clone()),
        None => (device.unwrap_or(0), want.name.clone()),
    };
    let present = observed.addresses.get(&index).filter(|_| index != 0);
    for cidr in &want.addresses {
        if !present.is_some_and(|p| p.contains(cidr)) {
            actions.push(Action::AddAddress {
                index,
                ifname: ifname.clone(),
                cidr: *cidr,
            });
        }
    }
}

/// The wanted bridges that are missing; a link in the way is a problem.
fn bridge_actions(bridges: &BTreeSet<&str>, observed: &Observed, out: &mut Plan) {
    for name in bridges {
        if observed.other_links.contains(*name) {
            out.problems.push(format!(
                "a link named {name} exists and is not a bridge; its segments are left out"
            ));
        } else if !observed.bridges.contains_key(*name) {
            out.actions.push(Action::CreateBridge {
                name: (*name).to_owned(),
            });
        }
    }
}

/// Actions that turn `observed` into `desired`.
#[must_use]
pub fn plan(desired: &Desired, observed: &Observed, underlay: &Underlay) -> Plan {
    let mut out = Plan::default();
    let bridges = desired.bridges();
    bridge_actions(&bridges, observed, &mut out);
    for (name, want) in &desired.segments {
        if let Some(b) = &want.bridge
            && observed.other_links.contains(b)
        {
            continue;
        }
        if observed.other_links.contains(name) {
            out.problems.push(format!(
                "a link named {name} exists and is not a VXLAN device; leaving it alone"
            ));
            continue;
        }
        if let Some(have) = observed.devices.get(name)
            && !have.is_ours()
        {
            out.problems.push(format!(
                "a VXLAN device named {name} exists that linkmesh did not create (no \
                 {ALIAS_PREFIX} alias); leaving it alone"
            ));
            continue;
        }
        // A device that stays; a new one gets its entries when created.
        let kept = match observed.devices.get(name) {
            None => {
                out.actions.push(Action::Create {
                    segment: want.clone(),
                });
                None
            }
            Some(have) => match recreate_reason(want, have, underlay) {
                Some(reason) => {
                    out.actions.push(Action::Recreate {
                        index: have.index,
                        segment: want.clone(),
                        reason,
                    });
                    None
                }
                None => Some(have),
            },
        };
        let Some(have) = kept else {
            if let Some(bridge) = &want.bridge {
                // Its index is known only after creation; the executor
                // resolves it.
                out.actions.push(Action::Enslave {
                    index: 0,
                    name: name.clone(),
                    bridge: bridge.clone(),
                });
            }
            address_actions(want, None, observed, &mut out.actions);
            continue;
        };
        let change = LinkChange {
            mtu: (have.mtu != Some(want.mtu)).then_some(want.mtu),
            mac: (have.mac != Some(want.mac)).then_some(want.mac),
            up: (!have.up).then_some(true),
            master: None,
            local: (have.vxlan.local != Some(underlay.address)).then_some(underlay.address),
            alias: None,
        };
        if change != LinkChange::default() {
            out.actions.push(Action::Change {
                index: have.index,
                name: name.clone(),
                change,
            });
        }
        if let Some(bridge) = &want.bridge {
            let index = observed.bridges.get(bridge).map(|b| b.index);
            if index.is_none() || have.master != index {
                out.actions.push(Action::Enslave {
                    index: have.index,
                    name: name.clone(),
                    bridge: bridge.clone(),
                });
            }
        }
        address_actions(want, Some(have.index), observed, &mut out.actions);
        entry_actions(want, have, &mut out.actions);
    }
    for (name, have) in &observed.devices {
        if have.is_ours() && !desired.segments.contains_key(name) {
            out.actions.push(Action::Delete {
                index: have.index,
                name: name.clone(),
            });
        }
    }
    for (name, have) in &observed.bridges {
        if have.ours && !bridges.contains(name.as_str()) {
            out.actions.push(Action::DeleteBridge {
                index: have.index,
                name: name.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
