//! The one snapshot + watch loop over the prefix. Hosts, segments and VIP
//! records go through the registry cache (verified, validated, rejections
//! logged once); the mesh gets the cache's view, the floating-IP subsystem
//! every change under `vips/`. A snapshot at revision R, then a watch from
//! R+1, for as long as the watch is healthy: no periodic re-read, so an
//! agent costs etcd nothing per interval while nothing changes. Every
//! `resync` the watch is asked for its progress (etcd answers at once when
//! the watch is caught up); one that has not answered by the next check,
//! or a broken stream, is watched again from the revision it had reached:
//! etcd replays what was missed, so an outage costs what changed during
//! it, not a re-read. Only a compacted (or cancelled) watch means a fresh
//! snapshot, and that waits a random share of a spread that grows with
//! the fleet ([`read_spread`]), so a fleet cut off together does not
//! re-read together. The view is published again at every check, since
//! host records age out by the clock (`--max-record-age`), not by events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, EventType, KeyValue, WatchOptions};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{debug, info, warn};

use super::client::{MAX_REPLY, read_prefix};
use super::{EtcdError, timed};
use crate::clock::unix_now;
use crate::random;
use crate::registry::cache::{Entry, RegistryCache};
use crate::registry::{Keys, RegistryView, ValidVip, VipChange, VipKey, VipSnapshot};

/// Counters of the loop.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Snapshots read and published.
    pub snapshots: AtomicU64,
    pub watch_restarts: AtomicU64,
    /// The revision of the last snapshot or event.
    pub revision: AtomicI64,
}

