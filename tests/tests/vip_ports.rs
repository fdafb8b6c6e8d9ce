//! Port maps: on the VIP's owner, traffic to `VIP:80/tcp` and `VIP:53/udp`
//! reaches the local services on 8080 and 5353, and their replies leave
//! from the VIP's ports; a standby maps nothing, and the map moves with
//! the VIP. Real agents, a real etcd, real TCP and UDP from the lab client.
//! And the API refuses every malformed port map with a 400, writing
//! nothing.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use linkmesh_tests::agent::{http, metric, wait_until};
use linkmesh_tests::require_root;
use linkmesh_tests::service::{Service, ask_tcp, ask_udp};
use linkmesh_tests::testbed::Testbed;

const CLIENT: u8 = 4;
const MAPPED: &str = "linkmesh_vip_port_mapped";

/// What the client gets from `vip` on TCP 80 and UDP 53 (with the UDP
/// reply's source).
fn ask(t: &Testbed, vip: IpAddr) -> (Option<String>, Option<(String, SocketAddr)>) {
    let client = &t.lab.host(CLIENT).netns;
    (
        ask_tcp(client, SocketAddr::new(vip, 80)),
        ask_udp(client, SocketAddr::new(vip, 53)),
    )
}

/// Asserts that the client reaches `owner`'s services through the VIP's
/// ports, and that the UDP reply came from the VIP's port 53.
fn served_by(t: &Testbed, owner: u8) {
    let name = format!("h{owner}");
    let mut last = (None, None);
    let ok = wait_until(Duration::from_secs(5), || {
        last = ask(t, t.vip);
        last.0.as_deref() == Some(name.as_str())
            && last.1.as_ref().map(|(n, _)| n.as_str()) == Some(name.as_str())
    });
    assert!(ok.is_some(), "{name} answers through the VIP: {last:?}");
    let (_, from) = last.1.expect("a UDP reply");
    assert_eq!(
        from,
        SocketAddr::new(t.vip, 53),
        "the reply leaves from the VIP's port"
    );
}

#[test]
fn the_owner_maps_the_vips_ports_and_the_map_moves_with_the_vip() {
    require_root!();
    let t = Testbed::builder(3)
        .vip(&["--port", "80:8080/tcp", "--port", "53:5353/udp"])
        .build();
    let _services: Vec<Service> = (1..=3)
        .map(|h| {
            let udp = SocketAddr::new(t.vip, 5353);
            Service::start(&t.lab.host(h).netns, 8080, udp, &format!("h{h}"))
        })
        .collect();
    let agents: Vec<_> = (1..=3).map(|h| t.agent(h, "agent", &[])).collect();
    let owner = t
        .wait_single_holder(Duration::from_secs(10), None)
        .expect("one holder");
    let got = t.admin(&["ip", "get", &t.id]);
    assert!(got.contains("80:8080/tcp, 53:5353/udp"), "{got}");
    served_by(&t, owner);
    let mapped = |h: u8| metric(&t.lab.host(h).netns, MAPPED);
    for h in 1..=3 {
        let want = u64::from(h == owner);
        assert_eq!(mapped(h), Some(want), "h{h} maps only what it holds");
    }
    // Only the VIP's ports are mapped: the owner's own address is not.
    let client = t.lab.host(CLIENT).netns.clone();
    let own = IpAddr::V4(t.lab.host(owner).addr);
    assert_eq!(ask_tcp(&client, SocketAddr::new(own, 80)), None);
    assert_eq!(
        ask_tcp(&client, SocketAddr::new(own, 8080)).as_deref(),
        Some(format!("h{owner}").as_str())
    );

    // The VIP moves: the map goes with it.
    t.admin(&["ip", "failover", &t.id]);
    let next = t
        .wait_single_holder(Duration::from_secs(10), Some(owner))
        .expect("another holder");
    served_by(&t, next);
    let moved = wait_until(Duration::from_secs(5), || {
        (1..=3).all(|h| mapped(h) == Some(u64::from(h == next)))
    });
    assert!(
        moved.is_some(),
        "the old owner unmapped, the new one mapped: {:?}",
        (1..=3).map(mapped).collect::<Vec<_>>()
    );
    for h in 1..=3 {
        assert_eq!(
            metric(&t.lab.host(h).netns, "linkmesh_vip_delivery_failures_total"),
            Some(0),
            "h{h}"
        );
    }
    drop(agents);
}

const CREDS: &str = "admin:a-long-enough-password";

#[test]
fn malformed_port_maps_and_routes_are_refused_and_nothing_is_written() {
    require_root!();
    let t = Testbed::builder(1).vip(&[]).build();
    let _a = t.agent_with_api_user(1, "a-long-enough-password");
    let ns = t.lab.host(1).netns.clone();
    let s = t.lab.slot();
    let before = t.vip_records();
    let ports = |p: &str| format!(r#"{{"address":"198.18.{s}.120/32","ports":[{p}]}}"#);
    for bad in [
        ports(r#"{"src":0,"proto":"tcp","dest":8080}"#),
        ports(r#"{"src":80,"proto":"tcp","dest":65536}"#),
        ports(r#"{"src":80,"proto":"icmp","dest":8080}"#),
        ports(r#"{"src":80,"proto":"tcp","dest":8080,"via":"sh -c id"}"#),
        ports(r#"{"src":80,"proto":"tcp","dest":8080},{"src":80,"proto":"tcp","dest":8081}"#),
        ports(r#"{"src":80,"proto":"udp","dest":53},{"src":81,"proto":"udp","dest":53}"#),
        ports(r#"{"src":"80","proto":"tcp","dest":8080}"#),
        format!(r#"{{"address":"198.18.{s}.121/24","mode":"route"}}"#),
        format!(r#"{{"address":"198.18.{s}.122/32","mode":"bgp"}}"#),
    ] {
        let (status, body) = http(&ns, "POST", "/ips", Some(&bad), Some(CREDS));
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(t.vip_records(), before, "nothing was written");
    let good =
        ports(r#"{"src":80,"proto":"tcp","dest":8080},{"src":80,"proto":"udp","dest":8080}"#);
    let (status, body) = http(&ns, "POST", "/ips", Some(&good), Some(CREDS));
    assert_eq!(status, 201, "{body}");
}
