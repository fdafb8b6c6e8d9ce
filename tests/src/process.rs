//! Child processes owned by a test: started (optionally inside a network
//! namespace), signalled and killed by PID, and always reaped.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::netns;

/// Set by [`detach_children`].
static DETACHED: AtomicBool = AtomicBool::new(false);

/// From now on, children may outlive this process: they start in a session
/// of their own (so a terminal's Ctrl-C does not reach them) and without
/// `PR_SET_PDEATHSIG`. For `cargo xtask demo --keep`, which leaves its lab
/// up on purpose; `--down` takes it away.
pub fn detach_children() {
    DETACHED.store(true, Ordering::SeqCst);
}

/// A process that is killed (SIGKILL) and reaped when the last handle drops.
#[derive(Clone)]
pub struct Process {
    inner: Arc<Mutex<Inner>>,
    pid: u32,
    log: PathBuf,
}

struct Inner {
    child: Child,
    status: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` with stdout and stderr appended to `log`. With `netns`,
    /// the child enters that namespace before exec. Either way it gets
    /// SIGKILL when the spawning thread exits (`PR_SET_PDEATHSIG`), so a
    /// killed test leaves no process behind: spawn from the test's own
    /// thread, not from a short-lived helper thread. (Not after
    /// [`detach_children`].)
    pub fn spawn(mut cmd: Command, netns: Option<&str>, log: &Path) -> io::Result<Self> {
        let out = File::options().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let ns_file = netns
            .map(|name| File::open(netns::path(name)))
            .transpose()?;
        let ns_fd = ns_file.as_ref().map(AsRawFd::as_raw_fd);
        let detached = DETACHED.load(Ordering::SeqCst);
        // SAFETY: between fork and exec the closure only makes the
        // async-signal-safe syscalls setsid, prctl and setns (on an fd
        // opened before the fork).
        unsafe {
            cmd.pre_exec(move || {
                if detached {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(fd) = ns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(ns_file);
        let pid = child.id();
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                child,
                status: None,
            })),
            pid,
            log: log.to_path_buf(),
        })
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The file that collects the process's stdout and stderr.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far (for assertions and failure messages).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) unless the process was reaped.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.status.is_some() || inner.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.pid).map_err(io::Error::other)?;
        // SAFETY: the child is not reaped yet, so the pid is still ours.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the process is still running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        let mut inner = self.lock();
        if inner.status.is_some() {
            return false;
        }
        match inner.child.try_wait() {
            Ok(Some(status)) => {
                inner.status = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Waits up to `timeout` for the process to exit.
    #[must_use]
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut inner = self.lock();
                if let Some(status) = inner.status {
                    return Some(status);
                }
                if let Ok(Some(status)) = inner.child.try_wait() {
                    inner.status = Some(status);
                    return Some(status);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&self) {
        let mut inner = self.lock();
        if inner.status.is_none() {
            let _ = inner.child.kill();
            inner.status = inner.child.wait().ok();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The last handle kills; clones (e.g. the lab's list) share the child.
        if Arc::strong_count(&self.inner) == 1 {
            self.kill();
        }
    }
}
