//! Desired state: a pure function of this host's configuration and the
//! verified registry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::addr::MacAddr;
use crate::registry::{Cidr, Flood, RegistryView};

/// The underlay this host sends VXLAN from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub address: IpAddr,
    pub ifindex: u32,
    pub ifname: String,
    pub mtu: u32,
}

impl Underlay {
    /// VXLAN overhead: 50 bytes over IPv4, 70 over IPv6.
    #[must_use]
    pub fn segment_mtu(&self) -> u32 {
        let overhead = if self.address.is_ipv4() { 50 } else { 70 };
        self.mtu.saturating_sub(overhead).max(68)
    }
}

/// This host's mesh configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalConfig {
    pub hostname: String,
    pub underlay: Underlay,
    /// Segments this host joins.
    pub segments: BTreeSet<String>,
    /// Bridge to enslave every segment device to.
    pub bridge: Option<String>,
    /// This host's addresses in its segments (`--overlay-address`).
    pub overlay: BTreeMap<String, BTreeSet<Cidr>>,
}

/// One segment device as it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredSegment {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub learning: bool,
    pub mtu: u32,
    pub mac: MacAddr,
    /// Answer ARP and neighbour solicitations from the device's neighbour
    /// table instead of sending them (`flood: none`).
    pub proxy: bool,
    /// Head-end replication: one zero-MAC entry per peer address.
    pub peers: BTreeSet<IpAddr>,
    /// `flood: none`: one unicast entry per peer, its device MAC to its
    /// underlay address.
    pub unicast: BTreeMap<MacAddr, IpAddr>,
    /// `flood: none`: peers' overlay addresses to their device MACs, for
    /// the device to answer ARP/ND with.
    pub neighbours: BTreeMap<IpAddr, MacAddr>,
    /// This host's own addresses in the segment, put on the device (or the
    /// bridge) and never taken off.
    pub addresses: BTreeSet<Cidr>,
    /// The named network namespace the device lives in (`None`: the host's).
    pub netns: Option<String>,
    /// The bridge the device is enslaved to (created if missing), where
    /// the segment's L3 lives: the segment's own, or the host's
    /// `--bridge`. Never for a device in another namespace.
    pub bridge: Option<String>,
}

impl DesiredSegment {
    /// Forwarding entries the segment programs, of either kind.
    #[must_use]
    pub fn peer_count(&self) -> usize {
        self.peers.len() + self.unicast.len()
    }
}

/// The whole desired state, and what kept parts of the config from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub segments: BTreeMap<String, DesiredSegment>,
    pub problems: Vec<String>,
}

impl Desired {
    /// The bridges the segments are enslaved to.
    #[must_use]
    pub fn bridges(&self) -> BTreeSet<&str> {
        self.segments
            .values()
            .filter_map(|s| s.bridge.as_deref())
            .collect()
    }
}

/// A stable, locally administered unicast MAC for `hostname`'s device in
/// `segment`, so restarts keep it.
#[must_use]
pub fn device_mac(hostname: &str, segment: &str) -> MacAddr {
    let digest = Sha256::new()
        .chain_update(b"linkmesh-mac\0")
        .chain_update(hostname.as_bytes())
        .chain_update(b"\0")
        .chain_update(segment.as_bytes())
        .finalize();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&digest[..6]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    MacAddr(mac)
}

/// Why segment `name` cannot have bridge `bridge` of its own here, if it
/// cannot: a bridge of a segment's own joins no other segment, so it may
/// not be the host's `--bridge`, a segment device, or another segment's.
fn bridge_clash(
    name: &str,
    bridge: &str,
    local: &LocalConfig,
    taken: &BTreeMap<&str, &str>,
) -> Option<String> {
    let why = if local.segments.contains(bridge) {
        format!("it is the name of segment {bridge}'s device")
    } else if local.bridge.as_deref() == Some(bridge) {
        "it is this host's --bridge, which other segments share".to_owned()
    } else if let Some(other) = taken.get(bridge) {
        format!("segment {other} has it already")
    } else {
        return None;
    };
    Some(format!(
        "segment {name} asks for bridge {bridge} of its own, but {why}; the segment is left out"
    ))
}

