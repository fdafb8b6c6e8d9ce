//! Routed mode: a VIP with `mode: route` reaches clients on another subnet
//! through BGP. Each agent host runs Debian's BIRD 2 (the host's BGP
//! daemon, exporting `--route-table` 100), and an upstream router (BIRD 2
//! too, with BFD) installs what it learns into its kernel table and routes
//! a client on a subnet of its own to the owner. linkmesh never speaks
//! BGP: it only puts the owner's host route in table 100.
//!
//! The route follows the owner across a graceful stop, an agent crash on
//! a live host (its anchor device dies with it, and the kernel withdraws
//! the route at once), and a hard failure (host cut off, agent killed).

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use linkmesh_tests::agent::{ping, wait_until, wait_watchers};
use linkmesh_tests::lab::{Lab, must_ip as ip};
use linkmesh_tests::process::Process;
use linkmesh_tests::testbed::Testbed;
use linkmesh_tests::{netns, require_root};

const TABLE: &str = "100";
const ROUTER: u8 = 253;

/// The router's address on the underlay, 198.18.S.253.
fn router_addr(lab: &Lab) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, lab.slot(), ROUTER)
}

/// A BGP daemon's settings shared by both sides: fast timers, and BFD at
/// 10 ms x 3 on `interface`.
fn bird_common(router_id: Ipv4Addr, interface: &str) -> String {
    format!(
        "log stderr all;\nrouter id {router_id};\nprotocol device {{ }}\n\
         protocol bfd {{ interface \"{interface}\" {{ min rx interval 10 ms; min tx interval 10 ms; multiplier 3; }}; }}\n"
    )
}

/// The host side: the agent's routes (table 100, protocol 200) exported
/// over BGP with next hop self. As `dist/bird-linkmesh.conf` says.
fn host_bird(lab: &Lab, host: u8) -> String {
    let me = lab.host(host).addr;
    let s = lab.slot();
    format!(
        "{}ipv4 table vips;\n\
         protocol kernel linkmesh {{ kernel table {TABLE}; learn; scan time 10; \
           ipv4 {{ table vips; import where krt_source = 200; export none; }}; }}\n\
         protocol bgp upstream {{ local {me} as 65001; neighbor {} as 65000; bfd on; \
           connect delay time 1; connect retry time 2; error wait time 1, 10; \
           ipv4 {{ table vips; import none; export where net ~ [ 198.19.{s}.0/24{{32,32}} ]; next hop self; }}; }}\n",
        bird_common(me, "eth0"),
        router_addr(lab),
    )
}

/// The upstream router: every host of the underlay may peer; what they
/// announce goes into the router's main table.
fn router_bird(lab: &Lab) -> String {
    let s = lab.slot();
    format!(
        "{}protocol kernel {{ ipv4 {{ import none; export all; }}; }}\n\
         template bgp viphost {{ local {} as 65000; bfd on; \
           connect delay time 1; connect retry time 2; error wait time 1, 10; \
           ipv4 {{ import where net ~ [ 198.19.{s}.0/24{{32,32}} ]; export none; }}; }}\n\
         protocol bgp hosts from viphost {{ neighbor range 198.18.{s}.0/24 as 65001; dynamic name \"host\"; }}\n",
        bird_common(router_addr(lab), "eth0"),
        router_addr(lab),
    )
}

/// Starts BIRD in `ns` with `config`, in the foreground, killed on drop.
fn bird(lab: &Lab, ns: &str, name: &str, config: &str) -> Process {
    let dir = lab.dir();
    let conf = dir.join(format!("bird-{name}.conf"));
    std::fs::write(&conf, config).expect("writing a BIRD config");
    let mut cmd = Command::new("bird");
    cmd.arg("-f")
        .arg("-c")
        .arg(&conf)
        .arg("-s")
        .arg(dir.join(format!("bird-{name}.ctl")))
        .arg("-P")
        .arg(dir.join(format!("bird-{name}.pid")));
    Process::spawn(cmd, Some(ns), &dir.join(format!("bird-{name}.log"))).expect("starting bird")
}

