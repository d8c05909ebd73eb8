//! EtcdRestore end to end: objects written, backed up, deleted, restored.
//! Tenants use persistent etcd on static hostPath PersistentVolumes (the local
//! cluster has no volume provisioner); the PVs are made per test.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, Pod};
use kok_crds::{BackupPhase, EtcdBackup, EtcdRestore, RestorePhase};
use kok_e2e::{tenant, wait_for, with_namespace, workloads, Poll};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(240);

fn pv_dir(ns: &str, i: i32) -> String {
    format!("/var/lib/kok-local/pv/{ns}-{i}")
}

/// One hostPath PV per member, in a StorageClass named after the namespace.
async fn make_volumes(client: &Client, ns: &str, members: i32) {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for i in 0..members {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": format!("{ns}-{i}"), "labels": {"kok.dev/e2e": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": ns,
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": pv_dir(ns, i), "type": "DirectoryOrCreate"},
            }
        }))
        .unwrap();
        pvs.create(&PostParams::default(), &pv)
            .await
            .expect("creating a PV");
    }
}

async fn remove_volumes(client: &Client, ns: &str, members: i32) {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for i in 0..members {
        let _ = pvs
            .delete(&format!("{ns}-{i}"), &DeleteParams::default())
            .await;
        let _ = std::fs::remove_dir_all(pv_dir(ns, i));
    }
}

async fn etcd_hash_at(client: &Client, ns: &str, tc: &str, revision: i64) -> u32 {
    let ca = tenant::secret_text(client, ns, &format!("{tc}-etcd-ca"), "tls.crt").await;
    let cert = tenant::secret_text(
        client,
        ns,
        &format!("{tc}-certs"),
        "etcd-operator-client.crt",
    )
    .await;
    let key = tenant::secret_text(
        client,
        ns,
        &format!("{tc}-certs"),
        "etcd-operator-client.key",
    )
    .await;
    let member = format!("{tc}-etcd-0");
    let ip = workloads::cluster_ip(client, ns, &member).await;
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(ca))
        .identity(etcd_client::Identity::from_pem(cert, key))
        .domain_name(member);
    let options = etcd_client::ConnectOptions::new()
        .with_tls(tls)
        .with_timeout(Duration::from_secs(10));
    let mut etcd = etcd_client::Client::connect([format!("https://{ip}:2379")], Some(options))
        .await
        .expect("connect to the restored etcd");
    etcd.hash_kv(revision).await.expect("HashKV").hash()
}

