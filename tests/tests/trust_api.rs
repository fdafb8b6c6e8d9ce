//! Trust, the API and check scripts: an attacker who can reach the API
//! port but holds no credentials cannot change anything (let alone run a
//! command), a browser's cross-site POST does not qualify even with
//! credentials cached, and a check runs only a script the operator put in
//! `--check-dir`, without capabilities, as an unprivileged user, and only
//! on hosts that may hold the VIP.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use linkmesh_tests::agent::{http, http_raw, wait_until};
use linkmesh_tests::testbed::Testbed;
use linkmesh_tests::{netns, require_root};

const CREDS: &str = "admin:a-long-enough-password";

/// A file the attack's command would create; it must never appear.
fn marker(t: &Testbed) -> PathBuf {
    t.lab.dir().join("pwned")
}

#[test]
fn without_credentials_the_api_changes_nothing_and_runs_no_command() {
    require_root!();
    let t = Testbed::builder(2).vip(&[]).build();
    let agents = [t.agent(1, "agent", &[]), t.agent(2, "agent", &[])];
    let owner = t
        .wait_single_holder(Duration::from_secs(15), None)
        .expect("an owner");
    let ns = t.lab.host(owner).netns.clone();
    let before = t.vip_records();
    let evil = format!(
        r#"{{"address":"198.18.{}.101/24","checks":["exec:sh -c 'touch {}'"]}}"#,
        t.lab.slot(),
        marker(&t).display()
    );
    let (status, body) = http(&ns, "POST", "/ips", Some(&evil), None);
    assert_eq!(status, 403, "a change without credentials: {body}");
    assert!(body.contains("read-only"), "{body}");
    let plain = format!(r#"{{"address":"198.18.{}.102/24"}}"#, t.lab.slot());
    assert_eq!(http(&ns, "POST", "/ips", Some(&plain), None).0, 403);
    let path = format!("/ips/{}", t.id);
    assert_eq!(http(&ns, "DELETE", &path, None, None).0, 403);
    assert_eq!(
        http(&ns, "POST", &format!("{path}/failover"), None, None).0,
        403
    );
    // Reads still work without credentials.
    assert_eq!(http(&ns, "GET", "/ips", None, None).0, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(t.vip_records(), before, "nothing was written");
    assert!(!marker(&t).exists(), "no command ran");
    assert_eq!(t.holders(), vec![owner], "the VIP did not move");
    let (_, metrics) = http(&ns, "GET", "/metrics", None, None);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("linkmesh_api_refused_total") && !l.ends_with(" 0")),
        "refusals are counted: {metrics}"
    );
    drop(agents);
}

