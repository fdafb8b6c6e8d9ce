//! Applying a plan: dump the kernel, diff, write only the difference.

use tracing::{info, warn};

use super::desired::{Desired, DesiredSegment, LocalConfig};
use super::plan::{ALIAS_PREFIX, Action, Observed, ObservedDevice, plan};
use crate::kernel::batch::PeerOp;
use crate::kernel::link::{LinkChange, VxlanSpec};
use crate::kernel::{KernelError, Netlink};

/// What one reconcile pass did.
#[derive(Debug, Default)]
pub struct Report {
    /// Actions applied successfully.
    pub applied: usize,
    /// Actions that failed, with the kernel's reason.
    pub errors: Vec<String>,
    /// Configuration problems (not retried until something changes).
    pub problems: Vec<String>,
}

/// Owns the mesh's kernel objects in one namespace.
pub struct Reconciler {
    nl: Netlink,
    local: LocalConfig,
}

impl Reconciler {
    #[must_use]
    pub fn new(nl: Netlink, local: LocalConfig) -> Self {
        Self { nl, local }
    }

    #[must_use]
    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    #[must_use]
    pub fn local(&self) -> &LocalConfig {
        &self.local
    }

    /// Dumps what the plan needs: VXLAN devices that are wanted or ours
    /// (with their own FDB entries), other links with wanted names, the bridge.
    pub async fn observe(&self, desired: &Desired) -> Result<Observed, KernelError> {
        let mut observed = Observed::default();
        for link in self.nl.links().await? {
            if self.local.bridge.as_deref() == Some(link.name.as_str()) {
                observed.bridge = Some(link.index);
                continue;
            }
            let wanted = desired.segments.contains_key(&link.name);
            match (link.kind.as_deref(), link.vxlan) {
                (Some("vxlan"), Some(vxlan)) => {
                    let ours = link
                        .alias
                        .as_deref()
                        .is_some_and(|a| a.starts_with(ALIAS_PREFIX));
                    if !wanted && !ours {
                        continue;
                    }
                    let peers = self.nl.vxlan_peers(link.index).await?;
                    observed.devices.insert(
                        link.name.clone(),
                        ObservedDevice {
                            index: link.index,
                            name: link.name,
                            mac: link.mac,
                            mtu: link.mtu,
                            up: link.up,
                            master: link.master,
                            alias: link.alias,
                            vxlan,
                            peers,
                        },
                    );
                }
                _ if wanted => {
                    observed.other_links.insert(link.name);
                }
                _ => {}
            }
        }
        Ok(observed)
    }

    /// One pass: observe, plan, apply. Failed actions are reported and
    /// retried on the next pass.
    pub async fn reconcile(&self, desired: &Desired) -> Result<Report, KernelError> {
        let observed = self.observe(desired).await?;
        let plan = plan(
            desired,
            &observed,
            &self.local.underlay,
            self.local.bridge.as_deref(),
        );
        let mut report = Report {
            problems: plan.problems,
            ..Report::default()
        };
        report.problems.extend(desired.problems.iter().cloned());
        let (peer_actions, device_actions): (Vec<_>, Vec<_>) = plan
            .actions
            .iter()
            .partition(|a| matches!(a, Action::AddPeer { .. } | Action::RemovePeer { .. }));
        // Devices first (in order: bridge, create, enslave), then every peer
        // change, pipelined.
        for action in device_actions {
            record(&mut report, self.apply(action).await);
        }
        let ops: Vec<_> = peer_actions
            .iter()
            .filter_map(|a| match a {
                Action::AddPeer { index, dst, .. } => Some((PeerOp::Add, *index, *dst)),
                Action::RemovePeer { index, dst, .. } => Some((PeerOp::Remove, *index, *dst)),
                _ => None,
            })
            .collect();
        if !ops.is_empty() {
            for (action, result) in peer_actions.iter().zip(self.nl.change_peers(ops).await?) {
                if result.is_ok() {
                    match action {
                        Action::AddPeer { name, dst, .. } => {
                            info!(segment = %name, peer = %dst, "peer added");
                        }
                        Action::RemovePeer { name, dst, .. } => {
                            info!(segment = %name, peer = %dst, "peer removed");
                        }
                        _ => {}
                    }
                }
                record(&mut report, result);
            }
        }
        Ok(report)
    }

