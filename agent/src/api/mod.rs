//! The HTTP API (LinK's paths): `GET/POST /ips` (`GET` in pages, see
//! `pages`), `GET/DELETE /ips/{id}`,
//! `POST /ips/{id}/failover`, `GET /healthz`; and `GET /status` (this host
//! on one page), `GET /hosts`, `GET /segments`, `GET /peers` (peer liveness
//! from the eBPF peer watcher). JSON in and out; optional
//! HTTP basic auth (everything but `/healthz`). Changes need credentials:
//! without them the API is read-only (see `guard`).

mod conns;
mod guard;
mod https;
pub mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use tracing::info;

use crate::etcd::EtcdError;
use crate::etcd::admin::{VipEntry, Vips};
use crate::peers::PeerHealth;
use crate::registry::{RegistryView, VipRecord};
use crate::vip::{LossPolicy, State, StatusMap};

#[derive(Clone)]
struct App {
    vips: Arc<Vips>,
    shared: StatusMap,
    peers: Arc<PeerHealth>,
    view: watch::Receiver<RegistryView>,
    local: Arc<LocalInfo>,
    counters: Arc<Counters>,
    hostname: Arc<str>,
    /// SHA-256 of `user:password`, compared in constant time.
    auth: Option<[u8; 32]>,
    /// HTTPS handshakes that failed or timed out.
    tls_failures: Arc<AtomicU64>,
    /// Names the Host header may carry besides addresses and `localhost`.
    hosts: Arc<[String]>,
    /// Requests refused by a guard (Host, read-only, media type).
    refusals: Arc<AtomicU64>,
    /// Connections: open, evicted, timed out.
    connections: Arc<conns::ConnStats>,
}

impl App {
    fn refused(&self) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
    }
}

/// The refusal of a path's floating-IP id unless it has the form
/// `Cidr::id` makes, so a decoded `%2F` or any other key part never
/// reaches etcd.
fn refuse_id(id: &str) -> Option<Response> {
    (!pages::valid_id(id)).then(|| {
        error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a floating IP id (the address with `_` for `/`)"),
        )
    })
}

