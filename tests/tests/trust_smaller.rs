//! Trust, the smaller items: a VXLAN device the agent did not create is
//! never modified even when named like a segment; what etcd holds reaches
//! the terminal with its escape sequences made visible; a secret file
//! others can read is warned about; a zero or absurd interval is a
//! configuration error, never a panic; a host record with a loopback
//! underlay address is refused by the peers.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use linkmesh::registry::{HostRecord, Secrets, seal};
use linkmesh_tests::agent::{self, admin, peers, wait_until};
use linkmesh_tests::etcd::Etcd;
use linkmesh_tests::testbed::Testbed;
use linkmesh_tests::{SECRET, require_root};

/// The VNI and alias of device `device` in namespace `ns`.
fn vxlan(ns: &str, device: &str) -> Option<(u64, Option<String>)> {
    let out = Command::new("ip")
        .args(["-n", ns, "-d", "-j", "link", "show", "dev", device])
        .output()
        .ok()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let vni = links[0]["linkinfo"]["info_data"]["id"].as_u64()?;
    Some((vni, links[0]["ifalias"].as_str().map(str::to_owned)))
}

#[test]
fn a_foreign_device_named_like_a_segment_is_left_alone() {
    require_root!();
    let t = Testbed::builder(2).segment("blue", 100).build();
    let ns = t.lab.host(1).netns.clone();
    // Someone else's VXLAN device, named like the segment, on h1.
    let made = Command::new("ip")
        .args(["-n", &ns, "link", "add", "blue", "type", "vxlan"])
        .args(["id", "4242", "dstport", "4789", "dev", "eth0"])
        .status()
        .expect("running ip");
    assert!(made.success(), "creating the foreign device");
    let agents: Vec<_> = (1..=2).map(|h| t.mesh_agent(h, &["blue"])).collect();
    // h2 builds blue and gets h1 as a peer: the agents are at work.
    let ns2 = t.lab.host(2).netns.clone();
    let working = wait_until(Duration::from_secs(15), || {
        peers(&ns2, "blue").is_some_and(|p| !p.is_empty())
    });
    assert!(working.is_some(), "h2's blue has its peer");
    let reported = wait_until(Duration::from_secs(10), || {
        agents[0].log().contains("linkmesh did not create")
    });
    assert!(reported.is_some(), "h1 reports the foreign device");
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        assert_eq!(
            vxlan(&ns, "blue"),
            Some((4242, None)),
            "the foreign device is untouched"
        );
        assert_eq!(peers(&ns, "blue"), Some(vec![]), "no peers written into it");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn escape_sequences_from_etcd_reach_the_terminal_made_visible() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    // An etcd writer without the secret names keys to rewrite the
    // terminal (window title, clear screen, right-to-left override).
    let evil = "x\u{1b}]0;owned\u{7}\u{1b}[2J\u{202e}";
    etcd.put(&format!("/linkmesh/vips/{evil}"), "junk");
    etcd.put(&format!("/linkmesh/segments/{evil}"), "junk");
    for args in [&["ip", "ls"][..], &["segment", "ls"][..]] {
        let out = admin(&etcd.endpoint(), &secret, args);
        assert!(out.contains("rejected"), "{args:?} lists the key: {out}");
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\u{202e}'),
            "{args:?} printed raw escapes: {out:?}"
        );
        assert!(out.contains("\\u{1b}]0;owned"), "{args:?}: {out}");
    }
}

/// `linkmesh agent --check-config` with `secret` and `extra`.
fn check(secret: &Path, extra: &[&str]) -> (bool, String) {
    let (ok, out, err) = agent::outcome(
        Command::new(agent::binary())
            .args(["agent", "--check-config", "--secret-file"])
            .arg(secret)
            .args(extra)
            .env_remove("LINKMESH_SECRET"),
    );
    (ok, format!("{out}{err}"))
}

#[test]
fn a_secret_others_can_read_is_warned_about() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (ok, text) = check(&secret, &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("readable by group or others (mode 644)"),
        "{text}"
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (ok, text) = check(&secret, &[]);
    assert!(ok, "{text}");
    assert!(!text.contains("readable by group"), "{text}");
}

#[test]
fn zero_and_absurd_intervals_are_configuration_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    for option in ["--health-check-interval", "--probe-interval"] {
        for bad in ["0", "0.0000001", "-1", "NaN", "inf", "86400"] {
            let (ok, text) = check(&secret, &[&format!("{option}={bad}")]);
            assert!(!ok, "{option}={bad} accepted: {text}");
            assert!(
                text.contains(&format!("{option} must be a number of seconds")),
                "{option}={bad}: {text}"
            );
            assert!(!text.contains("panicked"), "{option}={bad}: {text}");
        }
    }
}

#[test]
fn a_host_record_with_a_loopback_underlay_is_refused() {
    require_root!();
    let t = Testbed::builder(2).segment("blue", 100).build();
    let _agents: Vec<_> = (1..=2).map(|h| t.mesh_agent(h, &["blue"])).collect();
    t.wait_mesh("blue", 1..=2, Duration::from_secs(15))
        .expect("the mesh forms");
    // A correctly signed record (an insider, or a misconfigured host)
    // pointing the mesh at 127.0.0.1.
    let record = HostRecord {
        hostname: "loop".into(),
        address: "127.0.0.1".parse().expect("ip"),
        segments: [(
            "blue".to_owned(),
            linkmesh::mesh::desired::device_mac("loop", "blue"),
        )]
        .into(),
        agent_version: "t".into(),
        heartbeat_nonce: None,
        overlay: linkmesh::registry::host::Overlay::default(),
    };
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let mut c = t.etcd.client().await;
        let lease = c.lease_grant(30, None).await.expect("a lease").id();
        let key = "/linkmesh/hosts/loop";
        let secrets = Secrets::from_text(SECRET).expect("the lab secret");
        let value =
            seal(&secrets, key, lease, linkmesh::clock::unix_now(), &record).expect("sealing");
        let options = etcd_client::PutOptions::new().with_lease(lease);
        c.put(key, value, Some(options)).await.expect("put");
    });
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        for h in 1..=2u8 {
            let entries = peers(&t.lab.host(h).netns, "blue").unwrap_or_default();
            assert!(
                !entries.iter().any(std::net::IpAddr::is_loopback),
                "h{h} points blue at loopback: {entries:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
