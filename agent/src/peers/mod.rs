//! Peer health: small UDP heartbeats over the underlay to a bounded set of
//! hosts (`fanout`: ring neighbours and VIP partners, whatever the fleet's
//! size), and a liveness table built from what `peer_watch` counted in the
//! kernel. Nothing here reads a socket: the program counts heartbeats and
//! VXLAN packets per peer (and consumes the heartbeats), the agent only
//! samples its map, for the peers it watches; every registered peer has an
//! entry, so VXLAN traffic is counted from all of them.

pub mod fanout;
pub mod indirect;
mod send;
mod table;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use self::fanout::{Fanout, Ring, Targets};
use self::indirect::{Indirect, Message};
pub use self::send::heartbeat_payload;
use self::send::{Senders, heartbeat_socket};
use self::table::LOSS_WINDOW;
pub use self::table::{PeerLiveness, PeersReport, loss, render_table, verdict};
use crate::clock::mono_now as ktime_now;
use crate::ebpf::peer::{PeerSample, PeerWatcher};
use crate::mesh::Underlay;
use crate::registry::{RegistryView, Secrets, heartbeat_tokens};

/// How often the counters of watched peers are sampled for the loss window.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug)]
pub struct PeerSettings {
    /// UDP port heartbeats are sent to (and counted on).
    pub port: u16,
    /// Time between two heartbeats to each peer.
    pub interval: Duration,
    /// How often `peer_watch`'s attachment is checked (and restored).
    pub resync: Duration,
    /// How many hosts get heartbeats.
    pub fanout: Fanout,
}

impl PeerSettings {
    /// A peer not heard from for this long is reported dead: five missed
    /// heartbeats, and never less than 100 ms.
    #[must_use]
    pub fn dead_after(&self) -> Duration {
        (self.interval * 5).max(Duration::from_millis(100))
    }
}

#[derive(Debug, Default)]
struct Peer {
    hostname: String,
    /// Heartbeats are exchanged with it (ring neighbour or VIP partner).
    monitored: bool,
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
    /// Every registered IPv4 peer, by address.
    peers: BTreeMap<Ipv4Addr, Peer>,
    /// Host name -> address, for every registered host but this one
    /// (IPv6 underlays included, though only IPv4 is watched).
    addresses: BTreeMap<String, IpAddr>,
    /// Every registered host, this one included.
    ring: Ring,
    /// VIP -> the hosts taking part in it.
    vip_members: BTreeMap<String, BTreeSet<String>>,
    /// Whom we heartbeat and expect heartbeats from.
    targets: Targets,
    /// Their IPv4 addresses: what every beat, sample and probe round walks
    /// (never all N).
    monitored: BTreeSet<Ipv4Addr>,
    me: String,
    /// Indirect probes (`None` until the heartbeat task starts).
    indirect: Option<Indirect>,
    /// Probe messages dropped: malformed, or not signed with the secret.
    probes_rejected: u64,
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

    /// Indirect probe messages dropped: malformed, or not signed with the
    /// fleet's secret.
    #[must_use]
    pub fn probes_rejected(&self) -> u64 {
        self.lock().probes_rejected
    }

    /// A datagram that reached the heartbeat socket from `src`: a probe
    /// message is verified and answered; heartbeats (which arrive here only
    /// while the program is not attached) are left alone.
    fn on_datagram(
        &self,
        bytes: &[u8],
        src: Ipv4Addr,
        secrets: &Secrets,
    ) -> Option<(Ipv4Addr, Message)> {
        if bytes.starts_with(&linkmesh_common::HEARTBEAT_MAGIC) {
            return None;
        }
        let mut inner = self.lock();
        match Message::decode(bytes, secrets) {
            Ok(m) => inner.indirect.as_mut()?.receive(ktime_now(), src, m),
            Err(why) => {
                inner.probes_rejected += 1;
                if inner.probes_rejected.is_power_of_two() {
                    warn!(from = %src, ?why, rejected = inner.probes_rejected, "dropped a probe message");
                }
                None
            }
        }
    }

