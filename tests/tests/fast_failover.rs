//! Peer health and data-plane-confirmed fast failover: agents in the lab,
//! a real etcd, real heartbeats and ARP probes.

use std::time::{Duration, Instant};

use linkmesh_tests::agent::{self, wait_until};
use linkmesh_tests::process::Process;
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;
use serde_json::Value;

use linkmesh_tests::SECRET;

fn in_host(v: &Testbed, host: u8, args: &[&str]) -> String {
    agent::in_host(&v.lab, host, args)
        .unwrap_or_else(|e| panic!("linkmesh {args:?} in h{host}: {e}"))
}

/// `linkmesh peers --json` on `host`: the row of every peer, by host name.
fn peers(v: &Testbed, host: u8) -> std::collections::BTreeMap<String, Value> {
    agent::peer_rows(&v.lab, host)
}

fn age_ms(row: Option<&Value>) -> Option<f64> {
    row?["last_seen_ms"].as_f64()
}

/// Starts agents on hosts 1..=agents with a long ownership lease, so only
/// the data-plane path can move the VIP quickly; waits until one holds it
/// and every other one says STANDBY in etcd. Returns them and the owner.
fn start(v: &Testbed, lease_secs: &str) -> (Vec<Process>, u8) {
    let agents: Vec<_> = (1..=v.agents)
        .map(|h| v.agent(h, "agent", &["--keepalive-interval", lease_secs]))
        .collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(15), None)
        .unwrap_or_else(|| panic!("one holder: {:?}\n{}", v.holders(), agents[0].log()));
    let watching = wait_until(Duration::from_secs(10), || {
        agents.iter().all(|a| {
            let log = a.log();
            log.contains("eBPF VIP watcher loaded") && log.contains("peer watcher attached")
        })
    });
    assert!(watching.is_some(), "every agent loaded its watchers");
    let settled = wait_until(Duration::from_secs(10), || {
        let s = v.states();
        s.len() == usize::from(v.agents)
            && s.iter().filter(|(_, st)| st == "STANDBY").count() == usize::from(v.agents) - 1
    });
    assert!(
        settled.is_some(),
        "every host published its state: {:?}",
        v.states()
    );
    (agents, owner)
}

fn suspects(v: &Testbed) -> Vec<(String, String)> {
    v.suspects()
}

#[test]
fn peers_are_listed_with_their_last_seen_age() {
    require_root!();
    let v = Testbed::builder(3).vip(&[]).build();
    let agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let names: Vec<String> = (2..=3).map(|h| v.lab.host(h).name.clone()).collect();
    let fresh = wait_until(Duration::from_secs(10), || {
        let p = peers(&v, 1);
        names.iter().all(|n| {
            p.get(n)
                .is_some_and(|r| r["alive"] == true && age_ms(Some(r)).is_some_and(|a| a < 100.0))
        })
    });
    assert!(
        fresh.is_some(),
        "h1 hears h2 and h3: {:?}\n{}",
        peers(&v, 1),
        agents[0].log()
    );
    let table = in_host(&v, 1, &["peers"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&names[0]) && l.contains("yes")),
        "{table}"
    );

    agents[2].kill();
    std::thread::sleep(Duration::from_millis(300));
    let first = peers(&v, 1);
    std::thread::sleep(Duration::from_millis(400));
    let second = peers(&v, 1);
    let (a, b) = (
        age_ms(first.get(&names[1])).expect("h3 was heard"),
        age_ms(second.get(&names[1])).expect("h3 was heard"),
    );
    assert!(
        a >= 250.0 && b >= a + 350.0,
        "a dead peer's age grows: {a} then {b}"
    );
    assert_eq!(second[&names[1]]["alive"], false, "{:?}", second[&names[1]]);
    for row in [&first[&names[0]], &second[&names[0]]] {
        assert!(
            age_ms(Some(row)).is_some_and(|a| a < 100.0) && row["alive"] == true,
            "a live peer stays fresh: {row}"
        );
    }
    let loss = second[&names[0]]["loss"].as_f64().expect("a loss figure");
    assert!(loss < 0.2, "a live peer loses few heartbeats: {loss}");
}

