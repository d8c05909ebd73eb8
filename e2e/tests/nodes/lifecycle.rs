//! A worker node through the control plane's lifecycle: one lab node
//! (`hack/tenant-node`) joins a tenant with 3 etcd members on persistent
//! volumes and a backup destination, and runs one pod. Then, in order:
//! 1. the apiservers roll v1.20.2 -> v1.20.3 (a patch upgrade; the local
//!    v1.20.3 images are the same build under another tag),
//! 2. an etcd member loses its volume and kok replaces it,
//! 3. an EtcdRestore brings etcd back to a backup taken after the pod ran.
//!
//! After each, the Node is still registered and Ready, its kubelet renews
//! its Lease against the control plane as it now is (after the restore it
//! talks to the restored etcd), and the pod is the very same container on the
//! same node: same pod name, same containerID, restartCount 0, not deleted.
//! The control plane lives in the management cluster, so none of it is
//! allowed to disturb the workloads on the tenant's nodes.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kok_crds::{BackupPhase, EtcdBackup, EtcdRestore, RestorePhase, TenantCluster};
use kok_e2e::nodes::{join_node, node_name, nodes_ready, request_join, LabNodes};
use kok_e2e::volumes::{make_volumes, remove_volumes};
use kok_e2e::workloads::describe_pod;
use kok_e2e::{tenant, wait_for, with_namespace, workloads, Poll};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the node and its pod may take to show they came through a phase.
const NODE_TIMEOUT: Duration = Duration::from_secs(120);
/// The TenantCluster.
const TC: &str = "life";
/// 3 members' volumes, the replacement claim's, and the one the replaced
/// member finally starts on (as in heal.rs's member-volume-lost test).
const VOLUMES: i32 = 5;
/// The member that loses its volume.
const LOST_MEMBER: i32 = 1;
const BACKUP: &str = "life-with-pod";
const RESTORE: &str = "life-restore";

/// 3 persistent etcd members, 2 apiservers (a rolling upgrade keeps one
/// serving), a backup destination, and a kube-proxy that leaves the conntrack
/// table alone (a lab node is a network namespace, where it cannot be set).
fn lifecycle_tenant(ns: &str) -> TenantCluster {
    let mut tc = tenant::dev_tenant(TC, 3);
    tc.spec.etcd.storage =
        serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
    tc.spec.backup = Some(
        serde_json::from_value(json!({
            "destination": {"filesystem": {"path": format!("/var/lib/kok/backups/e2e-{ns}")}}
        }))
        .unwrap(),
    );
    tc.spec.control_plane.apiserver.replicas = 2;
    tc.spec.addons.kube_proxy.conntrack_max_per_core = Some(0);
    tc
}

/// One replica that does nothing for a long time: any restart shows.
async fn create_steady_deployment(tenant_api: &Client) {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "steady"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "steady"}},
            "template": {
                "metadata": {"labels": {"app": "steady"}},
                "spec": {"containers": [{
                    "name": "sleep",
                    "image": kok_e2e::image("busybox:1.35"),
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "100000"],
                }]}
            }
        }
    }))
    .expect("valid Deployment");
    Api::<Deployment>::namespaced(tenant_api.clone(), "default")
        .create(&PostParams::default(), &d)
        .await
        .expect("creating Deployment default/steady in the tenant");
}

/// What identifies the running container of a pod.
#[derive(Debug, Clone, PartialEq)]
struct RunningPod {
    name: String,
    node: String,
    container_id: String,
    restart_count: i32,
    being_deleted: bool,
}

fn running_pod(p: &Pod) -> Option<RunningPod> {
    let c = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    c.state.as_ref()?.running.as_ref()?;
    Some(RunningPod {
        name: p.metadata.name.clone()?,
        node: p.spec.as_ref()?.node_name.clone()?,
        container_id: c.container_id.clone()?,
        restart_count: c.restart_count,
        being_deleted: p.metadata.deletion_timestamp.is_some(),
    })
}

/// Every pod of the Deployment, once each has a running container.
async fn steady_pods(tenant_api: &Client) -> Poll<Vec<RunningPod>> {
    let pods: Api<Pod> = Api::namespaced(tenant_api.clone(), "default");
    let listed = match pods.list(&ListParams::default().labels("app=steady")).await {
        Ok(l) => l.items,
        Err(e) => return Poll::Pending(format!("list failed: {e}")),
    };
    if listed.is_empty() {
        return Poll::Pending("no steady pod".into());
    }
    let running: Vec<Option<RunningPod>> = listed.iter().map(running_pod).collect();
    if running.iter().all(Option::is_some) {
        Poll::Ready(running.into_iter().flatten().collect())
    } else {
        Poll::Pending(format!(
            "not every pod running: {:?}",
            listed.iter().map(describe_pod).collect::<Vec<_>>()
        ))
    }
}

