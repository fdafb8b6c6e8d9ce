//! Graceful handover: a releasing owner names its successor in the same
//! guarded transaction that gives its key up. The key is rewritten for the
//! successor, on the successor's lease, and the successor binds on the
//! watch event: break-then-make in one etcd round trip, with no contention
//! after it. Part of [`Core`]: pure.

use super::Successor;
use super::core::Core;

/// FNV-1a of `id`: spreads the VIPs of a stopping host over its standbys.
fn spread(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Core {
    /// The standby VIP `id` goes to when this host gives it up: the
    /// preferred host if it stands by, else one of the eligible standbys
    /// (state STANDBY, not excluded, on a known lease), chosen by the VIP's
    /// id (its group's name, for a VIP of a group) so a host's VIPs spread
    /// over them. For a VIP of a group, only hosts eligible for every VIP
    /// of it, and the holder of the group's leader before any. `None` when
    /// there is none: the key is deleted, and the standbys contend as after
    /// a crash.
    pub(super) fn successor(&self, id: &str) -> Option<Successor> {
        let me = self.me();
        let key = self.spread_key(id);
        // A group goes to one host: the standbys eligible for all of it,
        // and the leader's holder first when it is another host.
        let members = if key == id {
            vec![id.to_owned()]
        } else {
            self.group_members(key)
        };
        let mut candidates: Option<Vec<(String, i64)>> = None;
        for m in &members {
            let leases = &self.members.get(m)?.leases;
            let eligible: Vec<(String, i64)> = self
                .eligible(m, Some(me))
                .into_iter()
                .filter_map(|h| Some((h.clone(), *leases.get(&h).filter(|l| **l != 0)?)))
                .collect();
            candidates = Some(match candidates {
                None => eligible,
                Some(c) => c.into_iter().filter(|x| eligible.contains(x)).collect(),
            });
        }
        let candidates = candidates.unwrap_or_default();
        let leader_host = members
            .first()
            .and_then(|l| self.vips.get(l)?.owner.as_ref())
            .map(|o| o.host.as_str());
        let preferred = self.vips.get(id)?.spec.record.priority.as_deref();
        let pick = candidates
            .iter()
            .find(|(h, _)| Some(h.as_str()) == leader_host)
            .or_else(|| {
                candidates
                    .iter()
                    .find(|(h, _)| Some(h.as_str()) == preferred)
            })
            .or_else(|| {
                let n = u64::try_from(candidates.len()).ok().filter(|n| *n > 0)?;
                let i = usize::try_from(spread(key) % n).ok()?;
                candidates.get(i)
            })?;
        Some(Successor {
            host: pick.0.clone(),
            lease: pick.1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn vips_spread_over_standbys() {
        let picks: std::collections::BTreeSet<u64> = (0..64)
            .map(|i| spread(&format!("198.18.0.{i}_32")) % 3)
            .collect();
        assert_eq!(picks.len(), 3, "every standby gets some");
        assert_eq!(spread("a"), spread("a"));
    }
}
