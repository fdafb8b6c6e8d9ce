//! VIP records, their coordination keys and `POST /ips` bodies, as the
//! agents and the API read them.

use linkmesh::registry::cache::{Entry, RegistryCache};
use linkmesh::registry::record::{MAX_RECORD_BYTES, SealError};
use linkmesh::registry::{
    Cidr, Expect, Keys, Secrets, VipChange, VipKey, VipRecord, next_generation, open,
    open_failover, open_member, open_owner, open_vip, seal_definition,
};

use super::{
    KNOWN_GENERATION, MAX_AGE, NOW, PREFIX, newer_than_known, reverify, same_vip, secrets,
};

/// A VIP record as the agents read it: through the registry cache (which
/// holds a known VIP already), whose verdict must be [`open_vip`]'s; keys
/// below a VIP are not records and must name their VIP back.
pub(crate) fn vip(keys: &Keys, secrets: &Secrets, value: &[u8], expect: Expect<'_>) -> bool {
    let key = expect.key;
    let id = match keys.vip_key(key) {
        None => return false,
        Some(VipKey::Owner(id)) => {
            assert_eq!(keys.vip_owner(id), key);
            return coordination(keys, secrets, value, expect);
        }
        Some(VipKey::Failover(id)) => {
            assert_eq!(keys.vip_failover(id), key);
            return coordination(keys, secrets, value, expect);
        }
        Some(VipKey::Member { id, kind, host }) => {
            assert_eq!(format!("{}{id}/{kind}/{host}", keys.vips()), key);
            return coordination(keys, secrets, value, expect);
        }
        Some(VipKey::Record(id)) => {
            assert_eq!(keys.vip(id), key);
            id
        }
    };
    let mut cache = RegistryCache::new(keys.clone(), secrets.clone(), MAX_AGE);
    let known = keys.vip(KNOWN_VIP);
    let known_value = seal_definition(secrets, &known, KNOWN_GENERATION, NOW, &known_vip())
        .expect("sealing the known VIP");
    let put = |key, value, lease, mod_revision| Entry {
        key,
        value,
        lease,
        mod_revision,
        create_revision: mod_revision,
    };
    assert!(
        cache.put(put(&known, &known_value, 0, 1), NOW),
        "the known VIP is defined"
    );
    let before = cache.vips().clone();
    let rejected = cache.rejections.vips();
    // `Some(record)`, or `None` for a tombstone.
    let verdict = open_vip(secrets, key, value, expect.lease, NOW).and_then(|d| {
        newer_than_known(key == known, d.mark())?;
        Ok(d.live())
    });
    let changed = cache.put(put(key, value, expect.lease, 2), NOW);
    match &verdict {
        // One VIP per address: the known VIP, created first, stays in force.
        Ok(Some(valid)) if id != KNOWN_VIP && Some(valid.cidr.addr) == known_address() => {
            assert_eq!(
                cache.vips(),
                &before,
                "a second VIP on an address changed the VIPs"
            );
            assert!(!changed, "a second VIP on an address reported a change");
            assert_eq!(
                cache.rejections.vips(),
                rejected + 1,
                "the duplicate is counted once"
            );
        }
        Ok(Some(valid)) => {
            assert_eq!(
                cache.vips().get(id),
                Some(valid),
                "the cache holds the accepted record"
            );
            assert_eq!(
                changed,
                before.get(id) != Some(valid),
                "a change is reported, only then"
            );
            assert_eq!(cache.rejections.vips(), rejected, "nothing counted");
            check_cidr(keys, valid.cidr);
            assert_eq!(valid.checks.len(), valid.record.checks.len());
            let verified = open::<VipRecord>(secrets, value, expect).expect("it verified");
            reverify(secrets, expect, &verified, same_vip);
        }
        Ok(None) => {
            assert!(!cache.vips().contains_key(id), "a tombstone left its VIP");
            assert_eq!(changed, before.contains_key(id), "a removal is reported");
            assert_eq!(cache.rejections.vips(), rejected, "nothing counted");
        }
        Err(r) => {
            assert_eq!(
                cache.vips(),
                &before,
                "a rejected value ({r}) changed the VIPs"
            );
            assert!(!changed, "a rejected value ({r}) reported a change");
            assert_eq!(
                cache.rejections.vips(),
                rejected + 1,
                "the rejection ({r}) is counted once"
            );
        }
    }
    verdict.is_ok()
}