/// The router (namespace `rtr`, on the underlay bridge as 198.18.S.253),
/// and a client on a subnet of its own behind it (`far`, 198.19.S.130/25),
/// which the agent hosts reach through the router. Returns both
/// namespaces.
fn router_and_client(lab: &Lab, hosts: &[u8]) -> (String, String) {
    let (s, ul) = (lab.slot(), lab.underlay_namespace().to_owned());
    let rtr = lab.add_namespace("rtr");
    let far = lab.add_namespace("far");
    let router = format!("{}/24", router_addr(lab));
    let (inside, client) = (format!("198.19.{s}.129/25"), format!("198.19.{s}.130/25"));
    let via = format!("198.19.{s}.129");
    let far_net = format!("198.19.{s}.128/25");
    let router_ip = router_addr(lab).to_string();
    for args in [
        vec![
            "-n", &ul, "link", "add", "rtr", "type", "veth", "peer", "name", "eth0", "netns", &rtr,
        ],
        vec!["-n", &ul, "link", "set", "rtr", "master", "br0", "up"],
        vec!["-n", &rtr, "link", "set", "lo", "up"],
        vec!["-n", &rtr, "link", "set", "eth0", "up"],
        vec!["-n", &rtr, "addr", "add", &router, "dev", "eth0"],
        vec![
            "-n", &rtr, "link", "add", "far", "type", "veth", "peer", "name", "eth0", "netns", &far,
        ],
        vec!["-n", &rtr, "link", "set", "far", "up"],
        vec!["-n", &rtr, "addr", "add", &inside, "dev", "far"],
        vec!["-n", &far, "link", "set", "lo", "up"],
        vec!["-n", &far, "link", "set", "eth0", "up"],
        vec!["-n", &far, "addr", "add", &client, "dev", "eth0"],
        vec!["-n", &far, "route", "add", "default", "via", &via],
    ] {
        ip(&args);
    }
    netns::run_in(&rtr, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
    })
    .expect("forwarding on the router");
    for h in hosts {
        ip(&[
            "-n",
            &lab.host(*h).netns,
            "route",
            "add",
            &far_net,
            "via",
            &router_ip,
        ]);
    }
    (rtr, far)
}

/// The next hop of the router's route to `vip` in its main table (read
/// from the kernel, as the router forwards).
fn next_hop(rtr: &str, vip: Ipv4Addr) -> Option<Ipv4Addr> {
    netns::run_in(rtr, move || route_via(vip))
}

fn route_via(vip: Ipv4Addr) -> Option<Ipv4Addr> {
    // Addresses are printed as the hex of their bytes read as a native u32.
    let table = std::fs::read_to_string("/proc/thread-self/net/route").ok()?;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let host_route = f.len() > 7 && f[7] == "FFFFFFFF";
        (host_route && hex(f[1]) == Some(u32::from_ne_bytes(vip.octets())))
            .then(|| hex(f[2]).map(|g| Ipv4Addr::from(g.to_ne_bytes())))
            .flatten()
    })
}

