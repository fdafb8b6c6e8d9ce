//! Churn (issue #7, scenario 5): one real agent (h1, segment `blue`) and
//! 200 synthetic peers that join and leave at 50 changes per second for
//! 60 s.
//!
//! The synthetic peers are host records the test signs itself, with the
//! agent's secret, under one lease it grants (the lease id is part of the
//! signature). Their underlay addresses are inside the lab's own /24
//! (198.18.S.20 + i), so whatever the agent sends them (heartbeats, ARP)
//! stays in the lab's namespaces.
//!
//! A thread inside h1's namespace timestamps the kernel's neighbour
//! notifications for zero-MAC entries on `blue`. Each change is matched with
//! the first notification for its peer and direction after the request was
//! sent (the agent's event can come before the put's response does) and
//! before the peer's next change in that direction; its lag runs from the
//! put or delete returning (0 when the event came first). A join and leave
//! of one peer in quick succession may legitimately cancel out, see
//! [`FLIP_WINDOW`].
//!
//! Asserted: at the end the FDB of h1's `blue` holds exactly the synthetic
//! peers registered in etcd, the agent is still running, and at least 99%
//! of the changes the kernel was expected to see were seen. Reported only
//! (`churn figure: ...` lines): the agent's peak RSS, RSS every 10 s and
//! CPU (idle before the churn, and over it), and the lag percentiles.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use linkmesh_tests::agent::{self, Agent, admin, peers, wait_until};
use linkmesh_tests::etcd::Etcd;
use linkmesh_tests::fdb_monitor::{FdbEvent, Monitor, Seen};
use linkmesh_tests::lab::Lab;
use linkmesh_tests::percentile;
use linkmesh_tests::rng::Rng;
use linkmesh_tests::synthetic::{SyntheticPeers, peer_name};
use linkmesh_tests::usage::Usage;
use linkmesh_tests::{kernel, require_root};

use linkmesh_tests::SECRET;
/// Synthetic peers, `syn-000` ... `syn-199`.
const PEERS: usize = 200;
/// Joined before the churn starts.
const INITIAL: usize = 100;
/// Changes (one put or delete of one peer's key) per second.
const RATE: u32 = 50;
const RUN: Duration = Duration::from_mins(1);
/// Before the churn, the agent's idle CPU is measured over this.
const IDLE: Duration = Duration::from_secs(5);
/// After the last change, the FDB must match etcd within this.
const SETTLE: Duration = Duration::from_secs(5);
/// Peer `i` is 198.18.S.(FIRST_HOST + i): above the lab's hosts (.1),
/// below its gateway (.254).
const FIRST_HOST: u8 = 20;
const _: () = assert!(FIRST_HOST as usize + PEERS < 254);
/// Two consecutive changes of one peer this close together (from the first
/// returning to the second being sent) may cancel out before the agent acts
/// on the first: it reconciles the registry's latest state, not every step
/// to it, so a join and leave that both arrive while it is busy (or in one
/// watch response) make no kernel change at all. Such a pair, when neither
/// change has a kernel event, is counted as cancelled and left out of the
/// match rate; everything else must have its event.
const FLIP_WINDOW: Duration = Duration::from_millis(250);
/// Of the changes the kernel was expected to see, at least this share must
/// be seen.
const MIN_MATCH_RATE: f64 = 0.99;

/// Peer `i`'s underlay address in lab slot `slot`.
fn peer_addr(slot: u8, i: usize) -> IpAddr {
    linkmesh_tests::synthetic::address(slot, FIRST_HOST, i)
}

/// One put (join) or delete (leave) of one peer's key.
#[derive(Clone, Copy, Debug)]
struct Change {
    peer: usize,
    join: bool,
    /// Just before the request was sent.
    issued: Instant,
    /// When the put or delete returned.
    acked: Instant,
}

/// Nearest-rank percentile of a sorted list.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[expect(clippy::cast_precision_loss, reason = "a ratio for display")]
fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

#[expect(clippy::cast_precision_loss, reason = "a size for display")]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// How the changes and the kernel's events line up.
#[derive(Debug, Default)]
struct Matching {
    /// Per change, the time of its kernel event.
    event: Vec<Option<Instant>>,
    /// Per change, whether it was cancelled by the next one (see
    /// [`FLIP_WINDOW`]).
    cancelled: Vec<bool>,
}

