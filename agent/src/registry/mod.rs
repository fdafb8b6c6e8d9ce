//! The registry in etcd: signed records, their keys, and the secret.
//!
//! Everything here is pure (no I/O but reading a secret file) so it is
//! unit-tested without etcd; `crate::store` talks to etcd.

pub mod cache;
pub mod host;
pub mod keys;
pub mod record;
pub mod secret;
pub mod segment;

pub use host::HostRecord;
pub use keys::Keys;
pub use record::{Expect, Rejection, Verified, open, seal};
pub use secret::Secrets;
pub use segment::SegmentSpec;
