//! `linkmesh-cni` called as a container runtime calls it: the spec's
//! environment and JSON, Debian's `host-local` for addresses, pods in
//! their own namespaces on two lab hosts.

use std::process::{Command, Stdio};
use std::time::Duration;

use linkmesh_tests::agent::{self, wait_until};
use linkmesh_tests::cni::{self, CNI_PATH};
use linkmesh_tests::lab::{Lab, must_ip};
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;
use serde_json::Value;

/// A pod: its namespace, and the network it asks for.
struct Pod<'a> {
    host: u8,
    id: String,
    netns: String,
    conf: String,
    lab: &'a Lab,
}

/// A network configuration for `segment`, with host-local handing out
/// `first..=last` of 198.19.77.0/24 from a data directory of `host`'s.
fn conf(lab: &Lab, host: u8, net: &str, segment: &str, first: u8, last: u8) -> String {
    let data = lab.dir().join(format!("h{host}-ipam"));
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": net,
        "type": "linkmesh-cni",
        "segment": segment,
        "stateDir": lab.dir().join(format!("h{host}-state")),
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "198.19.77.0/24", "rangeStart": format!("198.19.77.{first}"), "rangeEnd": format!("198.19.77.{last}")}]],
            "dataDir": data,
        },
    })
    .to_string()
}

/// Runs the plugin in `host`'s namespace (the runtime's, as kubelet's
/// would be): exit status, stdout.
fn call(lab: &Lab, host: u8, vars: &[(&str, &str)], stdin: &str) -> (bool, String) {
    let (ok, out, _) = cni::call(&agent::cni_binary(), &lab.host(host).netns, vars, stdin);
    (ok, out)
}

