//! `cargo xtask bench ebpf`: what the TC classifiers cost.
//!
//! testrun: nanoseconds per packet of `arp_watch`, `vip_watch`,
//! `peer_watch` and the port maps (`port_map_in`, `port_map_out`) through
//! `BPF_PROG_TEST_RUN`, on the frames each sees on an underlay. iperf3: throughput from lab host h1 to h2 (veth, bridge, veth)
//! without programs and with all three on h2's eth0 ingress, in the same
//! run, alternating.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use aya::Ebpf;
use aya::maps::{HashMap, RingBuf};
use aya::programs::{TcAttachType, TestRun, TestRunOptions};
use linkmesh::ebpf::{self as watch, PortKind};
use linkmesh::peers;
use linkmesh_common::{
    ARP_EVENTS_MAP, ARP_PROGRAM, PEER_PROGRAM, PORT_DIR_IN, PORT_DIR_OUT, PORT_MAPS_MAP,
    PORTS_IN_PROGRAM, PORTS_OUT_PROGRAM, PortKey, VIP_PROGRAM, VIPS_MAP, VipInfo,
};
use linkmesh_tests::frame::{self, VXLAN_PORT};
use linkmesh_tests::lab::{Host, Lab};
use linkmesh_tests::netns;
use linkmesh_tests::process::Process;

