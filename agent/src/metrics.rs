//! `GET /metrics`: Prometheus text format (`prometheus-client`), built at
//! each scrape from what the agent already keeps (the floating-IP status,
//! the peer table, the registry view, etcd and netlink counters), plus the
//! two histograms the agent fills as it goes.

use std::collections::BTreeMap;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::peers::PeerLiveness;
use crate::vip::State;
use crate::vip::VipStatus;

type Labels = Vec<(String, String)>;

/// Everything one scrape reports.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub vips: Vec<VipStatus>,
    /// Segment name -> (joined by this host, peers).
    pub segments: BTreeMap<String, (bool, usize)>,
    pub peers: Vec<PeerLiveness>,
    pub netlink_writes: u64,
    /// FDB dumps (at start, resync, and after changes by others).
    pub fdb_dumps: u64,
    pub netlink_errors: u64,
    /// Rejected registry records by reason.
    pub rejected: BTreeMap<String, u64>,
    pub registry_watch_restarts: u64,
    /// Full reads of the prefix (at start, then only after a failed watch).
    pub registry_snapshots: u64,
    pub etcd_revision: i64,
    pub etcd_errors: u64,
    pub lease_failures: u32,
    /// Conflict events read from the eBPF ring, and those dropped full.
    pub ebpf_events: u64,
    pub ebpf_ring_drops: u64,
    /// API connections whose TLS handshake failed.
    pub api_tls_failures: u64,
    /// API requests a guard refused (Host, read-only, media type).
    pub api_refusals: u64,
    /// Binds refused: the address was on the host and linkmesh had not
    /// added it.
    pub vip_foreign_addresses: u64,
    pub vip_delivery_failures: u64,
    pub vip_port_mapped: u64,
    /// ARP replies for VIPs held elsewhere from a MAC other than the
    /// owner's published one, ignored.
    pub vip_foreign_replies: u64,
    /// Notify hook runs: passed, failed, timed out, and transitions
    /// dropped because a VIP's hooks fell behind.
    pub vip_notify: [u64; 4],
    /// Heartbeats from known peers without a valid token, dropped.
    pub peer_heartbeats_rejected: u64,
    /// Indirect probe messages dropped: malformed or not signed.
    pub peer_probes_rejected: u64,
    /// VIP records that did not verify.
    pub vip_records_rejected: u64,
    /// API connections open, closed to make room at the cap, and closed
    /// for sending no request in time or idling too long.
    pub api_connections: u64,
    pub api_connections_evicted: u64,
    pub api_connections_timed_out: u64,
    /// The hosts file (`--hosts-dir`): names written, names left out now,
    /// writes and failed writes.
    pub dns_names: u64,
    pub dns_left_out: u64,
    pub dns_writes: u64,
    pub dns_write_failures: u64,
}

/// Histograms that live across scrapes.
pub struct Histograms<'a> {
    /// `None` when nothing measures it.
    pub keepalive_seconds: Option<&'a Histogram>,
    pub health_check_seconds: &'a Histogram,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn gauge(value: i64) -> Gauge {
    let g = Gauge::default();
    g.set(value);
    g
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn register_vips(r: &mut Registry, vips: &[VipStatus]) {
    let state = Family::<Labels, Gauge>::default();
    let transitions = Family::<Labels, Counter>::default();
    let announcements = Family::<Labels, Counter>::default();
    let conflicts = Family::<Labels, Counter>::default();
    let strays = Family::<Labels, Counter>::default();
    let checks = Family::<Labels, Counter>::default();
    let restores = Family::<Labels, Counter>::default();
    for v in vips {
        let vip = v.id.as_str();
        for s in [
            State::Booting,
            State::Standby,
            State::Activated,
            State::Failing,
        ] {
            let name = s.to_string();
            state
                .get_or_create(&labels(&[("vip", vip), ("state", &name)]))
                .set(i64::from(v.state == s));
        }
        transitions
            .get_or_create(&labels(&[("vip", vip)]))
            .inc_by(v.transitions);
        announcements
            .get_or_create(&labels(&[("vip", vip)]))
            .inc_by(v.announcements);
        conflicts
            .get_or_create(&labels(&[("vip", vip)]))
            .inc_by(v.conflicts);
        strays
            .get_or_create(&labels(&[("vip", vip)]))
            .inc_by(v.strays);
        restores
            .get_or_create(&labels(&[("vip", vip)]))
            .inc_by(v.restores);
        for (result, n) in [
            ("pass", v.health_checks_passed),
            ("fail", v.health_checks_failed),
        ] {
            checks
                .get_or_create(&labels(&[("vip", vip), ("result", result)]))
                .inc_by(n);
        }
    }
    r.register(
        "linkmesh_vip_state",
        "This host's state for each floating IP (1 for the current state)",
        state,
    );
    r.register(
        "linkmesh_vip_transitions",
        "State changes of each floating IP on this host",
        transitions,
    );
    r.register(
        "linkmesh_vip_announcements",
        "Gratuitous ARP pairs or unsolicited NAs sent",
        announcements,
    );
    r.register(
        "linkmesh_vip_conflicts",
        "Foreign claims on a floating IP this host held (seen by eBPF)",
        conflicts,
    );
    r.register(
        "linkmesh_vip_strays",
        "Hosts seen answering for a floating IP nobody owned",
        strays,
    );
    r.register(
        "linkmesh_vip_restores",
        "Times this host put back a held address someone else removed",
        restores,
    );
    r.register(
        "linkmesh_vip_health_checks",
        "Health check rounds by result",
        checks,
    );
}