impl SyncStats {
    /// Returns once the first snapshot is published (the registry was
    /// actually read: an empty view before it would remove every peer or
    /// blank every name).
    pub async fn first_snapshot(&self) {
        while self.snapshots.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Where the loop's results go.
pub struct Outputs {
    pub cache: Arc<Mutex<RegistryCache>>,
    /// The view the mesh, the peers and the API use.
    pub view: watch::Sender<RegistryView>,
    /// Every change under `vips/`, for the floating-IP subsystem.
    pub vips: mpsc::UnboundedSender<VipChange>,
    /// The verified VIP records, by id, whenever they change (the hosts
    /// file names them).
    pub vip_records: watch::Sender<BTreeMap<String, ValidVip>>,
    pub stats: Arc<SyncStats>,
    /// Where the definitions' generations are kept (`None`: in memory).
    pub marks_file: Option<PathBuf>,
}

/// The fleet's re-reads together stay under about this many records a
/// second, on the worst assumption that every agent re-reads at once
/// (each reads every host's record): 10,000 agents spread their re-reads
/// over 100 s, 1,000 over 1 s, 100 over 10 ms.
const FLEET_READ_BUDGET: f64 = 1_000_000.0;
/// However large the fleet, a re-read waits at most this long.
const MAX_READ_SPREAD: Duration = Duration::from_mins(5);
/// Retries start this far apart and double up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The span a re-read of the prefix is spread over, with `hosts` hosts
/// registered: `hosts^2 / FLEET_READ_BUDGET` seconds, at most
/// [`MAX_READ_SPREAD`].
#[must_use]
pub fn read_spread(hosts: usize) -> Duration {
    #[expect(clippy::cast_precision_loss, reason = "host counts are far below 2^52")]
    let n = hosts as f64;
    Duration::from_secs_f64(n * n / FLEET_READ_BUDGET).min(MAX_READ_SPREAD)
}

/// The wait before retry number `failures` (1 for the first), drawn from
/// the upper half of a doubling step (`r`: random), so agents that lost
/// etcd together do not come back in step.
#[must_use]
pub fn retry_wait(failures: u64, r: u64) -> Duration {
    let shift = u32::try_from(failures.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    let step = MIN_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF);
    step / 2 + random::within(step / 2, r)
}

/// Runs until cancelled.
pub async fn run(client: Client, keys: Keys, out: Outputs, resync: Duration) {
    let mut failures = 0u64;
    // The revision the watch has reached (`None`: read the prefix first).
    let mut resume: Option<i64> = None;
    loop {
        if resume.is_none() && out.stats.snapshots.load(Ordering::Relaxed) > 0 {
            let hosts = out.view.borrow().hosts.len();
            let wait = random::within(read_spread(hosts), random::u64());
            info!(
                hosts,
                wait_ms = wait.as_millis(),
                "re-reading the registry after a random share of the fleet's spread"
            );
            tokio::time::sleep(wait).await;
        }
        let started = tokio::time::Instant::now();
        let e = match watch(&client, &keys, &out, resync, &mut resume).await {
            Ok(never) => match never {},
            Err(e) => e,
        };
        // A watch that ran a while was healthy: start the backoff over.
        if started.elapsed() > resync {
            failures = 0;
        }
        failures += 1;
        // Identical repeats are summarised by `logs`.
        warn!(error = %e, failures, resume_from = resume.map(|r| r + 1), "registry sync failed; retrying");
        out.stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(retry_wait(failures, random::u64())).await;
    }
}

fn entry(kv: &KeyValue) -> Option<Entry<'_>> {
    Some(Entry {
        key: kv.key_str().ok()?,
        value: kv.value(),
        lease: kv.lease(),
        mod_revision: kv.mod_revision(),
        create_revision: kv.create_revision(),
    })
}

/// Publishes the change of `changed` keys alone: O(log N) each, so a join
/// or leave costs the same in a fleet of 10 or 10,000. A key the view
/// does not hold directly means a whole new view.
async fn publish_keys(out: &Outputs, changed: &[String]) {
    let cache = out.cache.lock().await;
    let now = unix_now();
    let mut whole = false;
    out.view.send_if_modified(|view| {
        let mut modified = false;
        for key in changed {
            match cache.update_view(view, key, now) {
                Some(m) => modified |= m,
                None => whole = true,
            }
        }
        modified
    });
    drop(cache);
    if whole {
        publish(out).await;
    }
}

async fn publish(out: &Outputs) {
    let view = out.cache.lock().await.view(unix_now());
    out.view.send_if_modified(|current| {
        if *current == view {
            false
        } else {
            *current = view;
            true
        }
    });
}

/// Publishes the VIP records, if they changed.
fn publish_records(out: &Outputs, records: &BTreeMap<String, ValidVip>) {
    out.vip_records.send_if_modified(|current| {
        if current == records {
            false
        } else {
            current.clone_from(records);
            true
        }
    });
}

/// Reads the prefix at one revision into the cache and publishes it (the
/// VIP keys whole: it may follow missed changes); returns the revision.
async fn snapshot(client: &Client, keys: &Keys, out: &Outputs) -> Result<i64, EtcdError> {
    let prefix = format!("{}/", keys.prefix());
    let (revision, snapshot) = read_prefix(client, &prefix).await?;
    out.stats.revision.store(revision, Ordering::Relaxed);
    let mut vips = VipSnapshot::default();
    {
        let mut cache = out.cache.lock().await;
        let mut records = Vec::with_capacity(snapshot.len());
        let now = unix_now();
        for kv in &snapshot {
            let Some(e) = entry(kv) else { continue };
            match keys.vip_key(e.key) {
                Some(VipKey::Record(_)) | None => records.push(e),
                Some(_) => match cache.vip_key(e, false, now) {
                    Some(VipChange::Owner(id, Some(owner))) => {
                        vips.owners.insert(id, owner);
                    }
                    Some(VipChange::BogusOwner { id, revision }) => {
                        vips.bogus_owners.push((id, revision));
                    }
                    Some(VipChange::Failover(id, host)) => vips.failovers.push((id, host)),
                    Some(VipChange::Member(m)) if m.value.is_some() => vips.members.push(m),
                    _ => {}
                },
            }
        }
        cache.snapshot(records, now);
        vips.records = cache.vips().clone();
        publish_records(out, &vips.records);
        keep_marks(&mut cache, out.marks_file.as_deref());
    }
    publish(out).await;
    let _ = out.vips.send(VipChange::Snapshot(Box::new(vips)));
    // Counted once published: the mesh waits for it before its first
    // reconcile (an earlier one would see no segment and no peer).
    out.stats.snapshots.fetch_add(1, Ordering::Relaxed);
    debug!(revision, keys = snapshot.len(), "registry snapshot");
    Ok(revision)
}

/// A snapshot (unless `resume` holds the revision reached before), then
/// the watch from the revision after it, until the watch fails or stops
/// answering progress requests: returns why. `resume` follows the events
/// and progress answers, and is cleared when the watch was compacted.
async fn watch(
    client: &Client,
    keys: &Keys,
    out: &Outputs,
    resync: Duration,
    resume: &mut Option<i64>,
) -> Result<std::convert::Infallible, EtcdError> {
    let revision = match *resume {
        Some(r) => {
            info!(
                from = r + 1,
                "watching the registry again from the revision reached"
            );
            r
        }
        None => {
            let r = snapshot(client, keys, out).await?;
            *resume = Some(r);
            r
        }
    };
    let prefix = format!("{}/", keys.prefix());
    let mut watch_client = client.watch_client().max_decoding_message_size(MAX_REPLY);
    let mut stream = timed(
        || format!("watching {prefix}"),
        watch_client.watch(
            prefix.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1)
                    .with_progress_notify(),
            ),
        ),
    )
    .await?;
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether a progress request is out and unanswered.
    let mut asked = false;
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = check.tick() => {
                if asked {
                    return Err(EtcdError::Stream(format!(
                        "the registry watch did not answer a progress request within {resync:?}: re-reading"
                    )));
                }
                stream.request_progress().await.map_err(|source| EtcdError::Etcd {
                    what: "asking the registry watch for its progress".into(),
                    source,
                })?;
                asked = true;
                publish(out).await;
                continue;
            }
        };
        // Any answer (events or progress) shows the watch is alive.
        let answered = std::mem::take(&mut asked);
        let response = match message {
            Ok(Some(r)) => r,
            Ok(None) => return Err(EtcdError::Stream("the watch stream ended".into())),
            Err(source) => {
                return Err(EtcdError::Etcd {
                    what: "reading the registry watch".into(),
                    source,
                });
            }
        };
        if response.canceled() || response.compact_revision() > 0 {
            *resume = None;
            return Err(EtcdError::Stream(format!(
                "the registry watch was cancelled (compacted at {}): re-reading",
                response.compact_revision()
            )));
        }
        if let Some(h) = response.header() {
            out.stats.revision.store(h.revision(), Ordering::Relaxed);
            // Empty and not the creation: a progress answer, which etcd
            // sends only to a watch that is caught up to this revision.
            if response.events().is_empty() && !response.created() {
                *resume = Some(h.revision());
                if answered {
                    debug!(revision = h.revision(), "the registry watch is current");
                }
            }
        }
        let events = response.events();
        if !events.is_empty() {
            let changed = apply(keys, out, events).await;
            if !changed.is_empty() {
                publish_keys(out, &changed).await;
            }
            if let Some(last) = events
                .iter()
                .filter_map(|e| e.kv())
                .map(KeyValue::mod_revision)
                .max()
            {
                *resume = Some(last);
            }
        }
    }
}

