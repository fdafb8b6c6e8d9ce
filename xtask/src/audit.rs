//! The package audit: which Debian packages a `cargo xtask test` run
//! really used, held against [`crate::deps::PACKAGES`].
//!
//! A fanotify mark on the filesystems that hold `/usr` and `/etc` reports
//! every file opened or executed while the run goes on (notification only:
//! nobody waits for us). Files that dpkg installed and that this process or
//! one of its descendants opened are mapped to their packages. A package
//! that is neither listed, nor essential, nor a dependency of either, is a
//! package a fresh machine may lack: the run fails and names it, with the
//! files and the programs that opened them. So a package installed by hand
//! (as `libprotobuf-dev` once was) cannot hide a missing entry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, bail};

use crate::deps::Package;

const DPKG_INFO: &str = "/var/lib/dpkg/info";
const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// Where dpkg puts files: the filesystems holding these are watched.
const WATCHED: &[&str] = &["/usr", "/etc", "/var/lib", "/opt"];

/// A running audit; [`Audit::finish`] stops it and judges what it saw.
pub struct Audit {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<Seen>>,
}

/// dpkg-installed files opened by the run, with the first program that
/// opened each.
struct Seen {
    index: FileIndex,
    files: BTreeMap<PathBuf, String>,
    events: u64,
    overflowed: bool,
}

impl Audit {
    /// Starts watching. Needs `CAP_SYS_ADMIN` (root) and a kernel with
    /// fanotify.
    pub fn start() -> anyhow::Result<Self> {
        let index = FileIndex::read().context("reading dpkg's file lists")?;
        let fd = fanotify::init().context("fanotify_init (the package audit needs root)")?;
        let mut devices = HashSet::new();
        for dir in WATCHED {
            let Ok(meta) = fs::metadata(dir) else {
                continue;
            };
            if devices.insert(meta.dev()) {
                fanotify::mark_filesystem(&fd, Path::new(dir))
                    .with_context(|| format!("fanotify_mark on the filesystem of {dir}"))?;
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("package-audit".into())
            .spawn(move || watch(&fd, index, &flag))
            .context("starting the package audit's thread")?;
        Ok(Self { stop, thread })
    }

    /// Stops watching and checks every package used against `listed`.
    /// Packages in `ignored` (and what they depend on) are read when
    /// present but not needed.
    pub fn finish(self, listed: &[Package], ignored: &[(&str, &str)]) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the package audit's thread panicked"))?
            .context("reading fanotify events")?;
        if seen.overflowed {
            bail!("the package audit lost events (fanotify queue overflow)");
        }
        let status = Status::read().context("reading dpkg's status")?;
        let roots: Vec<&str> = listed
            .iter()
            .map(|p| p.name)
            .chain(ignored.iter().map(|(name, _)| *name))
            .collect();
        let covered = status.closure(&roots);
        let mut used: BTreeMap<&str, Vec<(&Path, &str)>> = BTreeMap::new();
        for (path, program) in &seen.files {
            let Some(owners) = seen.index.owners.get(path) else {
                continue;
            };
            // Owned by several packages: covered if any of them is.
            if owners.iter().any(|o| covered.contains(o.as_str())) {
                for o in owners {
                    used.entry(o.as_str()).or_default();
                }
                continue;
            }
            for o in owners {
                used.entry(o.as_str())
                    .or_default()
                    .push((path.as_path(), program.as_str()));
            }
        }
        let missing: Vec<_> = used.iter().filter(|(_, files)| !files.is_empty()).collect();
        eprintln!(
            "==> package audit: {} fanotify events, {} dpkg files from {} packages opened",
            seen.events,
            seen.files.len(),
            used.len()
        );
        if missing.is_empty() {
            eprintln!(
                "    all covered by xtask/src/deps.rs (listed, essential, or a dependency of one)"
            );
            return Ok(());
        }
        let mut report = String::new();
        for (package, files) in &missing {
            let _ = write!(report, "\n  {package}:");
            for (path, program) in files.iter().take(3) {
                let _ = write!(report, "\n    {} (opened by {program})", path.display());
            }
            if files.len() > 3 {
                let _ = write!(report, "\n    ... and {} more", files.len() - 3);
            }
        }
        bail!(
            "this run used Debian packages that xtask/src/deps.rs does not name, so a fresh \
             machine may lack them (add each to PACKAGES, saying why):{report}"
        )
    }
}

/// The audit thread: reads events until told to stop, then drains the queue.
fn watch(fd: &OwnedFd, index: FileIndex, stop: &AtomicBool) -> io::Result<Seen> {
    let mut seen = Seen {
        index,
        files: BTreeMap::new(),
        events: 0,
        overflowed: false,
    };
    let mut ancestry = Ancestry::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let ready = fanotify::wait(fd, 200)?;
        if !ready {
            if stop.load(Ordering::SeqCst) {
                return Ok(seen);
            }
            continue;
        }
        for event in fanotify::read(fd, &mut buf)? {
            seen.events += 1;
            match event {
                fanotify::Event::Overflow => seen.overflowed = true,
                fanotify::Event::Open { file, pid } => {
                    let Ok(path) = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                    else {
                        continue;
                    };
                    if !seen.index.owners.contains_key(&path) || seen.files.contains_key(&path) {
                        continue;
                    }
                    // Directories are owned by many packages and say nothing.
                    if fanotify::is_dir(&file) {
                        continue;
                    }
                    if let Some(program) = ancestry.ours(pid) {
                        seen.files.insert(path, program);
                    }
                }
            }
        }
    }
}

