//! The eBPF watcher: loads the embedded object, attaches its TC programs to
//! named interfaces and streams their events through tokio.
//!
//! Three classifiers, one attach path: `arp_watch` (ARP events),
//! `vip_watch` (who answers for each floating IP) and `peer_watch` (when
//! each peer was last heard on the underlay).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use aya::maps::{MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, tc};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfError};
use linkmesh_common::{
    ARP_EVENT_SIZE, ARP_EVENTS_MAP, ARP_OP_REPLY, ARP_OP_REQUEST, ARP_PROGRAM, ArpEvent,
    CONFLICT_EVENT_SIZE, CONFLICTS_MAP, ConflictEvent, DROP_CONFLICT_RING_FULL, DROP_RING_FULL,
    DROPS_MAP, PEER_PORTS_MAP, PEER_PROGRAM, PEER_STATS_MAP, PORT_HEARTBEAT, PORT_VXLAN, PeerStats,
    VIP_PROGRAM, VIP_SEEN_MAP, VIP_WHO_HAS_MAP, VIPS_MAP, VipInfo, VipSeen,
};
use tokio::io::unix::AsyncFd;

use crate::addr::MacAddr;

/// The eBPF object built by `cargo xtask build-ebpf` (target/bpf/linkmesh.bpf.o).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LINKMESH_BPF_OBJECT"));

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("loading the eBPF object: {0}")]
    Load(#[source] EbpfError),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("{action} eBPF program {program}: {source}")]
    Program {
        action: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {program} to interface {interface}: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("adding the clsact qdisc to interface {interface}: {source}")]
    Qdisc {
        interface: String,
        #[source]
        source: tc::TcError,
    },
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("opening map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("waiting for ring buffer {map}: {source}")]
    Poll {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("ring buffer {map} returned a {len}-byte record, expected {expected}")]
    ShortRecord {
        map: &'static str,
        len: usize,
        expected: usize,
    },
}

/// Loads the embedded object into the kernel (maps created, programs not yet).
///
/// The programs use no CO-RE relocations, so the kernel's BTF (several MB
/// to parse, and the agent's largest allocation by far) is not read.
/// Afterwards the allocator hands what loading took back to the system.
pub fn load() -> Result<Ebpf, WatchError> {
    let ebpf = aya::EbpfLoader::new()
        .btf(None)
        .load(OBJECT)
        .map_err(WatchError::Load);
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe { libc::malloc_trim(0) };
    ebpf
}

/// Loads the ARP classifier into the kernel without attaching it (for
/// `BPF_PROG_TEST_RUN` and for attaching).
pub fn load_arp_classifier(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, WatchError> {
    load_classifier(ebpf, ARP_PROGRAM)
}

/// Loads the classifier `name` into the kernel (once) without attaching it.
pub fn load_classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, WatchError> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(WatchError::MissingProgram(name))?
        .try_into()
        .map_err(|source| WatchError::Program {
            action: "typing",
            program: name,
            source,
        })?;
    if program.fd().is_err() {
        program.load().map_err(|source| WatchError::Program {
            action: "loading",
            program: name,
            source,
        })?;
    }
    Ok(program)
}

/// Attaches the loaded classifier `name` to `interface`'s ingress.
fn attach_classifier(
    ebpf: &mut Ebpf,
    name: &'static str,
    interface: &str,
) -> Result<(), WatchError> {
    if interface_index(interface).is_none() {
        return Err(WatchError::NoInterface(interface.to_owned()));
    }
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    if !tcx {
        // Legacy TC needs the clsact qdisc; "exists" is fine.
        if let Err(source) = tc::qdisc_add_clsact(interface) {
            let exists = matches!(&source, tc::TcError::AlreadyAttached)
                || source.to_string().contains("exists");
            if !exists {
                return Err(WatchError::Qdisc {
                    interface: interface.to_owned(),
                    source,
                });
            }
        }
    }
    load_classifier(ebpf, name)?
        .attach(interface, TcAttachType::Ingress)
        .map_err(|source| WatchError::Attach {
            program: name,
            interface: interface.to_owned(),
            source,
        })?;
    Ok(())
}

/// ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
    Other(u16),
}

