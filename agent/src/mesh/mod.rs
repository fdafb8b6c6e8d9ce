//! The overlay mesh: desired state from the registry (`desired`), the diff
//! against the kernel (`plan`), and applying it (`reconcile`), pass after
//! pass (`run`); and finding the underlay (`underlay`).

pub mod desired;
pub mod plan;
pub mod reconcile;
pub mod run;
pub mod underlay;

pub use desired::{Desired, DesiredSegment, LocalConfig, Underlay, desired};
pub use plan::{ALIAS_PREFIX, Action, Observed, ObservedDevice, Plan, plan};
pub use reconcile::Reconciler;
