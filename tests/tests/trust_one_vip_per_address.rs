//! One floating IP per address: the admin commands refuse a second VIP on
//! an address (an index key per address, checked in the add transaction),
//! and agents that find two in etcd anyway keep the older in force and the
//! other waiting, so the two never fight over the address or the eBPF map.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use linkmesh::registry::{Keys, Secrets, VipRecord, seal};
use linkmesh_tests::agent::{self, http, wait_until};
use linkmesh_tests::testbed::Testbed;
use linkmesh_tests::{SECRET, kernel, require_root};

/// The prefix lengths `addr` is configured with, on every agent host.
fn bound(t: &Testbed, addr: IpAddr) -> Vec<(u8, u8)> {
    (1..=t.agents)
        .flat_map(|h| {
            kernel::addresses(&t.lab.host(h).netns)
                .into_iter()
                .filter(move |a| a.addr == addr)
                .map(move |a| (h, a.prefix_len))
        })
        .collect()
}

#[test]
fn a_second_vip_on_an_address_is_refused_and_never_bound() {
    require_root!();
    let t = Testbed::builder(3).vip(&[]).build();
    let _agents: Vec<_> = (1..=3).map(|h| t.agent(h, "agent", &[])).collect();
    assert!(
        t.wait_single_holder(Duration::from_secs(15), None)
            .is_some(),
        "one holder of the /24"
    );
    let narrow = format!("{}/32", t.vip);
    let (ok, _, err) = agent::outcome(
        Command::new(agent::binary())
            .args(["ip", "add", &narrow])
            .args(["--etcd-server", &t.endpoints(), "--secret-file"])
            .arg(&t.secret),
    );
    assert!(!ok, "the CLI refuses a second VIP on the address");
    assert!(err.contains("already floating IP"), "{err}");
    let ids = || {
        t.get("/linkmesh/vips/")
            .into_iter()
            .filter(|(k, _)| !k.contains("/state/") && !k.ends_with("/owner"))
            .count()
    };
    assert_eq!(ids(), 1, "nothing was written");

    // A second record in etcd anyway (written with the secret, bypassing
    // the index): it waits, the /24 stays the only one bound.
    let keys = Keys::new("/linkmesh");
    let key = keys.vip(&narrow.replace('/', "_"));
    let secrets = Secrets::from_text(SECRET).expect("the lab secret");
    let value = seal(
        &secrets,
        &key,
        0,
        linkmesh::clock::unix_now(),
        &VipRecord::new(narrow.as_str()),
    )
    .expect("sealing");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let mut c = t.etcd.client().await;
        c.put(key, value, None).await.expect("putting the record");
    });
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        let b = bound(&t, t.vip);
        assert!(
            b.len() <= 1 && b.iter().all(|(_, len)| *len == 24),
            "only the /24, on one host: {b:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, metrics) = http(&t.lab.host(1).netns, "GET", "/metrics", None, None);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("linkmesh_vip_records_rejected_total") && !l.ends_with(" 0")),
        "the duplicate is counted: {metrics}"
    );

    // The /24 goes: the /32 that waited takes its place.
    t.admin(&["ip", "rm", &t.id]);
    let took_over = wait_until(Duration::from_secs(15), || {
        let b = bound(&t, t.vip);
        b.len() == 1 && b[0].1 == 32
    });
    assert!(
        took_over.is_some(),
        "the /32 is bound: {:?}",
        bound(&t, t.vip)
    );
}
