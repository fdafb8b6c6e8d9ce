//! Running commands and printing one line per step.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// The repository root (the parent of this crate's directory).
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

/// A step in progress: prints `==> what` now and `    ok (1.2 s)` when done.
pub struct Step {
    what: String,
    start: Instant,
}

impl Step {
    pub fn start(what: impl Into<String>) -> Self {
        let what = what.into();
        eprintln!("==> {what}");
        Self {
            what,
            start: Instant::now(),
        }
    }

    pub fn done(self) {
        eprintln!(
            "    done in {:.1} s: {}",
            self.start.elapsed().as_secs_f64(),
            self.what
        );
    }
}

/// Runs a command with inherited stdio (so cargo's own progress shows),
/// failing with the command line when it does not exit 0.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs a command and returns its stdout, failing on a non-zero exit.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{} printed non-UTF-8", describe(cmd)))
}

/// Totals of libtest's `test result:` lines.
#[derive(Debug, Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Tally {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test ...`, echoing its output and adding its results to `tally`.
pub fn run_tests(cmd: &mut Command, tally: &mut Tally) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.with_context(|| format!("reading the output of {}", describe(cmd)))?;
            println!("{line}");
            tally.add_line(&line);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// A `cargo` command with the variables that an outer `cargo run` sets for
/// xtask removed, so the inner build picks its own toolchain and flags.
/// Builds the agent binary and the `linkmesh-tools` binary `tool`
/// (debug or release), as one progress step.
pub fn build_agent_and(
    root_dir: &std::path::Path,
    tool: &str,
    release: bool,
) -> anyhow::Result<()> {
    let profile = if release { "release" } else { "debug" };
    let step = Step::start(format!("building the agent and {tool} ({profile})"));
    let mut cmd = cargo();
    cmd.current_dir(root_dir).arg("build");
    if release {
        cmd.arg("--release");
    }
    run(cmd.args([
        "--package",
        "linkmesh",
        "--bin",
        "linkmesh",
        "--bin",
        "linkmesh-cni",
        "--package",
        "linkmesh-tools",
        "--bin",
        tool,
    ]))?;
    step.done();
    Ok(())
}

pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

pub fn is_root() -> bool {
    // `id -u` keeps xtask free of libc bindings; it is in coreutils.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}
