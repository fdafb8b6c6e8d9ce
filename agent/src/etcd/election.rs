//! Floating-IP ownership in etcd: the owner key `<prefix>/vips/<ID>/owner`
//! (a signed [`OwnerRecord`]) is created by a transaction that only
//! succeeds when nobody has it,
//! deleted only under the lease it is on, and revoked with that lease when
//! a quorum of standbys suspects its holder.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};
use tracing::{debug, warn};

use crate::addr::MacAddr;
use crate::clock::unix_now;
use crate::registry::{Keys, OwnerRecord, Secrets, open_owner, seal};

/// How a contention went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contention {
    Won,
    /// The key is `host`'s on `lease` already (a fenced owner whose lease
    /// outlived the fence).
    StillOurs,
    Lost,
    /// etcd did not answer in time, or refused (logged here).
    Failed,
}

/// Whether the failed branch of a contention shows the owner key held by
/// `host` on `lease`, signed.
fn holds_key(r: &TxnResponse, secrets: &Secrets, key: &str, host: &str, lease: i64) -> bool {
    r.op_responses().iter().any(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().is_some_and(|kv| {
            kv.lease() == lease
                && open_owner(secrets, key, kv.value(), kv.lease(), unix_now())
                    .is_ok_and(|o| o.host == host)
        }),
        _ => false,
    })
}

/// Creates `id`'s owner key for `host` on `lease` (signed, with the MAC
/// `host` answers for the VIP from) if nobody has it.
pub async fn contend(
    client: &Client,
    (keys, secrets): (&Keys, &Secrets),
    id: &str,
    (host, mac): (&str, Option<MacAddr>),
    lease: i64,
    timeout: Duration,
) -> Contention {
    let key = keys.vip_owner(id);
    let record = OwnerRecord {
        host: host.to_owned(),
        mac,
    };
    let value = match seal(secrets, &key, lease, unix_now(), &record) {
        Ok(value) => value,
        Err(e) => {
            warn!(vip = %id, error = %e, "signing the owner key failed");
            return Contention::Failed;
        }
    };
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key.clone(), None)]);
    let mut kv = client.kv_client();
    let started = std::time::Instant::now();
    match tokio::time::timeout(timeout, kv.txn(txn)).await {
        Ok(Ok(r)) if r.succeeded() => {
            debug!(vip = %id, txn_us = started.elapsed().as_micros(), "owner key created");
            Contention::Won
        }
        Ok(Ok(r)) if lease != 0 && holds_key(&r, secrets, &key, host, lease) => {
            Contention::StillOurs
        }
        Ok(Ok(_)) => Contention::Lost,
        Ok(Err(e)) => {
            warn!(vip = %id, error = %e, "contending failed");
            Contention::Failed
        }
        Err(_) => {
            warn!(vip = %id, "contending timed out");
            Contention::Failed
        }
    }
}

/// An owner key rewritten for the successor a releasing owner names: the
/// signed value and the successor's lease, which it goes on.
pub struct Handover {
    pub host: String,
    pub value: Vec<u8>,
    pub lease: i64,
}

