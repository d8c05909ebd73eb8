//! Self-healing and inspection on the local cluster (issue 10). The tenant
//! cluster has no nodes: Node and Pod objects are made through its API where
//! a check needs them.

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kok_crds::{Finding, TenantCluster, TenantClusterStatus};
use kok_e2e::tenant::inspect;
use kok_e2e::volumes::{make_volumes, remove_volumes};
use kok_e2e::{tenant, wait_for, with_namespace, Poll};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::Api;
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(300);

async fn create<K>(api: &Api<K>, value: serde_json::Value)
where
    K: kube::Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + k8s_openapi::serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("valid object");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating {:?}: {e}", obj.meta().name));
}

fn finding<'a>(status: &'a TenantClusterStatus, check: &str, object: &str) -> &'a Finding {
    status
        .findings
        .iter()
        .find(|f| f.check == check && f.object == object)
        .unwrap_or_else(|| {
            panic!(
                "no {check} finding for {object}; findings: {:#?}; inspection: {:?}",
                status.findings, status.inspection
            )
        })
}

/// A self-signed certificate valid for `days` more days, as PEM (cert, key).
fn short_lived_cert(days: i64) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(vec!["expiring.example.com".to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn inspection_finds_planted_faults_and_repairs_them_where_policy_says() {
    with_namespace("inspect", |client, ns| async move {
        let mut tc = tenant::dev_tenant("insp", 1);
        // Only on request in this test: no inspection races the planting.
        tc.spec.healing =
            serde_json::from_value(json!({"inspectionIntervalSeconds": 3600})).unwrap();
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "insp", READY_TIMEOUT).await;
        let t = tenant::tenant_client(&client, &ns, "insp").await;

        // Nodes: one that goes away under a pod, two with one InternalIP.
        let nodes: Api<Node> = Api::all(t.clone());
        let node = |name: &str, ip: &str| {
            json!({"metadata": {"name": name},
                   "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
        };
        create(&nodes, node("gone-node", "10.1.0.9")).await;
        create(&nodes, node("twin-a", "10.1.0.5")).await;
        create(&nodes, node("twin-b", "10.1.0.5")).await;
        let pods: Api<Pod> = Api::namespaced(t.clone(), "default");
        let pod = |name: &str, node: &str| {
            json!({"metadata": {"name": name},
                   "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
        };
        // The tenant's controller-manager makes the default ServiceAccount a
        // moment after the tenant is Ready; pods are refused until then.
        wait_for("a pod bound to gone-node", Duration::from_secs(60), || async {
            let p: Pod = serde_json::from_value(pod("orphan", "gone-node")).unwrap();
            match pods.create(&PostParams::default(), &p).await {
                Ok(_) => Poll::Ready(()),
                Err(e) => Poll::Pending(e.to_string()),
            }
        })
        .await;

        // A volume released by a claim that is gone, kept (Retain).
        let pvs: Api<PersistentVolume> = Api::all(t.clone());
        create(
            &pvs,
            json!({"metadata": {"name": "released-pv"},
                   "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                            "persistentVolumeReclaimPolicy": "Retain",
                            "hostPath": {"path": "/tmp/released"},
                            "claimRef": {"namespace": "default", "name": "gone-claim",
                                         "uid": "3f1d2c4b-0000-4000-8000-000000000001"}}}),
        )
        .await;

        // Two Services on one external IP and port.
        let services: Api<Service> = Api::namespaced(t.clone(), "default");
        for name in ["svc-a", "svc-b"] {
            create(
                &services,
                json!({"metadata": {"name": name},
                       "spec": {"ports": [{"port": 80}], "externalIPs": ["192.0.2.10"]}}),
            )
            .await;
        }

        // A CRD whose objects were stored as v1, then v1 stopped being served.
        let crds: Api<CustomResourceDefinition> = Api::all(t.clone());
        let version = |name: &str, served: bool, storage: bool| {
            json!({"name": name, "served": served, "storage": storage,
                   "schema": {"openAPIV3Schema": {"type": "object",
                              "x-kubernetes-preserve-unknown-fields": true}}})
        };
        let crd = |versions: serde_json::Value| {
            json!({"metadata": {"name": "widgets.example.com"},
                   "spec": {"group": "example.com", "scope": "Namespaced",
                            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                            "versions": versions}})
        };
        create(&crds, crd(json!([version("v1", true, true)]))).await;
        let widgets = |v: &str| {
            let gvk = GroupVersionKind::gvk("example.com", v, "Widget");
            let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
            Api::<DynamicObject>::namespaced_with(t.clone(), "default", &ar)
        };
        wait_for("widgets served", Duration::from_secs(30), || async {
            let w: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "w1"}, "spec": {"size": 3}
            }))
            .unwrap();
            match widgets("v1").create(&PostParams::default(), &w).await {
                Ok(_) => Poll::Ready(()),
                Err(e) => Poll::Pending(e.to_string()),
            }
        })
        .await;
        let mut current = crds.get("widgets.example.com").await.unwrap();
        current.spec.versions = serde_json::from_value(json!([
            version("v1", false, false),
            version("v2", true, true)
        ]))
        .unwrap();
        crds.replace("widgets.example.com", &PostParams::default(), &current)
            .await
            .unwrap();

        // A TLS Secret whose certificate expires in 3 days.
        let (cert, key) = short_lived_cert(3);
        let secrets: Api<Secret> = Api::namespaced(t.clone(), "default");
        create(
            &secrets,
            json!({"metadata": {"name": "expiring-tls"}, "type": "kubernetes.io/tls",
                   "stringData": {"tls.crt": cert, "tls.key": key}}),
        )
        .await;

        // A webhook that fails closed, on a Service with no endpoint (it only
        // matches gadgets, which nothing here creates).
        let hooks: Api<ValidatingWebhookConfiguration> = Api::all(t.clone());
        create(
            &hooks,
            json!({"metadata": {"name": "deny-gadgets"},
                   "webhooks": [{"name": "gadgets.example.com", "failurePolicy": "Fail",
                                 "sideEffects": "None", "admissionReviewVersions": ["v1"],
                                 "clientConfig": {"service": {"namespace": "default", "name": "no-such-webhook"}},
                                 "rules": [{"apiGroups": ["example.com"], "apiVersions": ["*"],
                                            "operations": ["CREATE"], "resources": ["gadgets"]}]}]}),
        )
        .await;

        // The faults are in place once the PV controller released the volume.
        wait_for("released-pv Released", Duration::from_secs(60), || async {
            let phase = pvs
                .get("released-pv")
                .await
                .ok()
                .and_then(|p| p.status)
                .and_then(|s| s.phase);
            match phase.as_deref() {
                Some("Released") => Poll::Ready(()),
                other => Poll::Pending(format!("{other:?}")),
            }
        })
        .await;
        let stored = crds
            .get("widgets.example.com")
            .await
            .unwrap()
            .status
            .and_then(|s| s.stored_versions)
            .unwrap_or_default();
        assert_eq!(stored, ["v1", "v2"], "the CRD remembers v1 as stored");
        nodes
            .delete("gone-node", &DeleteParams::default())
            .await
            .unwrap();

        let status = inspect(&client, &ns, "insp", "1").await;
        println!("findings: {:#?}", status.findings);

        // Repaired (policy Repair by default).
        let orphan = finding(&status, "PodOnMissingNode", "Pod default/orphan");
        assert!(
            orphan.repair.as_deref().is_some_and(|r| r.contains("Succeeded")),
            "{orphan:?}"
        );
        assert!(pods.get_opt("orphan").await.unwrap().is_none(), "orphan deleted");
        let crd_finding = finding(
            &status,
            "CRDStoredVersionNotServed",
            "CustomResourceDefinition widgets.example.com",
        );
        assert!(
            crd_finding.repair.as_deref().is_some_and(|r| r.contains("Succeeded")),
            "{crd_finding:?}"
        );
        let stored = crds
            .get("widgets.example.com")
            .await
            .unwrap()
            .status
            .and_then(|s| s.stored_versions)
            .unwrap_or_default();
        assert_eq!(stored, ["v2"], "v1 dropped from storedVersions");
        let w1 = widgets("v2").get("w1").await.expect("w1 readable as v2");
        assert_eq!(w1.data["spec"]["size"], 3);

        // Reported only (policy Report by default).
        for (check, object) in [
            ("VolumeReleased", "PersistentVolume released-pv"),
            ("ServiceIPConflict", "Services default/svc-a, default/svc-b"),
            ("NodeIPConflict", "Nodes twin-a, twin-b"),
            ("CertificateExpiring", "Secret default/expiring-tls"),
            (
                "WebhookUnreachable",
                "ValidatingWebhookConfiguration deny-gadgets",
            ),
        ] {
            let f = finding(&status, check, object);
            assert_eq!(f.policy, "Report", "{f:?}");
            assert_eq!(f.repair, None, "{f:?}");
        }
        assert_eq!(
            finding(&status, "CertificateExpiring", "Secret default/expiring-tls").severity,
            "Critical"
        );
        // The repairs are recorded with their time to repair.
        for check in ["PodOnMissingNode", "CRDStoredVersionNotServed"] {
            let r = status
                .repairs
                .iter()
                .find(|r| r.check == check)
                .unwrap_or_else(|| panic!("no {check} repair in {:#?}", status.repairs));
            assert_eq!(r.outcome, "Succeeded", "{r:?}");
            assert!(r.seconds_to_repair.is_some_and(|s| s >= 0.0), "{r:?}");
        }
        let healthy = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Healthy")
            .expect("a Healthy condition");
        assert_eq!(healthy.status, "False");
        // Findings and repairs are Events on the TenantCluster too.
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let reasons: Vec<String> = events
            .list(&ListParams::default().fields("involvedObject.name=insp"))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        for reason in ["Finding", "Repaired"] {
            assert!(reasons.iter().any(|r| r == reason), "{reason} in {reasons:?}");
        }

        // With the policy at Report, the same fault is only reported.
        tenant::patch_spec(
            &client,
            &ns,
            "insp",
            json!({"healing": {"checks": {"PodOnMissingNode": "Report"}}}),
        )
        .await;
        create(&nodes, node("gone-2", "10.1.0.10")).await;
        create(&pods, pod("orphan-2", "gone-2")).await;
        nodes.delete("gone-2", &DeleteParams::default()).await.unwrap();
        let status = inspect(&client, &ns, "insp", "2").await;
        let reported = finding(&status, "PodOnMissingNode", "Pod default/orphan-2");
        assert_eq!(reported.policy, "Report");
        assert_eq!(reported.repair, None);
        assert!(pods.get_opt("orphan-2").await.unwrap().is_some(), "left alone");
        // What was repaired is no longer found.
        assert!(
            !status
                .findings
                .iter()
                .any(|f| f.check == "CRDStoredVersionNotServed" || f.object == "Pod default/orphan"),
            "{:#?}",
            status.findings
        );
    })
    .await;
}

