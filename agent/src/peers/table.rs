//! The liveness table: the verdict on each peer and what it rests on, as
//! `GET /peers` gives it and `linkmesh peers` prints it.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::ebpf::peer::PeerSample;

/// Loss is reported over this much history.
pub(super) const LOSS_WINDOW: Duration = Duration::from_secs(1);

/// One row of `linkmesh peers` / `GET /peers`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct PeerLiveness {
    pub hostname: String,
    pub address: IpAddr,
    /// Milliseconds since the last heartbeat or VXLAN packet (`null`: never).
    pub last_seen_ms: Option<f64>,
    pub heartbeat_age_ms: Option<f64>,
    pub vxlan_age_ms: Option<f64>,
    pub heartbeats: u64,
    pub vxlan_packets: u64,
    /// Share of the heartbeats expected over the last second that did not
    /// arrive (`null` until a second of history exists).
    pub loss: Option<f64>,
    pub alive: bool,
    /// Whether this host exchanges heartbeats with the peer (a bounded
    /// set: ring neighbours and VIP partners).
    #[serde(default)]
    pub monitored: bool,
    /// What the verdict rests on: `heartbeat`, `vxlan`, `indirect` (other
    /// hosts reached it) or `lease` (its record lives on an etcd lease,
    /// and nothing here watches it more closely).
    #[serde(default)]
    pub verdict: String,
}

/// Whether a peer is alive at `now`, and on what evidence. A monitored
/// peer (one that heartbeats us) is judged by what arrived from it: a
/// heartbeat or VXLAN packet within `dead_after`, else a fresh answer to an
/// indirect probe (`reached_indirectly`), else dead. Any other peer is alive
/// while its VXLAN traffic flows, and otherwise while its record stands in
/// etcd, which lives on the host's lease.
#[must_use]
pub fn verdict(
    monitored: bool,
    sample: &PeerSample,
    reached_indirectly: bool,
    now: Duration,
    dead_after: Duration,
) -> (bool, &'static str) {
    let recent = |t: Option<Duration>| t.is_some_and(|t| now.saturating_sub(t) <= dead_after);
    if recent(sample.last_heartbeat) {
        (true, "heartbeat")
    } else if recent(sample.last_vxlan) {
        (true, "vxlan")
    } else if !monitored {
        (true, "lease")
    } else if reached_indirectly {
        (true, "indirect")
    } else {
        (false, "heartbeat")
    }
}

/// Missing share of the heartbeats expected between the oldest and newest
/// sample of `history` (`(time, heartbeats so far)`), or `None` with less
/// than half a window of history.
#[must_use]
pub fn loss(history: &VecDeque<(Duration, u64)>, interval: Duration) -> Option<f64> {
    let (&(t0, n0), &(t1, n1)) = (history.front()?, history.back()?);
    let span = t1.checked_sub(t0)?;
    if span < LOSS_WINDOW / 2 || interval.is_zero() {
        return None;
    }
    let expected = span.as_secs_f64() / interval.as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "heartbeat counts are small")]
    let got = n1.saturating_sub(n0) as f64;
    Some((1.0 - got / expected).clamp(0.0, 1.0))
}

/// What `linkmesh peers` and `linkmesh status` read of `GET /peers` and
/// `GET /status` (the other fields are ignored).
#[derive(Debug, serde::Deserialize)]
pub struct PeersReport {
    /// Whether the eBPF peer watcher runs (`peer_watcher` in the status).
    #[serde(alias = "peer_watcher")]
    pub watching: bool,
    pub peers: Vec<PeerLiveness>,
}

