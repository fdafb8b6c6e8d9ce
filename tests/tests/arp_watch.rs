//! The ARP classifier: a real ARP exchange between lab hosts seen through
//! the agent's watcher, and crafted frames through `BPF_PROG_TEST_RUN`.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use linkmesh::addr::MacAddr;
use linkmesh::ebpf::{ArpOp, ArpPacket, ArpWatcher};
use linkmesh_common::{ARP_EVENTS_MAP, ARP_PROGRAM, ArpEvent, DROP_RING_FULL, DROPS_MAP};
use linkmesh_tests::frame::{self, TC_ACT_UNSPEC};
use linkmesh_tests::lab::{Host, Lab};
use linkmesh_tests::{kernel, netns, require_root};

/// Starts a watcher on `host`'s eth0; returns once it is attached, and a
/// receiver for the packets it sees in the next `window`.
fn watch(host: &Host, window: Duration) -> mpsc::Receiver<ArpPacket> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    let ifname = host.ifname.clone();
    let handle = netns::spawn_in(&host.netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a runtime");
        rt.block_on(async move {
            let mut watcher = ArpWatcher::new().expect("loading the ARP watcher");
            watcher.attach(&ifname).expect("attaching to eth0");
            ready_tx.send(()).expect("signalling readiness");
            let deadline = tokio::time::Instant::now() + window;
            while let Ok(packet) = tokio::time::timeout_at(deadline, watcher.next()).await {
                if tx.send(packet.expect("reading an event")).is_err() {
                    break;
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("the watcher thread ended before attaching"),
        });
    rx
}

fn find(rx: &mpsc::Receiver<ArpPacket>, what: impl Fn(&ArpPacket) -> bool) -> Vec<ArpPacket> {
    let mut seen = Vec::new();
    while let Ok(p) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.push(p);
        if what(&p) {
            return seen;
        }
    }
    panic!("no matching ARP packet; saw {seen:?}");
}

#[test]
fn watcher_sees_a_real_arp_exchange_between_lab_hosts() {
    require_root!();
    let lab = Lab::new(2);
    let (h1, h2) = (lab.host(1), lab.host(2));
    let h1_eth0 = kernel::link(&h1.netns, "eth0").expect("h1 eth0");
    let h2_eth0 = kernel::link(&h2.netns, "eth0").expect("h2 eth0");

    let on_h1 = watch(h1, Duration::from_secs(8));
    let on_h2 = watch(h2, Duration::from_secs(8));

    // h2's ARP cache is empty: a datagram to h1 makes it ask who-has h1.
    let target = h1.addr;
    h2.run(move || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| s.send_to(b"ping", (target, 9)))
            .expect("sending from h2 to h1");
    });

    let request = *find(&on_h1, |p| {
        p.operation == ArpOp::Request && p.sender_ip == h2.addr
    })
    .last()
    .expect("a request");
    assert_eq!(request.sender_mac, MacAddr(h2.mac));
    assert_eq!(request.target_ip, h1.addr);
    assert_eq!(request.ifindex, h1_eth0.index, "ifindex is h1's eth0");
    assert_eq!(request.vlan, None);
    assert!(!request.is_gratuitous());

    let reply = *find(&on_h2, |p| {
        p.operation == ArpOp::Reply && p.sender_ip == h1.addr
    })
    .last()
    .expect("a reply");
    assert_eq!(reply.sender_mac, MacAddr(h1.mac));
    assert_eq!(reply.target_ip, h2.addr);
    assert_eq!(reply.target_mac, MacAddr(h2.mac));
    assert_eq!(reply.ifindex, h2_eth0.index, "ifindex is h2's eth0");
}

#[test]
fn attaching_to_a_missing_interface_is_a_clear_error() {
    require_root!();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let err = rt.block_on(async {
        let mut watcher = ArpWatcher::new().expect("loading the ARP watcher");
        watcher.attach("lmt-nope0").expect_err("no such interface")
    });
    assert_eq!(err.to_string(), "interface lmt-nope0 does not exist");
}

// ---- BPF_PROG_TEST_RUN ---------------------------------------------------

const H1_MAC: [u8; 6] = [0x02, 0x18, 0, 0, 0, 1];
const H2_MAC: [u8; 6] = [0x02, 0x18, 0, 0, 0, 2];
const H1_IP: [u8; 4] = [198, 18, 0, 1];
const H2_IP: [u8; 4] = [198, 18, 0, 2];

/// An Ethernet frame with `tags` (TPID, VID) before the ARP ethertype.
fn arp_frame(op: u16, tags: &[(u16, u16)]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&H1_MAC);
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&H1_MAC);
    f.extend_from_slice(&H1_IP);
    f.extend_from_slice(&if op == 2 { H2_MAC } else { [0; 6] });
    f.extend_from_slice(&H2_IP);
    f
}

/// `arp_watch` loaded, with its event ring and drop counters.
struct Loaded {
    bpf: frame::Loaded,
    events: RingBuf<MapData>,
    drops: PerCpuArray<MapData, u64>,
}

impl Loaded {
    fn new() -> Self {
        let mut bpf = frame::Loaded::new(ARP_PROGRAM);
        let events = bpf.take(ARP_EVENTS_MAP);
        let drops = bpf.take(DROPS_MAP);
        Self { bpf, events, drops }
    }

