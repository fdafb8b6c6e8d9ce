//! `cargo xtask bench <what>`: benchmarks in the lab (root), release builds.

use std::path::Path;

use anyhow::bail;

use crate::step::{self, is_root};
use crate::{deps, ebpf};

pub fn run(root_dir: &Path, what: &str) -> anyhow::Result<()> {
    if !["mesh", "vip", "ebpf", "idle"].contains(&what) {
        bail!("unknown benchmark {what:?}; known: mesh, vip, ebpf, idle");
    }
    if !is_root() {
        bail!("benchmarks run in network namespaces: run `cargo xtask bench {what}` as root");
    }
    deps::ensure_packages(true)?;
    if what == "vip" {
        // The baseline: keepalived (VRRP) on the same lab.
        deps::ensure_extra("keepalived", "the VRRP baseline of the vip benchmark")?;
    }
    if what == "ebpf" {
        deps::ensure_extra("iperf3", "the throughput half of the ebpf benchmark")?;
    }
    ebpf::build(root_dir)?;
    step::build_agent_and(root_dir, "linkmesh-bench", true)?;
    let release = root_dir.join("target/release");
    step::run(
        std::process::Command::new(release.join("linkmesh-bench"))
            .arg(what)
            .env("LINKMESH_BIN", release.join("linkmesh")),
    )
}
