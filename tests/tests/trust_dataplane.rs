//! Trust and the data plane: someone who can only send frames on the
//! underlay (here the lab's client host, raw frames from its own port)
//! cannot revoke a live owner with forged ARP replies, and cannot fake a
//! peer's liveness with spoofed heartbeats.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use linkmesh::kernel::packet::RawSender;
use linkmesh::peers;
use linkmesh_tests::agent::{self, wait_until};
use linkmesh_tests::frame;
use linkmesh_tests::lab::Host;
use linkmesh_tests::process::Process;
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;
use serde_json::Value;

const HEARTBEAT_PORT: u16 = 4794;

/// Sends `frames` from `host`'s underlay port, one every `gap`.
fn send_from(host: &Host, frames: Vec<Vec<u8>>, gap: Duration) {
    let ifname = host.ifname.clone();
    host.run(move || {
        let mut sender = RawSender::open(&ifname).expect("a raw socket");
        for f in frames {
            sender.send(&f).expect("sending a frame");
            std::thread::sleep(gap);
        }
    });
}

/// Fills in the IPv4 header checksum of an untagged frame: the lab's
/// bridge drops IPv4 with a wrong one (bridge netfilter checks it).
fn ipv4_checksum(f: &mut [u8]) {
    f[24..26].copy_from_slice(&[0, 0]);
    let sum: u32 = f[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    let check = !u16::try_from(folded).expect("folded to 16 bits");
    f[24..26].copy_from_slice(&check.to_be_bytes());
}

/// An ARP reply "`vip` is at `mac`", unicast from `mac` to `to`.
fn forged_reply(mac: [u8; 6], vip: Ipv4Addr, to: &Host) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&to.mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&vip.octets());
    f.extend_from_slice(&to.mac);
    f.extend_from_slice(&to.addr.octets());
    f
}

/// A counter in `host`'s `GET /metrics` (0 when absent).
fn metric(v: &Testbed, host: u8, name: &str) -> u64 {
    agent::metric(&v.lab.host(host).netns, name).unwrap_or(0)
}

/// Starts agents on every agent host with a long ownership lease (only
/// fast failover could move the VIP quickly), and waits until one holds it,
/// the others are STANDBY, and every agent loaded its eBPF watchers.
fn start(v: &Testbed) -> (Vec<Process>, u8) {
    let agents: Vec<_> = (1..=v.agents)
        .map(|h| v.agent(h, "agent", &["--keepalive-interval", "30"]))
        .collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(15), None)
        .unwrap_or_else(|| panic!("one holder: {:?}\n{}", v.holders(), agents[0].log()));
    let ready = wait_until(Duration::from_secs(10), || {
        let standby = v.states().iter().filter(|(_, s)| s == "STANDBY").count();
        standby == usize::from(v.agents) - 1
            && agents.iter().all(|a| {
                let log = a.log();
                log.contains("eBPF VIP watcher loaded") && log.contains("peer watcher attached")
            })
    });
    assert!(ready.is_some(), "standbys and watchers: {:?}", v.states());
    (agents, owner)
}

