//! Bad input, as a careless or hostile user would write it: every manifest is
//! either refused by the API server (the CRD schema) or gets `Stalled=True`
//! naming the field within 10 s, and a healthy tenant next to them keeps being
//! reconciled, also after an operator restart.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kok_crds::TenantCluster;
use kok_e2e::tenant::{self, condition};
use kok_e2e::{wait_for, with_namespace, Poll};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde_json::{json, Value};

const READY_TIMEOUT: Duration = Duration::from_secs(240);
const STALL_WITHIN: Duration = Duration::from_secs(10);

/// A paused TenantCluster (so nothing would run even if it were accepted) with
/// `spec` merged over a valid base.
fn manifest(name: &str, spec: Value) -> Value {
    let mut base = json!({
        "version": "v1.20.2",
        "paused": true,
        "etcd": {"storage": {"ephemeral": true}},
    });
    merge(&mut base, spec);
    json!({
        "apiVersion": "kok.dev/v1alpha1",
        "kind": "TenantCluster",
        "metadata": {"name": name},
        "spec": base,
    })
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

fn s3(endpoint: &str) -> Value {
    json!({"backup": {"destination": {"s3": {
        "bucket": "backups", "endpoint": endpoint, "credentialsSecret": "s3"}}}})
}

/// (manifest name, spec over the base, the field the refusal must name).
fn table() -> Vec<(String, Value, &'static str)> {
    let long = |n: usize| "a".repeat(n);
    let cases: Vec<(String, Value, &str)> = vec![
        (
            "huge-replicas".into(),
            json!({"etcd": {"replicas": 4294967296u64}}),
            "replicas",
        ),
        (
            "even-replicas".into(),
            json!({"etcd": {"replicas": 2}}),
            "replicas",
        ),
        (
            "text-replicas".into(),
            json!({"etcd": {"replicas": "three"}}),
            "replicas",
        ),
        (
            "no-apiservers".into(),
            json!({"controlPlane": {"apiserver": {"replicas": 0}}}),
            "replicas",
        ),
        (
            "many-apiservers".into(),
            json!({"controlPlane": {"apiserver": {"replicas": 11}}}),
            "replicas",
        ),
        (
            "word-version".into(),
            json!({"version": "banana"}),
            "version",
        ),
        ("number-version".into(), json!({"version": 1.2}), "version"),
        (
            "old-version".into(),
            json!({"version": "v1.19.4"}),
            "spec.version",
        ),
        (
            "future-version".into(),
            json!({"version": "v1.99.0"}),
            "spec.version",
        ),
        (
            "lots-storage".into(),
            json!({"etcd": {"storage": {"ephemeral": false, "size": "lots"}}}),
            "size",
        ),
        (
            "zero-storage".into(),
            json!({"etcd": {"storage": {"ephemeral": false, "size": "0"}}}),
            "spec.etcd.storage.size",
        ),
        (
            "banana-cpu".into(),
            json!({"etcd": {"resources": {"requests": {"cpu": "banana"}}}}),
            "cpu",
        ),
        (
            "banana-memory".into(),
            json!({"controlPlane": {"scheduler": {"resources": {"limits": {"memory": "2 gigs"}}}}}),
            "memory",
        ),
        ("1demo".into(), json!({}), "metadata.name"),
        (long(48), json!({}), "metadata.name"),
        (long(60), json!({}), "metadata.name"),
        ("good-etcd".into(), json!({}), "metadata.name"),
        ("good-front-proxy".into(), json!({}), "metadata.name"),
        ("good-scheduler".into(), json!({}), "metadata.name"),
        ("good-controller-manager".into(), json!({}), "metadata.name"),
        (
            "wide-service".into(),
            json!({"networking": {"serviceCIDR": "10.96.0.0/33"}}),
            "spec.networking.serviceCIDR",
        ),
        (
            "word-pods".into(),
            json!({"networking": {"podCIDR": "banana"}}),
            "spec.networking.podCIDR",
        ),
        (
            "overlap".into(),
            json!({"networking": {"serviceCIDR": "10.0.0.0/8", "podCIDR": "10.244.0.0/16"}}),
            "spec.networking.podCIDR",
        ),
        (
            "host-bits".into(),
            json!({"networking": {"serviceCIDR": "10.96.0.1/12"}}),
            "spec.networking.serviceCIDR",
        ),
        (
            "bad-domain".into(),
            json!({"networking": {"clusterDomain": "-bad-.local"}}),
            "spec.networking.clusterDomain",
        ),
        (
            "bad-san".into(),
            json!({"controlPlane": {"certSANs": ["not a name"]}}),
            "spec.controlPlane.certSANs[0]",
        ),
        (
            "managed-flag".into(),
            json!({"controlPlane": {"apiserver": {"extraArgs": {"etcd-servers": "http://evil:2379"}}}}),
            "spec.controlPlane.apiserver.extraArgs",
        ),
        (
            "dashed-flag".into(),
            json!({"controlPlane": {"scheduler": {"extraArgs": {"--v": "4"}}}}),
            "spec.controlPlane.scheduler.extraArgs",
        ),
        (
            "bad-service-type".into(),
            json!({"controlPlane": {"service": {"type": "Ingress"}}}),
            "type",
        ),
        (
            "slash-registry".into(),
            json!({"imageRepository": "registry.example.com/"}),
            "imageRepository",
        ),
        (
            "bad-cron".into(),
            json!({"backup": {"schedule": "every day", "destination": {"filesystem": {"path": "/var/lib/kok/backups/x"}}}}),
            "spec.backup.schedule",
        ),
        (
            "bad-age".into(),
            json!({"backup": {"retention": {"maxAge": "7 days"}, "destination": {"filesystem": {"path": "/var/lib/kok/backups/x"}}}}),
            "maxAge",
        ),
        (
            "keep-none".into(),
            json!({"backup": {"retention": {"keepLast": 0}, "destination": {"filesystem": {"path": "/var/lib/kok/backups/x"}}}}),
            "keepLast",
        ),
        (
            "escape-path".into(),
            json!({"backup": {"destination": {"filesystem": {"path": "/var/lib/kok/backups/../../../etc"}}}}),
            "spec.backup.destination.filesystem.path",
        ),
        (
            "outside-path".into(),
            json!({"backup": {"destination": {"filesystem": {"path": "/etc"}}}}),
            "spec.backup.destination.filesystem.path",
        ),
        (
            "two-destinations".into(),
            json!({"backup": {"destination": {"filesystem": {"path": "/var/lib/kok/backups/x"}, "s3": {"bucket": "backups", "credentialsSecret": "s"}}}}),
            "spec.backup.destination",
        ),
        (
            "metadata-endpoint".into(),
            s3("https://169.254.169.254"),
            "spec.backup.destination.s3.endpoint",
        ),
        (
            "ftp-endpoint".into(),
            s3("ftp://example.com"),
            "spec.backup.destination.s3.endpoint",
        ),
    ];
    cases
}

fn tenant_resource() -> ApiResource {
    ApiResource::erase::<TenantCluster>(&())
}

/// How the cluster answered one bad manifest.
enum Outcome {
    Refused(String),
    Stalled(String),
}

async fn submit(client: &Client, ns: &str, name: &str, obj: Value) -> Outcome {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &tenant_resource());
    let obj: DynamicObject = serde_json::from_value(obj).expect("manifest is an object");
    match api.create(&PostParams::default(), &obj).await {
        Err(kube::Error::Api(e)) => return Outcome::Refused(e.message.clone()),
        Err(e) => panic!("creating {name}: {e}"),
        Ok(_) => {}
    }
    let typed: Api<TenantCluster> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        if let Ok(Some(tc)) = typed.get_opt(name).await {
            if let Some(c) = condition(&tc, "Stalled").filter(|c| c.status == "True") {
                return Outcome::Stalled(c.message.clone());
            }
        }
        assert!(
            start.elapsed() < STALL_WITHIN,
            "{name}: accepted by the API and not Stalled within {STALL_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sets an apiserver flag on `name` and waits until its Deployment carries it:
/// proof that the operator still reconciles this tenant.
async fn still_reconciled(client: &Client, ns: &str, name: &str, verbosity: &str) {
    tenant::patch_spec(
        client,
        ns,
        name,
        json!({"controlPlane": {"apiserver": {"extraArgs": {"v": verbosity}}}}),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let flag = format!("--v={verbosity}");
    wait_for(
        &format!("{name}-apiserver to get {flag}"),
        Duration::from_secs(120),
        || async {
            let args = deployments
                .get_opt(&format!("{name}-apiserver"))
                .await
                .ok()
                .flatten()
                .and_then(|d| d.spec)
                .and_then(|s| s.template.spec)
                .map(|p| {
                    p.containers[0]
                        .command
                        .clone()
                        .unwrap_or_default()
                        .join(" ")
                        + &p.containers[0].args.clone().unwrap_or_default().join(" ")
                })
                .unwrap_or_default();
            if args.contains(&flag) {
                Poll::Ready(())
            } else {
                Poll::Pending(args)
            }
        },
    )
    .await;
}

#[tokio::test]
async fn bad_manifests_are_refused_or_stalled_and_never_stop_the_others() {
    with_namespace("bad-input", |client, ns| async move {
        tenant::create(&client, &ns, &tenant::dev_tenant("healthy", 1)).await;
        tenant::wait_ready(&client, &ns, "healthy", READY_TIMEOUT).await;

        let cases = table();
        assert!(cases.len() >= 25, "the table has {} manifests", cases.len());
        let mut report = Vec::new();
        for (name, spec, field) in cases {
            let outcome = submit(&client, &ns, &name, manifest(&name, spec.clone())).await;
            let (how, message) = match &outcome {
                Outcome::Refused(m) => ("refused by the API", m),
                Outcome::Stalled(m) => ("Stalled", m),
            };
            assert!(
                message.contains(field),
                "{name} ({spec}): {how}, but the message does not name {field}: {message}"
            );
            report.push(format!("{name}: {how}: {message}"));
        }
        eprintln!("{}", report.join("\n"));

        // At the length limit a name is fine.
        let at_limit = "a".repeat(kok_crds::MAX_NAME_LENGTH);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &tenant_resource());
        api.create(
            &PostParams::default(),
            &serde_json::from_value(manifest(&at_limit, json!({}))).unwrap(),
        )
        .await
        .expect("a name at the length limit is accepted");
        tenant::wait_condition(&client, &ns, &at_limit, "Stalled", "False", STALL_WITHIN).await;

        // An object the operator cannot decode (status written by someone else,
        // past i32) is reported on itself.
        tenant::create(
            &client,
            &ns,
            &serde_json::from_value(manifest("undecodable", json!({}))).unwrap(),
        )
        .await;
        // Untyped: the answer is exactly what a typed client cannot read.
        api.patch_status(
            "undecodable",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"etcdReplicas": 4294967296u64}})),
        )
        .await
        .expect("the status schema takes any integer");
        let stalled = wait_for(
            "undecodable to be Stalled",
            Duration::from_secs(30),
            || async {
                let raw = api.get("undecodable").await.unwrap();
                let conds = raw
                    .data
                    .pointer("/status/conditions")
                    .cloned()
                    .unwrap_or_default();
                match conds.as_array().and_then(|cs| {
                    cs.iter()
                        .find(|c| c["type"] == "Stalled" && c["status"] == "True")
                        .cloned()
                }) {
                    Some(c) => Poll::Ready(c["message"].as_str().unwrap_or_default().to_string()),
                    None => Poll::Pending(conds.to_string()),
                }
            },
        )
        .await;
        assert!(stalled.contains("status.etcdReplicas"), "{stalled}");

        // The healthy tenant is still looked after, before and after a restart
        // (the restarted operator lists every object above, bad ones included).
        still_reconciled(&client, &ns, "healthy", "3").await;
        kok_e2e::kill_operator(&client).await;
        still_reconciled(&client, &ns, "healthy", "4").await;
        tenant::wait_ready(&client, &ns, "healthy", READY_TIMEOUT).await;

        // Deleting the unreadable object must not hang on kok's finalizer
        // (its namespace would stay Terminating for ever).
        api.delete("undecodable", &DeleteParams::default())
            .await
            .expect("deleting the undecodable TenantCluster");
        wait_for(
            "the undecodable TenantCluster to be gone",
            Duration::from_secs(30),
            || async {
                match api.get_opt("undecodable").await.unwrap() {
                    None => Poll::Ready(()),
                    Some(o) => Poll::Pending(format!("finalizers {:?}", o.metadata.finalizers)),
                }
            },
        )
        .await;
    })
    .await;
}

