//! `linkmesh agent`, the composition root: builds each subsystem's
//! settings from the options, wires etcd, the registry, the mesh, peer
//! health, floating IPs and the API together, and stops them in order.
//! Nothing else wires subsystems.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{info, warn};

use crate::config::{AgentArgs, ConfigError};
use crate::etcd::lease::{self, LeaseInfo, LeaseSettings, LeaseStats};
use crate::etcd::registration::Registration;
use crate::etcd::sync::{self, SyncStats};
use crate::etcd::{self, Access};
use crate::kernel::Netlink;
use crate::kernel::events::KernelEvents;
use crate::mesh::desired::device_mac;
use crate::mesh::run::run as run_mesh;
use crate::mesh::{LocalConfig, Reconciler, Underlay};
use crate::registry::{HostRecord, Marks, RegistryCache, RegistryView};
use crate::vip::{FastFailover, FastSettings, LossPolicy};

/// The floating-IP subsystem's settings.
pub fn vip_settings(args: &AgentArgs, hostname: &str) -> Result<crate::vip::Settings, ConfigError> {
    let invalid = |e: crate::vip::UnknownChoice| ConfigError::Invalid(e.to_string());
    let loss_policy: LossPolicy = args.etcd_loss_policy.parse().map_err(invalid)?;
    let fast: FastFailover = args.fast_failover.parse().map_err(invalid)?;
    let run_as = crate::vip::script::lookup_user(&args.check_user).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "--check-user {}: no such user (check scripts run as it)",
            args.check_user
        ))
    })?;
    Ok(crate::vip::Settings {
        hostname: hostname.to_owned(),
        default_interface: args.vip_interface.clone(),
        ttl: Duration::from_secs(args.keepalive_interval),
        keepalive_retry: args.keepalive_retry,
        health_interval: Duration::from_secs_f64(args.health_check_interval),
        health_timeout: Duration::from_secs_f64(args.health_check_timeout),
        fail_count: args.fail_count_before_failover,
        scripts: crate::vip::script::ScriptPolicy {
            dir: Some(args.check_dir.clone()),
            run_as: Some(run_as),
        },
        garp_count: args.arp_gratuitous_count,
        garp_interval: Duration::from_secs_f64(args.arp_gratuitous_interval),
        garp_refresh: (args.garp_refresh > 0.0).then(|| Duration::from_secs_f64(args.garp_refresh)),
        loss_policy,
        contend_delay: Duration::from_millis(50),
        cooldown: Duration::from_secs(5),
        state_dir: Some(args.state_dir.clone()),
        resync: Duration::from_secs(args.resync_interval),
        fast: FastSettings {
            mode: fast,
            probe_interval: Duration::from_secs_f64(args.probe_interval),
            probe_misses: args.probe_misses,
            quorum: args.suspect_quorum,
        },
        notify: notify_settings(args, hostname, run_as)?,
        route_table: args.route_table,
    })
}

/// The first line of the file `option` names, trimmed: at least `min`
/// bytes (a password, a key).
fn first_line(option: &str, path: &std::path::Path, min: usize) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("reading {option} {}: {e}", path.display())))?;
    let line = text.lines().next().unwrap_or_default().trim().to_owned();
    if line.len() < min {
        return Err(ConfigError::Invalid(format!(
            "{option} {}: the first line must hold at least {min} byte(s)",
            path.display()
        )));
    }
    Ok(line)
}

/// The notify hooks' settings (reads the secret file).
fn notify_settings(
    args: &AgentArgs,
    hostname: &str,
    run_as: (u32, u32),
) -> Result<crate::vip::notify::NotifySettings, ConfigError> {
    let secret = match &args.notify_secret_file {
        Some(path) => Some(first_line("--notify-secret-file", path, 16)?.into_bytes()),
        None => None,
    };
    Ok(crate::vip::notify::NotifySettings {
        hooks: args.notify_hooks()?,
        secret,
        timeout: Duration::from_secs_f64(args.notify_timeout),
        scripts: crate::vip::script::ScriptPolicy {
            dir: Some(args.check_dir.clone()),
            run_as: Some(run_as),
        },
        hostname: hostname.to_owned(),
    })
}

