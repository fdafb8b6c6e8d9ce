//! Preemption: a VIP that names a preferred host and a `preempt_delay`
//! goes back to that host, gracefully, once it has stood by for the
//! delay. Agents, a client, a real etcd, real ARP.

use std::time::{Duration, Instant};

use linkmesh_tests::agent::{longest_gap, start_probe};
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

const CLIENT: u8 = 4;

#[test]
fn the_preferred_host_takes_the_vip_back_after_the_preempt_delay() {
    require_root!();
    let v = Testbed::builder(3)
        .vip(&["--priority", "h2", "--preempt-delay", "2"])
        .build();
    let got = v.admin(&["ip", "get", &v.id]);
    assert!(
        got.contains("preempt delay") && got.contains("2 s"),
        "{got}"
    );
    // Without the preferred host, someone else takes the VIP.
    let a1 = v.agent(1, "agent", &[]);
    let a3 = v.agent(3, "agent", &[]);
    let first = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    assert_ne!(first, 2);

    let probe = start_probe(&v.lab, CLIENT, "probe", &v.vip.to_string(), 8);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let a2 = v.agent(2, "agent", &[]);
    let moved = v.wait_single_holder(Duration::from_secs(10), Some(first));
    let after = started.elapsed();
    assert_eq!(
        moved,
        Some(2),
        "the preferred host took it back: holders {:?}\n{}",
        v.holders(),
        a2.log()
    );
    assert!(
        after >= Duration::from_secs(2),
        "not before the delay: {after:?}"
    );
    let _ = probe.wait_timeout(Duration::from_secs(15));
    let gap = longest_gap(&probe.log());
    eprintln!(
        "vip_preempt figure: h2 held the VIP {after:?} after its agent started (delay 2 s); \
         the client's longest gap in the handover {gap:?}"
    );
    assert!(
        gap.is_some(),
        "the client reached the VIP:\n{}",
        probe.log()
    );
    let owner_log = if first == 1 { a1.log() } else { a3.log() };
    assert!(
        owner_log.contains("handing the VIP over"),
        "the old owner says why it let go:\n{owner_log}"
    );
    // It stays with the preferred host.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(v.holders(), vec![2]);
}
