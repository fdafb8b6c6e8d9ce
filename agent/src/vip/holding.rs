//! Holding a floating IP, the decision half: taking it up when the owner
//! key is ours, giving it up on a health failure, a fault, a lost lease or
//! a fence, and what etcd's loss policies do. Part of [`Core`]: pure.

use std::net::IpAddr;

use tracing::{debug, info, warn};

use super::Effect;
use super::core::{Binding, Core, Lease, Owner};
use super::state::{Event, State};
use crate::registry::Mode;

impl Core {
    pub(super) fn set_owner(&mut self, id: &str, owner: Option<Owner>) {
        let lease = self.lease.id;
        let mine = owner
            .as_ref()
            .is_some_and(|o| o.is(self.me(), lease) && lease != 0);
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        let moved =
            v.owner.as_ref().map(|o| (&o.host, o.mac)) != owner.as_ref().map(|o| (&o.host, o.mac));
        v.owner = owner;
        let state = v.state;
        // A standby's watcher records only the new owner's replies.
        let watch = (moved && self.watcher && state != State::Activated)
            .then(|| v.v4())
            .flatten();
        if let Some(v4) = watch {
            let owner = self.owner_mac(&self.vips[id]);
            self.out.push(Effect::SetWatched {
                ip: v4,
                ours: None,
                owner,
            });
        }
        let barred = self.barred(&self.vips[id]) || self.without_carrier(&self.vips[id]);
        match (state, mine) {
            // Ours, but this host may not hold it (excluded, a host's own
            // address, or its interface has no carrier; or a late echo of
            // a key it gave up): give the key up.
            (State::Standby, true) if barred => self.release(id, false),
            (State::Standby, true) if self.transition(id, Event::Elected, "owner key is ours") => {
                self.bind(id);
            }
            (State::Activated, false) => {
                self.transition(id, Event::Demoted, "owner key is gone or someone else's");
                self.unbind(id);
            }
            // Ours but not fit to hold it: give it up.
            (State::Failing, true) => self.release(id, true),
            // Ours while booting (a restart within the TTL): decided once
            // the first health result is in.
            _ => {}
        }
        self.evaluate(id);
    }

    pub(super) fn health(&mut self, id: &str, ok: bool, detail: &str) {
        let fail_count = self.settings.fail_count;
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        if ok {
            v.health_passed += 1;
            v.fails = 0;
            if v.state == State::Booting || (v.state == State::Failing && !v.fenced) {
                let booting = v.state == State::Booting;
                self.transition(id, Event::HealthCheckSuccess, "health check passed");
                // If the key is already ours (a restart), this takes it up.
                let owner = self.vips.get(id).and_then(|v| v.owner.clone());
                if booting
                    && let Some(o) = &owner
                    && o.host != self.me()
                {
                    self.clear_leftover(id, &o.host);
                }
                self.set_owner(id, owner);
            }
            return;
        }
        v.health_failed += 1;
        v.fails += 1;
        let fails = v.fails;
        if fails < fail_count && v.state != State::Booting {
            debug!(vip = %id, fails, detail, "health check failed");
            return;
        }
        let was_active = v.state == State::Activated;
        if self.transition(id, Event::HealthCheckFail, detail) && was_active {
            self.give_up_with_group(id, "a VIP of its group failed its check");
        }
    }

    /// Unbinds (when `unbind`) and gives our owner key up, guarded by our
    /// lease so a new owner's key is never touched: to a successor (see
    /// [`Core::successor`]) if this host held the VIP, else deleted.
    pub(super) fn release(&mut self, id: &str, unbind: bool) {
        let successor = self.successor_if_held(id);
        if unbind {
            self.unbind(id);
        }
        self.give_key_up(id, successor);
    }

    /// Who gets `id`'s key when this host gives it up. Only a host that
    /// held the VIP names a successor: one that gives up a key it never
    /// bound (barred, failing) deletes it, so two unfit hosts never hand a
    /// key back and forth.
    pub(super) fn successor_if_held(&self, id: &str) -> Option<super::Successor> {
        let held = self.vips.get(id).is_some_and(|v| v.binding.is_some());
        held.then(|| self.successor(id)).flatten()
    }

