//! Floating IP (VIP) definitions: `<prefix>/vips/<ID>`, where ID is the
//! address with `/` replaced by `_` (`198.18.0.100_24`); validated once,
//! into a [`ValidVip`], wherever one is read or written. And what the
//! registry tells the floating-IP subsystem about the keys under a VIP.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::delivery::{Mode, PortMap, validate_ports};
use super::dnsname::validate_dns_name;
use super::generation::{Definition, open_definition};
use super::host::validate_hostname;
use super::invalid::Invalid;
use super::record::{Record, Rejection};
use super::segment::validate_segment_name;

/// The longest preemption delay, seconds.
pub const MAX_PREEMPT_DELAY: u32 = 3600;

/// A VIP as stored (signed like every record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipRecord {
    /// CIDR, IPv4 or IPv6 (`198.18.0.100/24`).
    pub address: String,
    /// Interface to bind on (default: the agent's `--vip-interface`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Health checks: `tcp:HOST:PORT`, `http://...` (2xx), `exec:SCRIPT`
    /// (a script in each host's `--check-dir`, by name: never a command
    /// line).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// Hosts that never hold this VIP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_nodes: Vec<String>,
    /// A preferred host: it contends at once, others after a short delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Preemption: once the preferred host has stood by, healthy, for this
    /// many seconds, another owner hands the VIP over to it. Needs
    /// `priority`; absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempt_delay: Option<u32>,
    /// Port maps the owner applies: `VIP:src/proto` reaches the local
    /// service on `dest`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMap>,
    /// How clients reach the owner (default: announced on the link).
    #[serde(default, skip_serializing_if = "Mode::is_l2")]
    pub mode: Mode,
    /// VIPs with the same group move together, with one election.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A DNS name for the VIP (lower case), written into the agents'
    /// `--hosts-dir` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl VipRecord {
    /// A record of `address` (a CIDR) with nothing else set.
    #[must_use]
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            interface: None,
            checks: Vec::new(),
            excluded_nodes: Vec::new(),
            priority: None,
            preempt_delay: None,
            ports: Vec::new(),
            mode: Mode::L2,
            group: None,
            name: None,
        }
    }
}

impl Record for VipRecord {
    const KIND: &'static str = "vip";
}

/// An address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// The VIP id: the CIDR with `/` replaced by `_`.
    #[must_use]
    pub fn id(&self) -> String {
        format!("{}_{}", self.addr, self.prefix_len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| Invalid::NotCidr(s.to_owned()))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| Invalid::NotAddress(addr.to_owned()))?;
        let prefix_len: u8 = len
            .parse()
            .map_err(|_| Invalid::PrefixNotNumber(len.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(Invalid::PrefixTooLong {
                len: prefix_len,
                max,
            });
        }
        let broadcast = matches!(addr, IpAddr::V4(v4) if v4.is_broadcast());
        if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() || broadcast {
            return Err(Invalid::NotFloating(addr));
        }
        Ok(Self { addr, prefix_len })
    }
}

/// A parsed health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Tcp {
        host: String,
        port: u16,
    },
    Http {
        url: String,
    },
    /// A script of the operator's, by file name, in `--check-dir`.
    Exec {
        script: String,
    },
}

/// A check script's name: 1 to 64 of letters, digits, `.`, `_` and `-`,
/// not starting with `.` (so no path, no arguments, no shell).
fn valid_script_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl FromStr for Check {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| Invalid::Check {
            check: s.to_owned(),
            why,
        };
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("expected tcp:HOST:PORT".into()))?;
            let port: u16 = port
                .parse()
                .map_err(|_| bad(format!("bad port {port:?}")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || port == 0 {
                return Err(bad("expected tcp:HOST:PORT".into()));
            }
            return Ok(Self::Tcp {
                host: host.to_owned(),
                port,
            });
        }
        if s.starts_with("https://") {
            // Refused when declared rather than failing on every host later.
            return Err(bad(
                "https:// checks are not supported yet (they arrive with TLS); use http:// or tcp:"
                    .into(),
            ));
        }
        if s.starts_with("http://") {
            if s.len() <= "http://".len() {
                return Err(bad("no host".into()));
            }
            return Ok(Self::Http { url: s.to_owned() });
        }
        if let Some(command) = s.strip_prefix("exec:") {
            if command.trim().is_empty() {
                return Err(bad("empty command".into()));
            }
            if !valid_script_name(command) {
                return Err(bad(
                    "exec: names a script in the hosts' --check-dir (letters, digits, \
                     `.`, `_`, `-`), not a command line or a path"
                        .into(),
                ));
            }
            return Ok(Self::Exec {
                script: command.to_owned(),
            });
        }
        Err(bad(
            "expected tcp:HOST:PORT, http://URL or exec:SCRIPT".into()
        ))
    }
}

