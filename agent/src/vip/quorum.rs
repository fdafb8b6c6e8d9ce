//! The data plane and the other hosts, the decision half: the eBPF
//! watcher's view of who answers for a VIP, conflicts, the hosts' state and
//! suspect keys, and when their suspicions make a quorum that revokes an
//! owner. Part of [`Core`]: pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tracing::warn;

use super::core::{Binding, Core, Owner, Vip};
use super::fast::{FastFailover, revoke_due};
use super::state::State;
use super::{Effect, WriteWhy};
use crate::addr::MacAddr;
use crate::registry::{MemberKey, Mode};

impl Core {
    /// Attaches the watcher to the VIP's interface ahead of any election,
    /// so binding only has to update a map, and (unless this host holds it)
    /// tells the program the VIP is known but not ours.
    pub(super) fn watch(&mut self, v: &Vip, held: bool) {
        if !self.watcher {
            return;
        }
        if let Some(ifname) = self.interface_of(v) {
            self.out.push(Effect::AttachWatcher { ifname });
        }
        if let (Some(v4), false) = (v.v4(), held) {
            let owner = self.owner_mac(v);
            self.out.push(Effect::SetWatched {
                ip: v4,
                ours: None,
                owner,
            });
        }
    }

    /// The MAC another host published as the VIP's owner (`None`: nobody
    /// else owns it, or its owner published none).
    pub(super) fn owner_mac(&self, v: &Vip) -> Option<MacAddr> {
        v.owner
            .as_ref()
            .filter(|o| o.host != self.me())
            .and_then(|o| o.mac)
    }

    /// The eBPF watcher finished loading: watch the VIPs already held.
    pub(super) fn watcher_ready(&mut self) {
        self.watcher = true;
        let held: Vec<(Ipv4Addr, Binding)> = self
            .vips
            .values()
            .filter(|v| v.state == State::Activated)
            .filter_map(|v| Some((v.v4()?, v.binding.clone()?)))
            .collect();
        for (v4, b) in held {
            self.out.push(Effect::AttachWatcher { ifname: b.ifname });
            self.out.push(Effect::SetWatched {
                ip: v4,
                ours: Some(b.mac),
                owner: None,
            });
        }
        let known: Vec<Vip> = self.vips.values().cloned().collect();
        for v in &known {
            self.watch(v, v.state == State::Activated);
        }
    }

    /// Someone else claims a VIP we hold: re-announce at once, count it.
    pub(super) fn conflict(&mut self, ip: Ipv4Addr, foreign_mac: MacAddr, our_mac: MacAddr) {
        let ip = IpAddr::V4(ip);
        let Some((id, v)) = self.vips.iter_mut().find(|(_, v)| v.spec.cidr.addr == ip) else {
            return;
        };
        if v.state != State::Activated {
            return;
        }
        v.conflicts += 1;
        warn!(
            vip = %id,
            foreign_mac = %foreign_mac,
            our_mac = %our_mac,
            conflicts = v.conflicts,
            "vip conflict: another host claims our address; re-announcing"
        );
        if let (Some(b), Mode::L2) = (&v.binding, v.spec.record.mode) {
            // Now, and once more after the program's per-VIP rate limit: a
            // claim that came in right behind this one (a GARP request and
            // its reply) raised no event of its own, and must not have the
            // last word with the clients.
            self.out.push(Effect::Announce {
                id: id.clone(),
                ifname: b.ifname.clone(),
                mac: our_mac,
                ip,
                count: 2,
                interval: Duration::from_nanos(linkmesh_common::CONFLICT_INTERVAL_NS)
                    + Duration::from_millis(10),
                refresh: self.settings.garp_refresh,
            });
        }
    }

