//! Segment definitions: `<prefix>/segments/<NAME>`, a name mapped to a VXLAN
//! VNI and its settings. The kernel device for segment NAME is named NAME.

use serde::{Deserialize, Serialize};

use super::invalid::Invalid;
use super::record::Record;

/// The IANA VXLAN port.
pub const DEFAULT_PORT: u16 = 4789;
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// The kernel's interface name limit (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSpec {
    pub vni: u32,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_learning")]
    pub learning: bool,
    /// Device MTU; default underlay MTU - 50 (IPv4) or - 70 (IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// A named network namespace (`/run/netns/NAME`) to move the device into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// How the segment reaches hosts it has no entry for.
    #[serde(default, skip_serializing_if = "Flood::is_head_end")]
    pub flood: Flood,
    /// A Linux bridge of the segment's own: every member creates it and
    /// enslaves the segment's device, and workloads join the segment by
    /// joining the bridge (`linkmesh-cni`). Overrides the host's
    /// `--bridge`; not with `netns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
}

/// Where a segment's broadcast and unknown-destination frames go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flood {
    /// To every member: one all-zero-MAC forwarding entry per peer, with
    /// MAC learning as the segment says (the kernel copies each broadcast
    /// once per peer).
    #[default]
    #[serde(rename = "head-end")]
    HeadEnd,
    /// Nowhere: each peer is one unicast forwarding entry for the device
    /// MAC it publishes, learning is off, and the device answers ARP and
    /// neighbour solicitations itself (`proxy`) from the overlay addresses
    /// hosts publish. For large segments.
    #[serde(rename = "none")]
    None,
}

impl Flood {
    #[must_use]
    pub fn is_head_end(&self) -> bool {
        *self == Self::HeadEnd
    }
}

impl std::fmt::Display for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::HeadEnd => "head-end",
            Self::None => "none",
        })
    }
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

fn default_learning() -> bool {
    true
}

impl Record for SegmentSpec {
    const KIND: &'static str = "segment";
}

impl SegmentSpec {
    #[must_use]
    pub fn new(vni: u32) -> Self {
        Self {
            vni,
            port: DEFAULT_PORT,
            learning: true,
            mtu: None,
            netns: None,
            flood: Flood::HeadEnd,
            bridge: None,
        }
    }

    /// Whether the device learns MACs: never with `flood: none` (its
    /// entries all come from the registry).
    #[must_use]
    pub fn learns(&self) -> bool {
        self.learning && self.flood == Flood::HeadEnd
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if !(1..=MAX_VNI).contains(&self.vni) {
            return Err(Invalid::Vni {
                vni: self.vni,
                max: MAX_VNI,
            });
        }
        if self.port == 0 {
            return Err(Invalid::PortZero);
        }
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(Invalid::Mtu(mtu));
        }
        if let Some(ns) = &self.netns {
            validate_netns_name(ns)?;
        }
        if let Some(bridge) = &self.bridge {
            validate_segment_name(bridge).map_err(|e| Invalid::Bridge(Box::new(e)))?;
            if self.netns.is_some() {
                return Err(Invalid::BridgeInNetns);
            }
        }
        Ok(())
    }
}

/// A segment name is also its device's name: 1..=15 bytes, no `/`, `:`,
/// whitespace or control characters, not `.` or `..`.
pub fn validate_segment_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(Invalid::SegmentNameLength {
            name: name.to_owned(),
            max: MAX_IFNAME_LEN,
        });
    }
    if name == "." || name == ".." {
        return Err(Invalid::SegmentNameDots(name.to_owned()));
    }
    if let Some(found) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(Invalid::SegmentNameChar {
            name: name.to_owned(),
            found,
        });
    }
    Ok(())
}

