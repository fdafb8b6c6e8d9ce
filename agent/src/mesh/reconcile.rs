//! Applying a plan: dump the kernel, diff, write only the difference.
//!
//! A dump costs O(N) (every FDB entry of every device), so it is not done
//! per registry change: after a pass, what the kernel holds is known (the
//! dump, plus this agent's own writes that succeeded), and the next pass
//! for a registry change diffs against that. The kernel is dumped again
//! at start, at every resync, after any failed or device-level write, and
//! when a notification says something else changed our objects.
//!
//! Segment devices live in the agent's namespace, or (with a segment's
//! `netns`) in a named namespace: they are created from here, so their
//! underlay stays here, and managed through a netlink connection opened
//! inside that namespace.

use std::collections::BTreeMap;
use std::sync::PoisonError;

use tokio::sync::Mutex;
use tracing::{info, warn};

use super::desired::{Desired, DesiredSegment, LocalConfig};
use super::plan::{
    ALIAS_PREFIX, Action, BRIDGE_ALIAS, Observed, ObservedBridge, ObservedDevice, plan,
};
use crate::kernel::fdb::{Entry, PeerOp};
use crate::kernel::link::{LinkChange, VxlanSpec};
use crate::kernel::{KernelError, Netlink, netns_path};
use crate::registry::Cidr;

/// What one reconcile pass did.
#[derive(Debug, Default)]
pub struct Report {
    /// Actions applied successfully.
    pub applied: usize,
    /// Actions that failed, with the kernel's reason.
    pub errors: Vec<String>,
    /// Configuration problems (reported when they change).
    pub problems: Vec<String>,
    /// Namespaces whose kernel state was dumped for this pass.
    pub dumps: usize,
}

/// Where a pass takes the kernel's state from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Dump it (start, resync, a change by someone else).
    Dump,
    /// What the last pass left, where it is known.
    Known,
}

/// Owns the mesh's kernel objects.
pub struct Reconciler {
    nl: Netlink,
    local: LocalConfig,
    /// Connections into named namespaces, opened on first use.
    namespaces: Mutex<BTreeMap<String, Netlink>>,
    /// What the kernel held after the last pass, per namespace (`None`:
    /// the agent's own), for as long as only our own successful peer
    /// writes changed it.
    known: std::sync::Mutex<BTreeMap<Option<String>, Observed>>,
}

