//! The difference between desired and observed state, as a list of actions.
//! Pure: the reconciler dumps the kernel, calls [`plan`], and applies the
//! result; nothing else decides what to write.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::desired::{Desired, DesiredSegment, Underlay};
use crate::addr::MacAddr;
use crate::kernel::link::{LinkChange, VxlanInfo};

/// `IFLA_IFALIAS` of the devices this agent creates: `linkmesh:<segment>`.
pub const ALIAS_PREFIX: &str = "linkmesh:";

/// The kernel's default VXLAN port when `IFLA_VXLAN_PORT` is absent.
const KERNEL_DEFAULT_PORT: u16 = 8472;

/// A VXLAN device as dumped, with its own (zero-MAC) peers.
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
    pub peers: BTreeSet<IpAddr>,
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
    /// Index of the configured bridge, if it exists.
    pub bridge: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    CreateBridge {
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
    /// Enslave to the bridge (after it exists).
    Enslave {
        index: u32,
        name: String,
    },
    AddPeer {
        index: u32,
        name: String,
        dst: IpAddr,
    },
    RemovePeer {
        index: u32,
        name: String,
        dst: IpAddr,
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
    if v.link != Some(underlay.ifindex) {
        return Some(format!(
            "underlay device {:?} != {}",
            v.link, underlay.ifindex
        ));
    }
    None
}

/// Actions that turn `observed` into `desired`.
#[must_use]
pub fn plan(
    desired: &Desired,
    observed: &Observed,
    underlay: &Underlay,
    bridge: Option<&str>,
) -> Plan {
    let mut out = Plan::default();
    if let Some(name) = bridge
        && observed.bridge.is_none()
        && !desired.segments.is_empty()
    {
        out.actions.push(Action::CreateBridge {
            name: name.to_owned(),
        });
    }
    for (name, want) in &desired.segments {
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
        let Some(have) = observed.devices.get(name) else {
            out.actions.push(Action::Create {
                segment: want.clone(),
            });
            if bridge.is_some() {
                // Its index is known only after creation; the executor
                // resolves it.
                out.actions.push(Action::Enslave {
                    index: 0,
                    name: name.clone(),
                });
            }
            continue;
        };
        if let Some(reason) = recreate_reason(want, have, underlay) {
            out.actions.push(Action::Recreate {
                index: have.index,
                segment: want.clone(),
                reason,
            });
            if bridge.is_some() {
                out.actions.push(Action::Enslave {
                    index: 0,
                    name: name.clone(),
                });
            }
            continue;
        }
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
        if bridge.is_some() && (observed.bridge.is_none() || have.master != observed.bridge) {
            out.actions.push(Action::Enslave {
                index: have.index,
                name: name.clone(),
            });
        }
        for dst in want.peers.difference(&have.peers) {
            out.actions.push(Action::AddPeer {
                index: have.index,
                name: name.clone(),
                dst: *dst,
            });
        }
        for dst in have.peers.difference(&want.peers) {
            out.actions.push(Action::RemovePeer {
                index: have.index,
                name: name.clone(),
                dst: *dst,
            });
        }
    }
    for (name, have) in &observed.devices {
        if have.is_ours() && !desired.segments.contains_key(name) {
            out.actions.push(Action::Delete {
                index: have.index,
                name: name.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::mesh::desired::device_mac;

    fn underlay() -> Underlay {
        Underlay {
            address: "198.18.0.1".parse().expect("ip"),
            ifindex: 2,
            ifname: "eth0".into(),
            mtu: 1500,
        }
    }

    fn want(name: &str, peers: &[u8]) -> DesiredSegment {
        DesiredSegment {
            name: name.into(),
            vni: 100,
            port: 4789,
            learning: true,
            mtu: 1450,
            mac: device_mac("h1", name),
            peers: peers
                .iter()
                .map(|p| IpAddr::from([198, 18, 0, *p]))
                .collect(),
            netns: None,
        }
    }

    /// The device the kernel would have after applying `want`.
    fn built(want: &DesiredSegment, index: u32) -> ObservedDevice {
        ObservedDevice {
            index,
            name: want.name.clone(),
            mac: Some(want.mac),
            mtu: Some(want.mtu),
            up: true,
            master: None,
            alias: Some(format!("{ALIAS_PREFIX}{}", want.name)),
            vxlan: VxlanInfo {
                vni: Some(want.vni),
                port: Some(want.port),
                learning: Some(want.learning),
                local: Some(underlay().address),
                link: Some(underlay().ifindex),
            },
            peers: want.peers.clone(),
        }
    }

    fn desired_of(segments: &[DesiredSegment]) -> Desired {
        Desired {
            segments: segments
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            problems: vec![],
        }
    }

    fn observed_of(devices: &[ObservedDevice]) -> Observed {
        Observed {
            devices: devices
                .iter()
                .map(|d| (d.name.clone(), d.clone()))
                .collect(),
            ..Observed::default()
        }
    }

    #[test]
    fn in_sync_means_no_actions() {
        let w = want("blue", &[2, 3]);
        let p = plan(
            &desired_of(std::slice::from_ref(&w)),
            &observed_of(&[built(&w, 5)]),
            &underlay(),
            None,
        );
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn missing_device_is_created() {
        let w = want("blue", &[2]);
        let p = plan(
            &desired_of(std::slice::from_ref(&w)),
            &Observed::default(),
            &underlay(),
            None,
        );
        assert_eq!(p.actions, vec![Action::Create { segment: w }]);
    }

    #[test]
    fn vni_port_learning_changes_recreate_mtu_changes_in_place() {
        let w = want("blue", &[2]);
        for (tweak, recreate) in [
            (
                Box::new(|d: &mut ObservedDevice| d.vxlan.vni = Some(7))
                    as Box<dyn Fn(&mut ObservedDevice)>,
                true,
            ),
            (Box::new(|d: &mut ObservedDevice| d.vxlan.port = None), true),
            (
                Box::new(|d: &mut ObservedDevice| d.vxlan.learning = Some(false)),
                true,
            ),
            (Box::new(|d: &mut ObservedDevice| d.mtu = Some(1400)), false),
            (Box::new(|d: &mut ObservedDevice| d.up = false), false),
            (
                Box::new(|d: &mut ObservedDevice| {
                    d.vxlan.local = Some("198.18.0.9".parse().expect("ip"));
                }),
                false,
            ),
        ] {
            let mut have = built(&w, 5);
            tweak(&mut have);
            let p = plan(
                &desired_of(std::slice::from_ref(&w)),
                &observed_of(&[have]),
                &underlay(),
                None,
            );
            assert_eq!(p.actions.len(), 1, "{p:?}");
            assert_eq!(
                matches!(p.actions[0], Action::Recreate { .. }),
                recreate,
                "{p:?}"
            );
        }
    }

    #[test]
    fn foreign_links_are_left_alone_and_only_our_devices_are_deleted() {
        let w = want("blue", &[]);
        let mut observed = observed_of(&[]);
        observed.other_links.insert("blue".into());
        let p = plan(&desired_of(&[w]), &observed, &underlay(), None);
        assert!(p.actions.is_empty());
        assert_eq!(p.problems.len(), 1);

        // A VXLAN device of the segment's name that is not ours: reported,
        // never changed, recreated or given peers, however it differs.
        let w = want("blue", &[1, 2]);
        let mut foreign = built(&want("blue", &[]), 9);
        foreign.alias = None;
        foreign.vxlan.vni = Some(999);
        foreign.mtu = Some(9000);
        let p = plan(
            &desired_of(&[w]),
            &observed_of(&[foreign]),
            &underlay(),
            Some("br-lm"),
        );
        assert_eq!(
            p.actions,
            vec![Action::CreateBridge {
                name: "br-lm".into()
            }]
        );
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);

        let ours = built(&want("old", &[]), 7);
        let mut theirs = built(&want("theirs", &[]), 8);
        theirs.alias = None;
        let p = plan(
            &desired_of(&[]),
            &observed_of(&[ours, theirs]),
            &underlay(),
            None,
        );
        assert_eq!(
            p.actions,
            vec![Action::Delete {
                index: 7,
                name: "old".into()
            }]
        );
    }

    #[test]
    fn bridge_is_created_and_devices_enslaved() {
        let w = want("blue", &[]);
        let p = plan(
            &desired_of(std::slice::from_ref(&w)),
            &observed_of(&[built(&w, 5)]),
            &underlay(),
            Some("br-lm"),
        );
        assert_eq!(
            p.actions,
            vec![
                Action::CreateBridge {
                    name: "br-lm".into()
                },
                Action::Enslave {
                    index: 5,
                    name: "blue".into()
                }
            ]
        );
        let mut observed = observed_of(&[ObservedDevice {
            master: Some(9),
            ..built(&w, 5)
        }]);
        observed.bridge = Some(9);
        assert!(
            plan(&desired_of(&[w]), &observed, &underlay(), Some("br-lm"))
                .actions
                .is_empty()
        );
    }

    /// Applies peer actions to the observed peers, as the kernel would.
    fn apply_peers(mut have: ObservedDevice, actions: &[Action]) -> ObservedDevice {
        for a in actions {
            match a {
                Action::AddPeer { dst, .. } => {
                    have.peers.insert(*dst);
                }
                Action::RemovePeer { dst, .. } => {
                    have.peers.remove(dst);
                }
                other => panic!("unexpected action {other:?}"),
            }
        }
        have
    }

    proptest! {
        /// For any desired and observed peer sets: applying the plan reaches
        /// the desired set, every action is needed (no add of a present peer,
        /// no removal of a wanted one), and a second plan is empty.
        #[test]
        fn peer_plan_converges_minimally(
            want_peers in proptest::collection::btree_set(1u8..40, 0..30),
            have_peers in proptest::collection::btree_set(1u8..40, 0..30),
        ) {
            let want_peers: Vec<u8> = want_peers.into_iter().collect();
            let have_peers: Vec<u8> = have_peers.into_iter().collect();
            let w = want("blue", &want_peers);
            let have = ObservedDevice { peers: want("blue", &have_peers).peers, ..built(&w, 5) };
            let d = desired_of(std::slice::from_ref(&w));
            let p = plan(&d, &observed_of(std::slice::from_ref(&have)), &underlay(), None);
            let sym = w.peers.symmetric_difference(&have.peers).count();
            prop_assert_eq!(p.actions.len(), sym);
            let after = apply_peers(have, &p.actions);
            prop_assert_eq!(&after.peers, &w.peers);
            prop_assert!(plan(&d, &observed_of(&[after]), &underlay(), None).actions.is_empty());
        }
    }
}