fn register_mesh(r: &mut Registry, s: &Snapshot) {
    let peers = Family::<Labels, Gauge>::default();
    let mut fdb = 0usize;
    for (segment, (joined, n)) in &s.segments {
        if *joined {
            peers
                .get_or_create(&labels(&[("segment", segment)]))
                .set(as_i64(*n));
            fdb += n;
        }
    }
    r.register("linkmesh_mesh_peers", "Peers per joined segment", peers);
    r.register(
        "linkmesh_mesh_fdb_entries",
        "FDB entries this agent owns (one per peer per joined segment)",
        gauge(as_i64(fdb)),
    );
    r.register(
        "linkmesh_netlink_writes",
        "State-changing netlink requests sent",
        counter(s.netlink_writes),
    );
    r.register(
        "linkmesh_netlink_fdb_dumps",
        "FDB dumps of the segment devices: at start, every resync, and after a change by someone else; never per registry change",
        counter(s.fdb_dumps),
    );
    r.register(
        "linkmesh_netlink_errors",
        "Netlink requests the kernel refused",
        counter(s.netlink_errors),
    );
    let rejected = Family::<Labels, Counter>::default();
    for (reason, n) in &s.rejected {
        rejected
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(*n);
    }
    r.register(
        "linkmesh_records_rejected",
        "Registry records rejected, by reason",
        rejected,
    );
}

fn register_etcd(r: &mut Registry, s: &Snapshot, h: &Histograms<'_>) {
    if let Some(keepalive) = h.keepalive_seconds {
        r.register(
            "linkmesh_etcd_keepalive_seconds",
            "Round trip of acknowledged ownership-lease keepalives",
            keepalive.clone(),
        );
    }
    let errors = Family::<Labels, Counter>::default();
    errors
        .get_or_create(&labels(&[("kind", "keepalive")]))
        .inc_by(s.etcd_errors);
    r.register("linkmesh_etcd_errors", "etcd requests that failed", errors);
    let restarts = Family::<Labels, Counter>::default();
    restarts
        .get_or_create(&labels(&[("watch", "registry")]))
        .inc_by(s.registry_watch_restarts);
    r.register(
        "linkmesh_etcd_watch_restarts",
        "Watches started again",
        restarts,
    );
    r.register(
        "linkmesh_etcd_registry_snapshots",
        "Full reads of the prefix: one at start, then one after each failed or stale watch (none while the watch is healthy)",
        counter(s.registry_snapshots),
    );
    r.register(
        "linkmesh_etcd_revision",
        "The etcd revision of the last registry snapshot or event",
        gauge(s.etcd_revision),
    );
    r.register(
        "linkmesh_etcd_failed_keepalives",
        "Consecutive failed keepalives right now (0: etcd answers)",
        gauge(i64::from(s.lease_failures)),
    );
    r.register(
        "linkmesh_vip_health_check_seconds",
        "Duration of passed health checks",
        h.health_check_seconds.clone(),
    );
}

