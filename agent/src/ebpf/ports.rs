//! Port maps' user side: `port_map_in` (ingress) and `port_map_out`
//! (egress) on VIP interfaces, and the entries of each held VIP's maps in
//! `PORT_MAPS`. Only a VIP's owner has entries, so a standby maps nothing;
//! the programs go with the agent (TCX links), and so do the maps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aya::Ebpf;
use aya::maps::MapData;
use aya::programs::TcAttachType;
use linkmesh_common::{
    PORT_DIR_IN, PORT_DIR_OUT, PORT_MAPS_MAP, PORTS_IN_PROGRAM, PORTS_OUT_PROGRAM, PortKey,
};

use super::{WatchError, attach_classifier_at, load, load_classifier, reattach_missing};
use crate::registry::PortMap;

/// The two entries of one port map for `ip`: a packet to `ip:src` gets
/// `dest`, a packet from `ip:dest` gets `src` (ports in wire order).
#[must_use]
pub fn entries(ip: IpAddr, map: PortMap) -> [(PortKey, [u8; 2]); 2] {
    let mut addr = [0; 16];
    match ip {
        IpAddr::V4(v4) => addr[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => addr = v6.octets(),
    }
    let key = |port: u16, direction| PortKey {
        addr,
        port: port.to_be_bytes(),
        proto: map.proto.number(),
        direction,
    };
    [
        (key(map.src, PORT_DIR_IN), map.dest.to_be_bytes()),
        (key(map.dest, PORT_DIR_OUT), map.src.to_be_bytes()),
    ]
}

/// The port mapper: the programs, where they are attached, and what is in
/// the map for each VIP.
pub struct PortMapper {
    ebpf: Ebpf,
    map: aya::maps::HashMap<MapData, PortKey, [u8; 2]>,
    attached: BTreeSet<String>,
    installed: BTreeMap<IpAddr, Vec<PortMap>>,
}

impl PortMapper {
    /// Loads the object and both programs (attached on first use).
    pub fn new() -> Result<Self, WatchError> {
        let mut ebpf = load()?;
        load_classifier(&mut ebpf, PORTS_IN_PROGRAM)?;
        load_classifier(&mut ebpf, PORTS_OUT_PROGRAM)?;
        let map = ebpf
            .take_map(PORT_MAPS_MAP)
            .ok_or(WatchError::MissingMap(PORT_MAPS_MAP))?;
        let map = aya::maps::HashMap::try_from(map).map_err(|source| WatchError::Map {
            map: PORT_MAPS_MAP,
            source,
        })?;
        Ok(Self {
            ebpf,
            map,
            attached: BTreeSet::new(),
            installed: BTreeMap::new(),
        })
    }

    /// Makes `ip`'s port maps exactly `ports` (empty: none), attaching the
    /// programs to `interface` first when there are some.
    pub fn set(
        &mut self,
        ip: IpAddr,
        interface: Option<&str>,
        ports: &[PortMap],
    ) -> Result<(), WatchError> {
        if let (false, Some(interface)) = (ports.is_empty(), interface) {
            self.attach(interface)?;
        }
        // A full map (MAX_PORT_KEYS entries, thousands of port maps) fails
        // the insert below, and the caller logs and counts it.
        let old = self.installed.remove(&ip).unwrap_or_default();
        let map_err = |source| WatchError::Map {
            map: PORT_MAPS_MAP,
            source,
        };
        for gone in old.iter().filter(|m| !ports.contains(m)) {
            for (key, _) in entries(ip, *gone) {
                let _ = self.map.remove(&key);
            }
        }
        // Known before written: entries of a failed attempt are removed by
        // the next `set`.
        if !ports.is_empty() {
            self.installed.insert(ip, ports.to_vec());
        }
        for map in ports {
            for (key, value) in entries(ip, *map) {
                self.map.insert(key, value, 0).map_err(map_err)?;
            }
        }
        Ok(())
    }

    fn attach(&mut self, interface: &str) -> Result<(), WatchError> {
        if self.attached.contains(interface) {
            return Ok(());
        }
        attach_classifier_at(
            &mut self.ebpf,
            PORTS_IN_PROGRAM,
            interface,
            TcAttachType::Ingress,
        )?;
        attach_classifier_at(
            &mut self.ebpf,
            PORTS_OUT_PROGRAM,
            interface,
            TcAttachType::Egress,
        )?;
        self.attached.insert(interface.to_owned());
        Ok(())
    }

    /// Attaches the ingress program again where it was detached (see
    /// [`reattach_missing`]).
    pub fn reattach_missing(&mut self) -> usize {
        reattach_missing(&mut self.ebpf, PORTS_IN_PROGRAM, &self.attached)
    }

    /// How many VIPs have port maps here.
    #[must_use]
    pub fn mapped(&self) -> usize {
        self.installed.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::registry::Proto;

    #[test]
    fn a_port_map_is_one_entry_each_way_in_wire_order() {
        let map = PortMap {
            src: 80,
            proto: Proto::Tcp,
            dest: 8080,
        };
        let [(inbound, to), (outbound, back)] =
            entries(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)), map);
        assert_eq!(&inbound.addr[..4], &[198, 18, 0, 100]);
        assert_eq!(inbound.addr[4..], [0; 12]);
        assert_eq!(
            (inbound.port, inbound.proto, inbound.direction),
            ([0, 80], 6, PORT_DIR_IN)
        );
        assert_eq!(to, [0x1f, 0x90]);
        assert_eq!(
            (outbound.port, outbound.direction),
            ([0x1f, 0x90], PORT_DIR_OUT)
        );
        assert_eq!(back, [0, 80]);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        let udp = PortMap {
            proto: Proto::Udp,
            ..map
        };
        let [(inbound, _), _] = entries(IpAddr::V6(v6), udp);
        assert_eq!((inbound.addr, inbound.proto), (v6.octets(), 17));
    }
}
