//! EtcdRestore end to end: objects written, backed up, deleted, restored.
//! Tenants use persistent etcd on static hostPath PersistentVolumes (the local
//! cluster has no volume provisioner); the PVs are made per test.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Pod, Secret};
use kok_crds::{
    BackupPhase, EtcdBackup, EtcdBackupStatus, EtcdRestore, RestorePhase, TenantCluster,
    RESTORE_ANNOTATION,
};
use kok_e2e::volumes::{make_volumes, member_dir, pv_dir, remove_volumes};
use kok_e2e::{tenant, wait_for, with_namespace, workloads, Poll};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(240);

async fn etcd_hash_at(client: &Client, ns: &str, tc: &str, revision: i64) -> u32 {
    let mut etcd = tenant_etcd(client, ns, tc).await;
    etcd.hash_kv(revision).await.expect("HashKV").hash()
}

/// The value etcd holds for a Secret of the tenant, as stored (no apiserver).
async fn raw_secret(client: &Client, ns: &str, tc: &str, namespace: &str, name: &str) -> Vec<u8> {
    let mut etcd = tenant_etcd(client, ns, tc).await;
    let key = format!("/registry/secrets/{namespace}/{name}");
    let got = etcd.get(key.as_str(), None).await.expect("etcd get");
    got.kvs()
        .first()
        .unwrap_or_else(|| panic!("{key} is not in etcd"))
        .value()
        .to_vec()
}

/// A Secret written through the tenant API is sealed in etcd: kok's
/// EncryptionConfiguration, not the plain value.
fn assert_sealed(raw: &[u8], plain: &str) {
    assert!(
        raw.starts_with(b"k8s:enc:secretbox:v1:key1:"),
        "not sealed: {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(60)])
    );
    assert!(
        !raw.windows(plain.len()).any(|w| w == plain.as_bytes()),
        "the plain value is in etcd"
    );
}

async fn tenant_etcd(client: &Client, ns: &str, tc: &str) -> etcd_client::Client {
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
    etcd_client::Client::connect([format!("https://{ip}:2379")], Some(options))
        .await
        .expect("connect to the tenant's etcd")
}