fn register_ebpf_and_api(r: &mut Registry, s: &Snapshot) {
    let events = Family::<Labels, Counter>::default();
    events
        .get_or_create(&labels(&[("ring", "conflicts")]))
        .inc_by(s.ebpf_events);
    r.register(
        "linkmesh_ebpf_events",
        "Events read from the eBPF programs' ring buffers",
        events,
    );
    let drops = Family::<Labels, Counter>::default();
    drops
        .get_or_create(&labels(&[("ring", "conflicts")]))
        .inc_by(s.ebpf_ring_drops);
    r.register(
        "linkmesh_ebpf_ring_drops",
        "Events an eBPF program dropped because its ring buffer was full",
        drops,
    );
    r.register(
        "linkmesh_vip_records_rejected",
        "VIP records and coordination keys that did not verify (forged, malformed, copied, replayed), each revision once",
        counter(s.vip_records_rejected),
    );
    r.register(
        "linkmesh_vip_foreign_addresses_refused",
        "Binds refused because the VIP's address was on the host already and linkmesh had not added it",
        counter(s.vip_foreign_addresses),
    );
    r.register(
        "linkmesh_vip_delivery_failures",
        "Port maps and routes of held VIPs that could not be programmed",
        counter(s.vip_delivery_failures),
    );
    r.register(
        "linkmesh_vip_port_mapped",
        "VIPs whose ports this host maps now (held here, with port maps)",
        gauge(i64::try_from(s.vip_port_mapped).unwrap_or(i64::MAX)),
    );
    let notify = Family::<Labels, Counter>::default();
    for (result, n) in ["ok", "failed", "timeout", "dropped"]
        .into_iter()
        .zip(s.vip_notify)
    {
        notify
            .get_or_create(&labels(&[("result", result)]))
            .inc_by(n);
    }
    r.register(
        "linkmesh_vip_notify_hooks",
        "Notify hook runs by result; dropped: transitions not told because a VIP's hooks fell behind",
        notify,
    );
    r.register(
        "linkmesh_vip_foreign_replies_ignored",
        "ARP replies for a VIP held by another host that came from a MAC other than the one its owner published (forged or stray), ignored by the probes",
        counter(s.vip_foreign_replies),
    );
    r.register(
        "linkmesh_peer_heartbeats_rejected",
        "Heartbeats from a known peer's address without that peer's token (spoofed, or from before a token rotation), dropped",
        counter(s.peer_heartbeats_rejected),
    );
    r.register(
        "linkmesh_peer_probes_rejected",
        "Indirect probe messages on the heartbeat port that were malformed or not signed with the fleet's secret, dropped",
        counter(s.peer_probes_rejected),
    );
    r.register(
        "linkmesh_api_refused",
        "API requests refused before a handler: a foreign Host, a change without credentials, a change that is not JSON",
        counter(s.api_refusals),
    );
    r.register(
        "linkmesh_api_tls_handshake_failures",
        "API connections whose TLS handshake failed or timed out",
        counter(s.api_tls_failures),
    );
    r.register(
        "linkmesh_api_connections",
        "API connections open (TLS handshakes included)",
        gauge(i64::try_from(s.api_connections).unwrap_or(i64::MAX)),
    );
    r.register(
        "linkmesh_api_connections_evicted",
        "API connections closed to make room at the connection cap (the longest idle), or refused with every connection busy",
        counter(s.api_connections_evicted),
    );
    r.register(
        "linkmesh_api_connections_timed_out",
        "API connections closed for sending no request in time or idling too long",
        counter(s.api_connections_timed_out),
    );
}

fn register_dns(r: &mut Registry, s: &Snapshot) {
    let g = |n: u64| gauge(i64::try_from(n).unwrap_or(i64::MAX));
    r.register(
        "linkmesh_dns_names",
        "Names in the --hosts-dir file now (hosts and named floating IPs)",
        g(s.dns_names),
    );
    r.register(
        "linkmesh_dns_names_left_out",
        "Hosts and floating IPs left out of the --hosts-dir file now: a host name that is not one DNS label, one that differs from another only in case, or a floating IP's name that is a host's",
        g(s.dns_left_out),
    );
    r.register(
        "linkmesh_dns_writes",
        "Times the --hosts-dir file was replaced (only when its text changed)",
        counter(s.dns_writes),
    );
    r.register(
        "linkmesh_dns_write_failures",
        "Writes of the --hosts-dir file that failed (each is tried again)",
        counter(s.dns_write_failures),
    );
}