/// Whether a PID belongs to this process's tree, with its program name.
struct Ancestry {
    me: u32,
    known: HashMap<u32, bool>,
}

impl Ancestry {
    fn new() -> Self {
        Self {
            me: std::process::id(),
            known: HashMap::new(),
        }
    }

    /// The program's name if `pid` is this process or a descendant, or if
    /// it is gone already (counted, to be safe); `None` for other processes
    /// on the machine.
    fn ours(&mut self, pid: u32) -> Option<String> {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_or_else(|_| format!("pid {pid}, exited"), |c| c.trim().to_owned());
        let mut chain = Vec::new();
        let mut p = pid;
        let verdict = loop {
            if p == self.me {
                break true;
            }
            if let Some(known) = self.known.get(&p) {
                break *known;
            }
            chain.push(p);
            match parent(p) {
                Some(0 | 1) => break false,
                Some(pp) => p = pp,
                // Gone before we looked: count it rather than lose it.
                None => break true,
            }
        };
        for p in chain {
            self.known.insert(p, verdict);
        }
        verdict.then_some(comm)
    }
}

/// The parent of `pid`, from `/proc/<pid>/stat` (the field after the
/// command name, which may itself hold spaces and parentheses).
fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Which packages own each file dpkg installed, by real path (`/lib` and
/// `/usr/lib` are one directory on a merged-/usr system).
struct FileIndex {
    owners: HashMap<PathBuf, Vec<String>>,
}

impl FileIndex {
    fn read() -> io::Result<Self> {
        let mut owners: HashMap<PathBuf, Vec<String>> = HashMap::new();
        let mut real_dirs: HashMap<PathBuf, Option<PathBuf>> = HashMap::new();
        for entry in fs::read_dir(DPKG_INFO)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "list") {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            // `libc6:amd64.list` belongs to libc6.
            let package = stem.split(':').next().unwrap_or(stem).to_owned();
            for line in fs::read_to_string(&path)?.lines() {
                let listed = Path::new(line);
                let (Some(dir), Some(name)) = (listed.parent(), listed.file_name()) else {
                    continue;
                };
                let real = real_dirs
                    .entry(dir.to_path_buf())
                    .or_insert_with(|| fs::canonicalize(dir).ok());
                if let Some(real) = real {
                    owners
                        .entry(real.join(name))
                        .or_default()
                        .push(package.clone());
                }
            }
        }
        Ok(Self { owners })
    }
}

