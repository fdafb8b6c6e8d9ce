//! Property tests of the floating-IP decisions: three hosts' [`Core`]s
//! around a model of etcd (one owner key, leases, the hosts' state and
//! suspect keys, watch events delivered to each host in order but
//! interleaved at random), driven by random sequences of health results,
//! timers, probe rounds, lease trouble, failover requests and record
//! changes. Each property is checked on every effect, against the
//! harness's own bookkeeping rather than the core's.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use proptest::prelude::*;

use super::{
    Binding, Core, Effect, FastFailover, FastSettings, Input, Lease, LossPolicy, Observe, Outcome,
    Settings, State, WriteWhy,
};
use crate::addr::MacAddr;
use crate::registry::{MemberKey, Owner, ValidVip, VipChange, VipRecord, VipSnapshot};

mod actions;

pub(super) use actions::Action;
use actions::action;

pub(super) const HOSTS: usize = 3;
pub(super) const ID: &str = "198.18.0.100_24";
pub(super) const TTL: Duration = Duration::from_secs(2);
const FAIL_COUNT: u32 = 2;

fn name(h: usize) -> String {
    format!("h{}", h + 1)
}

/// Host `h`'s MAC on the VIP's interface (what its owner key publishes).
pub(super) fn mac(h: usize) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, u8::try_from(h + 1).unwrap_or(0)])
}

pub(super) fn settings(h: usize, loss_policy: LossPolicy) -> Settings {
    Settings {
        hostname: name(h),
        default_interface: Some("eth0".into()),
        ttl: TTL,
        keepalive_retry: 3,
        health_interval: Duration::from_secs(1),
        health_timeout: Duration::from_secs(1),
        fail_count: FAIL_COUNT,
        scripts: super::script::ScriptPolicy::default(),
        garp_count: 2,
        garp_interval: Duration::from_millis(100),
        garp_refresh: None,
        notify: super::notify::NotifySettings::default(),
        route_table: Some(100),
        loss_policy,
        contend_delay: Duration::from_millis(50),
        cooldown: Duration::from_secs(5),
        state_dir: None,
        resync: Duration::from_secs(30),
        fast: FastSettings {
            mode: FastFailover::Auto,
            probe_interval: Duration::from_millis(20),
            probe_misses: 5,
            quorum: 0,
        },
    }
}

fn record(excluded: &[usize], priority: Option<usize>, delivery: u8) -> ValidVip {
    let ports = vec![crate::registry::PortMap {
        src: 80,
        proto: crate::registry::Proto::Tcp,
        dest: 8080,
    }];
    VipRecord {
        address: if delivery == 2 {
            "198.18.0.100/32"
        } else {
            "198.18.0.100/24"
        }
        .into(),
        interface: None,
        checks: vec![],
        excluded_nodes: excluded.iter().map(|h| name(*h)).collect(),
        priority: priority.map(name),
        // Preemption whenever there is a preferred host: the properties
        // must hold across handovers too.
        preempt_delay: priority.map(|_| 1),
        ports: if delivery > 0 { ports } else { Vec::new() },
        mode: if delivery == 2 {
            crate::registry::Mode::Route
        } else {
            crate::registry::Mode::L2
        },
        group: None,
        name: None,
    }
    .validate()
    .expect("a valid record")
}

/// etcd as the hosts share it.
#[derive(Default)]
pub(super) struct Etcd {
    pub(super) owner: Option<(String, i64)>,
    /// A forged owner key, at this revision (it blocks contention until
    /// someone removes it).
    forged: Option<i64>,
    revision: i64,
    /// Every owner key ever created.
    owners_created: BTreeSet<(String, i64)>,
    /// Each host's live lease.
    pub(super) leases: Vec<i64>,
    next_lease: i64,
    /// (host, kind) -> (value, lease).
    pub(super) members: BTreeMap<(String, String), (String, i64)>,
}

/// What a host did to deliver the VIP: bind its address, install its
/// route, map its ports.
#[derive(Default, Clone, Copy)]
struct Held {
    bound: bool,
    routed: bool,
    mapped: bool,
}

/// What the harness tracks per host, independently of its core.
#[derive(Default, Clone)]
struct Seen {
    /// Members as delivered to this host.
    states: BTreeMap<String, State>,
    suspects: BTreeMap<String, i64>,
    /// The record as delivered.
    record: Option<ValidVip>,
    /// Consecutive failed health checks, and whether one ever passed.
    fail_streak: u32,
    passed: bool,
    /// Binding actions so far (for "a release precedes a rebind").
    held: Held,
    /// Whether the VIP's address is a host's underlay address, as told.
    host_address: bool,
}

