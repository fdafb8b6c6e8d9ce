//! Files other programs read while the agent writes them (dnsmasq's
//! hosts file, `linkmesh-cni`'s segment view), written whole or not at
//! all: a temporary file in the same directory (named with a leading `.`,
//! which dnsmasq's `--hostsdir` ignores), synced, renamed over the file,
//! the directory synced.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Why the file was not written.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct WriteError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The file `name` in `dir` and its temporary sibling.
#[must_use]
pub fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(name), dir.join(format!(".{name}.tmp")))
}

/// Replaces `dir/name` with `text` (mode 0644), creating `dir` (mode 0755)
/// if it is missing; nothing else in `dir` is touched.
///
/// # Errors
/// Which step failed, on which path.
pub fn replace(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> Result<(), WriteError> {
    let (file, tmp) = paths(dir, name);
    let fail = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| WriteError { what, path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(fail("creating the directory", dir))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(fail("creating", &tmp))?;
    // A file left by an older run may have another mode.
    out.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(fail("setting the mode of", &tmp))?;
    out.write_all(text.as_ref())
        .map_err(fail("writing", &tmp))?;
    out.sync_all().map_err(fail("syncing", &tmp))?;
    drop(out);
    if let Err(e) = std::fs::rename(&tmp, &file) {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("renaming the new file over", &file)(e));
    }
    // The rename itself survives a crash once the directory is synced.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("syncing the directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_with_mode_0644_and_leaves_the_rest() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("hosts.d");
        replace(&dir, "linkmesh.hosts", "one\n").expect("first write creates the directory");
        std::fs::write(dir.join("other"), "mine").expect("other file");
        replace(&dir, "linkmesh.hosts", "two\n").expect("second write");
        let file = dir.join("linkmesh.hosts");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "two\n");
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["linkmesh.hosts", "other"], "no temporary file left");
        assert_eq!(
            std::fs::read_to_string(dir.join("other")).expect("read"),
            "mine"
        );
    }

    #[test]
    fn a_failure_names_the_step_and_the_path() {
        let root = tempfile::tempdir().expect("temp dir");
        let blocker = root.path().join("not-a-dir");
        std::fs::write(&blocker, "").expect("file");
        let e = replace(&blocker, "x.hosts", "x").expect_err("a file is no directory");
        let text = e.to_string();
        assert!(text.contains("not-a-dir"), "{text}");
    }
}
