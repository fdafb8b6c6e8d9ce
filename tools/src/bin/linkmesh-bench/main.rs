//! `cargo xtask bench mesh|vip|ebpf|idle|scale|stability|cni`.
//!
//! mesh: how fast one agent programs N peers, and how fast one change
//! reaches the kernel, against iproute2 (`bridge -batch`, and `ip -batch`
//! for neighbour entries) programming the same entries, measured in the
//! same run; for head-end replication and for `flood: none`
//! (`LINKMESH_BENCH_FLOOD`, default both). vip: see `bench_vip.rs`; ebpf:
//! see `bench_ebpf.rs`; idle: `bench_idle.rs`; scale: `bench_scale.rs`;
//! stability: `bench_stability.rs`; cni: `bench_cni.rs`.

mod bench_cni;
mod bench_ebpf;
mod bench_idle;
mod bench_scale;
mod bench_stability;
mod bench_vip;
mod fleet_model;
mod peer_records;

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use linkmesh_tests::agent::{Agent, wait_until};
use linkmesh_tests::lab::Lab;
use linkmesh_tests::percentile;
use peer_records::{Seeder, measure_changes, peer_addr, peer_mac, peer_overlay, programmed};

use linkmesh_tests::usage::Usage;

fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
}

struct Row {
    n: usize,
    flood: &'static str,
    full: Duration,
    program: Duration,
    writes: u64,
    cpu: Duration,
    rss_kb: u64,
    p50: Duration,
    p99: Duration,
    bridge: Duration,
}

