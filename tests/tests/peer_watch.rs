//! The `peer_watch` classifier through `BPF_PROG_TEST_RUN`: heartbeats and
//! VXLAN packets from known peers are counted (heartbeats consumed),
//! heartbeats without the peer's token are dropped and counted, and
//! everything else passes without touching the stats.

use std::net::Ipv4Addr;

use linkmesh::ebpf::{self as watch, PortKind};
use linkmesh::peers;
use linkmesh_common::{PEER_PROGRAM, PeerStats};
use linkmesh_tests::frame::{
    self, ETH_P_8021AD, ETH_P_8021Q, IPV4_OFFSET, TC_ACT_SHOT, TC_ACT_UNSPEC, VXLAN_PORT,
};
use linkmesh_tests::require_root;

const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);
const US: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const HEARTBEAT_PORT: u16 = 4794;
/// `PEER`'s heartbeat token (the agent derives it from the secret).
const TOKEN: [u8; 8] = *b"tok-peer";

/// A heartbeat from `PEER` as the agent sends it, behind `tags`.
fn heartbeat(tags: &[(u16, u16)]) -> Vec<u8> {
    heartbeat_with(tags, TOKEN)
}

fn heartbeat_with(tags: &[(u16, u16)], token: [u8; 8]) -> Vec<u8> {
    frame::udp(
        tags,
        PEER,
        US,
        HEARTBEAT_PORT,
        &peers::heartbeat_payload("h1", token),
    )
}

fn vxlan_from_peer() -> Vec<u8> {
    frame::vxlan(PEER, US, 100, &frame::tcp(PEER, US, 80))
}

/// `CLOCK_MONOTONIC_COARSE`, the clock of `bpf_ktime_get_coarse_ns`, which
/// `peer_watch` stamps with.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we pass.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) },
        0
    );
    u64::try_from(ts.tv_sec).expect("after boot") * 1_000_000_000
        + u64::try_from(ts.tv_nsec).expect("in range")
}

/// `peer_watch` loaded.
struct Loaded {
    bpf: frame::Loaded,
}

impl Loaded {
    /// The program with `PEER` known, the heartbeat port and one VXLAN
    /// port, set up the way the agent does it.
    fn new() -> Self {
        let mut bpf = frame::Loaded::new(PEER_PROGRAM);
        watch::set_peers(&mut bpf.ebpf, &[PEER].into()).expect("adding the peer");
        watch::set_token(&mut bpf.ebpf, PEER, Some([u64::from_ne_bytes(TOKEN), 0]))
            .expect("setting the peer's token");
        watch::set_port(&mut bpf.ebpf, HEARTBEAT_PORT, Some(PortKind::Heartbeat))
            .expect("adding the heartbeat port");
        watch::set_port(&mut bpf.ebpf, VXLAN_PORT, Some(PortKind::Vxlan))
            .expect("adding the VXLAN port");
        Self { bpf }
    }

    fn run(&mut self, frame: &[u8], repeat: u32) -> u32 {
        self.bpf.run(frame, repeat)
    }

    /// `peer`'s stats over all CPUs (counters summed, latest times), as
    /// the agent reads them, or `None` for a peer the program does not know.
    fn stats(&mut self, peer: Ipv4Addr) -> Option<PeerStats> {
        let ns = |t: Option<std::time::Duration>| {
            t.map_or(0, |d| u64::try_from(d.as_nanos()).expect("fits"))
        };
        watch::peer_sample(&mut self.bpf.ebpf, peer).map(|s| PeerStats {
            last_heartbeat_ns: ns(s.last_heartbeat),
            last_vxlan_ns: ns(s.last_vxlan),
            heartbeats: s.heartbeats,
            vxlan_packets: s.vxlan_packets,
        })
    }
}

#[test]
fn heartbeats_from_a_peer_are_counted_timestamped_and_consumed() {
    require_root!();
    let mut bpf = Loaded::new();
    assert_eq!(
        bpf.stats(PEER),
        Some(PeerStats::default()),
        "known, nothing counted before the first packet"
    );
    assert_eq!(bpf.stats(STRANGER), None, "not a peer");

    let before = monotonic_ns();
    assert_eq!(bpf.run(&heartbeat(&[]), 1), TC_ACT_SHOT);
    let after = monotonic_ns();
    let first = bpf.stats(PEER).expect("stats for the peer");
    assert_eq!(first.heartbeats, 1);
    assert!(
        (before..=after).contains(&first.last_heartbeat_ns),
        "stamped with the monotonic clock during the run: {before} <= {} <= {after}",
        first.last_heartbeat_ns
    );
    assert_eq!((first.vxlan_packets, first.last_vxlan_ns), (0, 0));

    assert_eq!(bpf.run(&heartbeat(&[]), 1), TC_ACT_SHOT);
    let second = bpf.stats(PEER).expect("stats for the peer");
    assert_eq!(second.heartbeats, 2);
    assert!(second.last_heartbeat_ns >= first.last_heartbeat_ns);
    assert_eq!((second.vxlan_packets, second.last_vxlan_ns), (0, 0));
}

