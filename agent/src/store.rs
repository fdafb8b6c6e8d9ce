//! etcd: the connection, the registry sync (snapshot + watch, re-created on
//! any failure), this host's registration (lease + keepalive + re-signing),
//! and the admin operations on segments.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::{Mutex, watch};
use tracing::{debug, info, warn};

use crate::mesh::RegistryView;
use crate::registry::cache::{Entry, RegistryCache};
use crate::registry::{HostRecord, Keys, Secrets, SegmentSpec, seal};

/// One etcd request may take this long before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("connecting to etcd at {endpoints}: {detail}")]
    Connect {
        endpoints: String,
        /// The error and its causes, on one line (TLS and auth failures
        /// say what is wrong only in the causes).
        detail: String,
    },
    #[error("{what}: {source}")]
    Etcd {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("{what}: no answer from etcd within {REQUEST_TIMEOUT:?}")]
    Timeout { what: String },
    #[error("{0}")]
    Seal(#[from] crate::registry::record::SealError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

/// Unix seconds now, for record issue times and ages (wall-clock by
/// nature: they are compared across hosts), read from [`SlewedClock`]: a
/// step of this host's wall clock (set by hand, or by NTP after a long
/// outage) moves it by at most 0.5 ms per second, so it neither expires
/// the records this agent holds nor future-dates the ones it signs. Every
/// deadline in the agent uses the monotonic clock instead.
#[must_use]
pub fn unix_now() -> u64 {
    static CLOCK: std::sync::Mutex<Option<SlewedClock>> = std::sync::Mutex::new(None);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mono = std::time::Instant::now();
    let mut clock = CLOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = clock
        .get_or_insert_with(|| SlewedClock::new(wall, mono))
        .read(wall, mono);
    // Whole seconds; the value is a few billion at most.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let secs = now.max(0.0) as u64;
    secs
}

/// The wall clock as of the first reading, carried forward by the
/// monotonic clock, and pulled towards the wall clock at most
/// [`SlewedClock::MAX_SLEW`] seconds per second (the kernel's own adjtime
/// limit): NTP's small corrections are followed, a step is absorbed slowly.
#[derive(Debug, Clone, Copy)]
pub struct SlewedClock {
    base_wall: f64,
    base_mono: std::time::Instant,
    last_mono: std::time::Instant,
    /// Correction applied so far, seconds.
    offset: f64,
}

impl SlewedClock {
    /// 500 ppm.
    pub const MAX_SLEW: f64 = 0.0005;

    #[must_use]
    pub fn new(wall: f64, mono: std::time::Instant) -> Self {
        Self {
            base_wall: wall,
            base_mono: mono,
            last_mono: mono,
            offset: 0.0,
        }
    }

    /// Unix seconds at monotonic time `mono`, given the wall clock `wall`.
    pub fn read(&mut self, wall: f64, mono: std::time::Instant) -> f64 {
        let mono = mono.max(self.last_mono);
        let carried = self.base_wall + (mono - self.base_mono).as_secs_f64() + self.offset;
        let room = (mono - self.last_mono).as_secs_f64() * Self::MAX_SLEW;
        self.offset += (wall - carried).clamp(-room, room);
        self.last_mono = mono;
        self.base_wall + (mono - self.base_mono).as_secs_f64() + self.offset
    }
}

async fn timed<T>(
    what: impl Fn() -> String,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(StoreError::Etcd {
            what: what(),
            source,
        }),
        Err(_) => Err(StoreError::Timeout { what: what() }),
    }
}

/// Connects to every endpoint (requests are balanced and fail over between
/// them). Does not wait for etcd to be up.
/// How to reach etcd: endpoints, and optionally TLS (a CA for the server's
/// certificate, a client certificate) and a user.
#[derive(Clone, Debug, Default)]
pub struct EtcdAccess {
    pub endpoints: Vec<String>,
    /// PEM of the CA that signed etcd's certificate.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key (PEM), for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// User and password, for etcd's auth (tokens refreshed on expiry).
    pub user: Option<(String, String)>,
}

