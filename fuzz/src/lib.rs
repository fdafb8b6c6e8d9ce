//! The fuzz targets' bodies, as plain functions: the targets in
//! `fuzz_targets/` call them, and so do the seed-corpus writer
//! (`examples/write_corpus.rs`) and the unit tests below, so a seed that is
//! meant to be accepted is checked to be.
//!
//! `record` and `segment_vip` take a small frame, so seeds are written from
//! real encodings and the fuzzer can still mutate every part:
//!
//! ```text
//! [mode: 1 byte] NAME 0x00 VALUE
//! ```
//!
//! NAME is the last part of the etcd key (`<prefix>/hosts/NAME`, ...); VALUE
//! is either the etcd value as stored, or a record body that the target
//! wraps in an envelope signed with the test secret for that key, so the
//! fuzzer reaches the body's decoding and validation behind the signature.
//! The mode's bits pick which (see [`record`] and [`segment_vip`]).
//!
//! Each function returns whether the input was accepted, and panics when a
//! property fails: a rejected value replaced the last verified one, a
//! verified record does not re-encode and verify again, a correctly signed
//! valid record was refused, a record the API accepts would be refused by
//! the agents that read it.

use std::fmt::Debug;
use std::time::Duration;

use linkmesh::registry::cache::{Entry, RegistryCache};
use linkmesh::registry::record::{MAX_RECORD_BYTES, RECORD_VERSION, Record, SealError, canonical};
use linkmesh::registry::segment::validate_segment_name;
use linkmesh::registry::{Cidr, VipKey, VipRecord, open_vip};
use linkmesh::registry::{
    Expect, HostRecord, Keys, Rejection, Secrets, SegmentSpec, Verified, open, seal,
};
use serde_json::value::RawValue;

/// The secret every target signs and verifies with.
pub const SECRET: &str = "fuzz-test-secret-0123456789";
/// Another secret: records must not verify with it.
pub const OTHER_SECRET: &str = "not-the-fuzz-secret-9876543210";
pub const PREFIX: &str = "/lm";
/// The targets' clock (Unix seconds).
pub const NOW: u64 = 1_800_000_000;
/// `--max-record-age` for host records.
pub const MAX_AGE: Duration = Duration::from_hours(1);
/// The lease a host record is signed for and (by default) stored on.
pub const LEASE: i64 = 0x0758_7862;

/// Mode bit: VALUE is a body to sign, not a stored value.
pub const SIGN_BODY: u8 = 1;
/// `record` mode bit: stored on another lease than it is signed for.
pub const OTHER_LEASE: u8 = 2;
/// `record` mode bit: read two hours later (past the maximum age).
pub const LATER: u8 = 4;
/// `segment_vip` mode bit: a VIP record rather than a segment.
pub const VIP: u8 = 2;
/// `segment_vip` mode bit: stored on a lease (definitions are signed for none).
pub const ON_LEASE: u8 = 4;

#[must_use]
pub fn secrets() -> Secrets {
    Secrets::from_text(SECRET).expect("the test secret is valid")
}

fn other_secrets() -> Secrets {
    Secrets::from_text(OTHER_SECRET).expect("the other test secret is valid")
}

/// Splits `[mode] NAME 0x00 VALUE`; `None` when the name is not UTF-8 (the
/// agent skips such keys before looking at them).
fn frame(data: &[u8]) -> Option<(u8, &str, &[u8])> {
    let (&mode, rest) = data.split_first()?;
    let (name, value) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    Some((mode, std::str::from_utf8(name).ok()?, value))
}

