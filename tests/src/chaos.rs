//! The chaos suite's rig: the mesh (3 hosts on one segment) and a floating
//! IP (the same 3 hosts and a client) on an etcd cluster, with probes
//! running the whole time: overlay pings every 10 ms between two hosts,
//! client pings to the VIP every 10 ms, and the VIP's holders read from
//! every host's kernel at each sample. A scenario breaks etcd during a
//! [`Run`] and checks its invariants on the [`Report`].

use std::collections::BTreeSet;
use std::fmt::{Display, Write as _};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::agent::{self, add_address, ping, wait_until};
use crate::etcd::EtcdCluster;
use crate::kernel;
use crate::process::Process;
use crate::testbed::Testbed;

/// The segment every agent joins.
pub const SEGMENT: &str = "blue";
const VNI: u32 = 100;
/// Hosts 1..=AGENTS run agents; host AGENTS + 1 is the client.
pub const AGENTS: u8 = 3;
/// Generous: two cores, and other tests may run at the same time.
const SETTLE: Duration = Duration::from_secs(20);
/// How often the holders are sampled (plus the time a sample takes).
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Prints one figure of a scenario, in the form the suite's readers grep.
pub fn figure(scenario: &str, name: &str, value: impl Display) {
    eprintln!("chaos figure: {scenario}.{name}={value}");
}

/// Milliseconds, for figures.
#[must_use]
pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The lab, etcd, and 3 agents in the mesh and contending for the VIP.
pub struct Rig {
    pub v: Testbed<EtcdCluster>,
    /// Agent of host `i + 1`.
    pub agents: Vec<Process>,
    /// Who held the VIP once the rig settled.
    pub owner: u8,
}

impl Rig {
    /// Starts `members` etcd members, defines the segment and the VIP,
    /// starts the agents (`--segment blue --vip-interface eth0` and
    /// `extra`), gives every host an overlay address, and returns once the
    /// mesh is full, one host holds the VIP, every agent published its
    /// state and both probe paths answer.
    #[must_use]
    pub fn start(members: usize, extra: &[&str]) -> Self {
        let v = Testbed::builder(AGENTS)
            .segment(SEGMENT, VNI)
            .vip(&[])
            .build_cluster(members);
        let agents = (1..=AGENTS)
            .map(|h| v.agent_with(h, "agent", &[SEGMENT], extra))
            .collect();
        let mut rig = Self {
            v,
            agents,
            owner: 0,
        };
        if let Err(e) = rig.v.wait_mesh(SEGMENT, 1..=AGENTS, SETTLE) {
            panic!("{e}\n{}", rig.logs());
        }
        for h in 1..=AGENTS {
            let ns = rig.v.lab.host(h).netns.clone();
            add_address(&ns, SEGMENT, &format!("{}/24", rig.overlay(h)));
        }
        rig.owner = rig
            .v
            .wait_single_holder(SETTLE, None)
            .unwrap_or_else(|| panic!("one holder: {:?}\n{}", rig.v.holders(), rig.logs()));
        let standbys = usize::from(AGENTS) - 1;
        let settled = wait_until(SETTLE, || {
            let s = rig.v.states();
            s.len() == usize::from(AGENTS)
                && s.iter().filter(|(_, st)| st == "STANDBY").count() == standbys
        });
        assert!(
            settled.is_some(),
            "every host published its state: {:?}\n{}",
            rig.v.states(),
            rig.logs()
        );
        let h1 = rig.v.lab.host(1).netns.clone();
        assert_eq!(
            ping(&h1, &rig.overlay(2), 3, "0.1"),
            (3, 3),
            "h1 reaches h2 over {SEGMENT}"
        );
        let client = rig.v.lab.host(rig.v.client()).netns.clone();
        assert_eq!(
            ping(&client, &rig.v.vip.to_string(), 3, "0.1"),
            (3, 3),
            "the client reaches the VIP"
        );
        rig
    }

    /// Host `host`'s address on the segment device.
    #[must_use]
    pub fn overlay(&self, host: u8) -> String {
        self.v.lab.overlay_address(host, 0).to_string()
    }

