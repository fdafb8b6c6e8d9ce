//! Operator hooks on every VIP state transition (keepalived's `notify`,
//! LinK's webhook): a script from `--check-dir`, run with the VIP, the old
//! state, the new state and the cause as its arguments, or an HTTP POST
//! whose body is signed with HMAC-SHA256 under `--notify-secret-file`.
//! Per VIP, transitions are told in order, each hook in turn, each within
//! `--notify-timeout`; every outcome is logged and counted. A hook never
//! holds up a decision: a VIP whose hooks fall behind by more than
//! [`QUEUE`] transitions loses the newest ones, counted as dropped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::script::ScriptPolicy;
use super::state::State;

/// Transitions waiting per VIP before new ones are dropped.
pub const QUEUE: usize = 64;

/// One hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `exec:NAME`: the script NAME in `--check-dir`.
    Exec(String),
    /// `http://HOST:PORT/PATH`: a signed POST.
    Http(String),
}

impl FromStr for Hook {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(name) = s.strip_prefix("exec:") {
            if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                return Err(format!(
                    "{s:?}: a hook script is a file name in --check-dir, not a path"
                ));
            }
            return Ok(Self::Exec(name.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let authority = rest.split('/').next().unwrap_or_default();
            if authority.is_empty() || authority.contains('@') || authority.contains(' ') {
                return Err(format!("{s:?}: not an http://HOST[:PORT]/PATH URL"));
            }
            return Ok(Self::Http(s.to_owned()));
        }
        Err(format!(
            "{s:?}: a hook is exec:SCRIPT or http://HOST[:PORT]/PATH (https is not supported yet)"
        ))
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exec(name) => write!(f, "exec:{name}"),
            Self::Http(url) => f.write_str(url),
        }
    }
}

/// The hooks and how they run.
#[derive(Clone, Default)]
pub struct NotifySettings {
    pub hooks: Vec<Hook>,
    /// The key HTTP hooks' bodies are signed with.
    pub secret: Option<Vec<u8>>,
    pub timeout: Duration,
    pub scripts: ScriptPolicy,
    /// This host, named in the HTTP body.
    pub hostname: String,
}

impl std::fmt::Debug for NotifySettings {
    /// Without the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifySettings")
            .field("hooks", &self.hooks)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("scripts", &self.scripts)
            .field("hostname", &self.hostname)
            .finish()
    }
}

/// One transition, as the hooks are told it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub vip: String,
    pub from: State,
    pub to: State,
    pub cause: String,
    /// Unix seconds.
    pub at: u64,
}

impl Transition {
    /// `vip` went `from` -> `to` just now.
    #[must_use]
    pub fn now(vip: String, (from, to): (State, State), cause: String) -> Self {
        Self {
            vip,
            from,
            to,
            cause,
            at: crate::clock::unix_now(),
        }
    }
}

/// Hook outcomes.
#[derive(Debug, Default)]
pub struct NotifyCounters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub timed_out: AtomicU64,
    pub dropped: AtomicU64,
}

impl NotifyCounters {
    /// Passed, failed, timed out, dropped.
    #[must_use]
    pub fn snapshot(&self) -> [u64; 4] {
        [&self.ok, &self.failed, &self.timed_out, &self.dropped].map(|c| c.load(Ordering::Relaxed))
    }
}