impl EtcdAccess {
    /// Plain endpoints, no TLS, no user.
    #[must_use]
    pub fn plain(endpoints: &[String]) -> Self {
        Self {
            endpoints: endpoints.to_vec(),
            ..Self::default()
        }
    }

    fn secured(&self) -> bool {
        self.ca.is_some() || self.identity.is_some() || self.user.is_some()
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Connects. With TLS or a user, one request is made at once, so a wrong
/// CA, a missing client certificate or a bad password is a clear error at
/// start, not a retry loop later.
pub async fn connect(access: &EtcdAccess) -> Result<Client, StoreError> {
    let failed = |e: &dyn std::error::Error| StoreError::Connect {
        endpoints: access.endpoints.join(","),
        detail: chain(e),
    };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if access.ca.is_some() || access.identity.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &access.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &access.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    if let Some((user, password)) = &access.user {
        options = options
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    let client = tokio::time::timeout(
        Duration::from_secs(5),
        Client::connect(&access.endpoints, Some(options)),
    )
    .await
    .map_err(|e| failed(&e))?
    .map_err(|e| failed(&e))?;
    if access.secured() {
        let mut m = client.maintenance_client();
        tokio::time::timeout(Duration::from_secs(5), m.status())
            .await
            .map_err(|e| failed(&e))?
            .map_err(|e| failed(&e))?;
    }
    Ok(client)
}

/// The largest gRPC reply the agent reads (etcd-client's default is
/// 4 MiB, and a registry with more than that under the prefix, hostile or
/// not, would stop every sync): a page of [`PAGE`] values of etcd's default
/// largest request (1.5 MiB) fits.
pub const MAX_REPLY: usize = 256 << 20;
/// Keys per page when reading a prefix.
const PAGE: i64 = 128;

/// The key right after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Reads every key under `prefix` at one revision, [`PAGE`] keys a
/// request, each bounded by [`REQUEST_TIMEOUT`]. Returns the revision and
/// the keys.
pub async fn read_prefix(
    client: &Client,
    prefix: &str,
) -> Result<(i64, Vec<etcd_client::KeyValue>), StoreError> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_REPLY);
    let end = prefix_end(prefix);
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    let mut all = Vec::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision != 0 {
            options = options.with_revision(revision);
        }
        let page = timed(
            || format!("reading {prefix} (after {} keys)", all.len()),
            kv.get(from.clone(), Some(options)),
        )
        .await?;
        if revision == 0 {
            revision = page
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
        }
        let more = page.more();
        let mut page = page;
        let kvs = page.take_kvs();
        if let Some(last) = kvs.last() {
            from = last.key().to_vec();
            from.push(0);
        }
        let got = kvs.len();
        all.extend(kvs);
        if !more || got == 0 {
            return Ok((revision, all));
        }
    }
}

/// How often [`keep_endpoints`] asks each member for its status, and how
/// long it waits for an answer. Each agent costs each member one cheap
/// status request a second (1,000 agents: 1,000 a second per member, next
/// to their keepalives); a dead member is out of the balancer within 1-2 s,
/// inside the 3.5 s the default lease leaves (see `fence_margin`).
const ENDPOINT_CHECK: Duration = Duration::from_secs(1);