pub(super) struct Observed {
    pub(super) answers: Option<(MacAddr, Duration)>,
    pub(super) others: bool,
}

impl Observe for Observed {
    fn seen(&self, _: Ipv4Addr) -> Option<(MacAddr, Duration)> {
        self.answers
    }
    fn other_peer_heard_after(&self, _: &str, _: Duration) -> bool {
        self.others
    }
}

pub(super) struct Sim {
    pub(super) cores: Vec<Core>,
    pub(super) etcd: Etcd,
    queues: Vec<VecDeque<VipChange>>,
    seen: Vec<Seen>,
    pub(super) now: Duration,
    policy: LossPolicy,
    /// Effects seen, by kind (to check the runs reach every path).
    counts: BTreeMap<&'static str, u64>,
    /// Hosts whose VIP interface has lost carrier, as told.
    no_carrier: BTreeSet<usize>,
}

fn kind(e: &Effect) -> &'static str {
    match e {
        Effect::Bind { .. } => "bind",
        Effect::RemoveAddress { .. } => "unbind",
        Effect::Release {
            successor: Some(_), ..
        } => "handover",
        Effect::Release { .. } => "release",
        Effect::PublishMac { .. } => "publish",
        Effect::AddRoute { .. } => "route",
        Effect::MapPorts { ports, .. } if !ports.is_empty() => "map",
        Effect::Revoke {
            takeover: Some(_), ..
        } => "takeover",
        Effect::Revoke { .. } => "revoke",
        Effect::Contend { .. } => "contend",
        Effect::ClearOwner { .. } => "clear",
        Effect::Write {
            why: WriteWhy::Suspect { .. },
            ..
        } => "suspect",
        _ => "other",
    }
}

impl Sim {
    pub(super) fn new(policy: LossPolicy) -> Self {
        let mut sim = Self {
            cores: (0..HOSTS).map(|h| Core::new(settings(h, policy))).collect(),
            etcd: Etcd {
                next_lease: 100,
                leases: vec![0; HOSTS],
                ..Etcd::default()
            },
            queues: vec![VecDeque::new(); HOSTS],
            seen: vec![Seen::default(); HOSTS],
            now: Duration::from_secs(1000),
            policy,
            counts: BTreeMap::new(),
            no_carrier: BTreeSet::new(),
        };
        let snapshot = VipSnapshot {
            records: [(ID.to_owned(), record(&[], None, 0))].into(),
            ..VipSnapshot::default()
        };
        for h in 0..HOSTS {
            sim.queues[h].push_back(VipChange::Snapshot(Box::new(snapshot.clone())));
            sim.new_lease(h);
            // The eBPF watcher is loaded (as on every host that can load
            // it); runs that start without it are the `Watcher` action's.
            if h != 0 {
                sim.input(h, Input::WatcherReady, None);
            }
        }
        sim
    }

    fn broadcast(&mut self, change: &VipChange) {
        for q in &mut self.queues {
            q.push_back(change.clone());
        }
    }

    fn new_lease(&mut self, h: usize) {
        let old = self.etcd.leases[h];
        self.expire(old);
        self.etcd.next_lease += 1;
        self.etcd.leases[h] = self.etcd.next_lease;
        let lease = Lease {
            id: self.etcd.next_lease,
            deadline: self.now + TTL.saturating_sub(Duration::from_millis(200)),
            failures: 0,
        };
        self.input(h, Input::Lease(lease), None);
    }

    /// A lease ends: its keys go.
    fn expire(&mut self, lease: i64) {
        if lease == 0 {
            return;
        }
        if self.etcd.owner.as_ref().is_some_and(|(_, l)| *l == lease) {
            self.etcd.owner = None;
            self.broadcast(&VipChange::Owner(ID.into(), None));
        }
        let gone: Vec<(String, String)> = self
            .etcd
            .members
            .iter()
            .filter(|(_, (_, l))| *l == lease)
            .map(|(k, _)| k.clone())
            .collect();
        for (host, kind) in gone {
            self.etcd.members.remove(&(host.clone(), kind.clone()));
            self.broadcast(&VipChange::Member(MemberKey {
                id: ID.into(),
                kind,
                host,
                value: None,
                lease: 0,
            }));
        }
    }

