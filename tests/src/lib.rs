//! The linkmesh test lab: hosts in network namespaces on an underlay bridge,
//! a real etcd (single node or a 3-member cluster), processes run inside the
//! namespaces, kernel state read back over netlink, and crafted frames for
//! `BPF_PROG_TEST_RUN`.
//!
//! Everything it creates is owned by a guard that removes it on drop, also
//! when the test panics. Names carry a slot number held with `flock`, so
//! tests in parallel (threads or processes) never collide, and a slot left
//! by a killed test process is swept by the next user of that slot.

pub mod agent;
pub mod chaos;
pub mod cni;
pub mod etcd;
pub mod fdb_monitor;
pub mod frame;
pub mod icmp;
pub mod kernel;
pub mod lab;
pub mod netns;
pub mod pki;
pub mod process;
pub mod rng;
pub mod service;
pub mod synthetic;
pub mod testbed;
pub mod usage;

/// The shared secret every lab signs its records with.
pub const SECRET: &str = "linkmesh-lab-secret-0123456789abcdef";

/// Prefix of every namespace, link and etcd member the lab creates.
/// `cargo xtask test` looks for leftovers with it.
pub const PREFIX: &str = "lmt";

/// Whether the process may create namespaces and load BPF programs.
#[must_use]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns early from a test that needs root (namespaces, BPF) when run
/// without it, saying so once.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipped: needs root (network namespaces, CAP_NET_ADMIN, CAP_BPF)");
            return;
        }
    };
}

/// The `p`-quantile (0..=1, nearest rank) of `sorted`; zero when empty.
#[must_use]
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
