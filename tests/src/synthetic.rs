//! Synthetic peers: signed host records written straight to etcd (under
//! one lease the test grants), for hosts that do not exist. Their
//! addresses are in the lab's own /24 from `first_host` up, so nothing
//! sent to them leaves the lab.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use linkmesh::registry::{HostRecord, Keys, Secrets, seal};

/// The synthetic peers' lease TTL, seconds (longer than any test).
const LEASE_TTL: i64 = 600;

#[must_use]
pub fn peer_name(i: usize) -> String {
    format!("syn-{i:03}")
}

/// Peer `i`'s underlay address in lab slot `slot`, peers numbered from
/// `first_host`.
#[must_use]
pub fn address(slot: u8, first_host: u8, i: usize) -> IpAddr {
    let host = u8::try_from(i)
        .ok()
        .and_then(|i| first_host.checked_add(i))
        .filter(|h| *h < 254)
        .expect("a peer address inside the lab's /24");
    IpAddr::V4(Ipv4Addr::new(198, 18, slot, host))
}

/// Writes the synthetic peers' records from the root namespace.
pub struct SyntheticPeers {
    kv: etcd_client::KvClient,
    secrets: Secrets,
    keys: Keys,
    lease: i64,
    slot: u8,
    first_host: u8,
}

impl SyntheticPeers {
    /// Peers of lab slot `slot`, signed with `secret`.
    pub async fn connect(endpoint: &str, slot: u8, secret: &str, first_host: u8) -> Self {
        let client = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap_or_else(|e| panic!("connecting to etcd at {endpoint}: {e}"));
        let lease = client
            .lease_client()
            .grant(LEASE_TTL, None)
            .await
            .expect("granting the synthetic peers' lease")
            .id();
        Self {
            kv: client.kv_client(),
            secrets: Secrets::from_text(secret).expect("the lab secret"),
            keys: Keys::new("/linkmesh"),
            lease,
            slot,
            first_host,
        }
    }

    /// Peer `i`'s underlay address.
    #[must_use]
    pub fn address(&self, i: usize) -> IpAddr {
        address(self.slot, self.first_host, i)
    }

    /// Registers peer `i` (joined to segment `blue`).
    pub async fn join(&mut self, i: usize) {
        let name = peer_name(i);
        let key = self.keys.host(&name);
        let record = HostRecord {
            segments: [(
                "blue".to_owned(),
                linkmesh::mesh::desired::device_mac(&name, "blue"),
            )]
            .into(),
            hostname: name,
            address: self.address(i),
            agent_version: "synthetic".into(),
            heartbeat_nonce: None,
            overlay: linkmesh::registry::host::Overlay::default(),
        };
        let value = seal(
            &self.secrets,
            &key,
            self.lease,
            linkmesh::clock::unix_now(),
            &record,
        )
        .expect("sealing a synthetic record");
        self.kv
            .put(
                key.clone(),
                value,
                Some(etcd_client::PutOptions::new().with_lease(self.lease)),
            )
            .await
            .unwrap_or_else(|e| panic!("putting {key}: {e}"));
    }

    /// Removes peer `i`'s record.
    pub async fn leave(&mut self, i: usize) {
        let key = self.keys.host(&peer_name(i));
        self.kv
            .delete(key.clone(), None)
            .await
            .unwrap_or_else(|e| panic!("deleting {key}: {e}"));
    }

    /// The underlay addresses of the synthetic peers registered now, read
    /// from the records themselves.
    pub async fn registered(&mut self) -> BTreeSet<IpAddr> {
        let prefix = self.keys.host("syn-");
        let response = self
            .kv
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .expect("reading the synthetic records");
        response
            .kvs()
            .iter()
            .map(|kv| {
                let envelope: serde_json::Value =
                    serde_json::from_slice(kv.value()).expect("a record is JSON");
                envelope["body"]["address"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("a record without an address: {envelope}"))
            })
            .collect()
    }
}
