//! `linkmesh agent`: register, sync the registry, reconcile the mesh.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use crate::config::AgentArgs;
use crate::kernel::Netlink;
use crate::kernel::events::{KernelEvent, KernelEvents};
use crate::mesh::desired::device_mac;
use crate::mesh::{LocalConfig, Reconciler, RegistryView, Underlay, desired};
use crate::registry::HostRecord;
use crate::registry::cache::RegistryCache;
use crate::store::{self, Registration, StoreStats};

/// Kernel events are gathered this long before one reconcile pass.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(50);

/// Finds the underlay: `--address`, else `--device`'s first global IPv4,
/// else the default route's device's. Says where it came from.
async fn resolve_underlay(
    nl: &Netlink,
    address: Option<IpAddr>,
    device: Option<&str>,
) -> anyhow::Result<Underlay> {
    let links = nl.links().await.context("listing links")?;
    let addrs = nl.addresses().await.context("listing addresses")?;
    let (address, ifindex, source) = if let Some(address) = address {
        let a = addrs
            .iter()
            .find(|a| a.addr == address)
            .with_context(|| format!("--address {address} is not configured on any interface"))?;
        if let Some(dev) = device
            && !links.iter().any(|l| l.name == dev && l.index == a.ifindex)
        {
            bail!("--address {address} is not on --device {dev}");
        }
        (address, a.ifindex, "--address")
    } else {
        let (ifindex, source) = if let Some(dev) = device {
            let link = links
                .iter()
                .find(|l| l.name == dev)
                .with_context(|| format!("--device {dev}: no such interface"))?;
            (link.index, "--device")
        } else {
            let index = nl
                .default_route_ifindex()
                .await
                .context("reading the default route")?
                .context("no --address or --device given and there is no default route")?;
            (index, "the default route's device")
        };
        let a = addrs
            .iter()
            .find(|a| a.ifindex == ifindex && a.global && a.addr.is_ipv4())
            .with_context(|| {
                format!("interface {ifindex} ({source}) has no global IPv4 address")
            })?;
        (a.addr, ifindex, source)
    };
    let link = links
        .iter()
        .find(|l| l.index == ifindex)
        .with_context(|| format!("interface {ifindex} disappeared"))?;
    let underlay = Underlay {
        address,
        ifindex,
        ifname: link.name.clone(),
        mtu: link.mtu.unwrap_or(1500),
    };
    info!(address = %underlay.address, device = %underlay.ifname, mtu = underlay.mtu, source, "underlay");
    Ok(underlay)
}

fn system_hostname() -> anyhow::Result<String> {
    let name =
        std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name")?;
    Ok(name.trim().to_owned())
}

