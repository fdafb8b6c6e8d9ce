//! Chaos (issue #7), part 1: etcd fails under a running mesh and VIP.
//!
//! Every scenario runs the mesh (3 hosts on one segment) and a VIP (the
//! same 3 hosts and a client) with probes the whole time: overlay pings
//! every 10 ms from h1 to h2, client pings to the VIP every 10 ms, and the
//! VIP's holders read from every host's kernel at each sample. Each prints
//! its figures (`chaos figure: <scenario>.<name>=<value>`) and asserts its
//! invariants; durations are figures, not assertions, except where a bound
//! is the invariant itself (a fence before the lease can expire).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use linkmesh_tests::agent::wait_until;
use linkmesh_tests::chaos::{AGENTS, Report, Rig, figure, ms};
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::body_field;

/// The ownership lease TTL every scenario runs with (`--keepalive-interval`).
const TTL: Duration = Duration::from_secs(2);
/// Steady probing before anything breaks.
const STEADY: Duration = Duration::from_secs(3);

/// Whether no host but `owner` held the VIP at any sample within [`from`, `to`].
fn only(report: &Report, owner: u8, from: Duration, to: Duration) -> Result<(), String> {
    match report
        .between(from, to)
        .find(|s| s.holders.iter().any(|h| *h != owner))
    {
        Some(s) => Err(format!(
            "at {:.3}s the VIP was bound on {:?}",
            s.at.as_secs_f64(),
            s.holders
        )),
        None => Ok(()),
    }
}

