//! Crash loop: one agent is SIGKILLed and restarted 50 times, at random
//! intervals of 0.2 to 3 s, while the overlay and the VIP are probed every
//! 10 ms. No overlay ping is lost (between the others, nor to and from the
//! crashing host: its restarts are shorter than its registration TTL), and
//! nothing leaks: devices, FDB entries, addresses, TC attachments, BPF
//! programs and maps are counted before and after (a BPF object that
//! appeared during the run and that no process holds is a leak).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use linkmesh_tests::agent::{self, add_address, wait_until};
use linkmesh_tests::chaos::PingRun;
use linkmesh_tests::kernel;
use linkmesh_tests::process::Process;
use linkmesh_tests::require_root;
use linkmesh_tests::rng::Rng;
use linkmesh_tests::testbed::Testbed;

const RESTARTS: usize = 50;

/// `ping -D -i 0.01` in a namespace until [`Pinger::finish`] (SIGINT); its
/// output is read as it comes (a full pipe would stall it).
struct Pinger {
    child: Option<Child>,
    reader: Option<std::thread::JoinHandle<String>>,
}

impl Pinger {
    fn start(ns: &str, target: &str) -> Self {
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-n", "-D", "-i", "0.01", "-W", "1", target,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ping");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        Self {
            child: Some(child),
            reader: Some(reader),
        }
    }

    /// Stops it and reads what it printed.
    fn finish(mut self) -> PingRun {
        let mut child = self.child.take().expect("running");
        let pid = i32::try_from(child.id()).expect("pid");
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let _ = child.wait();
        let out = self
            .reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default();
        PingRun::parse(&out, 0.0)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What must not leak, per host namespace: links, the agents' FDB entries,
/// addresses, and the crashing host's TC programs.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    links: Vec<usize>,
    fdb: Vec<usize>,
    addresses: Vec<usize>,
    tcx: Vec<String>,
}

fn counts(v: &Testbed, crasher: u8) -> Counts {
    let hosts = 1..=v.agents;
    let ns = |h: u8| v.lab.host(h).netns.clone();
    let mut tcx = kernel::tcx_programs(&ns(crasher), "eth0");
    tcx.sort();
    Counts {
        links: hosts.clone().map(|h| kernel::links(&ns(h)).len()).collect(),
        // The agents' entries (learned ones come and go with the traffic).
        fdb: hosts
            .clone()
            .map(|h| agent::peers(&ns(h), "blue").map_or(0, |p| p.len()))
            .collect(),
        addresses: hosts.map(|h| kernel::addresses(&ns(h)).len()).collect(),
        tcx,
    }
}

#[test]
fn fifty_crashes_lose_no_overlay_ping_and_leak_nothing() {
    require_root!();
    let v = Testbed::builder(3).segment("blue", 100).vip(&[]).build();
    let args = ["--vip-interface", "eth0", "--keepalive-interval", "2"];
    let mut agents: Vec<Process> = v.start_agents(&["blue"], &args);
    if let Err(e) = v.wait_mesh("blue", 1..=3, Duration::from_secs(20)) {
        panic!("{e}");
    }
    let owner = v
        .wait_single_holder(Duration::from_secs(15), None)
        .expect("an owner");
    // Crash a standby: the VIP stays put, the scenario is about the mesh.
    let crasher = (1..=3).find(|h| *h != owner).expect("a standby");
    let others: Vec<u8> = (1..=3).filter(|h| *h != crasher).collect();
    let overlay = |h: u8| format!("198.19.{}.{h}", v.lab.slot());
    for h in 1..=3 {
        add_address(&v.lab.host(h).netns, "blue", &format!("{}/24", overlay(h)));
    }
    let ready = |p: &Process| {
        let log = p.log();
        log.contains("peer watcher attached") && log.contains("eBPF VIP watcher loaded")
    };
    assert!(
        wait_until(Duration::from_secs(10), || agents.iter().all(ready)).is_some(),
        "agents ready"
    );
    let before = counts(&v, crasher);
    let bpf_before = kernel::bpf_ids();

    let ns = |h: u8| v.lab.host(h).netns.clone();
    let between = Pinger::start(&ns(others[0]), &overlay(others[1]));
    let from_crasher = Pinger::start(&ns(crasher), &overlay(others[0]));
    let client = Pinger::start(&ns(v.client()), &v.vip.to_string());
    let mut rng = Rng::from_env("LINKMESH_CRASH_SEED", "crash loop");
    let began = Instant::now();
    let index = usize::from(crasher - 1);
    for i in 0..RESTARTS {
        let wait_ms = 200 + rng.below(2801);
        std::thread::sleep(Duration::from_millis(wait_ms));
        agents[index].kill();
        agents[index] = v
            .bare_agent(crasher)
            .label(&format!("agent-{i}"))
            .segments(&["blue"])
            .args(&args)
            .start();
    }
    // The last one runs to readiness, then probing stops.
    let last_ready = wait_until(Duration::from_secs(10), || ready(&agents[index]));
    std::thread::sleep(Duration::from_millis(500));
    let (between, from_crasher, client) =
        (between.finish(), from_crasher.finish(), client.finish());
    let elapsed = began.elapsed();
    assert!(last_ready.is_some(), "{}", agents[index].log());

    let after = counts(&v, crasher);
    // Killed agents' BPF objects are freed asynchronously.
    let mut orphans = kernel::bpf_orphans(&bpf_before);
    let freed = wait_until(Duration::from_secs(5), || {
        orphans = kernel::bpf_orphans(&bpf_before);
        orphans.0.is_empty() && orphans.1.is_empty()
    });
    eprintln!(
        "crash loop figure: {RESTARTS} SIGKILL+restart of h{crasher} over {:.0} s; overlay h{}->h{}: \
         {} probes, {} lost; h{crasher}->h{}: {} probes, {} lost; client->VIP: {} probes, {} lost, \
         longest gap {:?}; before {before:?}; after {after:?}; orphaned BPF programs and maps \
         {orphans:?}",
        elapsed.as_secs_f64(),
        others[0],
        others[1],
        between.sent,
        between.lost().len(),
        others[0],
        from_crasher.sent,
        from_crasher.lost().len(),
        client.sent,
        client.lost().len(),
        client.longest_gap(),
    );
    assert!(between.sent > 1000, "the overlay was probed: {between:?}");
    assert_eq!(
        between.lost(),
        Vec::<u32>::new(),
        "no overlay ping lost between the others"
    );
    assert_eq!(
        from_crasher.lost(),
        Vec::<u32>::new(),
        "no overlay ping lost to and from the crashing host (restarts < TTL)"
    );
    assert_eq!(
        after, before,
        "no device, FDB entry, address or TC attachment leaked"
    );
    assert!(
        freed.is_some(),
        "no BPF program or map outlived its agent: {orphans:?}"
    );
    assert_eq!(v.holders(), vec![owner], "the VIP stayed with its owner");
}