#[test]
fn a_dead_owner_is_replaced_through_the_data_plane_well_before_its_lease_expires() {
    require_root!();
    let v = Testbed::builder(4).vip(&[]).build();
    // A 10 s lease: the lease path alone would take 10 s.
    let (agents, owner) = start(&v, "10");
    std::thread::sleep(Duration::from_millis(500));
    v.lab.host(owner).cut();
    agents[usize::from(owner - 1)].kill();
    let started = Instant::now();
    let mut successor = None;
    let took = wait_until(Duration::from_secs(5), || {
        successor = v.holders().into_iter().find(|h| *h != owner);
        successor.is_some()
    });
    let logs: String = agents.iter().map(Process::log).collect();
    let took = took.unwrap_or_else(|| panic!("nobody took over:\n{logs}"));
    assert!(
        took < Duration::from_secs(1),
        "replaced in {took:?} (started {:?} ago)\n{logs}",
        started.elapsed()
    );
    let successor = successor.expect("a successor");
    assert!(
        logs.contains("suspect quorum"),
        "the owner was revoked by a suspect quorum:\n{logs}"
    );
    assert_eq!(
        v.owner_key().as_deref(),
        Some(v.lab.host(successor).name.as_str())
    );
    let (tx, rx) = agent::ping(&v.lab.host(v.client()).netns, &v.vip.to_string(), 3, "0.1");
    assert_eq!((tx, rx), (3, 3), "the client reaches the successor");
    assert_eq!(v.client_sees(), Some(v.lab.host(successor).mac));
    // The dead owner's lease is revoked: its state key is gone.
    let dead = format!("/linkmesh/vips/{}/state/{}", v.id, v.lab.host(owner).name);
    assert!(v.get(&dead).is_empty(), "{:?}", v.get(&dead));
    // Suspicions of the old owner are withdrawn once it is replaced.
    let withdrawn = wait_until(Duration::from_secs(2), || suspects(&v).is_empty());
    assert!(withdrawn.is_some(), "{:?}", suspects(&v));
}

#[test]
fn a_stopped_agent_on_a_live_host_keeps_its_vip_while_its_lease_lives() {
    require_root!();
    let v = Testbed::builder(4).vip(&[]).build();
    let (agents, owner) = start(&v, "10");
    let victim = &agents[usize::from(owner - 1)];
    victim.signal(libc::SIGSTOP).expect("SIGSTOP");
    // Twenty suspicion windows: the host's kernel keeps answering probes.
    std::thread::sleep(Duration::from_secs(2));
    let holders = v.holders();
    let owner_key = v.owner_key();
    let raised = suspects(&v);
    victim.signal(libc::SIGCONT).expect("SIGCONT");
    assert_eq!(holders, vec![owner], "the VIP stayed in place");
    assert_eq!(owner_key.as_deref(), Some(v.lab.host(owner).name.as_str()));
    let logs: String = agents.iter().map(Process::log).collect();
    assert!(
        raised.is_empty(),
        "nobody suspected a live host: {raised:?}\n{logs}"
    );
}

#[test]
fn an_isolated_standby_suspects_nobody() {
    require_root!();
    let v = Testbed::builder(4).vip(&[]).build();
    let (agents, owner) = start(&v, "10");
    let standby = (1..=4).find(|h| *h != owner).expect("a standby");
    v.lab.host(standby).cut();
    std::thread::sleep(Duration::from_millis(1500));
    let log = agents[usize::from(standby - 1)].log();
    let holders = v.holders();
    let raised = suspects(&v);
    v.lab.host(standby).reconnect();
    assert!(
        log.contains("no other peer is heard either") && !log.contains("suspecting it"),
        "the cut standby saw the owner go silent and held back:\n{log}"
    );
    assert_eq!(holders, vec![owner]);
    assert_eq!(
        v.owner_key().as_deref(),
        Some(v.lab.host(owner).name.as_str())
    );
    assert!(raised.is_empty(), "{raised:?}");
}

/// Names of the TCX programs on `host`'s eth0 ingress.
fn tcx_programs(v: &Testbed, host: u8) -> Vec<String> {
    let mut names = linkmesh_tests::kernel::tcx_programs(&v.lab.host(host).netns, "eth0");
    names.sort();
    names
}

