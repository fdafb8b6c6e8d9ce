//! The floating-IP subsystem's one place of IO: it turns what happens
//! (registry changes, the ownership lease, health results, eBPF conflicts,
//! address notifications, timers) into inputs of [`Core`], runs the
//! effects it returns, on etcd, the kernel and the eBPF watcher, and feeds
//! their results back.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::core::Core;
use super::ledger::Ledger;
use super::{Input, Lease, Observe, Settings, StatusMap};
use crate::addr::MacAddr;
use crate::clock::mono_now;
use crate::ebpf::vip::{ConflictStream, VipWatcher};
use crate::etcd::lease::{self, LeaseInfo, LeaseSettings};
use crate::etcd::writer::{self, Write};
use crate::kernel::Netlink;
use crate::kernel::events::KernelEvents;
use crate::kernel::packet::RawSender;
use crate::peers::PeerHealth;
use crate::registry::{Keys, RegistryView, Secrets, VipChange};

/// How often the ownership lease is renewed: a third of the TTL, at most
/// every second (see [`fence_margin`]).
#[must_use]
pub fn renew_interval(ttl: Duration) -> Duration {
    (ttl / 3).min(Duration::from_secs(1))
}

/// The self-fencing margin. The deadline starts from when the acknowledged
/// keepalive was *sent*, so it is never later than etcd's own expiry (which
/// counts from when the leader received it). The margin then covers
/// unbinding itself (a netlink request, about a millisecond) and the fence
/// tick (50 ms), with room to spare: a tenth of the TTL, at least 200 ms.
///
/// An etcd leader change must not trip it. The new leader extends every
/// lease (to its TTL plus the election timeout), so the lease is never at
/// risk then, but the owner cannot tell an election from being cut off and
/// fences at its deadline unless a keepalive gets through first. The time
/// it has is TTL - renewal interval - margin after the last acknowledged
/// renewal: with the default 5 s lease renewed every second, 3.5 s, against
/// etcd's default election (1-2 s after the leader's death, plus ~100 ms to
/// reconnect, retried every 100-400 ms). With a 2 s lease it is 1.1 s, and
/// an election may cost a fence and a failover.
#[must_use]
pub fn fence_margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(200))
}

/// The ownership lease's settings.
#[must_use]
pub fn lease_settings(s: &Settings) -> LeaseSettings {
    LeaseSettings {
        purpose: "ownership",
        ttl: s.ttl,
        renew: renew_interval(s.ttl),
        // Every attempt is bounded by the renewal interval: a request that
        // lands on a dead or leaderless member must not use up the time
        // left before the fencing deadline.
        attempt: renew_interval(s.ttl),
        retry_cap: renew_interval(s.ttl),
        margin: fence_margin(s.ttl),
        file: s.state_dir.as_ref().map(|d| d.join("vip-lease")),
    }
}

/// What the subsystem works with besides its settings.
pub struct Services {
    pub client: Client,
    pub keys: Keys,
    /// Signs this host's owner, state and suspect keys.
    pub secrets: Secrets,
    pub nl: Netlink,
    pub status: StatusMap,
    pub peers: Arc<PeerHealth>,
    /// Every change under `<prefix>/vips/`, from the registry sync.
    pub changes: mpsc::UnboundedReceiver<VipChange>,
    /// The verified registry (for the hosts' underlay addresses).
    pub view: watch::Receiver<RegistryView>,
}

/// What the subsystem's own tasks report.
pub(super) enum Report {
    Health(String, bool, String),
    Conflict(crate::ebpf::vip::Conflict),
    WatcherReady(Box<VipWatcher>),
}

