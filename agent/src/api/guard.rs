//! What every request must pass before a handler sees it: the Host
//! header names this API (against DNS rebinding), the credentials when
//! they are configured, and for writes also credentials at all (without
//! them the API is read-only) and a JSON body (so a browser's simple
//! cross-site POST never qualifies).

use axum::Json;
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{App, error};

pub(super) fn digest(user: &str, password: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(user.as_bytes())
        .chain_update(b":")
        .chain_update(password.as_bytes())
        .finalize()
        .into()
}

fn authorized(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, password)) = text.split_once(':') else {
        return false;
    };
    let got = digest(user, password);
    // Constant time: fold every byte difference.
    got.iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

pub(super) async fn auth(AxumState(app): AxumState<App>, request: Request, next: Next) -> Response {
    if let Some(expected) = &app.auth
        && !authorized(request.headers(), expected)
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"linkmesh\"")],
            Json(json!({ "error": "missing or wrong credentials" })),
        )
            .into_response();
    }
    next.run(request).await
}

/// Whether `host` (a Host header) names this API: an IP address (with or
/// without a port), `localhost`, or one of `names` (`--api-host`). A DNS
/// rebinding page reaches the API under its own domain name, which is none
/// of these.
#[must_use]
pub fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .map_or(host, |(name, _)| name)
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Every request: a Host header that names this API.
pub(super) async fn host(AxumState(app): AxumState<App>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !host_allowed(host, &app.hosts) {
        app.refused();
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host {host:?} is not this API's address (an IP address, localhost, or an \
                 --api-host name)"
            ),
        );
    }
    next.run(request).await
}

/// For a handler that changes something, the refusal unless credentials
/// are configured (without them the API is read-only; the `auth` layer
/// checked the ones given) and the body is declared as JSON.
pub(super) fn refuse_write(app: &App, headers: &HeaderMap) -> Option<Response> {
    if app.auth.is_none() {
        app.refused();
        return Some(error(
            StatusCode::FORBIDDEN,
            "the API is read-only: set --api-user and --api-password-file on the agent to \
             allow changes (or use `linkmesh ip` with the secret)",
        ));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        app.refused();
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "changes need Content-Type: application/json",
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_checked() {
        let expected = digest("admin", "s3cret");
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, &expected), "no header");
        let good = base64::engine::general_purpose::STANDARD.encode("admin:s3cret");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {good}").parse().expect("header"),
        );
        assert!(authorized(&h, &expected));
        for bad in ["admin:wrong", "root:s3cret", "admins3cret"] {
            let enc = base64::engine::general_purpose::STANDARD.encode(bad);
            h.insert(
                header::AUTHORIZATION,
                format!("Basic {enc}").parse().expect("header"),
            );
            assert!(!authorized(&h, &expected), "{bad}");
        }
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().expect("header"));
        assert!(!authorized(&h, &expected), "not base64");
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {good}").parse().expect("header"),
        );
        assert!(!authorized(&h, &expected), "another scheme");
    }

    #[test]
    fn the_host_must_name_this_api() {
        let names = vec!["lb.example".to_owned()];
        for ok in [
            "127.0.0.1:1313",
            "127.0.0.1",
            "198.18.0.1:1313",
            "[::1]:1313",
            "[fd00::1]",
            "localhost:1313",
            "LOCALHOST",
            "lb.example:1313",
        ] {
            assert!(host_allowed(ok, &names), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:1313",
            "127.0.0.1.evil.example",
            "[nope]:1",
        ] {
            assert!(!host_allowed(bad, &names), "{bad}");
        }
    }
}