impl Reconciler {
    #[must_use]
    pub fn new(nl: Netlink, local: LocalConfig) -> Self {
        Self {
            nl,
            local,
            namespaces: Mutex::new(BTreeMap::new()),
            known: std::sync::Mutex::default(),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, BTreeMap<Option<String>, Observed>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `check` of this agent's device `ifindex` (in its own namespace) as
    /// far as it is known to hold (`None`: not known). A notification that
    /// an entry went is our own write's echo when the device is known not
    /// to hold it.
    #[must_use]
    pub fn known_device(
        &self,
        ifindex: u32,
        check: impl FnOnce(&ObservedDevice) -> bool,
    ) -> Option<bool> {
        let known = self.known();
        let device = known
            .get(&None)?
            .devices
            .values()
            .find(|d| d.index == ifindex)?;
        Some(check(device))
    }

    /// The connection in the agent's own namespace (its write counters
    /// cover every namespace).
    #[must_use]
    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    #[must_use]
    pub fn local(&self) -> &LocalConfig {
        &self.local
    }

    async fn connection(&self, netns: Option<&str>) -> Result<Netlink, KernelError> {
        let Some(name) = netns else {
            return Ok(self.nl.clone());
        };
        let mut map = self.namespaces.lock().await;
        if let Some(nl) = map.get(name) {
            return Ok(nl.clone());
        }
        let nl = self.nl.connect_in(name)?;
        map.insert(name.to_owned(), nl.clone());
        Ok(nl)
    }

    /// Dumps what the plan needs in the namespace of `nl`: VXLAN devices
    /// that are wanted or ours (with their own FDB entries), other links
    /// with wanted names, and the bridges that are wanted or ours.
    async fn observe(&self, nl: &Netlink, desired: &Desired) -> Result<Observed, KernelError> {
        let mut observed = Observed::default();
        let bridges = desired.bridges();
        if desired.segments.values().any(|s| !s.addresses.is_empty()) {
            for a in nl.addresses().await? {
                observed
                    .addresses
                    .entry(a.ifindex)
                    .or_default()
                    .insert(Cidr {
                        addr: a.addr,
                        prefix_len: a.prefix_len,
                    });
            }
        }
        for link in nl.links().await? {
            let wanted_bridge = bridges.contains(link.name.as_str());
            if link.kind.as_deref() == Some("bridge") {
                let ours = link.alias.as_deref() == Some(BRIDGE_ALIAS);
                if wanted_bridge || ours {
                    observed.bridges.insert(
                        link.name,
                        ObservedBridge {
                            index: link.index,
                            ours,
                        },
                    );
                    continue;
                }
            }
            let wanted = desired.segments.get(&link.name);
            match (link.kind.as_deref(), link.vxlan) {
                (Some("vxlan"), Some(vxlan)) => {
                    let ours = link
                        .alias
                        .as_deref()
                        .is_some_and(|a| a.starts_with(ALIAS_PREFIX));
                    if wanted.is_none() && !ours {
                        continue;
                    }
                    let entries = nl.vxlan_entries(link.index).await?;
                    let neighbours = if wanted.is_some_and(|w| w.proxy) {
                        nl.device_neighbours(link.index).await?
                    } else {
                        BTreeMap::new()
                    };
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
                            peers: entries.peers,
                            unicast: entries.unicast,
                            neighbours,
                        },
                    );
                }
                _ if wanted.is_some() || wanted_bridge => {
                    observed.other_links.insert(link.name);
                }
                _ => {}
            }
        }
        Ok(observed)
    }

    /// One pass over every namespace: observe (or take what is known, for
    /// `Pass::Known`), plan, apply. Failed actions are reported and retried
    /// on the next pass.
    pub async fn reconcile(&self, desired: &Desired, pass: Pass) -> Result<Report, KernelError> {
        let mut report = Report {
            problems: desired.problems.clone(),
            ..Report::default()
        };
        // The agent's namespace always takes part, so devices that are no
        // longer wanted there are removed.
        let mut groups: BTreeMap<Option<String>, Desired> = BTreeMap::new();
        groups.insert(None, Desired::default());
        for (name, segment) in &desired.segments {
            groups
                .entry(segment.netns.clone())
                .or_default()
                .segments
                .insert(name.clone(), segment.clone());
        }
        for (netns, group) in &groups {
            if let Some(ns) = netns
                && !netns_path(ns).exists()
            {
                for name in group.segments.keys() {
                    report.problems.push(format!(
                        "segment {name}: network namespace {ns} does not exist"
                    ));
                }
                continue;
            }
            let nl = self.connection(netns.as_deref()).await?;
            // Taken out: a pass that fails leaves nothing known behind.
            let known = match pass {
                Pass::Known => self.known().remove(netns),
                Pass::Dump => None,
            };
            let mut observed = match known {
                Some(o) => o,
                None => {
                    report.dumps += 1;
                    self.observe(&nl, group).await?
                }
            };
            let plan = plan(group, &observed, &self.local.underlay);
            report.problems.extend(plan.problems);
            if self
                .apply_all(&nl, &plan.actions, &mut report, &mut observed)
                .await?
            {
                self.known().insert(netns.clone(), observed);
            }
        }
        Ok(report)
    }