fn run(n: usize, changes: usize, flood: &'static str) -> anyhow::Result<Row> {
    let (lab, etcd, secret) = peer_records::setup_flood(1, flood);
    let rt = tokio::runtime::Runtime::new()?;
    let mut seeder = rt.block_on(Seeder::connect(&etcd.endpoint(), 900))?;
    // Entries the agent programs per peer.
    let per_peer = if flood == "none" {
        seeder = seeder.with_overlay();
        2
    } else {
        1
    };
    rt.block_on(seeder.put_all(n))?;

    let host = lab.host(1).clone();
    let started = Instant::now();
    let process = Agent::new(&lab, 1, &etcd.endpoint(), &secret)
        .segments(&["blue"])
        .start();
    let wanted = n * per_peer;
    wait_until(Duration::from_mins(3), || {
        programmed(&host.netns, "blue", flood) == wanted
    })
    .with_context(|| format!("the agent never held {n} peers:\n{}", process.log()))?;
    let full = started.elapsed();
    let log = process.log();
    let line = log
        .lines()
        .find(|l| l.contains("mesh reconciled"))
        .context("no reconcile line")?;
    let writes = field(line, "netlink_writes").unwrap_or(0);
    let program = Duration::from_micros(field(line, "elapsed_us").unwrap_or(0));

    let mut latencies = measure_changes(&rt, &seeder, &host.netns, n, changes)?;
    eprintln!(
        "latencies (ms, in order): {:?}",
        latencies
            .iter()
            .map(Duration::as_millis)
            .collect::<Vec<_>>()
    );
    latencies.sort();
    let usage = Usage::of(process.pid());
    let (cpu, rss_kb) = (usage.cpu, usage.peak_kib);
    process.kill();

    let bridge = iproute2_baseline(&lab, &host.netns, n, flood)?;

    Ok(Row {
        n,
        flood,
        full,
        program,
        writes,
        cpu,
        rss_kb,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        bridge,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map_or("mesh", String::as_str);
    ensure!(
        linkmesh_tests::is_root(),
        "the benchmark needs root (network namespaces)"
    );
    match what {
        "mesh" => {}
        "vip" => return vip_main(),
        "ebpf" => return bench_ebpf::main(),
        "idle" => return bench_idle::main(),
        "scale" => return bench_scale::main(),
        "stability" => return bench_stability::main(),
        "cni" => return bench_cni::main(),
        other => {
            anyhow::bail!(
                "unknown benchmark {other:?} (known: mesh, vip, ebpf, idle, scale, stability, cni)"
            )
        }
    }
    let sizes: Vec<usize> = std::env::var("LINKMESH_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000,5000".into())
        .split(',')
        .map(|s| s.trim().parse().context("LINKMESH_BENCH_SIZES"))
        .collect::<anyhow::Result<_>>()?;
    let floods: Vec<&'static str> = std::env::var("LINKMESH_BENCH_FLOOD")
        .unwrap_or_else(|_| "head-end,none".into())
        .split(',')
        .map(|f| match f.trim() {
            "head-end" => Ok("head-end"),
            "none" => Ok("none"),
            other => Err(anyhow::anyhow!(
                "LINKMESH_BENCH_FLOOD: {other:?} is not head-end or none"
            )),
        })
        .collect::<anyhow::Result<_>>()?;
    let changes = 50;
    let mut rows = Vec::new();
    for n in sizes {
        for flood in &floods {
            eprintln!("==> mesh bench: {n} peers, flood {flood}");
            rows.push(run(n, changes, flood)?);
        }
    }
    println!();
    println!("mesh benchmark: one agent, one segment, N signed peer records already in etcd");
    println!(
        "{:>6} {:>9} {:>12} {:>12} {:>11} {:>14} {:>9} {:>9} {:>9} {:>9} {:>12} {:>14}",
        "N",
        "flood",
        "all-in ms",
        "program ms",
        "writes",
        "writes/s",
        "cpu ms",
        "rss MiB",
        "p50 ms",
        "p99 ms",
        "iproute2 ms",
        "program/ipr2"
    );
    for r in &rows {
        #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
        let rate = if r.program.is_zero() {
            0.0
        } else {
            r.writes as f64 / r.program.as_secs_f64()
        };
        #[expect(clippy::cast_precision_loss, reason = "a size for display")]
        let rss = r.rss_kb as f64 / 1024.0;
        println!(
            "{:>6} {:>9} {:>12} {:>12} {:>11} {:>14.0} {:>9} {:>9.1} {:>9} {:>9} {:>12} {:>14.2}",
            r.n,
            r.flood,
            ms(r.full),
            ms(r.program),
            r.writes,
            rate,
            ms(r.cpu),
            rss,
            ms(r.p50),
            ms(r.p99),
            ms(r.bridge),
            r.program.as_secs_f64() / r.bridge.as_secs_f64()
        );
    }
    println!(
        "all-in (the cold start): agent start until the kernel holds every entry for all N (process start, etcd read,\n\
         verify, program); entries per peer: head-end 1 (zero MAC), none 2 (unicast FDB entry, neighbour entry);\n\
         program: the agent's first reconcile pass; p50/p99: {changes} single add/remove changes, etcd write to kernel event;\n\
         iproute2: the same entries on a fresh device, one process per tool: head-end `bridge -batch` appends;\n\
         none `bridge -batch` replaces, then `ip -batch` neighbour replaces (the two times summed)."
    );
    Ok(())
}

/// iproute2 programs the same entries on a fresh device, one process per
/// tool: zero-MAC appends (head-end), or unicast entries and neighbour
/// entries (`flood: none`, on a device with learning off and proxy on).
fn iproute2_baseline(lab: &Lab, ns: &str, n: usize, flood: &str) -> anyhow::Result<Duration> {
    let none = flood == "none";
    let mut fdb = String::new();
    let mut neigh = String::new();
    for i in 0..n {
        if none {
            let _ = writeln!(
                fdb,
                "fdb replace {} dev vxb dst {} self permanent",
                peer_mac(i),
                peer_addr(i)
            );
            let _ = writeln!(
                neigh,
                "neigh replace {} lladdr {} dev vxb nud permanent",
                peer_overlay(i),
                peer_mac(i)
            );
        } else {
            let _ = writeln!(
                fdb,
                "fdb append 00:00:00:00:00:00 dev vxb dst {}",
                peer_addr(i)
            );
        }
    }
    let fdb_file = lab.dir().join("fdb.batch");
    let neigh_file = lab.dir().join("neigh.batch");
    std::fs::write(&fdb_file, fdb)?;
    std::fs::write(&neigh_file, neigh)?;
    let ip = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("ip").args(args).output()?;
        ensure!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let mut add = vec![
        "-n", ns, "link", "add", "vxb", "type", "vxlan", "id", "999", "dstport", "4790", "dev",
        "eth0",
    ];
    if none {
        add.extend(["nolearning", "proxy"]);
    }
    ip(&add)?;
    ip(&["-n", ns, "link", "set", "vxb", "up"])?;
    let t = Instant::now();
    let out = Command::new("bridge")
        .args(["-n", ns, "-batch"])
        .arg(&fdb_file)
        .output()?;
    if !out.status.success() {
        bail!("bridge -batch: {}", String::from_utf8_lossy(&out.stderr));
    }
    if none {
        let out = Command::new("ip")
            .args(["-n", ns, "-batch"])
            .arg(&neigh_file)
            .output()?;
        if !out.status.success() {
            bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let took = t.elapsed();
    let held = programmed(ns, "vxb", flood);
    let per_peer = if none { 2 } else { 1 };
    ensure!(
        held == n * per_peer,
        "iproute2 programmed {held} of {} entries",
        n * per_peer
    );
    Ok(took)
}

fn vip_main() -> anyhow::Result<()> {
    use bench_vip::{Failure, System};
    let runs: usize = std::env::var("LINKMESH_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let systems = [
        System::Linkmesh { fast: true },
        System::Linkmesh { fast: false },
        System::Keepalived { advert_ms: 1000 },
        System::Keepalived { advert_ms: 100 },
        // VRRPv3's centiseconds: the best-tuned peer.
        System::Keepalived { advert_ms: 20 },
    ];
    // The client's probe: an ICMP echo every 1 ms by default, at a fixed
    // rate, fine enough to tell a 5 ms outage from a 10 ms one.
    let probe_ms: u64 = std::env::var("LINKMESH_BENCH_PROBE_MS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|ms| (1..=100).contains(ms))
        .unwrap_or(1);
    let probe = Duration::from_millis(probe_ms);
    let mut results: Vec<(System, Failure, Vec<Duration>)> = Vec::new();
    // A comma-separated list of name prefixes (`linkmesh,keepalived advert 0.02`).
    let only = std::env::var("LINKMESH_BENCH_ONLY").ok();
    for system in systems {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|p| system.name().starts_with(p.trim())))
        {
            continue;
        }
        for failure in [Failure::Graceful, Failure::HardCrash] {
            if system == (System::Linkmesh { fast: false }) && failure == Failure::Graceful {
                // A graceful stop hands over the same way with or without it.
                continue;
            }
            let mut gaps = Vec::new();
            for i in 0..runs {
                let gap = bench_vip::run(system, failure, probe)?;
                eprintln!(
                    "==> {} {failure:?} run {}: outage {} ms",
                    system.name(),
                    i + 1,
                    ms(gap)
                );
                gaps.push(gap);
            }
            gaps.sort();
            results.push((system, failure, gaps));
        }
    }
    let median = |g: &[Duration]| g[g.len() / 2];
    println!();
    println!(
        "vip benchmark: client outage (longest gap between replies, ICMP echoes every {probe_ms} ms at a fixed rate), {runs} runs each"
    );
    println!(
        "{:<26} {:<10} {:>10} {:>18} {:>12} {:>12} {:>12}",
        "system", "failure", "median ms", "min-max ms", "vs ka 1s", "vs ka 0.1s", "vs ka 0.02s"
    );
    for (system, failure, gaps) in &results {
        let find = |adv: u32| {
            results
                .iter()
                .find(|(s, f, _)| *s == (System::Keepalived { advert_ms: adv }) && f == failure)
                .map(|(_, _, g)| median(g))
        };
        let ratio = |base: Option<Duration>| {
            base.map_or_else(
                || "-".to_owned(),
                |b| format!("{:.2}", median(gaps).as_secs_f64() / b.as_secs_f64()),
            )
        };
        println!(
            "{:<26} {:<10} {:>10} {:>18} {:>12} {:>12} {:>12}",
            system.name(),
            format!("{failure:?}"),
            ms(median(gaps)),
            format!("{}-{}", ms(gaps[0]), ms(gaps[gaps.len() - 1])),
            ratio(find(1000)),
            ratio(find(100)),
            ratio(find(20)),
        );
    }
    Ok(())
}
