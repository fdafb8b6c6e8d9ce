//! Signed records: the envelope every linkmesh value in etcd is stored in.
//!
//! ```json
//! {"v":1,"kind":"host","key":"/linkmesh/hosts/h1","lease":7587862,
//!  "issued_at":1795000000,"body":{...},"sig":"<64 hex digits>"}
//! ```
//!
//! The signature is HMAC-SHA256 over a canonical encoding of the version,
//! kind, etcd key, lease id, issue time and the body's exact bytes (each
//! length-prefixed, see [`canonical`]). So a signature cannot be moved to
//! another key, replayed under another lease, or replayed after the maximum
//! record age; and since the body's bytes are signed as stored, fields this
//! version does not know are still covered by the signature.
//!
//! Admin-written definitions (segments, floating IPs) carry a signed
//! `generation` too (see [`super::generation`]); records without one (hosts,
//! and definitions written before generations) encode and sign as before.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::secret::{SIGNATURE_LEN, Secrets};

/// The envelope format version this agent writes and accepts.
pub const RECORD_VERSION: u32 = 1;
/// Records claiming to be issued further in the future than this are
/// rejected (clock skew between hosts is tolerated up to this bound).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_mins(5);
/// A bound on any value we parse: larger values are rejected unread.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// A record body: its kind names it in the envelope and the signature.
pub trait Record: Serialize + DeserializeOwned {
    const KIND: &'static str;
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    v: u32,
    kind: String,
    key: String,
    lease: i64,
    issued_at: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    generation: u64,
    #[serde(borrow)]
    body: &'a RawValue,
    sig: String,
}

/// Why a record was not used. `reason()` is the metric label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("too large: {0} bytes (limit {MAX_RECORD_BYTES})")]
    TooLarge(usize),
    #[error("unsupported record version {0} (this agent reads {RECORD_VERSION})")]
    UnsupportedVersion(u32),
    #[error("a {found} record where a {expected} record belongs")]
    WrongKind {
        expected: &'static str,
        found: String,
    },
    #[error("bad signature")]
    BadSignature,
    #[error("signed for key {claimed}, stored under another key (replayed)")]
    WrongKey { claimed: String },
    #[error("signed for lease {claimed:x}, attached to lease {actual:x} (replayed)")]
    WrongLease { claimed: i64, actual: i64 },
    #[error("issued {age_secs} s ago, older than the maximum record age")]
    Expired { age_secs: u64 },
    #[error("issued {ahead_secs} s in the future")]
    FutureDated { ahead_secs: u64 },
    #[error("generation {generation} is not newer than {newest}, seen already (replayed)")]
    Superseded { generation: u64, newest: u64 },
    #[error("invalid content: {0}")]
    Invalid(super::invalid::Invalid),
}

impl Rejection {
    /// A short, stable label for counting rejections.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) | Self::TooLarge(_) | Self::UnsupportedVersion(_) => "malformed",
            Self::WrongKind { .. } | Self::Invalid(_) => "invalid",
            Self::BadSignature => "bad_signature",
            Self::WrongKey { .. } | Self::WrongLease { .. } | Self::Superseded { .. } => "replayed",
            Self::Expired { .. } | Self::FutureDated { .. } => "expired",
        }
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The bytes that are signed, each field length-prefixed so no two
/// different envelopes encode the same; the generation last, and only when
/// there is one (so records without one sign as they always did).
#[must_use]
pub fn canonical(
    kind: &str,
    key: &str,
    lease: i64,
    issued_at: u64,
    generation: u64,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + key.len() + body.len());
    let mut field = |bytes: &[u8]| {
        // Lengths are bounded by MAX_RECORD_BYTES on the reading side; a
        // writer's oversized body is refused before it is signed.
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(bytes);
    };
    field(b"linkmesh-record");
    field(&RECORD_VERSION.to_be_bytes());
    field(kind.as_bytes());
    field(key.as_bytes());
    field(&lease.to_be_bytes());
    field(&issued_at.to_be_bytes());
    field(body);
    if generation != 0 {
        field(&generation.to_be_bytes());
    }
    out
}

/// Errors of sealing a record for writing.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("encoding the {kind} record for {key}: {source}")]
    Encode {
        kind: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the {kind} record for {key} is {len} bytes, over the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge {
        kind: &'static str,
        key: String,
        len: usize,
    },
}

