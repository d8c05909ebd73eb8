//! In-place upgrades on real versions: a 3-member tenant on etcd 3.4.23 (the
//! Debian bookworm build) moved to 3.5 (Debian trixie's build) member by
//! member, under a steady client load through the tenant API, with the
//! operator killed in the middle of the roll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kok_crds::{BackupPhase, EtcdBackup, TenantCluster, TenantClusterStatus};
use kok_e2e::load::{objects_present, start_load};
use kok_e2e::volumes::{make_volumes, remove_volumes};
use kok_e2e::{kill_operator, tenant, wait_for, with_namespace, Poll};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// An etcd roll of 3 members: 4 apiserver rolls (off each member, then back
/// to all) and 3 member replacements, on a node that runs other tests too.
const ETCD_ROLL_TIMEOUT: Duration = Duration::from_secs(600);
/// Ready etcd members of `tenant` whose pod runs the image tag `tag`.
async fn members_on(client: &Client, ns: &str, tenant: &str, tag: &str) -> usize {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "kok.dev/tenant-cluster={tenant},kok.dev/component=etcd"
    ));
    let suffix = format!(":{tag}");
    pods.list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .filter(|p| {
            let spec_ok = p.spec.as_ref().is_some_and(|s| {
                s.containers
                    .iter()
                    .any(|c| c.image.as_deref().is_some_and(|i| i.ends_with(&suffix)))
            });
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            spec_ok && ready
        })
        .count()
}

/// Waits until `status.etcdClusterVersion` of `up` is `version`.
/// What the drain watch saw: the members it saw stop, and every apiserver
/// pod that still dialled a member at that moment.
#[derive(Debug, Default)]
struct DrainWatch {
    stopped: Vec<String>,
    violations: Vec<String>,
}

