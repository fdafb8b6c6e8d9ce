//! The `vip_watch` classifier through `BPF_PROG_TEST_RUN`: conflicts for our
//! VIPs, who answers for others' (only their owner's published MAC, when
//! there is one), who-has counts, and the rate limit.

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use linkmesh_common::{
    CONFLICTS_MAP, ConflictEvent, DROP_FOREIGN_REPLY, DROPS_MAP, VIP_PROGRAM, VIP_SEEN_MAP,
    VIP_WHO_HAS_MAP, VIPS_MAP, VipInfo, VipSeen,
};
use linkmesh_tests::frame::{self, TC_ACT_UNSPEC};
use linkmesh_tests::require_root;

const OURS: [u8; 6] = [0x02, 0x18, 0, 0, 0, 1];
const FOREIGN: [u8; 6] = [0x02, 0x18, 0, 0, 0, 9];
const VIP: [u8; 4] = [198, 18, 0, 100];
const OTHER_VIP: [u8; 4] = [198, 18, 0, 101];
/// A VIP held by another host that published its MAC, `OWNER`.
const OWNED_VIP: [u8; 4] = [198, 18, 0, 102];
const OWNER: [u8; 6] = [0x02, 0x18, 0, 0, 0, 2];

fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4], tags: &[u16]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sha);
    for vid in tags {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f
}

/// `vip_watch` loaded, with its maps, knowing `VIP` (ours) and
/// `OTHER_VIP` (someone else's).
struct Loaded {
    bpf: frame::Loaded,
    vips: HashMap<MapData, u32, VipInfo>,
    seen: HashMap<MapData, u32, VipSeen>,
    who_has: PerCpuHashMap<MapData, u32, u64>,
    conflicts: RingBuf<MapData>,
    drops: PerCpuArray<MapData, u64>,
}

fn key(ip: [u8; 4]) -> u32 {
    u32::from_ne_bytes(ip)
}

impl Loaded {
    fn new() -> Self {
        let mut bpf = frame::Loaded::new(VIP_PROGRAM);
        let vips = bpf.take(VIPS_MAP);
        let seen = bpf.take(VIP_SEEN_MAP);
        let who_has = bpf.take(VIP_WHO_HAS_MAP);
        let conflicts = bpf.take(CONFLICTS_MAP);
        let drops = bpf.take(DROPS_MAP);
        let mut l = Self {
            bpf,
            vips,
            seen,
            who_has,
            conflicts,
            drops,
        };
        let info = |owned, owner_mac| VipInfo {
            mac: OURS,
            owned,
            _pad: 0,
            owner_mac,
            _pad2: [0; 2],
        };
        for (vip, value) in [
            (VIP, info(1, [0; 6])),
            (OTHER_VIP, info(0, [0; 6])),
            (OWNED_VIP, info(0, OWNER)),
        ] {
            l.vips.insert(key(vip), value, 0).expect("insert");
        }
        l
    }

    fn run(&mut self, frame: &[u8], repeat: u32) -> u32 {
        self.bpf.run(frame, repeat)
    }

    fn drain(&mut self) -> Vec<ConflictEvent> {
        frame::drain(&mut self.conflicts, ConflictEvent::from_bytes)
    }
}

#[test]
fn a_foreign_claim_on_our_vip_is_a_conflict_and_ours_is_not() {
    require_root!();
    let mut bpf = Loaded::new();
    assert_eq!(bpf.run(&arp(1, OURS, VIP, VIP, &[]), 1), TC_ACT_UNSPEC);
    assert!(bpf.drain().is_empty(), "our own GARP is no conflict");

    assert_eq!(bpf.run(&arp(2, FOREIGN, VIP, VIP, &[]), 1), TC_ACT_UNSPEC);
    let events = bpf.drain();
    assert_eq!(events.len(), 1, "one conflict event");
    let e = events[0];
    assert_eq!(e.ip, VIP);
    assert_eq!(e.foreign_mac, FOREIGN);
    assert_eq!(e.our_mac, OURS);
    assert_eq!(e.operation, 2);
    assert!(e.timestamp_ns > 0);
}