/// A named network namespace: a file name under `/run/netns`.
pub fn validate_netns_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
    {
        return Err(Invalid::Netns(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in() {
        let s: SegmentSpec = serde_json::from_str(r#"{"vni":100}"#).expect("decode");
        assert_eq!(s, SegmentSpec::new(100));
        assert_eq!(s.port, 4789);
        assert!(s.learning);
        assert_eq!(
            serde_json::to_string(&s).expect("encode"),
            r#"{"vni":100,"port":4789,"learning":true}"#
        );
    }

    #[test]
    fn flood_none_round_trips_and_turns_learning_off() {
        let s: SegmentSpec = serde_json::from_str(r#"{"vni":7,"flood":"none"}"#).expect("decode");
        assert_eq!(s.flood, Flood::None);
        assert!(s.learning, "the field keeps what was written");
        assert!(!s.learns(), "but the device never learns");
        assert!(SegmentSpec::new(7).learns());
        assert_eq!(
            serde_json::to_string(&s).expect("encode"),
            r#"{"vni":7,"port":4789,"learning":true,"flood":"none"}"#
        );
        let explicit: SegmentSpec =
            serde_json::from_str(r#"{"vni":7,"flood":"head-end"}"#).expect("decode");
        assert_eq!(explicit, SegmentSpec::new(7));
        for bad in [
            r#""flood":"None""#,
            r#""flood":"multicast""#,
            r#""flood":1"#,
        ] {
            assert!(
                serde_json::from_str::<SegmentSpec>(&format!("{{\"vni\":7,{bad}}}")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        assert!(serde_json::from_str::<SegmentSpec>(r#"{"vni":1,"colour":"blue"}"#).is_err());
        assert!(serde_json::from_str::<SegmentSpec>(r#"{"vni":-1}"#).is_err());
        assert!(
            serde_json::from_str::<SegmentSpec>(r#"{"port":1}"#).is_err(),
            "vni is required"
        );
        for (spec, why) in [
            (SegmentSpec::new(0), "vni 0"),
            (SegmentSpec::new(MAX_VNI + 1), "vni too large"),
            (
                SegmentSpec {
                    port: 0,
                    ..SegmentSpec::new(1)
                },
                "port 0",
            ),
            (
                SegmentSpec {
                    mtu: Some(67),
                    ..SegmentSpec::new(1)
                },
                "mtu too small",
            ),
            (
                SegmentSpec {
                    netns: Some("a/b".into()),
                    ..SegmentSpec::new(1)
                },
                "netns path",
            ),
            (
                SegmentSpec {
                    netns: Some("..".into()),
                    ..SegmentSpec::new(1)
                },
                "netns ..",
            ),
            (
                SegmentSpec {
                    bridge: Some("sixteen-chars-16".into()),
                    ..SegmentSpec::new(1)
                },
                "bridge name too long",
            ),
            (
                SegmentSpec {
                    bridge: Some("a/b".into()),
                    ..SegmentSpec::new(1)
                },
                "bridge name with a slash",
            ),
            (
                SegmentSpec {
                    bridge: Some("lm-blue".into()),
                    netns: Some("web-1".into()),
                    ..SegmentSpec::new(1)
                },
                "bridge in a namespace",
            ),
        ] {
            assert!(spec.validate().is_err(), "{why} accepted");
        }
        assert!(SegmentSpec::new(MAX_VNI).validate().is_ok());
        let bridged: SegmentSpec =
            serde_json::from_str(r#"{"vni":7,"bridge":"lm-blue"}"#).expect("decode");
        assert_eq!(bridged.bridge.as_deref(), Some("lm-blue"));
        assert!(bridged.validate().is_ok());
        assert!(
            SegmentSpec {
                mtu: Some(1450),
                netns: Some("web-1".into()),
                ..SegmentSpec::new(7)
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn segment_names_are_interface_names() {
        for good in ["blue", "vx-red_1", "a", "fifteen-chars15"] {
            assert!(validate_segment_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "sixteen-chars-16",
            "a/b",
            "a:b",
            "a b",
            ".",
            "..",
            "tab\t",
        ] {
            assert!(validate_segment_name(bad).is_err(), "{bad:?}");
        }
    }
}