    async fn index_of(&self, name: &str) -> Result<u32, KernelError> {
        self.nl
            .link_by_name(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| KernelError::Request {
                what: format!("looking up device {name}"),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            })
    }

    async fn create(&self, segment: &DesiredSegment) -> Result<(), KernelError> {
        let u = &self.local.underlay;
        self.nl
            .create_vxlan(&VxlanSpec {
                name: segment.name.clone(),
                vni: segment.vni,
                port: segment.port,
                learning: segment.learning,
                local: u.address,
                underlay_index: u.ifindex,
                mtu: segment.mtu,
                mac: segment.mac,
                alias: format!("{ALIAS_PREFIX}{}", segment.name),
            })
            .await?;
        let index = self.index_of(&segment.name).await?;
        let alias = LinkChange {
            alias: Some(format!("{ALIAS_PREFIX}{}", segment.name)),
            ..LinkChange::default()
        };
        self.nl.change_link(index, &segment.name, &alias).await?;
        let ops = segment
            .peers
            .iter()
            .map(|dst| (PeerOp::Add, index, *dst))
            .collect();
        for result in self.nl.change_peers(ops).await? {
            result?;
        }
        info!(segment = %segment.name, vni = segment.vni, peers = segment.peers.len(), "segment device created");
        Ok(())
    }

    async fn apply(&self, action: &Action) -> Result<(), KernelError> {
        match action {
            Action::CreateBridge { name } => {
                self.nl.create_bridge(name).await?;
                info!(bridge = %name, "bridge created");
            }
            Action::Create { segment } => self.create(segment).await?,
            Action::Recreate {
                index,
                segment,
                reason,
            } => {
                info!(segment = %segment.name, %reason, "recreating segment device");
                self.nl.delete_link(*index, &segment.name).await?;
                self.create(segment).await?;
            }
            Action::Change {
                index,
                name,
                change,
            } => {
                self.nl.change_link(*index, name, change).await?;
                info!(segment = %name, ?change, "segment device updated");
            }
            Action::Enslave { index, name } => {
                let bridge_name = self.local.bridge.as_deref().unwrap_or_default();
                let bridge = self.index_of(bridge_name).await?;
                let index = if *index == 0 {
                    self.index_of(name).await?
                } else {
                    *index
                };
                let change = LinkChange {
                    master: Some(bridge),
                    ..LinkChange::default()
                };
                self.nl.change_link(index, name, &change).await?;
                info!(segment = %name, bridge = %bridge_name, "segment device enslaved");
            }
            Action::AddPeer { index, name, dst } => {
                self.nl.append_peer(*index, name, *dst).await?;
                info!(segment = %name, peer = %dst, "peer added");
            }
            Action::RemovePeer { index, name, dst } => {
                self.nl.remove_peer(*index, name, *dst).await?;
                info!(segment = %name, peer = %dst, "peer removed");
            }
            Action::Delete { index, name } => {
                self.nl.delete_link(*index, name).await?;
                info!(segment = %name, "segment device deleted");
            }
        }
        Ok(())
    }

    /// Deletes every device this agent owns (`--cleanup-on-exit`).
    pub async fn cleanup(&self) -> Result<usize, KernelError> {
        let observed = self.observe(&Desired::default()).await?;
        let mut removed = 0;
        for device in observed.devices.values().filter(|d| d.is_ours()) {
            self.nl.delete_link(device.index, &device.name).await?;
            info!(segment = %device.name, "segment device removed on exit");
            removed += 1;
        }
        Ok(removed)
    }
}

fn record(report: &mut Report, result: Result<(), KernelError>) {
    match result {
        Ok(()) => report.applied += 1,
        Err(e) => {
            warn!(error = %e, "mesh action failed");
            report.errors.push(e.to_string());
        }
    }
}
