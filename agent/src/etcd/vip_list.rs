//! Reading floating IPs for `linkmesh ip ls` and the API, bounded: one VIP
//! reads only its own keys, and a listing reads a page of VIPs at a time.
//!
//! Under `<prefix>/vips/` a VIP's keys (`<ID>`, `<ID>/owner`,
//! `<ID>/state/<HOST>`, ...) sort together, before the next VIP's: an id
//! is an address and a prefix length (`198.18.0.100_24`, `fd00::1_64`), so
//! no id extends another by a character that sorts before `/`. A page is
//! thus a key range, read in etcd pages ([`Pages`]) at one revision,
//! ended at the first key of the VIP after the last one it lists.

use std::collections::BTreeMap;

use etcd_client::{Client, KeyValue};

use super::EtcdError;
use super::client::{Pages, prefix_end};
use crate::clock::unix_now;
use crate::registry::{
    Definition, Keys, Owner, Secrets, VipKey, open_member, open_owner, open_vip,
};

/// VIPs in one page of `GET /ips` when the client names no limit, and the
/// most it may ask for.
pub const MAX_PAGE: usize = 1000;

/// A VIP as listed: its record (or why it was rejected) and its owner.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VipEntry {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<crate::registry::VipRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub owner: Option<String>,
    /// Each host's state for this VIP, as the hosts last wrote it.
    pub states: BTreeMap<String, String>,
}

/// One page of VIPs, and the id to list after for the next (`None`: the
/// last page).
#[derive(Clone, Debug)]
pub struct Page {
    pub entries: Vec<VipEntry>,
    pub next: Option<String>,
}

/// VIP entries gathered from keys, verified as the agents verify them.
struct Gather<'a> {
    keys: &'a Keys,
    secrets: &'a Secrets,
    now: u64,
    entries: BTreeMap<String, VipEntry>,
}

impl<'a> Gather<'a> {
    fn new(keys: &'a Keys, secrets: &'a Secrets) -> Self {
        Self {
            keys,
            secrets,
            now: unix_now(),
            entries: BTreeMap::new(),
        }
    }

    fn entry(&mut self, id: &str) -> &mut VipEntry {
        self.entries
            .entry(id.to_owned())
            .or_insert_with(|| VipEntry {
                id: id.to_owned(),
                record: None,
                error: None,
                owner: None,
                states: BTreeMap::new(),
            })
    }

    /// Takes one key: a record, an owner key or a host's state; others
    /// (suspects, failover requests, junk) are skipped.
    fn add(&mut self, kv: &KeyValue) {
        let Ok(key) = kv.key_str() else { return };
        let (secrets, now) = (self.secrets, self.now);
        match self.keys.vip_key(key) {
            Some(VipKey::Record(id)) => match open_vip(secrets, key, kv.value(), kv.lease(), now) {
                Ok(Definition::Live(v, _)) => self.entry(id).record = Some(v.record),
                // Removed: listed only if something else is there.
                Ok(Definition::Removed(_)) => {}
                Err(r) => self.entry(id).error = Some(r.to_string()),
            },
            // An owner key that does not verify names nobody.
            Some(VipKey::Owner(id)) => {
                if let Ok(Owner { host, .. }) =
                    open_owner(secrets, key, kv.value(), kv.lease(), now)
                {
                    self.entry(id).owner = Some(host);
                }
            }
            Some(VipKey::Member {
                id,
                kind: kind @ "state",
                host,
            }) => {
                if let Ok(state) = open_member(secrets, key, kind, kv.value(), kv.lease(), now) {
                    self.entry(id).states.insert(host.to_owned(), state);
                }
            }
            _ => {}
        }
    }

    /// Whether VIP `id` is listed: it has a record (or a rejected one).
    fn listed(&self, id: &str) -> bool {
        self.entries
            .get(id)
            .is_some_and(|e| e.record.is_some() || e.error.is_some())
    }

    /// The VIPs that have a record (or a rejected one), by id.
    fn finish(self) -> Vec<VipEntry> {
        self.entries
            .into_values()
            .filter(|e| e.record.is_some() || e.error.is_some())
            .collect()
    }
}

