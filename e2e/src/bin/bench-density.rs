//! Density benchmark (issue 12): prints figures, asserts nothing about speed.
//!
//! Creates `KOK_BENCH_TENANTS` (default 30) 1-member tenants with small
//! requests at once, waits until every one is Ready, lets them settle, then
//! measures at rest over 30 s: the memory (working set) and CPU of every
//! tenant pod from its cgroup, summed per component, and the operator
//! leader's RSS and CPU, before any tenant and with all of them, so the
//! operator's share per tenant is the difference divided by the count.
//!
//! Needs the local cluster with the operator deployed (`hack/bench density`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kok_crds::TenantCluster;
use kok_e2e::bench::{num_cpus, pod_usage, sample_leader, PodUsage};
use kok_e2e::{client, tenant};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};

const READY_TIMEOUT: Duration = Duration::from_secs(900);
const WINDOW: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("KOK_BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let client = client().await;
    let ns = format!("bench-density-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("creating the benchmark namespace");

    println!(
        "# kok density benchmark: {count} tenants on {} cores",
        num_cpus()
    );
    let before = sample_leader(&client, WINDOW).await;
    println!(
        "operator at rest before: RSS {:.1} MiB, CPU {:.2}% of one core",
        before.rss_kib as f64 / 1024.0,
        before.cpu_percent
    );

    let start = Instant::now();
    for i in 0..count {
        tenant::create(&client, &ns, &small_tenant(&format!("d{i}"))).await;
    }
    for i in 0..count {
        tenant::wait_ready(&client, &ns, &format!("d{i}"), READY_TIMEOUT).await;
    }
    println!(
        "{count} tenants created at once: all Ready after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // Let watches, requeues and the tenants' own start-up work settle.
    tokio::time::sleep(Duration::from_secs(60)).await;

    let pods = tenant_pods(&client, &ns).await;
    let first: BTreeMap<String, (String, PodUsage)> = pods
        .iter()
        .filter_map(|(uid, component)| Some((uid.clone(), (component.clone(), pod_usage(uid)?))))
        .collect();
    let after = sample_leader(&client, WINDOW).await;
    let mut per_component: BTreeMap<String, (u64, f64, usize)> = BTreeMap::new();
    for (uid, (component, u0)) in &first {
        let Some(u1) = pod_usage(uid) else { continue };
        let cpu_cores = (u1.cpu_nanos - u0.cpu_nanos) as f64 / WINDOW.as_nanos() as f64;
        let e = per_component.entry(component.clone()).or_default();
        e.0 += u1.working_set_bytes;
        e.1 += cpu_cores;
        e.2 += 1;
    }
    println!(
        "tenant pods at rest ({} measured of {}):",
        first.len(),
        pods.len()
    );
    let (mut mem, mut cpu) = (0u64, 0f64);
    for (component, (bytes, cores, n)) in &per_component {
        mem += bytes;
        cpu += cores;
        println!(
            "  {component:<20} {n:>3} pods: {:>7.1} MiB total, {:>5.1} MiB each; CPU {:>6.1} m total, {:>4.1} m each",
            *bytes as f64 / 1048576.0,
            *bytes as f64 / 1048576.0 / *n as f64,
            cores * 1000.0,
            cores * 1000.0 / *n as f64
        );
    }
    println!(
        "  all tenant pods: {:.1} MiB, {:.0} m CPU; per tenant {:.1} MiB, {:.1} m CPU",
        mem as f64 / 1048576.0,
        cpu * 1000.0,
        mem as f64 / 1048576.0 / count as f64,
        cpu * 1000.0 / count as f64
    );
    let rss_share = (after.rss_kib as f64 - before.rss_kib as f64) / 1024.0 / count as f64;
    let cpu_share_m = after.cpu_percent * 10.0 / count as f64;
    println!(
        "operator at rest with {count} tenants: RSS {:.1} MiB, CPU {:.2}% of one core, {:.1} reconciles/min",
        after.rss_kib as f64 / 1024.0,
        after.cpu_percent,
        after.reconciles_per_min
    );
    println!(
        "operator share per tenant: {rss_share:.2} MiB RSS (goal <= 1), {cpu_share_m:.3} mCPU (goal <= 1)"
    );

    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
}

/// A 1-member tenant with small requests, so 30 fit the node's CPU.
fn small_tenant(name: &str) -> TenantCluster {
    let mut tc = tenant::dev_tenant(name, 1);
    let small: k8s_openapi::api::core::v1::ResourceRequirements =
        serde_json::from_value(serde_json::json!({"requests": {"cpu": "5m", "memory": "32Mi"}}))
            .expect("valid resources");
    tc.spec.etcd.resources = Some(small.clone());
    tc.spec.control_plane.apiserver.resources = Some(small.clone());
    tc.spec.control_plane.controller_manager.resources = Some(small.clone());
    tc.spec.control_plane.scheduler.resources = Some(small);
    tc
}

/// Every pod in the namespace: uid -> component (`kok.dev/component`).
async fn tenant_pods(client: &Client, ns: &str) -> Vec<(String, String)> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing pods")
        .items
        .into_iter()
        .filter_map(|p| {
            let component = p
                .labels()
                .get("kok.dev/component")
                .cloned()
                .unwrap_or_else(|| "other".into());
            Some((p.uid()?, component))
        })
        .collect()
}
