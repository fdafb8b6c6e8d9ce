//! A join or leave touches only that peer's entry: the mesh diffs a
//! registry change against what its last pass left in the kernel, so no
//! FDB dump happens per change (a dump is one message per entry, O(N)).
//! A change by someone else (an entry removed by hand) still gets a dump
//! and a repair. A real agent, a real etcd, the kernel's FDB.

use std::net::IpAddr;
use std::time::Duration;

use linkmesh_tests::SECRET;
use linkmesh_tests::agent::{self, wait_until};
use linkmesh_tests::kernel;
use linkmesh_tests::require_root;
use linkmesh_tests::synthetic::SyntheticPeers;
use linkmesh_tests::testbed::Testbed;

const PEERS: usize = 20;

fn counter(v: &Testbed, name: &str) -> u64 {
    agent::metric(&v.lab.host(1).netns, name).unwrap_or_else(|| panic!("{name} in the metrics"))
}

#[test]
fn joins_and_leaves_write_one_entry_each_and_dump_nothing() {
    require_root!();
    let v = Testbed::builder(1).segment("blue", 100).build();
    let agent = v.agent_with(1, "agent", &["blue"], &["--resync-interval", "600"]);
    let ns = v.lab.host(1).netns.clone();
    let fdb = || agent::peers(&ns, "blue").unwrap_or_default();
    let up = wait_until(Duration::from_secs(15), || {
        agent::api_up(&ns) && agent::peers(&ns, "blue").is_some()
    });
    assert!(up.is_some(), "the agent made its device\n{}", agent.log());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (endpoint, slot) = (v.etcd.endpoint(), v.lab.slot());
    let mut peers = rt.block_on(SyntheticPeers::connect(&endpoint, slot, SECRET, 40));
    let mut step = |i: usize, join: bool| {
        rt.block_on(async {
            if join {
                peers.join(i).await;
            } else {
                peers.leave(i).await;
            }
        });
        let addr: IpAddr = peers.address(i);
        let done = wait_until(Duration::from_secs(5), || fdb().contains(&addr) == join);
        assert!(
            done.is_some(),
            "peer {i} joined={join}: {:?}\n{}",
            fdb(),
            agent.log()
        );
    };
    // The first pass after the device was made reads it back once.
    step(0, true);
    std::thread::sleep(Duration::from_millis(300));
    let (dumps, writes) = (
        counter(&v, "linkmesh_netlink_fdb_dumps_total"),
        counter(&v, "linkmesh_netlink_writes_total"),
    );

    for i in 1..PEERS {
        step(i, true);
    }
    for i in 0..PEERS / 2 {
        step(i, false);
    }
    let changes = u64::try_from(PEERS - 1 + PEERS / 2).expect("small");
    let (dumps_after, writes_after) = (
        counter(&v, "linkmesh_netlink_fdb_dumps_total"),
        counter(&v, "linkmesh_netlink_writes_total"),
    );
    eprintln!(
        "mesh_changes figure: {changes} changes: {} FDB dumps, {} netlink writes",
        dumps_after - dumps,
        writes_after - writes
    );
    assert_eq!(dumps_after, dumps, "no FDB dump for a registry change");
    assert_eq!(writes_after - writes, changes, "one write per change");

    // An entry removed by someone else: noticed, dumped, restored.
    let gone = peers.address(PEERS - 1).to_string();
    kernel::delete_peer_entry(&ns, "blue", &gone);
    let back = wait_until(Duration::from_secs(5), || {
        fdb().iter().any(|a| a.to_string() == gone)
    });
    assert!(back.is_some(), "the entry is restored: {:?}", fdb());
    assert!(
        counter(&v, "linkmesh_netlink_fdb_dumps_total") > dumps,
        "a change by someone else is read back from the kernel"
    );
}
