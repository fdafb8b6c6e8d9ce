//! Admin commands: `linkmesh segment ...` and `linkmesh ip ...` write to
//! etcd directly; `linkmesh status` and `linkmesh peers` ask the local
//! agent's API.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use crate::config::EtcdArgs;
use crate::etcd::admin::{Segments, VipEntry, Vips};
use crate::etcd::{self, Access};
use crate::registry::segment::DEFAULT_PORT;
use crate::registry::{Flood, SegmentSpec, VipRecord};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Subcommand, Debug)]
pub enum SegmentCommand {
    /// Define a segment (a name mapped to a VXLAN VNI).
    Add {
        /// Segment name; also the kernel device's name (at most 15 bytes).
        name: String,
        #[arg(long)]
        vni: u32,
        #[arg(long, default_value_t = DEFAULT_PORT)]
        port: u16,
        #[arg(long, value_enum, default_value = "on")]
        learning: OnOff,
        /// Device MTU (default: underlay MTU - 50).
        #[arg(long)]
        mtu: Option<u32>,
        /// Named network namespace to move the device into.
        #[arg(long)]
        netns: Option<String>,
        /// `head-end`: broadcasts go to every member; `none`: nothing is
        /// flooded, peers are unicast entries, learning is off and the
        /// device answers ARP/ND from the overlay addresses hosts publish
        /// (for large segments).
        #[arg(long, value_parser = ["head-end", "none"], default_value = "head-end")]
        flood: String,
        /// A Linux bridge of the segment's own on every member, with the
        /// device enslaved: workloads join it (`linkmesh-cni`).
        #[arg(long, conflicts_with = "netns")]
        bridge: Option<String>,
    },
    /// List segments.
    Ls,
    /// Remove a segment.
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum IpCommand {
    /// Declare a floating IP.
    Add {
        /// Address with prefix length, e.g. 198.18.0.100/24 or fd00::100/64.
        cidr: String,
        #[arg(long)]
        interface: Option<String>,
        /// Health check: tcp:HOST:PORT, http://..., exec:COMMAND; repeatable.
        #[arg(long = "check")]
        checks: Vec<String>,
        /// A host that never holds it; repeatable.
        #[arg(long = "exclude")]
        excluded: Vec<String>,
        /// The preferred host.
        #[arg(long)]
        priority: Option<String>,
        /// Seconds the preferred host must stand by, healthy, before the
        /// owner hands the VIP over to it (preemption; needs --priority).
        #[arg(long)]
        preempt_delay: Option<u32>,
        /// A port map, SRC:DEST/PROTO (`80:8080/tcp`): on the owner, traffic
        /// to the VIP's port SRC reaches the local port DEST; repeatable.
        #[arg(long = "port")]
        ports: Vec<crate::registry::PortMap>,
        /// How clients reach the owner: `l2` (announced on the link) or
        /// `route` (a host route in each agent's --route-table).
        #[arg(long, default_value = "l2")]
        mode: crate::registry::Mode,
        /// A group: VIPs of one group move together, with one election
        /// (an IPv4 and IPv6 pair, a control-plane VIP and a service VIP).
        #[arg(long)]
        group: Option<String>,
        /// A DNS name for it (lower case): agents with --hosts-dir write
        /// it into their hosts file, resolving to the address.
        #[arg(long)]
        name: Option<String>,
        /// Accept a prefix shorter than /16 (IPv4) or /48 (IPv6).
        #[arg(long)]
        force: bool,
    },
    /// List floating IPs and their owners.
    Ls,
    /// Show one floating IP.
    Get { id: String },
    /// Remove a floating IP.
    Rm { id: String },
    /// Ask the owner to release it; another host takes over.
    Failover { id: String },
}

/// Prints `value` as pretty JSON.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("encoding JSON")?
    );
    Ok(())
}

