//! The registry sync's cost to etcd: while the watch is healthy an agent
//! never re-reads the prefix (it asks the watch for its progress instead);
//! a stale watch (etcd frozen) is watched again from where it was, and only
//! a compacted one is read again.

use std::time::Duration;

use linkmesh_tests::agent::{self, http, wait_until};
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

/// A counter from host `host`'s `/metrics` (`None` until the API answers).
fn metric(v: &Testbed, host: u8, name: &str) -> Option<u64> {
    agent::metric(&v.lab.host(host).netns, name)
}

/// Segments the agent on `host` knows, from `GET /segments`.
fn segments(v: &Testbed, host: u8) -> String {
    http(&v.lab.host(host).netns, "GET", "/segments", None, None).1
}

#[test]
fn a_healthy_watch_is_never_read_again_and_a_stale_one_is() {
    require_root!();
    let v = Testbed::builder(2).build();
    let agents: Vec<_> = (1..=2)
        .map(|h| v.agent(h, "agent", &["--resync-interval", "1"]))
        .collect();
    let up = wait_until(Duration::from_secs(15), || {
        (1..=2).all(|h| metric(&v, h, "linkmesh_etcd_registry_snapshots_total") == Some(1))
    });
    assert!(
        up.is_some(),
        "both agents read the prefix once\n{}",
        agents[0].log()
    );

    // Six check intervals with changes flowing through the watch: etcd
    // serves no read to the agents (the admin's own writes are txns).
    let ranges = v.etcd.range_requests();
    for (i, name) in ["blue", "red", "green"].iter().enumerate() {
        v.add_segment(name, 100 + u32::try_from(i).expect("small"));
        std::thread::sleep(Duration::from_secs(2));
    }
    let reads = v.etcd.range_requests() - ranges;
    eprintln!(
        "registry_sync figure: etcd served {reads} reads in 6 s to 2 agents (--resync-interval 1)"
    );
    let seen = wait_until(Duration::from_secs(5), || segments(&v, 2).contains("green"));
    assert!(
        seen.is_some(),
        "the watch delivered the changes: {}",
        segments(&v, 2)
    );
    for h in 1..=2 {
        assert_eq!(
            metric(&v, h, "linkmesh_etcd_registry_snapshots_total"),
            Some(1),
            "h{h} read the prefix again"
        );
    }
    // The admin command reads each segment before its txn (3), the agents
    // nothing: before, each agent re-read the prefix every second (about
    // 12 more in 6 s).
    assert!(
        reads <= 3,
        "etcd served {reads} reads in 6 s of a healthy watch"
    );

    // etcd frozen for 3 s: the progress request goes unanswered, so the
    // watch counts as stale; once etcd is back it is watched again from the
    // revision it had reached, with no re-read.
    v.etcd.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    v.etcd.signal(libc::SIGCONT);
    let resumed = wait_until(Duration::from_secs(15), || {
        agents[0]
            .log()
            .contains("watching the registry again from the revision reached")
    });
    assert!(
        resumed.is_some(),
        "a stale watch is resumed\n{}",
        agents[0].log()
    );
    assert!(
        agents[0]
            .log()
            .contains("did not answer a progress request")
            || agents[0].log().contains("registry sync failed"),
        "{}",
        agents[0].log()
    );
    v.add_segment("after", 200);
    let seen = wait_until(Duration::from_secs(5), || segments(&v, 1).contains("after"));
    assert!(
        seen.is_some(),
        "changes after the resume: {}",
        segments(&v, 1)
    );
    for h in 1..=2 {
        assert_eq!(
            metric(&v, h, "linkmesh_etcd_registry_snapshots_total"),
            Some(1),
            "h{h} re-read the prefix after an outage it could resume from"
        );
    }

    a_compacted_watch_is_read_again(&v, &agents[0]);
}

/// h1 cut off while segments change and etcd compacts its history: the
/// revision h1 reached is gone, so it reads the prefix again (after a
/// random share of a spread that is a few microseconds for two hosts).
fn a_compacted_watch_is_read_again(v: &Testbed, h1: &linkmesh_tests::process::Process) {
    v.lab.host(1).cut();
    std::thread::sleep(Duration::from_secs(3));
    // Two writes: a compaction keeps its own revision, so with one the
    // watch could still resume from it.
    v.add_segment("while-cut", 201);
    v.add_segment("while-cut-2", 202);
    v.etcd.compact();
    v.lab.host(1).reconnect();
    let reread = wait_until(Duration::from_secs(20), || {
        metric(v, 1, "linkmesh_etcd_registry_snapshots_total").is_some_and(|n| n >= 2)
    });
    assert!(
        reread.is_some(),
        "a compacted watch is read again\n{}",
        h1.log()
    );
    assert!(h1.log().contains("re-reading the registry"), "{}", h1.log());
    let seen = wait_until(Duration::from_secs(5), || {
        segments(v, 1).contains("while-cut-2")
    });
    assert!(
        seen.is_some(),
        "what changed while cut off: {}",
        segments(v, 1)
    );
    assert_eq!(
        metric(v, 2, "linkmesh_etcd_registry_snapshots_total"),
        Some(1),
        "h2's watch was never compacted"
    );
}