/// Runs until `stop` turns true, then hands over everything it holds.
pub async fn run(settings: Settings, services: Services, stop: watch::Receiver<bool>) {
    let Services {
        client,
        keys,
        secrets,
        nl,
        status,
        peers,
        changes,
        view,
    } = services;
    let leases = lease_settings(&settings);
    let (lease_tx, lease_rx) = watch::channel(LeaseInfo::none());
    // Granted and kept alive once a VIP exists: a host of a mesh without
    // floating IPs asks etcd for nothing on their behalf.
    let keeper = LeaseKeeper {
        client: client.clone(),
        settings: leases.clone(),
        tx: Some(lease_tx),
        stats: status.lease.clone(),
        task: None,
    };
    let (writes, writes_rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(writer::run(client.clone(), writes_rx));
    let (reports, reports_rx) = mpsc::channel(1024);
    start_watcher(reports.clone(), status.clone());
    let mut ledger = Ledger::load(settings.state_dir.as_ref().map(|d| d.join("vip-addresses")));
    if let Some(present) = present_of(&nl, &ledger).await {
        ledger.keep_present(&present);
    }
    let notifier = super::notify::Notifier::new(settings.notify.clone(), status.notify.clone());
    let mut shell = Shell {
        notifier,
        ledger,
        core: Core::new(settings),
        client,
        keys,
        secrets,
        nl,
        status,
        peers,
        reports,
        writes,
        watcher: None,
        mapper: super::delivery::Mapper::default(),
        anchor: None,
        checkers: BTreeMap::new(),
        announcers: BTreeMap::new(),
        announced: BTreeMap::new(),
        probers: BTreeMap::new(),
        keeper,
    };
    shell.serve(changes, view, reports_rx, lease_rx, stop).await;
    if let Some(task) = shell.keeper.task.take() {
        task.abort();
    }
    writer_task.abort();
    shell.stop().await;
    lease::forget(&leases);
    shell.notifier.finish().await;
}

/// The registered hosts' underlay addresses.
fn host_addresses(view: &RegistryView) -> std::collections::BTreeSet<std::net::IpAddr> {
    view.hosts.values().map(|h| h.address).collect()
}

/// The keeper's view in the core's clock.
fn lease_of(info: LeaseInfo) -> Lease {
    let left = info
        .deadline
        .saturating_duration_since(std::time::Instant::now());
    Lease {
        id: info.id,
        deadline: mono_now() + left,
        failures: info.failures,
    }
}

pub(super) struct Shell {
    /// The addresses this agent added (and may remove).
    pub(super) ledger: Ledger,
    pub(super) core: Core,
    pub(super) client: Client,
    pub(super) keys: Keys,
    pub(super) secrets: Secrets,
    pub(super) nl: Netlink,
    pub(super) status: StatusMap,
    pub(super) peers: Arc<PeerHealth>,
    pub(super) reports: mpsc::Sender<Report>,
    pub(super) writes: mpsc::UnboundedSender<Write>,
    /// The eBPF VIP watcher (`None` until loaded, or when it cannot be).
    pub(super) watcher: Option<VipWatcher>,
    pub(super) checkers: BTreeMap<String, JoinHandle<()>>,
    pub(super) announcers: BTreeMap<String, JoinHandle<()>>,
    /// Announcements sent, per VIP, counted by the announcer tasks.
    pub(super) announced: BTreeMap<String, Arc<AtomicU64>>,
    /// Raw senders for probes, per interface, with the interface's MAC.
    pub(super) probers: BTreeMap<String, (RawSender, MacAddr)>,
    pub(super) keeper: LeaseKeeper,
    /// Tells the operator's hooks of every transition.
    pub(super) notifier: super::notify::Notifier,
    pub(super) mapper: super::delivery::Mapper,
    /// The routed VIPs' anchor device and its index, once one is held.
    pub(super) anchor: Option<(crate::kernel::tun::Anchor, u32)>,
}

/// The ownership lease's keeper, started with the first VIP.
pub(super) struct LeaseKeeper {
    client: Client,
    settings: lease::LeaseSettings,
    tx: Option<watch::Sender<LeaseInfo>>,
    stats: Arc<lease::LeaseStats>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LeaseKeeper {
    /// Starts keeping the lease, once, when `change` defines a VIP.
    fn start_for(&mut self, change: &VipChange) {
        let defines = match change {
            VipChange::Snapshot(s) => !s.records.is_empty(),
            VipChange::Record(_, Some(_)) => true,
            _ => false,
        };
        if !defines {
            return;
        }
        if let Some(tx) = self.tx.take() {
            self.task = Some(tokio::spawn(lease::keep(
                self.client.clone(),
                self.settings.clone(),
                tx,
                self.stats.clone(),
            )));
        }
    }
}

/// [`Observe`] over the eBPF watcher and the peer table.
struct Seen<'a> {
    watcher: Option<&'a VipWatcher>,
    peers: &'a PeerHealth,
}

impl Observe for Seen<'_> {
    fn seen(&self, vip: Ipv4Addr) -> Option<(MacAddr, Duration)> {
        self.watcher?.seen(vip)
    }

    fn other_peer_heard_after(&self, owner: &str, after: Duration) -> bool {
        self.peers
            .any_other_heard_after(self.peers.address_of(owner), after)
    }
}