/// With several endpoints, keeps `client`'s balancer to the members that
/// answer. tonic's balancer goes on picking a member that died (each
/// request sent there fails with "connection refused" or times out), so
/// every [`ENDPOINT_CHECK`] each member is asked for its status on a
/// connection of its own; one that does not answer is taken out of the
/// balancer, and put back once it answers again. If none answers, all are
/// kept in. Runs until aborted.
pub async fn keep_endpoints(client: Client, access: EtcdAccess) {
    if access.endpoints.len() < 2 {
        return;
    }
    let mut probes: BTreeMap<String, Client> = BTreeMap::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(ENDPOINT_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checks = access.endpoints.iter().map(|endpoint| {
            let probe = probes.get(endpoint).cloned();
            let single = EtcdAccess {
                endpoints: vec![endpoint.clone()],
                ..access.clone()
            };
            async move {
                let answered = tokio::time::timeout(ENDPOINT_CHECK, async {
                    let probe = match probe {
                        Some(p) => p,
                        None => connect(&single).await.ok()?,
                    };
                    probe.maintenance_client().status().await.ok()?;
                    Some(probe)
                })
                .await
                .ok()
                .flatten();
                (endpoint.clone(), answered)
            }
        });
        let results = futures::future::join_all(checks).await;
        let alive: BTreeSet<String> = results
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(e, _)| e.clone())
            .collect();
        for (endpoint, probe) in results {
            match probe {
                Some(p) => {
                    probes.insert(endpoint, p);
                }
                None => {
                    probes.remove(&endpoint);
                }
            }
        }
        for endpoint in &access.endpoints {
            let answers = alive.contains(endpoint) || alive.is_empty();
            if answers && removed.remove(endpoint) {
                match client.add_endpoint(endpoint).await {
                    Ok(()) => info!(%endpoint, "etcd member answers again: back in the balancer"),
                    Err(e) => {
                        warn!(%endpoint, error = %e, "putting an etcd member back failed");
                        removed.insert(endpoint.clone());
                    }
                }
            } else if !answers && !removed.contains(endpoint) {
                match client.remove_endpoint(endpoint).await {
                    Ok(()) => {
                        warn!(%endpoint, "etcd member does not answer: out of the balancer");
                        removed.insert(endpoint.clone());
                    }
                    Err(e) => warn!(%endpoint, error = %e, "taking an etcd member out failed"),
                }
            }
        }
    }
}

/// Shared counters of the etcd side.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub snapshots: AtomicU64,
    pub watch_restarts: AtomicU64,
    pub revision: AtomicI64,
    pub registrations: AtomicU64,
}

/// Keeps `cache` in sync with etcd and publishes the view on `tx`: a
/// snapshot at revision R, then a watch from R+1; on compaction, a broken
/// stream, or every `resync`, a fresh snapshot. Runs until cancelled.
pub async fn sync_registry(
    client: Client,
    keys: Keys,
    cache: Arc<Mutex<RegistryCache>>,
    tx: watch::Sender<RegistryView>,
    resync: Duration,
    stats: Arc<StoreStats>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u64;
    loop {
        match sync_once(&client, &keys, &cache, &tx, resync, &stats).await {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                // Identical repeats are summarised by `logs`.
                warn!(error = %e, failures, "registry sync failed; retrying");
                stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn publish(cache: &Mutex<RegistryCache>, tx: &watch::Sender<RegistryView>) {
    let view = cache.lock().await.view(unix_now());
    tx.send_if_modified(|current| {
        if *current == view {
            false
        } else {
            *current = view;
            true
        }
    });
}

async fn sync_once(
    client: &Client,
    keys: &Keys,
    cache: &Mutex<RegistryCache>,
    tx: &watch::Sender<RegistryView>,
    resync: Duration,
    stats: &StoreStats,
) -> Result<(), StoreError> {
    let prefix = format!("{}/", keys.prefix());
    let (revision, snapshot) = read_prefix(client, &prefix).await?;
    stats.revision.store(revision, Ordering::Relaxed);
    {
        let mut c = cache.lock().await;
        let entries = snapshot.iter().filter_map(|kv| {
            Some(Entry {
                key: kv.key_str().ok()?,
                value: kv.value(),
                lease: kv.lease(),
                mod_revision: kv.mod_revision(),
            })
        });
        c.snapshot(entries, unix_now());
    }
    publish(cache, tx).await;
    // Counted once published: the mesh waits for it before its first
    // reconcile (an earlier one would see no segment and no peer).
    stats.snapshots.fetch_add(1, Ordering::Relaxed);
    debug!(revision, keys = snapshot.len(), "registry snapshot");
    drop(snapshot);

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
    let deadline = tokio::time::Instant::now() + resync;
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            () = tokio::time::sleep_until(deadline) => return Ok(()),
        };
        let response = match message {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(StoreError::Invalid("the watch stream ended".into()));
            }
            Err(source) => {
                return Err(StoreError::Etcd {
                    what: "reading the registry watch".into(),
                    source,
                });
            }
        };
        if response.canceled() || response.compact_revision() > 0 {
            return Err(StoreError::Invalid(format!(
                "the registry watch was cancelled (compacted at {}): re-reading",
                response.compact_revision()
            )));
        }
        if let Some(h) = response.header() {
            stats.revision.store(h.revision(), Ordering::Relaxed);
        }
        if response.events().is_empty() {
            continue;
        }
        let mut changed = false;
        {
            let mut c = cache.lock().await;
            let now = unix_now();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                changed |= match event.event_type() {
                    EventType::Put => c.put(
                        Entry {
                            key,
                            value: kv.value(),
                            lease: kv.lease(),
                            mod_revision: kv.mod_revision(),
                        },
                        now,
                    ),
                    EventType::Delete => c.delete(key),
                };
            }
        }
        if changed {
            publish(cache, tx).await;
        }
    }
}