/// The peer-health settings.
#[must_use]
pub fn peer_settings(args: &AgentArgs) -> crate::peers::PeerSettings {
    crate::peers::PeerSettings {
        port: args.heartbeat_port,
        interval: Duration::from_secs_f64(args.heartbeat_interval),
        resync: Duration::from_secs(args.resync_interval),
        fanout: crate::peers::fanout::Fanout {
            ring_per_side: args.heartbeat_fanout / 2,
            ..crate::peers::fanout::Fanout::default()
        },
    }
}

/// The API's settings (reads the password file, the certificate and key).
pub fn api_settings(args: &AgentArgs) -> Result<crate::api::ApiConfig, ConfigError> {
    let credentials = match (&args.api_user, &args.api_password_file) {
        (Some(user), Some(path)) => {
            Some((user.clone(), first_line("--api-password-file", path, 1)?))
        }
        _ => None,
    };
    let tls = match (&args.api_tls_cert, &args.api_tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::tls::server_config(cert, key)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?,
        ),
        _ => None,
    };
    if credentials.is_some()
        && tls.is_none()
        && !args.api_listen.ip().is_loopback()
        && !args.api_insecure
    {
        return Err(ConfigError::Invalid(format!(
            "basic auth over plain HTTP on {} would send the API password in clear: serve \
             HTTPS (--api-tls-cert, --api-tls-key), listen on loopback, or pass --api-insecure",
            args.api_listen
        )));
    }
    Ok(crate::api::ApiConfig {
        listen: args.api_listen,
        credentials,
        tls,
        hosts: args.api_host.clone(),
    })
}

/// The registration lease: `--ttl`, renewed every third of it.
fn registration_lease(args: &AgentArgs) -> LeaseSettings {
    LeaseSettings {
        purpose: "registration",
        ttl: args.ttl(),
        renew: args.ttl() / 3,
        attempt: etcd::REQUEST_TIMEOUT,
        // Back within 200 ms of etcd answering again.
        retry_cap: Duration::from_millis(200),
        margin: Duration::ZERO,
        file: None,
    }
}

/// Every check `--check-config` makes: the options, the secret, the files
/// the settings read.
pub fn check(args: &AgentArgs) -> anyhow::Result<()> {
    args.validate()?;
    args.etcd.secrets()?;
    if let Some(warning) = args.etcd.secret_warning() {
        eprintln!("warning: {warning}");
    }
    api_settings(args)?;
    vip_settings(args, "check")?;
    Access::from_args(&args.etcd)?;
    Ok(())
}

fn system_hostname() -> anyhow::Result<String> {
    let name =
        std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name")?;
    Ok(name.trim().to_owned())
}

