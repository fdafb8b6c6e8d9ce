//! Announcements that arrive: the periodic GARP refresh, and an owner that
//! gives its VIP up the moment its interface loses carrier. Agents, a
//! client, a real etcd, real ARP.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use linkmesh_tests::agent::{longest_gap, ping, start_probe, wait_until};
use linkmesh_tests::lab::{Lab, must_ip as ip};
use linkmesh_tests::testbed::Testbed;
use linkmesh_tests::{kernel, netns, require_root};

const CLIENT: u8 = 4;

/// The client's neighbour entry for `addr` (its MAC), if it has one.
fn client_entry(lab: &Lab, addr: IpAddr) -> Option<[u8; 6]> {
    kernel::neighbours(&lab.host(CLIENT).netns)
        .into_iter()
        .find(|n| n.ip == addr)
        .and_then(|n| n.mac)
}

#[test]
fn a_garp_refresh_teaches_a_client_that_lost_its_entry() {
    require_root!();
    let v = Testbed::builder(3).vip(&[]).build();
    // One announcement at binding, then a refresh every 300 ms.
    let extra = ["--arp-gratuitous-count", "1", "--garp-refresh", "0.3"];
    let _agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &extra)).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    let client = v.lab.host(CLIENT).netns.clone();
    let (tx, rx) = ping(&client, &v.vip.to_string(), 2, "0.1");
    assert_eq!((tx, rx), (2, 2));
    // Like a switch or a host that learns from gratuitous ARP (Linux
    // does not create an entry from one by default).
    netns::run_in(&client, || {
        std::fs::write("/proc/sys/net/ipv4/conf/eth0/arp_accept", "1")
    })
    .expect("arp_accept in the client's namespace");

    // The client forgets the owner and sends nothing to the VIP: only an
    // announcement can teach it again.
    for round in 0..3 {
        ip(&["-n", &client, "neigh", "flush", "to", &v.vip.to_string()]);
        let flushed = Instant::now();
        let learned = wait_until(Duration::from_secs(3), || {
            client_entry(&v.lab, v.vip) == Some(v.lab.host(owner).mac)
        });
        eprintln!(
            "vip_announce figure: refresh round {round}: the client learned the owner {:?} after the flush",
            learned.map(|_| flushed.elapsed())
        );
        assert!(
            learned.is_some(),
            "round {round}: the client never learned the owner again: {:?}",
            client_entry(&v.lab, v.vip)
        );
    }
}

/// A second network for the VIPs, apart from the underlay (where etcd
/// is): bridge `svc` in the underlay's namespace, and in each of `hosts`
/// a port `svc0` with 198.19.S.(10 + host)/24. Removed with the lab's
/// namespaces.
fn service_network(lab: &Lab, hosts: &[u8]) {
    let ul = lab.underlay_namespace().to_owned();
    let s = lab.slot();
    ip(&["-n", &ul, "link", "add", "svc", "type", "bridge"]);
    ip(&["-n", &ul, "link", "set", "svc", "up"]);
    for &h in hosts {
        let ns = lab.host(h).netns.clone();
        let port = format!("svc{h}");
        ip(&[
            "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "svc0", "netns", &ns,
        ]);
        ip(&["-n", &ul, "link", "set", &port, "master", "svc", "up"]);
        ip(&["-n", &ns, "link", "set", "svc0", "up"]);
        let addr = format!("198.19.{s}.{}/24", 10 + h);
        ip(&["-n", &ns, "addr", "add", &addr, "dev", "svc0"]);
    }
}