/// This host's registration: a lease, the signed host record on it, kept
/// alive and re-signed before half the maximum record age.
pub struct Registration {
    pub client: Client,
    pub keys: Keys,
    pub secrets: Secrets,
    pub record: HostRecord,
    pub ttl: Duration,
    pub max_age: Duration,
    /// The current lease id (0 while there is none), for revocation on exit.
    pub lease: Arc<AtomicI64>,
    pub stats: Arc<StoreStats>,
}

impl Registration {
    /// Puts the signed record on `lease`; returns the put's revision.
    async fn register(&self, lease: i64) -> Result<i64, StoreError> {
        let key = self.keys.host(&self.record.hostname);
        let value = seal(&self.secrets, &key, lease, unix_now(), &self.record)?;
        let mut kv = self.client.kv_client();
        let response = timed(
            || format!("registering {key}"),
            kv.put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        self.stats.registrations.fetch_add(1, Ordering::Relaxed);
        Ok(response
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision))
    }

    /// Runs until cancelled: grant, register, keep alive; on a lost lease
    /// or a broken stream, start over.
    pub async fn run(self) {
        let mut failures = 0u64;
        loop {
            match self.session().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, failures, "registration failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn session(&self) -> Result<(), StoreError> {
        let ttl_secs = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let mut lease_client = self.client.lease_client();
        let mut lease = self.lease.load(Ordering::Relaxed);
        // Reuse a lease that is still alive (after a broken stream).
        if lease != 0 {
            let alive = timed(
                || "checking the lease".into(),
                lease_client.time_to_live(lease, None),
            )
            .await
            .is_ok_and(|r| r.ttl() > 0);
            if !alive {
                lease = 0;
            }
        }
        if lease == 0 {
            let granted = timed(
                || format!("granting a {ttl_secs} s lease"),
                lease_client.grant(ttl_secs, None),
            )
            .await?;
            lease = granted.id();
            self.lease.store(lease, Ordering::Relaxed);
            info!(
                lease = format!("{lease:x}"),
                ttl = ttl_secs,
                "lease granted"
            );
        }
        let mut written = self.register(lease).await?;
        info!(host = %self.record.hostname, address = %self.record.address, "registered");

        // Anyone else writing or deleting our key (a replay, a mistake) is
        // undone at once; peers keep the last verified record meanwhile.
        let key = self.keys.host(&self.record.hostname);
        let mut watch_client = self.client.watch_client();
        let mut own = timed(
            || format!("watching {key}"),
            watch_client.watch(
                key.clone(),
                Some(WatchOptions::new().with_start_revision(written + 1)),
            ),
        )
        .await?;

        let (mut keeper, mut responses) = timed(
            || "opening the lease keepalive stream".into(),
            lease_client.keep_alive(lease),
        )
        .await?;
        let mut keepalive = tokio::time::interval(self.ttl / 3);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Re-sign well before half the maximum age.
        let mut resign = tokio::time::interval(self.max_age / 4);
        resign.tick().await;
        loop {
            tokio::select! {
                _ = keepalive.tick() => {
                    timed(|| "sending a lease keepalive".into(), keeper.keep_alive()).await?;
                    let response = timed(|| "reading a lease keepalive".into(), responses.message()).await?;
                    match response {
                        Some(r) if r.ttl() > 0 => {}
                        _ => {
                            warn!(lease = format!("{lease:x}"), "lease expired; registering again");
                            self.lease.store(0, Ordering::Relaxed);
                            return Ok(());
                        }
                    }
                }
                _ = resign.tick() => written = self.register(lease).await?,
                message = own.message() => {
                    let response = message
                        .map_err(|source| StoreError::Etcd { what: format!("watching {key}"), source })?
                        .ok_or_else(|| StoreError::Invalid(format!("the watch on {key} ended")))?;
                    if response.canceled() {
                        return Err(StoreError::Invalid(format!("the watch on {key} was cancelled")));
                    }
                    let foreign = response.events().iter().any(|e| {
                        e.event_type() == EventType::Delete
                            || e.kv().is_some_and(|kv| kv.mod_revision() > written)
                    });
                    if foreign {
                        warn!(key = %key, "our registration was changed by someone else; writing it again");
                        written = self.register(lease).await?;
                    }
                }
            }
        }
    }
}

/// Revokes `lease` (on exit), so peers drop this host at once.
pub async fn revoke(client: &Client, lease: i64) -> Result<(), StoreError> {
    let mut lease_client = client.lease_client();
    timed(
        || format!("revoking lease {lease:x}"),
        lease_client.revoke(lease),
    )
    .await?;
    Ok(())
}

/// Segment administration (the `linkmesh segment` commands).
pub struct Segments {
    pub client: Client,
    pub keys: Keys,
    pub secrets: Secrets,
}

impl Segments {
    fn vni_key(&self, spec: &SegmentSpec) -> String {
        format!("{}/vnis/{}-{}", self.keys.prefix(), spec.vni, spec.port)
    }

