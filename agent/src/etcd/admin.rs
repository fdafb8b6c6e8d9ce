//! What the admin commands (`linkmesh segment`, `linkmesh ip`) and the
//! API change in etcd: segment definitions with their VNI index, floating
//! IPs, and failover requests.
//!
//! Definitions are written with a generation past the key's last, and
//! removed with a signed tombstone one generation up
//! ([`crate::registry::generation`]), each guarded by what was read.

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use super::{EtcdError, read_prefix, timed};
use crate::clock::{unix_now, wall_micros};
use crate::registry::{
    Definition, Expect, FailoverRecord, HostRecord, Invalid, Keys, Rejection, Secrets, SegmentSpec,
    Tombstone, ValidVip, next_generation, open, open_definition, open_vip, seal, seal_definition,
};

/// Segment administration (the `linkmesh segment` commands).
pub struct Segments {
    pub client: Client,
    pub keys: Keys,
    pub secrets: Secrets,
}

impl Segments {
    /// Adds a segment. Fails if the name exists, or if another segment uses
    /// the VNI (on the same port): both are checked in one transaction on an
    /// index key per VNI, so two admins cannot race.
    pub async fn add(&self, name: &str, spec: &SegmentSpec) -> Result<(), EtcdError> {
        crate::registry::segment::validate_segment_name(name)?;
        spec.validate()?;
        let key = self.keys.segment(name);
        let vni_key = self.keys.segment_vni(spec.vni, spec.port);
        let current = read_definition(&self.client, &key, |v, lease, now| {
            open_definition::<SegmentSpec>(&self.secrets, &key, v, lease, now)
        })
        .await?;
        let (guard, generation) = claim(&key, current.as_ref()).ok_or_else(|| {
            EtcdError::Conflict(format!("segment {name} already exists (remove it first)"))
        })?;
        let value = seal_definition(&self.secrets, &key, generation, unix_now(), spec)?;
        let txn = Txn::new()
            .when([
                guard,
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
            return Err(EtcdError::Conflict(format!(
                "segment {name} already exists (remove it first)"
            )));
        }
        Err(EtcdError::Conflict(format!(
            "vni {} (port {}) is already used by segment {}",
            spec.vni,
            spec.port,
            vni_owner.unwrap_or_else(|| "?".into())
        )))
    }

    /// Removes a segment (a tombstone in its place) and its VNI index
    /// entry. Returns whether there was one.
    pub async fn remove(&self, name: &str) -> Result<bool, EtcdError> {
        let key = self.keys.segment(name);
        let removal = removal(&self.client, &self.secrets, &key, |v, lease, now| {
            open_definition::<SegmentSpec>(&self.secrets, &key, v, lease, now)
        });
        let Some((current, guard, tombstone)) = removal.await? else {
            return Ok(false);
        };
        let mut ops = vec![tombstone];
        // The index key is found from the stored definition (unverified
        // content is fine here: it only names which index entry to drop).
        let spec = match current.definition {
            Some(Definition::Live(spec, _)) => Some(spec),
            _ => stored_spec(&current.value),
        };
        if let Some(spec) = spec {
            ops.push(TxnOp::delete(
                self.keys.segment_vni(spec.vni, spec.port),
                None,
            ));
        }
        let txn = Txn::new().when([guard]).and_then(ops);
        let mut kv = self.client.kv_client();
        let response = timed(|| format!("removing segment {name}"), kv.txn(txn)).await?;
        if !response.succeeded() {
            return Err(EtcdError::Conflict(format!(
                "segment {name} changed while being removed; try again"
            )));
        }
        Ok(true)
    }

    /// Every segment, verified: `(name, spec)` or `(key, rejection)`.
    pub async fn list(&self) -> Result<Vec<(String, Result<SegmentSpec, Rejection>)>, EtcdError> {
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
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let name = self.keys.segment_of(&key).unwrap_or(&key).to_owned();
                match open_definition::<SegmentSpec>(
                    &self.secrets,
                    &key,
                    kv.value(),
                    kv.lease(),
                    now,
                ) {
                    Ok(Definition::Live(spec, _)) => Some((name, Ok(spec))),
                    Ok(Definition::Removed(_)) => None,
                    Err(r) => Some((name, Err(r))),
                }
            })
            .collect())
    }
}