/// The names of the voting and learner etcd members as the tenant's
/// status shows them is not enough: the member list itself is checked
/// through the pods' readiness and the replacement record.
#[tokio::test]
async fn a_member_that_lost_its_volume_is_replaced_with_every_object_kept() {
    with_namespace("heal-member", |client, ns| async move {
        // 3 members' volumes, the replacement claim's, and the one the
        // member finally starts on (the replacement claim is discarded: the
        // member wrote to it while it could not join).
        make_volumes(&client, &ns, 5).await;
        let mut tc = tenant::dev_tenant("hm", 3);
        tc.spec.etcd.storage =
            serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "hm", READY_TIMEOUT).await;
        let api: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
        // Every member seen serving on its claim: from now on a member
        // without data joins the running cluster.
        wait_claims_recorded(&api, "hm", 3).await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let bootstrap_state = || async {
            cms.get("hm-etcd-bootstrap")
                .await
                .ok()
                .and_then(|c| c.data)
                .and_then(|d| d.get("initial-cluster-state").cloned())
        };
        assert_eq!(bootstrap_state().await.as_deref(), Some("new"));
        // Formed: the initial cluster names no member any more, so a member
        // that loses its data exits instead of bootstrapping anything.
        wait_for("the bootstrap ConfigMap sealed", Duration::from_secs(60), || async {
            let initial = cms
                .get("hm-etcd-bootstrap")
                .await
                .ok()
                .and_then(|c| c.data)
                .and_then(|d| d.get("initial-cluster").cloned())
                .unwrap_or_default();
            if initial.contains("hm-etcd-") {
                Poll::Pending(initial)
            } else {
                Poll::Ready(())
            }
        })
        .await;
        let t = tenant::tenant_client(&client, &ns, "hm").await;
        let tenant_cms: Api<ConfigMap> = Api::namespaced(t.clone(), "default");
        write_kept(&tenant_cms, 50).await;

        // Member 1 loses its volume: the claim and the pod are deleted.
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let lost_uid = claims.get("data-hm-etcd-1").await.unwrap().metadata.uid;
        let started = Instant::now();
        claims
            .delete("data-hm-etcd-1", &DeleteParams::background())
            .await
            .unwrap();
        pods.delete("hm-etcd-1", &DeleteParams::default())
            .await
            .unwrap();

        let status = wait_for(
            "member hm-etcd-1 replaced",
            Duration::from_secs(300),
            || async {
                let s = api.get("hm").await.unwrap().status.unwrap_or_default();
                let replaced = s
                    .repairs
                    .iter()
                    .any(|r| r.check == "EtcdMemberLost" && r.outcome == "Succeeded");
                if replaced && s.etcd_member_replacement.is_none() {
                    Poll::Ready(s)
                } else {
                    Poll::Pending(format!("{:?}", s.etcd_member_replacement))
                }
            },
        )
        .await;
        let replaced_after = started.elapsed();
        // Back to 3/3 ready members, member 1 on a new claim.
        wait_members_ready(&pods, "hm", 3).await;
        let healed_after = started.elapsed();
        // Back to `new`: a member that loses its data now waits for kok.
        wait_for("bootstrap state new again", Duration::from_secs(60), || async {
            match bootstrap_state().await.as_deref() {
                Some("new") => Poll::Ready(()),
                other => Poll::Pending(format!("{other:?}")),
            }
        })
        .await;
        let now_uid = claims.get("data-hm-etcd-1").await.unwrap().metadata.uid;
        assert_ne!(now_uid, lost_uid);
        assert_eq!(
            status.etcd_member_claims.get("data-hm-etcd-1"),
            now_uid.as_ref(),
            "the new claim is recorded"
        );
        let repair = status
            .repairs
            .iter()
            .find(|r| r.check == "EtcdMemberLost")
            .unwrap();
        println!(
            "etcd member replaced: promoted {:.1}s after the claim was deleted ({:.1}s after kok found the loss), 3/3 ready after {:.1}s; {:?}",
            replaced_after.as_secs_f64(),
            repair.seconds_to_repair.unwrap_or_default(),
            healed_after.as_secs_f64(),
            repair.message
        );
        // Every object is there, and the cluster takes writes.
        assert_eq!(count_kept(&tenant_cms).await, 50);
        create(&tenant_cms, json!({"metadata": {"name": "after-heal"}})).await;
        let api_ns: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
        api_ns
            .delete("hm", &DeleteParams::default())
            .await
            .unwrap();
        remove_volumes(&client, &ns, 5).await;
    })
    .await;
}