/// `linkmesh ip ...`; `json` prints every answer as JSON instead of text.
pub async fn ip(etcd: &EtcdArgs, command: IpCommand, json: bool) -> anyhow::Result<()> {
    let vips = Vips {
        client: etcd::connect(&Access::from_args(etcd)?).await?,
        keys: etcd.keys(),
        secrets: etcd.secrets()?,
    };
    match command {
        IpCommand::Add {
            cidr,
            interface,
            checks,
            excluded,
            priority,
            preempt_delay,
            ports,
            mode,
            group,
            name,
            force,
        } => {
            let vip = VipRecord {
                address: cidr,
                interface,
                checks,
                excluded_nodes: excluded,
                priority,
                preempt_delay,
                ports,
                mode,
                group,
                name,
            }
            .validate()?;
            let id = vips.add(&vip, force).await?;
            if json {
                print_json(&serde_json::json!({"id": id, "added": true, "record": vip.record}))?;
            } else {
                println!("floating IP {} added (id {id})", vip.record.address);
            }
        }
        IpCommand::Ls => {
            let list = vips.list().await?;
            if json {
                print_json(&list)?;
            } else {
                print!("{}", terminal_safe(&render_vip_list(&list)));
            }
        }
        IpCommand::Get { id } => {
            let entry = vips
                .get(&id)
                .await?
                .with_context(|| format!("no floating IP {id}"))?;
            if json {
                print_json(&entry)?;
            } else {
                print!("{}", terminal_safe(&render_vip(&entry)));
            }
        }
        IpCommand::Rm { id } => {
            if !vips.remove(&id).await? {
                anyhow::bail!("no floating IP {id}");
            }
            if json {
                print_json(&serde_json::json!({"id": id, "removed": true}))?;
            } else {
                println!("floating IP {id} removed");
            }
        }
        IpCommand::Failover { id } => {
            let owner = vips.failover(&id).await?;
            if json {
                print_json(&serde_json::json!({"id": id, "asked": owner}))?;
            } else {
                println!(
                    "{}",
                    terminal_safe(&format!("asked {owner} to release {id}"))
                );
            }
        }
    }
    Ok(())
}

