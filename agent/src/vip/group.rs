//! VIP groups: VIPs whose records name the same `group` move together.
//! The group has one election: its leader's (the VIP with the lowest id).
//! A host contends for a follower only while the leader's key is its own,
//! and for the leader only while it could hold every VIP of the group; a
//! follower held without the leader, or a leader held while a member
//! cannot be, is given up. Each VIP keeps its own owner key, so no group
//! rule can make two holders of one VIP. Part of [`Core`]: pure.

use std::collections::BTreeMap;

use super::core::Core;
use super::state::{Event, State};

impl Core {
    /// The group `id` belongs to, if any.
    fn group_of(&self, id: &str) -> Option<&str> {
        self.vips.get(id)?.spec.record.group.as_deref()
    }

    /// The VIPs of `group`, in id order: the first leads.
    pub(super) fn group_members(&self, group: &str) -> Vec<String> {
        self.vips
            .iter()
            .filter(|(_, v)| v.spec.record.group.as_deref() == Some(group))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether our lease holds `id`'s owner key.
    fn key_ours(&self, id: &str) -> bool {
        let lease = self.lease.id;
        lease != 0
            && self
                .vips
                .get(id)
                .and_then(|v| v.owner.as_ref())
                .is_some_and(|o| o.is(self.me(), lease))
    }

    /// Whether this host could take `id` now: healthy, not barred, with
    /// carrier.
    fn may_take(&self, id: &str) -> bool {
        self.vips.get(id).is_some_and(|v| {
            matches!(v.state, State::Standby | State::Activated)
                && !self.barred(v)
                && !self.without_carrier(v)
        })
    }

    /// Whether this host can certainly not hold `id`: failing, barred, or
    /// without carrier (not merely booting).
    fn cannot_hold(&self, id: &str) -> bool {
        self.vips
            .get(id)
            .is_none_or(|v| v.state == State::Failing || self.barred(v) || self.without_carrier(v))
    }

    /// Whether `id`'s group lets this host contend for it: a follower only
    /// while the leader's key is ours; a leader only while every member
    /// could be held here. A VIP without a group: always.
    pub(super) fn group_allows(&self, id: &str) -> bool {
        let Some(group) = self.group_of(id) else {
            return true;
        };
        let members = self.group_members(group);
        match members.first() {
            Some(leader) if leader == id => members.iter().all(|m| self.may_take(m)),
            Some(leader) => self.key_ours(leader),
            None => true,
        }
    }

    /// Keeps every group together after a step (see the module).
    pub(super) fn align_groups(&mut self) {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, v) in &self.vips {
            if let Some(g) = &v.spec.record.group {
                groups.entry(g.clone()).or_default().push(id.clone());
            }
        }
        for (group, ids) in groups {
            let Some((leader, followers)) = ids.split_first() else {
                continue;
            };
            let leader_held = self.vips[leader].state == State::Activated;
            if leader_held && ids.iter().any(|m| self.cannot_hold(m)) {
                tracing::warn!(vip = %leader, %group, "a VIP of its group cannot be held here: giving the group up");
                self.give_up_with_group(leader, "a VIP of its group cannot be held here");
                self.transition(
                    leader,
                    Event::Demoted,
                    "a VIP of its group cannot be held here",
                );
            }
            // Contention follows the group's rules as they change: a
            // leader once every member could be held, followers once the
            // leader is ours (`evaluate` asks `group_allows`).
            if self.vips[leader].state == State::Standby {
                self.evaluate(leader);
            }
            let leader_ours = self.key_ours(leader);
            for f in followers {
                let state = self.vips[f].state;
                if state == State::Activated && !leader_ours {
                    self.release(f, true);
                    self.transition(f, Event::Demoted, "its group's leader is not held here");
                } else if state == State::Standby {
                    self.evaluate(f);
                }
            }
        }
    }

    /// Gives up `id`, which this host held, and with it every other VIP of
    /// its group held here (demoted, for `cause`).
    pub(super) fn give_up_with_group(&mut self, id: &str, cause: &str) {
        let ids: Vec<String> = match self.group_of(id) {
            Some(g) => self.group_members(g),
            None => vec![id.to_owned()],
        };
        let held: Vec<String> = ids
            .into_iter()
            .filter(|m| m == id || self.vips[m].state == State::Activated)
            .collect();
        self.release_together(&held);
        for m in held.iter().filter(|m| *m != id) {
            self.transition(m, Event::Demoted, cause);
        }
    }

    /// Gives up `ids` (a group's, the leader first) together: every
    /// address is unbound before any key is given up, so a successor never
    /// holds one VIP of a group while this host still holds another.
    pub(super) fn release_together(&mut self, ids: &[String]) {
        let plan: Vec<_> = ids.iter().map(|id| self.successor_if_held(id)).collect();
        for id in ids {
            self.unbind(id);
        }
        for (id, successor) in ids.iter().zip(plan) {
            self.give_key_up(id, successor);
        }
    }

