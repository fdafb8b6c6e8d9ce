//! A DNS view of the registry for dnsmasq: with `--hosts-dir DIR`, the
//! agent keeps `DIR/<domain>.hosts` (a hosts file) naming every verified
//! host `<host>.<domain>` and every floating IP that has a name, for
//! dnsmasq's `--hostsdir=DIR`, which reads a changed file without a
//! restart and drops the names it no longer holds.
//!
//! [`render`] decides the text (pure); [`write`] replaces the file
//! atomically; [`run`] follows the registry and writes, at most once per
//! [`COALESCE`], only when the text changed. A name that is not a DNS
//! label is left out, logged once and counted. The file stays when the
//! agent stops, so a restart does not blank the names; it is rewritten
//! after the next start's first registry snapshot.

pub mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::etcd::sync::SyncStats;
use crate::registry::{RegistryView, ValidVip};

/// Two writes are at least this far apart: under churn the file follows
/// the registry with at most this lag, rewritten at most 5 times a second.
pub const COALESCE: Duration = Duration::from_millis(200);
/// A failed write is tried again after this long, changes or not.
const RETRY: Duration = Duration::from_secs(1);

/// Where the file goes.
#[derive(Clone, Debug)]
pub struct Settings {
    pub dir: PathBuf,
    /// The hosts' domain, a valid DNS name (`--dns-domain`).
    pub domain: String,
}

impl Settings {
    /// The file's name in the directory.
    #[must_use]
    pub fn file_name(&self) -> String {
        format!("{}.hosts", self.domain)
    }
}

/// What `GET /metrics` reports about the file.
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Names in the file now.
    pub names: AtomicU64,
    /// Hosts and floating IPs whose names are left out now.
    pub left_out: AtomicU64,
    pub writes: AtomicU64,
    pub write_failures: AtomicU64,
}

/// The registry as the file needs it.
pub struct Inputs {
    pub view: watch::Receiver<RegistryView>,
    pub vips: watch::Receiver<BTreeMap<String, ValidVip>>,
    /// Nothing is written before the first snapshot: an empty registry
    /// would blank the file.
    pub sync: Arc<SyncStats>,
}

/// What [`run`] carries between writes.
struct State {
    settings: Settings,
    /// The text the file holds (as far as this run knows).
    written: Option<String>,
    /// The entries left out at the last render.
    left_out: BTreeSet<String>,
    stats: Arc<DnsStats>,
}

impl State {
    /// Renders, and writes when the text changed; returns whether the file
    /// now holds it.
    async fn render_and_write(&mut self, inputs: &Inputs) -> bool {
        let rendered = {
            let view = inputs.view.borrow();
            let vips = inputs.vips.borrow();
            render::render(&view.hosts, &vips, &self.settings.domain)
        };
        self.note_left_out(&rendered.left_out);
        self.stats
            .names
            .store(rendered.names as u64, Ordering::Relaxed);
        if self.written.as_deref() == Some(rendered.text.as_str()) {
            return true;
        }
        let (dir, name, text) = (
            self.settings.dir.clone(),
            self.settings.file_name(),
            rendered.text,
        );
        let (result, text) = match tokio::task::spawn_blocking(move || {
            let r = crate::files::replace(&dir, &name, &text);
            (r, text)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "the hosts file's writer did not finish");
                return false;
            }
        };
        match result {
            Ok(()) => {
                self.stats.writes.fetch_add(1, Ordering::Relaxed);
                debug!(
                    names = rendered.names,
                    bytes = text.len(),
                    "hosts file written"
                );
                self.written = Some(text);
                true
            }
            Err(e) => {
                let failures = self.stats.write_failures.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(error = %e, failures, "writing the hosts file failed; trying again");
                false
            }
        }
    }

    /// Logs each entry newly left out once (not at every render), and
    /// counts those left out now.
    fn note_left_out(&mut self, now: &[render::LeftOut]) {
        let mut current = BTreeSet::new();
        for l in now {
            if !self.left_out.contains(&l.what) {
                warn!(entry = %l.what, why = l.why, "left out of the hosts file");
            }
            current.insert(l.what.clone());
        }
        for gone in self.left_out.difference(&current) {
            info!(entry = %gone, "no longer left out of the hosts file");
        }
        self.stats
            .left_out
            .store(current.len() as u64, Ordering::Relaxed);
        self.left_out = current;
    }
}

/// Keeps the file until the task is aborted.
pub async fn run(settings: Settings, mut inputs: Inputs, counters: Arc<DnsStats>) {
    inputs.sync.first_snapshot().await;
    let (file, _) = crate::files::paths(&settings.dir, &settings.file_name());
    info!(file = %file.display(), domain = %settings.domain, "keeping the hosts file");
    let written = std::fs::read_to_string(&file).ok();
    let mut state = State {
        settings,
        written,
        left_out: BTreeSet::new(),
        stats: counters,
    };
    inputs.view.mark_unchanged();
    inputs.vips.mark_unchanged();
    let mut last = Instant::now();
    let mut ok = state.render_and_write(&inputs).await;
    loop {
        // Wait for a change (or, after a failure, the retry).
        let changed = async {
            tokio::select! {
                r = inputs.view.changed() => r.is_ok(),
                r = inputs.vips.changed() => r.is_ok(),
            }
        };
        if ok {
            if !changed.await {
                return;
            }
        } else if let Ok(false) = tokio::time::timeout(RETRY, changed).await {
            return;
        }
        // Coalesce: whatever else changes meanwhile goes in the same write.
        tokio::time::sleep_until(last + COALESCE).await;
        inputs.view.mark_unchanged();
        inputs.vips.mark_unchanged();
        last = Instant::now();
        ok = state.render_and_write(&inputs).await;
    }
}
