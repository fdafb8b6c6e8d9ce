//! The verified registry, kept from etcd snapshots and watch events: hosts,
//! segments and floating-IP records.
//!
//! A rejected value never replaces a verified one: forging or garbling a key
//! cannot take a host, a segment or a VIP away; only a delete, a tombstone
//! (or the lease expiring) does. A definition older than one seen at its key
//! is rejected too ([`super::generation`]). Each rejection is logged once per
//! key and revision and counted by reason.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tracing::warn;

use super::generation::{Definition, Marks, open_definition};
use super::host::HostRecord;
use super::keys::{Keys, VipKey};
use super::record::{Expect, Rejection, open};
use super::secret::Secrets;
use super::segment::{SegmentSpec, validate_segment_name};
use super::vip::{ValidVip, open_vip};
use super::vipkeys::{MemberKey, VipChange, open_failover, open_member, open_owner};

/// The verified registry, as far as the mesh is concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryView {
    pub hosts: BTreeMap<String, HostRecord>,
    pub segments: BTreeMap<String, SegmentSpec>,
}

/// One value as read from etcd.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
    pub lease: i64,
    pub mod_revision: i64,
    /// When the key was created (the older of two VIPs on one address
    /// wins).
    pub create_revision: i64,
}

/// Rejections, logged once per key and revision: host and segment records
/// counted by reason, VIP records counted apart.
#[derive(Debug, Default)]
pub struct RejectionLog {
    logged: HashMap<String, i64>,
    counts: BTreeMap<&'static str, u64>,
    vips: u64,
}

impl RejectionLog {
    /// Records a rejection of a host or segment record; returns whether it
    /// was new (and so logged).
    pub fn record(&mut self, key: &str, mod_revision: i64, rejection: &Rejection) -> bool {
        if !self.first(key, mod_revision) {
            return false;
        }
        *self.counts.entry(rejection.reason()).or_default() += 1;
        warn!(key, revision = mod_revision, reason = rejection.reason(), error = %rejection, "registry record rejected");
        true
    }

    /// Records a rejection of a VIP record, or (`record` false) of a VIP's
    /// owner, state, suspect or failover key; returns whether it was new.
    pub fn record_vip(
        &mut self,
        key: &str,
        mod_revision: i64,
        rejection: &Rejection,
        record: bool,
    ) -> bool {
        if !self.first(key, mod_revision) {
            return false;
        }
        self.vips += 1;
        let what = if record { "record" } else { "key" };
        warn!(key, revision = mod_revision, reason = rejection.reason(), error = %rejection, "vip {what} rejected");
        true
    }

    fn first(&mut self, key: &str, mod_revision: i64) -> bool {
        if self.logged.get(key) == Some(&mod_revision) {
            return false;
        }
        // Bound the memory a flood of junk keys can take: forget the
        // per-key log (not the counts) past a limit.
        if self.logged.len() >= 100_000 {
            self.logged.clear();
        }
        self.logged.insert(key.to_owned(), mod_revision);
        true
    }

    /// Host and segment rejections so far, by reason.
    #[must_use]
    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }

    /// Host and segment rejections so far.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// VIP records and keys rejected so far.
    #[must_use]
    pub fn vips(&self) -> u64 {
        self.vips
    }
}

#[derive(Clone, Debug)]
struct HostEntry {
    record: HostRecord,
    issued_at: u64,
}

/// The verified hosts, segments and VIP records under one prefix.
#[derive(Debug)]
pub struct RegistryCache {
    keys: Keys,
    secrets: Secrets,
    max_age: Duration,
    hosts: BTreeMap<String, HostEntry>,
    segments: BTreeMap<String, SegmentSpec>,
    vips: BTreeMap<String, ValidVip>,
    /// When each VIP record was created.
    vip_created: BTreeMap<String, i64>,
    /// Verified VIP records held back because an older one has the same
    /// address (one VIP per address); one comes back when that one goes.
    shadowed: BTreeMap<String, (ValidVip, i64)>,
    /// The newest generation seen per definition key.
    marks: Marks,
    pub rejections: RejectionLog,
}

