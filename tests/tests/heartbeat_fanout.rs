//! Heartbeats go to a bounded set of hosts, whatever the fleet's size:
//! ring neighbours and VIP partners. Three real agents sharing a VIP, and
//! 60 registered hosts that do not exist, on a real etcd and a real
//! underlay; what was sent is read from the kernel's neighbour table.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use linkmesh::peers::fanout::Fanout;
use linkmesh::peers::indirect::{Kind, Message};
use linkmesh::registry::Secrets;
use linkmesh_tests::SECRET;
use linkmesh_tests::agent::{self, wait_until};
use linkmesh_tests::kernel;
use linkmesh_tests::require_root;
use linkmesh_tests::synthetic::SyntheticPeers;
use linkmesh_tests::testbed::Testbed;

const GHOSTS: usize = 60;
const FIRST_GHOST: u8 = 40;

#[test]
fn heartbeats_reach_a_bounded_set_and_every_peer_gets_a_verdict() {
    require_root!();
    let v = Testbed::builder(3).vip(&[]).build();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (endpoint, slot) = (v.etcd.endpoint(), v.lab.slot());
    let ghosts: BTreeSet<IpAddr> = rt.block_on(async {
        let mut ghosts = SyntheticPeers::connect(&endpoint, slot, SECRET, FIRST_GHOST).await;
        for i in 0..GHOSTS {
            ghosts.join(i).await;
        }
        ghosts.registered().await
    });
    let agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let all = GHOSTS + 2;
    let listed = wait_until(Duration::from_secs(20), || {
        (1..=3).all(|h| {
            let rows = agent::peer_rows(&v.lab, h);
            rows.len() == all && rows.contains_key("h2") == (h != 2)
        })
    });
    assert!(
        listed.is_some(),
        "every agent lists all {all} peers\n{}",
        agents[0].log()
    );
    // VIP memberships (state keys) are in, and a few heartbeats went out.
    let settled = wait_until(Duration::from_secs(10), || v.states().len() == 3);
    assert!(settled.is_some(), "the three agents take part in the VIP");
    std::thread::sleep(Duration::from_secs(2));

    let bound = Fanout::default().max_targets();
    // Each agent's targets, by address.
    let targets: BTreeSet<IpAddr> = (1..=3u8)
        .flat_map(|h| agent::peer_rows(&v.lab, h).into_values())
        .filter(|r| r["monitored"] == true)
        .filter_map(|r| r["address"].as_str()?.parse().ok())
        .collect();
    for h in 1..=3u8 {
        check_verdicts(&v, h, bound);
    }

    // What the kernel was asked to send to: a ghost address gets a
    // neighbour entry only when something is sent to it. Each agent sends
    // heartbeats to its own targets and, as a helper, pings the silent
    // targets of the others: nothing else.
    for h in 1..=3u8 {
        let resolved: BTreeSet<IpAddr> = kernel::neighbours(&v.lab.host(h).netns)
            .into_iter()
            .map(|n| n.ip)
            .filter(|ip| ghosts.contains(ip))
            .collect();
        eprintln!(
            "fanout figure: h{h} sent to {} of {GHOSTS} unreachable hosts",
            resolved.len()
        );
        assert!(
            resolved.is_subset(&targets),
            "h{h} sent only to the agents' targets: resolved {resolved:?}, targets {targets:?}"
        );
    }
    assert!(
        targets.len() < GHOSTS / 2,
        "the targets are a bounded set: {targets:?}"
    );

    check_table_and_metrics(&v);

    // A partner that stops is dead at once, on heartbeats, while its
    // record still stands in etcd.
    agents[2].kill();
    let dead = wait_until(Duration::from_secs(3), || {
        agent::peer_rows(&v.lab, 1)
            .get("h3")
            .is_some_and(|r| r["alive"] == false && r["verdict"] == "heartbeat")
    });
    assert!(
        dead.is_some(),
        "h1 sees h3 dead: {:?}",
        agent::peer_rows(&v.lab, 1).get("h3")
    );
}

/// h1 in namespace `ns` sends `bytes` to `to`'s heartbeat port.
fn send_udp(ns: &str, to: std::net::Ipv4Addr, bytes: Vec<u8>) {
    linkmesh_tests::netns::run_in(ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("a socket");
        s.send_to(&bytes, (to, 4794)).expect("sending");
    });
}

