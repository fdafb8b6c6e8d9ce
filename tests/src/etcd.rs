//! A real etcd (Debian's `etcd-server`, 3.4) for tests: one node or a
//! 3-member cluster, on free ports, in a temp data dir, stopped by PID.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::PREFIX;
use crate::process::Process;

const ETCD: &str = "etcd";
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
const START_ATTEMPTS: u32 = 3;

/// One etcd member's addresses and files.
#[derive(Clone, Debug)]
struct MemberSpec {
    name: String,
    /// Shared by every member of one cluster (it seeds the cluster id).
    cluster_token: String,
    ip: IpAddr,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    /// Serve clients over TLS (then health is read from a plain metrics port).
    tls: Option<ServerTls>,
    metrics_port: u16,
    /// More etcd flags (e.g. `--auth-token-ttl=2`).
    extra: Vec<String>,
}

/// What a TLS etcd serves with (PEM files).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, etcd demands client certificates signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl MemberSpec {
    /// The port `/health` answers on.
    fn health_port(&self) -> u16 {
        if self.tls.is_some() {
            self.metrics_port
        } else {
            self.client_port
        }
    }

    fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", SocketAddr::new(self.ip, self.client_port))
    }

    fn peer_url(&self) -> String {
        format!("http://{}", SocketAddr::new(self.ip, self.peer_port))
    }

    fn command(&self, initial_cluster: &str, state: &str) -> Command {
        let mut cmd = Command::new(ETCD);
        // `--name=` with the lab prefix is how `cargo xtask test` finds leftovers.
        cmd.arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={}", self.client_url()))
            .arg(format!("--advertise-client-urls={}", self.client_url()))
            .arg(format!("--listen-peer-urls={}", self.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url()))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--initial-cluster-token={}", self.cluster_token))
            .arg("--log-outputs=stderr")
            .arg("--logger=zap")
            .args(&self.extra);
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!(
                    "--listen-metrics-urls=http://{}",
                    SocketAddr::new(self.ip, self.metrics_port)
                ));
            if let Some(ca) = &tls.client_ca {
                cmd.arg("--client-cert-auth")
                    .arg(format!("--trusted-ca-file={}", ca.display()));
            }
        }
        cmd
    }
}

/// A port that was free a moment ago on `ip`. etcd binds it right after; a
/// lost race shows as a failed start, which [`Etcd::start_on`] retries.
fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|l| l.local_addr())
        .map_or_else(|e| panic!("finding a free port on {ip}: {e}"), |a| a.port())
}

/// Whether `GET /health` on the member answers `"health":"true"`.
/// `GET path` from a member's plain HTTP port (empty if it does not answer).
fn http_get(ip: IpAddr, port: u16, path: &str) -> String {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_millis(200))
    else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