impl RegistryCache {
    #[must_use]
    pub fn new(keys: Keys, secrets: Secrets, max_age: Duration) -> Self {
        Self {
            keys,
            secrets,
            max_age,
            hosts: BTreeMap::new(),
            segments: BTreeMap::new(),
            vips: BTreeMap::new(),
            vip_created: BTreeMap::new(),
            shadowed: BTreeMap::new(),
            marks: Marks::default(),
            rejections: RejectionLog::default(),
        }
    }

    /// Starts from the generations an earlier run saw.
    #[must_use]
    pub fn with_marks(mut self, marks: Marks) -> Self {
        self.marks = marks;
        self
    }

    /// The newest generation seen per definition key (to keep them).
    pub fn marks_mut(&mut self) -> &mut Marks {
        &mut self.marks
    }

    /// Replaces the secrets (rotation without restart).
    pub fn set_secrets(&mut self, secrets: Secrets) {
        self.secrets = secrets;
    }

    /// The verified VIP records, by id.
    #[must_use]
    pub fn vips(&self) -> &BTreeMap<String, ValidVip> {
        &self.vips
    }

    /// Applies a put; `now` is Unix seconds. Returns whether the view (or
    /// the VIP records) changed.
    pub fn put(&mut self, entry: Entry<'_>, now: u64) -> bool {
        if let Some(VipKey::Record(id)) = self.keys.vip_key(entry.key) {
            let result = open_vip(&self.secrets, entry.key, entry.value, entry.lease, now)
                .and_then(|d| self.marks.admit(entry.key, d.mark()).map(|()| d));
            return match result {
                Ok(Definition::Live(vip, _)) => self.put_vip(id, vip, entry),
                Ok(Definition::Removed(_)) => self.delete_vip(id),
                Err(r) => {
                    self.rejections
                        .record_vip(entry.key, entry.mod_revision, &r, true);
                    false
                }
            };
        }
        if let Some(host) = self.keys.host_of(entry.key) {
            let expect = Expect {
                key: entry.key,
                lease: entry.lease,
                now,
                max_age: Some(self.max_age),
            };
            let result = open::<HostRecord>(&self.secrets, entry.value, expect).and_then(|v| {
                v.body.validate(host).map_err(Rejection::Invalid)?;
                Ok(v)
            });
            return match result {
                Ok(v) => {
                    let changed = self.hosts.get(host).is_none_or(|h| h.record != v.body);
                    self.hosts.insert(
                        host.to_owned(),
                        HostEntry {
                            record: v.body,
                            issued_at: v.issued_at,
                        },
                    );
                    changed
                }
                Err(r) => {
                    self.rejections.record(entry.key, entry.mod_revision, &r);
                    false
                }
            };
        }
        if let Some(name) = self.keys.segment_of(entry.key) {
            let result = open_definition::<SegmentSpec>(
                &self.secrets,
                entry.key,
                entry.value,
                entry.lease,
                now,
            )
            .and_then(|d| {
                d.try_map(|spec| {
                    validate_segment_name(name).map_err(Rejection::Invalid)?;
                    spec.validate().map_err(Rejection::Invalid)?;
                    Ok(spec)
                })
            })
            .and_then(|d| self.marks.admit(entry.key, d.mark()).map(|()| d));
            return match result {
                Ok(Definition::Live(spec, _)) => {
                    self.segments.insert(name.to_owned(), spec.clone()) != Some(spec)
                }
                Ok(Definition::Removed(_)) => self.segments.remove(name).is_some(),
                Err(r) => {
                    self.rejections.record(entry.key, entry.mod_revision, &r);
                    false
                }
            };
        }
        let under_us = entry.key.starts_with(&self.keys.hosts())
            || entry.key.starts_with(&self.keys.segments());
        if under_us {
            let r = Rejection::Malformed("key is not <dir>/<name>".into());
            self.rejections.record(entry.key, entry.mod_revision, &r);
        }
        false
    }

