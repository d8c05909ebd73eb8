//! Watching kok's resources without letting one bad object stop the rest.
//!
//! A list or watch of `K` fails as a whole when one stored object does not
//! deserialize (an integer past `i32` stored before the schema bounded it, a
//! CRD applied by hand without its schema). The controllers therefore watch
//! [`Lenient<K>`]: every object decodes, either to `K` or to its metadata and
//! the reason `K` could not be read. The bad object is reported on itself
//! (`Stalled` + a Warning Event) and waits for an edit; the others go on.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kok_crds::condition;
use kube::api::{Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use tracing::warn;

use crate::runtime::conditions;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};
use kok_templates::kstatus::Summary;

/// An object of kind `K` as stored, decoded or not.
#[derive(Clone, Debug)]
pub struct Lenient<K> {
    meta: ObjectMeta,
    /// The object, or why it could not be read as a `K` (with the field path).
    pub object: Result<K, String>,
    /// `status.conditions` as stored, kept when reporting an undecodable object.
    conditions: Vec<Condition>,
}

impl<K: Resource<DynamicType = ()>> Resource for Lenient<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        K::api_version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Ok(Self::from_value(value))
    }
}

impl<K: DeserializeOwned> Lenient<K> {
    pub fn from_value(value: serde_json::Value) -> Self {
        let meta = value
            .get("metadata")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default();
        let conditions = value
            .pointer("/status/conditions")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        let object = serde_path_to_error::deserialize::<_, K>(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        });
        Self {
            meta,
            object,
            conditions,
        }
    }
}

/// How long an undecodable object waits before it is reported again, in case
/// its Event was lost; an edit wakes it at once.
const UNDECODABLE_RECHECK: Duration = Duration::from_secs(600);

/// Runs `reconcile` on a decodable object; reports an undecodable one.
pub async fn reconcile<K, F, Fut>(
    obj: Arc<Lenient<K>>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action>>,
{
    match &obj.object {
        Ok(k) => reconcile(Arc::new(k.clone()), ctx).await,
        Err(why) if obj.meta.deletion_timestamp.is_some() => {
            release_finalizers(&obj, why, &ctx).await?;
            Ok(Action::await_change())
        }
        Err(why) => {
            report_undecodable(&obj, why, &ctx).await?;
            Ok(Action::requeue(UNDECODABLE_RECHECK))
        }
    }
}

/// The finalizers left when kok's own are taken off, or `None` when the
/// object carries none of kok's.
pub fn without_kok_finalizers(finalizers: &[String]) -> Option<Vec<String>> {
    let kept: Vec<String> = finalizers
        .iter()
        .filter(|f| !f.starts_with(KOK_FINALIZER_PREFIX))
        .cloned()
        .collect();
    (kept.len() != finalizers.len()).then_some(kept)
}

const KOK_FINALIZER_PREFIX: &str = "kok.dev/";

/// A deleted object kok cannot read would otherwise hang in deletion for
/// ever (its namespace too): kok's cleanup needs the spec, so the finalizer
/// is released and the reason stated. Children go by garbage collection
/// (they carry owner references); a tenant whose restore is released this way
/// reports `RestoreAbandoned` and stays stopped until someone acts.
async fn release_finalizers<K>(obj: &Lenient<K>, why: &str, ctx: &Context) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let current = obj.meta.finalizers.clone().unwrap_or_default();
    let Some(kept) = without_kok_finalizers(&current) else {
        return Ok(());
    };
    let kind = K::kind(&());
    let name = obj.name_any();
    let message = format!(
        "the {kind} cannot be read ({why}): kok released its finalizer without its cleanup; owned objects are garbage-collected"
    );
    warn!(%kind, %name, %message, "releasing an undecodable object");
    let api: Api<Lenient<K>> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    // Compare-and-swap on the resourceVersion: another writer's finalizer is never dropped.
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {
            "resourceVersion": obj.meta.resource_version,
            "finalizers": kept,
        }})),
    )
    .await?;
    ctx.publish(
        obj,
        EventType::Warning,
        "FinalizerReleased",
        "Cleanup",
        &message,
    )
    .await;
    Ok(())
}