#[test]
fn restarts_never_stack_attachments_and_exit_detaches_them() {
    require_root!();
    let v = Testbed::builder(1).vip(&[]).build();
    let expected = vec!["peer_watch".to_owned(), "vip_watch".to_owned()];
    let first = v.agent(1, "first", &[]);
    let attached = wait_until(Duration::from_secs(10), || tcx_programs(&v, 1) == expected);
    assert!(
        attached.is_some(),
        "{:?}\n{}",
        tcx_programs(&v, 1),
        first.log()
    );
    first.kill();
    let second = v.agent(1, "second", &[]);
    let reattached = wait_until(Duration::from_secs(10), || {
        second.log().contains("peer watcher attached") && tcx_programs(&v, 1) == expected
    });
    assert!(
        reattached.is_some(),
        "{:?}\n{}",
        tcx_programs(&v, 1),
        second.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(tcx_programs(&v, 1), expected, "one of each, never stacked");
    second.signal(libc::SIGTERM).expect("SIGTERM");
    assert!(
        second.wait_timeout(Duration::from_secs(10)).is_some(),
        "the agent exits"
    );
    assert_eq!(tcx_programs(&v, 1), Vec::<String>::new(), "exit detaches");
}

#[test]
fn a_standby_reports_a_stray_holder_of_a_vip_nobody_owns() {
    require_root!();
    // Both agents are excluded: etcd never names an owner.
    let v = Testbed::builder(2)
        .vip(&["--exclude", "h1", "--exclude", "h2"])
        .build();
    let agents: Vec<_> = (1..=2).map(|h| v.agent(h, "agent", &[])).collect();
    let client = v.lab.host(v.client());
    agent::add_address(&client.netns, "eth0", &format!("{}/24", v.vip));
    let mac = linkmesh_tests::lab::mac_string(client.mac);
    let reported = wait_until(Duration::from_secs(8), || {
        agents
            .iter()
            .all(|a| a.log().contains("stray holder") && a.log().contains(&mac))
    });
    let logs: String = agents.iter().map(Process::log).collect();
    assert!(
        reported.is_some(),
        "both hosts report the stray {mac}:\n{logs}"
    );
    assert_eq!(v.owner_key(), None, "etcd still names nobody");
    assert_eq!(
        logs.matches("stray holder").count(),
        2,
        "once per host, not once per probe:\n{logs}"
    );
}

#[test]
fn a_restarted_agent_removes_the_address_its_crash_left_bound() {
    require_root!();
    let v = Testbed::builder(3).vip(&[]).build();
    let mut agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(15), None)
        .expect("one holder");
    // A crash on a live host: the address stays bound, its kernel keeps
    // answering, so only the lease (2 s) moves the VIP.
    let i = usize::from(owner - 1);
    agents[i].kill();
    let mut successor = None;
    let moved = wait_until(Duration::from_secs(6), || {
        successor = v.owner_key().filter(|o| *o != v.lab.host(owner).name);
        successor.is_some()
    });
    assert!(moved.is_some(), "the lease path moved the VIP");
    agents[i] = v.agent(owner, "restarted", &[]);
    // The log line follows the removal: wait for both.
    let single = wait_until(Duration::from_secs(10), || {
        let h = v.holders();
        h.len() == 1 && h[0] != owner && agents[i].log().contains("an earlier run left bound")
    });
    assert!(
        single.is_some(),
        "only the successor holds it, and the restarted agent says why: {:?}\n{}",
        v.holders(),
        agents[i].log()
    );
}

#[test]
fn status_matches_the_kernel() {
    require_root!();
    let v = Testbed::builder(3).vip(&[]).build();
    v.add_segment("blue", 100);
    let agents: Vec<_> = (1..=3).map(|h| v.mesh_agent(h, &["blue"])).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(15), None)
        .expect("one holder");
    let ns = v.lab.host(1).netns.clone();
    let programmed = wait_until(Duration::from_secs(10), || {
        agent::peers(&ns, "blue").is_some_and(|p| p.len() == 2)
    });
    assert!(programmed.is_some(), "{}", agents[0].log());
    let mut status = Value::Null;
    let settled = wait_until(Duration::from_secs(10), || {
        status = agent::in_host(&v.lab, 1, &["status", "--json"])
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        status["peers"]
            .as_array()
            .is_some_and(|p| p.len() == 2 && p.iter().all(|r| r["alive"] == true))
    });
    assert!(settled.is_some(), "{status}");
    assert_eq!(status["host"]["hostname"], "h1");
    assert_eq!(status["host"]["address"], v.lab.host(1).addr.to_string());
    assert_eq!(status["etcd"], "ok");
    let blue = &status["segments"][0];
    assert_eq!(blue["name"], "blue");
    assert_eq!(blue["vni"], 100);
    let kernel_peers = agent::peers(&ns, "blue").expect("blue exists").len();
    assert_eq!(
        blue["peers"], kernel_peers,
        "peer count = FDB entries in the kernel"
    );
    let vip = &status["vips"][0];
    assert_eq!(vip["address"], format!("{}/24", v.vip));
    assert_eq!(vip["owner"], v.lab.host(owner).name);
    let state = if owner == 1 { "ACTIVATED" } else { "STANDBY" };
    assert_eq!(
        vip["state"],
        state,
        "h1's state matches who holds it: {:?}",
        v.holders()
    );
    let screen = agent::in_host(&v.lab, 1, &["status"]).expect("status");
    assert!(screen.starts_with("host h1"), "{screen}");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_structured_fields() {
    require_root!();
    let v = Testbed::builder(1).vip(&[]).build();
    let a = v.agent(1, "json", &["--log-format", "json"]);
    let bound = v.wait_single_holder(Duration::from_secs(15), None);
    assert_eq!(bound, Some(1), "{}", a.log());
    // The line is written just after the address is added: wait for it.
    let logged = wait_until(Duration::from_secs(5), || a.log().contains("vip bound"));
    assert!(logged.is_some(), "{}", a.log());
    let lines: Vec<Value> = a
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let bind = lines
        .iter()
        .find(|l| l["fields"]["message"] == "vip bound")
        .unwrap_or_else(|| panic!("a vip bound event: {lines:?}"));
    assert_eq!(bind["level"], "INFO");
    assert_eq!(bind["fields"]["vip"], v.id, "structured fields are kept");
    assert_eq!(bind["fields"]["interface"], "eth0");
    assert!(bind["timestamp"].is_string());
}

