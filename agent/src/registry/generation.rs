//! Generations and signed removals of the admin-written definitions
//! (segments, floating IPs), so that a saved copy of a record cannot bring
//! back what an admin removed, nor roll a definition back.
//!
//! Every definition is signed with a generation, larger than any the key
//! had before ([`next_generation`]); a removal is a signed [`Tombstone`] at
//! the same key, one generation up, not a delete. An agent keeps the newest
//! generation it has seen per key ([`Marks`], kept in `--state-dir`) and
//! accepts nothing older: not a record from before an update, not a record
//! from before its tombstone, even when someone without the secret deletes
//! the tombstone.
//!
//! Records written before generations existed carry generation 0: they are
//! accepted only where no generation was seen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::record::{Expect, Record, Rejection, Verified, open};
use super::secret::Secrets;

/// A definition's removal: nothing but the key, generation and time it is
/// signed for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tombstone {}

impl Record for Tombstone {
    const KIND: &'static str = "tombstone";
}

/// Where a definition stands in its key's history: later generations are
/// newer; one generation is one write (its issue time tells two apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub generation: u64,
    pub issued_at: u64,
}

impl Mark {
    fn of<T>(v: &Verified<T>) -> Self {
        Self {
            generation: v.generation,
            issued_at: v.issued_at,
        }
    }
}

/// A verified definition: in force, or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Definition<T> {
    Live(T, Mark),
    Removed(Mark),
}

impl<T> Definition<T> {
    #[must_use]
    pub fn mark(&self) -> Mark {
        match self {
            Self::Live(_, m) | Self::Removed(m) => *m,
        }
    }

    /// The definition in force, if any.
    #[must_use]
    pub fn live(self) -> Option<T> {
        match self {
            Self::Live(t, _) => Some(t),
            Self::Removed(_) => None,
        }
    }

    /// Checks or converts what is in force; a removal stays one.
    ///
    /// # Errors
    /// What `f` returns.
    pub fn try_map<U, E>(self, f: impl FnOnce(T) -> Result<U, E>) -> Result<Definition<U>, E> {
        Ok(match self {
            Self::Live(t, m) => Definition::Live(f(t)?, m),
            Self::Removed(m) => Definition::Removed(m),
        })
    }
}

/// Verifies a definition's value: a `T` record or a tombstone, signed for
/// this key and no lease.
///
/// # Errors
/// Why it is not used (see [`open`]).
pub fn open_definition<T: Record>(
    secrets: &Secrets,
    key: &str,
    value: &[u8],
    lease: i64,
    now: u64,
) -> Result<Definition<T>, Rejection> {
    let expect = Expect {
        key,
        lease,
        now,
        max_age: None,
    };
    match open::<T>(secrets, value, expect) {
        Ok(v) => {
            let mark = Mark::of(&v);
            Ok(Definition::Live(v.body, mark))
        }
        Err(Rejection::WrongKind { found, .. }) if found == Tombstone::KIND => {
            let v = open::<Tombstone>(secrets, value, expect)?;
            Ok(Definition::Removed(Mark::of(&v)))
        }
        Err(e) => Err(e),
    }
}

/// The generation to sign a definition's next write with: above the
/// key's last (`previous`), and at least the time in microseconds, so that
/// a key written again after etcd lost its history (a restore, a wipe)
/// still moves past what the agents remember.
#[must_use]
pub fn next_generation(previous: Option<u64>, now_micros: u64) -> u64 {
    previous.map_or(0, |p| p.saturating_add(1)).max(now_micros)
}

/// The newest generation seen per definition key.
#[derive(Debug, Default)]
pub struct Marks {
    newest: BTreeMap<String, Mark>,
    /// Changed since the last [`Marks::save`].
    changed: bool,
}

impl Marks {
    /// Whether `mark` may be used at `key`: newer than anything seen there,
    /// or the very write seen last (read again). Remembers it if so.
    ///
    /// # Errors
    /// [`Rejection::Superseded`] for anything older.
    pub fn admit(&mut self, key: &str, mark: Mark) -> Result<(), Rejection> {
        match self.newest.get(key) {
            Some(seen) if *seen == mark => Ok(()),
            Some(seen) if seen.generation >= mark.generation => Err(Rejection::Superseded {
                generation: mark.generation,
                newest: seen.generation,
            }),
            // Without a generation: nothing to remember.
            _ if mark.generation == 0 => Ok(()),
            _ => {
                self.newest.insert(key.to_owned(), mark);
                self.changed = true;
                Ok(())
            }
        }
    }

    /// The newest generation seen at `key`.
    #[must_use]
    pub fn newest(&self, key: &str) -> Option<Mark> {
        self.newest.get(key).copied()
    }

    /// Whether anything was remembered since the last save.
    #[must_use]
    pub fn unsaved(&self) -> bool {
        self.changed
    }