/// The VIP records that differ between `before` and `after`, as changes.
fn record_changes(
    before: &std::collections::BTreeMap<String, crate::registry::ValidVip>,
    after: &std::collections::BTreeMap<String, crate::registry::ValidVip>,
) -> Vec<VipChange> {
    let ids: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    ids.into_iter()
        .filter(|id| before.get(*id) != after.get(*id))
        .map(|id| VipChange::Record(id.clone(), after.get(id).cloned().map(Box::new)))
        .collect()
}

/// Applies watch events: to the cache, and to the floating-IP subsystem.
/// Returns the keys whose change may show in the view.
async fn apply(keys: &Keys, out: &Outputs, events: &[etcd_client::Event]) -> Vec<String> {
    let mut changed = Vec::new();
    {
        let mut cache = out.cache.lock().await;
        let now = unix_now();
        for event in events {
            let Some(e) = event.kv().and_then(entry) else {
                continue;
            };
            let deleted = event.event_type() == EventType::Delete;
            let vip = match keys.vip_key(e.key) {
                Some(VipKey::Owner(_) | VipKey::Failover(_) | VipKey::Member { .. }) => {
                    cache.vip_key(e, deleted, now)
                }
                Some(VipKey::Record(_)) => {
                    // Every record that changed: one on the same address
                    // may come or go with this one (one VIP per address).
                    let before = cache.vips().clone();
                    if deleted {
                        cache.delete(e.key);
                    } else {
                        cache.put(e, now);
                    }
                    let records = record_changes(&before, cache.vips());
                    if !records.is_empty() {
                        publish_records(out, cache.vips());
                    }
                    for change in records {
                        let _ = out.vips.send(change);
                    }
                    None
                }
                None => {
                    let moved = if deleted {
                        cache.delete(e.key)
                    } else {
                        cache.put(e, now)
                    };
                    if moved {
                        changed.push(e.key.to_owned());
                    }
                    None
                }
            };
            if let Some(change) = vip {
                let _ = out.vips.send(change);
            }
        }
        keep_marks(&mut cache, out.marks_file.as_deref());
    }
    changed
}

/// Keeps the definitions' generations in the state directory when they
/// moved on, so a restarted agent refuses what it refused before.
fn keep_marks(cache: &mut RegistryCache, file: Option<&Path>) {
    let Some(file) = file else { return };
    let marks = cache.marks_mut();
    if marks.unsaved()
        && let Err(e) = marks.save(file)
    {
        warn!(file = %file.display(), error = %e, "cannot keep the definitions' generations");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_spread_grows_with_the_square_of_the_fleet() {
        assert_eq!(read_spread(0), Duration::ZERO);
        assert_eq!(read_spread(100), Duration::from_millis(10));
        assert_eq!(read_spread(1_000), Duration::from_secs(1));
        assert_eq!(read_spread(10_000), Duration::from_secs(100));
        assert_eq!(read_spread(1_000_000), MAX_READ_SPREAD);
    }

    #[test]
    fn retries_double_within_their_upper_half() {
        for (failures, step) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (5, 1600),
            (6, 2000),
            (60, 2000),
        ] {
            let step = Duration::from_millis(step);
            for r in [0, 1, 12_345_678_901, u64::MAX] {
                let w = retry_wait(failures, r);
                assert!(w >= step / 2 && w < step, "{failures}: {w:?} vs {step:?}");
            }
        }
        assert_ne!(retry_wait(4, 1), retry_wait(4, 300_000_000));
    }
}
