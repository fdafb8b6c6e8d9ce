//! The steps a property-test run is made of, and how the harness plays
//! each one against the hosts' cores and its model of etcd.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use proptest::prelude::*;

use super::{FAIL_COUNT, HOSTS, ID, Observed, Sim, TTL, mac, name, record};
use crate::addr::MacAddr;
use crate::registry::VipChange;
use crate::vip::{Input, Lease, State};

/// One step of a run.
#[derive(Clone, Debug)]
pub(in crate::vip) enum Action {
    /// Deliver host `h`'s next watch event.
    Deliver(usize),
    /// Time passes (ms), then the host's timers fire.
    Tick(usize, u16),
    Health(usize, bool),
    /// Probe rounds (1-10): whether the owner answers, whether other peers
    /// are heard.
    Probe(usize, u8, bool, bool),
    /// Probe rounds (1-10) in which the owner is silent, but someone else
    /// answers for the VIP from a MAC of its own (a forged ARP reply),
    /// while other peers are heard.
    Forged(usize, u8),
    /// A keepalive went through (the deadline moves on).
    Renewed(usize),
    /// A keepalive failed.
    KeepaliveFailed(usize),
    /// The host learns its lease is gone and gets a new one.
    NewLease(usize),
    /// The owner goes quiet in the data plane while the peers hear each
    /// other: every other host probes this many rounds unanswered, with
    /// every queued event delivered after each round.
    OwnerSilent(u8),
    /// An admin asks the current owner to release the VIP.
    Failover,
    /// The record changes: these hosts excluded, this one preferred, and
    /// delivered plainly (0), with port maps (1), or routed with port maps
    /// (2).
    Record(Vec<usize>, Option<usize>, u8),
    /// The eBPF watcher finished loading.
    Watcher(usize),
    /// The VIP's address vanished from the host's kernel.
    AddressGone(usize),
    /// The VIP's address becomes (or stops being) a registered host's
    /// underlay address, as every host learns.
    HostAddress(bool),
    /// Someone without the secret writes an owner key (when there is none).
    ForgeOwner,
    /// The host's VIP interface loses (false) or regains (true) carrier.
    Carrier(usize, bool),
}

pub(super) fn action() -> impl Strategy<Value = Action> {
    let h = 0..HOSTS;
    prop_oneof![
        8 => h.clone().prop_map(Action::Deliver),
        4 => (h.clone(), 1u16..800).prop_map(|(h, ms)| Action::Tick(h, ms)),
        3 => (h.clone(), prop::bool::weighted(0.8)).prop_map(|(h, ok)| Action::Health(h, ok)),
        4 => (h.clone(), 1u8..10, any::<bool>(), any::<bool>())
            .prop_map(|(h, n, a, o)| Action::Probe(h, n, a, o)),
        1 => (h.clone(), 1u8..10).prop_map(|(h, n)| Action::Forged(h, n)),
        3 => h.clone().prop_map(Action::Renewed),
        1 => h.clone().prop_map(Action::KeepaliveFailed),
        1 => h.clone().prop_map(Action::NewLease),
        1 => (1u8..10).prop_map(Action::OwnerSilent),
        1 => Just(Action::Failover),
        1 => (prop::collection::vec(0..HOSTS, 0..2), prop::option::of(0..HOSTS), 0u8..3)
            .prop_map(|(x, p, d)| Action::Record(x, p, d)),
        1 => h.clone().prop_map(Action::Watcher),
        1 => h.clone().prop_map(Action::AddressGone),
        1 => any::<bool>().prop_map(Action::HostAddress),
        1 => Just(Action::ForgeOwner),
        1 => (h, any::<bool>()).prop_map(|(h, up)| Action::Carrier(h, up)),
    ]
}

impl Sim {
    pub(in crate::vip) fn deliver(&mut self, h: usize) {
        let Some(change) = self.queues[h].pop_front() else {
            return;
        };
        let seen = &mut self.seen[h];
        match &change {
            VipChange::Snapshot(s) => {
                seen.record = s.records.get(ID).cloned();
                seen.states.clear();
                seen.suspects.clear();
            }
            VipChange::Record(_, r) => seen.record = r.as_deref().cloned(),
            VipChange::Member(m) => {
                if m.kind == "state" {
                    match m.value.as_deref().and_then(State::parse) {
                        Some(s) => seen.states.insert(m.host.clone(), s),
                        None => seen.states.remove(&m.host),
                    };
                } else {
                    match m.value.as_deref().and_then(|v| v.parse().ok()) {
                        Some(l) => seen.suspects.insert(m.host.clone(), l),
                        None => seen.suspects.remove(&m.host),
                    };
                }
            }
            VipChange::Owner(..) | VipChange::Failover(..) | VipChange::BogusOwner { .. } => {}
        }
        self.input(h, Input::Registry(change), None);
    }

