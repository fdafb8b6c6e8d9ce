//! The CNI contract (spec 1.0): the environment a runtime sets, the
//! network configuration on stdin, the result and the error on stdout.
//! Pure: parsing and checking only.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The versions this plugin speaks. Results differ only in the `version`
/// of each IP, which 0.3.x and 0.4.0 carry and 1.0.0 dropped.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The version of answers to requests that named none we could read.
pub const OWN_VERSION: &str = "1.0.0";

/// The spec's well-known error codes, and ours (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The segment the configuration names is not defined in etcd.
    pub const UNKNOWN_SEGMENT: u32 = 100;
    /// The segment is defined, but this host has not joined it (or joined
    /// it without a bridge, or its bridge is not up yet).
    pub const SEGMENT_NOT_HERE: u32 = 101;
    /// CHECK found the attachment differs from the previous result.
    pub const CHECK_FAILED: u32 = 102;
}

/// A CNI error, as the spec prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    #[must_use]
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            cni_version: OWN_VERSION.to_owned(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    #[must_use]
    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
}

/// A kernel refusal or a lost netlink connection: the spec's I/O failure,
/// saying what was being done.
impl From<crate::kernel::KernelError> for CniError {
    fn from(e: crate::kernel::KernelError) -> Self {
        Self::new(code::IO_FAILURE, e.to_string())
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// The runtime's environment variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// `CNI_NETNS`: absent on a DEL whose namespace is gone.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_PATH`: where IPAM plugins are found.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads the environment through `var`. VERSION needs nothing else;
    /// ADD and CHECK need everything; DEL may lack the namespace.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let missing = |name: &str| CniError::new(code::INVALID_ENV, format!("{name} is not set"));
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK or VERSION"),
                ));
            }
            None => return Err(missing("CNI_COMMAND")),
        };
        if command == Command::Version {
            return Ok(Self {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                path: Vec::new(),
            });
        }
        let container_id = get("CNI_CONTAINERID").ok_or_else(|| missing("CNI_CONTAINERID"))?;
        if !valid_container_id(&container_id) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_CONTAINERID {container_id:?} must start with a letter or digit and \
                     hold only letters, digits, '_', '.' and '-'"
                ),
            ));
        }
        let ifname = get("CNI_IFNAME").ok_or_else(|| missing("CNI_IFNAME"))?;
        if crate::registry::segment::validate_segment_name(&ifname).is_err() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_IFNAME {ifname:?} is not a valid interface name"),
            ));
        }
        let netns = get("CNI_NETNS").map(PathBuf::from);
        if netns.is_none() && command != Command::Del {
            return Err(missing("CNI_NETNS"));
        }
        let path: Vec<PathBuf> = get("CNI_PATH")
            .ok_or_else(|| missing("CNI_PATH"))?
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            path,
        })
    }
}

/// The spec's rule for container ids.
fn valid_container_id(id: &str) -> bool {
    id.len() <= 1024
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The network configuration on stdin. Fields the runtime adds that this
/// plugin does not use (`args`, `runtimeConfig`, `dns`, ...) are ignored,
/// as the spec asks.
#[derive(Clone, Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The linkmesh segment the workload joins.
    pub segment: String,
    /// Delegated addressing; `type` names the IPAM plugin.
    #[serde(default)]
    pub ipam: Option<serde_json::Value>,
    /// Where the agent keeps its state (its `--state-dir`).
    #[serde(rename = "stateDir", default)]
    pub state_dir: Option<PathBuf>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<CniResult>,
}

impl NetConf {
    /// Decodes and checks the configuration.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "the network configuration is not valid JSON for linkmesh-cni",
            )
            .details(e.to_string())
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {} is not one of {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if crate::registry::segment::validate_segment_name(&conf.segment).is_err() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("segment {:?} is not a valid segment name", conf.segment),
            ));
        }
        if let Some(ipam) = &conf.ipam
            && !ipam.get("type").is_some_and(serde_json::Value::is_string)
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "ipam must be an object naming its plugin in \"type\"",
            ));
        }
        Ok(conf)
    }

    /// The IPAM plugin's name, if addressing is delegated.
    #[must_use]
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref()?.get("type")?.as_str()
    }
}

/// A result, as plugins print and read it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub dns: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation: the address and its subnet's prefix.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// `"4"` or `"6"`: results before 1.0.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// `ADDRESS/PREFIX` with the prefix in range for the family.
pub fn parse_prefix(s: &str) -> Result<(IpAddr, u8), CniError> {
    let bad = || CniError::new(code::INVALID_CONFIG, format!("{s:?} is not ADDRESS/PREFIX"));
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    Ok((addr, len))
}

