//! The hosts file's text, from the verified registry: pure, so what is
//! written and what is left out are decided (and tested) without a file.
//!
//! Lines, after a header comment: `<underlay address> <host>.<domain>`
//! for every host, by host name, then `<address> <name>` for every
//! floating IP with a name, by name and address. Names are lower case
//! (DNS is case-insensitive; dnsmasq answers any spelling).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::registry::dnsname::{MAX_NAME, dns_name_problem, is_label};
use crate::registry::{HostRecord, ValidVip};

/// The header every file starts with.
pub const HEADER: &str = "# Written by linkmesh (--hosts-dir): every verified host as \
<host>.<domain>, every named floating IP.\n# Rewritten whenever the registry changes: \
edits here are lost.\n";

/// A registry entry whose name is not written, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeftOut {
    /// What it is: `host NAME` or `vip ID`.
    pub what: String,
    pub why: &'static str,
}

/// A file's text and what it leaves out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Names written (lines after the header).
    pub names: usize,
    /// By `what`.
    pub left_out: Vec<LeftOut>,
}

/// The hosts' names under `domain` (a valid DNS name), lower case, each
/// with its address; and the hosts left out.
fn host_names(
    hosts: &BTreeMap<String, HostRecord>,
    domain: &str,
    left_out: &mut Vec<LeftOut>,
) -> BTreeMap<String, IpAddr> {
    let mut names: BTreeMap<String, Vec<(&str, IpAddr)>> = BTreeMap::new();
    for (host, record) in hosts {
        let why = if !is_label(host, true) {
            Some(
                "the host name is not one DNS label (1 to 63 letters, digits or '-', not starting or ending with '-')",
            )
        } else if host.len() + 1 + domain.len() > MAX_NAME {
            Some("the host name with the domain is over 253 bytes")
        } else {
            None
        };
        if let Some(why) = why {
            left_out.push(LeftOut {
                what: format!("host {host}"),
                why,
            });
            continue;
        }
        let name = format!("{}.{domain}", host.to_ascii_lowercase());
        names
            .entry(name)
            .or_default()
            .push((host.as_str(), record.address));
    }
    let mut out = BTreeMap::new();
    for (name, claims) in names {
        if let [(_, address)] = claims[..] {
            out.insert(name, address);
        } else {
            left_out.extend(claims.iter().map(|(host, _)| LeftOut {
                what: format!("host {host}"),
                why: "another host's name differs only in case",
            }));
        }
    }
    out
}

