//! The registry in etcd: signed records (hosts, segments, floating IPs),
//! their keys, the secret, and the verified cache of them all.
//!
//! Everything here is pure (no I/O but reading a secret file) so it is
//! unit-tested without etcd; `crate::etcd` talks to etcd.

pub mod cache;
#[cfg(test)]
mod cache_view;
pub mod delivery;
pub mod dnsname;
pub mod generation;
pub mod host;
pub mod invalid;
pub mod keys;
pub mod record;
pub mod secret;
pub mod segment;
pub mod vip;
pub mod vipkeys;

pub use cache::{RegistryCache, RegistryView};
pub use delivery::{Mode, PortMap, Proto};
pub use generation::{Definition, Mark, Marks, Tombstone, next_generation, open_definition};
pub use host::{HostRecord, heartbeat_tokens};
pub use invalid::Invalid;
pub use keys::{Keys, VipKey};
pub use record::{Expect, Rejection, Verified, open, seal, seal_definition};
pub use secret::Secrets;
pub use segment::{Flood, SegmentSpec};
pub use vip::{Check, Cidr, ValidVip, VipRecord, open_vip};
pub use vipkeys::{
    FailoverRecord, MemberKey, Owner, OwnerRecord, StateRecord, SuspectRecord, VipChange,
    VipSnapshot, open_failover, open_member, open_owner,
};