    /// `rounds` probe ticks on host `h`, 20 ms apart: a reply from
    /// `answers` seen in each (`None`: none), other peers heard or not.
    fn probe_rounds(&mut self, h: usize, rounds: u8, answers: Option<MacAddr>, others: bool) {
        for _ in 0..rounds {
            let observe = Observed {
                answers: answers.map(|m| (m, self.now)),
                others,
            };
            self.now += Duration::from_millis(20);
            self.input(h, Input::ProbeTick, Some(&observe));
        }
    }

    pub(in crate::vip) fn act(&mut self, action: Action) {
        match action {
            Action::Deliver(h) => self.deliver(h),
            Action::Tick(h, ms) => {
                self.now += Duration::from_millis(u64::from(ms));
                self.input(h, Input::Tick, None);
            }
            Action::Health(h, ok) => {
                let seen = &mut self.seen[h];
                let booting = !seen.passed;
                if ok {
                    seen.passed = true;
                    seen.fail_streak = 0;
                } else {
                    // A booting host fails at once.
                    seen.fail_streak = if booting {
                        FAIL_COUNT
                    } else {
                        seen.fail_streak + 1
                    };
                }
                let input = Input::Health {
                    id: ID.into(),
                    ok,
                    detail: String::new(),
                };
                self.input(h, input, None);
            }
            Action::Probe(h, rounds, answers, others) => {
                // The owner answers from the MAC it published.
                let owner = self.etcd.owner.as_ref().map(|(o, _)| o.clone());
                let from = (0..HOSTS).find(|h| owner.as_ref() == Some(&name(*h)));
                let answers = answers.then_some(from).flatten().map(mac);
                self.probe_rounds(h, rounds, answers, others);
            }
            Action::Forged(h, rounds) => {
                let forger = MacAddr([2, 0, 0, 0, 0, 0x99]);
                self.probe_rounds(h, rounds, Some(forger), true);
            }
            Action::Renewed(h) => {
                if self.etcd.leases[h] != 0 {
                    let lease = Lease {
                        id: self.etcd.leases[h],
                        deadline: self.now + TTL.saturating_sub(Duration::from_millis(200)),
                        failures: 0,
                    };
                    self.input(h, Input::Lease(lease), None);
                }
            }
            Action::KeepaliveFailed(h) => {
                let mut lease = self.cores[h].lease();
                lease.failures += 1;
                self.input(h, Input::Lease(lease), None);
            }
            Action::NewLease(h) => self.new_lease(h),
            Action::OwnerSilent(rounds) => {
                let Some((owner, _)) = self.etcd.owner.clone() else {
                    return;
                };
                for _ in 0..rounds {
                    for h in (0..HOSTS).filter(|h| name(*h) != owner) {
                        self.act(Action::Probe(h, 1, false, true));
                    }
                    self.drain();
                }
            }
            Action::Failover => {
                if let Some((owner, _)) = self.etcd.owner.clone() {
                    self.broadcast(&VipChange::Failover(ID.into(), owner));
                }
            }
            Action::Record(excluded, priority, delivery) => {
                let r = record(&excluded, priority, delivery);
                self.broadcast(&VipChange::Record(ID.into(), Some(Box::new(r))));
            }
            Action::Watcher(h) => self.input(h, Input::WatcherReady, None),
            Action::Carrier(h, up) => self.carrier(h, up),
            Action::HostAddress(is) => {
                let addresses: BTreeSet<IpAddr> = if is {
                    ["198.18.0.100".parse().expect("ip")].into()
                } else {
                    BTreeSet::new()
                };
                for h in 0..HOSTS {
                    self.seen[h].host_address = is;
                    self.input(h, Input::Hosts(addresses.clone()), None);
                }
            }
            Action::ForgeOwner => {
                if self.etcd.owner.is_none() && self.etcd.forged.is_none() {
                    self.etcd.revision += 1;
                    self.etcd.forged = Some(self.etcd.revision);
                    self.broadcast(&VipChange::BogusOwner {
                        id: ID.into(),
                        revision: self.etcd.revision,
                    });
                }
            }
            Action::AddressGone(h) => {
                let input = Input::AddressGone { id: ID.into() };
                self.input(h, input, None);
            }
        }
    }

    /// Delivers every queued event, host after host, until none is left.
    /// Host `h`'s VIP interface loses or regains carrier: without it, the
    /// host holds nothing from that step on.
    fn carrier(&mut self, h: usize, up: bool) {
        if up {
            self.no_carrier.remove(&h);
        } else {
            self.no_carrier.insert(h);
        }
        let ifname = "eth0".to_owned();
        self.input(h, Input::Carrier { ifname, up }, None);
        if !up {
            assert_ne!(
                self.cores[h].vips().get(ID).map(|v| v.state),
                Some(State::Activated),
                "{} holds the VIP on an interface without carrier",
                name(h)
            );
        }
    }

    pub(in crate::vip) fn drain(&mut self) {
        while let Some(h) = (0..HOSTS).find(|h| !self.queues[*h].is_empty()) {
            self.deliver(h);
        }
    }

    pub(in crate::vip) fn holders(&self) -> Vec<usize> {
        (0..HOSTS)
            .filter(|h| self.cores[*h].vips()[ID].state == State::Activated)
            .collect()
    }
}
