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
    #[serde(default, skip_serializing_if = "Overlay::is_empty")]
    pub overlay: Overlay,
}

/// A host's overlay addresses per segment. In JSON a map of segment to
/// addresses; in memory a sorted list, which costs tens of bytes per host
/// where a map would cost a tree node (hundreds): every agent keeps two
/// copies of every host's record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlay(Vec<(String, Vec<IpAddr>)>);

impl Overlay {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The addresses published in `segment` (sorted, distinct).
    #[must_use]
    pub fn get(&self, segment: &str) -> Option<&[IpAddr]> {
        self.0
            .binary_search_by(|(s, _)| s.as_str().cmp(segment))
            .ok()
            .map(|i| self.0[i].1.as_slice())
    }

    /// Segments and their addresses, by segment.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[IpAddr])> {
        self.0.iter().map(|(s, a)| (s.as_str(), a.as_slice()))
    }
}

impl<A: IntoIterator<Item = IpAddr>> FromIterator<(String, A)> for Overlay {
    /// Later addresses of a segment named twice join the earlier ones.
    fn from_iter<I: IntoIterator<Item = (String, A)>>(iter: I) -> Self {
        let mut map: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for (segment, addresses) in iter {
            map.entry(segment).or_default().extend(addresses);
        }
        Self(
            map.into_iter()
                .map(|(s, a)| (s, a.into_iter().collect()))
                .collect(),
        )
    }
}

impl Serialize for Overlay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for Overlay {
    /// A segment named twice is an error; addresses are sorted and made
    /// distinct.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries: Vec<(String, BTreeSet<IpAddr>)> = d.deserialize_map(EntriesVisitor)?;
        let count = entries.len();
        let overlay: Self = entries.into_iter().collect();
        if overlay.0.len() != count {
            return Err(serde::de::Error::custom(
                "a segment is named twice in overlay",
            ));
        }
        Ok(overlay)
    }
}

struct EntriesVisitor;

impl<'de> serde::de::Visitor<'de> for EntriesVisitor {
    type Value = Vec<(String, BTreeSet<IpAddr>)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map of segment names to lists of addresses")
    }

    fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut out = Vec::new();
        while let Some(entry) = map.next_entry()? {
            out.push(entry);
        }
        Ok(out)
    }
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
        for (segment, addresses) in self.overlay.iter() {
            if !self.segments.contains_key(segment) {
                return Err(Invalid::OverlayNotJoined(segment.to_owned()));
            }
            if addresses.len() > MAX_OVERLAY_PER_SEGMENT {
                return Err(Invalid::OverlayTooMany {
                    segment: segment.to_owned(),
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
            overlay: Overlay::default(),
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().expect("ip")).collect()
    }

    fn overlay(segment: &str, list: &[&str]) -> Overlay {
        [(segment.to_owned(), ips(list))].into_iter().collect()
    }

    #[test]
    fn overlay_addresses_are_for_joined_segments_unicast_and_few() {
        let mut r = record();
        r.overlay = overlay("blue", &["fd00:10::1", "198.19.10.1", "fd00:10::1"]);
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
        r.overlay = overlay("red", &["198.19.10.1"]);
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
            r.overlay = overlay("blue", &["198.19.10.1", bad]);
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
        r.overlay = overlay("blue", &many);
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
