//! `flood: none` segments: peers as unicast forwarding entries, learning
//! off, ARP/ND answered by the device from the overlay addresses hosts
//! publish, and nothing flooded. Real agents, a real etcd, real packets.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use etcd_client::PutOptions;
use linkmesh::registry::{HostRecord, Keys, Secrets, seal};
use linkmesh_tests::agent::{add_address, http, metrics, peers, ping, wait_until};
use linkmesh_tests::kernel::{self, FdbEntry};
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;
use linkmesh_tests::{SECRET, lab::mac_string};

const SEGMENT: &str = "big";

/// `ip -d -j link show DEV` in `ns`, as JSON.
fn link_details(ns: &str, device: &str) -> serde_json::Value {
    let out = Command::new("ip")
        .args(["-n", ns, "-d", "-s", "-j", "link", "show", device])
        .output()
        .expect("running ip");
    assert!(out.status.success(), "ip link show {device} in {ns}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
    v[0].clone()
}

/// Frames the device in `ns` received from the overlay.
fn rx_packets(ns: &str) -> u64 {
    link_details(ns, SEGMENT)["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets")
}

/// The device MAC of `SEGMENT` in `ns`.
fn device_mac(ns: &str) -> [u8; 6] {
    kernel::link(ns, SEGMENT)
        .and_then(|l| l.mac)
        .expect("the segment device has a MAC")
}

/// The device's own permanent forwarding entries in `ns`.
fn own_entries(ns: &str) -> Vec<FdbEntry> {
    let Some(index) = kernel::link(ns, SEGMENT).map(|l| l.index) else {
        return Vec::new();
    };
    kernel::fdb(ns)
        .into_iter()
        .filter(|e| e.ifindex == index && e.own && e.permanent)
        .collect()
}

/// The device's permanent neighbour entries in `ns`: address and MAC.
fn own_neighbours(ns: &str) -> Vec<(IpAddr, [u8; 6])> {
    let Some(index) = kernel::link(ns, SEGMENT).map(|l| l.index) else {
        return Vec::new();
    };
    let mut out: Vec<_> = kernel::neighbours(ns)
        .into_iter()
        .filter(|n| n.ifindex == index && linkmesh::kernel::fdb::is_permanent(n.state))
        .filter_map(|n| Some((n.ip, n.mac?)))
        .collect();
    out.sort_unstable();
    out
}

fn overlay(m: &Testbed, host: u8) -> IpAddr {
    IpAddr::V4(m.lab.overlay_address(host, 0))
}

fn overlay_arg(m: &Testbed, host: u8) -> String {
    format!("{SEGMENT}={}/24", overlay(m, host))
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn a_flood_none_segment_floods_nothing_and_answers_arp_itself() {
    require_root!();
    let m = Testbed::builder(3).build();
    let added = m.admin(&[
        "segment", "add", SEGMENT, "--vni", "300", "--flood", "none", "--json",
    ]);
    assert!(added.contains("\"flood\": \"none\""), "{added}");
    let listed = m.admin(&["segment", "ls"]);
    assert!(
        listed.contains("FLOOD") && listed.contains("none"),
        "{listed}"
    );

    // h1 and h2 put their segment on a bridge (their addresses go there,
    // so their own stack ARPs through the device's proxy); h3 does not.
    let _a1 = m
        .bare_agent(1)
        .segments(&[SEGMENT])
        .args(&["--bridge", "lmbr", "--overlay-address", &overlay_arg(&m, 1)])
        .start();
    let _a2 = m
        .bare_agent(2)
        .segments(&[SEGMENT])
        .args(&["--bridge", "lmbr", "--overlay-address", &overlay_arg(&m, 2)])
        .start();
    let a3 = m
        .bare_agent(3)
        .segments(&[SEGMENT])
        .args(&[
            "--ttl",
            "3",
            "--resync-interval",
            "1",
            "--overlay-address",
            &overlay_arg(&m, 3),
        ])
        .start();
    let ns = |h: u8| m.lab.host(h).netns.clone();

    // Each host: one unicast entry per peer (its device MAC to its
    // underlay address), one permanent neighbour per peer overlay address,
    // no zero-MAC entry.
    let expected = |h: u8| {
        let mut entries: Vec<([u8; 6], Option<IpAddr>)> = (1..=3u8)
            .filter(|p| *p != h)
            .map(|p| (device_mac(&ns(p)), Some(IpAddr::V4(m.lab.host(p).addr))))
            .collect();
        entries.sort_unstable();
        let mut neighbours: Vec<(IpAddr, [u8; 6])> = (1..=3u8)
            .filter(|p| *p != h)
            .map(|p| (overlay(&m, p), device_mac(&ns(p))))
            .collect();
        neighbours.sort_unstable();
        (entries, neighbours)
    };
    let programmed = |h: u8| {
        let mut entries: Vec<_> = own_entries(&ns(h))
            .into_iter()
            .map(|e| (e.mac, e.dst))
            .collect();
        entries.sort_unstable();
        (entries, own_neighbours(&ns(h)))
    };
    let all_up = || (1..=3u8).all(|h| kernel::link(&ns(h), SEGMENT).is_some());
    assert!(
        wait_until(Duration::from_secs(10), all_up).is_some(),
        "every host has its segment device"
    );
    for h in 1..=3u8 {
        let done = wait_until(Duration::from_secs(10), || programmed(h) == expected(h));
        assert!(
            done.is_some(),
            "h{h}: programmed {:?}, expected {:?}",
            programmed(h),
            expected(h)
        );
        let details = link_details(&ns(h), SEGMENT);
        let info = &details["linkinfo"]["info_data"];
        assert_eq!(info["proxy"], true, "h{h} proxy: {info}");
        assert_eq!(info["learning"], false, "h{h} learning: {info}");
        assert!(
            own_entries(&ns(h)).iter().all(|e| e.mac != [0; 6]),
            "h{h} has no head-end entry"
        );
        assert_eq!(peers(&ns(h), SEGMENT), Some(vec![]), "no zero-MAC peers");
    }
    // The API shows the segment's flooding and the hosts' overlay addresses.
    let (_, segments) = http(&ns(1), "GET", "/segments", None, None);
    assert!(segments.contains(r#""flood":"none""#), "{segments}");
    let (_, hosts) = http(&ns(1), "GET", "/hosts", None, None);
    assert!(
        hosts.contains(&format!(
            r#""overlay":{{"{SEGMENT}":["{}"]}}"#,
            overlay(&m, 2)
        )),
        "{hosts}"
    );

    // The overlay addresses are where the segment's L3 is: the bridge on
    // h1 and h2, the device on h3.
    for (h, device) in [(1, "lmbr"), (2, "lmbr"), (3, SEGMENT)] {
        let index = kernel::link(&ns(h), device).expect("device").index;
        assert!(
            kernel::addresses(&ns(h))
                .iter()
                .any(|a| a.ifindex == index && a.addr == overlay(&m, h) && a.prefix_len == 24),
            "h{h}: {} on {device}",
            overlay(&m, h)
        );
    }

    // Every pair reaches the other over the overlay. From h1 and h2 the
    // stack ARPs on the bridge: only the device's proxy can answer.
    for from in 1..=3u8 {
        for to in (1..=3u8).filter(|t| *t != from) {
            let (tx, rx) = ping(&ns(from), &overlay(&m, to).to_string(), 3, "0.2");
            assert_eq!((tx, rx), (3, 3), "h{from} -> h{to}");
        }
    }
    let answered = kernel::neighbours(&ns(1))
        .into_iter()
        .find(|n| n.ip == overlay(&m, 2) && !linkmesh::kernel::fdb::is_permanent(n.state))
        .and_then(|n| n.mac);
    assert_eq!(
        answered.map(mac_string),
        Some(mac_string(device_mac(&ns(2)))),
        "h1's bridge learned h2's address from the proxy's answer"
    );

    // Nothing floods: pinging an address nobody publishes sends ARP
    // requests that the device answers or drops itself, and a broadcast
    // ping sends nothing anywhere. The peers' devices receive nothing.
    let before: Vec<u64> = (1..=2u8).map(|h| rx_packets(&ns(h))).collect();
    let nobody = IpAddr::V4(m.lab.overlay_address(50, 0)).to_string();
    let (_, rx) = ping(&ns(3), &nobody, 3, "0.2");
    assert_eq!(rx, 0);
    let broadcast = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns(3),
            "ping",
            "-b",
            "-n",
            "-q",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
        ])
        .arg(format!("198.19.{}.255", m.lab.slot()))
        .output()
        .expect("running ping");
    assert!(!broadcast.stdout.is_empty());
    let after: Vec<u64> = (1..=2u8).map(|h| rx_packets(&ns(h))).collect();
    assert_eq!(
        before, after,
        "h1's and h2's devices received nothing flooded from h3"
    );

    // An address the operator put on the device by hand is not ours: it
    // stays across resyncs (h3 resyncs every second).
    let extra: IpAddr = format!("198.19.{}.200", m.lab.slot()).parse().expect("ip");
    add_address(&ns(3), SEGMENT, &format!("{extra}/24"));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        kernel::addresses(&ns(3)).iter().any(|a| a.addr == extra),
        "the operator's address stayed"
    );

    // A host that stops leaves every peer's tables.
    let h3_mac = device_mac(&ns(3));
    a3.signal(libc::SIGTERM).expect("stopping h3's agent");
    assert!(a3.wait_timeout(Duration::from_secs(10)).is_some());
    let gone = wait_until(Duration::from_secs(10), || {
        (1..=2u8).all(|h| {
            own_entries(&ns(h)).iter().all(|e| e.mac != h3_mac)
                && own_neighbours(&ns(h))
                    .iter()
                    .all(|(ip, _)| *ip != overlay(&m, 3))
        })
    });
    assert!(
        gone.is_some(),
        "h3's entries stayed: {:?} {:?}",
        own_entries(&ns(1)),
        own_neighbours(&ns(1))
    );
    for h in 1..=2u8 {
        let (entries, _) = programmed(h);
        assert_eq!(entries.len(), 1, "h{h}: {entries:?}");
    }
}

/// Signed records that abuse the overlay field: refused or left out,
/// counted, and never turned into an entry; an unsigned one changes
/// nothing.
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn overlay_claims_are_checked_before_any_entry() {
    require_root!();
    let m = Testbed::builder(2).build();
    m.admin(&["segment", "add", SEGMENT, "--vni", "301", "--flood", "none"]);
    let a1 = m
        .bare_agent(1)
        .segments(&[SEGMENT])
        .args(&["--overlay-address", &overlay_arg(&m, 1)])
        .start();
    let _a2 = m
        .bare_agent(2)
        .segments(&[SEGMENT])
        .args(&["--overlay-address", &overlay_arg(&m, 2)])
        .start();
    let ns1 = m.lab.host(1).netns.clone();
    let settled = wait_until(Duration::from_secs(10), || own_neighbours(&ns1).len() == 1);
    assert!(settled.is_some(), "h1 learns h2's address");

    let slot = m.lab.slot();
    let secrets = Secrets::from_text(SECRET).expect("secret");
    let keys = Keys::new("/linkmesh");
    let record = |name: &str, host: u8, claims: &[IpAddr], segment: &str| HostRecord {
        hostname: name.into(),
        address: format!("198.18.{slot}.{host}").parse().expect("ip"),
        segments: [(
            SEGMENT.to_owned(),
            linkmesh::mesh::desired::device_mac(name, SEGMENT),
        )]
        .into(),
        agent_version: "hostile".into(),
        heartbeat_nonce: None,
        overlay: [(segment.to_owned(), claims.iter().copied())]
            .into_iter()
            .collect(),
    };
    let h1_address = overlay(&m, 1);
    let h2_address = overlay(&m, 2);
    let rejected_before = rejected(&ns1);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([m.etcd.endpoint()], None)
            .await
            .expect("etcd");
        let lease = client.lease_grant(60, None).await.expect("lease").id();
        let put = |key: String, value: Vec<u8>| {
            let mut kv = client.kv_client();
            async move {
                kv.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
                    .expect("put");
            }
        };
        let now = linkmesh::clock::unix_now();
        // Signed, but for a segment it does not join, with a multicast
        // address, and with too many addresses: refused whole.
        for (name, host, claims, segment) in [
            (
                "x-other",
                61,
                vec![IpAddr::from([198, 19, slot, 61])],
                "blue",
            ),
            ("x-mcast", 62, vec![IpAddr::from([224, 0, 0, 5])], SEGMENT),
            (
                "x-many",
                63,
                (1..=9u8)
                    .map(|i| IpAddr::from([198, 19, slot, 100 + i]))
                    .collect(),
                SEGMENT,
            ),
        ] {
            let key = keys.host(name);
            let value = seal(
                &secrets,
                &key,
                lease,
                now,
                &record(name, host, &claims, segment),
            )
            .expect("seal");
            put(key, value).await;
        }
        // Unsigned (sealed with another secret): refused.
        let other = Secrets::from_text("not-the-lab-secret-0123456789").expect("secret");
        let key = keys.host("x-forged");
        let value = seal(
            &other,
            &key,
            lease,
            now,
            &record("x-forged", 64, &[h2_address], SEGMENT),
        )
        .expect("seal");
        put(key, value).await;
        // Signed and valid, claiming h1's own address and h2's: h1 keeps
        // its own, h2 (first by name) keeps its one; the host itself is
        // still a peer.
        let key = keys.host("x-thief");
        let value = seal(
            &secrets,
            &key,
            lease,
            now,
            &record("x-thief", 65, &[h1_address, h2_address], SEGMENT),
        )
        .expect("seal");
        put(key, value).await;
    });
    let thief_mac = linkmesh::mesh::desired::device_mac("x-thief", SEGMENT);
    let thief_seen = wait_until(Duration::from_secs(10), || {
        own_entries(&ns1).iter().any(|e| e.mac == thief_mac.0)
    });
    assert!(thief_seen.is_some(), "the valid record's host is a peer");
    let counted = wait_until(Duration::from_secs(10), || {
        rejected(&ns1) >= rejected_before + 4
    });
    assert!(
        counted.is_some(),
        "four refused records counted: {} -> {}",
        rejected_before,
        rejected(&ns1)
    );
    let h2_mac = device_mac(&m.lab.host(2).netns);
    assert_eq!(
        own_neighbours(&ns1),
        vec![(h2_address, h2_mac)],
        "no entry for a refused record, for h1's own address, or for the thief"
    );
    let entries: Vec<[u8; 6]> = own_entries(&ns1).iter().map(|e| e.mac).collect();
    assert_eq!(entries.len(), 2, "h2 and the thief: {entries:?}");
    let log = a1.log();
    assert!(
        log.contains("both publish overlay address") && log.contains("which is this host's"),
        "the conflicts are reported"
    );
}

/// Every record h1's agent refused so far, whatever the reason.
fn rejected(ns: &str) -> u64 {
    metrics(ns)
        .iter()
        .filter(|(name, _)| name.starts_with("linkmesh_records_rejected_total"))
        .map(|(_, v)| v)
        .sum()
}
