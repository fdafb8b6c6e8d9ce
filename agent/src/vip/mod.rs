//! Floating IPs: records, the state machine, announcements (pure parts).

pub mod admin;
pub mod announce;
pub mod fast;
pub mod health;
pub mod manager;
pub mod record;
pub mod state;

pub use record::{Check, Cidr, VipRecord};
pub use state::{Event, State};