/// A Ready TenantCluster `rs` with persistent etcd on this test's volumes and
/// a filesystem backup destination.
/// `encrypted`: artifacts are sealed with a key from Secret `rs-backup-key`.
async fn persistent_tenant(client: &Client, ns: &str, members: i32, encrypted: bool) {
    make_volumes(client, ns, members).await;
    let mut tc = tenant::dev_tenant("rs", members);
    tc.spec.etcd.storage =
        serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
    let mut backup = json!({
        "destination": {"filesystem": {"path": format!("/var/lib/kok/backups/e2e-{ns}")}}
    });
    if encrypted {
        // 32 bytes, base64: what `head -c 32 /dev/urandom | base64` prints.
        let key: Secret = serde_json::from_value(json!({
            "metadata": {"name": "rs-backup-key"},
            "stringData": {"key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &key)
            .await
            .unwrap();
        backup["encryption"] = json!({"keySecret": "rs-backup-key"});
    }
    tc.spec.backup = Some(serde_json::from_value(backup).unwrap());
    tenant::create(client, ns, &tc).await;
    tenant::wait_ready(client, ns, "rs", READY_TIMEOUT).await;
}

/// Creates EtcdBackup `name` of `rs` and waits for it to succeed.
async fn take_backup(client: &Client, ns: &str, name: &str) -> EtcdBackupStatus {
    let backups: Api<EtcdBackup> = Api::namespaced(client.clone(), ns);
    let eb: EtcdBackup = serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": {"tenantCluster": "rs"}}),
    )
    .unwrap();
    backups.create(&PostParams::default(), &eb).await.unwrap();
    wait_for(&format!("backup {name}"), Duration::from_secs(120), || {
        let backups = backups.clone();
        async move {
            match backups.get(name).await.ok().and_then(|b| b.status) {
                Some(s) if s.phase == Some(BackupPhase::Succeeded) => Poll::Ready(s),
                s => Poll::Pending(format!("{s:?}")),
            }
        }
    })
    .await
}

/// Deletes TenantCluster `rs` and waits until it is gone.
async fn delete_tenant(client: &Client, ns: &str) {
    let tcs = Api::<TenantCluster>::namespaced(client.clone(), ns);
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
}

/// `restart_operator`: delete the operator pods while the restore runs; the
/// restore must resume from the phase recorded in its status.
/// `encrypted`: the backup is sealed at rest and the restore Jobs open it.
async fn restore_round_trip(prefix: &str, members: i32, restart_operator: bool, encrypted: bool) {
    with_namespace(prefix, move |client, ns| async move {
        persistent_tenant(&client, &ns, members, encrypted).await;

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
        // A Secret, sealed at rest by default.
        const CANARY: &str = "plain-text-canary-4711";
        let tenant_secrets: Api<Secret> =
            Api::namespaced(tenant::tenant_client(&client, &ns, "rs").await, "default");
        let sealed: Secret = serde_json::from_value(
            json!({"metadata": {"name": "sealed"}, "stringData": {"v": CANARY}}),
        )
        .unwrap();
        tenant_secrets
            .create(&PostParams::default(), &sealed)
            .await
            .expect("tenant Secret");
        assert_sealed(
            &raw_secret(&client, &ns, "rs", "default", "sealed").await,
            CANARY,
        );

        let backups: Api<EtcdBackup> = Api::namespaced(client.clone(), &ns);
        let b = take_backup(&client, &ns, "b1").await;
        assert_eq!(
            b.encryption_key_id.is_some(),
            encrypted,
            "the key id is recorded exactly when the artifact is sealed: {b:?}"
        );
        if encrypted {
            let on_host = std::path::PathBuf::from(
                std::env::var("KOK_BACKUP_DIR")
                    .unwrap_or_else(|_| "/var/lib/kok-local/backups".into()),
            )
            .join(format!("e2e-{ns}/{ns}/rs/b1.db"));
            let head =
                std::fs::read(&on_host).unwrap_or_else(|e| panic!("{}: {e}", on_host.display()));
            assert!(
                head.starts_with(b"KOKAEAD1"),
                "the artifact at rest is sealed"
            );
        }

        for i in 0..10 {
            cms.delete(&format!("keep-{i}"), &DeleteParams::default())
                .await
                .unwrap();
        }
        tenant_secrets
            .delete("sealed", &DeleteParams::default())
            .await
            .unwrap();
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
        let done = tenant::restore_finished(&restores, "r1").await;
        assert_eq!(
            done.phase,
            Some(RestorePhase::Completed),
            "{:?}",
            done.message
        );
        // Its steps are Events on the EtcdRestore (best effort each: one
        // lost under load must not fail the test, none at all does).
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        wait_for(
            "Normal Events on EtcdRestore r1",
            Duration::from_secs(60),
            || async {
                let steps: Vec<String> = events
                    .list(&ListParams::default().fields("involvedObject.name=r1,type=Normal"))
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|e| e.involved_object.kind.as_deref() == Some("EtcdRestore"))
                    .filter_map(|e| e.reason)
                    .collect();
                let phases = [
                    "StoppingControlPlane",
                    "RestoringEtcd",
                    "StartingControlPlane",
                    "Verifying",
                    "Completed",
                ];
                if steps.iter().any(|r| phases.contains(&r.as_str())) {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("{steps:?}"))
                }
            },
        )
        .await;

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
        // The sealed Secret is back, still sealed, and the apiserver reads it
        // with the tenant's key, which outlived nothing: kept like a CA.
        let back =
            Api::<Secret>::namespaced(tenant::tenant_client(&client, &ns, "rs").await, "default")
                .get("sealed")
                .await
                .expect("the sealed Secret is restored");
        assert_eq!(
            back.data.unwrap().get("v").map(|b| b.0.clone()),
            Some(CANARY.as_bytes().to_vec())
        );
        assert_sealed(
            &raw_secret(&client, &ns, "rs", "default", "sealed").await,
            CANARY,
        );
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
        delete_tenant(&client, &ns).await;
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
    restore_round_trip("rs-one", 1, false, false).await;
}

#[tokio::test]
async fn restore_of_an_encrypted_backup_of_three_members_survives_an_operator_restart() {
    restore_round_trip("rs-three", 3, true, true).await;
}

/// Deleting an EtcdRestore midway never leaves the tenant silently stopped:
/// deleted before any member's data was swapped, the tenant runs again on its
/// original data; deleted after, it shows Stalled=True, RestoreAbandoned.
#[tokio::test]
async fn a_deleted_etcd_restore_mid_run_leaves_the_tenant_running_again_or_clearly_failed() {
    with_namespace("rs-del", |client, ns| async move {
        persistent_tenant(&client, &ns, 1, false).await;
        take_backup(&client, &ns, "b1").await;

        let restores: Api<EtcdRestore> = Api::namespaced(client.clone(), &ns);
        let er: EtcdRestore = serde_json::from_value(
            json!({"metadata": {"name": "r-del"}, "spec": {"tenantCluster": "rs", "backup": "b1"}}),
        )
        .unwrap();
        restores.create(&PostParams::default(), &er).await.unwrap();
        let seen = wait_for(
            "the restore to be stopping the control plane or restoring etcd",
            Duration::from_secs(120),
            || {
                let restores = restores.clone();
                async move {
                    let status = restores.get("r-del").await.ok().and_then(|r| r.status);
                    match status.as_ref().and_then(|s| s.phase) {
                        Some(
                            p @ (RestorePhase::StoppingControlPlane | RestorePhase::RestoringEtcd),
                        ) => Poll::Ready(p),
                        Some(p) if p > RestorePhase::RestoringEtcd => {
                            panic!(
                                "the restore ran past RestoringEtcd before it was seen: {status:?}"
                            )
                        }
                        _ => Poll::Pending(format!("{status:?}")),
                    }
                }
            },
        )
        .await;
        eprintln!("deleting the restore during {seen:?}");
        restores
            .delete("r-del", &DeleteParams::default())
            .await
            .expect("deleting the restore");

        // Member Jobs are waited for (at most their 25-minute deadline; in
        // practice seconds), then the tenant restarts or is marked abandoned.
        let tcs: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
        let outcome = wait_for(
            "the tenant Ready without the annotation, or Stalled with RestoreAbandoned",
            Duration::from_secs(600),
            || {
                let tcs = tcs.clone();
                async move {
                    let Ok(tc) = tcs.get("rs").await else {
                        return Poll::Pending("TenantCluster not readable".into());
                    };
                    let current = tc.status.as_ref().and_then(|s| s.observed_generation)
                        == tc.metadata.generation;
                    let annotated = tc.annotations().contains_key(RESTORE_ANNOTATION);
                    let ready = tenant::condition(&tc, "Ready").is_some_and(|c| c.status == "True");
                    let abandoned = tenant::condition(&tc, "Stalled")
                        .is_some_and(|c| c.status == "True" && c.reason == "RestoreAbandoned");
                    if current && ready && !annotated {
                        Poll::Ready("running again")
                    } else if current && abandoned {
                        Poll::Ready("RestoreAbandoned")
                    } else {
                        let conditions: Vec<String> = tc
                            .status
                            .iter()
                            .flat_map(|s| &s.conditions)
                            .map(|c| format!("{}={} ({})", c.type_, c.status, c.reason))
                            .collect();
                        Poll::Pending(format!("annotated: {annotated}; {conditions:?}"))
                    }
                }
            },
        )
        .await;
        eprintln!("after deleting the restore during {seen:?}: {outcome}");
        if outcome == "running again" {
            // It answers, not only reports Ready.
            let api = tenant::tenant_client(&client, &ns, "rs").await;
            let namespaces = Api::<Namespace>::all(api);
            wait_for("the tenant API to answer", READY_TIMEOUT, || {
                let namespaces = namespaces.clone();
                async move {
                    match namespaces.get("default").await {
                        Ok(_) => Poll::Ready(()),
                        Err(e) => Poll::Pending(e.to_string()),
                    }
                }
            })
            .await;
        } else {
            let tc = tcs.get("rs").await.unwrap();
            let stalled = tenant::condition(&tc, "Stalled").unwrap();
            assert!(
                !stalled.message.is_empty() && stalled.message != stalled.reason,
                "a RestoreAbandoned tenant says why: {stalled:?}"
            );
        }
        // The finalizer was released: the restore is gone.
        wait_for("the restore to be gone", Duration::from_secs(60), || {
            let restores = restores.clone();
            async move {
                match restores.get_opt("r-del").await {
                    Ok(None) => Poll::Ready(()),
                    other => Poll::Pending(format!("{:?}", other.map(|r| r.map(|r| r.status)))),
                }
            }
        })
        .await;
        remove_volumes(&client, &ns, 1).await;
    })
    .await;
}

/// A member down (its pod gone, its volume wiped, kept from coming back) with
/// quorum left: the tenant still takes writes, a backup is taken from a
/// healthy member and verified, and a restore from it brings every object
/// back on all three members.
#[tokio::test]
async fn a_backup_taken_with_one_member_down_restores_every_object() {
    with_namespace("rs-degraded", |client, ns| async move {
        make_volumes(&client, &ns, 3).await;
        let mut tc = tenant::dev_tenant("rs", 3);
        tc.spec.etcd.storage =
            serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
        tc.spec.backup = Some(
            serde_json::from_value(json!({
                "destination": {"filesystem": {"path": format!("/var/lib/kok/backups/e2e-{ns}")}},
                "verify": true,
            }))
            .unwrap(),
        );
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "rs", READY_TIMEOUT).await;

        let member_2 = member_dir(&client, &ns, "rs", 2).await;
        workloads::stop_members(&client, &ns, "rs", &[2]).await;
        match std::fs::remove_dir_all(std::path::Path::new(&member_2).join("data")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("wiping member 2: {e}"),
            _ => {}
        }

        // Two of three members: the tenant API serves and is writable.
        let cms: Api<ConfigMap> =
            Api::namespaced(tenant::tenant_client(&client, &ns, "rs").await, "default");
        for i in 0..10 {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("degraded-{i}")}, "data": {"i": i.to_string()}}),
            )
            .unwrap();
            cms.create(&PostParams::default(), &cm)
                .await
                .expect("a write with one member down");
        }
        let b = take_backup(&client, &ns, "while-degraded").await;
        assert_eq!(b.verified, Some(true), "{b:?}");
        assert_eq!(
            (b.healthy_members, b.members),
            (Some(2), Some(3)),
            "the backup records that it was taken with a member down: {b:?}"
        );
        let source = b.source_member.clone().expect("sourceMember");
        assert!(
            source == "rs-etcd-0" || source == "rs-etcd-1",
            "streamed from a healthy member, not {source}"
        );

        for i in 0..10 {
            cms.delete(&format!("degraded-{i}"), &DeleteParams::default())
                .await
                .unwrap();
        }
        workloads::restart_members(&client, &ns).await;
        let restores: Api<EtcdRestore> = Api::namespaced(client.clone(), &ns);
        let er: EtcdRestore = serde_json::from_value(json!({
            "metadata": {"name": "r1"},
            "spec": {"tenantCluster": "rs", "backup": "while-degraded"}
        }))
        .unwrap();
        restores.create(&PostParams::default(), &er).await.unwrap();
        let done = tenant::restore_finished(&restores, "r1").await;
        assert_eq!(
            done.phase,
            Some(RestorePhase::Completed),
            "{:?}",
            done.message
        );
        // All three members again (Ready needs every member available).
        tenant::wait_ready(&client, &ns, "rs", READY_TIMEOUT).await;
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
        for i in 0..10 {
            assert!(
                names.contains(&format!("degraded-{i}")),
                "degraded-{i} missing: {names:?}"
            );
        }
        let hash = etcd_hash_at(&client, &ns, "rs", b.revision.unwrap()).await;
        assert_eq!(Some(hash), b.kv_hash);
        delete_tenant(&client, &ns).await;
        remove_volumes(&client, &ns, 3).await;
    })
    .await;
}
