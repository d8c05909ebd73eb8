//! Upgrade by data migration on real versions: a tenant on one etcd 3.4.23
//! member (Debian bookworm's) moved to three etcd 3.5 members (Debian
//! trixie's) by copying its data into a new etcd, with the operator killed
//! during the copy and during the verification; and a migration rolled back
//! by reverting the spec before the point of no return.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use kok_crds::{MigrationStatus, TenantCluster};
use kok_e2e::volumes::{make_volumes, pv_dir, remove_volumes};
use kok_e2e::{kill_operator, tenant, wait_for, with_namespace, Poll};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

const READY_TIMEOUT: Duration = Duration::from_secs(300);
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);
/// Claims: the source's one member and the target's three.
const VOLUMES: i32 = 4;

/// A one-member tenant on etcd 3.4.23 with `spec.upgrade.strategy: Migrate`.
async fn migrating_tenant(client: &Client, ns: &str) {
    make_volumes(client, ns, VOLUMES).await;
    let mut tc = tenant::dev_tenant("mig", 1);
    tc.spec.etcd.storage =
        serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
    tc.spec.backup = Some(
        serde_json::from_value(json!({
            "destination": {"filesystem": {"path": format!("/var/lib/kok/backups/e2e-{ns}")}}
        }))
        .unwrap(),
    );
    tc.spec.upgrade = serde_json::from_value(json!({"strategy": "Migrate"})).unwrap();
    tenant::create(client, ns, &tc).await;
    let ready = tenant::wait_ready(client, ns, "mig", READY_TIMEOUT).await;
    let status = ready.status.unwrap();
    assert_eq!(status.etcd_version.as_deref(), Some("3.4.23"), "{status:?}");
}

/// The admin kubeconfig as users hold it (a file), from the Secret.
async fn admin_kubeconfig(client: &Client, ns: &str) -> tempfile::NamedTempFile {
    let text = tenant::secret_text(client, ns, "mig-kubeconfig", "value").await;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = std::process::Command::new("kubectl");
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--request-timeout=20s")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Objects a user writes with kubectl: a namespace, ConfigMaps, Secrets.
fn write_objects(kubeconfig: &std::path::Path) {
    let mut docs =
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}})];
    for i in 0..40 {
        docs.push(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("cm-{i:02}"), "namespace": "app", "labels": {"i": i.to_string()}},
            "data": {"value": format!("{}", "x".repeat(i * 10)), "i": i.to_string()}
        }));
    }
    for i in 0..10 {
        docs.push(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("secret-{i}"), "namespace": "app"},
            "stringData": {"token": format!("t-{i}")}
        }));
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    kubectl(kubeconfig, &["apply", "-f", "-"], Some(&list.to_string()));
}

/// Sorted `kind/name -> sha256 of data and labels` of the user's objects.
fn dump(kubeconfig: &std::path::Path) -> BTreeMap<String, String> {
    let out = kubectl(
        kubeconfig,
        &["get", "configmaps,secrets", "-n", "app", "-o", "json"],
        None,
    );
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| {
            // Service-account token Secrets are the cluster's, not the user's.
            o["type"] != "kubernetes.io/service-account-token"
                && o["metadata"]["name"] != "kube-root-ca.crt"
        })
        .map(|o| {
            let key = format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            );
            let content = json!({"data": o["data"], "labels": o["metadata"]["labels"]});
            (
                key,
                format!("{:x}", Sha256::digest(content.to_string().as_bytes())),
            )
        })
        .collect()
}

async fn migration(client: &Client, ns: &str) -> Option<MigrationStatus> {
    Api::<TenantCluster>::namespaced(client.clone(), ns)
        .get("mig")
        .await
        .ok()
        .and_then(|t| t.status)
        .and_then(|s| s.migration)
}