#[test]
fn the_rate_limit_holds_under_a_storm_and_tags_are_seen_through() {
    require_root!();
    let mut bpf = Loaded::new();
    // 100,000 conflicting frames in one burst (well under 50 ms): one event.
    assert_eq!(
        bpf.run(&arp(1, FOREIGN, VIP, VIP, &[42]), 100_000),
        TC_ACT_UNSPEC
    );
    let events = bpf.drain();
    assert_eq!(
        events.len(),
        1,
        "rate-limited to one event per VIP per interval, tagged frame seen"
    );
    // A truncated claim passes and reports nothing.
    let frame = arp(1, FOREIGN, VIP, VIP, &[]);
    assert_eq!(bpf.run(&frame[..30], 1), TC_ACT_UNSPEC);
    assert!(bpf.drain().is_empty());
}

#[test]
fn replies_for_others_vips_and_who_has_requests_are_recorded() {
    require_root!();
    let mut bpf = Loaded::new();
    assert_eq!(
        bpf.run(&arp(2, FOREIGN, OTHER_VIP, [198, 18, 0, 7], &[]), 1),
        TC_ACT_UNSPEC
    );
    let seen = bpf
        .seen
        .get(&key(OTHER_VIP), 0)
        .expect("the answering host was recorded");
    assert_eq!(seen.mac, FOREIGN);
    assert!(seen.last_seen_ns > 0);
    assert!(bpf.drain().is_empty(), "not ours: no conflict");
    assert!(
        bpf.seen.get(&key(VIP), 0).is_err(),
        "our own VIP is not recorded as seen"
    );

    assert_eq!(
        bpf.run(&arp(1, FOREIGN, [198, 18, 0, 7], VIP, &[]), 500),
        TC_ACT_UNSPEC
    );
    let count: u64 = bpf.who_has.get(&key(VIP), 0).expect("counted").iter().sum();
    assert_eq!(count, 500, "every who-has for the VIP is counted");
    assert!(
        bpf.who_has.get(&key([198, 18, 0, 7]), 0).is_err(),
        "non-VIP targets are not counted"
    );
}

#[test]
fn replies_from_another_mac_than_the_owners_are_ignored_and_counted() {
    require_root!();
    let mut bpf = Loaded::new();
    let foreign = |bpf: &Loaded| -> u64 {
        bpf.drops
            .get(&DROP_FOREIGN_REPLY, 0)
            .expect("the counter")
            .iter()
            .sum()
    };
    let reply = |mac| arp(2, mac, OWNED_VIP, [198, 18, 0, 7], &[]);
    assert_eq!(bpf.run(&reply(OWNER), 1), TC_ACT_UNSPEC);
    let first = bpf.seen.get(&key(OWNED_VIP), 0).expect("the owner's reply");
    assert_eq!(first.mac, OWNER);
    // A storm of forged replies, plain and tagged: none is recorded.
    assert_eq!(bpf.run(&reply(FOREIGN), 1000), TC_ACT_UNSPEC);
    assert_eq!(
        bpf.run(&arp(2, FOREIGN, OWNED_VIP, [198, 18, 0, 7], &[42]), 1),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        bpf.seen.get(&key(OWNED_VIP), 0).expect("still there"),
        first,
        "forged replies leave the owner's record alone"
    );
    assert_eq!(foreign(&bpf), 1001, "each forged reply counted");
    assert!(bpf.drain().is_empty(), "not ours: no conflict");
    // The owner's next reply is recorded again.
    assert_eq!(bpf.run(&reply(OWNER), 1), TC_ACT_UNSPEC);
    let next = bpf.seen.get(&key(OWNED_VIP), 0).expect("recorded");
    assert!(next.last_seen_ns >= first.last_seen_ns);
    assert_eq!(next.mac, OWNER);
}
