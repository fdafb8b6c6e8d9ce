//! `cargo xtask bench idle`: what an agent costs while nothing changes.
//! Three agents with a segment (so each has 2 peers and heartbeats to them)
//! and two floating IPs; after a settling time, each agent's CPU time and
//! resident memory over 60 s (`LINKMESH_BENCH_IDLE_SECONDS`).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::ensure;
use linkmesh_tests::agent::{self, Agent, wait_until};
use linkmesh_tests::etcd::Etcd;
use linkmesh_tests::lab::Lab;
use linkmesh_tests::usage::Usage;

use linkmesh_tests::SECRET;

pub fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("LINKMESH_BENCH_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let lab = Lab::new(3);
    let etcd = Etcd::start_on(IpAddr::V4(lab.gateway()));
    let secret = agent::secret_file(&lab, "secret", &[SECRET]);
    let endpoint = etcd.endpoint();
    let _ = agent::admin(
        &endpoint,
        &secret,
        &["segment", "add", "blue", "--vni", "100"],
    );
    for last in [100, 101] {
        let cidr = format!("198.18.{}.{last}/24", lab.slot());
        let _ = agent::admin(&endpoint, &secret, &["ip", "add", &cidr]);
    }
    let agents: Vec<_> = (1..=3u8)
        .map(|h| {
            Agent::new(&lab, h, &endpoint, &secret)
                .segments(&["blue"])
                .args(&["--vip-interface", "eth0"])
                .start()
        })
        .collect();
    let ready = wait_until(Duration::from_secs(20), || {
        agents.iter().all(|a| {
            let log = a.log();
            log.contains("peer watcher attached") && log.contains("eBPF VIP watcher loaded")
        })
    });
    ensure!(ready.is_some(), "the agents did not start");
    eprintln!("==> settling 10 s, then measuring {seconds} s");
    std::thread::sleep(Duration::from_secs(10));
    let before: Vec<_> = agents.iter().map(|a| Usage::of(a.pid())).collect();
    std::thread::sleep(Duration::from_secs(seconds));
    println!();
    println!(
        "idle benchmark: 3 agents, segment blue (2 peers each, heartbeats every 20 ms), 2 VIPs, {seconds} s"
    );
    println!(
        "{:<6} {:>12} {:>12} {:>10} {:>10}",
        "agent", "cpu ms", "% of a core", "RSS MB", "peak MB"
    );
    for (i, (a, before)) in agents.iter().zip(before).enumerate() {
        let now = Usage::of(a.pid());
        let (rss_kb, hwm_kb) = (now.rss_kib, now.peak_kib);
        let used = now.cpu.saturating_sub(before.cpu);
        #[expect(clippy::cast_precision_loss, reason = "kilobytes to megabytes")]
        let mb = |kb: u64| kb as f64 / 1024.0;
        println!(
            "h{:<5} {:>12} {:>11.2}% {:>10.1} {:>10.1}",
            i + 1,
            used.as_millis(),
            used.as_secs_f64() * 100.0 / Duration::from_secs(seconds).as_secs_f64(),
            mb(rss_kb),
            mb(hwm_kb)
        );
    }
    println!("goals: < 30 MB, < 1% of one core");
    Ok(())
}