#[tokio::test]
async fn a_member_unhealthy_on_its_own_volume_is_replaced_and_its_volume_kept() {
    use std::os::unix::fs::PermissionsExt;
    with_namespace("heal-unhealthy", |client, ns| async move {
        // 3 members' volumes and the fresh one the replaced member starts on.
        make_volumes(&client, &ns, 4).await;
        let mut tc = tenant::dev_tenant("hu", 3);
        tc.spec.etcd.storage =
            serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
        tc.spec.healing.member_unhealthy_seconds = Some(30);
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "hu", READY_TIMEOUT).await;
        let api: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
        wait_claims_recorded(&api, "hu", 3).await;
        let t = tenant::tenant_client(&client, &ns, "hu").await;
        let tenant_cms: Api<ConfigMap> = Api::namespaced(t.clone(), "default");
        write_kept(&tenant_cms, 50).await;

        // Member 2 can no longer start on its own volume: its data
        // directory becomes unreadable to etcd (a stand-in for corrupt data:
        // the member exits at start, every time). Its volume and claim stay.
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let old_claim = claims.get("data-hu-etcd-2").await.unwrap();
        let old_volume = old_claim.spec.clone().unwrap().volume_name.unwrap();
        // As a dynamic provisioner would make it: deleted with its claim,
        // unless kok keeps it.
        let pvs: Api<PersistentVolume> = Api::all(client.clone());
        pvs.patch(
            &old_volume,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}})),
        )
        .await
        .unwrap();
        let dir = kok_e2e::volumes::member_dir(&client, &ns, "hu", 2).await;
        let data = format!("{dir}/data");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o000)).unwrap();
        let started = Instant::now();
        pods.delete("hu-etcd-2", &DeleteParams::default())
            .await
            .unwrap();

        // Timed as unhealthy (a finding's source), then replaced.
        let seen_unhealthy = std::sync::atomic::AtomicBool::new(false);
        let status = wait_for(
            "member hu-etcd-2 replaced",
            Duration::from_secs(300),
            || {
                let api = api.clone();
                let seen = &seen_unhealthy;
                async move {
                    let s = api.get("hu").await.unwrap().status.unwrap_or_default();
                    if s.etcd_unhealthy_since.contains_key("hu-etcd-2") {
                        seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    let replaced = s.repairs.iter().any(|r| {
                        r.check == "EtcdMemberUnhealthy" && r.outcome == "Succeeded"
                    });
                    if replaced && s.etcd_member_replacement.is_none() {
                        Poll::Ready(s)
                    } else {
                        Poll::Pending(format!(
                            "since {:?}; {:?}",
                            s.etcd_unhealthy_since, s.etcd_member_replacement
                        ))
                    }
                }
            },
        )
        .await;
        let replaced_after = started.elapsed();
        assert!(
            seen_unhealthy.load(std::sync::atomic::Ordering::Relaxed),
            "the member was timed as unhealthy first");
        wait_members_ready(&pods, "hu", 3).await;
        let healed_after = started.elapsed();
        let repair = status
            .repairs
            .iter()
            .find(|r| r.check == "EtcdMemberUnhealthy")
            .unwrap();
        assert!(repair.action.contains(&old_volume), "{}", repair.action);
        assert!(
            repair.seconds_to_repair.unwrap_or_default() >= 30.0,
            "not replaced before memberUnhealthySeconds: {repair:?}"
        );
        assert!(
            !status.repairs.iter().any(|r| r.check == "EtcdMemberLost"),
            "one repair, of the unhealthy member: {:?}",
            status.repairs
        );

        // A new claim serves; the old volume is kept with its data.
        let new_claim = claims.get("data-hu-etcd-2").await.unwrap();
        assert_ne!(new_claim.metadata.uid, old_claim.metadata.uid);
        assert_eq!(
            status.etcd_member_claims.get("data-hu-etcd-2"),
            new_claim.metadata.uid.as_ref()
        );
        let kept = pvs
            .get(&old_volume)
            .await
            .expect("the old volume is kept");
        let spec = kept.spec.clone().unwrap();
        assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Retain"));
        assert_ne!(
            kept.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Failed"),
            "kept before its claim was released (hostPath cannot be deleted: a Delete policy ends Failed)"
        );
        assert_eq!(
            kept.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kok.dev/kept-from-claim"))
                .map(String::as_str),
            Some(format!("{ns}/data-hu-etcd-2").as_str())
        );
        assert_ne!(new_claim.spec.unwrap().volume_name.as_deref(), Some(old_volume.as_str()));
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        let db = std::fs::metadata(format!("{data}/member/snap/db")).expect("its data is still there");
        assert!(db.len() > 0);
        println!(
            "unhealthy etcd member replaced: promoted {:.1}s after its pod was deleted onto an unreadable volume ({:.1}s after kok first saw it unhealthy, threshold 30s), 3/3 ready after {:.1}s; volume {old_volume} kept ({} byte db)",
            replaced_after.as_secs_f64(),
            repair.seconds_to_repair.unwrap_or_default(),
            healed_after.as_secs_f64(),
            db.len()
        );
        assert_eq!(count_kept(&tenant_cms).await, 50);
        create(&tenant_cms, json!({"metadata": {"name": "after-heal"}})).await;
        api.delete("hu", &DeleteParams::default()).await.unwrap();
        remove_volumes(&client, &ns, 4).await;
    })
    .await;
}

