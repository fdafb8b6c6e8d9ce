//! VIP groups: two VIPs in one group (a control-plane VIP and a service
//! VIP) are always held by one host. They move together on a graceful
//! stop, on a failover asked for the follower, and on a hard failure, and
//! a watcher sampling both every few milliseconds never sees them on two
//! hosts. Real agents, a real etcd, real addresses.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use linkmesh_tests::agent::{wait_until, wait_watchers};
use linkmesh_tests::lab::Lab;
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

/// The one host (not `not`, nor the cut-off `dead`) holding both VIPs,
/// once they settle on one.
fn together(lab: &Lab, vips: [IpAddr; 2], not: Option<u8>, dead: u8) -> Option<u8> {
    let mut host = None;
    wait_until(Duration::from_secs(10), || {
        let live = |v| -> Vec<u8> {
            lab.holders(v, 1..=3)
                .into_iter()
                .filter(|h| *h != dead)
                .collect()
        };
        let (a, b) = (live(vips[0]), live(vips[1]));
        host = (a.len() == 1 && a == b && Some(a[0]) != not).then(|| a[0]);
        host.is_some()
    })?;
    host
}

#[test]
fn a_group_moves_whole_and_never_splits() {
    require_root!();
    let t = Testbed::builder(3).build();
    let s = t.lab.slot();
    let vips: [IpAddr; 2] = [
        format!("198.18.{s}.100").parse().expect("ip"),
        format!("198.18.{s}.101").parse().expect("ip"),
    ];
    for v in vips {
        t.admin(&["ip", "add", &format!("{v}/24"), "--group", "pair"]);
    }
    let got = t.admin(&["ip", "get", &format!("{}_24", vips[1])]);
    assert!(got.contains("group") && got.contains("pair"), "{got}");
    let mut agents: Vec<_> = (1..=3).map(|h| t.agent(h, "agent", &[])).collect();
    let owner = together(&t.lab, vips, None, 0).expect("one host holds both");

    // Sample both VIPs' holders all along: never two hosts at once (a
    // host cut off from everyone keeps its addresses, and does not count).
    let stop = Arc::new(AtomicBool::new(false));
    let dead = Arc::new(AtomicU8::new(0));
    let sampler = {
        let (lab_hosts, stop, dead) = (
            (1..=3u8)
                .map(|h| t.lab.host(h).netns.clone())
                .collect::<Vec<_>>(),
            stop.clone(),
            dead.clone(),
        );
        std::thread::spawn(move || {
            let mut splits = Vec::new();
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let held = |v: IpAddr| -> Vec<usize> {
                    lab_hosts
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i + 1 != usize::from(dead.load(Ordering::Relaxed)))
                        .filter(|(_, ns)| {
                            linkmesh_tests::kernel::addresses(ns)
                                .iter()
                                .any(|a| a.addr == v)
                        })
                        .map(|(i, _)| i + 1)
                        .collect()
                };
                let (a, b) = (held(vips[0]), held(vips[1]));
                samples += 1;
                if a.iter().any(|h| !b.is_empty() && !b.contains(h))
                    || b.iter().any(|h| !a.is_empty() && !a.contains(h))
                {
                    splits.push((a, b));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (samples, splits)
        })
    };

    // 1. A graceful stop: both go to one host.
    agents[usize::from(owner - 1)]
        .signal(libc::SIGTERM)
        .expect("SIGTERM");
    let second = together(&t.lab, vips, Some(owner), 0).expect("both moved to one host");
    agents[usize::from(owner - 1)] = t.agent(owner, "agent", &[]);

    // 2. A failover asked for the follower moves the whole group.
    t.admin(&["ip", "failover", &format!("{}_24", vips[1])]);
    let third = together(&t.lab, vips, Some(second), 0).expect("the group moved");

    // 3. A hard failure: both come up together on a survivor.
    wait_watchers(&agents);
    dead.store(third, Ordering::Relaxed);
    t.lab.host(third).cut();
    agents[usize::from(third - 1)].kill();
    let last = together(&t.lab, vips, Some(third), third).expect("a survivor holds both");
    eprintln!("vip_group: h{owner} -> h{second} -> h{third} -> h{last}");

    stop.store(true, Ordering::Relaxed);
    let (count, splits) = sampler.join().expect("the sampler");
    assert!(count > 100, "sampled all along: {count}");
    assert!(
        splits.is_empty(),
        "the group was split in {} of {count} samples: {:?}",
        splits.len(),
        &splits[..splits.len().min(5)]
    );
    t.lab.host(third).reconnect();
}
