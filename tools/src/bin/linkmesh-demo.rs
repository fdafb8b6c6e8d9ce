//! `cargo xtask demo`: linkmesh, live, on this machine.
//!
//! etcd plus three hosts and a client in network namespaces (the test lab,
//! 198.18.0.0/15 only): a segment forms a VXLAN mesh, a floating IP gets an
//! owner, the owner is hard-killed while the client probes it, and a
//! survivor shows what it sees. Everything is torn down on exit, Ctrl-C
//! included. `--ci` runs one cycle unattended and exits 0 only if every
//! step succeeded; without it the lab stays up, showing peer liveness,
//! until Ctrl-C. `--keep` leaves the lab up after the last step (and
//! exits), `--down` removes a kept lab.

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use linkmesh_tests::agent::{self, Agent, add_address, admin, ping};
use linkmesh_tests::etcd::Etcd;
use linkmesh_tests::lab::{Lab, mac_string};
use linkmesh_tests::process::Process;

/// `println!` that never fails: stdout may be a pipe whose reader died of
/// the same Ctrl-C (`cargo xtask demo | tee demo.log`), and the teardown
/// that follows must still run. Once a write fails, the rest is dropped.
macro_rules! say {
    ($($arg:tt)*) => {
        out(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes `text` to stdout, ignoring errors (see [`say!`]).
fn out(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// `eprintln!` that never fails (see [`say!`]).
macro_rules! esay {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

use linkmesh_tests::SECRET;
const HOSTS: u8 = 3;
const CLIENT: u8 = 4;

/// Set by SIGINT/SIGTERM: every wait checks it, so the lab is dropped (and
/// torn down) on the main thread.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

fn interrupted() -> anyhow::Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, returning early with an error on Ctrl-C.
fn pause(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        interrupted()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    interrupted()
}

/// Polls `f` every 20 ms until it holds (its time) or `timeout` passes.
fn wait(timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<Option<Duration>> {
    let start = Instant::now();
    loop {
        interrupted()?;
        if f() {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > timeout {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A numbered step: a progress line now, its time when done.
struct Step {
    started: Instant,
}

impl Step {
    fn start(n: u8, total: u8, what: &str) -> Self {
        say!("\n==> [{n}/{total}] {what}");
        Self {
            started: Instant::now(),
        }
    }

    fn done(self) {
        say!("    ok ({:.1} s)", self.started.elapsed().as_secs_f64());
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// `linkmesh ARGS` inside a host (where its agent's API listens).
fn in_host(lab: &Lab, host: u8, args: &[&str]) -> anyhow::Result<String> {
    agent::in_host(lab, host, args)
        .map_err(|e| anyhow::anyhow!("linkmesh {args:?} in h{host}: {}", e.trim()))
}

fn indent(text: &str) -> String {
    text.lines().fold(String::new(), |mut out, l| {
        out.push_str("    ");
        out.push_str(l);
        out.push('\n');
        out
    })
}

struct Demo {
    lab: Lab,
    etcd: Etcd,
    secret: std::path::PathBuf,
    vip: IpAddr,
    agents: Vec<Option<Process>>,
}

impl Demo {
    fn overlay(&self, host: u8) -> String {
        format!("198.19.{}.{host}", self.lab.slot())
    }

    fn admin(&self, args: &[&str]) -> String {
        admin(&self.etcd.endpoint(), &self.secret, args)
    }

    fn holders(&self) -> Vec<u8> {
        self.lab.holders(self.vip, 1..=HOSTS)
    }

    fn logs(&self) -> String {
        self.agents.iter().flatten().map(Process::log).collect()
    }
}

const STEPS: u8 = 6;

fn setup() -> anyhow::Result<Demo> {
    let step = Step::start(
        1,
        STEPS,
        "lab: etcd, hosts h1-h3 and a client in network namespaces",
    );
    let lab = Lab::new(CLIENT);
    let etcd = Etcd::start_on(IpAddr::V4(lab.gateway()));
    let secret = agent::secret_file(&lab, "secret", &[SECRET]);
    let vip: IpAddr = format!("198.18.{}.100", lab.slot()).parse()?;
    say!(
        "    etcd at {}; hosts {}; underlay 198.18.{}.0/24",
        etcd.endpoint(),
        lab.namespaces().join(" "),
        lab.slot()
    );
    let demo = Demo {
        lab,
        etcd,
        secret,
        vip,
        agents: Vec::new(),
    };
    out(&indent(
        &demo.admin(&["segment", "add", "blue", "--vni", "100"]),
    ));
    out(&indent(&demo.admin(&["ip", "add", &format!("{vip}/24")])));
    say!("    segment blue (VNI 100) and floating IP {vip}/24 defined (signed, in etcd)");
    step.done();
    Ok(demo)
}

fn start_agents(d: &mut Demo) -> anyhow::Result<()> {
    let step = Step::start(2, STEPS, "agents: linkmesh agent on h1, h2, h3");
    for h in 1..=HOSTS {
        d.agents.push(Some(
            Agent::new(&d.lab, h, &d.etcd.endpoint(), &d.secret)
                .segments(&["blue"])
                .args(&["--vip-interface", "eth0"])
                .start(),
        ));
    }
    let ready = wait(Duration::from_secs(20), || {
        d.agents.iter().flatten().all(|a| {
            let log = a.log();
            log.contains("peer watcher attached") && log.contains("eBPF VIP watcher loaded")
        })
    })?;
    ensure!(ready.is_some(), "the agents did not start:\n{}", d.logs());
    step.done();
    Ok(())
}

fn mesh(d: &Demo) -> anyhow::Result<()> {
    let step = Step::start(
        3,
        STEPS,
        "the mesh forms: VXLAN device blue and one FDB entry per peer",
    );
    for h in 1..=HOSTS {
        let ns = d.lab.host(h).netns.clone();
        let mut want: Vec<IpAddr> = (1..=HOSTS)
            .filter(|o| *o != h)
            .map(|o| IpAddr::V4(d.lab.host(o).addr))
            .collect();
        want.sort();
        let took = wait(Duration::from_secs(15), || {
            agent::peers(&ns, "blue").as_deref() == Some(&want[..])
        })?
        .with_context(|| format!("h{h} did not program its peers:\n{}", d.logs()))?;
        let peers: Vec<String> = want.iter().map(ToString::to_string).collect();
        say!("    h{h} blue -> {} (in {})", peers.join(", "), ms(took));
        add_address(&ns, "blue", &format!("{}/24", d.overlay(h)));
    }
    for from in 1..=HOSTS {
        for to in (1..=HOSTS).filter(|t| *t != from) {
            interrupted()?;
            let (tx, rx) = ping(&d.lab.host(from).netns, &d.overlay(to), 3, "0.2");
            say!(
                "    ping h{from} -> h{to} over the overlay ({}): {rx}/{tx}",
                d.overlay(to)
            );
            ensure!(rx == tx, "h{from} -> h{to}: {rx} of {tx} replies");
        }
    }
    step.done();
    Ok(())
}

fn owner(d: &Demo) -> anyhow::Result<u8> {
    let step = Step::start(4, STEPS, "the floating IP: one owner, elected through etcd");
    let mut owner = 0;
    wait(Duration::from_secs(15), || {
        let h = d.holders();
        owner = h.first().copied().unwrap_or(0);
        h.len() == 1
    })?
    .with_context(|| format!("no single holder: {:?}\n{}", d.holders(), d.logs()))?;
    let host = d.lab.host(owner);
    say!(
        "    {} is held by {} ({}, MAC {})",
        d.vip,
        host.name,
        host.addr,
        mac_string(host.mac)
    );
    let (tx, rx) = ping(&d.lab.host(CLIENT).netns, &d.vip.to_string(), 3, "0.2");
    say!("    ping client -> {}: {rx}/{tx}", d.vip);
    ensure!(rx == tx, "the client does not reach the VIP");
    out(&indent(&d.admin(&["ip", "ls"])));
    step.done();
    Ok(owner)
}

fn crash(d: &mut Demo, owner: u8) -> anyhow::Result<u8> {
    let step = Step::start(
        5,
        STEPS,
        "hard crash: cut the owner's cable and SIGKILL its agent, the client probing every 10 ms",
    );
    // Let the standbys see each other's state (fast failover needs two).
    pause(Duration::from_millis(1500))?;
    let pinger = agent::probe_every_10ms(&d.lab.host(CLIENT).netns, &d.vip.to_string(), 4);
    pause(Duration::from_secs(1))?;
    d.lab.host(owner).cut();
    if let Some(agent) = d.agents[usize::from(owner - 1)].take() {
        agent.kill();
        d.agents[usize::from(owner - 1)] = Some(agent);
    }
    say!("    h{owner} cut off and killed");
    let output = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("the pinger panicked"))?
        .context("running ping")?;
    interrupted()?;
    let gap = agent::longest_gap(&output).context("the client got fewer than two replies")?;
    let successor = d
        .holders()
        .into_iter()
        .find(|h| *h != owner)
        .with_context(|| format!("nobody took over:\n{}", d.logs()))?;
    let revoked = d.logs().contains("suspect quorum");
    say!(
        "    h{successor} took over; client outage {} ({})",
        ms(gap),
        if revoked {
            "data-plane confirmed: the standbys' ARP probes went unanswered, a quorum revoked the owner's lease"
        } else {
            "the owner's lease expired"
        }
    );
    step.done();
    Ok(successor)
}

fn survivor(d: &Demo, survivor: u8) -> anyhow::Result<()> {
    let step = Step::start(6, STEPS, "what a survivor sees");
    say!("    linkmesh status (in h{survivor}):");
    out(&indent(&in_host(&d.lab, survivor, &["status"])?));
    step.done();
    Ok(())
}

/// Without `--ci`: the peer table every 2 s until Ctrl-C.
fn live(d: &Demo, survivor: u8) -> anyhow::Result<()> {
    say!(
        "\nThe lab is up. Peer liveness from h{survivor} every 2 s; Ctrl-C tears everything down."
    );
    loop {
        pause(Duration::from_secs(2))?;
        say!("");
        out(&indent(&in_host(&d.lab, survivor, &["peers"])?));
    }
}

/// Where `--keep` records what it left up, for `--down`.
const KEPT: &str = "/run/linkmesh-demo.json";

/// `--keep`: the crashed host rejoins, the lab's parts are recorded in
/// [`KEPT`], and the demo exits without tearing anything down.
fn keep(mut d: Demo, crashed: u8) -> anyhow::Result<()> {
    d.lab.host(crashed).reconnect();
    d.agents[usize::from(crashed - 1)] = Some(
        Agent::new(&d.lab, crashed, &d.etcd.endpoint(), &d.secret)
            .segments(&["blue"])
            .args(&["--vip-interface", "eth0"])
            .start(),
    );
    let back = wait(Duration::from_secs(15), || {
        in_host(&d.lab, crashed, &["status", "--json"]).is_ok()
    })?;
    ensure!(
        back.is_some(),
        "h{crashed}'s agent did not come back:\n{}",
        d.logs()
    );
    let mut pids = d.lab.pids();
    pids.extend(d.etcd.pid());
    let state = serde_json::json!({
        "pids": pids,
        "namespaces": d.lab.all_namespaces(),
        "links": [d.lab.root_interface()],
        "dirs": [d.lab.dir(), d.etcd.dir()],
    });
    std::fs::write(KEPT, serde_json::to_string_pretty(&state)?)
        .with_context(|| format!("writing {KEPT}"))?;
    let ns = |h: u8| d.lab.host(h).netns.clone();
    let bin = agent::binary();
    say!(
        "\n==> the lab stays up (--keep); h{crashed} reconnected and its agent restarted\n\
         \n    a shell on a host:      ip netns exec {} bash   (h2: {}, h3: {}, client: {})\
         \n    what a host sees:       ip netns exec {} {} status\
         \n    the floating IP:        {} ip ls --etcd-server {} --secret-file {}\
         \n    the agents' logs:       {}/h*-agent.log\
         \n    tear it all down:       cargo xtask demo --down",
        ns(1),
        ns(2),
        ns(3),
        ns(CLIENT),
        ns(1),
        bin.display(),
        bin.display(),
        d.etcd.endpoint(),
        d.secret.display(),
        d.lab.dir().display(),
    );
    // No destructor runs: the processes, namespaces and files stay.
    std::mem::forget(d);
    Ok(())
}

/// `--down`: removes what `--keep` left up.
fn down() -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(KEPT) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            say!("no kept demo lab ({KEPT} does not exist)");
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {KEPT}")),
    };
    let state: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("reading {KEPT}"))?;
    let strings = |key: &str| -> Vec<String> {
        state[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut stopped = 0;
    for pid in state["pids"].as_array().into_iter().flatten() {
        let Some(pid) = pid.as_i64().and_then(|p| i32::try_from(p).ok()) else {
            continue;
        };
        // Only a lab process: an etcd or a linkmesh agent (PIDs get reused).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !(cmdline.contains("linkmesh") || cmdline.contains("--name=lmt-")) {
            continue;
        }
        // SAFETY: kill(2) with a PID read from our own record.
        if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
            stopped += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let namespaces = strings("namespaces");
    for ns in &namespaces {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", ns])
            .output();
    }
    for link in strings("links") {
        if std::path::Path::new("/sys/class/net").join(&link).exists() {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &link])
                .output();
        }
    }
    for dir in strings("dirs") {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::fs::remove_file(KEPT).with_context(|| format!("removing {KEPT}"))?;
    say!(
        "demo lab down: {stopped} processes stopped, {} namespaces removed",
        namespaces.len()
    );
    Ok(())
}

/// The steps, on the lab in `slot` (which `main` tears down, after saying
/// so, by dropping it).
fn run(ci: bool, kept: bool, slot: &mut Option<Demo>) -> anyhow::Result<()> {
    let d = slot.insert(setup()?);
    start_agents(d)?;
    mesh(d)?;
    let owner = owner(d)?;
    let successor = crash(d, owner)?;
    survivor(d, successor)?;
    if kept {
        return keep(slot.take().context("the demo lab")?, owner);
    }
    if !ci {
        live(d, successor)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    install_signal_handlers();
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    let (ci, kept) = (has("--ci"), has("--keep"));
    if !linkmesh_tests::is_root() {
        esay!("the demo creates network namespaces: run it as root");
        return ExitCode::FAILURE;
    }
    if has("--down") {
        return match down() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                esay!("demo --down failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if kept {
        if std::path::Path::new(KEPT).exists() {
            esay!("a kept demo lab is up already: cargo xtask demo --down first");
            return ExitCode::FAILURE;
        }
        linkmesh_tests::process::detach_children();
    }
    let mut lab = None;
    let result = run(ci, kept, &mut lab);
    let code = match &result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if STOP.load(Ordering::SeqCst) => {
            say!("\n==> {e}");
            if ci {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            esay!("\ndemo failed: {e:#}");
            ExitCode::FAILURE
        }
    };
    if let Some(lab) = lab {
        say!("\n==> tearing down (namespaces, links, etcd, agents)");
        drop(lab);
        say!("    done");
    }
    if result.is_ok() {
        say!("demo finished: every step succeeded");
    }
    code
}
