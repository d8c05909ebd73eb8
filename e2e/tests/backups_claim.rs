//! The operator's backups directory on a PersistentVolumeClaim (the chart's
//! `backups.persistentVolumeClaim`). `hack/e2e-run` runs this binary alone,
//! with the operator redeployed that way (`hack/deploy-operator
//! --backups-claim`, which binds the claim to a volume made by hand), and then
//! deploys it back.
//!
//! Restore Jobs run in the tenant's namespace and cannot mount the claim:
//! they fetch their artifact from the operator, with a token for it alone.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kok_crds::{BackupPhase, EtcdBackup, EtcdRestore, RestorePhase};
use kok_e2e::volumes::{make_volumes, remove_volumes};
use kok_e2e::{http, tenant, wait_for, with_namespace, Poll};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

const OPERATOR_NAMESPACE: &str = "kok-system";
/// Where hack/deploy-operator --backups-claim keeps the claim's volume.
const CLAIM_DIR: &str = "/var/lib/kok-local/backups-claim";

/// The precondition, checked rather than assumed.
async fn operator_uses_a_claim(client: &Client) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let operator = deployments
        .get("kok-operator")
        .await
        .expect("the operator's Deployment");
    let pod = operator
        .spec
        .and_then(|s| s.template.spec)
        .unwrap_or_default();
    let env = pod
        .containers
        .iter()
        .find(|c| c.name == "operator")
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    assert!(
        env.iter().any(|e| e.name == "KOK_BACKUP_CLAIM"),
        "the operator has no backups claim: run this test with hack/e2e-run, which deploys \
         it with one (hack/deploy-operator --backups-claim)"
    );
    let volumes = pod.volumes.unwrap_or_default();
    assert!(
        volumes.iter().all(|v| v.host_path.is_none()),
        "the operator mounts a hostPath: {volumes:?}"
    );
}