/// What is at a definition's key.
struct Current<T> {
    revision: i64,
    value: Vec<u8>,
    /// `None`: a value that does not verify.
    definition: Option<Definition<T>>,
}

/// Reads a definition's key; `open` verifies the value (value, lease, now).
async fn read_definition<T>(
    client: &Client,
    key: &str,
    open: impl Fn(&[u8], i64, u64) -> Result<Definition<T>, Rejection>,
) -> Result<Option<Current<T>>, EtcdError> {
    let mut kv = client.kv_client();
    let response = timed(|| format!("reading {key}"), kv.get(key, None)).await?;
    Ok(response.kvs().first().map(|kv| Current {
        revision: kv.mod_revision(),
        value: kv.value().to_vec(),
        definition: open(kv.value(), kv.lease(), unix_now()).ok(),
    }))
}

/// How a new definition goes in at `key`: the guard for the write and its
/// generation, when the key is free (never written, or a tombstone).
fn claim<T>(key: &str, current: Option<&Current<T>>) -> Option<(Compare, u64)> {
    match current {
        None => Some((
            Compare::create_revision(key, CompareOp::Equal, 0),
            next_generation(None, wall_micros()),
        )),
        Some(Current {
            revision,
            definition: Some(Definition::Removed(mark)),
            ..
        }) => Some((
            Compare::mod_revision(key, CompareOp::Equal, *revision),
            next_generation(Some(mark.generation), wall_micros()),
        )),
        Some(_) => None,
    }
}

