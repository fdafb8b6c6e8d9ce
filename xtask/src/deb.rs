//! `cargo xtask deb`: the Debian package, staged under `target/deb/build`
//! and built with `dpkg-deb` (no cargo-deb, no debhelper).
//!
//! [`CONTENTS`] is the package's file list: staging builds from it and the
//! check (`deb/check.rs`) holds the built package and the installed files
//! to it.

mod check;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::step::{self, Step, cargo, output};

/// The binary package's name.
pub const NAME: &str = "linkmesh";
/// The Debian revision after the workspace's version.
const REVISION: &str = "1";
/// Where the package is staged and left, relative to the repository root.
const OUT_DIR: &str = "target/deb";
/// The maintainer when `DEBFULLNAME`/`DEBEMAIL` do not name one.
const MAINTAINER: (&str, &str) = ("linkmesh developers", "maintainers@linkmesh.invalid");
const HOMEPAGE: &str = "https://github.com/linkmesh/linkmesh";
/// Dependencies on top of the shared libraries' (postinst runs adduser).
const DEPENDS: &str = "adduser";

#[derive(clap::Args)]
pub struct DebArgs {
    /// Check it too: lintian (no errors), its file list, and, as root,
    /// install, remove and purge it on this machine.
    #[arg(long)]
    check: bool,
}

/// Where a packaged file comes from.
#[derive(Clone, Copy)]
enum Source {
    /// A binary of the `linkmesh` package, from target/release (stripped).
    Binary(&'static str),
    /// A file in the repository.
    File(&'static str),
    /// What the fresh release build of `linkmesh` prints given these
    /// arguments (the completion scripts).
    Output(&'static [&'static str]),
    /// The Debian changelog, written for this version and gzipped.
    Changelog,
}

/// A file of the package.
pub struct Entry {
    /// Its path once installed, without the leading `/`.
    pub path: &'static str,
    pub mode: u32,
    /// A conffile: dpkg keeps it on `dpkg -r` and removes it on purge.
    pub conffile: bool,
    source: Source,
}

/// A file of the repository, installed with mode 0644.
const fn file(path: &'static str, source: &'static str) -> Entry {
    entry(path, 0o644, Source::File(source))
}

const fn entry(path: &'static str, mode: u32, source: Source) -> Entry {
    Entry {
        path,
        mode,
        conffile: false,
        source,
    }
}

/// Every file the package installs.
pub const CONTENTS: &[Entry] = &[
    entry("usr/bin/linkmesh", 0o755, Source::Binary("linkmesh")),
    // Debian's containernetworking-plugins keep CNI plugins here.
    entry(
        "usr/lib/cni/linkmesh-cni",
        0o755,
        Source::Binary("linkmesh-cni"),
    ),
    file(
        "usr/lib/systemd/system/linkmesh.service",
        "dist/linkmesh.service",
    ),
    Entry {
        path: "etc/linkmesh/linkmesh.env",
        mode: 0o644,
        conffile: true,
        source: Source::File("dist/linkmesh.env.example"),
    },
    file(
        "usr/share/doc/linkmesh/examples/config.toml",
        "dist/config.example.toml",
    ),
    file(
        "usr/share/doc/linkmesh/examples/bird-linkmesh.conf",
        "dist/bird-linkmesh.conf",
    ),
    file(
        "usr/share/doc/linkmesh/examples/dnsmasq-linkmesh.conf",
        "dist/dnsmasq-linkmesh.conf",
    ),
    file(
        "usr/share/doc/linkmesh/examples/kubernetes/daemonset.yaml",
        "dist/kubernetes/daemonset.yaml",
    ),
    file(
        "usr/share/doc/linkmesh/examples/kubernetes/network-attachment.yaml",
        "dist/kubernetes/network-attachment.yaml",
    ),
    file("usr/share/doc/linkmesh/copyright", "dist/deb/copyright"),
    entry(
        "usr/share/doc/linkmesh/changelog.Debian.gz",
        0o644,
        Source::Changelog,
    ),
    entry(
        "usr/share/bash-completion/completions/linkmesh",
        0o644,
        Source::Output(&["completions", "bash"]),
    ),
    entry(
        "usr/share/zsh/vendor-completions/_linkmesh",
        0o644,
        Source::Output(&["completions", "zsh"]),
    ),
    entry(
        "usr/share/fish/vendor_completions.d/linkmesh.fish",
        0o644,
        Source::Output(&["completions", "fish"]),
    ),
];

/// The maintainer scripts, from dist/deb/.
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// The version's two parts: the workspace's (which the binary reports) and
/// the package's (with the Debian revision).
pub struct Version {
    pub upstream: &'static str,
    pub package: String,
}

impl Version {
    fn new() -> Self {
        // xtask takes the workspace's version, as the agent does.
        let upstream = env!("CARGO_PKG_VERSION");
        Self {
            upstream,
            package: format!("{upstream}-{REVISION}"),
        }
    }
}

pub fn run(root_dir: &Path, args: &DebArgs) -> anyhow::Result<()> {
    let root = step::is_root();
    crate::deps::ensure_packages(root)?;
    let deb = build(root_dir)?;
    if args.check {
        check::check(&deb, &Version::new(), root)?;
    }
    println!("{}", deb.display());
    Ok(())
}

/// The step `cargo xtask test` runs: build, then [`check::check`] (the
/// install cycle only as root), counted as one test.
pub fn test(root_dir: &Path, root: bool, tally: &mut step::Tally) -> anyhow::Result<()> {
    let step = Step::start("the Debian package: build, lintian, contents, install/remove/purge");
    let result = build(root_dir).and_then(|deb| check::check(&deb, &Version::new(), root));
    if result.is_ok() {
        tally.passed += 1;
        step.done();
    } else {
        tally.failed += 1;
    }
    result
}

/// Builds the eBPF object and the release binaries, stages the package and
/// returns the `.deb`'s path.
pub fn build(root_dir: &Path) -> anyhow::Result<PathBuf> {
    crate::ebpf::build(root_dir)?;
    build_binaries(root_dir)?;
    let version = Version::new();
    let release = root_dir.join("target/release");
    let reported = output(Command::new(release.join("linkmesh")).arg("--version"))?;
    ensure!(
        reported.trim() == format!("linkmesh {}", version.upstream),
        "target/release/linkmesh reports {:?}, the workspace is at {}",
        reported.trim(),
        version.upstream
    );
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let arch = arch.trim();

    let step = Step::start(format!("staging {NAME} {} ({arch})", version.package));
    let out = root_dir.join(OUT_DIR);
    // dpkg-shlibdeps wants debian/control and the files in debian/PACKAGE.
    let build = out.join("build");
    if build.exists() {
        fs::remove_dir_all(&build).with_context(|| format!("removing {}", build.display()))?;
    }
    let tree = build.join("debian").join(NAME);
    for entry in CONTENTS {
        stage(root_dir, &tree, entry, &version)?;
    }
    let control = control_fields(&build, &tree, &version, arch)?;
    write_control(root_dir, &tree, &control)?;
    step.done();

    let deb = out.join(format!("{NAME}_{}_{arch}.deb", version.package));
    let step = Step::start(format!("dpkg-deb --build {}", deb.display()));
    step::run(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&tree)
            .arg(&deb),
    )?;
    step.done();
    Ok(deb)
}

