//! `cargo xtask build-ebpf`: nightly + rust-src, bpf-linker built against the
//! nightly's own libLLVM (no system LLVM), then the eBPF crate.
//!
//! The object lands at [`OBJECT_PATH`]; the agent embeds it from there.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::step::{Step, cargo, output, run};

/// Where the built object is left, relative to the repository root.
pub const OBJECT_PATH: &str = "target/bpf/linkmesh.bpf.o";
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_TARGET: &str = "bpfel-unknown-none";

struct Nightly {
    sysroot: PathBuf,
    llvm_major: u32,
    /// `rustc -vV` of the nightly: part of the bpf-linker cache key.
    version_text: String,
}

/// Builds everything needed and returns the object's path.
pub fn build(root: &Path) -> anyhow::Result<PathBuf> {
    let nightly = ensure_nightly()?;
    let linker = ensure_bpf_linker(root, &nightly)?;
    build_object(root, &linker)
}

fn nightly_rustc(args: &[&str]) -> anyhow::Result<String> {
    output(
        Command::new("rustc")
            .arg("+nightly")
            .args(args)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

fn ensure_nightly() -> anyhow::Result<Nightly> {
    if nightly_rustc(&["-vV"]).is_err() {
        let step = Step::start("installing the nightly toolchain (rustup, minimal profile)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        step.done();
    }
    let version_text = nightly_rustc(&["-vV"])?;
    let sysroot = PathBuf::from(nightly_rustc(&["--print", "sysroot"])?.trim());
    let llvm_major = version_text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse::<u32>().ok())
        .context("`rustc +nightly -vV` prints no `LLVM version: N.M.P` line")?;

    let core_src = sysroot.join("lib/rustlib/src/rust/library/core");
    if core_src.is_dir() {
        eprintln!("==> nightly has rust-src (LLVM {llvm_major})");
    } else {
        let step = Step::start("adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        step.done();
    }
    Ok(Nightly {
        sysroot,
        llvm_major,
        version_text,
    })
}

/// The nightly's own shared LLVM, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn find_libllvm(sysroot: &Path) -> anyhow::Result<PathBuf> {
    let lib = sysroot.join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", lib.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("libLLVM") && name.contains(".so") {
            return Ok(entry.path());
        }
    }
    bail!(
        "no libLLVM*.so in {}: this nightly ships no shared LLVM to build bpf-linker against",
        lib.display()
    )
}

fn ensure_bpf_linker(root: &Path, nightly: &Nightly) -> anyhow::Result<PathBuf> {
    let tools = root.join("target/tools");
    let linker = tools.join("bin/bpf-linker");
    let libllvm = find_libllvm(&nightly.sysroot)?;
    let stamp = tools.join("bpf-linker.stamp");
    let key = format!(
        "bpf-linker {BPF_LINKER_VERSION}\nlibLLVM {}\n{}",
        libllvm.display(),
        nightly.version_text
    );
    let cached = fs::read_to_string(&stamp).is_ok_and(|s| s == key)
        && Command::new(&linker)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if cached {
        eprintln!(
            "==> bpf-linker {BPF_LINKER_VERSION} (cached in {})",
            tools.display()
        );
        return Ok(linker);
    }

    // A prefix holding libLLVM.so and the soname, both pointing at the
    // nightly's library: bpf-linker links against it and finds it at run time.
    let prefix_lib = tools.join("llvm-prefix/lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    }

    let feature = format!("llvm-{}", nightly.llvm_major);
    eprintln!("    against {}", libllvm.display());
    let step = Step::start(format!(
        "building bpf-linker {BPF_LINKER_VERSION} (feature {feature}; about a minute on 2 cores)"
    ));
    run(cargo()
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--locked",
            "--no-default-features",
            "--features",
            &feature,
            "--root",
        ])
        .arg(&tools)
        .env("LLVM_PREFIX", tools.join("llvm-prefix"))
        .env("CARGO_TARGET_DIR", root.join("target/tools/build")))?;
    fs::write(&stamp, key).with_context(|| format!("writing {}", stamp.display()))?;
    step.done();
    Ok(linker)
}

fn build_object(root: &Path, linker: &Path) -> anyhow::Result<PathBuf> {
    let crate_dir = root.join("ebpf/linkmesh-ebpf");
    let target_dir = root.join("target/ebpf");
    let step = Step::start(format!(
        "building the eBPF programs ({BPF_TARGET}, BTF, not stripped)"
    ));
    run(cargo()
        .current_dir(&crate_dir)
        .args([
            "+nightly",
            "build",
            "--release",
            "--target",
            BPF_TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", linker)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        ))?;
    let built = target_dir.join(BPF_TARGET).join("release/linkmesh-ebpf");
    let object = root.join(OBJECT_PATH);
    if let Some(dir) = object.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let changed = fs::read(&built)
        .with_context(|| format!("reading the built object {}", built.display()))?
        != fs::read(&object).unwrap_or_default();
    // Copy only on change, so the agent's build script does not rebuild it.
    if changed {
        fs::copy(&built, &object)
            .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    }
    let size = fs::metadata(&object)
        .with_context(|| format!("reading {}", object.display()))?
        .len();
    step.done();
    eprintln!("    object: {} ({size} bytes)", object.display());
    Ok(object)
}
