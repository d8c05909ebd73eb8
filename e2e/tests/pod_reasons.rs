//! Valid specs whose pods cannot run: the TenantCluster says why (the pod's
//! own reason and message on the component condition) within a minute,
//! instead of only "0/1 pods available", and a failure waiting will not fix
//! turns `Stalled`.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, PersistentVolume};
use kok_crds::TenantCluster;
use kok_e2e::{tenant, wait_for, with_namespace, Poll};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

/// The promise: each reason is on the TenantCluster this soon after creation.
const SHOWN_WITHIN: Duration = Duration::from_secs(60);

struct Case {
    name: &'static str,
    spec: Value,
    /// The component condition that must carry the reason.
    condition: &'static str,
    reason: &'static str,
    /// Text of the pod's own message the condition must quote.
    says: &'static str,
}

fn cases(ns: &str) -> Vec<Case> {
    let prefix = kok_e2e::image_prefix();
    vec![
        Case {
            name: "no-such-tag",
            spec: json!({"etcd": {"image": format!("{prefix}/etcd:no-such-tag")}}),
            condition: "EtcdReady",
            reason: "ImagePullFailing",
            says: "no-such-tag",
        },
        Case {
            name: "bad-reference",
            spec: json!({"imageRepository": "kok.local/Not_A_Valid_Path"}),
            condition: "EtcdReady",
            reason: "InvalidImageName",
            says: "Not_A_Valid_Path",
        },
        Case {
            name: "rejected-arg",
            spec: json!({"controlPlane": {"apiserver": {
                "extraArgs": {"audit-log-maxage": "forever"}}}}),
            condition: "APIServerReady",
            reason: "CrashLoopBackOff",
            says: "forever",
        },
        Case {
            name: "too-big",
            spec: json!({"controlPlane": {"apiserver": {
                "resources": {"requests": {"cpu": "500"}}}}}),
            condition: "APIServerReady",
            reason: "Unschedulable",
            says: "Insufficient cpu",
        },
        Case {
            name: "root-volume",
            spec: json!({"etcd": {"storage": {
                "ephemeral": false, "size": "1Gi", "storageClassName": format!("{ns}-root")}}}),
            condition: "EtcdReady",
            reason: "CrashLoopBackOff",
            says: "permission denied",
        },
    ]
}

/// A hostPath PV in its own class whose directory belongs to root (as one
/// kubelet creates with DirectoryOrCreate): the non-root etcd cannot write it.
async fn root_owned_volume(client: &Client, ns: &str) -> String {
    let dir = format!("/var/lib/kok-local/pv/{ns}-root");
    std::fs::create_dir_all(&dir).expect("making the volume directory");
    std::os::unix::fs::chown(&dir, Some(0), Some(0)).expect("chown to root");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": format!("{ns}-root"), "labels": {"kok.dev/e2e": "true"}},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": format!("{ns}-root"),
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": dir, "type": "Directory"},
        }
    }))
    .expect("a PV");
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .expect("creating the PV");
    dir
}

fn tenant_with(name: &str, spec: &Value) -> TenantCluster {
    let mut base = serde_json::to_value(tenant::dev_tenant(name, 1)).expect("json");
    merge(&mut base["spec"], spec.clone());
    serde_json::from_value(base).expect("a valid TenantCluster")
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

#[tokio::test]
async fn pods_that_cannot_run_say_why_on_the_tenant_within_a_minute() {
    with_namespace("podwhy", |client, ns| async move {
        let dir = root_owned_volume(&client, &ns).await;
        let cases = cases(&ns);
        let started = Instant::now();
        for c in &cases {
            tenant::create(&client, &ns, &tenant_with(c.name, &c.spec)).await;
        }
        let api: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        for c in &cases {
            let left = SHOWN_WITHIN.saturating_sub(started.elapsed());
            let what = format!("{}: {} with reason {}", c.name, c.condition, c.reason);
            let message = wait_for(&what, left, || {
                let api = api.clone();
                async move {
                    let Ok(Some(tc)) = api.get_opt(c.name).await else {
                        return Poll::Pending("not found".into());
                    };
                    match tenant::condition(&tc, c.condition) {
                        Some(cond)
                            if cond.reason == c.reason
                                && cond.status == "False"
                                && cond.message.contains(c.says) =>
                        {
                            Poll::Ready(cond.message.clone())
                        }
                        Some(cond) => Poll::Pending(format!("{}: {}", cond.reason, cond.message)),
                        None => Poll::Pending("no condition yet".into()),
                    }
                }
            })
            .await;
            eprintln!("{} at {:?}: {message}", c.name, started.elapsed().as_secs());
            // Said once as a Warning Event too.
            let warned = events
                .list(&ListParams::default().fields(&format!("involvedObject.name={}", c.name)))
                .await
                .expect("events")
                .items
                .into_iter()
                .any(|e| {
                    e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(c.reason)
                });
            assert!(
                warned,
                "{}: a Warning Event with reason {}",
                c.name, c.reason
            );
        }

        // An invalid image name will never pull: Stalled at once, and kstatus
        // reads it as failed (Reconciling not True).
        let stalled = tenant::wait_condition(
            &client,
            &ns,
            "bad-reference",
            "Stalled",
            "True",
            SHOWN_WITHIN,
        )
        .await;
        let s = tenant::condition(&stalled, "Stalled").expect("Stalled");
        assert_eq!(s.reason, "InvalidImageName");
        assert!(tenant::condition(&stalled, "Reconciling").is_some_and(|c| c.status == "False"));
        // An image that may yet be pushed is not Stalled.
        let pulling: TenantCluster = api.get("no-such-tag").await.expect("tenant");
        assert!(
            tenant::condition(&pulling, "Stalled").is_none_or(|c| c.status == "False"),
            "{:?}",
            tenant::condition(&pulling, "Stalled")
        );

        for c in &cases {
            let _ = api.delete(c.name, &DeleteParams::default()).await;
        }
        let _ = Api::<PersistentVolume>::all(client.clone())
            .delete(&format!("{ns}-root"), &DeleteParams::default())
            .await;
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}
