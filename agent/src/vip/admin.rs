//! VIP administration in etcd (the `linkmesh ip` commands; later the API).

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::Serialize;

use super::record::VipRecord;
use crate::registry::{Expect, Keys, Secrets, open, seal};
use crate::store::{StoreError, unix_now};

/// A VIP as listed: its record (or why it was rejected) and its owner.
#[derive(Clone, Debug, Serialize)]
pub struct VipEntry {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<VipRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub owner: Option<String>,
    /// Each host's state for this VIP, as the hosts last wrote it.
    pub states: std::collections::BTreeMap<String, String>,
}

pub struct Vips {
    pub client: Client,
    pub keys: Keys,
    pub secrets: Secrets,
}

fn etcd(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Etcd { what, source }
}

impl Vips {
    /// Adds a VIP; fails if its id exists. Returns the id.
    pub async fn add(&self, record: &VipRecord) -> Result<String, StoreError> {
        let (cidr, _) = record.validate().map_err(StoreError::Invalid)?;
        let id = cidr.id();
        let key = self.keys.vip(&id);
        let value = seal(&self.secrets, &key, 0, unix_now(), record)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)]);
        let mut kv = self.client.kv_client();
        let r = kv.txn(txn).await.map_err(etcd(format!("adding {id}")))?;
        if !r.succeeded() {
            return Err(StoreError::Conflict(format!(
                "floating IP {id} already exists"
            )));
        }
        Ok(id)
    }

    /// Removes a VIP (its owner unbinds when it sees the record go).
    pub async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let mut kv = self.client.kv_client();
        let r = kv
            .delete(self.keys.vip(id), None)
            .await
            .map_err(etcd(format!("removing {id}")))?;
        Ok(r.deleted() > 0)
    }

    /// Every VIP, verified, with its owner.
    pub async fn list(&self) -> Result<Vec<VipEntry>, StoreError> {
        let mut kv = self.client.kv_client();
        let r = kv
            .get(self.keys.vips(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd("listing floating IPs"))?;
        let mut entries: std::collections::BTreeMap<String, VipEntry> =
            std::collections::BTreeMap::new();
        for kv in r.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            if let Some((id, host)) = key
                .strip_prefix(&self.keys.vips())
                .and_then(|rest| rest.split_once("/state/"))
            {
                if let Some(entry) = entries.get_mut(id) {
                    entry.states.insert(
                        host.to_owned(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    );
                }
                continue;
            }
            let Some((id, sub)) = self.keys.vip_of(key) else {
                continue;
            };
            let entry = entries.entry(id.to_owned()).or_insert_with(|| VipEntry {
                id: id.to_owned(),
                record: None,
                error: None,
                owner: None,
                states: std::collections::BTreeMap::new(),
            });
            match sub {
                None => {
                    let expect = Expect {
                        key,
                        lease: kv.lease(),
                        now: unix_now(),
                        max_age: None,
                    };
                    match open::<VipRecord>(&self.secrets, kv.value(), expect) {
                        Ok(v) => entry.record = Some(v.body),
                        Err(e) => entry.error = Some(e.to_string()),
                    }
                }
                Some("owner") => {
                    entry.owner = Some(String::from_utf8_lossy(kv.value()).into_owned());
                }
                Some(_) => {}
            }
        }
        Ok(entries
            .into_values()
            .filter(|e| e.record.is_some() || e.error.is_some())
            .collect())
    }

    /// One VIP.
    pub async fn get(&self, id: &str) -> Result<Option<VipEntry>, StoreError> {
        Ok(self.list().await?.into_iter().find(|e| e.id == id))
    }

    /// Asks the current owner to release `id` (it then sits out the next
    /// election). Returns the owner asked.
    pub async fn failover(&self, id: &str) -> Result<String, StoreError> {
        let entry = self
            .get(id)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("no floating IP {id}")))?;
        let owner = entry
            .owner
            .ok_or_else(|| StoreError::Conflict(format!("{id} has no owner right now")))?;
        let mut lease = self.client.lease_client();
        let l = lease
            .grant(30, None)
            .await
            .map_err(etcd("granting a lease"))?
            .id();
        let mut kv = self.client.kv_client();
        kv.put(
            self.keys.vip_failover(id),
            owner.clone(),
            Some(PutOptions::new().with_lease(l)),
        )
        .await
        .map_err(etcd(format!("requesting failover of {id}")))?;
        Ok(owner)
    }
}
