//! Data migration benchmark (issue 9): prints figures, asserts nothing about
//! speed. A one-member tenant on etcd 3.4.23 holding 1,000 small objects, then
//! ~1 GiB of objects, migrated to three etcd 3.5 members: total time (spec
//! change to Completed), the downtime kok recorded (freeze to first write),
//! and when each phase began.
//!
//! Needs the local cluster with the operator deployed (`hack/bench migrate`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kok_crds::TenantCluster;
use kok_e2e::volumes::{make_volumes, remove_volumes};
use kok_e2e::{client, tenant};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(1800);

#[tokio::main]
async fn main() {
    let target = std::env::var("KOK_ETCD35_TAG").expect("KOK_ETCD35_TAG (hack/local-cluster env)");
    let client = client().await;
    println!("# kok data migration benchmark: 1 member etcd 3.4.23 -> 3 members {target}");
    for (label, objects, bytes_each) in [
        ("1,000 objects of 1 KiB", 1000usize, 1024usize),
        ("~1 GiB: 1,100 objects of 960 KiB", 1100, 960 * 1024),
    ] {
        run(&client, &target, label, objects, bytes_each).await;
    }
}

async fn run(client: &Client, target: &str, label: &str, objects: usize, bytes_each: usize) {
    let ns = format!("bench-migrate-{}-{}", std::process::id(), objects);
    let namespaces = kok_e2e::bench::make_namespace(client, &ns).await;
    make_volumes(client, &ns, 4).await;
    let mut tc = tenant::dev_tenant("mig", 1);
    tc.spec.etcd.storage =
        serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
    tc.spec.backup = Some(
        serde_json::from_value(json!({
            "destination": {"filesystem": {"path": format!("/var/lib/kok/backups/{ns}")}}
        }))
        .unwrap(),
    );
    tc.spec.upgrade = serde_json::from_value(json!({"strategy": "Migrate"})).unwrap();
    tenant::create(client, &ns, &tc).await;
    tenant::wait_ready(client, &ns, "mig", Duration::from_secs(300)).await;

    let tenant_api = tenant::tenant_client(client, &ns, "mig").await;
    let cms: Api<ConfigMap> = Api::namespaced(tenant_api, "default");
    let filler = "x".repeat(bytes_each);
    let written = Instant::now();
    futures::stream::iter(0..objects)
        .for_each_concurrent(4, |i| {
            let cms = cms.clone();
            let filler = filler.clone();
            async move {
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": format!("obj-{i:05}")},
                    "data": {"filler": filler}
                }))
                .unwrap();
                cms.create(&PostParams::default(), &cm)
                    .await
                    .unwrap_or_else(|e| panic!("writing obj-{i:05}: {e}"));
            }
        })
        .await;
    let write_secs = written.elapsed().as_secs_f64();

    let started = Instant::now();
    tenant::patch_spec(
        client,
        &ns,
        "mig",
        json!({"etcd": {"version": target, "replicas": 3}}),
    )
    .await;
    let tcs: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
    let mut phases: Vec<(String, f64)> = Vec::new();
    let done = loop {
        assert!(
            started.elapsed() < TIMEOUT,
            "the migration did not finish in {TIMEOUT:?}"
        );
        let m = tcs
            .get("mig")
            .await
            .ok()
            .and_then(|t| t.status)
            .and_then(|s| s.migration);
        if let Some(m) = m {
            if phases
                .last()
                .map(|(p, _)| *p != m.phase.as_str())
                .unwrap_or(true)
            {
                phases.push((m.phase.to_string(), started.elapsed().as_secs_f64()));
            }
            if m.phase == "Completed" {
                break m;
            }
            assert_ne!(
                m.phase, "RolledBack",
                "the migration failed: {:?}",
                m.message
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let total = started.elapsed().as_secs_f64();
    println!("\n## {label} (written in {write_secs:.1} s)");
    println!(
        "total {total:.1} s; writes frozen (freeze -> first write) {:.1} s; {} bytes copied; {} keys verified in {} prefixes",
        done.downtime_seconds.unwrap_or(-1.0),
        done.bytes_copied.unwrap_or(0),
        done.keys_verified.unwrap_or(0),
        done.prefixes_verified.unwrap_or(0)
    );
    for (phase, at) in &phases {
        println!("  {at:>6.1} s  {phase}");
    }

    tcs.delete("mig", &DeleteParams::default()).await.unwrap();
    let gone = Instant::now();
    while tcs.get_opt("mig").await.ok().flatten().is_some()
        && gone.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    remove_volumes(client, &ns, 4).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}
