//! Provisioning benchmark (issue 3): prints figures, asserts nothing about speed.
//!
//! - time from `kubectl apply` of a TenantCluster to the tenant's `/readyz`
//!   answering `ok`, for 1 and 3 etcd members (median of `KOK_BENCH_RUNS`, default 3);
//! - the leading operator's RSS and CPU at rest with 1 and with 10 tenants.
//!
//! Needs the local cluster with the operator deployed (`hack/bench provision`).

use std::time::{Duration, Instant};

use kok_crds::TenantCluster;
use kok_e2e::bench::{num_cpus, sample_leader};
use kok_e2e::{client, tenant};
use kube::api::DeleteParams;
use kube::{Api, Client};

const READY_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("KOK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let client = client().await;
    let ns = format!("bench-provision-{}", std::process::id());
    let namespaces = kok_e2e::bench::make_namespace(&client, &ns).await;

    println!("# kok provisioning benchmark ({runs} runs per size)");
    println!("machine: {} cores", num_cpus());
    // KOK_BENCH_RUNS=0 measures only the operator at rest.
    for members in [1, 3].into_iter().filter(|_| runs > 0) {
        let mut times = Vec::new();
        for run in 0..runs {
            let name = format!("p{members}-{run}");
            let timeline = apply_to_readyz(&client, &ns, &name, members).await;
            let t = timeline.readyz;
            println!("  {members} member(s), run {run}: {:.1}s", t.as_secs_f64());
            for (what, at) in &timeline.milestones {
                println!("    {:>5.1}s  {what}", at.as_secs_f64());
            }
            times.push(t);
            delete_and_wait(&client, &ns, &name).await;
        }
        times.sort();
        println!(
            "apply -> tenant /readyz ok, {members} etcd member(s): median {:.1}s (min {:.1}s, max {:.1}s)",
            times[times.len() / 2].as_secs_f64(),
            times[0].as_secs_f64(),
            times[times.len() - 1].as_secs_f64()
        );
    }

    for count in [1usize, 10] {
        let existing = list_names(&client, &ns).await.len();
        for i in existing..count {
            tenant::create(&client, &ns, &small_tenant(&format!("rest-{i}"))).await;
        }
        for i in 0..count {
            tenant::wait_ready(&client, &ns, &format!("rest-{i}"), READY_TIMEOUT).await;
        }
        // Let watches and requeues settle before sampling "at rest".
        tokio::time::sleep(Duration::from_secs(20)).await;
        let sample = sample_leader(&client, Duration::from_secs(30)).await;
        println!(
            "operator at rest with {count} tenant(s): RSS {:.1} MiB, CPU {:.2}% of one core, {:.1} reconciles/min (30s sample)",
            sample.rss_kib as f64 / 1024.0,
            sample.cpu_percent,
            sample.reconciles_per_min
        );
    }

    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
}

/// A 1-member tenant with small CPU requests: with the defaults (220m per
/// tenant) a 2-core node schedules only 8 or 9 tenants besides the operator.
fn small_tenant(name: &str) -> TenantCluster {
    let mut tc = tenant::dev_tenant(name, 1);
    let small: k8s_openapi::api::core::v1::ResourceRequirements =
        serde_json::from_value(serde_json::json!({"requests": {"cpu": "10m", "memory": "64Mi"}}))
            .expect("valid resources");
    tc.spec.etcd.resources = Some(small.clone());
    tc.spec.control_plane.apiserver.resources = Some(small.clone());
    tc.spec.control_plane.controller_manager.resources = Some(small.clone());
    tc.spec.control_plane.scheduler.resources = Some(small);
    tc
}

