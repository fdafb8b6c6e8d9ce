//! The plan's unit and property tests.

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
        proxy: false,
        peers: peers
            .iter()
            .map(|p| IpAddr::from([198, 18, 0, *p]))
            .collect(),
        unicast: BTreeMap::new(),
        neighbours: BTreeMap::new(),
        addresses: BTreeSet::new(),
        netns: None,
        bridge: None,
    }
}

fn peer_mac(p: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, p])
}

fn overlay_ip(p: u8) -> IpAddr {
    IpAddr::from([198, 19, 10, p])
}

/// A `flood: none` segment: peers as unicast entries, each with one
/// overlay address.
fn want_unicast(name: &str, peers: &[u8]) -> DesiredSegment {
    DesiredSegment {
        learning: false,
        proxy: true,
        peers: BTreeSet::new(),
        unicast: peers
            .iter()
            .map(|p| (peer_mac(*p), IpAddr::from([198, 18, 0, *p])))
            .collect(),
        neighbours: peers
            .iter()
            .map(|p| (overlay_ip(*p), peer_mac(*p)))
            .collect(),
        ..want(name, &[])
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
            proxy: Some(want.proxy),
            local: Some(underlay().address),
            link: Some(underlay().ifindex),
        },
        peers: want.peers.clone(),
        unicast: want.unicast.clone(),
        neighbours: want.neighbours.clone(),
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
    let p = plan(&desired_of(&[w]), &observed, &underlay());
    assert!(p.actions.is_empty());
    assert_eq!(p.problems.len(), 1);

    // A VXLAN device of the segment's name that is not ours: reported,
    // never changed, recreated or given peers, however it differs.
    let w = bridged(&want("blue", &[1, 2]), "br-lm");
    let mut foreign = built(&want("blue", &[]), 9);
    foreign.alias = None;
    foreign.vxlan.vni = Some(999);
    foreign.mtu = Some(9000);
    let p = plan(&desired_of(&[w]), &observed_of(&[foreign]), &underlay());
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
    let p = plan(&desired_of(&[]), &observed_of(&[ours, theirs]), &underlay());
    assert_eq!(
        p.actions,
        vec![Action::Delete {
            index: 7,
            name: "old".into()
        }]
    );
}

fn bridged(w: &DesiredSegment, bridge: &str) -> DesiredSegment {
    DesiredSegment {
        bridge: Some(bridge.into()),
        ..w.clone()
    }
}

#[test]
fn bridges_are_created_devices_enslaved_and_ours_deleted_when_unwanted() {
    let blue = bridged(&want("blue", &[]), "lm-blue");
    let red = bridged(&want("red", &[]), "lm-red");
    let p = plan(
        &desired_of(&[blue.clone(), red.clone()]),
        &observed_of(&[built(&blue, 5), built(&red, 6)]),
        &underlay(),
    );
    assert_eq!(
        p.actions,
        vec![
            Action::CreateBridge {
                name: "lm-blue".into()
            },
            Action::CreateBridge {
                name: "lm-red".into()
            },
            Action::Enslave {
                index: 5,
                name: "blue".into(),
                bridge: "lm-blue".into(),
            },
            Action::Enslave {
                index: 6,
                name: "red".into(),
                bridge: "lm-red".into(),
            },
        ]
    );
    let bridge = |index, ours| ObservedBridge { index, ours };
    let mut observed = observed_of(&[
        ObservedDevice {
            master: Some(9),
            ..built(&blue, 5)
        },
        ObservedDevice {
            master: Some(10),
            ..built(&red, 6)
        },
    ]);
    observed.bridges.insert("lm-blue".into(), bridge(9, true));
    observed.bridges.insert("lm-red".into(), bridge(10, true));
    assert!(
        plan(
            &desired_of(&[blue.clone(), red.clone()]),
            &observed,
            &underlay()
        )
        .actions
        .is_empty()
    );
    // Red enslaved elsewhere goes back to its own bridge.
    observed.devices.get_mut("red").expect("red").master = Some(9);
    assert_eq!(
        plan(
            &desired_of(&[blue.clone(), red.clone()]),
            &observed,
            &underlay()
        )
        .actions,
        [Action::Enslave {
            index: 6,
            name: "red".into(),
            bridge: "lm-red".into(),
        }]
    );
    // Red leaves: its device and its bridge go; a bridge that is not ours
    // stays.
    observed.bridges.insert("br-ops".into(), bridge(11, false));
    assert_eq!(
        plan(
            &desired_of(std::slice::from_ref(&blue)),
            &observed,
            &underlay()
        )
        .actions,
        [
            Action::Delete {
                index: 6,
                name: "red".into()
            },
            Action::DeleteBridge {
                index: 10,
                name: "lm-red".into()
            },
        ]
    );
    // A link with the bridge's name that is not a bridge: a problem, and
    // the segment is left alone.
    let mut observed = observed_of(&[built(&blue, 5)]);
    observed.other_links.insert("lm-blue".into());
    let p = plan(&desired_of(&[blue]), &observed, &underlay());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.problems.len(), 1);
}

