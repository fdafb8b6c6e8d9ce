//! Synthetic peer records written straight to etcd (signed, under one lease
//! the benchmark grants), and the kernel FDB changes they cause on an
//! agent's host: shared by the mesh and scale benchmarks.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use linkmesh::addr::MacAddr;
use linkmesh::registry::{HostRecord, Keys, Secrets, seal};
use linkmesh_tests::SECRET;
use linkmesh_tests::etcd::Etcd;
use linkmesh_tests::lab::Lab;
use linkmesh_tests::netns;
use linkmesh_tests::{agent, kernel};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};

/// The synthetic peers' underlay prefix (inside 198.18.0.0/15).
pub const PEER_PREFIX: &str = "198.19.0.0/16";

/// The synthetic peer `i`'s underlay address, in [`PEER_PREFIX`].
pub fn peer_addr(i: usize) -> IpAddr {
    let high = u8::try_from((i / 250) % 256).unwrap_or(0);
    let low = u8::try_from(i % 250 + 1).unwrap_or(1);
    IpAddr::V4(Ipv4Addr::new(198, 19, high, low))
}

/// Peer `i`'s device MAC in `blue`: its own, as a real host's is.
pub fn peer_mac(i: usize) -> MacAddr {
    let b = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
    MacAddr([2, 0x19, b[0], b[1], b[2], b[3]])
}

/// Peer `i`'s overlay address in `blue`. It takes the same numbers as its
/// underlay address: the two are different networks, and this one exists
/// only as a neighbour entry on the agent's segment device (no packet is
/// ever sent to it), which leaves room for 50,000 peers inside
/// 198.18.0.0/15.
pub fn peer_overlay(i: usize) -> IpAddr {
    peer_addr(i)
}

/// Peer `i`'s record; with `overlay`, it publishes its overlay address.
fn peer_record(i: usize, overlay: bool) -> HostRecord {
    HostRecord {
        hostname: format!("peer{i}"),
        address: peer_addr(i),
        segments: [("blue".to_owned(), peer_mac(i))].into(),
        agent_version: "bench".into(),
        heartbeat_nonce: None,
        overlay: if overlay {
            [("blue".to_owned(), [peer_overlay(i)])]
                .into_iter()
                .collect()
        } else {
            linkmesh::registry::host::Overlay::default()
        },
    }
}

/// Writes synthetic peers (joined to segment `blue`) under `/linkmesh`.
pub struct Seeder {
    client: etcd_client::Client,
    secrets: Secrets,
    keys: Keys,
    lease: i64,
    /// Records publish an overlay address (for `flood: none`).
    overlay: bool,
}

impl Seeder {
    /// A client of `endpoint` writing under a new lease of `ttl` seconds.
    pub async fn connect(endpoint: &str, ttl: i64) -> anyhow::Result<Self> {
        let mut client = etcd_client::Client::connect([endpoint], None)
            .await
            .with_context(|| format!("connecting to etcd at {endpoint}"))?;
        let lease = client
            .lease_grant(ttl, None)
            .await
            .context("granting the peers' lease")?
            .id();
        Self::with_client(client, lease)
    }

    /// A new client of `endpoint` writing under an existing `lease`.
    pub async fn reconnect(endpoint: &str, lease: i64) -> anyhow::Result<Self> {
        let client = etcd_client::Client::connect([endpoint], None)
            .await
            .with_context(|| format!("connecting to etcd at {endpoint}"))?;
        Self::with_client(client, lease)
    }

    fn with_client(client: etcd_client::Client, lease: i64) -> anyhow::Result<Self> {
        Ok(Self {
            client,
            secrets: Secrets::from_text(SECRET)?,
            keys: Keys::new("/linkmesh"),
            lease,
            overlay: false,
        })
    }

    /// Records from now on publish each peer's overlay address.
    #[must_use]
    pub fn with_overlay(mut self) -> Self {
        self.overlay = true;
        self
    }

    /// The lease the records are written under.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Peer `i`'s record as written at `key` (signed for it).
    fn value(&self, key: &str, i: usize) -> anyhow::Result<Vec<u8>> {
        Ok(seal(
            &self.secrets,
            key,
            self.lease,
            linkmesh::clock::unix_now(),
            &peer_record(i, self.overlay),
        )?)
    }

    /// Bytes peer `i`'s record takes in etcd (key and signed value).
    pub fn record_bytes(&self, i: usize) -> anyhow::Result<usize> {
        let key = self.keys.host(&format!("peer{i}"));
        Ok(key.len() + self.value(&key, i)?.len())
    }

    /// Registers peer `i`.
    pub async fn put(&self, i: usize) -> anyhow::Result<()> {
        self.put_at(&self.keys.host(&format!("peer{i}")), i).await
    }

