//! The one test fixture: a lab of hosts (agent hosts, then optionally a
//! client), a real etcd on its gateway (one member, or a cluster), the test
//! secret, and, when asked for, segments and the floating IP
//! 198.18.S.100/24. Every integration test, the chaos rig, the hostile
//! suite, the benchmarks and the demo build on it.
//!
//! ```no_run
//! use linkmesh_tests::testbed::Testbed;
//! let t = Testbed::builder(3).segment("blue", 100).vip(&[]).build();
//! let agents = t.start_agents(&["blue"], &[]);
//! t.wait_mesh("blue", 1..=3, std::time::Duration::from_secs(10))
//!     .expect("a full mesh");
//! ```

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::{self, Agent, admin, wait_until};
use crate::etcd::{Endpoints, Etcd, EtcdCluster};
use crate::kernel;
use crate::lab::Lab;
use crate::process::Process;

/// Field `field` of a signed envelope's body, as text (the raw value when
/// it is not an envelope).
#[must_use]
pub fn body_field(value: &str, field: &str) -> String {
    serde_json::from_str::<serde_json::Value>(value)
        .ok()
        .and_then(|v| {
            let f = v.get("body")?.get(field)?.clone();
            Some(f.as_str().map_or_else(|| f.to_string(), str::to_owned))
        })
        .unwrap_or_else(|| value.to_owned())
}

/// What to build.
#[must_use]
pub struct Builder {
    agents: u8,
    client: bool,
    vip: Option<Vec<String>>,
    segments: Vec<(String, u32)>,
}

impl Builder {
    /// One more host after the agent hosts, for a client (a VIP implies it).
    pub fn client(mut self) -> Self {
        self.client = true;
        self
    }

    /// Defines the floating IP 198.18.S.100/24 with `linkmesh ip add`
    /// (`extra_record`: more of its options, `--exclude h1` say), and adds
    /// the client host.
    pub fn vip(mut self, extra_record: &[&str]) -> Self {
        self.vip = Some(extra_record.iter().map(|a| (*a).to_owned()).collect());
        self.client = true;
        self
    }

    /// Defines segment `name` with `vni`.
    pub fn segment(mut self, name: &str, vni: u32) -> Self {
        self.segments.push((name.to_owned(), vni));
        self
    }

    fn lab(&self) -> Lab {
        Lab::new(self.agents + u8::from(self.client))
    }

    /// With a single etcd member.
    #[must_use]
    pub fn build(self) -> Testbed {
        let lab = self.lab();
        let etcd = Etcd::start_on(IpAddr::V4(lab.gateway()));
        self.on(lab, etcd)
    }

    /// On an etcd cluster of `members` members (every agent gets every
    /// member's URL).
    #[must_use]
    pub fn build_cluster(self, members: usize) -> Testbed<EtcdCluster> {
        let lab = self.lab();
        let etcd = EtcdCluster::start_on(IpAddr::V4(lab.gateway()), members);
        self.on(lab, etcd)
    }

    fn on<E: Endpoints>(self, lab: Lab, etcd: E) -> Testbed<E> {
        let secret = agent::secret_file(&lab, "secret", &[crate::SECRET]);
        let vip: IpAddr = format!("198.18.{}.100", lab.slot()).parse().expect("ip");
        let t = Testbed {
            id: format!("{vip}_24"),
            vip,
            secret,
            etcd,
            lab,
            agents: self.agents,
            client: self.client,
        };
        for (name, vni) in &self.segments {
            t.add_segment(name, *vni);
        }
        if let Some(extra) = &self.vip {
            let cidr = format!("{vip}/24");
            let mut args = vec!["ip", "add", cidr.as_str()];
            args.extend(extra.iter().map(String::as_str));
            t.admin(&args);
        }
        t
    }
}

/// A built lab: hosts, etcd, the secret file, and the VIP's address.
pub struct Testbed<E = Etcd> {
    pub lab: Lab,
    pub etcd: E,
    pub secret: PathBuf,
    /// The floating IP 198.18.S.100 (defined if the builder said so).
    pub vip: IpAddr,
    /// Its id, `198.18.S.100_24`.
    pub id: String,
    /// Hosts 1..=agents are agent hosts.
    pub agents: u8,
    client: bool,
}