impl Matching {
    /// Matches each change with the first event for the same peer and
    /// direction after it was sent and before the peer's next change in the
    /// same direction was sent (so no event serves two changes, and a late
    /// event of a later change is never taken for an earlier one's).
    fn new(changes: &[Change], events: &[FdbEvent], slot: u8) -> Self {
        let mut times: BTreeMap<(IpAddr, bool), Vec<Instant>> = BTreeMap::new();
        for e in events {
            times.entry((e.dst, e.added)).or_default().push(e.at);
        }
        let mut by_peer: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (k, c) in changes.iter().enumerate() {
            by_peer.entry(c.peer).or_default().push(k);
        }
        let mut out = Self {
            event: vec![None; changes.len()],
            cancelled: vec![false; changes.len()],
        };
        for ks in by_peer.values() {
            for (j, &k) in ks.iter().enumerate() {
                let c = &changes[k];
                // Changes of one peer alternate, so the next one in the same
                // direction is two further on.
                let until = ks.get(j + 2).map(|&n| changes[n].issued);
                let Some(list) = times.get(&(peer_addr(slot, c.peer), c.join)) else {
                    continue;
                };
                let first = list.partition_point(|t| *t < c.issued);
                out.event[k] = list
                    .get(first)
                    .copied()
                    .filter(|t| until.is_none_or(|u| *t < u));
            }
            let mut j = 0;
            while j + 1 < ks.len() {
                let (a, b) = (ks[j], ks[j + 1]);
                let quick = changes[b].issued < changes[a].acked + FLIP_WINDOW;
                if quick && out.event[a].is_none() && out.event[b].is_none() {
                    out.cancelled[a] = true;
                    out.cancelled[b] = true;
                    j += 2;
                } else {
                    j += 1;
                }
            }
        }
        out
    }

    fn matched(&self) -> usize {
        self.event.iter().filter(|e| e.is_some()).count()
    }

    fn cancelled(&self) -> usize {
        self.cancelled.iter().filter(|c| **c).count()
    }

    /// Changes the kernel was expected to show.
    fn expected(&self) -> usize {
        self.event.len() - self.cancelled()
    }

    /// Matched changes per expected change.
    fn rate(&self) -> f64 {
        ratio(self.matched(), self.expected())
    }

    /// Sorted lags from each matched change returning to its event; an
    /// event that came before the request returned counts as 0.
    fn lags(&self, changes: &[Change]) -> Vec<Duration> {
        let mut lags: Vec<Duration> = changes
            .iter()
            .zip(&self.event)
            .filter_map(|(c, at)| Some(at.as_ref()?.saturating_duration_since(c.acked)))
            .collect();
        lags.sort();
        lags
    }
}

/// Sends `count` changes, one every `1 / RATE` s on a fixed schedule
/// (catching up at once when a request took longer), each on a peer picked
/// by `rng`: a joined peer leaves, another joins. Samples the agent's
/// memory every 10 s.
async fn churn(
    registry: &mut SyntheticPeers,
    rng: &mut Rng,
    joined: &mut BTreeSet<usize>,
    count: u32,
    agent_pid: u32,
) -> (Vec<Change>, Vec<Usage>) {
    let period = Duration::from_secs(1) / RATE;
    let start = tokio::time::Instant::now();
    let mut changes = Vec::new();
    let mut samples = Vec::new();
    for k in 0..count {
        tokio::time::sleep_until(start + period * k).await;
        if k % (10 * RATE) == 0 {
            samples.push(Usage::of(agent_pid));
        }
        let peer = rng.index(PEERS);
        let join = !joined.contains(&peer);
        let issued = Instant::now();
        if join {
            registry.join(peer).await;
            joined.insert(peer);
        } else {
            registry.leave(peer).await;
            joined.remove(&peer);
        }
        changes.push(Change {
            peer,
            join,
            issued,
            acked: Instant::now(),
        });
    }
    samples.push(Usage::of(agent_pid));
    (changes, samples)
}

/// Warnings and errors in an agent log, each distinct message once with a
/// count (timestamps and fields stripped).
fn complaints(log: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
    {
        let message = line
            .split_once(": ")
            .map_or(line, |(_, rest)| rest)
            .chars()
            .take(160)
            .collect::<String>();
        *out.entry(message).or_default() += 1;
    }
    out
}

/// Everything one run measured.
struct Outcome {
    slot: u8,
    changes: Vec<Change>,
    /// When the first change was sent.
    started: Instant,
    /// From the first change being sent to the last one returning.
    elapsed: Duration,
    /// The agent's CPU share of one core while idle (registered peers,
    /// no changes) for [`IDLE`] before the churn, and during the churn.
    idle_cpu: f64,
    churn_cpu: f64,
    /// The agent's usage every 10 s from the start of the churn, and after
    /// the settle.
    usage: Vec<Usage>,
    /// The synthetic peers in etcd at the end.
    registered: Vec<IpAddr>,
    /// How long after the last change the FDB matched etcd, if it did.
    settled: Option<Duration>,
    /// h1's blue peers after the settle.
    programmed: Option<Vec<IpAddr>>,
    seen: Seen,
    log: String,
    alive: bool,
}