    /// Gives our owner key of `id` up (to `successor`, or deleted).
    pub(super) fn give_key_up(&mut self, id: &str, successor: Option<super::Successor>) {
        self.out.push(Effect::Release {
            id: id.to_owned(),
            lease: self.lease.id,
            successor,
        });
        if let Some(v) = self.vips.get_mut(id) {
            v.owner = None;
        }
    }

    /// Whether `v` is (or, held, is bound) on interface `ifname`.
    fn on_interface(&self, v: &super::core::Vip, ifname: &str) -> bool {
        self.interface_of(v).as_deref() == Some(ifname)
            || v.binding.as_ref().is_some_and(|b| b.ifname == ifname)
    }

    /// Whether `v`'s interface (or, held, the one it is bound on) has no
    /// carrier.
    pub(super) fn without_carrier(&self, v: &super::core::Vip) -> bool {
        self.no_carrier.iter().any(|i| self.on_interface(v, i))
    }

    /// Whether `ifname`'s carrier, as the core knows it, differs from `up`
    /// (so that news of it is worth a step).
    #[must_use]
    pub fn carrier_news(&self, ifname: &str, up: bool) -> bool {
        self.no_carrier.contains(ifname) == up
    }

    /// Interface `ifname` gained or lost carrier. Lost: every VIP held on
    /// it is released at once (a guarded delete, so a healthy host takes
    /// over instead of this one holding a dead address until its lease
    /// runs out), and none on it is contended for. Back: they are.
    pub(super) fn carrier(&mut self, ifname: &str, up: bool) {
        let changed = if up {
            self.no_carrier.remove(ifname)
        } else {
            self.no_carrier.insert(ifname.to_owned())
        };
        if !changed {
            return;
        }
        let on_it: Vec<String> = self
            .vips
            .iter()
            .filter(|(_, v)| self.on_interface(v, ifname))
            .map(|(id, _)| id.clone())
            .collect();
        for id in on_it {
            let held = self
                .vips
                .get(&id)
                .is_some_and(|v| v.state == State::Activated);
            if up {
                info!(vip = %id, interface = %ifname, "the VIP's interface has carrier again: contending");
            } else if held {
                warn!(vip = %id, interface = %ifname, "the VIP's interface lost carrier: releasing it");
                self.release(&id, true);
                self.transition(&id, Event::Demoted, "carrier lost");
            }
            self.evaluate(&id);
        }
    }

    pub(super) fn bind(&mut self, id: &str) {
        let Some(v) = self.vips.get(id) else { return };
        let cidr = v.spec.cidr;
        let Some(ifname) = self.interface_of(v) else {
            warn!(vip = %id, "no interface for this VIP (set --vip-interface or the record's interface)");
            self.fault(id, "no interface");
            return;
        };
        if v.spec.record.mode == Mode::Route && self.settings.route_table.is_none() {
            warn!(vip = %id, "a routed VIP, and this host has no --route-table");
            self.fault(id, "no route table");
            return;
        }
        self.out.push(Effect::Bind {
            id: id.to_owned(),
            cidr,
            ifname,
        });
    }

    pub(super) fn bound(&mut self, id: &str, binding: Binding, added: bool) {
        let settings = &self.settings;
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        let ip = v.spec.cidr.addr;
        // The port maps before any client is told where the VIP is.
        if !v.spec.record.ports.is_empty() {
            self.out.push(Effect::MapPorts {
                id: id.to_owned(),
                ip,
                ifname: Some(binding.ifname.clone()),
                ports: v.spec.record.ports.clone(),
            });
        }
        if v.spec.record.mode == Mode::Route {
            // Routed: the BGP daemon tells the routers; nothing on the link.
            self.out.push(Effect::AddRoute {
                id: id.to_owned(),
                ip,
            });
            v.binding = Some(binding);
            self.publish_mac(id);
            return;
        }
        // Announce first: attaching the watcher can take milliseconds. A
        // new address is announced at least once; one that was already
        // there needs no burst, only the refresh.
        let count = if added { settings.garp_count.max(1) } else { 0 };
        self.out
            .push(if count > 0 || settings.garp_refresh.is_some() {
                Effect::Announce {
                    id: id.to_owned(),
                    ifname: binding.ifname.clone(),
                    mac: binding.mac,
                    ip,
                    count,
                    interval: settings.garp_interval,
                    refresh: settings.garp_refresh,
                }
            } else {
                Effect::StopAnnouncing { id: id.to_owned() }
            });
        if let (true, IpAddr::V4(v4)) = (self.watcher, ip) {
            // Watch for anyone else claiming it (the data plane is the truth).
            self.out.push(Effect::AttachWatcher {
                ifname: binding.ifname.clone(),
            });
            self.out.push(Effect::SetWatched {
                ip: v4,
                ours: Some(binding.mac),
                owner: None,
            });
        }
        v.binding = Some(binding);
        self.publish_mac(id);
    }

