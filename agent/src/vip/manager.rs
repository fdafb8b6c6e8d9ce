//! The floating-IP manager: one etcd lease per agent for all its VIPs,
//! elections by transaction, bind + announce, health checks, self-fencing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::announce::{Announcer, arp_probe};
pub use super::fast::{FastFailover, FastSettings};
use super::fast::{Probe, revoke_due};
use super::health;
use super::record::{Check, Cidr, VipRecord};
use super::state::{Event, State, next};
use crate::addr::MacAddr;
use crate::kernel::Netlink;
use crate::peers::PeerHealth;
use crate::registry::{Expect, Keys, Secrets, open};
use crate::store::unix_now;

/// What a host does with its VIPs when it loses etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LossPolicy {
    /// Unbind before the lease can expire, so there are never two owners.
    Release,
    /// Keep holding the VIP through an etcd outage.
    Keep,
    /// LinK's "at least one host": after `--keepalive-retry` failures, bind.
    Claim,
}

#[derive(Clone, Debug)]
pub struct VipSettings {
    pub hostname: String,
    pub default_interface: Option<String>,
    /// The ownership lease TTL (renewed every third of it).
    pub ttl: Duration,
    pub keepalive_retry: u32,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub fail_count: u32,
    pub garp_count: u32,
    pub garp_interval: Duration,
    pub loss_policy: LossPolicy,
    /// How long non-preferred hosts wait before contending.
    pub contend_delay: Duration,
    /// After `failover`, how long this host stays out of that VIP's election.
    pub cooldown: Duration,
    /// Where the lease id is kept, so a restart within the TTL keeps the VIPs.
    pub state_dir: Option<PathBuf>,
    /// How often held addresses are checked against the kernel, besides the
    /// address notifications (which can be lost when the socket overflows).
    pub resync: Duration,
    pub fast: FastSettings,
}

/// A VIP left without an owner this long is probed for a stray holder.
const STRAY_GRACE: Duration = Duration::from_secs(1);
/// Stray probes go out this often.
const STRAY_PROBE_EVERY: Duration = Duration::from_secs(1);

/// What the API and CLI show about one VIP on this host.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VipStatus {
    pub id: String,
    pub address: String,
    pub owner: Option<String>,
    pub state: State,
    pub interface: Option<String>,
    /// Foreign claims on this VIP seen (by `vip_watch`) while we held it.
    pub conflicts: u64,
    /// Hosts seen answering for this VIP while etcd said nobody owned it.
    pub strays: u64,
    /// Whether fast failover protects this VIP (enough eligible standbys).
    pub fast_failover: bool,
    /// Whether this host suspects the owner right now.
    pub suspects_owner: bool,
    /// State changes of this VIP on this host.
    pub transitions: u64,
    /// Announcements sent (a GARP request + reply pair, or one NA).
    pub announcements: u64,
    pub health_checks_passed: u64,
    pub health_checks_failed: u64,
    /// Times this host put its address back after someone removed it.
    pub restores: u64,
}

/// What the manager shares with the API: every VIP's status on this host,
/// and how the ownership lease is doing.
#[derive(Debug)]
pub struct Shared {
    pub vips: std::sync::Mutex<BTreeMap<String, VipStatus>>,
    /// Consecutive failed keepalives (0: etcd answers).
    pub lease_failures: std::sync::atomic::AtomicU32,
    pub loss_policy: std::sync::OnceLock<LossPolicy>,
    /// Round trip of acknowledged ownership-lease keepalives.
    pub keepalive_seconds: Histogram,
    /// Failed keepalives and lease grants.
    pub etcd_errors: std::sync::atomic::AtomicU64,
    /// Restarts of the floating-IP watch.
    pub watch_restarts: std::sync::atomic::AtomicU64,
    /// VIP records that did not verify (each key and revision once).
    pub vip_records_rejected: std::sync::atomic::AtomicU64,
    /// Duration of passed health checks.
    pub health_check_seconds: Histogram,
    /// Conflict events read from the eBPF watcher's ring.
    pub ebpf_events: std::sync::atomic::AtomicU64,
    /// Conflict events the eBPF program dropped because the ring was full.
    pub ebpf_ring_drops: std::sync::atomic::AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        // 1 ms to ~4 s.
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 13));
        Self {
            vips: std::sync::Mutex::default(),
            lease_failures: std::sync::atomic::AtomicU32::default(),
            loss_policy: std::sync::OnceLock::default(),
            keepalive_seconds: buckets(),
            etcd_errors: std::sync::atomic::AtomicU64::default(),
            watch_restarts: std::sync::atomic::AtomicU64::default(),
            vip_records_rejected: std::sync::atomic::AtomicU64::default(),
            health_check_seconds: buckets(),
            ebpf_events: std::sync::atomic::AtomicU64::default(),
            ebpf_ring_drops: std::sync::atomic::AtomicU64::default(),
        }
    }
}

