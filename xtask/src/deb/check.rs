//! The package's check: lintian with no errors, `dpkg -c` listing exactly
//! [`CONTENTS`], and, as root, a whole install, remove and purge on this
//! machine, purging again whatever happens so that nothing stays installed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};

use super::{CONTENTS, NAME, Version};
use crate::step::{output, run};

/// Where `systemctl enable linkmesh` puts its link (the unit's WantedBy).
const ENABLE_LINK: &str = "/etc/systemd/system/multi-user.target.wants/linkmesh.service";
const UNIT: &str = "/usr/lib/systemd/system/linkmesh.service";
const STATE_DIR: &str = "/var/lib/linkmesh";

pub fn check(deb: &Path, version: &Version, root: bool) -> anyhow::Result<()> {
    lintian(deb)?;
    contents(deb, version)?;
    if root {
        install_cycle(deb, version)
    } else {
        eprintln!("==> skipped: installing the package (dpkg -i needs root)");
        Ok(())
    }
}

/// Runs lintian, prints its tags and a count per severity, and fails on any
/// error (`E:`).
fn lintian(deb: &Path) -> anyhow::Result<()> {
    // lintian's version comparisons load libapt-pkg, which reads every file
    // in /etc/apt/apt.conf.d (from whatever packages put one there) unless
    // APT_CONFIG moves its parts directory away: none of it matters here,
    // and the package audit then sees no package lintian does not need.
    let apt_config = deb.with_file_name("lintian-apt.conf");
    fs::write(
        &apt_config,
        "Dir::Etc::Parts \"/nonexistent\";\nDir::Etc::Main \"/dev/null\";\n",
    )
    .with_context(|| format!("writing {}", apt_config.display()))?;
    let out = Command::new("lintian")
        .args(["--info", "--display-info"])
        .arg(deb)
        .env("APT_CONFIG", &apt_config)
        .output()
        .context("starting lintian")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    let mut errors = Vec::new();
    for line in text.lines() {
        let Some(severity) = line.chars().next().filter(|_| line.get(1..3) == Some(": ")) else {
            continue;
        };
        if severity == 'N' {
            continue;
        }
        println!("    lintian {line}");
        *counts.entry(severity).or_default() += 1;
        if severity == 'E' {
            errors.push(line);
        }
    }
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    eprintln!(
        "    lintian: {}",
        if summary.is_empty() {
            "no tags".to_owned()
        } else {
            summary.join(", ")
        }
    );
    if !errors.is_empty() {
        bail!("lintian found errors:\n{}", errors.join("\n"));
    }
    if !out.status.success() {
        bail!(
            "lintian failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Parses an `ls -l` mode (`-rwxr-xr-x`) into its permission bits; `None`
/// for anything else (set-id bits among them).
fn mode_bits(text: &str) -> Option<u32> {
    let perms = text.get(1..).filter(|p| p.len() == 9)?;
    perms
        .chars()
        .zip("rwxrwxrwx".chars())
        .try_fold(0, |mode, (c, bit)| match c {
            '-' => Some(mode << 1),
            c if c == bit => Some(mode << 1 | 1),
            _ => None,
        })
}

/// `dpkg -c`: exactly the expected regular files, each with its mode, all
/// owned by root; and the control fields.
fn contents(deb: &Path, version: &Version) -> anyhow::Result<()> {
    let listing = output(Command::new("dpkg").arg("-c").arg(deb))?;
    let mut files = BTreeMap::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(perms), Some(owner), Some(path)) = (fields.first(), fields.get(1), fields.last())
        else {
            bail!("dpkg -c printed {line:?}");
        };
        ensure!(*owner == "root/root", "{path} is owned by {owner}");
        if perms.starts_with('-') {
            let path = path.strip_prefix("./").unwrap_or(path).to_owned();
            files.insert(path, mode_bits(perms).context("a mode")?);
        }
    }
    for e in CONTENTS {
        match files.remove(e.path) {
            Some(mode) => ensure!(
                mode == e.mode,
                "dpkg -c: /{} has mode {mode:o}, not {:o}",
                e.path,
                e.mode
            ),
            None => bail!("dpkg -c does not list /{}:\n{listing}", e.path),
        }
    }
    ensure!(
        files.is_empty(),
        "dpkg -c lists files the package should not hold: {:?}",
        files.keys()
    );
    eprintln!(
        "    dpkg -c: the {} expected files, owned by root",
        CONTENTS.len()
    );
    let field = |name: &str| output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name));
    ensure!(field("Version")?.trim() == version.package, "Version");
    let depends = field("Depends")?;
    for needed in ["adduser", "libc6"] {
        ensure!(
            depends.split(',').any(|d| d.trim().starts_with(needed)),
            "Depends ({}) lacks {needed}",
            depends.trim()
        );
    }
    eprintln!("    Depends: {}", depends.trim());
    Ok(())
}

