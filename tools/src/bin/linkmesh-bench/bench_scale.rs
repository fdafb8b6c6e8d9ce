//! `cargo xtask bench scale`: what one agent costs and asks of etcd as the
//! mesh grows, what a fleet of them would ask of etcd, and how real agents
//! compare.
//!
//! Measured from outside on one agent with N signed synthetic peers, on an
//! L3-routed underlay model (a sink namespace holds the peers' addresses
//! behind one gateway): CPU, RSS, heartbeats sent and etcd traffic over a
//! steady-state window, join and leave latency (etcd write to kernel FDB
//! event), and cold start (process start to all N in the FDB). Sizes:
//! `LINKMESH_BENCH_SIZES` (default 100,1000,10000); window:
//! `LINKMESH_BENCH_WINDOW` seconds (default 30). Then a fleet model from
//! the largest N, and the same steady-state figures for real agents in one
//! lab (`LINKMESH_BENCH_AGENTS`, default 30; 0 skips them). The synthetic
//! peers' segment floods head-end, or nothing with
//! `LINKMESH_BENCH_FLOOD=none` (the peers then publish overlay addresses).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use linkmesh_tests::agent::{Agent, peers, wait_until};
use linkmesh_tests::etcd::{Etcd, metric_family_sum};
use linkmesh_tests::usage::Usage;
use linkmesh_tests::{netns, percentile};

use crate::fleet_model::{self, EtcdCounters, per_change};
use crate::peer_records::{PEER_PREFIX, Seeder, measure_changes, programmed, setup, setup_flood};

/// Registry changes timed per N (half joins, half leaves).
const CHANGES: usize = 50;
/// The measuring window: one whole `--resync-interval` (default 30 s,
/// README), so the agent's periodic watch progress check is counted once.
const WINDOW_S: u64 = 30;
/// Time the agent gets after programming all N before the window opens.
const SETTLE: Duration = Duration::from_secs(5);
/// The synthetic peers' lease: longer than any run, so nobody keeps it alive.
const LEASE_TTL: i64 = 4 * 3600;
/// The sink's host number on the lab's /24 (no host uses it).
const SINK_INDEX: u8 = 253;
/// Where the calibration writes go: outside `/linkmesh`, watched by no agent.
const UNWATCHED: &str = "/linkmesh-bench-unwatched/";
/// etcd's count of gRPC messages received (unary calls and stream messages).
const REQUESTS: &str = "grpc_server_msg_received_total";

/// etcd's counters now, and its requests by gRPC method.
fn read_etcd(etcd: &Etcd) -> anyhow::Result<(EtcdCounters, BTreeMap<String, f64>)> {
    let text = etcd.metrics_text();
    ensure!(
        text.contains(REQUESTS),
        "etcd's /metrics did not answer with {REQUESTS}"
    );
    let counters = EtcdCounters {
        requests: metric_family_sum(&text, REQUESTS),
        bytes_in: metric_family_sum(&text, "etcd_network_client_grpc_received_bytes_total"),
        bytes_out: metric_family_sum(&text, "etcd_network_client_grpc_sent_bytes_total"),
    };
    Ok((counters, requests_by_method(&text)))
}

/// etcd's requests ([`REQUESTS`]) by `grpc_method`, from its metrics text.
#[must_use]
pub fn requests_by_method(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter_map(|l| l.strip_prefix(REQUESTS)) {
        let method = line
            .split("grpc_method=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(method), Some(value)) = (method, value) {
            *out.entry(method.to_owned()).or_default() += value;
        }
    }
    out
}

/// `<ifname>`'s received packets from the text of `/proc/net/dev`.
#[must_use]
pub fn rx_packets(dev: &str, ifname: &str) -> Option<u64> {
    let (_, counters) = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(ifname)?.split_once(':'))?;
    counters.split_whitespace().nth(1)?.parse().ok()
}

