//! Data-plane-confirmed fast failover, the pure part: when a standby's
//! probes count as unanswered, and when suspicions add up to a quorum.
//!
//! A standby probes the owner's VIP with ARP requests to the MAC the owner
//! published in its (signed) owner key, and falls back to broadcast after
//! [`BROADCAST_AFTER`] misses in a row; `vip_watch` records the replies
//! from that MAC only, so a forged reply from another MAC can neither
//! steer the probes elsewhere nor stand in for the owner. A standby whose probes go unanswered for a window,
//! while it still hears other peers, writes a suspect key on its own lease.
//! A quorum of suspects naming the owner's current lease lets any standby
//! delete the owner key (guarded by that lease) and revoke the lease.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::addr::MacAddr;
use crate::registry::Owner;

/// Unanswered probes in a row after which probes are broadcast: the
/// owner's published MAC may be what fails (a switch that lost it, a
/// changed NIC), and a broadcast still reaches the owner; its reply must
/// still come from the published MAC.
pub const BROADCAST_AFTER: u32 = 2;

/// Whether fast failover runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FastFailover {
    /// On for every VIP with at least a quorum of eligible standbys.
    Auto,
    /// Only the lease path replaces an owner.
    Off,
}

impl std::str::FromStr for FastFailover {
    type Err = super::UnknownChoice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            other => Err(super::UnknownChoice {
                setting: "fast failover mode",
                value: other.to_owned(),
                choices: "auto, off",
            }),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct FastSettings {
    pub mode: FastFailover,
    pub probe_interval: Duration,
    pub probe_misses: u32,
    /// 0: a majority of the eligible standbys, at least 2.
    pub quorum: u32,
}

impl FastSettings {
    /// How long probes must go unanswered before a standby suspects.
    #[must_use]
    pub fn window(&self) -> Duration {
        self.probe_interval * self.probe_misses
    }

    /// Suspects needed to revoke, with `eligible` standbys.
    #[must_use]
    pub fn quorum(&self, eligible: usize) -> usize {
        match self.quorum {
            0 => (eligible / 2 + 1).max(2),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }

    /// Whether a VIP with `eligible` standbys is protected by fast failover.
    #[must_use]
    pub fn active(&self, eligible: usize) -> bool {
        self.mode == FastFailover::Auto && eligible >= self.quorum(eligible)
    }
}

/// A standby's probing of one owner (its key: host, lease and MAC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub owner: Owner,
    /// Monotonic time probing of this owner started.
    pub since: Duration,
    /// The last reply seen after `since`.
    pub last_reply: Option<Duration>,
    /// Whether our suspect key is written.
    pub suspected: bool,
    /// Whether "silent but isolated" was logged for this silence.
    pub isolated_logged: bool,
    /// Probes sent since the last reply.
    pub unanswered: u32,
}

impl Probe {
    #[must_use]
    pub fn new(owner: Owner, now: Duration) -> Self {
        Self {
            owner,
            since: now,
            last_reply: None,
            suspected: false,
            isolated_logged: false,
            unanswered: 0,
        }
    }

    /// A probe went out.
    pub fn sent(&mut self) {
        self.unanswered = self.unanswered.saturating_add(1);
    }

    /// Where the next probe goes (`None`: broadcast): the owner's published
    /// MAC; broadcast while it published none (a key handed over names no
    /// MAC until its new holder puts it in: a reply from anyone must not
    /// steer the probes meanwhile) and after [`BROADCAST_AFTER`] misses in
    /// a row.
    #[must_use]
    pub fn dst(&self) -> Option<MacAddr> {
        if self.unanswered >= BROADCAST_AFTER {
            return None;
        }
        self.owner.mac
    }

    /// Takes the data plane's last reply for the VIP (who, when). Replies
    /// from before this owner's time belong to someone else, and so do
    /// replies from another MAC than the one the owner published.
    pub fn observe(&mut self, seen: Option<(MacAddr, Duration)>) {
        if let Some((mac, at)) = seen
            && at >= self.since
            && self.owner.mac.is_none_or(|m| m == mac)
            && self.last_reply.is_none_or(|t| at > t)
        {
            self.last_reply = Some(at);
            self.isolated_logged = false;
            self.unanswered = 0;
        }
    }

    /// Other peers must have been heard after this (monotonic) time for a
    /// silence to count: two probe intervals after the owner's last answer
    /// (or the start of probing), and within the last `window`. A standby
    /// whose own link died hears nobody after that point; one whose owner
    /// died keeps hearing the others.
    #[must_use]
    pub fn others_needed_after(
        &self,
        now: Duration,
        window: Duration,
        interval: Duration,
    ) -> Duration {
        let last = self.last_reply.unwrap_or(self.since).max(self.since);
        (last + interval * 2).max(now.saturating_sub(window))
    }

