//! N hosts in network namespaces on one underlay bridge.
//!
//! Layout for slot S (1..=250, unique among running labs):
//! - namespace `lmt-S-ul` holds the underlay bridge `br0`;
//! - namespace `lmt-S-hI` is host I (1-based): `eth0` with 198.18.S.I/24 and
//!   MAC 02:18:S:00:00:I, a default route via the root namespace's address;
//! - the root namespace gets one veth, `lmtS`, with 198.18.S.254/24 on the
//!   same underlay, where the harness's etcd listens;
//! - overlay (segment device) addresses come from 198.19.S.0/24
//!   ([`Lab::overlay_address`]).
//!
//! Only addresses from 198.18.0.0/15 are used; nothing touches the machine's
//! own interfaces.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::PREFIX;
use crate::netns;
use crate::process::Process;

const MAX_SLOT: u8 = 250;
const SLOT_DIR: &str = "/run/linkmesh-lab";

/// One host of the lab.
#[derive(Clone, Debug)]
pub struct Host {
    /// 1-based host number.
    pub index: u8,
    /// Short name, `h1`, `h2`, ...
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its underlay interface inside the namespace.
    pub ifname: String,
    pub addr: Ipv4Addr,
    pub mac: [u8; 6],
    /// The host's port on the underlay bridge (in the underlay namespace).
    port: String,
    underlay_ns: String,
}

impl Host {
    /// Runs `f` on a thread inside this host's namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        netns::run_in(&self.netns, f)
    }

    /// Runs an async block inside this host's namespace.
    pub fn block_on<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        netns::block_on_in(&self.netns, f)
    }

    /// Takes the host's underlay link down on the bridge side: the host is
    /// cut off, its own interface stays up (a pulled cable).
    pub fn cut(&self) {
        ip(&["-n", &self.underlay_ns, "link", "set", &self.port, "down"])
            .unwrap_or_else(|e| panic!("cutting {}: {e}", self.name));
    }

    /// Reconnects a host cut with [`Host::cut`].
    pub fn reconnect(&self) {
        ip(&["-n", &self.underlay_ns, "link", "set", &self.port, "up"])
            .unwrap_or_else(|e| panic!("reconnecting {}: {e}", self.name));
    }
}

/// An exclusive lab slot, held with `flock` for the life of the lab. The
/// kernel drops the lock when the holder dies, however it dies.
struct Slot {
    number: u8,
    _lock: File,
}

impl Slot {
    fn acquire() -> io::Result<Self> {
        fs::create_dir_all(SLOT_DIR)?;
        for number in 1..=MAX_SLOT {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(Path::new(SLOT_DIR).join(format!("slot-{number}.lock")))?;
            // SAFETY: flock on a valid fd.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Self {
                    number,
                    _lock: file,
                });
            }
        }
        Err(io::Error::other(format!(
            "all {MAX_SLOT} lab slots are taken"
        )))
    }
}

/// Hosts in namespaces on an underlay bridge; removed on drop.
pub struct Lab {
    slot: Slot,
    underlay_ns: String,
    root_if: String,
    hosts: Vec<Host>,
    dir: tempfile::TempDir,
    processes: Mutex<Vec<Process>>,
    /// Namespaces added with [`Lab::add_namespace`].
    extra: Mutex<Vec<String>>,
}

