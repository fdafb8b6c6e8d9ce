//! The overlay mesh: agents in lab hosts, a real etcd, real VXLAN packets.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use linkmesh_tests::agent::{self, Agent, add_address, admin, peers, ping, wait_until};
use linkmesh_tests::lab::Lab;
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

use linkmesh_tests::SECRET;

fn ip(host: &linkmesh_tests::lab::Host) -> IpAddr {
    IpAddr::V4(host.addr)
}

/// Host `host`'s address on a segment device (`octet` splits the range
/// between segments).
fn overlay(m: &Testbed, host: u8, octet: u8) -> String {
    m.lab.overlay_address(host, octet).to_string()
}

#[test]
fn members_ping_each_other_over_every_shared_segment() {
    require_root!();
    let m = Testbed::builder(3).build();
    m.admin(&["segment", "add", "blue", "--vni", "100"]);
    m.admin(&["segment", "add", "red", "--vni", "200"]);
    let listed = m.admin(&["segment", "ls", "--json"]);
    assert!(
        listed.contains("\"blue\"") && listed.contains("200"),
        "{listed}"
    );

    let _a1 = m.bare_agent(1).segments(&["blue", "red"]).start();
    let _a2 = m.bare_agent(2).segments(&["blue", "red"]).start();
    let _a3 = m.bare_agent(3).segments(&["blue"]).start();
    let (h1, h2, h3) = (m.lab.host(1), m.lab.host(2), m.lab.host(3));
    let t = Duration::from_secs(10);
    assert!(
        m.wait_peers(1, "blue", &[ip(h2), ip(h3)], t).is_some(),
        "h1 blue peers: {:?}",
        peers(&h1.netns, "blue")
    );
    assert!(
        m.wait_peers(2, "blue", &[ip(h1), ip(h3)], t).is_some(),
        "h2 blue peers"
    );
    assert!(
        m.wait_peers(3, "blue", &[ip(h1), ip(h2)], t).is_some(),
        "h3 blue peers"
    );
    assert!(
        m.wait_peers(1, "red", &[ip(h2)], t).is_some(),
        "h1 red peers: {:?}",
        peers(&h1.netns, "red")
    );
    assert!(
        m.wait_peers(2, "red", &[ip(h1)], t).is_some(),
        "h2 red peers"
    );
    assert_eq!(peers(&h3.netns, "red"), None, "h3 has no red device");

    let blue = linkmesh_tests::kernel::link(&h1.netns, "blue").expect("blue exists");
    assert_eq!(blue.kind.as_deref(), Some("vxlan"));
    assert!(blue.up);
    assert_eq!(blue.mtu, Some(1450));

    for h in 1..=3 {
        add_address(
            &m.lab.host(h).netns,
            "blue",
            &format!("{}/25", overlay(&m, h, 0)),
        );
    }
    for h in 1..=2 {
        add_address(
            &m.lab.host(h).netns,
            "red",
            &format!("{}/25", overlay(&m, h, 128)),
        );
    }
    for from in 1..=3u8 {
        for to in (1..=3u8).filter(|t| *t != from) {
            let (tx, rx) = ping(&m.lab.host(from).netns, &overlay(&m, to, 0), 3, "0.2");
            assert_eq!((tx, rx), (3, 3), "blue: h{from} -> h{to}");
        }
    }
    let (tx, rx) = ping(&h1.netns, &overlay(&m, 2, 128), 3, "0.2");
    assert_eq!((tx, rx), (3, 3), "red: h1 -> h2");
    let (tx, rx) = ping(&h2.netns, &overlay(&m, 1, 128), 3, "0.2");
    assert_eq!((tx, rx), (3, 3), "red: h2 -> h1");
}