fn env_of(job: &Job, name: &str) -> Option<String> {
    job.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// A tenant backed up to a filesystem destination on the claim is not
/// refused; its backup lands on the claim's volume; a restore Job, on no
/// hostPath, fetches the artifact from the operator and brings deleted
/// objects back. The artifact server gives the Job's token its one artifact,
/// and nothing without it.
#[tokio::test]
async fn backups_on_a_claim_restore_through_the_operator() {
    with_namespace("claim", |client, ns| async move {
        operator_uses_a_claim(&client).await;
        make_volumes(&client, &ns, 1).await;
        let mut tc = tenant::dev_tenant("rs", 1);
        tc.spec.etcd.storage =
            serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
        tc.spec.backup = Some(
            serde_json::from_value(json!({
                "destination": {"filesystem": {"path": format!("/var/lib/kok/backups/e2e-{ns}")}}
            }))
            .unwrap(),
        );
        tenant::create(&client, &ns, &tc).await;
        let ready = tenant::wait_ready(&client, &ns, "rs", Duration::from_secs(240)).await;
        assert_ne!(
            tenant::condition(&ready, "Stalled").map(|c| c.status.as_str()),
            Some("True"),
            "a claim is durable storage: the destination is not refused"
        );

        let cms: Api<ConfigMap> =
            Api::namespaced(tenant::tenant_client(&client, &ns, "rs").await, "default");
        for i in 0..5 {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("keep-{i}")}, "data": {"i": i.to_string()}}),
            )
            .unwrap();
            cms.create(&PostParams::default(), &cm)
                .await
                .expect("tenant write");
        }

        let backups: Api<EtcdBackup> = Api::namespaced(client.clone(), &ns);
        let eb: EtcdBackup = serde_json::from_value(
            json!({"metadata": {"name": "b1"}, "spec": {"tenantCluster": "rs"}}),
        )
        .unwrap();
        backups.create(&PostParams::default(), &eb).await.unwrap();
        let b = wait_for("backup b1", Duration::from_secs(120), || {
            let backups = backups.clone();
            async move {
                match backups.get("b1").await.ok().and_then(|b| b.status) {
                    Some(s) if s.phase == Some(BackupPhase::Succeeded) => Poll::Ready(s),
                    Some(s) if s.phase == Some(BackupPhase::Failed) => {
                        panic!("backup failed: {s:?}")
                    }
                    s => Poll::Pending(format!("{s:?}")),
                }
            }
        })
        .await;
        // On the claim's volume, not in a pod.
        let on_volume = format!("{CLAIM_DIR}/e2e-{ns}/{ns}/rs/b1.db");
        let bytes = std::fs::read(&on_volume).unwrap_or_else(|e| {
            panic!("the artifact is not on the claim's volume: {on_volume}: {e}")
        });
        let sha256: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            Some(sha256.clone()),
            b.sha256,
            "the artifact on the volume is the backup"
        );

        for i in 0..5 {
            cms.delete(&format!("keep-{i}"), &DeleteParams::default())
                .await
                .unwrap();
        }
        let restores: Api<EtcdRestore> = Api::namespaced(client.clone(), &ns);
        let er: EtcdRestore = serde_json::from_value(
            json!({"metadata": {"name": "r1"}, "spec": {"tenantCluster": "rs", "backup": "b1"}}),
        )
        .unwrap();
        restores.create(&PostParams::default(), &er).await.unwrap();

        // The member Job: no hostPath, no node pinned, a URL and a token.
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let job = wait_for("the member restore Job", Duration::from_secs(120), || {
            let jobs = jobs.clone();
            async move {
                let found = jobs
                    .list(&ListParams::default().labels("kok.dev/etcd-restore=r1"))
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
                match found.into_iter().next() {
                    Some(j) => Poll::Ready(j),
                    None => Poll::Pending("no Job yet".into()),
                }
            }
        })
        .await;
        let pod = job.spec.clone().unwrap().template.spec.unwrap();
        assert!(
            pod.volumes.iter().flatten().all(|v| v.host_path.is_none()),
            "{:?}",
            pod.volumes
        );
        assert_eq!(pod.node_name, None);
        let url = env_of(&job, "KOK_RESTORE_ARTIFACT_URL").expect("an artifact URL");
        let token = env_of(&job, "KOK_RESTORE_ARTIFACT_TOKEN").expect("an artifact token");

        // The artifact server, asked directly from this node.
        let services: Api<Service> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
        let svc = services.get("kok-operator-artifacts").await.unwrap();
        let addr = format!("{}:8081", svc.spec.unwrap().cluster_ip.unwrap());
        let base = url
            .strip_prefix(&format!("http://{addr}"))
            .unwrap_or_else(|| panic!("{url} is not the artifact Service {addr}"))
            .to_string();
        let path = format!("{base}/{ns}/rs/b1.db");
        let bearer = format!("Bearer {token}");
        let (status, body) = http::get_with(&addr, &path, &[("Authorization", &bearer)])
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(body, bytes, "the served artifact is the one on the volume");
        let (status, _) = http::get_with(&addr, &path, &[]).await.unwrap();
        assert_eq!(status, 403, "no token, no artifact");
        let other = format!("{base}/{ns}/rs/b2.db");
        let (status, _) = http::get_with(&addr, &other, &[("Authorization", &bearer)])
            .await
            .unwrap();
        assert_eq!(status, 403, "the token is for b1.db alone");

        let done = tenant::restore_finished(&restores, "r1").await;
        assert_eq!(
            done.phase,
            Some(RestorePhase::Completed),
            "{:?}",
            done.message
        );

        let cms: Api<ConfigMap> =
            Api::namespaced(tenant::tenant_client(&client, &ns, "rs").await, "default");
        let names: Vec<String> = cms
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|c| c.name_any())
            .collect();
        for i in 0..5 {
            assert!(
                names.contains(&format!("keep-{i}")),
                "keep-{i} missing: {names:?}"
            );
        }
        remove_volumes(&client, &ns, 1).await;
        let _ = std::fs::remove_dir_all(format!("{CLAIM_DIR}/e2e-{ns}"));
    })
    .await;
}