impl Shared {
    #[must_use]
    pub fn vips(&self) -> BTreeMap<String, VipStatus> {
        self.vips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

pub type StatusMap = Arc<Shared>;

/// The lease as the keepalive task sees it.
#[derive(Clone, Copy, Debug)]
struct LeaseInfo {
    id: i64,
    /// Until when the lease is certainly alive: the send time of the last
    /// acknowledged keepalive + TTL - margin.
    deadline: Instant,
    /// Consecutive failed keepalives.
    failures: u32,
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
fn fence_margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(200))
}

/// How often the ownership lease is renewed: a third of the TTL, at most
/// every second (see [`fence_margin`]).
fn renew_interval(ttl: Duration) -> Duration {
    (ttl / 3).min(Duration::from_secs(1))
}

enum Msg {
    Snapshot {
        records: BTreeMap<String, VipRecord>,
        owners: BTreeMap<String, (String, i64)>,
        /// VIPs whose record key holds something that does not verify:
        /// their last verified record stays in force.
        unreadable: BTreeSet<String>,
    },
    Record(String, Option<VipRecord>),
    Owner(String, Option<(String, i64)>),
    Failover(String, String),
    Health(String, bool, String),
    Conflict(crate::watch::Conflict),
    WatcherReady(Box<crate::watch::VipWatcher>),
    /// `<prefix>/vips/<ID>/<KIND>/<HOST>` changed (`None`: deleted).
    Member {
        id: String,
        kind: String,
        host: String,
        value: Option<String>,
    },
}

/// One ordered write of the state writer.
enum Write {
    Put {
        key: String,
        value: String,
        lease: i64,
        /// Not worth writing after this (a suspicion is an observation of
        /// now: written late, it could revoke an owner that came back).
        stale_after: Option<std::time::Instant>,
    },
    Delete {
        key: String,
    },
}

struct Vip {
    record: VipRecord,
    cidr: Cidr,
    state: State,
    owner: Option<(String, i64)>,
    fails: u32,
    cooldown_until: Option<Instant>,
    contend_at: Option<Instant>,
    /// (ifindex, ifname) while the address is bound here.
    bound: Option<(u32, String)>,
    /// Unbound by self-fencing (recovers when etcd answers again).
    fenced: bool,
    conflicts: u64,
    announcer: Option<JoinHandle<()>>,
    checker: JoinHandle<()>,
    /// Fast failover: the probing of the current owner (standbys only).
    probe: Option<Probe>,
    /// The owner lease this host last tried to revoke.
    revoked: Option<i64>,
    stray: Stray,
    transitions: u64,
    /// Announcements sent, counted by the announcer tasks.
    announcements: Arc<std::sync::atomic::AtomicU64>,
    health_passed: u64,
    health_failed: u64,
    restores: u64,
}

/// Looking for a host that answers for a VIP nobody owns.
#[derive(Default)]
struct Stray {
    /// Monotonic time the VIP was first seen without an owner.
    ownerless_since: Option<Duration>,
    /// When the last stray probe went out.
    probed_at: Option<Duration>,
    /// The stray last reported (reported once per MAC and episode).
    reported: Option<MacAddr>,
    count: u64,
}

/// What the manager works with besides its settings.
pub struct Services {
    pub client: Client,
    pub keys: Keys,
    pub secrets: Secrets,
    pub nl: Netlink,
    pub status: StatusMap,
    pub peers: Arc<PeerHealth>,
}

/// Runs until `stop` turns true, then releases everything it holds.
pub async fn run(settings: VipSettings, services: Services, mut stop: watch::Receiver<bool>) {
    let Services {
        client,
        keys,
        secrets,
        nl,
        status,
        peers,
    } = services;
    let (lease_tx, mut lease_rx) = watch::channel(LeaseInfo {
        id: 0,
        deadline: Instant::now(),
        failures: 0,
    });
    let lease_task = tokio::spawn(keep_lease(
        client.clone(),
        settings.clone(),
        lease_tx,
        status.clone(),
    ));
    let (tx, mut rx) = mpsc::channel(1024);
    let watch_task = tokio::spawn(watch_vips(
        client.clone(),
        keys.clone(),
        secrets,
        tx.clone(),
        status.clone(),
    ));
    let (state_writes, state_rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(write_states(client.clone(), state_rx));
    start_watcher(tx.clone(), status.clone());
    let mut m = Manager {
        settings,
        client: client.clone(),
        keys,
        nl,
        status,
        tx,
        vips: BTreeMap::new(),
        lease: *lease_rx.borrow(),
        written: BTreeMap::new(),
        state_writes,
        watcher: None,
        peers,
        members: BTreeMap::new(),
        probers: BTreeMap::new(),
    };
    let mut fence_tick = tokio::time::interval(Duration::from_millis(50));
    let mut addresses = match crate::kernel::events::KernelEvents::subscribe_addresses() {
        Ok(events) => Some(events),
        Err(e) => {
            warn!(error = %e, "no address notifications: a removed VIP address is restored only at the resync");
            None
        }
    };
    let mut resync_tick = tokio::time::interval(m.settings.resync);
    resync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe_tick = tokio::time::interval(m.settings.fast.probe_interval);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let contend_due = m.vips.values().filter_map(|v| v.contend_at).min();
        tokio::select! {
            Some(msg) = rx.recv() => m.handle(msg).await,
            r = lease_rx.changed() => {
                if r.is_err() { break; }
                let lease = *lease_rx.borrow_and_update();
                m.lease_changed(lease).await;
            }
            () = async { if let Some(t) = contend_due { tokio::time::sleep_until(t).await } else { std::future::pending().await } } => {
                m.contend_due().await;
            }
            _ = fence_tick.tick() => m.fence().await,
            event = async {
                match addresses.as_mut() {
                    Some(a) => a.next().await,
                    None => std::future::pending().await,
                }
            } => match event {
                Some(event) => m.kernel_changed(&event).await,
                None => {
                    warn!("address notifications ended: a removed VIP address is restored only at the resync");
                    addresses = None;
                }
            },
            _ = resync_tick.tick() => m.resync().await,
            _ = probe_tick.tick() => m.probe_tick().await,
            _ = stop.changed() => break,
        }
    }
    watch_task.abort();
    lease_task.abort();
    writer_task.abort();
    m.shutdown().await;
}

struct Manager {
    settings: VipSettings,
    client: Client,
    keys: Keys,
    nl: Netlink,
    status: StatusMap,
    tx: mpsc::Sender<Msg>,
    vips: BTreeMap<String, Vip>,
    lease: LeaseInfo,
    /// What this host last wrote to `<prefix>/vips/<ID>/state/<host>`.
    written: BTreeMap<String, (State, i64)>,
    state_writes: mpsc::UnboundedSender<Write>,
    /// The eBPF VIP watcher (`None` when it could not be loaded).
    watcher: Option<crate::watch::VipWatcher>,
    peers: Arc<PeerHealth>,
    /// Per VIP, per host: `state` and `suspect` keys as etcd has them.
    members: BTreeMap<String, Members>,
    /// Raw senders for probes, per interface, with the interface's MAC.
    probers: BTreeMap<String, (Announcer, MacAddr)>,
}

/// The per-host keys of one VIP.
#[derive(Default)]
struct Members {
    states: BTreeMap<String, State>,
    /// Host -> the owner lease it suspects.
    suspects: BTreeMap<String, i64>,
}

/// Writes this host's per-VIP keys in order, each within 2 s.
/// Whether the failed branch of a contend txn shows the owner key held by
/// `host` on `lease`.
fn holds_key(r: &etcd_client::TxnResponse, host: &str, lease: i64) -> bool {
    r.op_responses().iter().any(|op| match op {
        etcd_client::TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .is_some_and(|kv| kv.value() == host.as_bytes() && kv.lease() == lease),
        _ => false,
    })
}

impl Write {
    fn key(&self) -> &str {
        match self {
            Write::Put { key, .. } | Write::Delete { key } => key,
        }
    }
}

/// Writes the state and suspect keys in order. A write that fails is kept
/// and retried (200 ms, doubling to 2 s) until it succeeds or a newer write
/// of the same key replaces it: a lost suspect key would stall a quorum, a
/// lost state key would show a stale state. A put on a lease etcd no longer
/// has is dropped (a newer write on the new lease follows).
async fn write_states(client: Client, mut rx: mpsc::UnboundedReceiver<Write>) {
    let mut kv = client.kv_client();
    // Latest write per key, in arrival order of keys.
    let mut pending: Vec<Write> = Vec::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(w) => pending.push(w),
                None => return,
            }
        }
        while let Ok(w) = rx.try_recv() {
            pending.retain(|p| p.key() != w.key());
            pending.push(w);
        }
        let mut failed = false;
        while let Some(w) = pending.first() {
            if let Write::Put {
                stale_after: Some(t),
                key,
                ..
            } = w
                && std::time::Instant::now() > *t
            {
                debug!(
                    key,
                    "dropping a write that went stale while etcd did not answer"
                );
                pending.remove(0);
                continue;
            }
            let r = match w {
                Write::Put {
                    key, value, lease, ..
                } => {
                    let put = kv.put(
                        key.clone(),
                        value.clone(),
                        Some(PutOptions::new().with_lease(*lease)),
                    );
                    tokio::time::timeout(Duration::from_secs(2), put)
                        .await
                        .map(|r| r.map(drop))
                }
                Write::Delete { key } => {
                    tokio::time::timeout(Duration::from_secs(2), kv.delete(key.clone(), None))
                        .await
                        .map(|r| r.map(drop))
                }
            };
            match r {
                Ok(Ok(())) => {
                    pending.remove(0);
                }
                Ok(Err(e)) if e.to_string().contains("lease not found") => {
                    debug!(
                        key = w.key(),
                        "dropping a write on a lease etcd no longer has"
                    );
                    pending.remove(0);
                }
                Ok(Err(e)) => {
                    warn!(key = w.key(), error = %e, "writing a vip key failed; retrying");
                    failed = true;
                    break;
                }
                Err(_) => {
                    warn!(key = w.key(), "writing a vip key timed out; retrying");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            // Wait, but take newer writes meanwhile (they may replace ours).
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                w = rx.recv() => match w {
                    Some(w) => {
                        pending.retain(|p| p.key() != w.key());
                        pending.push(w);
                    }
                    None => return,
                },
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        } else {
            backoff = Duration::from_millis(200);
        }
    }
}