/// The installed packages' relations, from dpkg's status file.
struct Status {
    essential: Vec<String>,
    /// Package to the packages it depends on (every installed alternative).
    depends: HashMap<String, Vec<String>>,
    /// Virtual package to the installed packages that provide it.
    provides: HashMap<String, Vec<String>>,
}

impl Status {
    fn read() -> io::Result<Self> {
        let text = fs::read_to_string(DPKG_STATUS)?;
        let mut status = Self {
            essential: Vec::new(),
            depends: HashMap::new(),
            provides: HashMap::new(),
        };
        for paragraph in text.split("\n\n") {
            let field = |name: &str| {
                paragraph.lines().find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|r| r.strip_prefix(':'))
                        .map(str::trim)
                })
            };
            let (Some(package), Some(state)) = (field("Package"), field("Status")) else {
                continue;
            };
            if !state.ends_with(" installed") {
                continue;
            }
            if field("Essential") == Some("yes") {
                status.essential.push(package.to_owned());
            }
            let mut deps = Vec::new();
            for relation in ["Pre-Depends", "Depends"] {
                deps.extend(field(relation).into_iter().flat_map(names));
            }
            status
                .depends
                .entry(package.to_owned())
                .or_default()
                .extend(deps);
            for virtual_name in field("Provides").into_iter().flat_map(names) {
                status
                    .provides
                    .entry(virtual_name)
                    .or_default()
                    .push(package.to_owned());
            }
        }
        Ok(status)
    }

    /// `roots`, the essential packages, and everything they depend on.
    fn closure(&self, roots: &[&str]) -> HashSet<String> {
        let mut covered = HashSet::new();
        let mut todo: Vec<String> = roots.iter().map(|r| (*r).to_owned()).collect();
        todo.extend(self.essential.iter().cloned());
        while let Some(package) = todo.pop() {
            if !covered.insert(package.clone()) {
                continue;
            }
            for dep in self.depends.get(&package).into_iter().flatten() {
                todo.push(dep.clone());
                todo.extend(self.provides.get(dep).into_iter().flatten().cloned());
            }
        }
        covered
    }
}

/// Package names in a relation field: `a (>= 1), b:any | c` gives a, b, c.
fn names(field: &str) -> impl Iterator<Item = String> + '_ {
    field
        .split([',', '|'])
        .filter_map(|alt| alt.split_whitespace().next())
        .map(|name| name.split(':').next().unwrap_or(name).to_owned())
}

/// The few fanotify calls the audit makes (notification class only).
mod fanotify {
    use super::{AsRawFd, CString, FromRawFd, OsStrExt, OwnedFd, Path, io};

    const FAN_CLOEXEC: libc::c_uint = 0x1;
    const FAN_UNLIMITED_QUEUE: libc::c_uint = 0x10;
    const FAN_MARK_ADD: libc::c_uint = 0x1;
    const FAN_MARK_FILESYSTEM: libc::c_uint = 0x100;
    const FAN_OPEN: u64 = 0x20;
    const FAN_OPEN_EXEC: u64 = 0x1000;
    const FAN_Q_OVERFLOW: u64 = 0x4000;
    const METADATA_VERSION: u8 = 3;
    /// `struct fanotify_event_metadata`: len u32, vers u8, reserved u8,
    /// metadata_len u16, mask u64, fd i32, pid i32.
    const METADATA_LEN: usize = 24;

    pub enum Event {
        Open { file: OwnedFd, pid: u32 },
        Overflow,
    }

