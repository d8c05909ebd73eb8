//! Helpers for TenantCluster tests: create one, wait on its conditions, and
//! talk to the tenant API with the kubeconfig kok wrote.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kok_crds::{TenantCluster, TenantClusterStatus};
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use crate::{image, wait_for, Poll};

/// A development tenant on the local images: `etcd` members, ephemeral storage.
pub fn dev_tenant(name: &str, etcd_members: i32) -> TenantCluster {
    let prefix = crate::image_prefix();
    let etcd_tag = image("etcd:3.4.23")
        .rsplit(':')
        .next()
        .unwrap_or("3.4.23")
        .to_string();
    serde_json::from_value(json!({
        "apiVersion": "kok.dev/v1alpha1",
        "kind": "TenantCluster",
        "metadata": {"name": name},
        "spec": {
            "version": "v1.20.2",
            "imageRepository": prefix,
            "etcd": {"replicas": etcd_members, "version": etcd_tag, "storage": {"ephemeral": true}},
        }
    }))
    .expect("valid TenantCluster")
}

pub async fn create(client: &Client, ns: &str, tc: &TenantCluster) -> TenantCluster {
    Api::<TenantCluster>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), tc)
        .await
        .unwrap_or_else(|e| panic!("creating TenantCluster in {ns}: {e}"))
}

/// Merge-patches the spec, as a user editing the object would.
pub async fn patch_spec(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    Api::<TenantCluster>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap_or_else(|e| panic!("patching TenantCluster {ns}/{name}: {e}"));
}

fn describe_conditions(tc: &TenantCluster) -> String {
    tc.status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_else(|| "no status yet".into())
}

pub fn condition<'a>(
    tc: &'a TenantCluster,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    tc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Waits until condition `type_` has `status` for the current generation.
pub async fn wait_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> TenantCluster {
    let api: Api<TenantCluster> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("TenantCluster {ns}/{name} {type_}={status}"),
        timeout,
        || async {
            match api.get_opt(name).await {
                Ok(Some(tc)) => {
                    let current = tc.status.as_ref().and_then(|s| s.observed_generation)
                        == tc.metadata.generation;
                    match condition(&tc, type_) {
                        Some(c) if c.status == status && current => Poll::Ready(tc),
                        _ => Poll::Pending(describe_conditions(&tc)),
                    }
                }
                Ok(None) => Poll::Pending("not found".into()),
                Err(e) => Poll::Pending(format!("get failed: {e}")),
            }
        },
    )
    .await
}

pub async fn wait_ready(client: &Client, ns: &str, name: &str, timeout: Duration) -> TenantCluster {
    wait_condition(client, ns, name, "Ready", "True", timeout).await
}

/// A client for the tenant cluster from the `<name>-kubeconfig` Secret (key `value`).
pub async fn tenant_client(client: &Client, ns: &str, name: &str) -> Client {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&format!("{name}-kubeconfig"))
        .await
        .unwrap_or_else(|e| panic!("reading {ns}/{name}-kubeconfig: {e}"));
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get("value"))
        .unwrap_or_else(|| panic!("{ns}/{name}-kubeconfig has no key `value`"));
    let yaml = String::from_utf8(bytes.0.clone()).expect("kubeconfig is UTF-8");
    let kubeconfig = Kubeconfig::from_yaml(&yaml).expect("kubeconfig parses");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    config.connect_timeout = Some(Duration::from_secs(5));
    // Generous: on 2 cores with five tests at once a create can take seconds.
    config.read_timeout = Some(Duration::from_secs(30));
    Client::try_from(config).expect("tenant client")
}

/// Like [`tenant_client`], but `None` while the kubeconfig Secret does not exist yet.
pub async fn try_tenant_client(client: &Client, ns: &str, name: &str) -> Option<Client> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&format!("{name}-kubeconfig"))
        .await
        .ok()??;
    let bytes = secret.data?.remove("value")?;
    let kubeconfig = Kubeconfig::from_yaml(std::str::from_utf8(&bytes.0).ok()?).ok()?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .ok()?;
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(5));
    Client::try_from(config).ok()
}

/// Reads a key of a Secret as text.
pub async fn secret_text(client: &Client, ns: &str, secret: &str, key: &str) -> String {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get(secret)
        .await
        .unwrap_or_else(|e| panic!("reading Secret {ns}/{secret}: {e}"));
    let bytes = s
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("Secret {ns}/{secret} has no key {key}"));
    String::from_utf8(bytes.0.clone()).expect("UTF-8 secret data")
}

/// Asks for an inspection now and waits until its findings are in status.
pub async fn inspect(client: &Client, ns: &str, name: &str, trigger: &str) -> TenantClusterStatus {
    let api: Api<TenantCluster> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"kok.dev/inspect": trigger}}})),
    )
    .await
    .unwrap();
    wait_for(
        &format!("inspection {trigger} of {ns}/{name}"),
        Duration::from_secs(90),
        || async {
            let tc = api.get(name).await.unwrap();
            let status = tc.status.unwrap_or_default();
            match &status.inspection {
                Some(i) if i.trigger.as_deref() == Some(trigger) => Poll::Ready(status),
                other => Poll::Pending(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Waits (up to 400 s) until EtcdRestore `name` is Completed or Failed, and
/// returns its status.
pub async fn restore_finished(
    restores: &kube::Api<kok_crds::EtcdRestore>,
    name: &str,
) -> kok_crds::EtcdRestoreStatus {
    use kok_crds::RestorePhase;
    crate::wait_for(
        &format!("restore {name} to finish"),
        std::time::Duration::from_secs(400),
        || {
            let restores = restores.clone();
            async move {
                match restores.get(name).await.ok().and_then(|r| r.status) {
                    Some(s)
                        if matches!(
                            s.phase,
                            Some(RestorePhase::Completed) | Some(RestorePhase::Failed)
                        ) =>
                    {
                        crate::Poll::Ready(s)
                    }
                    s => crate::Poll::Pending(format!("{s:?}")),
                }
            }
        },
    )
    .await
}
