//! Fast failover's probing, the decision half: every probe interval a
//! standby probes each protected VIP's owner, suspects it after a silent
//! window (if other peers are still heard), and withdraws the suspicion
//! when it answers again. VIPs nobody owns are probed now and then for a
//! stray holder. Part of [`Core`]: pure, the probes themselves are effects.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tracing::{info, warn};

use super::core::{Core, Owner, STRAY_GRACE, STRAY_PROBE_EVERY};
use super::fast::Probe;
use super::state::State;
use super::{Effect, Observe};
use crate::addr::MacAddr;

impl Core {
    pub(super) fn probe_tick(&mut self, observe: &dyn Observe) {
        if !self.probing_on() {
            return;
        }
        for id in self.vips.keys().cloned().collect::<Vec<_>>() {
            let Some(v) = self.vips.get(&id) else {
                continue;
            };
            let (IpAddr::V4(v4), Some(ifname)) = (v.spec.cidr.addr, self.interface_of(v)) else {
                continue;
            };
            let owner = v.owner.clone();
            let standby = v.state == State::Standby;
            let others = owner.as_ref().is_some_and(|o| o.host != self.me());
            // The cheap tests first: an owner, or a standby of an
            // unprotected VIP, reads no map here.
            let probing = standby && others && self.fast_active(&id);
            if probing || owner.is_none() {
                let seen = observe.seen(v4);
                match owner {
                    Some(owner) => self.probe_owner(&id, ifname, v4, &owner, seen, observe),
                    None => self.probe_stray(&id, ifname, v4, seen),
                }
            } else if let Some(v) = self.vips.get_mut(&id)
                && v.probe.take().is_some_and(|p| p.suspected)
            {
                self.withdraw(&id);
            }
        }
    }

    pub(super) fn probe_owner(
        &mut self,
        id: &str,
        ifname: String,
        vip: Ipv4Addr,
        owner: &Owner,
        seen: Option<(MacAddr, Duration)>,
        observe: &dyn Observe,
    ) {
        let (now, fast) = (self.now, self.settings.fast);
        let window = fast.window();
        let failures = self.lease.failures;
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        v.stray = super::core::Stray::default();
        let mut withdraw = false;
        if v.probe.as_ref().map(|p| &p.owner) != Some(owner) {
            withdraw = v.probe.take().is_some_and(|p| p.suspected);
            v.probe = Some(Probe::new(owner.clone(), now));
        }
        let Some(p) = v.probe.as_mut() else { return };
        p.observe(seen);
        let dst = p.dst();
        // Decided on the probes sent so far: the one below counts from the
        // next interval on (only probes that went out count towards a
        // silence, see `Input::ProbeSent`).
        let silent = p.silent(now, window, fast.probe_misses);
        let suspected = p.suspected;
        let after = p.others_needed_after(now, window, fast.probe_interval);
        let quiet_ms = now
            .saturating_sub(p.last_reply.unwrap_or(p.since))
            .as_millis();
        if withdraw {
            self.withdraw(id);
        }
        self.out.push(Effect::Probe {
            id: id.to_owned(),
            ifname,
            dst,
            vip,
        });
        // While etcd does not answer us, a suspicion could not be written
        // now, and the owner has likely self-fenced (unbound on purpose):
        // its silence is no evidence.
        if silent && !suspected && failures == 0 {
            if observe.other_peer_heard_after(&owner.host, after) {
                warn!(vip = %id, owner = %owner.host, window_ms = window.as_millis(), quiet_ms, ?dst, "owner does not answer ARP probes while other peers are heard: suspecting it");
                if let Some(p) = self.probe_mut(id) {
                    p.suspected = true;
                }
                self.suspect(id, owner.lease);
            } else if let Some(p) = self.probe_mut(id)
                && !p.isolated_logged
            {
                p.isolated_logged = true;
                info!(vip = %id, owner = %owner.host, "owner does not answer ARP probes, but no other peer is heard either: our own link may be down; not suspecting");
            }
        } else if !silent && suspected {
            info!(vip = %id, owner = %owner.host, "owner answers ARP probes again: suspicion withdrawn");
            if let Some(p) = self.probe_mut(id) {
                p.suspected = false;
            }
            self.withdraw(id);
        }
    }

    pub(super) fn probe_mut(&mut self, id: &str) -> Option<&mut Probe> {
        self.vips.get_mut(id).and_then(|v| v.probe.as_mut())
    }

    /// A VIP without an owner for a while: a broadcast probe every second;
    /// an answer means a stray holder.
    pub(super) fn probe_stray(
        &mut self,
        id: &str,
        ifname: String,
        vip: Ipv4Addr,
        seen: Option<(MacAddr, Duration)>,
    ) {
        let now = self.now;
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        if v.probe.take().is_some_and(|p| p.suspected) {
            self.withdraw(id);
        }
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        let since = *v.stray.ownerless_since.get_or_insert(now);
        if now.saturating_sub(since) < STRAY_GRACE {
            return;
        }
        if let (Some((mac, at)), Some(probed)) = (seen, v.stray.probed_at)
            && at >= probed
            && v.stray.reported != Some(mac)
        {
            v.stray.reported = Some(mac);
            v.stray.count += 1;
            warn!(vip = %id, mac = %mac, strays = v.stray.count, "stray holder: a host answers for this VIP while etcd says nobody owns it");
        }
        if v.stray
            .probed_at
            .is_none_or(|t| now.saturating_sub(t) >= STRAY_PROBE_EVERY)
        {
            v.stray.probed_at = Some(now);
            self.out.push(Effect::Probe {
                id: id.to_owned(),
                ifname,
                dst: None,
                vip,
            });
        }
    }
}
