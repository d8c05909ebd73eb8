//! A minimal HTTP/1.0 GET over plain TCP: enough to probe `/health` endpoints
//! from the test process without pulling in an HTTP client stack.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status code and body of `GET http://{addr}{path}`.
pub async fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let (status, body) = get_with(addr, path, &[]).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The status code and raw body of `GET http://{addr}{path}`, sent with
/// `headers`.
pub async fn get_with(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Vec<u8>), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write to {addr}: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        parse_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|_| format!("GET {addr}{path}: no answer within 5s"))?
}

fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "malformed HTTP response: {:?}",
                String::from_utf8_lossy(raw)
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..at]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status code in {head:?}"))?;
    Ok((status, raw[at + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn parses_status_and_body() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!(r, (200, b"ok".to_vec()));
    }

    #[test]
    fn rejects_a_response_without_headers_end() {
        assert!(parse_response(b"HTTP/1.1 200 OK").is_err());
    }
}