#[test]
fn forged_arp_replies_do_not_revoke_a_live_owner() {
    require_root!();
    let v = Testbed::builder(3).vip(&[]).build();
    let (agents, owner) = start(&v);
    let attacker = v.lab.host(v.client());
    let standbys: Vec<&Host> = (1..=3)
        .filter(|h| *h != owner)
        .map(|h| v.lab.host(h))
        .collect();
    let std::net::IpAddr::V4(vip) = v.vip else {
        panic!("an IPv4 VIP")
    };
    // Let the standbys' probes settle on the owner first.
    std::thread::sleep(Duration::from_millis(500));

    // Every 300 ms one forged reply to each standby, from the attacker's
    // MAC: before the fix each made the standbys probe that MAC, which never
    // answers, so the live owner looked silent a window later.
    let frames: Vec<Vec<u8>> = (0..20)
        .flat_map(|_| standbys.iter().map(|s| forged_reply(attacker.mac, vip, s)))
        .collect();
    let sender = {
        let attacker = attacker.clone();
        std::thread::spawn(move || send_from(&attacker, frames, Duration::from_millis(150)))
    };
    let end = Instant::now() + Duration::from_secs(7);
    while Instant::now() < end {
        assert_eq!(
            v.holders(),
            vec![owner],
            "the VIP moved off its live owner h{owner}\n{}",
            agents[usize::from(owner) - 1].log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sender.join().expect("the sender");
    assert!(
        v.suspects().is_empty(),
        "no standby suspected the owner: {:?}",
        v.suspects()
    );
    let ignored: u64 = (1..=3)
        .filter(|h| *h != owner)
        .map(|h| metric(&v, h, "linkmesh_vip_foreign_replies_ignored_total"))
        .sum();
    assert!(
        ignored >= 20,
        "the forged replies were seen and ignored: {ignored}"
    );
}

/// `host`'s `linkmesh peers --json` row for `peer`.
fn peer_row(v: &Testbed, host: u8, peer: &str) -> Option<Value> {
    let text = agent::in_host(&v.lab, host, &["peers", "--json"]).ok()?;
    let report: Value = serde_json::from_str(&text).ok()?;
    report["peers"]
        .as_array()?
        .iter()
        .find(|p| p["hostname"] == peer)
        .cloned()
}

#[test]
fn spoofed_heartbeats_do_not_fake_a_peers_liveness() {
    require_root!();
    let v = Testbed::builder(3).client().build();
    let agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let heard = wait_until(Duration::from_secs(15), || {
        peer_row(&v, 1, "h3")
            .is_some_and(|r| r["alive"] == true && r["heartbeats"].as_u64() > Some(10))
    });
    assert!(heard.is_some(), "h1 hears h3\n{}", agents[0].log());

    // h3 stops (its record stays until its lease runs out), and goes quiet.
    agents[2].signal(libc::SIGSTOP).expect("stopping h3");
    let quiet = wait_until(Duration::from_secs(3), || {
        peer_row(&v, 1, "h3").is_some_and(|r| r["alive"] == false)
    });
    assert!(quiet.is_some(), "h3 went quiet on h1");
    let before = peer_row(&v, 1, "h3").expect("h3's row");

    // The attacker sends heartbeats from h3's address to h1 for 2 s: with a
    // guessed token, with none, and in the format without tokens.
    let (h1, h3, attacker) = (v.lab.host(1), v.lab.host(3), v.lab.host(v.client()));
    let payloads = [
        peers::heartbeat_payload("h3", *b"guessed!"),
        peers::heartbeat_payload("h3", [0; 8]),
        b"LMHB\x01h3".to_vec(),
    ];
    let frames: Vec<Vec<u8>> = (0..100)
        .flat_map(|_| payloads.iter())
        .map(|p| {
            let mut f = frame::udp(&[], h3.addr, h1.addr, HEARTBEAT_PORT, p);
            f[..6].copy_from_slice(&h1.mac);
            f[6..12].copy_from_slice(&attacker.mac);
            ipv4_checksum(&mut f);
            f
        })
        .collect();
    send_from(attacker, frames, Duration::from_millis(7));
    let after = peer_row(&v, 1, "h3").expect("h3's row");
    agents[2].signal(libc::SIGCONT).expect("resuming h3");

    assert_eq!(
        after["heartbeats"], before["heartbeats"],
        "no spoofed heartbeat counted: {before} -> {after}"
    );
    assert_eq!(
        after["alive"], false,
        "h3 is not alive on spoofed heartbeats: {after}"
    );
    let rejected = metric(&v, 1, "linkmesh_peer_heartbeats_rejected_total");
    assert!(
        rejected >= 300,
        "every spoofed heartbeat dropped and counted: {rejected}"
    );

    // h3's own heartbeats, with its token, count again.
    let back = wait_until(Duration::from_secs(5), || {
        peer_row(&v, 1, "h3").is_some_and(|r| r["alive"] == true)
    });
    assert!(
        back.is_some(),
        "h3 heard again after it resumed\n{}",
        agents[2].log()
    );
}