#[test]
fn an_owner_that_loses_carrier_hands_the_vip_over_at_once() {
    require_root!();
    let v = Testbed::builder(3).client().build();
    service_network(&v.lab, &[1, 2, 3, CLIENT]);
    let vip: IpAddr = format!("198.19.{}.100", v.lab.slot()).parse().expect("ip");
    v.admin(&["ip", "add", &format!("{vip}/24"), "--interface", "svc0"]);
    // A 10 s ownership lease and no data-plane failover: only the owner's
    // own release can move the VIP before the lease runs out.
    let extra = ["--keepalive-interval", "10", "--fast-failover", "off"];
    let agents: Vec<_> = (1..=3u8)
        .map(|h| v.bare_agent(h).label("agent").args(&extra).start())
        .collect();
    let holders = || v.lab.holders(vip, 1..=3);
    let single = |not: Option<u8>| {
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            let h = holders();
            let one = h.len() == 1 && Some(h[0]) != not;
            if one {
                found = Some(h[0]);
            }
            one
        })
        .and(found)
    };
    let owner = single(None).unwrap_or_else(|| panic!("one holder: {:?}", holders()));
    let owner_ns = v.lab.host(owner).netns.clone();

    let probe = start_probe(&v.lab, CLIENT, "probe", &vip.to_string(), 6);
    std::thread::sleep(Duration::from_secs(1));
    let cut = Instant::now();
    ip(&["-n", &owner_ns, "link", "set", "svc0", "down"]);
    let new_owner = single(Some(owner));
    let moved_after = cut.elapsed();
    assert!(
        new_owner.is_some(),
        "the VIP stayed with h{owner}: holders {:?}\n{}",
        holders(),
        agents[usize::from(owner - 1)].log()
    );
    assert!(
        moved_after < Duration::from_secs(5),
        "moved after {moved_after:?}: that is the lease running out, not a release"
    );
    let _ = probe.wait_timeout(Duration::from_secs(10));
    let gap = longest_gap(&probe.log());
    eprintln!(
        "vip_announce figure: carrier lost on the owner: another host held the VIP after {moved_after:?}; \
         the client's longest gap {gap:?}"
    );
    assert!(
        gap.is_some(),
        "the client reached the VIP:\n{}",
        probe.log()
    );
    assert!(
        agents[usize::from(owner - 1)]
            .log()
            .contains("lost carrier: releasing it")
    );

    // The carrier comes back: the old owner stands by, and takes nothing.
    ip(&["-n", &owner_ns, "link", "set", "svc0", "up"]);
    let back = wait_until(Duration::from_secs(5), || {
        agents[usize::from(owner - 1)]
            .log()
            .contains("has carrier again")
    });
    assert!(back.is_some(), "the old owner saw its carrier back");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(holders(), vec![new_owner.expect("checked")]);
}

/// The owner's only link (the one etcd is reached by too) goes down: the
/// release cannot reach etcd, but the owner unbinds at once, and the
/// standbys' data-plane failover moves the VIP; when the link is back the
/// old owner stands by.
#[test]
fn an_owner_whose_only_link_goes_down_unbinds_and_fast_failover_moves_the_vip() {
    require_root!();
    let v = Testbed::builder(3).vip(&[]).build();
    let agents: Vec<_> = (1..=3).map(|h| v.agent(h, "agent", &[])).collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    // Fast failover needs the standbys' watchers and a heard peer.
    std::thread::sleep(Duration::from_secs(2));
    let owner_ns = v.lab.host(owner).netns.clone();
    let probe = start_probe(&v.lab, CLIENT, "probe", &v.vip.to_string(), 6);
    std::thread::sleep(Duration::from_secs(1));
    let cut = Instant::now();
    ip(&["-n", &owner_ns, "link", "set", "eth0", "down"]);
    let unbound = wait_until(Duration::from_secs(1), || {
        !v.lab.holders(v.vip, owner..=owner).contains(&owner)
    });
    let moved = v.wait_single_holder(Duration::from_secs(10), Some(owner));
    let moved_after = cut.elapsed();
    assert!(
        unbound.is_some(),
        "the owner kept the address on a dead link:\n{}",
        agents[usize::from(owner - 1)].log()
    );
    assert!(moved.is_some(), "holders {:?}", v.holders());
    let _ = probe.wait_timeout(Duration::from_secs(10));
    let gap = longest_gap(&probe.log());
    eprintln!(
        "vip_announce figure: the owner's only link down: unbound after {unbound:?}, \
         another host held the VIP after {moved_after:?}; the client's longest gap {gap:?}"
    );
    ip(&["-n", &owner_ns, "link", "set", "eth0", "up"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        v.holders(),
        vec![moved.expect("checked")],
        "no second holder"
    );
}