#[test]
fn dead_and_stopped_hosts_leave_every_peer() {
    require_root!();
    let m = Testbed::builder(3).build();
    m.admin(&["segment", "add", "blue", "--vni", "100"]);
    let ttl = 3;
    let extra = ["--ttl", "3"];
    let _a1 = m.bare_agent(1).segments(&["blue"]).args(&extra).start();
    let a2 = m.bare_agent(2).segments(&["blue"]).args(&extra).start();
    let a3 = m.bare_agent(3).segments(&["blue"]).args(&extra).start();
    let (h1, h2, h3) = (m.lab.host(1), m.lab.host(2), m.lab.host(3));
    let t = Duration::from_secs(10);
    assert!(m.wait_peers(1, "blue", &[ip(h2), ip(h3)], t).is_some());
    assert!(m.wait_peers(2, "blue", &[ip(h1), ip(h3)], t).is_some());

    // Hard death: SIGKILL and pull the cable. Gone within TTL + 1 s.
    a3.kill();
    h3.cut();
    let start = Instant::now();
    let limit = Duration::from_secs(ttl + 1);
    let on_h1 = m.wait_peers(1, "blue", &[ip(h2)], limit + Duration::from_secs(2));
    let on_h2 = m.wait_peers(2, "blue", &[ip(h1)], limit + Duration::from_secs(2));
    let elapsed = start.elapsed();
    assert!(
        on_h1.is_some() && on_h2.is_some(),
        "h3 removed from peers: {:?}",
        peers(&h1.netns, "blue")
    );
    eprintln!("dead host removed after {elapsed:?} (ttl {ttl} s)");
    assert!(
        elapsed <= limit,
        "dead host removed after {elapsed:?}, limit {limit:?}"
    );

    // Graceful stop: the lease is revoked, so peers drop it at once.
    a2.signal(libc::SIGTERM).expect("SIGTERM");
    let gone = m.wait_peers(1, "blue", &[], Duration::from_secs(3));
    eprintln!("stopped host removed after {gone:?}");
    assert!(
        gone.is_some_and(|d| d <= Duration::from_secs(1)),
        "stopped host removed within 1 s: {gone:?}"
    );
    assert!(
        a2.wait_timeout(Duration::from_secs(5))
            .is_some_and(|s| s.success()),
        "agent exits 0 on SIGTERM"
    );
    assert!(
        linkmesh_tests::kernel::link(&h2.netns, "blue").is_some(),
        "devices stay after exit"
    );
}

