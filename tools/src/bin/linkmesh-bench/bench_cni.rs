//! `cargo xtask bench cni`: attaching pods on one host, `linkmesh-cni`
//! against Debian's reference `bridge` plugin doing the same job (a veth
//! pair from the pod's namespace to a bridge, addresses from host-local),
//! in the same run. `LINKMESH_BENCH_PODS` pods (100) per round; each round
//! times every ADD, then every DEL, of both plugins, in turn; the rounds
//! (`LINKMESH_BENCH_RUNS`, 3) alternate which plugin goes first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use linkmesh_tests::agent::{self, wait_until};
use linkmesh_tests::cni::{self, CNI_PATH};
use linkmesh_tests::percentile;
use linkmesh_tests::testbed::Testbed;

/// One plugin under test: its binary and its network configuration.
struct Plugin {
    name: &'static str,
    binary: PathBuf,
    conf: String,
}

/// The host-local section: 198.19.78.0/24 from a store of the plugin's own.
fn ipam(store: &Path) -> serde_json::Value {
    serde_json::json!({
        "type": "host-local",
        "ranges": [[{"subnet": "198.19.78.0/24"}]],
        "dataDir": store,
    })
}

/// The ADD and DEL times of one round of `pods` pods.
fn round(
    plugin: &Plugin,
    host_netns: &str,
    pods: &[String],
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut times = (Vec::new(), Vec::new());
    for (command, out) in [("ADD", &mut times.0), ("DEL", &mut times.1)] {
        for (i, pod) in pods.iter().enumerate() {
            let id = format!("bench-{i}");
            let (ok, stdout, took) =
                cni::call_for_pod(&plugin.binary, host_netns, command, &id, pod, &plugin.conf);
            ensure!(ok, "{} {command} for {pod}: {stdout}", plugin.name);
            out.push(took);
        }
    }
    Ok(times)
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    percentile(&sorted, 0.5)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

pub fn main() -> anyhow::Result<()> {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let pods = env("LINKMESH_BENCH_PODS", 100).clamp(1, 250);
    let runs = env("LINKMESH_BENCH_RUNS", 3).max(1);
    let m = Testbed::builder(1).build();
    let lab = &m.lab;
    m.admin(&[
        "segment", "add", "blue", "--vni", "100", "--bridge", "lm-blue",
    ]);
    let agent_process = m.bare_agent(1).segments(&["blue"]).start();
    let state = lab.dir().join("h1-state");
    let host = lab.host(1).netns.clone();
    let ready = wait_until(Duration::from_secs(20), || {
        state.join("segments.json").exists()
            && std::process::Command::new("ip")
                .args(["-n", &host, "-o", "link", "show", "master", "lm-blue"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(" blue: "))
    });
    ensure!(
        ready.is_some(),
        "the segment's bridge never came:\n{}",
        agent_process.log()
    );
    let linkmesh = Plugin {
        name: "linkmesh-cni",
        binary: agent::cni_binary(),
        conf: serde_json::json!({
            "cniVersion": "1.0.0", "name": "blue-net", "type": "linkmesh-cni",
            "segment": "blue", "stateDir": state,
            "ipam": ipam(&lab.dir().join("ipam-linkmesh")),
        })
        .to_string(),
    };
    let bridge = Plugin {
        name: "bridge (Debian)",
        binary: Path::new(CNI_PATH).join("bridge"),
        conf: serde_json::json!({
            "cniVersion": "1.0.0", "name": "ref-net", "type": "bridge",
            "bridge": "lm-ref", "mtu": 1450,
            "ipam": ipam(&lab.dir().join("ipam-bridge")),
        })
        .to_string(),
    };
    ensure!(
        bridge.binary.is_file(),
        "{} is missing",
        bridge.binary.display()
    );
    let names: Vec<String> = (0..pods)
        .map(|i| lab.add_namespace(&format!("pod{i}")))
        .collect();
    let plugins = [&linkmesh, &bridge];
    let mut add = [Vec::new(), Vec::new()];
    let mut del = [Vec::new(), Vec::new()];
    for r in 0..runs {
        for k in 0..2 {
            let which = (k + r) % 2;
            let (a, d) =
                round(plugins[which], &host, &names).with_context(|| format!("round {}", r + 1))?;
            eprintln!(
                "==> round {} {}: ADD p50 {} ms, DEL p50 {} ms",
                r + 1,
                plugins[which].name,
                ms(median(&a)),
                ms(median(&d)),
            );
            add[which].extend(a);
            del[which].extend(d);
        }
    }
    report(&plugins, &mut add, &mut del, pods, runs);
    Ok(())
}

/// Prints the table: per plugin, ADD and DEL p50 and p99; and the ratios.
fn report(
    plugins: &[&Plugin; 2],
    add: &mut [Vec<Duration>; 2],
    del: &mut [Vec<Duration>; 2],
    pods: usize,
    runs: usize,
) {
    println!();
    println!(
        "cni benchmark: {pods} pods on one host, {runs} rounds, each plugin run as a runtime runs it (its own process, the spec's environment and stdin), host-local for addresses"
    );
    println!(
        "{:<18} {:>12} {:>12} {:>12} {:>12}",
        "plugin", "ADD p50 ms", "ADD p99 ms", "DEL p50 ms", "DEL p99 ms"
    );
    let mut p50 = [Duration::ZERO; 2];
    let mut dp50 = [Duration::ZERO; 2];
    for (i, plugin) in plugins.iter().enumerate() {
        add[i].sort();
        del[i].sort();
        p50[i] = percentile(&add[i], 0.5);
        dp50[i] = percentile(&del[i], 0.5);
        println!(
            "{:<18} {:>12} {:>12} {:>12} {:>12}",
            plugin.name,
            ms(p50[i]),
            ms(percentile(&add[i], 0.99)),
            ms(dp50[i]),
            ms(percentile(&del[i], 0.99)),
        );
    }
    println!(
        "linkmesh-cni / bridge: ADD {:.2}, DEL {:.2} (p50)",
        p50[0].as_secs_f64() / p50[1].as_secs_f64(),
        dp50[0].as_secs_f64() / dp50[1].as_secs_f64(),
    );
}
