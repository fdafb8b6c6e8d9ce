//! `peer_watch`'s user side: the peers and UDP ports it counts, and what
//! it saw from each peer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{MapData, MapError};
use linkmesh_common::{
    DROP_BAD_HEARTBEAT, DROPS_MAP, PEER_PORTS_MAP, PEER_PROGRAM, PEER_STATS_MAP, PEER_TOKENS_MAP,
    PORT_HEARTBEAT, PORT_VXLAN, PeerStats, PeerToken,
};

use super::{WatchError, attach_classifier, key, load, load_classifier, reattach_missing};

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
/// new peer, gone ones (and their statistics) removed. Reads every key:
/// O(N) syscalls, for a start or a check, not for each change.
pub fn set_peers(ebpf: &mut Ebpf, want: &BTreeSet<Ipv4Addr>) -> Result<(), WatchError> {
    let have: BTreeSet<u32> = peer_stats(ebpf)?.keys().filter_map(Result::ok).collect();
    for k in &have {
        let ip = Ipv4Addr::from(k.to_ne_bytes());
        if !want.contains(&ip) {
            remove_peer(ebpf, ip)?;
        }
    }
    for ip in want {
        if !have.contains(&key(*ip)) {
            add_peer(ebpf, *ip)?;
        }
    }
    Ok(())
}

/// Gives `ip` an empty entry: its packets are counted from now on.
pub fn add_peer(ebpf: &mut Ebpf, ip: Ipv4Addr) -> Result<(), WatchError> {
    let map_err = |source| WatchError::Map {
        map: PEER_STATS_MAP,
        source,
    };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| map_err(MapError::IoError(e)))?;
    let empty = aya::maps::PerCpuValues::try_from(vec![PeerStats::default(); cpus])
        .map_err(|e| map_err(MapError::IoError(e)))?;
    peer_stats(ebpf)?.insert(key(ip), empty, 0).map_err(map_err)
}

/// Removes `ip`'s entry and statistics (gone already is fine).
pub fn remove_peer(ebpf: &mut Ebpf, ip: Ipv4Addr) -> Result<(), WatchError> {
    match peer_stats(ebpf)?.remove(&key(ip)) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(WatchError::Map {
            map: PEER_STATS_MAP,
            source,
        }),
    }
}

/// Sets the tokens a known peer's heartbeats must carry (`None`: any
/// heartbeat from it counts, for a peer that publishes no token).
pub fn set_token(
    ebpf: &mut Ebpf,
    ip: Ipv4Addr,
    tokens: Option<[u64; 2]>,
) -> Result<(), WatchError> {
    let map_err = |source| WatchError::Map {
        map: PEER_TOKENS_MAP,
        source,
    };
    let mut map: aya::maps::HashMap<&mut MapData, u32, PeerToken> =
        aya::maps::HashMap::try_from(map_mut(ebpf, PEER_TOKENS_MAP)?).map_err(map_err)?;
    match tokens {
        Some(tokens) => map
            .insert(key(ip), PeerToken { tokens }, 0)
            .map_err(map_err),
        None => match map.remove(&key(ip)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(e)),
        },
    }
}

/// Heartbeats dropped for a missing or wrong token, summed over CPUs.
pub fn heartbeats_rejected(ebpf: &mut Ebpf) -> Result<u64, WatchError> {
    let map: aya::maps::PerCpuArray<&mut MapData, u64> =
        aya::maps::PerCpuArray::try_from(map_mut(ebpf, DROPS_MAP)?).map_err(|source| {
            WatchError::Map {
                map: DROPS_MAP,
                source,
            }
        })?;
    let values = map
        .get(&DROP_BAD_HEARTBEAT, 0)
        .map_err(|source| WatchError::Map {
            map: DROPS_MAP,
            source,
        })?;
    Ok(values.iter().sum())
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

    /// Counts `ip` from now on.
    pub fn add_peer(&mut self, ip: Ipv4Addr) -> Result<(), WatchError> {
        add_peer(&mut self.ebpf, ip)
    }

    /// Stops counting `ip`.
    pub fn remove_peer(&mut self, ip: Ipv4Addr) -> Result<(), WatchError> {
        remove_peer(&mut self.ebpf, ip)
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

    /// Sets the tokens `ip`'s heartbeats must carry (see [`set_token`]).
    pub fn set_token(&mut self, ip: Ipv4Addr, tokens: Option<[u64; 2]>) -> Result<(), WatchError> {
        set_token(&mut self.ebpf, ip, tokens)
    }

    /// Heartbeats dropped for a missing or wrong token.
    pub fn heartbeats_rejected(&mut self) -> Result<u64, WatchError> {
        heartbeats_rejected(&mut self.ebpf)
    }
}