#[test]
fn restart_loses_no_ping_and_writes_nothing() {
    require_root!();
    let m = Testbed::builder(3).build();
    let agents = full_mesh(&m, &[]);
    for h in 1..=2 {
        add_address(
            &m.lab.host(h).netns,
            "blue",
            &format!("{}/25", overlay(&m, h, 0)),
        );
    }
    // 400 probes 10 ms apart (4 s) from h1 to h2 while h2's agent restarts.
    let ns = m.lab.host(1).netns.clone();
    let target = overlay(&m, 2, 0);
    let pinger = std::thread::spawn(move || ping(&ns, &target, 400, "0.01"));
    std::thread::sleep(Duration::from_millis(500));
    agents[1].kill();
    let restarted = m
        .bare_agent(2)
        .label("agent-restarted")
        .segments(&["blue"])
        .start();
    let reconciled = wait_until(Duration::from_secs(10), || {
        restarted.log().contains("mesh reconciled")
    });
    let (tx, rx) = pinger.join().expect("the pinger thread");
    let log = restarted.log();
    assert!(
        reconciled.is_some(),
        "the restarted agent reconciled:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("mesh reconciled"))
        .expect("a reconcile line");
    assert!(
        line.contains("netlink_writes=0"),
        "restart made netlink writes: {line}"
    );
    assert!(line.contains("applied=0"), "{line}");
    assert_eq!((tx, rx), (400, 400), "no ping lost across the restart");
}

#[test]
fn forged_copied_replayed_and_garbage_records_are_ignored() {
    require_root!();
    let m = Testbed::builder(3).build();
    let _agents = full_mesh(&m, &[]);
    let (h1, h2, h3) = (m.lab.host(1), m.lab.host(2), m.lab.host(3));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let endpoint = m.etcd.endpoint();
    let slot = m.lab.slot();
    rt.block_on(async move {
        use linkmesh::addr::MacAddr;
        use linkmesh::registry::{HostRecord, Secrets, seal};
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("etcd");
        let evil = HostRecord {
            hostname: "evil".into(),
            address: format!("198.18.{slot}.200").parse().expect("ip"),
            segments: [("blue".to_owned(), MacAddr([2, 0, 0, 0, 0, 0xee]))].into(),
            agent_version: "x".into(),
            heartbeat_nonce: None,
            overlay: linkmesh::registry::host::Overlay::default(),
        };
        let wrong = Secrets::from_text("not-the-lab-secret-at-all").expect("secret");
        let now = linkmesh::clock::unix_now();
        // 1. Signed with the wrong secret.
        let forged = seal(&wrong, "/linkmesh/hosts/evil", 0, now, &evil).expect("seal");
        c.put("/linkmesh/hosts/evil", forged, None)
            .await
            .expect("put");
        // 2. A valid record copied under another key.
        let h1_value = c.get("/linkmesh/hosts/h1", None).await.expect("get").kvs()[0]
            .value()
            .to_vec();
        c.put("/linkmesh/hosts/h9", h1_value.clone(), None)
            .await
            .expect("put");
        // 3. The same record replayed under a new lease, over the original.
        let lease = c.lease_grant(5, None).await.expect("lease").id();
        c.put(
            "/linkmesh/hosts/h1",
            h1_value,
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put");
        // 4. Garbage, and a key with a path below a host.
        c.put("/linkmesh/hosts/junk", vec![0xff, 0x00, 0x13], None)
            .await
            .expect("put");
        c.put("/linkmesh/hosts/a/b", "{}", None).await.expect("put");
        c.put("/linkmesh/segments/blue2", "not json", None)
            .await
            .expect("put");
        // The attacker's lease goes away: h1's key must still be h1's.
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.lease_revoke(lease).await.expect("revoke");
    });
    // Give the agents time to see all of it.
    std::thread::sleep(Duration::from_secs(2));
    for (h, others) in [
        (1u8, [ip(h2), ip(h3)]),
        (2, [ip(h1), ip(h3)]),
        (3, [ip(h1), ip(h2)]),
    ] {
        let mut want = others.to_vec();
        want.sort();
        assert_eq!(
            peers(&m.lab.host(h).netns, "blue"),
            Some(want),
            "h{h} peers unchanged"
        );
    }
    let log = std::fs::read_to_string(m.lab.dir().join("h2-agent.log")).expect("h2's log");
    for reason in ["bad_signature", "replayed", "malformed"] {
        assert!(
            log.contains(&format!("reason=\"{reason}\""))
                || log.contains(&format!("reason={reason}")),
            "h2 logged a {reason} rejection:\n{log}"
        );
    }
    let h1_log = std::fs::read_to_string(m.lab.dir().join("h1-agent.log")).expect("h1's log");
    assert!(
        h1_log.contains("changed by someone else"),
        "h1 restored its registration:\n{h1_log}"
    );
    // Rejections are logged once per key and revision, not per loop.
    let evil_lines = log
        .lines()
        .filter(|l| l.contains("/linkmesh/hosts/evil"))
        .count();
    assert_eq!(evil_lines, 1, "one log line for the forged record");
}

#[test]
fn hand_removed_device_and_fdb_entry_are_restored() {
    require_root!();
    let m = Testbed::builder(3).build();
    let _agents = full_mesh(&m, &["--resync-interval", "5"]);
    let (h1, h2, h3) = (m.lab.host(1), m.lab.host(2), m.lab.host(3));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("running");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["ip", "-n", &h1.netns, "link", "del", "blue"]);
    let restored = m.wait_peers(1, "blue", &[ip(h2), ip(h3)], Duration::from_secs(6));
    eprintln!("deleted device restored after {restored:?}");
    assert!(restored.is_some(), "device restored within one resync");

    linkmesh_tests::kernel::delete_peer_entry(&h1.netns, "blue", &h3.addr.to_string());
    let restored = m.wait_peers(1, "blue", &[ip(h2), ip(h3)], Duration::from_secs(6));
    eprintln!("deleted FDB entry restored after {restored:?}");
    assert!(restored.is_some(), "FDB entry restored within one resync");
}

#[test]
fn secret_rotation_host_by_host_keeps_every_peer() {
    require_root!();
    let m = Testbed::builder(3).build();
    let mut agents = full_mesh(&m, &[]);
    let rotated = agent::secret_file(
        &m.lab,
        "secret-rotated",
        &["a-brand-new-secret-0987654321", SECRET],
    );
    for h in 1..=3u8 {
        agents[usize::from(h - 1)].kill();
        agents[usize::from(h - 1)] = Agent::new(&m.lab, h, &m.etcd.endpoint(), &rotated)
            .label("agent-rotated")
            .segments(&["blue"])
            .start();
        std::thread::sleep(Duration::from_secs(1));
        for other in 1..=3u8 {
            let want: Vec<_> = (1..=3u8)
                .filter(|o| *o != other)
                .map(|o| ip(m.lab.host(o)))
                .collect();
            assert!(
                m.wait_peers(other, "blue", &want, Duration::from_secs(5))
                    .is_some(),
                "after rotating h{h}, h{other} keeps every peer: {:?}",
                peers(&m.lab.host(other).netns, "blue")
            );
        }
    }
    // Everyone now signs with the new secret and every record verifies.
    let log = agents[0].log();
    assert!(
        !log.contains("bad_signature"),
        "no rejections after rotation:\n{log}"
    );
}

#[test]
fn segment_devices_join_a_bridge_and_cleanup_removes_them() {
    require_root!();
    let m = Testbed::builder(2).build();
    m.admin(&[
        "segment",
        "add",
        "blue",
        "--vni",
        "100",
        "--learning",
        "off",
        "--mtu",
        "1400",
    ]);
    let err = std::process::Command::new(agent::binary())
        .args([
            "segment",
            "add",
            "green",
            "--vni",
            "100",
            "--etcd-server",
            &m.etcd.endpoint(),
            "--secret-file",
        ])
        .arg(&m.secret)
        .output()
        .expect("running linkmesh");
    assert!(
        !err.status.success(),
        "a second segment with vni 100 is refused"
    );
    assert!(String::from_utf8_lossy(&err.stderr).contains("already used by segment blue"));

    let a1 = m
        .bare_agent(1)
        .segments(&["blue"])
        .args(&["--bridge", "br-lm", "--cleanup-on-exit"])
        .start();
    let _a2 = m.bare_agent(2).segments(&["blue"]).start();
    let h1 = m.lab.host(1);
    assert!(
        m.wait_peers(1, "blue", &[ip(m.lab.host(2))], Duration::from_secs(10))
            .is_some()
    );
    let bridge = linkmesh_tests::kernel::link(&h1.netns, "br-lm").expect("bridge created");
    assert_eq!(bridge.kind.as_deref(), Some("bridge"));
    let blue = wait_until(Duration::from_secs(5), || {
        linkmesh_tests::kernel::link(&h1.netns, "blue")
            .is_some_and(|l| l.master == Some(bridge.index))
    });
    assert!(blue.is_some(), "blue is enslaved to br-lm");
    assert_eq!(
        linkmesh_tests::kernel::link(&h1.netns, "blue").and_then(|l| l.mtu),
        Some(1400)
    );

    a1.signal(libc::SIGTERM).expect("SIGTERM");
    assert!(
        a1.wait_timeout(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
    assert!(
        linkmesh_tests::kernel::link(&h1.netns, "blue").is_none(),
        "--cleanup-on-exit removed blue"
    );
}

#[test]
fn a_segment_with_netns_puts_its_device_in_that_namespace() {
    require_root!();
    let m = Testbed::builder(1).build();
    let workload = m.lab.add_namespace("web");
    m.admin(&[
        "segment", "add", "green", "--vni", "300", "--netns", &workload,
    ]);
    // A peer that registered green (signed with the lab secret).
    let endpoint = m.etcd.endpoint();
    let slot = m.lab.slot();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async move {
            use linkmesh::registry::{HostRecord, Secrets, seal};
            let mut c = etcd_client::Client::connect([endpoint], None)
                .await
                .expect("etcd");
            let lease = c.lease_grant(60, None).await.expect("lease").id();
            let record = HostRecord {
                hostname: "far".into(),
                address: format!("198.18.{slot}.77").parse().expect("ip"),
                segments: [(
                    "green".to_owned(),
                    linkmesh::mesh::desired::device_mac("far", "green"),
                )]
                .into(),
                agent_version: "t".into(),
                heartbeat_nonce: None,
                overlay: linkmesh::registry::host::Overlay::default(),
            };
            let key = "/linkmesh/hosts/far";
            let value = seal(
                &Secrets::from_text(SECRET).expect("secret"),
                key,
                lease,
                linkmesh::clock::unix_now(),
                &record,
            )
            .expect("seal");
            c.put(
                key,
                value,
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .expect("put");
        });
    let agent = m
        .bare_agent(1)
        .segments(&["green"])
        .args(&["--cleanup-on-exit"])
        .start();
    let far: IpAddr = format!("198.18.{slot}.77").parse().expect("ip");
    let placed = wait_until(Duration::from_secs(10), || {
        peers(&workload, "green") == Some(vec![far])
    });
    assert!(
        placed.is_some(),
        "green is in {workload} with the peer: {:?}\n{}",
        peers(&workload, "green"),
        agent.log()
    );
    assert!(
        linkmesh_tests::kernel::link(&m.lab.host(1).netns, "green").is_none(),
        "not in the host namespace"
    );
    // Drift inside the workload namespace is repaired at the next resync at the latest.
    agent.signal(libc::SIGTERM).expect("SIGTERM");
    assert!(
        agent
            .wait_timeout(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
    assert!(
        linkmesh_tests::kernel::link(&workload, "green").is_none(),
        "--cleanup-on-exit removed it"
    );
}

#[test]
fn an_address_change_replaces_the_peer_entry() {
    require_root!();
    let m = Testbed::builder(2).build();
    let agents = full_mesh(&m, &[]);
    let (h1, h2) = (m.lab.host(1), m.lab.host(2));
    let moved: IpAddr = format!("198.18.{}.102", m.lab.slot()).parse().expect("ip");
    add_address(&h2.netns, "eth0", &format!("{moved}/24"));
    agents[1].kill();
    let _restarted = m
        .bare_agent(2)
        .label("agent-moved")
        .segments(&["blue"])
        .args(&["--address", &moved.to_string()])
        .start();
    let replaced = m.wait_peers(1, "blue", &[moved], Duration::from_secs(10));
    assert!(
        replaced.is_some(),
        "h1 has exactly the new address: {:?}",
        peers(&h1.netns, "blue")
    );
    let _ = ip(h2);
}

/// Defines blue, starts an agent on every host of `m` joining it, and
/// waits for the full mesh.
fn full_mesh(m: &Testbed, extra: &[&str]) -> Vec<linkmesh_tests::process::Process> {
    m.add_segment("blue", 100);
    let agents = m.start_agents(&["blue"], extra);
    m.wait_mesh("blue", 1..=m.agents, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    agents
}

#[test]
fn agents_fail_over_between_etcd_members() {
    require_root!();
    let lab = Lab::new(3);
    let mut cluster = linkmesh_tests::etcd::EtcdCluster::start_on(IpAddr::V4(lab.gateway()), 3);
    let endpoints = cluster.endpoints().join(",");
    let secret = agent::secret_file(&lab, "secret", &[SECRET]);
    let _ = admin(
        &endpoints,
        &secret,
        &["segment", "add", "blue", "--vni", "100"],
    );
    let start = |h: u8| {
        Agent::new(&lab, h, &endpoints, &secret)
            .segments(&["blue"])
            .args(&["--ttl", "3"])
            .start()
    };
    let _a1 = start(1);
    let _a2 = start(2);
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    let t = Duration::from_secs(10);
    let wait = |h: &linkmesh_tests::lab::Host, want: &[IpAddr], t: Duration| {
        agent::wait_peers(&h.netns, "blue", want, t)
    };
    assert!(wait(h1, &[ip(h2)], t).is_some());

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let leader = rt.block_on(cluster.leader()).expect("a leader");
    cluster.kill(leader);
    // Longer than the TTL: registrations must be kept alive through the
    // surviving members, and a newcomer must be seen through them.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        peers(&h1.netns, "blue"),
        Some(vec![ip(h2)]),
        "h2 stayed registered"
    );
    let _a3 = start(3);
    let t = Duration::from_secs(15);
    assert!(
        wait(h1, &[ip(h2), ip(h3)], t).is_some(),
        "h1 sees h3: {:?}",
        peers(&h1.netns, "blue")
    );
    assert!(
        wait(h3, &[ip(h1), ip(h2)], t).is_some(),
        "h3 sees both: {:?}",
        peers(&h3.netns, "blue")
    );
}
