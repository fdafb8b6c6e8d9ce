//! The admin commands print a table or a line by default, and JSON with
//! `--json`, for every subcommand. Needs only etcd on loopback, no root.

use linkmesh_tests::agent::admin;
use linkmesh_tests::etcd::Etcd;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn every_admin_command_speaks_json_with_json() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "admin-json-secret-0123456789").expect("secret");
    let run = |args: &[&str]| admin(&etcd.endpoint(), &secret, args);

    let added = json(&run(&["segment", "add", "blue", "--vni", "42", "--json"]));
    assert_eq!(added["name"], "blue");
    assert_eq!(added["vni"], 42);
    let text = run(&["segment", "ls"]);
    assert!(text.starts_with("NAME") && text.contains("blue"), "{text}");
    let listed = json(&run(&["segment", "ls", "--json"]));
    assert_eq!(listed[0]["vni"], 42, "{listed}");

    let added = json(&run(&[
        "ip",
        "add",
        "198.18.9.100/24",
        "--name",
        "web.lab",
        "--json",
    ]));
    let id = added["id"].as_str().expect("an id").to_owned();
    assert_eq!(id, "198.18.9.100_24");
    assert_eq!(added["record"]["address"], "198.18.9.100/24");
    assert_eq!(added["record"]["name"], "web.lab");
    let shown = run(&["ip", "get", &id]);
    assert!(
        shown.contains("address    198.18.9.100/24")
            && shown.contains("name       web.lab")
            && shown.contains("owner      -"),
        "a readable table: {shown}"
    );
    let got = json(&run(&["ip", "get", &id, "--json"]));
    assert_eq!(got["id"], id.as_str());
    assert!(got["owner"].is_null(), "{got}");
    assert_eq!(got["record"]["name"], "web.lab", "{got}");
    let listed = json(&run(&["ip", "ls", "--json"]));
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    let (ok, _, err) = linkmesh_tests::agent::outcome(
        std::process::Command::new(linkmesh_tests::agent::binary())
            .args(["ip", "add", "198.18.9.101/32", "--name", "web_1.lab"])
            .args(["--etcd-server", &etcd.endpoint(), "--secret-file"])
            .arg(&secret),
    );
    assert!(
        !ok && err.contains("web_1.lab"),
        "a bad name is refused: {err}"
    );
    let removed = json(&run(&["ip", "rm", &id, "--json"]));
    assert_eq!(removed["removed"], true);
    let removed = json(&run(&["segment", "rm", "blue", "--json"]));
    assert_eq!(removed["removed"], true);
    assert_eq!(json(&run(&["ip", "ls", "--json"])), serde_json::json!([]));
}
