//! Peer health: small UDP heartbeats to every registered host over the
//! underlay, and a liveness table built from what `peer_watch` counted in
//! the kernel. Nothing here reads a socket: the program counts heartbeats
//! and VXLAN packets per peer (and consumes the heartbeats), the agent only
//! samples its map.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use linkmesh_common::{HEARTBEAT_MAGIC, HEARTBEAT_TOKEN_OFFSET};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::clock::mono_now as ktime_now;
use crate::ebpf::peer::{PeerSample, PeerWatcher};
use crate::mesh::Underlay;
use crate::registry::{RegistryView, Secrets, heartbeat_tokens};

/// The heartbeat wire format version (the byte after the magic): 2 carries
/// the sender's token.
const HEARTBEAT_VERSION: u8 = 2;
/// How often the counters are sampled for the loss window.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Loss is reported over this much history.
const LOSS_WINDOW: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
pub struct PeerSettings {
    /// UDP port heartbeats are sent to (and counted on).
    pub port: u16,
    /// Time between two heartbeats to each peer.
    pub interval: Duration,
    /// How often `peer_watch`'s attachment is checked (and restored).
    pub resync: Duration,
}

impl PeerSettings {
    /// A peer not heard from for this long is reported dead: five missed
    /// heartbeats, and never less than 100 ms.
    #[must_use]
    pub fn dead_after(&self) -> Duration {
        (self.interval * 5).max(Duration::from_millis(100))
    }
}

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
}