/// The value of the series `name{labels}` in a scrape (`labels` exactly as
/// printed, e.g. `vip="x",state="ACTIVATED"`).
fn series(scrape: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn metrics_after_a_failover_show_one_owner_and_moving_counters() {
    require_root!();
    let v = Testbed::builder(3).vip(&[]).build();
    let agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let first = v
        .wait_single_holder(Duration::from_secs(15), None)
        .expect("one holder");
    let _ = linkmesh_tests::agent::admin(&v.etcd.endpoint(), &v.secret, &["ip", "failover", &v.id]);
    let second = v
        .wait_single_holder(Duration::from_secs(10), Some(first))
        .unwrap_or_else(|| panic!("moved: {:?}\n{}", v.holders(), agents[0].log()));
    let activated = format!("vip=\"{}\",state=\"ACTIVATED\"", v.id);
    let vip = format!("vip=\"{}\"", v.id);
    let mut scrapes = Vec::new();
    let settled = wait_until(Duration::from_secs(5), || {
        scrapes = (1..=3u8)
            .map(|h| agent::http(&v.lab.host(h).netns, "GET", "/metrics", None, None))
            .collect();
        let owners: Vec<_> = scrapes
            .iter()
            .map(|(_, body)| series(body, "linkmesh_vip_state", &activated))
            .collect();
        let alive = scrapes.iter().all(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with("linkmesh_peer_alive{") && l.ends_with(" 1"))
                .count()
                == 2
        });
        owners.iter().filter(|o| **o == Some(1.0)).count() == 1
            && owners.iter().filter(|o| **o == Some(0.0)).count() == 2
            && alive
    });
    assert!(
        settled.is_some(),
        "exactly one ACTIVATED gauge: {scrapes:?}"
    );
    for (status, _) in &scrapes {
        assert_eq!(*status, 200);
    }
    let scrape = |h: u8| scrapes[usize::from(h - 1)].1.as_str();
    assert_eq!(
        series(scrape(second), "linkmesh_vip_state", &activated),
        Some(1.0),
        "the gauge names the host that holds it"
    );
    // BOOTING -> STANDBY -> ACTIVATED -> STANDBY on the first owner.
    let moved = series(scrape(first), "linkmesh_vip_transitions_total", &vip).expect("transitions");
    assert!(moved >= 3.0, "{}", scrape(first));
    let sent =
        series(scrape(second), "linkmesh_vip_announcements_total", &vip).expect("announcements");
    assert!(sent >= 1.0, "the new owner announced: {}", scrape(second));
    let rtt = series(scrape(second), "linkmesh_etcd_keepalive_seconds_count", "").expect("rtt");
    assert!(rtt >= 1.0, "keepalives were timed: {}", scrape(second));
}

#[test]
fn unreachable_registered_hosts_do_not_silence_heartbeats_to_live_ones() {
    require_root!();
    let v = Testbed::builder(2).vip(&[]).build();
    // Eight registered hosts that do not exist (inside the lab's /24): the
    // kernel queues heartbeats to them while ARP fails, charged to the
    // socket that sent them.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let endpoint = v.etcd.endpoint();
    let slot = v.lab.slot();
    rt.block_on(async {
        let mut ghosts =
            linkmesh_tests::synthetic::SyntheticPeers::connect(&endpoint, slot, SECRET, 40).await;
        for i in 0..8 {
            ghosts.join(i).await;
        }
    });
    let _agents: Vec<Process> = (1..=2).map(|h| v.agent(h, "agent", &[])).collect();
    // Past ARP's first failures (about 3 s), the loss over the last second
    // between the two live hosts stays low both ways.
    let heard = wait_until(Duration::from_secs(15), || {
        (1..=2).all(|h| peers(&v, h).len() == 9)
    });
    assert!(heard.is_some(), "both see 9 peers");
    std::thread::sleep(Duration::from_secs(5));
    for (host, other) in [(1, "h2"), (2, "h1")] {
        let table = peers(&v, host);
        let row = table.get(other).expect("the live peer's row");
        let loss = row["loss"].as_f64().unwrap_or(1.0);
        eprintln!(
            "heartbeat figure: h{host} hears {other} with loss {loss:.2} beside 8 unreachable peers"
        );
        assert!(
            row["alive"] == true && loss < 0.2,
            "h{host} hears {other} despite 8 unreachable registered hosts: {row}"
        );
    }
}
