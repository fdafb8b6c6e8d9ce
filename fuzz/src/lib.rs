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
use linkmesh::registry::record::{RECORD_VERSION, Record, SealError, canonical};
use linkmesh::registry::segment::validate_segment_name;
use linkmesh::registry::{
    Expect, HostRecord, Keys, Mark, Rejection, Secrets, SegmentSpec, Verified, open,
    open_definition, seal, seal_definition,
};
use linkmesh::registry::{VipKey, VipRecord};
use serde_json::value::RawValue;

mod seeds;
mod vip;

pub use seeds::seeds;
pub use vip::api_body;
use vip::vip;

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
/// The generation of the definitions the caches hold before each input.
pub const KNOWN_GENERATION: u64 = 1_000;

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
    let sig = secrets.sign(&canonical(kind, key, lease, issued_at, 0, body));
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

/// Two VIP records are the same. (Their `ports` were free JSON once, whose
/// floats serde_json may read back an ulp off; they are typed now, so a
/// record reads back exactly as written.)
#[must_use]
pub fn same_vip(a: &VipRecord, b: &VipRecord) -> bool {
    a == b
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
        heartbeat_nonce: None,
        overlay: linkmesh::registry::host::Overlay::default(),
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
        create_revision: mod_revision,
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
                // `blue` is known at a generation, which a body signed
                // here (with none) cannot pass: a replay, refused.
                name != "blue"
                    && validate_segment_name(name).is_ok()
                    && serde_json::from_slice::<SegmentSpec>(body)
                        .is_ok_and(|s| s.validate().is_ok())
            } else {
                // The same for the known VIP.
                name != vip::KNOWN_VIP
                    && matches!(keys.vip_key(&key), Some(VipKey::Record(_)))
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
    let known = seal_definition(secrets, &blue, KNOWN_GENERATION, NOW, &known_segment())
        .expect("sealing blue");
    let put = Entry {
        key: &blue,
        value: &known,
        lease: 0,
        mod_revision: 1,
        create_revision: 1,
    };
    assert!(cache.put(put, NOW), "blue is defined");

    let opened = open::<SegmentSpec>(secrets, value, expect);
    let definition = open_definition::<SegmentSpec>(secrets, expect.key, value, expect.lease, NOW);
    // `Some(spec)`, or `None` for a tombstone.
    let verdict = match keys.segment_of(expect.key) {
        Some(segment) => definition.and_then(|d| {
            newer_than_known(expect.key == blue, d.mark())?;
            Ok(d.try_map(|spec| {
                validate_segment_name(segment).map_err(Rejection::Invalid)?;
                spec.validate().map_err(Rejection::Invalid)?;
                Ok(spec)
            })?
            .live())
        }),
        None => Err(Rejection::Malformed("not <prefix>/segments/<name>".into())),
    };
    let entry = Entry {
        key: expect.key,
        value,
        lease: expect.lease,
        mod_revision: 2,
        create_revision: 2,
    };
    let shown = |c: &RegistryCache| Some(c.view(NOW).segments.get(name).cloned());
    check_put(&mut cache, entry, NOW, shown, &verdict);
    if let Ok(v) = &opened {
        reverify(secrets, expect, v, PartialEq::eq);
    }
    if let Ok(Some(spec)) = &verdict {
        // What `segment ls --json` prints reads back as the same definition.
        let json = serde_json::to_string(spec).expect("a segment encodes");
        let back: SegmentSpec = serde_json::from_str(&json).expect("a segment decodes");
        assert_eq!(&back, spec, "{json}");
    }
    verdict.is_ok()
}

/// What the agents decide about a definition's generation, made again: at
/// the key of a known definition, only that very write or a newer
/// generation passes; elsewhere, anything.
fn newer_than_known(known_key: bool, mark: Mark) -> Result<(), Rejection> {
    let known = Mark {
        generation: KNOWN_GENERATION,
        issued_at: NOW,
    };
    if known_key && mark != known && mark.generation <= KNOWN_GENERATION {
        return Err(Rejection::Superseded {
            generation: mark.generation,
            newest: KNOWN_GENERATION,
        });
    }
    Ok(())
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
    fn port_maps_read_back_exactly_and_floats_are_no_ports() {
        let body = br#"{"address":"198.18.0.1/32","ports":[-5.791054108416719e-286]}"#;
        assert!(!api_body(body), "a float is no port map");
        let body = br#"{"address":"198.18.0.1/32","ports":[{"src":80,"proto":"tcp","dest":8080}]}"#;
        assert!(api_body(body));
        let a = VipRecord::parse_request(body).expect("valid").record;
        let written = serde_json::to_vec(&a).expect("encode");
        let b: VipRecord = serde_json::from_slice(&written).expect("decode");
        assert!(same_vip(&a, &b));
        let mut c = b;
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