/// The frame [`record`] and [`segment_vip`] read.
#[must_use]
pub fn encode(mode: u8, name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + name.len() + value.len());
    out.push(mode);
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.extend_from_slice(value);
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// An envelope around `body`'s exact bytes (whatever they are), signed for
/// `key`, `lease` and `issued_at`: what `seal` writes when `body` is the
/// JSON of a record.
#[must_use]
pub fn envelope(
    secrets: &Secrets,
    kind: &str,
    key: &str,
    lease: i64,
    issued_at: u64,
    body: &[u8],
) -> Vec<u8> {
    let sig = secrets.sign(&canonical(kind, key, lease, issued_at, body));
    let quoted = |s: &str| serde_json::to_string(s).expect("a string encodes");
    let mut out = format!(
        "{{\"v\":{RECORD_VERSION},\"kind\":{},\"key\":{},\"lease\":{lease},\"issued_at\":{issued_at},\"body\":",
        quoted(kind),
        quoted(key)
    )
    .into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(format!(",\"sig\":\"{}\"}}", hex(&sig)).as_bytes());
    out
}

/// Whether `body` is exactly one JSON value, with nothing around it: then
/// the envelope's body is these bytes and the signature over them holds.
fn exact_json(body: &[u8]) -> bool {
    serde_json::from_slice::<&RawValue>(body).is_ok_and(|raw| raw.get().as_bytes() == body)
}

/// Whether two JSON values are the same, floats up to 2 ulps: serde_json
/// (without its `float_roundtrip` feature, which linkmesh does not enable)
/// may read back a float it wrote one or two ulps off
/// (`-5.791054108416719e-286` reads as ...718e-286, written and read again
/// as ...717e-286). Only the unused `ports` of a VIP can hold one.
#[must_use]
pub fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            let (Some(x), Some(y)) = (x.as_f64(), y.as_f64()) else {
                return false;
            };
            x.is_sign_negative() == y.is_sign_negative() && x.to_bits().abs_diff(y.to_bits()) <= 2
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Two VIP records are the same but for [`same_json`] floats in `ports`.
#[must_use]
pub fn same_vip(a: &VipRecord, b: &VipRecord) -> bool {
    let strip = |r: &VipRecord| VipRecord {
        ports: None,
        ..r.clone()
    };
    strip(a) == strip(b)
        && match (&a.ports, &b.ports) {
            (Some(x), Some(y)) => same_json(x, y),
            (x, y) => x == y,
        }
}

/// A verified record re-encodes, verifies again to the same record (by
/// `same`), and is bound to its secret, key and lease.
fn reverify<T>(
    secrets: &Secrets,
    expect: Expect<'_>,
    verified: &Verified<T>,
    same: impl Fn(&T, &T) -> bool,
) where
    T: Record + Debug,
{
    let resealed = match seal(
        secrets,
        expect.key,
        verified.lease,
        verified.issued_at,
        &verified.body,
    ) {
        Ok(bytes) => bytes,
        // Re-encoding may lengthen a record (escapes written differently,
        // short MACs padded); at the size limit that is refused, not a bug.
        Err(SealError::TooLarge { .. }) => return,
        Err(e) => panic!("re-encoding a verified {} record: {e}", T::KIND),
    };
    let again = open::<T>(secrets, &resealed, expect)
        .unwrap_or_else(|r| panic!("a re-encoded verified {} record: {r}", T::KIND));
    assert!(
        again.issued_at == verified.issued_at
            && again.lease == verified.lease
            && same(&again.body, &verified.body),
        "re-encoding changed the record: {verified:?} became {again:?}"
    );
    assert_eq!(
        open::<T>(&other_secrets(), &resealed, expect).err(),
        Some(Rejection::BadSignature),
        "verified with a secret that did not sign it"
    );
    let elsewhere = format!("{}/elsewhere", expect.key);
    assert!(
        matches!(
            open::<T>(
                secrets,
                &resealed,
                Expect {
                    key: &elsewhere,
                    ..expect
                }
            ),
            Err(Rejection::WrongKey { .. })
        ),
        "used under another key"
    );
    assert!(
        matches!(
            open::<T>(
                secrets,
                &resealed,
                Expect {
                    lease: expect.lease ^ 1,
                    ..expect
                }
            ),
            Err(Rejection::WrongLease { .. })
        ),
        "used on another lease"
    );
}

