//! DNS names as linkmesh writes them into hosts files: dotted labels of
//! ASCII lower-case letters, digits and hyphens (RFC 1123). Names are kept
//! in lower case, so one name has one spelling in etcd and in the file.

use super::invalid::Invalid;

/// The longest label.
pub const MAX_LABEL: usize = 63;
/// The longest name, in its dotted text form.
pub const MAX_NAME: usize = 253;

/// Whether `label` is one DNS label: 1 to 63 of `a-z`, `0-9` and `-`,
/// neither starting nor ending with `-`. `A-Z` pass when `upper` is true.
#[must_use]
pub fn is_label(label: &str, upper: bool) -> bool {
    let ok = |b: u8| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || b == b'-'
            || (upper && b.is_ascii_uppercase())
    };
    (1..=MAX_LABEL).contains(&label.len())
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.bytes().all(ok)
}

/// Why `name` is not a DNS name of lower-case labels, or `None` if it is.
#[must_use]
pub fn dns_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Some("must be 1 to 253 bytes");
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some("must be lower case");
    }
    if !name.split('.').all(|l| is_label(l, false)) {
        return Some(
            "must be dot-separated labels of 1 to 63 letters, digits or '-', \
             not starting or ending with '-'",
        );
    }
    None
}

/// Checks a DNS name (a VIP's `name`, the agent's `--dns-domain`).
///
/// # Errors
/// [`Invalid::DnsName`], naming the name and the rule it breaks.
pub fn validate_dns_name(name: &str) -> Result<(), Invalid> {
    match dns_name_problem(name) {
        None => Ok(()),
        Some(why) => Err(Invalid::DnsName {
            name: name.to_owned(),
            why,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_names() {
        for good in ["a", "h1", "web-1", "x".repeat(63).as_str()] {
            assert!(is_label(good, false), "{good}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", "é", &"x".repeat(64), "A"] {
            assert!(!is_label(bad, false), "{bad}");
        }
        assert!(is_label("Web1", true));
        for good in ["linkmesh", "web.prod.example", "a-1.b2", "1.2.3"] {
            assert_eq!(validate_dns_name(good), Ok(()), "{good}");
        }
        let long = ["a".repeat(63).as_str(); 4].join(".");
        assert_eq!(long.len(), 255);
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "Web",
            "a_b.c",
            "-a.b",
            "a b",
            "a\n",
            long.as_str(),
        ] {
            assert!(validate_dns_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_dns_name(&long[2..]).is_ok(), "253 bytes");
    }
}
