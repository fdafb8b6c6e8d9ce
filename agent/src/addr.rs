//! Link-layer addresses.

use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const ZERO: Self = Self([0; 6]);
    pub const BROADCAST: Self = Self([0xff; 6]);

    #[must_use]
    pub fn is_zero(self) -> bool {
        self == Self::ZERO
    }

    /// Neither zero nor a group (multicast or broadcast) address: one
    /// that can name a single device.
    #[must_use]
    pub fn is_unicast(self) -> bool {
        !self.is_zero() && self.0[0] & 0x01 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Error for a string that is not six colon-separated hex octets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?}: expected six hex octets like 02:00:5e:10:00:01")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for slot in &mut out {
            let part = parts.next().ok_or_else(|| ParseMacError(s.to_owned()))?;
            if part.is_empty() || part.len() > 2 {
                return Err(ParseMacError(s.to_owned()));
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| ParseMacError(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError(s.to_owned()));
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let mac = MacAddr([0x02, 0, 0x5e, 0x10, 0xab, 0xff]);
        assert_eq!(mac.to_string(), "02:00:5e:10:ab:ff");
        assert_eq!("02:00:5e:10:ab:ff".parse::<MacAddr>(), Ok(mac));
        assert_eq!("2:0:5e:10:ab:ff".parse::<MacAddr>(), Ok(mac));
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "02:00:5e:10:ab",
            "02:00:5e:10:ab:ff:00",
            "02:00:5e:10:ab:fg",
            "0200:5e:10:ab:ff",
            "02::5e:10:ab:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
        }
    }
}
