//! Notify hooks: every VIP state transition is told, in order, to a script
//! from each host's check directory and to an HTTP receiver that checks
//! the body's HMAC. Agents, a real etcd, real processes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkmesh::vip::notify::signature;
use linkmesh_tests::agent::{self, metric, outcome, wait_until};
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

const KEY: &str = "notify-key-for-the-lab-0123456789";

/// Per host: a check directory under /run (root's, writable by nobody
/// else, as `--check-dir` must be) with the script `record`, and a
/// directory the script (run as nobody) writes its arguments to. Removed
/// on drop.
struct Hooks {
    dirs: Vec<PathBuf>,
}

impl Hooks {
    fn new(slot: u8, hosts: u8) -> Self {
        let mut dirs = Vec::new();
        for h in 1..=hosts {
            let dir = PathBuf::from(format!("/run/lmt-{slot}-notify-h{h}"));
            let out = PathBuf::from(format!("/run/lmt-{slot}-notify-h{h}-out"));
            for (d, mode) in [(&dir, 0o755), (&out, 0o777)] {
                let _ = std::fs::remove_dir_all(d);
                std::fs::create_dir(d).expect("creating a hook dir");
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).expect("chmod");
            }
            let script = dir.join("record");
            std::fs::write(
                &script,
                format!("#!/bin/sh\necho \"$@\" >> {}/transitions\n", out.display()),
            )
            .expect("writing the hook");
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            dirs.push(dir);
            dirs.push(out);
        }
        Self { dirs }
    }

    fn dir(&self, host: u8) -> String {
        self.dirs[usize::from(host - 1) * 2].display().to_string()
    }

    /// The script's lines on `host`: "VIP FROM TO CAUSE...".
    fn lines(&self, host: u8) -> Vec<String> {
        std::fs::read_to_string(self.dirs[usize::from(host - 1) * 2 + 1].join("transitions"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A bodies' receiver on the lab's gateway: each POST's JSON body and
/// whether its signature verified.
/// The bodies received, each with whether its signature verified.
type Posts = Arc<Mutex<Vec<(serde_json::Value, bool)>>>;

fn receiver(addr: std::net::IpAddr) -> (u16, Posts) {
    let listener = TcpListener::bind((addr, 0)).expect("binding the receiver");
    let port = listener.local_addr().expect("addr").port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let Ok(n) = s.read(&mut chunk) else {
                    break (String::new(), Vec::new());
                };
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < end + 4 + len {
                    match s.read(&mut chunk) {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => break,
                    }
                }
                break (head, buf[end + 4..].to_vec());
            };
            let sig = head
                .lines()
                .find_map(|l| l.strip_prefix("X-Linkmesh-Signature: "))
                .unwrap_or_default()
                .to_owned();
            let verified = sig == signature(KEY.as_bytes(), &body);
            if let Ok(json) = serde_json::from_slice(&body) {
                store.lock().expect("lock").push((json, verified));
            }
            let _ = s.write_all(b"HTTP/1.0 204 No Content\r\n\r\n");
        }
    });
    (port, got)
}

/// (from, to) of each line the script wrote on `host`.
fn script_pairs(hooks: &Hooks, host: u8) -> Vec<(String, String)> {
    hooks
        .lines(host)
        .iter()
        .map(|l| {
            let mut w = l.split_whitespace().skip(1);
            let from = w.next().unwrap_or_default().to_owned();
            let to = w.next().unwrap_or_default().to_owned();
            (from, to)
        })
        .collect()
}

