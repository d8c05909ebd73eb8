//! The tenant's workloads: applied in dependency order on first creation
//! (etcd, then the apiservers once etcd has quorum, then controller-manager
//! and scheduler once an apiserver is available), afterwards every one on
//! every pass so drift is put back.

use super::*;
use kok_templates::upgrade_plan::Rendering;

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

    pub fn observed(&self, readyz: Result<(), String>, endpoint_known: bool) -> Observed {
        Observed {
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