/// Per-peer series for the peers this host heartbeats (a bounded set, so a
/// scrape stays small in a fleet of thousands), and every peer counted by
/// verdict.
fn register_peers(r: &mut Registry, s: &Snapshot) {
    let age = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let alive = Family::<Labels, Gauge>::default();
    let heartbeats = Family::<Labels, Counter>::default();
    let vxlan = Family::<Labels, Counter>::default();
    let verdicts = Family::<Labels, Gauge>::default();
    for p in &s.peers {
        let state = if p.alive { "alive" } else { "dead" };
        verdicts
            .get_or_create(&labels(&[("state", state), ("verdict", &p.verdict)]))
            .inc();
        if !p.monitored {
            continue;
        }
        let l = labels(&[("peer", &p.hostname)]);
        if let Some(ms) = p.last_seen_ms {
            age.get_or_create(&l).set(ms / 1000.0);
        }
        alive.get_or_create(&l).set(i64::from(p.alive));
        heartbeats.get_or_create(&l).inc_by(p.heartbeats);
        vxlan.get_or_create(&l).inc_by(p.vxlan_packets);
    }
    r.register(
        "linkmesh_peers",
        "Registered peers by state and by what the verdict rests on (heartbeat, vxlan, indirect, lease)",
        verdicts,
    );
    r.register(
        "linkmesh_peer_last_seen_age_seconds",
        "Seconds since the eBPF watcher last saw a heartbeat or VXLAN packet from the heartbeated peer",
        age,
    );
    r.register(
        "linkmesh_peer_alive",
        "1 while the heartbeated peer is heard within five heartbeat intervals",
        alive,
    );
    r.register(
        "linkmesh_peer_heartbeats",
        "Heartbeats the eBPF watcher counted from the heartbeated peer",
        heartbeats,
    );
    r.register(
        "linkmesh_peer_vxlan_packets",
        "VXLAN packets the eBPF watcher counted from the heartbeated peer",
        vxlan,
    );
}

/// The scrape body.
#[must_use]
pub fn render(s: &Snapshot, h: &Histograms<'_>) -> String {
    let mut r = Registry::default();
    register_vips(&mut r, &s.vips);
    register_mesh(&mut r, s);
    register_etcd(&mut r, s, h);
    register_peers(&mut r, s);
    register_ebpf_and_api(&mut r, s);
    register_dns(&mut r, s);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(id: &str, state: State) -> VipStatus {
        VipStatus {
            id: id.into(),
            address: "198.18.0.100/24".into(),
            owner: Some("h1".into()),
            state,
            interface: Some("eth0".into()),
            conflicts: 2,
            strays: 0,
            fast_failover: true,
            suspects_owner: false,
            transitions: 3,
            announcements: 5,
            health_checks_passed: 7,
            health_checks_failed: 1,
            restores: 0,
        }
    }

    #[test]
    fn a_scrape_has_conventional_names_and_one_state_per_vip() {
        let keepalive = Histogram::new([0.001, 0.01]);
        keepalive.observe(0.004);
        let health = Histogram::new([0.001]);
        let s = Snapshot {
            vips: vec![vip("v1", State::Activated)],
            segments: [
                ("blue".to_owned(), (true, 2)),
                ("red".to_owned(), (false, 0)),
            ]
            .into(),
            rejected: [("bad_signature".to_owned(), 4)].into(),
            netlink_writes: 9,
            ..Snapshot::default()
        };
        let text = render(
            &s,
            &Histograms {
                keepalive_seconds: Some(&keepalive),
                health_check_seconds: &health,
            },
        );
        for line in [
            "linkmesh_vip_state{vip=\"v1\",state=\"ACTIVATED\"} 1",
            "linkmesh_vip_state{vip=\"v1\",state=\"STANDBY\"} 0",
            "linkmesh_vip_transitions_total{vip=\"v1\"} 3",
            "linkmesh_vip_announcements_total{vip=\"v1\"} 5",
            "linkmesh_vip_conflicts_total{vip=\"v1\"} 2",
            "linkmesh_vip_health_checks_total{vip=\"v1\",result=\"fail\"} 1",
            "linkmesh_mesh_peers{segment=\"blue\"} 2",
            "linkmesh_mesh_fdb_entries 2",
            "linkmesh_netlink_writes_total 9",
            "linkmesh_records_rejected_total{reason=\"bad_signature\"} 4",
            "linkmesh_etcd_keepalive_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
        assert!(!text.contains("segment=\"red\""), "only joined segments");
        assert_eq!(
            text.matches("linkmesh_vip_state{").count(),
            4,
            "one series per state"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