    /// Puts a verified VIP record, one VIP per address: of two records on
    /// one address the one created first is in force, whatever order they
    /// are read in; the other waits (shadowed) and is rejected, counted.
    fn put_vip(&mut self, id: &str, vip: ValidVip, entry: Entry<'_>) -> bool {
        let created = entry.create_revision;
        self.shadowed.remove(id);
        let rival = self
            .vips
            .iter()
            .find(|(other, v)| other.as_str() != id && v.cidr.addr == vip.cidr.addr)
            .map(|(other, _)| other.clone());
        if let Some(rival) = rival {
            let rival_created = self.vip_created.get(&rival).copied().unwrap_or(i64::MAX);
            let duplicate = |of: &str| {
                Rejection::Invalid(super::Invalid::DuplicateAddress {
                    addr: vip.cidr.addr,
                    vip: of.to_owned(),
                })
            };
            if rival_created <= created {
                self.rejections
                    .record_vip(entry.key, entry.mod_revision, &duplicate(&rival), true);
                let was = self.vips.remove(id).is_some();
                self.vip_created.remove(id);
                self.shadowed.insert(id.to_owned(), (vip, created));
                return was;
            }
            // The rival is younger: it waits now.
            if let Some(v) = self.vips.remove(&rival) {
                let rival_key = self.keys.vip(&rival);
                self.rejections
                    .record_vip(&rival_key, rival_created, &duplicate(id), true);
                self.shadowed.insert(rival.clone(), (v, rival_created));
            }
            self.vip_created.remove(&rival);
        }
        self.vip_created.insert(id.to_owned(), created);
        self.vips.insert(id.to_owned(), vip.clone()) != Some(vip)
    }

    /// A VIP record is gone: a record it held back on its address may take
    /// its place.
    fn delete_vip(&mut self, id: &str) -> bool {
        self.shadowed.remove(id);
        self.vip_created.remove(id);
        let Some(gone) = self.vips.remove(id) else {
            return false;
        };
        let heir = self
            .shadowed
            .iter()
            .filter(|(_, (v, _))| v.cidr.addr == gone.cidr.addr)
            .min_by_key(|(_, (_, created))| *created)
            .map(|(other, _)| other.clone());
        if let Some(heir) = heir
            && let Some((v, created)) = self.shadowed.remove(&heir)
        {
            self.vip_created.insert(heir.clone(), created);
            self.vips.insert(heir, v);
        }
        true
    }

    /// A put (or, `deleted`, a delete) of a VIP's owner, failover, state or
    /// suspect key, verified: what to tell the floating-IP subsystem. What
    /// does not verify counts as absent (and is logged and counted); an
    /// owner key that does not verify is reported, so it can go.
    pub fn vip_key(&mut self, entry: Entry<'_>, deleted: bool, now: u64) -> Option<VipChange> {
        let (secrets, key, value, lease) = (&self.secrets, entry.key, entry.value, entry.lease);
        let (change, rejected) = match self.keys.vip_key(key)? {
            VipKey::Record(_) => return None,
            VipKey::Owner(id) if deleted => (VipChange::Owner(id.to_owned(), None), None),
            VipKey::Owner(id) => match open_owner(secrets, key, value, lease, now) {
                Ok(owner) => (VipChange::Owner(id.to_owned(), Some(owner)), None),
                Err(r) => (
                    VipChange::BogusOwner {
                        id: id.to_owned(),
                        revision: entry.mod_revision,
                    },
                    Some(r),
                ),
            },
            VipKey::Failover(_) if deleted => return None,
            VipKey::Failover(id) => match open_failover(secrets, key, value, lease, now) {
                Ok(host) => (VipChange::Failover(id.to_owned(), host), None),
                Err(r) => {
                    self.rejections
                        .record_vip(key, entry.mod_revision, &r, false);
                    return None;
                }
            },
            VipKey::Member { id, kind, host } => {
                let (value, rejected) = if deleted {
                    (None, None)
                } else {
                    match open_member(secrets, key, kind, value, lease, now) {
                        Ok(v) => (Some(v), None),
                        Err(r) => (None, Some(r)),
                    }
                };
                let member = MemberKey {
                    id: id.to_owned(),
                    kind: kind.to_owned(),
                    host: host.to_owned(),
                    lease: if value.is_some() { lease } else { 0 },
                    value,
                };
                (VipChange::Member(member), rejected)
            }
        };
        if let Some(r) = rejected {
            self.rejections
                .record_vip(key, entry.mod_revision, &r, false);
        }
        Some(change)
    }

