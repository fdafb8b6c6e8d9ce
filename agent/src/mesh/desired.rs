//! Desired state: a pure function of this host's configuration and the
//! verified registry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::addr::MacAddr;
use crate::registry::RegistryView;

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
    pub peers: BTreeSet<IpAddr>,
    /// The named network namespace the device lives in (`None`: the host's).
    pub netns: Option<String>,
}

/// The whole desired state, and what kept parts of the config from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub segments: BTreeMap<String, DesiredSegment>,
    pub problems: Vec<String>,
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

/// The segments and peers this host should have.
#[must_use]
pub fn desired(local: &LocalConfig, registry: &RegistryView) -> Desired {
    let mut out = Desired::default();
    let mut vnis: BTreeMap<(u32, u16), String> = BTreeMap::new();
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
        vnis.insert((spec.vni, spec.port), name.clone());
        let peers = registry
            .hosts
            .values()
            .filter(|h| h.hostname != local.hostname)
            .filter(|h| h.segments.contains_key(name))
            .map(|h| h.address)
            .filter(|a| a.is_ipv4() == local.underlay.address.is_ipv4())
            .filter(|a| *a != local.underlay.address)
            .collect();
        out.segments.insert(
            name.clone(),
            DesiredSegment {
                name: name.clone(),
                vni: spec.vni,
                port: spec.port,
                learning: spec.learning,
                mtu: spec.mtu.unwrap_or_else(|| local.underlay.segment_mtu()),
                mac: device_mac(&local.hostname, name),
                peers,
                netns: spec.netns.clone(),
            },
        );
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
    fn undefined_and_clashing_segments_are_reported_not_built() {
        let mut reg = registry();
        reg.segments.insert("green".into(), SegmentSpec::new(100));
        let d = desired(&local(&["blue", "green", "nope"]), &reg);
        assert_eq!(d.segments.keys().collect::<Vec<_>>(), ["blue"]);
        assert_eq!(d.problems.len(), 2, "{:?}", d.problems);
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