/// Starts the agent on `INITIAL` registered peers, churns, settles, and
/// collects what happened.
fn run(lab: &Lab, etcd: &Etcd) -> Outcome {
    let secret = agent::secret_file(lab, "secret", &[SECRET]);
    let _ = admin(
        &etcd.endpoint(),
        &secret,
        &["segment", "add", "blue", "--vni", "100"],
    );
    let slot = lab.slot();
    let ns = lab.host(1).netns.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime");
    let mut rng = Rng::from_env("LINKMESH_CHURN_SEED", "churn");
    let mut registry = rt.block_on(SyntheticPeers::connect(
        &etcd.endpoint(),
        slot,
        SECRET,
        FIRST_HOST,
    ));
    let addresses = |set: &BTreeSet<usize>| -> Vec<IpAddr> {
        set.iter().map(|&i| peer_addr(slot, i)).collect()
    };

    // INITIAL peers picked at random, registered before the agent starts.
    let mut joined = BTreeSet::new();
    while joined.len() < INITIAL {
        joined.insert(rng.index(PEERS));
    }
    rt.block_on(async {
        for &i in &joined {
            registry.join(i).await;
        }
    });
    let agent = Agent::new(lab, 1, &etcd.endpoint(), &secret)
        .segments(&["blue"])
        .start();
    let initial = addresses(&joined);
    let synced = wait_until(Duration::from_secs(30), || {
        peers(&ns, "blue").as_deref() == Some(&initial[..])
    });
    assert!(
        synced.is_some(),
        "h1 programmed the {INITIAL} initial peers (has {:?}):\n{}",
        peers(&ns, "blue").map(|p| p.len()),
        agent.log()
    );
    let blue = kernel::link(&ns, "blue").expect("h1 has blue");

    let idle_start = (Usage::of(agent.pid()), Instant::now());
    std::thread::sleep(IDLE);
    let idle_cpu = Usage::of(agent.pid()).cpu_share_since(&idle_start.0, idle_start.1.elapsed());

    let monitor = Monitor::start(&ns, blue.index);
    let started = Instant::now();
    let count = RATE * u32::try_from(RUN.as_secs()).expect("a short run");
    let (changes, mut usage) = rt.block_on(churn(
        &mut registry,
        &mut rng,
        &mut joined,
        count,
        agent.pid(),
    ));
    let elapsed = started.elapsed();
    let churn_cpu = usage[usage.len() - 1].cpu_share_since(&usage[0], elapsed);

    let registered: Vec<IpAddr> = rt.block_on(registry.registered()).into_iter().collect();
    assert_eq!(
        registered,
        addresses(&joined),
        "etcd holds the peers the test left joined"
    );
    let settled = wait_until(SETTLE, || {
        peers(&ns, "blue").as_deref() == Some(&registered[..])
    });
    let seen = monitor.finish();
    usage.push(Usage::of(agent.pid()));
    Outcome {
        slot,
        changes,
        started,
        elapsed,
        idle_cpu,
        churn_cpu,
        usage,
        registered,
        settled,
        programmed: peers(&ns, "blue"),
        seen,
        log: agent.log(),
        alive: agent.is_running(),
    }
}

