//! Command-line and environment options (and, in [`file`], the TOML file
//! that can hold them). Every agent option also has a `LINKMESH_*`
//! environment variable; bare names like `HOSTNAME` are never read (every
//! shell sets them). Parsing and checking only: this module imports no
//! subsystem; `crate::agent` builds each subsystem's settings from it.

pub mod file;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::registry::host::MAX_OVERLAY_PER_SEGMENT;
use crate::registry::secret::SecretError;
use crate::registry::{Cidr, Invalid, Keys, Secrets};

/// Where etcd is and how records are signed (agent and admin commands).
#[derive(Args, Clone, Debug)]
pub struct EtcdArgs {
    /// etcd endpoint; repeatable or comma-separated.
    #[arg(
        long = "etcd-server",
        global = true,
        env = "LINKMESH_ETCD_SERVER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_servers: Vec<String>,
    /// Key prefix of everything linkmesh stores.
    #[arg(
        long,
        global = true,
        env = "LINKMESH_PREFIX",
        default_value = "/linkmesh"
    )]
    pub prefix: String,
    /// File with the shared secret (one per line: the first signs, all verify).
    #[arg(
        long,
        global = true,
        env = "LINKMESH_SECRET_FILE",
        conflicts_with = "secret"
    )]
    pub secret_file: Option<PathBuf>,
    /// The shared secret itself (prefer --secret-file: arguments are visible in ps).
    #[arg(long, global = true, env = "LINKMESH_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificate (use
    /// https:// endpoints). LinK's ETCD_CACERT.
    #[arg(long, global = true, env = "LINKMESH_ETCD_CACERT")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate auth. LinK's
    /// ETCD_TLS_CERT.
    #[arg(long, global = true, env = "LINKMESH_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM). LinK's ETCD_TLS_KEY.
    #[arg(long, global = true, env = "LINKMESH_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (etcd's auth; the token is refreshed when it expires).
    #[arg(
        long,
        global = true,
        env = "LINKMESH_ETCD_USER",
        requires = "etcd_password_file"
    )]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (first line).
    #[arg(
        long,
        global = true,
        env = "LINKMESH_ETCD_PASSWORD_FILE",
        requires = "etcd_user"
    )]
    pub etcd_password_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("a secret is required: give --secret-file, --secret or LINKMESH_SECRET")]
    NoSecret,
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("--ttl {0} is below the minimum of 2 seconds (etcd clamps shorter leases)")]
    TtlTooShort(u64),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Field(#[from] crate::registry::Invalid),
}

impl EtcdArgs {
    pub fn secrets(&self) -> Result<Secrets, ConfigError> {
        match (&self.secret_file, &self.secret) {
            (Some(path), _) => Ok(Secrets::load(path)?),
            (None, Some(text)) => Ok(Secrets::from_text(text)?),
            (None, None) => Err(ConfigError::NoSecret),
        }
    }

    /// A warning when the secret file can be read by its group or by
    /// others: whoever reads it can sign records.
    #[must_use]
    pub fn secret_warning(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.secret_file.as_ref()?;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "the secret file {} is readable by group or others (mode {mode:03o}): \
                 anyone who can read it can sign records; chmod 600 it",
                path.display()
            )
        })
    }

    #[must_use]
    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }
}