/// The table `linkmesh peers` prints.
#[must_use]
pub fn render_table(report: &PeersReport) -> String {
    use std::fmt::Write as _;
    let ms = |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |v| format!("{v:.0} ms"));
    let mut out = format!(
        "{:<20} {:<16} {:<6} {:<9} {:>10} {:>10} {:>10} {:>6}\n",
        "HOST", "ADDRESS", "ALIVE", "VERDICT", "LAST SEEN", "HEARTBEAT", "VXLAN", "LOSS"
    );
    for p in &report.peers {
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:<6} {:<9} {:>10} {:>10} {:>10} {:>6}",
            p.hostname,
            p.address.to_string(),
            if p.alive { "yes" } else { "no" },
            if p.verdict.is_empty() {
                "-"
            } else {
                &p.verdict
            },
            ms(p.last_seen_ms),
            ms(p.heartbeat_age_ms),
            ms(p.vxlan_age_ms),
            p.loss
                .map_or_else(|| "-".to_owned(), |l| format!("{:.0}%", l * 100.0)),
        );
    }
    if !report.watching {
        out.push_str("(the eBPF peer watcher is not running on this host: liveness unknown)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn loss_needs_half_a_window() {
        let h: VecDeque<_> = [(ms(0), 0), (ms(400), 20)].into();
        assert_eq!(loss(&h, ms(20)), None);
        assert_eq!(loss(&VecDeque::new(), ms(20)), None);
    }

    #[test]
    fn loss_counts_missing_heartbeats() {
        // 1 s at 20 ms: 50 expected.
        let all: VecDeque<_> = [(ms(1000), 100), (ms(2000), 150)].into();
        assert_eq!(loss(&all, ms(20)), Some(0.0));
        let half: VecDeque<_> = [(ms(1000), 100), (ms(2000), 125)].into();
        assert!((loss(&half, ms(20)).expect("a figure") - 0.5).abs() < 1e-9);
        let none: VecDeque<_> = [(ms(1000), 100), (ms(2000), 100)].into();
        assert_eq!(loss(&none, ms(20)), Some(1.0));
        // More than expected (a faster sender) is no loss, not a negative one.
        let more: VecDeque<_> = [(ms(1000), 0), (ms(2000), 80)].into();
        assert_eq!(loss(&more, ms(20)), Some(0.0));
    }

    #[test]
    fn the_table_shows_ages_and_loss() {
        let report = PeersReport {
            watching: true,
            peers: vec![
                PeerLiveness {
                    hostname: "h2".into(),
                    address: "198.18.0.2".parse().expect("ip"),
                    last_seen_ms: Some(12.4),
                    heartbeat_age_ms: Some(12.4),
                    vxlan_age_ms: None,
                    heartbeats: 500,
                    vxlan_packets: 0,
                    loss: Some(0.02),
                    alive: true,
                    monitored: true,
                    verdict: "heartbeat".into(),
                },
                PeerLiveness {
                    hostname: "h3".into(),
                    address: "198.18.0.3".parse().expect("ip"),
                    last_seen_ms: None,
                    heartbeat_age_ms: None,
                    vxlan_age_ms: None,
                    heartbeats: 0,
                    vxlan_packets: 0,
                    loss: None,
                    alive: false,
                    monitored: true,
                    verdict: "heartbeat".into(),
                },
            ],
        };
        let t = render_table(&report);
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[1].starts_with("h2") && lines[1].contains("yes"),
            "{t}"
        );
        assert!(lines[1].contains("12 ms") && lines[1].contains("2%"), "{t}");
        assert!(
            lines[2].contains("never") && lines[2].contains(" no "),
            "{t}"
        );
    }

    #[test]
    fn verdicts_rest_on_the_best_evidence() {
        let dead_after = ms(100);
        let now = ms(10_000);
        let heard = |hb: Option<u64>, vx: Option<u64>| PeerSample {
            last_heartbeat: hb.map(ms),
            last_vxlan: vx.map(ms),
            ..PeerSample::default()
        };
        assert_eq!(
            verdict(true, &heard(Some(9_950), None), false, now, dead_after),
            (true, "heartbeat")
        );
        assert_eq!(
            verdict(false, &heard(None, Some(9_990)), false, now, dead_after),
            (true, "vxlan")
        );
        assert_eq!(
            verdict(
                true,
                &heard(Some(5_000), Some(9_990)),
                false,
                now,
                dead_after
            ),
            (true, "vxlan")
        );
        // Not watched here, silent: its lease speaks for it.
        assert_eq!(
            verdict(false, &heard(None, None), false, now, dead_after),
            (true, "lease")
        );
        // Watched and silent: dead, unless others reached it just now.
        assert_eq!(
            verdict(true, &heard(Some(5_000), None), false, now, dead_after),
            (false, "heartbeat")
        );
        assert_eq!(
            verdict(true, &heard(Some(5_000), None), true, now, dead_after),
            (true, "indirect")
        );
    }
}
