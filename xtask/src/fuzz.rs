//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/` (libFuzzer,
//! AddressSanitizer, the nightly the eBPF build uses), each for a bounded
//! time, failing on any crash.
//!
//! cargo-fuzz is built into `target/tools/` like bpf-linker. Each target
//! reads its committed seeds (`fuzz/corpus/<target>`) and grows a working
//! corpus in `target/fuzz/corpus/<target>`, kept between runs on one
//! machine; crash inputs land in `fuzz/artifacts/<target>/` (ignored by git).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;

use crate::step::{self, Step, Tally, cargo, output};
use crate::{deps, ebpf};

/// The targets, in the order they run.
pub const TARGETS: &[&str] = &["record", "segment_vip", "api_body"];
/// Seconds per target inside `cargo xtask test`.
pub const TEST_SECONDS: u32 = 20;
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// A single input slower than this is reported as a hang (libFuzzer's
/// `-timeout`; its default is 20 minutes).
const INPUT_TIMEOUT_SECS: u32 = 10;

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds per target (libFuzzer's -max_total_time, where 0 would mean
    /// no limit).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// Only these targets (default: all of them).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    targets: Vec<String>,
}

/// `cargo xtask fuzz`: installs what is missing, then fuzzes.
pub fn run(root: &Path, args: &FuzzArgs) -> anyhow::Result<()> {
    // The fuzz targets link the agent: protoc for etcd-client, the eBPF
    // object it embeds (whose build also installs the nightly).
    deps::ensure_packages(step::is_root())?;
    ebpf::build(root)?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    let mut tally = Tally::default();
    let result = fuzz(root, &targets, args.seconds, &mut tally);
    println!(
        "summary: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    result
}

/// The seed checks, the build, and each target for `seconds`; one tally
/// entry per target. Fails after running every target if any crashed.
pub fn fuzz(root: &Path, targets: &[&str], seconds: u32, tally: &mut Tally) -> anyhow::Result<()> {
    let bin = ensure_cargo_fuzz(root)?;

    // Stable, no sanitizer: every seed is accepted or rejected as its name
    // says, so the corpus keeps meaning what it claims.
    let step = Step::start("fuzz crate unit tests (the seeds behave as named)");
    step::run_tests(
        cargo()
            .current_dir(root.join("fuzz"))
            .args(["test", "--lib", "--target-dir", "../target"]),
        tally,
    )?;
    step.done();

    let step = Step::start(
        "building the fuzz targets (nightly, libFuzzer, AddressSanitizer; about 7 minutes \
         on 2 cores the first time)",
    );
    step::run(cargo_fuzz(root, &bin).args(["build", "--target-dir", "target/fuzz"]))?;
    step.done();

    let mut failed = Vec::new();
    for target in targets {
        let step = Step::start(format!("fuzzing {target} for {seconds} s"));
        match fuzz_one(root, &bin, target, seconds) {
            Ok(stats) => {
                eprintln!("    {target}: {stats}");
                tally.passed += 1;
                step.done();
            }
            Err(e) => {
                eprintln!("    {target} FAILED: {e:#}");
                tally.failed += 1;
                failed.push(*target);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/<target>/; reproduce with \
             `cargo +nightly fuzz run <target> <input>` with {} on PATH)",
            failed.join(", "),
            bin.parent()
                .map_or_else(String::new, |d| d.display().to_string())
        );
    }
    Ok(())
}

/// `cargo fmt --check` and clippy (stable, `-D warnings`) on the fuzz
/// crate, its own workspace; clippy shares the workspace's target
/// directory, and so its dependencies.
pub fn lint(root: &Path) -> anyhow::Result<()> {
    let step = Step::start("cargo fmt --check and clippy --all-targets -D warnings (fuzz crate)");
    let dir = root.join("fuzz");
    step::run(cargo().current_dir(&dir).args(["fmt", "--check"]))?;
    step::run(cargo().current_dir(&dir).args([
        "clippy",
        "--all-targets",
        "--target-dir",
        "../target",
        "--",
        "-D",
        "warnings",
    ]))?;
    step.done();
    Ok(())
}

/// cargo-fuzz in `target/tools/bin`, installed with the nightly if missing
/// or another version.
fn ensure_cargo_fuzz(root: &Path) -> anyhow::Result<PathBuf> {
    let tools = root.join("target/tools");
    let bin = tools.join("bin/cargo-fuzz");
    let wanted = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    let have = output(Command::new(&bin).arg("--version")).unwrap_or_default();
    if have.trim() == wanted {
        eprintln!("==> {wanted} (cached in {})", tools.display());
        return Ok(bin);
    }
    let step = Step::start(format!(
        "building cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute on 2 cores)"
    ));
    step::run(
        cargo()
            .args([
                "+nightly",
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
                "--root",
            ])
            .arg(&tools)
            .env("CARGO_TARGET_DIR", tools.join("build")),
    )?;
    step.done();
    Ok(bin)
}

/// `cargo +nightly fuzz ...` from the repository root, finding cargo-fuzz
/// in `target/tools/bin` first.
fn cargo_fuzz(root: &Path, bin: &Path) -> Command {
    let tools = bin.parent().map(Path::to_path_buf).unwrap_or_default();
    let system = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(tools).chain(std::env::split_paths(&system));
    let mut cmd = cargo();
    cmd.current_dir(root).args(["+nightly", "fuzz"]);
    if let Ok(path) = std::env::join_paths(dirs) {
        cmd.env("PATH", path);
    }
    cmd
}

/// Runs one target for `seconds`; returns libFuzzer's closing figures.
fn fuzz_one(root: &Path, bin: &Path, target: &str, seconds: u32) -> anyhow::Result<String> {
    let work = root.join("target/fuzz/corpus").join(target);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let log_path = root.join("target/fuzz").join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    // The working corpus first: libFuzzer adds new inputs to the first
    // directory only, so the committed seeds stay as they are.
    let mut cmd = cargo_fuzz(root, bin);
    cmd.args(["run", "--target-dir", "target/fuzz", target])
        .arg(&work)
        .arg(root.join("fuzz/corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-print_final_stats=1")
        .stdout(log.try_clone().context("duplicating the log handle")?)
        .stderr(log);
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", step::describe(&cmd)))?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        bail!(
            "{} exited with {status}; from {}:\n{}",
            step::describe(&cmd),
            log_path.display(),
            failure(&text)
        );
    }
    Ok(summary(&text))
}