/// A valid host record for `name`; `record` registers h1's before each
/// input, to see that nothing rejected replaces it.
#[must_use]
pub fn known_host(name: &str) -> HostRecord {
    HostRecord {
        hostname: name.to_owned(),
        address: "198.18.0.1".parse().expect("an address"),
        segments: [(
            "blue".to_owned(),
            "02:00:00:00:00:01".parse().expect("a MAC"),
        )]
        .into(),
        agent_version: "0.1.0".to_owned(),
    }
}

/// The segment `blue` defined before each input.
#[must_use]
pub fn known_segment() -> SegmentSpec {
    SegmentSpec::new(100)
}

/// One value put into a cache that already holds a verified record, checked
/// against the same decision made again from `verdict`: accepted values are
/// what the view shows, rejected ones change nothing but the count.
fn check_put<T: PartialEq + Debug>(
    cache: &mut RegistryCache,
    entry: Entry<'_>,
    now: u64,
    shown: impl Fn(&RegistryCache) -> Option<T>,
    verdict: &Result<T, Rejection>,
) {
    let before = shown(cache);
    let rejected = cache.rejections.total();
    let changed = cache.put(entry, now);
    let after = shown(cache);
    match verdict {
        Ok(body) => {
            assert_eq!(
                after.as_ref(),
                Some(body),
                "the view shows the accepted record"
            );
            // (`before` is the view: an old record past its age is not in it.)
            if changed {
                assert_ne!(before.as_ref(), Some(body), "an unchanged record reported");
            }
            if before.as_ref().is_some_and(|b| b != body) {
                assert!(changed, "a replaced record not reported");
            }
            assert_eq!(cache.rejections.total(), rejected, "nothing counted");
        }
        Err(r) => {
            assert_eq!(after, before, "a rejected value ({r}) replaced the record");
            assert!(!changed, "a rejected value ({r}) changed the view");
            assert_eq!(
                cache.rejections.total(),
                rejected + 1,
                "the rejection ({r}) is counted once"
            );
        }
    }
}

/// Host records. Mode bits: [`SIGN_BODY`] (VALUE is a host body, signed
/// here for `<prefix>/hosts/NAME` and [`LEASE`]), [`OTHER_LEASE`] (stored
/// on another lease), [`LATER`] (read past the maximum age).
#[must_use]
pub fn record(data: &[u8]) -> bool {
    let Some((mode, name, value)) = frame(data) else {
        return false;
    };
    let keys = Keys::new(PREFIX);
    let secrets = secrets();
    let key = keys.host(name);
    let lease = if mode & OTHER_LEASE == 0 {
        LEASE
    } else {
        LEASE + 1
    };
    let now = if mode & LATER == 0 { NOW } else { NOW + 7200 };
    let signed_body = mode & SIGN_BODY != 0;
    let body = value;
    let value = if signed_body {
        envelope(&secrets, HostRecord::KIND, &key, LEASE, NOW - 10, body)
    } else {
        body.to_vec()
    };

    let mut cache = RegistryCache::new(keys.clone(), secrets.clone(), MAX_AGE);
    let h1 = keys.host("h1");
    let known = seal(&secrets, &h1, LEASE, NOW - 10, &known_host("h1")).expect("sealing h1");
    let entry = |key, value, lease, mod_revision| Entry {
        key,
        value,
        lease,
        mod_revision,
    };
    assert!(cache.put(entry(&h1, &known, LEASE, 1), NOW), "h1 registers");

    let expect = Expect {
        key: &key,
        lease,
        now,
        max_age: Some(MAX_AGE),
    };
    // The cache's decision, made again from its parts.
    let opened = open::<HostRecord>(&secrets, &value, expect);
    let verdict = match keys.host_of(&key) {
        Some(host) => opened.clone().and_then(|v| {
            v.body.validate(host).map_err(Rejection::Invalid)?;
            Ok(v)
        }),
        None => Err(Rejection::Malformed("not <prefix>/hosts/<name>".into())),
    };
    let shown = |c: &RegistryCache| c.view(now).hosts.get(name).cloned();
    check_put(
        &mut cache,
        entry(&key, &value, lease, 2),
        now,
        shown,
        &verdict.clone().map(|v| v.body),
    );

    if let Ok(v) = &opened {
        reverify(&secrets, expect, v, PartialEq::eq);
    }
    if signed_body {
        // Signed here, so never a bad signature once the body is one value.
        let well_formed = exact_json(body);
        if well_formed && let Err(r) = &opened {
            assert!(
                !matches!(r, Rejection::BadSignature | Rejection::Malformed(_)),
                "a well-formed, correctly signed envelope was refused: {r}"
            );
        }
        let valid = well_formed
            && serde_json::from_slice::<HostRecord>(body)
                .is_ok_and(|h| keys.host_of(&key).is_some_and(|k| h.validate(k).is_ok()));
        let expired_or_moved = mode & (OTHER_LEASE | LATER) != 0;
        if valid && !expired_or_moved {
            assert!(
                verdict.is_ok(),
                "a correctly signed, valid host record was refused: {:?}",
                verdict.err()
            );
        }
        if valid && mode & OTHER_LEASE != 0 {
            assert!(
                matches!(verdict, Err(Rejection::WrongLease { .. })),
                "a record moved to another lease: {verdict:?}"
            );
        }
    }
    verdict.is_ok()
}