    /// Every agent's log, for failure messages.
    #[must_use]
    pub fn logs(&self) -> String {
        self.agents
            .iter()
            .zip(1..)
            .fold(String::new(), |mut out, (a, h)| {
                let _ = write!(out, "--- h{h} agent ---\n{}", a.log());
                out
            })
    }

    /// Every agent's INFO and WARN lines (state changes, fences, etcd
    /// errors) and whatever says it failed, for failure messages.
    #[must_use]
    pub fn events(&self) -> String {
        (1..=AGENTS).fold(String::new(), |mut out, h| {
            let _ = writeln!(out, "--- h{h} agent ---");
            for line in self.log_lines(h, &[" INFO ", " WARN ", " ERROR ", "failed"]) {
                let _ = writeln!(out, "{line}");
            }
            out
        })
    }

    /// Log lines of host `host`'s agent that contain any of `needles`.
    #[must_use]
    pub fn log_lines(&self, host: u8, needles: &[&str]) -> Vec<String> {
        self.agents[usize::from(host - 1)]
            .log()
            .lines()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    /// Starts the probes (h1 to h2 over the segment, the client to the VIP)
    /// and the holder sampler, for `seconds`. Call from the test's thread:
    /// the pings are the lab's processes, killed with it.
    #[must_use]
    pub fn run(&self, seconds: u32) -> Run {
        let wall = SystemTime::now();
        let start = Instant::now();
        let overlay =
            agent::start_probe(&self.v.lab, 1, "overlay-probe", &self.overlay(2), seconds);
        let client = agent::start_probe(
            &self.v.lab,
            self.v.client(),
            "vip-probe",
            &self.v.vip.to_string(),
            seconds,
        );
        let hosts = (1..=AGENTS)
            .map(|h| (h, self.v.lab.host(h).netns.clone()))
            .collect();
        Run {
            start,
            wall,
            seconds,
            overlay,
            client,
            sampler: Sampler::start(hosts, self.v.vip, start),
        }
    }

    /// Adds the VIP `cidr` (as `linkmesh ip add` does) through `endpoints`,
    /// cutting each attempt off after 250 ms, until one lands or `timeout`
    /// passes; the time it took, or the last error. (etcd answers a write
    /// proposed while it has no leader only after its 7 s request timeout:
    /// short attempts tell when the cluster takes writes again.) An attempt
    /// cut off may still land: "already exists" counts as landed.
    pub fn add_vip_until_ok(
        &self,
        endpoints: &[String],
        cidr: &str,
        timeout: Duration,
    ) -> Result<Duration, String> {
        use linkmesh::etcd::EtcdError;
        use linkmesh::etcd::admin::Vips;
        let secrets = linkmesh::registry::Secrets::load(&self.v.secret)
            .map_err(|e| format!("reading the secret: {e}"))?;
        let record = linkmesh::registry::VipRecord::parse_request(
            serde_json::json!({ "address": cidr })
                .to_string()
                .as_bytes(),
        )
        .map_err(|e| format!("a VIP record for {cidr}: {e}"))?;
        let endpoints = endpoints.to_vec();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let start = tokio::time::Instant::now();
            let client = etcd_client::Client::connect(endpoints, None)
                .await
                .map_err(|e| e.to_string())?;
            let vips = Vips {
                client,
                keys: linkmesh::registry::Keys::new("/linkmesh"),
                secrets,
            };
            loop {
                let error = match tokio::time::timeout(
                    Duration::from_millis(250),
                    vips.add(&record, false),
                )
                .await
                {
                    Ok(Ok(_) | Err(EtcdError::Conflict(_))) => return Ok(start.elapsed()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer within 250 ms".to_owned(),
                };
                if start.elapsed() > timeout {
                    return Err(error);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }
}

/// Probes and the sampler while a scenario runs.
pub struct Run {
    start: Instant,
    /// The wall clock at `start` (ping's `-D` stamps are wall-clock).
    wall: SystemTime,
    seconds: u32,
    overlay: Process,
    client: Process,
    sampler: Sampler,
}

impl Run {
    /// Time since the run started.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Sleeps until `offset` into the run (at once if it is past).
    pub fn sleep_until(&self, offset: Duration) {
        std::thread::sleep(offset.saturating_sub(self.now()));
    }

    /// Waits for the probes to end (their deadline), stops the sampler and
    /// reads everything.
    #[must_use]
    pub fn finish(self) -> Report {
        let slack = Duration::from_secs(u64::from(self.seconds) + 10);
        for p in [&self.overlay, &self.client] {
            if p.wait_timeout(slack.saturating_sub(self.now())).is_none() {
                p.kill();
            }
        }
        let wall = self
            .wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        Report {
            overlay: PingRun::parse(&self.overlay.log(), wall),
            client: PingRun::parse(&self.client.log(), wall),
            samples: self.sampler.stop(),
        }
    }
}

/// Which agent hosts had the VIP bound, at one moment of the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Since the run started.
    pub at: Duration,
    pub holders: Vec<u8>,
}

/// Reads the VIP's holders from every host's kernel, on its own thread,
/// until stopped (also when dropped).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    fn start(hosts: Vec<(u8, String)>, vip: IpAddr, start: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let at = start.elapsed();
                let holders = hosts
                    .iter()
                    .filter(|(_, ns)| kernel::addresses(ns).iter().any(|a| a.addr == vip))
                    .map(|(h, _)| *h)
                    .collect();
                samples.push(Sample { at, holders });
                std::thread::sleep(SAMPLE_EVERY);
            }
            samples
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("the holder sampler panicked"))
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One ping probe's results.
#[derive(Clone, Debug)]
pub struct PingRun {
    /// Probes sent (ping's summary; 0 if it printed none).
    pub sent: u32,
    /// `icmp_seq` of every reply.
    replies: BTreeSet<u32>,
    /// Reply times in seconds since the run started.
    stamps: Vec<f64>,
}

impl PingRun {
    /// Reads `ping -n -D` output; `start` is the run's start (Unix seconds).
    #[must_use]
    pub fn parse(output: &str, start: f64) -> Self {
        let mut replies = BTreeSet::new();
        let mut stamps = Vec::new();
        for line in output.lines().filter(|l| l.contains("bytes from")) {
            if let Some(seq) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))
                .and_then(|n| n.parse().ok())
            {
                replies.insert(seq);
            }
            if let Some(t) = line
                .strip_prefix('[')
                .and_then(|l| l.split(']').next())
                .and_then(|t| t.parse::<f64>().ok())
            {
                stamps.push(t - start);
            }
        }
        Self {
            sent: agent::ping_summary(output).map_or(0, |(tx, _)| tx),
            replies,
            stamps,
        }
    }

    /// Probes without a reply, not counting the last one sent: ping's
    /// deadline may cut its reply off in flight.
    #[must_use]
    pub fn lost(&self) -> Vec<u32> {
        (1..self.sent)
            .filter(|s| !self.replies.contains(s))
            .collect()
    }

    #[must_use]
    pub fn received(&self) -> usize {
        self.replies.len()
    }

    /// The longest time without a reply, between the first and the last
    /// reply; `None` with fewer than two replies.
    #[must_use]
    pub fn longest_gap(&self) -> Option<Duration> {
        self.widest_gap().map(|(_, gap)| gap)
    }

    /// Where the longest gap started (since the run started) and how long
    /// it was.
    #[must_use]
    pub fn widest_gap(&self) -> Option<(Duration, Duration)> {
        self.stamps
            .windows(2)
            .map(|w| (w[0], w[1] - w[0]))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(at, gap)| {
                (
                    Duration::from_secs_f64(at.max(0.0)),
                    Duration::from_secs_f64(gap.max(0.0)),
                )
            })
    }

    /// The longest time without a reply within [`from`, `to`] of the run,
    /// counting from `from` to the first reply and from the last reply to
    /// `to`: the service outage over that window.
    #[must_use]
    pub fn outage_within(&self, from: Duration, to: Duration) -> Duration {
        let (from, to) = (from.as_secs_f64(), to.as_secs_f64());
        let mut last = from;
        let mut worst = 0.0_f64;
        for t in self
            .stamps
            .iter()
            .copied()
            .filter(|t| *t >= from && *t <= to)
        {
            worst = worst.max(t - last);
            last = t;
        }
        worst = worst.max(to - last);
        Duration::from_secs_f64(worst.max(0.0))
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// h1 to h2 over the segment.
    pub overlay: PingRun,
    /// The client to the VIP.
    pub client: PingRun,
    pub samples: Vec<Sample>,
}