    /// Adds a segment. Fails if the name exists, or if another segment uses
    /// the VNI (on the same port): both are checked in one transaction on an
    /// index key per VNI, so two admins cannot race.
    pub async fn add(&self, name: &str, spec: &SegmentSpec) -> Result<(), StoreError> {
        crate::registry::segment::validate_segment_name(name).map_err(StoreError::Invalid)?;
        spec.validate().map_err(StoreError::Invalid)?;
        let key = self.keys.segment(name);
        let vni_key = self.vni_key(spec);
        let value = seal(&self.secrets, &key, 0, unix_now(), spec)?;
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(vni_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key.clone(), value, None),
                TxnOp::put(vni_key.clone(), name, None),
            ])
            .or_else([
                TxnOp::get(key.clone(), None),
                TxnOp::get(vni_key.clone(), None),
            ]);
        let mut kv = self.client.kv_client();
        let response = timed(|| format!("adding segment {name}"), kv.txn(txn)).await?;
        if response.succeeded() {
            return Ok(());
        }
        let mut existing_name = false;
        let mut vni_owner = None;
        for op in response.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = op {
                for kv in g.kvs() {
                    if kv.key() == key.as_bytes() {
                        existing_name = true;
                    } else {
                        vni_owner = Some(String::from_utf8_lossy(kv.value()).into_owned());
                    }
                }
            }
        }
        if existing_name {
            return Err(StoreError::Conflict(format!(
                "segment {name} already exists (remove it first)"
            )));
        }
        Err(StoreError::Conflict(format!(
            "vni {} (port {}) is already used by segment {}",
            spec.vni,
            spec.port,
            vni_owner.unwrap_or_else(|| "?".into())
        )))
    }

    /// Removes a segment and its VNI index entry.
    pub async fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let key = self.keys.segment(name);
        let mut kv = self.client.kv_client();
        let current = timed(
            || format!("reading segment {name}"),
            kv.get(key.clone(), None),
        )
        .await?;
        let Some(existing) = current.kvs().first() else {
            return Ok(false);
        };
        let mut ops = vec![TxnOp::delete(key.clone(), None)];
        // The index key is found from the stored definition (unverified
        // content is fine here: it only names which index entry to drop).
        if let Some(spec) = stored_spec(existing.value()) {
            ops.push(TxnOp::delete(self.vni_key(&spec), None));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                existing.mod_revision(),
            )])
            .and_then(ops);
        let response = timed(|| format!("removing segment {name}"), kv.txn(txn)).await?;
        if !response.succeeded() {
            return Err(StoreError::Conflict(format!(
                "segment {name} changed while being removed; try again"
            )));
        }
        Ok(true)
    }

    /// Every segment, verified: `(name, spec)` or `(key, rejection)`.
    pub async fn list(&self) -> Result<Vec<(String, Result<SegmentSpec, String>)>, StoreError> {
        let mut kv = self.client.kv_client();
        let dir = self.keys.segments();
        let response = timed(
            || format!("listing {dir}"),
            kv.get(dir.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let now = unix_now();
        Ok(response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let name = self.keys.segment_of(&key).unwrap_or(&key).to_owned();
                let expect = crate::registry::Expect {
                    key: &key,
                    lease: kv.lease(),
                    now,
                    max_age: None,
                };
                let spec = crate::registry::open::<SegmentSpec>(&self.secrets, kv.value(), expect)
                    .map(|v| v.body)
                    .map_err(|r| r.to_string());
                (name, spec)
            })
            .collect())
    }
}