    /// Runs the classifier `repeat` times on `frame`; returns its return code.
    fn run(&mut self, frame: &[u8], repeat: u32) -> u32 {
        self.bpf.run(frame, repeat)
    }

    fn drain(&mut self) -> Vec<ArpEvent> {
        frame::drain(&mut self.events, ArpEvent::from_bytes)
    }

    fn dropped(&self) -> u64 {
        self.drops
            .get(&DROP_RING_FULL, 0)
            .expect("reading drops")
            .iter()
            .sum()
    }
}

#[test]
fn classifier_reports_untagged_and_tagged_arp() {
    require_root!();
    let mut bpf = Loaded::new();

    assert_eq!(bpf.run(&arp_frame(1, &[]), 1), TC_ACT_UNSPEC);
    let events = bpf.drain();
    assert_eq!(events.len(), 1, "one event per ARP packet");
    let p = ArpPacket::from(events[0]);
    assert_eq!(p.operation, ArpOp::Request);
    assert_eq!(p.sender_mac, MacAddr(H1_MAC));
    assert_eq!(p.sender_ip, Ipv4Addr::from(H1_IP));
    assert_eq!(p.target_mac, MacAddr::ZERO);
    assert_eq!(p.target_ip, Ipv4Addr::from(H2_IP));
    assert_eq!(p.vlan, None);
    assert!(p.seen_at > Duration::ZERO, "timestamped");

    assert_eq!(bpf.run(&arp_frame(2, &[(0x8100, 42)]), 1), TC_ACT_UNSPEC);
    let events = bpf.drain();
    assert_eq!(events.len(), 1);
    let p = ArpPacket::from(events[0]);
    assert_eq!(p.operation, ArpOp::Reply);
    assert_eq!(p.vlan, Some(42));
    assert_eq!(p.target_mac, MacAddr(H2_MAC));

    // 802.1ad outer tag + 802.1Q inner tag: the outer VLAN id is reported.
    assert_eq!(
        bpf.run(&arp_frame(1, &[(0x88a8, 7), (0x8100, 42)]), 1),
        TC_ACT_UNSPEC
    );
    let events = bpf.drain();
    assert_eq!(events.len(), 1);
    assert_eq!(ArpPacket::from(events[0]).vlan, Some(7));
    assert_eq!(bpf.dropped(), 0);
}

#[test]
fn classifier_passes_malformed_and_foreign_frames_without_events() {
    require_root!();
    let mut bpf = Loaded::new();
    let whole = arp_frame(1, &[]);

    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // Truncated anywhere from the bare Ethernet header to one byte short.
    for len in [14, 15, 20, 27, 35, 41] {
        cases.push((
            format!("ARP truncated to {len} bytes"),
            whole[..len].to_vec(),
        ));
    }
    let tagged = arp_frame(1, &[(0x8100, 42)]);
    cases.push((
        "tagged ARP truncated in the tag".into(),
        tagged[..16].to_vec(),
    ));
    cases.push((
        "tagged ARP truncated in the body".into(),
        tagged[..30].to_vec(),
    ));
    let mut ipv4 = whole.clone();
    ipv4[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    cases.push(("an IPv4 frame".into(), ipv4));
    let mut bad_hlen = whole.clone();
    bad_hlen[18] = 8;
    cases.push(("ARP with a hardware length of 8".into(), bad_hlen));
    let mut wrong_protocol = whole.clone();
    wrong_protocol[16..18].copy_from_slice(&0x86ddu16.to_be_bytes());
    cases.push(("ARP for a non-IPv4 protocol".into(), wrong_protocol));
    let mut wrong_hardware = whole.clone();
    wrong_hardware[14..16].copy_from_slice(&6u16.to_be_bytes());
    cases.push((
        "ARP for a non-Ethernet hardware type".into(),
        wrong_hardware,
    ));
    let deep = arp_frame(1, &[(0x8100, 1), (0x8100, 2), (0x8100, 3)]);
    cases.push((
        "three VLAN tags (more than the program looks through)".into(),
        deep,
    ));

    for (what, frame) in &cases {
        assert_eq!(
            bpf.run(frame, 1),
            TC_ACT_UNSPEC,
            "{what}: passes with TC_ACT_UNSPEC"
        );
        let events = bpf.drain();
        assert!(events.is_empty(), "{what}: no event, got {events:?}");
    }
    // A whole frame after all that still produces its event.
    assert_eq!(bpf.run(&whole, 1), TC_ACT_UNSPEC);
    assert_eq!(bpf.drain().len(), 1);
}

#[test]
fn full_ring_counts_dropped_events() {
    require_root!();
    let mut bpf = Loaded::new();
    let runs = 10_000;
    assert_eq!(bpf.run(&arp_frame(1, &[]), runs), TC_ACT_UNSPEC);
    let delivered = u64::try_from(bpf.drain().len()).expect("fits");
    let dropped = bpf.dropped();
    assert!(delivered > 0, "some events fit the ring");
    assert!(dropped > 0, "a 256 KiB ring cannot hold {runs} events");
    assert_eq!(
        delivered + dropped,
        u64::from(runs),
        "every run is delivered or counted"
    );
}