    /// Writes peer `i`'s record (signed for `key`) at `key`.
    pub async fn put_at(&self, key: &str, i: usize) -> anyhow::Result<()> {
        let value = self.value(key, i)?;
        let mut kv = self.client.kv_client();
        kv.put(
            key,
            value,
            Some(etcd_client::PutOptions::new().with_lease(self.lease)),
        )
        .await
        .with_context(|| format!("putting {key}"))?;
        Ok(())
    }

    /// Registers peers `0..n`, 64 writes in flight.
    pub async fn put_all(&self, n: usize) -> anyhow::Result<()> {
        let results: Vec<_> = futures::stream::iter(0..n)
            .map(|i| self.put(i))
            .buffer_unordered(64)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        Ok(())
    }

    /// Removes peer `i`'s record.
    pub async fn delete(&self, i: usize) -> anyhow::Result<()> {
        self.delete_at(&self.keys.host(&format!("peer{i}"))).await
    }

    /// Removes the key `key`.
    pub async fn delete_at(&self, key: &str) -> anyhow::Result<()> {
        let mut kv = self.client.kv_client();
        kv.delete(key, None)
            .await
            .with_context(|| format!("deleting {key}"))?;
        Ok(())
    }
}

/// FDB changes of one namespace, as (destination, added, when).
pub fn fdb_events(ns: &str) -> mpsc::Receiver<(IpAddr, bool, Instant)> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    netns::spawn_in(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (conn, _handle, mut messages) =
                rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Neigh])
                    .expect("subscribing to neighbour events");
            tokio::spawn(conn);
            let _ = ready_tx.send(());
            while let Some((m, _)) = messages.next().await {
                let now = Instant::now();
                let NetlinkPayload::InnerMessage(m) = m.payload else {
                    continue;
                };
                let (n, added) = match m {
                    RouteNetlinkMessage::NewNeighbour(n) => (n, true),
                    RouteNetlinkMessage::DelNeighbour(n) => (n, false),
                    _ => continue,
                };
                for a in &n.attributes {
                    if let NeighbourAttribute::Destination(NeighbourAddress::Other(b)) = a
                        && let Ok(o) = <[u8; 4]>::try_from(b.as_slice())
                        && tx
                            .send((IpAddr::V4(Ipv4Addr::from(o)), added, now))
                            .is_err()
                    {
                        return;
                    }
                }
            }
        });
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    rx
}

/// One peer at a time: add, wait for the kernel's event, remove, wait.
/// Latencies in order, etcd write to kernel event: even indices are adds
/// (joins), odd ones removes (leaves). Peers `n..` are used.
pub fn measure_changes(
    rt: &tokio::runtime::Runtime,
    seeder: &Seeder,
    ns: &str,
    n: usize,
    changes: usize,
) -> anyhow::Result<Vec<Duration>> {
    let events = fdb_events(ns);
    let mut latencies = Vec::with_capacity(changes);
    for k in 0..changes {
        let i = n + k / 2;
        let added = k % 2 == 0;
        let dst = peer_addr(i);
        let sent = Instant::now();
        rt.block_on(async {
            if added {
                seeder.put(i).await
            } else {
                seeder.delete(i).await
            }
        })?;
        let deadline = sent + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (d, a, at) = events
                .recv_timeout(left)
                .context("no kernel change for a peer change")?;
            if d == dst && a == added {
                latencies.push(at.duration_since(sent));
                break;
            }
        }
    }
    Ok(latencies)
}

/// The entries `device` in `ns` holds for its peers: zero-MAC entries
/// (head-end), or unicast entries and neighbour entries (`flood: none`).
pub fn programmed(ns: &str, device: &str, flood: &str) -> usize {
    if flood == "head-end" {
        return agent::peers(ns, device).map_or(0, |p| p.len());
    }
    let Some(index) = kernel::link(ns, device).map(|l| l.index) else {
        return 0;
    };
    let unicast = kernel::fdb(ns)
        .iter()
        .filter(|e| e.ifindex == index && e.own && e.permanent && e.mac != [0; 6])
        .count();
    let neighbours = kernel::neighbours(ns)
        .iter()
        .filter(|e| e.ifindex == index && linkmesh::kernel::fdb::is_permanent(e.state))
        .count();
    unicast + neighbours
}

/// A lab of `hosts` hosts, its etcd, the secret, and segment blue defined
/// (head-end replication).
pub fn setup(hosts: u8) -> (Lab, Etcd, std::path::PathBuf) {
    setup_flood(hosts, "head-end")
}

/// [`setup`], with blue's `--flood` as given.
pub fn setup_flood(hosts: u8, flood: &str) -> (Lab, Etcd, std::path::PathBuf) {
    let lab = Lab::new(hosts);
    let etcd = Etcd::start_on(IpAddr::V4(lab.gateway()));
    let secret = agent::secret_file(&lab, "secret", &[SECRET]);
    let _ = agent::admin(
        &etcd.endpoint(),
        &secret,
        &["segment", "add", "blue", "--vni", "100", "--flood", flood],
    );
    (lab, etcd, secret)
}
