//! Whole reconcile passes of a TenantCluster against a fake management API
//! (`runtime::fake_api`): what one pass reads, what it writes, and that it
//! writes nothing else.

use std::sync::Arc;

use kok_crds::TenantCluster;
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use super::reconcile;
use crate::runtime::fake_api::{self, empty_cluster, Answer, Seen};

const NS: &str = "team-a";

const UID: &str = "0b5e7d2e-1111-4222-8333-944455556666";

/// A TenantCluster as the API serves it after kok's first pass added its
/// finalizer, with `spec` and `annotations` as given.
fn tenant(spec: Value, annotations: Value) -> Arc<TenantCluster> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "kok.dev/v1alpha1",
            "kind": "TenantCluster",
            "metadata": {
                "name": "t", "namespace": NS, "uid": UID,
                "generation": 3, "resourceVersion": "17",
                "finalizers": [super::FINALIZER],
                "annotations": annotations,
            },
            "spec": spec,
        }))
        .expect("a TenantCluster"),
    )
}

fn valid_spec() -> Value {
    json!({
        "version": "v1.20.2",
        "etcd": {"replicas": 1, "version": "3.4.23", "storage": {"ephemeral": true}},
    })
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no condition {type_} in {status}"))
}

/// The pass wrote nothing but its status and Events.
fn assert_touched_nothing(requests: &fake_api::Requests, why: &str) {
    let writes = requests.other_writes();
    assert!(writes.is_empty(), "{why}: {writes:?}");
}

/// The pass with `route` answering, and what it asked for.
async fn pass(
    tc: Arc<TenantCluster>,
    route: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
) -> (crate::runtime::error::Result<Action>, fake_api::Requests) {
    // A status write is answered with the object it applies to, as the API does.
    let object = serde_json::to_value(tc.as_ref()).expect("a TenantCluster serialises");
    let (client, requests) = fake_api::client(move |seen| {
        // The stored object is the one the pass was handed: it is current.
        if seen.is_read() && seen.path.ends_with("/tenantclusters/t") {
            return (200, object.clone());
        }
        if seen.is_status_write() {
            let mut written = object.clone();
            written["status"] = seen.body["status"].clone();
            return (200, written);
        }
        route(seen)
    });
    let ctx = fake_api::context(client);
    (reconcile(tc, ctx).await, requests)
}

#[tokio::test]
async fn an_invalid_spec_stalls_naming_the_field_and_touches_nothing() {
    let mut spec = valid_spec();
    spec["etcd"]["replicas"] = json!(2);
    let (result, requests) = pass(tenant(spec, json!({})), empty_cluster).await;

    assert_eq!(
        result.expect("a held pass is no error"),
        Action::await_change()
    );
    assert_touched_nothing(&requests, "an invalid spec touches nothing");
    let status = requests.last_status().expect("the status is written");
    let stalled = condition(&status, "Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "InvalidSpec");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("spec.etcd.replicas"),
        "names the field: {stalled}"
    );
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "Reconciling")["status"], "False");
    assert_eq!(status["observedGeneration"], 3);
    let events = requests.events();
    assert_eq!(events.len(), 1, "one Event: {events:?}");
    assert_eq!(events[0]["reason"], "InvalidSpec");
    assert_eq!(events[0]["type"], "Warning");
    assert!(events[0]["note"]
        .as_str()
        .unwrap()
        .contains("spec.etcd.replicas"));
}

/// An EtcdRestore named `r1` in phase `phase`, or none.
fn restore_route(phase: Option<&'static str>) -> impl Fn(&Seen) -> Answer + Send + Sync {
    move |seen| match phase {
        Some(phase) if seen.is_read() && seen.path.ends_with("/etcdrestores/r1") => (
            200,
            json!({
                "apiVersion": "kok.dev/v1alpha1", "kind": "EtcdRestore",
                "metadata": {"name": "r1", "namespace": NS, "uid": "r-1"},
                "spec": {"tenantCluster": "t", "backup": "b1"},
                "status": {"phase": phase, "message": "the member Job failed"},
            }),
        ),
        _ => empty_cluster(seen),
    }
}

fn held_by_r1() -> Value {
    json!({ kok_crds::RESTORE_ANNOTATION: "r1" })
}

#[tokio::test]
async fn a_restore_in_progress_holds_the_tenant_and_the_pass_leaves_the_control_plane_alone() {
    let (result, requests) = pass(
        tenant(valid_spec(), held_by_r1()),
        restore_route(Some("RestoringEtcd")),
    )
    .await;

    assert_eq!(result.expect("held"), Action::await_change());
    assert_touched_nothing(&requests, "the restore owns the control plane");
    assert!(
        requests
            .all()
            .iter()
            .any(|s| s.is_read() && s.path.ends_with("/etcdrestores/r1")),
        "the restore's own record is what holds the tenant"
    );
    let status = requests.last_status().expect("the status is written");
    let reconciling = condition(&status, "Reconciling");
    assert_eq!(reconciling["status"], "True");
    assert_eq!(reconciling["reason"], "RestoreInProgress");
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "Stalled")["status"], "False");
    assert!(requests.events().is_empty(), "nothing to tell a person yet");
}

