//! Waits on workloads, phrased as a user would check them.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{Api, Client};

use crate::{wait_for, Poll};

/// Waits until every desired replica of the Deployment is available.
pub async fn deployment_available(client: &Client, ns: &str, name: &str, timeout: Duration) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("deployment {ns}/{name} available"),
        timeout,
        || async {
            match api.get_opt(name).await {
                Ok(Some(d)) => {
                    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let status = d.status.unwrap_or_default();
                    let available = status.available_replicas.unwrap_or(0);
                    if available >= want && status.observed_generation == d.metadata.generation {
                        Poll::Ready(())
                    } else {
                        Poll::Pending(format!(
                            "{available}/{want} available, conditions {:?}",
                            status
                                .conditions
                                .unwrap_or_default()
                                .iter()
                                .map(|c| format!(
                                    "{}={} ({})",
                                    c.type_,
                                    c.status,
                                    c.message.clone().unwrap_or_default()
                                ))
                                .collect::<Vec<_>>()
                        ))
                    }
                }
                Ok(None) => Poll::Pending("not found".into()),
                Err(e) => Poll::Pending(format!("get failed: {e}")),
            }
        },
    )
    .await
}

/// The ClusterIP of a Service, once allocated.
pub async fn cluster_ip(client: &Client, ns: &str, name: &str) -> String {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("service {ns}/{name} ClusterIP"),
        Duration::from_secs(30),
        || async {
            match api.get_opt(name).await {
                Ok(Some(s)) => match s.spec.and_then(|s| s.cluster_ip) {
                    Some(ip) if ip != "None" && !ip.is_empty() => Poll::Ready(ip),
                    other => Poll::Pending(format!("clusterIP {other:?}")),
                },
                Ok(None) => Poll::Pending("not found".into()),
                Err(e) => Poll::Pending(format!("get failed: {e}")),
            }
        },
    )
    .await
}

/// Waits for a pod to finish and returns its phase (`Succeeded` or `Failed`).
pub async fn pod_finished(client: &Client, ns: &str, name: &str, timeout: Duration) -> String {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("pod {ns}/{name} finished"), timeout, || async {
        match api.get_opt(name).await {
            Ok(Some(p)) => {
                let status = p.status.unwrap_or_default();
                match status.phase.as_deref() {
                    Some(phase @ ("Succeeded" | "Failed")) => Poll::Ready(phase.to_string()),
                    phase => Poll::Pending(format!(
                        "phase {phase:?}, containers {:?}",
                        status
                            .container_statuses
                            .unwrap_or_default()
                            .iter()
                            .map(|c| format!("{}: {:?}", c.name, c.state))
                            .collect::<Vec<_>>()
                    )),
                }
            }
            Ok(None) => Poll::Pending("not found".into()),
            Err(e) => Poll::Pending(format!("get failed: {e}")),
        }
    })
    .await
}

/// The name of the ResourceQuota that keeps stopped members from coming back.
const STOP_QUOTA: &str = "e2e-stop-members";

/// Stops etcd members `indices` of tenant `tc` and keeps them stopped: a pod
/// quota at what will be left makes the StatefulSet unable to recreate them
/// (nothing else in the namespace may start a pod until [`restart_members`]).
pub async fn stop_members(client: &Client, ns: &str, tc: &str, indices: &[i32]) {
    use k8s_openapi::api::core::v1::ResourceQuota;
    use kube::api::{DeleteParams, ListParams, PostParams};
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let running = pods
        .list(&ListParams::default())
        .await
        .expect("listing pods")
        .items
        .len();
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": STOP_QUOTA},
        "spec": {"hard": {"pods": (running - indices.len()).to_string()}},
    }))
    .unwrap();
    Api::<ResourceQuota>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &quota)
        .await
        .expect("creating the quota");
    // The quota is enforced once its usage is computed.
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the pod quota to count",
        Duration::from_secs(30),
        || async {
            match quotas.get(STOP_QUOTA).await.ok().and_then(|q| q.status) {
                Some(s) if s.used.as_ref().is_some_and(|u| u.contains_key("pods")) => {
                    Poll::Ready(())
                }
                s => Poll::Pending(format!("{s:?}")),
            }
        },
    )
    .await;
    for i in indices {
        pods.delete(
            &format!("{tc}-etcd-{i}"),
            &DeleteParams::default().grace_period(0),
        )
        .await
        .expect("deleting a member pod");
    }
    wait_for("the members to stop", Duration::from_secs(60), || async {
        let mut left = Vec::new();
        for i in indices {
            if let Ok(Some(_)) = pods.get_opt(&format!("{tc}-etcd-{i}")).await {
                left.push(*i);
            }
        }
        if left.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("still there: {left:?}"))
        }
    })
    .await;
}

/// Lets members stopped by [`stop_members`] start again.
pub async fn restart_members(client: &Client, ns: &str) {
    use k8s_openapi::api::core::v1::ResourceQuota;
    Api::<ResourceQuota>::namespaced(client.clone(), ns)
        .delete(STOP_QUOTA, &Default::default())
        .await
        .expect("deleting the quota");
}

/// A pod in one line: name, phase, restarts and its first container's state.
pub fn describe_pod(p: &Pod) -> String {
    let c = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first());
    format!(
        "{}: {:?} restarts {:?} state {:?}",
        p.metadata.name.clone().unwrap_or_default(),
        p.status.as_ref().and_then(|s| s.phase.clone()),
        c.map(|c| c.restart_count),
        c.and_then(|c| c.state.clone())
    )
}
