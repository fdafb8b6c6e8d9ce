//! What the floating-IP subsystem shares with the API and the metrics:
//! every VIP's status on this host, and how the ownership lease is doing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;

use super::core::Core;
use super::{LossPolicy, State};
use crate::etcd::lease::LeaseStats;

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

/// Shared with the API: the VIPs' status and the subsystem's counters.
#[derive(Debug)]
pub struct Shared {
    pub vips: Mutex<BTreeMap<String, VipStatus>>,
    /// Consecutive failed keepalives (0: etcd answers).
    pub lease_failures: AtomicU32,
    pub loss_policy: OnceLock<LossPolicy>,
    /// The ownership lease's failed grants and keepalives, and the round
    /// trip of acknowledged keepalives.
    pub lease: Arc<LeaseStats>,
    /// Duration of passed health checks.
    pub health_check_seconds: Histogram,
    /// Conflict events read from the eBPF watcher's ring.
    pub ebpf_events: AtomicU64,
    /// Conflict events the eBPF program dropped because the ring was full.
    pub ebpf_ring_drops: AtomicU64,
    /// Binds refused because the address was on the host already and
    /// linkmesh had not added it.
    pub foreign_addresses: AtomicU64,
    /// Port maps and routes of held VIPs that could not be programmed.
    pub delivery_failures: AtomicU64,
    /// VIPs whose ports this host maps now (only ones it holds).
    pub port_mapped: AtomicU64,
    /// ARP replies for VIPs held elsewhere from a MAC other than the one
    /// the owner published: ignored by the eBPF watcher.
    pub foreign_replies: AtomicU64,
    /// Outcomes of the notify hooks.
    pub notify: Arc<super::notify::NotifyCounters>,
}

impl Default for Shared {
    fn default() -> Self {
        // 1 ms to ~4 s.
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 13));
        Self {
            vips: Mutex::default(),
            lease_failures: AtomicU32::default(),
            loss_policy: OnceLock::default(),
            lease: Arc::new(LeaseStats {
                errors: AtomicU64::default(),
                keepalive_seconds: Some(buckets()),
            }),
            health_check_seconds: buckets(),
            ebpf_events: AtomicU64::default(),
            ebpf_ring_drops: AtomicU64::default(),
            foreign_addresses: AtomicU64::default(),
            delivery_failures: AtomicU64::default(),
            port_mapped: AtomicU64::default(),
            foreign_replies: AtomicU64::default(),
            notify: Arc::default(),
        }
    }
}

impl Shared {
    #[must_use]
    pub fn vips(&self) -> BTreeMap<String, VipStatus> {
        self.vips
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publishes `core`'s view; `announcements` counts what the
    /// announcers sent per VIP.
    pub fn update(&self, core: &Core, announcements: &dyn Fn(&str) -> u64) {
        let settings = core.settings();
        let map = core
            .vips()
            .iter()
            .map(|(id, v)| {
                let status = VipStatus {
                    id: id.clone(),
                    address: v.spec.cidr.to_string(),
                    owner: v.owner.as_ref().map(|o| o.host.clone()),
                    state: v.state,
                    interface: v
                        .spec
                        .record
                        .interface
                        .clone()
                        .or_else(|| settings.default_interface.clone()),
                    conflicts: v.conflicts,
                    strays: v.strays(),
                    fast_failover: core.fast_active(id),
                    suspects_owner: v.suspects_owner(),
                    transitions: v.transitions,
                    announcements: announcements(id),
                    health_checks_passed: v.health_passed,
                    health_checks_failed: v.health_failed,
                    restores: v.restores,
                };
                (id.clone(), status)
            })
            .collect();
        *self.vips.lock().unwrap_or_else(PoisonError::into_inner) = map;
        self.lease_failures
            .store(core.lease().failures, Ordering::Relaxed);
        let _ = self.loss_policy.set(settings.loss_policy);
    }
}

pub type StatusMap = Arc<Shared>;