/// `text` with what a terminal would act on made visible: control
/// characters (but newlines and tabs) and bidirectional overrides become
/// `\u{..}` escapes. Names, keys and errors come from etcd, where anyone
/// with write access can put escape sequences.
#[must_use]
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| {
            if unsafe_char(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Floating IPs as a table.
#[must_use]
pub fn render_vip_list(list: &[VipEntry]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<24} {:<28} {:<16} {:<10} {:<24} STATES\n",
        "ADDRESS", "ID", "OWNER", "INTERFACE", "CHECKS"
    );
    for e in list {
        let _ = match &e.record {
            Some(r) => writeln!(
                out,
                "{:<24} {:<28} {:<16} {:<10} {:<24} {}",
                r.address,
                e.id,
                e.owner.as_deref().unwrap_or("-"),
                r.interface.as_deref().unwrap_or("default"),
                if r.checks.is_empty() {
                    "-".to_owned()
                } else {
                    r.checks.join(",")
                },
                e.states
                    .iter()
                    .map(|(h, s)| format!("{h}={s}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            None => writeln!(
                out,
                "{:<24} {:<28} rejected: {}",
                "?",
                e.id,
                e.error.as_deref().unwrap_or("")
            ),
        };
    }
    out
}

/// One floating IP as `name: value` lines.
#[must_use]
pub fn render_vip(e: &VipEntry) -> String {
    use std::fmt::Write as _;
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    let mut out = String::new();
    let mut line = |name: &str, value: &str| {
        let _ = writeln!(out, "{name:<10} {value}");
    };
    line("id", &e.id);
    match &e.record {
        Some(r) => {
            line("address", &r.address);
            line("interface", r.interface.as_deref().unwrap_or("default"));
            line("checks", &list(&r.checks));
            line("excluded", &list(&r.excluded_nodes));
            line("priority", r.priority.as_deref().unwrap_or("-"));
            line(
                "preempt delay",
                &r.preempt_delay
                    .map_or_else(|| "-".to_owned(), |d| format!("{d} s")),
            );
            line("mode", &r.mode.to_string());
            line("group", r.group.as_deref().unwrap_or("-"));
            line("name", r.name.as_deref().unwrap_or("-"));
            let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
            line("ports", &list(&ports));
        }
        None => line("rejected", e.error.as_deref().unwrap_or("")),
    }
    line("owner", e.owner.as_deref().unwrap_or("-"));
    let states: Vec<String> = e.states.iter().map(|(h, s)| format!("{h}={s}")).collect();
    line("states", &list(&states));
    out
}

/// `linkmesh segment ...`; `json` prints every answer as JSON instead of text.
pub async fn segment(etcd: &EtcdArgs, command: SegmentCommand, json: bool) -> anyhow::Result<()> {
    let secrets = etcd.secrets()?;
    let client = etcd::connect(&Access::from_args(etcd)?).await?;
    let segments = Segments {
        client,
        keys: etcd.keys(),
        secrets,
    };
    match command {
        SegmentCommand::Add {
            name,
            vni,
            port,
            learning,
            mtu,
            netns,
            flood,
            bridge,
        } => {
            let spec = SegmentSpec {
                vni,
                port,
                learning: matches!(learning, OnOff::On),
                mtu,
                netns,
                flood: if flood == "none" {
                    Flood::None
                } else {
                    Flood::HeadEnd
                },
                bridge,
            };
            segments.add(&name, &spec).await?;
            if json {
                print_json(&serde_json::json!({
                    "name": name, "added": true, "vni": spec.vni, "port": spec.port,
                    "learning": spec.learning, "mtu": spec.mtu, "netns": spec.netns,
                    "flood": spec.flood.to_string(), "bridge": spec.bridge,
                }))?;
            } else {
                println!("segment {name} added (vni {vni}, port {port})");
            }
        }
        SegmentCommand::Rm { name } => {
            if !segments.remove(&name).await? {
                anyhow::bail!("segment {name} does not exist");
            }
            if json {
                print_json(&serde_json::json!({"name": name, "removed": true}))?;
            } else {
                println!("segment {name} removed");
            }
        }
        SegmentCommand::Ls => {
            let list = segments.list().await?;
            if json {
                let items: Vec<_> = list
                    .iter()
                    .map(|(name, spec)| match spec {
                        Ok(s) => serde_json::json!({"name": name, "vni": s.vni, "port": s.port, "learning": s.learning, "mtu": s.mtu, "netns": s.netns, "flood": s.flood.to_string(), "bridge": s.bridge}),
                        Err(e) => serde_json::json!({"name": name, "error": e.to_string()}),
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&items).context("encoding JSON")?
                );
            } else {
                use std::fmt::Write as _;
                let mut out = format!(
                    "{:<16} {:>8} {:>6} {:>8} {:>6} {:>8}  NETNS\n",
                    "NAME", "VNI", "PORT", "LEARNING", "MTU", "FLOOD"
                );
                for (name, spec) in &list {
                    let _ = match spec {
                        Ok(s) => writeln!(
                            out,
                            "{:<16} {:>8} {:>6} {:>8} {:>6} {:>8}  {}",
                            name,
                            s.vni,
                            s.port,
                            if s.learns() { "on" } else { "off" },
                            s.mtu.map_or_else(|| "auto".to_owned(), |m| m.to_string()),
                            s.flood.to_string(),
                            s.netns.as_deref().unwrap_or("-")
                        ),
                        Err(e) => writeln!(out, "{name:<16} rejected: {e}"),
                    };
                }
                print!("{}", terminal_safe(&out));
            }
        }
    }
    Ok(())
}

/// How `linkmesh status` and `linkmesh peers` reach the local agent.
#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    /// The agent's API address.
    #[arg(long, env = "LINKMESH_API", default_value = "127.0.0.1:1313")]
    pub api: std::net::SocketAddr,
    /// HTTP basic-auth user, when the API requires it.
    #[arg(long, env = "LINKMESH_API_USER", requires = "api_password_file")]
    pub api_user: Option<String>,
    /// File holding the basic-auth password (first line).
    #[arg(long, env = "LINKMESH_API_PASSWORD_FILE", requires = "api_user")]
    pub api_password_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) of an API served over HTTPS: with it the CLI
    /// speaks HTTPS and verifies the agent's certificate against it.
    #[arg(long, env = "LINKMESH_API_CACERT")]
    pub api_cacert: Option<std::path::PathBuf>,
    /// The name the agent's certificate must carry (default: the --api
    /// address, as an IP subject alternative name).
    #[arg(long, env = "LINKMESH_API_SERVER_NAME", requires = "api_cacert")]
    pub api_server_name: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Sends `request` and reads the whole response, over TLS when the CLI
/// was given the API's CA.
async fn exchange(args: &ApiArgs, request: &[u8]) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(args.api)
        .await
        .with_context(|| {
            format!(
                "connecting to the agent API at {} (is the agent running?)",
                args.api
            )
        })?;
    let mut response = Vec::new();
    let Some(ca) = &args.api_cacert else {
        stream.write_all(request).await?;
        stream.read_to_end(&mut response).await?;
        return Ok(response);
    };
    let config = crate::tls::client_config(ca)?;
    let name = match &args.api_server_name {
        Some(name) => rustls::pki_types::ServerName::try_from(name.clone())
            .with_context(|| format!("--api-server-name {name} is not a DNS name or an IP"))?,
        None => rustls::pki_types::ServerName::IpAddress(args.api.ip().into()),
    };
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .with_context(|| {
            format!(
                "TLS handshake with the agent API at {} failed; is {} the CA that signed the \
                 agent's --api-tls-cert, and does the certificate name {}?",
                args.api,
                ca.display(),
                args.api_server_name
                    .clone()
                    .unwrap_or_else(|| args.api.ip().to_string())
            )
        })?;
    tls.write_all(request).await?;
    // Some servers close without a TLS close_notify; what was read counts.
    match tls.read_to_end(&mut response).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(response)
}

