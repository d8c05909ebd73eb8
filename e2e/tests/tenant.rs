//! TenantCluster end to end, against the operator running in the cluster
//! (hack/deploy-operator): a user's view of provisioning, scaling, drift,
//! bad input, deletion and an operator restart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kok_crds::TenantCluster;
use kok_e2e::tenant::{self, condition};
use kok_e2e::{wait_for, with_namespace, workloads, Poll};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(240);

fn children_selector(name: &str) -> ListParams {
    ListParams::default().labels(&format!(
        "app.kubernetes.io/managed-by=kok,kok.dev/tenant-cluster={name}"
    ))
}

async fn count_children(client: &Client, ns: &str, name: &str) -> usize {
    let lp = children_selector(name);
    let c = client.clone();
    Api::<Deployment>::namespaced(c.clone(), ns)
        .list_metadata(&lp)
        .await
        .unwrap()
        .items
        .len()
        + Api::<StatefulSet>::namespaced(c.clone(), ns)
            .list_metadata(&lp)
            .await
            .unwrap()
            .items
            .len()
        + Api::<Service>::namespaced(c.clone(), ns)
            .list_metadata(&lp)
            .await
            .unwrap()
            .items
            .len()
        + Api::<Secret>::namespaced(c, ns)
            .list_metadata(&lp)
            .await
            .unwrap()
            .items
            .len()
}

#[tokio::test]
async fn single_member_tenant_serves_its_own_api() {
    with_namespace("tc-one", |client, ns| async move {
        tenant::create(&client, &ns, &tenant::dev_tenant("one", 1)).await;
        let tc = tenant::wait_ready(&client, &ns, "one", READY_TIMEOUT).await;
        let status = tc.status.unwrap();
        assert_eq!(status.version.as_deref(), Some("v1.20.2"));
        assert_eq!(
            status.kubeconfig_secret_name.as_deref(),
            Some("one-kubeconfig")
        );
        assert!(status
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("https://")));

        let tenant = tenant::tenant_client(&client, &ns, "one").await;
        let names: Vec<String> = Api::<Namespace>::all(tenant.clone())
            .list(&ListParams::default())
            .await
            .expect("the tenant API lists namespaces")
            .items
            .iter()
            .map(|n| n.name_any())
            .collect();
        assert!(
            names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string()),
            "{names:?}"
        );

        let cms: Api<ConfigMap> = Api::namespaced(tenant, "default");
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "written-by-e2e"},
            "data": {"answer": "42"}
        }))
        .unwrap();
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("write to the tenant");
        let back = cms
            .get("written-by-e2e")
            .await
            .expect("read back from the tenant");
        assert_eq!(back.data.unwrap()["answer"], "42");
    })
    .await;
}

#[tokio::test]
async fn three_member_etcd_is_healthy_through_the_etcd_api() {
    with_namespace("tc-three", |client, ns| async move {
        tenant::create(&client, &ns, &tenant::dev_tenant("three", 3)).await;
        tenant::wait_ready(&client, &ns, "three", READY_TIMEOUT).await;

        // The client certificate kok issued for itself, and the etcd CA.
        let ca = tenant::secret_text(&client, &ns, "three-etcd-ca", "tls.crt").await;
        let cert =
            tenant::secret_text(&client, &ns, "three-certs", "etcd-operator-client.crt").await;
        let key =
            tenant::secret_text(&client, &ns, "three-certs", "etcd-operator-client.key").await;
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let mut member_ids = std::collections::BTreeSet::new();
        for i in 0..3 {
            let member = format!("three-etcd-{i}");
            let ip = workloads::cluster_ip(&client, &ns, &member).await;
            assert!(services.get(&member).await.is_ok());
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(ca.clone()))
                .identity(etcd_client::Identity::from_pem(cert.clone(), key.clone()))
                .domain_name(member.clone());
            let options = etcd_client::ConnectOptions::new()
                .with_tls(tls)
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(5));
            let mut etcd =
                etcd_client::Client::connect([format!("https://{ip}:2379")], Some(options))
                    .await
                    .unwrap_or_else(|e| panic!("connect to {member}: {e}"));
            let status = etcd
                .status()
                .await
                .unwrap_or_else(|e| panic!("status of {member}: {e}"));
            assert_ne!(status.leader(), 0, "{member} sees no leader");
            // A linearizable read is what `etcdctl endpoint health` checks.
            etcd.get("health", None)
                .await
                .unwrap_or_else(|e| panic!("read through {member}: {e}"));
            let members = etcd
                .member_list()
                .await
                .expect("member list")
                .members()
                .to_vec();
            assert_eq!(members.len(), 3, "{member} sees {} members", members.len());
            member_ids.insert(status.header().map(|h| h.member_id()).unwrap_or_default());
        }
        assert_eq!(member_ids.len(), 3, "three distinct members answered");
    })
    .await;
}

