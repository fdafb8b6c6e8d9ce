//! linkmesh TC programs.
//!
//! `arp_watch` (TC ingress) parses Ethernet + ARP, untagged or 802.1Q/802.1ad
//! tagged, and emits one [`ArpEvent`] per ARP packet into a ring buffer. It
//! never changes the packet and always returns `TC_ACT_UNSPEC` (-1), so the
//! next program (or the stack) sees the frame unchanged.
//!
//! -1 is the one "carry on" code both attach paths agree on: `TCX_NEXT` for
//! TCX links (where any other code, `TC_ACT_PIPE` included, ends the chain
//! of programs on the interface) and "continue with the next filter" for
//! legacy cls_bpf in direct-action mode.
//!
//! `vip_watch` (TC ingress on VIP interfaces) sees who answers for each
//! floating IP; `peer_watch` (TC ingress on the underlay) records when each
//! peer was last heard, from its heartbeats and its VXLAN traffic.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::{Array, HashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use linkmesh_common::{
    ArpEvent, CONFLICT_INTERVAL_NS, ConflictEvent, DROP_BAD_HEARTBEAT, DROP_CONFLICT_RING_FULL,
    DROP_FOREIGN_REPLY, DROP_RING_FULL, DROP_SLOTS, HEARTBEAT_MAGIC, HEARTBEAT_TOKEN_OFFSET,
    MAX_PEERS, MAX_PORT_KEYS, MAX_VIPS, PEER_PORT_SLOTS, PORT_DIR_IN, PORT_DIR_OUT, PORT_HEARTBEAT,
    PeerStats, PeerToken, PortKey, VipInfo, VipSeen,
};

/// 256 KiB: about 6,500 events before user space must read.
#[map(name = "ARP_EVENTS")]
static ARP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);

#[map(name = "VIPS")]
static VIPS: HashMap<u32, VipInfo> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map(name = "VIP_SEEN")]
static VIP_SEEN: HashMap<u32, VipSeen> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map(name = "VIP_WHO_HAS")]
static VIP_WHO_HAS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(MAX_VIPS, 0);

#[map(name = "CONFLICT_LAST")]
static CONFLICT_LAST: HashMap<u32, u64> = HashMap::with_max_entries(MAX_VIPS, 0);

/// 64 KiB: conflicts are rare and rate-limited per VIP.
#[map(name = "CONFLICTS")]
static CONFLICTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[map(name = "PEER_PORTS")]
static PEER_PORTS: Array<u8> = Array::with_max_entries(PEER_PORT_SLOTS, 0);

#[map(name = "PEER_STATS")]
static PEER_STATS: LruPerCpuHashMap<u32, PeerStats> =
    LruPerCpuHashMap::with_max_entries(MAX_PEERS, 0);

#[map(name = "PEER_TOKENS")]
static PEER_TOKENS: HashMap<u32, PeerToken> = HashMap::with_max_entries(MAX_PEERS, 0);

#[map(name = "PORT_MAPS")]
static PORT_MAPS: HashMap<PortKey, [u8; 2]> = HashMap::with_max_entries(MAX_PORT_KEYS, 0);

/// Adds one to this CPU's slot `slot` of `DROPS`.
#[inline(always)]
fn count_drop(slot: u32) {
    if let Some(count) = DROPS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot; no other program touches it on this CPU now.
        unsafe { *count += 1 };
    }
}

const ETH_TYPE_OFFSET: usize = 12;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV4: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;
const IP_FRAG_OFFSET_MASK: u16 = 0x1fff;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// In-band tags we look through (802.1ad outer + 802.1Q inner). The kernel
/// moves the outermost tag into skb metadata before TC ingress, so on a live
/// interface at most one tag is still in the data.
const MAX_VLAN_TAGS: usize = 2;
const VLAN_VID_MASK: u16 = 0x0fff;