fn healthy(ip: IpAddr, port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET /health HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<_> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The sum of every sample of metric family `family` (the exact name, with
/// or without labels) in Prometheus text `text`; 0 when it has none.
#[must_use]
pub fn metric_family_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A running etcd member, killed (SIGKILL) and its data removed on drop.
pub struct Etcd {
    spec: MemberSpec,
    process: Option<Process>,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// A single-node etcd on 127.0.0.1.
    #[must_use]
    pub fn start() -> Self {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// A single-node etcd listening on `ip` (e.g. a lab's gateway address,
    /// so agents inside the lab's namespaces reach it). Waits until healthy.
    #[must_use]
    pub fn start_on(ip: IpAddr) -> Self {
        Self::start_with(ip, None, &[])
    }

    /// Like [`Etcd::start_on`], serving clients over TLS.
    #[must_use]
    pub fn start_tls_on(ip: IpAddr, tls: &ServerTls) -> Self {
        Self::start_with(ip, Some(tls), &[])
    }

    /// Like [`Etcd::start_on`], with more etcd flags.
    #[must_use]
    pub fn start_with_flags(ip: IpAddr, flags: &[&str]) -> Self {
        Self::start_with(ip, None, flags)
    }

    fn start_with(ip: IpAddr, tls: Option<&ServerTls>, flags: &[&str]) -> Self {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix(&format!("{PREFIX}-etcd-"))
                .tempdir()
                .expect("creating etcd's temp dir");
            let unique = dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let spec = MemberSpec {
                cluster_token: unique.clone(),
                name: unique,
                ip,
                client_port: free_port(ip),
                peer_port: free_port(ip),
                data_dir: dir.path().join("data"),
                log: dir.path().join("etcd.log"),
                tls: tls.cloned(),
                metrics_port: free_port(ip),
                extra: flags.iter().map(|f| (*f).to_owned()).collect(),
            };
            let initial = format!("{}={}", spec.name, spec.peer_url());
            let mut etcd = Self {
                process: None,
                spec,
                dir,
            };
            etcd.launch(&initial, "new");
            match etcd.wait_healthy() {
                Ok(()) => return etcd,
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    fn launch(&mut self, initial_cluster: &str, state: &str) {
        let process = Process::spawn(self.spec.command(initial_cluster, state), None, &self.spec.log)
            .unwrap_or_else(|e| {
                panic!("starting {ETCD} (is Debian's etcd-server installed? `cargo xtask test` installs it): {e}")
            });
        self.process = Some(process);
    }

    fn wait_healthy(&self) -> Result<(), String> {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        while Instant::now() < deadline {
            if healthy(self.spec.ip, self.spec.health_port()) {
                return Ok(());
            }
            if !self.is_running() {
                return Err(format!(
                    "etcd {} exited during start:\n{}",
                    self.spec.name,
                    tail(&self.spec.log, 15)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "etcd {} not healthy after {HEALTH_TIMEOUT:?}:\n{}",
            self.spec.name,
            tail(&self.spec.log, 15)
        ))
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        self.spec.client_url()
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The PID, while running.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.process
            .as_ref()
            .filter(|p| p.is_running())
            .map(Process::pid)
    }

    #[must_use]
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(Process::is_running)
    }

    /// Whether the member answers its health check now.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        healthy(self.spec.ip, self.spec.health_port())
    }

    /// Range (read) requests this member has served so far, from its
    /// Prometheus metrics (`grpc_server_handled_total`).
    #[must_use]
    pub fn range_requests(&self) -> u64 {
        http_get(self.spec.ip, self.spec.health_port(), "/metrics")
            .lines()
            .filter(|l| {
                l.starts_with("grpc_server_handled_total{") && l.contains("grpc_method=\"Range\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// This member's Prometheus metrics, the whole `GET /metrics` text (empty
    /// while it does not answer; [`metric_family_sum`] reads one family).
    /// Read over plain HTTP, so reading them is not itself counted in the
    /// gRPC metrics.
    #[must_use]
    pub fn metrics_text(&self) -> String {
        http_get(self.spec.ip, self.spec.health_port(), "/metrics")
    }

    /// The data and log directory (removed on drop).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs the member (its data stays, so it can be restarted).
    pub fn kill(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill();
        }
    }

    /// Sends `signal` (e.g. SIGSTOP to freeze it, SIGCONT to resume).
    pub fn signal(&self, signal: i32) {
        if let Some(p) = &self.process {
            p.signal(signal)
                .unwrap_or_else(|e| panic!("signalling etcd {}: {e}", self.spec.name));
        }
    }

    /// Runs `f` with a client of this member, from the root namespace.
    fn with_client<F, Fut>(&self, f: F)
    where
        F: FnOnce(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let endpoint = self.endpoint();
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async move {
                let c = etcd_client::Client::connect([endpoint], None)
                    .await
                    .expect("etcd");
                f(c).await;
            });
    }

    /// Turns etcd's auth on with user `root` (role `root`) and `password`.
    pub fn enable_root_auth(&self, password: &str) {
        self.with_client(|mut c| async move {
            c.user_add("root", password, None).await.expect("user");
            let _ = c.role_add("root").await;
            c.user_grant_role("root", "root").await.expect("grant");
            c.auth_enable().await.expect("auth enable");
        });
    }

    /// Puts `value` at `key` (no lease).
    pub fn put(&self, key: &str, value: &str) {
        self.with_client(|mut c| async move {
            c.put(key, value, None).await.expect("put");
        });
    }

    /// Compacts the history up to the current revision (physically, so a
    /// watch from an older revision is refused at once).
    pub fn compact(&self) {
        self.with_client(|mut c| async move {
            let revision = c
                .get("compact-probe", None)
                .await
                .expect("reading the revision")
                .header()
                .expect("a header")
                .revision();
            let physical = etcd_client::CompactionOptions::new().with_physical();
            c.compact(revision, Some(physical))
                .await
                .expect("compacting");
        });
    }

    /// A client connected to this member.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .unwrap_or_else(|e| panic!("connecting to etcd at {}: {e}", self.endpoint()))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What clients are pointed at: one member or a whole cluster.
pub trait Endpoints {
    /// Every member's client URL.
    fn client_urls(&self) -> Vec<String>;

    /// The `--etcd-server` value: every client URL, comma-separated.
    fn server_arg(&self) -> String {
        self.client_urls().join(",")
    }
}

impl Endpoints for Etcd {
    fn client_urls(&self) -> Vec<String> {
        vec![self.endpoint()]
    }
}

impl Endpoints for EtcdCluster {
    fn client_urls(&self) -> Vec<String> {
        self.endpoints()
    }
}

/// A 3-member (or N-member) etcd cluster on loopback.
pub struct EtcdCluster {
    members: Vec<Etcd>,
    initial_cluster: String,
}

impl EtcdCluster {
    /// Starts `size` members on 127.0.0.1 and waits until all are healthy.
    #[must_use]
    pub fn start(size: usize) -> Self {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), size)
    }

    /// Starts `size` members on `ip` (a lab's gateway, so agents in the lab
    /// reach them) and waits until all are healthy.
    #[must_use]
    pub fn start_on(ip: IpAddr, size: usize) -> Self {
        assert!(size >= 1, "a cluster has at least one member");
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut members: Vec<Etcd> = Vec::with_capacity(size);
            let mut token = String::new();
            for i in 0..size {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("{PREFIX}-etcd-"))
                    .tempdir()
                    .expect("creating etcd's temp dir");
                let base = dir
                    .path()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if token.is_empty() {
                    token.clone_from(&base);
                }
                let spec = MemberSpec {
                    cluster_token: token.clone(),
                    name: format!("{base}-m{i}"),
                    ip,
                    client_port: free_port(ip),
                    peer_port: free_port(ip),
                    data_dir: dir.path().join("data"),
                    log: dir.path().join("etcd.log"),
                    tls: None,
                    metrics_port: 0,
                    extra: Vec::new(),
                };
                members.push(Etcd {
                    spec,
                    process: None,
                    dir,
                });
            }
            let initial_cluster = members
                .iter()
                .map(|m| format!("{}={}", m.spec.name, m.spec.peer_url()))
                .collect::<Vec<_>>()
                .join(",");
            for m in &mut members {
                m.launch(&initial_cluster, "new");
            }
            let result = members.iter().try_for_each(Etcd::wait_healthy);
            match result {
                Ok(()) => {
                    return Self {
                        members,
                        initial_cluster,
                    };
                }
                Err(e) => last_error = e,
            }
        }
        panic!("etcd cluster did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    #[must_use]
    pub fn members(&self) -> &[Etcd] {
        &self.members
    }

    #[must_use]
    pub fn member(&self, i: usize) -> &Etcd {
        &self.members[i]
    }

    /// Every member's client URL (what agents get as `--etcd-server`).
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    /// The client URLs of the members running now.
    #[must_use]
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(Etcd::endpoint)
            .collect()
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Restarts a killed member `i` on its old data and waits until healthy.
    pub fn restart(&mut self, i: usize) {
        let member = &mut self.members[i];
        assert!(!member.is_running(), "member {i} is still running");
        member.launch(&self.initial_cluster, "existing");
        if let Err(e) = member.wait_healthy() {
            panic!("restarting etcd member {i}: {e}");
        }
    }

    /// Index of the current leader, asking the live members.
    pub async fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.is_running()) {
            let Ok(mut client) = etcd_client::Client::connect([m.endpoint()], None).await else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            let leader_id = status.leader();
            for (i, candidate) in self
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.is_running())
            {
                let Ok(mut c) = etcd_client::Client::connect([candidate.endpoint()], None).await
                else {
                    continue;
                };
                if let Ok(s) = c.status().await
                    && s.header().is_some_and(|h| h.member_id() == leader_id)
                {
                    return Some(i);
                }
            }
        }
        None
    }
}
