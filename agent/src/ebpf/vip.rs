//! `vip_watch`'s user side: which VIPs the program watches and which we
//! hold, who it saw answering for each, and the conflicts it reports.

use std::net::Ipv4Addr;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use linkmesh_common::{
    CONFLICT_EVENT_SIZE, CONFLICTS_MAP, ConflictEvent, DROP_CONFLICT_RING_FULL, DROP_FOREIGN_REPLY,
    DROPS_MAP, VIP_PROGRAM, VIP_SEEN_MAP, VIP_WHO_HAS_MAP, VIPS_MAP, VipInfo, VipSeen,
};
use tokio::io::unix::AsyncFd;

use super::arp::ArpOp;
use super::{
    WatchError, attach_classifier, drops, key, load, load_classifier, next_record, reattach_missing,
};
use crate::addr::MacAddr;

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

    /// Tells the program about a VIP: held here with our MAC `ours`, or
    /// not ours, held by the owner whose published MAC is `owner` (only its
    /// replies are recorded; `None`: anyone's are).
    pub fn set(
        &mut self,
        ip: Ipv4Addr,
        ours: Option<MacAddr>,
        owner: Option<MacAddr>,
    ) -> Result<(), WatchError> {
        let info = VipInfo {
            mac: ours.unwrap_or_default().0,
            owned: u8::from(ours.is_some()),
            _pad: 0,
            owner_mac: owner.filter(|_| ours.is_none()).unwrap_or_default().0,
            _pad2: [0; 2],
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

    /// ARP replies for VIPs held elsewhere that came from another MAC than
    /// the owner published, and were not recorded, summed over CPUs.
    pub fn foreign_replies(&self) -> Result<u64, WatchError> {
        drops(&self.drops, DROP_FOREIGN_REPLY)
    }
}
