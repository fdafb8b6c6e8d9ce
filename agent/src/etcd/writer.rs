//! This host's own keys under each VIP (`state/<host>`, `suspect/<host>`),
//! written in order by one task. A write that fails is kept and retried
//! (200 ms, doubling to 2 s) until it succeeds or a newer write of the same
//! key replaces it: a lost suspect key would stall a quorum, a lost state
//! key would show a stale state. A put on a lease etcd no longer has is
//! dropped (a newer write on the new lease follows).

use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// One ordered write of the state writer.
pub enum Write {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
        /// Not worth writing after this (a suspicion is an observation of
        /// now: written late, it could revoke an owner that came back).
        stale_after: Option<std::time::Instant>,
    },
    Delete {
        key: String,
    },
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
pub async fn run(client: Client, mut rx: mpsc::UnboundedReceiver<Write>) {
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