impl Manager {
    /// The VIPs in `state`.
    fn ids_in(&self, state: State) -> Vec<String> {
        self.vips
            .iter()
            .filter(|(_, v)| v.state == state)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn me(&self) -> &str {
        &self.settings.hostname
    }

    /// Shares every VIP's state: with the API, and in etcd at
    /// `<prefix>/vips/<ID>/state/<host>` on our lease (for `ip ls`), written
    /// only when it changed.
    fn publish(&mut self) {
        if self.lease.id != 0 {
            let changed: Vec<_> = self
                .vips
                .iter()
                .filter(|(id, v)| self.written.get(*id) != Some(&(v.state, self.lease.id)))
                .map(|(id, v)| (id.clone(), v.state))
                .collect();
            for (id, state) in changed {
                self.written.insert(id.clone(), (state, self.lease.id));
                let key = self.keys.vip_state(&id, &self.settings.hostname);
                // One writer, in order: a later state never loses to an
                // earlier one.
                let _ = self.state_writes.send(Write::Put {
                    key,
                    value: state.to_string(),
                    lease: self.lease.id,
                    stale_after: None,
                });
            }
        }
        self.share();
    }

    fn share(&self) {
        let map = self
            .vips
            .iter()
            .map(|(id, v)| {
                (
                    id.clone(),
                    VipStatus {
                        id: id.clone(),
                        address: v.cidr.to_string(),
                        owner: v.owner.as_ref().map(|(h, _)| h.clone()),
                        state: v.state,
                        interface: v
                            .record
                            .interface
                            .clone()
                            .or_else(|| self.settings.default_interface.clone()),
                        conflicts: v.conflicts,
                        strays: v.stray.count,
                        fast_failover: self.fast_active(id),
                        suspects_owner: v.probe.as_ref().is_some_and(|p| p.suspected),
                        transitions: v.transitions,
                        announcements: v.announcements.load(std::sync::atomic::Ordering::Relaxed),
                        health_checks_passed: v.health_passed,
                        health_checks_failed: v.health_failed,
                        restores: v.restores,
                    },
                )
            })
            .collect();
        *self
            .status
            .vips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = map;
        self.status
            .lease_failures
            .store(self.lease.failures, std::sync::atomic::Ordering::Relaxed);
        let _ = self.status.loss_policy.set(self.settings.loss_policy);
    }

    fn transition(&mut self, id: &str, event: Event, cause: &str) -> bool {
        let Some(v) = self.vips.get_mut(id) else {
            return false;
        };
        match next(v.state, event) {
            Some(to) => {
                info!(vip = %id, from = %v.state, to = %to, ?event, cause, "vip state");
                v.state = to;
                v.transitions += 1;
                true
            }
            None => {
                debug!(vip = %id, state = %v.state, ?event, "event ignored in this state");
                false
            }
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Snapshot {
                records,
                owners,
                unreadable,
            } => {
                // The member keys follow the snapshot, one message each.
                self.members.clear();
                // A record overwritten with junk keeps its last verified
                // version, as the watch does (and the registry cache).
                let gone: Vec<_> = self
                    .vips
                    .keys()
                    .filter(|id| !records.contains_key(*id) && !unreadable.contains(*id))
                    .cloned()
                    .collect();
                for id in gone {
                    self.remove(&id).await;
                }
                for (id, record) in records {
                    self.upsert(&id, record).await;
                }
                let ids: Vec<_> = self.vips.keys().cloned().collect();
                for id in ids {
                    self.set_owner(&id, owners.get(&id).cloned()).await;
                }
            }
            Msg::Record(id, Some(record)) => self.upsert(&id, record).await,
            Msg::Record(id, None) => self.remove(&id).await,
            Msg::Owner(id, owner) => self.set_owner(&id, owner).await,
            Msg::Failover(id, host) => {
                if host == self.me()
                    && self
                        .vips
                        .get(&id)
                        .is_some_and(|v| v.state == State::Activated)
                {
                    info!(vip = %id, "failover requested: releasing");
                    self.release(&id, true).await;
                    if let Some(v) = self.vips.get_mut(&id) {
                        v.cooldown_until = Some(Instant::now() + self.settings.cooldown);
                    }
                    self.transition(&id, Event::Demoted, "failover");
                }
            }
            Msg::Health(id, ok, detail) => self.health(&id, ok, &detail).await,
            Msg::Conflict(c) => self.conflict(c),
            Msg::WatcherReady(w) => self.watcher_ready(*w).await,
            Msg::Member {
                id,
                kind,
                host,
                value,
            } => self.member(&id, &kind, &host, value).await,
        }
        self.publish();
    }

    async fn upsert(&mut self, id: &str, record: VipRecord) {
        let Ok((cidr, checks)) = record.validate() else {
            return;
        };
        if let Some(v) = self.vips.get_mut(id) {
            if v.record == record {
                return;
            }
            if v.cidr == cidr && v.record.interface == record.interface {
                // Checks, exclusions or priority changed: keep the binding.
                v.record = record;
                v.checker.abort();
                v.checker = spawn_checker(
                    id,
                    checks,
                    &self.settings,
                    self.tx.clone(),
                    self.status.health_check_seconds.clone(),
                );
                self.evaluate(id);
                return;
            }
            self.remove(id).await;
        }
        info!(vip = %id, address = %cidr, "vip defined");
        self.watch(&record, cidr.addr, false);
        let checker = spawn_checker(
            id,
            checks,
            &self.settings,
            self.tx.clone(),
            self.status.health_check_seconds.clone(),
        );
        self.vips.insert(
            id.to_owned(),
            Vip {
                record,
                cidr,
                state: State::Booting,
                owner: None,
                fails: 0,
                cooldown_until: None,
                contend_at: None,
                bound: None,
                fenced: false,
                conflicts: 0,
                announcer: None,
                checker,
                probe: None,
                revoked: None,
                stray: Stray::default(),
                transitions: 0,
                announcements: Arc::default(),
                health_passed: 0,
                health_failed: 0,
                restores: 0,
            },
        );
    }

    async fn remove(&mut self, id: &str) {
        if self.written.remove(id).is_some() {
            let key = format!("{}{id}/state/{}", self.keys.vips(), self.settings.hostname);
            let mut kv = self.client.kv_client();
            let _ = tokio::time::timeout(Duration::from_secs(2), kv.delete(key, None)).await;
        }
        if self
            .vips
            .get(id)
            .is_some_and(|v| v.state == State::Activated)
        {
            self.release(id, true).await;
        }
        if let Some(v) = self.vips.remove(id) {
            if let (Some(w), IpAddr::V4(v4)) = (self.watcher.as_mut(), v.cidr.addr) {
                w.remove(v4);
            }
            if v.probe.is_some_and(|p| p.suspected) {
                self.withdraw_suspicion(id);
            }
            v.checker.abort();
            if let Some(a) = v.announcer {
                a.abort();
            }
            info!(vip = %id, "vip removed");
        }
    }

    fn excluded(&self, v: &Vip) -> bool {
        v.record.excluded_nodes.iter().any(|h| h == self.me())
    }

    /// Schedules contention when this host may take a free VIP.
    fn evaluate(&mut self, id: &str) {
        let me = self.settings.hostname.clone();
        let lease_ok = self.lease.id != 0 && self.lease.failures == 0;
        let delay = self.settings.contend_delay;
        let Some(v) = self.vips.get(id) else { return };
        let eligible = v.state == State::Standby
            && v.owner.is_none()
            && lease_ok
            && !self.excluded(v)
            && v.cooldown_until.is_none_or(|t| Instant::now() >= t);
        let at = eligible.then(|| {
            let preferred_elsewhere = v.record.priority.as_ref().is_some_and(|p| *p != me);
            Instant::now()
                + if preferred_elsewhere {
                    delay
                } else {
                    Duration::ZERO
                }
        });
        if let Some(v) = self.vips.get_mut(id)
            && (v.contend_at.is_none() || at.is_none())
        {
            v.contend_at = at;
        }
    }

    async fn contend_due(&mut self) {
        let now = Instant::now();
        let due: Vec<_> = self
            .vips
            .iter()
            .filter(|(_, v)| v.contend_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(v) = self.vips.get_mut(&id) {
                v.contend_at = None;
            }
            self.evaluate(&id);
            let still = self.vips.get(&id).is_some_and(|v| v.contend_at.is_some());
            if let Some(v) = self.vips.get_mut(&id) {
                v.contend_at = None;
            }
            if still {
                self.contend(&id).await;
            }
        }
    }

    async fn contend(&mut self, id: &str) {
        let key = self.keys.vip_owner(id);
        let lease = self.lease.id;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.settings.hostname.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut kv = self.client.kv_client();
        let t_txn = std::time::Instant::now();
        match tokio::time::timeout(self.settings.ttl, kv.txn(txn)).await {
            Ok(Ok(r)) if r.succeeded() => {
                info!(vip = %id, txn_us = t_txn.elapsed().as_micros(), "won the election");
                let me = self.settings.hostname.clone();
                self.set_owner(id, Some((me, lease))).await;
            }
            Ok(Ok(r)) if lease != 0 && holds_key(&r, &self.settings.hostname, lease) => {
                // Our key, on our live lease: we self-fenced while etcd could
                // not confirm the lease (a leader election, say), and etcd
                // kept it. The VIP is still ours; nobody else may take it.
                info!(vip = %id, "the owner key is still ours (the lease outlived the fence): taking the VIP up again");
                let me = self.settings.hostname.clone();
                self.set_owner(id, Some((me, lease))).await;
            }
            Ok(Ok(_)) => debug!(vip = %id, "another host won the election"),
            Ok(Err(e)) => warn!(vip = %id, error = %e, "contending failed"),
            Err(_) => warn!(vip = %id, "contending timed out"),
        }
    }

    async fn set_owner(&mut self, id: &str, owner: Option<(String, i64)>) {
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        v.owner.clone_from(&owner);
        let mine = owner
            .as_ref()
            .is_some_and(|(h, l)| *h == self.settings.hostname && *l == self.lease.id && *l != 0);
        match (v.state, mine) {
            (State::Standby, true) if self.transition(id, Event::Elected, "owner key is ours") => {
                self.bind(id).await;
            }
            (State::Activated, false) => {
                self.transition(id, Event::Demoted, "owner key is gone or someone else's");
                self.unbind(id).await;
            }
            (State::Failing, true) => {
                // Ours but not fit to hold it: give it up.
                self.release(id, true).await;
            }
            // Ours while booting (a restart within the TTL): decided once
            // the first health result is in.
            _ => {}
        }
        self.evaluate(id);
    }

    async fn health(&mut self, id: &str, ok: bool, detail: &str) {
        let fail_count = self.settings.fail_count;
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        if ok {
            v.health_passed += 1;
        } else {
            v.health_failed += 1;
        }
        if ok {
            v.fails = 0;
            if matches!(v.state, State::Booting) || (v.state == State::Failing && !v.fenced) {
                let booting = v.state == State::Booting;
                self.transition(id, Event::HealthCheckSuccess, "health check passed");
                // If the key is already ours (a restart), this takes it up.
                let owner = self.vips.get(id).and_then(|v| v.owner.clone());
                if booting
                    && let Some((host, _)) = &owner
                    && *host != self.settings.hostname
                {
                    self.clear_leftover(id, host).await;
                }
                self.set_owner(id, owner).await;
            }
            return;
        }
        v.fails += 1;
        let fails = v.fails;
        if fails < fail_count && v.state != State::Booting {
            debug!(vip = %id, fails, detail, "health check failed");
            return;
        }
        let was_active = v.state == State::Activated;
        if self.transition(id, Event::HealthCheckFail, detail) && was_active {
            self.release(id, true).await;
        }
    }

    /// Unbinds (when `unbind`) and deletes our owner key, guarded by our
    /// lease so a new owner's key is never touched.
    async fn release(&mut self, id: &str, unbind: bool) {
        if unbind {
            self.unbind(id).await;
        }
        let key = self.keys.vip_owner(id);
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, self.lease.id)])
            .and_then([
                TxnOp::delete(key, None),
                TxnOp::delete(self.keys.vip_failover(id), None),
            ]);
        let mut kv = self.client.kv_client();
        match tokio::time::timeout(self.settings.ttl, kv.txn(txn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(vip = %id, error = %e, "releasing the owner key failed; it expires with the lease");
            }
            Err(_) => {
                warn!(vip = %id, "releasing the owner key timed out; it expires with the lease");
            }
        }
        if let Some(v) = self.vips.get_mut(id) {
            v.owner = None;
        }
    }

    fn interface_of(&self, v: &Vip) -> Option<String> {
        v.record
            .interface
            .clone()
            .or_else(|| self.settings.default_interface.clone())
    }

    async fn bind(&mut self, id: &str) {
        let Some(v) = self.vips.get(id) else { return };
        let cidr = v.cidr;
        let Some(ifname) = self.interface_of(v) else {
            warn!(vip = %id, "no interface for this VIP (set --vip-interface or the record's interface)");
            self.fault(id, "no interface").await;
            return;
        };
        let t0 = std::time::Instant::now();
        let link = match self.nl.link_by_name(&ifname).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                warn!(vip = %id, interface = %ifname, "interface does not exist");
                self.fault(id, "interface missing").await;
                return;
            }
            Err(e) => {
                warn!(vip = %id, error = %e, "reading links failed");
                self.fault(id, "netlink error").await;
                return;
            }
        };
        let added = match self
            .nl
            .add_address(link.index, &ifname, cidr.addr, cidr.prefix_len)
            .await
        {
            Ok(added) => added,
            Err(e) => {
                warn!(vip = %id, error = %e, "binding failed");
                self.fault(id, "bind failed").await;
                return;
            }
        };
        info!(vip = %id, interface = %ifname, new = added, took_us = t0.elapsed().as_micros(), "vip bound");
        let mac = link.mac.unwrap_or_default();
        // Announce first: attaching the watcher can take milliseconds.
        let sent = v.announcements.clone();
        let announcer =
            added.then(|| spawn_announcer(id, &ifname, mac, cidr.addr, &self.settings, sent));
        if let (Some(w), IpAddr::V4(v4)) = (self.watcher.as_mut(), cidr.addr) {
            // Watch for anyone else claiming it (the data plane is the truth).
            if let Err(e) = w.attach(&ifname).and_then(|()| w.set(v4, mac, true)) {
                warn!(vip = %id, error = %e, "cannot watch the VIP for conflicts");
            }
        }
        if let Some(v) = self.vips.get_mut(id) {
            v.bound = Some((link.index, ifname));
            if let Some(old) = std::mem::replace(&mut v.announcer, announcer) {
                old.abort();
            }
        }
    }

    async fn unbind(&mut self, id: &str) {
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        if let Some(a) = v.announcer.take() {
            a.abort();
        }
        let cidr = v.cidr;
        if let (Some(w), IpAddr::V4(v4)) = (self.watcher.as_mut(), cidr.addr) {
            let _ = w.set(v4, MacAddr::default(), false);
        }
        if let Some((ifname, result)) = self.remove_address(id).await {
            match result {
                Ok(_) => info!(vip = %id, interface = %ifname, "vip unbound"),
                Err(e) => warn!(vip = %id, error = %e, "unbinding failed"),
            }
        }
    }

    /// Deletes `id`'s address from where we bound it, or (after a restart)
    /// from its interface, whatever is there. `None` when there is no
    /// interface to look at; `Ok(false)` when the address was not there.
    async fn remove_address(
        &mut self,
        id: &str,
    ) -> Option<(String, Result<bool, crate::kernel::KernelError>)> {
        let v = self.vips.get_mut(id)?;
        let cidr = v.cidr;
        let (index, ifname) = match v.bound.take() {
            Some(bound) => bound,
            None => {
                let name = self.interface_of(self.vips.get(id)?)?;
                let link = self.nl.link_by_name(&name).await.ok().flatten()?;
                (link.index, name)
            }
        };
        let result = self
            .nl
            .delete_address(index, &ifname, cidr.addr, cidr.prefix_len)
            .await;
        Some((ifname, result))
    }

    /// A link or address changed: if it may concern an address we hold,
    /// check it.
    async fn kernel_changed(&mut self, event: &crate::kernel::events::KernelEvent) {
        use crate::kernel::events::KernelEvent;
        let concerned: Vec<String> = self
            .vips
            .iter()
            .filter(|(_, v)| {
                let Some((index, ifname)) = &v.bound else {
                    return false;
                };
                match event {
                    KernelEvent::AddressRemoved { ifindex, addr } => {
                        ifindex == index && *addr == v.cidr.addr
                    }
                    KernelEvent::LinkRemoved { index: i, name }
                    | KernelEvent::LinkChanged { index: i, name } => {
                        i == index || name.as_deref() == Some(ifname.as_str())
                    }
                    KernelEvent::FdbRemoved { .. } => false,
                }
            })
            .map(|(id, _)| id.clone())
            .collect();
        if !concerned.is_empty() {
            self.verify_bound(Some(&concerned)).await;
        }
    }

    /// The periodic check: held addresses, and `vip_watch`'s attachments.
    async fn resync(&mut self) {
        self.verify_bound(None).await;
        if let Some(w) = self.watcher.as_mut() {
            w.reattach_missing();
        }
    }

    /// Puts back the address of every VIP we hold (or of `only`) that is no
    /// longer in the kernel: removed by hand, or with its interface.
    async fn verify_bound(&mut self, only: Option<&[String]>) {
        let held: Vec<(String, u32, String)> = self
            .vips
            .iter()
            .filter(|(id, v)| v.state == State::Activated && only.is_none_or(|o| o.contains(id)))
            .filter_map(|(id, v)| {
                let (index, ifname) = v.bound.clone()?;
                Some((id.clone(), index, ifname))
            })
            .collect();
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
        for (id, index, ifname) in held {
            let Some(v) = self.vips.get_mut(&id) else {
                continue;
            };
            let cidr = v.cidr;
            if present
                .iter()
                .any(|a| a.ifindex == index && a.addr == cidr.addr)
            {
                continue;
            }
            v.restores += 1;
            warn!(vip = %id, interface = %ifname, restores = v.restores, "the VIP's address is gone from the kernel (removed by hand or with its interface): restoring");
            // `bind` finds the interface by name again (it may be a new one),
            // adds the address and announces it.
            v.bound = None;
            self.bind(&id).await;
        }
        self.publish();
    }

    /// At start, with another host owning `id`: removes the address if an
    /// earlier run of this agent left it bound (a crash cannot unbind), so
    /// this host's kernel stops answering for someone else's VIP.
    async fn clear_leftover(&mut self, id: &str, owner: &str) {
        match self.remove_address(id).await {
            Some((ifname, Ok(true))) => warn!(
                vip = %id,
                interface = %ifname,
                owner,
                "removed the address an earlier run left bound: another host owns it"
            ),
            Some((_, Err(e))) => {
                warn!(vip = %id, error = %e, "removing a leftover address failed");
            }
            _ => {}
        }
    }

    /// Attaches the watcher to `record`'s interface ahead of any election,
    /// so binding only has to update a map, and (unless this host holds
    /// `addr`) tells the program the VIP is known but not ours, so it
    /// records who answers for it.
    fn watch(&mut self, record: &VipRecord, addr: IpAddr, held: bool) {
        let ifname = record
            .interface
            .clone()
            .or_else(|| self.settings.default_interface.clone());
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        if let Some(ifname) = ifname
            && let Err(e) = w.attach(&ifname)
        {
            debug!(interface = %ifname, error = %e, "cannot attach the VIP watcher yet");
        }
        if let (IpAddr::V4(v4), false) = (addr, held) {
            let _ = w.set(v4, MacAddr::default(), false);
        }
    }

    /// The eBPF watcher finished loading: watch the VIPs already held.
    async fn watcher_ready(&mut self, mut watcher: crate::watch::VipWatcher) {
        let held: Vec<_> = self
            .vips
            .values()
            .filter(|v| v.state == State::Activated)
            .filter_map(|v| {
                v.bound
                    .as_ref()
                    .map(|(_, ifname)| (v.cidr.addr, ifname.clone()))
            })
            .collect();
        for (addr, ifname) in held {
            let IpAddr::V4(v4) = addr else { continue };
            let Ok(Some(link)) = self.nl.link_by_name(&ifname).await else {
                continue;
            };
            let mac = link.mac.unwrap_or_default();
            if let Err(e) = watcher
                .attach(&ifname)
                .and_then(|()| watcher.set(v4, mac, true))
            {
                warn!(vip = %addr, error = %e, "cannot watch the VIP for conflicts");
            }
        }
        info!("eBPF VIP watcher loaded");
        self.watcher = Some(watcher);
        let known: Vec<_> = self
            .vips
            .values()
            .map(|v| (v.record.clone(), v.cidr.addr, v.state == State::Activated))
            .collect();
        for (record, addr, held) in &known {
            self.watch(record, *addr, *held);
        }
    }

    /// Someone else claims a VIP we hold: re-announce at once, count it.
    fn conflict(&mut self, c: crate::watch::Conflict) {
        let ip = IpAddr::V4(c.ip);
        let Some((id, v)) = self.vips.iter_mut().find(|(_, v)| v.cidr.addr == ip) else {
            return;
        };
        if v.state != State::Activated {
            return;
        }
        v.conflicts += 1;
        warn!(
            vip = %id,
            foreign_mac = %c.foreign_mac,
            our_mac = %c.our_mac,
            conflicts = v.conflicts,
            "vip conflict: another host claims our address; re-announcing"
        );
        if let Some((_, ifname)) = &v.bound {
            // Now, and once more after the program's per-VIP rate limit:
            // a claim that came in right behind this one (a GARP request
            // and its reply) raised no event of its own, and must not
            // have the last word with the clients.
            let mut answer = self.settings.clone();
            answer.garp_count = 2;
            answer.garp_interval = Duration::from_nanos(linkmesh_common::CONFLICT_INTERVAL_NS)
                + Duration::from_millis(10);
            if let Some(old) = v.announcer.replace(spawn_announcer(
                id,
                ifname,
                c.our_mac,
                ip,
                &answer,
                v.announcements.clone(),
            )) {
                old.abort();
            }
        }
    }

    /// The VIP's eligible standbys other than `owner`: hosts whose state
    /// key says STANDBY and that the record does not exclude.
    fn eligible(&self, id: &str, owner: Option<&str>) -> std::collections::BTreeSet<String> {
        let Some(v) = self.vips.get(id) else {
            return std::collections::BTreeSet::new();
        };
        self.members
            .get(id)
            .map(|m| {
                m.states
                    .iter()
                    .filter(|(h, s)| {
                        **s == State::Standby
                            && Some(h.as_str()) != owner
                            && !v.record.excluded_nodes.contains(*h)
                    })
                    .map(|(h, _)| h.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether fast failover protects `id` right now.
    fn fast_active(&self, id: &str) -> bool {
        let owner = self
            .vips
            .get(id)
            .and_then(|v| v.owner.as_ref().map(|(h, _)| h.clone()));
        self.settings
            .fast
            .active(self.eligible(id, owner.as_deref()).len())
    }

    /// A per-host key of a VIP changed.
    async fn member(&mut self, id: &str, kind: &str, host: &str, value: Option<String>) {
        let m = self.members.entry(id.to_owned()).or_default();
        match kind {
            "state" => match value.as_deref().and_then(State::parse) {
                Some(state) => {
                    m.states.insert(host.to_owned(), state);
                }
                None => {
                    m.states.remove(host);
                }
            },
            "suspect" => match value.as_deref().and_then(|v| v.parse::<i64>().ok()) {
                Some(lease) => {
                    m.suspects.insert(host.to_owned(), lease);
                }
                None => {
                    m.suspects.remove(host);
                }
            },
            _ => return,
        }
        if m.states.is_empty() && m.suspects.is_empty() {
            self.members.remove(id);
        }
        self.check_quorum(id).await;
    }

    /// When a quorum of eligible standbys suspects the owner's lease,
    /// deletes the owner key, guarded by that lease (a stale decision can
    /// never touch a new owner's key), then revokes the lease.
    async fn check_quorum(&mut self, id: &str) {
        let Some(v) = self.vips.get(id) else { return };
        let Some((owner, lease)) = v.owner.clone() else {
            return;
        };
        if v.state != State::Standby || owner == self.settings.hostname || v.revoked == Some(lease)
        {
            return;
        }
        let eligible = self.eligible(id, Some(&owner));
        let empty = BTreeMap::new();
        let suspects = self.members.get(id).map_or(&empty, |m| &m.suspects);
        if !revoke_due(&self.settings.fast, &eligible, suspects, lease) {
            return;
        }
        let agreeing: Vec<_> = suspects
            .iter()
            .filter(|(h, l)| **l == lease && eligible.contains(*h))
            .map(|(h, _)| h.clone())
            .collect();
        if let Some(v) = self.vips.get_mut(id) {
            v.revoked = Some(lease);
        }
        let key = self.keys.vip_owner(id);
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(key, None)]);
        let mut kv = self.client.kv_client();
        match tokio::time::timeout(self.settings.ttl, kv.txn(txn)).await {
            Ok(Ok(r)) if r.succeeded() => {
                warn!(
                    vip = %id,
                    owner = %owner,
                    lease = format!("{lease:x}"),
                    suspects = ?agreeing,
                    "owner unreachable in the data plane (suspect quorum): owner key deleted, revoking its lease"
                );
                let mut leases = self.client.lease_client();
                if let Ok(Err(e)) =
                    tokio::time::timeout(Duration::from_secs(1), leases.revoke(lease)).await
                {
                    debug!(vip = %id, error = %e, "revoking the owner's lease failed");
                }
                // Contend now rather than after the watch echoes the delete.
                self.set_owner(id, None).await;
            }
            Ok(Ok(_)) => debug!(vip = %id, "the owner key moved on before the revocation"),
            Ok(Err(e)) => warn!(vip = %id, error = %e, "revoking the owner failed"),
            Err(_) => warn!(vip = %id, "revoking the owner timed out"),
        }
    }

    /// Writes our suspect key for `id`: the owner lease we suspect.
    fn suspect(&mut self, id: &str, lease: i64) {
        if self.lease.id == 0 {
            return;
        }
        let _ = self.state_writes.send(Write::Put {
            key: self.keys.vip_suspect(id, &self.settings.hostname),
            value: lease.to_string(),
            lease: self.lease.id,
            stale_after: Some(std::time::Instant::now() + self.settings.fast.window()),
        });
    }

    fn withdraw_suspicion(&mut self, id: &str) {
        let _ = self.state_writes.send(Write::Delete {
            key: self.keys.vip_suspect(id, &self.settings.hostname),
        });
    }

    /// A raw sender on `ifname` and the interface's MAC.
    async fn prober(&mut self, ifname: &str) -> Option<&mut (Announcer, MacAddr)> {
        if !self.probers.contains_key(ifname) {
            let mac = self.nl.link_by_name(ifname).await.ok().flatten()?.mac?;
            match Announcer::open(ifname) {
                Ok(a) => {
                    self.probers.insert(ifname.to_owned(), (a, mac));
                }
                Err(e) => {
                    debug!(interface = %ifname, error = %e, "cannot open a probe socket");
                    return None;
                }
            }
        }
        self.probers.get_mut(ifname)
    }

    /// Sends one ARP probe; whether it went out.
    async fn send_probe(
        &mut self,
        ifname: &str,
        dst: Option<MacAddr>,
        vip: std::net::Ipv4Addr,
    ) -> bool {
        let Some((sender, mac)) = self.prober(ifname).await else {
            return false;
        };
        let frame = arp_probe(*mac, dst, vip);
        match sender.send(&frame) {
            Ok(()) => true,
            Err(e) => {
                debug!(interface = %ifname, error = %e, "sending a probe failed");
                false
            }
        }
    }

    /// Every probe interval: standbys probe each protected VIP's owner,
    /// suspect it after a silent window (if other peers are still heard),
    /// and withdraw the suspicion when it answers again. VIPs nobody owns
    /// are probed now and then for a stray holder.
    async fn probe_tick(&mut self) {
        if self.watcher.is_none() || self.settings.fast.mode == FastFailover::Off {
            return;
        }
        let now = crate::watch::ktime_now();
        let window = self.settings.fast.window();
        let ids: Vec<String> = self.vips.keys().cloned().collect();
        for id in ids {
            let Some(v) = self.vips.get(&id) else {
                continue;
            };
            let (IpAddr::V4(v4), Some(ifname)) = (v.cidr.addr, self.interface_of(v)) else {
                continue;
            };
            let owner = v.owner.clone();
            let standby = v.state == State::Standby;
            let others = owner
                .as_ref()
                .is_some_and(|(h, _)| *h != self.settings.hostname);
            // The cheap tests first: an owner, or a standby of an
            // unprotected VIP, makes no syscall here.
            let probing = standby && others && self.fast_active(&id);
            if probing || owner.is_none() {
                let seen = self.watcher.as_ref().and_then(|w| w.seen(v4));
                match owner {
                    Some(owner) => {
                        self.probe_owner(&id, &ifname, v4, owner, seen, now, window)
                            .await;
                    }
                    None => self.probe_stray(&id, &ifname, v4, seen, now).await,
                }
            } else if let Some(v) = self.vips.get_mut(&id)
                && v.probe.take().is_some_and(|p| p.suspected)
            {
                self.withdraw_suspicion(&id);
            }
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one probe step, all of its inputs"
    )]
    async fn probe_owner(
        &mut self,
        id: &str,
        ifname: &str,
        vip: std::net::Ipv4Addr,
        owner: (String, i64),
        seen: Option<(MacAddr, Duration)>,
        now: Duration,
        window: Duration,
    ) {
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        v.stray = Stray::default();
        let mut withdraw = false;
        if v.probe.as_ref().map(|p| &p.owner) != Some(&owner) {
            withdraw = v.probe.take().is_some_and(|p| p.suspected);
            v.probe = Some(Probe::new(owner.clone(), now));
        }
        let Some(p) = v.probe.as_mut() else { return };
        p.observe(seen);
        let dst = p.mac;
        let silent = p.silent(now, window, self.settings.fast.probe_misses);
        let suspected = p.suspected;
        if withdraw {
            self.withdraw_suspicion(id);
        }
        // Only probes that went out count towards a silence.
        if self.send_probe(ifname, dst, vip).await
            && let Some(p) = self.vips.get_mut(id).and_then(|v| v.probe.as_mut())
        {
            p.sent();
        }
        // While etcd does not answer us, a suspicion could not be written
        // now, and the owner has likely self-fenced (unbound on purpose):
        // its silence is no evidence.
        if silent && !suspected && self.lease.failures == 0 {
            let owner_ip = self.peers.address_of(&owner.0);
            let after = self
                .vips
                .get(id)
                .and_then(|v| v.probe.as_ref())
                .map_or(now, |p| {
                    p.others_needed_after(now, window, self.settings.fast.probe_interval)
                });
            if self.peers.any_other_heard_after(owner_ip, after) {
                let quiet_ms = self.vips.get(id).and_then(|v| v.probe.as_ref()).map(|p| {
                    now.saturating_sub(p.last_reply.unwrap_or(p.since))
                        .as_millis()
                });
                warn!(vip = %id, owner = %owner.0, window_ms = window.as_millis(), quiet_ms, ?dst, "owner does not answer ARP probes while other peers are heard: suspecting it");
                if let Some(p) = self.vips.get_mut(id).and_then(|v| v.probe.as_mut()) {
                    p.suspected = true;
                }
                self.suspect(id, owner.1);
                self.publish();
            } else if let Some(p) = self.vips.get_mut(id).and_then(|v| v.probe.as_mut())
                && !p.isolated_logged
            {
                p.isolated_logged = true;
                info!(vip = %id, owner = %owner.0, "owner does not answer ARP probes, but no other peer is heard either: our own link may be down; not suspecting");
            }
        } else if !silent && suspected {
            info!(vip = %id, owner = %owner.0, "owner answers ARP probes again: suspicion withdrawn");
            if let Some(p) = self.vips.get_mut(id).and_then(|v| v.probe.as_mut()) {
                p.suspected = false;
            }
            self.withdraw_suspicion(id);
            self.publish();
        }
    }

    /// A VIP without an owner for a while: a broadcast probe every second;
    /// an answer means a stray holder.
    async fn probe_stray(
        &mut self,
        id: &str,
        ifname: &str,
        vip: std::net::Ipv4Addr,
        seen: Option<(MacAddr, Duration)>,
        now: Duration,
    ) {
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        if v.probe.take().is_some_and(|p| p.suspected) {
            self.withdraw_suspicion(id);
        }
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        let since = *v.stray.ownerless_since.get_or_insert(now);
        if now.saturating_sub(since) < STRAY_GRACE {
            return;
        }
        if let (Some((mac, at)), Some(probed)) = (seen, v.stray.probed_at)
            && at >= probed
            && v.stray.reported != Some(mac)
        {
            v.stray.reported = Some(mac);
            v.stray.count += 1;
            warn!(vip = %id, mac = %mac, strays = v.stray.count, "stray holder: a host answers for this VIP while etcd says nobody owns it");
            self.publish();
        }
        let Some(v) = self.vips.get_mut(id) else {
            return;
        };
        if v.stray
            .probed_at
            .is_none_or(|t| now.saturating_sub(t) >= STRAY_PROBE_EVERY)
        {
            v.stray.probed_at = Some(now);
            self.send_probe(ifname, None, vip).await;
        }
    }

    async fn fault(&mut self, id: &str, cause: &str) {
        if self.transition(id, Event::Fault, cause) {
            self.release(id, true).await;
        }
    }

    async fn lease_changed(&mut self, lease: LeaseInfo) {
        let old = self.lease;
        self.lease = lease;
        if lease.id != old.id && old.id != 0 {
            // A new lease: every owner key on the old one is gone.
            let ids = self.ids_in(State::Activated);
            for id in ids {
                self.transition(&id, Event::Demoted, "lease lost");
                self.unbind(&id).await;
            }
        }
        if lease.id != old.id && lease.id != 0 {
            // Keys on a re-attached lease are ours again.
            let owners: Vec<_> = self
                .vips
                .iter()
                .map(|(id, v)| (id.clone(), v.owner.clone()))
                .collect();
            for (id, owner) in owners {
                self.set_owner(&id, owner).await;
            }
        }
        if lease.failures == 0 && old.failures > 0 {
            // etcd answers again. Silences seen during the outage may be
            // owners that fenced themselves: every probe starts afresh, and
            // suspicions are withdrawn, so a returning owner gets a full
            // window to answer before anyone can revoke it.
            let ids: Vec<String> = self.vips.keys().cloned().collect();
            for id in ids {
                let withdraw = self
                    .vips
                    .get_mut(&id)
                    .and_then(|v| v.probe.take())
                    .is_some_and(|p| p.suspected);
                if withdraw {
                    self.withdraw_suspicion(&id);
                }
            }
        }
        if lease.failures == 0 && lease.id != 0 {
            // etcd answers: fenced VIPs become eligible again.
            let fenced: Vec<_> = self
                .vips
                .iter()
                .filter(|(_, v)| v.fenced)
                .map(|(id, _)| id.clone())
                .collect();
            for id in fenced {
                if let Some(v) = self.vips.get_mut(&id) {
                    v.fenced = false;
                }
                self.transition(&id, Event::HealthCheckSuccess, "etcd reachable again");
            }
            let ids: Vec<_> = self.vips.keys().cloned().collect();
            for id in ids {
                self.evaluate(&id);
            }
        }
        self.claim_if_lost().await;
        self.publish();
    }

    /// `claim`: after `--keepalive-retry` failed keepalives, bind every
    /// eligible VIP nobody here holds (LinK's "at least one host" rule).
    async fn claim_if_lost(&mut self) {
        if self.settings.loss_policy != LossPolicy::Claim
            || self.lease.failures < self.settings.keepalive_retry
        {
            return;
        }
        let ids: Vec<_> = self
            .vips
            .iter()
            .filter(|(_, v)| v.state == State::Standby && !self.excluded(v))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            warn!(vip = %id, "etcd unreachable: claiming (loss policy claim)");
            if self.transition(&id, Event::Elected, "claim without etcd") {
                self.bind(&id).await;
            }
        }
    }

    /// `release`: unbind before the lease can expire.
    async fn fence(&mut self) {
        if self.settings.loss_policy != LossPolicy::Release || Instant::now() < self.lease.deadline
        {
            return;
        }
        let held = self.ids_in(State::Activated);
        for id in held {
            warn!(vip = %id, "lease renewal overdue: self-fencing (unbinding before the lease can expire)");
            self.unbind(&id).await;
            if let Some(v) = self.vips.get_mut(&id) {
                v.fenced = true;
                v.owner = None;
            }
            self.transition(&id, Event::Fault, "self-fenced");
        }
        self.publish();
    }

    async fn shutdown(&mut self) {
        let held = self.ids_in(State::Activated);
        let handed_over = !held.is_empty();
        for id in &held {
            self.release(id, true).await;
        }
        if handed_over && self.watcher.is_some() {
            // Detaching TC programs takes the RTNL lock through an RCU grace
            // period, and every host shares that lock: doing it right now
            // would hold up the successor's bind by 10-20 ms. Let it bind first.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for v in self.vips.values() {
            v.checker.abort();
        }
        if self.lease.id != 0 {
            let mut lease = self.client.lease_client();
            let _ = tokio::time::timeout(Duration::from_secs(2), lease.revoke(self.lease.id)).await;
        }
        if let Some(dir) = &self.settings.state_dir {
            let _ = std::fs::remove_file(dir.join("vip-lease"));
        }
    }
}

