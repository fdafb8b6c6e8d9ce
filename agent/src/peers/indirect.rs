//! Indirect probes, SWIM's ping-req: before a silent peer is called dead,
//! up to [`HELPERS`] other peers this host hears are asked to reach it. A
//! helper pings the target, the target acknowledges to the helper, and the
//! helper relays the answer back. A peer whose heartbeats stopped reaching
//! us (one lossy path) but that others reach is then shown alive, on
//! `indirect` evidence, and not dead.
//!
//! Every message is signed with the fleet's secret (HMAC-SHA256 over the
//! whole body), so nobody without it can vouch for a dead peer; an answer
//! counts only for a request this host has open (its random nonce), for a
//! second. Pings and acknowledgements made for others are capped at
//! [`FORWARD_BUDGET`] a second, so a replayed request cannot turn a host
//! into an amplifier. The bookkeeping is pure; the heartbeat task moves
//! the messages.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::registry::Secrets;

/// Marks a probe message (heartbeats carry `LMHB`; the eBPF program lets
/// these through to the heartbeat socket).
pub const MAGIC: [u8; 4] = *b"LMIP";
const VERSION: u8 = 1;
/// The signed part: magic, version, kind, two zero bytes, nonce, origin,
/// target.
const BODY: usize = 24;
const SIGNATURE: usize = 32;
/// A probe message's length.
pub const LEN: usize = BODY + SIGNATURE;

/// Helpers asked about one silent peer.
pub const HELPERS: usize = 3;
/// An answer must come back within this long.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// An indirect answer stands for this long: past two rounds, and short,
/// since a host that dies while reached only indirectly is seen dead this
/// long after its last answer.
pub const FRESH_FOR: Duration = Duration::from_millis(500);
/// A silent peer is asked about this often, and half as often after each
/// unanswered round, down to once every [`MAX_ROUND_GAP`].
const FIRST_ROUND_GAP: Duration = Duration::from_millis(200);
const MAX_ROUND_GAP: Duration = Duration::from_secs(8);
/// Pings and acknowledgements sent for others, at most, per second.
pub const FORWARD_BUDGET: u32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Origin to helper: please reach the target.
    Request = 1,
    /// Helper to target.
    Ping = 2,
    /// Target to helper.
    Ack = 3,
    /// Helper to origin: the target answered.
    Relay = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub nonce: u64,
    pub origin: Ipv4Addr,
    pub target: Ipv4Addr,
}

/// Why a probe message was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    Malformed,
    BadSignature,
}

impl Message {
    fn body(&self) -> [u8; BODY] {
        let mut b = [0u8; BODY];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind as u8;
        b[8..16].copy_from_slice(&self.nonce.to_be_bytes());
        b[16..20].copy_from_slice(&self.origin.octets());
        b[20..24].copy_from_slice(&self.target.octets());
        b
    }

    /// The message, signed with the first secret.
    #[must_use]
    pub fn encode(&self, secrets: &Secrets) -> Vec<u8> {
        let body = self.body();
        let mut out = body.to_vec();
        out.extend_from_slice(&secrets.sign(&body));
        out
    }

    /// A message signed under any of the secrets.
    pub fn decode(bytes: &[u8], secrets: &Secrets) -> Result<Self, Rejected> {
        if bytes.len() != LEN || bytes[..4] != MAGIC || bytes[4] != VERSION || bytes[6..8] != [0, 0]
        {
            return Err(Rejected::Malformed);
        }
        let kind = match bytes[5] {
            1 => Kind::Request,
            2 => Kind::Ping,
            3 => Kind::Ack,
            4 => Kind::Relay,
            _ => return Err(Rejected::Malformed),
        };
        if !secrets.verify(&bytes[..BODY], &bytes[BODY..]) {
            return Err(Rejected::BadSignature);
        }
        let ip = |at: usize| Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&bytes[8..16]);
        Ok(Self {
            kind,
            nonce: u64::from_be_bytes(nonce),
            origin: ip(16),
            target: ip(20),
        })
    }
}

/// A round of questions about one silent peer.
#[derive(Clone, Copy, Debug)]
struct Round {
    next: Duration,
    gap: Duration,
    /// When the last round went out (`None`: none yet).
    asked: Option<Duration>,
}

