//! Running the operator's check scripts (`exec:NAME` checks), the one
//! place the agent starts a program: never a command line from a record,
//! only a file in the directory the operator names (`--check-dir`), owned
//! by root (or the agent's user) and writable by nobody else all the way
//! up (keepalived's `enable_script_security`), run with no arguments, a
//! minimal environment, no capabilities, no way to gain privileges, and,
//! when the agent runs as root, as an unprivileged user.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// Where scripts live and who runs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptPolicy {
    /// `--check-dir`; without it no script runs.
    pub dir: Option<PathBuf>,
    /// The user and group scripts run as (when the agent is root).
    pub run_as: Option<(u32, u32)>,
}

/// Why a script did not run or did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("exec:{0}: no --check-dir is set on this host, so no script runs")]
    NoDir(String),
    #[error("exec:{script}: {path}: {source}")]
    Missing {
        script: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("exec:{script}: {path} {why}: refusing to run it")]
    Unsafe {
        script: String,
        path: PathBuf,
        why: &'static str,
    },
    #[error("exec:{script}: starting {path}: {source}")]
    Spawn {
        script: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("exec:{script}: {status}")]
    Exit { script: String, status: ExitStatus },
}

/// The user `name`'s uid and gid, for [`ScriptPolicy::run_as`].
#[must_use]
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let name = CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; it is
    // read at once, before any other call that could reuse it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-null, as checked.
    let pw = unsafe { &*pw };
    Some((pw.pw_uid, pw.pw_gid))
}

/// The script `name` in `policy`'s directory, checked: a regular,
/// executable file that it and every directory above it are owned by root
/// or this process's user and writable by no one else.
pub fn resolve(policy: &ScriptPolicy, name: &str) -> Result<PathBuf, ScriptError> {
    let dir = policy
        .dir
        .as_ref()
        .ok_or_else(|| ScriptError::NoDir(name.to_owned()))?;
    let path = dir.join(name);
    let real = std::fs::canonicalize(&path).map_err(|source| ScriptError::Missing {
        script: name.to_owned(),
        path: path.clone(),
        source,
    })?;
    let unsafe_ = |path: &Path, why| ScriptError::Unsafe {
        script: name.to_owned(),
        path: path.to_path_buf(),
        why,
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let meta = std::fs::metadata(&real).map_err(|source| ScriptError::Missing {
        script: name.to_owned(),
        path: real.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(unsafe_(&real, "is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(unsafe_(&real, "is not executable"));
    }
    for p in real.ancestors() {
        let m = std::fs::metadata(p).map_err(|source| ScriptError::Missing {
            script: name.to_owned(),
            path: p.to_path_buf(),
            source,
        })?;
        if m.uid() != 0 && m.uid() != me {
            return Err(unsafe_(p, "is owned by another user"));
        }
        // Writable by group or others: someone else could replace it. The
        // sticky bit (/tmp) does not help: the script itself must be safe.
        if m.permissions().mode() & 0o022 != 0 {
            return Err(unsafe_(p, "is writable by group or others"));
        }
    }
    Ok(real)
}

/// Runs the script `name` (see [`resolve`]) to the end; `Ok` when it
/// exits 0. The caller bounds the time; dropping the future kills it.
pub async fn run(policy: &ScriptPolicy, name: &str) -> Result<(), ScriptError> {
    run_with(policy, name, &[]).await
}

/// [`run`], with `args` as the script's arguments (never through a shell).
pub async fn run_with(policy: &ScriptPolicy, name: &str, args: &[&str]) -> Result<(), ScriptError> {
    let path = resolve(policy, name)?;
    let run_as = policy.run_as.filter(|_| {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    });
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec the closure makes only the
    // async-signal-safe calls prctl, setgroups, setgid and setuid.
    unsafe {
        cmd.pre_exec(move || drop_privileges(run_as));
    }
    let status = cmd.status().await.map_err(|source| ScriptError::Spawn {
        script: name.to_owned(),
        path: path.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(ScriptError::Exit {
            script: name.to_owned(),
            status,
        })
    }
}

/// In the child: no ambient capabilities (so nothing survives the exec),
/// no new privileges (setuid files do not help), and (when root) another
/// user, which also empties the capability sets.
fn drop_privileges(run_as: Option<(u32, u32)>) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain prctl and credential calls on the child itself.
    unsafe {
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        if let Some((uid, gid)) = run_as {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_dir_nothing_runs() {
        let policy = ScriptPolicy::default();
        assert!(matches!(
            resolve(&policy, "check"),
            Err(ScriptError::NoDir(_))
        ));
    }

    #[test]
    fn scripts_writable_by_others_or_not_executable_are_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let policy = ScriptPolicy {
            dir: Some(dir.path().to_path_buf()),
            run_as: None,
        };
        let script = dir.path().join("check");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("writing");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let refused = |why: &str| {
            let e = resolve(&policy, "check").expect_err("refused").to_string();
            assert!(e.contains(why), "{e}");
        };
        refused("not executable");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        refused("writable by group or others");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // The temp dir sits in /tmp, writable by all: still refused.
        let e = resolve(&policy, "check").expect_err("refused").to_string();
        assert!(e.contains("/tmp"), "{e}");
        assert!(matches!(
            resolve(&policy, "missing"),
            Err(ScriptError::Missing { .. })
        ));
    }
}