/// `restart_operator`: delete the operator pods while the restore runs; the
/// restore must resume from the phase recorded in its status.
async fn restore_round_trip(prefix: &str, members: i32, restart_operator: bool) {
    with_namespace(prefix, move |client, ns| async move {
        make_volumes(&client, &ns, members).await;
        let mut tc = tenant::dev_tenant("rs", members);
        tc.spec.etcd.storage =
            serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
        tc.spec.backup = Some(
            serde_json::from_value(json!({
                "destination": {"filesystem": {"path": format!("/var/lib/kok/backups/e2e-{ns}")}}
            }))
            .unwrap(),
        );
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "rs", READY_TIMEOUT).await;

        let cms: Api<ConfigMap> =
            Api::namespaced(tenant::tenant_client(&client, &ns, "rs").await, "default");
        for i in 0..10 {
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
                    s => Poll::Pending(format!("{s:?}")),
                }
            }
        })
        .await;

        for i in 0..10 {
            cms.delete(&format!("keep-{i}"), &DeleteParams::default())
                .await
                .unwrap();
        }
        let left = cms.list(&ListParams::default()).await.unwrap().items;
        assert!(left.iter().all(|c| !c.name_any().starts_with("keep-")));

        let restores: Api<EtcdRestore> = Api::namespaced(client.clone(), &ns);
        let er: EtcdRestore = serde_json::from_value(
            json!({"metadata": {"name": "r1"}, "spec": {"tenantCluster": "rs", "backup": "b1"}}),
        )
        .unwrap();
        restores.create(&PostParams::default(), &er).await.unwrap();
        if restart_operator {
            let seen = wait_for(
                "the restore to start rebuilding members",
                Duration::from_secs(120),
                || {
                    let restores = restores.clone();
                    async move {
                        match restores
                            .get("r1")
                            .await
                            .ok()
                            .and_then(|r| r.status)
                            .and_then(|s| s.phase)
                        {
                            Some(p) if p >= RestorePhase::RestoringEtcd => Poll::Ready(p),
                            p => Poll::Pending(format!("{p:?}")),
                        }
                    }
                },
            )
            .await;
            eprintln!("restarting the operator during {seen:?}");
            let pods: Api<Pod> = Api::namespaced(client.clone(), "kok-system");
            pods.delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels("app.kubernetes.io/name=kok-operator"),
            )
            .await
            .expect("deleting the operator pods");
        }
        let done = wait_for("restore r1 to finish", Duration::from_secs(400), || {
            let restores = restores.clone();
            async move {
                match restores.get("r1").await.ok().and_then(|r| r.status) {
                    Some(s)
                        if matches!(
                            s.phase,
                            Some(RestorePhase::Completed) | Some(RestorePhase::Failed)
                        ) =>
                    {
                        Poll::Ready(s)
                    }
                    s => Poll::Pending(format!("{s:?}")),
                }
            }
        })
        .await;
        assert_eq!(
            done.phase,
            Some(RestorePhase::Completed),
            "{:?}",
            done.message
        );

        // The objects are back, read through the tenant API.
        let tenant_api = tenant::tenant_client(&client, &ns, "rs").await;
        let cms: Api<ConfigMap> = Api::namespaced(tenant_api, "default");
        let names: Vec<String> = cms
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|c| c.name_any())
            .collect();
        for i in 0..10 {
            assert!(
                names.contains(&format!("keep-{i}")),
                "keep-{i} missing: {names:?}"
            );
        }
        // etcd holds exactly the backup's keyspace at the backup's revision.
        let hash = etcd_hash_at(&client, &ns, "rs", b.revision.unwrap()).await;
        assert_eq!(Some(hash), b.kv_hash);
        // Nothing was deleted: every member's previous data is kept aside.
        for i in 0..members {
            let kept = std::fs::read_dir(pv_dir(&ns, i))
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("data.pre-restore-")
                });
            assert!(kept, "member {i} keeps its previous data");
        }
        // The backup itself is untouched.
        let after = backups.get("b1").await.unwrap().status.unwrap();
        assert_eq!(after.sha256, b.sha256);
        assert_eq!(after.phase, Some(BackupPhase::Succeeded));

        // Deleting the tenant keeps its backups (deletionPolicy defaults to Retain).
        let tcs = Api::<kok_crds::TenantCluster>::namespaced(client.clone(), &ns);
        tcs.delete("rs", &DeleteParams::default()).await.unwrap();
        wait_for(
            "the TenantCluster to be gone",
            Duration::from_secs(120),
            || {
                let tcs = tcs.clone();
                async move {
                    match tcs.get_opt("rs").await {
                        Ok(None) => Poll::Ready(()),
                        other => Poll::Pending(format!("{:?}", other.map(|t| t.is_some()))),
                    }
                }
            },
        )
        .await;
        assert!(
            backups.get_opt("b1").await.unwrap().is_some(),
            "the backup outlives its cluster"
        );
        let artifact = format!("/var/lib/kok-local/backups/e2e-{ns}/{ns}/rs/b1.db");
        assert!(
            std::path::Path::new(&artifact).exists(),
            "{artifact} is kept"
        );
        remove_volumes(&client, &ns, members).await;
    })
    .await;
}

#[tokio::test]
async fn restore_of_a_one_member_etcd_brings_deleted_objects_back() {
    restore_round_trip("rs-one", 1, false).await;
}

#[tokio::test]
async fn restore_of_a_three_member_etcd_survives_an_operator_restart() {
    restore_round_trip("rs-three", 3, true).await;
}