/// A VIP record that passed validation, with its parsed parts. The only
/// way to one is [`VipRecord::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidVip {
    pub record: VipRecord,
    pub cidr: Cidr,
    pub checks: Vec<Check>,
}

impl VipRecord {
    /// Parses and checks a definition as `POST /ips` receives it: JSON with
    /// no unknown fields, then [`VipRecord::validate`]. Pure, so the API
    /// and the `api_body` fuzz target run the same code.
    pub fn parse_request(body: &[u8]) -> Result<ValidVip, Invalid> {
        let record: Self =
            serde_json::from_slice(body).map_err(|e| Invalid::Decode(e.to_string()))?;
        record.validate()
    }

    /// Parses the address and checks every field.
    pub fn validate(self) -> Result<ValidVip, Invalid> {
        let cidr: Cidr = self.address.parse()?;
        if let Some(i) = &self.interface {
            validate_segment_name(i).map_err(|e| Invalid::Interface(Box::new(e)))?;
        }
        let checks = self
            .checks
            .iter()
            .map(|c| c.parse())
            .collect::<Result<Vec<_>, _>>()?;
        for h in self.excluded_nodes.iter().chain(&self.priority) {
            validate_hostname(h)?;
        }
        if let Some(delay) = self.preempt_delay {
            if self.priority.is_none() {
                return Err(Invalid::PreemptWithoutPriority);
            }
            if !(1..=MAX_PREEMPT_DELAY).contains(&delay) {
                return Err(Invalid::PreemptDelay {
                    delay,
                    max: MAX_PREEMPT_DELAY,
                });
            }
        }
        validate_ports(&self.ports)?;
        if let Some(g) = &self.group
            && !valid_script_name(g)
        {
            return Err(Invalid::Group(g.clone()));
        }
        if let Some(name) = &self.name {
            validate_dns_name(name)?;
        }
        let host = if cidr.addr.is_ipv4() { 32 } else { 128 };
        if self.mode == Mode::Route && cidr.prefix_len != host {
            return Err(Invalid::RouteNotHost(self.address));
        }
        Ok(ValidVip {
            record: self,
            cidr,
            checks,
        })
    }
}

impl ValidVip {
    /// The admin's extra rule for a new VIP: no prefix shorter than /16
    /// (IPv4) or /48 (IPv6), unless `force`. (Agents accept what is
    /// stored: the rule is about what an admin asks for.)
    pub fn check_width(&self, force: bool) -> Result<(), Invalid> {
        let min = if self.cidr.addr.is_ipv4() { 16 } else { 48 };
        if self.cidr.prefix_len < min && !force {
            return Err(Invalid::PrefixTooWide {
                len: self.cidr.prefix_len,
                min,
            });
        }
        Ok(())
    }
}