/// Applies entry actions to the observed device, as the kernel would.
fn apply_peers(mut have: ObservedDevice, actions: &[Action]) -> ObservedDevice {
    for a in actions {
        match a {
            Action::AddEntry { entry, .. } => match entry {
                Entry::Peer(dst) => {
                    have.peers.insert(*dst);
                }
                Entry::Unicast(mac, dst) => {
                    have.unicast.insert(*mac, *dst);
                }
                Entry::Neighbour(ip, mac) => {
                    have.neighbours.insert(*ip, *mac);
                }
            },
            Action::RemoveEntry { entry, .. } => match entry {
                Entry::Peer(dst) => {
                    have.peers.remove(dst);
                }
                Entry::Unicast(mac, _) => {
                    have.unicast.remove(mac);
                }
                Entry::Neighbour(ip, _) => {
                    have.neighbours.remove(ip);
                }
            },
            other => panic!("unexpected action {other:?}"),
        }
    }
    have
}

#[test]
fn proxy_differences_recreate_and_flood_none_manages_unicast_and_neighbours() {
    let w = want_unicast("big", &[2, 3]);
    let mut have = built(&w, 5);
    have.vxlan.proxy = None;
    let p = plan(
        &desired_of(std::slice::from_ref(&w)),
        &observed_of(&[have]),
        &underlay(),
    );
    assert!(
        matches!(&p.actions[..], [Action::Recreate { reason, .. }] if reason.contains("proxy")),
        "{p:?}"
    );

    // A moved peer is replaced in place; a stray zero-MAC entry, a gone
    // peer's entries and a changed neighbour are fixed; nothing else.
    let mut have = built(&w, 5);
    have.peers.insert(IpAddr::from([198, 18, 0, 9]));
    have.unicast
        .insert(peer_mac(2), IpAddr::from([198, 18, 0, 22]));
    have.unicast
        .insert(peer_mac(4), IpAddr::from([198, 18, 0, 4]));
    have.neighbours.insert(overlay_ip(3), peer_mac(4));
    have.neighbours.insert(overlay_ip(4), peer_mac(4));
    let d = desired_of(std::slice::from_ref(&w));
    let p = plan(&d, &observed_of(std::slice::from_ref(&have)), &underlay());
    assert_eq!(p.actions.len(), 5, "{p:?}");
    let after = apply_peers(have, &p.actions);
    assert_eq!(after, built(&w, 5));
    assert!(
        plan(&d, &observed_of(&[after]), &underlay())
            .actions
            .is_empty()
    );

    // On a head-end device, unicast and neighbour entries are not ours.
    let w = want("blue", &[2]);
    let mut have = built(&w, 5);
    have.unicast
        .insert(peer_mac(7), IpAddr::from([198, 18, 0, 7]));
    have.neighbours.insert(overlay_ip(7), peer_mac(7));
    assert!(
        plan(&desired_of(&[w]), &observed_of(&[have]), &underlay())
            .actions
            .is_empty()
    );
}

