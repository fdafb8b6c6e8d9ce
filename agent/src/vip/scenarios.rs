//! The floating-IP decisions in a few plain stories, step by step, on the
//! property tests' harness ([`super::sim`]).

use super::sim::{Action, HOSTS, ID, Observed, Sim, TTL};
use super::{Binding, Effect, Input, LossPolicy, Outcome, State, WriteWhy};
use crate::addr::MacAddr;

fn quiet() -> Observed {
    Observed {
        answers: None,
        others: false,
    }
}

/// h1's VIP newly bound on its eth0.
fn bound_on_eth0() -> Input {
    Input::Bound {
        id: ID.into(),
        binding: Binding {
            ifindex: 2,
            ifname: "eth0".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
        },
        added: true,
    }
}

/// h1 holds the VIP; the other hosts are healthy standbys with their
/// watchers loaded.
fn owner_and_watching_standbys() -> Sim {
    let mut sim = Sim::new(LossPolicy::Release);
    sim.drain();
    sim.act(Action::Health(0, true));
    sim.act(Action::Tick(0, 1));
    assert_eq!(sim.holders(), vec![0]);
    for h in 1..HOSTS {
        sim.act(Action::Health(h, true));
        sim.act(Action::Watcher(h));
    }
    sim.drain();
    sim
}

/// The plain path, step by step: a record, health, a lease, a contention
/// won, the address bound and announced, the state written.
#[test]
fn a_healthy_host_with_a_lease_takes_a_free_vip() {
    let mut sim = Sim::new(LossPolicy::Release);
    sim.deliver(0);
    sim.act(Action::Health(0, true));
    let effects = sim.cores[0].step(Input::Tick, sim.now, &quiet());
    assert!(
        matches!(effects.as_slice(), [Effect::Contend { lease, .. }] if *lease == sim.etcd.leases[0]),
        "{effects:?}"
    );
    let won = Input::Contended {
        id: ID.into(),
        lease: sim.etcd.leases[0],
        outcome: Outcome::Won,
    };
    let effects = sim.cores[0].step(won, sim.now, &quiet());
    assert!(
        matches!(&effects[0], Effect::Bind { ifname, .. } if ifname == "eth0"),
        "{effects:?}"
    );
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::Write {
                why: WriteWhy::State(State::Activated),
                ..
            }
        )),
        "{effects:?}"
    );
    let effects = sim.cores[0].step(bound_on_eth0(), sim.now, &quiet());
    assert!(
        matches!(&effects[0], Effect::Announce { count: 2, .. }),
        "{effects:?}"
    );
    assert_eq!(sim.cores[0].vips()[ID].state, State::Activated);
}

/// The fence: past the lease deadline with `release`, the owner unbinds
/// and stops contending until etcd answers again.
#[test]
fn an_owner_past_its_lease_deadline_fences_itself() {
    let mut sim = Sim::new(LossPolicy::Release);
    sim.deliver(0);
    sim.act(Action::Health(0, true));
    sim.act(Action::Tick(0, 1));
    assert_eq!(sim.cores[0].vips()[ID].state, State::Activated);
    sim.act(Action::KeepaliveFailed(0));
    sim.now += TTL;
    let effects = sim.cores[0].step(Input::Tick, sim.now, &quiet());
    assert!(
        matches!(&effects[1], Effect::RemoveAddress { .. }),
        "{effects:?}"
    );
    assert_eq!(sim.cores[0].vips()[ID].state, State::Failing);
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Release { .. })),
        "the key expires on its own: {effects:?}"
    );
}

/// Fast failover end to end: two standbys whose probes of the owner go
/// unanswered while they hear each other suspect its lease, the second
/// suspicion makes the quorum, the owner key is revoked, a standby takes
/// the VIP.
#[test]
fn a_quorum_of_standbys_revokes_a_silent_owner() {
    let mut sim = owner_and_watching_standbys();
    let owner_lease = sim.etcd.leases[0];
    assert_eq!(sim.etcd.owner, Some(("h1".into(), owner_lease)));
    for _ in 0..8 {
        for h in 1..HOSTS {
            sim.act(Action::Probe(h, 1, false, true));
        }
        sim.drain();
    }
    assert_eq!(sim.etcd.leases[0], 0, "the owner's lease is revoked");
    sim.drain();
    for h in 1..HOSTS {
        sim.act(Action::Tick(h, 100));
    }
    sim.drain();
    let holders = sim.holders();
    assert!(
        holders.iter().any(|h| *h != 0),
        "a standby took over: {holders:?}"
    );
}