    fn put_member(&mut self, host: &str, kind: &str, value: Option<String>, lease: i64) {
        let key = (host.to_owned(), kind.to_owned());
        match &value {
            // etcd refuses a put on a lease it does not have.
            Some(v) if self.etcd.leases.contains(&lease) => {
                self.etcd.members.insert(key, (v.clone(), lease));
            }
            Some(_) => return,
            None => {
                self.etcd.members.remove(&key);
            }
        }
        let lease = if value.is_some() { lease } else { 0 };
        self.broadcast(&VipChange::Member(MemberKey {
            id: ID.into(),
            kind: kind.into(),
            host: host.into(),
            value,
            lease,
        }));
    }

    /// Steps host `h`'s core, runs the effects against the model, checks
    /// every property, and feeds results back.
    fn input(&mut self, h: usize, input: Input, observe: Option<&Observed>) {
        let quiet = Observed {
            answers: None,
            others: false,
        };
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let gone = matches!(input, Input::AddressGone { .. });
            let effects = self.cores[h].step(input, self.now, observe.unwrap_or(&quiet));
            if gone {
                self.seen[h].held.bound = false;
            }
            self.check(h, &effects);
            for e in &effects {
                *self.counts.entry(kind(e)).or_default() += 1;
            }
            for e in effects {
                if let Some(result) = self.run(h, e) {
                    queue.push_back(result);
                }
            }
        }
    }

    fn check(&self, h: usize, effects: &[Effect]) {
        let me = name(h);
        let core = &self.cores[h];
        let mut unbound = false;
        for e in effects {
            match e {
                Effect::RemoveAddress { .. } => unbound = true,
                Effect::Bind { .. } => {
                    let seen = &self.seen[h];
                    // An excluded or failing host never binds.
                    let record = seen.record.as_ref().expect("a record");
                    assert!(
                        !record.record.excluded_nodes.contains(&me),
                        "{me} is excluded and binds"
                    );
                    assert!(
                        !seen.host_address,
                        "{me} binds a registered host's own address"
                    );
                    assert!(
                        !self.no_carrier.contains(&h),
                        "{me} binds on an interface without carrier"
                    );
                    assert!(
                        seen.passed && seen.fail_streak < FAIL_COUNT,
                        "{me} binds while failing (streak {}, passed {})",
                        seen.fail_streak,
                        seen.passed
                    );
                    // A release (unbind) precedes a rebind.
                    assert!(
                        !seen.held.bound || unbound,
                        "{me} binds twice without unbinding"
                    );
                    // Never two hosts for one lease: only under our own key,
                    // one etcd created.
                    if self.policy != LossPolicy::Claim {
                        let owner = core.vips()[ID].owner.clone();
                        let lease = core.lease().id;
                        assert!(
                            owner.is_some_and(|o| o.is(&me, lease)),
                            "{me} binds without its key"
                        );
                        assert!(
                            self.etcd.owners_created.contains(&(me.clone(), lease)),
                            "{me} binds under a key etcd never had"
                        );
                    }
                }
                Effect::Release { .. } => {
                    // The key goes only after the address.
                    assert!(
                        !self.seen[h].held.bound || unbound,
                        "{me} releases its key while still bound"
                    );
                }
                Effect::Revoke {
                    owner,
                    lease,
                    suspects,
                    ..
                } => self.check_revoke(h, owner, *lease, suspects),
                // Probes go to the MAC the owner published, or broadcast:
                // never where a forged reply points.
                Effect::Probe { dst: Some(dst), .. } => {
                    let published = core.vips()[ID].owner.as_ref().and_then(|o| o.mac);
                    assert_eq!(
                        Some(*dst),
                        published,
                        "{me} probes a MAC the owner did not publish"
                    );
                }
                _ => {}
            }
        }
    }

    /// Never a revoke without a quorum of distinct, eligible suspects
    /// naming that lease, as delivered to this host.
    fn check_revoke(&self, h: usize, owner: &str, lease: i64, suspects: &[String]) {
        let seen = &self.seen[h];
        let excluded = &seen
            .record
            .as_ref()
            .expect("a record")
            .record
            .excluded_nodes;
        let eligible: BTreeSet<&String> = seen
            .states
            .iter()
            .filter(|(host, s)| {
                **s == State::Standby && *host != owner && !excluded.contains(*host)
            })
            .map(|(host, _)| host)
            .collect();
        let distinct: BTreeSet<&String> = suspects.iter().collect();
        assert_eq!(distinct.len(), suspects.len(), "suspects counted twice");
        for s in &distinct {
            assert!(eligible.contains(s), "{s} is not an eligible standby");
            assert_eq!(
                seen.suspects.get(*s),
                Some(&lease),
                "{s} does not suspect {lease}"
            );
        }
        let quorum = (eligible.len() / 2 + 1).max(2);
        assert!(
            distinct.len() >= quorum,
            "{} suspects of {} eligible revoke",
            distinct.len(),
            eligible.len()
        );
    }

    /// Unbinding, port maps and routes: a route or a map only while the
    /// address is bound, and the address last to go.
    fn deliver_effect(&mut self, h: usize, effect: &Effect) {
        let me = name(h);
        let held = &mut self.seen[h].held;
        match effect {
            Effect::RemoveAddress { .. } => {
                assert!(
                    !held.routed && !held.mapped,
                    "{me}: the address goes before its route or port maps"
                );
                held.bound = false;
            }
            Effect::MapPorts { ports, .. } => {
                assert!(
                    ports.is_empty() || held.bound,
                    "{me}: ports mapped for an address it has not bound"
                );
                held.mapped = !ports.is_empty();
            }
            Effect::AddRoute { .. } => {
                assert!(held.bound, "{me}: a route for an unbound VIP");
                held.routed = true;
            }
            Effect::RemoveRoute { .. } => held.routed = false,
            _ => {}
        }
    }

    /// The owner key given up (to a successor, or deleted) or given our MAC.
    fn owner_effect(&mut self, h: usize, effect: Effect) {
        let me = name(h);
        match effect {
            Effect::Release {
                lease, successor, ..
            } if self.etcd.owner.as_ref().is_some_and(|(_, l)| *l == lease) => {
                // etcd refuses a put on a lease it does not have: then the
                // key is deleted instead.
                let next = successor.filter(|s| self.etcd.leases.contains(&s.lease));
                self.etcd.owner = next.as_ref().map(|s| (s.host.clone(), s.lease));
                let owner = next.map(|s| {
                    self.etcd.owners_created.insert((s.host.clone(), s.lease));
                    Owner {
                        host: s.host,
                        lease: s.lease,
                        mac: None,
                    }
                });
                self.broadcast(&VipChange::Owner(ID.into(), owner));
            }
            Effect::PublishMac { lease, .. } if self.etcd.owner == Some((me.clone(), lease)) => {
                let owner = Owner {
                    host: me,
                    lease,
                    mac: Some(mac(h)),
                };
                self.broadcast(&VipChange::Owner(ID.into(), Some(owner)));
            }
            _ => {}
        }
    }

    /// A suspect quorum's revocation, with or without a takeover.
    fn revoke(&mut self, h: usize, effect: Effect) -> Input {
        let me = name(h);
        let Effect::Revoke {
            id,
            lease,
            takeover,
            ..
        } = effect
        else {
            unreachable!("only revocations come here")
        };
        let deleted = self.etcd.owner.as_ref().is_some_and(|(_, l)| *l == lease);
        // etcd refuses a put on a lease it does not have: then the
        // whole txn fails.
        let mine = takeover
            .as_ref()
            .map(|(l, _)| *l)
            .filter(|l| self.etcd.leases.contains(l));
        let failed = takeover.is_some() && mine.is_none();
        let deleted = deleted && !failed;
        let took_over = deleted && mine.is_some();
        if deleted {
            if let Some(my) = mine {
                self.etcd.owner = Some((me.clone(), my));
                self.etcd.owners_created.insert((me.clone(), my));
                let owner = Owner {
                    host: me,
                    lease: my,
                    mac: Some(mac(h)),
                };
                self.broadcast(&VipChange::Owner(ID.into(), Some(owner)));
            }
            if let Some(holder) = self.etcd.leases.iter().position(|l| *l == lease) {
                self.etcd.leases[holder] = 0;
            }
            self.expire(lease);
        }
        Input::Revoked {
            id,
            deleted,
            took_over,
        }
    }

    fn run(&mut self, h: usize, effect: Effect) -> Option<Input> {
        let me = name(h);
        match effect {
            Effect::Bind { id, ifname, .. } => {
                self.seen[h].held.bound = true;
                let binding = Binding {
                    ifindex: 2,
                    ifname,
                    mac: mac(h),
                };
                Some(Input::Bound {
                    id,
                    binding,
                    added: true,
                })
            }
            e @ (Effect::RemoveAddress { .. }
            | Effect::MapPorts { .. }
            | Effect::AddRoute { .. }
            | Effect::RemoveRoute { .. }) => {
                self.deliver_effect(h, &e);
                None
            }
            Effect::ClearOwner { revision, .. } => {
                if self.etcd.forged == Some(revision) {
                    self.etcd.forged = None;
                    self.broadcast(&VipChange::Owner(ID.into(), None));
                }
                None
            }
            Effect::Contend { id, lease, .. } => {
                let outcome = match &self.etcd.owner {
                    _ if !self.etcd.leases.contains(&lease) => Outcome::Failed,
                    _ if self.etcd.forged.is_some() => Outcome::Lost,
                    None => {
                        self.etcd.owner = Some((me.clone(), lease));
                        self.etcd.owners_created.insert((me.clone(), lease));
                        let owner = Owner {
                            host: me,
                            lease,
                            mac: Some(mac(h)),
                        };
                        self.broadcast(&VipChange::Owner(ID.into(), Some(owner)));
                        Outcome::Won
                    }
                    Some((o, l)) if *o == me && *l == lease => Outcome::StillOurs,
                    Some(_) => Outcome::Lost,
                };
                Some(Input::Contended { id, lease, outcome })
            }
            e @ (Effect::Release { .. } | Effect::PublishMac { .. }) => {
                self.owner_effect(h, e);
                None
            }
            e @ Effect::Revoke { .. } => Some(self.revoke(h, e)),
            Effect::Write { why, lease, .. } => {
                let (kind, value) = match why {
                    WriteWhy::State(s) => ("state", s.to_string()),
                    WriteWhy::Suspect { owner_lease, .. } => ("suspect", owner_lease.to_string()),
                };
                self.put_member(&me, kind, Some(value), lease);
                None
            }
            Effect::DeleteState { .. } => {
                self.put_member(&me, "state", None, 0);
                None
            }
            Effect::Withdraw { .. } => {
                self.put_member(&me, "suspect", None, 0);
                None
            }
            Effect::Probe { id, .. } => Some(Input::ProbeSent { id }),
            _ => None,
        }
    }
}

