//! `cargo xtask bench <what>`: benchmarks in the lab (root), release builds.

use std::path::Path;

use anyhow::bail;

use crate::step::{self, is_root};
use crate::{deps, ebpf};

const BENCHMARKS: &[&str] = &["mesh", "vip", "ebpf", "idle", "scale", "stability", "cni"];

pub fn run(root_dir: &Path, what: &str) -> anyhow::Result<()> {
    let Some(what) = BENCHMARKS.iter().copied().find(|b| *b == what) else {
        bail!(
            "unknown benchmark {what:?}; known: {}",
            BENCHMARKS.join(", ")
        );
    };
    if !is_root() {
        bail!("benchmarks run in network namespaces: run `cargo xtask bench {what}` as root");
    }
    // With this benchmark's own (keepalived for vip, iperf3 for ebpf, both
    // and stress-ng for stability).
    deps::ensure(deps::Need::Bench(what), true)?;
    ebpf::build(root_dir)?;
    step::build_agent_and(root_dir, "linkmesh-bench", true)?;
    let release = root_dir.join("target/release");
    step::run(
        std::process::Command::new(release.join("linkmesh-bench"))
            .arg(what)
            .env("LINKMESH_BIN", release.join("linkmesh")),
    )
}
