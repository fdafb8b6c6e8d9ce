//! The per-VIP coordination keys, signed like every record (host, VIP id,
//! lease and time, through the key and the envelope), so that a writer
//! without the secret can neither name an owner, nor fake a standby, nor
//! suspect an owner, nor ask for a failover:
//!
//! - `<prefix>/vips/<ID>/owner`: [`OwnerRecord`], on the owner's lease;
//! - `<prefix>/vips/<ID>/state/<HOST>`: [`StateRecord`], on that host's lease;
//! - `<prefix>/vips/<ID>/suspect/<HOST>`: [`SuspectRecord`], on that host's lease;
//! - `<prefix>/vips/<ID>/failover`: [`FailoverRecord`], on a short lease.
//!
//! What does not verify counts as absent. An owner key that does not
//! verify (unsigned, forged, moved, on no lease) is reported as
//! [`VipChange::BogusOwner`], so that it can be removed and the VIP
//! contended again.

use serde::{Deserialize, Serialize};

use super::host::validate_hostname;
use super::invalid::Invalid;
use super::record::{Expect, Record, Rejection, open};
use super::secret::Secrets;
use super::vip::ValidVip;
use crate::addr::MacAddr;

/// Who holds a VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerRecord {
    pub host: String,
    /// The owner's MAC on the VIP's interface: the standbys' probes go
    /// there, and only its ARP replies count as the owner answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

impl Record for OwnerRecord {
    const KIND: &'static str = "vip-owner";
}

/// A host's state for a VIP (`BOOTING`, `STANDBY`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRecord {
    pub state: String,
}

impl Record for StateRecord {
    const KIND: &'static str = "vip-state";
}

/// A standby's data-plane suspicion of the owner: the lease it suspects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuspectRecord {
    pub lease: i64,
}

impl Record for SuspectRecord {
    const KIND: &'static str = "vip-suspect";
}

/// An admin's request to the owner to release a VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverRecord {
    pub host: String,
}

impl Record for FailoverRecord {
    const KIND: &'static str = "vip-failover";
}

fn expect(key: &str, lease: i64, now: u64) -> Result<Expect<'_>, Rejection> {
    // Every coordination key lives on a lease: without one it would never
    // go away.
    if lease == 0 {
        return Err(Rejection::Invalid(Invalid::NoLease));
    }
    Ok(Expect {
        key,
        lease,
        now,
        max_age: None,
    })
}

/// Verifies an owner key's value: the owner, on the key's lease.
pub fn open_owner(
    secrets: &Secrets,
    key: &str,
    value: &[u8],
    lease: i64,
    now: u64,
) -> Result<Owner, Rejection> {
    let v = open::<OwnerRecord>(secrets, value, expect(key, lease, now)?)?;
    validate_hostname(&v.body.host).map_err(Rejection::Invalid)?;
    Ok(Owner {
        host: v.body.host,
        lease,
        mac: v.body.mac,
    })
}

/// Verifies a failover request: the host asked to release.
pub fn open_failover(
    secrets: &Secrets,
    key: &str,
    value: &[u8],
    lease: i64,
    now: u64,
) -> Result<String, Rejection> {
    let v = open::<FailoverRecord>(secrets, value, expect(key, lease, now)?)?;
    validate_hostname(&v.body.host).map_err(Rejection::Invalid)?;
    Ok(v.body.host)
}

/// Verifies a `state` or `suspect` key's value: the state, or the
/// suspected lease, as text.
pub fn open_member(
    secrets: &Secrets,
    key: &str,
    kind: &str,
    value: &[u8],
    lease: i64,
    now: u64,
) -> Result<String, Rejection> {
    let expect = expect(key, lease, now)?;
    match kind {
        "state" => Ok(open::<StateRecord>(secrets, value, expect)?.body.state),
        "suspect" => Ok(open::<SuspectRecord>(secrets, value, expect)?
            .body
            .lease
            .to_string()),
        other => Err(Rejection::Invalid(Invalid::UnknownKey(other.to_owned()))),
    }
}

/// An owner key's content: the host named in it, the lease it is on, and
/// the MAC it answers from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    pub lease: i64,
    pub mac: Option<MacAddr>,
}