/// Packets the sink's `eth0` received so far.
fn sink_rx(ns: &str) -> anyhow::Result<u64> {
    let dev = netns::run_in(ns, || std::fs::read_to_string("/proc/thread-self/net/dev"))
        .with_context(|| format!("reading /proc/net/dev in {ns}"))?;
    rx_packets(&dev, "eth0").with_context(|| format!("no eth0 in {ns}'s /proc/net/dev"))
}

/// `Udp: OutDatagrams` from the text of `/proc/net/snmp`.
#[must_use]
pub fn udp_out_datagrams(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == "OutDatagrams")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// UDP datagrams sent from namespace `ns` so far.
fn udp_out(ns: &str) -> anyhow::Result<u64> {
    let snmp = netns::run_in(ns, || std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .with_context(|| format!("reading /proc/net/snmp in {ns}"))?;
    udp_out_datagrams(&snmp).with_context(|| format!("no Udp OutDatagrams in {ns}"))
}

#[expect(clippy::cast_precision_loss, reason = "kilobytes to megabytes")]
fn rss_mib(pid: u32) -> f64 {
    Usage::of(pid).rss_kib as f64 / 1024.0
}

/// One agent process and its host namespace.
struct Watched {
    pid: u32,
    ns: String,
}

/// One agent's steady state.
#[derive(Clone, Copy, Debug, Default)]
struct AgentFigures {
    /// Percent of one core.
    cpu: f64,
    rss_mib: f64,
    heartbeats: f64,
}

/// What one window measured: each agent's figures, and etcd's rates for
/// all of them together (per second), also by gRPC method.
struct Measured {
    agents: Vec<AgentFigures>,
    etcd: EtcdCounters,
    methods: Vec<(String, f64)>,
}

/// CPU, RSS and UDP datagrams of every agent, and etcd's counters, over one
/// window.
fn measure_window(etcd: &Etcd, agents: &[Watched], window: Duration) -> anyhow::Result<Measured> {
    let sample = || -> anyhow::Result<Vec<(Duration, u64)>> {
        agents
            .iter()
            .map(|a| Ok((Usage::of(a.pid).cpu, udp_out(&a.ns)?)))
            .collect()
    };
    let (etcd0, methods0) = read_etcd(etcd)?;
    let start = Instant::now();
    let before = sample()?;
    std::thread::sleep(window);
    let after = sample()?;
    let secs = start.elapsed().as_secs_f64();
    let (etcd1, methods1) = read_etcd(etcd)?;
    let methods = methods1
        .into_iter()
        .map(|(m, v)| {
            let rate = (v - methods0.get(&m).copied().unwrap_or(0.0)) / secs;
            (m, rate)
        })
        .filter(|(_, rate)| *rate > 0.0)
        .collect();
    #[expect(clippy::cast_precision_loss, reason = "packet counts for display")]
    let figures = agents
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(a, ((cpu0, udp0), (cpu1, udp1)))| {
            Ok(AgentFigures {
                cpu: cpu1.saturating_sub(*cpu0).as_secs_f64() * 100.0 / secs,
                rss_mib: rss_mib(a.pid),
                heartbeats: udp1.saturating_sub(*udp0) as f64 / secs,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Measured {
        agents: figures,
        etcd: etcd1.minus(etcd0).scaled(1.0 / secs),
        methods,
    })
}

/// One agent with N synthetic peers.
struct Row {
    n: usize,
    agent: AgentFigures,
    /// etcd's traffic with the agent, per second.
    etcd: EtcdCounters,
    /// etcd's traffic with the agent per registry change.
    change: EtcdCounters,
    /// The agent's requests per second by gRPC method.
    methods: Vec<(String, f64)>,
    join: (Duration, Duration),
    leave: (Duration, Duration),
    cold: Duration,
    /// Bytes of one host record in etcd (key and signed value).
    record_bytes: usize,
}

fn p50_p99(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    (percentile(&d, 0.50), percentile(&d, 0.99))
}

/// Waits until the agent's host holds every entry for `n` peers; the time
/// since `started`.
fn cold_start(
    process: &linkmesh_tests::process::Process,
    ns: &str,
    flood: &str,
    n: usize,
    started: Instant,
) -> anyhow::Result<Duration> {
    // `flood: none`: a unicast entry and a neighbour entry per peer.
    let wanted = if flood == "none" { 2 * n } else { n };
    // Polling dumps the whole FDB: less often when it is large.
    let every = Duration::from_millis(if n > 1000 { 100 } else { 20 });
    let deadline = started + Duration::from_mins(2) + every * u32::try_from(n / 10)?;
    loop {
        if programmed(ns, "blue", flood) == wanted {
            return Ok(started.elapsed());
        }
        ensure!(
            Instant::now() < deadline && process.is_running(),
            "the agent never held {n} peers:\n{}",
            process.log()
        );
        std::thread::sleep(every);
    }
}

fn synthetic(n: usize, window: Duration, flood: &str) -> anyhow::Result<Row> {
    let (lab, etcd, secret) = setup_flood(1, flood);
    let none = flood == "none";
    let endpoint = etcd.endpoint();
    let (sink, _) = lab.add_sink("sink", SINK_INDEX, PEER_PREFIX, &[1]);
    // The seeding client lives and dies with this runtime: from here on only
    // the agent talks to etcd, until the changes are timed.
    let (lease, record_bytes) = {
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async {
            let mut seeder = Seeder::connect(&endpoint, LEASE_TTL).await?;
            if none {
                seeder = seeder.with_overlay();
            }
            seeder.put_all(n).await?;
            anyhow::Ok((seeder.lease(), seeder.record_bytes(0)?))
        })?
    };
    let ns = lab.host(1).netns.clone();
    let started = Instant::now();
    let process = Agent::new(&lab, 1, &endpoint, &secret)
        .segments(&["blue"])
        .start();
    let cold = cold_start(&process, &ns, flood, n, started)?;
    eprintln!(
        "    all {n} in the FDB after {:.2} s; settling",
        cold.as_secs_f64()
    );
    std::thread::sleep(SETTLE);
    let watched = [Watched {
        pid: process.pid(),
        ns: ns.clone(),
    }];
    let (rx0, t0) = (sink_rx(&sink)?, Instant::now());
    let measured = measure_window(&etcd, &watched, window)?;
    #[expect(clippy::cast_precision_loss, reason = "a packet rate")]
    let received = sink_rx(&sink)?.saturating_sub(rx0) as f64 / t0.elapsed().as_secs_f64();
    let steady = measured.etcd;
    let figures = measured.agents;
    eprintln!(
        "    window: {:.0} heartbeats/s sent; {received:.0} packets/s reached the sink \
         (heartbeats, and the kernel's VXLAN floods to all N)",
        figures[0].heartbeats
    );
    ensure!(
        received >= figures[0].heartbeats * 0.9,
        "the heartbeats did not reach the sink: {:.0}/s sent, {received:.0}/s received",
        figures[0].heartbeats
    );

    let rt = tokio::runtime::Runtime::new()?;
    let mut seeder = rt.block_on(Seeder::reconnect(&endpoint, lease))?;
    if none {
        seeder = seeder.with_overlay();
    }
    let (timed, timed_s, latencies) = {
        let c0 = read_etcd(&etcd)?.0;
        let t = Instant::now();
        let latencies = measure_changes(&rt, &seeder, &ns, n, CHANGES)?;
        let s = t.elapsed().as_secs_f64();
        (read_etcd(&etcd)?.0.minus(c0), s, latencies)
    };
    let (unwatched, unwatched_s) = {
        let c0 = read_etcd(&etcd)?.0;
        let t = Instant::now();
        rt.block_on(async {
            for k in 0..CHANGES {
                let key = format!("{UNWATCHED}peer{}", n + k / 2);
                if k % 2 == 0 {
                    seeder.put_at(&key, n + k / 2).await?;
                } else {
                    seeder.delete_at(&key).await?;
                }
            }
            anyhow::Ok(())
        })?;
        let s = t.elapsed().as_secs_f64();
        (read_etcd(&etcd)?.0.minus(c0), s)
    };
    let change = per_change(timed, timed_s, unwatched, unwatched_s, steady, CHANGES);
    ensure!(process.is_running(), "the agent died:\n{}", process.log());
    process.kill();
    let (joins, leaves): (Vec<_>, Vec<_>) =
        latencies.iter().enumerate().partition(|(k, _)| k % 2 == 0);
    Ok(Row {
        n,
        agent: figures[0],
        etcd: steady,
        change,
        methods: measured.methods,
        join: p50_p99(joins.into_iter().map(|(_, d)| *d).collect()),
        leave: p50_p99(leaves.into_iter().map(|(_, d)| *d).collect()),
        cold,
        record_bytes,
    })
}

/// Real agents: mean and busiest per agent, and etcd's traffic per agent.
struct Real {
    agents: u8,
    mean: AgentFigures,
    max: AgentFigures,
    etcd: EtcdCounters,
}

fn real_agents(count: u8, window: Duration) -> anyhow::Result<Real> {
    let (lab, etcd, secret) = setup(count);
    let endpoint = etcd.endpoint();
    let processes: Vec<_> = (1..=count)
        .map(|h| {
            Agent::new(&lab, h, &endpoint, &secret)
                .segments(&["blue"])
                .start()
        })
        .collect();
    let want = usize::from(count) - 1;
    let meshed = wait_until(Duration::from_mins(3), || {
        lab.hosts()
            .iter()
            .all(|h| peers(&h.netns, "blue").map_or(0, |p| p.len()) == want)
    });
    ensure!(
        meshed.is_some(),
        "{count} agents did not all reach {want} peers:\n{}",
        processes[0].log()
    );
    eprintln!("    all {count} agents hold {want} peers; settling");
    std::thread::sleep(SETTLE);
    let watched: Vec<_> = lab
        .hosts()
        .iter()
        .zip(&processes)
        .map(|(h, p)| Watched {
            pid: p.pid(),
            ns: h.netns.clone(),
        })
        .collect();
    let measured = measure_window(&etcd, &watched, window)?;
    let k = f64::from(count);
    let mut mean = AgentFigures::default();
    let mut max = AgentFigures::default();
    for f in &measured.agents {
        mean.cpu += f.cpu / k;
        mean.rss_mib += f.rss_mib / k;
        mean.heartbeats += f.heartbeats / k;
        max.cpu = max.cpu.max(f.cpu);
        max.rss_mib = max.rss_mib.max(f.rss_mib);
        max.heartbeats = max.heartbeats.max(f.heartbeats);
    }
    for p in &processes {
        ensure!(p.is_running(), "an agent died:\n{}", p.log());
    }
    Ok(Real {
        agents: count,
        mean,
        max,
        etcd: measured.etcd.scaled(1.0 / k),
    })
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

pub fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("LINKMESH_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().context("LINKMESH_BENCH_SIZES"))
        .collect::<anyhow::Result<_>>()?;
    let window = Duration::from_secs(env_number("LINKMESH_BENCH_WINDOW", WINDOW_S)?);
    let agents: u8 = env_number("LINKMESH_BENCH_AGENTS", 30)?;
    let flood = std::env::var("LINKMESH_BENCH_FLOOD").unwrap_or_else(|_| "head-end".into());
    ensure!(
        flood == "head-end" || flood == "none",
        "LINKMESH_BENCH_FLOOD: head-end or none, not {flood:?}"
    );
    ensure!(
        agents == 0 || (2..=200).contains(&agents),
        "LINKMESH_BENCH_AGENTS: 0 (skip) or 2..=200"
    );
    let mut rows = Vec::new();
    for &n in &sizes {
        eprintln!("==> scale bench: one agent, {n} synthetic peers, flood {flood}");
        rows.push(synthetic(n, window, &flood)?);
    }
    let real = if agents == 0 {
        None
    } else {
        let n = usize::from(agents);
        let synthetic_row = match rows.iter().position(|r| r.n == n) {
            Some(i) => i,
            None => {
                eprintln!("==> scale bench: one agent, {n} synthetic peers (for the comparison)");
                rows.push(synthetic(n, window, "head-end")?);
                rows.len() - 1
            }
        };
        eprintln!("==> scale bench: {agents} real agents");
        Some((synthetic_row, real_agents(agents, window)?))
    };
    print_rows(&rows[..sizes.len()], window, &flood);
    if let Some(r) = rows[..sizes.len()].iter().max_by_key(|r| r.n) {
        fleet_model::print(r.n, r.etcd, r.change, r.record_bytes);
    }
    if let Some((i, real)) = &real {
        print_real(&rows[*i], real);
    }
    print_footnotes(window);
    Ok(())
}

fn ms_pair((p50, p99): (Duration, Duration)) -> String {
    format!(
        "{:.1}/{:.1}",
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0
    )
}

fn print_rows(rows: &[Row], window: Duration, flood: &str) {
    println!();
    println!(
        "scale benchmark: one agent, N synthetic peers on a routed underlay (flood {flood}), \
         steady state over {} s",
        window.as_secs()
    );
    println!(
        "{:>6} {:>7} {:>8} {:>12} {:>10} {:>12} {:>12} {:>10} {:>15} {:>15} {:>8}",
        "N",
        "CPU %",
        "RSS MiB",
        "heartbeat/s",
        "etcd req/s",
        "B/s to agt",
        "B/s from agt",
        "B/change",
        "join p50/p99ms",
        "leave p50/p99ms",
        "cold s"
    );
    for r in rows {
        println!(
            "{:>6} {:>7.2} {:>8.1} {:>12.0} {:>10.2} {:>12.0} {:>12.0} {:>10.0} {:>15} {:>15} {:>8.2}",
            r.n,
            r.agent.cpu,
            r.agent.rss_mib,
            r.agent.heartbeats,
            r.etcd.requests,
            r.etcd.bytes_out,
            r.etcd.bytes_in,
            r.change.bytes_out,
            ms_pair(r.join),
            ms_pair(r.leave),
            r.cold.as_secs_f64()
        );
    }
    for r in rows {
        let methods: Vec<_> = r
            .methods
            .iter()
            .map(|(m, rate)| format!("{m} {rate:.2}"))
            .collect();
        println!("  N={}: etcd req/s by method: {}", r.n, methods.join(", "));
    }
}

fn print_real(synthetic: &Row, real: &Real) {
    println!();
    println!(
        "real agents: {} agents in one lab (each with {} peers) against one agent with {} synthetic peers",
        real.agents,
        real.agents - 1,
        synthetic.n
    );
    println!(
        "{:<34} {:>7} {:>8} {:>12} {:>10} {:>12} {:>12}",
        "", "CPU %", "RSS MiB", "heartbeat/s", "etcd req/s", "B/s to agt", "B/s from agt"
    );
    let line = |name: &str, a: &AgentFigures, e: Option<&EtcdCounters>| {
        let (req, out, inn) = e.map_or_else(
            || ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            |e| {
                (
                    format!("{:.2}", e.requests),
                    format!("{:.0}", e.bytes_out),
                    format!("{:.0}", e.bytes_in),
                )
            },
        );
        println!(
            "{name:<34} {:>7.2} {:>8.1} {:>12.0} {req:>10} {out:>12} {inn:>12}",
            a.cpu, a.rss_mib, a.heartbeats
        );
    };
    line(
        &format!("synthetic, N={}", synthetic.n),
        &synthetic.agent,
        Some(&synthetic.etcd),
    );
    line("real, mean per agent", &real.mean, Some(&real.etcd));
    line("real, busiest agent (each column)", &real.max, None);
}

fn print_footnotes(window: Duration) {
    println!();
    println!(
        "How: one agent in lab host 1 joined to segment blue; N signed peer records (lease of {LEASE_TTL} s, never kept alive)\n\
         written before it starts, the writer's client closed; peers' addresses in {PEER_PREFIX}, routed from the agent's\n\
         namespace via a sink namespace on the underlay that drops them. The window ({} s; by default one --resync-interval)\n\
         opens {} s after all N are in the kernel FDB; during it only the agent talks to etcd.",
        window.as_secs(),
        SETTLE.as_secs()
    );
    println!(
        "CPU %: utime+stime from /proc/<pid>/stat over the window, percent of one core. RSS: VmRSS at the window's end.\n\
         heartbeat/s: Udp OutDatagrams of /proc/net/snmp in the agent's namespace over the window (only the agent sends UDP\n\
         there; the kernel's own VXLAN packets, such as the segment device's IPv6 multicast flooded to all N, are not counted).\n\
         etcd req/s: sum of etcd's grpc_server_msg_received_total (unary calls and stream messages: keepalives, watch requests).\n\
         B/s to/from agt: etcd_network_client_grpc_sent_bytes_total / _received_bytes_total (protobuf payload bytes, no framing).\n\
         B/change: etcd's bytes out per registry change while {CHANGES} changes were timed, less the writer's own (the same\n\
         writes under {UNWATCHED}, watched by nobody) and less the steady-state rate.\n\
         join/leave: etcd write (put or delete of one more peer) until the kernel's FDB event on the agent's device; {} each.\n\
         cold s: agent process start until the kernel FDB holds all N (polled every 20 ms; 100 ms above N=1000).",
        CHANGES / 2
    );
    println!(
        "Fleet model: requests/s = agents x steady req/s + churn x (1 write + agents x requests per change);\n\
         watch events/s = churn x agents; bytes/s = agents x steady B/s + churn x agents x B/change. etcd guidance quoted from\n\
         https://etcd.io/docs/v3.4/op-guide/hardware/, https://etcd.io/docs/v3.4/op-guide/performance/ and\n\
         https://etcd.io/docs/v3.4/dev-guide/limit/; etcd publishes no figure for watch events delivered per second."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: f64, want: f64) {
        assert!((got - want).abs() < 1e-6, "{got} != {want}");
    }

    #[test]
    fn requests_are_summed_by_method_and_packets_read_from_dev() {
        let text = "# HELP grpc_server_msg_received_total x\n\
            grpc_server_msg_received_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 3\n\
            grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1e+06\n\
            grpc_server_msg_received_total{grpc_method=\"Watch\",grpc_service=\"other\",grpc_type=\"bidi_stream\"} 2\n\
            grpc_server_msg_sent_total{grpc_method=\"Watch\"} 99\n";
        let by = requests_by_method(text);
        assert_eq!(by.len(), 2, "{by:?}");
        assert_close(by["Watch"], 5.0);
        assert_close(by["Range"], 1e6);
        assert_close(metric_family_sum(text, REQUESTS), 1e6 + 5.0);
        let dev = "Inter-|   Receive\n face |bytes    packets errs\n    lo:       0       0    0\n  \
                   eth0:   335790    4739    0    0\n";
        assert_eq!(rx_packets(dev, "eth0"), Some(4739));
        assert_eq!(rx_packets(dev, "eth1"), None);
    }

    #[test]
    fn udp_out_datagrams_is_read_from_snmp() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 2 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 5 0 0 1234 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams\nUdpLite: 0 0 0 0\n";
        assert_eq!(udp_out_datagrams(snmp), Some(1234));
        assert_eq!(udp_out_datagrams("Ip: a\nIp: 1\n"), None);
    }
}