fn spawn_checker(
    id: &str,
    checks: Vec<Check>,
    s: &VipSettings,
    tx: mpsc::Sender<Msg>,
    seconds: Histogram,
) -> JoinHandle<()> {
    let id = id.to_owned();
    let (interval, timeout) = (s.health_interval, s.health_timeout);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let mut ok = true;
            let mut detail = String::from("no checks");
            for check in &checks {
                match health::run(check, timeout).await {
                    Ok(took) => {
                        seconds.observe(took.as_secs_f64());
                        detail = format!("ok in {took:?}");
                    }
                    Err(e) => {
                        ok = false;
                        detail = e;
                        break;
                    }
                }
            }
            if tx.send(Msg::Health(id.clone(), ok, detail)).await.is_err() {
                return;
            }
        }
    })
}

/// Announces `ip` `garp_count` times. An async task, so aborting it on
/// unbind stops it between sends: a host must never announce an address it
/// gave up (a blocking loop could not be cancelled, and kept pointing
/// clients at the old owner after a graceful handover).
fn spawn_announcer(
    id: &str,
    ifname: &str,
    mac: crate::addr::MacAddr,
    ip: IpAddr,
    s: &VipSettings,
    sent: Arc<std::sync::atomic::AtomicU64>,
) -> JoinHandle<()> {
    let (id, ifname) = (id.to_owned(), ifname.to_owned());
    let (count, interval) = (s.garp_count.max(1), s.garp_interval);
    tokio::spawn(async move {
        // Opening an AF_PACKET socket and sending on it do not block for long.
        let mut announcer = match Announcer::open(&ifname) {
            Ok(a) => a,
            Err(e) => {
                warn!(vip = %id, error = %e, "cannot announce");
                return;
            }
        };
        for i in 0..count {
            match announcer.announce(mac, ip) {
                Ok(()) => {
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => warn!(vip = %id, error = %e, "announcing failed"),
            }
            if i + 1 < count {
                tokio::time::sleep(interval).await;
            }
        }
        debug!(vip = %id, count, "announcements sent");
    })
}

fn lease_file(s: &VipSettings) -> Option<PathBuf> {
    s.state_dir.as_ref().map(|d| d.join("vip-lease"))
}

/// Grants (or, after a restart, re-attaches to) the ownership lease and
/// keeps it alive (see [`renew_interval`]), publishing the fencing deadline.
async fn keep_lease(
    client: Client,
    s: VipSettings,
    tx: watch::Sender<LeaseInfo>,
    shared: StatusMap,
) {
    let failed = || {
        shared
            .etcd_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let ttl_secs = i64::try_from(s.ttl.as_secs()).unwrap_or(2).max(2);
    let margin = fence_margin(s.ttl);
    let mut lease_client = client.lease_client();
    let mut failures = 0u32;
    let mut id = lease_file(&s)
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| t.trim().parse::<i64>().ok())
        .unwrap_or(0);
    // Every attempt is bounded by a third of the TTL, and a failed one is
    // retried after 100 ms (doubling up to a third of the TTL): a request
    // that lands on a dead or leaderless member must not use up the time
    // left before the fencing deadline.
    let attempt = renew_interval(s.ttl);
    let pause = |failures: u32| retry_pause(failures, attempt);
    loop {
        if id != 0 {
            id = reattach(&mut lease_client, id, attempt).await;
        }
        if id == 0 {
            let sent = Instant::now();
            match tokio::time::timeout(attempt, lease_client.grant(ttl_secs, None)).await {
                Ok(Ok(r)) => {
                    id = r.id();
                    failures = 0;
                    info!(
                        lease = format!("{id:x}"),
                        ttl = ttl_secs,
                        "ownership lease granted"
                    );
                    save_lease(&s, id);
                    tx.send_replace(LeaseInfo {
                        id,
                        deadline: sent + s.ttl.saturating_sub(margin),
                        failures,
                    });
                }
                _ => {
                    failures += 1;
                    failed();
                    tx.send_modify(|l| l.failures = failures);
                    tokio::time::sleep(pause(failures)).await;
                    continue;
                }
            }
        }
        let Ok(Ok((mut keeper, mut stream))) =
            tokio::time::timeout(attempt, lease_client.keep_alive(id)).await
        else {
            failures += 1;
            failed();
            tx.send_modify(|l| l.failures = failures);
            tokio::time::sleep(pause(failures)).await;
            continue;
        };
        let mut tick = tokio::time::interval(attempt);
        loop {
            tick.tick().await;
            let sent = Instant::now();
            let answer = tokio::time::timeout(attempt, async {
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match answer {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    shared
                        .keepalive_seconds
                        .observe(sent.elapsed().as_secs_f64());
                    failures = 0;
                    tx.send_replace(LeaseInfo {
                        id,
                        deadline: sent + s.ttl.saturating_sub(margin),
                        failures,
                    });
                }
                Ok(Ok(Some(_))) => {
                    warn!(lease = format!("{id:x}"), "ownership lease expired");
                    id = 0;
                    break;
                }
                _ => {
                    failures += 1;
                    failed();
                    tx.send_modify(|l| l.failures = failures);
                    warn!(failures, "ownership lease keepalive failed");
                    tokio::time::sleep(pause(failures)).await;
                    break;
                }
            }
        }
    }
}

/// 100 ms after the first failure, doubling, at most `cap`.
fn retry_pause(failures: u32, cap: Duration) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(failures.saturating_sub(1).min(8))).min(cap)
}