const PROGRAMS: [&str; 5] = [
    ARP_PROGRAM,
    VIP_PROGRAM,
    PEER_PROGRAM,
    PORTS_IN_PROGRAM,
    PORTS_OUT_PROGRAM,
];
/// What a running agent attaches to an interface that is both its underlay
/// and a VIP interface (`arp_watch` only serves `linkmesh watch-arp`).
const AGENT_PROGRAMS: [&str; 2] = [VIP_PROGRAM, PEER_PROGRAM];
const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_UNSPEC` (-1): on to the next program (`TCX_NEXT`), then the stack.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const HEARTBEAT_PORT: u16 = 4794;
/// Runs per `BPF_PROG_TEST_RUN` call; the kernel reports the mean per run.
const REPEAT: u32 = 1_000_000;
/// Runs that fit `arp_watch`'s ring buffer (drained before every call).
const RING_ROOM: u32 = 5_000;
/// The VIP the ARP frames ask for, one we hold.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const SAMPLES: usize = 5;
const GOAL_NON_ARP_NS: u64 = 50;
const GOAL_ARP_NS: u64 = 150;
/// A TCP or UDP packet the port maps must look up (one hash lookup).
const GOAL_LOOKUP_NS: u64 = 100;
/// A rewritten port: two helper calls (checksum, store) on top of a lookup.
const GOAL_MAPPED_NS: u64 = 150;
/// The TCP source port of `frame::tcp`'s segments.
const FRAME_SOURCE_PORT: u16 = 49_152;
const IPERF_SECONDS: u64 = 5;
const GOAL_RATIO: f64 = 0.98;

/// The heartbeat token the benchmark's peer publishes.
const TOKEN: [u8; 8] = *b"lmbench1";

/// Fills the maps the way an agent would: `peer` is a known peer with a
/// heartbeat token, the heartbeat port and a VXLAN port are watched,
/// [`VIP`] is a VIP we hold.
fn configure(ebpf: &mut Ebpf, peer: Ipv4Addr) -> anyhow::Result<()> {
    watch::set_peers(ebpf, &[peer].into())?;
    watch::set_token(ebpf, peer, Some([u64::from_ne_bytes(TOKEN), 0]))?;
    watch::set_port(ebpf, HEARTBEAT_PORT, Some(PortKind::Heartbeat))?;
    watch::set_port(ebpf, VXLAN_PORT, Some(PortKind::Vxlan))?;
    let mut vips: HashMap<_, u32, VipInfo> =
        HashMap::try_from(ebpf.map_mut(VIPS_MAP).context("no VIPS map")?)?;
    let info = VipInfo {
        mac: [0x02, 0x18, 0, 0, 0, 2],
        owned: 1,
        _pad: 0,
        owner_mac: [0; 6],
        _pad2: [0; 2],
    };
    vips.insert(u32::from_ne_bytes(VIP.octets()), info, 0)?;
    // Port maps that swap each port back on the next run (a test run
    // repeats on one packet): every run of the mapped cases rewrites.
    let mut ports: HashMap<_, PortKey, [u8; 2]> =
        HashMap::try_from(ebpf.map_mut(PORT_MAPS_MAP).context("no PORT_MAPS map")?)?;
    let key = |port: u16, direction| PortKey {
        addr: {
            let mut a = [0; 16];
            a[..4].copy_from_slice(&VIP.octets());
            a
        },
        port: port.to_be_bytes(),
        proto: 6,
        direction,
    };
    for (from, to, direction) in [
        (80, 8080, PORT_DIR_IN),
        (8080, 80, PORT_DIR_IN),
        (FRAME_SOURCE_PORT, 80, PORT_DIR_OUT),
        (80, FRAME_SOURCE_PORT, PORT_DIR_OUT),
    ] {
        ports.insert(key(from, direction), to.to_be_bytes(), 0)?;
    }
    Ok(())
}

/// The object with all three classifiers loaded and its maps configured.
fn load(peer: Ipv4Addr) -> anyhow::Result<Ebpf> {
    let mut ebpf = watch::load()?;
    for name in PROGRAMS {
        watch::load_classifier(&mut ebpf, name)?;
    }
    configure(&mut ebpf, peer)?;
    Ok(ebpf)
}

/// The VXLAN packets `peer_watch` counted from `peer`, over all CPUs.
fn vxlan_packets(ebpf: &mut Ebpf, peer: Ipv4Addr) -> u64 {
    watch::peer_sample(ebpf, peer).map_or(0, |s| s.vxlan_packets)
}

// ---- BPF_PROG_TEST_RUN ------------------------------------------------------

struct Case {
    program: &'static str,
    frame: &'static str,
    bytes: Vec<u8>,
    /// Runs per `BPF_PROG_TEST_RUN` call.
    repeat: u32,
    /// What the program must return on it (checked on every sample).
    verdict: u32,
    goal_ns: u64,
    samples: Vec<u64>,
}

fn cases() -> Vec<Case> {
    let peer = Ipv4Addr::new(198, 18, 0, 1);
    let us = Ipv4Addr::new(198, 18, 0, 2);
    let tcp = frame::tcp(peer, us, 443);
    let arp = frame::arp_request(peer, VIP);
    let heartbeat = frame::udp(
        &[],
        peer,
        us,
        HEARTBEAT_PORT,
        &peers::heartbeat_payload("h1", TOKEN),
    );
    let forged = frame::udp(
        &[],
        peer,
        us,
        HEARTBEAT_PORT,
        &peers::heartbeat_payload("h1", *b"guessed!"),
    );
    let vxlan = frame::vxlan(peer, us, 100, &tcp);
    let (pass, shot, non_arp) = (TC_ACT_UNSPEC, TC_ACT_SHOT, GOAL_NON_ARP_NS);
    [
        (ARP_PROGRAM, "IPv4 TCP", &tcp, REPEAT, pass, non_arp),
        // The ring (256 KiB) holds 5,461 events: past them every run takes
        // the ring-full path (a failed reserve, a drop counted), cheaper
        // than an event. So both: a million runs, and runs that fit.
        (
            ARP_PROGRAM,
            "ARP who-has, ring full",
            &arp,
            REPEAT,
            pass,
            GOAL_ARP_NS,
        ),
        (
            ARP_PROGRAM,
            "ARP who-has, ring room",
            &arp,
            RING_ROOM,
            pass,
            GOAL_ARP_NS,
        ),
        (VIP_PROGRAM, "IPv4 TCP", &tcp, REPEAT, pass, non_arp),
        (
            VIP_PROGRAM,
            "ARP who-has for a VIP",
            &arp,
            REPEAT,
            pass,
            GOAL_ARP_NS,
        ),
        (PEER_PROGRAM, "IPv4 TCP", &tcp, REPEAT, pass, non_arp),
        (PEER_PROGRAM, "ARP who-has", &arp, REPEAT, pass, GOAL_ARP_NS),
        (
            PEER_PROGRAM,
            "heartbeat, known peer",
            &heartbeat,
            REPEAT,
            shot,
            non_arp,
        ),
        (
            PEER_PROGRAM,
            "heartbeat, wrong token",
            &forged,
            REPEAT,
            shot,
            non_arp,
        ),
        (
            PEER_PROGRAM,
            "VXLAN, known peer",
            &vxlan,
            REPEAT,
            pass,
            non_arp,
        ),
    ]
    .into_iter()
    .map(|(program, frame, bytes, repeat, verdict, goal_ns)| Case {
        program,
        frame,
        bytes: bytes.clone(),
        repeat,
        verdict,
        goal_ns,
        samples: Vec::new(),
    })
    .chain(port_map_cases(peer, &tcp, &arp))
    .collect()
}

/// The port maps on what passes them (ARP, TCP to other ports) and on the
/// packets they rewrite, both ways.
fn port_map_cases(peer: Ipv4Addr, tcp: &[u8], arp: &[u8]) -> Vec<Case> {
    let to_vip = frame::tcp(peer, VIP, 80);
    let from_vip = frame::tcp(VIP, peer, 50_000);
    [
        (PORTS_IN_PROGRAM, "ARP who-has", arp, GOAL_NON_ARP_NS),
        (
            PORTS_IN_PROGRAM,
            "IPv4 TCP, not mapped",
            tcp,
            GOAL_LOOKUP_NS,
        ),
        (
            PORTS_IN_PROGRAM,
            "IPv4 TCP to a mapped port",
            &to_vip,
            GOAL_MAPPED_NS,
        ),
        (
            PORTS_OUT_PROGRAM,
            "IPv4 TCP from a mapped port",
            &from_vip,
            GOAL_MAPPED_NS,
        ),
    ]
    .into_iter()
    .map(|(program, frame, bytes, goal_ns)| Case {
        program,
        frame,
        bytes: bytes.to_vec(),
        repeat: REPEAT,
        verdict: TC_ACT_UNSPEC,
        goal_ns,
        samples: Vec::new(),
    })
    .collect()
}

fn testrun() -> anyhow::Result<Vec<Case>> {
    let mut cases = cases();
    let mut ebpf = load(Ipv4Addr::new(198, 18, 0, 1))?;
    let mut ring = RingBuf::try_from(ebpf.take_map(ARP_EVENTS_MAP).context("no ARP_EVENTS")?)?;
    // Samples interleaved across cases, so drift (frequency, other load)
    // spreads over all of them.
    for _ in 0..SAMPLES {
        for case in &mut cases {
            while ring.next().is_some() {}
            let result = watch::load_classifier(&mut ebpf, case.program)?
                .test_run(TestRunOptions {
                    data_in: Some(&case.bytes),
                    repeat: case.repeat,
                    ..TestRunOptions::default()
                })
                .with_context(|| format!("BPF_PROG_TEST_RUN of {}", case.program))?;
            ensure!(
                result.return_value == case.verdict,
                "{} on {}: returned {}, expected {}",
                case.program,
                case.frame,
                result.return_value,
                case.verdict
            );
            // The kernel divides the time of all `repeat` runs by their
            // number (net/bpf/test_run.c): `duration` is already per run.
            case.samples
                .push(u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX));
        }
    }
    for case in &mut cases {
        case.samples.sort_unstable();
    }
    Ok(cases)
}

// ---- iperf3 -----------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    /// UDP to the VXLAN port: `peer_watch` looks up, matches and counts
    /// every datagram (TCP leaves it at the protocol check).
    UdpToVxlanPort,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::UdpToVxlanPort => "UDP to the VXLAN port",
        }
    }

    fn port(self) -> u16 {
        match self {
            Self::Tcp => 5201,
            Self::UdpToVxlanPort => VXLAN_PORT,
        }
    }
}

/// The three classifiers on `host`'s eth0 ingress, held by a thread inside
/// the host's namespace until [`Attached::detach`] (or until this is dropped):
/// the TCX links go with the object, dropped on that thread.
struct Attached {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<anyhow::Result<u64>>,
}

impl Attached {
    fn new(host: &Host, peer: Ipv4Addr) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let ifname = host.ifname.clone();
        let thread = netns::spawn_in(&host.netns, move || {
            let mut ebpf = load(peer)?;
            for name in AGENT_PROGRAMS {
                watch::load_classifier(&mut ebpf, name)?
                    .attach(&ifname, TcAttachType::Ingress)
                    .with_context(|| format!("attaching {name} to {ifname}"))?;
            }
            let _ = ready_tx.send(());
            // A stop, or the bench gone: either way detach here.
            let _ = stop_rx.recv();
            let counted = vxlan_packets(&mut ebpf, peer);
            drop(ebpf);
            Ok(counted)
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(Self { stop, thread }),
            Err(_) => {
                drop(stop);
                match thread.join() {
                    Ok(Err(e)) => Err(e.context(format!("attaching in {}", host.netns))),
                    Ok(Ok(_)) => bail!("the attaching thread ended early"),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
        }
    }

    /// Detaches; returns the VXLAN packets counted from the peer.
    fn detach(self) -> anyhow::Result<u64> {
        let _ = self.stop.send(());
        match self.thread.join() {
            Ok(counts) => counts,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Waits until `server` listens on TCP `port` (its namespace's
/// `/proc/PID/net/tcp`, state 0A).
fn wait_listening(server: &Process, port: u16) -> anyhow::Result<()> {
    let needle = format!(":{port:04X} 00000000:0000 0A");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        ensure!(server.is_running(), "iperf3 -s exited:\n{}", server.log());
        let table = std::fs::read_to_string(format!("/proc/{}/net/tcp", server.pid()))?;
        if table.contains(&needle) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("iperf3 -s never listened on {port}:\n{}", server.log())
}

/// The receiver's rate (Mbit/s) from iperf3's `-f m` summary.
fn received_mbps(log: &str) -> Option<f64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with("receiver"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let unit = words.iter().position(|w| *w == "Mbits/sec")?;
    words.get(unit.checked_sub(1)?)?.parse().ok()
}

/// One iperf3 client run from host 1 to `to`; returns Gbit/s received.
fn iperf(lab: &Lab, label: &str, to: Ipv4Addr, proto: Proto) -> anyhow::Result<f64> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", &to.to_string(), "-p", &proto.port().to_string()])
        .args(["-t", &IPERF_SECONDS.to_string(), "-f", "m"]);
    if proto == Proto::UdpToVxlanPort {
        cmd.args(["-u", "-b", "0", "-l", "1400"]);
    }
    let client = lab.spawn(1, label, cmd);
    let status = client
        .wait_timeout(Duration::from_secs(IPERF_SECONDS + 20))
        .with_context(|| format!("iperf3 -c did not finish:\n{}", client.log()))?;
    ensure!(status.success(), "iperf3 -c failed:\n{}", client.log());
    let mbps = received_mbps(&client.log())
        .with_context(|| format!("no receiver rate in:\n{}", client.log()))?;
    Ok(mbps / 1000.0)
}

struct Throughput {
    proto: Proto,
    without: Vec<f64>,
    with: Vec<f64>,
    /// `peer_watch`'s VXLAN count for the sender over the runs with programs.
    counted: u64,
}

fn iperf3(runs: usize) -> anyhow::Result<Vec<Throughput>> {
    let lab = Lab::new(2);
    let (sender, receiver) = (lab.host(1).clone(), lab.host(2).clone());
    let mut results = Vec::new();
    for proto in [Proto::Tcp, Proto::UdpToVxlanPort] {
        let mut server = Command::new("iperf3");
        server.args(["-s", "-B", &receiver.addr.to_string()]);
        server.args(["-p", &proto.port().to_string()]);
        let server = lab.spawn(2, &format!("iperf3-server-{}", proto.port()), server);
        wait_listening(&server, proto.port())?;
        let mut t = Throughput {
            proto,
            without: Vec::new(),
            with: Vec::new(),
            counted: 0,
        };
        for run in 1..=runs {
            let label = format!("iperf3-{}-{run}", proto.port());
            let gbps = iperf(&lab, &format!("{label}-without"), receiver.addr, proto)?;
            eprintln!(
                "==> iperf3 {} run {run} without programs: {gbps:.2} Gb/s",
                proto.name()
            );
            t.without.push(gbps);

            let attached = Attached::new(&receiver, sender.addr)?;
            let gbps = iperf(&lab, &format!("{label}-with"), receiver.addr, proto);
            let vxlan = attached.detach()?;
            let gbps = gbps?;
            eprintln!(
                "==> iperf3 {} run {run} with programs: {gbps:.2} Gb/s ({vxlan} packets counted as VXLAN)",
                proto.name()
            );
            t.with.push(gbps);
            t.counted += vxlan;
        }
        // peer_watch is attached last: it counts only if the traffic reached
        // the programs and the two before it carried on down the chain.
        if proto == Proto::UdpToVxlanPort {
            ensure!(
                t.counted > 0,
                "peer_watch (attached last) counted none of the UDP traffic to {VXLAN_PORT}: \
                 the programs never saw it, or one before it ended the TCX chain"
            );
        }
        server.kill();
        t.without.sort_by(f64::total_cmp);
        t.with.sort_by(f64::total_cmp);
        results.push(t);
    }
    Ok(results)
}

// ---- report -----------------------------------------------------------------

pub fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("LINKMESH_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let only = std::env::var("LINKMESH_BENCH_ONLY").ok();
    let wanted = |part: &str| only.as_deref().is_none_or(|o| part.starts_with(o));

    let cases = if wanted("testrun") {
        eprintln!("==> ebpf bench: BPF_PROG_TEST_RUN, {SAMPLES} samples per case");
        testrun()?
    } else {
        Vec::new()
    };
    let throughput = if wanted("iperf3") {
        iperf3(runs)?
    } else {
        Vec::new()
    };

    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    if !cases.is_empty() {
        println!();
        println!(
            "ebpf benchmark: ns per packet through BPF_PROG_TEST_RUN (the kernel's mean over `runs`, median of {SAMPLES} samples)"
        );
        println!(
            "{:<12} {:<28} {:>8} {:>10} {:>10} {:>8}",
            "program", "frame", "runs", "ns/packet", "min-max", "goal"
        );
        for c in &cases {
            let median = c.samples[c.samples.len() / 2];
            println!(
                "{:<12} {:<28} {:>8} {:>10} {:>10} {:>8} {}",
                c.program,
                c.frame,
                c.repeat,
                median,
                format!("{}-{}", c.samples[0], c.samples[c.samples.len() - 1]),
                format!("< {}", c.goal_ns),
                verdict(median < c.goal_ns),
            );
        }
    }
    if !throughput.is_empty() {
        println!();
        println!(
            "ebpf benchmark: iperf3 h1 -> h2 (veth, bridge, veth), {IPERF_SECONDS} s per run, median of {runs}, \
             programs: {} on h2's eth0 ingress",
            AGENT_PROGRAMS.join(" + ")
        );
        println!(
            "{:<22} {:>14} {:>14} {:>8} {:>8}",
            "traffic", "without Gb/s", "with Gb/s", "ratio", "goal"
        );
        for t in &throughput {
            let without = t.without[t.without.len() / 2];
            let with = t.with[t.with.len() / 2];
            let ratio = with / without;
            println!(
                "{:<22} {:>14.2} {:>14.2} {:>7.1}% {:>8} {}",
                t.proto.name(),
                without,
                with,
                ratio * 100.0,
                format!(">= {:.0}%", GOAL_RATIO * 100.0),
                verdict(ratio >= GOAL_RATIO),
            );
        }
        println!(
            "the receiver's PEER_STATS map holds h1 and PEER_PORTS a VXLAN port ({VXLAN_PORT}); \
             UDP: 1400-byte datagrams, unlimited rate, rate as received."
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_rate_is_read_from_the_summary() {
        let out = "[ ID] Interval           Transfer     Bitrate         Retr\n\
                   [  5]   0.00-5.00   sec  14641 MBytes  24563 Mbits/sec    0             sender\n\
                   [  5]   0.00-5.00   sec  14638 MBytes  24558 Mbits/sec                  receiver\n";
        assert_eq!(received_mbps(out), Some(24558.0));
        let udp = "[  5]   0.00-5.00   sec  1200 MBytes  2013 Mbits/sec  0.004 ms  1000/900000 (0.11%)  receiver\n";
        assert_eq!(received_mbps(udp), Some(2013.0));
        assert_eq!(received_mbps("iperf3: error - unable to connect"), None);
    }
}
