//! linkmesh: one agent per host, coordinated through etcd, that programs a
//! VXLAN overlay mesh and floating IPs into the kernel over netlink, and
//! watches ARP and peer health with eBPF.
//!
//! Module map (one concern each): `addr` (link-layer types), `watch` (the
//! eBPF programs: load, attach, events).

pub mod addr;
pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod kernel;
pub mod logs;
pub mod mesh;
pub mod metrics;
pub mod peers;
pub mod registry;
pub mod store;
pub mod tls;
pub mod vip;
pub mod watch;
