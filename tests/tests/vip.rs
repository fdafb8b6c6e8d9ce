//! Floating IPs: 3 agents and a client in the lab, a real etcd, real ARP.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use linkmesh_tests::agent::{self, Agent, admin, ping, wait_until};
use linkmesh_tests::etcd::Etcd;
use linkmesh_tests::lab::Lab;
use linkmesh_tests::process::Process;
use linkmesh_tests::testbed::Testbed;
use linkmesh_tests::{kernel, require_root};

use linkmesh_tests::SECRET;
const CLIENT: u8 = 4;

fn lab(extra_record: &[&str]) -> Testbed {
    Testbed::builder(3).vip(extra_record).build()
}

#[test]
fn exactly_one_host_holds_the_vip_and_the_client_reaches_it() {
    require_root!();
    let v = lab(&[]);
    let agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .unwrap_or_else(|| panic!("one holder: {:?}\n{}", v.holders(), agents[0].log()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(v.holders(), vec![owner], "still exactly one holder");
    assert_eq!(
        v.owner_key().as_deref(),
        Some(v.lab.host(owner).name.as_str()),
        "the owner key names it"
    );
    let (tx, rx) = ping(&v.lab.host(CLIENT).netns, &v.vip.to_string(), 3, "0.2");
    assert_eq!((tx, rx), (3, 3));
    assert_eq!(
        v.client_sees(),
        Some(v.lab.host(owner).mac),
        "the client resolves the VIP to the owner"
    );
    let listed = admin(&v.etcd.endpoint(), &v.secret, &["ip", "ls", "--json"]);
    assert!(
        listed.contains(&v.id) && listed.contains(&v.lab.host(owner).name),
        "{listed}"
    );
    // Every host's state is listed.
    let owner_name = v.lab.host(owner).name.clone();
    let table = wait_until(Duration::from_secs(5), || {
        let t = admin(&v.etcd.endpoint(), &v.secret, &["ip", "ls"]);
        t.contains(&format!("{owner_name}=ACTIVATED")) && t.matches("=STANDBY").count() == 2
    });
    assert!(
        table.is_some(),
        "ip ls shows each host's state: {}",
        admin(&v.etcd.endpoint(), &v.secret, &["ip", "ls"])
    );
}

#[test]
fn graceful_stop_hands_over_and_the_client_follows_at_once() {
    require_root!();
    let v = lab(&[]);
    let agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    let (tx, rx) = ping(&v.lab.host(CLIENT).netns, &v.vip.to_string(), 2, "0.1");
    assert_eq!((tx, rx), (2, 2));

    let ns = v.lab.host(CLIENT).netns.clone();
    let target = v.vip.to_string();
    let pinger = std::thread::spawn(move || ping(&ns, &target, 300, "0.01"));
    std::thread::sleep(Duration::from_millis(500));
    let stopped = Instant::now();
    agents[usize::from(owner - 1)]
        .signal(libc::SIGTERM)
        .expect("SIGTERM");
    let new_owner = v
        .wait_single_holder(Duration::from_secs(5), Some(owner))
        .expect("another host took over");
    let took = stopped.elapsed();
    let followed = wait_until(Duration::from_secs(3), || {
        v.client_sees() == Some(v.lab.host(new_owner).mac)
    });
    let (tx, rx) = pinger.join().expect("pinger");
    eprintln!(
        "graceful handover to h{new_owner} in {took:?}; client followed after {followed:?}; {} of {tx} probes lost",
        tx - rx
    );
    assert!(
        followed.is_some(),
        "the client's neighbour entry moved to the new owner without aging"
    );
    assert!(
        tx - rx <= 10,
        "at most a few 10 ms probes lost: {} of {tx}",
        tx - rx
    );
}

#[test]
fn a_crashed_owner_is_replaced_within_ttl_plus_one_second() {
    require_root!();
    let v = lab(&[]);
    let agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    let crashed = Instant::now();
    agents[usize::from(owner - 1)].kill();
    v.lab.host(owner).cut();
    let mut new_owner = None;
    let took = wait_until(Duration::from_secs(6), || {
        let h: Vec<_> = v.holders().into_iter().filter(|h| *h != owner).collect();
        new_owner = h.first().copied();
        h.len() == 1
    });
    eprintln!(
        "hard crash: h{new_owner:?} serves after {took:?} (from the kill: {:?})",
        crashed.elapsed()
    );
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(3)),
        "served within TTL (2 s) + 1 s: {took:?}"
    );
    let (tx, rx) = ping(&v.lab.host(CLIENT).netns, &v.vip.to_string(), 3, "0.2");
    assert_eq!((tx, rx), (3, 3), "the client reaches the new owner");
}