impl Owner {
    /// Our own key on `lease`, as we wrote it (its MAC matters to others).
    #[must_use]
    pub fn mine(host: String, lease: i64) -> Self {
        Self {
            host,
            lease,
            mac: None,
        }
    }

    /// Whether this is `host`'s key on `lease`.
    #[must_use]
    pub fn is(&self, host: &str, lease: i64) -> bool {
        self.host == host && self.lease == lease
    }
}

/// A per-host key under a VIP (`<prefix>/vips/<ID>/<KIND>/<HOST>`: `state`,
/// `suspect`), as read; `value` `None` when deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberKey {
    pub id: String,
    pub kind: String,
    pub host: String,
    pub value: Option<String>,
    /// The lease the key is on (0 when deleted).
    pub lease: i64,
}

/// Everything under `<prefix>/vips/` at one revision: the verified records
/// (a key overwritten with something that does not verify keeps its last
/// verified record), the owner keys, failover requests and member keys.
#[derive(Clone, Debug, Default)]
pub struct VipSnapshot {
    pub records: std::collections::BTreeMap<String, ValidVip>,
    pub owners: std::collections::BTreeMap<String, Owner>,
    /// Owner keys that do not verify, with their revisions.
    pub bogus_owners: Vec<(String, i64)>,
    /// VIP id -> the host asked to release it.
    pub failovers: Vec<(String, String)>,
    pub members: Vec<MemberKey>,
}

/// A change under `<prefix>/vips/`.
#[derive(Clone, Debug)]
pub enum VipChange {
    Snapshot(Box<VipSnapshot>),
    /// A record verified or changed (`None`: deleted).
    Record(String, Option<Box<ValidVip>>),
    Owner(String, Option<Owner>),
    /// An owner key that does not verify, at this revision: no owner, and
    /// it should go.
    BogusOwner {
        id: String,
        revision: i64,
    },
    /// `ip failover`: the host asked to release the VIP.
    Failover(String, String),
    Member(MemberKey),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::seal;

    const NOW: u64 = 1_800_000_000;

    fn secrets() -> Secrets {
        Secrets::from_text("coordination-test-secret-0123").expect("valid")
    }

    #[test]
    fn owners_verify_on_their_lease_only() {
        let key = "/lm/vips/198.18.0.100_24/owner";
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let owner = OwnerRecord {
            host: "h1".into(),
            mac: Some(mac),
        };
        let value = seal(&secrets(), key, 7, NOW, &owner).expect("seal");
        assert_eq!(
            open_owner(&secrets(), key, &value, 7, NOW),
            Ok(Owner {
                host: "h1".into(),
                lease: 7,
                mac: Some(mac)
            })
        );
        // Moved to another lease, to no lease, to another VIP, forged, bare.
        assert!(open_owner(&secrets(), key, &value, 8, NOW).is_err());
        assert!(open_owner(&secrets(), key, &value, 0, NOW).is_err());
        let other = "/lm/vips/198.18.0.101_24/owner";
        assert!(open_owner(&secrets(), other, &value, 7, NOW).is_err());
        let wrong = Secrets::from_text("not-the-secret-at-all-0123").expect("valid");
        let forged = seal(&wrong, key, 7, NOW, &owner).expect("seal");
        assert!(open_owner(&secrets(), key, &forged, 7, NOW).is_err());
        assert!(open_owner(&secrets(), key, b"ghost", 7, NOW).is_err());
    }

    #[test]
    fn members_verify_under_the_host_they_name() {
        let key = "/lm/vips/v/suspect/h2";
        let value = seal(&secrets(), key, 9, NOW, &SuspectRecord { lease: 7 }).expect("seal");
        assert_eq!(
            open_member(&secrets(), key, "suspect", &value, 9, NOW),
            Ok("7".into())
        );
        // Copied under another host: refused.
        let h3 = "/lm/vips/v/suspect/h3";
        assert!(open_member(&secrets(), h3, "suspect", &value, 9, NOW).is_err());
        let key = "/lm/vips/v/state/h2";
        let state = StateRecord {
            state: "STANDBY".into(),
        };
        let value = seal(&secrets(), key, 9, NOW, &state).expect("seal");
        assert_eq!(
            open_member(&secrets(), key, "state", &value, 9, NOW),
            Ok("STANDBY".into())
        );
        assert!(open_member(&secrets(), key, "state", b"STANDBY", 9, NOW).is_err());
    }
}
