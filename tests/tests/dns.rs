//! The DNS view: an agent with `--hosts-dir` keeps a hosts file that
//! Debian's dnsmasq (`--hostsdir`, in host 1's namespace) serves, asked
//! with `dig` from host 2's namespace. A host's name resolves soon after
//! it joins and stops resolving when it leaves (dnsmasq drops the names
//! of a replaced file); a named VIP resolves to its address; a host name
//! that is no DNS label is left out of the file and counted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use linkmesh_tests::agent::{metric, wait_until};
use linkmesh_tests::process::Process;
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

/// Generous: the figure that matters is printed, not asserted.
const DEADLINE: Duration = Duration::from_secs(10);

/// dnsmasq on host `host`, serving the hosts files in `dir` (which must
/// exist: dnsmasq watches it from the start) on the host's address, and
/// answering NXDOMAIN itself for the rest of `linkmesh` and `lab`.
struct Dnsmasq {
    server: String,
    /// Where the queries are asked from.
    client_ns: String,
    process: Process,
}

impl Dnsmasq {
    fn start(t: &Testbed, host: u8, dir: &Path, client: u8) -> Self {
        let server = t.lab.host(host).addr.to_string();
        let mut cmd = Command::new("dnsmasq");
        cmd.arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg(format!("--hostsdir={}", dir.display()))
            .arg("--local=/linkmesh/")
            .arg("--local=/lab/")
            .arg(format!("--listen-address={server}"))
            .arg("--bind-interfaces")
            .arg("--port=53")
            .arg(format!(
                "--pid-file={}",
                t.lab.dir().join("dnsmasq.pid").display()
            ))
            // The lab's directory is root's alone (0700); a real
            // hostsdir is world-readable, like the file the agent writes.
            .arg("--user=root")
            .arg("--group=root")
            .arg("--log-queries")
            .arg("--log-facility=-");
        let process = t.lab.spawn(host, "dnsmasq", cmd);
        let d = Self {
            server,
            client_ns: t.lab.host(client).netns.clone(),
            process,
        };
        let up = wait_until(DEADLINE, || {
            d.dig(&["+short", "nothing.linkmesh"]).is_some()
        });
        assert!(up.is_some(), "dnsmasq answers: {}", d.process.log());
        d
    }

    /// `dig @server ARGS` from the client's namespace: its output, or
    /// `None` when no answer came (not even NXDOMAIN).
    fn dig(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client_ns, "dig"])
            .arg(format!("@{}", self.server))
            .args(["+time=1", "+tries=1"])
            .args(args)
            .output()
            .expect("running dig");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The addresses `name` resolves to (A and AAAA), sorted.
    fn lookup(&self, name: &str) -> Vec<String> {
        let mut all = Vec::new();
        for kind in ["A", "AAAA"] {
            if let Some(out) = self.dig(&["+short", name, kind]) {
                all.extend(out.lines().map(str::to_owned));
            }
        }
        all.sort();
        all
    }

    /// The answer section for `name`, as dig prints it (for the log).
    fn transcript(&self, name: &str) -> String {
        let args = ["+noall", "+answer", "+comments", name, "A"];
        format!(
            "$ ip netns exec {} dig @{} {}\n{}",
            self.client_ns,
            self.server,
            args.join(" "),
            self.dig(&args).unwrap_or_default()
        )
    }
}