/// The heartbeat payload: magic, version, three zero bytes, the sender's
/// token (zero until the sender has one), the sender's host name.
#[must_use]
pub fn heartbeat_payload(hostname: &str, token: [u8; 8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(HEARTBEAT_TOKEN_OFFSET + 8 + hostname.len());
    p.extend_from_slice(&HEARTBEAT_MAGIC);
    p.push(HEARTBEAT_VERSION);
    p.resize(HEARTBEAT_TOKEN_OFFSET, 0);
    p.extend_from_slice(&token);
    p.extend_from_slice(hostname.as_bytes());
    p
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

#[derive(Debug, Default)]
struct Peer {
    hostname: String,
    history: VecDeque<(Duration, u64)>,
    /// Heard within `dead_after` at the last sample.
    alive: bool,
    /// Whether the program's map holds this peer's tokens, and for which
    /// heartbeat nonce (`None`: it publishes none), so tokens are derived
    /// and written again only when the nonce changes.
    token_written: bool,
    token_nonce: Option<u64>,
}

#[derive(Default)]
struct Inner {
    watcher: Option<PeerWatcher>,
    /// Our own heartbeat payload, for the nonce in our own record.
    payload: Option<(Option<u64>, Vec<u8>)>,
    peers: BTreeMap<Ipv4Addr, Peer>,
    /// Host name -> address, for every registered host but this one
    /// (IPv6 underlays included, though only IPv4 is watched).
    addresses: BTreeMap<String, IpAddr>,
}

/// Peer liveness, shared by the heartbeat task, the floating-IP manager
/// and the API.
pub struct PeerHealth {
    settings: PeerSettings,
    inner: Mutex<Inner>,
}

impl PeerHealth {
    #[must_use]
    pub fn new(settings: PeerSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            inner: Mutex::default(),
        })
    }

    #[must_use]
    pub fn settings(&self) -> PeerSettings {
        self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `peer_watch` is loaded and attached.
    #[must_use]
    pub fn watching(&self) -> bool {
        self.lock().watcher.is_some()
    }

    /// The registered underlay address of `hostname`.
    #[must_use]
    pub fn address_of(&self, hostname: &str) -> Option<IpAddr> {
        self.lock().addresses.get(hostname).copied()
    }

    fn sample(inner: &mut Inner, ip: Ipv4Addr) -> Option<PeerSample> {
        inner.watcher.as_mut()?.sample(ip)
    }

    /// Heartbeats the program dropped for a missing or wrong token.
    #[must_use]
    pub fn heartbeats_rejected(&self) -> u64 {
        self.lock()
            .watcher
            .as_mut()
            .and_then(|w| w.heartbeats_rejected().ok())
            .unwrap_or(0)
    }

    /// Whether any peer other than `except` sent a heartbeat after `after`
    /// (monotonic time): the proof that our own link worked at a time the
    /// owner should have answered. Only heartbeats count: they carry the
    /// sender's token, while VXLAN packets from a peer's address can be
    /// spoofed by anyone on the underlay.
    #[must_use]
    pub fn any_other_heard_after(&self, except: Option<IpAddr>, after: Duration) -> bool {
        let mut inner = self.lock();
        let ips: Vec<Ipv4Addr> = inner
            .peers
            .keys()
            .filter(|ip| except != Some(IpAddr::V4(**ip)))
            .copied()
            .collect();
        ips.into_iter()
            .filter_map(|ip| Self::sample(&mut inner, ip)?.last_heartbeat)
            .any(|t| t > after)
    }

    /// The liveness table, by host name.
    #[must_use]
    pub fn table(&self) -> Vec<PeerLiveness> {
        let mut inner = self.lock();
        let now = ktime_now();
        let ms = |t: Option<Duration>| t.map(|t| now.saturating_sub(t).as_secs_f64() * 1000.0);
        let dead_after = self.settings.dead_after();
        let addresses: Vec<(String, IpAddr)> = inner
            .addresses
            .iter()
            .map(|(h, a)| (h.clone(), *a))
            .collect();
        let mut rows: Vec<_> = addresses
            .into_iter()
            .map(|(hostname, address)| {
                let (sample, history) = match address {
                    IpAddr::V4(v4) => (
                        Self::sample(&mut inner, v4).unwrap_or_default(),
                        inner.peers.get(&v4).map(|p| &p.history),
                    ),
                    IpAddr::V6(_) => (PeerSample::default(), None),
                };
                let last = sample.last_seen();
                PeerLiveness {
                    hostname,
                    address,
                    last_seen_ms: ms(last),
                    heartbeat_age_ms: ms(sample.last_heartbeat),
                    vxlan_age_ms: ms(sample.last_vxlan),
                    heartbeats: sample.heartbeats,
                    vxlan_packets: sample.vxlan_packets,
                    loss: history.and_then(|h| loss(h, self.settings.interval)),
                    alive: last.is_some_and(|t| now.saturating_sub(t) <= dead_after),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        rows
    }

    /// Takes the registry's hosts (all but `me`), their heartbeat tokens,
    /// our own token, and the segment ports.
    fn update(&self, view: &RegistryView, me: &str, secrets: &Secrets) {
        let mut inner = self.lock();
        let nonce = view.hosts.get(me).and_then(|h| h.heartbeat_nonce);
        if inner.payload.as_ref().is_none_or(|(n, _)| *n != nonce) {
            let token = nonce.map_or([0; 8], |n| heartbeat_tokens(secrets, me, n)[0]);
            inner.payload = Some((nonce, heartbeat_payload(me, token)));
        }
        inner.addresses = view
            .hosts
            .iter()
            .filter(|(name, _)| name.as_str() != me)
            .map(|(name, h)| (name.clone(), h.address))
            .collect();
        let Inner {
            watcher,
            peers,
            addresses,
            ..
        } = &mut *inner;
        let mut gone = std::mem::take(peers);
        for (name, a) in addresses.iter() {
            let IpAddr::V4(ip) = a else { continue };
            let mut p = gone.remove(ip).unwrap_or_default();
            if p.hostname != *name {
                // Another host on this address: its own token.
                p.hostname.clone_from(name);
                p.token_written = false;
            }
            peers.insert(*ip, p);
        }
        let ports: BTreeSet<u16> = view.segments.values().map(|s| s.port).collect();
        let addresses: BTreeSet<Ipv4Addr> = peers.keys().copied().collect();
        let Some(w) = watcher.as_mut() else { return };
        if let Err(e) = w
            .set_peers(&addresses)
            .and_then(|()| w.set_ports(self.settings.port, &ports))
        {
            warn!(error = %e, "updating the peer maps failed");
        }
        // Tokens: an HMAC per peer whose nonce changed, none per unchanged
        // one; a failed write is tried again at the next change.
        let mut failed = None;
        for ip in gone.keys() {
            if let Err(e) = w.set_token(*ip, None) {
                failed = Some(e);
            }
        }
        for (ip, p) in peers.iter_mut() {
            let nonce = view.hosts.get(&p.hostname).and_then(|h| h.heartbeat_nonce);
            if p.token_written && p.token_nonce == nonce {
                continue;
            }
            let value =
                nonce.map(|n| heartbeat_tokens(secrets, &p.hostname, n).map(u64::from_ne_bytes));
            match w.set_token(*ip, value) {
                Ok(()) => (p.token_written, p.token_nonce) = (true, nonce),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            warn!(error = %e, "updating the heartbeat tokens failed");
        }
    }

    /// Our heartbeat payload (with our current token).
    fn payload(&self) -> Vec<u8> {
        self.lock()
            .payload
            .as_ref()
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    }

    /// Records every peer's heartbeat count for the loss window.
    fn record(&self) {
        let mut inner = self.lock();
        let now = ktime_now();
        let ips: Vec<Ipv4Addr> = inner.peers.keys().copied().collect();
        let dead_after = self.settings.dead_after();
        let samples: Vec<_> = ips
            .into_iter()
            .map(|ip| (ip, Self::sample(&mut inner, ip).unwrap_or_default()))
            .collect();
        for (ip, sample) in samples {
            if let Some(p) = inner.peers.get_mut(&ip) {
                p.alive = sample
                    .last_seen()
                    .is_some_and(|t| now.saturating_sub(t) <= dead_after);
                p.history.push_back((now, sample.heartbeats));
                while p
                    .history
                    .front()
                    .is_some_and(|(t, _)| now.saturating_sub(*t) > LOSS_WINDOW)
                {
                    p.history.pop_front();
                }
            }
        }
    }

    /// The addresses heartbeats go to, and whether each peer was alive at
    /// the last sample.
    fn targets(&self) -> Vec<(SocketAddr, bool)> {
        self.lock()
            .peers
            .iter()
            .map(|(ip, p)| {
                (
                    SocketAddr::new(IpAddr::V4(*ip), self.settings.port),
                    p.alive,
                )
            })
            .collect()
    }
}

/// Quiet peers (not heard lately) with a socket of their own; more share one.
const QUIET_SOCKETS: usize = 64;

/// The sockets heartbeats leave from. A datagram to a host whose address
/// does not resolve waits in the kernel's ARP queue, charged to the socket
/// that sent it, until resolution fails (about 3 s); a few such hosts fill
/// a socket's send buffer, and from then on every send on it fails with
/// EAGAIN. So only live peers share the main socket, and each quiet peer
/// (crashed, cut off, or not heard yet) gets a socket of its own (up to
/// [`QUIET_SOCKETS`], then a shared one): a dead host's queue only ever
/// blocks heartbeats to itself.
struct Senders {
    main: UdpSocket,
    address: IpAddr,
    quiet: BTreeMap<SocketAddr, UdpSocket>,
    overflow: Option<UdpSocket>,
    failures: u64,
}

impl Senders {
    fn send(&mut self, payload: &[u8], targets: &[(SocketAddr, bool)]) {
        // Sockets of peers that are alive again or gone (one pass, not one
        // scan of the targets per socket: this runs every beat).
        let quiet: std::collections::BTreeSet<SocketAddr> = targets
            .iter()
            .filter(|(_, alive)| !alive)
            .map(|(a, _)| *a)
            .collect();
        self.quiet.retain(|t, _| quiet.contains(t));
        for &(target, alive) in targets {
            let socket = if alive {
                Some(&self.main)
            } else if let Some(s) = self.quiet.get(&target) {
                Some(s)
            } else if self.quiet.len() < QUIET_SOCKETS {
                quiet_socket(self.address)
                    .ok()
                    .map(|s| &*self.quiet.entry(target).or_insert(s))
            } else {
                if self.overflow.is_none() {
                    self.overflow = quiet_socket(self.address).ok();
                }
                self.overflow.as_ref()
            };
            let Some(socket) = socket else { continue };
            if let Err(e) = socket.send_to(payload, target) {
                self.failures += 1;
                if self.failures.is_power_of_two() {
                    debug!(peer = %target, alive, error = %e, failures = self.failures, "sending a heartbeat failed");
                }
            }
        }
    }
}

/// A non-blocking socket on an ephemeral port of `address`.
fn quiet_socket(address: IpAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind((address, 0))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Opens the heartbeat socket on the heartbeat port, so that (with the
/// program detached) heartbeats are not answered with port-unreachables.
/// Falls back to an ephemeral port when the port is taken.
fn heartbeat_socket(address: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind((address, port)).or_else(|e| {
        warn!(port, error = %e, "cannot bind the heartbeat port; sending from an ephemeral port");
        UdpSocket::bind((address, 0))
    })?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Sends heartbeats and keeps `peer_watch` and its maps in step with the
/// registry, until aborted (or the registry sync ends).
pub async fn run(
    health: Arc<PeerHealth>,
    underlay: Underlay,
    (hostname, secrets): (String, Secrets),
    mut view: watch::Receiver<RegistryView>,
) {
    if !underlay.address.is_ipv4() {
        warn!(address = %underlay.address, "peer health needs an IPv4 underlay; heartbeats are off");
        return;
    }
    let ifname = underlay.ifname.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let mut w = PeerWatcher::new()?;
        w.attach(&ifname)?;
        Ok::<_, crate::ebpf::WatchError>(w)
    })
    .await;
    match loaded {
        Ok(Ok(w)) => {
            info!(interface = %underlay.ifname, port = health.settings.port, "peer watcher attached");
            health.lock().watcher = Some(w);
        }
        Ok(Err(e)) => {
            warn!(error = %e, "the eBPF peer watcher is not available; peer liveness is unknown");
        }
        Err(e) => warn!(error = %e, "loading the eBPF peer watcher failed"),
    }
    let main = match heartbeat_socket(underlay.address, health.settings.port) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot open a heartbeat socket; heartbeats are off");
            return;
        }
    };
    let mut senders = Senders {
        main,
        address: underlay.address,
        quiet: BTreeMap::new(),
        overflow: None,
        failures: 0,
    };
    health.update(&view.borrow_and_update(), &hostname, &secrets);
    let mut payload = health.payload();
    let mut beat = tokio::time::interval(health.settings.interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sample = tokio::time::interval(SAMPLE_EVERY);
    let mut resync = tokio::time::interval(health.settings.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = beat.tick() => senders.send(&payload, &health.targets()),
            _ = sample.tick() => health.record(),
            _ = resync.tick() => {
                if let Some(w) = health.lock().watcher.as_mut() {
                    w.reattach_missing();
                }
            }
            r = view.changed() => {
                if r.is_err() { return; }
                health.update(&view.borrow_and_update(), &hostname, &secrets);
                payload = health.payload();
            }
        }
    }
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
        "{:<20} {:<16} {:<6} {:>10} {:>10} {:>10} {:>6}\n",
        "HOST", "ADDRESS", "ALIVE", "LAST SEEN", "HEARTBEAT", "VXLAN", "LOSS"
    );
    for p in &report.peers {
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:<6} {:>10} {:>10} {:>10} {:>6}",
            p.hostname,
            p.address.to_string(),
            if p.alive { "yes" } else { "no" },
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
    fn payload_starts_with_the_magic_and_carries_the_token() {
        let p = heartbeat_payload("h1", *b"12345678");
        assert_eq!(&p[..4], b"LMHB");
        assert_eq!(p[4], HEARTBEAT_VERSION);
        assert_eq!(&p[5..8], [0; 3]);
        assert_eq!(
            &p[HEARTBEAT_TOKEN_OFFSET..HEARTBEAT_TOKEN_OFFSET + 8],
            b"12345678"
        );
        assert_eq!(&p[16..], b"h1");
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
    fn dead_after_has_a_floor() {
        let s = |i| PeerSettings {
            port: 1,
            interval: ms(i),
            resync: ms(30_000),
        };
        assert_eq!(s(20).dead_after(), ms(100));
        assert_eq!(s(100).dead_after(), ms(500));
    }
}
