//! Host registrations: `<prefix>/hosts/<HOSTNAME>`, on the host's lease.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::invalid::Invalid;
use super::record::Record;
use super::secret::Secrets;
use super::segment::validate_segment_name;
use crate::addr::MacAddr;

/// What a host publishes about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub hostname: String,
    /// Underlay (VTEP) address.
    pub address: IpAddr,
    /// Joined segments, with this host's device MAC in each.
    pub segments: BTreeMap<String, MacAddr>,
    pub agent_version: String,
    /// Chosen at random for every registration lease: the host's heartbeat
    /// token is derived from it and the secret ([`heartbeat_tokens`]), so
    /// it rotates with the lease and nobody without the secret can make
    /// one. `None` (an agent from before tokens): its heartbeats are taken
    /// without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_nonce: Option<u64>,
    /// The host's own addresses inside joined segments, per segment: what
    /// peers on a `flood: none` segment answer ARP and neighbour
    /// solicitations with (this host's device MAC in that segment).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overlay: BTreeMap<String, BTreeSet<IpAddr>>,
}

/// Overlay addresses one host may publish in one segment (one or two per
/// family is the normal case).
pub const MAX_OVERLAY_PER_SEGMENT: usize = 8;

/// The tokens `hostname`'s heartbeats carry for `nonce`: the first 8 bytes
/// of an HMAC over both, under each of the first two secrets (the signing
/// one first; two during a secret rotation). A zero token is never valid,
/// so one that comes out zero is made 1.
#[must_use]
pub fn heartbeat_tokens(secrets: &Secrets, hostname: &str, nonce: u64) -> [[u8; 8]; 2] {
    let mut message = b"linkmesh heartbeat token v1\0".to_vec();
    message.extend_from_slice(hostname.as_bytes());
    message.push(0);
    message.extend_from_slice(&nonce.to_be_bytes());
    let mut out = [[0; 8]; 2];
    for (slot, mac) in out.iter_mut().zip(secrets.sign_each(&message, 2)) {
        slot.copy_from_slice(&mac[..8]);
        if *slot == [0; 8] {
            slot[7] = 1;
        }
    }
    out
}

impl Record for HostRecord {
    const KIND: &'static str = "host";
}

impl HostRecord {
    /// Checks a record read from key `<prefix>/hosts/<key_host>`.
    pub fn validate(&self, key_host: &str) -> Result<(), Invalid> {
        validate_hostname(&self.hostname)?;
        if self.hostname != key_host {
            return Err(Invalid::HostElsewhere {
                record: self.hostname.clone(),
                key: key_host.to_owned(),
            });
        }
        if !underlay_unicast(self.address) {
            return Err(Invalid::NotUnicast(self.address));
        }
        for name in self.segments.keys() {
            validate_segment_name(name)?;
        }
        for (segment, addresses) in &self.overlay {
            if !self.segments.contains_key(segment) {
                return Err(Invalid::OverlayNotJoined(segment.clone()));
            }
            if addresses.len() > MAX_OVERLAY_PER_SEGMENT {
                return Err(Invalid::OverlayTooMany {
                    segment: segment.clone(),
                    count: addresses.len(),
                    max: MAX_OVERLAY_PER_SEGMENT,
                });
            }
            if let Some(bad) = addresses.iter().find(|a| !underlay_unicast(**a)) {
                return Err(Invalid::OverlayNotUnicast(*bad));
            }
        }
        Ok(())
    }
}

/// Whether `addr` can be a host's underlay address: unicast, and neither
/// loopback nor link-local nor the broadcast address (a peer entry for
/// one would point the mesh at the wrong place).
#[must_use]
pub fn underlay_unicast(addr: IpAddr) -> bool {
    let common = !(addr.is_unspecified() || addr.is_multicast() || addr.is_loopback());
    common
        && match addr {
            IpAddr::V4(a) => !(a.is_link_local() || a.is_broadcast()),
            IpAddr::V6(a) => !a.is_unicast_link_local(),
        }
}

