//! etcd over TLS with client certificates (certificates made by the test),
//! and etcd's user/password auth: the admin CLI and an agent connect with
//! the right material, and fail with a clear error otherwise; an agent
//! whose auth token expired gets a new one and keeps writing.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use linkmesh_tests::agent::{self, Agent, wait_until};
use linkmesh_tests::etcd::Etcd;
use linkmesh_tests::lab::Lab;
use linkmesh_tests::pki::Pki;
use linkmesh_tests::require_root;

use linkmesh_tests::SECRET;

/// `linkmesh ARGS ACCESS --etcd-server ENDPOINT --secret-file ...`, where
/// ACCESS are the TLS or user options: (ok, stdout, stderr).
fn cli(endpoint: &str, secret: &Path, args: &[&str], access: &[&str]) -> (bool, String, String) {
    agent::outcome(
        Command::new(agent::binary())
            .args(args)
            .args(access)
            .args(["--etcd-server", endpoint, "--secret-file"])
            .arg(secret),
    )
}

/// The TLS options: `ca` for etcd's certificate, plus the client's.
fn tls<'a>(pki: &'a Pki, ca: &'a Path) -> [&'a str; 6] {
    [
        "--etcd-cacert",
        path(ca),
        "--etcd-cert",
        path(&pki.client_cert),
        "--etcd-key",
        path(&pki.client_key),
    ]
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn mutual_tls_works_with_the_right_ca_and_fails_clearly_otherwise() {
    require_root!();
    let lab = Lab::new(1);
    let gateway = IpAddr::V4(lab.gateway());
    let pki = Pki::new(lab.dir(), gateway);
    let etcd = Etcd::start_tls_on(gateway, &pki.etcd_mtls());
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let secret = agent::secret_file(&lab, "secret", &[SECRET]);
    let good = tls(&pki, &pki.ca);

    let add = ["segment", "add", "blue", "--vni", "100"];
    let (ok, out, err) = cli(&endpoint, &secret, &add, &good);
    assert!(ok, "with the right CA and a client certificate: {out}{err}");
    let (ok, out, err) = cli(&endpoint, &secret, &["segment", "ls", "--json"], &good);
    assert!(ok && out.contains("\"blue\""), "{out}{err}");

    let wrong_ca = tls(&pki, &pki.other_ca);
    let (ok, _, err) = cli(&endpoint, &secret, &["segment", "ls"], &wrong_ca);
    assert!(!ok, "a wrong CA is refused");
    assert!(
        err.contains("connecting to etcd at") && err.to_lowercase().contains("certificate"),
        "the error says it is about the certificate: {err}"
    );

    let ca_only = ["--etcd-cacert", path(&pki.ca)];
    let (ok, _, err) = cli(&endpoint, &secret, &["segment", "ls"], &ca_only);
    assert!(!ok, "no client certificate is refused");
    assert!(err.contains("connecting to etcd at"), "{err}");

    // An agent over mutual TLS registers and programs its segment.
    let mut extra: Vec<&str> = good.to_vec();
    extra.extend_from_slice(&["--vip-interface", "eth0"]);
    let a = Agent::new(&lab, 1, &endpoint, &secret)
        .segments(&["blue"])
        .args(&extra)
        .start();
    let registered = wait_until(Duration::from_secs(10), || {
        a.log().contains("registered host=h1")
            && linkmesh_tests::kernel::link(&lab.host(1).netns, "blue").is_some()
    });
    assert!(registered.is_some(), "{}", a.log());
}

#[test]
fn etcd_users_authenticate_and_a_wrong_password_is_a_clear_error() {
    require_root!();
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let endpoint = etcd.endpoint();
    etcd.enable_root_auth("root-password");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    let password = dir.path().join("password");
    std::fs::write(&password, "root-password\n").expect("password");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password\n").expect("password");

    let (ok, _, err) = cli(&endpoint, &secret, &["segment", "ls"], &[]);
    assert!(!ok, "auth is on: anonymous requests fail: {err}");
    let user = |file| ["--etcd-user", "root", "--etcd-password-file", file];
    let (good, bad) = (user(path(&password)), user(path(&wrong)));
    let add = ["segment", "add", "blue", "--vni", "100"];
    let (ok, out, err) = cli(&endpoint, &secret, &add, &good);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cli(&endpoint, &secret, &["segment", "ls"], &bad);
    assert!(!ok, "a wrong password is refused");
    assert!(
        err.contains("connecting to etcd at") && err.contains("authentication failed"),
        "the error names the cause: {err}"
    );
}

#[test]
fn an_expired_etcd_token_is_refreshed_and_the_agent_keeps_writing() {
    require_root!();
    let lab = Lab::new(1);
    let gateway = IpAddr::V4(lab.gateway());
    // Simple tokens that expire after 2 s without use.
    let etcd = Etcd::start_with_flags(gateway, &["--auth-token-ttl=2"]);
    let endpoint = etcd.endpoint();
    etcd.enable_root_auth("root-password");
    let secret = agent::secret_file(&lab, "secret", &[SECRET]);
    let password = lab.dir().join("password");
    std::fs::write(&password, "root-password\n").expect("password");
    let user = [
        "--etcd-user",
        "root",
        "--etcd-password-file",
        path(&password),
    ];
    let vip = |n: u8| format!("198.18.{}.{n}", lab.slot());
    let add = |n: u8| {
        let (ok, out, err) = cli(
            &endpoint,
            &secret,
            &["ip", "add", &format!("{}/24", vip(n))],
            &user,
        );
        assert!(ok, "{out}{err}");
    };
    let bound = |n: u8| lab.holders(vip(n).parse().expect("ip"), 1..=1) == vec![1];
    add(100);
    let mut extra = user.to_vec();
    extra.extend_from_slice(&["--vip-interface", "eth0"]);
    let a = Agent::new(&lab, 1, &endpoint, &secret).args(&extra).start();
    let first = wait_until(Duration::from_secs(15), || bound(100));
    assert!(first.is_some(), "{}", a.log());
    // Three token lifetimes: the agent's token has expired by now (its
    // keepalive streams do not renew it).
    std::thread::sleep(Duration::from_secs(6));
    add(101);
    let second = wait_until(Duration::from_secs(10), || bound(101));
    assert!(
        second.is_some(),
        "the agent contends for a new VIP with a fresh token:\n{}",
        a.log()
    );
    let log = a.log();
    // etcd saw the expired token, so the VIP was bound after a refresh.
    let etcd_log = std::fs::read_to_string(etcd.dir().join("etcd.log")).unwrap_or_default();
    let expired = etcd_log.matches("invalid auth token").count();
    assert!(
        expired > 0,
        "the token expired during the test (else it proves nothing):\n{etcd_log}"
    );
    assert!(bound(100), "the first VIP stayed:\n{log}");
    eprintln!(
        "etcd token figure: second VIP bound {second:?} after its definition; \
         requests etcd refused with the expired token: {expired}"
    );
}
