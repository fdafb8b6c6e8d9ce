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
    step::run(&mut command(root_dir, args))
}
