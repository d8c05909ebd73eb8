//! `kok-operator probe`: one plain-HTTP GET, for the chart's `helm test`
//! Pod, which runs the operator image (it has no shell, curl or wget).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}: only http://HOST:PORT/PATH is supported")]
    Url(String),
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{url}: answered {status}, not 200")]
    Status { url: String, status: u16 },
    #[error("{url}: the answer does not contain {missing:?}")]
    Missing { url: String, missing: String },
    #[error("{0}: not an HTTP answer")]
    Malformed(String),
}

/// `(host:port, path)` of an `http://` URL.
fn split(url: &str) -> Result<(&str, &str), ProbeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::Url(url.into()))?;
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if addr.is_empty() || !addr.contains(':') {
        return Err(ProbeError::Url(url.into()));
    }
    Ok((addr, if path.is_empty() { "/" } else { path }))
}

/// GETs `url` (HTTP/1.0: the server closes, so the body ends at EOF) and
/// checks it answered 200 with every text of `expect` in its body.
pub async fn check(url: &str, expect: &[String], timeout: Duration) -> Result<(), ProbeError> {
    let (addr, path) = split(url)?;
    let io = |source| ProbeError::Io {
        url: url.into(),
        source,
    };
    let answer = tokio::time::timeout(timeout, async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(request.as_bytes()).await.map_err(io)?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.map_err(io)?;
        Ok::<_, ProbeError>(String::from_utf8_lossy(&body).into_owned())
    })
    .await
    .map_err(|_| ProbeError::Timeout(url.into(), timeout))??;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| ProbeError::Malformed(url.into()))?;
    if status != 200 {
        return Err(ProbeError::Status {
            url: url.into(),
            status,
        });
    }
    if let Some(missing) = expect.iter().find(|e| !answer.contains(e.as_str())) {
        return Err(ProbeError::Missing {
            url: url.into(),
            missing: missing.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot server answering `reply` to the first request.
    async fn serve(reply: &'static str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(reply.as_bytes()).await.unwrap();
        });
        format!("http://{addr}/metrics")
    }

    #[tokio::test]
    async fn a_200_with_the_expected_text_passes_and_anything_else_fails() {
        let t = Duration::from_secs(5);
        let ok = "HTTP/1.1 200 OK\r\n\r\nkok_leader 1\n";
        check(&serve(ok).await, &["kok_leader".into()], t)
            .await
            .unwrap();
        let missing = check(&serve(ok).await, &["kok_tenant_ready".into()], t).await;
        assert!(
            matches!(missing, Err(ProbeError::Missing { .. })),
            "{missing:?}"
        );
        let down = check(&serve("HTTP/1.1 503 Unavailable\r\n\r\n").await, &[], t).await;
        assert!(
            matches!(down, Err(ProbeError::Status { status: 503, .. })),
            "{down:?}"
        );
        assert!(matches!(
            check("https://a:1/", &[], t).await,
            Err(ProbeError::Url(_))
        ));
        assert_eq!(
            split("http://10.0.0.1:8080").unwrap(),
            ("10.0.0.1:8080", "/")
        );
    }
}
