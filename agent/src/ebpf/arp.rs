//! `arp_watch`'s user side: one event per ARP packet, in agent types.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::SchedClassifier;
use linkmesh_common::{
    ARP_EVENT_SIZE, ARP_EVENTS_MAP, ARP_OP_REPLY, ARP_OP_REQUEST, ARP_PROGRAM, ArpEvent,
    DROP_RING_FULL, DROPS_MAP,
};
use tokio::io::unix::AsyncFd;

use super::{WatchError, attach_classifier, drops, load, load_classifier, next_record};
use crate::addr::MacAddr;

/// Loads the ARP classifier into the kernel without attaching it (for
/// `BPF_PROG_TEST_RUN` and for attaching).
pub fn load_arp_classifier(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, WatchError> {
    load_classifier(ebpf, ARP_PROGRAM)
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
}