/// (from, to) of each body received, per host; every body names `vip`.
fn webhook_pairs(
    got: &[(serde_json::Value, bool)],
    vip: &str,
) -> BTreeMap<String, Vec<(String, String)>> {
    let mut per_host: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (b, _) in got {
        assert_eq!(b["vip"], vip);
        per_host
            .entry(b["host"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push((
                b["from"].as_str().unwrap_or_default().to_owned(),
                b["to"].as_str().unwrap_or_default().to_owned(),
            ));
    }
    per_host
}

/// Every line's (from, to) continues from the one before.
fn chained(pairs: &[(String, String)]) -> bool {
    pairs.windows(2).all(|w| w[0].1 == w[1].0)
}

#[test]
fn bad_hook_settings_are_refused_before_anything_runs() {
    require_root!();
    let v = Testbed::builder(1).build();
    let url = format!("http://{}:9/hook", v.lab.gateway());
    for (bad, why) in [
        (vec!["--notify", "exec:../record"], "not a path"),
        (vec!["--notify", &url], "--notify-secret-file"),
        (vec!["--notify", "https://x/hook"], "https"),
    ] {
        let mut cmd = v.vip_agent(1).args(&bad).command();
        cmd.arg("--check-config");
        let (ok, _, err) = outcome(&mut cmd);
        assert!(!ok && err.contains(why), "{bad:?}: {err}");
    }
}

#[test]
fn every_transition_reaches_the_scripts_and_the_signed_webhook_in_order() {
    require_root!();
    let v = Testbed::builder(3).vip(&[]).build();
    let hooks = Hooks::new(v.lab.slot(), 3);
    let (port, posts) = receiver(std::net::IpAddr::V4(v.lab.gateway()));
    let key_file = agent::secret_file(&v.lab, "notify-key", &[KEY]);
    let url = format!("http://{}:{port}/hook", v.lab.gateway());

    let key = key_file.display().to_string();
    let agents: Vec<_> = (1..=3u8)
        .map(|h| {
            let dir = hooks.dir(h);
            let extra = [
                "--check-dir",
                &dir,
                "--notify",
                "exec:record",
                "--notify",
                &url,
                "--notify-secret-file",
                &key,
            ];
            v.agent(h, "agent", &extra)
        })
        .collect();
    let owner = v
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    let activated = format!("{} STANDBY ACTIVATED", v.id);
    let told = wait_until(Duration::from_secs(5), || {
        hooks.lines(owner).iter().any(|l| l.starts_with(&activated))
    });
    assert!(
        told.is_some(),
        "the owner's script was told: {:?}\n{}",
        hooks.lines(owner),
        agents[usize::from(owner - 1)].log()
    );
    v.admin(&["ip", "failover", &v.id]);
    let new_owner = v
        .wait_single_holder(Duration::from_secs(10), Some(owner))
        .expect("a new owner");
    let released = format!("{} ACTIVATED STANDBY failover", v.id);
    let told = wait_until(Duration::from_secs(5), || {
        hooks.lines(owner).contains(&released)
            && hooks
                .lines(new_owner)
                .iter()
                .any(|l| l.starts_with(&activated))
    });
    assert!(
        told.is_some(),
        "old owner {:?}, new owner {:?}",
        hooks.lines(owner),
        hooks.lines(new_owner)
    );

    // Per host, the script heard one chain of states, from BOOTING.
    for h in 1..=3u8 {
        let pairs = script_pairs(&hooks, h);
        assert_eq!(
            pairs.first().map(|p| p.0.as_str()),
            Some("BOOTING"),
            "h{h}: {pairs:?}"
        );
        assert!(chained(&pairs), "h{h}: {pairs:?}");
    }

    // The webhook got the same transitions, each signed, in the same order
    // per host.
    let webhook_done = wait_until(Duration::from_secs(5), || {
        let got = posts.lock().expect("lock");
        (1..=3u8).all(|h| {
            let name = format!("h{h}");
            got.iter()
                .filter(|(b, _)| b["host"] == name.as_str())
                .count()
                == hooks.lines(h).len()
        })
    });
    let got = posts.lock().expect("lock").clone();
    assert!(webhook_done.is_some(), "{got:?}");
    assert!(
        got.iter().all(|(_, verified)| *verified),
        "every body is signed: {got:?}"
    );
    for (host, pairs) in &webhook_pairs(&got, &v.id) {
        assert!(chained(pairs), "{host}: {pairs:?}");
    }
    eprintln!(
        "vip_notify figure: {} transitions told to each hook",
        got.len()
    );
    let ns = v.lab.host(owner).netns.clone();
    let ok = metric(&ns, "linkmesh_vip_notify_hooks_total{result=\"ok\"}").unwrap_or(0);
    assert!(ok >= 2, "the hooks' runs are counted: {ok}");
    let failed = metric(&ns, "linkmesh_vip_notify_hooks_total{result=\"failed\"}");
    assert_eq!(failed, Some(0));
}