#[tokio::test]
async fn nospace_is_resolved_without_a_person() {
    with_namespace("heal-nospace", |client, ns| async move {
        let mut tc = tenant::dev_tenant("ns", 1);
        tc.spec.etcd.quota_backend_bytes = Some(24 << 20);
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "ns", READY_TIMEOUT).await;
        let t = tenant::tenant_client(&client, &ns, "ns").await;
        let cms: Api<ConfigMap> = Api::namespaced(t.clone(), "default");
        // One ConfigMap rewritten with 900 KiB values: each revision stays in
        // etcd's history until it is compacted.
        let big = |i: usize| {
            serde_json::from_value::<ConfigMap>(json!({
                "metadata": {"name": "filler"},
                "data": {"v": format!("{i}{}", "x".repeat(900 * 1024))}
            }))
            .unwrap()
        };
        cms.create(&PostParams::default(), &big(0)).await.unwrap();
        let mut refused = None;
        for i in 1..200 {
            match cms.replace("filler", &PostParams::default(), &big(i)).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("database space exceeded") => {
                    refused = Some(e.to_string());
                    break;
                }
                Err(e) => panic!("write {i}: {e}"),
            }
        }
        let refused = refused.expect("etcd refused writes with NOSPACE before 200 writes");
        println!("NOSPACE: {refused}");
        let started = Instant::now();
        wait_for(
            "writes accepted again",
            Duration::from_secs(180),
            || async {
                let probe: ConfigMap =
                    serde_json::from_value(json!({"metadata": {"generateName": "probe-"}}))
                        .unwrap();
                match cms.create(&PostParams::default(), &probe).await {
                    Ok(_) => Poll::Ready(()),
                    Err(e) => Poll::Pending(e.to_string()),
                }
            },
        )
        .await;
        let repaired_after = started.elapsed();
        let api: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
        // The repair is recorded in status by the same pass that disarmed the
        // alarm, a moment after etcd accepts writes again.
        let repair = wait_for(
            "the EtcdAlarm repair recorded in status",
            Duration::from_secs(60),
            || async {
                let status = api.get("ns").await.unwrap().status.unwrap_or_default();
                match status.repairs.iter().find(|r| r.check == "EtcdAlarm") {
                    Some(r) => Poll::Ready(r.clone()),
                    None => Poll::Pending(format!("repairs: {:?}", status.repairs)),
                }
            },
        )
        .await;
        assert_eq!(repair.outcome, "Succeeded", "{repair:?}");
        println!(
            "NOSPACE resolved: writes accepted {:.1}s after the first refusal; {:?}",
            repaired_after.as_secs_f64(),
            repair.message
        );
        // The data written before is all there.
        assert!(cms.get("filler").await.is_ok());

        // Scheduled defragmentation: every minute, recorded and announced.
        tenant::patch_spec(
            &client,
            &ns,
            "ns",
            json!({"healing": {"defragmentationSchedule": "* * * * *"}}),
        )
        .await;
        wait_for(
            "a scheduled defragmentation",
            Duration::from_secs(150),
            || async {
                let s = api.get("ns").await.unwrap().status.unwrap_or_default();
                match s.last_defragmentation_time {
                    Some(t) => Poll::Ready(t),
                    None => Poll::Pending("none yet".into()),
                }
            },
        )
        .await;
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let defragmented = events
            .list(&ListParams::default().fields("involvedObject.name=ns"))
            .await
            .unwrap()
            .items
            .into_iter()
            .any(|e| e.reason.as_deref() == Some("Defragmented"));
        assert!(defragmented, "a Defragmented Event");
    })
    .await;
}