/// Applies a tenant and polls its `/readyz` until `ok`, while a watcher
/// notes when each milestone of the start was first seen (100 ms polls).
async fn apply_to_readyz(client: &Client, ns: &str, name: &str, members: i32) -> Timeline {
    let start = Instant::now();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Duration)>::new()));
    let watcher = tokio::spawn(watch_milestones(
        client.clone(),
        ns.to_string(),
        name.to_string(),
        start,
        seen.clone(),
    ));
    tenant::create(client, ns, &tenant::dev_tenant(name, members)).await;
    let readyz = loop {
        if start.elapsed() > READY_TIMEOUT {
            panic!("{ns}/{name} did not answer /readyz within {READY_TIMEOUT:?}");
        }
        if let Some(tenant_client) = tenant::try_tenant_client(client, ns, name).await {
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            if let Ok(body) = tenant_client.request_text(req).await {
                if body.trim() == "ok" {
                    break start.elapsed();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Wait for kok to report Ready too (the watcher stops on it).
    let _ = tokio::time::timeout(READY_TIMEOUT, watcher).await;
    let mut milestones = seen.lock().unwrap().clone();
    milestones.push(("tenant /readyz ok (bench)".into(), readyz));
    milestones.sort_by_key(|(_, t)| *t);
    Timeline { readyz, milestones }
}

struct Timeline {
    readyz: Duration,
    milestones: Vec<(String, Duration)>,
}

/// Notes the first time each milestone is seen, until kok reports Ready.
async fn watch_milestones(
    client: Client,
    ns: String,
    name: String,
    start: Instant,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, Duration)>>>,
) {
    use k8s_openapi::api::core::v1::{Pod, Secret, Service};
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let tcs: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
    let note = |what: String| {
        let mut s = seen.lock().unwrap();
        if !s.iter().any(|(w, _)| *w == what) {
            s.push((what, start.elapsed()));
        }
    };
    let prefix = format!("{name}-");
    while start.elapsed() < READY_TIMEOUT {
        if let Ok(list) = services.list(&Default::default()).await {
            if list
                .items
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some(&format!("{name}-apiserver")))
            {
                note("Services applied".into());
            }
        }
        if let Ok(list) = secrets.list(&Default::default()).await {
            let has = |n: String| {
                list.items
                    .iter()
                    .any(|s| s.metadata.name.as_deref() == Some(&n))
            };
            if has(format!("{name}-certs")) {
                note("PKI written".into());
            }
            if has(format!("{name}-kubeconfig")) {
                note("admin kubeconfig written".into());
            }
        }
        if let Ok(list) = pods.list(&Default::default()).await {
            for p in list.items.iter().filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&prefix))
            }) {
                let pod = p.metadata.name.clone().unwrap_or_default();
                // One line per component: the first member / replica.
                let component = pod
                    .strip_prefix(&prefix)
                    .map(|rest| match rest.split('-').next() {
                        Some("etcd") => format!("etcd {rest}"),
                        Some("controller") => "controller-manager".to_string(),
                        Some(c) => c.to_string(),
                        None => rest.to_string(),
                    })
                    .unwrap_or_default();
                note(format!("{component}: pod created"));
                let status = p.status.clone().unwrap_or_default();
                let cond = |t: &str| {
                    status
                        .conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == t && c.status == "True")
                };
                if cond("PodScheduled") {
                    note(format!("{component}: scheduled"));
                }
                let running = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
                if running {
                    note(format!("{component}: container running"));
                }
                if cond("Ready") {
                    note(format!("{component}: ready"));
                }
                let restarts: i32 = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .map(|c| c.restart_count)
                    .sum();
                if restarts > 0 {
                    note(format!("{component}: container restarted"));
                }
            }
        }
        if let Ok(Some(tc)) = tcs.get_opt(&name).await {
            let ready = tc
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                note("Ready seen by kok".into());
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn list_names(client: &Client, ns: &str) -> Vec<String> {
    Api::<TenantCluster>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("listing TenantClusters")
        .items
        .into_iter()
        .filter_map(|t| t.metadata.name)
        .collect()
}

async fn delete_and_wait(client: &Client, ns: &str, name: &str) {
    let api: Api<TenantCluster> = Api::namespaced(client.clone(), ns);
    api.delete(name, &DeleteParams::foreground())
        .await
        .expect("deleting a TenantCluster");
    let start = Instant::now();
    while api.get_opt(name).await.expect("get").is_some() {
        assert!(start.elapsed() < READY_TIMEOUT, "{name} was not deleted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The next run starts on a quiet node: a stopping apiserver (its
    // shutdown delay and grace) would otherwise share the CPU with it.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let prefix = format!("{name}-");
    loop {
        let left = pods
            .list(&Default::default())
            .await
            .expect("listing pods")
            .items
            .into_iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .count();
        if left == 0 {
            break;
        }
        // An apiserver whose etcd went with it takes its whole grace period
        // to stop; this benchmark measures starts, not stops.
        for p in pods
            .list(&Default::default())
            .await
            .expect("listing pods")
            .items
        {
            if let Some(n) = p.metadata.name.filter(|n| n.starts_with(&prefix)) {
                let _ = pods
                    .delete(&n, &DeleteParams::default().grace_period(0))
                    .await;
            }
        }
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "{name}'s pods were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