/// `cargo build --release` of every packaged binary, named one by one: a
/// binary that is not a target of the `linkmesh` package fails here.
fn build_binaries(root_dir: &Path) -> anyhow::Result<()> {
    let names: Vec<&str> = CONTENTS
        .iter()
        .filter_map(|e| match e.source {
            Source::Binary(name) => Some(name),
            _ => None,
        })
        .collect();
    let step = Step::start(format!("building {} (release)", names.join(", ")));
    let mut cmd = cargo();
    cmd.current_dir(root_dir)
        .args(["build", "--release", "--locked", "--package", "linkmesh"]);
    for name in &names {
        cmd.args(["--bin", name]);
    }
    step::run(&mut cmd).with_context(|| {
        format!(
            "the package needs each of {} as a [[bin]] of agent/Cargo.toml",
            names.join(", ")
        )
    })?;
    step.done();
    Ok(())
}

/// Creates `dir` under `tree` and its missing parents, each 0755.
fn make_dirs(tree: &Path, dir: &Path) -> anyhow::Result<()> {
    let mut path = tree.to_path_buf();
    for part in dir.components() {
        path.push(part);
        if !path.is_dir() {
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        set_mode(&path, 0o755)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Puts one file of the package in place, with its mode.
fn stage(root_dir: &Path, tree: &Path, entry: &Entry, version: &Version) -> anyhow::Result<()> {
    let rel = Path::new(entry.path);
    if let Some(dir) = rel.parent() {
        make_dirs(tree, dir)?;
    }
    let dest = tree.join(rel);
    let release = root_dir.join("target/release");
    match entry.source {
        Source::Binary(name) => {
            let built = release.join(name);
            fs::copy(&built, &dest)
                .with_context(|| format!("copying {} (is it built?)", built.display()))?;
            // As dh_strip does; the eBPF object is data and stays.
            step::run(
                Command::new("strip")
                    .args([
                        "--strip-unneeded",
                        "--remove-section=.comment",
                        "--remove-section=.note",
                    ])
                    .arg(&dest),
            )?;
            if name == NAME {
                holds_ebpf_object(root_dir, &dest)?;
            }
        }
        Source::File(path) => {
            fs::copy(root_dir.join(path), &dest)
                .with_context(|| format!("copying {path} to {}", dest.display()))?;
        }
        Source::Output(args) => {
            let text = output(
                Command::new(release.join("linkmesh"))
                    .args(args)
                    .env_remove("LINKMESH_LOG"),
            )?;
            ensure!(
                !text.trim().is_empty(),
                "`linkmesh {}` printed nothing",
                args.join(" ")
            );
            write_maybe_gzipped(&dest, &text)?;
        }
        Source::Changelog => write_maybe_gzipped(&dest, &changelog(version)?)?,
    }
    set_mode(&dest, entry.mode)
}

/// Fails unless `binary` holds the eBPF object byte for byte: the agent
/// embeds it as data, which stripping must leave alone.
fn holds_ebpf_object(root_dir: &Path, binary: &Path) -> anyhow::Result<()> {
    let path = root_dir.join(crate::ebpf::OBJECT_PATH);
    let object = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    ensure!(
        !object.is_empty() && bytes.windows(object.len()).any(|w| w == object.as_slice()),
        "{} does not embed {}",
        binary.display(),
        path.display()
    );
    Ok(())
}

/// Writes `text` to `dest`; to `dest` without `.gz` and then gzipped when
/// it ends so (`-n`: no name or time stamp in the header; `-9`: lintian
/// checks it).
fn write_maybe_gzipped(dest: &Path, text: &str) -> anyhow::Result<()> {
    let gzip = dest.extension().is_some_and(|e| e == "gz");
    let plain = if gzip {
        dest.with_extension("")
    } else {
        dest.to_path_buf()
    };
    fs::write(&plain, text).with_context(|| format!("writing {}", plain.display()))?;
    if gzip {
        step::run(Command::new("gzip").arg("-9nf").arg(&plain))?;
    }
    Ok(())
}

/// `Full Name <address>`, from DEBFULLNAME and DEBEMAIL as Debian's tools
/// take it, or [`MAINTAINER`].
fn maintainer() -> String {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    let name = var("DEBFULLNAME").unwrap_or_else(|| MAINTAINER.0.to_owned());
    let email = var("DEBEMAIL").unwrap_or_else(|| MAINTAINER.1.to_owned());
    format!("{name} <{email}>")
}

/// One entry for this version, dated SOURCE_DATE_EPOCH when set (a
/// reproducible build), else now.
fn changelog(version: &Version) -> anyhow::Result<String> {
    let mut date = Command::new("date");
    date.args(["-u", "-R"]);
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        date.arg(format!("--date=@{epoch}"));
    }
    let date = output(&mut date)?;
    Ok(format!(
        "{NAME} ({}) unstable; urgency=medium\n\n  \
         * Built from the linkmesh workspace at version {} by `cargo xtask deb`.\n\n \
         -- {}  {}\n",
        version.package,
        version.upstream,
        maintainer(),
        date.trim()
    ))
}

/// The control file's fields, with `Depends` from dpkg-shlibdeps on the
/// staged binaries and `Installed-Size` from the staged tree.
fn control_fields(
    build: &Path,
    tree: &Path,
    version: &Version,
    arch: &str,
) -> anyhow::Result<String> {
    fs::write(
        build.join("debian/control"),
        format!("Source: {NAME}\n\nPackage: {NAME}\nArchitecture: any\n"),
    )
    .context("writing dpkg-shlibdeps' debian/control")?;
    let mut shlibdeps = Command::new("dpkg-shlibdeps");
    shlibdeps.current_dir(build).arg("-O");
    for e in CONTENTS {
        if matches!(e.source, Source::Binary(_)) {
            shlibdeps.arg(Path::new("debian").join(NAME).join(e.path));
        }
    }
    let substvars = output(&mut shlibdeps)?;
    let shlibs = substvars
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?;
    let size = installed_size(tree)?;
    Ok(format!(
        "Package: {NAME}\n\
         Version: {}\n\
         Architecture: {arch}\n\
         Maintainer: {}\n\
         Installed-Size: {size}\n\
         Depends: {DEPENDS}, {shlibs}\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: {HOMEPAGE}\n\
         Description: etcd-coordinated VXLAN mesh and floating IPs\n \
         One agent per host, coordinated through etcd, keeps a VXLAN overlay\n \
         mesh and floating IPs programmed into the kernel over netlink, with an\n \
         eBPF watcher for ARP and peer health. linkmesh-cni, in /usr/lib/cni,\n \
         is its CNI plugin.\n \
         .\n \
         The linkmesh service is installed but neither enabled nor started: it\n \
         needs the etcd endpoints in /etc/linkmesh/linkmesh.env and the shared\n \
         secret first.\n",
        version.package,
        maintainer(),
    ))
}

/// Files under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = dir.join(&rel);
        for item in fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))? {
            let item = item.with_context(|| format!("reading {}", path.display()))?;
            let rel = rel.join(item.file_name());
            if item.file_type()?.is_dir() {
                todo.push(rel);
            } else {
                found.push(rel);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// What dpkg-gencontrol reckons: each file's size in KiB rounded up, and 1
/// per directory.
fn installed_size(tree: &Path) -> anyhow::Result<u64> {
    let files = files_under(tree)?;
    let mut dirs = std::collections::BTreeSet::new();
    let mut kib = 0;
    for rel in &files {
        let path = tree.join(rel);
        let len = fs::symlink_metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        kib += len.div_ceil(1024);
        dirs.extend(
            rel.ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty()),
        );
    }
    Ok(kib + dirs.len() as u64)
}

/// DEBIAN/: control, conffiles, md5sums (of every file but the conffiles,
/// as dh_md5sums does) and the maintainer scripts.
fn write_control(root_dir: &Path, tree: &Path, control: &str) -> anyhow::Result<()> {
    let files = files_under(tree)?;
    let debian = tree.join("DEBIAN");
    fs::create_dir(&debian).with_context(|| format!("creating {}", debian.display()))?;
    set_mode(&debian, 0o755)?;
    let write = |name: &str, text: &str, mode: u32| -> anyhow::Result<()> {
        let path = debian.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        set_mode(&path, mode)
    };
    write("control", control, 0o644)?;
    let conffiles: Vec<&str> = CONTENTS
        .iter()
        .filter(|e| e.conffile)
        .map(|e| e.path)
        .collect();
    let listed: String = conffiles.iter().flat_map(|p| ["/", p, "\n"]).collect();
    write("conffiles", &listed, 0o644)?;
    let summed: Vec<&PathBuf> = files
        .iter()
        .filter(|f| !conffiles.iter().any(|c| Path::new(c) == f.as_path()))
        .collect();
    if summed.is_empty() {
        bail!("nothing staged in {}", tree.display());
    }
    let md5sums = output(Command::new("md5sum").current_dir(tree).args(&summed))?;
    write("md5sums", &md5sums, 0o644)?;
    for script in SCRIPTS {
        let path = root_dir.join("dist/deb").join(script);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        write(script, &text, 0o755)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_relative_unique_and_has_a_sensible_mode() {
        let mut seen = std::collections::BTreeSet::new();
        for e in CONTENTS {
            assert!(!e.path.starts_with('/'), "{} is absolute", e.path);
            assert!(seen.insert(e.path), "{} is listed twice", e.path);
            let executable = matches!(e.source, Source::Binary(_));
            assert_eq!(e.mode, if executable { 0o755 } else { 0o644 }, "{}", e.path);
            assert_eq!(e.conffile, e.path.starts_with("etc/"), "{}", e.path);
        }
    }

    #[test]
    fn the_unit_runs_the_packaged_binary_with_the_packaged_settings() {
        let root = step::workspace_root().expect("workspace root");
        let unit = fs::read_to_string(root.join("dist/linkmesh.service")).expect("the unit");
        let value = |key: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("the unit has no {key}"))
                .to_owned()
        };
        let exec = value("ExecStart=");
        let binary = exec.split_whitespace().next().expect("a command");
        let env = value("EnvironmentFile=");
        for (wanted, what) in [(binary, "ExecStart"), (env.trim_start_matches('-'), "env")] {
            assert!(
                CONTENTS.iter().any(|e| format!("/{}", e.path) == wanted),
                "the unit's {what} {wanted} is not in the package"
            );
        }
    }

    #[test]
    fn the_maintainer_scripts_are_posix_shell_that_stops_on_errors() {
        let root = step::workspace_root().expect("workspace root");
        for script in SCRIPTS {
            let path = root.join("dist/deb").join(script);
            let text = fs::read_to_string(&path).expect("the script");
            assert!(text.starts_with("#!/bin/sh\n"), "{script}: #!/bin/sh");
            assert!(text.contains("\nset -e\n"), "{script}: set -e");
            let syntax = Command::new("sh").arg("-n").arg(&path).status();
            assert!(syntax.expect("sh").success(), "{script}: sh -n");
        }
    }
}