/// The one pod of the Deployment is still `before`: same name, node and
/// container, never restarted, not being replaced.
async fn assert_same_pod(tenant_api: &Client, before: &RunningPod, after_what: &str) {
    let seen = wait_for(
        &format!("the steady pod running after {after_what}"),
        NODE_TIMEOUT,
        || steady_pods(tenant_api),
    )
    .await;
    assert_eq!(
        seen,
        vec![before.clone()],
        "after {after_what} the pod must be the same container, never restarted"
    );
}

/// The node's Lease renewal time, once readable.
async fn lease_renew_time(leases: &Api<Lease>, node: &str, after_what: &str) -> MicroTime {
    wait_for(
        &format!("node {node}'s Lease readable after {after_what}"),
        NODE_TIMEOUT,
        || async {
            match leases.get_opt(node).await {
                Ok(Some(l)) => match l.spec.and_then(|s| s.renew_time) {
                    Some(t) => Poll::Ready(t),
                    None => Poll::Pending("no renewTime".into()),
                },
                Ok(None) => Poll::Pending("no Lease".into()),
                Err(e) => Poll::Pending(format!("get failed: {e}")),
            }
        },
    )
    .await
}

/// The kubelet renews its Lease (every 10 s) against the control plane as it
/// is now: a Ready condition alone could be what etcd held from before.
async fn kubelet_renews_its_lease(tenant_api: &Client, node: &str, after_what: &str) {
    let leases: Api<Lease> = Api::namespaced(tenant_api.clone(), "kube-node-lease");
    let first = lease_renew_time(&leases, node, after_what).await;
    wait_for(
        &format!("node {node}'s kubelet renewing its Lease after {after_what}"),
        NODE_TIMEOUT,
        || async {
            match leases.get_opt(node).await {
                Ok(Some(l)) => match l.spec.and_then(|s| s.renew_time) {
                    Some(t) if t > first => Poll::Ready(()),
                    other => Poll::Pending(format!("renewTime {other:?}, first read {first:?}")),
                },
                Ok(None) => Poll::Pending("no Lease".into()),
                Err(e) => Poll::Pending(format!("get failed: {e}")),
            }
        },
    )
    .await;
}

/// After a phase: the Node registered and Ready, its kubelet talking to the
/// tenant API, and its pod the same container. Returns how long that took.
async fn node_and_pod_came_through(
    client: &Client,
    ns: &str,
    node: &str,
    before: &RunningPod,
    after_what: &str,
) -> Duration {
    let started = Instant::now();
    // A fresh client: the apiservers behind the endpoint were replaced.
    let tenant_api = tenant::tenant_client(client, ns, TC).await;
    nodes_ready(&tenant_api, &[node.to_string()], NODE_TIMEOUT).await;
    kubelet_renews_its_lease(&tenant_api, node, after_what).await;
    nodes_ready(&tenant_api, &[node.to_string()], NODE_TIMEOUT).await;
    assert_same_pod(&tenant_api, before, after_what).await;
    started.elapsed()
}

/// Creates EtcdBackup `name` of the tenant and waits for it to succeed.
async fn take_backup(client: &Client, ns: &str, name: &str) {
    let backups: Api<EtcdBackup> = Api::namespaced(client.clone(), ns);
    let eb: EtcdBackup =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"tenantCluster": TC}}))
            .unwrap();
    backups
        .create(&PostParams::default(), &eb)
        .await
        .unwrap_or_else(|e| panic!("creating EtcdBackup {ns}/{name}: {e}"));
    wait_for(
        &format!("backup {name}"),
        Duration::from_secs(180),
        || async {
            match backups.get(name).await.ok().and_then(|b| b.status) {
                Some(s) if s.phase == Some(BackupPhase::Succeeded) => Poll::Ready(()),
                Some(s) if s.phase == Some(BackupPhase::Failed) => {
                    panic!("backup {name} failed: {:?}", s.message)
                }
                s => Poll::Pending(format!("{s:?}")),
            }
        },
    )
    .await
}

/// Rolls the apiservers to `target` and waits until the upgrade is recorded
/// Completed, `status.version` is `target`, and the tenant is Ready.
async fn upgrade_apiservers(client: &Client, ns: &str, target: &str) {
    tenant::patch_spec(client, ns, TC, json!({"version": target})).await;
    let api: Api<TenantCluster> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("the upgrade to {target} to complete"),
        READY_TIMEOUT,
        || async {
            let s = match api.get(TC).await {
                Ok(tc) => tc.status.unwrap_or_default(),
                Err(e) => return Poll::Pending(format!("get failed: {e}")),
            };
            match &s.upgrade {
                Some(u) if u.phase == "Completed" && s.version.as_deref() == Some(target) => {
                    Poll::Ready(())
                }
                other => Poll::Pending(format!("version {:?}, upgrade {other:?}", s.version)),
            }
        },
    )
    .await;
    let ready = tenant::wait_ready(client, ns, TC, READY_TIMEOUT).await;
    assert_eq!(
        ready.status.and_then(|s| s.version).as_deref(),
        Some(target),
        "status.version after the upgrade"
    );
    let image = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(&format!("{TC}-apiserver"))
        .await
        .unwrap()
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.image)
        .unwrap_or_default();
    assert!(
        image.ends_with(&format!(":{target}")),
        "the apiservers run {image}"
    );
}