/// When the holders settled on exactly one host for good, at or after
/// `from`: the sample after the last one at or after `from` that did not
/// have exactly one holder (`from` itself if there was none).
fn settled_single(report: &Report, from: Duration) -> Option<(Duration, u8)> {
    let after: Vec<_> = report.between(from, Duration::MAX).collect();
    let last = after.last()?;
    if last.holders.len() != 1 {
        return None;
    }
    let settled = after
        .iter()
        .rposition(|s| s.holders.len() != 1)
        .map_or(from, |i| after[i + 1].at);
    Some((settled, last.holders[0]))
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn killing_the_etcd_leader_moves_no_vip_and_loses_no_overlay_packet() {
    const SCENARIO: &str = "leader_kill";
    const RUN: u32 = 13;
    require_root!();
    // The agent's default lease (5 s): long enough to ride out an election
    // (see `fence_margin` in the VIP manager); the outage scenarios below use
    // 2 s to stay short.
    let mut rig = Rig::start(3, &["--keepalive-interval", "5"]);
    let owner = rig.owner;
    let run = rig.run(RUN);
    run.sleep_until(STEADY);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let leader = rt.block_on(rig.v.etcd.leader()).expect("a leader");
    let killed_at = run.now();
    let killed = Instant::now();
    rig.v.etcd.kill(leader);
    let survivors = rig.v.etcd.live_endpoints();

    // A second VIP, written through the surviving members as soon as they
    // take writes: an agent has to see it through its watch and win its
    // election (a txn) to bind it, and every agent writes its state key
    // for it.
    let vip2: IpAddr = format!("198.18.{}.101", rig.v.lab.slot())
        .parse()
        .expect("ip");
    let id2 = format!("{vip2}_24");
    if let Err(e) = rig.add_vip_until_ok(&survivors, &format!("{vip2}/24"), Duration::from_secs(20))
    {
        panic!("the surviving members took no write: {e}");
    }
    let etcd_write = killed.elapsed();
    let mut vip2_holder = Vec::new();
    let agent_write = wait_until(Duration::from_secs(20), || {
        vip2_holder = rig.v.lab.holders(vip2, 1..=AGENTS);
        !vip2_holder.is_empty()
    })
    .map(|_| killed.elapsed());
    let states2 = format!("/linkmesh/vips/{id2}/state/");
    let all_wrote = wait_until(Duration::from_secs(20), || {
        rig.v
            .try_get(&states2, Duration::from_secs(2))
            .is_ok_and(|s| s.len() == usize::from(AGENTS))
    })
    .map(|_| killed.elapsed());
    run.sleep_until(Duration::from_secs(RUN.into()));
    let report = run.finish();
    let end = report.samples.last().map(|s| s.at).unwrap_or_default();

    figure(SCENARIO, "killed_member", leader);
    figure(SCENARIO, "etcd_write_ms", ms(etcd_write));
    figure(
        SCENARIO,
        "write_recovery_ms",
        agent_write.map_or_else(|| "none".to_owned(), |d| ms(d).to_string()),
    );
    figure(
        SCENARIO,
        "all_agents_wrote_ms",
        all_wrote.map_or_else(|| "none".to_owned(), |d| ms(d).to_string()),
    );
    let outage = report.client.outage_within(killed_at, end);
    figure(SCENARIO, "vip_outage_ms", ms(outage));
    figure(
        SCENARIO,
        "vip_longest_gap_ms",
        report.client.longest_gap().map_or(0, ms),
    );
    figure(SCENARIO, "overlay_sent", report.overlay.sent);
    figure(SCENARIO, "overlay_lost", report.overlay.lost().len());
    figure(SCENARIO, "samples", report.samples.len());
    figure(SCENARIO, "sample_spacing_ms", ms(report.sample_spacing()));
    figure(
        SCENARIO,
        "owner_self_fences",
        rig.log_lines(owner, &["self-fencing"]).len(),
    );

    let timeline = report.timeline();
    eprintln!("chaos timeline: {SCENARIO}: leader killed at {killed_at:.3?}; holders: {timeline}");
    assert!(
        report.most_holders() <= 1,
        "two hosts held the VIP at one sample: {timeline}"
    );
    // The leader change extends every lease: the owner has no reason to
    // give the VIP up, even for a moment.
    let unbound = report.first(killed_at, <[u8]>::is_empty);
    assert!(
        unbound.is_none(),
        "the owner h{owner} unbound the VIP at {:.3}s after the leader kill at {:.3}s; \
         {timeline}\n{}",
        unbound.map_or(0.0, |s| s.at.as_secs_f64()),
        killed_at.as_secs_f64(),
        rig.events()
    );
    if let Err(e) = only(&report, owner, Duration::ZERO, end) {
        panic!(
            "the VIP moved off h{owner}: {e}\n{timeline}\n{}",
            rig.events()
        );
    }
    assert_eq!(
        report.samples.last().map(|s| s.holders.clone()),
        Some(vec![owner]),
        "the same holder after the kill: {timeline}"
    );
    assert!(
        report.overlay.sent > 0 && report.overlay.lost().is_empty(),
        "overlay probes lost: {:?} of {}",
        report.overlay.lost(),
        report.overlay.sent
    );
    assert!(
        agent_write.is_some() && vip2_holder.len() == 1,
        "an agent bound the VIP added after the kill: {vip2_holder:?}\n{}",
        rig.events()
    );
    assert!(
        all_wrote.is_some(),
        "every agent wrote its state for the new VIP: {:?}\n{}",
        rig.v.try_get(&states2, Duration::from_secs(2)),
        rig.events()
    );
    let vip2_now = rig.v.lab.holders(vip2, 1..=AGENTS);
    assert!(
        vip2_now.len() == 1,
        "the second VIP stays bound on one host: {vip2_now:?} (it was on {vip2_holder:?})\n{}",
        rig.events()
    );
}

/// How long etcd is down.
const OUTAGE: Duration = Duration::from_secs(30);
/// Probing after etcd is back (the restart itself takes a second or two).
const AFTER: Duration = Duration::from_secs(10);

/// etcd (one member) is SIGKILLed for 30 s and restarted on its data, with
/// the agents under the loss policy `policy`; checks what every policy
/// promises, and returns the rig (its `owner`), the report and the outage's
/// times for the policy's own checks. The registration TTL is short (3 s),
/// so a registration etcd dropped while restarting would show as overlay
/// loss.
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn etcd_outage(policy: &str) -> (Rig, Report, Outage) {
    let scenario = format!("etcd_outage_{policy}");
    let ttl = TTL.as_secs().to_string();
    let mut rig = Rig::start(
        1,
        &[
            "--etcd-loss-policy",
            policy,
            "--keepalive-interval",
            &ttl,
            "--ttl",
            "3",
        ],
    );
    // Each host's registration as signed before the outage: every agent
    // must write its own again once etcd is back.
    let registered_before = rig.v.get("/linkmesh/hosts/");
    let seconds = u32::try_from((STEADY + OUTAGE + AFTER).as_secs()).expect("fits");
    let run = rig.run(seconds);
    run.sleep_until(STEADY);
    let down = run.now();
    rig.v.etcd.kill(0);
    run.sleep_until(down + OUTAGE);
    let restarting = run.now();
    rig.v.etcd.restart(0);
    let up = run.now();

    let hosts: Vec<String> = (1..=AGENTS)
        .map(|h| format!("/linkmesh/hosts/{}", rig.v.lab.host(h).name))
        .collect();
    let registered = wait_until(AFTER, || {
        rig.v
            .try_get("/linkmesh/hosts/", Duration::from_secs(2))
            .is_ok_and(|now| {
                hosts.iter().all(|h| {
                    now.iter()
                        .any(|kv| kv.0 == *h && !registered_before.contains(kv))
                })
            })
    })
    .map(|_| run.now().saturating_sub(up));
    run.sleep_until(down + OUTAGE + AFTER);
    let report = run.finish();
    let end = report.samples.last().map(|s| s.at).unwrap_or_default();
    let owner_key = rig.v.try_get(
        &format!("/linkmesh/vips/{}/owner", rig.v.id),
        Duration::from_secs(5),
    );

    let f = |name: &str, value: &dyn std::fmt::Display| figure(&scenario, name, value);
    f("owner", &rig.owner);
    f("etcd_restart_ms", &ms(up.saturating_sub(restarting)));
    f(
        "vip_outage_during_ms",
        &ms(report.client.outage_within(down, up)),
    );
    f(
        "vip_outage_after_restore_ms",
        &ms(report.client.outage_within(up, end)),
    );
    f("overlay_sent", &report.overlay.sent);
    f("overlay_lost", &report.overlay.lost().len());
    f(
        "registrations_back_ms",
        &registered.map_or_else(|| "none".to_owned(), |d| ms(d).to_string()),
    );
    f("samples", &report.samples.len());
    f("sample_spacing_ms", &ms(report.sample_spacing()));
    // From the restart command: the agents may be back before the
    // harness's own health poll sees etcd answer.
    let settled = settled_single(&report, restarting);
    f(
        "single_owner_after_restart_ms",
        &settled.map_or_else(
            || "none".to_owned(),
            |(at, _)| ms(at.saturating_sub(restarting)).to_string(),
        ),
    );
    f(
        "owner_after_restore",
        &settled.map_or_else(|| "none".to_owned(), |(_, h)| format!("h{h}")),
    );

    let timeline = report.timeline();
    eprintln!(
        "chaos timeline: {scenario}: etcd down at {down:.3?}, back at {up:.3?}; holders: {timeline}"
    );
    // Every policy: the overlay forwards throughout (the kernel's FDB does
    // not depend on etcd), and once etcd is back exactly one host holds the
    // VIP within 2 x TTL, the one etcd names, and every host registered
    // again (a record signed after the outage).
    assert!(
        report.overlay.sent > 0 && report.overlay.lost().is_empty(),
        "overlay probes lost: {:?} of {}",
        report.overlay.lost(),
        report.overlay.sent
    );
    let (settled_at, holder) = settled.unwrap_or_else(|| {
        panic!(
            "no single holder after the restore: {timeline}\n{}",
            rig.events()
        )
    });
    assert!(
        settled_at.saturating_sub(up) <= 2 * TTL,
        "one holder {:?} after etcd was back (limit 2 x TTL = {:?}): {timeline}\n{}",
        settled_at.saturating_sub(up),
        2 * TTL,
        rig.events()
    );
    let named = owner_key
        .as_ref()
        .ok()
        .and_then(|kvs| kvs.first().map(|(_, v)| body_field(v, "host")));
    assert_eq!(
        named.as_deref(),
        Some(rig.v.lab.host(holder).name.as_str()),
        "etcd names the holder: {owner_key:?}"
    );
    assert!(
        registered.is_some(),
        "every host is registered again: {:?}\n{}",
        rig.v.try_get("/linkmesh/hosts/", Duration::from_secs(2)),
        rig.events()
    );
    let outage = Outage {
        down,
        restart: restarting,
    };
    (rig, report, outage)
}

/// When etcd went down and when its restart began, in run time.
struct Outage {
    down: Duration,
    restart: Duration,
}

#[test]
fn release_policy_unbinds_at_the_deadline_and_nobody_binds_without_etcd() {
    require_root!();
    let (rig, report, Outage { down, restart }) = etcd_outage("release");
    let owner = rig.owner;
    let timeline = report.timeline();
    let Some(unbound) = report.first(down, <[u8]>::is_empty).map(|s| s.at) else {
        panic!("the owner h{owner} never unbound: {timeline}");
    };
    figure(
        "etcd_outage_release",
        "unbind_after_ms",
        ms(unbound.saturating_sub(down)),
    );
    // Its deadline is at most TTL - margin after its last acknowledged
    // keepalive, which was before the kill; the sampler adds its spacing.
    assert!(
        unbound.saturating_sub(down) <= TTL + report.sample_spacing(),
        "h{owner} unbound {:?} after etcd died (TTL {TTL:?}): {timeline}",
        unbound.saturating_sub(down)
    );
    if let Err(e) = only(&report, owner, Duration::ZERO, unbound) {
        panic!("before the fence: {e}\n{timeline}");
    }
    if let Some(s) = report
        .between(unbound, restart)
        .find(|s| !s.holders.is_empty())
    {
        panic!(
            "{:?} bound the VIP at {:.3}s, during the outage: {timeline}\n{}",
            s.holders,
            s.at.as_secs_f64(),
            rig.events()
        );
    }
    assert!(
        !rig.log_lines(owner, &["self-fencing"]).is_empty(),
        "the owner logged its fence:\n{}",
        rig.events()
    );
    assert!(
        report.most_holders() <= 1,
        "never two holders: {timeline}\n{}",
        rig.events()
    );
}

#[test]
fn keep_policy_holds_the_vip_through_the_outage() {
    require_root!();
    let (rig, report, Outage { down, restart }) = etcd_outage("keep");
    let owner = rig.owner;
    let timeline = report.timeline();
    if let Some(s) = report.between(down, restart).find(|s| s.holders != [owner]) {
        panic!(
            "at {:.3}s the holders were {:?}, not h{owner}: {timeline}\n{}",
            s.at.as_secs_f64(),
            s.holders,
            rig.events()
        );
    }
    assert!(report.most_holders() <= 1, "never two holders: {timeline}");
}

#[test]
fn claim_policy_binds_on_every_eligible_host_without_etcd() {
    require_root!();
    let (rig, report, Outage { down, restart }) = etcd_outage("claim");
    let owner = rig.owner;
    let timeline = report.timeline();
    // The owner keeps it; after --keepalive-retry failed keepalives every
    // other eligible host binds it too (LinK's "at least one host").
    if let Some(s) = report
        .between(down, restart)
        .find(|s| !s.holders.contains(&owner))
    {
        panic!(
            "at {:.3}s the owner h{owner} did not hold the VIP: {:?}\n{timeline}",
            s.at.as_secs_f64(),
            s.holders
        );
    }
    let Some(everyone) = report
        .between(down, restart)
        .find(|s| s.holders.len() == usize::from(AGENTS))
        .map(|s| s.at)
    else {
        panic!(
            "not every eligible host claimed the VIP: {timeline}\n{}",
            rig.events()
        );
    };
    figure(
        "etcd_outage_claim",
        "all_claimed_after_ms",
        ms(everyone.saturating_sub(down)),
    );
    if let Some(s) = report
        .between(everyone, restart)
        .find(|s| s.holders.len() != usize::from(AGENTS))
    {
        panic!(
            "a claimer let go during the outage, at {:.3}s: {:?}\n{timeline}",
            s.at.as_secs_f64(),
            s.holders
        );
    }
    for h in (1..=AGENTS).filter(|h| *h != owner) {
        assert!(
            !rig.log_lines(h, &["claiming (loss policy claim)"])
                .is_empty(),
            "h{h} logged its claim:\n{}",
            rig.events()
        );
    }
}
