//! Trust and the API under abuse, from an unauthenticated client on the
//! host: a thousand idle connections and a client trickling its headers
//! neither stop `/healthz` nor disturb the floating IP, and are closed in
//! time; basic auth over plain HTTP off loopback is refused at start.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use linkmesh_tests::agent::{self, http};
use linkmesh_tests::testbed::Testbed;
use linkmesh_tests::{SECRET, netns, require_root};

const API: &str = "127.0.0.1:1313";

/// Lets this process open a few thousand sockets.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit pointers; raising the soft limit to the hard one.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
    }
}

/// `GET path` in `ns`, giving up after `within`: the status, or why not.
fn get_within(ns: &str, path: &str, within: Duration) -> Result<u16, String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    netns::run_in(ns, move || {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&API.parse().expect("addr"), within)
            .map_err(|e| format!("connecting: {e}"))?;
        s.set_read_timeout(Some(within.saturating_sub(start.elapsed())))
            .map_err(|e| e.to_string())?;
        s.write_all(request.as_bytes())
            .map_err(|e| format!("sending: {e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("reading after {:?}: {e}", start.elapsed()))?;
        out.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status in {out:?}"))
    })
}

/// A counter from `/metrics` on host `host`.
fn metric(t: &Testbed, host: u8, name: &str) -> u64 {
    let (_, metrics) = http(&t.lab.host(host).netns, "GET", "/metrics", None, None);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

#[test]
fn idle_and_slow_connections_neither_stop_the_api_nor_move_the_vip() {
    require_root!();
    raise_open_files();
    let t = Testbed::builder(2).vip(&[]).build();
    let _agents: Vec<_> = (1..=2).map(|h| t.agent(h, "agent", &[])).collect();
    let owner = t
        .wait_single_holder(Duration::from_secs(15), None)
        .expect("an owner");
    let ns = t.lab.host(owner).netns.clone();

    // A thousand connections that never send a byte.
    let idle: Vec<TcpStream> = netns::run_in(&ns, || {
        (0..1000)
            .map(|_| TcpStream::connect(API).expect("an idle connection"))
            .collect()
    });
    // Then a client that sends half a request, then a byte a second.
    let slow = netns::spawn_in(&ns, move || {
        let mut s = TcpStream::connect(API).expect("connecting");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .expect("sending");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(40) {
            std::thread::sleep(Duration::from_secs(1));
            if s.write_all(b"z").is_err() {
                return Some(start.elapsed());
            }
            let mut buf = [0u8; 1];
            s.set_nonblocking(true).expect("nonblocking");
            let closed = matches!(s.read(&mut buf), Ok(0));
            s.set_nonblocking(false).expect("blocking");
            if closed {
                return Some(start.elapsed());
            }
        }
        None
    });

    for _ in 0..5 {
        let status = get_within(&ns, "/healthz", Duration::from_secs(1));
        assert_eq!(status, Ok(200), "/healthz with 1,000 idle connections");
        assert_eq!(t.holders(), vec![owner], "the VIP stayed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        metric(&t, owner, "linkmesh_api_connections_evicted_total") > 0,
        "past the cap, the longest-idle connections made room"
    );
    let closed_after = slow.join().expect("the slow client");
    assert!(
        closed_after.is_some_and(|d| d < Duration::from_secs(30)),
        "the trickling client is closed: {closed_after:?}"
    );
    assert!(metric(&t, owner, "linkmesh_api_connections_timed_out_total") > 0);
    drop(idle);
    assert_eq!(t.holders(), vec![owner], "the VIP stayed throughout");
}

/// `linkmesh agent --check-config` with `extra`.
fn check(extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    let password = dir.path().join("password");
    std::fs::write(&password, "hunter2-hunter2").expect("password");
    let (ok, out, err) = agent::outcome(
        Command::new(agent::binary())
            .args(["agent", "--check-config", "--secret-file"])
            .arg(&secret)
            .args(["--api-user", "admin", "--api-password-file"])
            .arg(&password)
            .args(extra)
            .env_remove("LINKMESH_SECRET"),
    );
    (ok, format!("{out}{err}"))
}

#[test]
fn basic_auth_over_plain_http_off_loopback_is_refused() {
    let (ok, text) = check(&["--api-listen", "198.18.0.1:1313"]);
    assert!(!ok, "accepted: {text}");
    assert!(text.contains("--api-insecure"), "{text}");
    let (ok, text) = check(&["--api-listen", "198.18.0.1:1313", "--api-insecure"]);
    assert!(ok, "{text}");
    let (ok, text) = check(&["--api-listen", "127.0.0.1:1313"]);
    assert!(ok, "loopback is fine: {text}");
}