impl Lab {
    /// Creates `hosts` hosts (at most 200). Panics with context on failure,
    /// after removing whatever was already created.
    #[must_use]
    pub fn new(hosts: u8) -> Self {
        assert!((1..=200).contains(&hosts), "a lab has 1..=200 hosts");
        let slot = Slot::acquire().expect("acquiring a lab slot");
        let s = slot.number;
        sweep_slot(s);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}-{s}-"))
            .tempdir()
            .expect("creating the lab's temp dir");
        let mut lab = Self {
            slot,
            underlay_ns: format!("{PREFIX}-{s}-ul"),
            root_if: format!("{PREFIX}{s}"),
            hosts: Vec::new(),
            dir,
            processes: Mutex::new(Vec::new()),
            extra: Mutex::new(Vec::new()),
        };
        // On failure `lab` drops here and removes what exists so far.
        lab.build(hosts)
            .unwrap_or_else(|e| panic!("building lab slot {s}: {e}"));
        lab
    }

    fn build(&mut self, hosts: u8) -> io::Result<()> {
        let s = self.slot.number;
        let ul = self.underlay_ns.clone();
        ip(&["netns", "add", &ul])?;
        ip(&["-n", &ul, "link", "set", "lo", "up"])?;
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ul, "link", "set", "br0", "up"])?;

        let gateway = self.gateway().to_string();
        ip(&[
            "link",
            "add",
            &self.root_if,
            "type",
            "veth",
            "peer",
            "name",
            "root",
            "netns",
            &ul,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            &self.root_if,
        ])?;
        ip(&["link", "set", &self.root_if, "up"])?;
        ip(&["-n", &ul, "link", "set", "root", "master", "br0", "up"])?;

        for index in 1..=hosts {
            let host = Host {
                index,
                name: format!("h{index}"),
                netns: format!("{PREFIX}-{s}-h{index}"),
                ifname: "eth0".to_owned(),
                addr: Ipv4Addr::new(198, 18, s, index),
                mac: [0x02, 0x18, s, 0, 0, index],
                port: format!("h{index}"),
                underlay_ns: ul.clone(),
            };
            let ns = host.netns.as_str();
            ip(&["netns", "add", ns])?;
            // Registered before it is complete, so a failure below still
            // removes this namespace.
            self.hosts.push(host.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &ul, "link", "add", &host.port, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ])?;
            ip(&["-n", &ul, "link", "set", &host.port, "master", "br0", "up"])?;
            let mac = mac_string(host.mac);
            ip(&["-n", ns, "link", "set", "eth0", "address", &mac, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "route", "add", "default", "via", &gateway])?;
        }
        Ok(())
    }

    /// The lab's slot number (the third octet of its addresses).
    #[must_use]
    pub fn slot(&self) -> u8 {
        self.slot.number
    }

    /// The root namespace's address on the underlay (198.18.S.254).
    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.slot.number, 254)
    }

    /// Host `index`'s overlay address 198.19.S.(offset + index), for a
    /// segment device (`offset` splits the range between segments).
    #[must_use]
    pub fn overlay_address(&self, index: u8, offset: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.slot.number, offset + index)
    }

    #[must_use]
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `index` (1-based, like the names).
    #[must_use]
    pub fn host(&self, index: u8) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.index == index)
            .unwrap_or_else(|| panic!("the lab has no host {index}"))
    }

    /// Every namespace of the lab (hosts and underlay).
    #[must_use]
    pub fn namespaces(&self) -> Vec<String> {
        let mut all: Vec<_> = self.hosts.iter().map(|h| h.netns.clone()).collect();
        all.push(self.underlay_ns.clone());
        all
    }

    /// Every namespace the lab made: the hosts', the underlay's and the
    /// extra ones.
    #[must_use]
    pub fn all_namespaces(&self) -> Vec<String> {
        let mut all = self.namespaces();
        all.extend(
            self.extra
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        all
    }

    /// PIDs of the processes started with [`Lab::spawn`] that still run.
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|p| p.is_running())
            .map(Process::pid)
            .collect()
    }

    /// Creates an extra, empty namespace `lmt-S-<suffix>` (a workload's, say),
    /// removed with the lab.
    pub fn add_namespace(&self, suffix: &str) -> String {
        let name = format!("{PREFIX}-{}-{suffix}", self.slot.number);
        ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("adding namespace {name}: {e}"));
        self.extra
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(name.clone());
        name
    }

    /// An L3-routed underlay whose far side is a sink: a namespace
    /// `lmt-S-<suffix>` on the underlay bridge with 198.18.S.`index`/24,
    /// that drops whatever it receives for `prefix` (a blackhole route, and
    /// forwarding stays off), and a route for `prefix` via it in each host of
    /// `hosts`. `prefix` must lie in 198.18.0.0/15. Removed with the lab (its
    /// veth goes with its namespace). Returns the sink's namespace and
    /// address.
    pub fn add_sink(
        &self,
        suffix: &str,
        index: u8,
        prefix: &str,
        hosts: &[u8],
    ) -> (String, Ipv4Addr) {
        let s = self.slot.number;
        assert!(
            usize::from(index) > self.hosts.len() && index < 254,
            "the sink's address 198.18.{s}.{index} would clash with a host or the gateway"
        );
        let inside = prefix
            .split_once('/')
            .and_then(|(net, len)| Some((net.parse::<Ipv4Addr>().ok()?, len.parse::<u8>().ok()?)))
            .is_some_and(|(net, len)| {
                let [a, b, ..] = net.octets();
                (15..=32).contains(&len) && a == 198 && b & 0xfe == 18
            });
        assert!(
            inside,
            "the sink's prefix {prefix} is not inside 198.18.0.0/15"
        );
        let addr = Ipv4Addr::new(198, 18, s, index);
        let ns = self.add_namespace(suffix);
        let port: String = format!("s-{suffix}").chars().take(15).collect();
        let ul = self.underlay_ns.as_str();
        let cidr = format!("{addr}/24");
        let via = addr.to_string();
        let mut steps: Vec<Vec<&str>> = vec![
            vec![
                "-n", ul, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
            vec!["-n", ul, "link", "set", &port, "master", "br0", "up"],
            vec!["-n", &ns, "link", "set", "lo", "up"],
            vec!["-n", &ns, "link", "set", "eth0", "up"],
            vec!["-n", &ns, "addr", "add", &cidr, "dev", "eth0"],
            vec!["-n", &ns, "route", "add", "blackhole", prefix],
        ];
        for h in hosts {
            steps.push(vec![
                "-n",
                &self.host(*h).netns,
                "route",
                "add",
                prefix,
                "via",
                &via,
            ]);
        }
        for args in steps {
            ip(&args).unwrap_or_else(|e| panic!("adding the sink {ns}: {e}"));
        }
        (ns, addr)
    }

    /// Hosts (by number, from `hosts`) that have `addr` configured right now.
    #[must_use]
    pub fn holders(&self, addr: std::net::IpAddr, hosts: std::ops::RangeInclusive<u8>) -> Vec<u8> {
        hosts
            .filter(|h| {
                crate::kernel::addresses(&self.host(*h).netns)
                    .iter()
                    .any(|a| a.addr == addr)
            })
            .collect()
    }

    /// The namespace holding the underlay bridge `br0`.
    #[must_use]
    pub fn underlay_namespace(&self) -> &str {
        &self.underlay_ns
    }

    /// The root-namespace veth of the lab.
    #[must_use]
    pub fn root_interface(&self) -> &str {
        &self.root_if
    }

    /// A directory for the test's files; removed with the lab.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `cmd` inside host `index`'s namespace, logging to
    /// `<lab dir>/<host>-<label>.log`. The lab kills it on drop at the latest.
    pub fn spawn(&self, index: u8, label: &str, cmd: Command) -> Process {
        let host = self.host(index);
        let log: PathBuf = self.dir().join(format!("{}-{label}.log", host.name));
        let process = Process::spawn(cmd, Some(&host.netns), &log)
            .unwrap_or_else(|e| panic!("starting {label} in {}: {e}", host.netns));
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(process.clone());
        process
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: a namespace with a process in it outlives `ip netns del`.
        for process in self
            .processes
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            process.kill();
        }
        for host in &self.hosts {
            if let Err(e) = ip(&["netns", "del", &host.netns]) {
                // Not eprintln!: stderr may be a closed pipe, and a panic
                // here would abort the rest of the cleanup.
                let _ = writeln!(
                    io::stderr(),
                    "lab cleanup: deleting namespace {}: {e}",
                    host.netns
                );
            }
        }
        for ns in self
            .extra
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            let _ = ip(&["netns", "del", &ns]);
        }
        // Deleting the underlay namespace destroys the root veth's peer, and
        // with it the root veth; delete it explicitly too, in case.
        let _ = ip(&["netns", "del", &self.underlay_ns]);
        if link_exists(&self.root_if) {
            let _ = ip(&["link", "del", &self.root_if]);
        }
    }
}

/// Removes what a dead holder of slot `s` left behind.
fn sweep_slot(s: u8) {
    let prefix = format!("{PREFIX}-{s}-");
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                eprintln!("lab: removing stale namespace {name}");
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
    let root_if = format!("{PREFIX}{s}");
    if link_exists(&root_if) {
        eprintln!("lab: removing stale link {root_if}");
        let _ = ip(&["link", "del", &root_if]);
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[must_use]
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs iproute2 (lab plumbing only; the agent itself never shells out).
/// In a process group of its own, so a terminal's Ctrl-C, which reaches the
/// whole foreground group, cannot kill it halfway through building or
/// removing a lab.
/// Runs `ip ARGS` for a test's own plumbing, panicking with `ip`'s error.
pub fn must_ip(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).process_group(0).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
