//! Floating IPs. The decisions are pure ([`core`], [`probe`], [`state`],
//! [`fast`]): inputs in, [`Effect`]s out. [`run`] is the one place that
//! carries them out, on etcd, the kernel and the eBPF watcher, and feeds
//! the results back. [`health`] runs the health checks, [`frames`] builds
//! the announcements.

pub mod core;
mod delivery;
mod effects;
pub mod fast;
pub mod frames;
mod group;
mod handover;
pub mod health;
mod holding;
mod http1;
pub mod ledger;
pub mod notify;
mod preempt;
mod probe;
mod quorum;
pub mod run;
#[cfg(test)]
mod scenarios;
pub mod script;
#[cfg(test)]
mod sim;
pub mod state;
pub mod status;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

pub use self::core::{Binding, Core, Lease};
pub use crate::registry::Owner;
pub use fast::{FastFailover, FastSettings};
pub use run::{Services, run};
pub use state::{Event, State};
pub use status::{Shared, StatusMap, VipStatus};

use crate::addr::MacAddr;
use crate::registry::{Check, Cidr, PortMap, VipChange};

/// What a host does with its VIPs when it loses etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LossPolicy {
    /// Unbind before the lease can expire, so there are never two owners.
    Release,
    /// Keep holding the VIP through an etcd outage.
    Keep,
    /// LinK's "at least one host": after `--keepalive-retry` failures, bind.
    Claim,
}

/// A setting's value that names none of the choices.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {setting} {value:?} (one of: {choices})")]
pub struct UnknownChoice {
    pub setting: &'static str,
    pub value: String,
    pub choices: &'static str,
}

impl std::str::FromStr for LossPolicy {
    type Err = UnknownChoice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "release" => Ok(Self::Release),
            "keep" => Ok(Self::Keep),
            "claim" => Ok(Self::Claim),
            other => Err(UnknownChoice {
                setting: "etcd loss policy",
                value: other.to_owned(),
                choices: "release, keep, claim",
            }),
        }
    }
}

/// The floating-IP subsystem's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub hostname: String,
    pub default_interface: Option<String>,
    /// The ownership lease TTL (renewed every third of it).
    pub ttl: Duration,
    pub keepalive_retry: u32,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub fail_count: u32,
    /// Where `exec:` check scripts live and who runs them.
    pub scripts: script::ScriptPolicy,
    pub garp_count: u32,
    pub garp_interval: Duration,
    /// While owning, one more announcement this often after the burst
    /// (`--garp-refresh`; keepalived's `garp_master_refresh`).
    pub garp_refresh: Option<Duration>,
    pub loss_policy: LossPolicy,
    /// How long non-preferred hosts wait before contending.
    pub contend_delay: Duration,
    /// After `failover`, how long this host stays out of that VIP's election.
    pub cooldown: Duration,
    /// Where the lease id is kept, so a restart within the TTL keeps the VIPs.
    pub state_dir: Option<PathBuf>,
    /// How often held addresses are checked against the kernel, besides the
    /// address notifications (which can be lost when the socket overflows).
    pub resync: Duration,
    pub fast: FastSettings,
    /// Hooks told of every state transition.
    pub notify: notify::NotifySettings,
    /// The kernel routing table routed VIPs go in (`--route-table`; none:
    /// this host does not hold routed VIPs).
    pub route_table: Option<u32>,
}

/// How a contention went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Won,
    /// The key is ours, on our lease, from before a fence.
    StillOurs,
    Lost,
    /// etcd did not answer (logged where it happened).
    Failed,
}

/// One thing that happened, for [`Core::step`].
#[derive(Clone, Debug)]
pub enum Input {
    /// A change under `<prefix>/vips/`, verified by the registry.
    Registry(VipChange),
    Health {
        id: String,
        ok: bool,
        detail: String,
    },
    /// `vip_watch` saw another MAC claim a VIP we hold.
    Conflict {
        ip: Ipv4Addr,
        foreign_mac: MacAddr,
        our_mac: MacAddr,
    },
    WatcherReady,
    Lease(Lease),
    /// The timers: contention due, the fencing deadline.
    Tick,
    ProbeTick,
    /// Results of effects.
    Bound {
        id: String,
        binding: Binding,
        /// Whether the address was added (not there already).
        added: bool,
    },
    BindFailed {
        id: String,
        cause: &'static str,
    },
    Contended {
        id: String,
        lease: i64,
        outcome: Outcome,
    },
    Revoked {
        id: String,
        deleted: bool,
        /// The key was taken over for us in the same txn (see
        /// `Effect::Revoke::takeover`).
        took_over: bool,
    },
    ProbeSent {
        id: String,
    },
    /// The address of a held VIP is not in the kernel any more.
    AddressGone {
        id: String,
    },
    /// The agent stops: hand everything over.
    Stop,
    /// The registered hosts' underlay addresses (a VIP equal to one is
    /// never taken).
    Hosts(std::collections::BTreeSet<IpAddr>),
    /// Interface `ifname` has carrier (up, with its link) or not.
    Carrier {
        ifname: String,
        up: bool,
    },
}

/// The standby a releasing owner hands its VIP to, and the lease that
/// standby's state key is on (where its owner key goes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Successor {
    pub host: String,
    pub lease: i64,
}

