//! Measuring helpers shared by the benchmarks: the operator leader's RSS and
//! CPU read from /proc on this node (the local cluster is one node, so pod
//! processes are visible), and a pod's usage from its cgroup (v1, cgroupfs).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

pub struct Sample {
    pub rss_kib: u64,
    pub cpu_percent: f64,
    pub reconciles_per_min: f64,
}

/// Sum of `kok_reconcile_total` over every controller, from `/metrics`.
pub async fn reconciles(addr: &str) -> f64 {
    let (_, body) = crate::http::get(addr, "/metrics")
        .await
        .expect("scraping the operator's /metrics");
    body.lines()
        .filter(|l| l.starts_with("kok_reconcile_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// RSS and CPU of the operator replica holding the Lease, read from /proc on
/// this node (the local cluster is one node, so the pod's process is visible).
pub async fn sample_leader(client: &Client, window: Duration) -> Sample {
    let (holder, pod_ip) = leader_pod(client).await;
    let pid = operator_pid(&holder).unwrap_or_else(|| panic!("no process for pod {holder}"));
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

pub fn operator_pid(pod: &str) -> Option<u32> {
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

pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Memory (working set: usage minus inactive file pages, as kubelet counts
/// it) and CPU time of one pod, from its cgroup.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodUsage {
    pub working_set_bytes: u64,
    pub cpu_nanos: u64,
}

pub fn pod_usage(pod_uid: &str) -> Option<PodUsage> {
    let dir = |controller: &str| -> Option<std::path::PathBuf> {
        let root = std::path::Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("kubepods");
        let name = format!("pod{pod_uid}");
        [
            root.join(&name),
            root.join("burstable").join(&name),
            root.join("besteffort").join(&name),
        ]
        .into_iter()
        .find(|d| d.exists())
    };
    let mem = dir("memory")?;
    let usage: u64 = std::fs::read_to_string(mem.join("memory.usage_in_bytes"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(mem.join("memory.stat")).ok()?;
    let inactive_file: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("total_inactive_file "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let cpu = dir("cpuacct")?;
    let cpu_nanos = std::fs::read_to_string(cpu.join("cpuacct.usage"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(PodUsage {
        working_set_bytes: usage.saturating_sub(inactive_file),
        cpu_nanos,
    })
}

/// The operator pod holding the Lease, and its IP. Waits for one: another
/// test may have just restarted the operator, whose replicas then hold no
/// Lease for a few seconds.
pub async fn leader_pod(client: &Client) -> (String, String) {
    crate::wait_for(
        "an operator replica holding the Lease, with an IP",
        std::time::Duration::from_secs(90),
        || {
            let client = client.clone();
            async move {
                let lease = match Api::<Lease>::namespaced(client.clone(), "kok-system")
                    .get("kok-operator")
                    .await
                {
                    Ok(l) => l,
                    Err(e) => return crate::Poll::Pending(format!("reading the Lease: {e}")),
                };
                let Some(holder) = lease.spec.and_then(|s| s.holder_identity) else {
                    return crate::Poll::Pending("the Lease has no holder".into());
                };
                let pod_ip = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
                    client.clone(),
                    "kok-system",
                )
                .get(&holder)
                .await
                .ok()
                .and_then(|p| p.status?.pod_ip);
                match pod_ip {
                    Some(ip) => crate::Poll::Ready((holder, ip)),
                    None => crate::Poll::Pending(format!("the holder {holder} has no pod IP")),
                }
            }
        },
    )
    .await
}

/// The operator process holding the Lease: its pod and when its container
/// last started. Process-local counters (restores, backups) describe this
/// process only; a test compares two readings to know whether the one that
/// acted is the one it scrapes.
pub async fn leader_process(client: &Client) -> (String, Option<String>) {
    let (pod, _) = leader_pod(client).await;
    let started = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), "kok-system")
        .get(&pod)
        .await
        .ok()
        .and_then(|p| p.status?.container_statuses?.into_iter().next())
        .and_then(|c| c.state?.running?.started_at)
        .map(|t| t.0.to_string());
    (pod, started)
}

/// The `/metrics` text of the operator replica holding the Lease.
pub async fn leader_metrics(client: &Client) -> String {
    let (_, pod_ip) = leader_pod(client).await;
    crate::http::get(&format!("{pod_ip}:8080"), "/metrics")
        .await
        .expect("scraping the operator's /metrics")
        .1
}

/// The value of the sample of `name` whose labels contain `labels`.
pub fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Creates the namespace `name` a benchmark works in; returns the
/// Namespaces API, for deleting it at the end.
pub async fn make_namespace(
    client: &Client,
    name: &str,
) -> Api<k8s_openapi::api::core::v1::Namespace> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&kube::api::PostParams::default(), &ns)
        .await
        .expect("creating the benchmark namespace");
    namespaces
}