    /// Applies `actions`, and keeps `observed` in step with the entry and
    /// address writes that succeeded; returns whether it still says what
    /// the kernel holds (no device changed, no write failed).
    async fn apply_all(
        &self,
        nl: &Netlink,
        actions: &[Action],
        report: &mut Report,
        observed: &mut Observed,
    ) -> Result<bool, KernelError> {
        let (entry_actions, device_actions): (Vec<_>, Vec<_>) = actions
            .iter()
            .partition(|a| matches!(a, Action::AddEntry { .. } | Action::RemoveEntry { .. }));
        let mut intact = true;
        // Devices first (in order: bridge, create, enslave, addresses),
        // then every entry change, batched.
        for action in device_actions {
            let result = self.apply(nl, action).await;
            match action {
                Action::AddAddress { index, cidr, .. } if *index != 0 && result.is_ok() => {
                    observed.addresses.entry(*index).or_default().insert(*cidr);
                }
                _ => intact = false,
            }
            record(report, result);
        }
        let ops: Vec<_> = entry_actions
            .iter()
            .filter_map(|a| match a {
                Action::AddEntry { index, entry, .. } => Some((PeerOp::Add, *index, *entry)),
                Action::RemoveEntry { index, entry, .. } => Some((PeerOp::Remove, *index, *entry)),
                _ => None,
            })
            .collect();
        if ops.is_empty() {
            return Ok(intact);
        }
        for ((op, _, entry), (action, result)) in ops.iter().zip(
            entry_actions
                .iter()
                .zip(nl.change_entries(ops.clone()).await?),
        ) {
            let (Action::AddEntry { name, .. } | Action::RemoveEntry { name, .. }) = action else {
                continue;
            };
            if result.is_ok() {
                info!(segment = %name, ?op, %entry, "entry changed");
                if let Some(d) = observed.devices.get_mut(name) {
                    note(d, *op, *entry);
                }
            } else {
                intact = false;
            }
            record(report, result);
        }
        Ok(intact)
    }

    async fn index_of(nl: &Netlink, name: &str) -> Result<u32, KernelError> {
        nl.link_by_name(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| KernelError::Request {
                what: format!("looking up device {name}"),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            })
    }

    /// Creates the device (from the agent's namespace, into `nl`'s), marks
    /// it ours, and adds its peers.
    async fn create(&self, nl: &Netlink, segment: &DesiredSegment) -> Result<(), KernelError> {
        let u = &self.local.underlay;
        let target = match nl.netns() {
            Some(ns) => Some(std::fs::File::open(netns_path(ns)).map_err(|source| {
                KernelError::Request {
                    what: format!("opening network namespace {ns}"),
                    source,
                }
            })?),
            None => None,
        };
        let spec = VxlanSpec {
            name: segment.name.clone(),
            vni: segment.vni,
            port: segment.port,
            learning: segment.learning,
            proxy: segment.proxy,
            local: u.address,
            underlay_index: u.ifindex,
            mtu: segment.mtu,
            mac: segment.mac,
            alias: format!("{ALIAS_PREFIX}{}", segment.name),
        };
        self.nl.create_vxlan(&spec, target.as_ref()).await?;
        let index = Self::index_of(nl, &segment.name).await?;
        let alias = LinkChange {
            alias: Some(spec.alias.clone()),
            ..LinkChange::default()
        };
        nl.change_link(index, &segment.name, &alias).await?;
        let entries = segment
            .peers
            .iter()
            .map(|dst| Entry::Peer(*dst))
            .chain(segment.unicast.iter().map(|(m, d)| Entry::Unicast(*m, *d)))
            .chain(
                segment
                    .neighbours
                    .iter()
                    .map(|(ip, m)| Entry::Neighbour(*ip, *m)),
            );
        let ops = entries.map(|e| (PeerOp::Add, index, e)).collect();
        for result in nl.change_entries(ops).await? {
            result?;
        }
        info!(
            segment = %segment.name,
            vni = segment.vni,
            netns = segment.netns.as_deref().unwrap_or("-"),
            peers = segment.peer_count(),
            neighbours = segment.neighbours.len(),
            "segment device created"
        );
        Ok(())
    }

