//! etcd backups end to end, against the operator running in the cluster: a
//! filesystem destination on the node (hack/deploy-operator mounts
//! /var/lib/kok-local/backups into the operator at /var/lib/kok/backups).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kok_crds::{BackupPhase, EtcdBackup, EtcdBackupStatus, TenantCluster};
use kok_e2e::{tenant, wait_for, with_namespace, Poll};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// Where the operator's `/var/lib/kok/backups` is on this node.
fn host_backup_dir() -> PathBuf {
    std::env::var_os("KOK_BACKUP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/kok-local/backups".into())
}

fn with_backup(mut tc: TenantCluster, backup: serde_json::Value) -> TenantCluster {
    tc.spec.backup = Some(serde_json::from_value(backup).expect("valid backup spec"));
    tc
}

/// The status ("True"/"False") of one kstatus condition.
fn condition(s: &EtcdBackupStatus, type_: &str) -> Option<String> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

async fn create_backup(client: &Client, ns: &str, name: &str, tenant: &str) {
    let eb = EtcdBackup {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: kok_crds::EtcdBackupSpec {
            tenant_cluster: tenant.into(),
        },
        status: None,
    };
    Api::<EtcdBackup>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &eb)
        .await
        .expect("creating an EtcdBackup");
}

async fn wait_finished(client: &Client, ns: &str, name: &str) -> EtcdBackup {
    let api: Api<EtcdBackup> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("EtcdBackup {ns}/{name} to finish"),
        Duration::from_secs(180),
        || {
            let api = api.clone();
            async move {
                match api.get_opt(name).await {
                    Ok(Some(b)) => match b.status.as_ref().and_then(|s| s.phase) {
                        Some(p) if p.is_terminal() => Poll::Ready(b),
                        p => Poll::Pending(format!("phase {p:?}")),
                    },
                    Ok(None) => Poll::Pending("not found".into()),
                    Err(e) => Poll::Pending(e.to_string()),
                }
            }
        },
    )
    .await
}

