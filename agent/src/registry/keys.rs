//! The etcd key layout under the prefix (default `/linkmesh`):
//!
//! - `<prefix>/hosts/<HOSTNAME>`: a host's registration, on its lease;
//! - `<prefix>/segments/<NAME>`: a segment definition.

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

    /// A per-host key under a VIP: `(id, kind, host)` for
    /// `<prefix>/vips/<ID>/<KIND>/<HOST>` (`state`, `suspect`).
    #[must_use]
    pub fn vip_member_of<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let rest = key.strip_prefix(&self.vips())?;
        let mut parts = rest.split('/');
        let (id, kind, host) = (parts.next()?, parts.next()?, parts.next()?);
        (parts.next().is_none() && !id.is_empty() && !kind.is_empty() && !host.is_empty())
            .then_some((id, kind, host))
    }

    /// What a key under [`Keys::vips`] is: `(id, None)` for the record,
    /// `(id, Some("owner"))` and so on for its sub-keys.
    #[must_use]
    pub fn vip_of<'a>(&self, key: &'a str) -> Option<(&'a str, Option<&'a str>)> {
        let rest = key.strip_prefix(&self.vips()).filter(|r| !r.is_empty())?;
        match rest.split_once('/') {
            None => Some((rest, None)),
            Some((id, sub)) if !id.is_empty() && !sub.contains('/') => Some((id, Some(sub))),
            Some(_) => None,
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
            k.vip_of("/lm/vips/198.18.0.100_24"),
            Some(("198.18.0.100_24", None))
        );
        assert_eq!(
            k.vip_of("/lm/vips/198.18.0.100_24/owner"),
            Some(("198.18.0.100_24", Some("owner")))
        );
        assert_eq!(k.vip_of("/lm/vips/a/b/c"), None);
        assert_eq!(k.vip_owner("x"), "/lm/vips/x/owner");
        assert_eq!(
            k.vip_member_of(&k.vip_suspect("v1", "h2")),
            Some(("v1", "suspect", "h2"))
        );
        assert_eq!(
            k.vip_member_of(&k.vip_state("v1", "h3")),
            Some(("v1", "state", "h3"))
        );
        assert_eq!(k.vip_member_of("/lm/vips/v1/owner"), None);
        assert_eq!(k.vip_member_of("/lm/vips/v1/state/"), None);
        assert_eq!(k.vip_member_of("/lm/vips/v1/state/h/x"), None);
    }
}
