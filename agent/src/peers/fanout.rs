//! Whom a host exchanges heartbeats with: a bounded set, whatever the
//! fleet's size. Pure.
//!
//! Every host sits on a ring at a position hashed from its name, and
//! heartbeats its `per_side` nearest hosts on each side. The relation is
//! symmetric (b is among a's next `per_side` exactly when a is among b's
//! previous `per_side`), so each host knows whom to expect heartbeats from,
//! and every host is watched by `2 * per_side` others. On top of that come
//! the VIP partners: for each VIP this host takes part in, its nearest
//! fellow members on that VIP's own ring (symmetric in the same way), so a
//! standby always hears other members of its VIP, the hosts on the VIP's
//! network, and its isolation guard means what it says. Liveness of the
//! rest of the fleet comes from etcd (a host's record lives on its lease)
//! and from the VXLAN traffic the eBPF program counts.
//!
//! Like SWIM and memberlist, this bounds each member's load by a constant
//! instead of N; unlike their random probe order it is deterministic, so
//! both ends agree without a message.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use sha2::{Digest, Sha256};

/// A host's place on the ring.
#[must_use]
pub fn position(name: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(b"linkmesh-ring\0")
        .chain_update(name.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Every registered host, in ring order.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    hosts: BTreeSet<(u64, String)>,
}

impl Ring {
    /// A ring of `names`.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut ring = Self::default();
        for n in names {
            ring.insert(n);
        }
        ring
    }

    pub fn insert(&mut self, name: &str) {
        self.hosts.insert((position(name), name.to_owned()));
    }

    pub fn remove(&mut self, name: &str) {
        self.hosts.remove(&(position(name), name.to_owned()));
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The `per_side` hosts after `me` and the `per_side` before it,
    /// wrapping around (everyone else, on a ring of `2 * per_side + 1` or
    /// fewer); never `me`, which need not be on the ring.
    #[must_use]
    pub fn neighbours(&self, me: &str, per_side: usize) -> BTreeSet<String> {
        let at = (position(me), me.to_owned());
        let others = self.hosts.len() - usize::from(self.hosts.contains(&at));
        if others <= 2 * per_side {
            return self
                .hosts
                .iter()
                .filter(|(_, n)| n != me)
                .map(|(_, n)| n.clone())
                .collect();
        }
        let after = self
            .hosts
            .range((Bound::Excluded(&at), Bound::Unbounded))
            .chain(self.hosts.range(..&at));
        let before = self.hosts.range(..&at).rev().chain(
            self.hosts
                .range((Bound::Excluded(&at), Bound::Unbounded))
                .rev(),
        );
        after
            .take(per_side)
            .chain(before.take(per_side))
            .map(|(_, n)| n.clone())
            .collect()
    }
}

/// How many hosts a host heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fanout {
    /// Ring neighbours on each side.
    pub ring_per_side: usize,
    /// Fellow members on each side of each VIP's ring.
    pub partners_per_side: usize,
    /// Partners over all VIPs, at most (the VIPs are taken in name order).
    pub max_partners: usize,
}

impl Fanout {
    /// The most hosts ever heartbeated.
    #[must_use]
    pub fn max_targets(&self) -> usize {
        2 * self.ring_per_side + self.max_partners
    }
}

impl Default for Fanout {
    /// 8 ring neighbours and up to 12 partners: at most 20 targets, 1,000
    /// heartbeats a second at the default 20 ms interval.
    fn default() -> Self {
        Self {
            ring_per_side: 4,
            partners_per_side: 2,
            max_partners: 12,
        }
    }
}

/// The hosts `me` heartbeats, and expects heartbeats from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    pub ring: BTreeSet<String>,
    /// VIP partners that are not ring neighbours already.
    pub partners: BTreeSet<String>,
}

impl Targets {
    #[must_use]
    pub fn contains(&self, host: &str) -> bool {
        self.ring.contains(host) || self.partners.contains(host)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.ring.len() + self.partners.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty() && self.partners.is_empty()
    }
}