impl Report {
    /// Samples taken within [`from`, `to`].
    pub fn between(&self, from: Duration, to: Duration) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| s.at >= from && s.at <= to)
    }

    /// The most hosts that held the VIP at one sample.
    #[must_use]
    pub fn most_holders(&self) -> usize {
        self.samples
            .iter()
            .map(|s| s.holders.len())
            .max()
            .unwrap_or(0)
    }

    /// The first sample at or after `from` whose holders satisfy `f`.
    pub fn first(&self, from: Duration, f: impl Fn(&[u8]) -> bool) -> Option<&Sample> {
        self.samples.iter().find(|s| s.at >= from && f(&s.holders))
    }

    /// The holders over time, one entry per change (for messages).
    #[must_use]
    pub fn timeline(&self) -> String {
        let mut out = String::new();
        let mut last: Option<&[u8]> = None;
        for s in &self.samples {
            if last != Some(&s.holders[..]) {
                let _ = write!(out, "{:.3}s {:?}; ", s.at.as_secs_f64(), s.holders);
                last = Some(&s.holders);
            }
        }
        let _ = write!(
            out,
            "({} samples, last at {:.3}s)",
            self.samples.len(),
            self.samples.last().map_or(0.0, |s| s.at.as_secs_f64())
        );
        out
    }

    /// The longest time between two samples (the sampler's resolution).
    #[must_use]
    pub fn sample_spacing(&self) -> Duration {
        self.samples
            .windows(2)
            .map(|w| w[1].at.saturating_sub(w[0].at))
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_gives_losses_and_gaps() {
        let out = "PING x\n\
                   [100.010] 64 bytes from x: icmp_seq=1 ttl=64 time=0.1 ms\n\
                   [100.020] 64 bytes from x: icmp_seq=2 ttl=64 time=0.1 ms\n\
                   [100.350] 64 bytes from x: icmp_seq=5 ttl=64 time=0.1 ms\n\
                   [100.360] 64 bytes from x: icmp_seq=6 ttl=64 time=0.1 ms\n\
                   \n--- x ping statistics ---\n\
                   7 packets transmitted, 4 received, 42% packet loss, time 60ms\n";
        let run = PingRun::parse(out, 100.0);
        assert_eq!(run.sent, 7);
        assert_eq!(run.received(), 4);
        // Seq 7 was sent at the deadline: not counted.
        assert_eq!(run.lost(), vec![3, 4]);
        let (at, gap) = run.widest_gap().expect("a gap");
        assert!((at.as_secs_f64() - 0.02).abs() < 1e-6, "{at:?}");
        assert!((gap.as_secs_f64() - 0.33).abs() < 1e-6, "{gap:?}");
        let outage = run.outage_within(Duration::from_millis(300), Duration::from_millis(500));
        assert!((outage.as_secs_f64() - 0.14).abs() < 1e-6, "{outage:?}");
    }

    #[test]
    fn the_timeline_lists_changes_only() {
        let s = |ms, holders: &[u8]| Sample {
            at: Duration::from_millis(ms),
            holders: holders.to_vec(),
        };
        let report = Report {
            overlay: PingRun::parse("", 0.0),
            client: PingRun::parse("", 0.0),
            samples: vec![s(0, &[1]), s(10, &[1]), s(20, &[]), s(35, &[2])],
        };
        assert_eq!(
            report.timeline(),
            "0.000s [1]; 0.020s []; 0.035s [2]; (4 samples, last at 0.035s)"
        );
        assert_eq!(report.most_holders(), 1);
        assert_eq!(report.sample_spacing(), Duration::from_millis(15));
        assert_eq!(
            report
                .first(Duration::from_millis(5), <[u8]>::is_empty)
                .map(|s| s.at),
            Some(Duration::from_millis(20))
        );
    }
}