impl Pod<'_> {
    fn run(&self, command: &str, stdin: &str) -> (bool, String) {
        let (ok, out, _) = cni::call_for_pod(
            &agent::cni_binary(),
            &self.lab.host(self.host).netns,
            command,
            &self.id,
            &self.netns,
            stdin,
        );
        eprintln!(
            "$ CNI_COMMAND={command} CNI_CONTAINERID={} CNI_NETNS=/run/netns/{} CNI_IFNAME=vxeth0 \
             CNI_PATH={CNI_PATH} linkmesh-cni <<< '{stdin}'\n{out}(exit {})",
            self.id,
            self.netns,
            i32::from(!ok)
        );
        (ok, out)
    }

    /// ADD, which must succeed: the result.
    fn add(&self) -> Value {
        let (ok, out) = self.run("ADD", &self.conf);
        assert!(ok, "ADD for {} failed: {out}", self.id);
        serde_json::from_str(&out).expect("ADD prints a JSON result")
    }

    fn address(result: &Value) -> String {
        let cidr = result["ips"][0]["address"].as_str().expect("an address");
        cidr.split('/').next().expect("ip").to_owned()
    }

    fn pings(&self, target: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.netns, "ping", "-c", "2", "-i", "0.2"])
            .args(["-W", "1", target])
            .stdout(Stdio::null())
            .status()
            .expect("running ping")
            .success()
    }

    /// The pod's interface, as `ip -o link` prints it, if it has one.
    fn interface(&self) -> Option<String> {
        let out = Command::new("ip")
            .args(["-n", &self.netns, "-o", "link", "show", "vxeth0"])
            .output()
            .expect("running ip");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The name of `pod`'s host end, as the plugin derives it.
fn host_end_of(pod: &Pod) -> String {
    linkmesh::cni::attach::host_end_name(&pod.id, "vxeth0")
}

/// `host`'s links, one per line.
fn links(lab: &Lab, host: u8) -> String {
    let out = Command::new("ip")
        .args(["-n", &lab.host(host).netns, "-o", "link", "show"])
        .output()
        .expect("running ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The error a failed call printed: its code.
fn error_code(out: &str) -> u64 {
    let e: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(e["msg"].as_str().is_some_and(|m| !m.is_empty()), "{out}");
    assert_eq!(e["cniVersion"], "1.0.0", "{out}");
    e["code"].as_u64().expect("a code")
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn pods_on_a_segment_bridge_reach_each_other_and_no_other_segment() {
    require_root!();
    let m = Testbed::builder(2).build();
    let lab = &m.lab;
    m.admin(&[
        "segment", "add", "blue", "--vni", "100", "--bridge", "lm-blue",
    ]);
    m.admin(&[
        "segment", "add", "red", "--vni", "200", "--bridge", "lm-red",
    ]);
    m.admin(&[
        "segment", "add", "green", "--vni", "300", "--bridge", "lm-green",
    ]);
    let _a1 = m.bare_agent(1).segments(&["blue", "red"]).start();
    let _a2 = m.bare_agent(2).segments(&["blue", "red"]).start();
    // Each host made the segments' own bridges, one per segment, with
    // the device enslaved.
    for host in [1, 2] {
        let ready = wait_until(Duration::from_secs(10), || {
            let l = links(lab, host);
            ["blue: ", "red: "].iter().all(|d| {
                l.lines().any(|line| {
                    line.contains(d)
                        && line.contains(&format!("master lm-{}", d.trim_end_matches(": ")))
                })
            })
        });
        assert!(ready.is_some(), "h{host}: {}", links(lab, host));
    }

    let pod = |host: u8, name: &str, net: &str, segment: &str, first: u8| Pod {
        host,
        id: format!("{name}-0123456789abcdef"),
        netns: lab.add_namespace(name),
        conf: conf(lab, host, net, segment, first, first + 9),
        lab,
    };
    let p1 = pod(1, "p1", "blue-net", "blue", 10);
    let p2 = pod(2, "p2", "blue-net", "blue", 20);
    let p3 = pod(2, "p3", "red-net", "red", 30);

    // Hostile: the pod already has an interface by that name, not ours.
    // ADD fails, gives its address back, and leaves that interface alone.
    must_ip(&[
        "-n", &p1.netns, "link", "add", "vxeth0", "type", "veth", "peer", "name", "theirs0",
    ]);
    let (ok, out) = p1.run("ADD", &p1.conf);
    assert!(!ok, "ADD over an existing vxeth0: {out}");
    assert_eq!(error_code(&out), 5, "{out}");
    assert!(p1.interface().is_some(), "their vxeth0 was removed");
    assert!(
        !links(lab, 1).contains(&host_end_of(&p1)),
        "a host end was left: {}",
        links(lab, 1)
    );
    must_ip(&["-n", &p1.netns, "link", "del", "vxeth0"]);

    // ADD: the pod's end is vxeth0 in its namespace, the host's end is on
    // the segment's bridge, and host-local's address is on vxeth0.
    let r1 = wait_until(Duration::from_secs(10), || p1.run("ADD", &p1.conf).0);
    assert!(r1.is_some(), "ADD on h1 never succeeded");
    // The first ADD succeeded; DEL and ADD again show a repeatable cycle.
    assert!(p1.run("DEL", &p1.conf).0);
    let r1 = p1.add();
    let r2 = p2.add();
    let r3 = p3.add();
    assert_eq!(r1["cniVersion"], "1.0.0");
    assert_eq!(r1["interfaces"][1]["name"], "vxeth0");
    assert_eq!(
        r1["interfaces"][1]["sandbox"],
        format!("/run/netns/{}", p1.netns)
    );
    assert_eq!(r1["ips"][0]["interface"], 1);
    let host_end = r1["interfaces"][0]["name"].as_str().expect("host end");
    let h1_links = links(lab, 1);
    assert!(
        h1_links
            .lines()
            .any(|l| l.contains(&format!(" {host_end}@")) && l.contains("master lm-blue")),
        "{h1_links}"
    );
    let (a1, a2, a3) = (Pod::address(&r1), Pod::address(&r2), Pod::address(&r3));
    assert!(
        a1.starts_with("198.19.77.1") && a2.starts_with("198.19.77.2"),
        "{a1} {a2}"
    );
    assert!(
        p1.interface().is_some_and(|l| l.contains("mtu 1450")),
        "the segment's MTU"
    );

    // Across the overlay within blue; never from red.
    assert!(p1.pings(&a2), "blue pod on h1 cannot reach blue pod on h2");
    assert!(p2.pings(&a1), "blue pod on h2 cannot reach blue pod on h1");
    assert!(!p3.pings(&a1), "a red pod reached a blue pod across hosts");
    assert!(
        !p3.pings(&a2),
        "a red pod reached a blue pod on its own host"
    );
    assert!(!p1.pings(&a3), "a blue pod reached a red pod");

    // CHECK: whole, then with the host end removed by hand.
    let with_prev = |p: &Pod, r: &Value| {
        let mut c: Value = serde_json::from_str(&p.conf).expect("conf");
        c["prevResult"] = r.clone();
        c.to_string()
    };
    let (ok, out) = p2.run("CHECK", &with_prev(&p2, &r2));
    assert!(
        ok && out.trim().is_empty(),
        "CHECK of a whole attachment: {out}"
    );
    let h2_end = r2["interfaces"][0]["name"].as_str().expect("host end");
    must_ip(&["-n", &lab.host(2).netns, "link", "del", h2_end]);
    let (ok, out) = p2.run("CHECK", &with_prev(&p2, &r2));
    assert!(!ok, "CHECK passed with the veth gone: {out}");
    assert_eq!(error_code(&out), 102, "{out}");

    // DEL: twice, and nothing is left behind (the addresses are free
    // again in host-local's store).
    for p in [&p1, &p2, &p3] {
        for round in 1..=2 {
            let (ok, out) = p.run("DEL", &p.conf);
            assert!(ok, "DEL {round} of {}: {out}", p.id);
        }
        assert!(p.interface().is_none(), "{} keeps vxeth0", p.id);
    }
    for host in [1, 2] {
        let left: Vec<_> = links(lab, host)
            .lines()
            .filter(|l| l.contains(": lm") && l.contains('@'))
            .map(str::to_owned)
            .collect();
        assert!(left.is_empty(), "h{host} keeps veths: {left:?}");
        let store = lab.dir().join(format!("h{host}-ipam"));
        let held: Vec<_> = std::fs::read_dir(&store)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|net| {
                std::fs::read_dir(net.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|f| f.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with("198."))
            .collect();
        assert!(held.is_empty(), "h{host}'s host-local still holds {held:?}");
    }

    // Spec errors, as JSON on stdout with a failing exit.
    let (ok, out) = p1.run("ADD", "{\"cniVersion\": \"1.0.0\", \"name\": ");
    assert!(!ok);
    assert_eq!(error_code(&out), 6, "bad JSON: {out}");
    let unknown = conf(lab, 1, "nope-net", "nope", 40, 49);
    let (ok, out) = p1.run("ADD", &unknown);
    assert!(!ok);
    assert_eq!(error_code(&out), 100, "an undefined segment: {out}");
    let not_here = conf(lab, 1, "green-net", "green", 40, 49);
    let (ok, out) = p1.run("ADD", &not_here);
    assert!(!ok);
    assert_eq!(error_code(&out), 101, "a segment h1 did not join: {out}");
    assert!(p1.interface().is_none(), "a refused ADD left vxeth0");
    let (ok, out) = call(lab, 1, &[("CNI_COMMAND", "ADD")], &p1.conf);
    assert!(!ok);
    assert_eq!(error_code(&out), 4, "no CNI_CONTAINERID: {out}");
    let (ok, out) = call(lab, 1, &[("CNI_COMMAND", "VERSION")], "");
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("VERSION JSON");
    assert!(
        v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "1.0.0")),
        "{out}"
    );

    // A segment that goes takes its bridge with it.
    m.admin(&["segment", "rm", "red"]);
    let gone = wait_until(Duration::from_secs(10), || {
        [1, 2].iter().all(|h| !links(lab, *h).contains(": lm-red:"))
    });
    assert!(gone.is_some(), "lm-red stayed: {}", links(lab, 1));
    assert!(links(lab, 1).contains(": lm-blue:"), "lm-blue went too");
}

/// `dist/kubernetes/<name>`.
fn kubernetes_example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist/kubernetes")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_kubernetes_examples_match_the_plugin_the_agent_and_the_unit() {
    // The network attachment's config is one linkmesh-cni accepts.
    let nad = kubernetes_example("network-attachment.yaml");
    let config: String = nad
        .lines()
        .skip_while(|l| l.trim() != "config: |")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .fold(String::new(), |mut text, l| {
            text.push_str(l);
            text.push('\n');
            text
        });
    let conf = linkmesh::cni::spec::NetConf::parse(config.as_bytes())
        .unwrap_or_else(|e| panic!("{e}: {config}"));
    assert_eq!(
        (conf.kind.as_str(), conf.segment.as_str()),
        ("linkmesh-cni", "blue")
    );
    assert_eq!(conf.ipam_type(), Some("host-local"));

    // The DaemonSet grants the unit's capabilities, no more.
    let ds = kubernetes_example("daemonset.yaml");
    let added = ds
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: "))
        .expect("the DaemonSet adds capabilities");
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/linkmesh.service"),
    )
    .expect("reading the unit");
    let ambient: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("ambient capabilities")
        .split_whitespace()
        .map(|c| format!("\"{}\"", c.trim_start_matches("CAP_")))
        .collect();
    assert_eq!(added, format!("[{}]", ambient.join(", ")));
    assert!(ds.contains("privileged: false"));

    // Every LINKMESH_ variable it sets is one the agent reads.
    let help = Command::new(agent::binary())
        .args(["agent", "--help"])
        .output()
        .expect("linkmesh agent --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let vars: Vec<&str> = ds
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("LINKMESH_"))
        .collect();
    assert!(vars.len() >= 4, "{vars:?}");
    for var in vars {
        assert!(
            help.contains(&format!("env: {var}=")),
            "the agent reads no {var}"
        );
    }
}

/// Hostile: a signed segment record that names a host interface (the
/// underlay, the loopback) as its bridge. The agent leaves the segment
/// out and says why; it never enslaves, moves or deletes that interface,
/// and the host's other segments work on.
#[test]
fn a_segment_bridge_never_takes_an_interface_that_is_not_a_bridge() {
    require_root!();
    let m = Testbed::builder(2).build();
    let lab = &m.lab;
    m.admin(&[
        "segment", "add", "blue", "--vni", "100", "--bridge", "lm-blue",
    ]);
    m.admin(&["segment", "add", "evil", "--vni", "666", "--bridge", "eth0"]);
    m.admin(&["segment", "add", "loop", "--vni", "667", "--bridge", "lo"]);
    let before = links(lab, 1);
    let a1 = m.bare_agent(1).segments(&["blue", "evil", "loop"]).start();
    let _a2 = m.bare_agent(2).segments(&["blue"]).start();
    let refused = wait_until(Duration::from_secs(10), || {
        let log = a1.log();
        log.contains("a link named eth0 exists and is not a bridge")
            && log.contains("a link named lo exists and is not a bridge")
    });
    assert!(refused.is_some(), "no problem logged:\n{}", a1.log());
    let blue = wait_until(Duration::from_secs(10), || {
        links(lab, 1)
            .lines()
            .any(|l| l.contains(" blue: ") && l.contains("master lm-blue"))
    });
    assert!(blue.is_some(), "blue stopped working: {}", links(lab, 1));
    let after = links(lab, 1);
    for l in after
        .lines()
        .filter(|l| l.contains(" eth0@") || l.contains(" lo: "))
    {
        assert!(!l.contains("master"), "{l}");
        assert!(
            before.contains(l.split(" link/").next().unwrap_or(l)),
            "changed: {l}"
        );
    }
    assert!(
        !after.contains(" evil: ") && !after.contains(" loop: "),
        "a device was made for a refused segment: {after}"
    );
    // The plugin refuses to attach to it as well.
    let p = Pod {
        host: 1,
        id: "evil-pod".into(),
        netns: lab.add_namespace("pe"),
        conf: conf(lab, 1, "evil-net", "evil", 10, 19),
        lab,
    };
    let (ok, out) = p.run("ADD", &p.conf);
    assert!(!ok, "ADD onto eth0: {out}");
    assert_eq!(error_code(&out), 11, "{out}");
    assert!(p.interface().is_none());
}