/// An isolated standby (it hears no other peer either) suspects nobody.
#[test]
fn a_standby_that_hears_nobody_suspects_nobody() {
    let mut sim = owner_and_watching_standbys();
    for _ in 0..20 {
        for h in 1..HOSTS {
            sim.act(Action::Probe(h, 1, false, false));
        }
        sim.drain();
    }
    assert!(sim.etcd.members.keys().all(|(_, kind)| kind != "suspect"));
    assert_eq!(sim.holders(), vec![0]);
}

/// Forged ARP replies for the VIP from another MAC, unicast to the
/// standbys, neither stand in for the owner nor steer the probes: a live
/// owner that answers from its published MAC keeps the VIP, and the
/// standbys' probes only ever go to that MAC (or broadcast).
#[test]
fn forged_replies_neither_revoke_a_live_owner_nor_steer_the_probes() {
    let mut sim = owner_and_watching_standbys();
    let owner_lease = sim.etcd.leases[0];
    for _ in 0..20 {
        for h in 1..HOSTS {
            // The forger's reply arrives between the owner's answers; the
            // harness checks every probe's destination.
            sim.act(Action::Forged(h, 1));
            sim.act(Action::Probe(h, 1, true, true));
        }
        sim.drain();
    }
    assert!(sim.etcd.members.keys().all(|(_, kind)| kind != "suspect"));
    assert_eq!(sim.etcd.leases[0], owner_lease, "the owner's lease lives");
    assert_eq!(sim.holders(), vec![0]);
}

/// The owner's VIP interface loses carrier: it unbinds and deletes its
/// key at once (guarded by its lease), a standby takes over, and the old
/// owner does not contend until the carrier is back.
#[test]
fn an_owner_that_loses_carrier_gives_the_vip_up_at_once() {
    let mut sim = owner_and_watching_standbys();
    let lost = Input::Carrier {
        ifname: "eth0".into(),
        up: false,
    };
    let effects = sim.cores[0].step(lost, sim.now, &quiet());
    let unbind = effects
        .iter()
        .position(|e| matches!(e, Effect::RemoveAddress { .. }));
    let release = effects
        .iter()
        .position(|e| matches!(e, Effect::Release { lease, .. } if *lease == sim.etcd.leases[0]));
    assert!(
        unbind.is_some() && release.is_some() && unbind < release,
        "unbind, then the guarded release: {effects:?}"
    );
    assert_eq!(sim.cores[0].vips()[ID].state, State::Standby);
    // Played through the harness: someone else holds it, never h1.
    let mut sim = owner_and_watching_standbys();
    sim.act(Action::Carrier(0, false));
    sim.drain();
    for _ in 0..5 {
        for h in 0..HOSTS {
            sim.act(Action::Tick(h, 100));
        }
        sim.drain();
    }
    let holders = sim.holders();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_ne!(holders, vec![0]);
    // The carrier comes back: h1 is a standby that may contend again.
    sim.act(Action::Carrier(0, true));
    sim.drain();
    assert_eq!(sim.cores[0].vips()[ID].state, State::Standby);
    assert_eq!(sim.holders().len(), 1);
}