    /// `ids` in chunks that go together: each group's (in id order, so the
    /// leader first), and every other VIP alone.
    pub(super) fn by_group(&self, ids: Vec<String>) -> Vec<Vec<String>> {
        let mut chunks: Vec<Vec<String>> = Vec::new();
        let mut groups: BTreeMap<String, usize> = BTreeMap::new();
        for id in ids {
            match self.group_of(&id).map(str::to_owned) {
                Some(g) => match groups.get(&g) {
                    Some(&i) => chunks[i].push(id),
                    None => {
                        groups.insert(g, chunks.len());
                        chunks.push(vec![id]);
                    }
                },
                None => chunks.push(vec![id]),
            }
        }
        chunks
    }

    /// The group's name for spreading handovers: every VIP of a group
    /// picks the same successor.
    pub(super) fn spread_key<'a>(&'a self, id: &'a str) -> &'a str {
        self.group_of(id).unwrap_or(id)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::registry::{MemberKey, ValidVip, VipChange, VipRecord, VipSnapshot};
    use crate::vip::sim::{Observed, settings};
    use crate::vip::{Core, Effect, Input, Lease, LossPolicy, Outcome, Successor};

    fn grouped(address: &str) -> ValidVip {
        let mut r = VipRecord::new(address);
        r.group = Some("pair".into());
        r.validate().expect("valid")
    }

    fn bound(id: &str) -> Input {
        Input::Bound {
            id: id.into(),
            binding: crate::vip::Binding {
                ifindex: 2,
                ifname: "eth0".into(),
                mac: crate::addr::MacAddr([2, 0, 0, 0, 0, 1]),
            },
            added: true,
        }
    }

    fn contended(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Contend { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    /// h1's core with VIPs `a` (the leader) and `b` in one group, h2
    /// standing by for both, and h1 healthy for both.
    fn h1_with_a_pair() -> (Core, Duration, Observed) {
        let mut core = Core::new(settings(0, LossPolicy::Release));
        let now = Duration::from_secs(1000);
        let quiet = Observed {
            answers: None,
            others: false,
        };
        let lease = Lease {
            id: 7,
            deadline: now + Duration::from_secs(10),
            failures: 0,
        };
        core.step(Input::Lease(lease), now, &quiet);
        let standby = |id: &str| MemberKey {
            id: id.into(),
            kind: "state".into(),
            host: "h2".into(),
            value: Some("STANDBY".into()),
            lease: 9,
        };
        let snapshot = VipSnapshot {
            records: [
                ("a".to_owned(), grouped("198.18.0.100/32")),
                ("b".to_owned(), grouped("198.18.0.101/32")),
            ]
            .into(),
            members: vec![standby("a"), standby("b")],
            ..VipSnapshot::default()
        };
        core.step(
            Input::Registry(VipChange::Snapshot(Box::new(snapshot))),
            now,
            &quiet,
        );
        for id in ["a", "b"] {
            let ok = Input::Health {
                id: id.into(),
                ok: true,
                detail: String::new(),
            };
            core.step(ok, now, &quiet);
        }
        (core, now, quiet)
    }

    #[test]
    fn a_group_is_one_election_and_moves_whole() {
        let (mut core, now, quiet) = h1_with_a_pair();
        let effects = core.step(Input::Tick, now, &quiet);
        assert_eq!(contended(&effects), ["a"], "only the leader is elected");
        let won = |id: &str| Input::Contended {
            id: id.into(),
            lease: 7,
            outcome: Outcome::Won,
        };
        let effects = core.step(won("a"), now, &quiet);
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::Bind { id, .. } if id == "a")),
            "{effects:?}"
        );
        core.step(bound("a"), now, &quiet);
        let effects = core.step(Input::Tick, now, &quiet);
        assert_eq!(contended(&effects), ["b"], "then its follower");
        core.step(won("b"), now, &quiet);
        core.step(bound("b"), now, &quiet);
        // The follower's check fails: the whole group goes, to one host.
        let mut effects = Vec::new();
        for _ in 0..3 {
            let bad = Input::Health {
                id: "b".into(),
                ok: false,
                detail: "down".into(),
            };
            effects.extend(core.step(bad, now, &quiet));
        }
        let released: Vec<(&str, Option<&Successor>)> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Release { id, successor, .. } => Some((id.as_str(), successor.as_ref())),
                _ => None,
            })
            .collect();
        let h2 = Successor {
            host: "h2".into(),
            lease: 9,
        };
        assert_eq!(
            released,
            [("a", Some(&h2)), ("b", Some(&h2))],
            "leader first, both to one host: {effects:?}"
        );
    }

    #[test]
    fn a_follower_without_its_leader_is_given_up() {
        let (mut core, now, quiet) = h1_with_a_pair();
        // The follower's key is ours (a handover, say), the leader's is
        // h2's: the follower is not kept.
        let ours = crate::registry::Owner::mine("h1".into(), 7);
        let theirs = crate::registry::Owner::mine("h2".into(), 9);
        core.step(
            Input::Registry(VipChange::Owner("a".into(), Some(theirs))),
            now,
            &quiet,
        );
        let effects = core.step(
            Input::Registry(VipChange::Owner("b".into(), Some(ours))),
            now,
            &quiet,
        );
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::Release { id, .. } if id == "b")),
            "{effects:?}"
        );
        assert_ne!(core.vips()["b"].state, crate::vip::State::Activated);
    }
}