#[test]
fn vxlan_from_a_peer_is_counted_and_passes() {
    require_root!();
    let mut bpf = Loaded::new();
    let before = monotonic_ns();
    assert_eq!(bpf.run(&vxlan_from_peer(), 1), TC_ACT_UNSPEC);
    assert_eq!(bpf.run(&vxlan_from_peer(), 1), TC_ACT_UNSPEC);
    let after = monotonic_ns();
    let stats = bpf.stats(PEER).expect("stats for the peer");
    assert_eq!(stats.vxlan_packets, 2);
    assert!((before..=after).contains(&stats.last_vxlan_ns));
    assert_eq!((stats.heartbeats, stats.last_heartbeat_ns), (0, 0));
}

#[test]
fn tagged_heartbeats_are_seen_through_one_or_two_tags() {
    require_root!();
    let mut bpf = Loaded::new();
    assert_eq!(bpf.run(&heartbeat(&[(ETH_P_8021Q, 42)]), 1), TC_ACT_SHOT);
    assert_eq!(bpf.stats(PEER).expect("counted").heartbeats, 1);
    assert_eq!(
        bpf.run(&heartbeat(&[(ETH_P_8021AD, 7), (ETH_P_8021Q, 42)]), 1),
        TC_ACT_SHOT
    );
    assert_eq!(bpf.stats(PEER).expect("counted").heartbeats, 2);
}

#[test]
fn first_fragments_count_and_later_fragments_pass() {
    require_root!();
    let mut bpf = Loaded::new();
    let flags = IPV4_OFFSET + 6;
    let mut first = heartbeat(&[]);
    first[flags..flags + 2].copy_from_slice(&0x2000u16.to_be_bytes());
    assert_eq!(bpf.run(&first, 1), TC_ACT_SHOT, "MF set, offset 0");
    let baseline = bpf.stats(PEER).expect("counted");
    assert_eq!(baseline.heartbeats, 1);

    // A later fragment (offset 185 x 8 bytes) whose bytes look like a
    // heartbeat's: it has no UDP header, so it is not one.
    let mut later = heartbeat(&[]);
    later[flags..flags + 2].copy_from_slice(&185u16.to_be_bytes());
    assert_eq!(bpf.run(&later, 1), TC_ACT_UNSPEC);
    assert_eq!(bpf.stats(PEER), Some(baseline), "not counted");
}

#[test]
fn other_traffic_passes_without_touching_the_stats() {
    require_root!();
    let mut bpf = Loaded::new();
    // An entry to compare against, so updates to it would show too.
    assert_eq!(bpf.run(&heartbeat(&[]), 1), TC_ACT_SHOT);
    assert_eq!(bpf.run(&vxlan_from_peer(), 1), TC_ACT_UNSPEC);
    let baseline = bpf.stats(PEER).expect("stats for the peer");

    let whole = heartbeat(&[]);
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        (
            "a heartbeat from an unknown source".into(),
            frame::udp(
                &[],
                STRANGER,
                US,
                HEARTBEAT_PORT,
                &peers::heartbeat_payload("h9", TOKEN),
            ),
        ),
        (
            "VXLAN from an unknown source".into(),
            frame::vxlan(STRANGER, US, 100, &frame::tcp(STRANGER, US, 80)),
        ),
        (
            "a heartbeat to an unknown port".into(),
            frame::udp(
                &[],
                PEER,
                US,
                HEARTBEAT_PORT + 1,
                &peers::heartbeat_payload("h1", TOKEN),
            ),
        ),
        (
            "a datagram on the heartbeat port without the magic".into(),
            frame::udp(&[], PEER, US, HEARTBEAT_PORT, b"LMHX\x01h1"),
        ),
        (
            "TCP from the peer to the VXLAN port number".into(),
            frame::tcp(PEER, US, VXLAN_PORT),
        ),
        (
            "an ARP request from the peer".into(),
            frame::arp_request(PEER, US),
        ),
        (
            "three VLAN tags (more than the program looks through)".into(),
            heartbeat(&[(ETH_P_8021Q, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)]),
        ),
    ];
    // The same UDP datagram over IPv6 (fc00::1 to fc00::2): the program
    // watches an IPv4 underlay only. (The kernel refuses to test-run an
    // IPv4 header under the IPv6 EtherType, so it is a real IPv6 header.)
    let udp = &whole[IPV4_OFFSET + 20..];
    let mut ipv6 = frame::ethernet(&[], frame::ETH_P_IPV6);
    ipv6.extend_from_slice(&[0x60, 0, 0, 0]);
    ipv6.extend_from_slice(&u16::try_from(udp.len()).expect("short").to_be_bytes());
    ipv6.extend_from_slice(&[17, 64]);
    for last in [1, 2] {
        ipv6.extend_from_slice(&[0xfc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]);
    }
    ipv6.extend_from_slice(udp);
    cases.push(("a heartbeat over IPv6".into(), ipv6));
    // 34: no UDP header; 37: in the destination port; 41: one byte short
    // of the UDP header; 42: no payload; 45: one byte short of the magic.
    for len in [34, 37, 41, 42, 45] {
        cases.push((
            format!("a heartbeat truncated to {len} bytes"),
            whole[..len].to_vec(),
        ));
    }
    // BPF_PROG_TEST_RUN refuses (EINVAL) a frame with the IPv4 EtherType
    // that is shorter than an IPv4 header, so cuts before the end of the
    // IP header are tested behind a tag, where the kernel does not look.
    // 16: in the tag; 18: no IP header; 30 and 37: inside it; 49: one
    // byte short of the magic.
    let tagged = heartbeat(&[(ETH_P_8021Q, 42)]);
    for len in [16, 18, 30, 37, 49] {
        cases.push((
            format!("a tagged heartbeat truncated to {len} bytes"),
            tagged[..len].to_vec(),
        ));
    }

    for (what, frame) in &cases {
        assert_eq!(bpf.run(frame, 1), TC_ACT_UNSPEC, "{what}: passes");
        assert_eq!(bpf.stats(PEER), Some(baseline), "{what}: stats unchanged");
        assert_eq!(bpf.stats(STRANGER), None, "{what}: no stats for strangers");
    }
    // The whole heartbeat after all that is still counted.
    assert_eq!(bpf.run(&whole, 1), TC_ACT_SHOT);
    assert_eq!(bpf.stats(PEER).expect("counted").heartbeats, 2);
}

