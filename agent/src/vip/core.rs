//! The floating-IP decisions, pure: [`Core::step`] takes one input (a
//! verified record, an owner key, a health result, a timer, the result of
//! an earlier effect), the time, and what this host observes, and returns
//! the effects to run, in order. Nothing here talks to etcd, the kernel or
//! a socket; `run` does, and feeds the results back as inputs.
//!
//! Time is monotonic (`CLOCK_MONOTONIC`, the clock the eBPF programs
//! stamp), as a [`Duration`] since boot.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::fast::Probe;
use super::state::{Event, State, next};
use super::{Effect, Input, Observe, Outcome, Settings, WriteWhy};
use crate::addr::MacAddr;
pub use crate::registry::Owner;
use crate::registry::{ValidVip, VipChange, VipSnapshot};

/// A VIP left without an owner this long is probed for a stray holder.
pub(super) const STRAY_GRACE: Duration = Duration::from_secs(1);
/// Stray probes go out this often.
pub(super) const STRAY_PROBE_EVERY: Duration = Duration::from_secs(1);

/// The ownership lease as the lease keeper last reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// 0 while there is none.
    pub id: i64,
    /// Until when the lease is certainly alive (monotonic).
    pub deadline: Duration,
    /// Consecutive failed keepalives.
    pub failures: u32,
}

/// Where a VIP's address is bound on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub ifindex: u32,
    pub ifname: String,
    pub mac: MacAddr,
}

/// Looking for a host that answers for a VIP nobody owns.
#[derive(Clone, Debug, Default)]
pub(super) struct Stray {
    /// When the VIP was first seen without an owner.
    pub(super) ownerless_since: Option<Duration>,
    /// When the last stray probe went out.
    pub(super) probed_at: Option<Duration>,
    /// The stray last reported (reported once per MAC and episode).
    pub(super) reported: Option<MacAddr>,
    pub(super) count: u64,
}

/// One VIP on this host.
#[derive(Clone, Debug)]
pub struct Vip {
    pub spec: ValidVip,
    pub state: State,
    pub owner: Option<Owner>,
    pub(super) fails: u32,
    pub(super) cooldown_until: Option<Duration>,
    pub(super) contend_at: Option<Duration>,
    /// Set while the address is bound here.
    pub binding: Option<Binding>,
    /// Unbound by self-fencing (recovers when etcd answers again).
    pub(super) fenced: bool,
    pub conflicts: u64,
    /// Fast failover: the probing of the current owner (standbys only).
    pub(super) probe: Option<Probe>,
    /// The owner lease this host last tried to revoke.
    pub(super) revoked: Option<i64>,
    /// Since when the preferred host has stood by (preemption).
    pub(super) preferred_since: Option<Duration>,
    pub(super) stray: Stray,
    /// Our owner key, as etcd has it, names no MAC (it was handed over to
    /// us): once bound, we put ours in.
    pub(super) mac_unpublished: bool,
    pub transitions: u64,
    pub health_passed: u64,
    pub health_failed: u64,
    pub restores: u64,
}

impl Vip {
    pub(super) fn new(spec: ValidVip) -> Self {
        Self {
            spec,
            state: State::Booting,
            owner: None,
            fails: 0,
            cooldown_until: None,
            contend_at: None,
            binding: None,
            fenced: false,
            conflicts: 0,
            probe: None,
            revoked: None,
            preferred_since: None,
            stray: Stray::default(),
            mac_unpublished: false,
            transitions: 0,
            health_passed: 0,
            health_failed: 0,
            restores: 0,
        }
    }

    /// Whether this host suspects the VIP's owner right now.
    #[must_use]
    pub fn suspects_owner(&self) -> bool {
        self.probe.as_ref().is_some_and(|p| p.suspected)
    }

    /// Stray holders seen while nobody owned the VIP.
    #[must_use]
    pub fn strays(&self) -> u64 {
        self.stray.count
    }

    pub(super) fn addr(&self) -> IpAddr {
        self.spec.cidr.addr
    }

    pub(super) fn v4(&self) -> Option<Ipv4Addr> {
        match self.addr() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }
}

/// The per-host keys of one VIP, as etcd has them.
#[derive(Clone, Debug, Default)]
pub struct Members {
    pub states: BTreeMap<String, State>,
    /// Host -> the lease its state key is on (where a handover puts the
    /// owner key).
    pub leases: BTreeMap<String, i64>,
    /// Host -> the owner lease it suspects.
    pub suspects: BTreeMap<String, i64>,
}