impl Shell {
    /// Turns what happens into inputs until `stop` turns true.
    async fn serve(
        &mut self,
        mut changes: mpsc::UnboundedReceiver<VipChange>,
        mut view: watch::Receiver<RegistryView>,
        mut reports: mpsc::Receiver<Report>,
        mut lease: watch::Receiver<LeaseInfo>,
        mut stop: watch::Receiver<bool>,
    ) {
        let settings = self.core.settings().clone();
        let mut fence_tick = tokio::time::interval(Duration::from_millis(50));
        let mut addresses = match KernelEvents::subscribe_addresses() {
            Ok(events) => Some(events),
            Err(e) => {
                warn!(error = %e, "no address notifications: a removed VIP address is restored only at the resync");
                None
            }
        };
        let mut resync_tick = tokio::time::interval(settings.resync);
        resync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe_tick = tokio::time::interval(settings.fast.probe_interval);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut hosts = host_addresses(&view.borrow_and_update());
        self.input(Input::Hosts(hosts.clone())).await;
        // Interfaces already without carrier; later changes come as events.
        match self.nl.links().await {
            Ok(links) => {
                for link in links.into_iter().filter(|l| !l.carrier) {
                    self.input(Input::Carrier {
                        ifname: link.name,
                        up: false,
                    })
                    .await;
                }
            }
            Err(e) => warn!(error = %e, "reading the links' carrier failed"),
        }
        loop {
            let due = self
                .core
                .next_due()
                .map(|t| tokio::time::Instant::now() + t.saturating_sub(mono_now()));
            tokio::select! {
                Some(change) = changes.recv() => {
                    self.keeper.start_for(&change);
                    self.input(Input::Registry(change)).await;
                }
                Some(report) = reports.recv() => self.report(report).await,
                Ok(()) = view.changed() => {
                    let now = host_addresses(&view.borrow_and_update());
                    if now != hosts {
                        hosts.clone_from(&now);
                        self.input(Input::Hosts(now)).await;
                    }
                }
                r = lease.changed() => {
                    if r.is_err() { return; }
                    let info = *lease.borrow_and_update();
                    self.input(Input::Lease(lease_of(info))).await;
                }
                () = async { if let Some(t) = due { tokio::time::sleep_until(t).await } else { std::future::pending().await } } => {
                    self.input(Input::Tick).await;
                }
                // Without a VIP, neither tick has anything to do.
                _ = fence_tick.tick(), if self.core.has_vips() => self.input(Input::Tick).await,
                event = async {
                    match addresses.as_mut() {
                        Some(a) => a.next().await,
                        None => std::future::pending().await,
                    }
                } => match event {
                    Some(event) => {
                        // Most link events change no carrier: no step for them.
                        if let Some((ifname, up)) = carrier_of(&event)
                            && self.core.carrier_news(&ifname, up)
                        {
                            self.input(Input::Carrier { ifname, up }).await;
                        }
                        let concerned = self.core.concerned(&event);
                        if !concerned.is_empty() {
                            self.verify_bound(Some(&concerned)).await;
                        }
                    }
                    None => {
                        warn!("address notifications ended: a removed VIP address is restored only at the resync");
                        addresses = None;
                    }
                },
                _ = resync_tick.tick() => {
                    self.verify_bound(None).await;
                    self.verify_routes().await;
                    if let super::delivery::Mapper::Loaded(m) = &mut self.mapper {
                        m.reattach_missing();
                    }
                    if let Some(w) = self.watcher.as_mut() {
                        w.reattach_missing();
                    }
                }
                _ = probe_tick.tick(), if self.core.has_vips() => self.input(Input::ProbeTick).await,
                _ = stop.changed() => return,
            }
        }
    }

    /// Hands everything over and revokes the ownership lease.
    async fn stop(&mut self) {
        let handed_over = self
            .core
            .vips()
            .values()
            .any(|v| v.state == super::State::Activated);
        self.input(Input::Stop).await;
        if handed_over && self.watcher.is_some() {
            // Detaching TC programs takes the RTNL lock through an RCU grace
            // period, and every host shares that lock: doing it right now
            // would hold up the successor's bind by 10-20 ms. Let it bind first.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let id = self.core.lease().id;
        if id != 0 {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), lease::revoke(&self.client, id)).await;
        }
    }

    /// Steps the core with `input` and every result of the effects that
    /// follow, in order; then shares the status.
    async fn input(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let seen = Seen {
                watcher: self.watcher.as_ref(),
                peers: &self.peers,
            };
            let effects = self.core.step(input, mono_now(), &seen);
            for effect in effects {
                if let Some(result) = self.effect(effect).await {
                    queue.push_back(result);
                }
            }
        }
        self.share();
    }

    fn share(&mut self) {
        self.announced
            .retain(|id, _| self.core.vips().contains_key(id));
        let announced = &self.announced;
        self.status.update(&self.core, &|id| {
            announced.get(id).map_or(0, |n| n.load(Ordering::Relaxed))
        });
    }

    async fn report(&mut self, report: Report) {
        match report {
            Report::Health(id, ok, detail) => {
                self.input(Input::Health { id, ok, detail }).await;
            }
            Report::Conflict(c) => {
                let input = Input::Conflict {
                    ip: c.ip,
                    foreign_mac: c.foreign_mac,
                    our_mac: c.our_mac,
                };
                self.input(input).await;
            }
            Report::WatcherReady(w) => {
                self.watcher = Some(*w);
                self.input(Input::WatcherReady).await;
                info!("eBPF VIP watcher loaded");
            }
        }
    }

    /// Puts back the address of every VIP we hold (or of `only`) that is no
    /// longer in the kernel: removed by hand, or with its interface.
    async fn verify_bound(&mut self, only: Option<&[String]>) {
        let held = self.core.held(only);
        if held.is_empty() {
            return;
        }
        let present = match self.nl.addresses().await {
            Ok(present) => present,
            Err(e) => {
                warn!(error = %e, "reading addresses to check the VIPs failed");
                return;
            }
        };
        for (id, ifindex, addr) in held {
            if !present
                .iter()
                .any(|a| a.ifindex == ifindex && a.addr == addr)
            {
                self.input(Input::AddressGone { id }).await;
            }
        }
    }
}