#[tokio::test]
async fn a_lost_quorum_is_restored_from_the_newest_verified_backup_when_policy_allows() {
    with_namespace("heal-quorum", |client, ns| async move {
        // 3 members' volumes and the 2 claims made in place of the lost ones.
        make_volumes(&client, &ns, 5).await;
        let mut tc = tenant::dev_tenant("hq", 3);
        tc.spec.etcd.storage =
            serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
        tc.spec.backup = Some(
            serde_json::from_value(json!({
                "destination": {"filesystem": {"path": format!("/var/lib/kok/backups/e2e-{ns}")}},
                "verify": true
            }))
            .unwrap(),
        );
        tc.spec.healing = serde_json::from_value(
            json!({"quorumLoss": {"restoreFromBackup": true, "maxBackupAge": "1h"}}),
        )
        .unwrap();
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "hq", READY_TIMEOUT).await;
        let api: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
        wait_claims_recorded(&api, "hq", 3).await;
        let t = tenant::tenant_client(&client, &ns, "hq").await;
        let tenant_cms: Api<ConfigMap> = Api::namespaced(t.clone(), "default");
        for i in 0..20 {
            create(
                &tenant_cms,
                json!({"metadata": {"name": format!("before-{i:02}"), "labels": {"when": "before"}}}),
            )
            .await;
        }
        // A verified backup, then writes it does not hold.
        let backups: Api<kok_crds::EtcdBackup> = Api::namespaced(client.clone(), &ns);
        create(
            &backups,
            json!({"metadata": {"name": "hq-b1"}, "spec": {"tenantCluster": "hq"}}),
        )
        .await;
        wait_for("backup hq-b1 verified", Duration::from_secs(180), || async {
            let s = backups.get("hq-b1").await.unwrap().status.unwrap_or_default();
            match (s.phase, s.verified) {
                (Some(kok_crds::BackupPhase::Succeeded), Some(true)) => Poll::Ready(()),
                (Some(kok_crds::BackupPhase::Failed), _) => panic!("backup failed: {:?}", s.message),
                other => Poll::Pending(format!("{other:?}")),
            }
        })
        .await;
        for i in 0..5 {
            create(
                &tenant_cms,
                json!({"metadata": {"name": format!("after-{i:02}"), "labels": {"when": "after"}}}),
            )
            .await;
        }

        // Members 1 and 2 lose their volumes: no quorum holds the data.
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let started = Instant::now();
        for m in [1, 2] {
            claims
                .delete(&format!("data-hq-etcd-{m}"), &DeleteParams::background())
                .await
                .unwrap();
            pods.delete(&format!("hq-etcd-{m}"), &DeleteParams::default())
                .await
                .unwrap();
        }
        let status = wait_for("the quorum restored", Duration::from_secs(400), || async {
            let s = api.get("hq").await.unwrap().status.unwrap_or_default();
            let restored = s
                .repairs
                .iter()
                .any(|r| r.check == "EtcdQuorumLost" && r.outcome == "Succeeded");
            if restored && s.quorum_loss.is_none() {
                Poll::Ready(s)
            } else {
                Poll::Pending(format!("{:?}", s.quorum_loss))
            }
        })
        .await;
        tenant::wait_ready(&client, &ns, "hq", READY_TIMEOUT).await;
        let restored_after = started.elapsed();
        let repair = status
            .repairs
            .iter()
            .find(|r| r.check == "EtcdQuorumLost")
            .unwrap();
        println!(
            "quorum restored: Ready {:.1}s after 2 of 3 volumes were deleted ({:.1}s from detection to the restore's end); {} / {:?}",
            restored_after.as_secs_f64(),
            repair.seconds_to_repair.unwrap_or_default(),
            repair.action,
            repair.message
        );
        assert!(repair.action.contains("hq-b1"), "{repair:?}");
        // What was lost is recorded: the writes after the backup.
        assert!(
            repair.message.as_deref().is_some_and(|m| m.contains("after")),
            "{repair:?}"
        );
        // The objects up to the backup are there; those after it are not.
        let t = tenant::tenant_client(&client, &ns, "hq").await;
        let tenant_cms: Api<ConfigMap> = Api::namespaced(t, "default");
        let count = |when: &'static str| {
            let tenant_cms = tenant_cms.clone();
            async move {
                tenant_cms
                    .list(&ListParams::default().labels(&format!("when={when}")))
                    .await
                    .map(|l| l.items.len())
            }
        };
        let before = wait_for("the tenant API after the restore", Duration::from_secs(60), || async {
            match count("before").await {
                Ok(n) => Poll::Ready(n),
                Err(e) => Poll::Pending(e.to_string()),
            }
        })
        .await;
        assert_eq!(before, 20);
        assert_eq!(count("after").await.unwrap(), 0);
        api.delete("hq", &DeleteParams::default()).await.unwrap();
        remove_volumes(&client, &ns, 5).await;
    })
    .await;
}

