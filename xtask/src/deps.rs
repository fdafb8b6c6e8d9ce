//! What linkmesh needs from the system, and installing what a fresh Debian
//! machine lacks.
//!
//! [`PACKAGES`] is the only place the project names a Debian package. The
//! package audit (`audit.rs`) holds every `cargo xtask test` run to it: a
//! file the build, the tests or the demo open that belongs to a package
//! this list does not cover fails the run, so a package installed by hand
//! on a developer's machine cannot hide a missing entry.

use std::process::Command;

use anyhow::bail;

use crate::step::{Step, output, run};

/// Which command needs a package.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Need {
    /// The build, the tests and the demo (every `cargo xtask` command that
    /// builds).
    Always,
    /// One benchmark, `cargo xtask bench <name>`.
    Bench(&'static str),
    /// Any of these benchmarks.
    Benches(&'static [&'static str]),
}

impl Need {
    /// Whether a package needed for `self` is needed when running `what`.
    fn covers(self, what: Self) -> bool {
        match (self, what) {
            (Self::Always, _) => true,
            (Self::Benches(list), Self::Bench(b)) => list.contains(&b),
            (a, b) => a == b,
        }
    }
}

/// A Debian package linkmesh's development needs.
pub struct Package {
    pub name: &'static str,
    /// Why: what breaks without it.
    pub why: &'static str,
    pub need: Need,
}

const fn always(name: &'static str, why: &'static str) -> Package {
    Package {
        name,
        why,
        need: Need::Always,
    }
}

/// Every Debian package the build, the tests, the demo and the benchmarks
/// use, and why. Packages that Debian marks essential (coreutils,
/// util-linux, ...) and what the listed ones depend on are covered without
/// being named; the audit checks the rest.
pub const PACKAGES: &[Package] = &[
    always(
        "etcd-server",
        "the real etcd the integration tests and the demo start",
    ),
    always("protobuf-compiler", "protoc, for etcd-client's build"),
    always(
        "libprotobuf-dev",
        "the well-known .proto files (google/protobuf/descriptor.proto) that etcd-client's \
         protos import; protobuf-compiler only recommends it",
    ),
    always(
        "iproute2",
        "`ip` and `bridge` for the test lab's namespaces, veths and bridges",
    ),
    always("iputils-ping", "ping, the tests' probe across the overlay"),
    always(
        "faketime",
        "libfaketime: steps one agent's wall clock in the clock-jump test",
    ),
    always(
        "gcc",
        "cc: the linker rustc calls, and the C compiler of crates with C parts (ring)",
    ),
    always(
        "libc6-dev",
        "the C library's headers and start files the linker needs; gcc only recommends it",
    ),
    always("g++", "the C++ compiler cargo fuzz builds libFuzzer with"),
    always(
        "bird2",
        "BIRD 2, the BGP daemons (each host's and the upstream router) of the routed-VIP test",
    ),
    always(
        "containernetworking-plugins",
        "host-local, the IPAM plugin linkmesh-cni delegates to in the CNI test",
    ),
    always(
        "dnsmasq-base",
        "dnsmasq (the binary alone, no system service), serving the agents' --hosts-dir file in the DNS test",
    ),
    always("bind9-dnsutils", "dig, the DNS test's queries to dnsmasq"),
    always(
        "dpkg-dev",
        "dpkg-shlibdeps, the Debian package's shared-library Depends (and binutils' strip)",
    ),
    always(
        "lintian",
        "the Debian package's check: `cargo xtask test` fails on a lintian error",
    ),
    always(
        "adduser",
        "the Debian package's postinst makes its user with it; dpkg -i in the test needs it",
    ),
    Package {
        name: "keepalived",
        why: "the VRRP baseline of the vip and stability benchmarks",
        need: Need::Benches(&["vip", "stability"]),
    },
    Package {
        name: "iperf3",
        why: "the throughput half of the ebpf benchmark, the underlay load of the stability one",
        need: Need::Benches(&["ebpf", "stability"]),
    },
    Package {
        name: "stress-ng",
        why: "the CPU load of the stability benchmark",
        need: Need::Bench("stability"),
    },
];

/// Packages whose files programs read when they are there, though nothing
/// needs them (each works the same without): the audit does not count
/// these or what they depend on, and says why here.
pub const READ_IF_PRESENT: &[(&str, &str)] = &[
    (
        "locales",
        "glibc's setlocale reads /etc/locale.alias when it exists",
    ),
    (
        "tzdata",
        "cargo and etcd read /etc/localtime's zone file; without it they use UTC",
    ),
    (
        "libnss-systemd",
        "setpriv looks users up through every NSS module nsswitch.conf names",
    ),
    (
        "libc6-dbg",
        "a Rust backtrace looks for the C library's split debug info",
    ),
    (
        "libfakeroot",
        "dpkg-shlibdeps reads every /etc/ld.so.conf.d file, fakeroot's among them",
    ),
    (
        "liblocale-gettext-perl",
        "dpkg's Perl tools (dpkg-shlibdeps) load Locale::gettext when it is installed",
    ),
    (
        "llvm-14",
        "libFuzzer and AddressSanitizer call llvm-symbolizer for readable stacks",
    ),
    (
        "llvm-14-linker-tools",
        "binutils' ar loads every plugin in /usr/lib/bfd-plugins, LLVMgold among them",
    ),
];

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

/// Installs the packages `need` calls for ([`Need::Always`] ones always)
/// with apt: `apt-get update` once, only when something is missing, and
/// `--no-install-recommends`, so a package that only works with one of its
/// recommendations must be listed itself. Without root it names what is
/// missing instead.
pub fn ensure(need: Need, root: bool) -> anyhow::Result<()> {
    let wanted: Vec<&Package> = PACKAGES.iter().filter(|p| p.need.covers(need)).collect();
    let missing: Vec<&Package> = wanted
        .iter()
        .copied()
        .filter(|p| !installed(p.name))
        .collect();
    if missing.is_empty() {
        eprintln!("==> Debian packages present: {}", names(&wanted));
        return Ok(());
    }
    for p in &missing {
        eprintln!("    missing: {} ({})", p.name, p.why);
    }
    if !root {
        bail!(
            "missing Debian packages ({}); run `cargo xtask test` as root to install them, \
             or `apt-get install --no-install-recommends` them",
            names(&missing)
        );
    }
    let step = Step::start("apt-get update");
    run(Command::new("apt-get").args(["update", "-q"]))?;
    step.done();
    let step = Step::start(format!("apt-get install {}", names(&missing)));
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(missing.iter().map(|p| p.name))
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    step.done();
    Ok(())
}

/// [`ensure`] for the build, the tests and the demo.
pub fn ensure_packages(root: bool) -> anyhow::Result<()> {
    ensure(Need::Always, root)
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

fn names(packages: &[&Package]) -> String {
    packages
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_package_is_named_once_and_says_why() {
        let mut seen = std::collections::BTreeSet::new();
        for p in PACKAGES {
            assert!(seen.insert(p.name), "{} is listed twice", p.name);
            assert!(
                p.why.len() > 10,
                "{} needs a reason that says what breaks",
                p.name
            );
        }
    }
}