/// The three roles' state: origin (open requests, answers, rounds), helper
/// (requests passed on), target (only the budget).
#[derive(Debug)]
pub struct Indirect {
    me: Ipv4Addr,
    /// Nonce -> (target, when asked).
    open: BTreeMap<u64, (Ipv4Addr, Duration)>,
    /// Target -> when a helper last relayed its answer.
    answered: BTreeMap<Ipv4Addr, Duration>,
    rounds: BTreeMap<Ipv4Addr, Round>,
    /// Nonce -> (origin, target, when passed on), as a helper.
    passed: BTreeMap<u64, (Ipv4Addr, Ipv4Addr, Duration)>,
    /// The current second of the forwarding budget, and what it used.
    budget: (Duration, u32),
}

impl Indirect {
    #[must_use]
    pub fn new(me: Ipv4Addr) -> Self {
        Self {
            me,
            open: BTreeMap::new(),
            answered: BTreeMap::new(),
            rounds: BTreeMap::new(),
            passed: BTreeMap::new(),
            budget: (Duration::ZERO, 0),
        }
    }

    /// When a helper last relayed that `target` answered.
    #[must_use]
    pub fn answered_at(&self, target: Ipv4Addr) -> Option<Duration> {
        self.answered.get(&target).copied()
    }

    /// Whether `target` answered others within [`FRESH_FOR`] of `now`.
    #[must_use]
    pub fn fresh(&self, target: Ipv4Addr, now: Duration) -> bool {
        self.answered_at(target)
            .is_some_and(|t| now.saturating_sub(t) <= FRESH_FOR)
    }

    /// Requests that have not been answered yet.
    #[must_use]
    pub fn open_requests(&self) -> usize {
        self.open.len()
    }

    /// Asks about the `silent` peers that are due, each through up to
    /// [`HELPERS`] of `helpers` (peers heard now), chosen by the nonce;
    /// forgets stale requests and the rounds of peers heard again.
    pub fn tick(
        &mut self,
        now: Duration,
        silent: &[Ipv4Addr],
        helpers: &[Ipv4Addr],
        mut nonce: impl FnMut() -> u64,
    ) -> Vec<(Ipv4Addr, Message)> {
        self.open
            .retain(|_, (_, at)| now.saturating_sub(*at) <= ANSWER_WITHIN);
        self.passed
            .retain(|_, (_, _, at)| now.saturating_sub(*at) <= ANSWER_WITHIN);
        self.answered
            .retain(|_, at| now.saturating_sub(*at) <= FRESH_FOR * 4);
        self.rounds.retain(|ip, _| silent.contains(ip));
        let mut out = Vec::new();
        for &target in silent {
            let round = self.rounds.entry(target).or_insert(Round {
                next: now,
                gap: FIRST_ROUND_GAP,
                asked: None,
            });
            if now < round.next {
                continue;
            }
            // Answered since the last round went out: keep the pace; else
            // slow down (the first round sets the pace).
            if let Some(asked) = round.asked {
                let answered = self.answered.get(&target).is_some_and(|t| *t >= asked);
                round.gap = if answered {
                    FIRST_ROUND_GAP
                } else {
                    (round.gap * 2).min(MAX_ROUND_GAP)
                };
            }
            round.asked = Some(now);
            round.next = now + round.gap;
            let candidates: Vec<Ipv4Addr> =
                helpers.iter().copied().filter(|h| *h != target).collect();
            if candidates.is_empty() {
                continue;
            }
            let n = nonce();
            let start = usize::try_from(n % candidates.len() as u64).unwrap_or(0);
            for helper in candidates
                .iter()
                .cycle()
                .skip(start)
                .take(HELPERS.min(candidates.len()))
            {
                out.push((
                    *helper,
                    Message {
                        kind: Kind::Request,
                        nonce: n,
                        origin: self.me,
                        target,
                    },
                ));
            }
            self.open.insert(n, (target, now));
        }
        out
    }

    fn spend(&mut self, now: Duration) -> bool {
        if now.saturating_sub(self.budget.0) >= Duration::from_secs(1) {
            self.budget = (now, 0);
        }
        if self.budget.1 >= FORWARD_BUDGET {
            return false;
        }
        self.budget.1 += 1;
        true
    }