/// Whom `me` heartbeats: its ring neighbours among `ring`, and its nearest
/// fellow members of each VIP it is a member of (`vip_members`: VIP ->
/// hosts taking part), registered ones only.
#[must_use]
pub fn targets(
    ring: &Ring,
    vip_members: &BTreeMap<String, BTreeSet<String>>,
    me: &str,
    fanout: Fanout,
) -> Targets {
    let neighbours = ring.neighbours(me, fanout.ring_per_side);
    let registered = |h: &String| ring.hosts.contains(&(position(h), h.clone()));
    let mut partners = BTreeSet::new();
    for members in vip_members.values().filter(|m| m.contains(me)) {
        let fellows = Ring::of(members.iter().map(String::as_str).filter(|h| *h != me));
        for h in fellows.neighbours(me, fanout.partners_per_side) {
            if partners.len() >= fanout.max_partners {
                break;
            }
            if !neighbours.contains(&h) && registered(&h) {
                partners.insert(h);
            }
        }
    }
    Targets {
        ring: neighbours,
        partners,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("host-{i}")).collect()
    }

    #[test]
    fn a_small_ring_is_everyone() {
        let all = names(5);
        let ring = Ring::of(all.iter().map(String::as_str));
        let n = ring.neighbours("host-0", 4);
        assert_eq!(n.len(), 4);
        assert!(!n.contains("host-0"));
    }

    #[test]
    fn a_large_ring_gives_per_side_on_each_side() {
        let all = names(10_000);
        let ring = Ring::of(all.iter().map(String::as_str));
        for me in ["host-0", "host-4711", "host-9999"] {
            assert_eq!(ring.neighbours(me, 4).len(), 8);
        }
        // One not on the ring still gets neighbours.
        assert_eq!(ring.neighbours("newcomer", 4).len(), 8);
    }

    #[test]
    fn partners_are_bounded_and_registered() {
        let all = names(100);
        let ring = Ring::of(all.iter().map(String::as_str));
        let mut vips = BTreeMap::new();
        // 20 VIPs, each with every host: the same member ring, so the same
        // few partners.
        for v in 0..20 {
            vips.insert(
                format!("vip{v}"),
                all.iter().cloned().collect::<BTreeSet<_>>(),
            );
        }
        let t = targets(&ring, &vips, "host-7", Fanout::default());
        assert_eq!(t.ring.len(), 8);
        assert!(t.len() <= Fanout::default().max_targets());
        // Disjoint member sets: still at most max_partners.
        let mut vips = BTreeMap::new();
        for v in 0..40 {
            let members: BTreeSet<String> = ["host-7".to_owned()]
                .into_iter()
                .chain((0..5).map(|j| format!("host-{}", 10 + v * 2 + j)))
                .collect();
            vips.insert(format!("vip{v:02}"), members);
        }
        let t = targets(&ring, &vips, "host-7", Fanout::default());
        assert_eq!(
            t.partners.len() + t.ring.intersection(&t.partners).count(),
            t.partners.len()
        );
        assert!(t.partners.len() <= 12, "{t:?}");
        assert!(t.len() <= 20);
        // A member without a record is not heartbeated.
        let vips: BTreeMap<_, _> = [(
            "v".to_owned(),
            ["host-7", "ghost"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<BTreeSet<_>>(),
        )]
        .into();
        assert!(!targets(&ring, &vips, "host-7", Fanout::default()).contains("ghost"));
    }

    #[test]
    fn a_vip_partner_is_heartbeated_even_far_away_on_the_ring() {
        let all = names(1000);
        let ring = Ring::of(all.iter().map(String::as_str));
        let vips: BTreeMap<_, _> = [(
            "v".to_owned(),
            ["host-1", "host-500", "host-900"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<BTreeSet<_>>(),
        )]
        .into();
        let t = targets(&ring, &vips, "host-1", Fanout::default());
        assert!(t.contains("host-500") && t.contains("host-900"), "{t:?}");
        // And symmetric: host-500 heartbeats host-1.
        assert!(targets(&ring, &vips, "host-500", Fanout::default()).contains("host-1"));
        // A host outside the VIP does not get them.
        assert!(
            !targets(&ring, &vips, "host-2", Fanout::default()).contains("host-500")
                || ring.neighbours("host-2", 4).contains("host-500")
        );
    }

    proptest! {
        /// Both ends agree: a heartbeats b exactly when b heartbeats a, so
        /// each knows whom to expect; and nobody heartbeats more than the
        /// bound, however large the fleet.
        #[test]
        fn targets_are_symmetric_and_bounded(
            n in 1usize..300,
            per_side in 1usize..6,
            vip_sets in proptest::collection::vec(proptest::collection::btree_set(0usize..300, 0..12), 0..3),
        ) {
            let all = names(n);
            let ring = Ring::of(all.iter().map(String::as_str));
            let vips: BTreeMap<String, BTreeSet<String>> = vip_sets
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("v{i}"), s.iter().map(|j| format!("host-{j}")).collect()))
                .collect();
            let fanout = Fanout { ring_per_side: per_side, partners_per_side: 2, max_partners: 64 };
            let all_targets: BTreeMap<&String, Targets> =
                all.iter().map(|h| (h, targets(&ring, &vips, h, fanout))).collect();
            for (a, t) in &all_targets {
                prop_assert!(t.len() <= fanout.max_targets());
                prop_assert!(t.ring.len() == (2 * per_side).min(n - 1));
                prop_assert!(!t.contains(a));
                for b in t.ring.iter().chain(&t.partners) {
                    prop_assert!(all_targets[b].contains(a), "{a} -> {b} but not back");
                }
            }
        }
    }
}