#[tokio::test]
async fn on_demand_backup_is_verified_and_records_the_tenant_state() {
    with_namespace("bk-demand", |client, ns| async move {
        let dest = format!("/var/lib/kok/backups/e2e-{ns}");
        let tc = with_backup(
            tenant::dev_tenant("db", 1),
            json!({"destination": {"filesystem": {"path": dest}}, "verify": true}),
        );
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "db", READY_TIMEOUT).await;

        // Some state in the tenant that the backup must hold.
        let tenant_api = tenant::tenant_client(&client, &ns, "db").await;
        let cms: Api<ConfigMap> = Api::namespaced(tenant_api, "default");
        for i in 0..20 {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("cm-{i}")}, "data": {"i": i.to_string()}}),
            )
            .unwrap();
            cms.create(&PostParams::default(), &cm)
                .await
                .expect("tenant write");
        }

        create_backup(&client, &ns, "manual-1", "db").await;
        let b = wait_finished(&client, &ns, "manual-1").await;
        let s = b.status.unwrap();
        assert_eq!(s.phase, Some(BackupPhase::Succeeded), "{:?}", s.message);
        assert_eq!(s.verified, Some(true), "{:?}", s.message);
        assert!(s.key_count.unwrap() >= 20, "{s:?}");
        assert!(s.revision.unwrap() > 0);
        assert_eq!(s.sha256.as_ref().map(|h| h.len()), Some(64));
        let location = s.location.clone().unwrap();
        assert_eq!(location, format!("file://{dest}/{ns}/db/manual-1.db"));
        let on_host = host_backup_dir()
            .join(format!("e2e-{ns}"))
            .join(&ns)
            .join("db/manual-1.db");
        let meta = std::fs::metadata(&on_host)
            .unwrap_or_else(|e| panic!("{} on the node: {e}", on_host.display()));
        assert_eq!(Some(meta.len()), s.size_bytes);
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "tenant data is private to the operator's user"
        );
        // Which cluster the data is from: this TenantCluster's uid, its etcd's ID.
        let uid = Api::<TenantCluster>::namespaced(client.clone(), &ns)
            .get("db")
            .await
            .unwrap()
            .metadata
            .uid;
        assert_eq!(s.tenant_cluster_uid, uid);
        let cluster_id = s.etcd_cluster_id.clone().expect("etcdClusterID");
        assert!(u64::from_str_radix(&cluster_id, 16).is_ok(), "{cluster_id}");
        assert_eq!(condition(&s, "Ready"), Some("True".into()), "{s:?}");
        assert_eq!(condition(&s, "Reconciling"), Some("False".into()));

        // A paused tenant gets a failed backup with the reason, not a silent skip.
        tenant::patch_spec(&client, &ns, "db", json!({"paused": true})).await;
        create_backup(&client, &ns, "while-paused", "db").await;
        let b = wait_finished(&client, &ns, "while-paused").await;
        let s = b.status.unwrap();
        assert_eq!(s.phase, Some(BackupPhase::Failed));
        assert!(
            s.message.as_deref().unwrap_or_default().contains("paused"),
            "{s:?}"
        );
        assert_eq!(condition(&s, "Stalled"), Some("True".into()), "{s:?}");
        assert_eq!(condition(&s, "Ready"), Some("False".into()));

        // Backups of a missing cluster fail the same way.
        create_backup(&client, &ns, "nobody", "no-such-cluster").await;
        let s = wait_finished(&client, &ns, "nobody").await.status.unwrap();
        assert_eq!(s.phase, Some(BackupPhase::Failed));
        assert!(s.message.unwrap().contains("not found"));

        // deletionPolicy Delete: the backups and their artifacts go with the cluster.
        tenant::patch_spec(
            &client,
            &ns,
            "db",
            json!({"backup": {"deletionPolicy": "Delete"}}),
        )
        .await;
        let tcs: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
        tcs.delete("db", &Default::default()).await.unwrap();
        let backups: Api<EtcdBackup> = Api::namespaced(client.clone(), &ns);
        wait_for(
            "the cluster and its backups to be gone",
            Duration::from_secs(120),
            || {
                let (tcs, backups) = (tcs.clone(), backups.clone());
                async move {
                    let tc_gone = matches!(tcs.get_opt("db").await, Ok(None));
                    let left: Vec<String> = backups
                        .list(&ListParams::default())
                        .await
                        .map(|l| l.items)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|b| b.spec.tenant_cluster == "db")
                        .map(|b| b.name_any())
                        .collect();
                    if tc_gone && left.is_empty() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending(format!("cluster gone: {tc_gone}, backups left: {left:?}"))
                    }
                }
            },
        )
        .await;
        assert!(!on_host.exists(), "{} was deleted", on_host.display());
        // A backup of another cluster is not touched.
        assert!(backups.get_opt("nobody").await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn a_schedule_every_minute_makes_backups_and_retention_trims_them() {
    with_namespace("bk-sched", |client, ns| async move {
        let dest = format!("/var/lib/kok/backups/e2e-{ns}");
        let tc = with_backup(
            tenant::dev_tenant("sched", 1),
            json!({
                "schedule": "* * * * *",
                "retention": {"keepLast": 2},
                "destination": {"filesystem": {"path": dest}},
            }),
        );
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "sched", READY_TIMEOUT).await;

        let api: Api<EtcdBackup> = Api::namespaced(client.clone(), &ns);
        // One taken by hand: retention prunes only the schedule's.
        let by_hand: EtcdBackup = serde_json::from_value(json!({
            "metadata": {"name": "by-hand"}, "spec": {"tenantCluster": "sched"}
        }))
        .unwrap();
        api.create(&Default::default(), &by_hand).await.unwrap();
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let kept = wait_for(
            "three scheduled backups to succeed, with at most two kept",
            Duration::from_secs(300),
            || {
                let api = api.clone();
                let seen = seen.clone();
                async move {
                    let list = match api.list(&ListParams::default()).await {
                        Ok(l) => l.items,
                        Err(e) => return Poll::Pending(e.to_string()),
                    };
                    let succeeded: Vec<String> = list
                        .iter()
                        .filter(|b| {
                            b.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Succeeded)
                        })
                        .map(|b| b.name_any())
                        .filter(|n| n != "by-hand")
                        .collect();
                    let mut seen = seen.lock().unwrap();
                    seen.extend(succeeded.iter().cloned());
                    if seen.len() >= 3 && succeeded.len() <= 2 && !succeeded.is_empty() {
                        Poll::Ready(succeeded)
                    } else {
                        Poll::Pending(format!("seen {seen:?}, now {succeeded:?}"))
                    }
                }
            },
        )
        .await;
        let hand = api
            .get("by-hand")
            .await
            .expect("the backup taken by hand is kept");
        assert_eq!(
            hand.status.and_then(|s| s.phase),
            Some(BackupPhase::Succeeded),
            "the backup taken by hand succeeded and outlived retention"
        );
        // Scheduled names carry their slot; the trimmed ones' artifacts are gone.
        let dir = host_backup_dir()
            .join(format!("e2e-{ns}"))
            .join(&ns)
            .join("sched");
        let seen = seen.lock().unwrap().clone();
        for name in &seen {
            assert!(name.starts_with("sched-"), "{name}");
            let file = dir.join(format!("{name}.db"));
            assert_eq!(file.exists(), kept.contains(name), "{}", file.display());
        }
        let tc = Api::<TenantCluster>::namespaced(client.clone(), &ns)
            .get("sched")
            .await
            .unwrap();
        // Scheduled backups carry the uid of the cluster that made them (the
        // one taken by hand is the user's object, unlabelled).
        for b in api.list(&ListParams::default()).await.unwrap().items {
            if b.name_any() == "by-hand" {
                continue;
            }
            assert_eq!(
                b.labels().get("kok.dev/tenant-uid"),
                tc.metadata.uid.as_ref(),
                "{}",
                b.name_any()
            );
        }
        let status = tc.status.unwrap().backup.expect("schedule status");
        assert!(status.last_schedule_time.is_some());
        assert!(kept.contains(status.last_successful_backup.as_ref().unwrap()));
    })
    .await;
}

