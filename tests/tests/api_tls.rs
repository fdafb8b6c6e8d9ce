//! The agent API over HTTPS (certificates made by the test): the CLI
//! verifies it with the right CA, and fails with a clear error with a wrong
//! CA or without one; a bad key file is named by `--check-config`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use linkmesh_tests::agent::{self, in_host, wait_until};
use linkmesh_tests::pki::Pki;
use linkmesh_tests::require_root;
use linkmesh_tests::testbed::Testbed;

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn the_api_serves_https_that_the_cli_verifies() {
    require_root!();
    let v = Testbed::builder(1).vip(&[]).build();
    let dir = v.lab.dir().join("api-pki");
    std::fs::create_dir_all(&dir).expect("pki dir");
    // The agent's API listens on 127.0.0.1 inside its namespace.
    let pki = Pki::new(&dir, IpAddr::V4(Ipv4Addr::LOCALHOST));
    let a = v.agent(
        1,
        "a",
        &[
            "--api-tls-cert",
            path(&pki.server_cert),
            "--api-tls-key",
            path(&pki.server_key),
        ],
    );
    let good = ["status", "--json", "--api-cacert", path(&pki.ca)];
    let up = wait_until(Duration::from_secs(15), || {
        in_host(&v.lab, 1, &good).is_ok_and(|out| out.contains("\"h1\""))
    });
    assert!(
        up.is_some(),
        "status over HTTPS with the right CA: {:?}\n{}",
        in_host(&v.lab, 1, &good),
        a.log()
    );
    assert!(a.log().contains("https=true"), "{}", a.log());

    let wrong = in_host(&v.lab, 1, &["status", "--api-cacert", path(&pki.other_ca)])
        .expect_err("a wrong CA is refused");
    assert!(
        wrong.contains("TLS handshake with the agent API")
            && wrong.to_lowercase().contains("certificate"),
        "the error says it is the certificate: {wrong}"
    );
    let plain = in_host(&v.lab, 1, &["status"]).expect_err("plain HTTP gets no answer");
    assert!(
        plain.contains("--api-cacert"),
        "the error names the fix: {plain}"
    );
    let named = wait_until(Duration::from_secs(5), || {
        a.log().matches("API TLS handshake failed").count() >= 2
    });
    assert!(
        named.is_some(),
        "both failed handshakes are logged: {}",
        a.log()
    );
    let again = in_host(
        &v.lab,
        1,
        &["status", "--json", "--api-cacert", path(&pki.ca)],
    )
    .expect("still serving after failed handshakes");
    assert!(again.contains("\"h1\""), "{again}");

    // A key that does not match, or none at all, is named before the agent
    // starts.
    let check = |key: &Path| {
        agent::outcome(
            Command::new(agent::binary())
                .args(["agent", "--check-config", "--etcd-server"])
                .arg(v.etcd.endpoint())
                .arg("--secret-file")
                .arg(&v.secret)
                .args(["--api-tls-cert", path(&pki.server_cert), "--api-tls-key"])
                .arg(key),
        )
    };
    let (ok, out, err) = check(&pki.client_key);
    assert!(!ok, "a mismatched key is refused: {out}");
    assert!(err.contains("TLS"), "{err}");
    let (ok, out, err) = check(&dir.join("missing-key.pem"));
    assert!(!ok, "a missing key is refused: {out}");
    assert!(
        err.contains("--api-tls-key") && err.contains("missing-key.pem"),
        "{err}"
    );
}
