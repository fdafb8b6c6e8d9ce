//! The shared secret that signs and verifies every record.
//!
//! A secret file holds one secret per line: the first signs, every line
//! verifies, so a secret can be rotated host by host (add the new one as the
//! first line everywhere, then drop the old one). Secrets never appear in
//! `Debug` output or logs.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The length of an HMAC-SHA256 tag.
pub const SIGNATURE_LEN: usize = 32;
/// Shorter secrets are refused: they are guessable.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("reading secret file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the secret is empty: give at least one line of {MIN_SECRET_LEN} or more bytes")]
    Empty,
    #[error("secret line {line} is {len} bytes; the minimum is {MIN_SECRET_LEN}")]
    TooShort { line: usize, len: usize },
}

/// One or more HMAC keys; the first signs.
#[derive(Clone)]
pub struct Secrets {
    keys: Vec<Vec<u8>>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} keys, redacted)", self.keys.len())
    }
}

impl Secrets {
    /// Parses secret text: one secret per line, surrounding whitespace and
    /// blank lines ignored.
    pub fn from_text(text: &str) -> Result<Self, SecretError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if line.len() < MIN_SECRET_LEN {
                return Err(SecretError::TooShort {
                    line: i + 1,
                    len: line.len(),
                });
            }
            keys.push(line.as_bytes().to_vec());
        }
        if keys.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self { keys })
    }

    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|e| SecretError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_text(&text)
    }

    /// How many secrets verify.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn mac(key: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
    }

    /// HMAC-SHA256 of `message` with the first secret.
    #[must_use]
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut mac = Self::mac(&self.keys[0]);
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// HMAC-SHA256 of `message` under each of the first `n` secrets, the
    /// signing one first: what a peer holding any of them may have made.
    #[must_use]
    pub fn sign_each(&self, message: &[u8], n: usize) -> Vec<[u8; SIGNATURE_LEN]> {
        self.keys
            .iter()
            .take(n)
            .map(|key| {
                let mut mac = Self::mac(key);
                mac.update(message);
                mac.finalize().into_bytes().into()
            })
            .collect()
    }

    /// Whether `signature` is `message`'s HMAC under any of the secrets.
    /// Each comparison is constant-time.
    #[must_use]
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        // Try every key, without stopping early, so timing does not tell
        // which key matched.
        let mut ok = false;
        for key in &self.keys {
            let mut mac = Self::mac(key);
            mac.update(message);
            ok |= mac.verify_slice(signature).is_ok();
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "first-secret-0123456789";
    const B: &str = "second-secret-0123456789";

    #[test]
    fn first_line_signs_every_line_verifies() {
        let old = Secrets::from_text(A).expect("valid");
        let rotated = Secrets::from_text(&format!("{B}\n{A}\n")).expect("valid");
        let by_old = old.sign(b"m");
        let by_new = rotated.sign(b"m");
        assert_ne!(by_old, by_new, "the first line signs");
        assert!(
            rotated.verify(b"m", &by_old),
            "old signatures verify during rotation"
        );
        assert!(rotated.verify(b"m", &by_new));
        assert!(
            !old.verify(b"m", &by_new),
            "hosts without the new secret reject it"
        );
        assert!(!rotated.verify(b"other", &by_new));
        assert!(
            !rotated.verify(b"m", &by_new[..31]),
            "a truncated tag fails"
        );
    }

    #[test]
    fn known_vector() {
        // Computed independently with Python's hmac module:
        // hmac.new(b"key-of-sixteen-by", b"linkmesh", "sha256").hexdigest()
        let s = Secrets::from_text("key-of-sixteen-by").expect("valid");
        let hex = crate::registry::record::hex(&s.sign(b"linkmesh"));
        assert_eq!(hex, KNOWN_TAG);
    }

    const KNOWN_TAG: &str = include_str!("testdata/hmac-known-tag.txt");

    #[test]
    fn rejects_empty_and_short_secrets() {
        assert!(matches!(Secrets::from_text(""), Err(SecretError::Empty)));
        assert!(matches!(
            Secrets::from_text("\n  \n"),
            Err(SecretError::Empty)
        ));
        assert!(matches!(
            Secrets::from_text(&format!("{A}\nshort")),
            Err(SecretError::TooShort { line: 2, len: 5 })
        ));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secrets::from_text(A).expect("valid");
        let shown = format!("{s:?}");
        assert!(!shown.contains("secret-0123"), "{shown}");
        assert_eq!(shown, "Secrets(1 keys, redacted)");
    }
}
