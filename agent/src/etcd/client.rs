//! The etcd client: connecting (TLS, auth), keeping the balancer to the
//! members that answer, and reading a prefix in pages.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue};
use tracing::{info, warn};

use super::{EtcdError, timed};
use crate::config::{ConfigError, EtcdArgs};
use std::path::PathBuf;

/// How to reach etcd: endpoints, and optionally TLS (a CA for the server's
/// certificate, a client certificate) and a user.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub endpoints: Vec<String>,
    /// PEM of the CA that signed etcd's certificate.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key (PEM), for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// User and password, for etcd's auth (tokens refreshed on expiry).
    pub user: Option<(String, String)>,
}

impl Access {
    /// Plain endpoints, no TLS, no user.
    #[must_use]
    pub fn plain(endpoints: &[String]) -> Self {
        Self {
            endpoints: endpoints.to_vec(),
            ..Self::default()
        }
    }

    /// Endpoints plus the TLS files and user of `args`, read.
    pub fn from_args(args: &EtcdArgs) -> Result<Self, ConfigError> {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| ConfigError::Invalid(format!("{flag} {}: {e}", path.display())))
        };
        let ca = args
            .etcd_cacert
            .as_ref()
            .map(|p| read("--etcd-cacert", p))
            .transpose()?;
        let identity = match (&args.etcd_cert, &args.etcd_key) {
            (Some(cert), Some(key)) => Some((read("--etcd-cert", cert)?, read("--etcd-key", key)?)),
            _ => None,
        };
        let user = match (&args.etcd_user, &args.etcd_password_file) {
            (Some(user), Some(file)) => {
                let text =
                    String::from_utf8(read("--etcd-password-file", file)?).map_err(|_| {
                        ConfigError::Invalid(format!(
                            "--etcd-password-file {}: not UTF-8",
                            file.display()
                        ))
                    })?;
                let password = text.lines().next().unwrap_or_default().to_owned();
                if password.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "--etcd-password-file {}: empty",
                        file.display()
                    )));
                }
                Some((user.clone(), password))
            }
            _ => None,
        };
        Ok(Self {
            endpoints: args.etcd_servers.clone(),
            ca,
            identity,
            user,
        })
    }

    fn secured(&self) -> bool {
        self.ca.is_some() || self.identity.is_some() || self.user.is_some()
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Connects to every endpoint (requests are balanced and fail over between
/// them). With TLS or a user, one request is made at once, so a wrong
/// CA, a missing client certificate or a bad password is a clear error at
/// start, not a retry loop later.
pub async fn connect(access: &Access) -> Result<Client, EtcdError> {
    let failed = |e: &dyn std::error::Error| EtcdError::Connect {
        endpoints: access.endpoints.join(","),
        detail: chain(e),
    };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if access.ca.is_some() || access.identity.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &access.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &access.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    if let Some((user, password)) = &access.user {
        options = options
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    let client = tokio::time::timeout(
        Duration::from_secs(5),
        Client::connect(&access.endpoints, Some(options)),
    )
    .await
    .map_err(|e| failed(&e))?
    .map_err(|e| failed(&e))?;
    if access.secured() {
        let mut m = client.maintenance_client();
        tokio::time::timeout(Duration::from_secs(5), m.status())
            .await
            .map_err(|e| failed(&e))?
            .map_err(|e| failed(&e))?;
    }
    Ok(client)
}

/// The largest gRPC reply the agent reads (etcd-client's default is
/// 4 MiB, and a registry with more than that under the prefix, hostile or
/// not, would stop every sync): a page of [`PAGE`] values of etcd's default
/// largest request (1.5 MiB) fits.
pub const MAX_REPLY: usize = 256 << 20;
/// Keys per page when reading a prefix.
const PAGE: i64 = 128;

/// The key right after every key that starts with `prefix`.
pub(super) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Reads the keys from `from` up to (not including) `end` at one revision
/// (the first page's), [`PAGE`] keys a request, each bounded by
/// [`REQUEST_TIMEOUT`]: the caller takes a page at a time, and may stop.
pub(super) struct Pages {
    kv: etcd_client::KvClient,
    what: String,
    from: Option<Vec<u8>>,
    end: Vec<u8>,
    revision: i64,
}

impl Pages {
    pub(super) fn new(client: &Client, what: String, from: Vec<u8>, end: Vec<u8>) -> Self {
        Self {
            kv: client.kv_client().max_decoding_message_size(MAX_REPLY),
            what,
            from: Some(from),
            end,
            revision: 0,
        }
    }

    /// The revision read at (0 before the first page).
    pub(super) fn revision(&self) -> i64 {
        self.revision
    }

    /// The next page (`None` after the last).
    pub(super) async fn next(&mut self) -> Result<Option<Vec<KeyValue>>, EtcdError> {
        let Some(from) = self.from.take() else {
            return Ok(None);
        };
        let mut options = GetOptions::new()
            .with_range(self.end.clone())
            .with_limit(PAGE);
        if self.revision != 0 {
            options = options.with_revision(self.revision);
        }
        let what = &self.what;
        let mut page = timed(
            || format!("reading {what}"),
            self.kv.get(from, Some(options)),
        )
        .await?;
        if self.revision == 0 {
            self.revision = page
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
        }
        let more = page.more();
        let kvs = page.take_kvs();
        if let (true, Some(last)) = (more, kvs.last()) {
            let mut next = last.key().to_vec();
            next.push(0);
            self.from = Some(next);
        }
        Ok(Some(kvs))
    }
}

/// Reads every key under `prefix` at one revision, a page at a time (see
/// [`Pages`]). Returns the revision and the keys.
pub async fn read_prefix(client: &Client, prefix: &str) -> Result<(i64, Vec<KeyValue>), EtcdError> {
    let mut pages = Pages::new(
        client,
        prefix.to_owned(),
        prefix.as_bytes().to_vec(),
        prefix_end(prefix),
    );
    let mut all = Vec::new();
    while let Some(page) = pages.next().await? {
        all.extend(page);
    }
    Ok((pages.revision(), all))
}

/// How often [`keep_endpoints`] asks each member for its status, and how
/// long it waits for an answer. Each agent costs each member one cheap
/// status request a second (1,000 agents: 1,000 a second per member, next
/// to their keepalives); a dead member is out of the balancer within 1-2 s,
/// inside the 3.5 s the default lease leaves (see `fence_margin`).
const ENDPOINT_CHECK: Duration = Duration::from_secs(1);

/// With several endpoints, keeps `client`'s balancer to the members that
/// answer. tonic's balancer goes on picking a member that died (each
/// request sent there fails with "connection refused" or times out), so
/// every [`ENDPOINT_CHECK`] each member is asked for its status on a
/// connection of its own; one that does not answer is taken out of the
/// balancer, and put back once it answers again. If none answers, all are
/// kept in. Runs until aborted.
pub async fn keep_endpoints(client: Client, access: Access) {
    if access.endpoints.len() < 2 {
        return;
    }
    let mut probes: BTreeMap<String, Client> = BTreeMap::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(ENDPOINT_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checks = access.endpoints.iter().map(|endpoint| {
            let probe = probes.get(endpoint).cloned();
            let single = Access {
                endpoints: vec![endpoint.clone()],
                ..access.clone()
            };
            async move {
                let answered = tokio::time::timeout(ENDPOINT_CHECK, async {
                    let probe = match probe {
                        Some(p) => p,
                        None => connect(&single).await.ok()?,
                    };
                    probe.maintenance_client().status().await.ok()?;
                    Some(probe)
                })
                .await
                .ok()
                .flatten();
                (endpoint.clone(), answered)
            }
        });
        let results = futures::future::join_all(checks).await;
        let alive: BTreeSet<String> = results
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(e, _)| e.clone())
            .collect();
        for (endpoint, probe) in results {
            match probe {
                Some(p) => {
                    probes.insert(endpoint, p);
                }
                None => {
                    probes.remove(&endpoint);
                }
            }
        }
        for endpoint in &access.endpoints {
            let answers = alive.contains(endpoint) || alive.is_empty();
            if answers && removed.remove(endpoint) {
                match client.add_endpoint(endpoint).await {
                    Ok(()) => info!(%endpoint, "etcd member answers again: back in the balancer"),
                    Err(e) => {
                        warn!(%endpoint, error = %e, "putting an etcd member back failed");
                        removed.insert(endpoint.clone());
                    }
                }
            } else if !answers && !removed.contains(endpoint) {
                match client.remove_endpoint(endpoint).await {
                    Ok(()) => {
                        warn!(%endpoint, "etcd member does not answer: out of the balancer");
                        removed.insert(endpoint.clone());
                    }
                    Err(e) => warn!(%endpoint, error = %e, "taking an etcd member out failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_last_byte_plus_one() {
        assert_eq!(prefix_end("/linkmesh/"), b"/linkmesh0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
