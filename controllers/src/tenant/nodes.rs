//! Worker nodes, from the tenant side: the objects a stock `kubeadm join`
//! reads and the addons, server-side applied through the tenant API with
//! kok's field manager (a deleted one is put back on the next round), and
//! the nodes as the tenant reports them, for `status.nodes` and the kubelet
//! skew rule of upgrades.

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kok_crds::{NodesStatus, TenantCluster};
use kok_templates::addons::{self, Addons, COREDNS, DNS_SERVICE, KUBE_PROXY};
use kok_templates::names::{MANAGED_BY, MANAGED_BY_LABEL};
use kok_templates::nodes::{self as tenant_nodes, NodeInputs, NodeState, KUBE_SYSTEM};
use kok_templates::version::KubeVersion;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::runtime::apply::apply;
use crate::runtime::paged::Pages;

/// How often the tenant-side objects are applied again when nothing in
/// them changed (a change applies at once): the bound on how long a
/// deleted one stays away.
pub(super) const ROUND: Duration = Duration::from_secs(60);
/// How old `status.nodes` may get before the nodes are read again.
pub(super) const NODES_FRESH: Duration = Duration::from_secs(20);
/// Nodes are listed in pages of this many.
const PAGE: u32 = 200;

/// Everything kok keeps inside the tenant for nodes.
pub(super) struct TenantSide {
    pub config_maps: Vec<ConfigMap>,
    pub rbac: tenant_nodes::Rbac,
    pub addons: Addons,
}

impl TenantSide {
    pub fn build(tc: &TenantCluster, i: &NodeInputs) -> Result<Self, String> {
        Ok(Self {
            config_maps: vec![
                tenant_nodes::cluster_info(&i.endpoint, &i.ca_pem),
                tenant_nodes::kubeadm_config(i),
                tenant_nodes::kubelet_config(i)?,
            ],
            rbac: tenant_nodes::bootstrap_rbac(i.version),
            addons: addons::addons(&tc.spec, i)?,
        })
    }

    /// A fingerprint of the desired objects: a change applies at once.
    pub fn fingerprint(&self) -> String {
        let a = &self.addons;
        let parts = (
            &self.config_maps,
            &self.rbac.cluster_roles,
            &self.rbac.cluster_role_bindings,
            &self.rbac.roles,
            &self.rbac.role_bindings,
            (&a.service_accounts, &a.config_maps, &a.cluster_roles),
            (&a.cluster_role_bindings, &a.roles, &a.role_bindings),
            (&a.daemon_sets, &a.deployments, &a.services),
        );
        let json = serde_json::to_string(&parts).unwrap_or_default();
        kok_templates::secrets::config_hash([("tenant-side", json.as_str())])
    }
}

fn labelled_by_kok<K: Resource>(o: &K) -> bool {
    o.meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY)
}

async fn apply_namespaced<K>(client: &Client, objs: &[K]) -> Result<(), String>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    for o in objs {
        let ns = o
            .meta()
            .namespace
            .clone()
            .unwrap_or_else(|| KUBE_SYSTEM.into());
        let api: Api<K> = Api::namespaced(client.clone(), &ns);
        apply(&api, o)
            .await
            .map_err(|e| format!("{} {ns}/{}: {e}", K::kind(&()), o.name_any()))?;
    }
    Ok(())
}

async fn apply_cluster<K>(client: &Client, objs: &[K]) -> Result<(), String>
where
    K: Resource<DynamicType = (), Scope = ClusterResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    for o in objs {
        let api: Api<K> = Api::all(client.clone());
        apply(&api, o)
            .await
            .map_err(|e| format!("{} {}: {e}", K::kind(&()), o.name_any()))?;
    }
    Ok(())
}