#[test]
fn overlay_addresses_are_added_where_missing_and_never_removed() {
    let cidr: Cidr = "198.19.10.1/24".parse().expect("cidr");
    let mut w = want_unicast("big", &[2]);
    w.addresses.insert(cidr);
    // A new device: the address follows its creation, looked up by name.
    let p = plan(
        &desired_of(std::slice::from_ref(&w)),
        &Observed::default(),
        &underlay(),
    );
    assert_eq!(
        p.actions[1..],
        [Action::AddAddress {
            index: 0,
            ifname: "big".into(),
            cidr
        }]
    );
    // With a bridge, it goes on the bridge.
    let mut observed = observed_of(&[ObservedDevice {
        master: Some(9),
        ..built(&w, 5)
    }]);
    observed.bridges.insert(
        "br-lm".into(),
        ObservedBridge {
            index: 9,
            ours: true,
        },
    );
    let w = bridged(&w, "br-lm");
    let p = plan(
        &desired_of(std::slice::from_ref(&w)),
        &observed,
        &underlay(),
    );
    assert_eq!(
        p.actions,
        [Action::AddAddress {
            index: 9,
            ifname: "br-lm".into(),
            cidr
        }]
    );
    observed.addresses.insert(9, [cidr].into());
    // Another address on it (the operator's) stays; so does ours once
    // it is no longer wanted.
    observed
        .addresses
        .get_mut(&9)
        .expect("bridge")
        .insert("198.19.99.1/24".parse().expect("cidr"));
    for w in [w.clone(), bridged(&want_unicast("big", &[2]), "br-lm")] {
        assert!(
            plan(&desired_of(&[w]), &observed, &underlay())
                .actions
                .is_empty()
        );
    }
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
        let p = plan(&d, &observed_of(std::slice::from_ref(&have)), &underlay());
        let sym = w.peers.symmetric_difference(&have.peers).count();
        prop_assert_eq!(p.actions.len(), sym);
        let after = apply_peers(have, &p.actions);
        prop_assert_eq!(&after.peers, &w.peers);
        prop_assert!(plan(&d, &observed_of(&[after]), &underlay()).actions.is_empty());
    }

    /// The same for `flood: none`: unicast entries (some pointing at the
    /// wrong address) and neighbour entries (some with the wrong MAC)
    /// converge in one plan, with one action per entry that differs.
    #[test]
    fn unicast_plan_converges_minimally(
        want_peers in proptest::collection::btree_set(1u8..40, 0..30),
        have_unicast in proptest::collection::btree_map(1u8..40, 1u8..40, 0..30),
        have_neighbours in proptest::collection::btree_map(1u8..40, 1u8..40, 0..30),
    ) {
        let want_peers: Vec<u8> = want_peers.into_iter().collect();
        let w = want_unicast("big", &want_peers);
        let have = ObservedDevice {
            unicast: have_unicast
                .iter()
                .map(|(m, d)| (peer_mac(*m), IpAddr::from([198, 18, 0, *d])))
                .collect(),
            neighbours: have_neighbours
                .iter()
                .map(|(ip, m)| (overlay_ip(*ip), peer_mac(*m)))
                .collect(),
            ..built(&w, 5)
        };
        let d = desired_of(std::slice::from_ref(&w));
        let p = plan(&d, &observed_of(std::slice::from_ref(&have)), &underlay());
        let differing_unicast = w.unicast.keys().chain(have.unicast.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|m| w.unicast.get(m) != have.unicast.get(m))
            .count();
        let differing_neighbours = w.neighbours.keys().chain(have.neighbours.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|ip| w.neighbours.get(ip) != have.neighbours.get(ip))
            .count();
        prop_assert_eq!(p.actions.len(), differing_unicast + differing_neighbours);
        let after = apply_peers(have, &p.actions);
        prop_assert_eq!(&after, &built(&w, 5));
        prop_assert!(plan(&d, &observed_of(&[after]), &underlay()).actions.is_empty());
    }
}
