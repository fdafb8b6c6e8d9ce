//! The lease keeper: grants a lease (or, after a restart, re-attaches to
//! the one recorded in a file), keeps it alive, and publishes it with the
//! time until which it is certainly alive. Host registration and floating-IP
//! ownership each run one, with their own TTL.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, LeaseClient};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::watch;
use tracing::{info, warn};

/// A lease as the keeper last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// 0 while there is none.
    pub id: i64,
    /// Until when the lease is certainly alive: the send time of the last
    /// acknowledged keepalive + TTL - margin.
    pub deadline: Instant,
    /// Consecutive failed attempts (0: etcd answers).
    pub failures: u32,
}

impl LeaseInfo {
    #[must_use]
    pub fn none() -> Self {
        Self {
            id: 0,
            deadline: Instant::now(),
            failures: 0,
        }
    }
}

/// One lease's settings.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// What the lease is for, in log lines (`registration`, `ownership`).
    pub purpose: &'static str,
    pub ttl: Duration,
    /// Time between keepalives.
    pub renew: Duration,
    /// How long one request may take.
    pub attempt: Duration,
    /// A failed attempt is retried after 100 ms, doubling up to this.
    pub retry_cap: Duration,
    /// Subtracted from the TTL for the deadline.
    pub margin: Duration,
    /// Where the lease id is kept, so a restart within the TTL keeps it.
    pub file: Option<PathBuf>,
}

/// What the keeper counts (for the metrics).
#[derive(Debug, Default)]
pub struct LeaseStats {
    /// Failed grants and keepalives.
    pub errors: AtomicU64,
    /// Round trip of acknowledged keepalives (when set).
    pub keepalive_seconds: Option<Histogram>,
}

/// 100 ms after the first failure, doubling, at most `cap`.
#[must_use]
pub fn retry_pause(failures: u32, cap: Duration) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(failures.saturating_sub(1).min(8))).min(cap)
}

/// Keeps a lease until aborted, publishing it on `tx`.
pub async fn keep(
    client: Client,
    s: LeaseSettings,
    tx: watch::Sender<LeaseInfo>,
    stats: Arc<LeaseStats>,
) {
    let ttl_secs = i64::try_from(s.ttl.as_secs()).unwrap_or(2).max(2);
    let mut leases = client.lease_client();
    let mut failures = 0u32;
    let mut id = s
        .file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| t.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let failed = |failures: &mut u32, tx: &watch::Sender<LeaseInfo>| {
        *failures += 1;
        stats.errors.fetch_add(1, Ordering::Relaxed);
        let n = *failures;
        tx.send_modify(|l| l.failures = n);
        retry_pause(n, s.retry_cap)
    };
    let alive = |sent: Instant, id: i64| LeaseInfo {
        id,
        deadline: sent + s.ttl.saturating_sub(s.margin),
        failures: 0,
    };
    loop {
        if id != 0 {
            id = reattach(&mut leases, id, &s).await;
        }
        if id == 0 {
            let sent = Instant::now();
            if let Ok(Ok(r)) = tokio::time::timeout(s.attempt, leases.grant(ttl_secs, None)).await {
                id = r.id();
                failures = 0;
                info!(
                    lease = format!("{id:x}"),
                    ttl = ttl_secs,
                    "{} lease granted",
                    s.purpose
                );
                save(&s, id);
                tx.send_replace(alive(sent, id));
            } else {
                warn!("granting the {} lease failed", s.purpose);
                tokio::time::sleep(failed(&mut failures, &tx)).await;
                continue;
            }
        }
        let Ok(Ok((mut keeper, mut stream))) =
            tokio::time::timeout(s.attempt, leases.keep_alive(id)).await
        else {
            tokio::time::sleep(failed(&mut failures, &tx)).await;
            continue;
        };
        let mut tick = tokio::time::interval(s.renew);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let sent = Instant::now();
            let answer = tokio::time::timeout(s.attempt, async {
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match answer {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    if let Some(h) = &stats.keepalive_seconds {
                        h.observe(sent.elapsed().as_secs_f64());
                    }
                    failures = 0;
                    tx.send_replace(alive(sent, id));
                }
                Ok(Ok(Some(_))) => {
                    warn!(lease = format!("{id:x}"), "{} lease expired", s.purpose);
                    id = 0;
                    break;
                }
                _ => {
                    let pause = failed(&mut failures, &tx);
                    warn!(failures, "{} lease keepalive failed", s.purpose);
                    tokio::time::sleep(pause).await;
                    break;
                }
            }
        }
    }
}

/// Keeps the lease id in the settings' file, for a restart within the TTL.
fn save(s: &LeaseSettings, id: i64) {
    if let Some(f) = &s.file {
        let _ = std::fs::create_dir_all(f.parent().unwrap_or(std::path::Path::new("/")));
        let _ = std::fs::write(f, id.to_string());
    }
}

/// Forgets the lease recorded in the settings' file (on a clean exit).
pub fn forget(s: &LeaseSettings) {
    if let Some(f) = &s.file {
        let _ = std::fs::remove_file(f);
    }
}

/// The lease `id` if etcd still has it (or cannot say), else 0.
async fn reattach(leases: &mut LeaseClient, id: i64, s: &LeaseSettings) -> i64 {
    match tokio::time::timeout(s.attempt, leases.time_to_live(id, None)).await {
        Ok(Ok(r)) if r.ttl() > 0 => {
            info!(
                lease = format!("{id:x}"),
                "re-attached to the {} lease", s.purpose
            );
            id
        }
        Ok(Ok(_)) => 0,
        _ => id,
    }
}

/// Revokes `lease` (on exit), so it and its keys go at once.
pub async fn revoke(client: &Client, lease: i64) -> Result<(), super::EtcdError> {
    let mut leases = client.lease_client();
    super::timed(|| format!("revoking lease {lease:x}"), leases.revoke(lease)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_at_100_ms_and_double_up_to_the_cap() {
        let cap = Duration::from_millis(666);
        let pauses: Vec<u128> = (1..=5).map(|f| retry_pause(f, cap).as_millis()).collect();
        assert_eq!(pauses, vec![100, 200, 400, 666, 666]);
        assert_eq!(retry_pause(u32::MAX, cap), cap);
    }
}