#[test]
fn an_excluded_host_never_holds_the_vip() {
    require_root!();
    let v = lab(&["--exclude", "h1"]);
    let agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    assert_ne!(owner, 1);
    for h in [2u8, 3] {
        agents[usize::from(h - 1)]
            .signal(libc::SIGTERM)
            .expect("SIGTERM");
    }
    // h1 is the last agent alive: it still must not bind.
    let bound = wait_until(Duration::from_secs(4), || v.holders().contains(&1));
    assert!(bound.is_none(), "h1 bound the VIP although excluded");
}

#[test]
fn failover_moves_the_vip_and_the_old_owner_sits_out() {
    require_root!();
    let v = lab(&[]);
    let _agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    let out = admin(&v.etcd.endpoint(), &v.secret, &["ip", "failover", &v.id]);
    assert!(out.contains(&v.lab.host(owner).name), "{out}");
    let new_owner = v.wait_single_holder(Duration::from_secs(5), Some(owner));
    assert!(
        new_owner.is_some(),
        "another host took over: {:?}",
        v.holders()
    );
}

#[test]
fn a_restart_within_the_ttl_keeps_the_vip_in_place() {
    require_root!();
    let v = lab(&[]);
    let mut agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    let i = usize::from(owner - 1);
    agents[i].kill();
    agents[i] = v.agent(owner, "agent-restarted", &[]);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        let holders = v.holders();
        if holders != vec![owner] {
            let logs: String = agents.iter().map(Process::log).collect();
            panic!("the VIP moved or doubled: {holders:?}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = agents[i].log();
    assert!(log.contains("re-attached to the ownership lease"), "{log}");
    assert!(
        log.contains("new=false"),
        "no new announcement burst: {log}"
    );
}

#[test]
fn an_owner_cut_off_from_etcd_unbinds_before_anyone_else_binds() {
    require_root!();
    let v = lab(&[]);
    let _agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    // Only the owner's path to etcd goes: the client still reaches it.
    let gateway = format!("{}/32", v.lab.gateway());
    let ns = v.lab.host(owner).netns.clone();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["-n", &ns, "route", "add", "blackhole", &gateway]);
    let start = Instant::now();
    let mut worst = 0;
    let mut moved = None;
    while start.elapsed() < Duration::from_secs(6) {
        let h = v.holders();
        worst = worst.max(h.len());
        if h.len() == 1 && h[0] != owner && moved.is_none() {
            moved = Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    run(&["-n", &ns, "route", "del", "blackhole", &gateway]);
    eprintln!("partitioned owner h{owner}: another host serves after {moved:?}");
    assert!(worst <= 1, "two hosts had the VIP bound at one sample");
    assert!(moved.is_some(), "another host took over: {:?}", v.holders());
    assert!(
        !v.holders().contains(&owner),
        "the partitioned owner unbound"
    );
}

/// One HTTP/1.1 request to the agent API inside `ns` (127.0.0.1:1313).
#[test]
#[expect(clippy::too_many_lines, reason = "one API scenario, step by step")]
fn the_api_validates_authenticates_and_fails_over() {
    require_root!();
    let v = lab(&[]);
    let password = agent::secret_file(&v.lab, "api-password", &["hunter2-but-longer"]);
    let password = password.to_string_lossy().into_owned();
    let extra = [
        "--api-user",
        "admin",
        "--api-password-file",
        password.as_str(),
    ];
    let _agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &extra)).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    let standby = (1..=3u8).find(|h| *h != owner).expect("a standby");
    let (owner_ns, standby_ns) = (
        v.lab.host(owner).netns.clone(),
        v.lab.host(standby).netns.clone(),
    );
    let creds = Some("admin:hunter2-but-longer");

    assert_eq!(
        agent::http(&standby_ns, "GET", "/healthz", None, None).0,
        200,
        "health needs no credentials"
    );
    assert_eq!(
        agent::http(&standby_ns, "GET", "/ips", None, None).0,
        401,
        "no credentials"
    );
    assert_eq!(
        agent::http(&standby_ns, "GET", "/ips", None, Some("admin:wrong")).0,
        401,
        "wrong password"
    );
    // The standby reports its own state once it has seen the VIP.
    let mut listing = (0, String::new());
    wait_until(Duration::from_secs(5), || {
        listing = agent::http(&standby_ns, "GET", "/ips", None, creds);
        listing.1.contains("\"state\":\"STANDBY\"")
    });
    let (status, body) = listing;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&v.id) && body.contains("\"state\":\"STANDBY\""),
        "{body}"
    );
    let (status, body) = agent::http(&owner_ns, "GET", &format!("/ips/{}", v.id), None, creds);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"state\":\"ACTIVATED\"")
            && body.contains(&format!("\"owner\":\"h{owner}\"")),
        "{body}"
    );

    let (status, body) = agent::http(
        &standby_ns,
        "POST",
        "/ips",
        Some(r#"{"address":"198.18.0.999/24"}"#),
        creds,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("error"), "{body}");
    let (status, _) = agent::http(
        &standby_ns,
        "POST",
        "/ips",
        Some(r#"{"address":"198.18.0.7/24","colour":1}"#),
        creds,
    );
    assert_eq!(status, 400, "unknown field");
    let (status, _) = agent::http(&standby_ns, "POST", "/ips", Some("not json"), creds);
    assert_eq!(status, 400);
    let listed = admin(&v.etcd.endpoint(), &v.secret, &["ip", "ls", "--json"]);
    assert_eq!(
        listed.matches("\"id\"").count(),
        1,
        "nothing was written: {listed}"
    );

    let (status, body) = agent::http(
        &standby_ns,
        "POST",
        &format!("/ips/{}/failover", v.id),
        None,
        creds,
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains(&format!("\"owner\":\"h{owner}\"")),
        "409 names the owner: {body}"
    );
    let (status, body) = agent::http(
        &owner_ns,
        "POST",
        &format!("/ips/{}/failover", v.id),
        None,
        creds,
    );
    assert_eq!(status, 202, "{body}");
    assert!(
        v.wait_single_holder(Duration::from_secs(5), Some(owner))
            .is_some(),
        "the VIP moved"
    );
}

#[test]
fn a_failing_health_check_gives_the_vip_up_until_it_passes() {
    require_root!();
    let v = lab(&["--check", "tcp:127.0.0.1:7070"]);
    // Every host serves the checked port on its own loopback.
    let listeners: Vec<_> = (1..=3u8)
        .map(|h| {
            v.lab.host(h).run(|| {
                std::net::TcpListener::bind("127.0.0.1:7070").expect("binding the checked port")
            })
        })
        .collect();
    let mut listeners: Vec<Option<_>> = listeners.into_iter().map(Some).collect();
    let extra = [
        "--health-check-interval",
        "0.2",
        "--health-check-timeout",
        "0.2",
        "--fail-count-before-failover",
        "2",
    ];
    let agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &extra)).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    listeners[usize::from(owner - 1)] = None;
    let moved = v.wait_single_holder(Duration::from_secs(5), Some(owner));
    assert!(
        moved.is_some(),
        "the unhealthy owner gave the VIP up: {:?}",
        v.holders()
    );
    let log = agents[usize::from(owner - 1)].log();
    assert!(log.contains("to=FAILING"), "{log}");
    // Healthy again: eligible (STANDBY), without taking the VIP back.
    let ns = v.lab.host(owner).netns.clone();
    listeners[usize::from(owner - 1)] = Some(linkmesh_tests::netns::run_in(&ns, || {
        std::net::TcpListener::bind("127.0.0.1:7070").expect("rebinding")
    }));
    let recovered = wait_until(Duration::from_secs(5), || {
        agents[usize::from(owner - 1)]
            .log()
            .contains("from=FAILING to=STANDBY")
    });
    assert!(recovered.is_some(), "the host became eligible again");
    assert_eq!(v.holders(), vec![moved.expect("moved")], "no flapping back");
}