/// Encodes and signs `body` for etcd key `key`, attached to `lease` (0 for
/// none), issued at `issued_at` (Unix seconds).
///
/// # Errors
/// The body does not encode, or is too large.
pub fn seal<T: Record>(
    secrets: &Secrets,
    key: &str,
    lease: i64,
    issued_at: u64,
    body: &T,
) -> Result<Vec<u8>, SealError> {
    seal_with(secrets, key, lease, 0, issued_at, body)
}

/// Encodes and signs a definition (no lease) of generation `generation`
/// (see [`super::generation`]).
///
/// # Errors
/// The body does not encode, or is too large.
pub fn seal_definition<T: Record>(
    secrets: &Secrets,
    key: &str,
    generation: u64,
    issued_at: u64,
    body: &T,
) -> Result<Vec<u8>, SealError> {
    seal_with(secrets, key, 0, generation, issued_at, body)
}

fn seal_with<T: Record>(
    secrets: &Secrets,
    key: &str,
    lease: i64,
    generation: u64,
    issued_at: u64,
    body: &T,
) -> Result<Vec<u8>, SealError> {
    let encode = |source| SealError::Encode {
        kind: T::KIND,
        key: key.to_owned(),
        source,
    };
    let body = serde_json::to_string(body).map_err(encode)?;
    let message = canonical(T::KIND, key, lease, issued_at, generation, body.as_bytes());
    let sig = secrets.sign(&message);
    let raw = RawValue::from_string(body).map_err(encode)?;
    let envelope = Envelope {
        v: RECORD_VERSION,
        kind: T::KIND.to_owned(),
        key: key.to_owned(),
        lease,
        issued_at,
        generation,
        body: &raw,
        sig: hex(&sig),
    };
    let bytes = serde_json::to_vec(&envelope).map_err(encode)?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(SealError::TooLarge {
            kind: T::KIND,
            key: key.to_owned(),
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

/// What a record must match to be used.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    /// The etcd key it was read from.
    pub key: &'a str,
    /// The lease the key is attached to in etcd (0 for none).
    pub lease: i64,
    /// Now, in Unix seconds.
    pub now: u64,
    /// Records older than this are rejected; `None` for records that are
    /// not time-limited (admin-written definitions).
    pub max_age: Option<Duration>,
}

/// A record that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T> {
    pub body: T,
    pub issued_at: u64,
    pub lease: i64,
    /// 0 for records without one.
    pub generation: u64,
}

/// Parses and checks a value read from etcd.
pub fn open<T: Record>(
    secrets: &Secrets,
    value: &[u8],
    expect: Expect<'_>,
) -> Result<Verified<T>, Rejection> {
    if value.len() > MAX_RECORD_BYTES {
        return Err(Rejection::TooLarge(value.len()));
    }
    let envelope: Envelope<'_> =
        serde_json::from_slice(value).map_err(|e| Rejection::Malformed(e.to_string()))?;
    if envelope.v != RECORD_VERSION {
        return Err(Rejection::UnsupportedVersion(envelope.v));
    }
    if envelope.kind != T::KIND {
        return Err(Rejection::WrongKind {
            expected: T::KIND,
            found: envelope.kind,
        });
    }
    let sig = unhex(&envelope.sig)
        .filter(|s| s.len() == SIGNATURE_LEN)
        .ok_or_else(|| Rejection::Malformed("sig is not 64 hex digits".into()))?;
    let message = canonical(
        &envelope.kind,
        &envelope.key,
        envelope.lease,
        envelope.issued_at,
        envelope.generation,
        envelope.body.get().as_bytes(),
    );
    if !secrets.verify(&message, &sig) {
        return Err(Rejection::BadSignature);
    }
    // Authentic from here on; now check it is used where it was signed for.
    if envelope.key != expect.key {
        return Err(Rejection::WrongKey {
            claimed: envelope.key,
        });
    }
    if envelope.lease != expect.lease {
        return Err(Rejection::WrongLease {
            claimed: envelope.lease,
            actual: expect.lease,
        });
    }
    if envelope.issued_at > expect.now.saturating_add(MAX_CLOCK_SKEW.as_secs()) {
        return Err(Rejection::FutureDated {
            ahead_secs: envelope.issued_at - expect.now,
        });
    }
    if let Some(max_age) = expect.max_age {
        let age_secs = expect.now.saturating_sub(envelope.issued_at);
        if age_secs > max_age.as_secs() {
            return Err(Rejection::Expired { age_secs });
        }
    }
    let body = serde_json::from_str(envelope.body.get()).map_err(|e| {
        Rejection::Invalid(super::invalid::Invalid::Decode(format!(
            "{} body: {e}",
            T::KIND
        )))
    })?;
    Ok(Verified {
        body,
        issued_at: envelope.issued_at,
        lease: envelope.lease,
        generation: envelope.generation,
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Eq, Clone)]
    struct Note {
        text: String,
    }
    impl Record for Note {
        const KIND: &'static str = "note";
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
    struct Other {
        text: String,
    }
    impl Record for Other {
        const KIND: &'static str = "other";
    }

    const NOW: u64 = 1_800_000_000;
    const HOUR: Duration = Duration::from_hours(1);

    fn secrets() -> Secrets {
        Secrets::from_text("a-test-secret-of-some-length").expect("valid")
    }

    fn expect(key: &str, lease: i64) -> Expect<'_> {
        Expect {
            key,
            lease,
            now: NOW,
            max_age: Some(HOUR),
        }
    }

    fn note() -> Note {
        Note {
            text: "hello".into(),
        }
    }

    #[test]
    fn round_trip() {
        let s = secrets();
        let bytes = seal(&s, "/lm/notes/a", 42, NOW - 10, &note()).expect("seal");
        let v = open::<Note>(&s, &bytes, expect("/lm/notes/a", 42)).expect("open");
        assert_eq!(v.body, note());
        assert_eq!(v.issued_at, NOW - 10);
        assert_eq!(v.lease, 42);
    }

    #[test]
    fn rejects_forgery_replay_and_age() {
        let s = secrets();
        let bytes = seal(&s, "/lm/notes/a", 42, NOW - 10, &note()).expect("seal");
        let wrong = Secrets::from_text("another-secret-entirely").expect("valid");
        assert_eq!(
            open::<Note>(&wrong, &bytes, expect("/lm/notes/a", 42)),
            Err(Rejection::BadSignature)
        );
        assert!(matches!(
            open::<Note>(&s, &bytes, expect("/lm/notes/b", 42)),
            Err(Rejection::WrongKey { .. })
        ));
        assert!(matches!(
            open::<Note>(&s, &bytes, expect("/lm/notes/a", 43)),
            Err(Rejection::WrongLease {
                claimed: 42,
                actual: 43
            })
        ));
        let old = seal(&s, "/lm/notes/a", 42, NOW - 3601, &note()).expect("seal");
        assert_eq!(
            open::<Note>(&s, &old, expect("/lm/notes/a", 42)),
            Err(Rejection::Expired { age_secs: 3601 })
        );
        let no_limit = Expect {
            max_age: None,
            ..expect("/lm/notes/a", 42)
        };
        assert!(
            open::<Note>(&s, &old, no_limit).is_ok(),
            "definitions do not age"
        );
        let future = seal(&s, "/lm/notes/a", 42, NOW + 301, &note()).expect("seal");
        assert!(matches!(
            open::<Note>(&s, &future, expect("/lm/notes/a", 42)),
            Err(Rejection::FutureDated { ahead_secs: 301 })
        ));
        assert!(matches!(
            open::<Other>(&s, &bytes, expect("/lm/notes/a", 42)),
            Err(Rejection::WrongKind { .. })
        ));
    }

    #[test]
    fn tampering_with_any_field_breaks_the_signature() {
        let s = secrets();
        let bytes = seal(&s, "/lm/notes/a", 42, NOW, &note()).expect("seal");
        let text = String::from_utf8(bytes).expect("utf-8");
        for (from, to) in [
            ("\"hello\"", "\"hellp\""),
            ("\"lease\":42", "\"lease\":43"),
            ("/lm/notes/a", "/lm/notes/b"),
            (
                &format!("\"issued_at\":{NOW}"),
                &format!("\"issued_at\":{}", NOW + 1),
            ),
        ] {
            let forged = text.replace(from, to);
            assert_ne!(forged, text, "{from} occurs");
            assert_eq!(
                open::<Note>(&s, forged.as_bytes(), expect("/lm/notes/b", 43))
                    .err()
                    .map(|r| r.reason()),
                Some("bad_signature"),
                "changing {from} to {to}"
            );
        }
    }

    #[test]
    fn malformed_values_are_rejected_not_panicking() {
        let s = secrets();
        for junk in [
            &b""[..],
            b"\xff\xfe",
            b"{}",
            b"null",
            b"[1,2,3]",
            b"{\"v\":1}",
            b"{\"v\":2,\"kind\":\"note\",\"key\":\"k\",\"lease\":0,\"issued_at\":0,\"body\":{},\"sig\":\"00\"}",
            b"{\"v\":1,\"kind\":\"note\",\"key\":\"k\",\"lease\":0,\"issued_at\":0,\"body\":{},\"sig\":\"zz\"}",
            b"{\"v\":1,\"kind\":\"note\",\"key\":\"k\",\"lease\":0,\"issued_at\":0,\"body\":{},\"sig\":\"\xc3\xa9\xc3\xa9\"}",
        ] {
            let r = open::<Note>(&s, junk, expect("k", 0));
            assert!(r.is_err(), "{junk:?} accepted");
        }
        let huge = vec![b' '; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            open::<Note>(&s, &huge, expect("k", 0)),
            Err(Rejection::TooLarge(_))
        ));
    }

    #[test]
    fn signed_but_invalid_body_is_rejected() {
        let s = secrets();
        let bytes = seal(&s, "k", 0, NOW, &Other { text: "x".into() }).expect("seal");
        let text = String::from_utf8(bytes)
            .expect("utf-8")
            .replace("\"other\"", "\"note\"");
        // Re-sign by hand with the kind changed: authentic, but still checked.
        let body = "{\"txt\":1}";
        let sig = hex(&s.sign(&canonical("note", "k", 0, NOW, 0, body.as_bytes())));
        let forged = format!(
            "{{\"v\":1,\"kind\":\"note\",\"key\":\"k\",\"lease\":0,\"issued_at\":{NOW},\"body\":{body},\"sig\":\"{sig}\"}}"
        );
        assert!(matches!(
            open::<Note>(&s, forged.as_bytes(), expect("k", 0)),
            Err(Rejection::Invalid(_))
        ));
        assert_eq!(
            open::<Note>(&s, text.as_bytes(), expect("k", 0)),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn canonical_encoding_is_unambiguous() {
        // Moving bytes between adjacent fields changes the encoding.
        assert_ne!(
            canonical("ab", "c", 0, 0, 0, b""),
            canonical("a", "bc", 0, 0, 0, b"")
        );
        assert_ne!(
            canonical("k", "x", 1, 0, 0, b""),
            canonical("k", "x", 0, 1, 0, b"")
        );
        // A generation is one more field, after the body: a body cannot
        // pose as one.
        assert_ne!(
            canonical("k", "x", 0, 0, 7, b"{}"),
            canonical("k", "x", 0, 0, 0, b"{}\0\0\0\x08\0\0\0\0\0\0\0\x07")
        );
        let golden = canonical("host", "/k", 1, 2, 0, b"{}");
        assert_eq!(golden.len(), 4 * 7 + 15 + 4 + 4 + 2 + 8 + 8 + 2);
        let with_generation = canonical("host", "/k", 1, 2, 3, b"{}");
        assert_eq!(with_generation.len(), golden.len() + 4 + 8);
        assert_eq!(&golden[..4], &15u32.to_be_bytes());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(value in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = open::<Note>(&secrets(), &value, expect("k", 0));
        }

        #[test]
        fn any_single_byte_flip_is_rejected(pos in 0usize..200, bit in 0u8..8) {
            let s = secrets();
            let mut bytes = seal(&s, "/lm/notes/a", 42, NOW, &note()).expect("seal");
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            // Either it no longer parses, or it fails a check; it never
            // opens to something other than the original.
            if let Ok(v) = open::<Note>(&s, &bytes, expect("/lm/notes/a", 42)) {
                proptest::prop_assert_eq!(v.body, note());
            }
        }
    }
}
