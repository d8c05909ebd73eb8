//! The operator in namespaced mode (the chart's `watchNamespaces`):
//! `hack/e2e-run` runs this binary alone, after the others, with the
//! operator deployed by `hack/deploy-operator --watch e2e-watched`, and then
//! deploys it back. Its rights reach only the watched namespace (plus Nodes
//! and PersistentVolumes, which have none), and a TenantCluster elsewhere is
//! not touched.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kok_crds::{BackupPhase, EtcdBackup, TenantCluster};
use kok_e2e::{tenant, wait_for, Poll};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;

const WATCHED: &str = "e2e-watched";
const UNWATCHED: &str = "e2e-unwatched";
const OPERATOR: &str = "system:serviceaccount:kok-system:kok-operator";
const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// `kubectl auth can-i VERB RESOURCE [-n NS]` as kok's service account.
fn can_i(verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let mut cmd = Command::new("kubectl");
    cmd.args(["auth", "can-i", verb, resource, "--as", OPERATOR]);
    match ns {
        Some(ns) => cmd.args(["-n", ns]),
        None => cmd.arg("--all-namespaces"),
    };
    let out = cmd.output().expect("running kubectl auth can-i");
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

async fn watched_namespaces(client: &Client) -> String {
    let operator = Api::<Deployment>::namespaced(client.clone(), "kok-system")
        .get("kok-operator")
        .await
        .expect("the operator's Deployment");
    operator
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().find(|c| c.name == "operator"))
        .and_then(|c| c.env)
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "KOK_WATCH_NAMESPACES")
        .and_then(|e| e.value)
        .unwrap_or_default()
}

#[tokio::test]
async fn namespaced_mode_acts_only_where_it_may() {
    let client = kok_e2e::client().await;
    assert_eq!(
        watched_namespaces(&client).await,
        WATCHED,
        "run this test with hack/e2e-run, which deploys the operator in namespaced mode for it"
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let unwatched: Namespace = serde_json::from_value(json!({
        "metadata": {"name": UNWATCHED, "labels": {"kok.dev/e2e": "true"}}
    }))
    .unwrap();
    let _ = namespaces.create(&PostParams::default(), &unwatched).await;

    // Rights: the workloads and Secrets of the watched namespace only.
    for (verb, resource) in [
        ("delete", "pods"),
        ("get", "secrets"),
        ("create", "statefulsets.apps"),
        ("patch", "tenantclusters.kok.dev"),
    ] {
        assert!(
            can_i(verb, resource, Some(WATCHED)),
            "{verb} {resource} in {WATCHED}"
        );
        assert!(
            !can_i(verb, resource, Some(UNWATCHED)),
            "{verb} {resource} in {UNWATCHED}"
        );
        assert!(
            !can_i(verb, resource, Some("kube-system")),
            "{verb} {resource} in kube-system"
        );
    }
    assert!(
        !can_i("list", "secrets", None),
        "every Secret in the cluster"
    );
    assert!(can_i("list", "nodes", None), "Nodes have no namespace");

    // It runs a tenant where it watches, backs it up, and leaves one elsewhere alone.
    let mut w = tenant::dev_tenant("w", 1);
    w.spec.backup = Some(
        serde_json::from_value(json!({
            "destination": {"filesystem": {"path": "/var/lib/kok/backups/e2e-watched"}}
        }))
        .unwrap(),
    );
    tenant::create(&client, WATCHED, &w).await;
    tenant::create(&client, UNWATCHED, &tenant::dev_tenant("u", 1)).await;
    tenant::wait_ready(&client, WATCHED, "w", READY_TIMEOUT).await;
    let backups: Api<EtcdBackup> = Api::namespaced(client.clone(), WATCHED);
    let backup = EtcdBackup {
        metadata: ObjectMeta {
            name: Some("w-1".into()),
            ..Default::default()
        },
        spec: kok_crds::EtcdBackupSpec {
            tenant_cluster: "w".into(),
        },
        status: None,
    };
    backups
        .create(&PostParams::default(), &backup)
        .await
        .unwrap_or_else(|e| {
            panic!("creating an EtcdBackup: {e}");
        });
    let phase = wait_for("EtcdBackup w-1 to finish", Duration::from_secs(180), || {
        let backups = backups.clone();
        async move {
            match backups.get("w-1").await.ok().and_then(|b| b.status?.phase) {
                Some(p) if p.is_terminal() => Poll::Ready(p),
                p => Poll::Pending(format!("{p:?}")),
            }
        }
    })
    .await;
    assert_eq!(phase, BackupPhase::Succeeded);
    let u: TenantCluster = Api::namespaced(client.clone(), UNWATCHED)
        .get("u")
        .await
        .expect("the unwatched tenant");
    assert!(u.status.is_none(), "not touched: {:?}", u.status);
    let stray = Api::<Deployment>::namespaced(client.clone(), UNWATCHED)
        .list(&Default::default())
        .await
        .expect("listing");
    assert!(stray.items.is_empty(), "no workloads made in {UNWATCHED}");

    // As docs/operator.md asks: kok's objects go before their namespace
    // (whose deletion takes kok's RoleBinding, and so its right to release them).
    let tenants: Api<TenantCluster> = Api::namespaced(client.clone(), WATCHED);
    tenants
        .delete("w", &DeleteParams::background())
        .await
        .expect("deleting the watched tenant");
    wait_for(
        "the watched tenant deleted by kok",
        Duration::from_secs(120),
        || {
            let tenants = tenants.clone();
            async move {
                match tenants.get_opt("w").await {
                    Ok(None) => Poll::Ready(()),
                    other => Poll::Pending(format!("{:?}", other.map(|t| t.is_some()))),
                }
            }
        },
    )
    .await;
    // deploy-operator --watch made WATCHED-argocd for its Argo CD Role.
    for ns in [WATCHED, UNWATCHED, "e2e-watched-argocd"] {
        let _ = namespaces.delete(ns, &DeleteParams::background()).await;
    }
}
