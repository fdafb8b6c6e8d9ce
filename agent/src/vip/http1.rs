//! A minimal HTTP/1.0 client for the two places the agent makes a request
//! of the operator's: `http://` health checks (GET) and notify hooks
//! (POST). One request per connection, no TLS, only the status code read
//! back. The caller bounds the time.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request got no status code.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Answer(String),
}

/// Sends `METHOD PATH` to `url` (`http://HOST[:PORT][/PATH]`) with the
/// extra header lines `headers` (each ending in `\r\n`) and `body`;
/// returns the response's status code.
pub async fn request(
    method: &str,
    url: &str,
    headers: &str,
    body: &[u8],
) -> Result<u16, Http1Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Http1Error::Answer("only http:// URLs are supported so far".into()))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut stream = TcpStream::connect(&addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: linkmesh\r\n{headers}\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut answer = vec![0u8; 64];
    let n = stream.read(&mut answer).await?;
    String::from_utf8_lossy(&answer[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| Http1Error::Answer("not an HTTP response".into()))
}
