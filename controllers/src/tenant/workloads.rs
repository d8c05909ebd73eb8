//! The tenant's workloads: applied in dependency order on first creation
//! (etcd, then the apiservers once etcd has quorum, then controller-manager
//! and scheduler once an apiserver is available), afterwards every one on
//! every pass so drift is put back.

use super::etcd_roll::{self, EtcdRoll};
use crate::runtime::apply::apply_child;
use crate::runtime::context::Context;
use crate::runtime::error::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kok_crds::condition;
use kok_crds::TenantCluster;
use kok_templates::controlplane::Placement;
use kok_templates::controlplane::Resolved;
use kok_templates::controlplane::{self as cp};
use kok_templates::names;
use kok_templates::names::tenant_selector;
use kok_templates::pod_trouble::{self, PodTrouble};
use kok_templates::tenant_status::Observed;
use kok_templates::tenant_status::WorkloadRollout;
use kok_templates::upgrade_plan::Rendering;
use kok_templates::validate::ValidSpec;
use kube::api::ListParams;
use kube::Api;
use kube::ResourceExt;

/// The workloads as the API server stored them this pass.
pub(super) struct Live {
    pub etcd: StatefulSet,
    /// Set while etcd members are being replaced one at a time: what and why.
    pub etcd_rolling: Option<String>,
    /// The member the apiservers were rendered without (to record in status).
    pub etcd_drained_member: Option<i32>,
    pub apiserver: Option<Deployment>,
    pub controller_manager: Option<Deployment>,
    pub scheduler: Option<Deployment>,
}

impl Live {
    pub fn apiserver_available(&self) -> i32 {
        self.apiserver.as_ref().map(available_replicas).unwrap_or(0)
    }

