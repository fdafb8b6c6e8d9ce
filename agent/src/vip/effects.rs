//! Running the floating-IP core's effects: on etcd (through
//! `crate::etcd`), the kernel (netlink, raw frames) and the eBPF watcher,
//! and the tasks that check health and announce. Part of [`Shell`].

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::run::{Report, Shell};
use super::{Binding, Effect, Input, Outcome, Settings, StatusMap, WriteWhy};
use crate::addr::MacAddr;
use crate::clock::unix_now;
use crate::etcd::election::{self, Contention};
use crate::etcd::writer::Write;
use crate::kernel::packet::RawSender;
use crate::registry::{Check, OwnerRecord, StateRecord, SuspectRecord, seal};

impl Shell {
    /// Runs one effect; returns the input its result makes, if any.
    /// Starts an announcer for an `Effect::Announce` (replacing the VIP's
    /// last one).
    fn announce(&mut self, effect: Effect) {
        let Effect::Announce {
            id,
            ifname,
            mac,
            ip,
            count,
            interval,
            refresh,
        } = effect
        else {
            return;
        };
        let sent = self.announced.entry(id.clone()).or_default().clone();
        let task = spawn_announcer(&id, &ifname, mac, ip, (count, interval, refresh), sent);
        replace_task(&mut self.announcers, id, Some(task));
    }