/// `linkmesh agent` options.
#[derive(Args, Clone, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// This host's name in the registry (default: the system host name).
    #[arg(long, env = "LINKMESH_HOSTNAME")]
    pub hostname: Option<String>,
    /// Underlay address (default: the first global IPv4 address of --device,
    /// or of the default route's device). With --device too, it must be on
    /// that device.
    #[arg(long, env = "LINKMESH_ADDRESS")]
    pub address: Option<IpAddr>,
    /// Underlay device.
    #[arg(long, env = "LINKMESH_DEVICE")]
    pub device: Option<String>,
    /// Registration lease TTL in seconds (minimum 2).
    #[arg(long, env = "LINKMESH_TTL", default_value_t = 10)]
    pub ttl: u64,
    /// Segment to join; repeatable or comma-separated.
    #[arg(long = "segment", env = "LINKMESH_SEGMENT", value_delimiter = ',')]
    pub segments: Vec<String>,
    /// This host's address in a joined segment, as SEGMENT=ADDRESS/PREFIX
    /// (repeatable or comma-separated): put on the segment's device (or
    /// on --bridge) and published in the host's record, so peers on a
    /// `flood: none` segment can answer ARP/ND for it.
    #[arg(
        long = "overlay-address",
        env = "LINKMESH_OVERLAY_ADDRESS",
        value_delimiter = ','
    )]
    pub overlay_addresses: Vec<String>,
    /// Enslave every segment device to this Linux bridge (created if missing).
    #[arg(long, env = "LINKMESH_BRIDGE")]
    pub bridge: Option<String>,
    /// Full resync with etcd and the kernel every this many seconds.
    #[arg(long, env = "LINKMESH_RESYNC_INTERVAL", default_value_t = 30)]
    pub resync_interval: u64,
    /// Host records older than this many seconds are not used (replay bound).
    #[arg(long, env = "LINKMESH_MAX_RECORD_AGE", default_value_t = 3600)]
    pub max_record_age: u64,
    /// Remove the segment devices this agent owns when it exits.
    #[arg(long, env = "LINKMESH_CLEANUP_ON_EXIT")]
    pub cleanup_on_exit: bool,
    /// Default interface for floating IPs (a VIP record may name its own).
    #[arg(long, env = "LINKMESH_VIP_INTERFACE")]
    pub vip_interface: Option<String>,
    /// Ownership lease TTL in seconds (minimum 2); renewed every third of it,
    /// at most every second. 5 s lets the owner ride out an etcd leader
    /// election (see the README); fast failover does not depend on it.
    #[arg(long, env = "LINKMESH_KEEPALIVE_INTERVAL", default_value_t = 5)]
    pub keepalive_interval: u64,
    /// Failed keepalives before the `claim` loss policy binds.
    #[arg(long, env = "LINKMESH_KEEPALIVE_RETRY", default_value_t = 3)]
    pub keepalive_retry: u32,
    /// Seconds between health checks (fractions allowed).
    #[arg(long, env = "LINKMESH_HEALTH_CHECK_INTERVAL", default_value_t = 2.0)]
    pub health_check_interval: f64,
    /// Seconds one health check may take.
    #[arg(long, env = "LINKMESH_HEALTH_CHECK_TIMEOUT", default_value_t = 1.0)]
    pub health_check_timeout: f64,
    /// The directory of the scripts `exec:NAME` checks run (by name only).
    /// It, the scripts and every directory above must be owned by root (or
    /// the agent's user) and writable by no one else, or nothing runs.
    #[arg(
        long,
        env = "LINKMESH_CHECK_DIR",
        default_value = "/etc/linkmesh/checks"
    )]
    pub check_dir: PathBuf,
    /// The user check scripts run as when the agent runs as root (they
    /// never get its capabilities either way).
    #[arg(long, env = "LINKMESH_CHECK_USER", default_value = "nobody")]
    pub check_user: String,
    /// Consecutive failed checks before this host gives a VIP up.
    #[arg(long, env = "LINKMESH_FAIL_COUNT_BEFORE_FAILOVER", default_value_t = 3)]
    pub fail_count_before_failover: u32,
    /// Gratuitous ARP / unsolicited NA bursts sent after binding.
    #[arg(long, env = "LINKMESH_ARP_GRATUITOUS_COUNT", default_value_t = 5)]
    pub arp_gratuitous_count: u32,
    /// Seconds between those bursts.
    #[arg(long, env = "LINKMESH_ARP_GRATUITOUS_INTERVAL", default_value_t = 1.1)]
    pub arp_gratuitous_interval: f64,
    /// While owning a VIP, announce it once more every this many seconds
    /// after the burst, so switches and hosts that missed it, or whose
    /// entry aged out, learn the owner (keepalived's `garp_master_refresh`);
    /// 0: off.
    #[arg(long, env = "LINKMESH_GARP_REFRESH", default_value_t = 0.0)]
    pub garp_refresh: f64,
    /// The kernel routing table (1 to 4294967295, not 253, 254 or 255)
    /// that routed VIPs (`mode: route`) go in as host routes, for the
    /// host's BGP daemon to export; unset: this host never holds a routed
    /// VIP.
    #[arg(long, env = "LINKMESH_ROUTE_TABLE")]
    pub route_table: Option<u32>,
    /// A hook told of every VIP state transition, run in order, each
    /// within --notify-timeout: `exec:SCRIPT` (a script in --check-dir,
    /// run like the checks, with the VIP, the old state, the new state and
    /// the cause as arguments) or `http://HOST[:PORT]/PATH` (a POST whose
    /// JSON body is signed with --notify-secret-file); repeatable.
    #[arg(long = "notify", env = "LINKMESH_NOTIFY", value_delimiter = ',')]
    pub notify: Vec<String>,
    /// File whose first line signs the HTTP hooks' bodies (HMAC-SHA256,
    /// header `X-Linkmesh-Signature: sha256=HEX`); not the cluster secret,
    /// which must never leave the hosts.
    #[arg(long, env = "LINKMESH_NOTIFY_SECRET_FILE")]
    pub notify_secret_file: Option<PathBuf>,
    /// Seconds one notify hook may take.
    #[arg(long, env = "LINKMESH_NOTIFY_TIMEOUT", default_value_t = 5.0)]
    pub notify_timeout: f64,
    /// What an owner does when it loses etcd.
    #[arg(
        long,
        env = "LINKMESH_ETCD_LOSS_POLICY",
        value_parser = ["release", "keep", "claim"],
        default_value = "release"
    )]
    pub etcd_loss_policy: String,
    /// UDP port of the peer heartbeats (sent over the underlay, counted and
    /// consumed by the eBPF peer watcher).
    #[arg(long, env = "LINKMESH_HEARTBEAT_PORT", default_value_t = 4794)]
    pub heartbeat_port: u16,
    /// Seconds between two heartbeats to each peer.
    #[arg(long, env = "LINKMESH_HEARTBEAT_INTERVAL", default_value_t = 0.02)]
    pub heartbeat_interval: f64,
    /// Ring neighbours each host heartbeats (an even number, 2 to 64),
    /// whatever the fleet's size; VIP partners (up to 12) come on top.
    #[arg(long, env = "LINKMESH_HEARTBEAT_FANOUT", default_value_t = 8)]
    pub heartbeat_fanout: usize,
    /// Data-plane-confirmed fast failover: `auto` turns it on for every VIP
    /// with at least --suspect-quorum eligible standbys; `off` leaves only
    /// the lease path.
    #[arg(
        long,
        env = "LINKMESH_FAST_FAILOVER",
        value_parser = ["auto", "off"],
        default_value = "auto"
    )]
    pub fast_failover: String,
    /// Seconds between ARP probes a standby sends to the owner of a VIP.
    #[arg(long, env = "LINKMESH_PROBE_INTERVAL", default_value_t = 0.02)]
    pub probe_interval: f64,
    /// Unanswered probe intervals before a standby suspects the owner.
    #[arg(long, env = "LINKMESH_PROBE_MISSES", default_value_t = 5)]
    pub probe_misses: u32,
    /// Suspecting standbys needed to revoke an owner: 0 means a majority of
    /// the VIP's eligible standbys and at least 2; 1 lets a single standby
    /// decide (two-host clusters; weaker, see the README).
    #[arg(long, env = "LINKMESH_SUSPECT_QUORUM", default_value_t = 0)]
    pub suspect_quorum: u32,
    /// Address and port of the HTTP API.
    #[arg(long, env = "LINKMESH_API_LISTEN", default_value = "127.0.0.1:1313")]
    pub api_listen: std::net::SocketAddr,
    /// A host name clients may reach the API by (the Host header); the
    /// API's addresses and `localhost` always work. Repeatable.
    #[arg(long = "api-host", env = "LINKMESH_API_HOST", value_delimiter = ',')]
    pub api_host: Vec<String>,
    /// HTTP basic-auth user. Without a user and a password the API serves
    /// reads to anyone who reaches it and refuses every change.
    #[arg(long, env = "LINKMESH_API_USER", requires = "api_password_file")]
    pub api_user: Option<String>,
    /// File holding the basic-auth password (first line).
    #[arg(long, env = "LINKMESH_API_PASSWORD_FILE", requires = "api_user")]
    pub api_password_file: Option<PathBuf>,
    /// PEM certificate chain for serving the API over HTTPS (with
    /// --api-tls-key); without both the API speaks plain HTTP.
    #[arg(long, env = "LINKMESH_API_TLS_CERT", requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,
    /// PEM private key of --api-tls-cert.
    #[arg(long, env = "LINKMESH_API_TLS_KEY", requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// Allow basic auth over plain HTTP on an address other than loopback
    /// (the password then crosses the network in clear).
    #[arg(long, env = "LINKMESH_API_INSECURE")]
    pub api_insecure: bool,
    /// Where the ownership lease id is kept across restarts.
    #[arg(long, env = "LINKMESH_STATE_DIR", default_value = "/var/lib/linkmesh")]
    pub state_dir: PathBuf,
    /// Keep a hosts file, `<dns-domain>.hosts`, in this directory (created
    /// if missing) for dnsmasq's --hostsdir: `<host>.<dns-domain>` for
    /// every verified host, each named floating IP's name.
    #[arg(long, env = "LINKMESH_HOSTS_DIR")]
    pub hosts_dir: Option<PathBuf>,
    /// The domain of the hosts' names in the --hosts-dir file (a lower-case
    /// DNS name).
    #[arg(long, env = "LINKMESH_DNS_DOMAIN", default_value = "linkmesh")]
    pub dns_domain: String,
    /// A TOML file with any of these options (keys: the long option names);
    /// flags and set variables override it.
    #[arg(long, env = "LINKMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print the effective one (secrets
    /// redacted, each value's source named) and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl AgentArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl < 2 {
            return Err(ConfigError::TtlTooShort(self.ttl));
        }
        if let Some(t) = self.route_table
            && matches!(t, 0 | 253..=255)
        {
            return Err(ConfigError::Invalid(format!(
                "--route-table {t} is the kernel's own (0 unspec, 253 default, 254 main, 255 local): pick a table of its own for routed VIPs"
            )));
        }
        if self.resync_interval == 0 {
            return Err(ConfigError::Invalid(
                "--resync-interval must be at least 1".into(),
            ));
        }
        if self.max_record_age < 60 {
            return Err(ConfigError::Invalid(
                "--max-record-age must be at least 60 seconds".into(),
            ));
        }
        for s in &self.segments {
            crate::registry::segment::validate_segment_name(s)?;
        }
        if let Some(b) = &self.bridge {
            crate::registry::segment::validate_segment_name(b)
                .map_err(|e| ConfigError::Invalid(format!("--bridge: {e}")))?;
        }
        if self.keepalive_interval < 2 {
            return Err(ConfigError::Invalid(
                "--keepalive-interval must be at least 2 seconds (etcd clamps shorter leases)"
                    .into(),
            ));
        }
        for (name, v) in [
            ("--health-check-interval", self.health_check_interval),
            ("--health-check-timeout", self.health_check_timeout),
            ("--arp-gratuitous-interval", self.arp_gratuitous_interval),
            ("--heartbeat-interval", self.heartbeat_interval),
            ("--probe-interval", self.probe_interval),
            ("--notify-timeout", self.notify_timeout),
        ] {
            // Shorter than a millisecond rounds to nothing on some timers.
            if !(v.is_finite() && (0.001..86_400.0).contains(&v)) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be a number of seconds from 0.001 to 86400, not {v}"
                )));
            }
        }
        if self.garp_refresh != 0.0
            && !(self.garp_refresh.is_finite() && (0.1..86_400.0).contains(&self.garp_refresh))
        {
            return Err(ConfigError::Invalid(format!(
                "--garp-refresh must be 0 (off) or a number of seconds from 0.1 to 86400, not {}",
                self.garp_refresh
            )));
        }
        if !(2..=64).contains(&self.heartbeat_fanout) || !self.heartbeat_fanout.is_multiple_of(2) {
            return Err(ConfigError::Invalid(format!(
                "--heartbeat-fanout must be an even number from 2 to 64, not {}",
                self.heartbeat_fanout
            )));
        }
        if self.probe_misses < 2 {
            return Err(ConfigError::Invalid(
                "--probe-misses must be at least 2".into(),
            ));
        }
        if self.fail_count_before_failover == 0 {
            return Err(ConfigError::Invalid(
                "--fail-count-before-failover must be at least 1".into(),
            ));
        }
        if let Some(i) = &self.vip_interface {
            crate::registry::segment::validate_segment_name(i)
                .map_err(|e| ConfigError::Invalid(format!("--vip-interface: {e}")))?;
        }
        if let Some(h) = &self.hostname {
            crate::registry::host::validate_hostname(h)?;
        }
        crate::registry::dnsname::validate_dns_name(&self.dns_domain)
            .map_err(|e| ConfigError::Invalid(format!("--dns-domain: {e}")))?;
        self.overlay()?;
        let hooks = self.notify_hooks()?;
        if self.notify_secret_file.is_none()
            && hooks
                .iter()
                .any(|h| matches!(h, crate::vip::notify::Hook::Http(_)))
        {
            return Err(ConfigError::Invalid(
                "an http:// --notify hook needs --notify-secret-file to sign with".into(),
            ));
        }
        Ok(())
    }

    /// `--notify`, parsed.
    pub fn notify_hooks(&self) -> Result<Vec<crate::vip::notify::Hook>, ConfigError> {
        self.notify
            .iter()
            .map(|h| {
                h.parse()
                    .map_err(|e| ConfigError::Invalid(format!("--notify {e}")))
            })
            .collect()
    }

    /// `--overlay-address`, per segment.
    pub fn overlay(&self) -> Result<BTreeMap<String, BTreeSet<Cidr>>, ConfigError> {
        let mut out: BTreeMap<String, BTreeSet<Cidr>> = BTreeMap::new();
        for item in &self.overlay_addresses {
            let bad =
                |why: String| ConfigError::Invalid(format!("--overlay-address {item:?}: {why}"));
            let (segment, cidr) = item
                .split_once('=')
                .ok_or_else(|| bad("expected SEGMENT=ADDRESS/PREFIX".into()))?;
            if !self.segments.iter().any(|s| s == segment) {
                return Err(bad(format!("segment {segment} is not a --segment")));
            }
            let cidr: Cidr = cidr.parse().map_err(|e: Invalid| bad(e.to_string()))?;
            if !crate::registry::host::underlay_unicast(cidr.addr) {
                return Err(bad(Invalid::OverlayNotUnicast(cidr.addr).to_string()));
            }
            let set = out.entry(segment.to_owned()).or_default();
            set.insert(cidr);
            if set.len() > MAX_OVERLAY_PER_SEGMENT {
                return Err(bad(format!(
                    "at most {MAX_OVERLAY_PER_SEGMENT} addresses per segment"
                )));
            }
        }
        Ok(out)
    }

    #[must_use]
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn parse(args: &[&str]) -> AgentArgs {
        Cli::try_parse_from(std::iter::once("linkmesh").chain(args.iter().copied()))
            .expect("parses")
            .agent
    }

    #[test]
    fn defaults_and_lists() {
        let a = parse(&[
            "--segment",
            "blue,red",
            "--segment",
            "green",
            "--etcd-server",
            "http://a:1,http://b:2",
        ]);
        assert_eq!(a.segments, ["blue", "red", "green"]);
        assert_eq!(a.etcd.etcd_servers, ["http://a:1", "http://b:2"]);
        assert_eq!(a.etcd.prefix, "/linkmesh");
        assert_eq!(a.ttl, 10);
        assert_eq!(a.resync_interval, 30);
        assert_eq!(a.max_record_age, 3600);
        assert!(a.validate().is_ok());
        assert!((a.probe_interval - 0.02).abs() < 1e-9);
        assert_eq!(a.probe_misses, 5);
        assert_eq!(a.heartbeat_port, 4794);
        assert_eq!(a.etcd_loss_policy, "release");
        assert_eq!(a.fast_failover, "auto");
        assert!(parse(&["--probe-misses", "1"]).validate().is_err());
        assert!(parse(&["--probe-interval", "0"]).validate().is_err());
    }

    #[test]
    fn the_dns_domain_is_a_lower_case_dns_name() {
        let a = parse(&["--hosts-dir", "/run/hosts.d"]);
        assert_eq!(a.dns_domain, "linkmesh");
        assert!(a.validate().is_ok());
        assert!(
            parse(&["--dns-domain", "mesh.example.org"])
                .validate()
                .is_ok()
        );
        for bad in ["Mesh", "a_b", "-a", "a..b", ""] {
            let arg = format!("--dns-domain={bad}");
            let e = parse(&[arg.as_str()]).validate().expect_err(bad);
            assert!(e.to_string().contains("--dns-domain"), "{e}");
        }
    }

    #[test]
    fn garp_refresh_is_off_or_a_sane_interval_and_hooks_parse() {
        assert!(parse(&[]).validate().is_ok());
        assert!(parse(&["--garp-refresh", "0.5"]).validate().is_ok());
        for bad in [
            "--garp-refresh=0.01",
            "--garp-refresh=-1",
            "--garp-refresh=NaN",
            "--garp-refresh=100000",
        ] {
            assert!(parse(&[bad]).validate().is_err(), "{bad}");
        }
        assert!(parse(&["--notify", "exec:notify"]).validate().is_ok());
        for bad in [
            vec!["--notify", "exec:a/b"],
            vec!["--notify", "http://127.0.0.1:9/hook"],
            vec!["--notify", "exec:n", "--notify-timeout", "0"],
        ] {
            assert!(parse(&bad).validate().is_err(), "{bad:?}");
        }
        assert!(
            parse(&[
                "--notify",
                "http://127.0.0.1:9/hook",
                "--notify-secret-file",
                "/etc/linkmesh/notify-key"
            ])
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn overlay_addresses_name_joined_segments() {
        let a = parse(&[
            "--segment",
            "blue,red",
            "--overlay-address",
            "blue=198.19.10.1/24,blue=fd00:10::1/64",
            "--overlay-address",
            "red=198.19.20.1/24",
        ]);
        let o = a.overlay().expect("valid");
        assert_eq!(o["blue"].len(), 2);
        assert_eq!(
            o["red"].iter().next().map(ToString::to_string).as_deref(),
            Some("198.19.20.1/24")
        );
        for bad in [
            "green=198.19.10.1/24",
            "blue",
            "blue=198.19.10.1",
            "blue=198.19.10.1/33",
            "blue=127.0.0.1/8",
            "blue=169.254.0.1/16",
            "blue=fe80::1/64",
        ] {
            let a = parse(&["--segment", "blue", "--overlay-address", bad]);
            assert!(a.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_secret_is_required_and_ttl_has_a_floor() {
        let a = parse(&[]);
        assert!(matches!(a.etcd.secrets(), Err(ConfigError::NoSecret)));
        assert!(matches!(
            parse(&["--ttl", "1"]).validate(),
            Err(ConfigError::TtlTooShort(1))
        ));
        assert!(
            parse(&["--segment", "much-too-long-name"])
                .validate()
                .is_err()
        );
        let s = parse(&["--secret", "inline-secret-0123456789"])
            .etcd
            .secrets()
            .expect("secret");
        assert_eq!(s.len(), 1);
    }
}
