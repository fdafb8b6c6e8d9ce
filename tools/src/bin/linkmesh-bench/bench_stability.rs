//! `cargo xtask bench stability`: false failovers on a busy lab. Nothing
//! fails: `stress-ng` loads every core and an iperf3 stream crosses the
//! underlay for `LINKMESH_BENCH_SECONDS` (600), while the VIP's holders are
//! sampled every 10 ms. Every change of holder is a false failover. linkmesh
//! (its options from `LINKMESH_BENCH_AGENT_ARGS`) and keepalived at
//! `advert_int` 0.02, one after the other, on the same lab shape.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;
use linkmesh_tests::agent::wait_until;
use linkmesh_tests::process::Process;

use crate::bench_vip::{self, System};

const IPERF_PORT: u16 = 5201;
const SAMPLE: Duration = Duration::from_millis(10);

/// What one system did under load.
struct Outcome {
    system: System,
    seconds: u64,
    /// Times the single holder became another host.
    moves: u64,
    /// Sampled time with nobody, and with more than one host, holding it.
    none: Duration,
    several: Duration,
}

/// Waits until `server` (iperf3 -s) listens on TCP `port`.
fn wait_listening(server: &Process, port: u16) -> anyhow::Result<()> {
    let needle = format!(":{port:04X} 00000000:0000 0A");
    let up = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{}/net/tcp", server.pid()))
            .is_ok_and(|t| t.contains(&needle))
    });
    ensure!(up.is_some(), "iperf3 -s never listened:\n{}", server.log());
    Ok(())
}

fn run(system: System, seconds: u64) -> anyhow::Result<Outcome> {
    let up = bench_vip::settled(system)?;
    let (lab, vip) = (&up.lab, up.vip);
    std::thread::sleep(Duration::from_secs(2));

    // The load: an iperf3 stream from h1 to h2 across the underlay, and
    // stress-ng on every core of the machine (the hosts share them).
    let to = lab.host(2).addr.to_string();
    let server = lab.spawn(
        2,
        "iperf3-s",
        iperf3(&["-s", "-B", &to, "-p", &IPERF_PORT.to_string()]),
    );
    wait_listening(&server, IPERF_PORT)?;
    let time = seconds.to_string();
    let _client = lab.spawn(
        1,
        "iperf3-c",
        iperf3(&["-c", &to, "-p", &IPERF_PORT.to_string(), "-t", &time]),
    );
    let mut stress = Command::new("stress-ng");
    stress.args(["--cpu", "0", "--timeout", &format!("{seconds}s"), "--quiet"]);
    let _stress = Process::spawn(stress, None, &lab.dir().join("stress-ng.log"))?;

    let (mut moves, mut none, mut several) = (0, Duration::ZERO, Duration::ZERO);
    let mut last: Option<u8> = None;
    let start = Instant::now();
    let mut at = start;
    while start.elapsed() < Duration::from_secs(seconds) {
        let holders = lab.holders(vip, 1..=3);
        match holders.as_slice() {
            [] => none += SAMPLE,
            [h] => {
                if last.is_some_and(|l| l != *h) {
                    moves += 1;
                    eprintln!(
                        "==> {}: the VIP moved h{} -> h{h} at {:.1} s",
                        system.name(),
                        last.unwrap_or_default(),
                        start.elapsed().as_secs_f64()
                    );
                }
                last = Some(*h);
            }
            _ => several += SAMPLE,
        }
        at += SAMPLE;
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
    }
    Ok(Outcome {
        system,
        seconds,
        moves,
        none,
        several,
    })
}

fn iperf3(args: &[&str]) -> Command {
    let mut cmd = Command::new("iperf3");
    cmd.args(args);
    cmd
}

pub fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("LINKMESH_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let only = std::env::var("LINKMESH_BENCH_ONLY").ok();
    let mut outcomes = Vec::new();
    for system in [
        System::Linkmesh { fast: true },
        System::Keepalived { advert_ms: 20 },
    ] {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|p| system.name().starts_with(p.trim())))
        {
            continue;
        }
        eprintln!("==> {}: {seconds} s under load", system.name());
        outcomes.push(run(system, seconds)?);
    }
    let args = bench_vip::agent_args().join(" ");
    println!();
    println!(
        "stability benchmark: a VIP on 3 hosts with nothing failing, stress-ng on every core and iperf3 across the underlay, holders sampled every {} ms",
        SAMPLE.as_millis()
    );
    if !args.is_empty() {
        println!("linkmesh agent options: {args}");
    }
    println!(
        "{:<26} {:>8} {:>16} {:>14} {:>16}",
        "system", "seconds", "false failovers", "no holder ms", "two holders ms"
    );
    for o in &outcomes {
        println!(
            "{:<26} {:>8} {:>16} {:>14} {:>16}",
            o.system.name(),
            o.seconds,
            o.moves,
            o.none.as_millis(),
            o.several.as_millis()
        );
    }
    Ok(())
}
