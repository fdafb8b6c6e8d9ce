//! Carrying out how an owner delivers a VIP's traffic besides binding it:
//! the port maps (eBPF, [`crate::ebpf::PortMapper`]) and a routed VIP's
//! host route in `--route-table`. Part of [`Shell`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::Effect;
use super::run::Shell;
use super::state::State;
use crate::ebpf::PortMapper;
use crate::kernel::link::LinkChange;
use crate::kernel::tun::{ANCHOR, Anchor};
use crate::registry::{Mode, PortMap};

/// The port mapper: not loaded until a VIP with ports is held, and not
/// tried again for an hour once it failed to load.
#[derive(Default)]
pub(super) enum Mapper {
    #[default]
    Unloaded,
    Loaded(Box<PortMapper>),
    Failed,
}

impl Shell {
    /// Runs a port-map or route effect.
    pub(super) async fn delivery(&mut self, effect: Effect) {
        match effect {
            Effect::MapPorts {
                id,
                ip,
                ifname,
                ports,
            } => self.map_ports(&id, ip, ifname.as_deref(), &ports),
            Effect::AddRoute { id, ip } => self.add_route(&id, ip).await,
            Effect::RemoveRoute { id, ip } => self.remove_route(&id, ip).await,
            _ => {}
        }
    }

    fn map_ports(&mut self, id: &str, ip: IpAddr, ifname: Option<&str>, ports: &[PortMap]) {
        if matches!(self.mapper, Mapper::Unloaded) && !ports.is_empty() {
            self.mapper = match PortMapper::new() {
                Ok(m) => {
                    info!("eBPF port mapper loaded");
                    Mapper::Loaded(Box::new(m))
                }
                Err(e) => {
                    warn!(error = %e, "the eBPF port mapper cannot load: VIPs with ports are bound without their maps");
                    Mapper::Failed
                }
            };
        }
        let Mapper::Loaded(mapper) = &mut self.mapper else {
            if !ports.is_empty() {
                self.status
                    .delivery_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        let result = mapper.set(ip, ifname, ports);
        self.status
            .port_mapped
            .store(mapper.mapped() as u64, Ordering::Relaxed);
        match result {
            Ok(()) if ports.is_empty() => info!(vip = %id, "port maps removed"),
            Ok(()) => {
                let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
                info!(vip = %id, ports = %list.join(","), "port maps installed");
            }
            Err(e) => {
                self.status
                    .delivery_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(vip = %id, error = %e, "programming the port maps failed");
            }
        }
    }

    /// The anchor device's index, creating it (and bringing it up) first.
    async fn anchor(&mut self) -> Result<u32, String> {
        if let Some((_, index)) = &self.anchor {
            return Ok(*index);
        }
        let anchor =
            Anchor::open(ANCHOR).map_err(|e| format!("creating TUN device {ANCHOR}: {e}"))?;
        let index = match self.nl.link_by_name(ANCHOR).await {
            Ok(Some(link)) => link.index,
            Ok(None) => return Err(format!("TUN device {ANCHOR} vanished")),
            Err(e) => return Err(e.to_string()),
        };
        let up = LinkChange {
            up: Some(true),
            ..LinkChange::default()
        };
        self.nl
            .change_link(index, ANCHOR, &up)
            .await
            .map_err(|e| e.to_string())?;
        info!(
            device = ANCHOR,
            "routed VIPs' anchor device created: their routes go with this process"
        );
        self.anchor = Some((anchor, index));
        Ok(index)
    }

    async fn add_route(&mut self, id: &str, ip: IpAddr) {
        let Some(table) = self.core.settings().route_table else {
            return;
        };
        // Twice: an anchor deleted by hand is created again.
        let mut result = Err(String::new());
        for _ in 0..2 {
            result = match self.anchor().await {
                Ok(index) => self
                    .nl
                    .add_host_route(table, index, ip)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            if result.is_ok() {
                break;
            }
            self.anchor = None;
        }
        match result {
            Ok(()) => info!(vip = %id, table, "vip route installed"),
            Err(e) => {
                self.status
                    .delivery_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(vip = %id, table, error = %e, "installing the VIP's route failed");
            }
        }
    }

    async fn remove_route(&mut self, id: &str, ip: IpAddr) {
        let Some(table) = self.core.settings().route_table else {
            return;
        };
        match self.nl.delete_host_route(table, ip).await {
            Ok(true) => info!(vip = %id, table, "vip route removed"),
            Ok(false) => {}
            Err(e) => {
                self.status
                    .delivery_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(vip = %id, table, error = %e, "removing the VIP's route failed");
            }
        }
    }

    /// Checks linkmesh's routes in the route table against the routed VIPs
    /// held here: a missing one is put back, one for a VIP not held here
    /// (left by an earlier run) is removed. Only once VIPs are known, so a
    /// restart that keeps its VIPs does not withdraw their routes first.
    pub(super) async fn verify_routes(&mut self) {
        let Some(table) = self.core.settings().route_table else {
            return;
        };
        if !self.core.has_vips() {
            return;
        }
        let present: BTreeSet<IpAddr> = match self.nl.host_routes(table).await {
            Ok(r) => r.into_iter().collect(),
            Err(e) => {
                warn!(table, error = %e, "reading the route table failed");
                return;
            }
        };
        let held: Vec<(String, IpAddr)> = self
            .core
            .vips()
            .iter()
            .filter(|(_, v)| {
                v.state == State::Activated
                    && v.spec.record.mode == Mode::Route
                    && v.binding.is_some()
            })
            .map(|(id, v)| (id.clone(), v.addr()))
            .collect();
        for (id, ip) in &held {
            if !present.contains(ip) {
                warn!(vip = %id, table, "the VIP's route was removed (by hand?): installing it again");
                self.add_route(id, *ip).await;
            }
        }
        for ip in present
            .iter()
            .filter(|ip| !held.iter().any(|h| h.1 == **ip))
        {
            warn!(%ip, table, "removing a VIP route this host does not hold (left by an earlier run)");
            self.remove_route("-", *ip).await;
        }
    }
}
