//! A wall-clock jump on the VIP's owner (libfaketime: two hours forward,
//! then two hours back, while the monotonic clock runs on) causes no
//! failover and expires no record: deadlines are monotonic, and record ages
//! and issue times come from a clock that absorbs steps at 500 ppm.

use std::time::Duration;

use linkmesh_tests::agent::{self, Agent, wait_until};
use linkmesh_tests::process::Process;
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Seconds of the day of the last log line's timestamp (UTC).
fn last_log_second(log: &str) -> Option<i64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.len() > 19 && l.as_bytes()[10] == b'T')?;
    let hms = &line[11..19];
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    Some(parts.next()?? * 3600 + parts.next()?? * 60 + parts.next()??)
}

fn now_second() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs % 86_400).unwrap_or(0)
}

#[test]
fn a_wall_clock_jump_on_the_owner_causes_no_failover_and_expires_nothing() {
    require_root!();
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: `cargo xtask test` installs Debian's faketime"
    );
    let v = Testbed::builder(3).vip(&[]).build();
    v.add_segment("blue", 100);
    let offset = v.lab.dir().join("faketime");
    std::fs::write(&offset, "+0\n").expect("offset file");
    let args = [
        "--vip-interface",
        "eth0",
        "--keepalive-interval",
        "2",
        "--resync-interval",
        "2",
    ];
    let endpoint = v.etcd.endpoint();
    let mut cmd = Agent::new(&v.lab, 1, &endpoint, &v.secret)
        .segments(&["blue"])
        .args(&args)
        .command();
    cmd.env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", &offset)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let mut agents: Vec<Process> = vec![v.lab.spawn(1, "agent", cmd)];
    let first = wait_until(Duration::from_secs(15), || v.holders() == vec![1]);
    assert!(
        first.is_some(),
        "h1 owns the VIP first:\n{}",
        agents[0].log()
    );
    for h in 2..=3 {
        agents.push(
            Agent::new(&v.lab, h, &endpoint, &v.secret)
                .segments(&["blue"])
                .args(&args)
                .start(),
        );
    }
    let peers = |h: u8| agent::peers(&v.lab.host(h).netns, "blue").map_or(0, |p| p.len());
    let meshed = wait_until(Duration::from_secs(15), || (1..=3).all(|h| peers(h) == 2));
    let logs = || agents.iter().map(Process::log).collect::<String>();
    assert!(meshed.is_some(), "{}", logs());

    let mut samples = 0;
    let mut bad = Vec::new();
    for (step, shift) in [("forward", "+7200"), ("back", "-7200")] {
        std::fs::write(&offset, format!("{shift}\n")).expect("offset file");
        let before = agents[0].log().lines().count();
        // Six resyncs and keepalive rounds with the shifted clock.
        for _ in 0..60 {
            std::thread::sleep(Duration::from_millis(200));
            samples += 1;
            let holders = v.holders();
            let counts: Vec<usize> = (1..=3).map(peers).collect();
            if holders != vec![1] || counts != vec![2, 2, 2] {
                bad.push(format!("{step}: holders {holders:?}, peers {counts:?}"));
            }
        }
        // The agent did read the shifted clock: its log lines carry it.
        let log = agents[0].log();
        let shown = last_log_second(&log).expect("a log line");
        let expected = if step == "forward" { 7200 } else { -7200 };
        let skew = (shown - now_second() - expected).rem_euclid(86_400);
        assert!(
            !(60..=86_400 - 60).contains(&skew),
            "h1's log lines are {expected} s off: last line at {shown}, now {}",
            now_second()
        );
        let after: Vec<&str> = log.lines().skip(before).collect();
        assert!(
            !after
                .iter()
                .any(|l| l.contains("vip state") || l.contains("rejected")),
            "no transition and no rejected record after the {step} jump:\n{}",
            after.join("\n")
        );
    }
    let all = logs();
    let rejected = all.matches("rejected").count();
    eprintln!(
        "clock figure: {samples} samples over two 12 s jumps (+2 h, -2 h): \
         {} with a moved VIP or a lost peer; rejected records {rejected}",
        bad.len()
    );
    assert!(bad.is_empty(), "{bad:?}\n{all}");
    assert_eq!(rejected, 0, "{all}");
}
