//! Why a record's content (or an admin's request) is not valid.

use std::net::IpAddr;

/// A field that fails validation, naming the field and the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("host name {0:?} must be 1 to 253 bytes")]
    HostNameLength(String),
    #[error("host name {name:?} contains {found:?}")]
    HostNameChar { name: String, found: char },
    #[error("record names host {record:?} but is stored under host {key:?}")]
    HostElsewhere { record: String, key: String },
    #[error(
        "underlay address {0} is not a routable unicast address (not loopback, link-local, broadcast or multicast)"
    )]
    NotUnicast(IpAddr),
    #[error("overlay addresses for segment {0:?}, which the host does not join")]
    OverlayNotJoined(String),
    #[error("segment {segment}: {count} overlay addresses, at most {max}")]
    OverlayTooMany {
        segment: String,
        count: usize,
        max: usize,
    },
    #[error(
        "overlay address {0} is not a unicast address (not unspecified, loopback, link-local, broadcast or multicast)"
    )]
    OverlayNotUnicast(IpAddr),
    #[error("segment name {name:?} must be 1 to {max} bytes (it names the device)")]
    SegmentNameLength { name: String, max: usize },
    #[error("segment name {0:?} is not a valid interface name")]
    SegmentNameDots(String),
    #[error("segment name {name:?} contains {found:?}")]
    SegmentNameChar { name: String, found: char },
    #[error("bridge: {0}")]
    Bridge(Box<Invalid>),
    #[error(
        "a segment moved into a netns cannot have a bridge (the bridge lives in the host's namespace)"
    )]
    BridgeInNetns,
    #[error("netns {0:?} is not a valid namespace name")]
    Netns(String),
    #[error("vni {vni} is outside 1..={max}")]
    Vni { vni: u32, max: u32 },
    #[error("port 0 is not a UDP port")]
    PortZero,
    #[error("mtu {0} is outside 68..=65535")]
    Mtu(u32),
    #[error("{0:?} is not a CIDR (expected ADDRESS/PREFIX, like 198.18.0.100/24)")]
    NotCidr(String),
    #[error("{0:?} is not an IP address")]
    NotAddress(String),
    #[error("prefix length {0:?} is not a number")]
    PrefixNotNumber(String),
    #[error("prefix length {len} is over {max}")]
    PrefixTooLong { len: u8, max: u8 },
    #[error("{0} cannot be a floating IP")]
    NotFloating(IpAddr),
    #[error(
        "a /{len} floating IP covers too much (shorter than /{min}); add --force if you mean it"
    )]
    PrefixTooWide { len: u8, min: u8 },
    #[error(
        "{addr} is the underlay address of host {host}: a floating IP on it would take that host's own address"
    )]
    HostAddress { addr: IpAddr, host: String },
    #[error("{addr} is already floating IP {vip}: one floating IP per address")]
    DuplicateAddress { addr: IpAddr, vip: String },
    #[error("ports: {0}")]
    PortMap(String),
    #[error("group {0:?} must be 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'")]
    Group(String),
    #[error("name {name:?} {why}")]
    DnsName { name: String, why: &'static str },
    #[error("unknown mode {0:?} (l2 or route)")]
    Mode(String),
    #[error("a routed VIP is a host route: {0} must be a /32 or /128")]
    RouteNotHost(String),
    #[error("preempt_delay needs a preferred host (priority)")]
    PreemptWithoutPriority,
    #[error("preempt_delay {delay} is outside 1..={max} seconds")]
    PreemptDelay { delay: u32, max: u32 },
    #[error("check {check:?}: {why}")]
    Check { check: String, why: String },
    #[error("interface: {0}")]
    Interface(Box<Invalid>),
    #[error("a coordination key must be on a lease")]
    NoLease,
    #[error("unknown key kind {0:?}")]
    UnknownKey(String),
    /// JSON that does not decode as the record (unknown field, wrong type).
    #[error("{0}")]
    Decode(String),
}