/// Keeps the lease id in the state directory, for a restart within the TTL.
fn save_lease(s: &VipSettings, id: i64) {
    if let Some(f) = lease_file(s) {
        let _ = std::fs::create_dir_all(f.parent().unwrap_or(std::path::Path::new("/")));
        let _ = std::fs::write(f, id.to_string());
    }
}

/// The lease `id` if etcd still has it (or cannot say), else 0.
async fn reattach(leases: &mut etcd_client::LeaseClient, id: i64, ttl: Duration) -> i64 {
    match tokio::time::timeout(ttl, leases.time_to_live(id, None)).await {
        Ok(Ok(r)) if r.ttl() > 0 => {
            info!(
                lease = format!("{id:x}"),
                "re-attached to the ownership lease"
            );
            id
        }
        Ok(Ok(_)) => 0,
        _ => id,
    }
}

/// Reads `<prefix>/vips/` (snapshot, then watch; again on any failure) and
/// forwards verified records, owners and failover requests.
async fn watch_vips(
    client: Client,
    keys: Keys,
    secrets: Secrets,
    tx: mpsc::Sender<Msg>,
    shared: StatusMap,
) {
    let mut rejected: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        if let Err(e) = watch_once(&client, &keys, &secrets, &tx, &mut rejected, &shared).await {
            debug!(error = %e, "vip watch restarting");
            shared
                .watch_restarts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if tx.is_closed() {
            return;
        }
    }
}