/// What this host's own key under a VIP says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteWhy {
    /// `state/<host>`: this host's state.
    State(State),
    /// `suspect/<host>`: the owner lease this host suspects; not worth
    /// writing after `stale_after` (a suspicion is an observation of now:
    /// written late, it could revoke an owner that came back).
    Suspect {
        owner_lease: i64,
        stale_after: Duration,
    },
}

/// Something to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The hosts taking part in VIP `id` now (empty: none), for the
    /// heartbeats' choice of partners.
    VipMembers {
        id: String,
        hosts: BTreeSet<String>,
    },
    /// Add the VIP's address on `ifname` (answered with `Bound` or
    /// `BindFailed`).
    Bind {
        id: String,
        cidr: Cidr,
        ifname: String,
    },
    /// Remove the VIP's address from where it is bound, or else from
    /// `ifname` (after a restart, whatever is there). `leftover_of`: an
    /// earlier run left it bound while that host owns the VIP.
    RemoveAddress {
        id: String,
        cidr: Cidr,
        at: Option<Binding>,
        ifname: Option<String>,
        leftover_of: Option<String>,
    },
    /// Gratuitous ARP / unsolicited NA, `count` times, then every
    /// `refresh` until stopped (replacing an announcer still running for
    /// this VIP).
    Announce {
        id: String,
        ifname: String,
        mac: MacAddr,
        ip: IpAddr,
        count: u32,
        interval: Duration,
        refresh: Option<Duration>,
    },
    StopAnnouncing {
        id: String,
    },
    /// Make the port maps of the VIP at `ip` exactly `ports` (empty: none),
    /// the programs attached to `ifname`.
    MapPorts {
        id: String,
        ip: IpAddr,
        ifname: Option<String>,
        ports: Vec<PortMap>,
    },
    /// Install the routed VIP's host route in the route table.
    AddRoute {
        id: String,
        ip: IpAddr,
    },
    /// Remove the routed VIP's host route (only one linkmesh added).
    RemoveRoute {
        id: String,
        ip: IpAddr,
    },
    /// Tell the notify hooks of a state transition (the last effects of
    /// a step).
    Notify {
        id: String,
        from: State,
        to: State,
        cause: String,
    },
    /// Attach `vip_watch` to an interface (once).
    AttachWatcher {
        ifname: String,
    },
    /// Tell `vip_watch` about a VIP: held here with this MAC (`ours`), or
    /// not ours, held by the owner that published the MAC `owner`.
    SetWatched {
        ip: Ipv4Addr,
        ours: Option<MacAddr>,
        owner: Option<MacAddr>,
    },
    ForgetWatched {
        ip: Ipv4Addr,
    },
    /// (Re)start the VIP's health checks.
    StartChecks {
        id: String,
        checks: Vec<Check>,
    },
    StopChecks {
        id: String,
    },
    /// Create the owner key on our lease if nobody has it (answered with
    /// `Contended`).
    Contend {
        id: String,
        lease: i64,
        /// The VIP's interface here: the owner key publishes its MAC.
        ifname: Option<String>,
    },
    /// Delete an owner key that does not verify, if it is still the one
    /// seen at `revision`.
    ClearOwner {
        id: String,
        revision: i64,
    },
    /// Give our owner key up (and delete a failover request), guarded by
    /// our lease: to `successor` (the key rewritten for it, on its lease,
    /// so it binds on the watch event without contending), or else
    /// deleted.
    Release {
        id: String,
        lease: i64,
        successor: Option<Successor>,
    },
    /// Put the MAC we answer from into our owner key (one handed to us has
    /// none), guarded by our lease.
    PublishMac {
        id: String,
        lease: i64,
        ifname: String,
    },
    /// A suspect quorum: delete the owner key guarded by its lease, then
    /// revoke that lease (answered with `Revoked`).
    Revoke {
        id: String,
        owner: String,
        lease: i64,
        suspects: Vec<String>,
        /// Take the key over in the same txn, on this lease of ours, with
        /// the MAC of this interface (when this host may hold the VIP now):
        /// no contention after the revocation.
        takeover: Option<(i64, Option<String>)>,
    },
    /// Write this host's own key under a VIP, on `lease`.
    Write {
        id: String,
        why: WriteWhy,
        lease: i64,
    },
    DeleteState {
        id: String,
    },
    /// Delete this host's suspect key.
    Withdraw {
        id: String,
    },
    /// One ARP probe for `vip` (answered with `ProbeSent` if it went out).
    Probe {
        id: String,
        ifname: String,
        dst: Option<MacAddr>,
        vip: Ipv4Addr,
    },
}

/// What this host sees of the data plane, read when a probe step needs it.
pub trait Observe {
    /// The last host seen answering for `vip` while we did not hold it,
    /// and when (monotonic).
    fn seen(&self, vip: Ipv4Addr) -> Option<(MacAddr, Duration)>;
    /// Whether any peer other than `owner` was heard after `after`
    /// (monotonic): the proof that our own link worked at a time the owner
    /// should have answered.
    fn other_peer_heard_after(&self, owner: &str, after: Duration) -> bool;
}
