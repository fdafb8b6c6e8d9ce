//! `cargo xtask demo`: installs and builds what the demo needs, then runs
//! it (root): etcd and hosts in network namespaces, the mesh and a failover,
//! live. `--ci` runs one cycle unattended.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

use crate::step::{self, is_root};
use crate::{deps, ebpf};

/// Builds the agent and the demo (debug, the same build the tests use).
pub fn build(root_dir: &Path) -> anyhow::Result<()> {
    step::build_agent_and(root_dir, "linkmesh-demo", false)
}

#[derive(clap::Args, Default)]
pub struct DemoArgs {
    /// Run one cycle unattended; exit 0 only if every step succeeded.
    #[arg(long)]
    pub ci: bool,
    /// Leave the lab up after the last step, printing how to enter it.
    #[arg(long, conflicts_with = "down")]
    pub keep: bool,
    /// Tear down a lab left up with --keep.
    #[arg(long)]
    pub down: bool,
}

/// The demo, ready to run (after [`build`]).
pub fn command(root_dir: &Path, args: &DemoArgs) -> Command {
    let debug: PathBuf = root_dir.join("target/debug");
    let mut cmd = Command::new(debug.join("linkmesh-demo"));
    cmd.env("LINKMESH_BIN", debug.join("linkmesh"));
    for (on, flag) in [
        (args.ci, "--ci"),
        (args.keep, "--keep"),
        (args.down, "--down"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    cmd
}

pub fn run(root_dir: &Path, args: &DemoArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces: run `cargo xtask demo` as root");
    }
    if !args.down {
        deps::ensure_packages(true)?;
        ebpf::build(root_dir)?;
    }
    build(root_dir)?;
    run_in_foreground(&mut command(root_dir, args))
}

/// Runs the demo while this process ignores Ctrl-C: the terminal sends
/// SIGINT to the demo too, which tears its lab down and exits, and
/// `cargo xtask demo` returns only then, with the demo's status.
fn run_in_foreground(cmd: &mut Command) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: between fork and exec, only signal(2), which is
    // async-signal-safe: the demo gets the default dispositions back.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    let previous = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let result = step::run(cmd);
    // SAFETY: restores what was there before.
    unsafe { libc::signal(libc::SIGINT, previous) };
    result
}