/// dpkg's status of the package, when it knows it at all.
fn status() -> Option<String> {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", NAME]))
        .ok()
        .filter(|s| !s.ends_with("not-installed"))
}

/// `dpkg -P` if dpkg knows the package in any state.
fn purge_if_present() -> anyhow::Result<()> {
    if let Some(status) = status() {
        eprintln!("==> {NAME} is known to dpkg ({status}): purging it");
        run(Command::new("dpkg").args(["--purge", NAME]))?;
    }
    Ok(())
}

/// Install, remove and purge, then purge again and drop the test's own
/// `systemctl enable` link whatever happened.
fn install_cycle(deb: &Path, version: &Version) -> anyhow::Result<()> {
    purge_if_present()?;
    let wants = Path::new(ENABLE_LINK).parent().context("a directory")?;
    let made_wants = !wants.exists();
    let made_user = account("passwd").is_none();
    let result = cycle(deb, version);
    let cleanup = purge_if_present();
    // The package keeps its (expired) account on purge, as Debian does; the
    // test removes what it made, so a machine keeps no trace of the run.
    if made_user {
        let _ = run(Command::new("deluser").args(["--system", NAME]));
        if account("group").is_some() {
            let _ = run(Command::new("delgroup").args(["--system", NAME]));
        }
    }
    if fs::read_link(ENABLE_LINK).is_ok_and(|t| t == Path::new(UNIT)) {
        fs::remove_file(ENABLE_LINK).with_context(|| format!("removing {ENABLE_LINK}"))?;
    }
    if made_wants {
        let _ = fs::remove_dir(wants);
    }
    result.and(cleanup)?;
    ensure!(status().is_none(), "{NAME} is still known to dpkg");
    Ok(())
}

/// The account's passwd fields, when it exists.
fn account(db: &str) -> Option<Vec<String>> {
    let line = output(Command::new("getent").args([db, NAME])).ok()?;
    Some(line.trim().split(':').map(str::to_owned).collect())
}