impl From<u16> for ArpOp {
    fn from(op: u16) -> Self {
        match op {
            ARP_OP_REQUEST => Self::Request,
            ARP_OP_REPLY => Self::Reply,
            other => Self::Other(other),
        }
    }
}

/// One ARP packet seen by the classifier, in agent types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpPacket {
    /// Monotonic time since boot (`bpf_ktime_get_ns`).
    pub seen_at: Duration,
    pub ifindex: u32,
    pub operation: ArpOp,
    /// 802.1Q VLAN id, when the frame was tagged.
    pub vlan: Option<u16>,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpPacket {
    /// A gratuitous ARP announces the sender's own address.
    #[must_use]
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }
}

impl From<ArpEvent> for ArpPacket {
    fn from(e: ArpEvent) -> Self {
        Self {
            seen_at: Duration::from_nanos(e.timestamp_ns),
            ifindex: e.ifindex,
            operation: ArpOp::from(e.operation),
            vlan: (e.vlan_id != 0).then_some(e.vlan_id),
            sender_mac: MacAddr(e.sender_mac),
            sender_ip: Ipv4Addr::from(e.sender_ip),
            target_mac: MacAddr(e.target_mac),
            target_ip: Ipv4Addr::from(e.target_ip),
        }
    }
}

impl fmt::Display for ArpPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.operation {
            ArpOp::Request => write!(
                f,
                "who-has {} tell {} ({})",
                self.target_ip, self.sender_ip, self.sender_mac
            )?,
            ArpOp::Reply => write!(
                f,
                "reply {} is-at {} (to {} {})",
                self.sender_ip, self.sender_mac, self.target_ip, self.target_mac
            )?,
            ArpOp::Other(op) => write!(
                f,
                "op {op} {} ({}) -> {} ({})",
                self.sender_ip, self.sender_mac, self.target_ip, self.target_mac
            )?,
        }
        write!(f, " ifindex {}", self.ifindex)?;
        if let Some(vlan) = self.vlan {
            write!(f, " vlan {vlan}")?;
        }
        Ok(())
    }
}

/// The ARP watcher: one loaded object, attached to any number of interfaces,
/// and one event stream.
pub struct ArpWatcher {
    ebpf: Ebpf,
    events: AsyncFd<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
}

impl ArpWatcher {
    /// Loads the object and the classifier. Must run inside a tokio runtime.
    pub fn new() -> Result<Self, WatchError> {
        let mut ebpf = load()?;
        load_arp_classifier(&mut ebpf)?;
        let events = ebpf
            .take_map(ARP_EVENTS_MAP)
            .ok_or(WatchError::MissingMap(ARP_EVENTS_MAP))?;
        let events = RingBuf::try_from(events).map_err(|source| WatchError::Map {
            map: ARP_EVENTS_MAP,
            source,
        })?;
        // SAFETY: the RingBuf owns its map fd: it stays open and the same for
        // as long as the AsyncFd (which owns the RingBuf) lives.
        let events = unsafe { AsyncFd::register(events) }.map_err(|e| WatchError::Poll {
            map: ARP_EVENTS_MAP,
            source: e.into(),
        })?;
        let drops = ebpf
            .take_map(DROPS_MAP)
            .ok_or(WatchError::MissingMap(DROPS_MAP))?;
        let drops = PerCpuArray::try_from(drops).map_err(|source| WatchError::Map {
            map: DROPS_MAP,
            source,
        })?;
        Ok(Self {
            ebpf,
            events,
            drops,
        })
    }

    /// Attaches the classifier to `interface`'s ingress (a TCX link on
    /// kernels >= 6.6, a clsact filter before). The attachment lives as long
    /// as the watcher.
    pub fn attach(&mut self, interface: &str) -> Result<(), WatchError> {
        attach_classifier(&mut self.ebpf, ARP_PROGRAM, interface)
    }

    /// Waits for the next ARP packet.
    pub async fn next(&mut self) -> Result<ArpPacket, WatchError> {
        next_record(
            &mut self.events,
            ARP_EVENTS_MAP,
            ARP_EVENT_SIZE,
            ArpEvent::from_bytes,
        )
        .await
        .map(ArpPacket::from)
    }

    /// Events the program could not deliver because the ring was full,
    /// summed over CPUs.
    pub fn dropped(&self) -> Result<u64, WatchError> {
        drops(&self.drops, DROP_RING_FULL)
    }
}