/// The hosts file the agent keeps in `dir` (default domain).
fn hosts_file(dir: &Path) -> PathBuf {
    dir.join("linkmesh.hosts")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until `name`'s A records are exactly `want` (empty: none), one
/// query a poll; returns how long it took.
fn wait_lookup(dns: &Dnsmasq, name: &str, want: &[String]) -> Duration {
    let a = |name: &str| {
        let mut got: Vec<String> = dns
            .dig(&["+short", name, "A"])
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        got.sort();
        got
    };
    let took = wait_until(DEADLINE, || a(name) == want);
    took.unwrap_or_else(|| {
        panic!(
            "{name} resolves to {:?}, not {want:?}; dnsmasq:\n{}",
            dns.lookup(name),
            dns.process.log()
        )
    })
}

#[test]
fn dnsmasq_serves_hosts_as_they_come_and_go_and_named_vips() {
    require_root!();
    let t = Testbed::builder(2).build();
    let dir = t.lab.dir().join("h1-hosts.d");
    std::fs::create_dir(&dir).expect("the hosts directory");
    let dns = Dnsmasq::start(&t, 1, &dir, 2);
    let hosts_dir = dir.to_str().expect("utf-8");
    let _h1 = t.agent(1, "agent", &["--hosts-dir", hosts_dir]);
    let h1_addr = vec![t.lab.host(1).addr.to_string()];
    let took = wait_lookup(&dns, "h1.linkmesh", &h1_addr);
    println!(
        "h1.linkmesh resolved {} ms after its agent started",
        took.as_millis()
    );

    // Host 2 joins: its name resolves within a second of its record.
    let started = Instant::now();
    let h2 = t.agent(2, "agent", &[]);
    let registered =
        wait_until(DEADLINE, || !t.get("/linkmesh/hosts/h2").is_empty()).expect("h2 registers");
    let h2_addr = vec![t.lab.host(2).addr.to_string()];
    let resolved = wait_lookup(&dns, "h2.linkmesh", &h2_addr);
    println!(
        "h2.linkmesh resolved {} ms after h2's record appeared in etcd (registered {} ms, \
         resolved {} ms after its agent started)",
        resolved.as_millis(),
        registered.as_millis(),
        started.elapsed().as_millis()
    );
    println!("{}", dns.transcript("h2.linkmesh"));
    let file = read(&hosts_file(&dir));
    assert!(file.starts_with("# Written by linkmesh"), "{file}");
    assert!(
        file.contains(&format!("{} h2.linkmesh\n", h2_addr[0])),
        "{file}"
    );

    // A named VIP, whichever host holds it (none does here).
    let vip = t.vip.to_string();
    let added = Instant::now();
    t.admin(&["ip", "add", &format!("{vip}/32"), "--name", "web.lab"]);
    let took = wait_lookup(&dns, "web.lab", std::slice::from_ref(&vip));
    println!(
        "web.lab resolved to the VIP {} ms after `ip add` returned ({} ms with it)",
        took.as_millis(),
        added.elapsed().as_millis()
    );
    println!("{}", dns.transcript("web.lab"));

    // Host 2 leaves (a graceful stop deletes its record): its name goes.
    h2.signal(libc::SIGTERM).expect("SIGTERM");
    let stopped = Instant::now();
    assert!(
        h2.wait_timeout(DEADLINE).is_some(),
        "h2 stops: {}",
        h2.log()
    );
    let gone = wait_lookup(&dns, "h2.linkmesh", &[]);
    println!(
        "h2.linkmesh stopped resolving {} ms after SIGTERM ({} ms after h2 exited)",
        stopped.elapsed().as_millis(),
        gone.as_millis()
    );
    println!("{}", dns.transcript("h2.linkmesh"));
    assert!(!read(&hosts_file(&dir)).contains("h2.linkmesh"));
    assert_eq!(dns.lookup("h1.linkmesh"), h1_addr, "the rest stays");
    assert_eq!(dns.lookup("web.lab"), vec![vip.clone()], "the rest stays");

    // The VIP's record goes: so does its name.
    t.admin(&["ip", "rm", &format!("{vip}_32")]);
    wait_lookup(&dns, "web.lab", &[]);
    assert_eq!(
        metric(&t.lab.host(1).netns, "linkmesh_dns_write_failures_total"),
        Some(0)
    );
    let lines: Vec<String> = read(&hosts_file(&dir))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines, [format!("{} h1.linkmesh", h1_addr[0])]);
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries, ["linkmesh.hosts"], "no temporary file left behind");
    // All of it from the one dnsmasq, re-reading the file as it changed.
    assert!(dns.process.is_running(), "{}", dns.process.log());
    let reads = dns.process.log().matches("linkmesh.hosts - ").count();
    println!("dnsmasq read the hosts file {reads} times");
    assert!(
        reads >= 4,
        "dnsmasq re-read the file: {}",
        dns.process.log()
    );
}

#[test]
fn a_host_name_that_is_no_dns_label_is_left_out_and_counted() {
    require_root!();
    let t = Testbed::builder(3).build();
    let dir = t.lab.dir().join("h1-hosts.d");
    std::fs::create_dir(&dir).expect("the hosts directory");
    let dns = Dnsmasq::start(&t, 1, &dir, 3);
    let h1 = t.agent(1, "agent", &["--hosts-dir", dir.to_str().expect("utf-8")]);
    let ns = t.lab.host(1).netns.clone();
    // A valid linkmesh host name, but no DNS label.
    let bad = t.agent(2, "agent", &["--hostname", "bad_name"]);
    let _h3 = t.agent(3, "agent", &[]);
    let h3_addr = vec![t.lab.host(3).addr.to_string()];
    wait_lookup(&dns, "h3.linkmesh", &h3_addr);
    let counted = wait_until(DEADLINE, || {
        metric(&ns, "linkmesh_dns_names_left_out") == Some(1)
    });
    assert!(counted.is_some(), "bad_name is counted: {}", h1.log());
    assert!(
        !t.get("/linkmesh/hosts/bad_name").is_empty(),
        "it is registered"
    );
    let file = read(&hosts_file(&dir));
    assert!(!file.contains("bad"), "{file}");
    assert!(dns.lookup("bad_name.linkmesh").is_empty());
    assert!(dns.lookup("bad-name.linkmesh").is_empty());
    assert_eq!(metric(&ns, "linkmesh_dns_names"), Some(2), "h1 and h3");

    // More renders (a named VIP comes) log it no more.
    let vip = t.vip.to_string();
    t.admin(&["ip", "add", &format!("{vip}/32"), "--name", "web.lab"]);
    wait_lookup(&dns, "web.lab", std::slice::from_ref(&vip));
    let logged = |log: &str| log.matches("left out of the hosts file").count();
    assert_eq!(logged(&h1.log()), 1, "logged once: {}", h1.log());
    assert!(h1.log().contains("bad_name"), "the log names it");

    // It leaves: nothing is left out any more.
    bad.signal(libc::SIGTERM).expect("SIGTERM");
    assert!(bad.wait_timeout(DEADLINE).is_some(), "bad_name stops");
    let cleared = wait_until(DEADLINE, || {
        metric(&ns, "linkmesh_dns_names_left_out") == Some(0)
    });
    assert!(cleared.is_some(), "{}", h1.log());
}