    /// Applies a delete. Returns whether the view changed.
    pub fn delete(&mut self, key: &str) -> bool {
        if let Some(host) = self.keys.host_of(key) {
            return self.hosts.remove(host).is_some();
        }
        if let Some(name) = self.keys.segment_of(key) {
            return self.segments.remove(name).is_some();
        }
        if let Some(VipKey::Record(id)) = self.keys.vip_key(key) {
            return self.delete_vip(id);
        }
        false
    }

    /// Replaces the contents with a snapshot: every key absent from it is
    /// deleted; rejected values keep the last verified ones.
    pub fn snapshot<'a>(&mut self, entries: impl IntoIterator<Item = Entry<'a>>, now: u64) {
        let mut present = std::collections::BTreeSet::new();
        for entry in entries {
            present.insert(entry.key.to_owned());
            self.put(entry, now);
        }
        let keys = self.keys.clone();
        self.hosts.retain(|h, _| present.contains(&keys.host(h)));
        self.segments
            .retain(|s, _| present.contains(&keys.segment(s)));
        self.vips.retain(|id, _| present.contains(&keys.vip(id)));
        self.vip_created
            .retain(|id, _| present.contains(&keys.vip(id)));
        self.shadowed
            .retain(|id, _| present.contains(&keys.vip(id)));
    }

    /// Brings `view` up to date for the host or segment key `key` alone
    /// (O(log N), against [`RegistryCache::view`]'s O(N)); returns whether
    /// it changed, or `None` for a key that is neither.
    pub fn update_view(&self, view: &mut RegistryView, key: &str, now: u64) -> Option<bool> {
        if let Some(name) = self.keys.host_of(key) {
            let fresh = self
                .hosts
                .get(name)
                .filter(|h| now.saturating_sub(h.issued_at) <= self.max_age.as_secs())
                .map(|h| &h.record);
            return Some(match fresh {
                Some(r) if view.hosts.get(name) != Some(r) => {
                    view.hosts.insert(name.to_owned(), r.clone());
                    true
                }
                Some(_) => false,
                None => view.hosts.remove(name).is_some(),
            });
        }
        let name = self.keys.segment_of(key)?;
        Some(match self.segments.get(name) {
            Some(s) if view.segments.get(name) != Some(s) => {
                view.segments.insert(name.to_owned(), s.clone());
                true
            }
            Some(_) => false,
            None => view.segments.remove(name).is_some(),
        })
    }

    /// The view the mesh uses: hosts whose records are within the maximum
    /// age at `now`.
    #[must_use]
    pub fn view(&self, now: u64) -> RegistryView {
        RegistryView {
            hosts: self
                .hosts
                .iter()
                .filter(|(_, h)| now.saturating_sub(h.issued_at) <= self.max_age.as_secs())
                .map(|(k, h)| (k.clone(), h.record.clone()))
                .collect(),
            segments: self.segments.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::MacAddr;
    use crate::registry::record::seal;

    const NOW: u64 = 1_800_000_000;

    fn secrets() -> Secrets {
        Secrets::from_text("cache-test-secret-123").expect("valid")
    }

    fn cache() -> RegistryCache {
        RegistryCache::new(Keys::new("/lm"), secrets(), Duration::from_hours(1))
    }

    fn host(name: &str) -> HostRecord {
        HostRecord {
            hostname: name.into(),
            address: "198.18.0.2".parse().expect("ip"),
            segments: [("blue".to_owned(), MacAddr([2, 0, 0, 0, 0, 2]))].into(),
            agent_version: "t".into(),
            heartbeat_nonce: None,
            overlay: crate::registry::host::Overlay::default(),
        }
    }

    fn put(c: &mut RegistryCache, key: &str, value: &[u8], lease: i64, rev: i64) -> bool {
        c.put(
            Entry {
                key,
                value,
                lease,
                mod_revision: rev,
                create_revision: rev,
            },
            NOW,
        )
    }

    #[test]
    fn verified_records_enter_rejected_ones_do_not_replace_them() {
        let mut c = cache();
        let good = seal(&secrets(), "/lm/hosts/h2", 5, NOW, &host("h2")).expect("seal");
        assert!(put(&mut c, "/lm/hosts/h2", &good, 5, 1));
        assert!(
            !put(&mut c, "/lm/hosts/h2", &good, 5, 2),
            "same record: no change"
        );
        assert!(!put(&mut c, "/lm/hosts/h2", b"garbage", 0, 3));
        assert_eq!(
            c.view(NOW).hosts.len(),
            1,
            "garbage does not remove the host"
        );
        assert!(
            !put(&mut c, "/lm/hosts/h3", &good, 5, 4),
            "copied under another key"
        );
        assert!(
            !put(&mut c, "/lm/hosts/h2", &good, 6, 5),
            "replayed under another lease"
        );
        let wrong = Secrets::from_text("some-other-secret-456").expect("valid");
        let forged = seal(&wrong, "/lm/hosts/h4", 7, NOW, &host("h4")).expect("seal");
        assert!(!put(&mut c, "/lm/hosts/h4", &forged, 7, 6));
        let counts = c.rejections.counts();
        assert_eq!(counts.get("malformed"), Some(&1));
        assert_eq!(counts.get("replayed"), Some(&2));
        assert_eq!(counts.get("bad_signature"), Some(&1));
        assert!(c.delete("/lm/hosts/h2"));
        assert!(c.view(NOW).hosts.is_empty());
    }

    #[test]
    fn rejections_are_logged_once_per_revision() {
        let mut log = RejectionLog::default();
        assert!(log.record("k", 1, &Rejection::BadSignature));
        assert!(!log.record("k", 1, &Rejection::BadSignature));
        assert!(log.record("k", 2, &Rejection::BadSignature));
        assert_eq!(log.total(), 2);
    }

    #[test]
    fn snapshot_removes_absent_keys_and_views_drop_old_records() {
        let mut c = cache();
        let h2 = seal(&secrets(), "/lm/hosts/h2", 5, NOW - 3000, &host("h2")).expect("seal");
        let seg = seal(
            &secrets(),
            "/lm/segments/blue",
            0,
            NOW,
            &SegmentSpec::new(100),
        )
        .expect("seal");
        put(&mut c, "/lm/hosts/h2", &h2, 5, 1);
        put(&mut c, "/lm/segments/blue", &seg, 0, 2);
        assert_eq!(c.view(NOW).segments.len(), 1);
        assert_eq!(
            c.view(NOW + 1000).hosts.len(),
            0,
            "older than the maximum age"
        );
        c.snapshot(
            [Entry {
                key: "/lm/hosts/h2",
                value: &h2,
                lease: 5,
                mod_revision: 1,
                create_revision: 1,
            }],
            NOW,
        );
        assert!(
            c.view(NOW).segments.is_empty(),
            "blue is gone from the snapshot"
        );
        assert_eq!(c.view(NOW).hosts.len(), 1);
    }

    #[test]
    fn invalid_segment_definitions_are_rejected() {
        let mut c = cache();
        let bad = seal(
            &secrets(),
            "/lm/segments/blue",
            0,
            NOW,
            &SegmentSpec::new(0),
        )
        .expect("seal");
        assert!(!put(&mut c, "/lm/segments/blue", &bad, 0, 1));
        let long = "/lm/segments/a-very-long-segment-name";
        let v = seal(&secrets(), long, 0, NOW, &SegmentSpec::new(5)).expect("seal");
        assert!(!put(&mut c, long, &v, 0, 2));
        assert_eq!(c.rejections.counts().get("invalid"), Some(&2));
    }

    fn vip_entry<'a>(key: &'a str, value: &'a [u8], created: i64) -> Entry<'a> {
        Entry {
            key,
            value,
            lease: 0,
            mod_revision: created,
            create_revision: created,
        }
    }

    #[test]
    fn one_vip_per_address_the_older_wins_in_any_order_and_the_other_waits() {
        let wide = "/lm/vips/198.18.0.100_24";
        let narrow = "/lm/vips/198.18.0.100_32";
        let sealed = |key: &str, cidr: &str| {
            seal(
                &secrets(),
                key,
                0,
                NOW,
                &crate::registry::VipRecord::new(cidr),
            )
            .expect("seal")
        };
        let (w, n) = (
            sealed(wide, "198.18.0.100/24"),
            sealed(narrow, "198.18.0.100/32"),
        );
        for narrow_first in [true, false] {
            let mut c = cache();
            // The /32 was created first (revision 10), the /24 later (20).
            if narrow_first {
                c.put(vip_entry(narrow, &n, 10), NOW);
                c.put(vip_entry(wide, &w, 20), NOW);
            } else {
                c.put(vip_entry(wide, &w, 20), NOW);
                c.put(vip_entry(narrow, &n, 10), NOW);
            }
            let ids: Vec<_> = c.vips().keys().cloned().collect();
            assert_eq!(ids, ["198.18.0.100_32"], "narrow first: {narrow_first}");
            assert_eq!(c.rejections.vips(), 1, "the younger one is counted");
            assert!(c.delete(narrow), "the older one goes");
            let ids: Vec<_> = c.vips().keys().cloned().collect();
            assert_eq!(
                ids,
                ["198.18.0.100_24"],
                "the one that waited takes its place"
            );
        }
    }

    #[test]
    fn tombstones_remove_and_older_generations_never_return() {
        use crate::registry::generation::Tombstone;
        use crate::registry::record::seal_definition;
        let (seg, vip) = ("/lm/segments/blue", "/lm/vips/198.18.0.100_32");
        let record = crate::registry::VipRecord::new("198.18.0.100/32");
        let v5 = seal_definition(&secrets(), seg, 5, NOW, &SegmentSpec::new(5)).expect("seal");
        let v6 = seal_definition(&secrets(), seg, 6, NOW, &SegmentSpec::new(6)).expect("seal");
        let vip1 = seal_definition(&secrets(), vip, 1, NOW, &record).expect("seal");
        let vip2 = seal_definition(&secrets(), vip, 2, NOW, &Tombstone {}).expect("seal");
        let mut c = cache();
        assert!(put(&mut c, seg, &v5, 0, 1));
        assert!(put(&mut c, seg, &v6, 0, 2), "a newer generation replaces");
        assert!(!put(&mut c, seg, &v5, 0, 3), "an older one does not");
        assert_eq!(c.view(NOW).segments["blue"], SegmentSpec::new(6));
        assert!(!put(&mut c, seg, &v6, 0, 4), "the same write read again");
        assert_eq!(c.rejections.counts().get("replayed"), Some(&1));

        assert!(put(&mut c, vip, &vip1, 0, 5));
        assert!(put(&mut c, vip, &vip2, 0, 6), "the tombstone removes it");
        assert!(c.vips().is_empty());
        // The tombstone deleted, the record put back: still removed.
        assert!(!c.delete(vip));
        assert!(!put(&mut c, vip, &vip1, 0, 7));
        assert!(c.vips().is_empty());
        assert_eq!(c.rejections.vips(), 1);
        // A restart that keeps the generations refuses it too.
        let mut marks = crate::registry::Marks::default();
        marks
            .admit(vip, c.marks_mut().newest(vip).expect("remembered"))
            .expect("new");
        let mut again = cache().with_marks(marks);
        assert!(!put(&mut again, vip, &vip1, 0, 7));
        assert!(again.vips().is_empty());
    }
}
