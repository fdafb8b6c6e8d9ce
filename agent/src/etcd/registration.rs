//! This host's registration: the signed host record on the registration
//! lease (kept by [`super::lease::keep`]), written again on every new
//! lease, re-signed before half the maximum record age, and put back at
//! once when anyone else changes or deletes it.

use std::time::Duration;

use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use tokio::sync::watch;
use tracing::{info, warn};

use super::lease::LeaseInfo;
use super::{EtcdError, timed};
use crate::clock::unix_now;
use crate::registry::{HostRecord, Keys, Secrets, seal};

pub struct Registration {
    pub client: Client,
    pub keys: Keys,
    pub secrets: Secrets,
    pub record: HostRecord,
    pub max_age: Duration,
}

impl Registration {
    /// Puts the signed record on `lease`; returns the put's revision.
    async fn register(&self, record: &HostRecord, lease: i64) -> Result<i64, EtcdError> {
        let key = self.keys.host(&record.hostname);
        let value = seal(&self.secrets, &key, lease, unix_now(), record)?;
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
        Ok(response
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision))
    }

    /// Runs until cancelled: on every lease `leases` publishes, register
    /// and guard the record; on a failure, start over.
    pub async fn run(self, mut leases: watch::Receiver<LeaseInfo>) {
        loop {
            let lease = leases.borrow_and_update().id;
            if lease == 0 {
                if leases.changed().await.is_err() {
                    return;
                }
                continue;
            }
            match self.session(lease, &mut leases).await {
                Ok(()) => {}
                Err(e) => {
                    warn!(error = %e, "registration failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Registers on `lease` and keeps the record there until the lease
    /// changes (`Ok`) or etcd fails (`Err`).
    async fn session(
        &self,
        lease: i64,
        leases: &mut watch::Receiver<LeaseInfo>,
    ) -> Result<(), EtcdError> {
        // A fresh heartbeat nonce on every lease rotates the heartbeat
        // token. (Not at every re-sign: a changed record is a registry
        // change on every peer, and re-signs are routine.)
        let record = HostRecord {
            heartbeat_nonce: Some(crate::random::u64()),
            ..self.record.clone()
        };
        let mut written = self.register(&record, lease).await?;
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
        // Re-sign well before half the maximum age.
        let mut resign = tokio::time::interval(self.max_age / 4);
        resign.tick().await;
        loop {
            tokio::select! {
                changed = leases.changed() => {
                    if changed.is_err() || leases.borrow().id != lease {
                        if leases.borrow().id == 0 {
                            warn!(lease = format!("{lease:x}"), "lease expired; registering again");
                        }
                        return Ok(());
                    }
                }
                _ = resign.tick() => written = self.register(&record, lease).await?,
                message = own.message() => {
                    let response = message
                        .map_err(|source| EtcdError::Etcd { what: format!("watching {key}"), source })?
                        .ok_or_else(|| EtcdError::Stream(format!("the watch on {key} ended")))?;
                    if response.canceled() {
                        return Err(EtcdError::Stream(format!("the watch on {key} was cancelled")));
                    }
                    let foreign = response.events().iter().any(|e| {
                        e.event_type() == EventType::Delete
                            || e.kv().is_some_and(|kv| kv.mod_revision() > written)
                    });
                    if foreign {
                        warn!(key = %key, "our registration was changed by someone else; writing it again");
                        written = self.register(&record, lease).await?;
                    }
                }
            }
        }
    }
}