fn parse_record(
    secrets: &Secrets,
    key: &str,
    value: &[u8],
    lease: i64,
) -> Result<VipRecord, String> {
    let expect = Expect {
        key,
        lease,
        now: unix_now(),
        max_age: None,
    };
    let v = open::<VipRecord>(secrets, value, expect).map_err(|r| r.to_string())?;
    v.body.validate()?;
    Ok(v.body)
}

async fn watch_once(
    client: &Client,
    keys: &Keys,
    secrets: &Secrets,
    tx: &mpsc::Sender<Msg>,
    rejected: &mut BTreeMap<String, i64>,
    shared: &Shared,
) -> Result<(), String> {
    let dir = keys.vips();
    let (revision, snapshot) = crate::store::read_prefix(client, &dir)
        .await
        .map_err(|e| e.to_string())?;
    let mut records = BTreeMap::new();
    let mut owners = BTreeMap::new();
    let mut unreadable = BTreeSet::new();
    let mut members = Vec::new();
    let mut log_rejection = |key: &str, rev: i64, why: &str| {
        if rejected.get(key) != Some(&rev) {
            warn!(key, reason = why, "vip record rejected");
            shared
                .vip_records_rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rejected.insert(key.to_owned(), rev);
        }
    };
    for kv in &snapshot {
        let Ok(key) = kv.key_str() else { continue };
        match keys.vip_of(key) {
            Some((id, None)) => match parse_record(secrets, key, kv.value(), kv.lease()) {
                Ok(r) => {
                    records.insert(id.to_owned(), r);
                }
                Err(e) => {
                    unreadable.insert(id.to_owned());
                    log_rejection(key, kv.mod_revision(), &e);
                }
            },
            Some((id, Some("owner"))) => {
                owners.insert(
                    id.to_owned(),
                    (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()),
                );
            }
            Some((id, Some("failover"))) => {
                let _ = tx
                    .send(Msg::Failover(
                        id.to_owned(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    ))
                    .await;
            }
            _ => {
                if let Some(m) = member_msg(keys, key, Some(kv.value())) {
                    members.push(m);
                }
            }
        }
    }
    tx.send(Msg::Snapshot {
        records,
        owners,
        unreadable,
    })
    .await
    .map_err(|_| "closed".to_owned())?;
    for m in members {
        tx.send(m).await.map_err(|_| "closed".to_owned())?;
    }
    drop(snapshot);
    let mut watch_client = client
        .watch_client()
        .max_decoding_message_size(crate::store::MAX_REPLY);
    let mut stream = watch_client
        .watch(
            dir,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let response = stream
            .message()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("watch ended")?;
        if response.canceled() || response.compact_revision() > 0 {
            return Err("watch cancelled".into());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let deleted = event.event_type() == EventType::Delete;
            let Some(msg) = event_msg(keys, secrets, kv, deleted, &mut log_rejection) else {
                continue;
            };
            tx.send(msg).await.map_err(|_| "closed".to_owned())?;
        }
    }
}

/// One watch event under `<prefix>/vips/` as a message (`None`: ignored or
/// rejected).
fn event_msg(
    keys: &Keys,
    secrets: &Secrets,
    kv: &etcd_client::KeyValue,
    deleted: bool,
    log_rejection: &mut impl FnMut(&str, i64, &str),
) -> Option<Msg> {
    let key = kv.key_str().ok()?;
    let msg = match keys.vip_of(key) {
        Some((id, None)) if deleted => Msg::Record(id.to_owned(), None),
        Some((id, None)) => match parse_record(secrets, key, kv.value(), kv.lease()) {
            Ok(r) => Msg::Record(id.to_owned(), Some(r)),
            Err(e) => {
                log_rejection(key, kv.mod_revision(), &e);
                return None;
            }
        },
        Some((id, Some("owner"))) if deleted => Msg::Owner(id.to_owned(), None),
        Some((id, Some("owner"))) => Msg::Owner(
            id.to_owned(),
            Some((String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())),
        ),
        Some((id, Some("failover"))) if !deleted => Msg::Failover(
            id.to_owned(),
            String::from_utf8_lossy(kv.value()).into_owned(),
        ),
        _ => member_msg(keys, key, (!deleted).then(|| kv.value()))?,
    };
    Some(msg)
}

/// A `state` or `suspect` key as a message (`value` `None`: deleted).
fn member_msg(keys: &Keys, key: &str, value: Option<&[u8]>) -> Option<Msg> {
    let (id, kind, host) = keys.vip_member_of(key)?;
    Some(Msg::Member {
        id: id.to_owned(),
        kind: kind.to_owned(),
        host: host.to_owned(),
        value: value.map(|v| String::from_utf8_lossy(v).into_owned()),
    })
}

/// Loads the eBPF VIP watcher off the manager's path (loading and
/// verifying takes a moment, elections must not wait for it), then hands it
/// over and forwards its conflicts. Without it (no CAP_BPF, an old kernel)
/// floating IPs still work, unwatched.
fn start_watcher(tx: mpsc::Sender<Msg>, status: StatusMap) {
    tokio::task::spawn_blocking(move || match crate::watch::VipWatcher::new() {
        Ok((watcher, mut conflicts)) => {
            if tx
                .blocking_send(Msg::WatcherReady(Box::new(watcher)))
                .is_err()
            {
                return;
            }
            tokio::spawn(async move {
                loop {
                    match conflicts.next().await {
                        Ok(c) => {
                            status
                                .ebpf_events
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if let Ok(n) = conflicts.dropped() {
                                status
                                    .ebpf_ring_drops
                                    .store(n, std::sync::atomic::Ordering::Relaxed);
                            }
                            if tx.send(Msg::Conflict(c)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "reading VIP conflict events failed");
                            return;
                        }
                    }
                }
            });
        }
        Err(e) => warn!(error = %e, "the eBPF VIP watcher is not available; conflicts go unseen"),
    });
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
    fn lease_retries_start_at_100_ms_and_double_up_to_a_third_of_the_ttl() {
        let cap = Duration::from_millis(666);
        let pauses: Vec<u128> = (1..=5).map(|f| retry_pause(f, cap).as_millis()).collect();
        assert_eq!(pauses, vec![100, 200, 400, 666, 666]);
        assert_eq!(retry_pause(u32::MAX, cap), cap);
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
