//! Delegated addressing: the IPAM plugin the configuration names, found
//! on `CNI_PATH` and run as the spec's delegation says (the same
//! environment and stdin, `CNI_COMMAND` for the operation). Executed
//! directly, never through a shell.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use super::spec::{CniError, CniResult, Command, Env, code};

/// The plugin `kind` on `env`'s `CNI_PATH`.
fn find(env: &Env, kind: &str) -> Result<PathBuf, CniError> {
    if kind.is_empty() || kind.contains('/') || kind == "." || kind == ".." {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("ipam type {kind:?} is not a plugin name"),
        ));
    }
    env.path
        .iter()
        .map(|dir| dir.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("ipam plugin {kind} is not on CNI_PATH"),
            )
            .details(
                env.path
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            )
        })
}

/// Runs IPAM plugin `kind` for `command` with the runtime's `stdin`; the
/// result it prints for ADD, `None` for the others.
pub fn delegate(
    env: &Env,
    kind: &str,
    command: Command,
    stdin: &[u8],
) -> Result<Option<CniResult>, CniError> {
    let plugin = find(env, kind)?;
    let verb = match command {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Version => "VERSION",
    };
    let io = |what: &str, e: std::io::Error| {
        CniError::new(
            code::IO_FAILURE,
            format!("{what} ipam plugin {}", plugin.display()),
        )
        .details(e.to_string())
    };
    let mut child = Process::new(&plugin)
        .env("CNI_COMMAND", verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| io("running", e))?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that stops reading early closes the pipe: what it
        // prints still decides.
        match input.write_all(stdin) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(io("writing to", e));
            }
            _ => {}
        }
    }
    let out = child.wait_with_output().map_err(|e| io("waiting for", e))?;
    if !out.status.success() {
        // Its error is passed on as it is, naming the plugin.
        return Err(match serde_json::from_slice::<CniError>(&out.stdout) {
            Ok(mut e) => {
                e.msg = format!("ipam plugin {kind}: {}", e.msg);
                e
            }
            Err(_) => CniError::new(
                code::IO_FAILURE,
                format!("ipam plugin {kind} failed ({})", out.status),
            )
            .details(String::from_utf8_lossy(&out.stdout).into_owned()),
        });
    }
    if command != Command::Add {
        return Ok(None);
    }
    serde_json::from_slice(&out.stdout).map(Some).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("ipam plugin {kind} printed no result"),
        )
        .details(e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn env_with(dir: &std::path::Path) -> Env {
        Env {
            command: Command::Add,
            container_id: "c1".into(),
            netns: None,
            ifname: "eth0".into(),
            path: vec![PathBuf::from("/nonexistent"), dir.to_owned()],
        }
    }

    fn plugin(dir: &std::path::Path, name: &str, script: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn the_plugin_is_found_on_the_path_and_its_answers_are_passed_on() {
        let dir = tempfile::tempdir().expect("a temp dir");
        // Echoes what it was asked, to show the command and stdin reached it.
        plugin(
            dir.path(),
            "fake-ipam",
            r#"read conf; printf '{"cniVersion":"1.0.0","ips":[{"address":"198.19.0.5/24"}],"dns":{"nameservers":["198.19.0.1"]},"routes":[{"dst":"0.0.0.0/0","gw":"198.19.0.1"}]}'; echo "$CNI_COMMAND $conf" >&2"#,
        );
        plugin(
            dir.path(),
            "refusing-ipam",
            r#"printf '{"cniVersion":"1.0.0","code":11,"msg":"no addresses left"}'; exit 1"#,
        );
        plugin(dir.path(), "garbage-ipam", "echo not-json");
        let env = env_with(dir.path());
        let r = delegate(&env, "fake-ipam", Command::Add, b"{}\n")
            .expect("ADD")
            .expect("a result");
        assert_eq!(r.ips[0].address, "198.19.0.5/24");
        assert_eq!(r.routes[0].gw, Some("198.19.0.1".parse().expect("ip")));
        assert!(
            delegate(&env, "fake-ipam", Command::Del, b"{}\n")
                .expect("DEL")
                .is_none()
        );
        let e = delegate(&env, "refusing-ipam", Command::Add, b"{}\n").expect_err("refused");
        assert_eq!(e.code, 11, "its own code is kept");
        assert!(e.msg.contains("refusing-ipam") && e.msg.contains("no addresses left"));
        let e = delegate(&env, "garbage-ipam", Command::Add, b"{}\n").expect_err("garbage");
        assert_eq!(e.code, code::DECODE_FAILURE);
        for missing in ["absent-ipam", "../fake-ipam", "/bin/sh", ""] {
            let e = delegate(&env, missing, Command::Add, b"{}").expect_err(missing);
            assert_eq!(e.code, code::INVALID_CONFIG, "{missing}");
        }
    }
}
