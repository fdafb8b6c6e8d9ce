//! Running `linkmesh` in the lab: agents inside host namespaces, admin
//! commands from the root namespace, and waiting for kernel state.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kernel;
use crate::lab::Lab;
use crate::process::Process;

/// The agent binary (`cargo xtask test` builds it first; `LINKMESH_BIN`
/// overrides the path).
#[must_use]
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LINKMESH_BIN") {
        return PathBuf::from(p);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/linkmesh");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p linkmesh` (cargo xtask test does)",
        path.display()
    );
    path
}

/// The CNI plugin binary, beside the agent's (`LINKMESH_CNI_BIN`
/// overrides the path).
#[must_use]
pub fn cni_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LINKMESH_CNI_BIN") {
        return PathBuf::from(p);
    }
    let path = binary().with_file_name("linkmesh-cni");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p linkmesh` (cargo xtask test does)",
        path.display()
    );
    path
}

/// Writes a secret file into the lab's directory.
#[must_use]
pub fn secret_file(lab: &Lab, name: &str, lines: &[&str]) -> PathBuf {
    let path = lab.dir().join(name);
    std::fs::write(&path, lines.join("\n")).expect("writing a secret file");
    path
}

/// Runs an admin command (`linkmesh segment ...`) from the root namespace;
/// returns stdout, panicking with stderr on failure.
#[must_use]
pub fn admin(etcd: &str, secret: &Path, args: &[&str]) -> String {
    let out = Command::new(binary())
        .args(args)
        .args([
            "--etcd-server",
            etcd,
            "--prefix",
            "/linkmesh",
            "--secret-file",
        ])
        .arg(secret)
        .output()
        .expect("running linkmesh");
    assert!(
        out.status.success(),
        "linkmesh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An agent to start in a lab host: where etcd is, the secret, the
/// segments it joins, more options, and the label of its log file
/// (`<host>-<label>.log`, default `agent`).
#[must_use]
pub struct Agent<'a> {
    lab: &'a Lab,
    host: u8,
    etcd: String,
    secret: PathBuf,
    segments: Vec<String>,
    args: Vec<String>,
    label: String,
}

impl<'a> Agent<'a> {
    /// An agent in host `host` of `lab` that reaches etcd at `etcd` (the
    /// `--etcd-server` value) and signs with the secret file `secret`.
    pub fn new(lab: &'a Lab, host: u8, etcd: &str, secret: &Path) -> Self {
        Self {
            lab,
            host,
            etcd: etcd.to_owned(),
            secret: secret.to_path_buf(),
            segments: Vec::new(),
            args: Vec::new(),
            label: "agent".to_owned(),
        }
    }

    /// Joins these segments.
    pub fn segments(mut self, segments: &[&str]) -> Self {
        self.segments = segments.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Adds these options (after the defaults, so they win).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Logs to `<host>-<label>.log`.
    pub fn label(mut self, label: &str) -> Self {
        label.clone_into(&mut self.label);
        self
    }

    /// The command it runs (to add to it, environment variables say).
    #[must_use]
    pub fn command(&self) -> Command {
        let host = self.lab.host(self.host);
        let mut cmd = Command::new(binary());
        cmd.args([
            "agent",
            "--etcd-server",
            &self.etcd,
            "--hostname",
            &host.name,
            "--device",
            &host.ifname,
        ])
        .arg("--secret-file")
        .arg(&self.secret)
        .args(if self.segments.is_empty() {
            vec![]
        } else {
            vec!["--segment".to_owned(), self.segments.join(",")]
        })
        // Per host, and the same across restarts (the VIP lease id lives here).
        .arg("--state-dir")
        .arg(self.lab.dir().join(format!("{}-state", host.name)))
        .args(&self.args)
        .env("LINKMESH_LOG", "info,linkmesh=debug")
        .env("NO_COLOR", "1");
        cmd
    }

    /// Starts it inside its host's namespace; the lab kills it on drop at
    /// the latest.
    #[must_use = "dropping the last handle kills the agent"]
    pub fn start(self) -> Process {
        self.start_with(self.command())
    }

    /// Starts `cmd` (this agent's [`Agent::command`], changed) as it.
    #[must_use = "dropping the last handle kills the agent"]
    pub fn start_with(&self, cmd: Command) -> Process {
        self.lab.spawn(self.host, &self.label, cmd)
    }
}

/// Polls `f` every 20 ms until it is true or `timeout` passes; returns the
/// time it took, or `None`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Peers (zero-MAC, `NTF_SELF`, permanent FDB destinations) of device
/// `device` in namespace `ns`; `None` when the device does not exist.
#[must_use]
pub fn peers(ns: &str, device: &str) -> Option<Vec<std::net::IpAddr>> {
    let link = kernel::link(ns, device)?;
    let mut out: Vec<_> = kernel::fdb(ns)
        .into_iter()
        .filter(|e| e.ifindex == link.index && e.mac == [0; 6] && e.own && e.permanent)
        .filter_map(|e| e.dst)
        .collect();
    out.sort();
    Some(out)
}

/// Waits until `device` in `ns` has exactly `want` as peers; returns the
/// time it took, or `None`.
#[must_use]
pub fn wait_peers(
    ns: &str,
    device: &str,
    want: &[std::net::IpAddr],
    timeout: Duration,
) -> Option<Duration> {
    let mut want = want.to_vec();
    want.sort();
    wait_until(timeout, || peers(ns, device).as_deref() == Some(&want[..]))
}

/// Adds `addr/prefix` to `device` in `ns` (test plumbing).
pub fn add_address(ns: &str, device: &str, cidr: &str) {
    let out = Command::new("ip")
        .args(["-n", ns, "addr", "add", cidr, "dev", device])
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip addr add {cidr} dev {device} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pings `target` from namespace `ns`: `count` probes `interval` apart;
/// returns (transmitted, received).
#[must_use]
pub fn ping(ns: &str, target: &str, count: u32, interval: &str) -> (u32, u32) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "1",
            target,
        ])
        .output()
        .expect("running ping");
    let text = String::from_utf8_lossy(&out.stdout);
    ping_summary(&text).unwrap_or_else(|| panic!("ping printed no summary: {text}"))
}

/// (transmitted, received) from ping's closing summary, if it printed one.
#[must_use]
pub fn ping_summary(output: &str) -> Option<(u32, u32)> {
    let line = output.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let tx = numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let rx = numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    Some((tx, rx))
}

/// The longest gap between replies in `ping -D` output (the client-side
/// outage when probing every 10 ms); `None` with fewer than two replies.
#[must_use]
pub fn longest_gap(output: &str) -> Option<Duration> {
    let stamps: Vec<f64> = output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let gap = stamps
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0_f64, f64::max);
    (stamps.len() >= 2).then(|| Duration::from_secs_f64(gap))
}

/// ping's arguments for a probe of `target` every `interval` for
/// `seconds`, with timestamps (`-D`).
fn probe_args(target: &str, seconds: u32, interval: Duration) -> Vec<String> {
    let every = format!("{:.3}", interval.as_secs_f64());
    ["-n", "-D", "-i", every.as_str(), "-W", "1", "-w"]
        .into_iter()
        .map(str::to_owned)
        .chain([seconds.to_string(), target.to_owned()])
        .collect()
}

/// Pings `target` from namespace `ns` every 10 ms for `seconds`, with
/// timestamps (`ping -D`), on a thread; join it for the output.
#[must_use]
pub fn probe_every_10ms(
    ns: &str,
    target: &str,
    seconds: u32,
) -> std::thread::JoinHandle<std::io::Result<String>> {
    probe_every(ns, target, seconds, Duration::from_millis(10))
}

/// Like [`probe_every_10ms`], every `interval` (below 2 ms only as root).
#[must_use]
pub fn probe_every(
    ns: &str,
    target: &str,
    seconds: u32,
    interval: Duration,
) -> std::thread::JoinHandle<std::io::Result<String>> {
    let (ns, target) = (ns.to_owned(), target.to_owned());
    std::thread::spawn(move || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "ping"])
            .args(probe_args(&target, seconds, interval))
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })
}

/// Like [`probe_every_10ms`], as a process of the lab in host `host`
/// (killed with the lab, so a failing test leaves no ping behind); its
/// output is the process's log (`<host>-<label>.log`).
pub fn start_probe(lab: &Lab, host: u8, label: &str, target: &str, seconds: u32) -> Process {
    let mut cmd = Command::new("ping");
    cmd.args(probe_args(target, seconds, Duration::from_millis(10)));
    lab.spawn(host, label, cmd)
}

/// Runs `cmd` (a `linkmesh` command) to the end without a backtrace on
/// errors; returns (success, stdout, stderr).
#[must_use]
pub fn outcome(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running linkmesh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `linkmesh ARGS` inside host `host`'s namespace (where its agent's
/// API listens on 127.0.0.1:1313); stdout, or stderr as the error.
pub fn in_host(lab: &Lab, host: u8, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.host(host).netns])
        .arg(binary())
        .args(args)
        .output()
        .map_err(|e| format!("running linkmesh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// An HTTP/1.1 request to the agent API inside namespace `ns`
/// (127.0.0.1:1313); returns the status code and the body.
#[must_use]
pub fn http(
    ns: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: Option<&str>,
) -> (u16, String) {
    use base64::Engine as _;
    let body = body.unwrap_or("");
    let auth = auth.map_or_else(String::new, |a| {
        let enc = base64::engine::general_purpose::STANDARD.encode(a);
        format!("Authorization: Basic {enc}\r\n")
    });
    http_raw(
        ns,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Whether the agent API in `ns` (127.0.0.1:1313) accepts connections.
#[must_use]
pub fn api_up(ns: &str) -> bool {
    crate::netns::run_in(ns, || {
        std::net::TcpStream::connect("127.0.0.1:1313").is_ok()
    })
}

/// Waits until every agent of `agents` has its eBPF VIP watcher loaded
/// (10 s at most), then a second more for their probes and heartbeats to
/// settle: what a data-plane failover needs from the standbys. Panics if
/// one never loads it.
pub fn wait_watchers(agents: &[crate::process::Process]) {
    let loaded = wait_until(Duration::from_secs(10), || {
        agents
            .iter()
            .all(|a| a.log().contains("VIP watcher loaded"))
    });
    assert!(loaded.is_some(), "every agent's VIP watcher loads");
    std::thread::sleep(Duration::from_secs(1));
}

/// `GET /metrics` from the agent in `ns`: each integer sample's name
/// (with its labels) and value; empty while the API does not answer.
#[must_use]
pub fn metrics(ns: &str) -> Vec<(String, u64)> {
    if !api_up(ns) {
        return Vec::new();
    }
    let (_, body) = http(ns, "GET", "/metrics", None, None);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of integer sample `name` (with its labels, if it has any)
/// from the agent in `ns`.
#[must_use]
pub fn metric(ns: &str, name: &str) -> Option<u64> {
    metrics(ns)
        .into_iter()
        .find_map(|(n, v)| (n == name).then_some(v))
}

/// Sends `request` as is to the API (127.0.0.1:1313) in `ns`: the status
/// code and body.
#[must_use]
pub fn http_raw(ns: &str, request: String) -> (u16, String) {
    use std::io::{Read, Write};
    crate::netns::run_in(ns, move || {
        let mut s = std::net::TcpStream::connect("127.0.0.1:1313").expect("connecting to the API");
        s.write_all(request.as_bytes()).expect("sending");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("reading");
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
}

/// `linkmesh peers --json` on `host`: the row of every peer, by host name
/// (empty until the API is up and the peer watcher is loaded).
#[must_use]
pub fn peer_rows(lab: &Lab, host: u8) -> std::collections::BTreeMap<String, serde_json::Value> {
    let Ok(text) = in_host(lab, host, &["peers", "--json"]) else {
        return std::collections::BTreeMap::new();
    };
    let report: serde_json::Value = serde_json::from_str(&text).expect("peers JSON");
    if report["watching"] != true {
        return std::collections::BTreeMap::new();
    }
    report["peers"]
        .as_array()
        .expect("a peer list")
        .iter()
        .map(|p| (p["hostname"].as_str().expect("name").to_owned(), p.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_read_from_ping_timestamps() {
        let out = "PING x\n[100.000] 64 bytes from x: icmp_seq=1\n[100.010] 64 bytes from x: icmp_seq=2\n\
                   [100.350] 64 bytes from x: icmp_seq=30\n[100.360] 64 bytes from x\n";
        let gap = longest_gap(out).expect("a gap");
        assert!((gap.as_secs_f64() - 0.34).abs() < 1e-6, "{gap:?}");
        assert_eq!(longest_gap("[1.0] 64 bytes from x"), None);
    }
}
