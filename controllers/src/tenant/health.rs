//! Health of a tenant control plane as its users see it: the tenant API answers.

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Asks the tenant apiserver's `/readyz`, authenticating with the admin kubeconfig.
/// The error says what failed, for the APIServerReady condition.
pub async fn readyz(kubeconfig_yaml: &str) -> Result<(), String> {
    let client = tenant_client(kubeconfig_yaml, Duration::from_secs(5)).await?;
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(8), client.request_text(request)).await {
        Ok(Ok(body)) if body.trim() == "ok" => Ok(()),
        Ok(Ok(body)) => Err(format!("tenant /readyz: {}", body.trim())),
        Ok(Err(e)) => Err(format!("tenant /readyz: {e}")),
        Err(_) => Err("tenant /readyz: no answer within 8s".into()),
    }
}

/// A client of the tenant API with the admin kubeconfig.
pub async fn tenant_client(
    kubeconfig_yaml: &str,
    read_timeout: Duration,
) -> Result<Client, String> {
    let kubeconfig =
        Kubeconfig::from_yaml(kubeconfig_yaml).map_err(|e| format!("admin kubeconfig: {e}"))?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("admin kubeconfig: {e}"))?;
    config.connect_timeout = Some(Duration::from_secs(3));
    config.read_timeout = Some(read_timeout);
    let builder =
        kube::client::ClientBuilder::try_from(config).map_err(|e| format!("tenant client: {e}"))?;
    Ok(builder
        .with_layer(&tower::util::MapResponseLayer::new(bounded))
        .build())
}

/// The most one answer of a tenant apiserver may hold. A tenant controls its
/// apiserver's image and its own objects: unbounded, it could make the
/// shared operator read gigabytes and crash it for every tenant. 64 MiB
/// holds a page of 500 ordinary objects, 50 CRDs or custom objects, 250
/// objects' metadata with large annotations (a migration's check), or
/// [`SECRET_PAGE`] Secrets of the API's largest (1 MiB of data, 1.4 MiB as
/// JSON); a larger answer fails that one read.
pub const RESPONSE_LIMIT: usize = 64 << 20;

/// Secrets per list page from a tenant: a Secret may hold 1 MiB of data.
pub const SECRET_PAGE: u32 = 16;

fn bounded<B>(response: http::Response<B>) -> http::Response<http_body_util::Limited<B>> {
    response.map(|body| http_body_util::Limited::new(body, RESPONSE_LIMIT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn a_tenant_answer_past_the_limit_fails_instead_of_filling_memory() {
        let at_limit =
            http::Response::new(Full::new(bytes::Bytes::from(vec![b'x'; RESPONSE_LIMIT])));
        let body = bounded(at_limit)
            .into_body()
            .collect()
            .await
            .expect("at the limit");
        assert_eq!(body.to_bytes().len(), RESPONSE_LIMIT);
        let over = http::Response::new(Full::new(bytes::Bytes::from(vec![
            b'x';
            RESPONSE_LIMIT + 1
        ])));
        assert!(bounded(over).into_body().collect().await.is_err());
    }
}
