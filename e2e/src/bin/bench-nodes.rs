//! Worker node benchmark (issue 21): prints figures, asserts nothing about speed.
//!
//! One tenant; `KOK_BENCH_RUNS` (default 5) times: a lab node joins with
//! the published command (`hack/tenant-node add`), and a pod pinned to it
//! is created once the Node is Ready. Prints, per run and as medians:
//! - join command -> Node Ready;
//! - join command -> the first pod on the node running.
//!
//! Needs the local cluster with the operator deployed (`hack/bench nodes`).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kok_e2e::nodes::{join_node, nodes_ready, request_join, LabNodes};
use kok_e2e::{client, tenant, wait_for, Poll};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::Api;
use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("KOK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let client = client().await;
    let ns = format!("bench-nodes-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let meta = ObjectMeta {
        name: Some(ns.clone()),
        ..Default::default()
    };
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: meta,
                ..Default::default()
            },
        )
        .await
        .expect("creating the bench namespace");
    let name = "bench";
    let mut tc = tenant::dev_tenant(name, 1);
    tc.spec.addons.kube_proxy.conntrack_max_per_core = Some(0);
    tenant::create(&client, &ns, &tc).await;
    tenant::wait_ready(&client, &ns, name, Duration::from_secs(300)).await;
    let tenant_api = tenant::tenant_client(&client, &ns, name).await;
    let command = request_join(&client, &ns, "bench", name, 3600).await;
    let pods: Api<Pod> = Api::namespaced(tenant_api.clone(), "default");

    let (mut ready, mut running) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let node = format!("bench{}-{run}", std::process::id() % 10000);
        let lab = LabNodes(vec![node.clone()]);
        let start = Instant::now();
        join_node(&node, &command);
        nodes_ready(&tenant_api, &lab.0, Duration::from_secs(120)).await;
        let to_ready = start.elapsed().as_secs_f64();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("first-{run}")},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "image": kok_e2e::image("busybox:1.35"),
                                "imagePullPolicy": "Never", "command": ["sleep", "100000"]}],
            }
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let pod_name = format!("first-{run}");
        wait_for(
            "the first pod running",
            Duration::from_secs(120),
            || async {
                let p = pods.get(&pod_name).await.unwrap();
                match p.status.and_then(|s| s.phase).as_deref() {
                    Some("Running") => Poll::Ready(()),
                    phase => Poll::Pending(format!("{phase:?}")),
                }
            },
        )
        .await;
        let to_pod = start.elapsed().as_secs_f64();
        println!("run {run}: join command -> Node Ready {to_ready:.1} s, -> first pod running {to_pod:.1} s");
        ready.push(to_ready);
        running.push(to_pod);
        let _ = pods
            .delete(&pod_name, &DeleteParams::default().grace_period(0))
            .await;
        drop(lab);
    }
    println!(
        "median of {runs}: join command -> Node Ready {:.1} s; -> first pod running {:.1} s",
        median(ready),
        median(running)
    );
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
}
