//! Trust and the per-VIP coordination keys: an etcd writer without the
//! secret cannot name an owner (a forged owner key is removed and the VIP
//! contended again), cannot suspect a live owner away, cannot fake
//! eligible standbys, and cannot make the VIP flap with failover requests.

use std::time::{Duration, Instant};

use etcd_client::PutOptions;
use linkmesh_tests::agent::wait_until;
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

/// Writes `key` = `value` as an attacker with etcd access but no secret,
/// on a lease of its own (`ttl` seconds) or on none.
fn forge(t: &Testbed, key: &str, value: &str, ttl: Option<i64>) {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let mut c = t.etcd.client().await;
        let options = match ttl {
            Some(ttl) => {
                let lease = c.lease_grant(ttl, None).await.expect("a lease").id();
                Some(PutOptions::new().with_lease(lease))
            }
            None => None,
        };
        c.put(key, value, options).await.expect("forging a key");
    });
}

/// The lease the owner key is on.
fn owner_lease(t: &Testbed) -> i64 {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let mut c = t.etcd.client().await;
        let r = c
            .get(format!("/linkmesh/vips/{}/owner", t.id), None)
            .await
            .expect("reading the owner key");
        r.kvs().first().map_or(0, etcd_client::KeyValue::lease)
    })
}

/// Checks every 20 ms for `d` that exactly `owner` holds the VIP.
fn holds_throughout(t: &Testbed, owner: u8, d: Duration, what: &str) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        assert_eq!(t.holders(), vec![owner], "{what}: the VIP moved");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_forged_owner_key_is_removed_and_the_vip_contended_again() {
    require_root!();
    let t = Testbed::builder(2).vip(&[]).build();
    // Before any agent runs: "ghost" owns it, on no lease, forever.
    forge(&t, &format!("/linkmesh/vips/{}/owner", t.id), "ghost", None);
    let _agents: Vec<_> = (1..=2).map(|h| t.agent(h, "agent", &[])).collect();
    let holder = t.wait_single_holder(Duration::from_secs(15), None);
    assert!(holder.is_some(), "the forged owner key is no owner");
    let named = t.owner_key();
    assert!(
        named.as_deref() == Some(t.lab.host(holder.unwrap_or(0)).name.as_str()),
        "a signed owner key names the holder: {named:?}"
    );
}

#[test]
fn forged_suspects_and_standbys_do_not_revoke_a_live_owner() {
    require_root!();
    let t = Testbed::builder(3).vip(&[]).build();
    let _agents: Vec<_> = (1..=3)
        .map(|h| t.agent(h, "agent", &["--keepalive-interval", "30"]))
        .collect();
    let owner = t
        .wait_single_holder(Duration::from_secs(15), None)
        .expect("an owner");
    let settled = wait_until(Duration::from_secs(10), || t.states().len() == 3);
    assert!(settled.is_some(), "every host wrote its state");
    let lease = owner_lease(&t).to_string();
    // Every standby "suspects" the owner's lease, and two hosts that do not
    // exist claim to be eligible standbys that suspect it too.
    for h in (1..=3u8).filter(|h| *h != owner) {
        let host = &t.lab.host(h).name;
        forge(
            &t,
            &format!("/linkmesh/vips/{}/suspect/{host}", t.id),
            &lease,
            Some(30),
        );
    }
    for ghost in ["h8", "h9"] {
        let prefix = format!("/linkmesh/vips/{}", t.id);
        forge(&t, &format!("{prefix}/state/{ghost}"), "STANDBY", Some(30));
        forge(&t, &format!("{prefix}/suspect/{ghost}"), &lease, Some(30));
    }
    holds_throughout(&t, owner, Duration::from_secs(5), "forged suspicions");
}

#[test]
fn repeated_unsigned_failover_requests_do_not_move_the_vip() {
    require_root!();
    let t = Testbed::builder(2).vip(&[]).build();
    let _agents: Vec<_> = (1..=2).map(|h| t.agent(h, "agent", &[])).collect();
    let owner = t
        .wait_single_holder(Duration::from_secs(15), None)
        .expect("an owner");
    let name = t.lab.host(owner).name.clone();
    let key = format!("/linkmesh/vips/{}/failover", t.id);
    for _ in 0..5 {
        forge(&t, &key, &name, Some(30));
        holds_throughout(&t, owner, Duration::from_millis(800), "a failover request");
    }
}