#[test]
fn a_peer_heard_only_through_others_is_alive_and_forged_answers_are_refused() {
    require_root!();
    let v = Testbed::builder(3).vip(&[]).client().build();
    let agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let (h1, h3) = (v.lab.host(1).addr, v.lab.host(3).addr);
    let h3_row = || agent::peer_rows(&v.lab, 1).get("h3").cloned();
    let up = wait_until(Duration::from_secs(20), || {
        h3_row().is_some_and(|r| r["alive"] == true && r["verdict"] == "heartbeat")
    });
    assert!(up.is_some(), "h1 hears h3\n{}", agents[0].log());

    // h3's datagrams to h1's heartbeat port are refused by h3's own
    // routing: h1 no longer hears h3, but h2 still reaches it.
    let rule = std::process::Command::new("ip")
        .args([
            "-n",
            &v.lab.host(3).netns,
            "rule",
            "add",
            "to",
            &format!("{h1}/32"),
        ])
        // UDP by number: a name would make ip read /etc/protocols.
        .args(["ipproto", "17", "dport", "4794", "prohibit"])
        .status()
        .expect("ip rule");
    assert!(rule.success(), "adding the rule");
    let indirect = wait_until(Duration::from_secs(5), || {
        h3_row().is_some_and(|r| r["alive"] == true && r["verdict"] == "indirect")
    });
    assert!(
        indirect.is_some(),
        "h1 reaches h3 through h2: {:?}\n{}",
        h3_row(),
        agents[0].log()
    );
    // And it stays so (each answer stands for a second, asked every half).
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let row = h3_row().expect("h3's row");
        assert!(
            row["alive"] == true,
            "h3 stays alive on indirect answers: {row}"
        );
    }

    // h3 stops. A client without the secret keeps vouching for it: relays
    // (and other kinds) signed with another key, and junk. None counts.
    agents[2].kill();
    let wrong = Secrets::from_text("not-the-fleet-secret-0123456789").expect("a secret");
    let client = v.lab.host(v.client()).netns.clone();
    let forged = |kind, nonce| {
        Message {
            kind,
            nonce,
            origin: h1,
            target: h3,
        }
        .encode(&wrong)
    };
    let mut sent = 0u64;
    let dead = wait_until(Duration::from_secs(5), || {
        for (i, kind) in [Kind::Relay, Kind::Ack, Kind::Ping, Kind::Request]
            .into_iter()
            .enumerate()
        {
            send_udp(&client, h1, forged(kind, sent + i as u64));
        }
        send_udp(&client, h1, b"LMIP junk".to_vec());
        sent += 5;
        h3_row().is_some_and(|r| r["alive"] == false && r["verdict"] == "heartbeat")
    });
    assert!(
        dead.is_some(),
        "h3 is dead despite forged answers: {:?}",
        h3_row()
    );
    std::thread::sleep(Duration::from_millis(200));
    let rejected = agent::metric(&v.lab.host(1).netns, "linkmesh_peer_probes_rejected_total");
    assert_eq!(rejected, Some(sent), "every forged message counted");
}

/// Host `h`'s table: between the ring neighbours and `bound` heartbeated,
/// the VIP partners among them, every other peer alive on its lease, and
/// the heartbeated ghosts dead.
fn check_verdicts(v: &Testbed, h: u8, bound: usize) {
    let rows = agent::peer_rows(&v.lab, h);
    let monitored: BTreeSet<&str> = rows
        .iter()
        .filter(|(_, r)| r["monitored"] == true)
        .map(|(n, _)| n.as_str())
        .collect();
    eprintln!(
        "fanout figure: h{h} heartbeats {} of {} registered peers",
        monitored.len(),
        rows.len()
    );
    assert!(
        (8..=bound).contains(&monitored.len()),
        "h{h} heartbeats between the 8 ring neighbours and {bound}: {monitored:?}"
    );
    // The other members of the VIP are always among them, and alive on
    // their heartbeats.
    for other in (1..=3u8).filter(|o| *o != h).map(|o| format!("h{o}")) {
        let row = &rows[&other];
        assert!(
            row["monitored"] == true && row["alive"] == true && row["verdict"] == "heartbeat",
            "h{h} hears VIP partner {other}: {row}"
        );
    }
    // The rest: not watched here, alive on their leases; watched ghosts
    // are silent, so dead on heartbeats.
    for (name, row) in rows.iter().filter(|(n, _)| n.starts_with("syn-")) {
        let (alive, verdict) = if monitored.contains(name.as_str()) {
            (false, "heartbeat")
        } else {
            (true, "lease")
        };
        assert!(
            row["alive"] == alive && row["verdict"] == verdict,
            "h{h}'s verdict on {name}: {row}"
        );
    }
}

/// `linkmesh peers` names the verdicts; the metrics count peers by verdict,
/// with per-peer series only for the heartbeated ones.
fn check_table_and_metrics(v: &Testbed) {
    let table = agent::in_host(&v.lab, 1, &["peers"]).expect("linkmesh peers");
    assert!(
        table.contains("VERDICT") && table.contains("lease"),
        "{table}"
    );
    let scrape = agent::metrics(&v.lab.host(1).netns);
    let by_lease = scrape
        .iter()
        .find(|(n, _)| n.starts_with("linkmesh_peers{") && n.contains("verdict=\"lease\""))
        .map(|(_, c)| *c);
    let rows = agent::peer_rows(&v.lab, 1);
    let leased = rows.values().filter(|r| r["verdict"] == "lease").count();
    assert_eq!(
        by_lease,
        Some(u64::try_from(leased).expect("small")),
        "{scrape:?}"
    );
    let series = scrape
        .iter()
        .filter(|(n, _)| n.starts_with("linkmesh_peer_alive{"))
        .count();
    assert_eq!(
        series,
        rows.len() - leased,
        "per-peer series for the heartbeated only"
    );
}
