//! Host registrations: `<prefix>/hosts/<HOSTNAME>`, on the host's lease.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::invalid::Invalid;
use super::record::Record;
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
        }
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
