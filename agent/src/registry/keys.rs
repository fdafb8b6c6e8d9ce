//! The etcd key layout under the prefix (default `/linkmesh`), built and
//! parsed here and nowhere else:
//!
//! - `<prefix>/hosts/<HOSTNAME>`: a host's registration, on its lease;
//! - `<prefix>/segments/<NAME>`: a segment definition;
//! - `<prefix>/vnis/<VNI>-<PORT>`: which segment uses a VNI (an index the
//!   admin commands keep, so two segments never share one);
//! - `<prefix>/vipaddrs/<ADDRESS>`: which floating IP uses an address (an
//!   index the admin commands keep, so no two share one);
//! - `<prefix>/vips/<ID>`: a floating IP's record, and under it `owner`
//!   (the owner's host name, on its lease), `failover` (a request to the
//!   owner to release it), `state/<HOST>` and `suspect/<HOST>` (each
//!   host's state, and its suspicion of the owner, on its lease).

/// What a key under `<prefix>/vips/` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipKey<'a> {
    Record(&'a str),
    Owner(&'a str),
    Failover(&'a str),
    /// `state/<HOST>`, `suspect/<HOST>` (or another kind, ignored).
    Member {
        id: &'a str,
        kind: &'a str,
        host: &'a str,
    },
}

/// Key builder for one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` is normalised to start with one `/` and end without one.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_matches('/');
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("/{trimmed}")
        };
        Self { prefix }
    }

    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    #[must_use]
    pub fn hosts(&self) -> String {
        format!("{}/hosts/", self.prefix)
    }

    #[must_use]
    pub fn host(&self, hostname: &str) -> String {
        format!("{}{hostname}", self.hosts())
    }

    #[must_use]
    pub fn segments(&self) -> String {
        format!("{}/segments/", self.prefix)
    }

    #[must_use]
    pub fn segment(&self, name: &str) -> String {
        format!("{}{name}", self.segments())
    }

    /// `<prefix>/vnis/<VNI>-<PORT>`: the segment using a VNI on a port.
    #[must_use]
    pub fn segment_vni(&self, vni: u32, port: u16) -> String {
        format!("{}/vnis/{vni}-{port}", self.prefix)
    }

    /// `<prefix>/vipaddrs/<ADDRESS>`: which VIP uses an address (an index
    /// the admin commands keep, so two VIPs never share one).
    #[must_use]
    pub fn vip_address(&self, addr: std::net::IpAddr) -> String {
        format!("{}/vipaddrs/{addr}", self.prefix)
    }

    #[must_use]
    pub fn vips(&self) -> String {
        format!("{}/vips/", self.prefix)
    }

    #[must_use]
    pub fn vip(&self, id: &str) -> String {
        format!("{}{id}", self.vips())
    }

    #[must_use]
    pub fn vip_owner(&self, id: &str) -> String {
        format!("{}{id}/owner", self.vips())
    }

    #[must_use]
    pub fn vip_failover(&self, id: &str) -> String {
        format!("{}{id}/failover", self.vips())
    }

    /// `<prefix>/vips/<ID>/state/<HOST>`: a host's state for a VIP.
    #[must_use]
    pub fn vip_state(&self, id: &str, host: &str) -> String {
        format!("{}{id}/state/{host}", self.vips())
    }

    /// `<prefix>/vips/<ID>/suspect/<HOST>`: a standby's data-plane
    /// suspicion of the VIP's owner.
    #[must_use]
    pub fn vip_suspect(&self, id: &str, host: &str) -> String {
        format!("{}{id}/suspect/{host}", self.vips())
    }

    /// What a key under [`Keys::vips`] is, if it is one of the VIP keys.
    #[must_use]
    pub fn vip_key<'a>(&self, key: &'a str) -> Option<VipKey<'a>> {
        let rest = key.strip_prefix(&self.vips())?;
        let mut parts = rest.split('/');
        let id = parts.next().filter(|id| !id.is_empty())?;
        let kind = parts.next();
        let host = parts.next();
        if parts.next().is_some() {
            return None;
        }
        match (kind, host) {
            (None, _) => Some(VipKey::Record(id)),
            (Some("owner"), None) => Some(VipKey::Owner(id)),
            (Some("failover"), None) => Some(VipKey::Failover(id)),
            (Some(kind), Some(host)) if !kind.is_empty() && !host.is_empty() => {
                Some(VipKey::Member { id, kind, host })
            }
            _ => None,
        }
    }

    /// The host name of a key under [`Keys::hosts`], if it is one.
    #[must_use]
    pub fn host_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        leaf(key, &self.hosts())
    }

    /// The segment name of a key under [`Keys::segments`], if it is one.
    #[must_use]
    pub fn segment_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        leaf(key, &self.segments())
    }
}

fn leaf<'a>(key: &'a str, dir: &str) -> Option<&'a str> {
    key.strip_prefix(dir)
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_normalised() {
        for p in ["/linkmesh", "linkmesh", "/linkmesh/", "linkmesh//"] {
            assert_eq!(Keys::new(p).host("h1"), "/linkmesh/hosts/h1", "{p}");
        }
        assert_eq!(Keys::new("/").segment("blue"), "/segments/blue");
    }

    #[test]
    fn leaves_are_parsed() {
        let k = Keys::new("/lm");
        assert_eq!(k.host_of("/lm/hosts/h1"), Some("h1"));
        assert_eq!(k.host_of("/lm/hosts/"), None);
        assert_eq!(k.host_of("/lm/hosts/a/b"), None);
        assert_eq!(k.host_of("/lm/segments/blue"), None);
        assert_eq!(k.segment_of("/lm/segments/blue"), Some("blue"));
        assert_eq!(
            k.vip_key("/lm/vips/198.18.0.100_24"),
            Some(VipKey::Record("198.18.0.100_24"))
        );
        assert_eq!(
            k.vip_key(&k.vip_owner("198.18.0.100_24")),
            Some(VipKey::Owner("198.18.0.100_24"))
        );
        assert_eq!(k.vip_key(&k.vip_failover("x")), Some(VipKey::Failover("x")));
        assert_eq!(k.vip_owner("x"), "/lm/vips/x/owner");
        assert_eq!(
            k.vip_key(&k.vip_suspect("v1", "h2")),
            Some(VipKey::Member {
                id: "v1",
                kind: "suspect",
                host: "h2"
            })
        );
        assert_eq!(
            k.vip_key(&k.vip_state("v1", "h3")),
            Some(VipKey::Member {
                id: "v1",
                kind: "state",
                host: "h3"
            })
        );
        for not in [
            "/lm/vips/",
            "/lm/vips//owner",
            "/lm/vips/v1/other",
            "/lm/vips/v1/state/",
            "/lm/vips/v1/state/h/x",
            "/lm/vips/a/b/c/d",
            "/lm/hosts/h1",
        ] {
            assert_eq!(k.vip_key(not), None, "{not}");
        }
        assert_eq!(k.segment_vni(100, 4789), "/lm/vnis/100-4789");
        assert_eq!(
            k.vip_address("198.18.0.1".parse().expect("ip")),
            "/lm/vipaddrs/198.18.0.1"
        );
    }
}