/// Verifies and validates the value of a VIP record key (a record or its
/// tombstone), as every reader does (the agents' registry cache, `ip ls`,
/// the fuzz targets).
///
/// # Errors
/// Why it is not used.
pub fn open_vip(
    secrets: &super::Secrets,
    key: &str,
    value: &[u8],
    lease: i64,
    now: u64,
) -> Result<Definition<ValidVip>, Rejection> {
    open_definition::<VipRecord>(secrets, key, value, lease, now)?
        .try_map(|r| r.validate().map_err(Rejection::Invalid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(address: &str) -> VipRecord {
        VipRecord {
            address: address.into(),
            interface: None,
            checks: vec![],
            excluded_nodes: vec![],
            priority: None,
            preempt_delay: None,
            ports: Vec::new(),
            mode: Mode::L2,
            group: None,
            name: None,
        }
    }

    #[test]
    fn ids_and_cidrs() {
        let c: Cidr = "198.18.0.100/24".parse().expect("cidr");
        assert_eq!(c.id(), "198.18.0.100_24");
        assert_eq!(c.to_string(), "198.18.0.100/24");
        let c6: Cidr = "fd00::100/64".parse().expect("cidr");
        assert_eq!(c6.id(), "fd00::100_64");
        for bad in [
            "198.18.0.100",
            "198.18.0.300/24",
            "198.18.0.1/33",
            "fd00::1/129",
            "0.0.0.0/0",
            "224.0.0.1/32",
            "127.0.0.1/8",
            "a/b",
            "198.18.0.1/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn checks_parse() {
        assert_eq!(
            "tcp:198.18.0.1:80".parse(),
            Ok(Check::Tcp {
                host: "198.18.0.1".into(),
                port: 80
            })
        );
        assert_eq!(
            "tcp:[fd00::1]:443".parse(),
            Ok(Check::Tcp {
                host: "fd00::1".into(),
                port: 443
            })
        );
        assert_eq!(
            "http://127.0.0.1:8080/health".parse(),
            Ok(Check::Http {
                url: "http://127.0.0.1:8080/health".into()
            })
        );
        assert_eq!(
            "exec:check-web_1.sh".parse(),
            Ok(Check::Exec {
                script: "check-web_1.sh".into()
            })
        );
        for bad in [
            "tcp:host",
            "tcp::80",
            "tcp:h:0",
            "tcp:h:70000",
            "ftp://x",
            "exec:",
            "exec:/bin/true",
            "exec:true; reboot",
            "exec:sh -c id",
            "exec:../x",
            "exec:.hidden",
            "http://",
            "https://x/",
            "nonsense",
        ] {
            assert!(bad.parse::<Check>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn records_validate_and_reject_unknown_fields() {
        let mut v = vip("198.18.0.100/24");
        v.checks = vec!["tcp:127.0.0.1:22".into()];
        v.excluded_nodes = vec!["h3".into()];
        v.priority = Some("h1".into());
        let valid = v.clone().validate().expect("valid");
        assert_eq!(valid.cidr.prefix_len, 24);
        assert_eq!(valid.checks.len(), 1);
        v.excluded_nodes = vec!["bad host".into()];
        assert!(v.validate().is_err());
        assert!(vip("nope").validate().is_err());
        assert!(
            serde_json::from_str::<VipRecord>(r#"{"address":"198.18.0.1/32","colour":1}"#).is_err()
        );
        let ports = VipRecord::parse_request(
            br#"{"address":"198.18.0.1/32","ports":[{"src":80,"proto":"tcp","dest":8080}]}"#,
        )
        .expect("ports");
        assert_eq!(ports.record.ports.len(), 1);
        for bad in [
            r#"{"address":"198.18.0.1/32","ports":[{"from":80,"to":8080}]}"#,
            r#"{"address":"198.18.0.1/32","ports":[{"src":80,"proto":"tcp","dest":1},{"src":80,"proto":"tcp","dest":2}]}"#,
            r#"{"address":"198.18.0.1/24","mode":"route"}"#,
            r#"{"address":"198.18.0.1/32","mode":"bgp"}"#,
        ] {
            assert!(VipRecord::parse_request(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(
            VipRecord::parse_request(br#"{"address":"2001:db8::1/128","mode":"route"}"#).is_ok()
        );
    }

    #[test]
    fn a_name_is_a_lower_case_dns_name() {
        let named = VipRecord::parse_request(br#"{"address":"198.18.0.1/32","name":"web.prod"}"#)
            .expect("named");
        assert_eq!(named.record.name.as_deref(), Some("web.prod"));
        let json = serde_json::to_string(&named.record).expect("json");
        assert!(json.contains(r#""name":"web.prod""#), "{json}");
        assert!(
            !serde_json::to_string(&vip("198.18.0.1/32"))
                .expect("json")
                .contains("name")
        );
        for bad in ["Web", "a_b", "-a", "a..b", "", "a.", "x y"] {
            let json = format!(r#"{{"address":"198.18.0.1/32","name":{bad:?}}}"#);
            assert!(
                matches!(
                    VipRecord::parse_request(json.as_bytes()),
                    Err(Invalid::DnsName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_preempt_delay_needs_a_preferred_host_and_a_sane_length() {
        let mut v = vip("198.18.0.100/24");
        v.preempt_delay = Some(30);
        assert_eq!(
            v.clone().validate().map(|_| ()),
            Err(Invalid::PreemptWithoutPriority)
        );
        v.priority = Some("h1".into());
        assert!(v.clone().validate().is_ok());
        for bad in [0, MAX_PREEMPT_DELAY + 1] {
            v.preempt_delay = Some(bad);
            assert!(
                matches!(v.clone().validate(), Err(Invalid::PreemptDelay { .. })),
                "{bad}"
            );
        }
        for bad in ["-1", "1.5", r#""30""#] {
            let json =
                format!(r#"{{"address":"198.18.0.1/32","priority":"h1","preempt_delay":{bad}}}"#);
            assert!(VipRecord::parse_request(json.as_bytes()).is_err(), "{bad}");
        }
    }
}