/// Waits (polling the router's table every 0.2 ms, in its namespace)
/// until the route to `vip` goes via `want`; how long that took.
fn wait_via(rtr: &str, vip: Ipv4Addr, want: Ipv4Addr, timeout: Duration) -> Option<Duration> {
    netns::run_in(rtr, move || {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if route_via(vip) == Some(want) {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        None
    })
}

/// The host (of 1..=3) whose address the router's route goes via.
fn routed_to(lab: &Lab, rtr: &str, vip: Ipv4Addr) -> Option<u8> {
    let hop = next_hop(rtr, vip)?;
    (1..=3).find(|h| lab.host(*h).addr == hop)
}

/// Waits until the router routes `vip` to a host other than `not`: which,
/// and after how long.
fn routed_elsewhere(
    lab: &Lab,
    rtr: &str,
    vip: Ipv4Addr,
    not: u8,
) -> (Option<u8>, Option<Duration>) {
    let mut to = None;
    let took = wait_until(Duration::from_secs(10), || {
        to = routed_to(lab, rtr, vip).filter(|h| *h != not);
        to.is_some()
    });
    (to, took)
}

#[test]
fn the_route_follows_the_owner_through_bgp() {
    require_root!();
    let t = Testbed::builder(3).build();
    let (rtr, far) = router_and_client(&t.lab, &[1, 2, 3]);
    let s = t.lab.slot();
    let vip = Ipv4Addr::new(198, 19, s, 77);
    let _router = bird(&t.lab, &rtr, "router", &router_bird(&t.lab));
    let _birds: Vec<Process> = (1..=3)
        .map(|h| {
            let ns = t.lab.host(h).netns.clone();
            bird(&t.lab, &ns, &format!("h{h}"), &host_bird(&t.lab, h))
        })
        .collect();
    t.admin(&["ip", "add", &format!("{vip}/32"), "--mode", "route"]);
    let start = |h: u8| t.agent(h, "agent", &["--route-table", TABLE]);
    let mut agents: Vec<Process> = (1..=3).map(start).collect();
    let holders = || t.lab.holders(IpAddr::V4(vip), 1..=3);
    let mut owner = None;
    let one = wait_until(Duration::from_secs(10), || {
        let h = holders();
        owner = h.first().copied();
        h.len() == 1
    });
    assert!(one.is_some(), "one holder: {:?}", holders());
    let owner = owner.expect("an owner");
    // The router learns it (the sessions come up about a second after
    // BIRD starts).
    let learned = wait_via(&rtr, vip, t.lab.host(owner).addr, Duration::from_secs(20));
    assert!(
        learned.is_some(),
        "the router routes the VIP to h{owner}: {:?}\n{}",
        next_hop(&rtr, vip),
        std::fs::read_to_string(t.lab.dir().join("bird-router.log")).unwrap_or_default()
    );
    let (tx, rx) = ping(&far, &vip.to_string(), 3, "0.1");
    assert_eq!(
        (tx, rx),
        (3, 3),
        "the far client reaches the VIP through the router"
    );
    // Nothing is announced on the link: routed, not L2.
    let agent_log = agents[usize::from(owner - 1)].log();
    assert!(agent_log.contains("vip route installed"), "{agent_log}");
    assert!(
        !agent_log.contains("announc"),
        "no announcements: {agent_log}"
    );

    // 1. Graceful: the owner stops; the route moves with the VIP.
    let stopped = Instant::now();
    agents[usize::from(owner - 1)]
        .signal(libc::SIGTERM)
        .expect("SIGTERM");
    let (second, moved) = routed_elsewhere(&t.lab, &rtr, vip, owner);
    let second = second.expect("the route moved");
    eprintln!(
        "vip_route figure: graceful stop of h{owner}: the router points at h{second} after {:?}",
        moved.map(|_| stopped.elapsed())
    );
    assert_eq!(holders(), vec![second]);
    agents[usize::from(owner - 1)] = start(owner);

    // 2. The agent crashes on a live host: its route is withdrawn at once
    // (the anchor dies with it), long before its lease would run out.
    let crashed = Instant::now();
    agents[usize::from(second - 1)].kill();
    let withdrawn = wait_until(Duration::from_secs(10), || {
        routed_to(&t.lab, &rtr, vip) != Some(second)
    });
    eprintln!(
        "vip_route figure: agent crash on h{second}: its route left the router after {:?}",
        withdrawn.map(|_| crashed.elapsed())
    );
    assert!(
        withdrawn.is_some_and(|w| w < Duration::from_secs(2)),
        "withdrawn before the 2 s lease could run out: {withdrawn:?}"
    );
    let (third, took) = routed_elsewhere(&t.lab, &rtr, vip, second);
    let third = third.expect("another host routes the VIP");
    eprintln!(
        "vip_route figure: after the crash the router points at h{third} after {:?}",
        took.map(|_| crashed.elapsed())
    );

    agents[usize::from(second - 1)] = start(second);

    // 3. Hard failure: the owner's host is cut off and its agent killed.
    // BFD takes its session (and route) down, and the standbys' quorum
    // revokes the owner: a survivor's route wins.
    wait_watchers(&agents);
    let cut = Instant::now();
    t.lab.host(third).cut();
    agents[usize::from(third - 1)].kill();
    let (last, took) = routed_elsewhere(&t.lab, &rtr, vip, third);
    let took = took.map(|_| cut.elapsed());
    eprintln!(
        "vip_route figure: hard failure of h{third}: the router points at h{} after {took:?} from the cut",
        last.unwrap_or_default()
    );
    assert!(
        took.is_some(),
        "the route follows: {:?}",
        next_hop(&rtr, vip)
    );
    let (tx, rx) = ping(&far, &vip.to_string(), 3, "0.1");
    assert_eq!((tx, rx), (3, 3), "the far client reaches the new owner");
    t.lab.host(third).reconnect();
}
