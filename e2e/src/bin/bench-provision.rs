//! Provisioning benchmark (issue 3): prints figures, asserts nothing about speed.
//!
//! - time from `kubectl apply` of a TenantCluster to the tenant's `/readyz`
//!   answering `ok`, for 1 and 3 etcd members (median of `KOK_BENCH_RUNS`, default 3);
//! - the leading operator's RSS and CPU at rest with 1 and with 10 tenants.
//!
//! Needs the local cluster with the operator deployed (`hack/bench provision`).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kok_crds::TenantCluster;
use kok_e2e::{client, tenant};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
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
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("creating the benchmark namespace");

    println!("# kok provisioning benchmark ({runs} runs per size)");
    println!("machine: {} cores", num_cpus());
    // KOK_BENCH_RUNS=0 measures only the operator at rest.
    for members in [1, 3].into_iter().filter(|_| runs > 0) {
        let mut times = Vec::new();
        for run in 0..runs {
            let name = format!("p{members}-{run}");
            let t = apply_to_readyz(&client, &ns, &name, members).await;
            println!("  {members} member(s), run {run}: {:.1}s", t.as_secs_f64());
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

async fn apply_to_readyz(client: &Client, ns: &str, name: &str, members: i32) -> Duration {
    let start = Instant::now();
    tenant::create(client, ns, &tenant::dev_tenant(name, members)).await;
    loop {
        if start.elapsed() > READY_TIMEOUT {
            panic!("{ns}/{name} did not answer /readyz within {READY_TIMEOUT:?}");
        }
        if let Some(tenant_client) = tenant::try_tenant_client(client, ns, name).await {
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            if let Ok(body) = tenant_client.request_text(req).await {
                if body.trim() == "ok" {
                    return start.elapsed();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
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
}

struct Sample {
    rss_kib: u64,
    cpu_percent: f64,
    reconciles_per_min: f64,
}

/// Sum of `kok_reconcile_total` over every controller, from `/metrics`.
async fn reconciles(addr: &str) -> f64 {
    let (_, body) = kok_e2e::http::get(addr, "/metrics")
        .await
        .expect("scraping the operator's /metrics");
    body.lines()
        .filter(|l| l.starts_with("kok_reconcile_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// RSS and CPU of the operator replica holding the Lease, read from /proc on
/// this node (the local cluster is one node, so the pod's process is visible).
async fn sample_leader(client: &Client, window: Duration) -> Sample {
    let lease = Api::<Lease>::namespaced(client.clone(), "kok-system")
        .get("kok-operator")
        .await
        .expect("reading the leader Lease");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .expect("the Lease has a holder");
    let pid = operator_pid(&holder).unwrap_or_else(|| panic!("no process for pod {holder}"));
    let pod_ip = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), "kok-system")
        .get(&holder)
        .await
        .ok()
        .and_then(|p| p.status?.pod_ip)
        .expect("the leader pod has an IP");
    let metrics = format!("{pod_ip}:8080");
    let ticks = || cpu_ticks(pid).expect("reading /proc/<pid>/stat");
    let (t0, c0, r0) = (Instant::now(), ticks(), reconciles(&metrics).await);
    tokio::time::sleep(window).await;
    let (elapsed, c1, r1) = (t0.elapsed(), ticks(), reconciles(&metrics).await);
    let hz = 100.0; // USER_HZ on Linux
    Sample {
        rss_kib: rss_kib(pid).expect("reading /proc/<pid>/status"),
        cpu_percent: (c1 - c0) as f64 / hz / elapsed.as_secs_f64() * 100.0,
        reconciles_per_min: (r1 - r0) * 60.0 / elapsed.as_secs_f64(),
    }
}

fn operator_pid(pod: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("kok-operator") {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let wanted = format!("POD_NAME={pod}");
        if environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
