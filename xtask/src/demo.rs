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

/// The demo, ready to run (after [`build`]).
pub fn command(root_dir: &Path, ci: bool) -> Command {
    let debug: PathBuf = root_dir.join("target/debug");
    let mut cmd = Command::new(debug.join("linkmesh-demo"));
    cmd.env("LINKMESH_BIN", debug.join("linkmesh"));
    if ci {
        cmd.arg("--ci");
    }
    cmd
}

pub fn run(root_dir: &Path, ci: bool) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces: run `cargo xtask demo` as root");
    }
    deps::ensure_packages(true)?;
    ebpf::build(root_dir)?;
    build(root_dir)?;
    step::run(&mut command(root_dir, ci))
}