/// One VIP: its record and its own keys only, in one range (`<ID>` and
/// `<ID>/…`; '0' follows '/', and no canonical id extends another there).
pub async fn read_one(
    client: &Client,
    keys: &Keys,
    secrets: &Secrets,
    id: &str,
) -> Result<Option<VipEntry>, EtcdError> {
    let key = keys.vip(id);
    let end = format!("{key}0").into_bytes();
    let mut pages = Pages::new(client, key.clone(), key.into_bytes(), end);
    let mut gather = Gather::new(keys, secrets);
    while let Some(page) = pages.next().await? {
        for kv in &page {
            if id_of(keys, kv.key()) == Some(id.as_bytes()) {
                gather.add(kv);
            }
        }
    }
    Ok(gather.finish().into_iter().find(|e| e.id == id))
}

/// The id part of a key under `<prefix>/vips/` (junk keys included).
fn id_of<'k>(keys: &Keys, key: &'k [u8]) -> Option<&'k [u8]> {
    let rest = key.strip_prefix(keys.vips().as_bytes())?;
    rest.split(|b| *b == b'/').next()
}

/// Keys (64 etcd pages) one page of a listing reads before it ends at the
/// next VIP, even with fewer VIPs than asked for: junk keys under the
/// prefix (ids with no record) cannot make one request read without end.
const KEY_BUDGET: usize = 8192;

/// Up to `limit` (1 to [`MAX_PAGE`]) VIPs after `after` (the key name a
/// page ended at), in id order, read at one revision. What a page reads is bounded by `limit`
/// and [`KEY_BUDGET`] (and one VIP's own keys), not by the number of VIPs.
pub async fn read_page(
    client: &Client,
    keys: &Keys,
    secrets: &Secrets,
    after: Option<&str>,
    limit: usize,
) -> Result<Page, EtcdError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let prefix = keys.vips();
    // Past `<after>` and everything under `<after>/` ('0' follows '/').
    let from = after.map_or_else(
        || prefix.clone().into_bytes(),
        |id| format!("{prefix}{id}0").into_bytes(),
    );
    let end = prefix_end(&prefix);
    let mut pages = Pages::new(client, prefix, from, end);
    let mut gather = Gather::new(keys, secrets);
    // The id being read, the last one read in full, how many of those
    // have a record, and the keys read.
    let mut current: Option<Vec<u8>> = None;
    let mut last_done: Option<String> = None;
    let (mut listed, mut read) = (0, 0);
    while let Some(page) = pages.next().await? {
        for kv in &page {
            let id = id_of(keys, kv.key()).unwrap_or_default();
            if current.as_deref() != Some(id) {
                if let Some(finished) = current.take() {
                    let finished = String::from_utf8_lossy(&finished).into_owned();
                    listed += usize::from(gather.listed(&finished));
                    last_done = Some(finished);
                }
                // This key starts the next page.
                if listed >= limit || read >= KEY_BUDGET {
                    return Ok(Page {
                        entries: gather.finish(),
                        next: last_done,
                    });
                }
                current = Some(id.to_vec());
            }
            gather.add(kv);
            read += 1;
        }
    }
    Ok(Page {
        entries: gather.finish(),
        next: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_group_by_their_id() {
        let keys = Keys::new("/lm");
        assert_eq!(
            id_of(&keys, b"/lm/vips/198.18.0.100_24"),
            Some(&b"198.18.0.100_24"[..])
        );
        assert_eq!(
            id_of(&keys, b"/lm/vips/198.18.0.100_24/state/h1"),
            Some(&b"198.18.0.100_24"[..])
        );
        assert_eq!(id_of(&keys, b"/lm/hosts/h1"), None);
        // A VIP's keys sort before the next id's, and the page start after
        // an id ('0' after '/') skips all of them.
        let mut sorted = [
            "/lm/vips/fd00::_128",
            "/lm/vips/fd00::_12/state/h1",
            "/lm/vips/fd00::_12",
            "/lm/vips/fd00::_12/owner",
        ];
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            [
                "/lm/vips/fd00::_12",
                "/lm/vips/fd00::_12/owner",
                "/lm/vips/fd00::_12/state/h1",
                "/lm/vips/fd00::_128",
            ]
        );
        assert!("/lm/vips/fd00::_120" > "/lm/vips/fd00::_12/state/h1");
        assert!("/lm/vips/fd00::_120" < "/lm/vips/fd00::_128");
    }
}