/// With `--garp-refresh`, every announcement the owner starts keeps
/// going after its burst, including for an address that was already
/// there (no burst then, only the refresh), and after a conflict.
#[test]
fn garp_refresh_rides_on_every_announcement() {
    let mut sim = Sim::new(LossPolicy::Release);
    let every = std::time::Duration::from_secs(5);
    sim.cores[0].settings.garp_refresh = Some(every);
    sim.deliver(0);
    sim.act(Action::Health(0, true));
    let _ = sim.cores[0].step(Input::Tick, sim.now, &quiet());
    let won = Input::Contended {
        id: ID.into(),
        lease: sim.etcd.leases[0],
        outcome: Outcome::Won,
    };
    let _ = sim.cores[0].step(won, sim.now, &quiet());
    let binding = Binding {
        ifindex: 2,
        ifname: "eth0".into(),
        mac: MacAddr([2, 0, 0, 0, 0, 1]),
    };
    let bound = |added| Input::Bound {
        id: ID.into(),
        binding: binding.clone(),
        added,
    };
    let effects = sim.cores[0].step(bound(true), sim.now, &quiet());
    assert!(
        matches!(&effects[0], Effect::Announce { count: 2, refresh: Some(r), .. } if *r == every),
        "{effects:?}"
    );
    let effects = sim.cores[0].step(bound(false), sim.now, &quiet());
    assert!(
        matches!(
            &effects[0],
            Effect::Announce {
                count: 0,
                refresh: Some(_),
                ..
            }
        ),
        "{effects:?}"
    );
    let conflict = Input::Conflict {
        ip: "198.18.0.100".parse().expect("ip"),
        foreign_mac: MacAddr([2, 0, 0, 0, 0, 9]),
        our_mac: binding.mac,
    };
    let effects = sim.cores[0].step(conflict, sim.now, &quiet());
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::Announce {
                refresh: Some(_),
                ..
            }
        )),
        "{effects:?}"
    );
}

/// Preemption: the record prefers h2 with a 1 s delay. h1 holds the VIP;
/// once h2 has stood by for the delay, h1 hands it over (unbind, then
/// the guarded release) and h2, contending at once, holds it. h1 keeps
/// out for its cooldown, and nobody else ever holds it meanwhile.
#[test]
fn an_owner_hands_over_to_the_preferred_host_after_the_preempt_delay() {
    let mut sim = owner_and_watching_standbys();
    sim.act(Action::Record(vec![], Some(1), 0));
    sim.drain();
    assert_eq!(sim.holders(), vec![0], "not before the delay");
    sim.act(Action::Renewed(0));
    sim.act(Action::Tick(0, 500));
    sim.drain();
    assert_eq!(sim.holders(), vec![0], "half the delay");
    let mut handed = false;
    for _ in 0..20 {
        for h in 0..HOSTS {
            sim.act(Action::Renewed(h));
            sim.act(Action::Tick(h, 100));
        }
        sim.drain();
        let holders = sim.holders();
        assert!(holders.len() <= 1, "{holders:?}");
        if holders == vec![1] {
            handed = true;
            break;
        }
    }
    assert!(handed, "h2 holds it: {:?}", sim.holders());
    // h2 is preferred and holds it: nothing moves any more.
    for _ in 0..30 {
        for h in 0..HOSTS {
            sim.act(Action::Renewed(h));
            sim.act(Action::Tick(h, 100));
        }
        sim.drain();
    }
    assert_eq!(sim.holders(), vec![1]);
}

/// A routed VIP with a port map: the owner maps the ports, then installs
/// the route, and announces nothing on the link. Giving it up withdraws
/// the route first, then the maps, then the address.
#[test]
fn a_routed_vip_is_mapped_and_routed_not_announced() {
    let mut sim = Sim::new(LossPolicy::Release);
    sim.act(Action::Record(vec![], None, 2));
    sim.drain();
    sim.act(Action::Health(0, true));
    sim.act(Action::Tick(0, 1));
    sim.drain();
    assert_eq!(sim.holders(), vec![0]);
    let effects = sim.cores[0].step(bound_on_eth0(), sim.now, &quiet());
    assert!(
        matches!(
            effects.as_slice(),
            [Effect::MapPorts { ports, ifname: Some(i), .. }, Effect::AddRoute { .. }]
                if ports.len() == 1 && i == "eth0"
        ),
        "{effects:?}"
    );
    let effects = sim.cores[0].step(Input::Stop, sim.now, &quiet());
    let order: Vec<usize> = effects
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            matches!(
                e,
                Effect::RemoveRoute { .. } | Effect::MapPorts { .. } | Effect::RemoveAddress { .. }
            )
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(order.len(), 3, "{effects:?}");
    assert!(matches!(effects[order[0]], Effect::RemoveRoute { .. }));
    assert!(matches!(&effects[order[1]], Effect::MapPorts { ports, .. } if ports.is_empty()));
    assert!(matches!(effects[order[2]], Effect::RemoveAddress { .. }));
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Announce { .. })),
        "{effects:?}"
    );
}