impl Testbed {
    /// `agents` agent hosts, etcd, the secret; the rest as the builder says.
    pub fn builder(agents: u8) -> Builder {
        Builder {
            agents,
            client: false,
            vip: None,
            segments: Vec::new(),
        }
    }
}

impl<E: Endpoints> Testbed<E> {
    /// The `--etcd-server` value agents and admin commands get.
    #[must_use]
    pub fn endpoints(&self) -> String {
        self.etcd.server_arg()
    }

    /// The client host's index (the host after the agents).
    #[must_use]
    pub fn client(&self) -> u8 {
        assert!(self.client, "this testbed has no client host");
        self.agents + 1
    }

    /// Runs an admin command (`linkmesh segment ...`, `linkmesh ip ...`);
    /// returns what it printed (its effect is usually the point).
    pub fn admin(&self, args: &[&str]) -> String {
        admin(&self.endpoints(), &self.secret, args)
    }

    /// Defines segment `name` with `vni`.
    pub fn add_segment(&self, name: &str, vni: u32) {
        self.admin(&["segment", "add", name, "--vni", &vni.to_string()]);
    }

    /// An agent for host `host` with nothing but etcd and the secret set.
    pub fn bare_agent(&self, host: u8) -> Agent<'_> {
        Agent::new(&self.lab, host, &self.endpoints(), &self.secret)
    }

    /// An agent for host `host` that may hold the VIP: `--vip-interface
    /// eth0` and a 2 s ownership lease (`.args` can override both).
    /// Default announcement interval (1.1 s): a graceful handover must not
    /// depend on the second burst.
    pub fn vip_agent(&self, host: u8) -> Agent<'_> {
        self.bare_agent(host)
            .args(&["--vip-interface", "eth0", "--keepalive-interval", "2"])
    }

    /// [`Testbed::vip_agent`], logging to `<host>-<label>.log`, with
    /// `extra` options, started.
    #[must_use]
    pub fn agent(&self, host: u8, label: &str, extra: &[&str]) -> Process {
        self.vip_agent(host).label(label).args(extra).start()
    }

    /// Like [`Testbed::agent`], joining `segments` too.
    #[must_use]
    pub fn agent_with(&self, host: u8, label: &str, segments: &[&str], extra: &[&str]) -> Process {
        self.vip_agent(host)
            .label(label)
            .segments(segments)
            .args(extra)
            .start()
    }

    /// An agent on `host` that joins `segments`, with the VIP interface
    /// eth0 and the default ownership lease, started.
    #[must_use]
    pub fn mesh_agent(&self, host: u8, segments: &[&str]) -> Process {
        self.bare_agent(host)
            .segments(segments)
            .args(&["--vip-interface", "eth0"])
            .start()
    }

    /// A bare agent on every agent host, joining `segments`, with `extra`.
    #[must_use]
    pub fn start_agents(&self, segments: &[&str], extra: &[&str]) -> Vec<Process> {
        (1..=self.agents)
            .map(|h| self.bare_agent(h).segments(segments).args(extra).start())
            .collect()
    }

    /// The underlay addresses of `hosts` but `host`, sorted: `host`'s peers
    /// in a full mesh.
    #[must_use]
    pub fn others(&self, host: u8, hosts: RangeInclusive<u8>) -> Vec<IpAddr> {
        let mut others: Vec<IpAddr> = hosts
            .filter(|o| *o != host)
            .map(|o| IpAddr::V4(self.lab.host(o).addr))
            .collect();
        others.sort();
        others
    }

    /// Waits until `device` on `host` has exactly `want` as peers.
    #[must_use]
    pub fn wait_peers(
        &self,
        host: u8,
        device: &str,
        want: &[IpAddr],
        timeout: Duration,
    ) -> Option<Duration> {
        agent::wait_peers(&self.lab.host(host).netns, device, want, timeout)
    }

    /// Waits (up to `timeout` per host) until every host of `hosts` has
    /// every other as a peer on `segment`: the time it took, or which host
    /// did not and what it has.
    pub fn wait_mesh(
        &self,
        segment: &str,
        hosts: RangeInclusive<u8>,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let start = std::time::Instant::now();
        for h in hosts.clone() {
            let others = self.others(h, hosts.clone());
            if self.wait_peers(h, segment, &others, timeout).is_none() {
                return Err(format!(
                    "no full mesh at h{h}: {:?} on {segment}, want {others:?}",
                    agent::peers(&self.lab.host(h).netns, segment)
                ));
            }
        }
        Ok(start.elapsed())
    }

    /// Agent hosts with the VIP bound right now.
    #[must_use]
    pub fn holders(&self) -> Vec<u8> {
        self.lab.holders(self.vip, 1..=self.agents)
    }

    /// Waits until exactly one host (not `not`) holds the VIP.
    #[must_use]
    pub fn wait_single_holder(&self, timeout: Duration, not: Option<u8>) -> Option<u8> {
        let mut found = None;
        wait_until(timeout, || {
            let h = self.holders();
            if h.len() == 1 && Some(h[0]) != not {
                found = Some(h[0]);
                true
            } else {
                false
            }
        })?;
        found
    }

    /// The client's neighbour entry for the VIP (its MAC), if any.
    #[must_use]
    pub fn client_sees(&self) -> Option<[u8; 6]> {
        kernel::neighbours(&self.lab.host(self.client()).netns)
            .into_iter()
            .find(|n| n.ip == self.vip)
            .and_then(|n| n.mac)
    }

    /// The host the owner key names, if any (the value is a signed
    /// envelope: its body's `host`).
    #[must_use]
    pub fn owner_key(&self) -> Option<String> {
        self.get(&format!("/linkmesh/vips/{}/owner", self.id))
            .into_iter()
            .next()
            .map(|(_, v)| body_field(&v, "host"))
    }

    /// Each host's state for the VIP as written in etcd: (key, state).
    #[must_use]
    pub fn states(&self) -> Vec<(String, String)> {
        self.get(&format!("/linkmesh/vips/{}/state/", self.id))
            .into_iter()
            .map(|(k, v)| (k, body_field(&v, "state")))
            .collect()
    }

    /// Each host's suspicion of the owner in etcd: (key, suspected lease).
    #[must_use]
    pub fn suspects(&self) -> Vec<(String, String)> {
        self.get(&format!("/linkmesh/vips/{}/suspect/", self.id))
            .into_iter()
            .map(|(k, v)| (k, body_field(&v, "lease")))
            .collect()
    }

    /// The VIP keys a request could write: not the agents' own owner,
    /// state and suspect keys (to check that nothing was written).
    #[must_use]
    pub fn vip_records(&self) -> Vec<(String, String)> {
        self.get("/linkmesh/vips/")
            .into_iter()
            .filter(|(k, _)| {
                !(k.ends_with("/owner") || k.contains("/state/") || k.contains("/suspect/"))
            })
            .collect()
    }

    /// [`Testbed::agent`] on `host` whose API takes changes from user
    /// `admin` with `password`, once its API listens.
    #[must_use]
    pub fn agent_with_api_user(&self, host: u8, password: &str) -> Process {
        let file = self.lab.dir().join("api-password");
        std::fs::write(&file, format!("{password}\n")).expect("writing the password");
        let file = file.to_string_lossy().into_owned();
        let a = self.agent(
            host,
            "agent",
            &["--api-user", "admin", "--api-password-file", &file],
        );
        let up = wait_until(Duration::from_secs(15), || {
            a.log().contains("API listening")
        });
        assert!(up.is_some(), "the API answers:\n{}", a.log());
        a
    }

    /// Keys and values under `prefix` in etcd.
    #[must_use]
    pub fn get(&self, prefix: &str) -> Vec<(String, String)> {
        self.try_get(prefix, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("reading {prefix} from etcd: {e}"))
    }

    /// Like [`Testbed::get`], giving up after `timeout` (while etcd is
    /// electing a leader, say) with the error.
    pub fn try_get(
        &self,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Vec<(String, String)>, String> {
        let endpoints = self.etcd.client_urls();
        let key = prefix.to_owned();
        let read = async move {
            let mut c = etcd_client::Client::connect(endpoints, None)
                .await
                .map_err(|e| e.to_string())?;
            let r = c
                .get(key, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .map_err(|e| e.to_string())?;
            Ok(r.kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    )
                })
                .collect())
        };
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async move {
                tokio::time::timeout(timeout, read)
                    .await
                    .map_err(|_| format!("no answer within {timeout:?}"))?
            })
    }
}