/// A host name: 1..=253 bytes of letters, digits, `-`, `_` and `.`.
pub fn validate_hostname(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > 253 {
        return Err(Invalid::HostNameLength(name.to_owned()));
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(Invalid::HostNameChar {
            name: name.to_owned(),
            found,
        });
    }
    Ok(())
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> HostRecord {
        HostRecord {
            hostname: "h1".into(),
            address: "198.18.0.1".parse().expect("ip"),
            segments: BTreeMap::from([("blue".into(), MacAddr([2, 0, 0, 0, 0, 1]))]),
            agent_version: "0.1.0".into(),
            heartbeat_nonce: None,
            overlay: BTreeMap::new(),
        }
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|a| a.parse().expect("ip")).collect()
    }

    #[test]
    fn overlay_addresses_are_for_joined_segments_unicast_and_few() {
        let mut r = record();
        r.overlay
            .insert("blue".into(), ips(&["198.19.10.1", "fd00:10::1"]));
        assert!(r.validate("h1").is_ok());
        let json = serde_json::to_string(&r).expect("encode");
        assert!(
            json.ends_with(r#""overlay":{"blue":["198.19.10.1","fd00:10::1"]}}"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<HostRecord>(&json).expect("decode"),
            r
        );

        let mut r = record();
        r.overlay.insert("red".into(), ips(&["198.19.10.1"]));
        assert_eq!(
            r.validate("h1"),
            Err(Invalid::OverlayNotJoined("red".into()))
        );
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "169.254.0.1",
            "255.255.255.255",
            "224.0.0.5",
            "::",
            "fe80::1",
            "ff02::1",
        ] {
            let mut r = record();
            r.overlay.insert("blue".into(), ips(&["198.19.10.1", bad]));
            assert_eq!(
                r.validate("h1"),
                Err(Invalid::OverlayNotUnicast(bad.parse().expect("ip"))),
                "{bad}"
            );
        }
        let mut r = record();
        let many: Vec<String> = (0..=MAX_OVERLAY_PER_SEGMENT)
            .map(|i| format!("198.19.10.{}", i + 1))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        r.overlay.insert("blue".into(), ips(&many));
        assert!(matches!(
            r.validate("h1"),
            Err(Invalid::OverlayTooMany { .. })
        ));
    }

    #[test]
    fn heartbeat_tokens_need_the_secret_and_follow_host_and_nonce() {
        let a = Secrets::from_text("first-secret-0123456789").expect("valid");
        let b = Secrets::from_text("second-secret-0123456789").expect("valid");
        let both =
            Secrets::from_text("second-secret-0123456789\nfirst-secret-0123456789").expect("valid");
        let t = heartbeat_tokens(&a, "h1", 7);
        assert_eq!(t, heartbeat_tokens(&a, "h1", 7), "deterministic");
        assert_ne!(
            t[0],
            heartbeat_tokens(&a, "h1", 8)[0],
            "a new nonce rotates it"
        );
        assert_ne!(t[0], heartbeat_tokens(&a, "h2", 7)[0], "per host");
        assert_ne!(t[0], heartbeat_tokens(&b, "h1", 7)[0], "per secret");
        assert_eq!(t[1], [0; 8], "one secret, one token");
        // During a rotation a receiver holding both accepts either sender.
        let r = heartbeat_tokens(&both, "h1", 7);
        assert_eq!(r[0], heartbeat_tokens(&b, "h1", 7)[0]);
        assert_eq!(r[1], t[0]);
        let json = serde_json::to_string(&HostRecord {
            heartbeat_nonce: Some(u64::MAX),
            ..record()
        })
        .expect("encode");
        assert!(
            json.ends_with(r#""heartbeat_nonce":18446744073709551615}"#),
            "{json}"
        );
        let back: HostRecord = serde_json::from_str(&json).expect("decode");
        assert_eq!(back.heartbeat_nonce, Some(u64::MAX));
    }

    #[test]
    fn json_shape() {
        let json = serde_json::to_string(&record()).expect("encode");
        assert_eq!(
            json,
            r#"{"hostname":"h1","address":"198.18.0.1","segments":{"blue":"02:00:00:00:00:01"},"agent_version":"0.1.0"}"#
        );
        let back: HostRecord = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, record());
    }

    #[test]
    fn validation() {
        assert!(record().validate("h1").is_ok());
        assert!(
            record().validate("h2").is_err(),
            "stored under another host"
        );
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "169.254.1.1",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "ff02::1",
        ] {
            let mut r = record();
            r.address = bad.parse().expect("ip");
            assert_eq!(
                r.validate("h1"),
                Err(Invalid::NotUnicast(r.address)),
                "{bad}"
            );
        }
        for good in ["198.18.0.1", "10.0.0.1", "fd00::1", "2001:db8::1"] {
            let mut r = record();
            r.address = good.parse().expect("ip");
            assert!(r.validate("h1").is_ok(), "{good}");
        }
        let mut r = record();
        r.segments.insert("a/b".into(), MacAddr::ZERO);
        assert!(r.validate("h1").is_err());
        for bad in ["", "a b", "x/y", &"a".repeat(254)] {
            assert!(validate_hostname(bad).is_err(), "{bad:?}");
        }
        assert!(validate_hostname("node-1.rack_2").is_ok());
    }
}