/// A VIP's owner, failover or member key through the registry cache (the
/// agents' path): what it passes on must be what verifies, and what does
/// not verify must count as absent (an owner key as bogus) and be counted.
fn coordination(keys: &Keys, secrets: &Secrets, value: &[u8], expect: Expect<'_>) -> bool {
    let mut cache = RegistryCache::new(keys.clone(), secrets.clone(), MAX_AGE);
    let entry = Entry {
        key: expect.key,
        value,
        lease: expect.lease,
        mod_revision: 3,
        create_revision: 3,
    };
    let change = cache.vip_key(entry, false, NOW);
    let verified = match keys.vip_key(expect.key) {
        Some(VipKey::Owner(_)) => {
            let opened = open_owner(secrets, expect.key, value, expect.lease, NOW);
            match (&change, &opened) {
                (Some(VipChange::Owner(_, Some(o))), Ok(v)) => assert_eq!(o, v),
                (Some(VipChange::BogusOwner { revision, .. }), Err(_)) => {
                    assert_eq!(*revision, 3, "the bogus key's revision");
                }
                other => panic!("owner key: {other:?}"),
            }
            opened.is_ok()
        }
        Some(VipKey::Failover(_)) => {
            let opened = open_failover(secrets, expect.key, value, expect.lease, NOW);
            match (&change, &opened) {
                (Some(VipChange::Failover(_, h)), Ok(v)) => assert_eq!(h, v),
                (None, Err(_)) => {}
                other => panic!("failover key: {other:?}"),
            }
            opened.is_ok()
        }
        Some(VipKey::Member { kind, .. }) => {
            let opened = open_member(secrets, expect.key, kind, value, expect.lease, NOW);
            match (&change, &opened) {
                (Some(VipChange::Member(m)), Ok(v)) => assert_eq!(m.value.as_ref(), Some(v)),
                (Some(VipChange::Member(m)), Err(_)) => assert_eq!(m.value, None),
                other => panic!("member key: {other:?}"),
            }
            opened.is_ok()
        }
        _ => unreachable!("only coordination keys come here"),
    };
    assert_eq!(
        cache.rejections.vips(),
        u64::from(!verified),
        "a key that does not verify is counted, once"
    );
    verified
}

/// The VIP the cache holds before each `segment_vip` input.
pub(crate) const KNOWN_VIP: &str = "198.18.0.99_32";

fn known_vip() -> VipRecord {
    VipRecord::new("198.18.0.99/32")
}

fn known_address() -> Option<std::net::IpAddr> {
    "198.18.0.99".parse().ok()
}

/// A VIP's address prints and parses back, and its id names one record key.
fn check_cidr(keys: &Keys, cidr: Cidr) {
    assert_eq!(cidr.to_string().parse::<Cidr>(), Ok(cidr));
    let id = cidr.id();
    assert_eq!(
        keys.vip_key(&keys.vip(&id)),
        Some(VipKey::Record(id.as_str())),
        "the id of {cidr} is not one key"
    );
}

/// `POST /ips` bodies: [`VipRecord::parse_request`] (what the handler
/// calls), then what `Vips::add` would write, read back as the agents do.
#[must_use]
pub fn api_body(data: &[u8]) -> bool {
    let Ok(valid) = VipRecord::parse_request(data) else {
        return false;
    };
    let record = valid.record.clone();
    let cidr = valid.cidr;
    let keys = Keys::new(PREFIX);
    check_cidr(&keys, cidr);
    let key = keys.vip(&cidr.id());
    let secrets = secrets();
    // As `Vips::add` writes it: with a generation.
    let generation = next_generation(None, NOW * 1_000_000);
    let value = match seal_definition(&secrets, &key, generation, NOW, &record) {
        Ok(value) => value,
        // Over MAX_RECORD_BYTES: the API refuses it (with 503, not 400) and
        // writes nothing. Inputs that large are past the fuzzer's max_len.
        Err(SealError::TooLarge { len, .. }) => {
            assert!(len > MAX_RECORD_BYTES);
            return true;
        }
        Err(e) => panic!("sealing an accepted VIP record: {e}"),
    };
    // What every agent does with the key's value.
    let read = open_vip(&secrets, &key, &value, 0, NOW)
        .unwrap_or_else(|r| panic!("agents refuse what the API accepted: {r}"))
        .live()
        .expect("a record, not a tombstone");
    assert!(
        same_vip(&read.record, &record),
        "agents read another record than was posted: {record:?} became {:?}",
        read.record
    );
    assert_eq!(read.cidr, valid.cidr);
    assert_eq!(read.checks, valid.checks);
    // The API answers with the record.
    serde_json::to_vec(&record).expect("an accepted record encodes");
    true
}