/// `a-etcd` would share `a`'s etcd CA (`a-etcd-ca`) as its cluster CA: it is
/// refused, and `a`'s CAs stay its own. A user's Secret under a child's name is
/// never taken over either.
#[tokio::test]
async fn colliding_names_never_share_a_ca() {
    with_namespace("collide", |client, ns| async move {
        tenant::create(&client, &ns, &tenant::dev_tenant("a", 1)).await;
        tenant::wait_ready(&client, &ns, "a", READY_TIMEOUT).await;
        let etcd_ca_before = tenant::secret_text(&client, &ns, "a-etcd-ca", "tls.crt").await;

        tenant::create(&client, &ns, &tenant::dev_tenant("a-etcd", 1)).await;
        let t =
            tenant::wait_condition(&client, &ns, "a-etcd", "Stalled", "True", STALL_WITHIN).await;
        let msg = &condition(&t, "Stalled").unwrap().message;
        assert!(
            msg.contains("metadata.name") && msg.contains("\"a\""),
            "{msg}"
        );
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        assert!(
            secrets.get_opt("a-etcd-etcd-ca").await.unwrap().is_none(),
            "the refused tenant created nothing"
        );
        assert_eq!(
            tenant::secret_text(&client, &ns, "a-etcd-ca", "tls.crt").await,
            etcd_ca_before
        );

        // A Secret someone else made under a child's name: Stalled, naming it.
        let foreign: Secret = serde_json::from_value(json!({
            "metadata": {"name": "b-etcd-ca"},
            "stringData": {"tls.crt": "mine", "tls.key": "mine"}
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &foreign)
            .await
            .unwrap();
        tenant::create(&client, &ns, &tenant::dev_tenant("b", 1)).await;
        let t = tenant::wait_condition(
            &client,
            &ns,
            "b",
            "Stalled",
            "True",
            Duration::from_secs(30),
        )
        .await;
        let c = condition(&t, "Stalled").unwrap();
        assert_eq!(c.reason, "NameConflict", "{}", c.message);
        assert!(c.message.contains("b-etcd-ca"), "{}", c.message);
        let kept = secrets.get("b-etcd-ca").await.unwrap();
        assert!(
            kept.meta().owner_references.is_none(),
            "the user's Secret was not adopted"
        );

        // Removing the conflicting Secret lets it proceed.
        secrets
            .delete("b-etcd-ca", &DeleteParams::default())
            .await
            .unwrap();
        tenant::wait_ready(&client, &ns, "b", READY_TIMEOUT).await;
        assert_ne!(
            tenant::secret_text(&client, &ns, "b-etcd-ca", "tls.crt").await,
            "mine"
        );
    })
    .await;
}