/// Segment definitions and VIP records. Mode bits: [`SIGN_BODY`] (VALUE is
/// a body, signed here for its key and no lease), [`VIP`] (a VIP record
/// under `<prefix>/vips/NAME`, else a segment under
/// `<prefix>/segments/NAME`), [`ON_LEASE`] (stored on a lease).
#[must_use]
pub fn segment_vip(data: &[u8]) -> bool {
    let Some((mode, name, value)) = frame(data) else {
        return false;
    };
    let keys = Keys::new(PREFIX);
    let secrets = secrets();
    let lease = if mode & ON_LEASE == 0 { 0 } else { LEASE };
    let signed_body = mode & SIGN_BODY != 0;
    let kind = if mode & VIP == 0 {
        SegmentSpec::KIND
    } else {
        VipRecord::KIND
    };
    let key = if mode & VIP == 0 {
        keys.segment(name)
    } else {
        keys.vip(name)
    };
    let body = value;
    let value = if signed_body {
        envelope(&secrets, kind, &key, 0, NOW, body)
    } else {
        body.to_vec()
    };
    let expect = Expect {
        key: &key,
        lease,
        now: NOW,
        max_age: None,
    };
    let accepted = if mode & VIP == 0 {
        segment(&keys, &secrets, name, &value, expect)
    } else {
        vip(&keys, &secrets, &value, expect)
    };
    if signed_body && lease == 0 {
        let valid = exact_json(body)
            && if mode & VIP == 0 {
                validate_segment_name(name).is_ok()
                    && serde_json::from_slice::<SegmentSpec>(body)
                        .is_ok_and(|s| s.validate().is_ok())
            } else {
                matches!(keys.vip_key(&key), Some(VipKey::Record(_)))
                    && VipRecord::parse_request(body).is_ok()
            };
        if valid {
            assert!(
                accepted,
                "a correctly signed, valid {kind} record was refused"
            );
        }
    }
    accepted
}