/// What a failed run's log says about the failure: the panic message (or
/// the sanitizer's error) and libFuzzer's summary, then cargo-fuzz's closing
/// lines (the input, its bytes, how to reproduce it).
fn failure(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut out: Vec<&str> = Vec::new();
    if let Some(at) = lines
        .iter()
        .position(|l| l.contains("panicked at") || l.contains("ERROR: AddressSanitizer"))
    {
        out.extend(
            lines[at..]
                .iter()
                .take(8)
                .take_while(|l| !l.starts_with("stack backtrace") && !l.starts_with("note:")),
        );
    }
    out.extend(lines.iter().filter(|l| l.starts_with("SUMMARY:")));
    let closing = lines
        .iter()
        .rposition(|l| l.contains("Failing input"))
        .unwrap_or(lines.len().saturating_sub(20));
    out.extend(lines[closing..].iter().filter(|l| !l.trim().is_empty()));
    out.join("\n")
}

/// `runs, exec/s, cov, ft, corpus` from libFuzzer's `DONE` line and final
/// stats.
fn summary(log: &str) -> String {
    let done = log
        .lines()
        .rev()
        .find(|l| l.split_whitespace().nth(1) == Some("DONE"))
        .unwrap_or_default();
    let field = |name: &str| {
        let mut words = done.split_whitespace();
        words.find(|w| *w == name).and(words.next()).unwrap_or("?")
    };
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .map_or("?", str::trim)
    };
    format!(
        "{} runs, {} exec/s, cov {}, ft {}, corpus {}, peak rss {} MB",
        stat("number_of_executed_units"),
        stat("average_exec_per_sec"),
        field("cov:"),
        field("ft:"),
        field("corp:"),
        stat("peak_rss_mb"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_libfuzzer_output() {
        let log = "#2\tINITED cov: 10 ft: 11 corp: 2/40b exec/s: 0 rss: 70Mb\n\
                   #88354\tDONE   cov: 3585 ft: 7746 corp: 848/71Kb lim: 298 exec/s: 4207 rss: 464Mb\n\
                   stat::number_of_executed_units: 88354\n\
                   stat::average_exec_per_sec:     4207\n\
                   stat::new_units_added:          831\n\
                   stat::peak_rss_mb:              464\n";
        assert_eq!(
            summary(log),
            "88354 runs, 4207 exec/s, cov 3585, ft 7746, corpus 848/71Kb, peak rss 464 MB"
        );
        let crashed = "INFO: Seed: 1\nthread '<unnamed>' (1) panicked at src/lib.rs:5:5:\n\
                       simulated crash\nstack backtrace:\n   0: x\n\
                       ==1== ERROR: libFuzzer: deadly signal\nSUMMARY: libFuzzer: deadly signal\n\
                       stat::peak_rss_mb: 294\n\nFailing input:\n\n\tfuzz/artifacts/a/crash-1\n\n\
                       Reproduce with:\n\n\tcargo fuzz run a fuzz/artifacts/a/crash-1\n";
        assert_eq!(
            failure(crashed),
            "thread '<unnamed>' (1) panicked at src/lib.rs:5:5:\nsimulated crash\n\
             SUMMARY: libFuzzer: deadly signal\nFailing input:\n\tfuzz/artifacts/a/crash-1\n\
             Reproduce with:\n\tcargo fuzz run a fuzz/artifacts/a/crash-1"
        );
        assert_eq!(
            summary(""),
            "? runs, ? exec/s, cov ?, ft ?, corpus ?, peak rss ? MB"
        );
    }
}