/// Attaches `name` again wherever in `attached` it no longer runs: its TCX
/// link was detached by someone, or the interface was re-created. Logs
/// each, and returns how many it attached again. Only TCX (kernel >= 6.6)
/// attachments can be checked; on older kernels nothing is done.
fn reattach_missing(ebpf: &mut Ebpf, name: &'static str, attached: &BTreeSet<String>) -> usize {
    if !KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
        return 0;
    }
    let Ok(ours) = load_classifier(ebpf, name).and_then(|p| {
        p.info()
            .map(|i| i.id())
            .map_err(|source| WatchError::Program {
                action: "reading the info of",
                program: name,
                source,
            })
    }) else {
        return 0;
    };
    let mut restored = 0;
    for interface in attached {
        // A missing interface cannot be attached to; it is tried again at
        // the next check.
        let Ok((_, programs)) = SchedClassifier::query_tcx(interface, TcAttachType::Ingress) else {
            continue;
        };
        if programs.iter().any(|p| p.id() == ours) {
            continue;
        }
        match attach_classifier(ebpf, name, interface) {
            Ok(()) => {
                restored += 1;
                tracing::warn!(program = name, %interface, "the program was detached (by hand?): attached again");
            }
            Err(e) => {
                tracing::warn!(program = name, %interface, error = %e, "the program was detached and cannot be attached again");
            }
        }
    }
    restored
}

/// The index of a network interface in the current namespace.
#[must_use]
pub fn interface_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the call's duration.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Our VIP claimed by a foreign MAC, as the `vip_watch` program saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub seen_at: Duration,
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub foreign_mac: MacAddr,
    pub our_mac: MacAddr,
    pub operation: ArpOp,
}

impl From<ConflictEvent> for Conflict {
    fn from(e: ConflictEvent) -> Self {
        Self {
            seen_at: Duration::from_nanos(e.timestamp_ns),
            ifindex: e.ifindex,
            ip: Ipv4Addr::from(e.ip),
            foreign_mac: MacAddr(e.foreign_mac),
            our_mac: MacAddr(e.our_mac),
            operation: ArpOp::from(e.operation),
        }
    }
}

/// The VIP watcher: `vip_watch` attached to VIP interfaces, and its maps.
pub struct VipWatcher {
    ebpf: Ebpf,
    vips: aya::maps::HashMap<MapData, u32, VipInfo>,
    seen: aya::maps::HashMap<MapData, u32, VipSeen>,
    who_has: aya::maps::PerCpuHashMap<MapData, u32, u64>,
    attached: std::collections::BTreeSet<String>,
}

/// Conflict events of a [`VipWatcher`], read on their own task, and the
/// count of those the program dropped because the ring was full.
pub struct ConflictStream {
    events: AsyncFd<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
}

fn key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

