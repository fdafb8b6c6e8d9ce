//! The overlay mesh: agents in lab hosts, a real etcd, real VXLAN packets.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use linkmesh_tests::agent::{self, add_address, admin, peers, ping, wait_until};
use linkmesh_tests::etcd::Etcd;
use linkmesh_tests::lab::Lab;
use linkmesh_tests::require_root;

const SECRET: &str = "lab-secret-0123456789abcdef";

fn ip(host: &linkmesh_tests::lab::Host) -> IpAddr {
    IpAddr::V4(host.addr)
}

struct Mesh {
    lab: Lab,
    etcd: Etcd,
    secret: std::path::PathBuf,
}

impl Mesh {
    fn new(hosts: u8) -> Self {
        let lab = Lab::new(hosts);
        let etcd = Etcd::start_on(IpAddr::V4(lab.gateway()));
        let secret = agent::secret_file(&lab, "secret", &[SECRET]);
        Self { lab, etcd, secret }
    }

    fn admin(&self, args: &[&str]) -> String {
        admin(&self.etcd.endpoint(), &self.secret, args)
    }

    fn agent(
        &self,
        host: u8,
        segments: &[&str],
        extra: &[&str],
    ) -> linkmesh_tests::process::Process {
        agent::start(
            &self.lab,
            host,
            &self.etcd.endpoint(),
            &self.secret,
            segments,
            extra,
        )
    }

    /// Waits until `device` on `host` has exactly `want` as peers.
    fn wait_peers(
        &self,
        host: u8,
        device: &str,
        want: &[IpAddr],
        timeout: Duration,
    ) -> Option<Duration> {
        let mut want = want.to_vec();
        want.sort();
        let ns = self.lab.host(host).netns.clone();
        wait_until(timeout, || peers(&ns, device).as_deref() == Some(&want[..]))
    }

    fn overlay(&self, host: u8, segment_octet: u8) -> String {
        format!("198.19.{}.{}", self.lab.slot(), segment_octet + host)
    }
}

#[test]
fn members_ping_each_other_over_every_shared_segment() {
    require_root!();
    let m = Mesh::new(3);
    m.admin(&["segment", "add", "blue", "--vni", "100"]);
    m.admin(&["segment", "add", "red", "--vni", "200"]);
    let listed = m.admin(&["segment", "ls", "--json"]);
    assert!(
        listed.contains("\"blue\"") && listed.contains("200"),
        "{listed}"
    );

    let _a1 = m.agent(1, &["blue", "red"], &[]);
    let _a2 = m.agent(2, &["blue", "red"], &[]);
    let _a3 = m.agent(3, &["blue"], &[]);
    let (h1, h2, h3) = (m.lab.host(1), m.lab.host(2), m.lab.host(3));
    let t = Duration::from_secs(10);
    assert!(
        m.wait_peers(1, "blue", &[ip(h2), ip(h3)], t).is_some(),
        "h1 blue peers: {:?}",
        peers(&h1.netns, "blue")
    );
    assert!(
        m.wait_peers(2, "blue", &[ip(h1), ip(h3)], t).is_some(),
        "h2 blue peers"
    );
    assert!(
        m.wait_peers(3, "blue", &[ip(h1), ip(h2)], t).is_some(),
        "h3 blue peers"
    );
    assert!(
        m.wait_peers(1, "red", &[ip(h2)], t).is_some(),
        "h1 red peers: {:?}",
        peers(&h1.netns, "red")
    );
    assert!(
        m.wait_peers(2, "red", &[ip(h1)], t).is_some(),
        "h2 red peers"
    );
    assert_eq!(peers(&h3.netns, "red"), None, "h3 has no red device");

    let blue = linkmesh_tests::kernel::link(&h1.netns, "blue").expect("blue exists");
    assert_eq!(blue.kind.as_deref(), Some("vxlan"));
    assert!(blue.up);
    assert_eq!(blue.mtu, Some(1450));

    for h in 1..=3 {
        add_address(
            &m.lab.host(h).netns,
            "blue",
            &format!("{}/25", m.overlay(h, 0)),
        );
    }
    for h in 1..=2 {
        add_address(
            &m.lab.host(h).netns,
            "red",
            &format!("{}/25", m.overlay(h, 128)),
        );
    }
    for from in 1..=3u8 {
        for to in (1..=3u8).filter(|t| *t != from) {
            let (tx, rx) = ping(&m.lab.host(from).netns, &m.overlay(to, 0), 3, "0.2");
            assert_eq!((tx, rx), (3, 3), "blue: h{from} -> h{to}");
        }
    }
    let (tx, rx) = ping(&h1.netns, &m.overlay(2, 128), 3, "0.2");
    assert_eq!((tx, rx), (3, 3), "red: h1 -> h2");
    let (tx, rx) = ping(&h2.netns, &m.overlay(1, 128), 3, "0.2");
    assert_eq!((tx, rx), (3, 3), "red: h2 -> h1");
}

#[test]
fn dead_and_stopped_hosts_leave_every_peer() {
    require_root!();
    let m = Mesh::new(3);
    m.admin(&["segment", "add", "blue", "--vni", "100"]);
    let ttl = 3;
    let extra = ["--ttl", "3"];
    let _a1 = m.agent(1, &["blue"], &extra);
    let a2 = m.agent(2, &["blue"], &extra);
    let a3 = m.agent(3, &["blue"], &extra);
    let (h1, h2, h3) = (m.lab.host(1), m.lab.host(2), m.lab.host(3));
    let t = Duration::from_secs(10);
    assert!(m.wait_peers(1, "blue", &[ip(h2), ip(h3)], t).is_some());
    assert!(m.wait_peers(2, "blue", &[ip(h1), ip(h3)], t).is_some());

    // Hard death: SIGKILL and pull the cable. Gone within TTL + 1 s.
    a3.kill();
    h3.cut();
    let start = Instant::now();
    let limit = Duration::from_secs(ttl + 1);
    let on_h1 = m.wait_peers(1, "blue", &[ip(h2)], limit + Duration::from_secs(2));
    let on_h2 = m.wait_peers(2, "blue", &[ip(h1)], limit + Duration::from_secs(2));
    let elapsed = start.elapsed();
    assert!(
        on_h1.is_some() && on_h2.is_some(),
        "h3 removed from peers: {:?}",
        peers(&h1.netns, "blue")
    );
    eprintln!("dead host removed after {elapsed:?} (ttl {ttl} s)");
    assert!(
        elapsed <= limit,
        "dead host removed after {elapsed:?}, limit {limit:?}"
    );

    // Graceful stop: the lease is revoked, so peers drop it at once.
    a2.signal(libc::SIGTERM).expect("SIGTERM");
    let gone = m.wait_peers(1, "blue", &[], Duration::from_secs(3));
    eprintln!("stopped host removed after {gone:?}");
    assert!(
        gone.is_some_and(|d| d <= Duration::from_secs(1)),
        "stopped host removed within 1 s: {gone:?}"
    );
    assert!(
        a2.wait_timeout(Duration::from_secs(5))
            .is_some_and(|s| s.success()),
        "agent exits 0 on SIGTERM"
    );
    assert!(
        linkmesh_tests::kernel::link(&h2.netns, "blue").is_some(),
        "devices stay after exit"
    );
}