/// Replaces `id`'s owner key with `value` on `new_lease` (and deletes any
/// failover request), only if the key is on `lease`: whether it was.
async fn replace(
    client: &Client,
    keys: &Keys,
    id: &str,
    lease: i64,
    (value, new_lease): (Vec<u8>, i64),
    timeout: Duration,
) -> Result<bool, String> {
    let key = keys.vip_owner(id);
    let txn = Txn::new()
        .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
        .and_then([
            TxnOp::put(key, value, Some(PutOptions::new().with_lease(new_lease))),
            TxnOp::delete(keys.vip_failover(id), None),
        ]);
    let mut kv = client.kv_client();
    match tokio::time::timeout(timeout, kv.txn(txn)).await {
        Ok(Ok(r)) => Ok(r.succeeded()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Puts our own key back with `value` (the MAC we answer from), if it is
/// still on `lease`.
pub async fn publish(
    client: &Client,
    keys: &Keys,
    id: &str,
    lease: i64,
    value: Vec<u8>,
    timeout: Duration,
) {
    match replace(client, keys, id, lease, (value, lease), timeout).await {
        Ok(true) => debug!(vip = %id, "published our MAC in the owner key"),
        Ok(false) => debug!(vip = %id, "the owner key moved on before our MAC went in"),
        Err(e) => warn!(vip = %id, error = %e, "publishing our MAC in the owner key failed"),
    }
}

/// Gives `id`'s owner key up, only if it is on `lease` (a new owner's key
/// is never touched): to `handover`'s successor when there is one and its
/// lease is alive, else deleted, with any failover request. A failure only
/// costs time: the key expires with the lease.
pub async fn release(
    client: &Client,
    keys: &Keys,
    id: &str,
    lease: i64,
    handover: Option<Handover>,
    timeout: Duration,
) {
    if let Some(h) = handover {
        let started = std::time::Instant::now();
        match replace(client, keys, id, lease, (h.value, h.lease), timeout).await {
            Ok(true) => {
                debug!(vip = %id, successor = %h.host, txn_us = started.elapsed().as_micros(), "owner key handed over");
                return;
            }
            Ok(false) => return,
            // Most likely the successor's lease ended a moment ago.
            Err(e) => {
                warn!(vip = %id, successor = %h.host, error = %e, "handing the owner key over failed: releasing it");
            }
        }
    }
    let key = keys.vip_owner(id);
    let txn = Txn::new()
        .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
        .and_then([
            TxnOp::delete(key, None),
            TxnOp::delete(keys.vip_failover(id), None),
        ]);
    let mut kv = client.kv_client();
    match tokio::time::timeout(timeout, kv.txn(txn)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            warn!(vip = %id, error = %e, "releasing the owner key failed; it expires with the lease");
        }
        Err(_) => {
            warn!(vip = %id, "releasing the owner key timed out; it expires with the lease");
        }
    }
}

/// Deletes `id`'s owner key if it is still the one at `revision` (one that
/// does not verify: whoever wrote it has no owner's say).
pub async fn clear(client: &Client, keys: &Keys, id: &str, revision: i64, timeout: Duration) {
    let key = keys.vip_owner(id);
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            revision,
        )])
        .and_then([TxnOp::delete(key, None)]);
    let mut kv = client.kv_client();
    match tokio::time::timeout(timeout, kv.txn(txn)).await {
        Ok(Ok(r)) if r.succeeded() => {
            warn!(vip = %id, revision, "removed an owner key that does not verify");
        }
        Ok(Ok(_)) => debug!(vip = %id, "the unverified owner key changed before it was removed"),
        Ok(Err(e)) => warn!(vip = %id, error = %e, "removing an unverified owner key failed"),
        Err(_) => warn!(vip = %id, "removing an unverified owner key timed out"),
    }
}

/// Takes `id`'s owner key from `lease` if it is still on it: deleted, or,
/// with `takeover`, replaced by our own (its signed value, on our lease) in
/// the same txn. Then revokes that lease, in the background. Returns
/// whether the key was taken.
pub async fn revoke(
    client: &Client,
    keys: &Keys,
    id: &str,
    lease: i64,
    takeover: Option<(Vec<u8>, i64)>,
    timeout: Duration,
) -> bool {
    let key = keys.vip_owner(id);
    let op = match takeover {
        Some((value, mine)) => {
            TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(mine)))
        }
        None => TxnOp::delete(key.clone(), None),
    };
    let txn = Txn::new()
        .when([Compare::lease(key, CompareOp::Equal, lease)])
        .and_then([op]);
    let mut kv = client.kv_client();
    match tokio::time::timeout(timeout, kv.txn(txn)).await {
        Ok(Ok(r)) if r.succeeded() => {
            // Off the path of the VIP: the key is no longer the owner's.
            let (client, id) = (client.clone(), id.to_owned());
            tokio::spawn(async move {
                let mut leases = client.lease_client();
                if let Ok(Err(e)) =
                    tokio::time::timeout(Duration::from_secs(1), leases.revoke(lease)).await
                {
                    debug!(vip = %id, error = %e, "revoking the owner's lease failed");
                }
            });
            true
        }
        Ok(Ok(_)) => {
            debug!(vip = %id, "the owner key moved on before the revocation");
            false
        }
        Ok(Err(e)) => {
            warn!(vip = %id, error = %e, "revoking the owner failed");
            false
        }
        Err(_) => {
            warn!(vip = %id, "revoking the owner timed out");
            false
        }
    }
}
