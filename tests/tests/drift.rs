//! Drift: what an operator (or another tool) removes by hand is put back.
//! The VIP's address on its owner comes back at once (address
//! notifications), and announced, so the client keeps reaching it; a
//! detached `vip_watch` or `peer_watch` is attached again within one resync
//! interval. (The segment device and FDB entries: `mesh.rs`,
//! `hand_removed_device_and_fdb_entry_are_restored`.)

use std::time::{Duration, Instant};

use linkmesh_tests::agent::{self, wait_until};
use linkmesh_tests::process::Process;
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

/// The agents' `--resync-interval`, seconds.
const RESYNC: u64 = 3;

fn agents(v: &Testbed) -> Vec<Process> {
    let resync = RESYNC.to_string();
    (1..=v.agents)
        .map(|h| v.agent(h, "agent", &["--resync-interval", &resync]))
        .collect()
}

#[test]
fn a_vip_address_removed_by_hand_is_restored_and_announced_at_once() {
    require_root!();
    let v = Testbed::builder(3).vip(&[]).build();
    let agents = agents(&v);
    let owner = v
        .wait_single_holder(Duration::from_secs(15), None)
        .expect("an owner");
    let client = v.lab.host(v.client());
    let reached = wait_until(Duration::from_secs(5), || {
        agent::ping(&client.netns, &v.vip.to_string(), 1, "0.2").1 == 1
    });
    assert!(reached.is_some(), "the client reaches the VIP");

    let ns = v.lab.host(owner).netns.clone();
    let cidr = format!("{}/24", v.vip);
    let removed_at = Instant::now();
    let out = std::process::Command::new("ip")
        .args(["-n", &ns, "addr", "del", &cidr, "dev", "eth0"])
        .output()
        .expect("ip addr del");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = wait_until(Duration::from_secs(RESYNC + 2), || {
        v.holders() == vec![owner]
    });
    let logs: String = agents.iter().map(Process::log).collect();
    eprintln!(
        "drift figure: vip_address_restore_ms={:.1}",
        restored.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    );
    assert!(restored.is_some(), "restored on the owner:\n{logs}");
    assert!(
        removed_at.elapsed() < Duration::from_secs(RESYNC),
        "restored within one resync interval"
    );
    let owner_log = agents[usize::from(owner - 1)].log();
    assert!(
        owner_log.contains("the VIP's address is gone from the kernel")
            && owner_log.contains("restores=1"),
        "{owner_log}"
    );
    // Same owner: nobody else took it, and the client still reaches it.
    assert_eq!(
        v.owner_key().as_deref(),
        Some(v.lab.host(owner).name.as_str())
    );
    let after = agent::ping(&client.netns, &v.vip.to_string(), 5, "0.1");
    assert_eq!(after.1, 5, "the client reaches the restored VIP: {after:?}");
    let (_, metrics) = agent::http(&ns, "GET", "/metrics", None, None);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("linkmesh_vip_restores_total") && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[test]
fn detached_ebpf_programs_are_attached_again_within_one_resync() {
    require_root!();
    let v = Testbed::builder(2).vip(&[]).build();
    let agents = agents(&v);
    let owner = v
        .wait_single_holder(Duration::from_secs(15), None)
        .expect("an owner");
    let ns = v.lab.host(owner).netns.clone();
    let programs = || {
        let mut names = linkmesh_tests::kernel::tcx_programs(&ns, "eth0");
        names.sort();
        names
    };
    let both = vec!["peer_watch".to_owned(), "vip_watch".to_owned()];
    let attached = wait_until(Duration::from_secs(10), || programs() == both);
    assert!(attached.is_some(), "{:?}", programs());

    for program in ["vip_watch", "peer_watch"] {
        let detached = linkmesh_tests::kernel::detach_tcx(&ns, "eth0", program);
        assert_eq!(detached, 1, "{program} was attached once");
        assert!(
            !programs().contains(&program.to_owned()),
            "{program} is gone"
        );
        let restored = wait_until(Duration::from_secs(RESYNC + 2), || programs() == both);
        let log = agents[usize::from(owner - 1)].log();
        eprintln!(
            "drift figure: {program}_reattach_ms={:.0} (resync interval {RESYNC} s)",
            restored.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        );
        assert!(restored.is_some(), "{program} attached again:\n{log}");
        assert!(
            restored.is_some_and(|d| d <= Duration::from_secs(RESYNC) + Duration::from_millis(500)),
            "within one resync interval: {restored:?}"
        );
        // The line follows the attachment the query just saw.
        let logged = wait_until(Duration::from_secs(2), || {
            let log = agents[usize::from(owner - 1)].log();
            log.contains(&format!("program=\"{program}\""))
                || log.contains(&format!("program={program}"))
        });
        assert!(logged.is_some(), "the agent logged it:\n{log}");
    }
    // Still counting: peer heartbeats are seen after the re-attachment.
    let heard = wait_until(Duration::from_secs(3), || {
        agent::in_host(&v.lab, owner, &["peers", "--json"])
            .is_ok_and(|t| t.contains("\"alive\": true") || t.contains("\"alive\":true"))
    });
    assert!(heard.is_some(), "peer_watch counts heartbeats again");
}