/// Every decision about this host's floating IPs, and the state they need.
pub struct Core {
    pub(super) settings: Settings,
    pub(super) vips: BTreeMap<String, Vip>,
    pub(super) lease: Lease,
    /// What this host last wrote to its state key of each VIP.
    written: BTreeMap<String, (State, i64)>,
    pub(super) members: BTreeMap<String, Members>,
    /// Whether the eBPF VIP watcher is loaded.
    pub(super) watcher: bool,
    /// The registered hosts' underlay addresses.
    host_addresses: BTreeSet<IpAddr>,
    /// Interfaces without carrier (down, or the link lost): a VIP on one
    /// is given up at once and not contended for until it is back.
    pub(super) no_carrier: BTreeSet<String>,
    /// The effects of the step under way.
    pub(super) out: Vec<Effect>,
    /// The step's transitions, for the notify hooks (told last).
    notices: Vec<Effect>,
    /// The time of the step under way.
    pub(super) now: Duration,
}

impl Core {
    #[must_use]
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            vips: BTreeMap::new(),
            lease: Lease {
                id: 0,
                deadline: Duration::ZERO,
                failures: 0,
            },
            written: BTreeMap::new(),
            members: BTreeMap::new(),
            watcher: false,
            host_addresses: BTreeSet::new(),
            no_carrier: BTreeSet::new(),
            out: Vec::new(),
            notices: Vec::new(),
            now: Duration::ZERO,
        }
    }

    /// Takes one input at monotonic time `now`; returns the effects to run,
    /// in order.
    pub fn step(&mut self, input: Input, now: Duration, observe: &dyn Observe) -> Vec<Effect> {
        self.now = now;
        match input {
            Input::Registry(VipChange::Snapshot(snapshot)) => self.snapshot(*snapshot),
            Input::Registry(VipChange::Record(id, Some(spec))) => self.upsert(&id, *spec),
            Input::Registry(VipChange::Record(id, None)) => self.remove(&id),
            Input::Registry(VipChange::Owner(id, owner)) => self.owner_read(&id, owner),
            Input::Registry(VipChange::Failover(id, host)) => self.failover(&id, &host),
            Input::Registry(VipChange::BogusOwner { id, revision }) => {
                self.bogus_owner(&id, revision);
            }
            Input::Registry(VipChange::Member(m)) => {
                self.member(&m);
            }
            Input::Health { id, ok, detail } => self.health(&id, ok, &detail),
            Input::Conflict {
                ip,
                foreign_mac,
                our_mac,
            } => self.conflict(ip, foreign_mac, our_mac),
            Input::WatcherReady => self.watcher_ready(),
            Input::Lease(lease) => self.lease_changed(lease),
            Input::Tick => {
                self.contend_due();
                self.preempt_due();
                self.fence();
            }
            Input::ProbeTick => self.probe_tick(observe),
            Input::Bound { id, binding, added } => self.bound(&id, binding, added),
            Input::BindFailed { id, cause } => self.fault(&id, cause),
            Input::Contended { id, lease, outcome } => self.contended(&id, lease, outcome),
            Input::Revoked {
                id,
                took_over: true,
                ..
            } => {
                let lease = self.lease.id;
                info!(vip = %id, "took the owner key over from the revoked owner");
                self.set_owner(&id, Some(Owner::mine(self.me().to_owned(), lease)));
            }
            Input::Revoked { id, deleted, .. } => {
                if deleted {
                    // Contend now rather than after the watch echoes the delete.
                    self.set_owner(&id, None);
                }
            }
            Input::ProbeSent { id } => {
                if let Some(p) = self.vips.get_mut(&id).and_then(|v| v.probe.as_mut()) {
                    p.sent();
                }
            }
            Input::AddressGone { id } => self.address_gone(&id),
            Input::Stop => self.shutdown(),
            Input::Hosts(addresses) => self.hosts_changed(addresses),
            Input::Carrier { ifname, up } => self.carrier(&ifname, up),
        }
        self.align_groups();
        self.publish();
        let mut out = std::mem::take(&mut self.out);
        out.append(&mut self.notices);
        out
    }

    /// The VIPs, for the status the API shows.
    #[must_use]
    pub fn vips(&self) -> &BTreeMap<String, Vip> {
        &self.vips
    }

    #[must_use]
    pub fn lease(&self) -> Lease {
        self.lease
    }

    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether any VIP is defined (without one, ticks have nothing to do).
    #[must_use]
    pub fn has_vips(&self) -> bool {
        !self.vips.is_empty()
    }

    /// When a contention is due next (the earliest), if any.
    #[must_use]
    pub fn next_due(&self) -> Option<Duration> {
        self.vips.values().filter_map(|v| v.contend_at).min()
    }

    /// The VIPs held and bound here (all, or those in `only`), with where
    /// they are bound: what to check against the kernel's addresses.
    #[must_use]
    pub fn held(&self, only: Option<&[String]>) -> Vec<(String, u32, IpAddr)> {
        self.vips
            .iter()
            .filter(|(id, v)| v.state == State::Activated && only.is_none_or(|o| o.contains(id)))
            .filter_map(|(id, v)| Some((id.clone(), v.binding.as_ref()?.ifindex, v.addr())))
            .collect()
    }

    /// The held VIPs whose binding a link or address change may concern.
    #[must_use]
    pub fn concerned(&self, event: &crate::kernel::events::KernelEvent) -> Vec<String> {
        use crate::kernel::events::KernelEvent;
        self.vips
            .iter()
            .filter(|(_, v)| {
                let Some(b) = &v.binding else {
                    return false;
                };
                match event {
                    KernelEvent::AddressRemoved { ifindex, addr } => {
                        *ifindex == b.ifindex && *addr == v.addr()
                    }
                    KernelEvent::LinkRemoved { index, name }
                    | KernelEvent::LinkChanged { index, name, .. } => {
                        *index == b.ifindex || name.as_deref() == Some(b.ifname.as_str())
                    }
                    KernelEvent::FdbRemoved { .. } | KernelEvent::NeighbourRemoved { .. } => false,
                }
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(super) fn me(&self) -> &str {
        &self.settings.hostname
    }

    pub(super) fn ids_in(&self, state: State) -> Vec<String> {
        self.vips
            .iter()
            .filter(|(_, v)| v.state == state)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(super) fn all_ids(&self) -> Vec<String> {
        self.vips.keys().cloned().collect()
    }

    /// Writes every VIP's state to `<prefix>/vips/<ID>/state/<host>` on our
    /// lease when it changed (for `ip ls` and the peers' quorums).
    pub(super) fn publish(&mut self) {
        if self.lease.id == 0 {
            return;
        }
        let lease = self.lease.id;
        let changed: Vec<(String, State)> = self
            .vips
            .iter()
            .filter(|(id, v)| self.written.get(*id) != Some(&(v.state, lease)))
            .map(|(id, v)| (id.clone(), v.state))
            .collect();
        for (id, state) in changed {
            self.written.insert(id.clone(), (state, lease));
            self.out.push(Effect::Write {
                id,
                why: WriteWhy::State(state),
                lease,
            });
        }
    }

    pub(super) fn transition(&mut self, id: &str, event: Event, cause: &str) -> bool {
        let Some(v) = self.vips.get_mut(id) else {
            return false;
        };
        match next(v.state, event) {
            Some(to) => {
                info!(vip = %id, from = %v.state, to = %to, ?event, cause, "vip state");
                self.notices.push(Effect::Notify {
                    id: id.to_owned(),
                    from: v.state,
                    to,
                    cause: cause.to_owned(),
                });
                v.state = to;
                v.transitions += 1;
                true
            }
            None => {
                debug!(vip = %id, state = %v.state, ?event, "event ignored in this state");
                false
            }
        }
    }

    pub(super) fn snapshot(&mut self, s: VipSnapshot) {
        // Failover requests first, as the keys were read.
        for (id, host) in &s.failovers {
            self.failover(id, host);
        }
        // (A record overwritten with junk is still there: the registry
        // keeps its last verified version.)
        let gone: Vec<String> = self
            .vips
            .keys()
            .filter(|id| !s.records.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id);
        }
        for (id, spec) in s.records {
            self.upsert(&id, spec);
        }
        for id in self.all_ids() {
            self.owner_read(&id, s.owners.get(&id).cloned());
        }
        for (id, revision) in s.bogus_owners {
            self.bogus_owner(&id, revision);
        }
        let mut ids: BTreeSet<String> = std::mem::take(&mut self.members).into_keys().collect();
        for m in s.members {
            self.set_member(&m);
            ids.insert(m.id);
        }
        for id in ids {
            self.publish_members(&id);
            self.check_quorum(&id);
        }
    }

    /// An owner key that does not verify (forged, moved, unsigned, on no
    /// lease): there is no owner, and the key goes (only at that revision,
    /// so a real owner's key written since is never touched).
    pub(super) fn bogus_owner(&mut self, id: &str, revision: i64) {
        if !self.vips.contains_key(id) {
            return;
        }
        warn!(vip = %id, revision, "the owner key does not verify: no owner; removing it");
        self.out.push(Effect::ClearOwner {
            id: id.to_owned(),
            revision,
        });
        self.set_owner(id, None);
    }

    pub(super) fn failover(&mut self, id: &str, host: &str) {
        if host != self.me()
            || self
                .vips
                .get(id)
                .is_none_or(|v| v.state != State::Activated)
        {
            return;
        }
        info!(vip = %id, "failover requested: releasing");
        // A VIP of a group takes its group along, the leader first.
        let ids = match self.vips[id].spec.record.group.clone() {
            Some(g) => self.group_members(&g),
            None => vec![id.to_owned()],
        };
        let held: Vec<String> = ids
            .into_iter()
            .filter(|m| {
                self.vips
                    .get(m)
                    .is_some_and(|v| v.state == State::Activated)
            })
            .collect();
        self.release_together(&held);
        let until = self.now + self.settings.cooldown;
        for id in held {
            if let Some(v) = self.vips.get_mut(&id) {
                v.cooldown_until = Some(until);
            }
            self.transition(&id, Event::Demoted, "failover");
        }
    }

    pub(super) fn upsert(&mut self, id: &str, spec: ValidVip) {
        if let Some(v) = self.vips.get_mut(id) {
            if v.spec.record == spec.record {
                return;
            }
            if v.spec.cidr == spec.cidr
                && v.spec.record.interface == spec.record.interface
                && v.spec.record.mode == spec.record.mode
            {
                // Checks, exclusions, priority or ports changed: keep the
                // binding, unless this host is now excluded (it must never
                // hold it).
                let held = v.state == State::Activated;
                if v.spec.record.ports != spec.record.ports
                    && let Some(b) = &v.binding
                {
                    self.out.push(Effect::MapPorts {
                        id: id.to_owned(),
                        ip: spec.cidr.addr,
                        ifname: Some(b.ifname.clone()),
                        ports: spec.record.ports.clone(),
                    });
                }
                v.spec = spec;
                let checks = self.checks_of(&self.vips[id]);
                self.out.push(Effect::StartChecks {
                    id: id.to_owned(),
                    checks,
                });
                if held && self.barred(&self.vips[id]) {
                    info!(vip = %id, "this host is now excluded: releasing");
                    self.release(id, true);
                    self.transition(id, Event::Demoted, "excluded");
                }
                self.track_preferred(id);
                self.evaluate(id);
                return;
            }
            self.remove(id);
        }
        info!(vip = %id, address = %spec.cidr, "vip defined");
        let vip = Vip::new(spec);
        self.watch(&vip, false);
        self.out.push(Effect::StartChecks {
            id: id.to_owned(),
            checks: self.checks_of(&vip),
        });
        self.vips.insert(id.to_owned(), vip);
        self.track_preferred(id);
    }

    pub(super) fn remove(&mut self, id: &str) {
        if self.written.remove(id).is_some() {
            self.out.push(Effect::DeleteState { id: id.to_owned() });
        }
        if self
            .vips
            .get(id)
            .is_some_and(|v| v.state == State::Activated)
        {
            self.release(id, true);
        }
        if let Some(v) = self.vips.remove(id) {
            if let (true, Some(v4)) = (self.watcher, v.v4()) {
                self.out.push(Effect::ForgetWatched { ip: v4 });
            }
            if v.suspects_owner() {
                self.withdraw(id);
            }
            self.out.push(Effect::StopChecks { id: id.to_owned() });
            self.out.push(Effect::StopAnnouncing { id: id.to_owned() });
            info!(vip = %id, "vip removed");
        }
    }

    pub(super) fn excluded(&self, v: &Vip) -> bool {
        v.spec.record.excluded_nodes.iter().any(|h| h == self.me())
    }

    /// Whether this host must never hold `v`: the record excludes it, or
    /// the address is a registered host's own underlay address (holding
    /// it would take that host's address away).
    pub(super) fn barred(&self, v: &Vip) -> bool {
        self.excluded(v) || self.host_addresses.contains(&v.spec.cidr.addr)
    }

    /// The registered hosts' underlay addresses changed: a VIP on one of
    /// them is given up and never contended for.
    pub(super) fn hosts_changed(&mut self, addresses: BTreeSet<IpAddr>) {
        let before: BTreeSet<String> = self.barred_by_hosts();
        self.host_addresses = addresses;
        for id in self.barred_by_hosts().difference(&before) {
            warn!(vip = %id, "the VIP's address is a registered host's underlay address: this host never takes it");
            if self
                .vips
                .get(id)
                .is_some_and(|v| v.state == State::Activated)
            {
                self.release(id, true);
                self.transition(id, Event::Demoted, "the address is a host's");
            }
        }
        for id in self.all_ids() {
            self.evaluate(&id);
        }
    }

    fn barred_by_hosts(&self) -> BTreeSet<String> {
        self.vips
            .iter()
            .filter(|(_, v)| self.host_addresses.contains(&v.spec.cidr.addr))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The checks this host runs for `v`: none where the record excludes
    /// it (it never holds the VIP, so its health does not matter, and an
    /// excluded host runs no script of the VIP's).
    pub(super) fn checks_of(&self, v: &Vip) -> Vec<crate::registry::Check> {
        if self.barred(v) {
            Vec::new()
        } else {
            v.spec.checks.clone()
        }
    }

    pub(super) fn interface_of(&self, v: &Vip) -> Option<String> {
        v.spec
            .record
            .interface
            .clone()
            .or_else(|| self.settings.default_interface.clone())
    }

    /// Schedules contention when this host may take a free VIP.
    pub(super) fn evaluate(&mut self, id: &str) {
        let lease_ok = self.lease.id != 0 && self.lease.failures == 0;
        let now = self.now;
        let Some(v) = self.vips.get(id) else { return };
        let eligible = v.state == State::Standby
            && v.owner.is_none()
            && lease_ok
            && !self.barred(v)
            && !self.without_carrier(v)
            && v.cooldown_until.is_none_or(|t| now >= t)
            && self.group_allows(id);
        let at = eligible.then(|| {
            now + if self.preferred_elsewhere(v) {
                self.settings.contend_delay
            } else {
                Duration::ZERO
            }
        });
        if let Some(v) = self.vips.get_mut(id)
            && (v.contend_at.is_none() || at.is_none())
        {
            v.contend_at = at;
        }
    }

    /// Whether `v`'s record prefers another host than this one.
    pub(super) fn preferred_elsewhere(&self, v: &Vip) -> bool {
        v.spec
            .record
            .priority
            .as_deref()
            .is_some_and(|p| p != self.me())
    }

    pub(super) fn contend_due(&mut self) {
        let now = self.now;
        let due: Vec<String> = self
            .vips
            .iter()
            .filter(|(_, v)| v.contend_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(v) = self.vips.get_mut(&id) {
                v.contend_at = None;
            }
            self.evaluate(&id);
            let still = self.vips.get(&id).is_some_and(|v| v.contend_at.is_some());
            if let Some(v) = self.vips.get_mut(&id) {
                v.contend_at = None;
            }
            if still {
                let ifname = self.vips.get(&id).and_then(|v| self.interface_of(v));
                self.out.push(Effect::Contend {
                    id,
                    lease: self.lease.id,
                    ifname,
                });
            }
        }
    }

    pub(super) fn contended(&mut self, id: &str, lease: i64, outcome: Outcome) {
        let me = self.me().to_owned();
        match outcome {
            Outcome::Won => {
                info!(vip = %id, "won the election");
                self.set_owner(id, Some(Owner::mine(me, lease)));
            }
            Outcome::StillOurs if lease != 0 => {
                // Our key, on our live lease: we self-fenced while etcd could
                // not confirm the lease (a leader election, say), and etcd
                // kept it. The VIP is still ours; nobody else may take it.
                info!(vip = %id, "the owner key is still ours (the lease outlived the fence): taking the VIP up again");
                self.set_owner(id, Some(Owner::mine(me, lease)));
            }
            Outcome::StillOurs | Outcome::Lost => {
                debug!(vip = %id, "another host won the election");
            }
            Outcome::Failed => {}
        }
    }
}
