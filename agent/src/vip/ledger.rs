//! The addresses this agent added, and only those, kept in the state
//! directory so they outlive a restart. An address that was on the host
//! already (the host's own, or an operator's) is never adopted as a VIP and
//! never removed: only what linkmesh added is linkmesh's to take away.
//!
//! An address is recorded before it is added (having been seen absent just
//! before), so a crash right after the add still leaves it known as ours;
//! a record whose address never made it is dropped at the next start
//! ([`Ledger::keep_present`]).

use std::collections::BTreeSet;
use std::path::PathBuf;

use tracing::warn;

use crate::registry::Cidr;

/// `(interface, address)` pairs this agent added.
#[derive(Debug, Default)]
pub struct Ledger {
    /// `None`: kept in memory only (no `--state-dir`).
    file: Option<PathBuf>,
    added: BTreeSet<(String, Cidr)>,
}

impl Ledger {
    /// Reads what an earlier run of this agent left in `file`. A missing
    /// file is an empty ledger; unreadable lines are skipped.
    #[must_use]
    pub fn load(file: Option<PathBuf>) -> Self {
        let text = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .unwrap_or_default();
        let added = text
            .lines()
            .filter_map(|line| {
                let (ifname, cidr) = line.split_once(' ')?;
                Some((ifname.to_owned(), cidr.parse().ok()?))
            })
            .collect();
        Self { file, added }
    }

    /// Whether this agent added `cidr` on `ifname`.
    #[must_use]
    pub fn added(&self, ifname: &str, cidr: Cidr) -> bool {
        self.added.contains(&(ifname.to_owned(), cidr))
    }

    /// The interfaces this agent added `cidr` on.
    #[must_use]
    pub fn interfaces_of(&self, cidr: Cidr) -> Vec<String> {
        self.added
            .iter()
            .filter(|(_, c)| *c == cidr)
            .map(|(i, _)| i.clone())
            .collect()
    }

    /// Records that this agent added `cidr` on `ifname`.
    pub fn add(&mut self, ifname: &str, cidr: Cidr) {
        if self.added.insert((ifname.to_owned(), cidr)) {
            self.save();
        }
    }

    /// Keeps only the records whose address is on its interface now
    /// (`present`): what a crash between recording and adding left behind
    /// must not make a later address of someone else's look like ours.
    pub fn keep_present(&mut self, present: &BTreeSet<(String, Cidr)>) {
        let before = self.added.len();
        self.added.retain(|entry| present.contains(entry));
        if self.added.len() != before {
            self.save();
        }
    }

    /// Every record.
    #[must_use]
    pub fn entries(&self) -> Vec<(String, Cidr)> {
        self.added.iter().cloned().collect()
    }

    /// Records that `cidr` on `ifname` is gone.
    pub fn remove(&mut self, ifname: &str, cidr: Cidr) {
        if self.added.remove(&(ifname.to_owned(), cidr)) {
            self.save();
        }
    }

    fn save(&self) {
        let Some(file) = &self.file else { return };
        let text = self.added.iter().fold(String::new(), |mut text, (i, c)| {
            use std::fmt::Write as _;
            let _ = writeln!(text, "{i} {c}");
            text
        });
        // Written whole or not at all: a crash leaves the old ledger or the
        // new one, never half of one.
        let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
            return;
        };
        let result = crate::files::replace(dir, &name.to_string_lossy(), text);
        if let Err(e) = result {
            warn!(file = %file.display(), error = %e, "saving the ledger of added addresses failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_added_survives_a_restart_and_only_that() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("state/vip-addresses");
        let cidr: Cidr = "198.18.0.100/24".parse().expect("cidr");
        let other: Cidr = "198.18.0.1/24".parse().expect("cidr");
        let mut l = Ledger::load(Some(file.clone()));
        assert!(!l.added("eth0", cidr));
        l.add("eth0", cidr);
        let again = Ledger::load(Some(file.clone()));
        assert!(again.added("eth0", cidr), "kept across a restart");
        assert!(!again.added("eth0", other), "only what was added");
        assert!(!again.added("eth1", cidr), "on that interface");
        assert_eq!(again.interfaces_of(cidr), vec!["eth0".to_owned()]);
        l.remove("eth0", cidr);
        assert!(!Ledger::load(Some(file)).added("eth0", cidr));
        std::fs::write(dir.path().join("junk"), "no-space\neth0 not-a-cidr\n").expect("write");
        assert!(Ledger::load(Some(dir.path().join("junk"))).added.is_empty());
    }

    #[test]
    fn records_of_addresses_that_never_made_it_are_dropped_at_start() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("vip-addresses");
        let bound: Cidr = "198.18.0.100/24".parse().expect("cidr");
        let never: Cidr = "198.18.0.101/24".parse().expect("cidr");
        let mut l = Ledger::load(Some(file.clone()));
        l.add("eth0", bound);
        l.add("eth0", never);
        // The next start sees only the first on eth0.
        let mut again = Ledger::load(Some(file.clone()));
        again.keep_present(&[("eth0".to_owned(), bound)].into());
        assert_eq!(again.entries(), vec![("eth0".to_owned(), bound)]);
        assert!(Ledger::load(Some(file)).added("eth0", bound), "saved");
    }
}