    async fn apply(&self, nl: &Netlink, action: &Action) -> Result<(), KernelError> {
        match action {
            Action::CreateBridge { name } => {
                nl.create_bridge(name).await?;
                let index = Self::index_of(nl, name).await?;
                let alias = LinkChange {
                    alias: Some(BRIDGE_ALIAS.to_owned()),
                    ..LinkChange::default()
                };
                nl.change_link(index, name, &alias).await?;
                info!(bridge = %name, "bridge created");
            }
            Action::DeleteBridge { index, name } => {
                nl.delete_link(*index, name).await?;
                info!(bridge = %name, "bridge no segment wants deleted");
            }
            Action::Create { segment } => self.create(nl, segment).await?,
            Action::Recreate {
                index,
                segment,
                reason,
            } => {
                info!(segment = %segment.name, %reason, "recreating segment device");
                nl.delete_link(*index, &segment.name).await?;
                self.create(nl, segment).await?;
            }
            Action::Change {
                index,
                name,
                change,
            } => {
                nl.change_link(*index, name, change).await?;
                info!(segment = %name, ?change, "segment device updated");
            }
            Action::Enslave {
                index,
                name,
                bridge: bridge_name,
            } => {
                let bridge = Self::index_of(nl, bridge_name).await?;
                let index = if *index == 0 {
                    Self::index_of(nl, name).await?
                } else {
                    *index
                };
                let change = LinkChange {
                    master: Some(bridge),
                    ..LinkChange::default()
                };
                nl.change_link(index, name, &change).await?;
                info!(segment = %name, bridge = %bridge_name, "segment device enslaved");
            }
            Action::AddEntry { index, entry, .. } | Action::RemoveEntry { index, entry, .. } => {
                // Normally batched by `apply_all`; one change on its own here.
                let op = if matches!(action, Action::AddEntry { .. }) {
                    PeerOp::Add
                } else {
                    PeerOp::Remove
                };
                for result in nl.change_entries(vec![(op, *index, *entry)]).await? {
                    result?;
                }
            }
            Action::AddAddress {
                index,
                ifname,
                cidr,
            } => {
                let index = if *index == 0 {
                    Self::index_of(nl, ifname).await?
                } else {
                    *index
                };
                if nl
                    .add_address(index, ifname, cidr.addr, cidr.prefix_len)
                    .await?
                {
                    info!(device = %ifname, address = %cidr, "overlay address added");
                }
            }
            Action::Delete { index, name } => {
                nl.delete_link(*index, name).await?;
                info!(segment = %name, "segment device deleted");
            }
        }
        Ok(())
    }

    /// Deletes every device and bridge this agent owns, here and in the
    /// namespaces it manages (`--cleanup-on-exit`).
    pub async fn cleanup(&self) -> Result<usize, KernelError> {
        let mut connections = vec![self.nl.clone()];
        connections.extend(self.namespaces.lock().await.values().cloned());
        let mut removed = 0;
        for nl in connections {
            let observed = self.observe(&nl, &Desired::default()).await?;
            for device in observed.devices.values().filter(|d| d.is_ours()) {
                nl.delete_link(device.index, &device.name).await?;
                info!(segment = %device.name, netns = nl.netns().unwrap_or("-"), "segment device removed on exit");
                removed += 1;
            }
            for (name, bridge) in observed.bridges.iter().filter(|(_, b)| b.ours) {
                nl.delete_link(bridge.index, name).await?;
                info!(bridge = %name, "bridge removed on exit");
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// `device` after `op` on `entry` succeeded.
fn note(device: &mut ObservedDevice, op: PeerOp, entry: Entry) {
    match (op, entry) {
        (PeerOp::Add, Entry::Peer(dst)) => {
            device.peers.insert(dst);
        }
        (PeerOp::Remove, Entry::Peer(dst)) => {
            device.peers.remove(&dst);
        }
        (PeerOp::Add, Entry::Unicast(mac, dst)) => {
            device.unicast.insert(mac, dst);
        }
        (PeerOp::Remove, Entry::Unicast(mac, _)) => {
            device.unicast.remove(&mac);
        }
        (PeerOp::Add, Entry::Neighbour(ip, mac)) => {
            device.neighbours.insert(ip, mac);
        }
        (PeerOp::Remove, Entry::Neighbour(ip, _)) => {
            device.neighbours.remove(&ip);
        }
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
