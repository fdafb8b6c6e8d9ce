//! Trust and the API's reads: `GET /ips` is read a page at a time (at most
//! 1,000 VIPs, and a bounded number of keys, per request, the rest behind a
//! `Link: rel="next"`), and `GET /ips/{id}` reads only that VIP, even when
//! an etcd writer without the secret has filled the prefix with junk.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use etcd_client::{Txn, TxnOp};
use linkmesh_tests::testbed::Testbed;
use linkmesh_tests::{netns, require_root};
use serde_json::Value;

/// `GET path` from the API on `ns`: the status, the `Link` header's next
/// path (if any), and the JSON body.
fn get(ns: &str, path: &str) -> (u16, Option<String>, Value) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let out = netns::run_in(ns, move || {
        let mut s = TcpStream::connect("127.0.0.1:1313").expect("connecting to the API");
        s.write_all(request.as_bytes()).expect("sending");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("reading");
        out
    });
    let (head, body) = out.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let next = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if !name.eq_ignore_ascii_case("link") {
            return None;
        }
        let path = value.trim().strip_prefix('<')?.split_once('>')?.0;
        value.contains("rel=\"next\"").then(|| path.to_owned())
    });
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, next, json)
}

/// The ids in a `GET /ips` page.
fn ids(page: &Value) -> Vec<String> {
    page.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Follows `Link` from `first`: every id listed, and the number of pages.
fn walk(ns: &str, first: &str) -> (Vec<String>, usize) {
    let (mut all, mut pages, mut path) = (Vec::new(), 0, Some(first.to_owned()));
    while let Some(p) = path {
        let (status, next, body) = get(ns, &p);
        assert_eq!(status, 200, "GET {p}: {body}");
        all.extend(ids(&body));
        pages += 1;
        assert!(pages < 100, "the pages end");
        path = next;
    }
    (all, pages)
}

/// Writes `keys` (empty values) as an etcd client without the secret.
fn junk(t: &Testbed, keys: &[String]) {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let mut c = t.etcd.client().await;
        for chunk in keys.chunks(128) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::put(k.as_str(), "junk", None))
                .collect();
            c.txn(Txn::new().and_then(ops)).await.expect("writing junk");
        }
    });
}

#[test]
fn vips_are_listed_a_page_at_a_time_and_one_vip_reads_only_its_keys() {
    require_root!();
    let t = Testbed::builder(1).client().build();
    let s = t.lab.slot();
    let mut want = BTreeSet::new();
    for i in 0..25u8 {
        let address = 150 + i;
        t.admin(&["ip", "add", &format!("198.18.{s}.{address}/32")]);
        want.insert(format!("198.18.{s}.{address}_32"));
    }
    // Junk keys of ids with no record, sorting before the VIPs (more than
    // one page's key budget), and junk member keys under one VIP.
    let first = want.iter().next().expect("a VIP").clone();
    let mut keys: Vec<String> = (0..9000)
        .map(|i| format!("/linkmesh/vips/0junk-{i:05}/state/h1"))
        .collect();
    keys.extend((0..2000).map(|i| format!("/linkmesh/vips/{first}/state/junk-{i:04}")));
    junk(&t, &keys);

    let _agent = t.agent(1, "agent", &[]);
    let ns = t.lab.host(1).netns.clone();
    let up = linkmesh_tests::agent::wait_until(Duration::from_secs(15), || {
        netns::run_in(&ns, || TcpStream::connect("127.0.0.1:1313").is_ok())
    });
    assert!(up.is_some(), "the API is up");

    // Ten at a time: every VIP exactly once, in order, over linked pages.
    let (listed, pages) = walk(&ns, "/ips?limit=10");
    let sorted: Vec<String> = want.iter().cloned().collect();
    eprintln!("listing with limit=10 took {pages} pages");
    assert_eq!(listed, sorted, "every VIP once, in id order");
    assert!(
        pages >= 4,
        "9,000 junk keys and 25 VIPs take several pages: {pages}"
    );
    // The default (1,000): the junk still ends a page early, and the walk
    // still finds them all.
    let (listed, _) = walk(&ns, "/ips");
    assert_eq!(listed, sorted);
    // A page of 10 holds 10.
    let (status, next, body) = get(&ns, &format!("/ips?after={first}&limit=10"));
    assert_eq!(status, 200);
    assert_eq!(ids(&body).len(), 10, "{body}");
    assert!(next.is_some(), "15 more after the first ten");

    // One VIP: its record and state, none of the junk (unsigned states).
    let (status, _, body) = get(&ns, &format!("/ips/{first}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], first.as_str());
    assert!(
        body["states"]
            .as_object()
            .is_none_or(|m| m.keys().all(|h| !h.starts_with("junk"))),
        "{body}"
    );

    for bad in [
        "/ips?limit=0",
        "/ips?limit=1001",
        "/ips?after=198.18.0.100_24%2Fowner",
        "/ips?after=",
        "/ips?offset=5",
    ] {
        let (status, _, body) = get(&ns, bad);
        assert_eq!(status, 400, "{bad}: {body}");
    }
}