/// A `GET` on the local API over HTTP/1.1; returns the body of a 200.
async fn api_get(args: &ApiArgs, path: &str) -> anyhow::Result<String> {
    use std::fmt::Write as _;

    use base64::Engine as _;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        args.api
    );
    if let (Some(user), Some(file)) = (&args.api_user, &args.api_password_file) {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let password = text.lines().next().unwrap_or_default();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let _ = write!(request, "Authorization: Basic {token}\r\n");
    }
    request.push_str("\r\n");
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        exchange(args, request.as_bytes()),
    )
    .await
    .with_context(|| format!("the agent API at {} did not answer in 5 s", args.api))??;
    anyhow::ensure!(
        !response.is_empty(),
        "the agent API at {} closed the connection without answering (if it serves HTTPS, \
         pass --api-cacert)",
        args.api
    );
    // A TLS record (an alert, 0x15, or a handshake, 0x16) to plain HTTP.
    anyhow::ensure!(
        !matches!(response.first(), Some(0x15 | 0x16)),
        "the agent API at {} speaks HTTPS; pass --api-cacert with the CA of its certificate",
        args.api
    );
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the agent API sent a malformed response")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    anyhow::ensure!(
        status == "200",
        "the agent API answered {status}: {}",
        body.trim()
    );
    Ok(body.to_owned())
}

pub async fn peers(args: &ApiArgs) -> anyhow::Result<()> {
    let body = api_get(args, "/peers").await?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let report: crate::peers::PeersReport =
        serde_json::from_str(&body).context("reading the agent's peer table")?;
    print!("{}", terminal_safe(&crate::peers::render_table(&report)));
    Ok(())
}

