//! The operator as the chart installs it by default, without the settings
//! hack/deploy-operator adds for the other tests. `hack/e2e-run` runs this
//! binary alone, after the others, with the operator redeployed on the
//! chart's defaults (`hack/deploy-operator --chart-defaults`), and then
//! deploys it back.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kok_crds::{BackupPhase, EtcdBackup, TenantCluster};
use kok_e2e::{tenant, wait_for, with_namespace, Poll};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;

const OPERATOR_NAMESPACE: &str = "kok-system";
const REFUSED_FIELD: &str = "spec.backup.destination.filesystem";

/// The precondition, checked rather than assumed: the operator has no
/// durable backups directory (the chart's `backups.hostPath` is empty).
async fn operator_has_no_backup_host_path(client: &Client) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let operator = deployments
        .get("kok-operator")
        .await
        .expect("the operator's Deployment");
    let env = operator
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().find(|c| c.name == "operator"))
        .and_then(|c| c.env)
        .unwrap_or_default();
    assert!(
        !env.iter().any(|e| e.name == "KOK_BACKUP_HOST_PATH"),
        "the operator runs with a backups hostPath: run this test with hack/e2e-run, \
         which deploys the chart's defaults for it"
    );
}

/// A backup into the operator pod's own directory would report success and
/// vanish with the pod: with the chart's defaults the tenant is Stalled
/// naming the field and the chart value, an Event says so, and no EtcdBackup,
/// scheduled or made by hand, ever succeeds. Its control plane still runs.
#[tokio::test]
async fn a_filesystem_destination_without_durable_storage_is_stalled() {
    with_namespace("defaults", |client, ns| async move {
        operator_has_no_backup_host_path(&client).await;
        let mut tc = tenant::dev_tenant("fs", 1);
        tc.spec.backup = Some(
            serde_json::from_value(json!({
                "schedule": "* * * * *",
                "destination": {"filesystem": {"path": "/var/lib/kok/backups/fs"}},
            }))
            .expect("a backup spec"),
        );
        tenant::create(&client, &ns, &tc).await;

        let stalled = tenant::wait_condition(
            &client,
            &ns,
            "fs",
            "Stalled",
            "True",
            Duration::from_secs(60),
        )
        .await;
        let message = &tenant::condition(&stalled, "Stalled")
            .expect("a Stalled condition")
            .message;
        assert!(message.contains(REFUSED_FIELD), "{message}");
        assert!(message.contains("backups.hostPath"), "{message}");
        assert_eq!(
            tenant::condition(&stalled, "Stalled").map(|c| c.reason.as_str()),
            Some("BackupDestinationRefused")
        );
        // Refusing its backups does not stop running it.
        tenant::wait_condition(
            &client,
            &ns,
            "fs",
            "APIServerReady",
            "True",
            Duration::from_secs(180),
        )
        .await;

        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        wait_for(
            "a Warning Event naming the field",
            Duration::from_secs(30),
            || {
                let events = events.clone();
                async move {
                    let seen: Vec<String> = events
                        .list(&ListParams::default().fields("involvedObject.name=fs"))
                        .await
                        .map(|l| l.items)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|e| e.type_.as_deref() == Some("Warning"))
                        .filter_map(|e| e.message)
                        .collect();
                    if seen.iter().any(|m| m.contains(REFUSED_FIELD)) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending(format!("{seen:?}"))
                    }
                }
            },
        )
        .await;

        // A backup asked for by hand is refused with the same reason.
        let backups: Api<EtcdBackup> = Api::namespaced(client.clone(), &ns);
        let by_hand = EtcdBackup {
            metadata: ObjectMeta {
                name: Some("by-hand".into()),
                ..Default::default()
            },
            spec: kok_crds::EtcdBackupSpec {
                tenant_cluster: "fs".into(),
            },
            status: None,
        };
        backups
            .create(&PostParams::default(), &by_hand)
            .await
            .expect("creating an EtcdBackup");
        let failed = wait_for(
            "EtcdBackup by-hand to fail",
            Duration::from_secs(60),
            || {
                let backups = backups.clone();
                async move {
                    match backups.get_opt("by-hand").await {
                        Ok(Some(b)) => match b.status.as_ref().and_then(|s| s.phase) {
                            Some(p) if p.is_terminal() => Poll::Ready(b),
                            p => Poll::Pending(format!("phase {p:?}")),
                        },
                        other => Poll::Pending(format!("{other:?}")),
                    }
                }
            },
        )
        .await;
        let status = failed.status.expect("a status");
        assert_eq!(status.phase, Some(BackupPhase::Failed));
        let why = status.message.unwrap_or_default();
        assert!(why.contains(REFUSED_FIELD), "{why}");

        // Past the next schedule slot: still no backup succeeded.
        tokio::time::sleep(Duration::from_secs(70)).await;
        let all = backups.list(&ListParams::default()).await.expect("listing");
        for b in &all.items {
            let phase = b.status.as_ref().and_then(|s| s.phase);
            assert_ne!(
                phase,
                Some(BackupPhase::Succeeded),
                "{:?} succeeded",
                b.metadata.name
            );
        }
        let tc: TenantCluster = Api::namespaced(client.clone(), &ns)
            .get("fs")
            .await
            .expect("the tenant");
        assert!(tenant::condition(&tc, "Stalled").is_some_and(|c| c.status == "True"));
    })
    .await;
}