impl VipWatcher {
    /// Loads the object and `vip_watch`. Must run inside a tokio runtime.
    pub fn new() -> Result<(Self, ConflictStream), WatchError> {
        let mut ebpf = load()?;
        load_classifier(&mut ebpf, VIP_PROGRAM)?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(WatchError::MissingMap(name))
        };
        let map_err = |map: &'static str| move |source| WatchError::Map { map, source };
        let vips =
            aya::maps::HashMap::try_from(take(&mut ebpf, VIPS_MAP)?).map_err(map_err(VIPS_MAP))?;
        let seen = aya::maps::HashMap::try_from(take(&mut ebpf, VIP_SEEN_MAP)?)
            .map_err(map_err(VIP_SEEN_MAP))?;
        let who_has = aya::maps::PerCpuHashMap::try_from(take(&mut ebpf, VIP_WHO_HAS_MAP)?)
            .map_err(map_err(VIP_WHO_HAS_MAP))?;
        let ring =
            RingBuf::try_from(take(&mut ebpf, CONFLICTS_MAP)?).map_err(map_err(CONFLICTS_MAP))?;
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd lives.
        let events = unsafe { AsyncFd::register(ring) }.map_err(|e| WatchError::Poll {
            map: CONFLICTS_MAP,
            source: e.into(),
        })?;
        let drops =
            PerCpuArray::try_from(take(&mut ebpf, DROPS_MAP)?).map_err(map_err(DROPS_MAP))?;
        Ok((
            Self {
                ebpf,
                vips,
                seen,
                who_has,
                attached: std::collections::BTreeSet::new(),
            },
            ConflictStream { events, drops },
        ))
    }

    /// Attaches `vip_watch` to `interface` (once per interface).
    pub fn attach(&mut self, interface: &str) -> Result<(), WatchError> {
        if self.attached.contains(interface) {
            return Ok(());
        }
        attach_classifier(&mut self.ebpf, VIP_PROGRAM, interface)?;
        self.attached.insert(interface.to_owned());
        Ok(())
    }

    /// Attaches `vip_watch` again where it was detached (see
    /// [`reattach_missing`]).
    pub fn reattach_missing(&mut self) -> usize {
        reattach_missing(&mut self.ebpf, VIP_PROGRAM, &self.attached)
    }

    /// Tells the program about a VIP: our MAC, and whether we hold it.
    pub fn set(&mut self, ip: Ipv4Addr, mac: MacAddr, owned: bool) -> Result<(), WatchError> {
        let info = VipInfo {
            mac: mac.0,
            owned: u8::from(owned),
            _pad: 0,
        };
        self.vips
            .insert(key(ip), info, 0)
            .map_err(|source| WatchError::Map {
                map: VIPS_MAP,
                source,
            })
    }

    /// Forgets a VIP.
    pub fn remove(&mut self, ip: Ipv4Addr) {
        let _ = self.vips.remove(&key(ip));
    }

    /// The last host seen answering for `ip` while we did not hold it, and
    /// when (monotonic, since boot).
    #[must_use]
    pub fn seen(&self, ip: Ipv4Addr) -> Option<(MacAddr, Duration)> {
        self.seen
            .get(&key(ip), 0)
            .ok()
            .map(|s| (MacAddr(s.mac), Duration::from_nanos(s.last_seen_ns)))
    }

    /// Who-has requests seen for `ip`, summed over CPUs.
    #[must_use]
    pub fn who_has(&self, ip: Ipv4Addr) -> u64 {
        self.who_has.get(&key(ip), 0).map_or(0, |v| v.iter().sum())
    }
}

impl ConflictStream {
    /// Waits for the next conflict.
    pub async fn next(&mut self) -> Result<Conflict, WatchError> {
        next_record(
            &mut self.events,
            CONFLICTS_MAP,
            CONFLICT_EVENT_SIZE,
            ConflictEvent::from_bytes,
        )
        .await
        .map(Conflict::from)
    }

    /// Conflict events the program could not deliver because the ring was
    /// full, summed over CPUs.
    pub fn dropped(&self) -> Result<u64, WatchError> {
        drops(&self.drops, DROP_CONFLICT_RING_FULL)
    }
}

/// Slot `slot` of a `DROPS` map, summed over CPUs.
fn drops(map: &PerCpuArray<MapData, u64>, slot: u32) -> Result<u64, WatchError> {
    let values = map.get(&slot, 0).map_err(|source| WatchError::Map {
        map: DROPS_MAP,
        source,
    })?;
    Ok(values.iter().sum())
}

/// Waits for the next record of a ring buffer and parses it.
async fn next_record<T>(
    events: &mut AsyncFd<RingBuf<MapData>>,
    map: &'static str,
    expected: usize,
    parse: fn(&[u8]) -> Option<T>,
) -> Result<T, WatchError> {
    loop {
        let mut guard = events
            .readable_mut()
            .await
            .map_err(|source| WatchError::Poll { map, source })?;
        let record = guard
            .get_inner_mut()
            .next()
            .map(|item| (item.len(), parse(&item)));
        match record {
            Some((_, Some(event))) => return Ok(event),
            Some((len, None)) => return Err(WatchError::ShortRecord { map, len, expected }),
            None => guard.clear_ready(),
        }
    }
}

/// `CLOCK_MONOTONIC` now: the clock `bpf_ktime_get_ns` reads, so it can be
/// compared with the times the programs record.
#[must_use]
pub fn ktime_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// What `peer_watch` saw from one peer, summed over CPUs. Its times come
/// from the coarse monotonic clock: at most one scheduler tick (4 ms at
/// HZ=250) behind [`ktime_now`], so ages read up to a tick too old.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSample {
    /// Monotonic time of the last heartbeat.
    pub last_heartbeat: Option<Duration>,
    /// Monotonic time of the last VXLAN packet.
    pub last_vxlan: Option<Duration>,
    pub heartbeats: u64,
    pub vxlan_packets: u64,
}