/// A VIP as the API shows it: the record, its owner, this host's state.
#[derive(Serialize)]
struct IpView {
    id: String,
    address: Option<String>,
    owner: Option<String>,
    /// This host's state for the VIP (`null` if it has not seen it yet).
    state: Option<State>,
    /// Foreign claims seen by this host while it held the VIP.
    conflicts: u64,
    /// Stray holders this host saw answering while nobody owned the VIP.
    strays: u64,
    /// Whether fast failover protects the VIP (as this host sees it).
    fast_failover: bool,
    /// Whether this host suspects the owner right now.
    suspects_owner: bool,
    host: String,
    /// Every host's state, as the hosts last wrote it to etcd.
    states: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<VipRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn store_error(e: &EtcdError) -> Response {
    match e {
        EtcdError::Invalid(m) => error(StatusCode::BAD_REQUEST, m.to_string()),
        EtcdError::NotFound(m) => error(StatusCode::NOT_FOUND, m.clone()),
        EtcdError::Conflict(m) => error(StatusCode::CONFLICT, m.clone()),
        // The record could not be sealed (too large): the request's fault.
        EtcdError::Seal(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
        other => error(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

impl App {
    fn view(&self, entry: VipEntry) -> IpView {
        let status = self.shared.vips().get(&entry.id).cloned();
        let state = status.as_ref().map(|s| s.state);
        let conflicts = status.as_ref().map_or(0, |s| s.conflicts);
        let strays = status.as_ref().map_or(0, |s| s.strays);
        let fast_failover = status.as_ref().is_some_and(|s| s.fast_failover);
        let suspects_owner = status.as_ref().is_some_and(|s| s.suspects_owner);
        IpView {
            strays,
            fast_failover,
            suspects_owner,
            address: entry.record.as_ref().map(|r| r.address.clone()),
            id: entry.id,
            owner: entry.owner,
            state,
            conflicts,
            host: self.hostname.to_string(),
            states: entry.states,
            record: entry.record,
            error: entry.error,
        }
    }
}

async fn list(AxumState(app): AxumState<App>, RawQuery(query): RawQuery) -> Response {
    let q = match pages::ListQuery::parse(query.as_deref()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match app.vips.page(q.after.as_deref(), q.limit).await {
        Ok(page) => {
            let body: Vec<_> = page.entries.into_iter().map(|e| app.view(e)).collect();
            let mut response = Json(body).into_response();
            if let Some(link) = page.next.and_then(|next| {
                header::HeaderValue::from_str(&pages::next_link(&next, q.limit)).ok()
            }) {
                response.headers_mut().insert(header::LINK, link);
            }
            response
        }
        Err(e) => store_error(&e),
    }
}

async fn create(AxumState(app): AxumState<App>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = guard::refuse_write(&app, &headers) {
        return refused;
    }
    let vip = match VipRecord::parse_request(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid floating IP: {e}")),
    };
    match app.vips.add(&vip, false).await {
        Ok(id) => {
            info!(vip = %id, "floating IP added through the API");
            let entry = VipEntry {
                id,
                record: Some(vip.record),
                error: None,
                owner: None,
                states: std::collections::BTreeMap::new(),
            };
            (StatusCode::CREATED, Json(app.view(entry))).into_response()
        }
        Err(e) => store_error(&e),
    }
}

async fn show(AxumState(app): AxumState<App>, Path(id): Path<String>) -> Response {
    if let Some(refused) = refuse_id(&id) {
        return refused;
    }
    match app.vips.get(&id).await {
        Ok(Some(entry)) => Json(app.view(entry)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no floating IP {id}")),
        Err(e) => store_error(&e),
    }
}

async fn remove(
    AxumState(app): AxumState<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = guard::refuse_write(&app, &headers).or_else(|| refuse_id(&id)) {
        return refused;
    }
    match app.vips.remove(&id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no floating IP {id}")),
        Err(e) => store_error(&e),
    }
}

async fn failover(
    AxumState(app): AxumState<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = guard::refuse_write(&app, &headers).or_else(|| refuse_id(&id)) {
        return refused;
    }
    let entry = match app.vips.get(&id).await {
        Ok(Some(entry)) => entry,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no floating IP {id}")),
        Err(e) => return store_error(&e),
    };
    let mine = app
        .shared
        .vips()
        .get(&id)
        .is_some_and(|s| s.state == State::Activated);
    if !mine || entry.owner.as_deref() != Some(&*app.hostname) {
        let owner = entry.owner.clone();
        return (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!("{} does not own {id}; ask its owner", app.hostname),
                "id": id,
                "owner": owner,
                "state": app.shared.vips().get(&id).map(|s| s.state),
            })),
        )
            .into_response();
    }
    match app.vips.failover(&id).await {
        Ok(owner) => (
            StatusCode::ACCEPTED,
            Json(json!({ "id": id, "owner": owner, "state": State::Activated, "failover": "releasing" })),
        )
            .into_response(),
        Err(e) => store_error(&e),
    }
}

/// This host as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LocalInfo {
    pub hostname: String,
    /// Underlay address and device.
    pub address: std::net::IpAddr,
    pub device: String,
    /// Segments this host joins.
    pub segments: Vec<String>,
}

/// A registered host, as `GET /hosts` lists it.
#[derive(Serialize)]
struct HostView {
    hostname: String,
    address: std::net::IpAddr,
    segments: Vec<String>,
    agent_version: String,
    /// Its published overlay addresses, per segment.
    #[serde(skip_serializing_if = "crate::registry::host::Overlay::is_empty")]
    overlay: crate::registry::host::Overlay,
}

/// A segment, as `GET /segments` and `GET /status` list it.
#[derive(Serialize)]
struct SegmentView {
    name: String,
    vni: u32,
    port: u16,
    /// `head-end` or `none`.
    flood: String,
    /// Whether this host joins it.
    joined: bool,
    /// Registered hosts that join it.
    members: Vec<String>,
    /// Members other than this host: the FDB entries it should hold.
    peers: usize,
}

impl App {
    fn hosts(&self) -> Vec<HostView> {
        self.view
            .borrow()
            .hosts
            .values()
            .map(|h| HostView {
                hostname: h.hostname.clone(),
                address: h.address,
                segments: h.segments.keys().cloned().collect(),
                agent_version: h.agent_version.clone(),
                overlay: h.overlay.clone(),
            })
            .collect()
    }

    fn segments(&self) -> Vec<SegmentView> {
        let view = self.view.borrow();
        view.segments
            .iter()
            .map(|(name, spec)| {
                let members: Vec<String> = view
                    .hosts
                    .values()
                    .filter(|h| h.segments.contains_key(name))
                    .map(|h| h.hostname.clone())
                    .collect();
                let joined = self.local.segments.contains(name);
                let peers = members
                    .iter()
                    .filter(|m| **m != self.local.hostname)
                    .count();
                SegmentView {
                    name: name.clone(),
                    vni: spec.vni,
                    port: spec.port,
                    flood: spec.flood.to_string(),
                    joined,
                    members,
                    peers: if joined { peers } else { 0 },
                }
            })
            .collect()
    }
}

async fn hosts(AxumState(app): AxumState<App>) -> Response {
    Json(app.hosts()).into_response()
}

async fn segments(AxumState(app): AxumState<App>) -> Response {
    Json(app.segments()).into_response()
}

/// Everything `linkmesh status` shows, from this agent's own view.
async fn status(AxumState(app): AxumState<App>) -> Response {
    let failures = app.shared.lease_failures.load(Ordering::Relaxed);
    let vips: Vec<_> = app.shared.vips().into_values().collect();
    Json(json!({
        "host": &*app.local,
        "etcd": if failures > 0 { "unreachable" } else { "ok" },
        "failed_keepalives": failures,
        "segments": app.segments(),
        "vips": vips,
        "peers": app.peers.table(),
        "peer_watcher": app.peers.watching(),
    }))
    .into_response()
}

/// Prometheus text format.
async fn metrics(AxumState(app): AxumState<App>) -> Response {
    let (rejected, vip_records_rejected) = {
        let cache = app.counters.cache.lock().await;
        let by_reason = cache
            .rejections
            .counts()
            .iter()
            .map(|(reason, n)| ((*reason).to_owned(), *n))
            .collect();
        (by_reason, cache.rejections.vips())
    };
    let sync = &app.counters.sync;
    let dns = &app.counters.dns;
    let snapshot = crate::metrics::Snapshot {
        vips: app.shared.vips().into_values().collect(),
        segments: app
            .segments()
            .into_iter()
            .map(|s| (s.name, (s.joined, s.peers)))
            .collect(),
        peers: app.peers.table(),
        netlink_writes: app.counters.netlink.writes(),
        netlink_errors: app.counters.netlink.write_errors(),
        fdb_dumps: app.counters.netlink.fdb_dumps(),
        rejected,
        registry_watch_restarts: sync.watch_restarts.load(Ordering::Relaxed),
        registry_snapshots: sync.snapshots.load(Ordering::Relaxed),
        etcd_revision: sync.revision.load(Ordering::Relaxed),
        etcd_errors: app.shared.lease.errors.load(Ordering::Relaxed),
        lease_failures: app.shared.lease_failures.load(Ordering::Relaxed),
        ebpf_events: app.shared.ebpf_events.load(Ordering::Relaxed),
        ebpf_ring_drops: app.shared.ebpf_ring_drops.load(Ordering::Relaxed),
        api_tls_failures: app.tls_failures.load(Ordering::Relaxed),
        api_refusals: app.refusals.load(Ordering::Relaxed),
        api_connections: app.connections.open.load(Ordering::Relaxed) as u64,
        api_connections_evicted: app.connections.evicted.load(Ordering::Relaxed),
        api_connections_timed_out: app.connections.timed_out.load(Ordering::Relaxed),
        vip_foreign_addresses: app.shared.foreign_addresses.load(Ordering::Relaxed),
        vip_delivery_failures: app.shared.delivery_failures.load(Ordering::Relaxed),
        vip_port_mapped: app.shared.port_mapped.load(Ordering::Relaxed),
        vip_foreign_replies: app.shared.foreign_replies.load(Ordering::Relaxed),
        vip_notify: app.shared.notify.snapshot(),
        peer_heartbeats_rejected: app.peers.heartbeats_rejected(),
        peer_probes_rejected: app.peers.probes_rejected(),
        vip_records_rejected,
        dns_names: dns.names.load(Ordering::Relaxed),
        dns_left_out: dns.left_out.load(Ordering::Relaxed),
        dns_writes: dns.writes.load(Ordering::Relaxed),
        dns_write_failures: dns.write_failures.load(Ordering::Relaxed),
    };
    let body = crate::metrics::render(
        &snapshot,
        &crate::metrics::Histograms {
            keepalive_seconds: app.shared.lease.keepalive_seconds.as_ref(),
            health_check_seconds: &app.shared.health_check_seconds,
        },
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn peers(AxumState(app): AxumState<App>) -> Response {
    Json(json!({
        "host": &*app.hostname,
        "watching": app.peers.watching(),
        "heartbeat_interval_ms": app.peers.settings().interval.as_secs_f64() * 1000.0,
        "dead_after_ms": app.peers.settings().dead_after().as_secs_f64() * 1000.0,
        "peers": app.peers.table(),
    }))
    .into_response()
}

async fn healthz(AxumState(app): AxumState<App>) -> Response {
    let failures = app.shared.lease_failures.load(Ordering::Relaxed);
    let policy = app
        .shared
        .loss_policy
        .get()
        .copied()
        .unwrap_or(LossPolicy::Release);
    let degraded = failures > 0;
    let body = json!({
        "status": if degraded { "degraded" } else { "ok" },
        "host": &*app.hostname,
        "etcd": if degraded { "unreachable" } else { "ok" },
        "failed_keepalives": failures,
        "etcd_loss_policy": policy,
        "vips_held": app.shared.vips().values().filter(|s| s.state == State::Activated).count(),
    });
    let status = if degraded {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// API settings.
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Basic-auth user and password; `None` leaves the API open.
    pub credentials: Option<(String, String)>,
    /// Serve HTTPS with this configuration; `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Host names requests may carry besides addresses and `localhost`.
    pub hosts: Vec<String>,
}

/// Binds the API's socket (so a taken port fails the agent's start).
pub async fn bind(config: &ApiConfig) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {} (--api-listen)", config.listen))
}

/// What the API reads from.
pub struct Sources {
    pub admin: Vips,
    pub status: StatusMap,
    pub peers: Arc<PeerHealth>,
    pub view: watch::Receiver<RegistryView>,
    pub local: LocalInfo,
    pub counters: Counters,
}

/// The mesh's counters, for `GET /metrics`.
pub struct Counters {
    pub sync: Arc<crate::etcd::sync::SyncStats>,
    pub netlink: crate::kernel::Netlink,
    pub cache: Arc<tokio::sync::Mutex<crate::registry::RegistryCache>>,
    /// The hosts file's (zeros without `--hosts-dir`).
    pub dns: Arc<crate::dns::DnsStats>,
}

/// Serves on `listener` until `stop` turns true, within the connection
/// limits of [`conns`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ApiConfig,
    sources: Sources,
    hostname: &str,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let connections = conns::Conns::new(conns::Limits::for_process());
    let app = App {
        vips: Arc::new(sources.admin),
        shared: sources.status,
        peers: sources.peers,
        view: sources.view,
        local: Arc::new(sources.local),
        counters: Arc::new(sources.counters),
        hostname: Arc::from(hostname),
        auth: config
            .credentials
            .as_ref()
            .map(|(u, p)| guard::digest(u, p)),
        tls_failures: Arc::new(AtomicU64::new(0)),
        hosts: config.hosts.clone().into(),
        refusals: Arc::new(AtomicU64::new(0)),
        connections: Arc::clone(&connections.stats),
    };
    let tls_failures = Arc::clone(&app.tls_failures);
    let protected = Router::new()
        .route("/ips", get(list).post(create))
        .route("/ips/{id}", get(show).delete(remove))
        .route("/ips/{id}/failover", post(failover))
        .route("/peers", get(peers))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/hosts", get(hosts))
        .route("/segments", get(segments))
        .route_layer(middleware::from_fn_with_state(app.clone(), guard::auth));
    let router = Router::new()
        .route("/healthz", get(healthz))
        .merge(protected)
        .layer(middleware::from_fn_with_state(app.clone(), guard::host))
        .layer(middleware::from_fn(in_flight))
        .with_state(app);
    info!(
        listen = %config.listen,
        auth = config.credentials.is_some(),
        writes = config.credentials.is_some(),
        https = config.tls.is_some(),
        max_connections = connections.limits().max,
        "API listening"
    );
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let reaper = tokio::spawn(connections.clone().reaper());
    let guarded = conns::Guarded {
        tcp: listener,
        conns: connections,
    };
    let service = router.into_make_service_with_connect_info::<conns::Peer>();
    let served = match config.tls {
        Some(tls) => {
            let listener = https::TlsListener::new(guarded, tls, tls_failures);
            axum::serve(listener, service)
                .with_graceful_shutdown(stopped)
                .await
        }
        None => {
            axum::serve(guarded, service)
                .with_graceful_shutdown(stopped)
                .await
        }
    };
    reaper.abort();
    served.context("serving the API")
}

/// Marks the connection busy while a request is served (its headers are
/// in: the request timeout no longer applies), idle again after.
async fn in_flight(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<conns::Peer>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let _busy = peer.conn.busy();
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_too_large_to_seal_is_the_request_s_fault() {
        let e = EtcdError::Seal(crate::registry::record::SealError::TooLarge {
            kind: "vip",
            key: "/linkmesh/vips/x".into(),
            len: 70_000,
        });
        assert_eq!(store_error(&e).status(), StatusCode::BAD_REQUEST);
    }
}
