//! Health checks: `tcp:` connects, `http://` expects 2xx (`https://` is
//! refused at validation until TLS), `exec:` runs a script of the
//! operator's (see `script`) and expects exit 0.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::script::ScriptPolicy;
use crate::registry::Check;

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("tcp {host}:{port}: {source}")]
    Tcp {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {why}")]
    HttpAnswer { url: String, why: String },
    #[error(transparent)]
    Script(super::script::ScriptError),
}

/// Runs one check within `timeout`; `Err` says why it failed.
pub async fn run(
    check: &Check,
    timeout: Duration,
    scripts: &ScriptPolicy,
) -> Result<Duration, CheckError> {
    let start = Instant::now();
    let result = tokio::time::timeout(timeout, run_inner(check, scripts)).await;
    match result {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(CheckError::Timeout(timeout)),
    }
}

async fn run_inner(check: &Check, scripts: &ScriptPolicy) -> Result<(), CheckError> {
    match check {
        Check::Tcp { host, port } => TcpStream::connect((host.as_str(), *port))
            .await
            .map(drop)
            .map_err(|source| CheckError::Tcp {
                host: host.clone(),
                port: *port,
                source,
            }),
        Check::Http { url } => http_get(url).await,
        Check::Exec { script } => super::script::run(scripts, script)
            .await
            .map_err(CheckError::Script),
    }
}

/// A GET: 2xx is healthy. HTTPS is not supported yet.
async fn http_get(url: &str) -> Result<(), CheckError> {
    let code = super::http1::request("GET", url, "", &[])
        .await
        .map_err(|e| match e {
            super::http1::Http1Error::Io(source) => CheckError::Http {
                url: url.to_owned(),
                source,
            },
            super::http1::Http1Error::Answer(why) => CheckError::HttpAnswer {
                url: url.to_owned(),
                why,
            },
        })?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(CheckError::HttpAnswer {
            url: url.to_owned(),
            why: format!("status {code}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn tcp_checks_connect_and_exec_checks_need_a_check_dir() {
        let none = ScriptPolicy::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let ok = Check::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        assert!(run(&ok, Duration::from_secs(1), &none).await.is_ok());
        drop(listener);
        assert!(
            run(&ok, Duration::from_secs(1), &none).await.is_err(),
            "closed port fails"
        );
        let exec = Check::Exec {
            script: "check".into(),
        };
        let e = run(&exec, Duration::from_secs(1), &none)
            .await
            .expect_err("no --check-dir: nothing runs");
        assert!(e.to_string().contains("no --check-dir"), "{e}");
    }

    #[tokio::test]
    async fn http_check_wants_2xx() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let check = Check::Http {
            url: format!("http://127.0.0.1:{port}/health"),
        };
        let none = ScriptPolicy::default();
        assert!(run(&check, Duration::from_secs(1), &none).await.is_ok());
        assert!(run(&check, Duration::from_secs(1), &none).await.is_err());
        server.await.expect("server");
    }
}