    /// Whether nothing answered for longer than `window` (counting from the
    /// start of probing, so a new owner gets a full window) *and* at least
    /// `misses` probes went out meanwhile. Time alone is not enough: when
    /// this host is too busy to probe (a burst of etcd events, a CPU stall),
    /// the owner was not asked, so its silence says nothing.
    #[must_use]
    pub fn silent(&self, now: Duration, window: Duration, misses: u32) -> bool {
        let last = self.last_reply.unwrap_or(self.since).max(self.since);
        now.saturating_sub(last) > window && self.unanswered >= misses
    }
}

/// Whether the suspects naming `lease` among `eligible` standbys reach the
/// quorum. `suspects` maps a host to the owner lease it suspects.
#[must_use]
pub fn revoke_due(
    settings: &FastSettings,
    eligible: &BTreeSet<String>,
    suspects: &BTreeMap<String, i64>,
    lease: i64,
) -> bool {
    if lease == 0 || !settings.active(eligible.len()) {
        return false;
    }
    let agreeing = suspects
        .iter()
        .filter(|(host, l)| **l == lease && eligible.contains(*host))
        .count();
    agreeing >= settings.quorum(eligible.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn settings(quorum: u32) -> FastSettings {
        FastSettings {
            mode: FastFailover::Auto,
            probe_interval: ms(20),
            probe_misses: 5,
            quorum,
        }
    }

    fn owner(mac: Option<MacAddr>) -> Owner {
        Owner {
            host: "h1".into(),
            lease: 7,
            mac,
        }
    }

    fn hosts(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn quorum_is_a_majority_of_at_least_two() {
        let s = settings(0);
        assert_eq!(s.window(), ms(100));
        assert_eq!(s.quorum(1), 2);
        assert_eq!(s.quorum(2), 2);
        assert_eq!(s.quorum(3), 2);
        assert_eq!(s.quorum(4), 3);
        assert_eq!(s.quorum(5), 3);
        assert!(!s.active(1), "one standby alone never decides by default");
        assert!(s.active(2));
        assert_eq!(settings(1).quorum(1), 1);
        assert!(settings(1).active(1));
        let off = FastSettings {
            mode: FastFailover::Off,
            ..s
        };
        assert!(!off.active(5));
    }

    #[test]
    fn only_suspects_of_the_current_lease_count() {
        let s = settings(0);
        let eligible = hosts(&["h2", "h3", "h4"]);
        let mut suspects = BTreeMap::from([("h2".to_owned(), 7)]);
        assert!(!revoke_due(&s, &eligible, &suspects, 7), "one of two");
        suspects.insert("h3".into(), 6);
        assert!(
            !revoke_due(&s, &eligible, &suspects, 7),
            "h3 suspects an old lease"
        );
        suspects.insert("h9".into(), 7);
        assert!(
            !revoke_due(&s, &eligible, &suspects, 7),
            "h9 is not eligible"
        );
        suspects.insert("h4".into(), 7);
        assert!(revoke_due(&s, &eligible, &suspects, 7));
        assert!(
            !revoke_due(&s, &eligible, &suspects, 0),
            "no lease, no revocation"
        );
    }

    #[test]
    fn a_probe_is_silent_after_a_window_without_replies() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut p = Probe::new(owner(None), ms(1000));
        for _ in 0..5 {
            p.sent();
        }
        assert!(
            !p.silent(ms(1100), ms(100), 5),
            "a new owner gets a full window"
        );
        assert!(p.silent(ms(1101), ms(100), 5));
        // A reply from before this owner is someone else's.
        p.observe(Some((mac, ms(900))));
        assert_eq!(p.last_reply, None);
        assert_eq!(p.unanswered, 5);
        p.observe(Some((mac, ms(1050))));
        assert_eq!(p.last_reply, Some(ms(1050)));
        assert_eq!(p.unanswered, 0, "answered");
        assert_eq!(
            p.dst(),
            None,
            "no MAC published: broadcast, whoever answered"
        );
        for _ in 0..5 {
            p.sent();
        }
        assert!(!p.silent(ms(1150), ms(100), 5));
        assert!(p.silent(ms(1151), ms(100), 5));
        p.observe(Some((mac, ms(1140))));
        assert_eq!(p.last_reply, Some(ms(1140)));
        assert!(!p.silent(ms(1151), ms(100), 5));
        // Others must be heard after the owner's last answer + 2 intervals,
        // and within the window.
        assert_eq!(p.others_needed_after(ms(1241), ms(100), ms(20)), ms(1180));
        assert_eq!(p.others_needed_after(ms(1400), ms(100), ms(20)), ms(1300));
    }

    #[test]
    fn a_stall_without_probes_is_no_silence() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut p = Probe::new(owner(None), ms(0));
        p.sent();
        p.observe(Some((mac, ms(1))));
        p.sent();
        // This host was busy for 300 ms: one probe out, none answered yet.
        assert!(
            !p.silent(ms(320), ms(100), 5),
            "the owner was asked once, not five times"
        );
        for _ in 0..4 {
            p.sent();
        }
        assert!(p.silent(ms(400), ms(100), 5), "five probes, no answer");
    }

    #[test]
    fn only_the_published_mac_answers_for_the_owner_and_probes_go_there() {
        let published = MacAddr([2, 0, 0, 0, 0, 1]);
        let forger = MacAddr([2, 0, 0, 0, 0, 0x66]);
        let mut p = Probe::new(owner(Some(published)), ms(0));
        assert_eq!(
            p.dst(),
            Some(published),
            "unicast to the published MAC from the start"
        );
        p.sent();
        p.observe(Some((forger, ms(10))));
        assert_eq!(
            p.last_reply, None,
            "a reply from another MAC is not the owner"
        );
        assert_eq!(p.dst(), Some(published), "and does not steer the probes");
        p.sent();
        assert_eq!(p.dst(), None, "two misses in a row: broadcast");
        p.observe(Some((published, ms(50))));
        assert_eq!(p.last_reply, Some(ms(50)));
        assert_eq!(p.dst(), Some(published), "answered: unicast again");
        // An owner that published no MAC (a key just handed over, or an
        // older agent): any answer counts, but probes stay broadcast, so
        // a forger cannot steer them.
        let mut handed = Probe::new(owner(None), ms(0));
        assert_eq!(handed.dst(), None);
        handed.observe(Some((forger, ms(10))));
        assert_eq!(handed.last_reply, Some(ms(10)));
        assert_eq!(handed.dst(), None);
    }
}