    /// Once bound under a key handed over to us (which names no MAC), puts
    /// the MAC we answer from in it, for the standbys' watchers.
    fn publish_mac(&mut self, id: &str) {
        let lease = self.lease.id;
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        let (true, Some(binding)) = (v.mac_unpublished, &v.binding) else {
            return;
        };
        v.mac_unpublished = false;
        self.out.push(Effect::PublishMac {
            id: id.to_owned(),
            lease,
            ifname: binding.ifname.clone(),
        });
    }

    /// The owner key as etcd has it (a watch event or a snapshot). Our own
    /// key naming no MAC was handed over to us; one we wrote ourselves
    /// (contention, takeover) already names it, so needs no second write.
    pub(super) fn owner_read(&mut self, id: &str, owner: Option<Owner>) {
        let lease = self.lease.id;
        let handed = owner
            .as_ref()
            .is_some_and(|o| o.mac.is_none() && lease != 0 && o.is(self.me(), lease));
        if let Some(v) = self.vips.get_mut(id) {
            v.mac_unpublished = handed;
        }
        self.set_owner(id, owner);
    }

    pub(super) fn unbind(&mut self, id: &str) {
        let Some(v) = self.vips.get(id) else {
            return;
        };
        let ifname = self.interface_of(v);
        let watched = self.watcher.then(|| v.v4()).flatten();
        self.out.push(Effect::StopAnnouncing { id: id.to_owned() });
        if let Some(v4) = watched {
            let owner = self.vips.get(id).and_then(|v| self.owner_mac(v));
            self.out.push(Effect::SetWatched {
                ip: v4,
                ours: None,
                owner,
            });
        }
        self.remove_address(id, ifname, None);
    }

    /// Removes `id`'s address from where it is bound, or else from
    /// `ifname` (after a restart, whatever is there).
    fn remove_address(&mut self, id: &str, ifname: Option<String>, leftover_of: Option<&str>) {
        let routes = self.settings.route_table.is_some();
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        let ip = v.spec.cidr.addr;
        // The route first (traffic stops coming), then the maps.
        if v.spec.record.mode == Mode::Route && routes {
            self.out.push(Effect::RemoveRoute {
                id: id.to_owned(),
                ip,
            });
        }
        if !v.spec.record.ports.is_empty() {
            self.out.push(Effect::MapPorts {
                id: id.to_owned(),
                ip,
                ifname: None,
                ports: Vec::new(),
            });
        }
        self.out.push(Effect::RemoveAddress {
            id: id.to_owned(),
            cidr: v.spec.cidr,
            at: v.binding.take(),
            ifname,
            leftover_of: leftover_of.map(str::to_owned),
        });
    }

    /// The address of a held VIP is gone from the kernel: bind it again.
    pub(super) fn address_gone(&mut self, id: &str) {
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        if v.state != State::Activated || v.binding.is_none() {
            return;
        }
        v.restores += 1;
        let ifname = v.binding.take().map(|b| b.ifname).unwrap_or_default();
        warn!(vip = %id, interface = %ifname, restores = v.restores, "the VIP's address is gone from the kernel (removed by hand or with its interface): restoring");
        // `Bind` finds the interface by name again (it may be a new one).
        self.bind(id);
    }

    /// At start, with another host owning `id`: removes the address if an
    /// earlier run of this agent left it bound (a crash cannot unbind), so
    /// this host's kernel stops answering for someone else's VIP.
    pub(super) fn clear_leftover(&mut self, id: &str, owner: &str) {
        let Some(v) = self.vips.get(id) else { return };
        let ifname = self.interface_of(v);
        self.remove_address(id, ifname, Some(owner));
    }