/// `linkmesh status`: this host on one screen.
pub async fn status(args: &ApiArgs) -> anyhow::Result<()> {
    let body = api_get(args, "/status").await?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let report: serde_json::Value =
        serde_json::from_str(&body).context("reading the agent's status")?;
    print!("{}", terminal_safe(&render_status(&report)?));
    Ok(())
}

/// The screen `linkmesh status` prints from `GET /status`.
pub fn render_status(r: &serde_json::Value) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let host = &r["host"];
    let mut out = format!(
        "host {}  underlay {} on {}  etcd {}\n",
        text(&host["hostname"]),
        text(&host["address"]),
        text(&host["device"]),
        text(&r["etcd"])
    );
    let _ = writeln!(
        out,
        "\n{:<16} {:>9} {:>6} {:<7} {:>6}",
        "SEGMENT", "VNI", "PORT", "JOINED", "PEERS"
    );
    for seg in r["segments"]
        .as_array()
        .context("no segments in the status")?
    {
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>6} {:<7} {:>6}",
            text(&seg["name"]),
            text(&seg["vni"]),
            text(&seg["port"]),
            if seg["joined"] == true { "yes" } else { "no" },
            text(&seg["peers"])
        );
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<16} {:<10} {:>9}",
        "VIP", "OWNER", "THIS HOST", "CONFLICTS"
    );
    for vip in r["vips"].as_array().context("no vips in the status")? {
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:<10} {:>9}",
            text(&vip["address"]),
            text(&vip["owner"]),
            text(&vip["state"]),
            text(&vip["conflicts"])
        );
    }
    let peers: crate::peers::PeersReport =
        serde_json::from_value(r.clone()).context("reading the peers of the status")?;
    out.push('\n');
    out.push_str(&crate::peers::render_table(&peers));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_terminal_acts_on_is_printed_escaped() {
        assert_eq!(terminal_safe("h1\tSTANDBY\n"), "h1\tSTANDBY\n");
        assert!(matches!(
            terminal_safe("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
        let hostile = "vip\u{1b}]0;owned\u{7}\u{1b}[2J\r\u{202e}x";
        let shown = terminal_safe(hostile);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "{shown}"
        );
        assert!(!shown.contains('\u{202e}'), "{shown}");
        assert_eq!(shown, "vip\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{d}\\u{202e}x");
    }

    #[test]
    fn the_status_screen_shows_every_part() {
        let r = serde_json::json!({
            "host": {"hostname": "h1", "address": "198.18.0.1", "device": "eth0", "segments": ["blue"]},
            "etcd": "ok",
            "failed_keepalives": 0,
            "segments": [{"name": "blue", "vni": 100, "port": 4789, "joined": true, "members": ["h1", "h2"], "peers": 1}],
            "vips": [{"id": "198.18.0.100_24", "address": "198.18.0.100/24", "owner": "h2", "state": "STANDBY",
                      "interface": "eth0", "conflicts": 0, "strays": 0, "fast_failover": false, "suspects_owner": false}],
            "peers": [{"hostname": "h2", "address": "198.18.0.2", "last_seen_ms": 12.0, "heartbeat_age_ms": 12.0,
                       "vxlan_age_ms": null, "heartbeats": 10, "vxlan_packets": 0, "loss": 0.0, "alive": true}],
            "peer_watcher": true,
        });
        let screen = render_status(&r).expect("renders");
        assert!(
            screen.starts_with("host h1  underlay 198.18.0.1 on eth0  etcd ok"),
            "{screen}"
        );
        assert!(
            screen
                .lines()
                .any(|l| l.starts_with("blue") && l.contains("100") && l.ends_with('1')),
            "{screen}"
        );
        assert!(
            screen.lines().any(|l| l.starts_with("198.18.0.100/24")
                && l.contains("h2")
                && l.contains("STANDBY")),
            "{screen}"
        );
        assert!(
            screen
                .lines()
                .any(|l| l.starts_with("h2") && l.contains("yes")),
            "{screen}"
        );
        assert!(
            render_status(&serde_json::json!({})).is_err(),
            "a malformed status is an error"
        );
    }
}