/// Waits until every member's claim is recorded as serving and the bootstrap
/// ConfigMap no longer names members: from then on a member without data is
/// replaced by kok instead of bootstrapping anything (as in heal.rs).
async fn members_formed_on_their_claims(client: &Client, ns: &str) {
    let api: Api<TenantCluster> = Api::namespaced(client.clone(), ns);
    wait_for(
        "3 member claims recorded",
        Duration::from_secs(60),
        || async {
            let s = api.get(TC).await.unwrap().status.unwrap_or_default();
            if s.etcd_member_claims.len() == 3 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{:?}", s.etcd_member_claims))
            }
        },
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the bootstrap ConfigMap sealed",
        Duration::from_secs(60),
        || async {
            let initial = cms
                .get(&format!("{TC}-etcd-bootstrap"))
                .await
                .ok()
                .and_then(|c| c.data)
                .and_then(|d| d.get("initial-cluster").cloned())
                .unwrap_or_default();
            if initial.contains(&format!("{TC}-etcd-")) {
                Poll::Pending(initial)
            } else {
                Poll::Ready(())
            }
        },
    )
    .await;
}

/// Waits until the tenant's kube-proxy DaemonSet runs `version` on every node.
async fn kube_proxy_rolled_to(tenant_api: &Client, version: &str) {
    let api: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(tenant_api.clone(), "kube-system");
    wait_for(
        &format!("kube-proxy at {version}"),
        Duration::from_secs(180),
        || async {
            let Ok(ds) = api.get("kube-proxy").await else {
                return Poll::Pending("no DaemonSet".into());
            };
            let image = ds
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|p| p.containers[0].image.clone())
                .unwrap_or_default();
            let st = ds.status.unwrap_or_default();
            let rolled = st.observed_generation == ds.metadata.generation
                && st.updated_number_scheduled == Some(st.desired_number_scheduled)
                && st.number_available == Some(st.desired_number_scheduled);
            if image.ends_with(&format!(":{version}")) && rolled {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{image}, {st:?}"))
            }
        },
    )
    .await;
}

/// Member `m` loses its volume: its claim and its pod are deleted. Returns
/// the lost claim's uid.
async fn lose_member_volume(client: &Client, ns: &str, m: i32) -> Option<String> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let claim = format!("data-{TC}-etcd-{m}");
    let lost_uid = claims.get(&claim).await.unwrap().metadata.uid;
    claims
        .delete(&claim, &DeleteParams::background())
        .await
        .unwrap();
    pods.delete(&format!("{TC}-etcd-{m}"), &DeleteParams::default())
        .await
        .unwrap();
    lost_uid
}

/// Waits until the replacement is recorded done (an EtcdMemberLost repair
/// that Succeeded, no replacement in progress) and the tenant is Ready.
async fn member_replaced(client: &Client, ns: &str) {
    let api: Api<TenantCluster> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("member {TC}-etcd-{LOST_MEMBER} replaced"),
        Duration::from_secs(300),
        || async {
            let s = api.get(TC).await.unwrap().status.unwrap_or_default();
            let replaced = s
                .repairs
                .iter()
                .any(|r| r.check == "EtcdMemberLost" && r.outcome == "Succeeded");
            if replaced && s.etcd_member_replacement.is_none() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{:?}", s.etcd_member_replacement))
            }
        },
    )
    .await;
    tenant::wait_ready(client, ns, TC, READY_TIMEOUT).await;
}

/// Runs EtcdRestore `RESTORE` from `backup` and waits until it Completed and
/// the tenant is Ready.
async fn restore_from(client: &Client, ns: &str, backup: &str) {
    let restores: Api<EtcdRestore> = Api::namespaced(client.clone(), ns);
    let er: EtcdRestore = serde_json::from_value(json!({
        "metadata": {"name": RESTORE},
        "spec": {"tenantCluster": TC, "backup": backup}
    }))
    .unwrap();
    restores.create(&PostParams::default(), &er).await.unwrap();
    let done = tenant::restore_finished(&restores, RESTORE).await;
    assert_eq!(
        done.phase,
        Some(RestorePhase::Completed),
        "{:?}",
        done.message
    );
    tenant::wait_ready(client, ns, TC, READY_TIMEOUT).await;
}

