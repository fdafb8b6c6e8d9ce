//! `cargo xtask bench vip`: client-side outage of a floating IP on graceful
//! stop and hard crash, linkmesh against keepalived (VRRP, advert_int 1,
//! 0.1 and 0.02) on the same lab, in the same run.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use linkmesh_tests::agent::{self, Agent, wait_until};
use linkmesh_tests::etcd::Etcd;
use linkmesh_tests::icmp;
use linkmesh_tests::lab::Lab;
use linkmesh_tests::process::Process;

const CLIENT: u8 = 4;
use linkmesh_tests::SECRET;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Graceful,
    HardCrash,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// `fast`: data-plane-confirmed fast failover (the default); without
    /// it only the ownership lease moves a crashed owner's VIP.
    Linkmesh {
        fast: bool,
    },
    Keepalived {
        advert_ms: u32,
    },
}

impl System {
    pub fn name(self) -> String {
        match self {
            Self::Linkmesh { fast: true } => "linkmesh".into(),
            Self::Linkmesh { fast: false } => "linkmesh lease only".into(),
            Self::Keepalived { advert_ms } => {
                format!("keepalived advert {}s", f64::from(advert_ms) / 1000.0)
            }
        }
    }
}

/// More agent options for every linkmesh run, from
/// `LINKMESH_BENCH_AGENT_ARGS` (space-separated: `--probe-interval 0.005
/// --probe-misses 3`), to measure other settings.
pub fn agent_args() -> Vec<String> {
    std::env::var("LINKMESH_BENCH_AGENT_ARGS")
        .map(|a| a.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn holders(lab: &Lab, vip: IpAddr) -> Vec<u8> {
    lab.holders(vip, 1..=3)
}

fn keepalived_conf(lab: &Lab, host: u8, vip: IpAddr, advert_ms: u32) -> String {
    let priority = 200 - u32::from(host) * 50;
    let advert = f64::from(advert_ms) / 1000.0;
    format!(
        "global_defs {{\n  vrrp_version 3\n  script_user root\n  enable_script_security\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id {}\n  priority {priority}\n  advert_int {advert}\n\
         \n  virtual_ipaddress {{\n    {vip}/24 dev eth0\n  }}\n}}\n",
        50 + u32::from(lab.slot() % 200)
    )
}

pub fn start(
    system: System,
    lab: &Lab,
    etcd: &Etcd,
    secret: &std::path::Path,
    vip: IpAddr,
) -> Vec<Process> {
    (1..=3u8)
        .map(|h| match system {
            System::Linkmesh { fast } => Agent::new(lab, h, &etcd.endpoint(), secret)
                .args(&[
                    "--vip-interface",
                    "eth0",
                    "--keepalive-interval",
                    "2",
                    "--fast-failover",
                    if fast { "auto" } else { "off" },
                ])
                .args(&agent_args().iter().map(String::as_str).collect::<Vec<_>>())
                .start(),
            System::Keepalived { advert_ms } => {
                let dir = lab.dir().join(format!("ka-h{h}"));
                std::fs::create_dir_all(&dir).expect("keepalived dir");
                let conf = dir.join("keepalived.conf");
                std::fs::write(&conf, keepalived_conf(lab, h, vip, advert_ms))
                    .expect("writing keepalived.conf");
                let mut cmd = Command::new("keepalived");
                cmd.args(["--dont-fork", "--log-console", "--vrrp", "--use-file"])
                    .arg(&conf)
                    .arg("--pid")
                    .arg(dir.join("keepalived.pid"))
                    .arg("--vrrp_pid")
                    .arg(dir.join("vrrp.pid"));
                lab.spawn(h, "keepalived", cmd)
            }
        })
        .collect()
}

/// A fresh lab running `system` with its VIP held by one host. Fields drop
/// in order: the processes, etcd, then the lab.
pub struct Settled {
    pub procs: Vec<Process>,
    /// Kept running for the life of the run.
    _etcd: Etcd,
    pub vip: IpAddr,
    pub owner: u8,
    pub lab: Lab,
}

/// A fresh 3-host lab (and a client) running `system`, once one host
/// holds the VIP 198.18.S.100.
pub fn settled(system: System) -> anyhow::Result<Settled> {
    let lab = Lab::new(4);
    let etcd = Etcd::start_on(IpAddr::V4(lab.gateway()));
    let secret = agent::secret_file(&lab, "secret", &[SECRET]);
    let vip: IpAddr = format!("198.18.{}.100", lab.slot()).parse()?;
    if matches!(system, System::Linkmesh { .. }) {
        let _ = agent::admin(
            &etcd.endpoint(),
            &secret,
            &["ip", "add", &format!("{vip}/24")],
        );
    }
    let procs = start(system, &lab, &etcd, &secret, vip);
    let mut owner = 0;
    wait_until(Duration::from_secs(15), || {
        let h = holders(&lab, vip);
        owner = h.first().copied().unwrap_or(0);
        h.len() == 1
    })
    .with_context(|| format!("{}: no single holder", system.name()))?;
    Ok(Settled {
        procs,
        _etcd: etcd,
        vip,
        owner,
        lab,
    })
}

/// One run: a fresh lab, the VIP up, then the owner fails while the client
/// probes every `probe` (a fixed rate, whatever comes back). Returns the
/// client's longest gap.
pub fn run(system: System, failure: Failure, probe: Duration) -> anyhow::Result<Duration> {
    let up = settled(system)?;
    let (lab, vip, procs, owner) = (&up.lab, up.vip, &up.procs, up.owner);
    // Let the VIP settle (keepalived's initial state changes, GARP bursts).
    std::thread::sleep(Duration::from_secs(2));
    let window = match (system, failure) {
        (System::Keepalived { advert_ms: 1000 }, Failure::HardCrash) => 7,
        _ => 5,
    };
    let IpAddr::V4(target) = vip else {
        anyhow::bail!("the benchmark's VIP is IPv4");
    };
    // A fixed-rate probe: ping(8) slows to 100 a second while replies are
    // missing, so it cannot see an outage shorter than 10 ms.
    let pinger = icmp::probe(
        &lab.host(CLIENT).netns,
        target,
        Duration::from_secs(window),
        probe,
    );
    std::thread::sleep(Duration::from_secs(1));
    let victim = &procs[usize::from(owner - 1)];
    match failure {
        Failure::Graceful => victim.signal(libc::SIGTERM)?,
        Failure::HardCrash => {
            // The cable first: nothing the dying process sends on its way
            // out (keepalived's child sends a priority-0 advert when its
            // parent dies) may reach the others.
            lab.host(owner).cut();
            victim.kill();
        }
    }
    let output = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("the pinger panicked"))??;
    if std::env::var_os("LINKMESH_BENCH_VERBOSE").is_some() {
        for p in procs {
            eprintln!("---- {}\n{}", p.log_path().display(), p.log());
        }
    }
    let gap = icmp::longest_gap(&output).context("the probe got fewer than two replies")?;
    let others: Vec<_> = holders(lab, vip)
        .into_iter()
        .filter(|h| *h != owner)
        .collect();
    ensure!(
        others.len() == 1,
        "{}: after the failure {:?} hold the VIP",
        system.name(),
        others
    );
    Ok(gap)
}