/// A crash-looping component is found with its restarts and last exit, its
/// pod is restarted once, and the per-tenant budget then holds further
/// restarts back (recorded on the finding).
#[tokio::test]
async fn a_crash_looping_component_is_restarted_within_its_budget() {
    with_namespace("heal-crash", |client, ns| async move {
        let mut tc = tenant::dev_tenant("cl", 1);
        tc.spec.healing = serde_json::from_value(
            json!({"inspectionIntervalSeconds": 3600, "maxRepairsPerHour": 1}),
        )
        .unwrap();
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "cl", READY_TIMEOUT).await;
        // A flag the scheduler does not know: its new pod exits at once.
        tenant::patch_spec(
            &client,
            &ns,
            "cl",
            json!({"controlPlane": {"scheduler": {"extraArgs": {"no-such-flag": "1"}}}}),
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let crash_looping = || async {
            let lp = ListParams::default()
                .labels("kok.dev/tenant-cluster=cl,kok.dev/component=kube-scheduler");
            let listed = pods.list(&lp).await.map(|l| l.items).unwrap_or_default();
            let looping = listed.iter().find_map(|p| {
                let c = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
                let waiting = c.state.as_ref()?.waiting.as_ref()?.reason.as_deref()?;
                (waiting == "CrashLoopBackOff" && c.restart_count >= 3)
                    .then(|| p.metadata.name.clone().unwrap_or_default())
            });
            match looping {
                Some(name) => Poll::Ready(name),
                None => Poll::Pending(format!(
                    "{} scheduler pod(s), none crash-looping 3 times yet",
                    listed.len()
                )),
            }
        };
        let first = wait_for(
            "a crash-looping scheduler",
            Duration::from_secs(240),
            crash_looping,
        )
        .await;
        let status = inspect(&client, &ns, "cl", "1").await;
        let object = format!("kube-scheduler pod {first}");
        let f = finding(&status, "ControlPlaneCrashLoop", &object);
        assert!(f.message.contains("CrashLoopBackOff"), "{f:?}");
        assert!(
            f.repair.as_deref().is_some_and(|r| r.contains("Succeeded")),
            "{f:?}"
        );
        wait_for(
            "the crash-looping pod replaced",
            Duration::from_secs(60),
            || async {
                match pods.get_opt(&first).await {
                    Ok(None) => Poll::Ready(()),
                    other => Poll::Pending(format!(
                        "{:?}",
                        other.map(|p| p.map(|p| p.metadata.deletion_timestamp))
                    )),
                }
            },
        )
        .await;
        // The replacement crash-loops too; the budget (1 an hour) is spent.
        let second = wait_for(
            "the new pod crash-looping",
            Duration::from_secs(240),
            crash_looping,
        )
        .await;
        let status = inspect(&client, &ns, "cl", "2").await;
        let f = finding(
            &status,
            "ControlPlaneCrashLoop",
            &format!("kube-scheduler pod {second}"),
        );
        assert!(
            f.repair
                .as_deref()
                .is_some_and(|r| r.contains("not repaired") && r.contains("maxRepairsPerHour")),
            "{f:?}"
        );
        assert!(pods.get_opt(&second).await.unwrap().is_some(), "left alone");
        let restarts = status
            .repairs
            .iter()
            .filter(|r| r.check == "ControlPlaneCrashLoop")
            .count();
        assert_eq!(restarts, 1);
    })
    .await;
}