impl PeerSample {
    /// The later of the last heartbeat and the last VXLAN packet.
    #[must_use]
    pub fn last_seen(&self) -> Option<Duration> {
        self.last_heartbeat.max(self.last_vxlan)
    }

    fn from_cpus(values: &[PeerStats]) -> Self {
        let time = |ns: u64| (ns != 0).then(|| Duration::from_nanos(ns));
        values.iter().fold(Self::default(), |acc, v| Self {
            last_heartbeat: acc.last_heartbeat.max(time(v.last_heartbeat_ns)),
            last_vxlan: acc.last_vxlan.max(time(v.last_vxlan_ns)),
            heartbeats: acc.heartbeats + v.heartbeats,
            vxlan_packets: acc.vxlan_packets + v.vxlan_packets,
        })
    }
}

fn map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, WatchError> {
    ebpf.map_mut(name).ok_or(WatchError::MissingMap(name))
}

fn peer_stats(
    ebpf: &mut Ebpf,
) -> Result<aya::maps::PerCpuHashMap<&mut MapData, u32, PeerStats>, WatchError> {
    aya::maps::PerCpuHashMap::try_from(map_mut(ebpf, PEER_STATS_MAP)?).map_err(|source| {
        WatchError::Map {
            map: PEER_STATS_MAP,
            source,
        }
    })
}

/// Makes `peer_watch`'s peer set exactly `want`: an empty entry for each
/// new peer, gone ones (and their statistics) removed.
pub fn set_peers(ebpf: &mut Ebpf, want: &BTreeSet<Ipv4Addr>) -> Result<(), WatchError> {
    let map_err = |source| WatchError::Map {
        map: PEER_STATS_MAP,
        source,
    };
    let mut stats = peer_stats(ebpf)?;
    let have: BTreeSet<u32> = stats.keys().filter_map(Result::ok).collect();
    for k in &have {
        if !want.contains(&Ipv4Addr::from(k.to_ne_bytes())) {
            let _ = stats.remove(k);
        }
    }
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| WatchError::Map {
        map: PEER_STATS_MAP,
        source: MapError::IoError(e),
    })?;
    for ip in want {
        if !have.contains(&key(*ip)) {
            let empty = aya::maps::PerCpuValues::try_from(vec![PeerStats::default(); cpus])
                .map_err(|e| map_err(MapError::IoError(e)))?;
            stats.insert(key(*ip), empty, 0).map_err(map_err)?;
        }
    }
    Ok(())
}

/// Sets what `peer_watch` counts on UDP destination `port`: heartbeats,
/// VXLAN, or (`None`) nothing.
pub fn set_port(ebpf: &mut Ebpf, port: u16, kind: Option<PortKind>) -> Result<(), WatchError> {
    let mut ports: aya::maps::Array<&mut MapData, u8> =
        aya::maps::Array::try_from(map_mut(ebpf, PEER_PORTS_MAP)?).map_err(|source| {
            WatchError::Map {
                map: PEER_PORTS_MAP,
                source,
            }
        })?;
    let value = match kind {
        Some(PortKind::Heartbeat) => PORT_HEARTBEAT,
        Some(PortKind::Vxlan) => PORT_VXLAN,
        None => 0,
    };
    ports
        .set(u32::from(port), value, 0)
        .map_err(|source| WatchError::Map {
            map: PEER_PORTS_MAP,
            source,
        })
}

/// What `peer_watch` saw from `ip` (`None`: not a known peer).
#[must_use]
pub fn peer_sample(ebpf: &mut Ebpf, ip: Ipv4Addr) -> Option<PeerSample> {
    let stats = peer_stats(ebpf).ok()?;
    stats
        .get(&key(ip), 0)
        .ok()
        .map(|v| PeerSample::from_cpus(&v))
}

/// What a watched UDP port carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    Heartbeat,
    Vxlan,
}

/// The peer watcher: `peer_watch` on the underlay, the peers and ports it
/// counts, and what it saw.
pub struct PeerWatcher {
    ebpf: Ebpf,
    ports: BTreeMap<u16, PortKind>,
    attached: BTreeSet<String>,
}