    /// A verified message from `src`: what to send, and to whom. Messages
    /// that do not fit an open exchange are ignored.
    pub fn receive(
        &mut self,
        now: Duration,
        src: Ipv4Addr,
        m: Message,
    ) -> Option<(Ipv4Addr, Message)> {
        let reply = |kind| Message { kind, ..m };
        match m.kind {
            // Only the origin itself asks, about someone else.
            Kind::Request => {
                if src != m.origin || m.target == self.me || m.origin == self.me || !self.spend(now)
                {
                    return None;
                }
                self.passed.insert(m.nonce, (m.origin, m.target, now));
                Some((m.target, reply(Kind::Ping)))
            }
            Kind::Ping => {
                if m.target != self.me || !self.spend(now) {
                    return None;
                }
                Some((src, reply(Kind::Ack)))
            }
            Kind::Ack => {
                let (origin, target, _) = *self.passed.get(&m.nonce)?;
                if src != target || m.target != target || m.origin != origin {
                    return None;
                }
                self.passed.remove(&m.nonce);
                Some((origin, reply(Kind::Relay)))
            }
            Kind::Relay => {
                let (target, _) = *self.open.get(&m.nonce)?;
                if m.origin != self.me || m.target != target {
                    return None;
                }
                // Any one helper's answer settles the request.
                self.open.remove(&m.nonce);
                self.answered.insert(target, now);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, last)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secrets() -> Secrets {
        Secrets::from_text("a-secret-of-enough-length-0123").expect("secret")
    }

    #[test]
    fn messages_round_trip_and_forgeries_are_refused() {
        let s = secrets();
        let m = Message {
            kind: Kind::Relay,
            nonce: 0x0102_0304_0506_0708,
            origin: ip(1),
            target: ip(9),
        };
        let bytes = m.encode(&s);
        assert_eq!(bytes.len(), LEN);
        assert_eq!(Message::decode(&bytes, &s), Ok(m));
        let other = Secrets::from_text("another-secret-entirely-0123456").expect("secret");
        assert_eq!(Message::decode(&bytes, &other), Err(Rejected::BadSignature));
        let mut moved = bytes.clone();
        moved[23] = 10; // another target, same signature
        assert_eq!(Message::decode(&moved, &s), Err(Rejected::BadSignature));
        assert_eq!(
            Message::decode(&bytes[..LEN - 1], &s),
            Err(Rejected::Malformed)
        );
        let mut kind = bytes;
        kind[5] = 9;
        assert_eq!(Message::decode(&kind, &s), Err(Rejected::Malformed));
        assert_eq!(Message::decode(b"LMHB", &s), Err(Rejected::Malformed));
    }

    /// Origin 1 asks about silent 9 through helpers 2..=4; 9 answers one
    /// helper, whose relay marks 9 as reached.
    #[test]
    fn a_silent_peer_reached_by_a_helper_is_answered() {
        let mut origin = Indirect::new(ip(1));
        let mut helper = Indirect::new(ip(2));
        let mut target = Indirect::new(ip(9));
        let asks = origin.tick(ms(0), &[ip(9)], &[ip(2), ip(3), ip(4), ip(9)], || 42);
        assert_eq!(asks.len(), HELPERS);
        assert!(
            asks.iter()
                .all(|(h, m)| *h != ip(9) && m.kind == Kind::Request)
        );
        let request = asks
            .iter()
            .find(|(h, _)| *h == ip(2))
            .expect("helper 2 asked")
            .1;
        let (to, ping) = helper.receive(ms(5), ip(1), request).expect("a ping");
        assert_eq!((to, ping.kind), (ip(9), Kind::Ping));
        let (to, ack) = target.receive(ms(6), ip(2), ping).expect("an ack");
        assert_eq!((to, ack.kind), (ip(2), Kind::Ack));
        let (to, relay) = helper.receive(ms(7), ip(9), ack).expect("a relay");
        assert_eq!((to, relay.kind), (ip(1), Kind::Relay));
        assert_eq!(origin.receive(ms(8), ip(2), relay), None);
        assert!(origin.fresh(ip(9), ms(8)));
        assert!(!origin.fresh(ip(9), ms(8) + FRESH_FOR + ms(1)));
        // A second relay for the settled request changes nothing.
        assert_eq!(origin.receive(ms(9), ip(3), relay), None);
        assert_eq!(origin.open_requests(), 0);
    }

    #[test]
    fn answers_that_fit_no_open_exchange_are_ignored() {
        let mut origin = Indirect::new(ip(1));
        let relay = Message {
            kind: Kind::Relay,
            nonce: 7,
            origin: ip(1),
            target: ip(9),
        };
        // Nothing asked: a relay (say, a replayed one) is ignored.
        assert_eq!(origin.receive(ms(0), ip(2), relay), None);
        assert!(!origin.fresh(ip(9), ms(0)));
        // Asked about 9 with nonce 8: a relay for nonce 7, or for 8 but
        // about someone else, is ignored; an expired request too.
        origin.tick(ms(0), &[ip(9)], &[ip(2)], || 8);
        assert_eq!(origin.receive(ms(1), ip(2), relay), None);
        let wrong = Message {
            nonce: 8,
            target: ip(5),
            ..relay
        };
        assert_eq!(origin.receive(ms(1), ip(2), wrong), None);
        assert!(!origin.fresh(ip(9), ms(1)));
        origin.tick(ms(2000), &[ip(9)], &[], || 99);
        let late = Message { nonce: 8, ..relay };
        assert_eq!(origin.receive(ms(2001), ip(2), late), None);
        assert!(!origin.fresh(ip(9), ms(2001)));
        // A helper passes on requests from their origin only, and acks from
        // the target only.
        let mut helper = Indirect::new(ip(2));
        let request = Message {
            kind: Kind::Request,
            nonce: 3,
            origin: ip(1),
            target: ip(9),
        };
        assert_eq!(helper.receive(ms(0), ip(6), request), None);
        assert!(helper.receive(ms(0), ip(1), request).is_some());
        let ack = Message {
            kind: Kind::Ack,
            ..request
        };
        assert_eq!(helper.receive(ms(1), ip(6), ack), None);
        // A ping for someone else is not acknowledged.
        let mut bystander = Indirect::new(ip(5));
        assert_eq!(
            bystander.receive(
                ms(0),
                ip(2),
                Message {
                    kind: Kind::Ping,
                    ..request
                }
            ),
            None
        );
    }

    #[test]
    fn forwarding_is_capped_per_second() {
        let mut helper = Indirect::new(ip(2));
        let sent = (0..1000u64)
            .filter(|n| {
                let m = Message {
                    kind: Kind::Request,
                    nonce: *n,
                    origin: ip(1),
                    target: ip(9),
                };
                helper.receive(ms(500), ip(1), m).is_some()
            })
            .count();
        assert_eq!(sent, FORWARD_BUDGET as usize);
        let m = Message {
            kind: Kind::Request,
            nonce: 5000,
            origin: ip(1),
            target: ip(9),
        };
        assert!(helper.receive(ms(1500), ip(1), m).is_some(), "a new second");
    }

    /// An answer that came right after a round keeps the pace, however
    /// late the next tick comes: the peer stays reached without a gap.
    #[test]
    fn answered_rounds_keep_the_pace_and_the_answer_stays_fresh() {
        let mut origin = Indirect::new(ip(1));
        let mut nonce = 0;
        let mut next = || {
            nonce += 1;
            nonce
        };
        let mut last_round = 0;
        for t in (0..10_000u64).step_by(130) {
            for (_, m) in origin.tick(ms(t), &[ip(9)], &[ip(2)], &mut next) {
                last_round = t;
                let relay = Message {
                    kind: Kind::Relay,
                    ..m
                };
                origin.receive(ms(t + 8), ip(2), relay);
            }
            if t > 0 {
                assert!(
                    origin.fresh(ip(9), ms(t + 10)),
                    "fresh at {t} (last round {last_round})"
                );
            }
        }
    }

    #[test]
    fn unanswered_rounds_slow_down() {
        let mut origin = Indirect::new(ip(1));
        let mut times = Vec::new();
        let mut n = 0;
        for t in (0..20_000).step_by(100) {
            if !origin
                .tick(ms(t), &[ip(9)], &[ip(2)], || {
                    n += 1;
                    n
                })
                .is_empty()
            {
                times.push(t);
            }
        }
        // 0, then 0.2 s, 0.4 s, 0.8 s, ... apart, at most 8 s.
        assert_eq!(times, vec![0, 200, 600, 1400, 3000, 6200, 12_600]);
        // Heard again: its round is forgotten, so a new silence starts fast.
        origin.tick(ms(20_000), &[], &[ip(2)], || 0);
        assert_eq!(origin.tick(ms(20_100), &[ip(9)], &[ip(2)], || 77).len(), 1);
    }
}
