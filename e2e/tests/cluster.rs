//! The management cluster itself works: the node is Ready, a local image runs
//! behind a Service reachable from this process, and pods reach each other
//! through a ClusterIP Service.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kok_e2e::{http, image, wait_for, with_namespace, workloads, Poll};
use kube::api::{ListParams, LogParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

#[tokio::test]
async fn node_is_ready() {
    let client = kok_e2e::client().await;
    let nodes: Api<Node> = Api::all(client);
    wait_for("a Ready node", Duration::from_secs(60), || async {
        match nodes.list(&ListParams::default()).await {
            Ok(list) => {
                let ready: Vec<String> = list
                    .items
                    .iter()
                    .filter(|n| {
                        n.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .filter_map(|n| n.metadata.name.clone())
                    .collect();
                if ready.is_empty() {
                    Poll::Pending(format!("{} nodes, none Ready", list.items.len()))
                } else {
                    Poll::Ready(ready)
                }
            }
            Err(e) => Poll::Pending(format!("list nodes: {e}")),
        }
    })
    .await;
}

async fn create_deployment_and_service(
    client: &Client,
    ns: &str,
    name: &str,
    container: serde_json::Value,
    port: i32,
) {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container]}
            }
        }
    }))
    .expect("valid deployment");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": port}]}
    }))
    .expect("valid service");
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &service)
        .await
        .expect("create service");
}

#[tokio::test]
async fn local_etcd_image_answers_health_through_cluster_ip() {
    with_namespace("etcd-svc", |client, ns| async move {
        let container = json!({
            "name": "etcd",
            "image": image("etcd:3.4.23"),
            "imagePullPolicy": "IfNotPresent",
            "command": ["etcd", "--data-dir=/var/lib/etcd",
                        "--listen-client-urls=http://0.0.0.0:2379",
                        "--advertise-client-urls=http://127.0.0.1:2379"],
            "ports": [{"containerPort": 2379}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": 2379}, "periodSeconds": 2}
        });
        create_deployment_and_service(&client, &ns, "etcd", container, 2379).await;
        workloads::deployment_available(&client, &ns, "etcd", Duration::from_secs(120)).await;
        let ip = workloads::cluster_ip(&client, &ns, "etcd").await;

        let addr = format!("{ip}:2379");
        let body = wait_for(
            "etcd /health through the ClusterIP",
            Duration::from_secs(30),
            || async {
                match http::get(&addr, "/health").await {
                    Ok((200, body)) => Poll::Ready(body),
                    Ok((code, body)) => Poll::Pending(format!("HTTP {code}: {body}")),
                    Err(e) => Poll::Pending(e),
                }
            },
        )
        .await;
        let health: serde_json::Value = serde_json::from_str(&body).expect("/health returns JSON");
        assert_eq!(health["health"], "true", "etcd reports unhealthy: {body}");
    })
    .await;
}

#[tokio::test]
async fn pod_reaches_another_pod_through_cluster_ip() {
    with_namespace("pod-to-svc", |client, ns| async move {
        let marker = format!("served-by-{ns}");
        let server = json!({
            "name": "httpd",
            "image": image("busybox:1.35"),
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", format!("mkdir -p /www && echo {marker} > /www/index.html && exec httpd -f -p 8080 -h /www")],
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
        });
        create_deployment_and_service(&client, &ns, "web", server, 8080).await;
        workloads::deployment_available(&client, &ns, "web", Duration::from_secs(120)).await;
        let ip = workloads::cluster_ip(&client, &ns, "web").await;

        // No cluster DNS on the local cluster: the client uses the ClusterIP.
        let probe: Pod = serde_json::from_value(json!({
            "metadata": {"name": "client"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "client",
                    "image": image("busybox:1.35"),
                    "imagePullPolicy": "IfNotPresent",
                    // busybox's static wget crashes in glibc's NSS lookups; nc does not.
                    // The body is the last line of the HTTP/1.0 response. nc's own
                    // complaints (a slow close: "nc: timed out") are not the body.
                    "command": ["sh", "-c", format!(
                        r#"for i in $(seq 10); do
                             out=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 {ip} 8080 2>/dev/null)
                             [ -n "$out" ] && {{ printf '%s\n' "$out" | tail -n 1; exit 0; }}
                             sleep 1
                           done; exit 1"#)]
                }]
            }
        }))
        .expect("valid pod");
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods.create(&PostParams::default(), &probe).await.expect("create client pod");
        let phase = workloads::pod_finished(&client, &ns, "client", Duration::from_secs(90)).await;
        let logs = pods.logs("client", &LogParams::default()).await.expect("client logs");
        assert_eq!(phase, "Succeeded", "client pod failed; logs: {logs}");
        assert_eq!(logs.trim(), marker, "client got an unexpected body");
    })
    .await;
}