/// A link's carrier news: its name, and whether it can carry frames.
fn carrier_of(event: &crate::kernel::events::KernelEvent) -> Option<(String, bool)> {
    use crate::kernel::events::KernelEvent;
    match event {
        KernelEvent::LinkChanged {
            name: Some(name),
            carrier,
            ..
        } => Some((name.clone(), *carrier)),
        KernelEvent::LinkRemoved {
            name: Some(name), ..
        } => Some((name.clone(), false)),
        _ => None,
    }
}

/// Which of the ledger's addresses are on their interfaces now (`None`
/// if netlink could not say: then nothing is dropped).
async fn present_of(
    nl: &Netlink,
    ledger: &Ledger,
) -> Option<std::collections::BTreeSet<(String, crate::registry::Cidr)>> {
    let entries = ledger.entries();
    if entries.is_empty() {
        return Some(std::collections::BTreeSet::new());
    }
    let addresses = nl.addresses().await.ok()?;
    let mut present = std::collections::BTreeSet::new();
    for (ifname, cidr) in entries {
        // A missing interface holds no address.
        let Some(link) = nl.link_by_name(&ifname).await.ok()? else {
            continue;
        };
        let there = addresses.iter().any(|a| {
            a.ifindex == link.index && a.addr == cidr.addr && a.prefix_len == cidr.prefix_len
        });
        if there {
            present.insert((ifname, cidr));
        }
    }
    Some(present)
}

/// Loads the eBPF VIP watcher off the subsystem's path (loading and
/// verifying takes a moment, elections must not wait for it), then hands
/// it over and forwards its conflicts. Without it (no CAP_BPF, an old
/// kernel) floating IPs still work, unwatched.
fn start_watcher(reports: mpsc::Sender<Report>, status: StatusMap) {
    tokio::task::spawn_blocking(move || match VipWatcher::new() {
        Ok((watcher, conflicts)) => {
            if reports
                .blocking_send(Report::WatcherReady(Box::new(watcher)))
                .is_err()
            {
                return;
            }
            tokio::spawn(forward_conflicts(conflicts, reports, status));
        }
        Err(e) => warn!(error = %e, "the eBPF VIP watcher is not available; conflicts go unseen"),
    });
}

async fn forward_conflicts(
    mut conflicts: ConflictStream,
    reports: mpsc::Sender<Report>,
    status: StatusMap,
) {
    // The program's counters are read on every event and once a second.
    let mut counters = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            next = conflicts.next() => match next {
                Ok(c) => {
                    status.ebpf_events.fetch_add(1, Ordering::Relaxed);
                    if reports.send(Report::Conflict(c)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "reading VIP conflict events failed");
                    return;
                }
            },
            _ = counters.tick() => {}
        }
        if let Ok(n) = conflicts.dropped() {
            status.ebpf_ring_drops.store(n, Ordering::Relaxed);
        }
        if let Ok(n) = conflicts.foreign_replies() {
            status.foreign_replies.store(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_renewed_every_third_of_the_ttl_and_at_least_every_second() {
        assert_eq!(
            renew_interval(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(
            renew_interval(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
        assert_eq!(
            renew_interval(Duration::from_secs(2)),
            Duration::from_secs(2) / 3
        );
        // The default lease leaves an election 3.5 s before the fence.
        let ttl = Duration::from_secs(5);
        assert_eq!(
            ttl.saturating_sub(renew_interval(ttl) + fence_margin(ttl)),
            Duration::from_millis(3500)
        );
    }

    #[test]
    fn fence_margin_is_a_tenth_with_a_floor() {
        assert_eq!(
            fence_margin(Duration::from_secs(2)),
            Duration::from_millis(200)
        );
        assert_eq!(
            fence_margin(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
    }
}
