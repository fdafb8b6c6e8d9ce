//! A floating-IP lab: `agents` hosts that may hold a VIP, one client host
//! after them, a real etcd (one member, or a cluster) on the lab's gateway
//! and the VIP defined.

use std::net::IpAddr;
use std::time::Duration;

use crate::agent::{self, admin, wait_until};
use crate::etcd::{Endpoints, Etcd, EtcdCluster};
use crate::kernel;
use crate::lab::Lab;
use crate::process::Process;

pub struct VipLab<E = Etcd> {
    pub lab: Lab,
    pub etcd: E,
    pub secret: std::path::PathBuf,
    pub vip: IpAddr,
    pub id: String,
    /// Hosts 1..=agents run agents; host agents + 1 is the client.
    pub agents: u8,
}

impl VipLab {
    /// A lab of `agents` + 1 hosts, etcd, and the VIP 198.18.S.100/24
    /// defined with `linkmesh ip add` (plus `extra_record`).
    #[must_use]
    pub fn new(agents: u8, secret: &str, extra_record: &[&str]) -> Self {
        let lab = Lab::new(agents + 1);
        let etcd = Etcd::start_on(IpAddr::V4(lab.gateway()));
        Self::on(lab, etcd, agents, secret, extra_record)
    }
}

impl VipLab<EtcdCluster> {
    /// Like [`VipLab::new`], on an etcd cluster of `members` members (every
    /// agent gets every member's URL).
    #[must_use]
    pub fn with_cluster(agents: u8, members: usize, secret: &str, extra_record: &[&str]) -> Self {
        let lab = Lab::new(agents + 1);
        let etcd = EtcdCluster::start_on(IpAddr::V4(lab.gateway()), members);
        Self::on(lab, etcd, agents, secret, extra_record)
    }
}

impl<E: Endpoints> VipLab<E> {
    fn on(lab: Lab, etcd: E, agents: u8, secret: &str, extra_record: &[&str]) -> Self {
        let secret = agent::secret_file(&lab, "secret", &[secret]);
        let vip: IpAddr = format!("198.18.{}.100", lab.slot()).parse().expect("ip");
        let cidr = format!("{vip}/24");
        let mut args = vec!["ip", "add", cidr.as_str()];
        args.extend_from_slice(extra_record);
        let _ = admin(&etcd.server_arg(), &secret, &args);
        let id = format!("{vip}_24");
        Self {
            lab,
            etcd,
            secret,
            vip,
            id,
            agents,
        }
    }

    /// The `--etcd-server` value agents and admin commands get.
    #[must_use]
    pub fn endpoints(&self) -> String {
        self.etcd.server_arg()
    }

    /// The client host's index.
    #[must_use]
    pub fn client(&self) -> u8 {
        self.agents + 1
    }

    /// Starts an agent on `host` with the VIP interface eth0 and a 2 s
    /// ownership lease (`extra` can override both).
    #[must_use]
    pub fn agent(&self, host: u8, label: &str, extra: &[&str]) -> Process {
        self.agent_with(host, label, &[], extra)
    }

    /// Like [`VipLab::agent`], joining `segments` too.
    #[must_use]
    pub fn agent_with(&self, host: u8, label: &str, segments: &[&str], extra: &[&str]) -> Process {
        // Default announcement interval (1.1 s): a graceful handover must not
        // depend on the second burst.
        let mut args = vec!["--vip-interface", "eth0"];
        if !extra.contains(&"--keepalive-interval") {
            args.extend_from_slice(&["--keepalive-interval", "2"]);
        }
        args.extend_from_slice(extra);
        agent::start_labeled(
            &self.lab,
            host,
            label,
            &self.endpoints(),
            &self.secret,
            segments,
            &args,
        )
    }

    /// Defines segment `name` with `vni`.
    pub fn add_segment(&self, name: &str, vni: u32) {
        let _ = admin(
            &self.endpoints(),
            &self.secret,
            &["segment", "add", name, "--vni", &vni.to_string()],
        );
    }

    /// Starts an agent on `host` that joins `segments` too, with the VIP
    /// interface eth0 and the default lease.
    #[must_use]
    pub fn mesh_agent(&self, host: u8, segments: &[&str]) -> Process {
        agent::start(
            &self.lab,
            host,
            &self.endpoints(),
            &self.secret,
            segments,
            &["--vip-interface", "eth0"],
        )
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

    /// The owner key's value (a host name), if any.
    #[must_use]
    pub fn owner_key(&self) -> Option<String> {
        self.get(&format!("/linkmesh/vips/{}/owner", self.id))
            .into_iter()
            .next()
            .map(|(_, v)| v)
    }

    /// Keys and values under `prefix` in etcd.
    #[must_use]
    pub fn get(&self, prefix: &str) -> Vec<(String, String)> {
        self.try_get(prefix, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("reading {prefix} from etcd: {e}"))
    }

    /// Like [`VipLab::get`], giving up after `timeout` (while etcd is
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