/// The POST body: JSON naming the VIP, both states, the cause, this host
/// and the time.
#[must_use]
pub fn body(t: &Transition, host: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "vip": t.vip,
        "from": t.from.to_string(),
        "to": t.to.to_string(),
        "cause": t.cause,
        "host": host,
        "at": t.at,
    }))
    .unwrap_or_default()
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`, the signature header's
/// value.
#[must_use]
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex = tag.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    format!("sha256={hex}")
}

/// Tells the hooks, one ordered queue per VIP.
pub struct Notifier {
    settings: Arc<NotifySettings>,
    queues: BTreeMap<String, mpsc::Sender<Transition>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    pub counters: Arc<NotifyCounters>,
}

impl Notifier {
    /// Counting into `counters`.
    #[must_use]
    pub fn new(settings: NotifySettings, counters: Arc<NotifyCounters>) -> Self {
        Self {
            settings: Arc::new(settings),
            queues: BTreeMap::new(),
            workers: Vec::new(),
            counters,
        }
    }

    /// Lets the queued transitions be told (the agent is stopping: its
    /// last transitions matter most), for at most one hook timeout.
    pub async fn finish(mut self) {
        self.queues.clear();
        let within = self.settings.timeout;
        let all = futures::future::join_all(std::mem::take(&mut self.workers));
        if tokio::time::timeout(within, all).await.is_err() {
            warn!("notify hooks still running at exit: stopped");
        }
    }

    /// Queues `t` for the hooks (at once; they run on a task of the VIP's).
    pub fn notify(&mut self, t: Transition) {
        if self.settings.hooks.is_empty() {
            return;
        }
        let workers = &mut self.workers;
        let tx = self.queues.entry(t.vip.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            workers.push(tokio::spawn(serve(
                self.settings.clone(),
                self.counters.clone(),
                rx,
            )));
            tx
        });
        if let Err(e) = tx.try_send(t) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "notify hooks fall behind: a transition is not told");
        }
    }

    /// Stops telling VIP `id`'s transitions (queued ones still run).
    pub fn forget(&mut self, id: &str) {
        self.queues.remove(id);
    }
}

async fn serve(
    settings: Arc<NotifySettings>,
    counters: Arc<NotifyCounters>,
    mut rx: mpsc::Receiver<Transition>,
) {
    while let Some(t) = rx.recv().await {
        for hook in &settings.hooks {
            let outcome = tokio::time::timeout(settings.timeout, run(&settings, hook, &t)).await;
            match outcome {
                Ok(Ok(())) => {
                    counters.ok.fetch_add(1, Ordering::Relaxed);
                    info!(vip = %t.vip, from = %t.from, to = %t.to, hook = %hook, "notify hook ran");
                }
                Ok(Err(why)) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    warn!(vip = %t.vip, from = %t.from, to = %t.to, hook = %hook, error = %why, "notify hook failed");
                }
                Err(_) => {
                    counters.timed_out.fetch_add(1, Ordering::Relaxed);
                    warn!(vip = %t.vip, from = %t.from, to = %t.to, hook = %hook, timeout = ?settings.timeout, "notify hook timed out");
                }
            }
        }
    }
}

async fn run(settings: &NotifySettings, hook: &Hook, t: &Transition) -> Result<(), String> {
    match hook {
        Hook::Exec(name) => {
            let (from, to) = (t.from.to_string(), t.to.to_string());
            let args = [t.vip.as_str(), from.as_str(), to.as_str(), t.cause.as_str()];
            super::script::run_with(&settings.scripts, name, &args)
                .await
                .map_err(|e| e.to_string())
        }
        Hook::Http(url) => {
            let secret = settings
                .secret
                .as_deref()
                .ok_or("no --notify-secret-file to sign with")?;
            post(url, &body(t, &settings.hostname), secret).await
        }
    }
}

/// A POST of `body`, signed; 2xx is success.
async fn post(url: &str, body: &[u8], secret: &[u8]) -> Result<(), String> {
    let headers = format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\nX-Linkmesh-Signature: {}\r\n",
        body.len(),
        signature(secret, body)
    );
    let code = super::http1::request("POST", url, &headers, body)
        .await
        .map_err(|e| e.to_string())?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("status {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_are_scripts_by_name_or_plain_http() {
        assert_eq!("exec:notify".parse(), Ok(Hook::Exec("notify".into())));
        assert_eq!(
            "http://127.0.0.1:8080/hook".parse(),
            Ok(Hook::Http("http://127.0.0.1:8080/hook".into()))
        );
        for bad in [
            "exec:",
            "exec:../bin/sh",
            "exec:/bin/sh",
            "exec:..",
            "https://x/hook",
            "http://",
            "http://user@host/",
            "ftp://x",
            "notify.sh",
        ] {
            assert!(bad.parse::<Hook>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let t = Transition {
            vip: "198.18.0.100_24".into(),
            from: State::Standby,
            to: State::Activated,
            cause: "owner key is ours".into(),
            at: 1_700_000_000,
        };
        let b: serde_json::Value = serde_json::from_slice(&body(&t, "h1")).expect("JSON");
        assert_eq!(b["vip"], "198.18.0.100_24");
        assert_eq!(b["from"], "STANDBY");
        assert_eq!(b["to"], "ACTIVATED");
        assert_eq!(b["host"], "h1");
        assert_eq!(b["at"], 1_700_000_000);
    }
}
