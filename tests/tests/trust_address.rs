//! Trust and a host's own addresses: a VIP on a host's underlay address
//! is refused by the admin commands and, if one is in etcd anyway, never
//! taken by any agent; an address already on a host that linkmesh did not
//! add is neither adopted nor removed; and a VIP wider than /16 needs
//! `--force`.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use linkmesh::registry::{Keys, Secrets, VipRecord, seal};
use linkmesh_tests::agent::{self, http, wait_until};
use linkmesh_tests::testbed::Testbed;
use linkmesh_tests::{SECRET, kernel, require_root};

/// `linkmesh ARGS` against the testbed's etcd: success and stderr.
fn admin_outcome(t: &Testbed, args: &[&str]) -> (bool, String) {
    let (ok, _, err) = agent::outcome(
        Command::new(agent::binary())
            .args(args)
            .args(["--etcd-server", &t.endpoints(), "--secret-file"])
            .arg(&t.secret),
    );
    (ok, err)
}

/// Whether lab host `host` has `addr` configured.
fn has(t: &Testbed, host: u8, addr: IpAddr) -> bool {
    kernel::addresses(&t.lab.host(host).netns)
        .iter()
        .any(|a| a.addr == addr)
}

/// Writes a signed VIP record for `cidr` straight into etcd, as an old
/// record (or an admin bypassing the CLI) would be: the agents must hold
/// the line on their own.
fn put_vip(t: &Testbed, cidr: &str, excluded: &[&str]) {
    let keys = Keys::new("/linkmesh");
    let mut record = VipRecord::new(cidr);
    record.excluded_nodes = excluded.iter().map(|h| (*h).to_owned()).collect();
    let id = cidr.replace('/', "_");
    let key = keys.vip(&id);
    let secrets = Secrets::from_text(SECRET).expect("the lab secret");
    let value = seal(&secrets, &key, 0, linkmesh::clock::unix_now(), &record).expect("sealing");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let mut c = t.etcd.client().await;
        c.put(key, value, None).await.expect("putting the record");
    });
}

#[test]
fn a_vip_on_a_hosts_own_address_is_refused_and_never_taken() {
    require_root!();
    let t = Testbed::builder(3).build();
    let _agents: Vec<_> = (1..=3).map(|h| t.agent(h, "agent", &[])).collect();
    let h1 = IpAddr::V4(t.lab.host(1).addr);
    let registered = wait_until(Duration::from_secs(15), || {
        t.get("/linkmesh/hosts/").len() == 3
    });
    assert!(registered.is_some(), "every host registered");
    let cidr = format!("{h1}/24");
    let (ok, err) = admin_outcome(&t, &["ip", "add", &cidr]);
    assert!(!ok, "the CLI refuses a host's own address");
    assert!(err.contains("underlay address of host h1"), "{err}");
    assert!(t.get("/linkmesh/vips/").is_empty(), "nothing was written");

    // In etcd anyway: no agent may take it, h1 keeps it.
    put_vip(&t, &cidr, &[]);
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        assert!(has(&t, 1, h1), "h1 lost its own address");
        for h in 2..=3 {
            assert!(!has(&t, h, h1), "h{h} took h1's address");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_address_already_on_the_host_is_neither_adopted_nor_removed() {
    require_root!();
    let t = Testbed::builder(2).build();
    let addr: IpAddr = format!("198.18.{}.120", t.lab.slot()).parse().expect("ip");
    let cidr = format!("{addr}/24");
    // The operator's own secondary address on h1.
    agent::add_address(&t.lab.host(1).netns, "eth0", &cidr);
    t.admin(&["ip", "add", &cidr, "--exclude", "h2"]);
    let a1 = t.agent(1, "agent", &[]);
    let refused = wait_until(Duration::from_secs(15), || {
        a1.log().contains("linkmesh did not add it")
    });
    assert!(refused.is_some(), "h1 refuses to adopt it:\n{}", a1.log());
    assert!(has(&t, 1, addr), "and leaves it");
    let (_, metrics) = http(&t.lab.host(1).netns, "GET", "/metrics", None, None);
    assert!(
        metrics.lines().any(|l| {
            l.starts_with("linkmesh_vip_foreign_addresses_refused_total") && !l.ends_with(" 0")
        }),
        "counted: {metrics}"
    );
    // A graceful stop removes only what linkmesh added.
    a1.signal(libc::SIGTERM).expect("SIGTERM");
    assert!(
        a1.wait_timeout(Duration::from_secs(10)).is_some(),
        "stopped"
    );
    assert!(
        has(&t, 1, addr),
        "the operator's address outlives the agent"
    );
}

#[test]
fn a_vip_wider_than_slash_16_needs_force() {
    require_root!();
    let t = Testbed::builder(1).build();
    let (ok, err) = admin_outcome(&t, &["ip", "add", "198.18.0.1/8"]);
    assert!(!ok && err.contains("--force"), "{err}");
    let (ok, err) = admin_outcome(&t, &["ip", "add", "fd00::1/32"]);
    assert!(!ok && err.contains("--force"), "{err}");
    assert!(t.get("/linkmesh/vips/").is_empty(), "nothing was written");
    let (ok, err) = admin_outcome(&t, &["ip", "add", "198.18.0.1/8", "--force"]);
    assert!(ok, "{err}");
}