#[tokio::test]
async fn apiserver_scales_out_while_a_client_keeps_reading() {
    with_namespace("tc-scale", |client, ns| async move {
        tenant::create(&client, &ns, &tenant::dev_tenant("scale", 1)).await;
        tenant::wait_ready(&client, &ns, "scale", READY_TIMEOUT).await;
        let tenant = tenant::tenant_client(&client, &ns, "scale").await;

        let reads = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (reads, failures, stop) = (reads.clone(), failures.clone(), stop.clone());
            tokio::spawn(async move {
                let nss: Api<Namespace> = Api::all(tenant);
                while !stop.load(Ordering::Relaxed) {
                    match nss.get("default").await {
                        Ok(_) => {
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };

        tenant::patch_spec(
            &client,
            &ns,
            "scale",
            json!({"controlPlane": {"apiserver": {"replicas": 2}}}),
        )
        .await;
        workloads::deployment_available(&client, &ns, "scale-apiserver", Duration::from_secs(120))
            .await;
        let tc = tenant::wait_ready(&client, &ns, "scale", READY_TIMEOUT).await;
        let d = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get("scale-apiserver")
            .await
            .unwrap();
        assert_eq!(d.status.unwrap().available_replicas, Some(2));
        assert!(condition(&tc, "APIServerReady")
            .unwrap()
            .message
            .starts_with("2/2"));

        // A flag change rolls the apiservers (surge 1, unavailable 0): the
        // status must say so for the whole rollout, and Ready comes back only
        // once no pod of the old template is left (the measured bug: it stayed
        // Ready=True, Reconciling=False throughout).
        tenant::patch_spec(
            &client,
            &ns,
            "scale",
            json!({"controlPlane": {"apiserver": {"extraArgs": {"v": "2"}}}}),
        )
        .await;
        let rolling = tenant::wait_condition(
            &client,
            &ns,
            "scale",
            "Reconciling",
            "True",
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(
            condition(&rolling, "Ready").unwrap().status,
            "False",
            "not Ready while rolling"
        );
        let tc = tenant::wait_ready(&client, &ns, "scale", READY_TIMEOUT).await;
        assert_eq!(
            condition(&tc, "Reconciling").unwrap().status,
            "False",
            "{:?}",
            tc.status
        );
        let d = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get("scale-apiserver")
            .await
            .unwrap();
        let ds = d.status.unwrap();
        assert_eq!(
            (ds.replicas, ds.updated_replicas, ds.available_replicas),
            (Some(2), Some(2), Some(2)),
            "Ready only once the rollout is over"
        );
        let args = d.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap_or_default();
        assert!(args.iter().any(|a| a == "--v=2"), "{args:?}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        reader.await.unwrap();

        let failures = failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "reads failed while scaling and rolling: {failures:?}"
        );
        assert!(reads.load(Ordering::Relaxed) > 10, "the reader barely ran");
    })
    .await;
}

#[tokio::test]
async fn drift_is_put_back() {
    with_namespace("tc-drift", |client, ns| async move {
        tenant::create(&client, &ns, &tenant::dev_tenant("drift", 1)).await;
        tenant::wait_ready(&client, &ns, "drift", READY_TIMEOUT).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);

        // A deleted workload comes back.
        let old_uid = deployments.get("drift-scheduler").await.unwrap().uid();
        deployments
            .delete("drift-scheduler", &DeleteParams::default())
            .await
            .unwrap();
        wait_for(
            "the scheduler Deployment to be recreated",
            Duration::from_secs(60),
            || async {
                match deployments.get_opt("drift-scheduler").await {
                    Ok(Some(d)) if d.uid() != old_uid => Poll::Ready(()),
                    other => Poll::Pending(format!("{:?}", other.map(|d| d.map(|d| d.uid())))),
                }
            },
        )
        .await;

        // A deleted Service comes back, on the same ClusterIP, so kubeconfigs stay valid.
        let old = services.get("drift-apiserver").await.unwrap();
        let old_ip = old.spec.clone().unwrap().cluster_ip;
        services
            .delete("drift-apiserver", &DeleteParams::default())
            .await
            .unwrap();
        let new_ip = wait_for(
            "the apiserver Service to be recreated",
            Duration::from_secs(60),
            || async {
                match services.get_opt("drift-apiserver").await {
                    Ok(Some(s)) if s.uid() != old.uid() => Poll::Ready(s.spec.unwrap().cluster_ip),
                    other => Poll::Pending(format!("{:?}", other.map(|s| s.map(|s| s.uid())))),
                }
            },
        )
        .await;
        assert_eq!(
            new_ip, old_ip,
            "the recreated Service must keep its ClusterIP"
        );

        // A field kok owns, changed by hand, is put back.
        deployments
            .patch(
                "drift-apiserver",
                &PatchParams::apply("e2e-intruder").force(),
                &Patch::Apply(json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "drift-apiserver"},
                    "spec": {"replicas": 3}
                })),
            )
            .await
            .unwrap();
        wait_for(
            "apiserver replicas put back to 1",
            Duration::from_secs(60),
            || async {
                match deployments.get("drift-apiserver").await {
                    Ok(d) if d.spec.as_ref().and_then(|s| s.replicas) == Some(1) => Poll::Ready(()),
                    Ok(d) => {
                        Poll::Pending(format!("replicas {:?}", d.spec.and_then(|s| s.replicas)))
                    }
                    Err(e) => Poll::Pending(e.to_string()),
                }
            },
        )
        .await;
        tenant::wait_ready(&client, &ns, "drift", READY_TIMEOUT).await;
        let tenant = tenant::tenant_client(&client, &ns, "drift").await;
        Api::<Namespace>::all(tenant)
            .get("kube-system")
            .await
            .expect("tenant still serves after drift");
    })
    .await;
}

async fn invalid_spec_events(client: &Client, ns: &str, name: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some("InvalidSpec"))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test]
async fn bad_specs_stall_with_the_field_named_and_touch_nothing() {
    with_namespace("tc-bad", |client, ns| async move {
        // Invalid from the start: nothing is created. (Values the CRD schema
        // refuses never get here: e2e/tests/bad_input.rs covers those.)
        let mut bad = tenant::dev_tenant("bad", 1);
        bad.spec.networking.service_cidr = "10.0.0.0/8".into();
        bad.spec.networking.pod_cidr = "10.244.0.0/16".into();
        tenant::create(&client, &ns, &bad).await;
        let stalled = tenant::wait_condition(
            &client,
            &ns,
            "bad",
            "Stalled",
            "True",
            Duration::from_secs(60),
        )
        .await;
        let msg = &condition(&stalled, "Stalled").unwrap().message;
        assert!(msg.contains("spec.networking.podCIDR"), "{msg}");
        assert_eq!(
            count_children(&client, &ns, "bad").await,
            0,
            "an invalid spec must create nothing"
        );
        let events = invalid_spec_events(&client, &ns, "bad").await;
        assert!(
            events.iter().any(|n| n.contains("spec.networking.podCIDR")),
            "{events:?}"
        );

        // Fixing it recovers.
        tenant::patch_spec(
            &client,
            &ns,
            "bad",
            json!({"networking": {"serviceCIDR": "10.96.0.0/12"}}),
        )
        .await;
        tenant::wait_ready(&client, &ns, "bad", READY_TIMEOUT).await;
        let tc_now = tenant::wait_condition(
            &client,
            &ns,
            "bad",
            "Stalled",
            "False",
            Duration::from_secs(10),
        )
        .await;
        assert!(condition(&tc_now, "Stalled").is_some());

        // Breaking a running tenant changes none of its children.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let before = deployments
            .get("bad-apiserver")
            .await
            .unwrap()
            .metadata
            .generation;
        for (patch, field, words) in [
            (
                json!({"version": "v1.19.4"}),
                "spec.version",
                "not supported",
            ),
            // etcd runs 3.4.23 (recorded once Ready): it never goes down a minor.
            (
                json!({"etcd": {"version": "3.3.27"}}),
                "spec.etcd.version",
                "going down",
            ),
            // A flag kok sets itself. (A member count change is no longer
            // refused: it is scaled live, tests/scale.rs.)
            (
                json!({"controlPlane": {"apiserver": {"extraArgs": {"etcd-servers": "http://evil:2379"}}}}),
                "spec.controlPlane.apiserver.extraArgs",
                "managed by kok",
            ),
        ] {
            tenant::patch_spec(&client, &ns, "bad", patch.clone()).await;
            let t = tenant::wait_condition(
                &client,
                &ns,
                "bad",
                "Stalled",
                "True",
                Duration::from_secs(60),
            )
            .await;
            let msg = &condition(&t, "Stalled").unwrap().message;
            assert!(msg.contains(field) && msg.contains(words), "{patch}: {msg}");
            tenant::patch_spec(
                &client,
                &ns,
                "bad",
                json!({"version": "v1.20.2", "etcd": {"version": "3.4.23"},
                       "controlPlane": {"apiserver": {"extraArgs": null}}}),
            )
            .await;
            tenant::wait_condition(
                &client,
                &ns,
                "bad",
                "Stalled",
                "False",
                Duration::from_secs(60),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = deployments
            .get("bad-apiserver")
            .await
            .unwrap()
            .metadata
            .generation;
        // The generation moves only when the spec is written (status updates do not).
        assert_eq!(
            before, after,
            "invalid specs must not touch the apiserver Deployment"
        );
        tenant::wait_ready(&client, &ns, "bad", READY_TIMEOUT).await;
    })
    .await;
}

#[tokio::test]
async fn deletion_removes_every_child_and_a_restart_mid_creation_converges() {
    with_namespace("tc-life", |client, ns| async move {
        tenant::create(&client, &ns, &tenant::dev_tenant("life", 1)).await;
        // Kill every operator pod while the tenant is being created.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let operators: Api<Pod> = Api::namespaced(client.clone(), "kok-system");
        let lp = ListParams::default().labels("app.kubernetes.io/name=kok-operator");
        let before: Vec<String> = operators
            .list(&lp)
            .await
            .unwrap()
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert!(!before.is_empty(), "no operator pods found in kok-system");
        for p in &before {
            operators
                .delete(p, &DeleteParams::default().grace_period(0))
                .await
                .unwrap();
        }
        tenant::wait_ready(&client, &ns, "life", READY_TIMEOUT).await;
        assert!(count_children(&client, &ns, "life").await > 0);

        let api: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
        api.delete("life", &DeleteParams::default()).await.unwrap();
        wait_for(
            "the TenantCluster to be gone",
            Duration::from_secs(120),
            || async {
                match api.get_opt("life").await {
                    Ok(None) => Poll::Ready(()),
                    Ok(Some(tc)) => Poll::Pending(format!(
                        "still there, finalizers {:?}",
                        tc.metadata.finalizers
                    )),
                    Err(e) => Poll::Pending(e.to_string()),
                }
            },
        )
        .await;
        let left = count_children(&client, &ns, "life").await;
        assert_eq!(left, 0, "children left after deletion");
        // The key that seals its Secrets stays, like its etcd volumes: a
        // TenantCluster of the same name adopting them needs it.
        assert!(
            Api::<Secret>::namespaced(client.clone(), &ns)
                .get_opt("life-encryption")
                .await
                .unwrap()
                .is_some(),
            "the key for Secrets at rest is kept"
        );
    })
    .await;
}