    pub fn init() -> io::Result<OwnedFd> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe {
            libc::fanotify_init(
                FAN_CLOEXEC | FAN_UNLIMITED_QUEUE,
                // The event file descriptors we are given: read-only, never
                // inherited.
                (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC).cast_unsigned(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Every open and exec on the filesystem that holds `path`.
    pub fn mark_filesystem(fd: &OwnedFd, path: &Path) -> io::Result<()> {
        let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: valid descriptor and NUL-terminated path.
        let rc = unsafe {
            libc::fanotify_mark(
                fd.as_raw_fd(),
                FAN_MARK_ADD | FAN_MARK_FILESYSTEM,
                FAN_OPEN | FAN_OPEN_EXEC,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether events are waiting, waiting at most `ms`.
    pub fn wait(fd: &OwnedFd, ms: i32) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        match rc {
            0 => Ok(false),
            n if n > 0 => Ok(true),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// One read's worth of events (after [`wait`] said there are some).
    pub fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Vec<Event>> {
        // SAFETY: reads into a buffer we own, of the length given.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        let mut events = Vec::new();
        let mut at = 0;
        while at + METADATA_LEN <= n {
            let b = &buf[at..at + METADATA_LEN];
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if b[4] != METADATA_VERSION || len < METADATA_LEN || at + len > n {
                return Err(io::Error::other(format!(
                    "unexpected fanotify event (version {}, length {len})",
                    b[4]
                )));
            }
            let mask = u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
            let raw_fd = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
            let pid = u32::from_ne_bytes([b[20], b[21], b[22], b[23]]);
            if mask & FAN_Q_OVERFLOW != 0 {
                events.push(Event::Overflow);
            }
            if raw_fd >= 0 {
                // SAFETY: the kernel opened this descriptor for us; we own it.
                let file = unsafe { OwnedFd::from_raw_fd(raw_fd) };
                events.push(Event::Open { file, pid });
            }
            at += len;
        }
        Ok(events)
    }

    pub fn is_dir(file: &OwnedFd) -> bool {
        // SAFETY: fstat into a zeroed stat on a valid descriptor.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(file.as_raw_fd(), &raw mut st) == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFDIR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_fields_give_every_name_without_versions_or_arch() {
        let got: Vec<String> =
            names("libc6 (>= 2.34), libgcc-s1:any | libgcc1, debconf (>= 0.5) | debconf-2.0")
                .collect();
        assert_eq!(
            got,
            ["libc6", "libgcc-s1", "libgcc1", "debconf", "debconf-2.0"]
        );
    }

    #[test]
    fn the_closure_follows_depends_and_provides_from_roots_and_essentials() {
        let status = Status {
            essential: vec!["bash".into()],
            depends: HashMap::from([
                ("bash".into(), vec!["base-files".into()]),
                ("gcc".into(), vec!["gcc-12".into()]),
                ("gcc-12".into(), vec!["binutils".into(), "libc-dev".into()]),
                ("libc6-dev".into(), vec!["libc6".into()]),
                ("libprotobuf-dev".into(), vec!["libprotobuf32".into()]),
            ]),
            provides: HashMap::from([("libc-dev".into(), vec!["libc6-dev".into()])]),
        };
        let covered = status.closure(&["gcc"]);
        for p in [
            "bash",
            "base-files",
            "gcc",
            "gcc-12",
            "binutils",
            "libc6-dev",
            "libc6",
        ] {
            assert!(covered.contains(p), "{p} is covered");
        }
        assert!(
            !covered.contains("libprotobuf-dev"),
            "not named, not a dependency"
        );
        assert!(!covered.contains("libprotobuf32"));
    }

    #[test]
    fn a_parent_is_read_past_a_command_name_with_parentheses() {
        // This process's own parent, through the same parser.
        let me = std::process::id();
        let ppid = parent(me).expect("our own /proc/self/stat");
        // SAFETY: getppid has no preconditions.
        let expected = unsafe { libc::getppid() }.cast_unsigned();
        assert_eq!(ppid, expected);
    }
}