/// The first of the repair times: an apiserver pod deleted, back serving.
#[tokio::test]
async fn a_deleted_apiserver_pod_is_serving_again_quickly() {
    with_namespace("heal-apiserver", |client, ns| async move {
        tenant::create(&client, &ns, &tenant::dev_tenant("ap", 1)).await;
        tenant::wait_ready(&client, &ns, "ap", READY_TIMEOUT).await;
        let t = tenant::tenant_client(&client, &ns, "ap").await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let lp = ListParams::default()
            .labels("kok.dev/tenant-cluster=ap,kok.dev/component=kube-apiserver");
        let pod = pods.list(&lp).await.unwrap().items.remove(0);
        let name = pod.metadata.name.clone().unwrap();
        let started = Instant::now();
        pods.delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        // A new pod ready (the deleted one may answer for a moment while the
        // kubelet stops it), then the tenant API answering through it.
        wait_for(
            "a new apiserver pod ready",
            Duration::from_secs(120),
            || async {
                let listed = pods.list(&lp).await.map(|l| l.items).unwrap_or_default();
                let ready = listed.iter().any(|p| {
                    p.metadata.name.as_deref() != Some(name.as_str())
                        && p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                });
                let old_gone = listed
                    .iter()
                    .all(|p| p.metadata.name.as_deref() != Some(name.as_str()));
                if ready && old_gone {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("new ready {ready}, old gone {old_gone}"))
                }
            },
        )
        .await;
        wait_for(
            "the tenant API answering",
            Duration::from_secs(120),
            || async {
                let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
                match t.request_text(req).await {
                    Ok(body) if body.trim() == "ok" => Poll::Ready(()),
                    Ok(body) => Poll::Pending(body),
                    Err(e) => Poll::Pending(e.to_string()),
                }
            },
        )
        .await;
        println!(
            "apiserver pod deleted: tenant /readyz ok again after {:.1}s",
            started.elapsed().as_secs_f64()
        );
    })
    .await;
}

