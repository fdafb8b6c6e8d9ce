//! Repeated identical failures are summarised: an etcd outage costs a line
//! per failure kind and a "(repeated N times in S s)" line per 10 s, not a
//! line per retry, and nothing is lost in the count.

use std::time::Duration;

use linkmesh_tests::agent::{http, wait_until};
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

/// The N of "(repeated N times in S s)".
fn repeated(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once("(repeated ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn an_etcd_outage_logs_summaries_that_account_for_every_failure() {
    require_root!();
    let v = Testbed::builder(1).vip(&[]).build();
    let a = v.agent(1, "a", &["--etcd-loss-policy", "keep"]);
    let up = wait_until(Duration::from_secs(15), || {
        a.log().contains("registered host=h1")
    });
    assert!(up.is_some(), "{}", a.log());
    v.etcd.signal(libc::SIGSTOP);
    // Long enough that each kind of failure (broken stream, timeout, HTTP/2
    // keepalive) repeats: with 20 s, four kinds once or twice each once
    // gave as many lines as failures.
    std::thread::sleep(Duration::from_secs(40));
    v.etcd.signal(libc::SIGCONT);
    let ns = &v.lab.host(1).netns;
    let restarts = || {
        let (_, body) = http(ns, "GET", "/metrics", None, None);
        body.lines()
            .find(|l| l.starts_with("linkmesh_etcd_watch_restarts_total{watch=\"registry\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
    };
    // Back in sync, and every open window has ended and been reported.
    let synced = wait_until(Duration::from_secs(20), || {
        a.log()
            .lines()
            .last()
            .is_some_and(|l| !l.contains("failed"))
            && restarts().is_some()
    });
    assert!(synced.is_some(), "{}", a.log());
    // The 10 s summary window, the 1 s flush tick, and slack.
    std::thread::sleep(Duration::from_secs(12));
    let failures = restarts().expect("the metric");
    let log = a.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("registry sync failed"))
        .collect();
    let logged = lines.iter().filter(|l| repeated(l).is_none()).count() as u64;
    let summarised: u64 = lines.iter().filter_map(|l| repeated(l)).sum();
    eprintln!(
        "logs figure: registry sync failures={failures} lines={} (first occurrences {logged}, summaries {})",
        lines.len(),
        lines.len() as u64 - logged
    );
    assert!(
        failures >= 5,
        "the outage caused retries: {failures}\n{log}"
    );
    assert!(
        summarised > 0 && lines.iter().any(|l| l.contains(" times in ")),
        "repeats were summarised:\n{log}"
    );
    assert_eq!(
        logged + summarised,
        failures,
        "every failure is a line or part of a summary:\n{log}"
    );
    assert!(
        (lines.len() as u64) < failures,
        "fewer lines than failures:\n{log}"
    );
}