/// Deletes `kube-system/<name>` when kok made it (an addon turned off);
/// one someone else made is left alone.
async fn remove_if_kok<K>(client: &Client, name: &str) -> Result<(), String>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), KUBE_SYSTEM);
    let what = |e: kube::Error| format!("{} {KUBE_SYSTEM}/{name}: {e}", K::kind(&()));
    match api.get_opt(name).await.map_err(what)? {
        Some(o) if labelled_by_kok(&o) => {
            api.delete(name, &DeleteParams::default())
                .await
                .map_err(what)?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Applies every tenant-side object and removes the addons turned off.
pub(super) async fn ensure(
    client: &Client,
    tc: &TenantCluster,
    side: &TenantSide,
) -> Result<(), String> {
    // Namespaced RBAC before the ConfigMaps it opens, cluster RBAC first of all.
    let (r, a) = (&side.rbac, &side.addons);
    apply_cluster(client, &r.cluster_roles).await?;
    apply_cluster(client, &a.cluster_roles).await?;
    apply_cluster(client, &r.cluster_role_bindings).await?;
    apply_cluster(client, &a.cluster_role_bindings).await?;
    apply_namespaced(client, &r.roles).await?;
    apply_namespaced(client, &a.roles).await?;
    apply_namespaced(client, &r.role_bindings).await?;
    apply_namespaced(client, &a.role_bindings).await?;
    apply_namespaced(client, &side.config_maps).await?;
    apply_namespaced(client, &a.service_accounts).await?;
    apply_namespaced(client, &a.config_maps).await?;
    apply_namespaced(client, &a.services).await?;
    apply_namespaced(client, &a.daemon_sets).await?;
    apply_namespaced(client, &a.deployments).await?;
    let addons = &tc.spec.addons;
    if !addons.kube_proxy.enabled {
        remove_if_kok::<DaemonSet>(client, KUBE_PROXY).await?;
    }
    if !addons.core_dns.enabled {
        remove_if_kok::<Deployment>(client, COREDNS).await?;
        remove_if_kok::<Service>(client, DNS_SERVICE).await?;
    }
    Ok(())
}

/// Every Node, read in pages, kept as the few facts status needs.
pub(super) async fn read(client: &Client) -> Result<Vec<NodeState>, String> {
    let api: Api<Node> = Api::all(client.clone());
    let mut pages = Pages::new(&api, ListParams::default().limit(PAGE));
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        for n in page.map_err(|e| format!("Nodes: {e}"))? {
            let status = n.status.clone().unwrap_or_default();
            out.push(NodeState {
                name: n.name_any(),
                ready: status
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True"),
                kubelet_version: status
                    .node_info
                    .map(|i| i.kubelet_version)
                    .unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// `status.nodes` from the nodes read now.
pub(super) fn status(nodes: &[NodeState]) -> NodesStatus {
    let mut s = tenant_nodes::nodes_status(nodes);
    s.observed_time = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    s
}

/// Whether `status.nodes` is older than [`NODES_FRESH`].
pub(super) fn stale(s: Option<&NodesStatus>) -> bool {
    s.and_then(|s| s.observed_time.as_ref()).is_none_or(|t| {
        k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second()
            >= NODES_FRESH.as_secs() as i64
    })
}

/// Each node's name and kubelet version (nodes whose version does not
/// parse are left out: they cannot be judged).
pub(super) fn kubelets(nodes: &[NodeState]) -> Vec<(String, KubeVersion)> {
    nodes
        .iter()
        .filter_map(|n| Some((n.name.clone(), n.kubelet_version.parse().ok()?)))
        .collect()
}

/// What a pass does for nodes once the tenant API answers: the tenant-side
/// objects on their round, `status.nodes` when stale. Returns what failed,
/// for the caller's Warning Event; the control plane's reconcile goes on.
pub(super) async fn pass(
    ctx: &crate::runtime::context::Context,
    tc: &TenantCluster,
    client: &Client,
    inputs: Option<NodeInputs>,
    status: &mut kok_crds::TenantClusterStatus,
) -> Option<String> {
    let key = format!(
        "tenant-side/{}/{}",
        tc.namespace().unwrap_or_default(),
        tc.name_any()
    );
    let mut failed = None;
    if let Some(i) = inputs {
        let outcome = match TenantSide::build(tc, &i) {
            Ok(side) => {
                let fp = side.fingerprint();
                if ctx.round_due(&key, &fp, ROUND) {
                    let r = ensure(client, tc, &side).await;
                    if r.is_ok() {
                        ctx.round_done(&key, &fp);
                    }
                    r
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        };
        if let Err(why) = outcome {
            tracing::warn!(%why, "tenant-side objects for nodes");
            failed = Some(format!("objects for worker nodes inside the tenant: {why}"));
        }
    }
    if stale(status.nodes.as_ref()) {
        match read(client).await {
            Ok(nodes) => status.nodes = Some(self::status(&nodes)),
            Err(why) => tracing::warn!(%why, "reading the tenant's nodes"),
        }
    }
    failed
}