/// ARP for IPv4 over Ethernet (RFC 826), as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
struct ArpIpv4 {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    oper: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

#[classifier]
pub fn arp_watch(ctx: TcContext) -> i32 {
    // Whatever happened (short frame, not ARP, ring full), the packet goes on.
    let _ = try_arp_watch(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

/// The EtherType after any in-band VLAN tags, the offset of the payload
/// and the VLAN id (0 when untagged).
#[inline(always)]
fn ether_payload(ctx: &TcContext) -> Result<(u16, usize, u16), i64> {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let skb = unsafe { &*ctx.skb.skb };
    let mut vlan_id = if skb.vlan_present != 0 {
        (skb.vlan_tci as u16) & VLAN_VID_MASK
    } else {
        0
    };

    let mut offset = ETH_TYPE_OFFSET;
    let mut proto = be16(ctx.load::<[u8; 2]>(offset)?);
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        if vlan_id == 0 {
            vlan_id = be16(ctx.load::<[u8; 2]>(offset + 2)?) & VLAN_VID_MASK;
        }
        offset += 4;
        proto = be16(ctx.load::<[u8; 2]>(offset)?);
    }
    Ok((proto, offset + 2, vlan_id))
}

/// The ARP (Ethernet/IPv4) header of the frame, if it is one, and its
/// VLAN id (0 when untagged).
#[inline(always)]
fn parse_arp(ctx: &TcContext) -> Result<Option<(ArpIpv4, u16)>, i64> {
    // Most frames are not ARP: tell from the EtherType read in place,
    // without a helper call (the programs run on every packet).
    if let Some(proto) = read::<[u8; 2]>(ctx.data(), ctx.data_end(), ETH_TYPE_OFFSET) {
        let proto = be16(proto);
        if proto != ETH_P_ARP && proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            return Ok(None);
        }
    }
    let (proto, offset, vlan_id) = ether_payload(ctx)?;
    if proto != ETH_P_ARP {
        return Ok(None);
    }

    let arp: ArpIpv4 = ctx.load(offset)?;
    if be16(arp.htype) != 1 || be16(arp.ptype) != 0x0800 || arp.hlen != 6 || arp.plen != 4 {
        return Ok(None);
    }
    Ok(Some((arp, vlan_id)))
}

#[inline(always)]
fn try_arp_watch(ctx: &TcContext) -> Result<(), i64> {
    let Some((arp, vlan_id)) = parse_arp(ctx)? else {
        return Ok(());
    };
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let skb = unsafe { &*ctx.skb.skb };

    match ARP_EVENTS.reserve::<ArpEvent>(0) {
        Some(mut entry) => {
            entry.write(ArpEvent {
                // SAFETY: helper without preconditions.
                timestamp_ns: unsafe { bpf_ktime_get_ns() },
                ifindex: skb.ifindex,
                operation: be16(arp.oper),
                vlan_id,
                sender_mac: arp.sha,
                target_mac: arp.tha,
                sender_ip: arp.spa,
                target_ip: arp.tpa,
                _pad: [0; 4],
            });
            entry.submit(0);
        }
        None => count_drop(DROP_RING_FULL),
    }
    Ok(())
}

/// TC ingress on VIP interfaces: sees who answers for each VIP.
/// - our VIP claimed by a foreign MAC: a conflict event (rate-limited per VIP);
/// - a reply for a VIP we do not own: the answering MAC and when, if it is
///   the MAC the owner published (or nobody published one);
/// - a request for a VIP: counted per CPU.
#[classifier]
pub fn vip_watch(ctx: TcContext) -> i32 {
    let _ = try_vip_watch(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn try_vip_watch(ctx: &TcContext) -> Result<(), i64> {
    let Some((arp, _vlan)) = parse_arp(ctx)? else {
        return Ok(());
    };
    let op = be16(arp.oper);
    let sender = u32::from_ne_bytes(arp.spa);
    // SAFETY: a map lookup; the value is copied out at once.
    if let Some(info) = unsafe { VIPS.get(&sender) }.copied() {
        if info.owned == 1 {
            if arp.sha != info.mac {
                report_conflict(ctx, sender, &arp, &info, op);
            }
        } else if op == 2 && info.owner_mac != [0; 6] && arp.sha != info.owner_mac {
            // Not the MAC the owner published: a forged or stray answer
            // must not steer the standbys' probes.
            count_drop(DROP_FOREIGN_REPLY);
        } else if op == 2 {
            let seen = VipSeen {
                // SAFETY: helper without preconditions.
                last_seen_ns: unsafe { bpf_ktime_get_ns() },
                mac: arp.sha,
                _pad: [0; 2],
            };
            let _ = VIP_SEEN.insert(&sender, &seen, 0);
        }
    }
    if op == 1 {
        let target = u32::from_ne_bytes(arp.tpa);
        // SAFETY: a map lookup.
        if unsafe { VIPS.get(&target) }.is_some() {
            match VIP_WHO_HAS.get_ptr_mut(&target) {
                // SAFETY: per-CPU slot, only this CPU writes it now.
                Some(count) => unsafe { *count += 1 },
                None => {
                    let _ = VIP_WHO_HAS.insert(&target, &1, 0);
                }
            }
        }
    }
    Ok(())
}

#[inline(always)]
fn report_conflict(ctx: &TcContext, ip: u32, arp: &ArpIpv4, info: &VipInfo, op: u16) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map lookup; the value is copied out at once.
    if let Some(last) = unsafe { CONFLICT_LAST.get(&ip) }.copied()
        && now.wrapping_sub(last) < CONFLICT_INTERVAL_NS
    {
        return;
    }
    let _ = CONFLICT_LAST.insert(&ip, &now, 0);
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if let Some(mut entry) = CONFLICTS.reserve::<ConflictEvent>(0) {
        entry.write(ConflictEvent {
            timestamp_ns: now,
            ifindex,
            ip: arp.spa,
            foreign_mac: arp.sha,
            our_mac: info.mac,
            operation: op,
            _pad: [0; 2],
        });
        entry.submit(0);
    } else {
        count_drop(DROP_CONFLICT_RING_FULL);
    }
}

/// TC ingress on the underlay: per known peer, when we last heard its
/// heartbeat and its VXLAN traffic, and how many packets of each. Heartbeats
/// from known peers are consumed here (`TC_ACT_SHOT`): they exist only for
/// this program, so no socket wakes up for them. A known peer's heartbeat
/// counts only if it carries one of the peer's tokens (derived from the
/// shared secret, so an off-path spoofer cannot make one); others are
/// dropped and counted. Everything else passes.
///
/// It runs on every underlay packet, so it reads headers by direct packet
/// access (no helper call per field), looks the port up in an array and
/// makes a single hash lookup, for a known peer's packets only.
#[classifier]
pub fn peer_watch(ctx: TcContext) -> i32 {
    match try_peer_watch(&ctx) {
        Some(true) => TC_ACT_SHOT,
        _ => TC_ACT_UNSPEC,
    }
}

/// The deepest byte `peer_watch` reads: two VLAN tags, an IPv4 header with
/// options, the UDP header, and the heartbeat up to the end of its token.
const PEER_HEADROOM: usize = 14 + 2 * 4 + 60 + 8 + HEARTBEAT_TOKEN_OFFSET + 8;

/// A `T` read from the packet at `offset`, if the linear data holds it.
#[inline(always)]
fn read<T: Copy>(start: usize, end: usize, offset: usize) -> Option<T> {
    let at = start + offset;
    if at + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: [at, at + size_of::<T>()) lies inside the packet's linear
    // data (checked above, which is what the verifier checks too);
    // read_unaligned makes no alignment assumption.
    Some(unsafe { core::ptr::read_unaligned(at as *const T) })
}

/// The packet's linear data (start, end), made to hold its first
/// `headroom` bytes (all of a shorter packet) when the headers lie outside
/// it (rare): pulled in once.
#[inline(always)]
fn linear(ctx: &TcContext, headroom: usize) -> Option<(usize, usize)> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let len = ctx.len() as usize;
    if end - start >= headroom || len <= end - start {
        return Some((start, end));
    }
    let want = if len < headroom { len } else { headroom };
    ctx.pull_data(want as u32).ok()?;
    Some((ctx.data(), ctx.data_end()))
}

/// Whether the packet was a heartbeat from a known peer.
#[inline(always)]
fn try_peer_watch(ctx: &TcContext) -> Option<bool> {
    let (start, end) = linear(ctx, PEER_HEADROOM)?;

    let mut offset = ETH_TYPE_OFFSET;
    let mut proto = be16(read(start, end, offset)?);
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        offset += 4;
        proto = be16(read(start, end, offset)?);
    }
    if proto != ETH_P_IPV4 {
        return Some(false);
    }
    let ip: Ipv4Header = read(start, end, offset + 2)?;
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < 20 || ip.protocol != IPPROTO_UDP {
        return Some(false);
    }
    // Only first fragments (or whole datagrams) carry the UDP header.
    if be16(ip.frag_off) & IP_FRAG_OFFSET_MASK != 0 {
        return Some(false);
    }
    let udp = offset + 2 + ihl;
    let port = be16(read(start, end, udp + 2)?);
    let kind = *PEER_PORTS.get(u32::from(port))?;
    if kind == 0 {
        return Some(false);
    }
    let heartbeat = kind == PORT_HEARTBEAT;
    if heartbeat && read::<[u8; 4]>(start, end, udp + 8)? != HEARTBEAT_MAGIC {
        return Some(false);
    }
    // Known peers have an entry (the agent keeps one per peer).
    let peer = u32::from_ne_bytes(ip.saddr);
    let stats = PEER_STATS.get_ptr_mut(&peer)?;
    if heartbeat {
        // SAFETY: a map lookup; the value is copied out at once.
        if let Some(want) = unsafe { PEER_TOKENS.get(&peer) }.copied() {
            let token = read::<u64>(start, end, udp + 8 + HEARTBEAT_TOKEN_OFFSET).unwrap_or(0);
            let valid = token != 0 && (token == want.tokens[0] || token == want.tokens[1]);
            if !valid {
                count_drop(DROP_BAD_HEARTBEAT);
                return Some(true);
            }
        }
    }
    // SAFETY: helper without preconditions.
    // The coarse clock (CLOCK_MONOTONIC_COARSE, a tick behind at most) is a
    // plain read of the time the kernel kept at the last tick: a third of
    // the cost of the exact one, and ages are judged in tens of ms.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: this CPU's slot of a live map value; only this CPU writes it
    // while we run.
    unsafe {
        if heartbeat {
            (*stats).last_heartbeat_ns = now;
            (*stats).heartbeats += 1;
        } else {
            (*stats).last_vxlan_ns = now;
            (*stats).vxlan_packets += 1;
        }
    }
    Some(heartbeat)
}

