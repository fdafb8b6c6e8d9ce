//! Least privilege: the agent runs as an unprivileged user holding only the
//! capabilities `dist/linkmesh.service` grants, and the mesh, the eBPF
//! watchers and a floating IP all work.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use linkmesh_tests::agent::{self, ping, wait_until};
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

use linkmesh_tests::SECRET;
const NOBODY: u32 = 65534;

/// The capabilities the unit file grants (its `AmbientCapabilities=`), in
/// setpriv's spelling: `net_admin`, ...
fn unit_capabilities() -> Vec<String> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/linkmesh.service");
    let text = std::fs::read_to_string(&unit).expect("reading dist/linkmesh.service");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit grants ambient capabilities");
    let bounding = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities");
    assert_eq!(line, bounding, "ambient and bounding sets are the same");
    line.split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .expect("CAP_ names")
                .to_ascii_lowercase()
        })
        .collect()
}

#[test]
fn the_unit_grants_exactly_the_documented_capabilities() {
    assert_eq!(
        unit_capabilities(),
        ["net_admin", "net_raw", "bpf", "perfmon"],
        "no CAP_SYS_ADMIN, no root"
    );
}

/// The capability mask of a process (`CapEff` in its status), and its uid.
fn creds(pid: u32) -> (u64, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .expect("a status field")
            .split_whitespace()
            .next()
            .expect("a value")
            .to_owned()
    };
    let caps = u64::from_str_radix(&field("CapEff:"), 16).expect("hex");
    let uid = field("Uid:").parse().expect("uid");
    (caps, uid)
}

/// `linkmesh agent` on h1 as nobody, through setpriv, holding only the
/// unit's capabilities (ambient, inheritable and bounding).
fn unprivileged_agent(v: &Testbed, home: &Path, secret: &Path) -> Command {
    let caps = unit_capabilities()
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let host = v.lab.host(1);
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--pdeathsig=SIGKILL",
        &format!("--inh-caps=-all,{caps}"),
        &format!("--ambient-caps=-all,{caps}"),
        &format!("--bounding-set=-all,{caps}"),
        "--",
    ])
    .arg(agent::binary())
    .args([
        "agent",
        "--etcd-server",
        &v.etcd.endpoint(),
        "--hostname",
        &host.name,
        "--device",
        &host.ifname,
        "--segment",
        "blue",
        "--vip-interface",
        "eth0",
        "--keepalive-interval",
        "2",
    ])
    .arg("--secret-file")
    .arg(secret)
    .arg("--state-dir")
    .arg(home.join("state"))
    .env("LINKMESH_LOG", "info,linkmesh=debug");
    cmd
}

#[test]
fn the_agent_works_as_nobody_with_only_the_units_capabilities() {
    require_root!();
    // Only h1 may hold the VIP, so the unprivileged agent must bind it.
    let v = Testbed::builder(3)
        .vip(&["--exclude", "h2", "--exclude", "h3"])
        .build();
    v.add_segment("blue", 100);
    // Files the unprivileged agent reads and writes.
    let home = v.lab.dir().join("nobody");
    std::fs::create_dir_all(home.join("state")).expect("mkdir");
    let secret = home.join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    for p in [&home, &home.join("state"), &secret] {
        chown(p, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let cmd = unprivileged_agent(&v, &home, &secret);
    let host = v.lab.host(1);
    let unprivileged = v.lab.spawn(1, "nobody", cmd);
    let others: Vec<_> = (2..=3).map(|h| v.mesh_agent(h, &["blue"])).collect();

    let bound = v.wait_single_holder(Duration::from_secs(15), None);
    let log = unprivileged.log();
    assert_eq!(
        bound,
        Some(1),
        "the unprivileged agent holds the VIP:\n{log}"
    );
    let (caps_mask, uid) = creds(unprivileged.pid());
    assert_eq!(uid, NOBODY, "it runs as nobody");
    // CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_PERFMON 38, CAP_BPF 39.
    let expected: u64 = (1 << 12) | (1 << 13) | (1 << 38) | (1 << 39);
    assert_eq!(caps_mask, expected, "exactly the unit's capabilities");

    let watchers = wait_until(Duration::from_secs(10), || {
        let log = unprivileged.log();
        log.contains("eBPF VIP watcher loaded") && log.contains("peer watcher attached")
    });
    assert!(
        watchers.is_some(),
        "the eBPF programs load and attach:\n{}",
        unprivileged.log()
    );
    let mut want: Vec<std::net::IpAddr> = (2..=3)
        .map(|h| std::net::IpAddr::V4(v.lab.host(h).addr))
        .collect();
    want.sort();
    let mesh = wait_until(Duration::from_secs(10), || {
        agent::peers(&host.netns, "blue").as_deref() == Some(&want[..])
    });
    assert!(
        mesh.is_some(),
        "the VXLAN device and FDB entries are programmed: {:?}\n{}",
        agent::peers(&host.netns, "blue"),
        unprivileged.log()
    );
    let (tx, rx) = ping(&v.lab.host(v.client()).netns, &v.vip.to_string(), 3, "0.2");
    assert_eq!((tx, rx), (3, 3), "the client reaches the VIP");
    assert_eq!(v.client_sees(), Some(host.mac), "announced from h1");
    drop(others);
}