fn run(policy: LossPolicy, actions: Vec<Action>) -> BTreeMap<&'static str, u64> {
    let mut sim = Sim::new(policy);
    for a in actions {
        sim.act(a);
    }
    sim.counts
}

/// The random runs are not vacuous: across a fixed set of them, every
/// guarded effect happens (binds, unbinds, releases, suspicions, revokes).
#[test]
fn random_runs_reach_every_guarded_effect() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = prop::collection::vec(action(), 1..300);
    let mut total: BTreeMap<&'static str, u64> = BTreeMap::new();
    for _ in 0..512 {
        let actions = strategy.new_tree(&mut runner).expect("a run").current();
        for (k, n) in run(LossPolicy::Release, actions) {
            *total.entry(k).or_default() += n;
        }
    }
    for k in [
        "bind", "unbind", "release", "handover", "publish", "route", "map", "contend", "suspect",
        "takeover", "clear",
    ] {
        assert!(
            total.get(k).copied().unwrap_or(0) > 0,
            "no {k} in the random runs: {total:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// With the `release` policy: every bind is under the host's own owner
    /// key, one etcd created (so never two hosts for one lease); no revoke
    /// without a quorum; no bind by an excluded or failing host; an unbind
    /// before every rebind and before every release of the key.
    #[test]
    fn release_policy_keeps_every_property(actions in prop::collection::vec(action(), 1..300)) {
        run(LossPolicy::Release, actions);
    }

    /// The same with `keep`, which never fences.
    #[test]
    fn keep_policy_keeps_every_property(actions in prop::collection::vec(action(), 1..300)) {
        run(LossPolicy::Keep, actions);
    }

    /// `claim` binds without etcd by design (LinK's "at least one host"),
    /// so only its key check is off: exclusion, health, quorum and
    /// unbind-before-rebind still hold.
    #[test]
    fn claim_policy_keeps_the_other_properties(actions in prop::collection::vec(action(), 1..300)) {
        run(LossPolicy::Claim, actions);
    }
}
