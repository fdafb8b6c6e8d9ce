//! Ethernet frames for `BPF_PROG_TEST_RUN`, byte by byte as on the wire.
//!
//! Checksums are left zero: the classifiers never verify them, and
//! `BPF_PROG_TEST_RUN` hands the bytes to the program as they are.

use std::net::Ipv4Addr;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Where the IPv4 header starts in an untagged frame.
pub const IPV4_OFFSET: usize = 14;
/// The IANA VXLAN port, the default of a linkmesh segment.
pub const VXLAN_PORT: u16 = 4789;

const SRC_MAC: [u8; 6] = [0x02, 0x18, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0x18, 0, 0, 0, 2];
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// An Ethernet header, unicast, with in-band `tags` ((TPID, VID), outermost
/// first) before `ethertype`.
#[must_use]
pub fn ethernet(tags: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// Appends a 20-byte IPv4 header (DF, no options) for `payload_len` bytes.
fn ipv4(f: &mut Vec<u8>, protocol: u8, src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) {
    let total = u16::try_from(20 + payload_len).expect("an IPv4 datagram is under 64 KiB");
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0]);
    f.extend_from_slice(&[64, protocol, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
}

/// An IPv4/UDP frame from `src` to `dst`:`port` carrying `payload`.
#[must_use]
pub fn udp(
    tags: &[(u16, u16)],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut f = ethernet(tags, ETH_P_IPV4);
    ipv4(&mut f, IPPROTO_UDP, src, dst, len);
    f.extend_from_slice(&49_152u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&u16::try_from(len).expect("a UDP datagram").to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A VXLAN packet (VNI `vni`) from `src` to `dst` carrying `inner`.
#[must_use]
pub fn vxlan(src: Ipv4Addr, dst: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    udp(&[], src, dst, VXLAN_PORT, &payload)
}

/// An IPv4/TCP segment (an ACK, 20-byte header, no data) to `dst`:`port`.
#[must_use]
pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut f = ethernet(&[], ETH_P_IPV4);
    ipv4(&mut f, IPPROTO_TCP, src, dst, 20);
    f.extend_from_slice(&49_152u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

/// A broadcast ARP who-has for `target` from `sender`.
#[must_use]
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet(&[], ETH_P_ARP);
    f[..6].copy_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// `TC_ACT_UNSPEC` (-1) as `BPF_PROG_TEST_RUN` reports it: on to the next
/// program (`TCX_NEXT`), then the stack.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
/// `TC_ACT_SHOT`: dropped (consumed).
pub const TC_ACT_SHOT: u32 = 2;

/// The embedded eBPF object with one classifier loaded (not attached), for
/// `BPF_PROG_TEST_RUN`: what the eBPF tests and the benchmark share.
pub struct Loaded {
    pub ebpf: aya::Ebpf,
    program: &'static str,
}

impl Loaded {
    /// Loads the object and the classifier `program`.
    #[must_use]
    pub fn new(program: &'static str) -> Self {
        let mut ebpf = linkmesh::ebpf::load().expect("loading the object");
        linkmesh::ebpf::load_classifier(&mut ebpf, program)
            .unwrap_or_else(|e| panic!("loading {program}: {e}"));
        Self { ebpf, program }
    }

    /// Runs the classifier `repeat` times on `frame`; its return code.
    pub fn run(&mut self, frame: &[u8], repeat: u32) -> u32 {
        test_run(&mut self.ebpf, self.program, frame, repeat)
    }

    /// Takes map `name` out of the object, typed.
    pub fn take<M>(&mut self, name: &'static str) -> M
    where
        M: TryFrom<aya::maps::Map>,
        M::Error: std::fmt::Debug,
    {
        let map = self
            .ebpf
            .take_map(name)
            .unwrap_or_else(|| panic!("the object has no map {name}"));
        M::try_from(map).unwrap_or_else(|e| panic!("map {name}: {e:?}"))
    }
}

/// Every record waiting in `ring`, parsed with `parse` (which must take
/// each whole).
pub fn drain<T>(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    parse: fn(&[u8]) -> Option<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(parse(&item).expect("a whole record"));
    }
    out
}

/// Runs the loaded classifier `program` of `ebpf` `repeat` times on `frame`
/// through `BPF_PROG_TEST_RUN`; returns its return code.
pub fn test_run(ebpf: &mut aya::Ebpf, program: &'static str, frame: &[u8], repeat: u32) -> u32 {
    use aya::programs::{TestRun, TestRunOptions};
    linkmesh::ebpf::load_classifier(ebpf, program)
        .unwrap_or_else(|e| panic!("loading {program}: {e}"))
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
}