#[test]
fn an_ipv6_vip_moves_and_the_client_neighbour_entry_follows() {
    require_root!();
    let lab = Lab::new(4);
    let etcd = Etcd::start_on(IpAddr::V4(lab.gateway()));
    let secret = agent::secret_file(&lab, "secret", &[SECRET]);
    let vip: IpAddr = format!("fd00:0:0:{}::100", lab.slot()).parse().expect("ip");
    let _ = admin(
        &etcd.endpoint(),
        &secret,
        &["ip", "add", &format!("{vip}/64")],
    );
    let client = lab.host(CLIENT).netns.clone();
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &client,
            "addr",
            "add",
            &format!("fd00:0:0:{}::4/64", lab.slot()),
            "dev",
            "eth0",
            "nodad",
        ])
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = [
        "--vip-interface",
        "eth0",
        "--keepalive-interval",
        "2",
        "--arp-gratuitous-interval",
        "0.2",
    ];
    let agents: Vec<_> = (1..=3u8)
        .map(|h| {
            Agent::new(&lab, h, &etcd.endpoint(), &secret)
                .label("agent")
                .args(&args)
                .start()
        })
        .collect();
    let holders = || lab.holders(vip, 1..=3);
    let mut owner = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let h = holders();
            owner = h.first().copied().unwrap_or(0);
            h.len() == 1
        })
        .is_some(),
        "one host holds the IPv6 VIP"
    );
    let (tx, rx) = ping(&client, &vip.to_string(), 3, "0.2");
    assert_eq!((tx, rx), (3, 3), "the client reaches the IPv6 VIP");
    let sees = || {
        kernel::neighbours(&client)
            .into_iter()
            .find(|n| n.ip == vip)
            .and_then(|n| n.mac)
    };
    assert_eq!(sees(), Some(lab.host(owner).mac));
    agents[usize::from(owner - 1)]
        .signal(libc::SIGTERM)
        .expect("SIGTERM");
    let mut new_owner = 0;
    assert!(
        wait_until(Duration::from_secs(5), || {
            let h = holders();
            new_owner = h.first().copied().unwrap_or(0);
            h.len() == 1 && new_owner != owner
        })
        .is_some(),
        "another host took the IPv6 VIP"
    );
    let followed = wait_until(Duration::from_secs(3), || {
        sees() == Some(lab.host(new_owner).mac)
    });
    assert!(
        followed.is_some(),
        "the unsolicited NA moved the client's neighbour entry"
    );
}