/// This host's registration: its underlay address and, per joined segment,
/// its device MAC.
fn host_record(hostname: &str, underlay: &Underlay, segments: &BTreeSet<String>) -> HostRecord {
    HostRecord {
        hostname: hostname.to_owned(),
        address: underlay.address,
        segments: segments
            .iter()
            .map(|s| (s.clone(), device_mac(hostname, s)))
            .collect(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Starts the heartbeats and the peer table; returns the task and what the
/// API shows besides floating IPs.
fn start_peers(
    args: &AgentArgs,
    local: &LocalConfig,
    view: watch::Receiver<RegistryView>,
    counters: crate::api::Counters,
) -> (tokio::task::JoinHandle<()>, ApiInputs) {
    let peers = crate::peers::PeerHealth::new(args.peer_settings());
    let heartbeats = tokio::spawn(crate::peers::run(
        peers.clone(),
        local.underlay.clone(),
        local.hostname.clone(),
        view.clone(),
    ));
    let api = ApiInputs {
        peers,
        view,
        local: crate::api::LocalInfo {
            hostname: local.hostname.clone(),
            address: local.underlay.address,
            device: local.underlay.ifname.clone(),
            segments: local.segments.iter().cloned().collect(),
        },
        counters,
    };
    (heartbeats, api)
}

/// What the API shows besides floating IPs.
struct ApiInputs {
    peers: Arc<crate::peers::PeerHealth>,
    view: watch::Receiver<RegistryView>,
    local: crate::api::LocalInfo,
    counters: crate::api::Counters,
}

/// Starts the floating-IP manager and the API; send `true` to stop both
/// (the manager releases what it holds first).
async fn spawn_vips(
    args: &AgentArgs,
    hostname: &str,
    client: &etcd_client::Client,
    keys: &crate::registry::Keys,
    secrets: &crate::registry::Secrets,
    nl: &Netlink,
    api: ApiInputs,
) -> anyhow::Result<(watch::Sender<bool>, tokio::task::JoinHandle<()>)> {
    let ApiInputs {
        peers,
        view,
        local,
        counters,
    } = api;
    let status: crate::vip::manager::StatusMap = Arc::default();
    let (stop, stop_rx) = watch::channel(false);
    let api_config = args.api_config()?;
    let listener = crate::api::bind(&api_config).await?;
    let admin = crate::vip::admin::Vips {
        client: client.clone(),
        keys: keys.clone(),
        secrets: secrets.clone(),
    };
    let api_stop = stop_rx.clone();
    let api_status = status.clone();
    let api_host = hostname.to_owned();
    let api_peers = peers.clone();
    tokio::spawn(async move {
        let state = crate::api::Sources {
            admin,
            status: api_status,
            peers: api_peers,
            view,
            local,
            counters,
        };
        if let Err(e) = crate::api::serve(listener, api_config, state, &api_host, api_stop).await {
            warn!(error = %e, "the API stopped");
        }
    });
    let services = crate::vip::manager::Services {
        client: client.clone(),
        keys: keys.clone(),
        secrets: secrets.clone(),
        nl: nl.clone(),
        status,
        peers,
    };
    let task = tokio::spawn(crate::vip::manager::run(
        args.vip_settings(hostname),
        services,
        stop_rx,
    ));
    Ok((stop, task))
}

/// Whether a kernel event may concern the mesh's devices.
fn relevant(event: &KernelEvent, segments: &BTreeSet<String>) -> bool {
    match event {
        KernelEvent::LinkRemoved { .. } | KernelEvent::FdbRemoved { .. } => true,
        KernelEvent::LinkChanged { name, .. } => {
            name.as_ref().is_some_and(|n| segments.contains(n))
        }
        KernelEvent::AddressRemoved { .. } => false,
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    args.validate()?;
    let secrets = args.etcd.secrets()?;
    let keys = args.etcd.keys();
    let hostname = match &args.hostname {
        Some(h) => h.clone(),
        None => system_hostname()?,
    };
    crate::registry::host::validate_hostname(&hostname).map_err(anyhow::Error::msg)?;
    let nl = Netlink::connect()?;
    let underlay = resolve_underlay(&nl, args.address, args.device.as_deref()).await?;
    let segments: BTreeSet<String> = args.segments.iter().cloned().collect();
    let local = LocalConfig {
        hostname: hostname.clone(),
        underlay: underlay.clone(),
        segments: segments.clone(),
        bridge: args.bridge.clone(),
    };
    let record = host_record(&hostname, &underlay, &segments);
    let max_age = Duration::from_secs(args.max_record_age);

    let access = args.etcd.access()?;
    let client = store::connect(&access).await?;
    let members = tokio::spawn(store::keep_endpoints(client.clone(), access));
    let stats = Arc::new(StoreStats::default());
    let cache = Arc::new(Mutex::new(RegistryCache::new(
        keys.clone(),
        secrets.clone(),
        max_age,
    )));
    let (tx, mut rx) = watch::channel(RegistryView::default());
    let resync = Duration::from_secs(args.resync_interval);
    let sync = tokio::spawn(store::sync_registry(
        client.clone(),
        keys.clone(),
        cache.clone(),
        tx,
        resync,
        stats.clone(),
    ));
    let lease = Arc::new(AtomicI64::new(0));
    let registration = tokio::spawn(
        Registration {
            client: client.clone(),
            keys: keys.clone(),
            secrets: secrets.clone(),
            record,
            ttl: args.ttl(),
            max_age,
            lease: lease.clone(),
            stats: stats.clone(),
        }
        .run(),
    );

    let counters = crate::api::Counters {
        store: stats.clone(),
        netlink: nl.clone(),
        cache: cache.clone(),
    };
    let (heartbeats, api) = start_peers(&args, &local, rx.clone(), counters);
    let (vip_stop, vips) = spawn_vips(&args, &hostname, &client, &keys, &secrets, &nl, api).await?;

    let reconciler = Reconciler::new(nl.clone(), local.clone());
    let mut events = KernelEvents::subscribe()?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    // Reconcile only against a registry that was actually read: an empty
    // view before the first snapshot would remove every peer.
    info!(host = %hostname, segments = ?segments, "waiting for the first registry snapshot");
    let synced = loop {
        if stats.snapshots.load(Ordering::Relaxed) > 0 {
            break true;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = sigterm.recv() => break false,
            _ = sigint.recv() => break false,
        }
    };

    if synced {
        mesh_loop(
            &reconciler,
            &mut rx,
            &mut events,
            resync,
            &mut sigterm,
            &mut sigint,
        )
        .await?;
    }

    info!("stopping");
    // Floating IPs first: unbind and hand them over before anything else.
    let _ = vip_stop.send(true);
    if tokio::time::timeout(Duration::from_secs(5), vips)
        .await
        .is_err()
    {
        warn!("releasing floating IPs took over 5 s");
    }
    heartbeats.abort();
    registration.abort();
    sync.abort();
    members.abort();
    shutdown(&client, &lease, args.cleanup_on_exit.then_some(&reconciler)).await
}

/// Revokes the lease (peers drop this host at once) and, with
/// `--cleanup-on-exit`, removes the devices this agent owns.
async fn shutdown(
    client: &etcd_client::Client,
    lease: &AtomicI64,
    cleanup: Option<&Reconciler>,
) -> anyhow::Result<()> {
    let lease_id = lease.load(Ordering::Relaxed);
    if lease_id != 0 {
        match store::revoke(client, lease_id).await {
            Ok(()) => info!(lease = format!("{lease_id:x}"), "lease revoked"),
            Err(e) => {
                warn!(error = %e, "revoking the lease failed; peers drop this host when it expires");
            }
        }
    }
    if let Some(reconciler) = cleanup {
        let removed = reconciler
            .cleanup()
            .await
            .context("removing segment devices")?;
        info!(removed, "segment devices removed");
    }
    Ok(())
}

/// Reconciles on every registry change, relevant kernel event and resync
/// tick, until SIGTERM or SIGINT.
async fn mesh_loop(
    reconciler: &Reconciler,
    rx: &mut watch::Receiver<RegistryView>,
    events: &mut KernelEvents,
    resync: Duration,
    sigterm: &mut Signal,
    sigint: &mut Signal,
) -> anyhow::Result<()> {
    let segments = &reconciler.local().segments;
    let mut last_problems: Vec<String> = Vec::new();
    let mut passes = 0u64;
    let mut resync_tick = tokio::time::interval(resync);
    resync_tick.tick().await;
    loop {
        let view = rx.borrow_and_update().clone();
        let want = desired(reconciler.local(), &view);
        let started = std::time::Instant::now();
        match reconciler.reconcile(&want).await {
            Ok(report) => {
                let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                passes += 1;
                if report.applied > 0 || !report.errors.is_empty() || passes == 1 {
                    info!(
                        applied = report.applied,
                        failed = report.errors.len(),
                        netlink_writes = reconciler.netlink().writes(),
                        elapsed_us,
                        segments = want.segments.len(),
                        peers = want.segments.values().map(|s| s.peers.len()).sum::<usize>(),
                        "mesh reconciled"
                    );
                }
                if report.problems != last_problems {
                    for p in &report.problems {
                        warn!(problem = %p, "mesh configuration problem");
                    }
                    last_problems = report.problems;
                }
            }
            Err(e) => {
                warn!(error = %e, "reading kernel state failed; retrying at the next change or resync");
            }
        }
        // Registry changes are handled at once; kernel events (including
        // the echo of our own writes) are gathered for EVENT_DEBOUNCE first,
        // without holding up registry changes meanwhile.
        let mut kernel_due: Option<tokio::time::Instant> = None;
        let stop = loop {
            let due = kernel_due.unwrap_or_else(|| tokio::time::Instant::now() + resync);
            tokio::select! {
                r = rx.changed() => {
                    if r.is_err() {
                        bail!("the registry sync task stopped");
                    }
                    break false;
                }
                Some(event) = events.next() => {
                    if kernel_due.is_none() && relevant(&event, segments) {
                        kernel_due = Some(tokio::time::Instant::now() + EVENT_DEBOUNCE);
                    }
                }
                () = tokio::time::sleep_until(due), if kernel_due.is_some() => break false,
                _ = resync_tick.tick() => break false,
                _ = sigterm.recv() => break true,
                _ = sigint.recv() => break true,
            }
        };
        if stop {
            return Ok(());
        }
    }
}