    /// Asks helpers about the watched peers that fell silent (see
    /// [`indirect`]): at most a few messages per silent peer per round.
    fn probe_round(&self) -> Vec<(Ipv4Addr, Message)> {
        let mut inner = self.lock();
        let (mut silent, mut helpers) = (Vec::new(), Vec::new());
        let Inner {
            peers, monitored, ..
        } = &*inner;
        for (ip, p) in monitored.iter().filter_map(|ip| Some((ip, peers.get(ip)?))) {
            if p.alive {
                helpers.push(*ip);
            } else {
                silent.push(*ip);
            }
        }
        let now = ktime_now();
        inner
            .indirect
            .as_mut()
            .map(|i| i.tick(now, &silent, &helpers, crate::random::u64))
            .unwrap_or_default()
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

    /// Whether any watched peer other than `except` sent a heartbeat after
    /// `after` (monotonic time): the proof that our own link worked at a
    /// time the owner should have answered. Only heartbeats count: they
    /// carry the sender's token, while VXLAN packets from a peer's address
    /// can be spoofed by anyone on the underlay.
    #[must_use]
    pub fn any_other_heard_after(&self, except: Option<IpAddr>, after: Duration) -> bool {
        let mut inner = self.lock();
        let ips: Vec<Ipv4Addr> = inner
            .monitored
            .iter()
            .filter(|ip| except != Some(IpAddr::V4(**ip)))
            .copied()
            .collect();
        ips.into_iter()
            .filter_map(|ip| Self::sample(&mut inner, ip)?.last_heartbeat)
            .any(|t| t > after)
    }

    /// The liveness table, by host name: every registered peer (a map
    /// lookup each, so this costs O(N) when asked, never in the loop).
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
                let (sample, peer) = match address {
                    IpAddr::V4(v4) => (
                        Self::sample(&mut inner, v4).unwrap_or_default(),
                        inner.peers.get(&v4),
                    ),
                    IpAddr::V6(_) => (PeerSample::default(), None),
                };
                let monitored = peer.is_some_and(|p| p.monitored);
                let reached = match (address, &inner.indirect) {
                    (IpAddr::V4(v4), Some(i)) => i.fresh(v4, now),
                    _ => false,
                };
                let (alive, source) = verdict(monitored, &sample, reached, now, dead_after);
                PeerLiveness {
                    hostname,
                    address,
                    last_seen_ms: ms(sample.last_seen()),
                    heartbeat_age_ms: ms(sample.last_heartbeat),
                    vxlan_age_ms: ms(sample.last_vxlan),
                    heartbeats: sample.heartbeats,
                    vxlan_packets: sample.vxlan_packets,
                    loss: peer
                        .filter(|p| p.monitored)
                        .and_then(|p| loss(&p.history, self.settings.interval)),
                    alive,
                    monitored,
                    verdict: source.to_owned(),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        rows
    }

    /// The hosts taking part in VIP `id` (empty: none, or the VIP is gone).
    pub fn set_vip_members(&self, id: &str, hosts: BTreeSet<String>) {
        let mut inner = self.lock();
        if hosts.is_empty() {
            inner.vip_members.remove(id);
        } else {
            inner.vip_members.insert(id.to_owned(), hosts);
        }
        self.retarget(&mut inner);
    }

    /// Chooses whom to heartbeat again, after the hosts or the VIP
    /// memberships changed: O(k log N), and only the peers that join or
    /// leave the set are touched.
    fn retarget(&self, inner: &mut Inner) {
        let targets = fanout::targets(
            &inner.ring,
            &inner.vip_members,
            &inner.me,
            self.settings.fanout,
        );
        let want: BTreeSet<Ipv4Addr> = targets
            .ring
            .iter()
            .chain(&targets.partners)
            .filter_map(|name| match inner.addresses.get(name) {
                Some(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })
            .collect();
        if want == inner.monitored && targets == inner.targets {
            return;
        }
        let Inner {
            peers, monitored, ..
        } = &mut *inner;
        for ip in monitored.symmetric_difference(&want) {
            if let Some(p) = peers.get_mut(ip) {
                p.monitored = want.contains(ip);
                p.history.clear();
            }
        }
        if targets != inner.targets {
            info!(
                ring = targets.ring.len(),
                vip_partners = targets.partners.len(),
                hosts = inner.ring.len(),
                "heartbeat targets chosen"
            );
        }
        inner.monitored = want;
        inner.targets = targets;
    }

    /// Takes the registry's hosts (all but `me`), their heartbeat tokens,
    /// our own token, and the segment ports. What changed is written to
    /// the program's maps; the rest is compared in memory only.
    fn update(&self, view: &RegistryView, me: &str, secrets: &Secrets) {
        let mut inner = self.lock();
        me.clone_into(&mut inner.me);
        let nonce = view.hosts.get(me).and_then(|h| h.heartbeat_nonce);
        if inner.payload.as_ref().is_none_or(|(n, _)| *n != nonce) {
            let token = nonce.map_or([0; 8], |n| heartbeat_tokens(secrets, me, n)[0]);
            inner.payload = Some((nonce, heartbeat_payload(me, token)));
        }
        let addresses: BTreeMap<String, IpAddr> = view
            .hosts
            .iter()
            .filter(|(name, _)| name.as_str() != me)
            .map(|(name, h)| (name.clone(), h.address))
            .collect();
        let Inner {
            watcher,
            peers,
            ring,
            addresses: known,
            ..
        } = &mut *inner;
        for name in known.keys().filter(|n| !addresses.contains_key(*n)) {
            ring.remove(name);
        }
        for name in addresses.keys().filter(|n| !known.contains_key(*n)) {
            ring.insert(name);
        }
        ring.insert(me);
        *known = addresses;
        let mut gone = std::mem::take(peers);
        let mut added = Vec::new();
        for (name, a) in known.iter() {
            let IpAddr::V4(ip) = a else { continue };
            let mut p = gone.remove(ip).unwrap_or_else(|| {
                added.push(*ip);
                Peer::default()
            });
            if p.hostname != *name {
                // Another host on this address: its own token, and watched
                // or not as that host is (chosen below).
                p.hostname.clone_from(name);
                p.token_written = false;
                p.monitored = false;
            }
            peers.insert(*ip, p);
        }
        let ports: BTreeSet<u16> = view.segments.values().map(|s| s.port).collect();
        if let Some(w) = watcher.as_mut() {
            Self::write_maps(w, peers, (&added, &gone), view, secrets);
            if let Err(e) = w.set_ports(self.settings.port, &ports) {
                warn!(error = %e, "updating the peer ports failed");
            }
        }
        // Addresses that went or now belong to someone else are chosen
        // afresh.
        let Inner {
            peers, monitored, ..
        } = &mut *inner;
        monitored.retain(|ip| peers.get(ip).is_some_and(|p| p.monitored));
        self.retarget(&mut inner);
    }

    /// Adds the new peers' entries, removes the gone ones', and writes the
    /// tokens that changed: an HMAC per peer whose nonce changed, none per
    /// unchanged one; a failed write is tried again at the next change.
    fn write_maps(
        w: &mut PeerWatcher,
        peers: &mut BTreeMap<Ipv4Addr, Peer>,
        (added, gone): (&[Ipv4Addr], &BTreeMap<Ipv4Addr, Peer>),
        view: &RegistryView,
        secrets: &Secrets,
    ) {
        let mut failed = None;
        for ip in added {
            if let Err(e) = w.add_peer(*ip) {
                failed = Some(e);
            }
        }
        for ip in gone.keys() {
            if let Err(e) = w.remove_peer(*ip).and_then(|()| w.set_token(*ip, None)) {
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
            warn!(error = %e, "updating the peer maps failed");
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

    /// Records every watched peer's heartbeat count for the loss window.
    fn record(&self) {
        let mut inner = self.lock();
        let now = ktime_now();
        let ips: Vec<Ipv4Addr> = inner.monitored.iter().copied().collect();
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
        let inner = self.lock();
        inner
            .monitored
            .iter()
            .map(|ip| {
                (
                    SocketAddr::new(IpAddr::V4(*ip), self.settings.port),
                    inner.peers.get(ip).is_some_and(|p| p.alive),
                )
            })
            .collect()
    }
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
    let control = main.try_clone().and_then(tokio::net::UdpSocket::from_std);
    let control = match control {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch the heartbeat socket; heartbeats are off");
            return;
        }
    };
    if let IpAddr::V4(me) = underlay.address {
        health.lock().indirect = Some(Indirect::new(me));
    }
    let mut senders = Senders::new(main, underlay.address);
    let port = health.settings.port;
    let send = |(to, m): (Ipv4Addr, Message)| {
        // Best effort, like heartbeats: a lost one is asked again.
        let _ = control.try_send_to(&m.encode(&secrets), SocketAddr::new(IpAddr::V4(to), port));
    };
    let mut buf = [0u8; 512];
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
            _ = sample.tick() => {
                health.record();
                health.probe_round().into_iter().for_each(send);
            }
            r = control.recv_from(&mut buf) => {
                if let Ok((n, SocketAddr::V4(src))) = r
                    && let Some(out) = health.on_datagram(&buf[..n], *src.ip(), &secrets)
                {
                    send(out);
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn dead_after_has_a_floor() {
        let s = |i| PeerSettings {
            port: 1,
            interval: ms(i),
            resync: ms(30_000),
            fanout: Fanout::default(),
        };
        assert_eq!(s(20).dead_after(), ms(100));
        assert_eq!(s(100).dead_after(), ms(500));
    }
}