/// The segments and peers this host should have.
#[must_use]
pub fn desired(local: &LocalConfig, registry: &RegistryView) -> Desired {
    let mut out = Desired::default();
    let mut vnis: BTreeMap<(u32, u16), String> = BTreeMap::new();
    let mut bridges: BTreeMap<&str, &str> = BTreeMap::new();
    for name in &local.segments {
        let Some(spec) = registry.segments.get(name) else {
            out.problems
                .push(format!("segment {name} is not defined in etcd"));
            continue;
        };
        if let Some(other) = vnis.get(&(spec.vni, spec.port)) {
            out.problems.push(format!(
                "segment {name} has vni {} port {}, already used by segment {other}",
                spec.vni, spec.port
            ));
            continue;
        }
        let bridge = match (&spec.netns, &spec.bridge) {
            (Some(_), _) => None,
            (None, Some(own)) => {
                if let Some(problem) = bridge_clash(name, own, local, &bridges) {
                    out.problems.push(problem);
                    continue;
                }
                bridges.insert(own, name);
                Some(own.clone())
            }
            (None, None) => local.bridge.clone(),
        };
        vnis.insert((spec.vni, spec.port), name.clone());
        let addresses = local.overlay.get(name).cloned().unwrap_or_default();
        let members = registry
            .hosts
            .values()
            .filter(|h| h.hostname != local.hostname)
            .filter(|h| h.address.is_ipv4() == local.underlay.address.is_ipv4())
            .filter(|h| h.address != local.underlay.address)
            .filter_map(|h| h.segments.get(name).map(|mac| (h, *mac)));
        let mut segment = DesiredSegment {
            name: name.clone(),
            vni: spec.vni,
            port: spec.port,
            learning: spec.learns(),
            mtu: spec.mtu.unwrap_or_else(|| local.underlay.segment_mtu()),
            mac: device_mac(&local.hostname, name),
            proxy: spec.flood == Flood::None,
            peers: BTreeSet::new(),
            unicast: BTreeMap::new(),
            neighbours: BTreeMap::new(),
            addresses,
            netns: spec.netns.clone(),
            bridge,
        };
        match spec.flood {
            Flood::HeadEnd => segment.peers = members.map(|(h, _)| h.address).collect(),
            Flood::None => {
                let own: BTreeSet<IpAddr> = segment.addresses.iter().map(|c| c.addr).collect();
                let mut owners: BTreeMap<IpAddr, &str> = BTreeMap::new();
                for (host, mac) in members {
                    if !mac.is_unicast() || mac == segment.mac {
                        out.problems.push(format!(
                            "segment {name}: host {} publishes device MAC {mac}, which cannot \
                             be a unicast entry; it is left out",
                            host.hostname
                        ));
                        continue;
                    }
                    if segment.unicast.contains_key(&mac) {
                        out.problems.push(format!(
                            "segment {name}: host {} publishes device MAC {mac}, which another \
                             host has; it is left out",
                            host.hostname
                        ));
                        continue;
                    }
                    segment.unicast.insert(mac, host.address);
                    for ip in host.overlay.get(name).into_iter().flatten() {
                        if own.contains(ip) {
                            out.problems.push(format!(
                                "segment {name}: host {} publishes overlay address {ip}, which \
                                 is this host's; it is left out",
                                host.hostname
                            ));
                        } else if let Some(first) = owners.get(ip) {
                            out.problems.push(format!(
                                "segment {name}: hosts {first} and {} both publish overlay \
                                 address {ip}; {first} keeps it",
                                host.hostname
                            ));
                        } else {
                            owners.insert(*ip, &host.hostname);
                            segment.neighbours.insert(*ip, mac);
                        }
                    }
                }
            }
        }
        out.segments.insert(name.clone(), segment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{HostRecord, SegmentSpec};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn local(segments: &[&str]) -> LocalConfig {
        LocalConfig {
            hostname: "h1".into(),
            underlay: Underlay {
                address: ip("198.18.0.1"),
                ifindex: 2,
                ifname: "eth0".into(),
                mtu: 1500,
            },
            segments: segments.iter().map(|s| (*s).to_owned()).collect(),
            bridge: None,
            overlay: BTreeMap::new(),
        }
    }

    fn host(name: &str, addr: &str, segments: &[&str]) -> (String, HostRecord) {
        (
            name.to_owned(),
            HostRecord {
                hostname: name.into(),
                address: ip(addr),
                segments: segments
                    .iter()
                    .map(|s| ((*s).to_owned(), device_mac(name, s)))
                    .collect(),
                agent_version: "test".into(),
                heartbeat_nonce: None,
                overlay: crate::registry::host::Overlay::default(),
            },
        )
    }

    fn registry() -> RegistryView {
        RegistryView {
            hosts: [
                host("h1", "198.18.0.1", &["blue", "red"]),
                host("h2", "198.18.0.2", &["blue", "red"]),
                host("h3", "198.18.0.3", &["blue"]),
                host("h6", "fd00::6", &["blue"]),
            ]
            .into(),
            segments: [
                ("blue".to_owned(), SegmentSpec::new(100)),
                (
                    "red".to_owned(),
                    SegmentSpec {
                        mtu: Some(1400),
                        ..SegmentSpec::new(200)
                    },
                ),
            ]
            .into(),
        }
    }

    #[test]
    fn peers_are_other_members_of_the_same_family() {
        let d = desired(&local(&["blue", "red"]), &registry());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        let blue = &d.segments["blue"];
        assert_eq!(blue.peers, [ip("198.18.0.2"), ip("198.18.0.3")].into());
        assert_eq!(blue.mtu, 1450);
        assert_eq!(blue.vni, 100);
        assert_eq!(blue.port, 4789);
        let red = &d.segments["red"];
        assert_eq!(red.peers, [ip("198.18.0.2")].into(), "h3 is not in red");
        assert_eq!(red.mtu, 1400);
    }

    #[test]
    fn flood_none_programs_unicast_entries_and_neighbours_and_settles_conflicts() {
        let mut reg = registry();
        reg.segments.insert(
            "big".into(),
            SegmentSpec {
                flood: Flood::None,
                ..SegmentSpec::new(300)
            },
        );
        let overlay = |list: &[&str]| -> crate::registry::host::Overlay {
            [("big".to_owned(), list.iter().map(|a| ip(a)))]
                .into_iter()
                .collect()
        };
        for (name, addr, published) in [
            ("h2", "198.18.0.2", &["198.19.10.2", "198.19.10.99"][..]),
            ("h3", "198.18.0.3", &["198.19.10.3", "198.19.10.99"]),
            ("h4", "198.18.0.4", &["198.19.10.1"]),
            ("h6", "fd00::6", &["198.19.10.6"]),
        ] {
            let (key, mut record) = host(name, addr, &["big"]);
            record.overlay = overlay(published);
            reg.hosts.insert(key, record);
        }
        // h5 forges h2's device MAC; h7 publishes a group MAC.
        let (key, mut h5) = host("h5", "198.18.0.5", &["big"]);
        h5.segments.insert("big".into(), device_mac("h2", "big"));
        reg.hosts.insert(key, h5);
        let (key, mut h7) = host("h7", "198.18.0.7", &["big"]);
        h7.segments
            .insert("big".into(), MacAddr([0x03, 0, 0, 0, 0, 7]));
        reg.hosts.insert(key, h7);

        let mut l = local(&["big"]);
        l.overlay.insert(
            "big".into(),
            ["198.19.10.1/24".parse().expect("cidr")].into(),
        );
        let d = desired(&l, &reg);
        let big = &d.segments["big"];
        assert!(big.proxy && !big.learning);
        assert!(big.peers.is_empty(), "no head-end replication");
        assert_eq!(
            big.unicast,
            [
                (device_mac("h2", "big"), ip("198.18.0.2")),
                (device_mac("h3", "big"), ip("198.18.0.3")),
                (device_mac("h4", "big"), ip("198.18.0.4")),
            ]
            .into()
        );
        assert_eq!(
            big.neighbours,
            [
                (ip("198.19.10.2"), device_mac("h2", "big")),
                (ip("198.19.10.3"), device_mac("h3", "big")),
                (ip("198.19.10.99"), device_mac("h2", "big")),
            ]
            .into(),
            "h2 keeps the address both claim; h4 cannot take this host's"
        );
        assert_eq!(big.addresses.len(), 1);
        assert_eq!(d.problems.len(), 4, "{:#?}", d.problems);
        assert_eq!(big.peer_count(), 3);
    }

    #[test]
    fn undefined_and_clashing_segments_are_reported_not_built() {
        let mut reg = registry();
        reg.segments.insert("green".into(), SegmentSpec::new(100));
        let d = desired(&local(&["blue", "green", "nope"]), &reg);
        assert_eq!(d.segments.keys().collect::<Vec<_>>(), ["blue"]);
        assert_eq!(d.problems.len(), 2, "{:?}", d.problems);
    }

    #[test]
    fn a_segment_gets_its_own_bridge_and_never_shares_it() {
        let own = |bridge: &str, vni: u32| SegmentSpec {
            bridge: Some(bridge.into()),
            ..SegmentSpec::new(vni)
        };
        let mut reg = registry();
        reg.segments.insert("blue".into(), own("lm-blue", 100));
        reg.segments.insert("green".into(), own("lm-blue", 300));
        reg.segments.insert("pink".into(), own("red", 400));
        reg.segments.insert("teal".into(), own("br-host", 500));
        reg.segments.insert(
            "inns".into(),
            SegmentSpec {
                netns: Some("web".into()),
                ..SegmentSpec::new(600)
            },
        );
        let mut l = local(&["blue", "green", "red", "pink", "teal", "inns"]);
        l.bridge = Some("br-host".into());
        let d = desired(&l, &reg);
        assert_eq!(d.segments["blue"].bridge.as_deref(), Some("lm-blue"));
        assert_eq!(
            d.segments["red"].bridge.as_deref(),
            Some("br-host"),
            "a segment without a bridge of its own joins the host's"
        );
        assert_eq!(
            d.segments["inns"].bridge, None,
            "not from another namespace"
        );
        for left_out in ["green", "pink", "teal"] {
            assert!(!d.segments.contains_key(left_out), "{left_out}");
        }
        assert_eq!(d.problems.len(), 3, "{:#?}", d.problems);
        assert!(d.problems.iter().any(|p| p.contains("segment blue has it")));
    }

    #[test]
    fn macs_are_stable_local_unicast_and_distinct() {
        let a = device_mac("h1", "blue");
        assert_eq!(a, device_mac("h1", "blue"));
        assert_ne!(a, device_mac("h1", "red"));
        assert_ne!(a, device_mac("h2", "blue"));
        assert_eq!(a.0[0] & 0x01, 0, "unicast");
        assert_eq!(a.0[0] & 0x02, 0x02, "locally administered");
        assert_ne!(
            device_mac("h1b", "lue"),
            device_mac("h1", "blue"),
            "no ambiguity"
        );
    }

    #[test]
    fn ipv6_underlay_overhead() {
        let mut l = local(&[]);
        l.underlay.address = ip("fd00::1");
        assert_eq!(l.underlay.segment_mtu(), 1430);
    }
}
