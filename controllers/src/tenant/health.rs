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
    Client::try_from(config).map_err(|e| format!("tenant client: {e}"))
}
