//! Installing what a fresh Debian machine lacks.

use std::process::Command;

use anyhow::bail;

use crate::step::{Step, output, run};

/// Debian packages the build and the tests need, and why.
pub const PACKAGES: &[(&str, &str)] = &[
    ("etcd-server", "the real etcd the integration tests start"),
    ("protobuf-compiler", "protoc, for etcd-client's build"),
    ("iproute2", "`ip netns` for the test lab's namespaces"),
    ("iputils-ping", "ping, the tests' probe across the overlay"),
    (
        "faketime",
        "libfaketime: steps one agent's wall clock in the clock-jump test",
    ),
    ("g++", "the C++ compiler cargo fuzz builds libFuzzer with"),
];

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

/// Installs missing packages with apt (`apt-get update` once, only when
/// something is missing). Without root it names what is missing instead.
pub fn ensure_packages(root: bool) -> anyhow::Result<()> {
    let missing: Vec<_> = PACKAGES.iter().filter(|(p, _)| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("==> Debian packages present: {}", names(PACKAGES.iter()));
        return Ok(());
    }
    for (package, why) in &missing {
        eprintln!("    missing: {package} ({why})");
    }
    if !root {
        bail!(
            "missing Debian packages ({}); run `cargo xtask test` as root to install them, \
             or `apt-get install` them",
            names(missing.iter().copied())
        );
    }
    let step = Step::start("apt-get update");
    run(Command::new("apt-get").args(["update", "-q"]))?;
    step.done();
    let step = Step::start(format!(
        "apt-get install {}",
        names(missing.iter().copied())
    ));
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(missing.iter().map(|(p, _)| *p))
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    step.done();
    Ok(())
}

/// Installs one more package a particular task needs (root only).
pub fn ensure_extra(package: &str, why: &str) -> anyhow::Result<()> {
    if installed(package) {
        return Ok(());
    }
    let step = Step::start(format!("apt-get install {package} ({why})"));
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    step.done();
    Ok(())
}

/// Adds clippy and rustfmt to the default toolchain when they are missing.
pub fn ensure_rust_components() -> anyhow::Result<()> {
    let have = |sub: &str| {
        Command::new("cargo")
            .args([sub, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<_> = [("clippy", "clippy"), ("fmt", "rustfmt")]
        .into_iter()
        .filter(|(sub, _)| !have(sub))
        .map(|(_, component)| component)
        .collect();
    if !missing.is_empty() {
        let step = Step::start(format!("rustup component add {}", missing.join(" ")));
        run(Command::new("rustup")
            .args(["component", "add"])
            .args(&missing))?;
        step.done();
    }
    Ok(())
}

fn names<'a>(packages: impl Iterator<Item = &'a (&'a str, &'a str)>) -> String {
    packages.map(|(p, _)| *p).collect::<Vec<_>>().join(" ")
}