/// Waits (polling fast: phases can be short) until the migration is in `phase`.
async fn wait_phase(client: &Client, ns: &str, phase: &str, timeout: Duration) -> MigrationStatus {
    let start = Instant::now();
    loop {
        let m = migration(client, ns).await;
        if let Some(m) = m.as_ref().filter(|m| m.phase == phase) {
            return m.clone();
        }
        let tc = Api::<TenantCluster>::namespaced(client.clone(), ns)
            .get("mig")
            .await;
        let conditions = tc
            .ok()
            .and_then(|t| t.status)
            .map(|s| s.conditions)
            .unwrap_or_default();
        let stalled = conditions
            .iter()
            .find(|c| c.type_ == "Stalled" && c.status == "True");
        if let Some(c) = stalled {
            panic!("the tenant stalled waiting for {phase}: {}", c.message);
        }
        if start.elapsed() > timeout {
            panic!("timed out waiting for the migration to reach {phase}; last seen {m:?}; conditions {conditions:?}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn wait_finished(client: &Client, ns: &str, phase: &str) -> MigrationStatus {
    wait_for(
        &format!("the migration to be {phase}"),
        MIGRATION_TIMEOUT,
        || {
            let client = client.clone();
            let ns = ns.to_string();
            async move {
                match migration(&client, &ns).await {
                    Some(m) if m.phase == phase => Poll::Ready(m),
                    other => Poll::Pending(format!("{:?}", other.map(|m| (m.phase, m.message)))),
                }
            }
        },
    )
    .await
}

async fn pod_uid(client: &Client, ns: &str, name: &str) -> Option<String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|p| p.metadata.uid)
}

async fn delete_tenant(client: &Client, ns: &str) {
    let tcs = Api::<TenantCluster>::namespaced(client.clone(), ns);
    tcs.delete("mig", &DeleteParams::default()).await.unwrap();
    wait_for(
        "the TenantCluster to be gone",
        Duration::from_secs(180),
        || {
            let tcs = tcs.clone();
            async move {
                match tcs.get_opt("mig").await {
                    Ok(None) => Poll::Ready(()),
                    other => Poll::Pending(format!("{:?}", other.map(|t| t.is_some()))),
                }
            }
        },
    )
    .await;
}

#[tokio::test]
async fn one_etcd_3_4_member_migrates_to_three_3_5_members_with_every_object_identical() {
    let target = std::env::var("KOK_ETCD35_TAG").expect(
        "KOK_ETCD35_TAG names the local etcd 3.5 image (eval \"$(hack/local-cluster env)\")",
    );
    with_namespace("mig", move |client, ns| async move {
        migrating_tenant(&client, &ns).await;
        let kubeconfig = admin_kubeconfig(&client, &ns).await;
        write_objects(kubeconfig.path());
        let before = dump(kubeconfig.path());
        assert_eq!(before.len(), 50, "{before:?}");

        let started = Instant::now();
        tenant::patch_spec(&client, &ns, "mig", json!({"etcd": {"version": target, "replicas": 3}})).await;
        // The operator is killed during the copy and during the verification:
        // each phase is on record before it acts, so the next leader resumes it.
        wait_phase(&client, &ns, "Copying", Duration::from_secs(150)).await;
        kill_operator(&client).await;
        wait_phase(&client, &ns, "Verifying", Duration::from_secs(300)).await;
        kill_operator(&client).await;
        let done = wait_finished(&client, &ns, "Completed").await;
        let took = started.elapsed();
        println!(
            "migration 3.4.23 x1 -> {target} x3: {:.1} s in all; writes frozen {:.1} s; {} bytes copied; {} keys in {} prefixes verified; {} objects rewritten first",
            took.as_secs_f64(),
            done.downtime_seconds.unwrap_or(-1.0),
            done.bytes_copied.unwrap_or(0),
            done.keys_verified.unwrap_or(0),
            done.prefixes_verified.unwrap_or(0),
            done.objects_rewritten.unwrap_or(0),
        );
        assert!(done.first_write_time.is_some(), "{done:?}");
        // The point of no return was recorded before the target could take a write.
        let (cut, written) = (done.cut_over_time.clone(), done.first_write_time.clone());
        assert!(cut.is_some() && cut <= written, "{done:?}");
        assert!(done.downtime_seconds.is_some_and(|d| d > 0.0), "{done:?}");
        assert!(done.keys_verified.is_some_and(|k| k > 50), "{done:?}");
        assert!(done.objects_rewritten.is_some_and(|n| n >= 50), "{done:?}");
        assert!(done.snapshot_revision.is_some() && done.bytes_copied.is_some(), "{done:?}");
        assert_eq!(done.target.etcd_generation, 1);

        let tc = tenant::wait_ready(&client, &ns, "mig", READY_TIMEOUT).await;
        let s = tc.status.unwrap();
        assert_eq!(s.etcd_generation, Some(1));
        assert_eq!(s.etcd_replicas, Some(3));
        assert_eq!(s.etcd_version.as_deref(), Some(target.as_str()));

        // Every object is identical, read with the kubeconfig from before.
        assert_eq!(dump(kubeconfig.path()), before);

        // Three 3.5 members serve; the apiservers dial only them.
        for i in 0..3 {
            let pod = Api::<Pod>::namespaced(client.clone(), &ns)
                .get(&format!("mig-etcd-g1-{i}"))
                .await
                .unwrap();
            let image = pod.spec.unwrap().containers[0].image.clone().unwrap();
            assert!(image.ends_with(&format!(":{target}")), "{image}");
        }
        let apiserver = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get("mig-apiserver")
            .await
            .unwrap();
        let args = apiserver.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        let servers = args
            .iter()
            .find_map(|a| a.strip_prefix("--etcd-servers="))
            .unwrap();
        assert_eq!(
            servers,
            "https://mig-etcd-g1-0:2379,https://mig-etcd-g1-1:2379,https://mig-etcd-g1-2:2379"
        );

        // The source is kept, stopped, with its data.
        let source = Api::<StatefulSet>::namespaced(client.clone(), &ns)
            .get("mig-etcd")
            .await
            .expect("the source StatefulSet is kept");
        assert_eq!(source.spec.unwrap().replicas, Some(0));
        let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get("data-mig-etcd-0")
            .await
            .expect("the source claim is kept");
        let volume = claim.spec.unwrap().volume_name.unwrap();
        let dir = (0..VOLUMES)
            .map(|i| pv_dir(&ns, i))
            .find(|d| volume.ends_with(&d.rsplit('/').next().unwrap().to_string()))
            .unwrap_or_else(|| panic!("no PV dir for {volume}"));
        let db = std::path::Path::new(&dir).join("data/member/snap/db");
        assert!(db.exists(), "the source's etcd data is kept at {}", db.display());
        assert!(done.kept.iter().any(|k| k.contains("data-mig-etcd-0")), "{done:?}");

        // A write through the tenant API after the cut over lands.
        let tenant_api = tenant::tenant_client(&client, &ns, "mig").await;
        let cms: Api<ConfigMap> = Api::namespaced(tenant_api, "kube-system");
        let marker = cms.get("kok-migration").await.expect("the first write is there");
        assert!(marker.data.unwrap()["to"].contains("generation 1"));

        delete_tenant(&client, &ns).await;
        remove_volumes(&client, &ns, VOLUMES).await;
    })
    .await;
}

#[tokio::test]
async fn a_migration_reverted_before_the_point_of_no_return_gives_the_source_back_untouched() {
    let target = std::env::var("KOK_ETCD35_TAG").expect("KOK_ETCD35_TAG");
    with_namespace("mig-rb", move |client, ns| async move {
        migrating_tenant(&client, &ns).await;
        let kubeconfig = admin_kubeconfig(&client, &ns).await;
        write_objects(kubeconfig.path());
        let before = dump(kubeconfig.path());
        let source_pod = pod_uid(&client, &ns, "mig-etcd-0").await;

        tenant::patch_spec(
            &client,
            &ns,
            "mig",
            json!({"etcd": {"version": target, "replicas": 3}}),
        )
        .await;
        // Reverted while writes are frozen and the target is being built.
        wait_phase(&client, &ns, "Verifying", Duration::from_secs(300)).await;
        tenant::patch_spec(
            &client,
            &ns,
            "mig",
            json!({"etcd": {"version": "3.4.23", "replicas": 1}}),
        )
        .await;
        let rolled = wait_finished(&client, &ns, "RolledBack").await;
        assert!(
            rolled.first_write_time.is_none() && rolled.cut_over_time.is_none(),
            "{rolled:?}"
        );

        let tc = tenant::wait_ready(&client, &ns, "mig", READY_TIMEOUT).await;
        let s = tc.status.unwrap();
        assert_eq!(s.etcd_generation.unwrap_or(0), 0);
        assert_eq!(s.etcd_version.as_deref(), Some("3.4.23"));
        // The same source member, never restarted, with the same objects.
        assert_eq!(pod_uid(&client, &ns, "mig-etcd-0").await, source_pod);
        assert_eq!(dump(kubeconfig.path()), before);
        // What the migration created is gone.
        let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns);
        assert!(sts.get_opt("mig-etcd-g1").await.unwrap().is_none());
        let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let names: Vec<String> = claims.iter().map(|c| c.name_any()).collect();
        assert_eq!(
            names,
            ["data-mig-etcd-0"],
            "only the source's claim is left"
        );
        // The admin kubeconfig Secret was never replaced.
        let _: Secret = Api::namespaced(client.clone(), &ns)
            .get("mig-kubeconfig")
            .await
            .unwrap();

        delete_tenant(&client, &ns).await;
        remove_volumes(&client, &ns, VOLUMES).await;
    })
    .await;
}
