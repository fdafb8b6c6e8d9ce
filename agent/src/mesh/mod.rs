//! The overlay mesh: desired state from the registry (`desired`), the diff
//! against the kernel (`plan`), and applying it (`reconcile`).

pub mod desired;
pub mod plan;
pub mod reconcile;

pub use desired::{Desired, DesiredSegment, LocalConfig, RegistryView, Underlay, desired};
pub use plan::{ALIAS_PREFIX, Action, Observed, ObservedDevice, Plan, plan};
pub use reconcile::Reconciler;
