//! linkmesh: one agent per host, coordinated through etcd, that programs a
//! VXLAN overlay mesh and floating IPs into the kernel over netlink, and
//! watches ARP and peer health with eBPF.
//!
//! Decisions are pure and IO sits at the edges, one module per outside
//! party: `etcd` (everything said to etcd), `kernel` (netlink and raw
//! frames), `ebpf` (the programs' user side). Between them: `registry`
//! (signed records, keys, the verified cache), `mesh` (desired state, plan,
//! reconcile), `vip` (floating IPs: a pure core and the one runner of its
//! effects), `peers` (heartbeats and liveness), `api`, `cli`, `metrics`.
//! `config` parses options and imports no subsystem; `agent` is the
//! composition root, the only place that wires the subsystems together.

pub mod addr;
pub mod agent;
pub mod api;
pub mod cli;
pub mod clock;
pub mod cni;
pub mod config;
pub mod dns;
pub mod ebpf;
pub mod etcd;
pub mod files;
pub mod kernel;
pub mod logs;
pub mod mesh;
pub mod metrics;
pub mod peers;
pub mod random;
pub mod registry;
pub mod tls;
pub mod vip;