/// What removing the definition at `key` takes: what is there, the guard
/// on it and the write of its tombstone; `None` when there is nothing to
/// remove (no key, or a tombstone already).
async fn removal<T>(
    client: &Client,
    secrets: &Secrets,
    key: &str,
    open: impl Fn(&[u8], i64, u64) -> Result<Definition<T>, Rejection>,
) -> Result<Option<(Current<T>, Compare, TxnOp)>, EtcdError> {
    let Some(current) = read_definition(client, key, open).await? else {
        return Ok(None);
    };
    let previous = match &current.definition {
        Some(Definition::Removed(_)) => return Ok(None),
        Some(d) => Some(d.mark().generation),
        None => None,
    };
    let generation = next_generation(previous, wall_micros());
    let value = seal_definition(secrets, key, generation, unix_now(), &Tombstone {})?;
    let guard = Compare::mod_revision(key, CompareOp::Equal, current.revision);
    Ok(Some((current, guard, TxnOp::put(key, value, None))))
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

pub use super::vip_list::{MAX_PAGE, Page, VipEntry};

/// Floating-IP administration (the `linkmesh ip` commands and the API).
pub struct Vips {
    pub client: Client,
    pub keys: Keys,
    pub secrets: Secrets,
}

impl Vips {
    /// Adds a VIP (validated by the caller, once); fails if its id exists,
    /// if it is wider than /16 (/48) without `force`, or if its address is
    /// a registered host's underlay address. Returns the id.
    pub async fn add(&self, vip: &ValidVip, force: bool) -> Result<String, EtcdError> {
        vip.check_width(force)?;
        self.refuse_host_address(vip).await?;
        let id = vip.cidr.id();
        let key = self.keys.vip(&id);
        let index = self.keys.vip_address(vip.cidr.addr);
        let current = read_definition(&self.client, &key, |v, lease, now| {
            open_vip(&self.secrets, &key, v, lease, now)
        })
        .await?;
        let (guard, generation) = claim(&key, current.as_ref())
            .ok_or_else(|| EtcdError::Conflict(format!("floating IP {id} already exists")))?;
        let value = seal_definition(&self.secrets, &key, generation, unix_now(), &vip.record)?;
        // The record and its address's index entry, or neither: two VIPs
        // never share an address, and two admins cannot race.
        let txn = Txn::new()
            .when([
                guard,
                Compare::create_revision(index.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key.clone(), value, None),
                TxnOp::put(index.clone(), id.clone(), None),
            ])
            .or_else([TxnOp::get(key.clone(), None), TxnOp::get(index, None)]);
        let mut kv = self.client.kv_client();
        let r = timed(|| format!("adding floating IP {id}"), kv.txn(txn)).await?;
        if r.succeeded() {
            return Ok(id);
        }
        let mut taken_by = None;
        for op in r.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = op {
                for kv in g.kvs() {
                    if kv.key() == key.as_bytes() {
                        return Err(EtcdError::Conflict(format!(
                            "floating IP {id} already exists"
                        )));
                    }
                    taken_by = Some(String::from_utf8_lossy(kv.value()).into_owned());
                }
            }
        }
        Err(Invalid::DuplicateAddress {
            addr: vip.cidr.addr,
            vip: taken_by.unwrap_or_else(|| "?".into()),
        }
        .into())
    }

    /// Fails if `vip`'s address is the underlay address of a registered
    /// host (a verified record).
    async fn refuse_host_address(&self, vip: &ValidVip) -> Result<(), EtcdError> {
        let (_, kvs) = read_prefix(&self.client, &self.keys.hosts()).await?;
        let now = unix_now();
        for kv in &kvs {
            let Ok(key) = kv.key_str() else { continue };
            let expect = Expect {
                key,
                lease: kv.lease(),
                now,
                max_age: None,
            };
            if let Ok(host) = open::<HostRecord>(&self.secrets, kv.value(), expect)
                && host.body.address == vip.cidr.addr
            {
                return Err(Invalid::HostAddress {
                    addr: vip.cidr.addr,
                    host: host.body.hostname,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Removes a VIP (a tombstone in its place), and its address's index
    /// entry if that names it (its owner unbinds when it sees the record
    /// go). Returns whether there was one.
    pub async fn remove(&self, id: &str) -> Result<bool, EtcdError> {
        let key = self.keys.vip(id);
        let removal = removal(&self.client, &self.secrets, &key, |v, lease, now| {
            open_vip(&self.secrets, &key, v, lease, now)
        });
        let Some((_, guard, tombstone)) = removal.await? else {
            return Ok(false);
        };
        let mut ops = vec![tombstone];
        if let Ok(cidr) = id.replace('_', "/").parse::<crate::registry::Cidr>() {
            let index = self.keys.vip_address(cidr.addr);
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::value(index.clone(), CompareOp::Equal, id)])
                    .and_then([TxnOp::delete(index, None)]),
            ));
        }
        let txn = Txn::new().when([guard]).and_then(ops);
        let mut kv = self.client.kv_client();
        let r = timed(|| format!("removing floating IP {id}"), kv.txn(txn)).await?;
        if !r.succeeded() {
            return Err(EtcdError::Conflict(format!(
                "floating IP {id} changed while being removed; try again"
            )));
        }
        Ok(true)
    }

    /// Every VIP, verified as the agents verify it, with its owner and the
    /// hosts' states, read a page at a time.
    pub async fn list(&self) -> Result<Vec<VipEntry>, EtcdError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.page(after.as_deref(), MAX_PAGE).await?;
            all.extend(page.entries);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Up to `limit` VIPs after id `after` (see [`super::vip_list::read_page`]).
    pub async fn page(&self, after: Option<&str>, limit: usize) -> Result<Page, EtcdError> {
        super::vip_list::read_page(&self.client, &self.keys, &self.secrets, after, limit).await
    }

    /// One VIP, reading only its own keys.
    pub async fn get(&self, id: &str) -> Result<Option<VipEntry>, EtcdError> {
        super::vip_list::read_one(&self.client, &self.keys, &self.secrets, id).await
    }

    /// Asks the current owner to release `id` (it then sits out the next
    /// election). Returns the owner asked.
    pub async fn failover(&self, id: &str) -> Result<String, EtcdError> {
        let entry = self
            .get(id)
            .await?
            .ok_or_else(|| EtcdError::NotFound(format!("no floating IP {id}")))?;
        let owner = entry
            .owner
            .ok_or_else(|| EtcdError::Conflict(format!("{id} has no owner right now")))?;
        let mut leases = self.client.lease_client();
        let lease = timed(|| "granting a lease".to_owned(), leases.grant(30, None))
            .await?
            .id();
        let key = self.keys.vip_failover(id);
        let record = FailoverRecord {
            host: owner.clone(),
        };
        let value = seal(&self.secrets, &key, lease, unix_now(), &record)?;
        let mut kv = self.client.kv_client();
        timed(
            || format!("requesting failover of {id}"),
            kv.put(key, value, Some(PutOptions::new().with_lease(lease))),
        )
        .await?;
        Ok(owner)
    }
}