/// TC ingress on VIP interfaces: a packet to a held VIP's mapped port
/// (TCP or UDP, IPv4 or IPv6 without extension headers) gets the local
/// service's port instead, with its checksum fixed. Everything passes.
#[classifier]
pub fn port_map_in(ctx: TcContext) -> i32 {
    let _ = map_port(&ctx, PORT_DIR_IN);
    TC_ACT_UNSPEC
}

/// TC egress on VIP interfaces: the service's replies from a held VIP get
/// the VIP's port back.
#[classifier]
pub fn port_map_out(ctx: TcContext) -> i32 {
    let _ = map_port(&ctx, PORT_DIR_OUT);
    TC_ACT_UNSPEC
}

const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const ETH_HEADER: usize = 14;
const IPV6_HEADER: usize = 40;
/// The deepest byte `map_port` reads: an IPv4 header with options (or an
/// IPv6 header) and the UDP/TCP header up to its checksum.
const PORT_HEADROOM: usize = ETH_HEADER + 60 + 18;
/// `bpf_l4_csum_replace` flags: the field is 2 bytes; a UDP checksum of 0
/// (none, over IPv4) stays 0, and a result of 0 is written as 0xffff.
const CSUM_FIELD_2: u64 = 2;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// Rewrites the packet's port if `PORT_MAPS` has it; `Some(())` if it did.
#[inline(always)]
fn map_port(ctx: &TcContext, direction: u8) -> Option<()> {
    let proto = be16(read(ctx.data(), ctx.data_end(), ETH_TYPE_OFFSET)?);
    if proto != ETH_P_IPV4 && proto != ETH_P_IPV6 {
        return None;
    }
    let (start, end) = linear(ctx, PORT_HEADROOM)?;
    let mut key = PortKey {
        direction,
        ..PortKey::default()
    };
    let l4 = if proto == ETH_P_IPV4 {
        let ip: Ipv4Header = read(start, end, ETH_HEADER)?;
        let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
        // Later fragments carry no ports; a first one does, and the
        // checksum's fix holds for the whole datagram.
        if ihl < 20 || be16(ip.frag_off) & IP_FRAG_OFFSET_MASK != 0 {
            return None;
        }
        key.proto = ip.protocol;
        let addr = if direction == PORT_DIR_IN {
            ip.daddr
        } else {
            ip.saddr
        };
        key.addr[..4].copy_from_slice(&addr);
        ETH_HEADER + ihl
    } else {
        key.proto = read::<u8>(start, end, ETH_HEADER + 6)?;
        let at = if direction == PORT_DIR_IN { 24 } else { 8 };
        key.addr = read(start, end, ETH_HEADER + at)?;
        ETH_HEADER + IPV6_HEADER
    };
    let (csum, flags) = match key.proto {
        IPPROTO_TCP => (16, CSUM_FIELD_2),
        IPPROTO_UDP => (6, CSUM_FIELD_2 | BPF_F_MARK_MANGLED_0),
        _ => return None,
    };
    let at = l4 + if direction == PORT_DIR_IN { 2 } else { 0 };
    key.port = read(start, end, at)?;
    // SAFETY: a map lookup; the value is copied out at once.
    let new = unsafe { PORT_MAPS.get(&key) }.copied()?;
    let (from, to) = (u16::from_ne_bytes(key.port), u16::from_ne_bytes(new));
    ctx.l4_csum_replace(l4 + csum, u64::from(from), u64::from(to), flags)
        .ok()?;
    ctx.store(at, &new, 0).ok()?;
    Some(())
}

/// The fixed part of an IPv4 header.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Header {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
