//! Layouts that cross the kernel/user boundary.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding and is defined
//! exactly once: the eBPF programs write it, the agent reads it.
#![no_std]

/// Name of the ring buffer that carries [`ArpEvent`]s.
pub const ARP_EVENTS_MAP: &str = "ARP_EVENTS";
/// Name of the per-CPU array whose slot [`DROP_RING_FULL`] counts events lost
/// because the ring buffer was full.
pub const DROPS_MAP: &str = "DROPS";
/// Name of the TC classifier that watches ARP.
pub const ARP_PROGRAM: &str = "arp_watch";

/// Slot of [`DROPS_MAP`]: ARP events dropped because their ring was full.
pub const DROP_RING_FULL: u32 = 0;
/// Slot of [`DROPS_MAP`]: conflict events dropped because their ring was full.
pub const DROP_CONFLICT_RING_FULL: u32 = 1;
/// Slot of [`DROPS_MAP`]: ARP replies for a VIP we do not hold from a MAC
/// other than the one its owner published, not recorded.
pub const DROP_FOREIGN_REPLY: u32 = 2;
/// Slot of [`DROPS_MAP`]: heartbeats from a known peer without its token,
/// dropped.
pub const DROP_BAD_HEARTBEAT: u32 = 3;
/// Number of slots in [`DROPS_MAP`].
pub const DROP_SLOTS: u32 = 4;

/// ARP operation codes (RFC 826).
pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;

/// One ARP packet seen on an interface.
///
/// Addresses are kept in network byte order exactly as they were on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpEvent {
    /// `bpf_ktime_get_ns()` when the packet was seen (monotonic, boot-based).
    pub timestamp_ns: u64,
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// ARP operation (host byte order): 1 request, 2 reply, others as seen.
    pub operation: u16,
    /// 802.1Q VLAN id (12 bits) or 0 when the frame was untagged.
    pub vlan_id: u16,
    pub sender_mac: [u8; 6],
    pub target_mac: [u8; 6],
    pub sender_ip: [u8; 4],
    pub target_ip: [u8; 4],
    /// Explicit padding to a multiple of 8 bytes, always zero.
    pub _pad: [u8; 4],
}

/// The size the eBPF side reserves in the ring buffer per event.
pub const ARP_EVENT_SIZE: usize = core::mem::size_of::<ArpEvent>();

// The layout is part of the kernel/user contract: fail the build if it moves.
const _: () = assert!(ARP_EVENT_SIZE == 40);

#[cfg(feature = "user")]
// SAFETY: ArpEvent is repr(C), Copy, built from integers and byte arrays, and
// has no implicit padding (checked by the size assertion above), so every bit
// pattern is a valid value.
unsafe impl aya::Pod for ArpEvent {}

impl ArpEvent {
    /// Reads an event from the bytes of a ring-buffer record.
    ///
    /// Returns `None` when the record is shorter than an event.
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < ARP_EVENT_SIZE {
            return None;
        }
        // SAFETY: length checked above; read_unaligned makes no alignment
        // assumption and every bit pattern is a valid ArpEvent.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<ArpEvent>()) })
    }
}

// ---- VIP watching (`vip_watch`) -------------------------------------------

/// The TC classifier that watches ARP for floating IPs.
pub const VIP_PROGRAM: &str = "vip_watch";
/// Hash map: IPv4 address (its 4 wire bytes read as a native `u32`) ->
/// [`VipInfo`]. Kept by the agent.
pub const VIPS_MAP: &str = "VIPS";
/// Hash map: VIP -> [`VipSeen`], the last host that answered for a VIP we
/// do not own.
pub const VIP_SEEN_MAP: &str = "VIP_SEEN";
/// Per-CPU hash map: VIP -> who-has requests seen.
pub const VIP_WHO_HAS_MAP: &str = "VIP_WHO_HAS";
/// Ring buffer of [`ConflictEvent`]s.
pub const CONFLICTS_MAP: &str = "CONFLICTS";
/// Hash map: VIP -> time of its last conflict event (the rate limit).
pub const CONFLICT_LAST_MAP: &str = "CONFLICT_LAST";
/// At most one conflict event per VIP in this many nanoseconds.
pub const CONFLICT_INTERVAL_NS: u64 = 50_000_000;
/// Entries the VIP maps hold.
pub const MAX_VIPS: u32 = 1024;

/// What the program knows about one VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipInfo {
    /// Our MAC on the VIP's interface.
    pub mac: [u8; 6],
    /// 1 while this host holds the VIP.
    pub owned: u8,
    pub _pad: u8,
    /// While another host holds it: the MAC that host published, signed,
    /// in its owner key. Only replies from it are recorded in
    /// [`VIP_SEEN_MAP`]. All zero: any reply is (nobody owns the VIP, or
    /// the owner published no MAC).
    pub owner_mac: [u8; 6],
    pub _pad2: [u8; 2],
}

/// The last host seen answering for a VIP we do not own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipSeen {
    /// `bpf_ktime_get_ns()` of the last reply.
    pub last_seen_ns: u64,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Our VIP claimed by a foreign MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConflictEvent {
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub ip: [u8; 4],
    pub foreign_mac: [u8; 6],
    pub our_mac: [u8; 6],
    pub operation: u16,
    pub _pad: [u8; 2],
}

