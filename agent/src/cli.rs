//! Admin commands that write to etcd directly: `linkmesh segment ...`.

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