    /// The VIP's eligible standbys other than `owner`: hosts whose state
    /// key says STANDBY and that the record does not exclude.
    pub(super) fn eligible(&self, id: &str, owner: Option<&str>) -> BTreeSet<String> {
        let Some(v) = self.vips.get(id) else {
            return BTreeSet::new();
        };
        self.members
            .get(id)
            .map(|m| {
                m.states
                    .iter()
                    .filter(|(h, s)| {
                        **s == State::Standby
                            && Some(h.as_str()) != owner
                            && !v.spec.record.excluded_nodes.contains(*h)
                    })
                    .map(|(h, _)| h.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether fast failover protects `id` right now.
    #[must_use]
    pub fn fast_active(&self, id: &str) -> bool {
        let owner = self
            .vips
            .get(id)
            .and_then(|v| v.owner.as_ref().map(|o| o.host.clone()));
        self.settings
            .fast
            .active(self.eligible(id, owner.as_deref()).len())
    }

    /// A per-host key of a VIP changed (`value` `None`: deleted).
    pub(super) fn member(&mut self, key: &MemberKey) {
        let (id, kind) = (key.id.as_str(), key.kind.as_str());
        if self.set_member(key) {
            self.publish_members(id);
        }
        if kind == "state" {
            self.track_preferred(id);
        }
        self.check_quorum(id);
    }

    /// Records a per-host key; returns whether the hosts taking part in
    /// the VIP (those with a state key) changed.
    pub(super) fn set_member(&mut self, key: &MemberKey) -> bool {
        let (id, host, value) = (&key.id, &key.host, key.value.as_deref());
        let m = self.members.entry(id.clone()).or_default();
        let mut joined_or_left = false;
        match key.kind.as_str() {
            "state" => match value.and_then(State::parse) {
                Some(state) => {
                    joined_or_left = m.states.insert(host.clone(), state).is_none();
                    m.leases.insert(host.clone(), key.lease);
                }
                None => {
                    joined_or_left = m.states.remove(host).is_some();
                    m.leases.remove(host);
                }
            },
            "suspect" => match value.and_then(|v| v.parse::<i64>().ok()) {
                Some(lease) => {
                    m.suspects.insert(host.to_owned(), lease);
                }
                None => {
                    m.suspects.remove(host);
                }
            },
            _ => {}
        }
        if m.states.is_empty() && m.suspects.is_empty() {
            self.members.remove(id);
        }
        joined_or_left
    }

    /// Tells the heartbeats who takes part in `id` (they pick partners
    /// among them).
    pub(super) fn publish_members(&mut self, id: &str) {
        let hosts = self
            .members
            .get(id)
            .map(|m| m.states.keys().cloned().collect())
            .unwrap_or_default();
        self.out.push(Effect::VipMembers {
            id: id.to_owned(),
            hosts,
        });
    }

    /// When a quorum of eligible standbys suspects the owner's lease, the
    /// owner key is deleted, guarded by that lease (a stale decision can
    /// never touch a new owner's key), and the lease revoked.
    pub(super) fn check_quorum(&mut self, id: &str) {
        let Some(v) = self.vips.get(id) else { return };
        let Some(Owner {
            host: owner, lease, ..
        }) = v.owner.clone()
        else {
            return;
        };
        if v.state != State::Standby || owner == self.me() || v.revoked == Some(lease) {
            return;
        }
        let eligible = self.eligible(id, Some(&owner));
        let empty = BTreeMap::new();
        let suspects = self.members.get(id).map_or(&empty, |m| &m.suspects);
        if !revoke_due(&self.settings.fast, &eligible, suspects, lease) {
            return;
        }
        let agreeing: Vec<String> = suspects
            .iter()
            .filter(|(h, l)| **l == lease && eligible.contains(*h))
            .map(|(h, _)| h.clone())
            .collect();
        let takeover = self.may_take_over(id).then(|| {
            let ifname = self.vips.get(id).and_then(|v| self.interface_of(v));
            (self.lease.id, ifname)
        });
        if let Some(v) = self.vips.get_mut(id) {
            v.revoked = Some(lease);
        }
        self.out.push(Effect::Revoke {
            id: id.to_owned(),
            owner,
            lease,
            suspects: agreeing,
            takeover,
        });
    }

    /// Whether this host, revoking `id`'s owner, may take the key over at
    /// once: it could contend now (a healthy standby on a live lease, not
    /// barred, with carrier, out of any cooldown, as its group allows), and
    /// no other host is preferred (the preferred host keeps its head start).
    fn may_take_over(&self, id: &str) -> bool {
        let Some(v) = self.vips.get(id) else {
            return false;
        };
        v.state == State::Standby
            && self.lease.id != 0
            && self.lease.failures == 0
            && !self.barred(v)
            && !self.without_carrier(v)
            && v.cooldown_until.is_none_or(|t| self.now >= t)
            && !self.preferred_elsewhere(v)
            && self.group_allows(id)
    }

    /// Writes our suspect key for `id`: the owner lease we suspect.
    pub(super) fn suspect(&mut self, id: &str, owner_lease: i64) {
        if self.lease.id == 0 {
            return;
        }
        self.out.push(Effect::Write {
            id: id.to_owned(),
            why: WriteWhy::Suspect {
                owner_lease,
                stale_after: self.settings.fast.window(),
            },
            lease: self.lease.id,
        });
    }

    pub(super) fn withdraw(&mut self, id: &str) {
        self.out.push(Effect::Withdraw { id: id.to_owned() });
    }

    /// Whether fast failover is on at all (the watcher loaded, not `off`).
    pub(super) fn probing_on(&self) -> bool {
        self.watcher && self.settings.fast.mode != FastFailover::Off
    }
}