/// This host's registration: its underlay address and, per joined segment,
/// its device MAC and its overlay addresses.
fn host_record(hostname: &str, underlay: &Underlay, local: &LocalConfig) -> HostRecord {
    HostRecord {
        hostname: hostname.to_owned(),
        address: underlay.address,
        segments: local
            .segments
            .iter()
            .map(|s| (s.clone(), device_mac(hostname, s)))
            .collect(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        heartbeat_nonce: None,
        overlay: local
            .overlay
            .iter()
            .map(|(segment, cidrs)| (segment.clone(), cidrs.iter().map(|c| c.addr)))
            .collect(),
    }
}

/// Where etcd's side of the agent stands.
struct Etcd {
    client: etcd_client::Client,
    keys: crate::registry::Keys,
    secrets: crate::registry::Secrets,
    cache: Arc<Mutex<RegistryCache>>,
    stats: Arc<SyncStats>,
    view: watch::Receiver<RegistryView>,
    vip_changes: mpsc::UnboundedReceiver<crate::registry::VipChange>,
    vip_records: watch::Receiver<std::collections::BTreeMap<String, crate::registry::ValidVip>>,
    /// The hosts file's counters (`--hosts-dir`).
    dns: Arc<crate::dns::DnsStats>,
    registration: watch::Receiver<LeaseInfo>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Connects, and starts the member checks, the registry sync, the
/// registration lease and the registration.
async fn start_etcd(args: &AgentArgs, record: HostRecord) -> anyhow::Result<Etcd> {
    let secrets = args.etcd.secrets()?;
    if let Some(warning) = args.etcd.secret_warning() {
        warn!("{warning}");
    }
    let keys = args.etcd.keys();
    let access = Access::from_args(&args.etcd)?;
    let client = etcd::connect(&access).await?;
    let mut tasks = vec![tokio::spawn(etcd::keep_endpoints(client.clone(), access))];
    let max_age = Duration::from_secs(args.max_record_age);
    // The definitions' generations seen by earlier runs: a replayed
    // definition is refused after a restart too.
    let marks_file = args.state_dir.join("generations");
    let cache = Arc::new(Mutex::new(
        RegistryCache::new(keys.clone(), secrets.clone(), max_age)
            .with_marks(Marks::load(&marks_file)),
    ));
    let stats = Arc::new(SyncStats::default());
    let (view_tx, view) = watch::channel(RegistryView::default());
    let (vips_tx, vip_changes) = mpsc::unbounded_channel();
    let (records_tx, vip_records) = watch::channel(std::collections::BTreeMap::new());
    let outputs = sync::Outputs {
        cache: cache.clone(),
        view: view_tx,
        vips: vips_tx,
        vip_records: records_tx,
        stats: stats.clone(),
        marks_file: Some(marks_file),
    };
    let resync = Duration::from_secs(args.resync_interval);
    tasks.push(tokio::spawn(sync::run(
        client.clone(),
        keys.clone(),
        outputs,
        resync,
    )));
    let (lease_tx, registration) = watch::channel(LeaseInfo::none());
    tasks.push(tokio::spawn(lease::keep(
        client.clone(),
        registration_lease(args),
        lease_tx,
        Arc::new(LeaseStats::default()),
    )));
    let register = Registration {
        client: client.clone(),
        keys: keys.clone(),
        secrets: secrets.clone(),
        record,
        max_age,
    };
    tasks.push(tokio::spawn(register.run(registration.clone())));
    Ok(Etcd {
        client,
        keys,
        secrets,
        cache,
        stats,
        view,
        vip_changes,
        vip_records,
        dns: Arc::default(),
        registration,
        tasks,
    })
}

/// With `--hosts-dir`, starts keeping the hosts file (stopped with the
/// etcd tasks; the file stays).
fn start_hosts_file(args: &AgentArgs, etcd: &mut Etcd) {
    let Some(dir) = &args.hosts_dir else { return };
    let settings = crate::dns::Settings {
        dir: dir.clone(),
        domain: args.dns_domain.clone(),
    };
    let inputs = crate::dns::Inputs {
        view: etcd.view.clone(),
        vips: etcd.vip_records.clone(),
        sync: etcd.stats.clone(),
    };
    etcd.tasks.push(tokio::spawn(crate::dns::run(
        settings,
        inputs,
        etcd.dns.clone(),
    )));
}

/// Starts the floating-IP subsystem and the API; send `true` on the
/// returned sender to stop both (the VIPs are handed over first).
async fn start_vips_and_api(
    etcd: &mut Etcd,
    vip_settings: crate::vip::Settings,
    api_config: crate::api::ApiConfig,
    peers: &Arc<crate::peers::PeerHealth>,
    nl: &Netlink,
    local: crate::api::LocalInfo,
) -> anyhow::Result<(watch::Sender<bool>, tokio::task::JoinHandle<()>)> {
    let hostname = vip_settings.hostname.clone();
    let (stop, stop_rx) = watch::channel(false);
    let status: crate::vip::StatusMap = Arc::default();
    let listener = crate::api::bind(&api_config).await?;
    let sources = crate::api::Sources {
        admin: crate::etcd::admin::Vips {
            client: etcd.client.clone(),
            keys: etcd.keys.clone(),
            secrets: etcd.secrets.clone(),
        },
        status: status.clone(),
        peers: peers.clone(),
        view: etcd.view.clone(),
        local,
        counters: crate::api::Counters {
            sync: etcd.stats.clone(),
            netlink: nl.clone(),
            cache: etcd.cache.clone(),
            dns: etcd.dns.clone(),
        },
    };
    let api_stop = stop_rx.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::api::serve(listener, api_config, sources, &hostname, api_stop).await
        {
            warn!(error = %e, "the API stopped");
        }
    });
    let vip_changes = std::mem::replace(&mut etcd.vip_changes, mpsc::unbounded_channel().1);
    let vips = tokio::spawn(crate::vip::run(
        vip_settings,
        crate::vip::Services {
            client: etcd.client.clone(),
            keys: etcd.keys.clone(),
            secrets: etcd.secrets.clone(),
            nl: nl.clone(),
            status,
            peers: peers.clone(),
            changes: vip_changes,
            view: etcd.view.clone(),
        },
        stop_rx,
    ));
    Ok((stop, vips))
}

