//! The committed seed corpus: real encodings (records sealed with the
//! fuzz secret), each named for what the targets must decide about it.

use linkmesh::registry::{
    HostRecord, Keys, SegmentSpec, Tombstone, VipRecord, seal, seal_definition,
};

use super::vip::KNOWN_VIP;
use super::{
    KNOWN_GENERATION, LATER, LEASE, NOW, ON_LEASE, OTHER_LEASE, PREFIX, SIGN_BODY, VIP, encode,
    known_host, other_secrets, secrets,
};

/// The seed corpus: `(target, file name, input)`. File names start with
/// `accept-` or `reject-`, and the unit test checks that they are.
#[must_use]
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    record_seeds(&mut out);
    record_body_seeds(&mut out);
    segment_seeds(&mut out);
    segment_bridge_seeds(&mut out);
    vip_seeds(&mut out);
    api_body_seeds(&mut out);
    out
}

type Seeds = Vec<(&'static str, String, Vec<u8>)>;

fn record_seeds(out: &mut Seeds) {
    let keys = Keys::new(PREFIX);
    let s = secrets();
    let mut add = |name: &str, input: Vec<u8>| out.push(("record", name.to_owned(), input));
    let h2 = HostRecord {
        hostname: "h2".into(),
        address: "198.18.0.2".parse().expect("ip"),
        segments: [
            ("blue".to_owned(), "02:00:00:00:00:02".parse().expect("mac")),
            ("red".to_owned(), "02:00:00:00:01:02".parse().expect("mac")),
        ]
        .into(),
        agent_version: "0.1.0".into(),
        heartbeat_nonce: Some(0x1234_5678_9abc_def0),
        overlay: linkmesh::registry::host::Overlay::default(),
    };
    let sealed = |host: &HostRecord, key: &str, issued: u64| {
        seal(&s, key, LEASE, issued, host).expect("seal")
    };
    let h2_value = sealed(&h2, &keys.host("h2"), NOW - 10);
    add("accept-h2-signed", encode(0, "h2", &h2_value));
    add(
        "accept-h1-re-signed",
        encode(
            0,
            "h1",
            &sealed(&known_host("h1"), &keys.host("h1"), NOW - 60),
        ),
    );
    add(
        "reject-h2-other-lease",
        encode(OTHER_LEASE, "h2", &h2_value),
    );
    add("reject-h2-expired", encode(LATER, "h2", &h2_value));
    add("reject-h2-copied-to-h9", encode(0, "h9", &h2_value));
    add(
        "reject-h1-future",
        encode(
            0,
            "h1",
            &sealed(&known_host("h1"), &keys.host("h1"), NOW + 600),
        ),
    );
    let forged = seal(
        &other_secrets(),
        &keys.host("h1"),
        LEASE,
        NOW,
        &known_host("h1"),
    )
    .expect("seal");
    add("reject-h1-forged", encode(0, "h1", &forged));
    let mut flipped = sealed(&known_host("h1"), &keys.host("h1"), NOW);
    if let Some(b) = flipped.iter_mut().find(|b| **b == b'8') {
        *b = b'9';
    }
    add("reject-h1-tampered", encode(0, "h1", &flipped));
    add(
        "reject-h1-truncated",
        encode(0, "h1", &h2_value[..h2_value.len() / 2]),
    );
    add("reject-h1-garbage", encode(0, "h1", b"\xff\x00\x13"));
    add("reject-h1-empty-object", encode(0, "h1", b"{}"));
    add("reject-slash-name", encode(0, "a/b", b"{}"));
}

/// Host bodies that `record` signs itself.
fn record_body_seeds(out: &mut Seeds) {
    let mut add = |name: &str, input: Vec<u8>| out.push(("record", name.to_owned(), input));
    let body = |h: &HostRecord| serde_json::to_vec(h).expect("encode");
    let h3 = HostRecord {
        hostname: "h3".into(),
        address: "fd00::3".parse().expect("ip"),
        segments: [(
            "green".to_owned(),
            "02:aa:bb:cc:dd:03".parse().expect("mac"),
        )]
        .into(),
        agent_version: "0.2.0-dev".into(),
        heartbeat_nonce: None,
        overlay: linkmesh::registry::host::Overlay::default(),
    };
    add("accept-h3-body-ipv6", encode(SIGN_BODY, "h3", &body(&h3)));
    add(
        "accept-h1-body",
        encode(SIGN_BODY, "h1", &body(&known_host("h1"))),
    );
    add(
        "reject-h3-body-on-other-lease",
        encode(SIGN_BODY | OTHER_LEASE, "h3", &body(&h3)),
    );
    add(
        "reject-h3-body-under-h4",
        encode(SIGN_BODY, "h4", &body(&h3)),
    );
    add(
        "reject-body-unspecified-address",
        encode(
            SIGN_BODY,
            "h5",
            br#"{"hostname":"h5","address":"0.0.0.0","segments":{},"agent_version":"x"}"#,
        ),
    );
    add(
        "accept-h3-body-with-overlay",
        encode(
            SIGN_BODY,
            "h3",
            &body(&HostRecord {
                overlay: [(
                    "green".to_owned(),
                    [
                        "198.19.10.3".parse().expect("ip"),
                        "fd00:10::3".parse().expect("ip"),
                    ],
                )]
                .into_iter()
                .collect(),
                ..h3.clone()
            }),
        ),
    );
    add(
        "reject-body-overlay-for-a-segment-not-joined",
        encode(
            SIGN_BODY,
            "h7",
            br#"{"hostname":"h7","address":"198.18.0.7","segments":{"blue":"02:00:00:00:00:07"},"agent_version":"x","overlay":{"red":["198.19.10.7"]}}"#,
        ),
    );
    add(
        "reject-body-overlay-multicast",
        encode(
            SIGN_BODY,
            "h7",
            br#"{"hostname":"h7","address":"198.18.0.7","segments":{"blue":"02:00:00:00:00:07"},"agent_version":"x","overlay":{"blue":["224.0.0.5"]}}"#,
        ),
    );
    add(
        "reject-body-bad-segment-and-mac",
        encode(
            SIGN_BODY,
            "h6",
            br#"{"hostname":"h6","address":"198.18.0.6","segments":{"a/b":"zz:00"},"agent_version":"x"}"#,
        ),
    );
    add(
        "reject-body-not-json",
        encode(SIGN_BODY, "h7", b"{\"hostname\":"),
    );
}

/// Segments with a bridge of their own: valid, and not with a netns.
fn segment_bridge_seeds(out: &mut Seeds) {
    let keys = Keys::new(PREFIX);
    let s = secrets();
    let blue = keys.segment("blue");
    let newer = KNOWN_GENERATION + 1;
    let blue_at = |body: &SegmentSpec| seal_definition(&s, &blue, newer, NOW, body).expect("seal");
    let mut add = |name: &str, input: Vec<u8>| out.push(("segment_vip", name.to_owned(), input));
    let bridged = SegmentSpec {
        bridge: Some("lm-blue".into()),
        ..SegmentSpec::new(101)
    };
    add(
        "accept-segment-blue-with-a-bridge",
        encode(0, "blue", &blue_at(&bridged)),
    );
    let bridge_in_netns = SegmentSpec {
        netns: Some("web".into()),
        ..bridged.clone()
    };
    add(
        "reject-segment-blue-bridge-in-a-netns",
        encode(0, "blue", &blue_at(&bridge_in_netns)),
    );
}

fn segment_seeds(out: &mut Seeds) {
    let keys = Keys::new(PREFIX);
    let s = secrets();
    let mut add = |name: &str, input: Vec<u8>| out.push(("segment_vip", name.to_owned(), input));
    let red = SegmentSpec {
        vni: 200,
        port: 4790,
        learning: false,
        mtu: Some(1400),
        netns: Some("web".into()),
        flood: linkmesh::registry::Flood::None,
        bridge: None,
    };
    let red_value = seal(&s, &keys.segment("red"), 0, NOW, &red).expect("seal");
    add("accept-segment-red", encode(0, "red", &red_value));
    let blue = keys.segment("blue");
    let blue_at = |generation, body: &SegmentSpec| {
        seal_definition(&s, &blue, generation, NOW, body).expect("seal")
    };
    let tombstone = |key: &str, generation| {
        seal_definition(&s, key, generation, NOW, &Tombstone {}).expect("seal")
    };
    let newer = KNOWN_GENERATION + 1;
    let older = KNOWN_GENERATION - 1;
    add(
        "accept-segment-blue-changed",
        encode(0, "blue", &blue_at(newer, &SegmentSpec::new(101))),
    );
    add(
        "reject-segment-blue-older-generation",
        encode(0, "blue", &blue_at(older, &SegmentSpec::new(101))),
    );
    add(
        "reject-segment-blue-without-generation",
        encode(
            0,
            "blue",
            &seal(&s, &blue, 0, NOW, &SegmentSpec::new(101)).expect("seal"),
        ),
    );
    // Found by the fuzzer: a valid body for `blue`, signed without a
    // generation, is older than the one known.
    add(
        "reject-segment-blue-signed-body-without-generation",
        encode(SIGN_BODY, "blue", b"[5]"),
    );
    add(
        "accept-segment-blue-tombstone",
        encode(0, "blue", &tombstone(&blue, newer)),
    );
    add(
        "reject-segment-blue-older-tombstone",
        encode(0, "blue", &tombstone(&blue, older)),
    );
    add(
        "reject-segment-tombstone-moved",
        encode(0, "blue", &tombstone(&keys.segment("red"), newer)),
    );
    add(
        "reject-segment-on-a-lease",
        encode(ON_LEASE, "red", &red_value),
    );
    add("reject-segment-copied", encode(0, "blue", &red_value));
    add("reject-segment-garbage", encode(0, "blue", b"not json"));
    add(
        "reject-segment-unknown-flood",
        encode(SIGN_BODY, "green", br#"{"vni":7,"flood":"multicast"}"#),
    );
    add(
        "accept-segment-body",
        encode(
            SIGN_BODY,
            "green",
            br#"{"vni":300,"port":4789,"learning":true}"#,
        ),
    );
    add(
        "reject-segment-body-vni-0",
        encode(SIGN_BODY, "green", br#"{"vni":0}"#),
    );
    add(
        "reject-segment-body-unknown-field",
        encode(SIGN_BODY, "green", br#"{"vni":5,"colour":"green"}"#),
    );
    add(
        "reject-segment-body-long-name",
        encode(SIGN_BODY, "sixteen-chars-16", br#"{"vni":5}"#),
    );
    add(
        "reject-segment-body-bad-netns",
        encode(SIGN_BODY, "green", br#"{"vni":5,"mtu":9000,"netns":".."}"#),
    );
}

fn vip_seeds(out: &mut Seeds) {
    let keys = Keys::new(PREFIX);
    let s = secrets();
    let mut add = |name: &str, input: Vec<u8>| out.push(("segment_vip", name.to_owned(), input));

    let id = "198.18.0.100_24";
    let full = VipRecord {
        address: "198.18.0.100/24".into(),
        interface: Some("eth0".into()),
        checks: vec![
            "tcp:127.0.0.1:80".into(),
            "http://127.0.0.1:8080/health".into(),
            "exec:check-web".into(),
        ],
        excluded_nodes: vec!["h3".into()],
        priority: Some("h1".into()),
        preempt_delay: Some(30),
        ports: vec![linkmesh::registry::PortMap {
            src: 80,
            proto: linkmesh::registry::Proto::Tcp,
            dest: 8080,
        }],
        mode: linkmesh::registry::Mode::L2,
        group: Some("pair".into()),
        name: Some("web.prod".into()),
    };
    let full_value = seal(&s, &keys.vip(id), 0, NOW, &full).expect("seal");
    add("accept-vip-full", encode(VIP, id, &full_value));
    let misnamed = VipRecord {
        name: Some("web_1.prod".into()),
        ..VipRecord::new("198.18.0.102/32")
    };
    let misnamed_id = "198.18.0.102_32";
    add(
        "reject-vip-name-not-dns",
        encode(
            VIP,
            misnamed_id,
            &seal(&s, &keys.vip(misnamed_id), 0, NOW, &misnamed).expect("seal"),
        ),
    );
    let known = keys.vip(KNOWN_VIP);
    let known_at = |generation| {
        seal_definition(
            &s,
            &known,
            generation,
            NOW,
            &VipRecord::new("198.18.0.99/32"),
        )
        .expect("seal")
    };
    let gone = seal_definition(&s, &known, KNOWN_GENERATION + 1, NOW, &Tombstone {}).expect("seal");
    add("accept-vip-tombstone", encode(VIP, KNOWN_VIP, &gone));
    add(
        "reject-vip-older-generation",
        encode(VIP, KNOWN_VIP, &known_at(KNOWN_GENERATION - 1)),
    );
    add(
        "accept-vip-same-write-again",
        encode(VIP, KNOWN_VIP, &known_at(KNOWN_GENERATION)),
    );
    add(
        "reject-vip-on-a-lease",
        encode(VIP | ON_LEASE, id, &full_value),
    );
    add(
        "reject-vip-copied",
        encode(VIP, "198.18.0.101_24", &full_value),
    );
    add(
        "reject-vip-owner-key",
        encode(VIP, &format!("{id}/owner"), b"h1"),
    );
    add(
        "reject-vip-state-key",
        encode(VIP, &format!("{id}/state/h2"), b"STANDBY"),
    );
    add(
        "accept-vip-body-ipv6",
        encode(
            VIP | SIGN_BODY,
            "fd00::100_64",
            br#"{"address":"fd00::100/64","checks":["tcp:[fd00::1]:443"]}"#,
        ),
    );
    add(
        "reject-vip-body-https",
        encode(
            VIP | SIGN_BODY,
            id,
            br#"{"address":"198.18.0.100/24","checks":["https://x/"]}"#,
        ),
    );
    add(
        "reject-vip-body-loopback",
        encode(VIP | SIGN_BODY, id, br#"{"address":"127.0.0.1/8"}"#),
    );
}

fn api_body_seeds(out: &mut Seeds) {
    let mut add = |name: &str, body: &[u8]| out.push(("api_body", name.to_owned(), body.to_vec()));
    add("accept-minimal", br#"{"address":"198.18.0.100/24"}"#);
    add(
        "accept-full",
        br#"{"address":"198.18.0.100/24","interface":"eth0","checks":["tcp:127.0.0.1:80","http://127.0.0.1/","exec:check-web"],"excluded_nodes":["backup-3"],"priority":"web-1","ports":[{"src":80,"proto":"tcp","dest":8080}],"group":"web"}"#,
    );
    add(
        "accept-ipv6",
        br#"{"address":"fd00::100/128","checks":["tcp:[fd00::1]:22"]}"#,
    );
    add(
        "reject-ports-not-maps",
        br#"{"address":"198.18.0.1/32","ports":{"weight":-5.791054108416719e-286}}"#,
    );
    add(
        "accept-ports-route-group",
        br#"{"address":"198.18.0.1/32","ports":[{"src":80,"proto":"tcp","dest":8080},{"src":53,"proto":"udp","dest":5353}],"mode":"route","group":"pair"}"#,
    );
    add(
        "reject-ports-same-src",
        br#"{"address":"198.18.0.1/32","ports":[{"src":80,"proto":"tcp","dest":1},{"src":80,"proto":"tcp","dest":2}]}"#,
    );
    add(
        "reject-route-not-a-host",
        br#"{"address":"198.18.0.0/24","mode":"route"}"#,
    );
    add(
        "reject-group-path",
        br#"{"address":"198.18.0.1/32","group":"../x"}"#,
    );
    add(
        "accept-preempt",
        br#"{"address":"198.18.0.100/24","priority":"web-1","preempt_delay":30}"#,
    );
    add(
        "reject-preempt-without-priority",
        br#"{"address":"198.18.0.100/24","preempt_delay":30}"#,
    );
    add(
        "reject-preempt-zero",
        br#"{"address":"198.18.0.100/24","priority":"web-1","preempt_delay":0}"#,
    );
    add(
        "reject-lineage-ports",
        br#"{"address":"198.18.0.100/24","ports":[{"from":80,"to":8080}]}"#,
    );
    add(
        "accept-named",
        br#"{"address":"198.18.0.100/32","name":"web.prod.example"}"#,
    );
    add(
        "reject-name-not-dns",
        br#"{"address":"198.18.0.100/32","name":"-web..prod"}"#,
    );
    add(
        "reject-name-upper-case",
        br#"{"address":"198.18.0.100/32","name":"Web"}"#,
    );
    add("reject-no-prefix", br#"{"address":"198.18.0.100"}"#);
    add("reject-prefix-33", br#"{"address":"198.18.0.1/33"}"#);
    add(
        "reject-unknown-field",
        br#"{"address":"198.18.0.1/32","colour":1}"#,
    );
    add(
        "reject-https-check",
        br#"{"address":"198.18.0.1/32","checks":["https://x/"]}"#,
    );
    add(
        "reject-exec-command-line",
        br#"{"address":"198.18.0.1/32","checks":["exec:sh -c 'touch /tmp/pwned'"]}"#,
    );
    add(
        "reject-exec-path",
        br#"{"address":"198.18.0.1/32","checks":["exec:/bin/true"]}"#,
    );
    add(
        "reject-bad-host",
        br#"{"address":"198.18.0.1/32","excluded_nodes":["a b"]}"#,
    );
    add(
        "reject-bad-interface",
        br#"{"address":"198.18.0.1/32","interface":"a/b"}"#,
    );
    add("reject-not-json", b"address=198.18.0.1/32");
    add("reject-empty", b"");
}