    pub(super) async fn effect(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Bind { id, cidr, ifname } => Some(self.bind(id, cidr, ifname).await),
            Effect::RemoveAddress {
                id,
                cidr,
                at,
                ifname,
                leftover_of,
            } => {
                self.remove_address(&id, cidr, at, ifname, leftover_of.as_deref())
                    .await;
                None
            }
            announce @ Effect::Announce { .. } => {
                self.announce(announce);
                None
            }
            Effect::StopAnnouncing { id } => {
                replace_task(&mut self.announcers, id, None);
                None
            }
            e
            @ (Effect::MapPorts { .. } | Effect::AddRoute { .. } | Effect::RemoveRoute { .. }) => {
                self.delivery(e).await;
                None
            }
            Effect::Notify {
                id,
                from,
                to,
                cause,
            } => {
                let now = super::notify::Transition::now(id, (from, to), cause);
                self.notifier.notify(now);
                None
            }
            Effect::VipMembers { id, hosts } => {
                self.peers.set_vip_members(&id, hosts);
                None
            }
            Effect::AttachWatcher { ifname } => {
                if let Some(w) = self.watcher.as_mut()
                    && let Err(e) = w.attach(&ifname)
                {
                    debug!(interface = %ifname, error = %e, "cannot attach the VIP watcher yet");
                }
                None
            }
            Effect::SetWatched { ip, ours, owner } => {
                if let Some(w) = self.watcher.as_mut()
                    && let Err(e) = w.set(ip, ours, owner)
                {
                    warn!(vip = %ip, error = %e, "cannot watch the VIP for conflicts");
                }
                None
            }
            Effect::ForgetWatched { ip } => {
                if let Some(w) = self.watcher.as_mut() {
                    w.remove(ip);
                }
                None
            }
            Effect::StartChecks { id, checks } => {
                let task = spawn_checker(
                    &id,
                    checks,
                    self.core.settings(),
                    self.reports.clone(),
                    self.status.clone(),
                );
                replace_task(&mut self.checkers, id, Some(task));
                None
            }
            Effect::StopChecks { id } => {
                replace_task(&mut self.checkers, id, None);
                None
            }
            e @ (Effect::Contend { .. }
            | Effect::ClearOwner { .. }
            | Effect::Release { .. }
            | Effect::PublishMac { .. }
            | Effect::Revoke { .. }
            | Effect::Write { .. }
            | Effect::DeleteState { .. }
            | Effect::Withdraw { .. }) => self.etcd_effect(e).await,
            Effect::Probe {
                id,
                ifname,
                dst,
                vip,
            } => self
                .send_probe(&ifname, dst, vip)
                .await
                .then_some(Input::ProbeSent { id }),
        }
    }

    /// Runs an effect on etcd.
    async fn etcd_effect(&mut self, effect: Effect) -> Option<Input> {
        let host = self.core.settings().hostname.clone();
        let ttl = self.core.settings().ttl;
        let write = match effect {
            Effect::Contend { id, lease, ifname } => {
                let outcome = self.contend(&id, lease, ifname, ttl).await;
                return Some(Input::Contended { id, lease, outcome });
            }
            Effect::Release {
                id,
                lease,
                successor,
            } => {
                self.release(&id, lease, successor, ttl).await;
                return None;
            }
            Effect::PublishMac { id, lease, ifname } => {
                self.publish_mac(&id, lease, &ifname, ttl).await;
                return None;
            }
            Effect::ClearOwner { id, revision } => {
                election::clear(&self.client, &self.keys, &id, revision, ttl).await;
                return None;
            }
            e @ Effect::Revoke { .. } => return Some(self.revoke(e, ttl).await),
            Effect::Write {
                id,
                why: WriteWhy::State(state),
                lease,
            } => {
                let key = self.keys.vip_state(&id, &host);
                let record = StateRecord {
                    state: state.to_string(),
                };
                let value = self.sign(&key, lease, &record)?;
                Write::Put {
                    key,
                    value,
                    lease,
                    stale_after: None,
                }
            }
            Effect::Write {
                id,
                why:
                    WriteWhy::Suspect {
                        owner_lease,
                        stale_after,
                    },
                lease,
            } => {
                let key = self.keys.vip_suspect(&id, &host);
                let record = SuspectRecord { lease: owner_lease };
                let value = self.sign(&key, lease, &record)?;
                Write::Put {
                    key,
                    value,
                    lease,
                    stale_after: Some(std::time::Instant::now() + stale_after),
                }
            }
            Effect::DeleteState { id } => Write::Delete {
                key: self.keys.vip_state(&id, &host),
            },
            Effect::Withdraw { id } => Write::Delete {
                key: self.keys.vip_suspect(&id, &host),
            },
            _ => return None,
        };
        // One writer, in order: a later write never loses to an earlier one.
        let _ = self.writes.send(write);
        None
    }

    /// The MAC of interface `ifname`, read now (not cached: the MAC an
    /// owner key publishes must be the one the VIP will answer from).
    async fn mac_of(&self, ifname: Option<&str>) -> Option<MacAddr> {
        self.nl
            .link_by_name(ifname?)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.mac)
    }

    /// Creates our owner key if nobody has it.
    async fn contend(
        &mut self,
        id: &str,
        lease: i64,
        ifname: Option<String>,
        ttl: Duration,
    ) -> Outcome {
        let mac = self.mac_of(ifname.as_deref()).await;
        let host = self.core.settings().hostname.clone();
        let signer = (&self.keys, &self.secrets);
        match election::contend(&self.client, signer, id, (host.as_str(), mac), lease, ttl).await {
            Contention::Won => Outcome::Won,
            Contention::StillOurs => Outcome::StillOurs,
            Contention::Lost => Outcome::Lost,
            Contention::Failed => Outcome::Failed,
        }
    }

    /// Gives our owner key up: to `successor` (signed for it, on its
    /// lease) if there is one, else deleted.
    async fn release(
        &mut self,
        id: &str,
        lease: i64,
        successor: Option<super::Successor>,
        ttl: Duration,
    ) {
        let key = self.keys.vip_owner(id);
        let handover = successor.and_then(|s| {
            let record = OwnerRecord {
                host: s.host.clone(),
                mac: None,
            };
            Some(election::Handover {
                value: self.sign(&key, s.lease, &record)?,
                host: s.host,
                lease: s.lease,
            })
        });
        election::release(&self.client, &self.keys, id, lease, handover, ttl).await;
    }

    /// Takes the key of an owner a quorum suspects (over for us, when the
    /// core says so).
    async fn revoke(&mut self, effect: Effect, ttl: Duration) -> Input {
        let Effect::Revoke {
            id,
            owner,
            lease,
            suspects,
            takeover,
        } = effect
        else {
            unreachable!("only revocations come here")
        };
        let ours = match takeover {
            Some((my_lease, ifname)) => self.own_key(&id, my_lease, ifname).await,
            None => None,
        };
        let took_over = ours.is_some();
        let deleted = election::revoke(&self.client, &self.keys, &id, lease, ours, ttl).await;
        if deleted {
            warn!(
                vip = %id,
                owner = %owner,
                lease = format!("{lease:x}"),
                ?suspects,
                took_over,
                "owner unreachable in the data plane (suspect quorum): owner key taken from it, revoking its lease"
            );
        }
        Input::Revoked {
            id,
            deleted,
            took_over: deleted && took_over,
        }
    }

    /// Our owner key for `id` on `lease`, signed, with the MAC of
    /// `ifname`: its value and the lease, for a takeover.
    async fn own_key(
        &mut self,
        id: &str,
        lease: i64,
        ifname: Option<String>,
    ) -> Option<(Vec<u8>, i64)> {
        let mac = self.mac_of(ifname.as_deref()).await;
        let record = OwnerRecord {
            host: self.core.settings().hostname.clone(),
            mac,
        };
        let key = self.keys.vip_owner(id);
        Some((self.sign(&key, lease, &record)?, lease))
    }

    /// Puts the MAC of `ifname` into our owner key.
    async fn publish_mac(&mut self, id: &str, lease: i64, ifname: &str, ttl: Duration) {
        let mac = self.mac_of(Some(ifname)).await;
        let key = self.keys.vip_owner(id);
        let record = OwnerRecord {
            host: self.core.settings().hostname.clone(),
            mac,
        };
        if let (Some(_), Some(value)) = (mac, self.sign(&key, lease, &record)) {
            election::publish(&self.client, &self.keys, id, lease, value, ttl).await;
        }
    }

    /// Signs a coordination key's value for `key` on `lease` (`None`, and
    /// logged, if it cannot be: nothing is written then).
    fn sign<T: crate::registry::record::Record>(
        &self,
        key: &str,
        lease: i64,
        record: &T,
    ) -> Option<Vec<u8>> {
        seal(&self.secrets, key, lease, unix_now(), record)
            .map_err(|e| warn!(key, error = %e, "signing a coordination key failed"))
            .ok()
    }

    async fn bind(&mut self, id: String, cidr: crate::registry::Cidr, ifname: String) -> Input {
        let t0 = std::time::Instant::now();
        let link = match self.nl.link_by_name(&ifname).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                warn!(vip = %id, interface = %ifname, "interface does not exist");
                return Input::BindFailed {
                    id,
                    cause: "interface missing",
                };
            }
            Err(e) => {
                warn!(vip = %id, error = %e, "reading links failed");
                return Input::BindFailed {
                    id,
                    cause: "netlink error",
                };
            }
        };
        // Recorded before it is added, having been seen absent: a crash
        // right after the add must not leave our address unknown to the
        // next run (see `ledger`).
        let ours = self.ledger.added(&ifname, cidr);
        if !ours {
            match self.nl.addresses().await {
                Ok(present)
                    if present.iter().any(|a| {
                        a.ifindex == link.index
                            && a.addr == cidr.addr
                            && a.prefix_len == cidr.prefix_len
                    }) =>
                {
                    return self.refuse_foreign(id, &ifname);
                }
                Ok(_) => self.ledger.add(&ifname, cidr),
                Err(e) => {
                    warn!(vip = %id, error = %e, "reading addresses failed");
                    return Input::BindFailed {
                        id,
                        cause: "netlink error",
                    };
                }
            }
        }
        let result = self
            .nl
            .add_address(link.index, &ifname, cidr.addr, cidr.prefix_len)
            .await;
        if !ours && !matches!(result, Ok(true)) {
            self.ledger.remove(&ifname, cidr);
        }
        match result {
            // On the host already, and not put there by this agent (the
            // host's own address, or an operator's, added since the check
            // above): never taken over.
            Ok(false) if !ours => self.refuse_foreign(id, &ifname),
            Ok(added) => {
                info!(vip = %id, interface = %ifname, new = added, took_us = t0.elapsed().as_micros(), "vip bound");
                let binding = Binding {
                    ifindex: link.index,
                    ifname,
                    mac: link.mac.unwrap_or_default(),
                };
                Input::Bound { id, binding, added }
            }
            Err(e) => {
                warn!(vip = %id, error = %e, "binding failed");
                Input::BindFailed {
                    id,
                    cause: "bind failed",
                }
            }
        }
    }

    /// Refuses to bind a VIP whose address is on the host already and was
    /// not added by this agent.
    fn refuse_foreign(&self, id: String, ifname: &str) -> Input {
        self.status
            .foreign_addresses
            .fetch_add(1, Ordering::Relaxed);
        warn!(vip = %id, interface = %ifname, "the VIP's address is already on this host and linkmesh did not add it: refusing to take it over");
        Input::BindFailed {
            id,
            cause: "the address is on the host already",
        }
    }

    /// Deletes a VIP's address from where it was bound, or else from its
    /// interface (after a restart, whatever is there).
    async fn remove_address(
        &mut self,
        id: &str,
        cidr: crate::registry::Cidr,
        at: Option<Binding>,
        ifname: Option<String>,
        leftover_of: Option<&str>,
    ) {
        let (index, ifname) = match (at, ifname) {
            (Some(b), _) => (b.ifindex, b.ifname),
            (None, Some(name)) => match self.nl.link_by_name(&name).await {
                Ok(Some(link)) => (link.index, name),
                _ => return,
            },
            (None, None) => return,
        };
        if !self.ledger.added(&ifname, cidr) {
            // Not ours (the host's own address, an operator's, or gone
            // already): left alone.
            debug!(vip = %id, interface = %ifname, "not removing an address this agent did not add");
            return;
        }
        let result = self
            .nl
            .delete_address(index, &ifname, cidr.addr, cidr.prefix_len)
            .await;
        if result.is_ok() {
            self.ledger.remove(&ifname, cidr);
        }
        match (leftover_of, result) {
            (None, Ok(_)) => info!(vip = %id, interface = %ifname, "vip unbound"),
            (None, Err(e)) => warn!(vip = %id, error = %e, "unbinding failed"),
            (Some(owner), Ok(true)) => warn!(
                vip = %id,
                interface = %ifname,
                owner,
                "removed the address an earlier run left bound: another host owns it"
            ),
            (Some(_), Err(e)) => {
                warn!(vip = %id, error = %e, "removing a leftover address failed");
            }
            (Some(_), Ok(false)) => {}
        }
    }

    /// Sends one ARP probe; whether it went out.
    async fn send_probe(&mut self, ifname: &str, dst: Option<MacAddr>, vip: Ipv4Addr) -> bool {
        if !self.probers.contains_key(ifname) {
            let Some(mac) = self
                .nl
                .link_by_name(ifname)
                .await
                .ok()
                .flatten()
                .and_then(|l| l.mac)
            else {
                return false;
            };
            match RawSender::open(ifname) {
                Ok(s) => {
                    self.probers.insert(ifname.to_owned(), (s, mac));
                }
                Err(e) => {
                    debug!(interface = %ifname, error = %e, "cannot open a probe socket");
                    return false;
                }
            }
        }
        let Some((sender, mac)) = self.probers.get_mut(ifname) else {
            return false;
        };
        match sender.send(&super::frames::arp_probe(*mac, dst, vip)) {
            Ok(()) => true,
            Err(e) => {
                debug!(interface = %ifname, error = %e, "sending a probe failed");
                false
            }
        }
    }
}