#[test]
fn a_heartbeat_storm_is_counted_exactly() {
    require_root!();
    let mut bpf = Loaded::new();
    assert_eq!(bpf.run(&heartbeat(&[]), 10_000), TC_ACT_SHOT);
    let stats = bpf.stats(PEER).expect("stats for the peer");
    assert_eq!(stats.heartbeats, 10_000, "every run counted once");
    assert_eq!(stats.vxlan_packets, 0);
}

#[test]
fn heartbeats_without_the_peers_token_are_dropped_and_counted() {
    require_root!();
    let mut bpf = Loaded::new();
    assert_eq!(bpf.run(&heartbeat(&[]), 1), TC_ACT_SHOT);
    let baseline = bpf.stats(PEER).expect("stats for the peer");
    assert_eq!(baseline.heartbeats, 1);

    let whole = heartbeat(&[]);
    // The token is bytes 8..16 of the payload, after the UDP header at 34.
    let token_at = IPV4_OFFSET + 20 + 8 + 8;
    let forged: Vec<(&str, Vec<u8>)> = vec![
        ("a guessed token", heartbeat_with(&[], *b"guessed!")),
        ("a zero token", heartbeat_with(&[], [0; 8])),
        (
            "the version 1 format (no token)",
            frame::udp(&[], PEER, US, HEARTBEAT_PORT, b"LMHB\x01h1"),
        ),
        ("cut inside the token", whole[..token_at + 4].to_vec()),
        ("the token behind a tag, one bit off", {
            let mut t = TOKEN;
            t[7] ^= 1;
            heartbeat_with(&[(ETH_P_8021Q, 42)], t)
        }),
    ];
    for (n, (what, frame)) in forged.iter().enumerate() {
        assert_eq!(bpf.run(frame, 1), TC_ACT_SHOT, "{what}: dropped");
        assert_eq!(bpf.stats(PEER), Some(baseline), "{what}: not counted");
        assert_eq!(
            watch::heartbeats_rejected(&mut bpf.bpf.ebpf).expect("the drop counter"),
            u64::try_from(n + 1).expect("small"),
            "{what}: counted as rejected"
        );
    }

    // During a secret rotation the second token is good too.
    let other = *b"tok-next";
    watch::set_token(
        &mut bpf.bpf.ebpf,
        PEER,
        Some([u64::from_ne_bytes(TOKEN), u64::from_ne_bytes(other)]),
    )
    .expect("two tokens");
    assert_eq!(bpf.run(&heartbeat_with(&[], other), 1), TC_ACT_SHOT);
    assert_eq!(bpf.stats(PEER).expect("counted").heartbeats, 2);

    // A peer that publishes no token (an agent from before tokens): its
    // heartbeats count as before.
    watch::set_token(&mut bpf.bpf.ebpf, PEER, None).expect("no token");
    assert_eq!(bpf.run(&heartbeat_with(&[], [0; 8]), 1), TC_ACT_SHOT);
    assert_eq!(bpf.stats(PEER).expect("counted").heartbeats, 3);
}