/// The file for `hosts` and `vips` (verified records) under `domain`.
#[must_use]
pub fn render(
    hosts: &BTreeMap<String, HostRecord>,
    vips: &BTreeMap<String, ValidVip>,
    domain: &str,
) -> Rendered {
    let mut left_out = Vec::new();
    let hosts = host_names(hosts, domain, &mut left_out);
    let mut named: BTreeSet<(String, IpAddr)> = BTreeSet::new();
    for (id, vip) in vips {
        let Some(name) = &vip.record.name else {
            continue;
        };
        // Validated with the record; checked again so that nothing but a
        // DNS name can ever reach the file.
        let why = if dns_name_problem(name).is_some() {
            Some("the name is not a lower-case DNS name")
        } else if hosts.contains_key(name) {
            Some("the name is a host's name")
        } else {
            None
        };
        match why {
            Some(why) => left_out.push(LeftOut {
                what: format!("vip {id}"),
                why,
            }),
            None => {
                named.insert((name.clone(), vip.cidr.addr));
            }
        }
    }
    let mut text = String::with_capacity(HEADER.len() + 40 * (hosts.len() + named.len()));
    text.push_str(HEADER);
    let lines = hosts.iter().chain(named.iter().map(|(n, a)| (n, a)));
    for (name, address) in lines {
        // Writing into a String cannot fail.
        let _ = writeln!(text, "{address} {name}");
    }
    left_out.sort();
    Rendered {
        text,
        names: hosts.len() + named.len(),
        left_out,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::registry::VipRecord;

    fn host(name: &str, last: u8) -> (String, HostRecord) {
        (
            name.to_owned(),
            HostRecord {
                hostname: name.to_owned(),
                address: IpAddr::from([198, 18, 0, last]),
                segments: BTreeMap::new(),
                agent_version: "t".into(),
                heartbeat_nonce: None,
                overlay: crate::registry::host::Overlay::default(),
            },
        )
    }

    fn vip(cidr: &str, name: Option<&str>) -> (String, ValidVip) {
        let record = VipRecord {
            name: name.map(str::to_owned),
            ..VipRecord::new(cidr)
        };
        let valid = record.validate().expect("valid");
        (valid.cidr.id(), valid)
    }

    #[test]
    fn hosts_then_named_vips_in_order_after_the_header() {
        let hosts = [host("h2", 2), host("h1", 1), host("Web-3", 3)].into();
        let vips = [
            vip("198.18.0.100/24", Some("web.prod")),
            vip("198.18.0.101/32", None),
            vip("2001:db8::1/128", Some("api")),
            vip("198.18.0.102/32", Some("api")),
        ]
        .into();
        let r = render(&hosts, &vips, "linkmesh");
        let expected = format!(
            "{HEADER}198.18.0.1 h1.linkmesh\n198.18.0.2 h2.linkmesh\n198.18.0.3 web-3.linkmesh\n\
             198.18.0.102 api\n2001:db8::1 api\n198.18.0.100 web.prod\n"
        );
        assert_eq!(r.text, expected);
        assert_eq!(r.names, 6);
        assert!(r.left_out.is_empty());
        assert_eq!(render(&BTreeMap::new(), &BTreeMap::new(), "x").text, HEADER);
    }

    #[test]
    fn names_that_are_not_one_label_are_left_out_and_named() {
        let long = "a".repeat(64);
        let hosts = [
            host("bad_name", 1),
            host("dotted.host", 2),
            host("-dash", 3),
            host(&long, 4),
            host("ok", 5),
            host("Twin", 6),
            host("twin", 7),
        ]
        .into();
        let vips = [vip("198.18.0.100/32", Some("ok.mesh"))].into();
        let r = render(&hosts, &vips, "mesh");
        assert_eq!(r.text, format!("{HEADER}198.18.0.5 ok.mesh\n"));
        let what: Vec<&str> = r.left_out.iter().map(|l| l.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "host -dash",
                "host Twin",
                format!("host {long}").as_str(),
                "host bad_name",
                "host dotted.host",
                "host twin",
                "vip 198.18.0.100_32",
            ]
        );
        assert!(!r.text.contains("bad_name") && !r.text.contains("twin"));
    }

    #[test]
    fn a_name_too_long_with_the_domain_is_left_out() {
        let label = "a".repeat(63);
        let domain = [label.as_str(); 3].join(".");
        let hosts = [host(&label, 1)].into();
        let r = render(&hosts, &BTreeMap::new(), &domain);
        assert_eq!(r.names, 0);
        assert_eq!(r.left_out.len(), 1);
        assert!(
            render(&hosts, &BTreeMap::new(), &domain[4..])
                .left_out
                .is_empty()
        );
    }

    fn host_name() -> impl Strategy<Value = String> {
        // linkmesh's host-name alphabet, DNS labels among them.
        "[a-zA-Z0-9_.-]{1,70}"
    }

    proptest! {
        #[test]
        fn every_line_is_an_address_and_a_valid_name(
            names in proptest::collection::btree_set(host_name(), 0..20),
            vip_names in proptest::collection::vec(proptest::option::of("[a-z0-9-]{1,10}(\\.[a-z0-9]{1,5})?"), 0..6),
        ) {
            let hosts: BTreeMap<_, _> = names.iter().zip(1u8..).map(|(n, i)| host(n, i)).collect();
            let vips: BTreeMap<_, _> = vip_names
                .iter()
                .zip(1u8..)
                .filter_map(|(n, i)| {
                    let record = VipRecord {
                        name: n.clone(),
                        ..VipRecord::new(format!("198.19.0.{i}/32"))
                    };
                    let valid = record.validate().ok()?;
                    Some((valid.cidr.id(), valid))
                })
                .collect();
            let r = render(&hosts, &vips, "linkmesh");
            prop_assert!(r.text.starts_with(HEADER));
            let lines: Vec<&str> = r.text[HEADER.len()..].lines().collect();
            prop_assert_eq!(lines.len(), r.names);
            for line in &lines {
                let (address, name) = line.split_once(' ').expect("two fields");
                prop_assert!(address.parse::<IpAddr>().is_ok(), "{}", line);
                prop_assert_eq!(dns_name_problem(name), None, "{}", line);
            }
            // Every host is written or left out, never both.
            let written_hosts = lines.iter().filter(|l| l.ends_with(".linkmesh")).count();
            let left_hosts = r.left_out.iter().filter(|l| l.what.starts_with("host ")).count();
            prop_assert_eq!(written_hosts + left_hosts, hosts.len());
            prop_assert_eq!(render(&hosts, &vips, "linkmesh"), r);
        }
    }
}