/// `error_policy` of a lenient controller: the typed one for decodable objects.
pub fn error_policy<K>(
    obj: Arc<Lenient<K>>,
    error: &Error,
    ctx: Arc<Context>,
    policy: fn(Arc<K>, &Error, Arc<Context>) -> Action,
) -> Action
where
    K: Clone,
{
    match &obj.object {
        Ok(k) => policy(Arc::new(k.clone()), error, ctx),
        Err(_) => Action::requeue(UNDECODABLE_RECHECK),
    }
}

async fn report_undecodable<K>(obj: &Lenient<K>, why: &str, ctx: &Context) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj.name_any();
    let kind = K::kind(&());
    let message = format!("the {kind} cannot be read: {why}; fix that field");
    warn!(%kind, %name, %message, "undecodable object");
    let generation = obj.meta.generation;
    let mut conds = obj.conditions.clone();
    let already = conds.iter().any(|c| {
        c.type_ == condition::STALLED
            && c.status == "True"
            && c.message == message
            && c.observed_generation == generation
    });
    if already {
        return Ok(());
    }
    let undecodable = Summary::blocked(
        "Undecodable",
        message.clone(),
        "waiting for the object to be fixed",
    );
    conditions::summarize(&mut conds, &undecodable, None, generation);
    let api: Api<Lenient<K>> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    crate::runtime::status::apply_status(
        &api,
        obj,
        crate::runtime::status::manager::DECODE,
        &serde_json::json!({"observedGeneration": generation, "conditions": conds}),
    )
    .await?;
    ctx.publish(obj, EventType::Warning, "Undecodable", "Decode", &message)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kok_crds::TenantCluster;

    fn tenant(replicas: serde_json::Value) -> Lenient<TenantCluster> {
        Lenient::from_value(serde_json::json!({
            "apiVersion": "kok.dev/v1alpha1", "kind": "TenantCluster",
            "metadata": {"name": "t", "namespace": "n", "generation": 2},
            "spec": {"version": "v1.20.2", "etcd": {"replicas": replicas}},
            "status": {"conditions": [{"type": "EtcdReady", "status": "True", "reason": "R",
                "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
    }

    #[test]
    fn only_kok_finalizers_are_released() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(without_kok_finalizers(&f(&["example.com/x"])), None);
        assert_eq!(without_kok_finalizers(&[]), None);
        assert_eq!(
            without_kok_finalizers(&f(&["kok.dev/cleanup", "example.com/x"])),
            Some(f(&["example.com/x"]))
        );
        assert_eq!(
            without_kok_finalizers(&f(&["kok.dev/restore"])),
            Some(vec![])
        );
    }

    #[test]
    fn a_good_object_decodes() {
        let t = tenant(serde_json::json!(3));
        assert_eq!(t.object.unwrap().spec.etcd.replicas, 3);
        assert_eq!(t.meta.name.as_deref(), Some("t"));
    }

    #[test]
    fn a_bad_object_keeps_its_metadata_and_names_the_field() {
        let t = tenant(serde_json::json!(4294967296u64));
        let why = t.object.unwrap_err();
        assert!(why.starts_with("spec.etcd.replicas: "), "{why}");
        assert!(why.contains("4294967296"), "{why}");
        assert_eq!(t.meta.name.as_deref(), Some("t"));
        assert_eq!(t.meta.generation, Some(2));
        assert_eq!(t.conditions.len(), 1, "stored conditions are kept");
    }

    #[test]
    fn a_list_with_one_bad_object_still_decodes() {
        let list: Vec<Lenient<TenantCluster>> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "a"}, "spec": {"version": "v1.20.2"}},
            {"metadata": {"name": "b"}, "spec": {"version": 7}},
        ]))
        .unwrap();
        assert!(list[0].object.is_ok());
        assert!(list[1]
            .object
            .as_ref()
            .unwrap_err()
            .starts_with("spec.version"));
    }
}