/// Two of three members stopped: no quorum, so no consistent snapshot. The
/// backup fails at once with a reason naming quorum and writes nothing.
#[tokio::test]
async fn without_quorum_a_backup_fails_naming_quorum_and_leaves_no_artifact() {
    with_namespace("bk-noquorum", |client, ns| async move {
        let dest = format!("/var/lib/kok/backups/e2e-{ns}");
        let tc = with_backup(
            tenant::dev_tenant("nq", 3),
            json!({"destination": {"filesystem": {"path": dest}}, "verify": true}),
        );
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "nq", READY_TIMEOUT).await;
        kok_e2e::workloads::stop_members(&client, &ns, "nq", &[1, 2]).await;
        // Pods deleted with grace 0 leave the API at once, but the kubelet
        // kills their containers a moment later: until then member 0 still
        // has quorum (a fresh clone once took a backup in that window). Its
        // own /health says when it has lost it.
        let ip = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns)
            .get("nq-etcd-0")
            .await
            .unwrap()
            .status
            .and_then(|s| s.pod_ip)
            .expect("member 0 has an IP");
        wait_for("member 0 to lose quorum", Duration::from_secs(60), || {
            let addr = format!("{ip}:2381");
            async move {
                match kok_e2e::http::get(&addr, "/health").await {
                    Ok((_, body)) if body.contains("\"health\":\"false\"") => Poll::Ready(()),
                    other => Poll::Pending(format!("{other:?}")),
                }
            }
        })
        .await;

        let asked = std::time::Instant::now();
        create_backup(&client, &ns, "no-quorum", "nq").await;
        let s = wait_finished(&client, &ns, "no-quorum")
            .await
            .status
            .unwrap();
        let took = asked.elapsed();
        eprintln!("refused after {took:?}: {:?}", s.message);
        assert_eq!(s.phase, Some(BackupPhase::Failed), "{s:?}");
        assert!(
            took <= Duration::from_secs(30),
            "refused within 30 s, took {took:?}"
        );
        let message = s.message.clone().unwrap_or_default();
        assert!(message.contains("quorum"), "{message}");
        assert_eq!(condition(&s, "Stalled"), Some("True".into()), "{s:?}");
        assert_eq!(s.location, None, "nothing was written: {s:?}");
        let dir = host_backup_dir()
            .join(format!("e2e-{ns}"))
            .join(&ns)
            .join("nq");
        let left: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains("no-quorum"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "no artifact left behind: {left:?}");
        kok_e2e::workloads::restart_members(&client, &ns).await;
    })
    .await;
}
