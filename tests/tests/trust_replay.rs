//! Trust and replays: a saved copy of a definition, put back by an etcd
//! writer without the secret, neither brings back a floating IP an admin
//! removed (not even with the removal's tombstone deleted, not even on an
//! agent that restarts) nor rolls a segment back to an older VNI.

use std::process::Command;
use std::time::{Duration, Instant};

use linkmesh_tests::agent::{http, wait_until};
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

/// As an attacker with etcd access but no secret: puts `value` at `key`
/// (on no lease, as definitions are stored), deleting what is there first
/// if `delete_first`.
fn replay(t: &Testbed, key: &str, value: &str, delete_first: bool) {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let mut c = t.etcd.client().await;
        if delete_first {
            c.delete(key, None).await.expect("deleting the key");
        }
        c.put(key, value, None)
            .await
            .expect("putting the saved copy");
    });
}

/// The value at exactly `key` (reads are by prefix: the VIP's owner and
/// state keys come along).
fn value(t: &Testbed, key: &str) -> String {
    let kvs = t.get(key);
    match kvs.iter().find(|(k, _)| k == key) {
        Some((_, v)) => v.clone(),
        None => panic!("no value at {key}: {kvs:?}"),
    }
}

/// `linkmesh_vip_records_rejected_total` on host `host`.
fn vip_rejections(t: &Testbed, host: u8) -> u64 {
    let (_, metrics) = http(&t.lab.host(host).netns, "GET", "/metrics", None, None);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("linkmesh_vip_records_rejected_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VIP rejection count in {metrics}"))
}

/// Checks every 20 ms for `d` that nobody holds the VIP.
fn nobody_holds(t: &Testbed, d: Duration, what: &str) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        assert_eq!(t.holders(), Vec::<u8>::new(), "{what}: the VIP came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_removed_vip_does_not_come_back_from_a_saved_copy() {
    require_root!();
    let t = Testbed::builder(2).vip(&[]).build();
    let key = format!("/linkmesh/vips/{}", t.id);
    let saved = value(&t, &key);
    let mut agents: Vec<_> = (1..=2).map(|h| t.agent(h, "agent", &[])).collect();
    assert!(
        t.wait_single_holder(Duration::from_secs(15), None)
            .is_some(),
        "the VIP is held before it is removed"
    );
    t.admin(&["ip", "rm", &t.id]);
    let gone = wait_until(Duration::from_secs(10), || t.holders().is_empty());
    assert!(gone.is_some(), "the removed VIP is given up");
    let tombstone = value(&t, &key);
    assert!(
        tombstone.contains("\"kind\":\"tombstone\""),
        "removal leaves a signed tombstone: {tombstone}"
    );
    let before: Vec<u64> = (1..=2).map(|h| vip_rejections(&t, h)).collect();

    // The tombstone deleted first: the agents remember it anyway.
    replay(&t, &key, &saved, true);
    nobody_holds(&t, Duration::from_secs(4), "a saved copy put back");
    for h in 1..=2u8 {
        assert!(
            vip_rejections(&t, h) > before[usize::from(h - 1)],
            "h{h} counted the replay"
        );
    }

    // An agent that restarts remembers (`--state-dir`) what it saw.
    drop(agents.remove(0));
    agents.insert(0, t.agent(1, "again", &[]));
    let up = wait_until(Duration::from_secs(10), || {
        http(&t.lab.host(1).netns, "GET", "/healthz", None, None).0 == 200
    });
    assert!(up.is_some(), "h1 is back");
    nobody_holds(&t, Duration::from_secs(4), "a restarted agent");
}

/// The VNI of device `device` in namespace `ns`.
fn vni(ns: &str, device: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["-n", ns, "-d", "-j", "link", "show", "dev", device])
        .output()
        .ok()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    links[0]["linkinfo"]["info_data"]["id"].as_u64()
}

#[test]
fn a_segment_is_not_rolled_back_to_a_saved_copy() {
    require_root!();
    let t = Testbed::builder(2).segment("blue", 100).build();
    let key = "/linkmesh/segments/blue";
    let saved = value(&t, key);
    let _agents: Vec<_> = (1..=2).map(|h| t.mesh_agent(h, &["blue"])).collect();
    let ns = t.lab.host(1).netns.clone();
    let first = wait_until(Duration::from_secs(15), || vni(&ns, "blue") == Some(100));
    assert!(first.is_some(), "blue is up with VNI 100");

    // The admin moves blue to VNI 200.
    t.admin(&["segment", "rm", "blue"]);
    t.add_segment("blue", 200);
    let moved = wait_until(Duration::from_secs(15), || vni(&ns, "blue") == Some(200));
    assert!(moved.is_some(), "blue moved to VNI 200");

    replay(&t, key, &saved, false);
    let end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < end {
        assert_eq!(vni(&ns, "blue"), Some(200), "blue was rolled back");
        std::thread::sleep(Duration::from_millis(50));
    }
}