#[tokio::test]
async fn a_node_and_its_pod_come_through_an_upgrade_a_member_replacement_and_a_restore() {
    let target = std::env::var("KOK_KUBE_PATCH_TAG")
        .expect("KOK_KUBE_PATCH_TAG names the second tag of the local build (eval \"$(hack/local-cluster env)\")");
    with_namespace("nodes-life", move |client, ns| async move {
        make_volumes(&client, &ns, VOLUMES).await;
        tenant::create(&client, &ns, &lifecycle_tenant(&ns)).await;
        tenant::wait_ready(&client, &ns, TC, READY_TIMEOUT).await;

        // A node joins with the published command.
        let command = request_join(&client, &ns, "life", TC, 3600).await;
        let node = node_name(&ns, 1);
        let _cleanup = LabNodes(vec![node.clone()]);
        let took = join_node(&node, &command);
        println!(
            "node {node}: join command -> Ready in {:.1} s",
            took.as_secs_f64()
        );
        let tenant_api = tenant::tenant_client(&client, &ns, TC).await;
        nodes_ready(
            &tenant_api,
            std::slice::from_ref(&node),
            Duration::from_secs(60),
        )
        .await;

        // Its pod, recorded as the container it is.
        let started = Instant::now();
        create_steady_deployment(&tenant_api).await;
        workloads::deployment_available(&tenant_api, "default", "steady", Duration::from_secs(180))
            .await;
        let pods = wait_for("the steady pod running", NODE_TIMEOUT, || {
            steady_pods(&tenant_api)
        })
        .await;
        assert_eq!(pods.len(), 1, "one replica: {pods:?}");
        let before = pods.into_iter().next().unwrap();
        assert_eq!(before.node, node, "the tenant's only node runs the pod");
        assert_eq!(before.restart_count, 0, "{before:?}");
        assert!(!before.being_deleted, "{before:?}");
        println!(
            "pod {} running on {node} ({}) {:.1} s after the Deployment was created",
            before.name,
            before.container_id,
            started.elapsed().as_secs_f64()
        );

        // A backup that holds the Deployment and its pod.
        let started = Instant::now();
        take_backup(&client, &ns, BACKUP).await;
        println!("backup {BACKUP}: {:.1} s", started.elapsed().as_secs_f64());

        // 1. The apiservers roll to the patch version.
        let started = Instant::now();
        upgrade_apiservers(&client, &ns, &target).await;
        let rolled = started.elapsed();
        let checked =
            node_and_pod_came_through(&client, &ns, &node, &before, "the apiserver upgrade").await;
        println!(
            "1. apiservers v1.20.2 -> {target}: {:.1} s; node and pod checked in {:.1} s",
            rolled.as_secs_f64(),
            checked.as_secs_f64()
        );

        // kube-proxy follows the control plane's version on the node.
        let started = Instant::now();
        kube_proxy_rolled_to(&tenant_api, &target).await;
        println!(
            "   kube-proxy at {target} on the node {:.1} s later",
            started.elapsed().as_secs_f64()
        );

        // 2. An etcd member loses its volume and is replaced.
        members_formed_on_their_claims(&client, &ns).await;
        let started = Instant::now();
        let lost_uid = lose_member_volume(&client, &ns, LOST_MEMBER).await;
        member_replaced(&client, &ns).await;
        let replaced = started.elapsed();
        let now_uid = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get(&format!("data-{TC}-etcd-{LOST_MEMBER}"))
            .await
            .unwrap()
            .metadata
            .uid;
        assert_ne!(
            now_uid, lost_uid,
            "member {LOST_MEMBER} serves on a new claim"
        );
        let checked =
            node_and_pod_came_through(&client, &ns, &node, &before, "the etcd member replacement")
                .await;
        println!(
            "2. etcd member {LOST_MEMBER} replaced: {:.1} s; node and pod checked in {:.1} s",
            replaced.as_secs_f64(),
            checked.as_secs_f64()
        );

        // 3. etcd restored from the backup: the Node and the pod are what the
        //    backup holds, and the kubelet takes up with the restored cluster.
        let started = Instant::now();
        restore_from(&client, &ns, BACKUP).await;
        let restored = started.elapsed();
        let checked =
            node_and_pod_came_through(&client, &ns, &node, &before, "the EtcdRestore").await;
        println!(
            "3. EtcdRestore from {BACKUP}: {:.1} s; node and pod checked in {:.1} s",
            restored.as_secs_f64(),
            checked.as_secs_f64()
        );

        Api::<TenantCluster>::namespaced(client.clone(), &ns)
            .delete(TC, &DeleteParams::default())
            .await
            .unwrap();
        remove_volumes(&client, &ns, VOLUMES).await;
    })
    .await;
}