/// A segment definition through the registry cache (which holds `blue`).
fn segment(keys: &Keys, secrets: &Secrets, name: &str, value: &[u8], expect: Expect<'_>) -> bool {
    let mut cache = RegistryCache::new(keys.clone(), secrets.clone(), MAX_AGE);
    let blue = keys.segment("blue");
    let known = seal(secrets, &blue, 0, NOW, &known_segment()).expect("sealing blue");
    let put = Entry {
        key: &blue,
        value: &known,
        lease: 0,
        mod_revision: 1,
    };
    assert!(cache.put(put, NOW), "blue is defined");

    let opened = open::<SegmentSpec>(secrets, value, expect);
    let verdict = match keys.segment_of(expect.key) {
        Some(segment) => opened.clone().and_then(|v| {
            validate_segment_name(segment).map_err(Rejection::Invalid)?;
            v.body.validate().map_err(Rejection::Invalid)?;
            Ok(v.body)
        }),
        None => Err(Rejection::Malformed("not <prefix>/segments/<name>".into())),
    };
    let entry = Entry {
        key: expect.key,
        value,
        lease: expect.lease,
        mod_revision: 2,
    };
    let shown = |c: &RegistryCache| c.view(NOW).segments.get(name).cloned();
    check_put(&mut cache, entry, NOW, shown, &verdict);
    if let Ok(v) = &opened {
        reverify(secrets, expect, v, PartialEq::eq);
    }
    if let Ok(spec) = &verdict {
        // What `segment ls --json` prints reads back as the same definition.
        let json = serde_json::to_string(spec).expect("a segment encodes");
        let back: SegmentSpec = serde_json::from_str(&json).expect("a segment decodes");
        assert_eq!(&back, spec, "{json}");
    }
    verdict.is_ok()
}