/// Waits until `n` etcd pods of tenant `tc` are Ready (their state is
/// printed while waiting).
async fn wait_members_ready(pods: &Api<Pod>, tc: &str, n: usize) {
    let lp = ListParams::default().labels(&format!(
        "kok.dev/tenant-cluster={tc},kok.dev/component=etcd"
    ));
    wait_for(
        &format!("{n} ready etcd members"),
        Duration::from_secs(120),
        || async {
            let items = pods.list(&lp).await.map(|l| l.items).unwrap_or_default();
            let ready = items
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .count();
            if ready == n {
                return Poll::Ready(());
            }
            let states: Vec<String> = items.iter().map(kok_e2e::workloads::describe_pod).collect();
            Poll::Pending(format!("{ready}/{n} ready: {states:?}"))
        },
    )
    .await;
}

/// Waits until tenant `tc`'s status records a serving claim for `n` members
/// (from then on a member without data waits for kok).
async fn wait_claims_recorded(api: &Api<TenantCluster>, tc: &str, n: usize) {
    wait_for(
        &format!("{n} member claims recorded"),
        Duration::from_secs(60),
        || async {
            let s = api.get(tc).await.unwrap().status.unwrap_or_default();
            if s.etcd_member_claims.len() == n {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{:?}", s.etcd_member_claims))
            }
        },
    )
    .await;
}

/// Writes `n` ConfigMaps labelled `keep=yes` through the tenant API.
async fn write_kept(cms: &Api<ConfigMap>, n: usize) {
    for i in 0..n {
        create(
            cms,
            json!({"metadata": {"name": format!("keep-{i:02}"), "labels": {"keep": "yes"}},
                   "data": {"i": i.to_string()}}),
        )
        .await;
    }
}

/// How many `keep=yes` ConfigMaps the tenant API lists.
async fn count_kept(cms: &Api<ConfigMap>) -> usize {
    cms.list(&ListParams::default().labels("keep=yes"))
        .await
        .unwrap()
        .items
        .len()
}