/// Seconds since midnight UTC of a tracing timestamp (`...T20:26:05.106422Z`).
fn seconds_of_day(line: &str) -> Option<f64> {
    let t = line.split('T').nth(1)?.split('Z').next()?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn now_seconds_of_day() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    f64::from(u32::try_from(d.as_secs() % 86_400).expect("fits"))
        + f64::from(d.subsec_micros()) / 1e6
}

#[test]
fn a_stray_claim_is_seen_in_the_data_plane_and_answered() {
    require_root!();
    let v = lab(&[]);
    let agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    // The client knows the owner.
    assert_eq!(
        ping(&v.lab.host(CLIENT).netns, &v.vip.to_string(), 2, "0.1"),
        (2, 2)
    );
    assert_eq!(v.client_sees(), Some(v.lab.host(owner).mac));
    // Wait out the owner's own announcement burst, so what follows is the
    // answer to the stray claim.
    std::thread::sleep(Duration::from_secs(5));

    // A stray host binds the VIP by hand and announces it.
    let stray = (1..=3u8).find(|h| *h != owner).expect("a stray");
    let stray_host = v.lab.host(stray).clone();
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &stray_host.netns,
            "addr",
            "add",
            &format!("{}/24", v.vip),
            "dev",
            "eth0",
        ])
        .output()
        .expect("ip");
    assert!(out.status.success());
    let vip = match v.vip {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("an IPv4 lab VIP"),
    };
    let sent = now_seconds_of_day();
    stray_host.run(move || {
        let mut a = linkmesh::kernel::packet::RawSender::open("eth0").expect("raw socket");
        for frame in linkmesh::vip::frames::announcement(
            linkmesh::addr::MacAddr(stray_host.mac),
            IpAddr::V4(vip),
        ) {
            a.send(&frame).expect("stray GARP");
        }
    });

    let owner_agent = &agents[usize::from(owner - 1)];
    let reported = wait_until(Duration::from_secs(2), || {
        owner_agent.log().contains("vip conflict")
    });
    assert!(
        reported.is_some(),
        "the owner reports the conflict:\n{}",
        owner_agent.log()
    );
    let log = owner_agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("vip conflict"))
        .expect("the line");
    assert!(
        line.contains(&linkmesh_tests::lab::mac_string(v.lab.host(stray).mac)),
        "names the foreign MAC: {line}"
    );
    let latency = seconds_of_day(line).expect("a timestamp") - sent;
    eprintln!(
        "conflict reported {:.1} ms after the stray GARP",
        latency * 1000.0
    );
    assert!(latency < 0.1, "reported within 100 ms, took {latency} s");
    // The owner re-announced: the client's entry is back on the owner.
    let back = wait_until(Duration::from_secs(2), || {
        v.client_sees() == Some(v.lab.host(owner).mac)
    });
    assert!(
        back.is_some(),
        "the client's neighbour entry returned to the owner"
    );
    let (status, body) = agent::http(
        &v.lab.host(owner).netns,
        "GET",
        &format!("/ips/{}", v.id),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"conflicts\":1"),
        "GET /ips/{{id}} counts it: {body}"
    );
}