/// Puts `task` (or nothing) in `id`'s place, stopping what ran there.
fn replace_task(
    tasks: &mut std::collections::BTreeMap<String, JoinHandle<()>>,
    id: String,
    task: Option<JoinHandle<()>>,
) {
    let old = match task {
        Some(task) => tasks.insert(id, task),
        None => tasks.remove(&id),
    };
    if let Some(old) = old {
        old.abort();
    }
}

fn spawn_checker(
    id: &str,
    checks: Vec<Check>,
    s: &Settings,
    reports: mpsc::Sender<Report>,
    status: StatusMap,
) -> JoinHandle<()> {
    let id = id.to_owned();
    let (interval, timeout) = (s.health_interval, s.health_timeout);
    let scripts = s.scripts.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let mut ok = true;
            let mut detail = String::from("no checks");
            for check in &checks {
                match super::health::run(check, timeout, &scripts).await {
                    Ok(took) => {
                        status.health_check_seconds.observe(took.as_secs_f64());
                        detail = format!("ok in {took:?}");
                    }
                    Err(e) => {
                        ok = false;
                        detail = e.to_string();
                        break;
                    }
                }
            }
            if reports
                .send(Report::Health(id.clone(), ok, detail))
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

/// Announces `ip` `count` times, `interval` apart, then every `refresh`
/// (if set) until aborted. An async task, so
/// aborting it on unbind stops it between sends: a host must never
/// announce an address it gave up (a blocking loop could not be
/// cancelled, and kept pointing clients at the old owner after a graceful
/// handover).
fn spawn_announcer(
    id: &str,
    ifname: &str,
    mac: MacAddr,
    ip: std::net::IpAddr,
    (count, interval, refresh): (u32, Duration, Option<Duration>),
    sent: Arc<AtomicU64>,
) -> JoinHandle<()> {
    let (id, ifname) = (id.to_owned(), ifname.to_owned());
    tokio::spawn(async move {
        // Opening an AF_PACKET socket and sending on it do not block for long.
        let mut sender = match RawSender::open(&ifname) {
            Ok(s) => s,
            Err(e) => {
                warn!(vip = %id, error = %e, "cannot announce");
                return;
            }
        };
        let frames = super::frames::announcement(mac, ip);
        let mut announce = || match frames.iter().try_for_each(|f| sender.send(f)) {
            Ok(()) => {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => warn!(vip = %id, error = %e, "announcing failed"),
        };
        for i in 0..count {
            announce();
            if i + 1 < count {
                tokio::time::sleep(interval).await;
            }
        }
        debug!(vip = %id, count, "announcements sent");
        let Some(refresh) = refresh else { return };
        // After the burst's last send, and then every `refresh`.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            announce();
        }
    })
}