impl CniResult {
    /// The result in the form `version` asks for: each IP names its
    /// family before 1.0.0, and not from then on.
    #[must_use]
    pub fn for_version(mut self, version: &str) -> Self {
        let legacy = version.starts_with("0.");
        for ip in &mut self.ips {
            ip.version = legacy.then(|| {
                let v4 = parse_prefix(&ip.address).is_ok_and(|(a, _)| a.is_ipv4());
                if v4 { "4" } else { "6" }.to_owned()
            });
        }
        version.clone_into(&mut self.cni_version);
        self
    }
}

/// The answer to VERSION.
#[must_use]
pub fn version_info() -> serde_json::Value {
    serde_json::json!({
        "cniVersion": OWN_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Env::from_vars(|k| map.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "pod-1"),
        ("CNI_NETNS", "/run/netns/pod-1"),
        ("CNI_IFNAME", "vxeth0"),
        ("CNI_PATH", "/usr/lib/cni:/opt/cni/bin"),
    ];

    #[test]
    fn the_environment_is_read_and_checked_per_command() {
        let e = env(ADD).expect("a full ADD");
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path.len(), 2);
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).expect("VERSION").command,
            Command::Version
        );
        let without = |name: &str| -> Vec<(&str, &str)> {
            ADD.iter().copied().filter(|(k, _)| *k != name).collect()
        };
        for name in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let e = env(&without(name)).expect_err(name);
            assert_eq!(e.code, code::INVALID_ENV, "{name}");
            assert!(e.msg.contains(name), "{e}");
        }
        let mut del = without("CNI_NETNS");
        del[0] = ("CNI_COMMAND", "DEL");
        assert_eq!(env(&del).expect("DEL without a namespace").netns, None);
        for (name, bad) in [
            ("CNI_COMMAND", "GET"),
            ("CNI_CONTAINERID", "-dash"),
            ("CNI_CONTAINERID", "a/b"),
            ("CNI_IFNAME", "much-too-long-name"),
            ("CNI_IFNAME", "a/b"),
        ] {
            let mut vars = without(name);
            vars.push((name, bad));
            assert_eq!(
                env(&vars).expect_err(bad).code,
                code::INVALID_ENV,
                "{name}={bad}"
            );
        }
    }

    #[test]
    fn configurations_are_decoded_and_checked() {
        let good = br#"{"cniVersion":"1.0.0","name":"blue-net","type":"linkmesh-cni",
            "segment":"blue","ipam":{"type":"host-local","ranges":[[{"subnet":"198.19.0.0/24"}]]},
            "runtimeConfig":{"ignored":true}}"#;
        let c = NetConf::parse(good).expect("the documented shape");
        assert_eq!(c.segment, "blue");
        assert_eq!(c.name, "blue-net");
        assert_eq!(c.ipam_type(), Some("host-local"));
        for (bad, code) in [
            (&b"{not json"[..], code::DECODE_FAILURE),
            (br#"{"cniVersion":"1.0.0","name":"n","type":"linkmesh-cni"}"#, code::DECODE_FAILURE),
            (
                br#"{"cniVersion":"9.9.9","name":"n","type":"linkmesh-cni","segment":"blue"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"linkmesh-cni","segment":"a/b"}"#,
                code::INVALID_CONFIG,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"linkmesh-cni","segment":"blue","ipam":{"subnet":"x"}}"#,
                code::INVALID_CONFIG,
            ),
        ] {
            let e = NetConf::parse(bad).expect_err("refused");
            assert_eq!(e.code, code, "{}: {e}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn results_carry_the_ip_version_only_before_1_0() {
        let r = CniResult {
            ips: vec![
                IpConfig {
                    address: "198.19.0.10/24".into(),
                    gateway: None,
                    interface: Some(1),
                    version: None,
                },
                IpConfig {
                    address: "fd00::10/64".into(),
                    gateway: None,
                    interface: Some(1),
                    version: Some("6".into()),
                },
            ],
            ..CniResult::default()
        };
        let old = r.clone().for_version("0.4.0");
        assert_eq!(old.ips[0].version.as_deref(), Some("4"));
        assert_eq!(old.ips[1].version.as_deref(), Some("6"));
        let new = r.for_version("1.0.0");
        assert!(new.ips.iter().all(|ip| ip.version.is_none()));
        let text = serde_json::to_string(&new).expect("encode");
        assert!(!text.contains("version\":\"4"), "{text}");
        assert!(text.starts_with(r#"{"cniVersion":"1.0.0""#), "{text}");
    }

    #[test]
    fn prefixes_parse_within_their_family() {
        assert_eq!(
            parse_prefix("0.0.0.0/0").expect("default"),
            ("0.0.0.0".parse().expect("ip"), 0)
        );
        for bad in ["198.19.0.1/33", "fd00::/129", "198.19.0.1", "x/24"] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
    }
}