#[test]
fn a_vip_record_overwritten_with_junk_stays_in_force_across_a_watch_restart() {
    require_root!();
    let v = Testbed::builder(2).vip(&[]).build();
    let agents: Vec<_> = (1..=2)
        // A lease that outlives the stall below: the VIP must not move for
        // any other reason.
        .map(|h| {
            v.agent(
                h,
                "agent",
                &["--etcd-loss-policy", "keep", "--keepalive-interval", "30"],
            )
        })
        .collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("an owner");
    // Someone writes junk over the signed record.
    v.etcd.put(
        &format!("/linkmesh/vips/{}", v.id),
        "{\"not\": \"a record\"}",
    );
    let logged = wait_until(Duration::from_secs(5), || {
        agents
            .iter()
            .all(|a| a.log().contains("vip record rejected"))
    });
    assert!(logged.is_some(), "the junk is rejected");
    // etcd stalls long enough for every VIP watch to give up and start
    // again from a snapshot, which reads the junk.
    let restarts = |a: &Process| a.log().matches("registry sync failed").count();
    let before: Vec<usize> = agents.iter().map(restarts).collect();
    v.etcd.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(6));
    v.etcd.signal(libc::SIGCONT);
    let restarted = wait_until(Duration::from_secs(15), || {
        agents
            .iter()
            .zip(&before)
            .all(|(a, b)| restarts(a) > *b && a.log().contains("registered host"))
    });
    assert!(restarted.is_some(), "the VIP watches restarted");
    std::thread::sleep(Duration::from_secs(2));
    let logs: String = agents.iter().map(Process::log).collect();
    assert_eq!(
        v.holders(),
        vec![owner],
        "the VIP stays with its owner: the last verified record stays in force\n{logs}"
    );
    assert!(!logs.contains("vip removed"), "{logs}");
    let (_, metrics) = agent::http(&v.lab.host(1).netns, "GET", "/metrics", None, None);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("linkmesh_vip_records_rejected_total") && !l.ends_with(" 0")),
        "counted: {metrics}"
    );
}