    pub(super) fn fault(&mut self, id: &str, cause: &str) {
        if self.transition(id, Event::Fault, cause) {
            self.release(id, true);
        }
    }

    pub(super) fn lease_changed(&mut self, lease: Lease) {
        let old = self.lease;
        self.lease = lease;
        if lease.id != old.id && old.id != 0 {
            // A new lease: every owner key on the old one is gone.
            for id in self.ids_in(State::Activated) {
                self.transition(&id, Event::Demoted, "lease lost");
                self.unbind(&id);
            }
        }
        // Keys on a re-attached lease are ours again; and once etcd answers
        // again, the owners it names hold again: a VIP claimed during the
        // outage (loss policy `claim`) goes back to its owner. (The watch
        // resumes where it was, so owner keys that did not change during
        // the outage bring no event that would say so.)
        if (lease.id != old.id && lease.id != 0) || (lease.failures == 0 && old.failures > 0) {
            let owners: Vec<(String, Option<Owner>)> = self
                .vips
                .iter()
                .map(|(id, v)| (id.clone(), v.owner.clone()))
                .collect();
            for (id, owner) in owners {
                self.set_owner(&id, owner);
            }
        }
        if lease.failures == 0 && old.failures > 0 {
            // etcd answers again. Silences seen during the outage may be
            // owners that fenced themselves: every probe starts afresh, and
            // suspicions are withdrawn, so a returning owner gets a full
            // window to answer before anyone can revoke it.
            for id in self.all_ids() {
                let withdraw = self
                    .vips
                    .get_mut(&id)
                    .and_then(|v| v.probe.take())
                    .is_some_and(|p| p.suspected);
                if withdraw {
                    self.withdraw(&id);
                }
            }
        }
        if lease.failures == 0 && lease.id != 0 {
            // etcd answers: fenced VIPs become eligible again.
            let fenced: Vec<String> = self
                .vips
                .iter()
                .filter(|(_, v)| v.fenced)
                .map(|(id, _)| id.clone())
                .collect();
            let fail_count = self.settings.fail_count;
            for id in fenced {
                let Some(v) = self.vips.get_mut(&id) else {
                    continue;
                };
                v.fenced = false;
                // Failing health checks during the outage keep it failing
                // (the next passed check brings it back).
                if v.fails < fail_count {
                    self.transition(&id, Event::HealthCheckSuccess, "etcd reachable again");
                }
            }
            for id in self.all_ids() {
                self.evaluate(&id);
            }
        }
        self.claim_if_lost();
    }

    /// `claim`: after `--keepalive-retry` failed keepalives, bind every
    /// eligible VIP nobody here holds (LinK's "at least one host" rule).
    pub(super) fn claim_if_lost(&mut self) {
        if self.settings.loss_policy != super::LossPolicy::Claim
            || self.lease.failures < self.settings.keepalive_retry
        {
            return;
        }
        let ids: Vec<String> = self
            .vips
            .iter()
            .filter(|(_, v)| {
                v.state == State::Standby && !self.barred(v) && !self.without_carrier(v)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            warn!(vip = %id, "etcd unreachable: claiming (loss policy claim)");
            if self.transition(&id, Event::Elected, "claim without etcd") {
                self.bind(&id);
            }
        }
    }

    /// `release`: unbind before the lease can expire.
    pub(super) fn fence(&mut self) {
        if self.settings.loss_policy != super::LossPolicy::Release || self.now < self.lease.deadline
        {
            return;
        }
        for id in self.ids_in(State::Activated) {
            warn!(vip = %id, "lease renewal overdue: self-fencing (unbinding before the lease can expire)");
            self.unbind(&id);
            if let Some(v) = self.vips.get_mut(&id) {
                v.fenced = true;
                v.owner = None;
            }
            self.transition(&id, Event::Fault, "self-fenced");
        }
    }

    /// Stopping: hand over everything held.
    pub(super) fn shutdown(&mut self) {
        for ids in self.by_group(self.ids_in(State::Activated)) {
            self.release_together(&ids);
        }
        for id in self.all_ids() {
            self.out.push(Effect::StopChecks { id });
        }
    }
}
