//! Running code inside a named network namespace (`/run/netns/NAME`).
//!
//! The namespace of a thread is changed with `setns`, so code runs on a
//! fresh thread that enters the namespace first; sockets opened there stay
//! in that namespace wherever they are used afterwards.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::thread;

#[must_use]
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Moves the calling thread into namespace `name`.
pub fn enter(name: &str) -> io::Result<()> {
    let file = File::open(path(name))?;
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `name` and waits for it.
/// A panic in `f` is resumed on the caller's thread, keeping its message.
pub fn run_in<T, F>(name: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match spawn_in(name, f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Starts `f` on a new thread inside namespace `name`.
pub fn spawn_in<T, F>(name: &str, f: F) -> thread::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let name = name.to_owned();
    thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            enter(&name).unwrap_or_else(|e| panic!("entering network namespace {name}: {e}"));
            f()
        })
        .expect("spawning a thread")
}

/// Runs an async block on a current-thread tokio runtime inside namespace `name`.
pub fn block_on_in<T, F, Fut>(name: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    run_in(name, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a tokio runtime")
            .block_on(f())
    })
}
