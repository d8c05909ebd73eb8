//! Deleting a tenant: every child kok created goes; etcd volumes stay
//! (they hold data), and kept volumes are adopted only when asked for.

use crate::runtime::context::Context;
use crate::runtime::error::Error;
use crate::runtime::error::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kok_crds::TenantCluster;
use kok_templates::names::tenant_selector;
use kok_templates::names::Names;
use kube::api::DeleteParams;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::Api;
use kube::Resource;
use kube::ResourceExt;
use std::sync::Arc;
use tracing::info;

/// Deletes every child kok created for the tenant, then lets the finalizer go.
/// etcd PersistentVolumeClaims are kept: they hold data, and kok did not
/// create them directly (the StatefulSet did); delete them by label to reclaim.
pub(super) async fn cleanup(tc: Arc<TenantCluster>, ctx: &Context) -> Result<Action> {
    let ns = tc.namespace().unwrap_or_default();
    let selector = tenant_selector(&tc.name_any());
    let lp = ListParams::default().labels(&selector);
    let dp = DeleteParams::background();
    let c = ctx.client.clone();
    // The Argo CD cluster Secret lives in Argo CD's namespace: no owner
    // reference takes it along. First, so that it goes even when kok has no
    // rights left in a namespace being deleted (namespaced mode).
    if let Some(key) = tc
        .status
        .as_ref()
        .and_then(|s| s.argocd_cluster_secret.as_ref())
    {
        let owner = format!("{ns}/{}/{}", tc.name_any(), tc.uid().unwrap_or_default());
        super::access::delete_if_ours(ctx, key, &owner).await?;
    }
    let remaining = delete_all(&Api::<Deployment>::namespaced(c.clone(), &ns), &dp, &lp).await?
        + delete_all(&Api::<StatefulSet>::namespaced(c.clone(), &ns), &dp, &lp).await?
        + delete_all(&Api::<Service>::namespaced(c.clone(), &ns), &dp, &lp).await?
        + delete_all(&Api::<NetworkPolicy>::namespaced(c.clone(), &ns), &dp, &lp).await?
        + delete_all(&Api::<Secret>::namespaced(c.clone(), &ns), &dp, &lp).await?
        + delete_all(&Api::<ConfigMap>::namespaced(c.clone(), &ns), &dp, &lp).await?;
    ctx.metrics.forget_tenant(&ns, &tc.name_any());
    ctx.forget_fleet_member(&ns, &tc.name_any());
    if remaining > 0 {
        return Err(Error::CleanupPending(tc.name_any()));
    }
    crate::backup::schedule::delete_all_backups(ctx, &tc).await?;
    info!("tenant children deleted; releasing finalizer");
    Ok(Action::await_change())
}

/// Deletes what matches and returns how many objects still exist afterwards.
pub(super) async fn delete_all<K>(api: &Api<K>, dp: &DeleteParams, lp: &ListParams) -> Result<usize>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let existing = api.list_metadata(lp).await?;
    for obj in &existing.items {
        crate::runtime::api::gone_is_done(api.delete(&obj.name_any(), dp).await)?;
    }
    if existing.items.is_empty() {
        return Ok(0);
    }
    Ok(api.list_metadata(lp).await?.items.len())
}

/// Refuses to start a new etcd on claims that already exist under this
/// tenant's names (kept from a deleted TenantCluster of the same name) unless
/// the user asked for adoption, and then only when they match the member count:
/// a 1-member volume next to 2 fresh ones would make two etcd clusters.
pub(super) async fn check_kept_volumes(
    ctx: &Context,
    tc: &TenantCluster,
    names: &Names,
    replicas: i32,
) -> Result<()> {
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &tc.namespace().unwrap_or_default());
    let mut kept = Vec::new();
    for i in 0..kok_templates::names::MAX_ETCD_MEMBERS {
        let claim = kok_templates::restore::member_claim(names, i);
        if claims.get_opt(&claim).await?.is_some() {
            kept.push((i, claim));
        }
    }
    let adopt = tc
        .annotations()
        .get(kok_crds::ADOPT_VOLUMES_ANNOTATION)
        .is_some_and(|v| v == "true");
    match kept_volumes_problem(&kept, replicas, adopt) {
        None => Ok(()),
        Some(problem) => Err(Error::VolumesNotAdoptable(problem)),
    }
}

/// Why the kept claims (member index, name) cannot be used, if they cannot.
pub fn kept_volumes_problem(kept: &[(i32, String)], replicas: i32, adopt: bool) -> Option<String> {
    if kept.is_empty() {
        return None;
    }
    let listed = kept
        .iter()
        .map(|(_, n)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if !adopt {
        return Some(format!(
            "PersistentVolumeClaims {listed} already exist, kept from an earlier etcd of this name; kok does not start on data it did not create: set annotation {}=\"true\" to reuse them, or delete them",
            kok_crds::ADOPT_VOLUMES_ANNOTATION
        ));
    }
    let indices: Vec<i32> = kept.iter().map(|(i, _)| *i).collect();
    if indices != (0..replicas).collect::<Vec<_>>() {
        return Some(format!(
            "{} asks to reuse the kept claims, but they ({listed}) are not one per member for spec.etcd.replicas={replicas}; reusing them would make separate etcd clusters",
            kok_crds::ADOPT_VOLUMES_ANNOTATION
        ));
    }
    None
}