    /// Reads the marks an earlier run left in `file`; a missing or
    /// unreadable file is none (logged when unreadable).
    #[must_use]
    pub fn load(file: &Path) -> Self {
        let newest = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(file = %file.display(), error = %e, "ignoring an unreadable generations file");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                warn!(file = %file.display(), error = %e, "cannot read the generations file");
                BTreeMap::new()
            }
        };
        Self {
            newest,
            changed: false,
        }
    }

    /// Writes the marks to `file` (whole, then renamed into place).
    ///
    /// # Errors
    /// The write's (the marks stay unsaved).
    pub fn save(&mut self, file: &Path) -> std::io::Result<()> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp: PathBuf = file.with_extension("tmp");
        let bytes = serde_json::to_vec(&self.newest).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, file)?;
        self.changed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SegmentSpec;
    use crate::registry::record::seal_definition;

    const NOW: u64 = 1_800_000_000;

    fn secrets() -> Secrets {
        Secrets::from_text("generation-test-secret-0123456789").expect("a secret")
    }

    fn mark(generation: u64, issued_at: u64) -> Mark {
        Mark {
            generation,
            issued_at,
        }
    }

    #[test]
    fn newer_generations_pass_older_ones_do_not() {
        let mut m = Marks::default();
        assert!(m.admit("/lm/segments/a", mark(5, NOW)).is_ok());
        // The same write, read again.
        assert!(m.admit("/lm/segments/a", mark(5, NOW)).is_ok());
        assert!(m.admit("/lm/segments/a", mark(6, NOW)).is_ok());
        assert_eq!(
            m.admit("/lm/segments/a", mark(5, NOW)),
            Err(Rejection::Superseded {
                generation: 5,
                newest: 6
            })
        );
        // Another write of a generation seen is not that write.
        assert!(m.admit("/lm/segments/a", mark(6, NOW + 1)).is_err());
        // Keys are apart.
        assert!(m.admit("/lm/segments/b", mark(1, NOW)).is_ok());
        // Without a generation: taken where nothing newer was seen, and
        // not remembered (two such writes are not told apart).
        assert!(m.admit("/lm/segments/c", mark(0, NOW)).is_ok());
        assert!(m.admit("/lm/segments/c", mark(0, NOW - 5)).is_ok());
        assert_eq!(m.newest("/lm/segments/c"), None);
        assert!(m.admit("/lm/segments/a", mark(0, NOW)).is_err());
        assert!(m.unsaved());
    }

    #[test]
    fn a_generation_moves_past_the_last_and_the_clock() {
        assert_eq!(next_generation(None, 10), 10);
        assert_eq!(next_generation(Some(3), 10), 10);
        assert_eq!(next_generation(Some(30), 10), 31);
        assert_eq!(next_generation(Some(u64::MAX), 10), u64::MAX);
    }

    #[test]
    fn tombstones_verify_for_their_key_only() {
        let s = secrets();
        let key = "/lm/segments/blue";
        let live = seal_definition(&s, key, 7, NOW, &SegmentSpec::new(5)).expect("seal");
        let gone = seal_definition(&s, key, 8, NOW, &Tombstone {}).expect("seal");
        let opened = open_definition::<SegmentSpec>(&s, key, &live, 0, NOW).expect("verifies");
        assert_eq!(opened, Definition::Live(SegmentSpec::new(5), mark(7, NOW)));
        let opened = open_definition::<SegmentSpec>(&s, key, &gone, 0, NOW).expect("verifies");
        assert_eq!(opened, Definition::Removed(mark(8, NOW)));
        let moved = open_definition::<SegmentSpec>(&s, "/lm/segments/red", &gone, 0, NOW);
        assert!(
            matches!(moved, Err(Rejection::WrongKey { .. })),
            "{moved:?}"
        );
        // The generation is signed: changing it breaks the signature.
        let text = String::from_utf8(gone).expect("utf-8");
        let bumped = text.replace("\"generation\":8", "\"generation\":9");
        assert_ne!(bumped, text);
        let r = open_definition::<SegmentSpec>(&s, key, bumped.as_bytes(), 0, NOW);
        assert_eq!(r, Err(Rejection::BadSignature));
    }

    #[test]
    fn marks_outlive_a_restart() {
        let dir = std::env::temp_dir().join(format!("lm-marks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let file = dir.join("generations");
        let mut m = Marks::default();
        m.admit("/lm/vips/x", mark(9, NOW)).expect("new");
        m.save(&file).expect("saved");
        let mut again = Marks::load(&file);
        assert_eq!(again.newest("/lm/vips/x"), Some(mark(9, NOW)));
        assert!(again.admit("/lm/vips/x", mark(8, NOW)).is_err());
        std::fs::write(&file, b"not json").expect("written");
        assert_eq!(Marks::load(&file).newest("/lm/vips/x"), None);
        std::fs::remove_dir_all(&dir).expect("removed");
    }
}
