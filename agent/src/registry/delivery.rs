//! How a VIP's owner delivers traffic for it, besides binding the address:
//! how clients find the owner ([`Mode`]: announced on the link, or routed
//! through the host's BGP daemon) and which ports it maps ([`PortMap`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::invalid::Invalid;

/// The most port maps one VIP may carry.
pub const MAX_PORT_MAPS: usize = 64;

/// How clients reach the owner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Bound and announced on the link (gratuitous ARP, unsolicited NA).
    #[default]
    L2,
    /// Bound, and installed as a host route into `--route-table`, which the
    /// host's BGP daemon exports. Nothing is announced on the link.
    Route,
}

impl Mode {
    /// Whether this is the default (not written in records).
    #[must_use]
    pub fn is_l2(&self) -> bool {
        *self == Self::L2
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::L2 => "l2",
            Self::Route => "route",
        })
    }
}

impl FromStr for Mode {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "l2" => Ok(Self::L2),
            "route" => Ok(Self::Route),
            other => Err(Invalid::Mode(other.to_owned())),
        }
    }
}

/// A transport protocol a port map applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number.
    #[must_use]
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// Traffic to `VIP:src/proto` reaches the owner's local service on `dest`;
/// its replies leave from `VIP:src`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMap {
    pub src: u16,
    pub proto: Proto,
    pub dest: u16,
}

impl fmt::Display for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.src, self.dest, self.proto)
    }
}

impl FromStr for PortMap {
    type Err = Invalid;

    /// `SRC:DEST/PROTO`, as the CLI takes it (`80:8080/tcp`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || Invalid::PortMap(format!("{s:?} is not SRC:DEST/PROTO (80:8080/tcp)"));
        let (ports, proto) = s.split_once('/').ok_or_else(bad)?;
        let (src, dest) = ports.split_once(':').ok_or_else(bad)?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad()),
        };
        Ok(Self {
            src: src.parse().map_err(|_| bad())?,
            proto,
            dest: dest.parse().map_err(|_| bad())?,
        })
    }
}

/// Checks a VIP's port maps: ports 1..=65535, at most [`MAX_PORT_MAPS`],
/// and no two with the same `src` and `proto`, or the same `dest` and
/// `proto` (replies are mapped back by their source port alone).
pub fn validate_ports(ports: &[PortMap]) -> Result<(), Invalid> {
    if ports.len() > MAX_PORT_MAPS {
        return Err(Invalid::PortMap(format!(
            "{} port maps (at most {MAX_PORT_MAPS})",
            ports.len()
        )));
    }
    for (i, p) in ports.iter().enumerate() {
        if p.src == 0 || p.dest == 0 {
            return Err(Invalid::PortMap(format!(
                "{p}: ports are 1 to 65535, not 0"
            )));
        }
        for q in &ports[..i] {
            if q.proto == p.proto && q.src == p.src {
                return Err(Invalid::PortMap(format!(
                    "{}/{} is mapped twice",
                    p.src, p.proto
                )));
            }
            if q.proto == p.proto && q.dest == p.dest {
                return Err(Invalid::PortMap(format!(
                    "{q} and {p} map to one local port: replies could not be told apart"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(src: u16, proto: Proto, dest: u16) -> PortMap {
        PortMap { src, proto, dest }
    }

    #[test]
    fn port_maps_parse_from_the_cli_form_and_json() {
        assert_eq!("80:8080/tcp".parse(), Ok(map(80, Proto::Tcp, 8080)));
        assert_eq!("53:5353/udp".parse(), Ok(map(53, Proto::Udp, 5353)));
        for bad in [
            "80:8080",
            "80/tcp",
            "80:8080/sctp",
            "x:1/tcp",
            "70000:1/tcp",
            "",
        ] {
            assert!(bad.parse::<PortMap>().is_err(), "{bad}");
        }
        let json: Vec<PortMap> =
            serde_json::from_str(r#"[{"src":80,"proto":"tcp","dest":8080}]"#).expect("json");
        assert_eq!(json, [map(80, Proto::Tcp, 8080)]);
        for bad in [
            r#"[{"src":80,"proto":"icmp","dest":8080}]"#,
            r#"[{"src":80,"proto":"tcp","dest":65536}]"#,
            r#"[{"src":-1,"proto":"tcp","dest":80}]"#,
            r#"[{"src":80,"proto":"tcp"}]"#,
            r#"[{"src":80,"proto":"tcp","dest":8080,"to":1}]"#,
            r#"[{"from":80,"to":8080}]"#,
        ] {
            assert!(serde_json::from_str::<Vec<PortMap>>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_maps_are_unambiguous_both_ways() {
        let ok = [
            map(80, Proto::Tcp, 8080),
            map(80, Proto::Udp, 8080),
            map(443, Proto::Tcp, 8443),
        ];
        assert_eq!(validate_ports(&ok), Ok(()));
        for bad in [
            vec![map(0, Proto::Tcp, 8080)],
            vec![map(80, Proto::Tcp, 0)],
            vec![map(80, Proto::Tcp, 8080), map(80, Proto::Tcp, 8081)],
            vec![map(80, Proto::Tcp, 8080), map(81, Proto::Tcp, 8080)],
            (1..=65).map(|p| map(p, Proto::Tcp, p + 1000)).collect(),
        ] {
            assert!(
                matches!(validate_ports(&bad), Err(Invalid::PortMap(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn modes_read_and_write_lowercase() {
        assert_eq!("route".parse(), Ok(Mode::Route));
        assert_eq!("l2".parse(), Ok(Mode::L2));
        assert!("bgp".parse::<Mode>().is_err());
        assert_eq!(
            serde_json::to_string(&Mode::Route).ok().as_deref(),
            Some(r#""route""#)
        );
    }
}