#[derive(serde::Deserialize)]
struct StoredEnvelope {
    body: SegmentSpec,
}

fn stored_spec(value: &[u8]) -> Option<SegmentSpec> {
    serde_json::from_slice::<StoredEnvelope>(value)
        .ok()
        .map(|e| e.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_step_moves_the_slewed_clock_by_500_ppm_at_most() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let start = 1_800_000_000.0;
        let mut c = SlewedClock::new(start, t0);
        // The wall clock runs normally: the clock follows it.
        assert!((c.read(start + 10.0, at(10)) - (start + 10.0)).abs() < 1e-6);
        // Two hours forward at t=20 s...
        let jumped = c.read(start + 20.0 + 7200.0, at(20));
        assert!((jumped - (start + 20.0)).abs() < 0.01, "{}", jumped - start);
        let later = c.read(start + 620.0 + 7200.0, at(620));
        let ahead = later - (start + 620.0);
        assert!(
            ahead > 0.0 && ahead <= 620.0 * SlewedClock::MAX_SLEW + 1e-6,
            "pulled forward by at most 0.31 s over 620 s: {ahead}"
        );
        // ...and an hour back: absorbed the same way; it never runs back.
        let back = c.read(start + 621.0 - 3600.0, at(621));
        assert!(back >= later, "monotonic: {back} < {later}");
        // Small, NTP-sized offsets are caught up with.
        let mut c = SlewedClock::new(start, t0);
        let v = c.read(start + 1000.2, at(1000));
        assert!((v - (start + 1000.2)).abs() < 1e-6, "{}", v - start);
    }

    #[test]
    fn a_prefix_ends_at_its_last_byte_plus_one() {
        assert_eq!(prefix_end("/linkmesh/"), b"/linkmesh0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn unix_now_is_close_to_the_wall_clock() {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        assert!(unix_now().abs_diff(wall) <= 1);
    }
}
