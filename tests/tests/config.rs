//! The configuration file through the real binary: the shipped example is
//! valid, `--check-config` names sources and redacts the secret, and an
//! unknown key is refused with its name. Needs no root.

use std::path::Path;
use std::process::Command;

use linkmesh_tests::agent;

fn check_config(config: &Path, env: &[(&str, &str)], extra: &[&str]) -> (bool, String, String) {
    agent::outcome(
        Command::new(agent::binary())
            .args(["agent", "--config"])
            .arg(config)
            .arg("--check-config")
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("LINKMESH_SECRET"),
    )
}

#[test]
fn the_shipped_example_checks_and_redacts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "example-secret-0123456789").expect("secret");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/config.example.toml");
    let secret_env = secret.to_str().expect("utf-8");
    let (ok, out, err) = check_config(
        &example,
        &[("LINKMESH_SECRET_FILE", secret_env), ("LINKMESH_TTL", "15")],
        &["--keepalive-interval", "3"],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("segment = [\"blue\"]  # file"), "{out}");
    assert!(
        out.contains("ttl = 15  # environment"),
        "env beats file: {out}"
    );
    assert!(
        out.contains("keepalive-interval = 3  # flag"),
        "flag beats file: {out}"
    );
    assert!(out.contains("log-format = \"text\"  # file"), "{out}");
    assert!(
        out.contains(&format!("secret-file = {secret_env:?}  # environment")),
        "{out}"
    );
    assert!(out.trim_end().ends_with("# valid"), "{out}");

    let inline = dir.path().join("inline.toml");
    std::fs::write(&inline, "secret = \"do-not-print-0123456789\"\n").expect("file");
    let (ok, out, err) = check_config(&inline, &[], &[]);
    assert!(ok, "{out}{err}");
    assert!(!out.contains("do-not-print"), "{out}");
    assert!(out.contains("secret = \"<redacted>\"  # file"), "{out}");
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "segmnet = [\"blue\"]\n").expect("file");
    let (ok, out, err) = check_config(&bad, &[], &[]);
    assert!(!ok, "{out}");
    assert!(err.contains("unknown key `segmnet`"), "{err}");
}
