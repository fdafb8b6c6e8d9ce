//! Admin commands: `linkmesh segment ...` and `linkmesh ip ...` write to
//! etcd directly; `linkmesh peers` asks the local agent's API.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use crate::config::EtcdArgs;
use crate::registry::SegmentSpec;
use crate::registry::segment::DEFAULT_PORT;
use crate::store::{self, Segments};

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
    },
    /// List segments.
    Ls {
        #[arg(long)]
        json: bool,
    },
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
    },
    /// List floating IPs and their owners.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one floating IP (JSON).
    Get { id: String },
    /// Remove a floating IP.
    Rm { id: String },
    /// Ask the owner to release it; another host takes over.
    Failover { id: String },
}

pub async fn ip(etcd: &EtcdArgs, command: IpCommand) -> anyhow::Result<()> {
    use crate::vip::VipRecord;
    use crate::vip::admin::Vips;
    let vips = Vips {
        client: store::connect(&etcd.etcd_servers).await?,
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
        } => {
            let record = VipRecord {
                address: cidr,
                interface,
                checks,
                excluded_nodes: excluded,
                priority,
                ports: None,
            };
            let id = vips.add(&record).await?;
            println!("floating IP {} added (id {id})", record.address);
        }
        IpCommand::Ls { json } => {
            let list = vips.list().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).context("encoding JSON")?
                );
            } else {
                println!(
                    "{:<24} {:<28} {:<16} {:<10} {:<24} STATES",
                    "ADDRESS", "ID", "OWNER", "INTERFACE", "CHECKS"
                );
                for e in &list {
                    match &e.record {
                        Some(r) => println!(
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
                        None => println!(
                            "{:<24} {:<28} rejected: {}",
                            "?",
                            e.id,
                            e.error.as_deref().unwrap_or("")
                        ),
                    }
                }
            }
        }
        IpCommand::Get { id } => {
            let entry = vips
                .get(&id)
                .await?
                .with_context(|| format!("no floating IP {id}"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&entry).context("encoding JSON")?
            );
        }
        IpCommand::Rm { id } => {
            if !vips.remove(&id).await? {
                anyhow::bail!("no floating IP {id}");
            }
            println!("floating IP {id} removed");
        }
        IpCommand::Failover { id } => {
            let owner = vips.failover(&id).await?;
            println!("asked {owner} to release {id}");
        }
    }
    Ok(())
}

pub async fn segment(etcd: &EtcdArgs, command: SegmentCommand) -> anyhow::Result<()> {
    let secrets = etcd.secrets()?;
    let client = store::connect(&etcd.etcd_servers).await?;
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
        } => {
            let spec = SegmentSpec {
                vni,
                port,
                learning: matches!(learning, OnOff::On),
                mtu,
                netns,
            };
            segments.add(&name, &spec).await?;
            println!("segment {name} added (vni {vni}, port {port})");
        }
        SegmentCommand::Rm { name } => {
            if segments.remove(&name).await? {
                println!("segment {name} removed");
            } else {
                anyhow::bail!("segment {name} does not exist");
            }
        }
        SegmentCommand::Ls { json } => {
            let list = segments.list().await?;
            if json {
                let items: Vec<_> = list
                    .iter()
                    .map(|(name, spec)| match spec {
                        Ok(s) => serde_json::json!({"name": name, "vni": s.vni, "port": s.port, "learning": s.learning, "mtu": s.mtu, "netns": s.netns}),
                        Err(e) => serde_json::json!({"name": name, "error": e}),
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&items).context("encoding JSON")?
                );
            } else {
                println!(
                    "{:<16} {:>8} {:>6} {:>8} {:>6}  NETNS",
                    "NAME", "VNI", "PORT", "LEARNING", "MTU"
                );
                for (name, spec) in &list {
                    match spec {
                        Ok(s) => println!(
                            "{:<16} {:>8} {:>6} {:>8} {:>6}  {}",
                            name,
                            s.vni,
                            s.port,
                            if s.learning { "on" } else { "off" },
                            s.mtu.map_or_else(|| "auto".to_owned(), |m| m.to_string()),
                            s.netns.as_deref().unwrap_or("-")
                        ),
                        Err(e) => println!("{name:<16} rejected: {e}"),
                    }
                }
            }
        }
    }
    Ok(())
}

/// `linkmesh peers`: the local agent's peer liveness table.
#[derive(clap::Args, Debug)]
pub struct PeersArgs {
    /// The agent's API address.
    #[arg(long, env = "LINKMESH_API", default_value = "127.0.0.1:1313")]
    pub api: std::net::SocketAddr,
    /// HTTP basic-auth user, when the API requires it.
    #[arg(long, env = "LINKMESH_API_USER", requires = "api_password_file")]
    pub api_user: Option<String>,
    /// File holding the basic-auth password (first line).
    #[arg(long, env = "LINKMESH_API_PASSWORD_FILE", requires = "api_user")]
    pub api_password_file: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A `GET` on the local API over HTTP/1.1; returns the body of a 200.
async fn api_get(args: &PeersArgs, path: &str) -> anyhow::Result<String> {
    use std::fmt::Write as _;

    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(args.api).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("the agent API at {} did not answer in 5 s", args.api))?
        .with_context(|| {
            format!(
                "asking the agent API at {} (is the agent running?)",
                args.api
            )
        })?;
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

pub async fn peers(args: &PeersArgs) -> anyhow::Result<()> {
    let body = api_get(args, "/peers").await?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let report: crate::peers::PeersReport =
        serde_json::from_str(&body).context("reading the agent's peer table")?;
    print!("{}", crate::peers::render_table(&report));
    Ok(())
}