#[tokio::test]
async fn a_restore_deleted_midway_stalls_the_tenant_and_says_how_to_resume() {
    let (result, requests) = pass(tenant(valid_spec(), held_by_r1()), restore_route(None)).await;

    // Looked at again later (the annotation may be removed by hand).
    assert!(result.is_ok());
    assert_touched_nothing(&requests, "the pass touches nothing else");
    let status = requests.last_status().expect("the status is written");
    let stalled = condition(&status, "Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "RestoreAbandoned");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains(kok_crds::RESTORE_ANNOTATION),
        "names the annotation to remove: {stalled}"
    );
    let events = requests.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "RestoreAbandoned");
}

#[tokio::test]
async fn a_failed_restore_stalls_the_tenant_with_the_restores_own_message() {
    let (_, requests) = pass(
        tenant(valid_spec(), held_by_r1()),
        restore_route(Some("Failed")),
    )
    .await;

    assert_touched_nothing(&requests, "the pass touches nothing else");
    let status = requests.last_status().expect("the status is written");
    let stalled = condition(&status, "Stalled");
    assert_eq!(stalled["reason"], "RestoreFailed");
    assert!(stalled["message"]
        .as_str()
        .unwrap()
        .contains("the member Job failed"));
}

#[tokio::test]
async fn a_paused_tenant_is_left_as_it_is() {
    let mut spec = valid_spec();
    spec["paused"] = json!(true);
    let (result, requests) = pass(tenant(spec, json!({})), empty_cluster).await;

    assert_eq!(result.expect("held"), Action::await_change());
    assert_touched_nothing(&requests, "the pass touches nothing else");
    let status = requests.last_status().expect("the status is written");
    assert_eq!(condition(&status, "Reconciling")["reason"], "Paused");
}

/// The cluster of a tenant that ran: its Services have addresses, and its CA
/// Secrets (this tenant's) hold something that is not a certificate.
fn corrupt_ca_route(seen: &Seen) -> Answer {
    let name = seen.path.rsplit('/').next().unwrap_or_default().to_string();
    if seen.method == http::Method::PATCH && seen.path.contains("/services/") {
        let mut svc = seen.body.clone();
        svc["spec"]["clusterIP"] = json!("10.96.0.10");
        return (200, svc);
    }
    if seen.is_read() && seen.path.contains("/secrets/") && name.ends_with("ca") {
        return (
            200,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": NS, "ownerReferences": [{
                    "apiVersion": "kok.dev/v1alpha1", "kind": "TenantCluster", "name": "t",
                    "uid": UID, "controller": true}]},
                "data": {"tls.crt": "bm90IGEgY2VydGlmaWNhdGU=", "tls.key": "bm90IGEga2V5"},
            }),
        );
    }
    empty_cluster(seen)
}

#[tokio::test]
async fn a_corrupt_ca_is_never_replaced_and_stalls_a_ready_tenant() {
    let mut tc = tenant(valid_spec(), json!({}));
    Arc::make_mut(&mut tc).status = Some(
        serde_json::from_value(json!({"conditions": [{
            "type": "Ready", "status": "True", "reason": "Ready", "message": "serving",
            "lastTransitionTime": "2026-12-01T00:00:00Z"}]}))
        .unwrap(),
    );
    let (result, requests) = pass(tc, corrupt_ca_route).await;

    assert_eq!(result.expect("held"), Action::await_change());
    // Services may be applied (their addresses go into certificates); no
    // Secret is written (a CA is never regenerated) and nothing runs.
    let touched: Vec<_> = requests
        .other_writes()
        .into_iter()
        .filter(|s| !s.path.contains("/services/"))
        .collect();
    assert!(touched.is_empty(), "{touched:?}");
    let status = requests.last_status().expect("the status is written");
    let stalled = condition(&status, "Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "CorruptCA");
    assert!(
        stalled["message"].as_str().unwrap().contains("Secret t-ca"),
        "{stalled}"
    );
    assert_eq!(
        condition(&status, "Ready")["status"],
        "False",
        "not Ready any more"
    );
    assert_eq!(condition(&status, "Reconciling")["status"], "False");
    assert_eq!(condition(&status, "CertificatesReady")["status"], "False");
    let events = requests.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "CorruptCA");
}

#[tokio::test]
async fn a_pass_handed_a_stale_object_acts_on_nothing_and_looks_again() {
    // The API stores a newer version than the cached one the pass is handed.
    let tc = tenant(valid_spec(), json!({}));
    let mut stored = serde_json::to_value(tc.as_ref()).unwrap();
    stored["metadata"]["resourceVersion"] = json!("18");
    let (client, requests) = fake_api::client(move |seen| {
        if seen.is_read() && seen.path.ends_with("/tenantclusters/t") {
            return (200, stored.clone());
        }
        empty_cluster(seen)
    });
    let result = reconcile(tc, fake_api::context(client)).await;

    assert_eq!(
        result.expect("no error"),
        Action::requeue(std::time::Duration::from_secs(1))
    );
    assert_eq!(
        requests.all().len(),
        1,
        "one read, nothing else: {:?}",
        requests.all()
    );
}
