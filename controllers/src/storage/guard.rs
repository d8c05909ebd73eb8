//! The HTTP client of S3 destinations. A tenant chooses the endpoint, so the
//! operator's client must not become a way into the management network:
//! - redirects are not followed (a public endpoint cannot bounce a signed
//!   request to an internal address);
//! - every address a name resolves to is checked against the operator's
//!   allowlist of private endpoints at connect time, not only when the spec is
//!   validated (a public name may point at 127.0.0.1, or change to it);
//! - error responses are summarized (`response_summary`): the server's body
//!   never reaches a status field another reader sees.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kok_templates::backup::PrivateEndpoints;
use object_store::client::{HttpClient, HttpConnector};
use object_store::ClientOptions;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

#[derive(Debug, Clone)]
pub struct GuardedConnector {
    pub allowed: Arc<PrivateEndpoints>,
    pub allow_http: bool,
}

impl HttpConnector for GuardedConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver {
                allowed: self.allowed.clone(),
            }))
            // object_store's connect timeout. Its 30 s request timeout counts
            // until the body ends, which a large snapshot's download outlasts:
            // a stalled read is what is cut instead.
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(30))
            .https_only(!self.allow_http)
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(client))
    }
}

/// The client of a restore Job fetching an artifact the operator serves
/// (`super::serve`): the Job's token on every request, no redirects, plain
/// http inside the cluster (the artifact's sha256 is checked on arrival, and
/// a sealed artifact travels sealed).
#[derive(Clone)]
pub struct ServedConnector {
    pub token: String,
}

impl std::fmt::Debug for ServedConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedConnector").finish_non_exhaustive()
    }
}

impl HttpConnector for ServedConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let generic = |e: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
            store: "operator",
            source: e,
        };
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.token))
            .map_err(|e| generic(Box::new(e)))?;
        auth.set_sensitive(true);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(
                [(reqwest::header::AUTHORIZATION, auth)]
                    .into_iter()
                    .collect(),
            )
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| generic(Box::new(e)))?;
        Ok(HttpClient::new(client))
    }
}

struct GuardedResolver {
    allowed: Arc<PrivateEndpoints>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs
                .into_iter()
                .partition(|a| allowed.may_connect(&host, a.ip()));
            if ok.is_empty() {
                let shown: Vec<String> = refused.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "{host} resolves to {} only: a private address the operator does not allow \
                     (KOK_S3_PRIVATE_ENDPOINTS)",
                    shown.join(", ")
                )
                .into());
            }
            Ok(Box::new(ok.into_iter()) as Addrs)
        })
    }
}

/// An object_store error as shown in status: object_store appends the
/// server's response body to a non-2xx status ("...status code: 403
/// Forbidden: <body>"); the body is the server's words (an attacker's, for a
/// hostile endpoint), so it is cut.
pub fn response_summary(message: &str) -> String {
    const MARK: &str = "status code: ";
    let Some(at) = message.find(MARK) else {
        return message.to_string();
    };
    let after = &message[at + MARK.len()..];
    // "403 Forbidden: <body>" -> "403 Forbidden".
    let status = after.split(": ").next().unwrap_or(after);
    format!("{}{MARK}{status}", &message[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_body_never_reaches_status() {
        let msg = "Generic S3 error: Error performing PUT http://10.0.0.1/b/k in 20ms - \
                   Server returned non-2xx status code: 403 Forbidden: <Error><Secret>x</Secret></Error>";
        assert_eq!(
            response_summary(msg),
            "Generic S3 error: Error performing PUT http://10.0.0.1/b/k in 20ms - \
             Server returned non-2xx status code: 403 Forbidden"
        );
        assert_eq!(response_summary("connection refused"), "connection refused");
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let resolver = GuardedResolver {
            allowed: Arc::new(PrivateEndpoints::default()),
        };
        let err = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved through the guard"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("KOK_S3_PRIVATE_ENDPOINTS"), "{err}");
        let allowing = GuardedResolver {
            allowed: Arc::new(PrivateEndpoints::parse("127.0.0.0/8,::1").unwrap()),
        };
        let addrs: Vec<SocketAddr> = match allowing.resolve("localhost".parse().unwrap()).await {
            Ok(a) => a.collect(),
            Err(e) => panic!("{e}"),
        };
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