pub const CONFLICT_EVENT_SIZE: usize = core::mem::size_of::<ConflictEvent>();
const _: () = assert!(core::mem::size_of::<VipInfo>() == 16);
const _: () = assert!(core::mem::size_of::<VipSeen>() == 16);
const _: () = assert!(CONFLICT_EVENT_SIZE == 32);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays only, no implicit padding
// (sizes asserted above): every bit pattern is valid.
unsafe impl aya::Pod for VipInfo {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for VipSeen {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for ConflictEvent {}

impl ConflictEvent {
    /// Reads an event from a ring-buffer record (`None` if too short).
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < CONFLICT_EVENT_SIZE {
            return None;
        }
        // SAFETY: length checked; read_unaligned; every bit pattern is valid.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<ConflictEvent>()) })
    }
}

// ---- Peer health (`peer_watch`) --------------------------------------------

/// The TC classifier that watches heartbeats and VXLAN traffic from peers
/// on the underlay.
pub const PEER_PROGRAM: &str = "peer_watch";
/// Array of 65536 bytes indexed by UDP destination port (host byte order):
/// [`PORT_HEARTBEAT`], [`PORT_VXLAN`] or 0. Kept by the agent. An array,
/// not a hash: the lookup is a bounds check and an add.
pub const PEER_PORTS_MAP: &str = "PEER_PORTS";
/// Per-CPU LRU hash map: peer underlay IPv4 address (wire bytes read as a
/// native `u32`) -> [`PeerStats`]. This is also the peer set: the agent
/// inserts an entry for every registered peer and removes gone ones; the
/// program only updates entries that exist, so traffic from anyone else is
/// ignored. User space sums the counters and takes the latest times over
/// CPUs.
pub const PEER_STATS_MAP: &str = "PEER_STATS";
/// Entries the peer maps hold: every registered host of a fleet of 10,000
/// and more. The statistics are per CPU and preallocated: 512 KiB per CPU.
/// Past this many hosts the LRU map evicts the entries updated least
/// lately, the quiet peers, whose VXLAN packets then go uncounted (the
/// heartbeated ones are updated 50 times a second and stay).
pub const MAX_PEERS: u32 = 16_384;
/// Entries of [`PEER_PORTS_MAP`]: one per UDP port.
pub const PEER_PORT_SLOTS: u32 = 65536;
/// [`PEER_PORTS_MAP`] value: the heartbeat port.
pub const PORT_HEARTBEAT: u8 = 1;
/// [`PEER_PORTS_MAP`] value: a VXLAN port.
pub const PORT_VXLAN: u8 = 2;
/// The first bytes of every heartbeat's UDP payload.
pub const HEARTBEAT_MAGIC: [u8; 4] = *b"LMHB";
/// Hash map: peer underlay IPv4 address (wire bytes read as a native
/// `u32`) -> [`PeerToken`]. A known peer with an entry here is heard only
/// through heartbeats that carry one of its tokens; the others are dropped
/// and counted in [`DROP_BAD_HEARTBEAT`]. Kept by the agent.
pub const PEER_TOKENS_MAP: &str = "PEER_TOKENS";
/// Where a heartbeat's token starts in its UDP payload: after the magic,
/// a version byte and three zero bytes.
pub const HEARTBEAT_TOKEN_OFFSET: usize = 8;

/// The tokens a peer's heartbeats may carry: one per secret this host
/// verifies with (a secret rotation has two). Zero slots are unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerToken {
    /// The tokens' 8 wire bytes, each read as a native `u64`.
    pub tokens: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<PeerToken>() == 16);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no padding (size asserted above).
unsafe impl aya::Pod for PeerToken {}

/// What the data plane saw from one peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// `bpf_ktime_get_ns()` of the last heartbeat (0: none yet).
    pub last_heartbeat_ns: u64,
    /// `bpf_ktime_get_ns()` of the last VXLAN packet (0: none yet).
    pub last_vxlan_ns: u64,
    pub heartbeats: u64,
    pub vxlan_packets: u64,
}

const _: () = assert!(core::mem::size_of::<PeerStats>() == 32);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no padding (size asserted above).
unsafe impl aya::Pod for PeerStats {}

/// Name of the TC classifier (ingress on VIP interfaces) that maps a held
/// VIP's ports to the local service's.
pub const PORTS_IN_PROGRAM: &str = "port_map_in";
/// Name of the TC classifier (egress on VIP interfaces) that maps the
/// service's replies back to the VIP's ports.
pub const PORTS_OUT_PROGRAM: &str = "port_map_out";
/// Name of the hash map of [`PortKey`] to the port to write (network byte
/// order, as a `u16` read from the wire).
pub const PORT_MAPS_MAP: &str = "PORT_MAPS";
/// Entries in [`PORT_MAPS_MAP`]: two per port map.
pub const MAX_PORT_KEYS: u32 = 8192;
/// [`PortKey::direction`]: a packet to the VIP, keyed by its destination.
pub const PORT_DIR_IN: u8 = 0;
/// [`PortKey::direction`]: a packet from the VIP, keyed by its source.
pub const PORT_DIR_OUT: u8 = 1;

/// A VIP's port, as a packet to it (`PORT_DIR_IN`: destination address and
/// port) or from it (`PORT_DIR_OUT`: source address and port) carries it.
/// Addresses and ports are in network byte order, as on the wire; an IPv4
/// address fills the first four bytes of `addr`, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortKey {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    pub direction: u8,
}

const _: () = assert!(core::mem::size_of::<PortKey>() == 20);

#[cfg(feature = "user")]
// SAFETY: repr(C), byte arrays and bytes only, no padding (size asserted).
unsafe impl aya::Pod for PortKey {}