/// Polls the tenant's pods every 250 ms: when an etcd member's pod is
/// terminating, gone or replaced (a new uid), no apiserver pod may have it in
/// its `--etcd-servers`. The apiservers take tens of seconds to roll, the new
/// member seconds to start, so a poll this frequent sees every stop.
async fn start_drain_watch(
    client: Client,
    ns: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<DrainWatch> {
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let uid_of = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
    let mut first_uid = Vec::new();
    for m in 0..3 {
        let pod = pods.get(&format!("up-etcd-{m}")).await.unwrap();
        first_uid.push(uid_of(&pod));
    }
    tokio::spawn(async move {
        let mut seen = DrainWatch::default();
        while !stop.load(Ordering::Relaxed) {
            for (m, uid) in first_uid.iter().enumerate() {
                let member = format!("up-etcd-{m}");
                if seen.stopped.contains(&member) {
                    continue;
                }
                let Ok(pod) = pods.get_opt(&member).await else {
                    continue;
                };
                let stopping = match &pod {
                    None => true,
                    Some(p) => uid_of(p) != *uid || p.metadata.deletion_timestamp.is_some(),
                };
                if !stopping {
                    continue;
                }
                let url = format!("https://{member}:2379");
                let lp = ListParams::default()
                    .labels("kok.dev/tenant-cluster=up,kok.dev/component=kube-apiserver");
                let Ok(apiservers) = pods.list(&lp).await else {
                    continue;
                };
                for a in apiservers.items {
                    let dials = a
                        .spec
                        .iter()
                        .flat_map(|s| s.containers.iter())
                        .flat_map(|c| c.args.iter().flatten())
                        .filter_map(|arg| arg.strip_prefix("--etcd-servers="))
                        .any(|servers| servers.split(',').any(|u| u == url));
                    if dials {
                        seen.violations.push(format!(
                            "{} dials {member}",
                            a.metadata.name.unwrap_or_default()
                        ));
                    }
                }
                seen.stopped.push(member);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        seen
    })
}

/// The `--etcd-servers` the apiserver Deployment renders.
async fn apiserver_etcd_servers(client: &Client, ns: &str) -> String {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get("up-apiserver")
        .await
        .unwrap();
    d.spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.args)
        .unwrap_or_default()
        .into_iter()
        .find_map(|a| a.strip_prefix("--etcd-servers=").map(str::to_string))
        .expect("the apiserver has --etcd-servers")
}

async fn cluster_version_recorded(client: &Client, ns: &str, version: &str) -> TenantClusterStatus {
    let api: Api<TenantCluster> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("etcd cluster version {version} in status"),
        Duration::from_secs(60),
        || async {
            let s = api.get("up").await.unwrap().status.unwrap_or_default();
            match s.etcd_cluster_version.as_deref() {
                Some(v) if v == version => Poll::Ready(s),
                other => Poll::Pending(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test]
async fn etcd_3_4_to_3_5_member_by_member_under_load_survives_an_operator_kill() {
    let target = std::env::var("KOK_ETCD35_TAG").expect(
        "KOK_ETCD35_TAG names the local etcd 3.5 image (eval \"$(hack/local-cluster env)\")",
    );
    with_namespace("up-etcd", move |client, ns| async move {
        make_volumes(&client, &ns, 3).await;
        let mut tc = tenant::dev_tenant("up", 3);
        tc.spec.etcd.storage =
            serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
        // A backup destination: the preflight takes a backup before the first step.
        tc.spec.backup = Some(
            serde_json::from_value(json!({
                "destination": {"filesystem": {"path": format!("/var/lib/kok/backups/e2e-{ns}")}}
            }))
            .unwrap(),
        );
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "up", READY_TIMEOUT).await;
        let before = cluster_version_recorded(&client, &ns, "3.4").await;
        assert_eq!(before.etcd_version.as_deref(), Some("3.4.23"), "{before:?}");

        let stop = Arc::new(AtomicBool::new(false));
        let tenant_api = tenant::tenant_client(&client, &ns, "up").await;
        let (load_task, load) = start_load(tenant_api.clone(), stop.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;

        let stop_watch = Arc::new(AtomicBool::new(false));
        let drain_watch = start_drain_watch(client.clone(), ns.clone(), stop_watch.clone()).await;
        let started = Instant::now();
        tenant::patch_spec(&client, &ns, "up", json!({"etcd": {"version": target}})).await;
        let rolling = wait_for("the upgrade to pass its preflight", Duration::from_secs(90), || {
            let api: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
            async move {
                let tc = api.get("up").await.unwrap();
                match tc.status.as_ref().and_then(|s| s.upgrade.clone()) {
                    Some(u) if u.phase == "RollingEtcd" => Poll::Ready(u),
                    other => Poll::Pending(format!("{other:?}")),
                }
            }
        })
        .await;
        assert_eq!(rolling.from, "v1.20.2 (etcd 3.4.23)");
        assert_eq!(rolling.to, format!("v1.20.2 (etcd {target})"));
        // The preflight backup succeeded before anything was rolled.
        assert!(rolling.preflight_passed, "{rolling:?}");
        let backup = rolling.preflight_backup.clone().expect("a preflight backup");
        let eb = Api::<EtcdBackup>::namespaced(client.clone(), &ns).get(&backup).await.unwrap();
        assert_eq!(
            eb.status.and_then(|s| s.phase),
            Some(BackupPhase::Succeeded),
            "the backup before the upgrade"
        );

        // Kill the operator once the first member was replaced: the new
        // leader must go on from the pods' revisions.
        wait_for("a first member on the new template", Duration::from_secs(300), || {
            let client = client.clone();
            let ns = ns.clone();
            let target = target.clone();
            async move {
                match members_on(&client, &ns, "up", &target).await {
                    n if n >= 1 => Poll::Ready(()),
                    n => Poll::Pending(format!("{n} members on {target}")),
                }
            }
        })
        .await;
        kill_operator(&client).await;

        let done = wait_for("the upgrade to complete", ETCD_ROLL_TIMEOUT, || {
            let api: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
            async move {
                let tc = api.get("up").await.unwrap();
                let s = tc.status.clone().unwrap_or_default();
                match &s.upgrade {
                    Some(u) if u.phase == "Completed" => Poll::Ready(s),
                    other => Poll::Pending(format!(
                        "upgrade {other:?}; etcd {:?}",
                        s.conditions.iter().find(|c| c.type_ == "EtcdReady").map(|c| &c.message)
                    )),
                }
            }
        })
        .await;
        let took = started.elapsed();
        assert_eq!(done.etcd_version.as_deref(), Some(target.as_str()));
        // Each member was stopped only after the apiservers had left it, and
        // they dial every member again at the end.
        assert_eq!(done.etcd_drained_member, None, "{done:?}");
        stop_watch.store(true, Ordering::Relaxed);
        let watch = drain_watch.await.unwrap();
        assert_eq!(
            watch.stopped.len(),
            3,
            "the watch saw these members stop: {:?}",
            watch.stopped
        );
        assert!(
            watch.violations.is_empty(),
            "members stopped while apiservers dialled them: {:?}",
            watch.violations
        );
        let servers = apiserver_etcd_servers(&client, &ns).await;
        assert_eq!(servers.split(',').count(), 3, "{servers}");
        // The cluster version moved: the point of no return is recorded.
        cluster_version_recorded(&client, &ns, "3.5").await;
        let ready = tenant::wait_ready(&client, &ns, "up", READY_TIMEOUT).await;
        assert!(ready.status.unwrap().upgrade.unwrap().completion_time.is_some());
        assert_eq!(members_on(&client, &ns, "up", &target).await, 3);

        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        load_task.await.unwrap();
        let (writes, reads, worst, failures, retried) = {
            let l = load.lock().unwrap();
            (l.writes, l.reads, l.worst, l.failures.clone(), l.retried.clone())
        };
        println!(
            "etcd 3.4.23 -> {target}, 3 members: {:.1} s; load {writes} writes + {reads} reads, {} failed, {} sent again on a closed connection; worst request {:.0} ms",
            took.as_secs_f64(),
            failures.len(),
            retried.len(),
            worst.as_secs_f64() * 1000.0
        );
        assert!(writes > 50, "the load barely ran: {writes} writes");
        assert!(failures.is_empty(), "requests failed during the upgrade: {failures:?}");
        // The race happens at most once per apiserver stopped: 4 rolls of 3.
        assert!(retried.len() <= 12, "closed connections: {retried:?}");

        // Every object written during the upgrade is there afterwards.
        let present = objects_present(tenant_api).await;
        assert_eq!(present, writes, "objects lost in the upgrade");

        Api::<TenantCluster>::namespaced(client.clone(), &ns)
            .delete("up", &DeleteParams::default())
            .await
            .unwrap();
        remove_volumes(&client, &ns, 3).await;
    })
    .await;
}

/// The image tag of a Deployment's first container, and whether every pod
/// runs that template and is available (no old pod left).
async fn deployment_state(client: &Client, ns: &str, name: &str) -> Option<(String, bool)> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    let tag = d
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .as_ref()?
        .rsplit(':')
        .next()?
        .to_string();
    let want = d.spec.as_ref()?.replicas.unwrap_or(1);
    let s = d.status.clone().unwrap_or_default();
    let done = s.observed_generation >= d.metadata.generation
        && s.updated_replicas == Some(want)
        && s.replicas == Some(want)
        && s.available_replicas == Some(want);
    Some((tag, done))
}

/// A Kubernetes "patch" upgrade on 3 apiservers: the same v1.20.2 build under
/// the tag v1.20.3 (the only Kubernetes this machine can build is v1.20.2), so
/// this proves the rollout machinery and its order, not a real patch release.
#[tokio::test]
async fn kubernetes_patch_upgrade_rolls_apiservers_before_controllers_under_load() {
    let target = std::env::var("KOK_KUBE_PATCH_TAG")
        .expect("KOK_KUBE_PATCH_TAG names the second tag of the local build (eval \"$(hack/local-cluster env)\")");
    with_namespace("up-kube", move |client, ns| async move {
        let mut tc = tenant::dev_tenant("kp", 1);
        tc.spec.control_plane.apiserver.replicas = 3;
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "kp", READY_TIMEOUT).await;

        let stop = Arc::new(AtomicBool::new(false));
        let tenant_api = tenant::tenant_client(&client, &ns, "kp").await;
        let (load_task, load) = start_load(tenant_api.clone(), stop.clone());
        // Watches the order: the controllers must not move before every
        // apiserver runs the new version.
        let order = {
            let (client, ns, target, stop) = (client.clone(), ns.clone(), target.clone(), stop.clone());
            tokio::spawn(async move {
                let mut violations = Vec::new();
                let mut polls = 0usize;
                while !stop.load(Ordering::Relaxed) && polls < 3000 {
                    polls += 1;
                    let api = deployment_state(&client, &ns, "kp-apiserver").await;
                    for c in ["kp-controller-manager", "kp-scheduler"] {
                        if let (Some((ctag, _)), Some((atag, adone))) =
                            (deployment_state(&client, &ns, c).await, api.clone())
                        {
                            if ctag == target && !(atag == target && adone) {
                                violations.push(format!("{c} on {ctag} while the apiservers were {atag} (rolled out: {adone})"));
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                violations
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;

        let started = Instant::now();
        tenant::patch_spec(&client, &ns, "kp", json!({"version": target})).await;
        wait_for("a first apiserver on the new version", Duration::from_secs(120), || {
            let (client, ns, target) = (client.clone(), ns.clone(), target.clone());
            async move {
                let d = Api::<Deployment>::namespaced(client.clone(), &ns)
                    .get("kp-apiserver")
                    .await
                    .unwrap();
                let tag_ok = deployment_state(&client, &ns, "kp-apiserver")
                    .await
                    .is_some_and(|(t, _)| t == target);
                match d.status.and_then(|s| s.updated_replicas) {
                    Some(n) if tag_ok && n >= 1 => Poll::Ready(()),
                    n => Poll::Pending(format!("updated {n:?}, template on target: {tag_ok}")),
                }
            }
        })
        .await;
        kill_operator(&client).await;

        let done = wait_for("the upgrade to complete", READY_TIMEOUT, || {
            let api: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
            async move {
                let s = api.get("kp").await.unwrap().status.unwrap_or_default();
                match &s.upgrade {
                    Some(u) if u.phase == "Completed" => Poll::Ready(s),
                    other => Poll::Pending(format!("{other:?}")),
                }
            }
        })
        .await;
        let took = started.elapsed();
        assert_eq!(done.version.as_deref(), Some(target.as_str()));
        let record = done.upgrade.clone().unwrap();
        assert_eq!(
            record.preflight.as_deref(),
            Some("backup skipped: no spec.backup destination to write it to"),
            "{record:?}"
        );
        tenant::wait_ready(&client, &ns, "kp", READY_TIMEOUT).await;
        for c in ["kp-apiserver", "kp-controller-manager", "kp-scheduler"] {
            assert_eq!(
                deployment_state(&client, &ns, c).await,
                Some((target.clone(), true)),
                "{c} rolled out on {target}"
            );
        }

        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        load_task.await.unwrap();
        let violations = order.await.unwrap();
        let (writes, reads, worst, failures, retried) = {
            let l = load.lock().unwrap();
            (l.writes, l.reads, l.worst, l.failures.clone(), l.retried.clone())
        };
        println!(
            "kubernetes v1.20.2 -> {target}, 3 apiservers: {:.1} s; load {writes} writes + {reads} reads, {} failed, {} sent again on a closed connection; worst request {:.0} ms",
            took.as_secs_f64(),
            failures.len(),
            retried.len(),
            worst.as_secs_f64() * 1000.0
        );
        assert!(violations.is_empty(), "skew order broken: {violations:?}");
        assert!(writes > 50, "the load barely ran: {writes} writes");
        assert!(failures.is_empty(), "requests failed during the upgrade: {failures:?}");
        // The race happens at most once per apiserver stopped.
        assert!(retried.len() <= 3, "closed connections: {retried:?}");
    })
    .await;
}
