//! `cargo xtask test`: the one command that runs everything.

use std::fs;
use std::path::Path;

use anyhow::bail;
use clap::Args;

use crate::step::{self, Step, cargo, is_root};
use crate::{audit, deps, ebpf};

/// Prefix of every namespace, link and etcd member name the test lab makes.
const LAB_PREFIX: &str = "lmt";

#[derive(Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Skip the package audit (which, as root, fails the run when it used a
    /// Debian package that xtask/src/deps.rs does not name).
    #[arg(long)]
    no_audit: bool,
    /// Seconds per fuzz target, run after every other test (0 skips them;
    /// longer runs: `cargo xtask fuzz --seconds 600`).
    #[arg(long, default_value_t = crate::fuzz::TEST_SECONDS)]
    fuzz_seconds: u32,
    /// Passed to the integration test binary (a name filter, `--nocapture`, ...).
    #[arg(last = true)]
    libtest_args: Vec<String>,
}

pub fn run(root_dir: &Path, args: &TestArgs) -> anyhow::Result<()> {
    let root = is_root();
    if !root {
        eprintln!(
            "==> not running as root: the network-namespace integration tests need \
             CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF; running only what needs no root"
        );
    }
    deps::ensure_packages(root)?;
    deps::ensure_rust_components()?;
    // From here on, every file the build and the tests open is checked
    // against the package list.
    let audit = if root && !args.no_audit {
        Some(audit::Audit::start()?)
    } else {
        eprintln!("==> skipped: the package audit (it needs root; --no-audit turns it off)");
        None
    };
    ebpf::build(root_dir)?;

    if !args.no_lint {
        lint(root_dir)?;
    }

    let mut tally = step::Tally::default();
    let step = Step::start("unit tests (no root needed)");
    step::run_tests(
        cargo()
            .current_dir(root_dir)
            .args(["test", "--workspace", "--exclude", "linkmesh-tests"]),
        &mut tally,
    )?;
    step.done();

    if root {
        // The integration tests run the agent binary; the demo runs last.
        crate::demo::build(root_dir)?;
        if Path::new("/run/linkmesh-demo.json").exists() {
            eprintln!("==> a demo lab kept with --keep is up: taking it down first");
            let down = crate::demo::DemoArgs {
                down: true,
                ..Default::default()
            };
            step::run(&mut crate::demo::command(root_dir, &down))?;
        }
        let step = Step::start("integration tests (network namespaces, real etcd, real packets)");
        let mut result = step::run_tests(
            cargo()
                .current_dir(root_dir)
                .args(["test", "--package", "linkmesh-tests", "--tests", "--"])
                .args(&args.libtest_args),
            &mut tally,
        );
        if result.is_ok() && args.libtest_args.is_empty() {
            // The README's first command, one unattended cycle, kept up and
            // then taken down the way a reader would.
            let demo = Step::start(
                "the demo, one cycle, kept and taken down (demo --ci --keep, demo --down)",
            );
            result = kept_demo(root_dir);
            if result.is_ok() {
                tally.passed += 1;
                demo.done();
            } else {
                tally.failed += 1;
            }
        }
        // Check for leftovers even when a test failed: a failing test must
        // clean up too.
        let leftovers = leftovers();
        result?;
        if !leftovers.is_empty() {
            bail!("the suite left things behind: {}", leftovers.join(", "));
        }
        step.done();
        eprintln!("==> nothing left behind: no {LAB_PREFIX}-* namespace, no lab etcd running");
    } else {
        eprintln!("==> skipped: integration tests (they need root)");
    }
    // The package: built and linted always; installed, removed and purged
    // on this machine as root.
    if args.libtest_args.is_empty() {
        crate::deb::test(root_dir, root, &mut tally)?;
    }
    // Last, and bounded: longer runs are `cargo xtask fuzz --seconds 600`.
    if args.libtest_args.is_empty() && args.fuzz_seconds > 0 {
        crate::fuzz::fuzz(
            root_dir,
            crate::fuzz::TARGETS,
            args.fuzz_seconds,
            &mut tally,
        )?;
    }
    if let Some(audit) = audit {
        audit.finish(deps::PACKAGES, deps::READ_IF_PRESENT)?;
    }
    // One closing line for the whole run (libtest prints one per binary).
    println!(
        "summary: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    Ok(())
}

/// rustfmt (workspace and eBPF crate), clippy, and the fuzz crate's lints.
fn lint(root_dir: &Path) -> anyhow::Result<()> {
    let step = Step::start("cargo fmt --check (workspace and eBPF crate)");
    step::run(
        cargo()
            .current_dir(root_dir)
            .args(["fmt", "--all", "--check"]),
    )?;
    step::run(
        cargo()
            .current_dir(root_dir.join("ebpf/linkmesh-ebpf"))
            .args(["fmt", "--check"]),
    )?;
    step.done();
    let step = Step::start("cargo clippy --workspace --all-targets -D warnings");
    step::run(cargo().current_dir(root_dir).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step.done();
    crate::fuzz::lint(root_dir)?;
    Ok(())
}

/// `demo --ci --keep`, a check that the kept lab answers, and `demo --down`
/// (which runs even when the rest failed).
fn kept_demo(root_dir: &Path) -> anyhow::Result<()> {
    let keep = crate::demo::DemoArgs {
        ci: true,
        keep: true,
        down: false,
    };
    let down = crate::demo::DemoArgs {
        down: true,
        ..Default::default()
    };
    let result = step::run(&mut crate::demo::command(root_dir, &keep)).and_then(|()| {
        let up = leftovers();
        if up.iter().filter(|l| l.starts_with("namespace")).count() < 4
            || !up.iter().any(|l| l.starts_with("etcd"))
        {
            bail!("--keep left no lab up: {up:?}");
        }
        Ok(())
    });
    step::run(&mut crate::demo::command(root_dir, &down))?;
    result
}

/// Lab namespaces and lab etcd processes still present.
fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{LAB_PREFIX}-")) {
                found.push(format!("namespace {name}"));
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<_> = cmdline
                .split(|b| *b == 0)
                .map(String::from_utf8_lossy)
                .collect();
            let is_etcd = args.first().is_some_and(|a| {
                Path::new(a.as_ref())
                    .file_name()
                    .is_some_and(|f| f == "etcd")
            });
            if is_etcd
                && args
                    .iter()
                    .any(|a| a.contains(&format!("--name={LAB_PREFIX}-")))
            {
                found.push(format!("etcd pid {}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}
