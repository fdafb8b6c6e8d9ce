//! The lab itself: namespaces, addressing, processes, netlink read-back,
//! the etcd harness, and cleanup even when a test panics.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use linkmesh_tests::etcd::{Etcd, EtcdCluster};
use linkmesh_tests::lab::Lab;
use linkmesh_tests::{kernel, require_root};

fn ns_inode(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

#[test]
fn hosts_have_their_addresses_and_reach_each_other() {
    require_root!();
    let lab = Lab::new(3);
    let h1 = lab.host(1);
    let h2 = lab.host(2);

    let eth0 = kernel::link(&h1.netns, "eth0").expect("h1 has eth0");
    assert!(eth0.up, "eth0 is up");
    assert_eq!(eth0.kind.as_deref(), Some("veth"));
    assert_eq!(eth0.mac, Some(h1.mac));
    let addrs = kernel::addresses(&h1.netns);
    assert!(
        addrs.iter().any(|a| a.ifindex == eth0.index
            && a.addr == IpAddr::V4(h1.addr)
            && a.prefix_len == 24),
        "h1 has {}/24 on eth0: {addrs:?}",
        h1.addr
    );
    assert!(
        h1.addr.octets()[..2] == [198, 18],
        "lab addresses are in 198.18.0.0/15"
    );

    // A UDP datagram from h1 to h2 makes h1 resolve h2 over the bridge.
    let target = h2.addr;
    let received = {
        let listener = h2.run(move || UdpSocket::bind((target, 9999)).expect("binding on h2"));
        h1.run(move || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("binding on h1");
            s.send_to(b"hello", (target, 9999)).expect("sending to h2");
        });
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("setting a timeout");
        let mut buf = [0u8; 16];
        let (n, from) = listener
            .recv_from(&mut buf)
            .expect("h2 receives the datagram");
        assert_eq!(from.ip(), IpAddr::V4(h1.addr));
        buf[..n].to_vec()
    };
    assert_eq!(received, b"hello");

    let neighbours = kernel::neighbours(&h1.netns);
    assert!(
        neighbours
            .iter()
            .any(|n| n.ip == IpAddr::V4(h2.addr) && n.mac == Some(h2.mac)),
        "h1 resolved h2's MAC: {neighbours:?}"
    );
    // The underlay bridge learned both hosts' MACs.
    let fdb = kernel::fdb(lab.underlay_namespace());
    for h in [h1, h2] {
        assert!(
            fdb.iter().any(|e| e.mac == h.mac),
            "the underlay bridge learned {}: {fdb:?}",
            h.name
        );
    }
}

#[test]
fn processes_run_inside_the_host_namespace_and_die_by_pid() {
    require_root!();
    let lab = Lab::new(1);
    let h1 = lab.host(1);
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    let process = lab.spawn(1, "sleep", cmd);
    assert!(process.is_running());
    let proc_ns = ns_inode(Path::new(&format!("/proc/{}/ns/net", process.pid())));
    assert_eq!(
        proc_ns,
        ns_inode(&linkmesh_tests::netns::path(&h1.netns)),
        "the process runs in h1's namespace"
    );
    process.signal(libc::SIGTERM).expect("sending SIGTERM");
    let status = process
        .wait_timeout(Duration::from_secs(5))
        .expect("sleep exits on SIGTERM");
    assert!(!status.success());
    assert!(!process.is_running());
}

#[test]
fn lab_and_etcd_are_removed_even_when_a_test_panics() {
    require_root!();
    let recorded = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::new(2);
        let etcd = Etcd::start_on(IpAddr::V4(lab.gateway()));
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let sleeper = lab.spawn(2, "sleep", cmd);
        *recorded.lock().expect("lock") = Some((
            lab.namespaces(),
            lab.root_interface().to_owned(),
            lab.dir().to_path_buf(),
            etcd.pid().expect("etcd runs"),
            etcd.dir().to_path_buf(),
            sleeper.pid(),
        ));
        panic!("panicking on purpose with a lab, an etcd and a process alive");
    });
    assert!(result.is_err(), "the closure panicked");
    let (namespaces, root_if, lab_dir, etcd_pid, etcd_dir, sleeper_pid) = recorded
        .into_inner()
        .expect("lock")
        .expect("the closure recorded its resources");
    for ns in &namespaces {
        assert!(
            !linkmesh_tests::netns::path(ns).exists(),
            "namespace {ns} was removed"
        );
    }
    assert!(
        !Path::new("/sys/class/net").join(&root_if).exists(),
        "link {root_if} was removed"
    );
    assert!(!lab_dir.exists(), "lab dir was removed");
    assert!(!etcd_dir.exists(), "etcd dir was removed");
    for pid in [etcd_pid, sleeper_pid] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} is gone"
        );
    }
}

#[tokio::test]
async fn etcd_answers_put_and_get() {
    require_root!();
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    client
        .put("/linkmesh-test/key", "value", None)
        .await
        .expect("put");
    let resp = client.get("/linkmesh-test/key", None).await.expect("get");
    let kv = resp.kvs().first().expect("the key exists");
    assert_eq!(kv.value(), b"value");
}

#[test]
fn etcd_on_the_lab_gateway_is_reachable_from_a_host() {
    require_root!();
    let lab = Lab::new(1);
    let etcd = Etcd::start_on(IpAddr::V4(lab.gateway()));
    let endpoint = etcd.endpoint();
    let value = lab.host(1).block_on(move || async move {
        let mut client = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("connecting from h1");
        client
            .put("/from-h1", "hi", None)
            .await
            .expect("put from h1");
        let resp = client.get("/from-h1", None).await.expect("get from h1");
        resp.kvs().first().map(|kv| kv.value().to_vec())
    });
    assert_eq!(value.as_deref(), Some(&b"hi"[..]));
}

#[tokio::test]
async fn etcd_cluster_replicates_and_survives_its_leader() {
    require_root!();
    let mut cluster = EtcdCluster::start(3);
    let mut first = cluster.member(0).client().await;
    first
        .put("/cluster/k", "v1", None)
        .await
        .expect("put via member 0");
    let mut third = cluster.member(2).client().await;
    let resp = third
        .get("/cluster/k", None)
        .await
        .expect("get via member 2");
    assert_eq!(
        resp.kvs().first().map(etcd_client::KeyValue::value),
        Some(&b"v1"[..])
    );

    let leader = cluster.leader().await.expect("the cluster has a leader");
    cluster.kill(leader);
    let survivor = (0..3).find(|i| *i != leader).expect("a survivor");
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .expect("connecting to the cluster");
    let mut ok = false;
    for _ in 0..100 {
        if client.put("/cluster/k", "v2", None).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the cluster accepts writes after its leader was killed");
    let mut c = cluster.member(survivor).client().await;
    let resp = c.get("/cluster/k", None).await.expect("get via a survivor");
    assert_eq!(
        resp.kvs().first().map(etcd_client::KeyValue::value),
        Some(&b"v2"[..])
    );
    cluster.restart(leader);
    assert!(cluster.member(leader).is_healthy());
}