/// Waits for the first registry snapshot; `false` if stopped first.
async fn first_snapshot(
    stats: &crate::etcd::sync::SyncStats,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        () = stats.first_snapshot() => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    args.validate()?;
    let hostname = match &args.hostname {
        Some(h) => h.clone(),
        None => system_hostname()?,
    };
    crate::registry::host::validate_hostname(&hostname)?;
    let vip_settings = vip_settings(&args, &hostname)?;
    let api_config = api_settings(&args)?;
    let nl = Netlink::connect()?;
    let underlay =
        crate::mesh::underlay::resolve(&nl, args.address, args.device.as_deref()).await?;
    let segments: BTreeSet<String> = args.segments.iter().cloned().collect();
    let local = LocalConfig {
        hostname: hostname.clone(),
        underlay: underlay.clone(),
        segments: segments.clone(),
        bridge: args.bridge.clone(),
        overlay: args.overlay()?,
    };
    let record = host_record(&hostname, &underlay, &local);
    // Peers would refuse it: say so now rather than register in vain.
    record
        .validate(&hostname)
        .context("this host's registration (--address, --device, --hostname)")?;
    let mut etcd = start_etcd(&args, record).await?;
    start_hosts_file(&args, &mut etcd);

    // Peer health.
    let peers = crate::peers::PeerHealth::new(peer_settings(&args));
    let heartbeats = tokio::spawn(crate::peers::run(
        peers.clone(),
        underlay.clone(),
        (hostname.clone(), etcd.secrets.clone()),
        etcd.view.clone(),
    ));

    // Floating IPs and the API; `stop` ends both.
    let (stop, vips) = start_vips_and_api(
        &mut etcd,
        vip_settings,
        api_config,
        &peers,
        &nl,
        crate::api::LocalInfo {
            hostname: hostname.clone(),
            address: underlay.address,
            device: underlay.ifname.clone(),
            segments: segments.iter().cloned().collect(),
        },
    )
    .await?;

    // The mesh, until a signal.
    let reconciler = Reconciler::new(nl.clone(), local);
    let mut events = KernelEvents::subscribe()?;
    let (signalled, mut mesh_stop) = watch::channel(false);
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        let _ = signalled.send(true);
    });
    // Reconcile only against a registry that was actually read: an empty
    // view before the first snapshot would remove every peer.
    info!(host = %hostname, segments = ?segments, "waiting for the first registry snapshot");
    if first_snapshot(&etcd.stats, &mut mesh_stop).await {
        let mut view = etcd.view.clone();
        let resync = Duration::from_secs(args.resync_interval);
        let views = Some(args.state_dir.clone());
        run_mesh(
            &reconciler,
            &mut view,
            &mut events,
            resync,
            &mut mesh_stop,
            views,
        )
        .await?;
    }

    info!("stopping");
    // Floating IPs first: unbind and hand them over before anything else.
    let _ = stop.send(true);
    if tokio::time::timeout(Duration::from_secs(5), vips)
        .await
        .is_err()
    {
        warn!("releasing floating IPs took over 5 s");
    }
    heartbeats.abort();
    for task in &etcd.tasks {
        task.abort();
    }
    let lease_id = etcd.registration.borrow().id;
    shutdown(
        &etcd.client,
        lease_id,
        args.cleanup_on_exit.then_some(&reconciler),
    )
    .await
}

/// Revokes the registration lease (peers drop this host at once) and, with
/// `--cleanup-on-exit`, removes the devices this agent owns.
async fn shutdown(
    client: &etcd_client::Client,
    lease_id: i64,
    cleanup: Option<&Reconciler>,
) -> anyhow::Result<()> {
    if lease_id != 0 {
        match lease::revoke(client, lease_id).await {
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
