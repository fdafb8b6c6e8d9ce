//! The `linkmesh` command.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use linkmesh::cli::{ApiArgs, IpCommand, SegmentCommand};
use linkmesh::config::{AgentArgs, EtcdArgs};
use linkmesh::ebpf::arp::ArpWatcher;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Parser)]
#[command(
    name = "linkmesh",
    version,
    about = "etcd-coordinated VXLAN mesh and floating IPs"
)]
struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Debug logging (same as -v).
    #[arg(short = 'D', long, global = true)]
    debug: bool,
    /// Log lines as text or as JSON objects (one per line, with every
    /// structured field), on standard error.
    #[arg(
        long,
        global = true,
        env = "LINKMESH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: register this host, keep the mesh programmed.
    #[command(args_override_self = true)]
    Agent(Box<AgentArgs>),
    /// Declare, list, remove and fail over floating IPs (writes to etcd directly).
    Ip {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print every answer as JSON instead of a table or a line.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: IpCommand,
    },
    /// Define, list and remove segments (writes to etcd directly).
    Segment {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print every answer as JSON instead of a table or a line.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: SegmentCommand,
    },
    /// Show the local agent's peer liveness (heartbeats and VXLAN traffic
    /// seen by the eBPF peer watcher), from its API.
    Peers(ApiArgs),
    /// This host on one screen: underlay, etcd, segments and their peers,
    /// floating IPs and this host's state, peer liveness (from the local
    /// agent's API).
    Status(ApiArgs),
    /// Attach the ARP watcher (eBPF, TC ingress) to interfaces and print every
    /// ARP packet they receive.
    WatchArp {
        /// Interface to watch; repeatable.
        #[arg(short, long = "interface", required = true)]
        interfaces: Vec<String>,
        /// Stop after this many packets.
        #[arg(short = 'n', long)]
        count: Option<u64>,
    },
    /// Print a shell completion script for this command on standard output
    /// (the Debian package installs the bash, zsh and fish ones).
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_tracing(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_env("LINKMESH_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Repeated identical failures are held back and summarised.
    let repeats = linkmesh::logs::RepeatsLayer;
    match format {
        LogFormat::Text => builder.finish().with(repeats).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .finish()
            .with(repeats)
            .init(),
    }
    tokio::spawn(async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            linkmesh::logs::flush();
        }
    });
}

/// Parses the command line. For `linkmesh agent --config FILE`, the file's
/// options go ahead of the command line (flag > environment > file >
/// default). With `--check-config`, also returns the effective
/// configuration, described.
fn parse() -> anyhow::Result<(Cli, Option<String>)> {
    let mut words: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut command = Cli::command();
    command.build();
    let mut from_file = std::collections::BTreeSet::new();
    if words.get(1).is_some_and(|a| a == "agent")
        && let Some(agent) = command.find_subcommand("agent")
    {
        let env = |name: &str| std::env::var(name).ok();
        let expanded = linkmesh::config::file::expand(&words[2..], agent, &env)?;
        words.truncate(2);
        words.extend(expanded.args);
        from_file = expanded.from_file;
    }
    let matches = command.clone().get_matches_from(words);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let effective = match (&cli.command, matches.subcommand_matches("agent")) {
        (Command::Agent(a), Some(sub)) if a.check_config => {
            let agent = command
                .find_subcommand("agent")
                .context("no agent command")?;
            Some(linkmesh::config::file::describe(agent, sub, &from_file))
        }
        _ => None,
    };
    Ok((cli, effective))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (cli, effective) = parse()?;
    if let (Command::Agent(args), Some(effective)) = (&cli.command, effective) {
        print!("{effective}");
        linkmesh::agent::check(args)?;
        println!("# valid");
        return Ok(());
    }
    init_tracing(
        if cli.debug {
            cli.verbose.max(1)
        } else {
            cli.verbose
        },
        cli.log_format,
    );
    match cli.command {
        Command::Agent(args) => linkmesh::agent::run(*args).await,
        Command::Segment {
            etcd,
            json,
            command,
        } => linkmesh::cli::segment(&etcd, command, json).await,
        Command::Ip {
            etcd,
            json,
            command,
        } => linkmesh::cli::ip(&etcd, command, json).await,
        Command::Peers(args) => linkmesh::cli::peers(&args).await,
        Command::Status(args) => linkmesh::cli::status(&args).await,
        Command::WatchArp { interfaces, count } => watch_arp(&interfaces, count).await,
        Command::Completions { shell } => {
            std::io::Write::write_all(&mut std::io::stdout(), &completions(shell))
                .context("writing the completion script")
        }
    }
}

/// The completion script clap_complete generates for `shell`.
fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "linkmesh", &mut script);
    script
}

async fn watch_arp(interfaces: &[String], count: Option<u64>) -> anyhow::Result<()> {
    let mut watcher = ArpWatcher::new().context("starting the ARP watcher")?;
    for interface in interfaces {
        watcher
            .attach(interface)
            .with_context(|| format!("watching ARP on {interface}"))?;
        tracing::info!(interface = %interface, "ARP watcher attached");
    }
    let mut seen = 0u64;
    loop {
        tokio::select! {
            packet = watcher.next() => {
                println!("{}", packet.context("reading ARP events")?);
                seen += 1;
                if count.is_some_and(|n| seen >= n) {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let dropped = watcher.dropped().context("reading the drop counter")?;
    tracing::info!(packets = seen, dropped, "ARP watcher stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_scripts_name_the_subcommands() {
        use clap_complete::Shell;
        for (shell, marker) in [
            (Shell::Bash, "complete -F _linkmesh"),
            (Shell::Zsh, "#compdef linkmesh"),
            (Shell::Fish, "complete -c linkmesh"),
        ] {
            let script = String::from_utf8(completions(shell)).expect("UTF-8 script");
            assert!(script.contains(marker), "{shell}: no `{marker}`");
            for word in [
                "agent",
                "segment",
                "peers",
                "status",
                "watch-arp",
                "completions",
                // nested: `linkmesh ip failover`, `segment add --vni`, and
                // an agent option
                "failover",
                "vni",
                "etcd-server",
            ] {
                assert!(script.contains(word), "{shell}: `{word}` missing");
            }
        }
    }
}