fn cycle(deb: &Path, version: &Version) -> anyhow::Result<()> {
    run(Command::new("dpkg")
        .arg("--install")
        .arg(deb)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    ensure!(
        status().as_deref() == Some("install ok installed"),
        "after dpkg -i: {:?}",
        status()
    );
    for e in CONTENTS {
        let path = Path::new("/").join(e.path);
        let meta =
            fs::metadata(&path).with_context(|| format!("after dpkg -i: {}", path.display()))?;
        ensure!(
            meta.permissions().mode() & 0o7777 == e.mode,
            "mode of {}",
            path.display()
        );
    }
    runs_installed(version)?;
    let uid = user_is_set_up()?;
    eprintln!("    installed: status ok, files in place, binaries run, user {NAME} ({uid})");
    // What an operator's `systemctl enable linkmesh` leaves, for the purge.
    if let Some(wants) = Path::new(ENABLE_LINK).parent() {
        fs::create_dir_all(wants).with_context(|| format!("creating {}", wants.display()))?;
    }
    std::os::unix::fs::symlink(UNIT, ENABLE_LINK)
        .with_context(|| format!("linking {ENABLE_LINK}"))?;

    run(Command::new("dpkg").args(["--remove", NAME]))?;
    ensure!(
        status().as_deref() == Some("deinstall ok config-files"),
        "after dpkg -r: {:?}",
        status()
    );
    for e in CONTENTS {
        let there = Path::new("/").join(e.path).exists();
        ensure!(
            there == e.conffile,
            "after dpkg -r, /{} is {}",
            e.path,
            if there { "still there" } else { "gone" }
        );
    }
    ensure!(Path::new(STATE_DIR).is_dir(), "dpkg -r removed {STATE_DIR}");
    ensure!(account("passwd").is_some(), "dpkg -r removed the user");
    eprintln!("    removed: files gone, conffiles, state and user kept");

    run(Command::new("dpkg").args(["--purge", NAME]))?;
    ensure!(status().is_none(), "after dpkg -P: {:?}", status());
    for gone in ["/etc/linkmesh", STATE_DIR, ENABLE_LINK] {
        ensure!(
            fs::symlink_metadata(gone).is_err(),
            "after dpkg -P, {gone} is still there"
        );
    }
    let shadow = account("shadow").context("after dpkg -P, no shadow entry")?;
    ensure!(
        shadow.get(7).map(String::as_str) == Some("1"),
        "after dpkg -P, the account is not expired: {shadow:?}"
    );
    ensure!(account("group").is_some(), "after dpkg -P, no group");
    eprintln!(
        "    purged: /etc/linkmesh, {STATE_DIR} and the enable link gone; user kept, expired"
    );
    Ok(())
}

/// The installed binaries start: `linkmesh --version` names the version, and
/// the CNI plugin answers the spec's VERSION command.
fn runs_installed(version: &Version) -> anyhow::Result<()> {
    let reported = output(Command::new("/usr/bin/linkmesh").arg("--version"))?;
    ensure!(
        reported.trim() == format!("linkmesh {}", version.upstream),
        "/usr/bin/linkmesh --version: {reported:?}"
    );
    let mut cni = Command::new("/usr/lib/cni/linkmesh-cni")
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting /usr/lib/cni/linkmesh-cni")?;
    if let Some(mut stdin) = cni.stdin.take() {
        stdin
            .write_all(br#"{"cniVersion":"1.0.0"}"#)
            .context("writing the CNI plugin's config")?;
    }
    let out = cni
        .wait_with_output()
        .context("waiting for the CNI plugin")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("supportedVersions"),
        "CNI_COMMAND=VERSION /usr/lib/cni/linkmesh-cni: {}: {text} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// postinst's account: a system user and group, home the state directory
/// (0700, theirs), no login shell, not expired. Returns the uid.
fn user_is_set_up() -> anyhow::Result<u32> {
    let passwd = account("passwd").context("postinst made no linkmesh user")?;
    let field = |i: usize| passwd.get(i).map_or("", String::as_str);
    let uid: u32 = field(2).parse().context("the user's uid")?;
    ensure!(uid < 1000, "uid {uid} is not a system uid");
    ensure!(field(5) == STATE_DIR, "home {}", field(5));
    ensure!(field(6) == "/usr/sbin/nologin", "shell {}", field(6));
    let group = account("group").context("postinst made no linkmesh group")?;
    ensure!(
        group.get(2) == passwd.get(3),
        "the user's group is not {NAME}"
    );
    let shadow = account("shadow").context("no shadow entry")?;
    ensure!(
        shadow.get(7).is_some_and(String::is_empty),
        "the account is expired: {shadow:?}"
    );
    let state = fs::metadata(STATE_DIR).with_context(|| format!("reading {STATE_DIR}"))?;
    ensure!(
        state.uid() == uid && state.permissions().mode() & 0o777 == 0o700,
        "{STATE_DIR} is not the user's, 0700"
    );
    Ok(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_like_ls_prints_them() {
        assert_eq!(mode_bits("-rwxr-xr-x"), Some(0o755));
        assert_eq!(mode_bits("-rw-r--r--"), Some(0o644));
        assert_eq!(mode_bits("drwx------"), Some(0o700));
        assert_eq!(mode_bits("-rwx"), None);
        assert_eq!(mode_bits("-rwsr-xr-x"), None);
    }
}