impl PeerWatcher {
    /// Loads the object and `peer_watch`.
    pub fn new() -> Result<Self, WatchError> {
        let mut ebpf = load()?;
        load_classifier(&mut ebpf, PEER_PROGRAM)?;
        Ok(Self {
            ebpf,
            ports: BTreeMap::new(),
            attached: BTreeSet::new(),
        })
    }

    /// Attaches `peer_watch` to `interface` (once per interface).
    pub fn attach(&mut self, interface: &str) -> Result<(), WatchError> {
        if self.attached.contains(interface) {
            return Ok(());
        }
        attach_classifier(&mut self.ebpf, PEER_PROGRAM, interface)?;
        self.attached.insert(interface.to_owned());
        Ok(())
    }

    /// Attaches `peer_watch` again where it was detached (see
    /// [`reattach_missing`]).
    pub fn reattach_missing(&mut self) -> usize {
        reattach_missing(&mut self.ebpf, PEER_PROGRAM, &self.attached)
    }

    /// Makes the peer set exactly `want`.
    pub fn set_peers(&mut self, want: &BTreeSet<Ipv4Addr>) -> Result<(), WatchError> {
        set_peers(&mut self.ebpf, want)
    }

    /// Makes the counted ports exactly the heartbeat port and `vxlan`.
    pub fn set_ports(&mut self, heartbeat: u16, vxlan: &BTreeSet<u16>) -> Result<(), WatchError> {
        let mut want: BTreeMap<u16, PortKind> =
            vxlan.iter().map(|p| (*p, PortKind::Vxlan)).collect();
        want.insert(heartbeat, PortKind::Heartbeat);
        for port in self.ports.keys() {
            if !want.contains_key(port) {
                set_port(&mut self.ebpf, *port, None)?;
            }
        }
        for (port, kind) in &want {
            if self.ports.get(port) != Some(kind) {
                set_port(&mut self.ebpf, *port, Some(*kind))?;
            }
        }
        self.ports = want;
        Ok(())
    }

    /// What the program saw from `ip` (`None`: not a known peer).
    #[must_use]
    pub fn sample(&mut self, ip: Ipv4Addr) -> Option<PeerSample> {
        peer_sample(&mut self.ebpf, ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(op: u16) -> ArpEvent {
        ArpEvent {
            timestamp_ns: 1_500_000_000,
            ifindex: 7,
            operation: op,
            vlan_id: 0,
            sender_mac: [2, 0, 0, 0, 0, 1],
            target_mac: [0; 6],
            sender_ip: [198, 18, 0, 1],
            target_ip: [198, 18, 0, 2],
            _pad: [0; 4],
        }
    }

    #[test]
    fn converts_request() {
        let p = ArpPacket::from(event(1));
        assert_eq!(p.operation, ArpOp::Request);
        assert_eq!(p.sender_ip, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(p.target_ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(p.sender_mac.to_string(), "02:00:00:00:00:01");
        assert_eq!(p.vlan, None);
        assert_eq!(p.seen_at, Duration::from_millis(1500));
        assert!(!p.is_gratuitous());
        assert_eq!(
            p.to_string(),
            "who-has 198.18.0.2 tell 198.18.0.1 (02:00:00:00:00:01) ifindex 7"
        );
    }

    #[test]
    fn converts_tagged_reply_and_unknown_op() {
        let mut e = event(2);
        e.vlan_id = 42;
        let p = ArpPacket::from(e);
        assert_eq!(p.operation, ArpOp::Reply);
        assert_eq!(p.vlan, Some(42));
        assert!(p.to_string().ends_with("vlan 42"));
        assert_eq!(ArpPacket::from(event(9)).operation, ArpOp::Other(9));
    }

    #[test]
    fn short_record_is_rejected() {
        let bytes = [0u8; ARP_EVENT_SIZE - 1];
        assert!(ArpEvent::from_bytes(&bytes).is_none());
        assert!(ArpEvent::from_bytes(&[0u8; ARP_EVENT_SIZE]).is_some());
    }

    #[test]
    fn missing_interface_has_no_index() {
        assert_eq!(interface_index("lm-no-such-if0"), None);
        assert_eq!(interface_index("bad\0name"), None);
    }
}