    pub fn observed(
        &self,
        readyz: Result<(), String>,
        endpoint_known: bool,
        pod_troubles: Vec<(&'static str, PodTrouble)>,
    ) -> Observed {
        Observed {
            pod_troubles,
            etcd: Some(WorkloadRollout::from_statefulset(&self.etcd)),
            etcd_rolling: self.etcd_rolling.clone(),
            apiserver: self
                .apiserver
                .as_ref()
                .map(WorkloadRollout::from_deployment),
            controller_manager: self
                .controller_manager
                .as_ref()
                .map(WorkloadRollout::from_deployment),
            scheduler: self
                .scheduler
                .as_ref()
                .map(WorkloadRollout::from_deployment),
            readyz,
            endpoint_known,
        }
    }
}

/// Why the pods of the components that are not available do not run (an
/// image that cannot be pulled, a crash loop, no node that fits), read from
/// the pods' status. One bounded list of the tenant's pods, and only while
/// a component waits: a serving tenant costs no call.
pub(super) async fn pod_troubles(
    ctx: &Context,
    namespace: &str,
    tenant: &str,
    live: &Live,
) -> Vec<(&'static str, PodTrouble)> {
    let probe = live.observed(Ok(()), true, vec![]);
    let waiting: Vec<(&'static str, &'static str)> = [
        (condition::ETCD, names::ETCD, probe.etcd.as_ref()),
        (
            condition::APISERVER,
            names::APISERVER,
            probe.apiserver.as_ref(),
        ),
        (
            condition::CONTROLLER_MANAGER,
            names::CONTROLLER_MANAGER,
            probe.controller_manager.as_ref(),
        ),
        (
            condition::SCHEDULER,
            names::SCHEDULER,
            probe.scheduler.as_ref(),
        ),
    ]
    .into_iter()
    .filter(|(_, _, w)| w.is_some_and(|w| w.pending().is_some()))
    .map(|(type_, component, _)| (type_, component))
    .collect();
    if waiting.is_empty() {
        return vec![];
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    // At most 5 etcd members and 10 apiservers, plus pods on their way out.
    let lp = ListParams::default()
        .labels(&tenant_selector(tenant))
        .limit(64);
    let listed = match pods.list(&lp).await {
        Ok(l) => l.items,
        Err(e) => {
            tracing::debug!(error = %e, "listing the tenant's pods for their status");
            return vec![];
        }
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    waiting
        .into_iter()
        .filter_map(|(type_, component)| {
            let of_component: Vec<Pod> = listed
                .iter()
                .filter(|p| {
                    p.labels().get(names::COMPONENT_LABEL).map(String::as_str) == Some(component)
                })
                .cloned()
                .collect();
            pod_trouble::diagnose(&of_component, now).map(|t| (type_, t))
        })
        .collect()
}

/// Applies every workload at the versions `rendering` gives this pass.
pub(super) async fn apply(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    valid: &ValidSpec,
    resolved: &Resolved,
    rendering: &Rendering,
) -> Result<Live> {
    let uid = &p.owner.uid;
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &p.namespace);
    apply_child(
        &Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &p.namespace),
        &cp::etcd_network_policy(
            p,
            ctx.operator_pod_labels.clone(),
            &ctx.operator_namespace,
            ctx.operator_namespace_labels.clone(),
        ),
        uid,
    )
    .await?;

    let mut etcd_spec = tc.spec.clone();
    if etcd_spec.etcd.image.is_none() {
        etcd_spec.etcd.version = Some(rendering.etcd_tag.clone());
    }
    let valid_at = |version| ValidSpec {
        version,
        ..valid.clone()
    };
    let etcd = apply_child(
        &statefulsets,
        &cp::etcd_statefulset(p, &etcd_spec, valid, resolved),
        uid,
    )
    .await?;
    // Members on an older template are replaced one at a time, the leader
    // last, each once the apiservers no longer dial it.
    let drained = tc.status.as_ref().and_then(|s| s.etcd_drained_member);
    let outcome = etcd_roll::roll(ctx, tc, &etcd, drained).await?;
    let etcd_rolling = match outcome.state {
        EtcdRoll::Current => None,
        EtcdRoll::Rolling(why) => Some(why),
    };
    let resolved = &Resolved {
        etcd_drained_member: outcome.drained.or(resolved.etcd_drained_member),
        ..resolved.clone()
    };
    // The apiservers are created once etcd has quorum. Not earlier: their
    // etcd client gives up after 20 s without a serving member and exits,
    // and a crash-looping apiserver backs off (measured with 30 tenants
    // starting at once: apiservers in CrashLoopBackOff with "context deadline
    // exceeded"). etcd's readiness is probed every second, so the wait is
    // short when the node is not loaded.
    let etcd_ready = etcd
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let etcd_quorum = valid.etcd_replicas / 2 + 1;
    // With the etcd quorum lost (status.quorumLoss) the apiservers are
    // stopped: a member that lost its data may serve an empty keyspace, and
    // tenant kubelets would act on it (delete their pods).
    let mut apiserver_valid = valid_at(rendering.apiserver);
    if tc.status.as_ref().is_some_and(|s| s.quorum_loss.is_some()) {
        apiserver_valid.apiserver_replicas = 0;
    }
    let apiserver = if etcd_ready >= etcd_quorum
        || deployments.get_opt(&p.names.apiserver()).await?.is_some()
    {
        let d = cp::apiserver_deployment(p, &tc.spec, &apiserver_valid, resolved);
        Some(apply_child(&deployments, &d, uid).await?)
    } else {
        None
    };
    let apiserver_available = apiserver.as_ref().map(available_replicas).unwrap_or(0);
    let mut controllers = Vec::new();
    for (name, build) in [
        (
            p.names.controller_manager(),
            cp::controller_manager_deployment as fn(&_, &_, &_, &_) -> Deployment,
        ),
        (p.names.scheduler(), cp::scheduler_deployment),
    ] {
        controllers.push(
            if apiserver_available > 0 || deployments.get_opt(&name).await?.is_some() {
                let d = build(p, &tc.spec, &valid_at(rendering.controllers), resolved);
                Some(apply_child(&deployments, &d, uid).await?)
            } else {
                None
            },
        );
    }
    let scheduler = controllers.pop().flatten();
    let controller_manager = controllers.pop().flatten();
    Ok(Live {
        etcd,
        etcd_rolling,
        etcd_drained_member: outcome.drained,
        apiserver,
        controller_manager,
        scheduler,
    })
}

pub(super) fn available_replicas(d: &Deployment) -> i32 {
    d.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// The tag of an image reference (`repo/etcd:3.5.16` -> `3.5.16`).
pub(super) fn image_tag(image: &str) -> String {
    image
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map(|(_, tag)| tag.to_string())
        .unwrap_or_default()
}

/// The image of a pod template's first container.
pub(super) fn first_image(
    t: Option<k8s_openapi::api::core::v1::PodTemplateSpec>,
) -> Option<String> {
    t?.spec?.containers.into_iter().next()?.image
}
