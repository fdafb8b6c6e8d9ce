//! `GET /ips` in pages: `?limit=N` (1 to 1,000, the default) and
//! `?after=KEY` (where the previous page ended). A page that is not the
//! last says where the next starts in a `Link: </ips?after=KEY&limit=N>;
//! rel="next"` header (RFC 8288), so a client that reads only the body
//! still gets the first page of the same JSON array as before. A page may
//! hold fewer VIPs than asked for (keys without a record under the prefix
//! count against what one request reads): follow `Link` to the end.

use crate::etcd::admin::MAX_PAGE;

/// What a `GET /ips` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    pub after: Option<String>,
    pub limit: usize,
}

/// Whether `id` is a floating IP id: an address and prefix length, with
/// `_` for `/`, in its canonical form.
#[must_use]
pub fn valid_id(id: &str) -> bool {
    id.replace('_', "/")
        .parse::<crate::registry::Cidr>()
        .is_ok_and(|c| c.id() == id)
}

impl ListQuery {
    /// Parses the query string (`None`: no query).
    ///
    /// # Errors
    /// An unknown parameter, a limit outside 1 to [`MAX_PAGE`], or an
    /// `after` that is not a floating IP id, in words for the client.
    pub fn parse(raw: Option<&str>) -> Result<Self, String> {
        let mut q = Self {
            after: None,
            limit: MAX_PAGE,
        };
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)
                .ok_or_else(|| format!("{name}: not a valid percent-encoded value"))?;
            match name {
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| format!("limit must be 1 to {MAX_PAGE}, not {value:?}"))?;
                }
                // Any name a key under `vips/` can have (junk ones
                // included, where a page may end): it only says where the
                // read starts, never which key is read.
                "after" if !value.is_empty() && value.len() <= 512 && !value.contains('/') => {
                    q.after = Some(value);
                }
                "after" => {
                    return Err(format!(
                        "after must be where a page ended (a key name under vips/, as the Link header gives it), not {value:?}"
                    ));
                }
                other => return Err(format!("unknown query parameter {other:?} (limit, after)")),
            }
        }
        Ok(q)
    }
}

/// The `Link` header value naming the page after `next`.
#[must_use]
pub fn next_link(next: &str, limit: usize) -> String {
    use std::fmt::Write as _;
    let mut encoded = String::with_capacity(next.len());
    for b in next.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':') {
            encoded.push(char::from(b));
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
    }
    format!("</ips?after={encoded}&limit={limit}>; rel=\"next\"")
}

/// `%XX`-decodes `s` (and `+` as a space); `None` if malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_say_why() {
        assert_eq!(
            ListQuery::parse(None),
            Ok(ListQuery {
                after: None,
                limit: MAX_PAGE
            })
        );
        assert_eq!(
            ListQuery::parse(Some("limit=10&after=fd00%3A%3A1_64")),
            Ok(ListQuery {
                after: Some("fd00::1_64".into()),
                limit: 10
            })
        );
        assert_eq!(
            ListQuery::parse(Some("after=198.18.0.100_24")).map(|q| q.after),
            Ok(Some("198.18.0.100_24".into()))
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=ten",
            "after=198.18.0.100%2F24%2Fowner",
            "after=198.18.0.100_24%2Fowner",
            "after=",
            "after=/",
            "after=%zz",
            "after=%C3",
            "offset=3",
        ] {
            assert!(ListQuery::parse(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            next_link("198.18.0.100_24", 10),
            "</ips?after=198.18.0.100_24&limit=10>; rel=\"next\""
        );
        // Where a page ended on junk, the name goes there and back.
        let link = next_link("junk <\u{e9}>&x", 5);
        assert_eq!(
            link,
            "</ips?after=junk%20%3C%C3%A9%3E%26x&limit=5>; rel=\"next\""
        );
        let query = link
            .trim_start_matches("</ips?")
            .split('>')
            .next()
            .expect("query");
        assert_eq!(
            ListQuery::parse(Some(query)),
            Ok(ListQuery {
                after: Some("junk <\u{e9}>&x".into()),
                limit: 5
            })
        );
    }
}