#[test]
fn a_browser_style_post_or_a_foreign_host_is_refused_even_with_credentials() {
    require_root!();
    let t = Testbed::builder(1).vip(&[]).build();
    let _a = t.agent_with_api_user(1, "a-long-enough-password");
    let ns = t.lab.host(1).netns.clone();
    let before = t.vip_records();
    let auth = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(CREDS)
    };
    let body = format!(r#"{{"address":"198.18.{}.103/24"}}"#, t.lab.slot());
    // What a page's <form> (or fetch without preflight) sends: text/plain.
    let (status, answer) = http_raw(
        &ns,
        format!(
            "POST /ips HTTP/1.1\r\nHost: 127.0.0.1:1313\r\nConnection: close\r\n\
             Authorization: Basic {auth}\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 415, "{answer}");
    // DNS rebinding: the attacker's own name in Host.
    let (status, answer) = http_raw(
        &ns,
        "GET /ips HTTP/1.1\r\nHost: rebind.attacker.example\r\nConnection: close\r\n\r\n".into(),
    );
    assert_eq!(status, 421, "{answer}");
    // A decoded %2F cannot reach another key.
    let (status, _) = http(
        &ns,
        "DELETE",
        &format!("/ips/{}%2Fowner", t.id),
        None,
        Some(CREDS),
    );
    assert_eq!(status, 400, "an id is only an id");
    assert_eq!(t.vip_records(), before, "nothing was written");
    // And the proper request works.
    let (status, answer) = http(&ns, "POST", "/ips", Some(&body), Some(CREDS));
    assert_eq!(status, 201, "{answer}");
}

/// A directory under /run owned by root and writable by no one else (as
/// `--check-dir` must be), removed on drop.
struct CheckDir {
    dir: PathBuf,
    out: PathBuf,
}

impl CheckDir {
    fn new(slot: u8) -> Self {
        let dir = PathBuf::from(format!("/run/lmt-{slot}-checks"));
        let out = PathBuf::from(format!("/run/lmt-{slot}-checks-out"));
        for d in [&dir, &out] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir(d).expect("creating a check dir");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // The scripts run as nobody: they may write here only.
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        Self { dir, out }
    }

    fn script(&self, name: &str, body: &str, mode: u32) {
        let path = self.dir.join(name);
        std::fs::write(&path, body).expect("writing a script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.out.join("runs"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for CheckDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.out);
    }
}

/// The network namespace of lab host `host`, as `/proc/self/ns/net`
/// names it inside (`net:[INODE]`).
fn netns_name(t: &Testbed, host: u8) -> String {
    let ino = std::fs::metadata(netns::path(&t.lab.host(host).netns))
        .expect("the host's namespace")
        .ino();
    format!("net:[{ino}]")
}

#[test]
fn check_scripts_run_from_the_check_dir_only_without_privileges_and_not_on_excluded_hosts() {
    require_root!();
    let t = Testbed::builder(3).build();
    let checks = CheckDir::new(t.lab.slot());
    let out = checks.out.join("runs");
    checks.script(
        "probe",
        &format!(
            "#!/bin/sh\necho \"$(readlink /proc/self/ns/net) uid=$(id -u) \
             $(grep CapEff /proc/self/status | tr -d '\\t')\" >> {}\n",
            out.display()
        ),
        0o755,
    );
    checks.script("loose", "#!/bin/sh\nexit 0\n", 0o777);
    // A command line is not a check, from the CLI as from the API.
    let cidr = format!("198.18.{}.100/24", t.lab.slot());
    let refused = std::process::Command::new(linkmesh_tests::agent::binary())
        .args(["ip", "add", &cidr, "--check", "exec:sh -c id"])
        .args(["--etcd-server", &t.endpoints(), "--secret-file"])
        .arg(&t.secret)
        .output()
        .expect("running linkmesh");
    assert!(!refused.status.success(), "a command line as a check");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--check-dir"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    t.admin(&[
        "ip",
        "add",
        &cidr,
        "--check",
        "exec:probe",
        "--exclude",
        "h3",
    ]);
    let loose = format!("198.18.{}.110/24", t.lab.slot());
    t.admin(&["ip", "add", &loose, "--check", "exec:loose"]);
    let dir = checks.dir.to_string_lossy().into_owned();
    let extra = ["--check-dir", &dir, "--health-check-interval", "0.3"];
    let _agents: Vec<_> = (1..=3).map(|h| t.agent(h, "agent", &extra)).collect();
    let seen = wait_until(Duration::from_secs(15), || {
        let runs = checks.runs();
        [1, 2].iter().all(|h| {
            let ns = netns_name(&t, *h);
            runs.iter().any(|l| l.starts_with(&ns))
        })
    });
    assert!(
        seen.is_some(),
        "h1 and h2 run the check: {:?}",
        checks.runs()
    );
    std::thread::sleep(Duration::from_secs(1));
    let runs = checks.runs();
    let excluded = netns_name(&t, 3);
    assert!(
        !runs.iter().any(|l| l.starts_with(&excluded)),
        "the excluded host runs no script: {runs:?}"
    );
    for line in &runs {
        assert!(line.contains("uid=65534"), "as nobody: {line}");
        assert!(
            line.ends_with("CapEff:0000000000000000"),
            "with no capabilities: {line}"
        );
    }
    // The VIP whose script anyone could rewrite never becomes healthy:
    // nobody holds it.
    let loose_ip: std::net::IpAddr = loose
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .expect("ip");
    assert!(
        t.lab.holders(loose_ip, 1..=3).is_empty(),
        "a script writable by others is not run"
    );
    let held = t.wait_single_holder(Duration::from_secs(10), None);
    assert!(held.is_some_and(|h| h != 3), "a healthy host holds the VIP");
    assert!(Path::new(&out).exists());
}