/// Prints the `churn figure:` lines.
fn report(o: &Outcome, matching: &Matching) {
    let first = o.usage[0];
    let last = o.usage[o.usage.len() - 1];
    eprintln!(
        "churn figure: agent peak RSS (VmHWM) {:.1} MiB at the end, {:.1} MiB when the churn started",
        mib(last.peak_kib),
        mib(first.peak_kib)
    );
    eprintln!(
        "churn figure: agent RSS (VmRSS) every 10 s of the churn, then after the settle: {} MiB",
        o.usage
            .iter()
            .map(|u| format!("{:.1}", mib(u.rss_kib)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!(
        "churn figure: agent CPU {:.1}% of one core over the {:.1} s churn ({:.1}% idle with \
         {INITIAL} peers over {:.0} s before it)",
        100.0 * o.churn_cpu,
        o.elapsed.as_secs_f64(),
        100.0 * o.idle_cpu,
        IDLE.as_secs_f64(),
    );
    let mut round_trips: Vec<Duration> = o.changes.iter().map(|c| c.acked - c.issued).collect();
    round_trips.sort();
    let joins = o.changes.iter().filter(|c| c.join).count();
    eprintln!(
        "churn figure: {} changes ({joins} joins, {} leaves) in {:.1} s; etcd put/delete round trip p50 {}, p99 {}, max {}",
        o.changes.len(),
        o.changes.len() - joins,
        o.elapsed.as_secs_f64(),
        ms(percentile(&round_trips, 0.5)),
        ms(percentile(&round_trips, 0.99)),
        ms(round_trips.last().copied().unwrap_or_default()),
    );
    let lags = matching.lags(&o.changes);
    let early = o
        .changes
        .iter()
        .zip(&matching.event)
        .filter(|(c, at)| at.is_some_and(|at| at < c.acked))
        .count();
    eprintln!(
        "churn figure: lag from a put/delete returning to its kernel event: p50 {}, p99 {}, max {} \
         over {} matched changes ({early} events came before the request returned: lag 0)",
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.99)),
        ms(lags.last().copied().unwrap_or_default()),
        lags.len(),
    );
    eprintln!(
        "churn figure: matched {} of {} changes; {} cancelled in quick pairs (the peer's next \
         change within {}, no event for either); match rate {:.2}% of {} expected",
        lags.len(),
        o.changes.len(),
        matching.cancelled(),
        ms(FLIP_WINDOW),
        100.0 * matching.rate(),
        matching.expected(),
    );
    eprintln!(
        "churn figure: {} zero-MAC FDB events on blue during the run, {} not matched to a change; \
         {} monitor overruns; FDB equal to etcd {} after the last change returned",
        o.seen.events.len(),
        o.seen.events.len().saturating_sub(lags.len()),
        o.seen.overruns,
        o.settled
            .map_or_else(|| format!("not within {SETTLE:?}"), ms),
    );
    let passes = o
        .log
        .lines()
        .filter(|l| l.contains("mesh reconciled"))
        .count();
    eprintln!("churn figure: {passes} 'mesh reconciled' lines in the agent log");
    for (message, count) in complaints(&o.log) {
        eprintln!("churn: agent log: {count} x {message}");
    }
}

#[test]
fn fdb_follows_200_peers_churning_at_50_changes_per_second() {
    require_root!();
    let lab = Lab::new(1);
    let etcd = Etcd::start_on(IpAddr::V4(lab.gateway()));
    let o = run(&lab, &etcd);
    let matching = Matching::new(&o.changes, &o.seen.events, o.slot);
    report(&o, &matching);

    assert!(o.alive, "the agent survived the churn:\n{}", o.log);
    let programmed = o.programmed.clone().unwrap_or_default();
    assert!(
        o.settled.is_some(),
        "within {SETTLE:?} of the last change, h1's blue FDB equals the {} peers in etcd; \
         missing {:?}, extra {:?}",
        o.registered.len(),
        o.registered
            .iter()
            .filter(|a| !programmed.contains(a))
            .collect::<Vec<_>>(),
        programmed
            .iter()
            .filter(|a| !o.registered.contains(a))
            .collect::<Vec<_>>(),
    );
    let missed: Vec<String> = o
        .changes
        .iter()
        .zip(matching.event.iter().zip(&matching.cancelled))
        .filter(|(_, (event, cancelled))| event.is_none() && !**cancelled)
        .take(20)
        .map(|(c, _)| {
            let what = if c.join { "join" } else { "leave" };
            format!(
                "{what} {} at +{}",
                peer_name(c.peer),
                ms(c.issued - o.started)
            )
        })
        .collect();
    assert!(
        matching.rate() >= MIN_MATCH_RATE,
        "only {:.2}% of the {} expected changes reached the kernel (at least {:.0}% required; \
         the monitor overran {} times); first misses: {missed:?}",
        100.0 * matching.rate(),
        matching.expected(),
        100.0 * MIN_MATCH_RATE,
        o.seen.overruns
    );
}

#[test]
fn each_change_gets_its_own_event_and_quick_pairs_may_cancel() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let change = |peer, join, sent: u64| Change {
        peer,
        join,
        issued: at(sent),
        acked: at(sent + 2),
    };
    let event = |peer, added, ms: u64| FdbEvent {
        dst: peer_addr(1, peer),
        added,
        at: at(ms),
    };
    let changes = [
        // Peer 0 joins and leaves 100 ms apart: both reach the kernel.
        change(0, true, 0),
        change(0, false, 100),
        // Peer 1 joins and leaves 20 ms apart: the agent saw only the end
        // state, so neither has an event.
        change(1, true, 200),
        change(1, false, 220),
        // Peer 2 joins, leaves 700 ms later and joins again; only the
        // second join shows, late. It must not be taken for the first
        // join's, and the first two are misses, not a cancelled pair.
        change(2, true, 300),
        change(2, false, 1000),
        change(2, true, 2000),
    ];
    let events = [
        event(0, true, 5),
        event(0, false, 104),
        event(2, true, 2050),
    ];
    let m = Matching::new(&changes, &events, 1);
    assert_eq!(
        m.event,
        vec![
            Some(at(5)),
            Some(at(104)),
            None,
            None,
            None,
            None,
            Some(at(2050))
        ]
    );
    assert_eq!(
        m.cancelled,
        vec![false, false, true, true, false, false, false]
    );
    assert_eq!((m.matched(), m.expected()), (3, 5));
    let lags = m.lags(&changes);
    assert_eq!(
        lags,
        [2, 3, 48].map(Duration::from_millis).to_vec(),
        "lags from each request's return"
    );
}