/// A VIP record as the agents read it: through the registry cache (which
/// holds a known VIP already), whose verdict must be [`open_vip`]'s; keys
/// below a VIP are not records and must name their VIP back.
fn vip(keys: &Keys, secrets: &Secrets, value: &[u8], expect: Expect<'_>) -> bool {
    let key = expect.key;
    let id = match keys.vip_key(key) {
        None => return false,
        Some(VipKey::Owner(id)) => {
            assert_eq!(keys.vip_owner(id), key);
            return false;
        }
        Some(VipKey::Failover(id)) => {
            assert_eq!(keys.vip_failover(id), key);
            return false;
        }
        Some(VipKey::Member { id, kind, host }) => {
            assert_eq!(format!("{}{id}/{kind}/{host}", keys.vips()), key);
            return false;
        }
        Some(VipKey::Record(id)) => {
            assert_eq!(keys.vip(id), key);
            id
        }
    };
    let mut cache = RegistryCache::new(keys.clone(), secrets.clone(), MAX_AGE);
    let known = keys.vip(KNOWN_VIP);
    let known_value = seal(secrets, &known, 0, NOW, &known_vip()).expect("sealing the known VIP");
    let put = |key, value, lease, mod_revision| Entry {
        key,
        value,
        lease,
        mod_revision,
    };
    assert!(
        cache.put(put(&known, &known_value, 0, 1), NOW),
        "the known VIP is defined"
    );
    let before = cache.vips().clone();
    let rejected = cache.rejections.vips();
    let verdict = open_vip(secrets, key, value, expect.lease, NOW);
    let changed = cache.put(put(key, value, expect.lease, 2), NOW);
    match &verdict {
        Ok(valid) => {
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

/// The VIP the cache holds before each `segment_vip` input.
const KNOWN_VIP: &str = "198.18.0.99_32";

fn known_vip() -> VipRecord {
    VipRecord::new("198.18.0.99/32")
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
    let value = match seal(&secrets, &key, 0, NOW, &record) {
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
        .unwrap_or_else(|r| panic!("agents refuse what the API accepted: {r}"));
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

/// The seed corpus: `(target, file name, input)`. File names start with
/// `accept-` or `reject-`, and the unit test checks that they are.
#[must_use]
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    record_seeds(&mut out);
    record_body_seeds(&mut out);
    segment_seeds(&mut out);
    vip_seeds(&mut out);
    api_body_seeds(&mut out);
    out
}

type Seeds = Vec<(&'static str, String, Vec<u8>)>;

fn record_seeds(out: &mut Seeds) {
    let keys = Keys::new(PREFIX);
    let s = secrets();
    let mut add = |name: &str, input: Vec<u8>| out.push(("record", name.to_owned(), input));
    let h2 = HostRecord {
        hostname: "h2".into(),
        address: "198.18.0.2".parse().expect("ip"),
        segments: [
            ("blue".to_owned(), "02:00:00:00:00:02".parse().expect("mac")),
            ("red".to_owned(), "02:00:00:00:01:02".parse().expect("mac")),
        ]
        .into(),
        agent_version: "0.1.0".into(),
    };
    let sealed = |host: &HostRecord, key: &str, issued: u64| {
        seal(&s, key, LEASE, issued, host).expect("seal")
    };
    let h2_value = sealed(&h2, &keys.host("h2"), NOW - 10);
    add("accept-h2-signed", encode(0, "h2", &h2_value));
    add(
        "accept-h1-re-signed",
        encode(
            0,
            "h1",
            &sealed(&known_host("h1"), &keys.host("h1"), NOW - 60),
        ),
    );
    add(
        "reject-h2-other-lease",
        encode(OTHER_LEASE, "h2", &h2_value),
    );
    add("reject-h2-expired", encode(LATER, "h2", &h2_value));
    add("reject-h2-copied-to-h9", encode(0, "h9", &h2_value));
    add(
        "reject-h1-future",
        encode(
            0,
            "h1",
            &sealed(&known_host("h1"), &keys.host("h1"), NOW + 600),
        ),
    );
    let forged = seal(
        &other_secrets(),
        &keys.host("h1"),
        LEASE,
        NOW,
        &known_host("h1"),
    )
    .expect("seal");
    add("reject-h1-forged", encode(0, "h1", &forged));
    let mut flipped = sealed(&known_host("h1"), &keys.host("h1"), NOW);
    if let Some(b) = flipped.iter_mut().find(|b| **b == b'8') {
        *b = b'9';
    }
    add("reject-h1-tampered", encode(0, "h1", &flipped));
    add(
        "reject-h1-truncated",
        encode(0, "h1", &h2_value[..h2_value.len() / 2]),
    );
    add("reject-h1-garbage", encode(0, "h1", b"\xff\x00\x13"));
    add("reject-h1-empty-object", encode(0, "h1", b"{}"));
    add("reject-slash-name", encode(0, "a/b", b"{}"));
}

/// Host bodies that `record` signs itself.
fn record_body_seeds(out: &mut Seeds) {
    let mut add = |name: &str, input: Vec<u8>| out.push(("record", name.to_owned(), input));
    let body = |h: &HostRecord| serde_json::to_vec(h).expect("encode");
    let h3 = HostRecord {
        hostname: "h3".into(),
        address: "fd00::3".parse().expect("ip"),
        segments: [(
            "green".to_owned(),
            "02:aa:bb:cc:dd:03".parse().expect("mac"),
        )]
        .into(),
        agent_version: "0.2.0-dev".into(),
    };
    add("accept-h3-body-ipv6", encode(SIGN_BODY, "h3", &body(&h3)));
    add(
        "accept-h1-body",
        encode(SIGN_BODY, "h1", &body(&known_host("h1"))),
    );
    add(
        "reject-h3-body-on-other-lease",
        encode(SIGN_BODY | OTHER_LEASE, "h3", &body(&h3)),
    );
    add(
        "reject-h3-body-under-h4",
        encode(SIGN_BODY, "h4", &body(&h3)),
    );
    add(
        "reject-body-unspecified-address",
        encode(
            SIGN_BODY,
            "h5",
            br#"{"hostname":"h5","address":"0.0.0.0","segments":{},"agent_version":"x"}"#,
        ),
    );
    add(
        "reject-body-bad-segment-and-mac",
        encode(
            SIGN_BODY,
            "h6",
            br#"{"hostname":"h6","address":"198.18.0.6","segments":{"a/b":"zz:00"},"agent_version":"x"}"#,
        ),
    );
    add(
        "reject-body-not-json",
        encode(SIGN_BODY, "h7", b"{\"hostname\":"),
    );
}

fn segment_seeds(out: &mut Seeds) {
    let keys = Keys::new(PREFIX);
    let s = secrets();
    let mut add = |name: &str, input: Vec<u8>| out.push(("segment_vip", name.to_owned(), input));
    let red = SegmentSpec {
        vni: 200,
        port: 4790,
        learning: false,
        mtu: Some(1400),
        netns: Some("web".into()),
    };
    let red_value = seal(&s, &keys.segment("red"), 0, NOW, &red).expect("seal");
    add("accept-segment-red", encode(0, "red", &red_value));
    add(
        "accept-segment-blue-changed",
        encode(
            0,
            "blue",
            &seal(&s, &keys.segment("blue"), 0, NOW, &SegmentSpec::new(101)).expect("seal"),
        ),
    );
    add(
        "reject-segment-on-a-lease",
        encode(ON_LEASE, "red", &red_value),
    );
    add("reject-segment-copied", encode(0, "blue", &red_value));
    add("reject-segment-garbage", encode(0, "blue", b"not json"));
    add(
        "accept-segment-body",
        encode(
            SIGN_BODY,
            "green",
            br#"{"vni":300,"port":4789,"learning":true}"#,
        ),
    );
    add(
        "reject-segment-body-vni-0",
        encode(SIGN_BODY, "green", br#"{"vni":0}"#),
    );
    add(
        "reject-segment-body-unknown-field",
        encode(SIGN_BODY, "green", br#"{"vni":5,"colour":"green"}"#),
    );
    add(
        "reject-segment-body-long-name",
        encode(SIGN_BODY, "sixteen-chars-16", br#"{"vni":5}"#),
    );
    add(
        "reject-segment-body-bad-netns",
        encode(SIGN_BODY, "green", br#"{"vni":5,"mtu":9000,"netns":".."}"#),
    );
}

fn vip_seeds(out: &mut Seeds) {
    let keys = Keys::new(PREFIX);
    let s = secrets();
    let mut add = |name: &str, input: Vec<u8>| out.push(("segment_vip", name.to_owned(), input));

    let id = "198.18.0.100_24";
    let full = VipRecord {
        address: "198.18.0.100/24".into(),
        interface: Some("eth0".into()),
        checks: vec![
            "tcp:127.0.0.1:80".into(),
            "http://127.0.0.1:8080/health".into(),
            "exec:/bin/true".into(),
        ],
        excluded_nodes: vec!["h3".into()],
        priority: Some("h1".into()),
        ports: Some(serde_json::json!([{"from": 80, "to": 8080}])),
    };
    let full_value = seal(&s, &keys.vip(id), 0, NOW, &full).expect("seal");
    add("accept-vip-full", encode(VIP, id, &full_value));
    add(
        "reject-vip-on-a-lease",
        encode(VIP | ON_LEASE, id, &full_value),
    );
    add(
        "reject-vip-copied",
        encode(VIP, "198.18.0.101_24", &full_value),
    );
    add(
        "reject-vip-owner-key",
        encode(VIP, &format!("{id}/owner"), b"h1"),
    );
    add(
        "reject-vip-state-key",
        encode(VIP, &format!("{id}/state/h2"), b"STANDBY"),
    );
    add(
        "accept-vip-body-ipv6",
        encode(
            VIP | SIGN_BODY,
            "fd00::100_64",
            br#"{"address":"fd00::100/64","checks":["tcp:[fd00::1]:443"]}"#,
        ),
    );
    add(
        "reject-vip-body-https",
        encode(
            VIP | SIGN_BODY,
            id,
            br#"{"address":"198.18.0.100/24","checks":["https://x/"]}"#,
        ),
    );
    add(
        "reject-vip-body-loopback",
        encode(VIP | SIGN_BODY, id, br#"{"address":"127.0.0.1/8"}"#),
    );
}

fn api_body_seeds(out: &mut Seeds) {
    let mut add = |name: &str, body: &[u8]| out.push(("api_body", name.to_owned(), body.to_vec()));
    add("accept-minimal", br#"{"address":"198.18.0.100/24"}"#);
    add(
        "accept-full",
        br#"{"address":"198.18.0.100/24","interface":"eth0","checks":["tcp:127.0.0.1:80","http://127.0.0.1/","exec:/bin/true"],"excluded_nodes":["backup-3"],"priority":"web-1","ports":[{"from":80,"to":8080}]}"#,
    );
    add(
        "accept-ipv6",
        br#"{"address":"fd00::100/128","checks":["tcp:[fd00::1]:22"]}"#,
    );
    // serde_json reads this float back an ulp off once written (see
    // `same_json`).
    add(
        "accept-float-in-ports",
        br#"{"address":"198.18.0.1/32","ports":{"weight":-5.791054108416719e-286}}"#,
    );
    add("reject-no-prefix", br#"{"address":"198.18.0.100"}"#);
    add("reject-prefix-33", br#"{"address":"198.18.0.1/33"}"#);
    add(
        "reject-unknown-field",
        br#"{"address":"198.18.0.1/32","colour":1}"#,
    );
    add(
        "reject-https-check",
        br#"{"address":"198.18.0.1/32","checks":["https://x/"]}"#,
    );
    add(
        "reject-bad-host",
        br#"{"address":"198.18.0.1/32","excluded_nodes":["a b"]}"#,
    );
    add(
        "reject-bad-interface",
        br#"{"address":"198.18.0.1/32","interface":"a/b"}"#,
    );
    add("reject-not-json", b"address=198.18.0.1/32");
    add("reject-empty", b"");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_accepted_or_rejected_as_named() {
        for (target, name, input) in seeds() {
            let accepted = match target {
                "record" => record(&input),
                "segment_vip" => segment_vip(&input),
                "api_body" => api_body(&input),
                other => panic!("no target {other}"),
            };
            let want = name.starts_with("accept-");
            assert!(
                want || name.starts_with("reject-"),
                "{target}/{name}: name it accept-* or reject-*"
            );
            assert_eq!(accepted, want, "{target}/{name}");
        }
    }

    #[test]
    fn floats_in_ports_may_move_by_an_ulp_and_nothing_else_may() {
        let body = br#"{"address":"198.18.0.1/32","ports":[-5.791054108416719e-286]}"#;
        assert!(api_body(body), "accepted despite the float drift");
        let a = VipRecord::parse_request(body).expect("valid").record;
        let written = serde_json::to_vec(&a).expect("encode");
        let b: VipRecord = serde_json::from_slice(&written).expect("decode");
        assert!(same_vip(&a, &b));
        let mut c = b.clone();
        c.ports = Some(serde_json::json!([-5.7e-286]));
        assert!(!same_vip(&a, &c), "a different number");
        c.ports = Some(serde_json::json!(["-5.791054108416719e-286"]));
        assert!(!same_vip(&a, &c), "a string");
        c = b;
        c.priority = Some("h1".into());
        assert!(!same_vip(&a, &c), "another field");
    }

    #[test]
    fn frames_split_at_the_first_nul() {
        assert_eq!(frame(b""), None);
        assert_eq!(frame(b"\x01h1"), Some((1, "h1", &b""[..])));
        assert_eq!(frame(b"\x01h1\0a\0b"), Some((1, "h1", &b"a\0b"[..])));
        assert_eq!(frame(b"\x00\xff\0x"), None, "not UTF-8");
        assert_eq!(frame(&encode(3, "n", b"v")), Some((3, "n", &b"v"[..])));
    }

    #[test]
    fn envelopes_are_what_seal_writes() {
        let s = secrets();
        let key = "/lm/segments/a\"b";
        let spec = SegmentSpec::new(7);
        let body = serde_json::to_vec(&spec).expect("encode");
        let sealed = seal(&s, key, 0, NOW, &spec).expect("seal");
        assert_eq!(envelope(&s, SegmentSpec::KIND, key, 0, NOW, &body), sealed);
    }
}
