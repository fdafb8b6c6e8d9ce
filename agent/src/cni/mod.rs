//! `linkmesh-cni`: a CNI 1.0 plugin that attaches a workload's network
//! namespace to a linkmesh segment through the segment's bridge
//! (`attach`), with addressing delegated to an IPAM plugin (`ipam`); the
//! contract's types (`spec`); and the view of segments the agent writes
//! for it (`view`).

pub mod attach;
pub mod ipam;
pub mod spec;
pub mod view;

use std::io::Read as _;
use std::process::ExitCode;

use spec::{CniError, Command, Env, NetConf, code};

/// Runs one CNI operation from the process's environment and stdin, and
/// prints its result or its error as the spec says.
#[must_use]
pub fn main() -> ExitCode {
    let mut version = spec::OWN_VERSION.to_owned();
    match run(&mut version) {
        Ok(Some(answer)) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(mut e) => {
            e.cni_version = version;
            println!(
                "{}",
                serde_json::to_string(&e).unwrap_or_else(|_| e.msg.clone())
            );
            ExitCode::FAILURE
        }
    }
}

/// The operation's answer; `version` becomes the configuration's
/// `cniVersion` once it is read.
fn run(version: &mut String) -> Result<Option<String>, CniError> {
    let env = Env::from_vars(|k| std::env::var(k).ok())?;
    // Read whole for every command, VERSION too (the runtime writes its
    // `cniVersion` there), so a runtime's write never meets a closed pipe.
    let mut stdin = Vec::new();
    std::io::stdin().read_to_end(&mut stdin).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            "reading the network configuration from stdin",
        )
        .details(e.to_string())
    })?;
    if env.command == Command::Version {
        return Ok(Some(spec::version_info().to_string()));
    }
    let conf = NetConf::parse(&stdin)?;
    version.clone_from(&conf.cni_version);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(code::IO_FAILURE, "starting a runtime").details(e.to_string())
        })?;
    runtime.block_on(async {
        match env.command {
            Command::Add => {
                let result = attach::add(&env, &conf, &stdin).await?;
                serde_json::to_string(&result)
                    .map(Some)
                    .map_err(|e| CniError::new(code::IO_FAILURE, e.to_string()))
            }
            Command::Del => attach::del(&env, &conf, &stdin).await.map(|()| None),
            Command::Check => attach::check(&env, &conf, &stdin).await.map(|()| None),
            Command::Version => Ok(None),
        }
    })
}
