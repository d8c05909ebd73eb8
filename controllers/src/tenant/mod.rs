//! The TenantCluster reconciler: validate -> Services -> PKI -> workloads -> status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kok_crds::{
    condition, EtcdRestore, RestorePhase, ServiceType, TenantCluster, TenantClusterStatus,
};
use kok_templates::controlplane::{self as cp, Placement, Resolved};
use kok_templates::flags::APISERVER_PORT;
use kok_templates::names::{tenant_selector, Names};
use kok_templates::pki::{kubeconfig, CaKind};
use kok_templates::secrets;
use kok_templates::tenant_status::{self, Observed, WorkloadRollout};
use kok_templates::validate::{describe, validate, validate_name};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use self::health as tenant_health;
use crate::runtime::apply::{apply, apply_child, check_owner};
use crate::runtime::conditions;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};
use crate::runtime::lenient::Lenient;

mod cleanup;
mod etcd_roll;
pub mod health;
pub mod pki;
mod services;
mod upgrade;
mod workloads;

pub use self::cleanup::kept_volumes_problem;
use self::cleanup::{check_kept_volumes, cleanup};
use self::etcd_roll::EtcdRoll;
use self::pki::{self as tenant_pki, config_hashes, pki_inputs};
pub use self::services::Endpoint;
use self::services::{apply_service, cluster_ip, endpoint, pinned_addresses};
use self::upgrade::Preflight;
use self::workloads::available_replicas;
use kok_templates::upgrade_plan::{
    self, track_upgrade, Rolled, Running, PHASE_COMPLETED, PHASE_PREFLIGHT,
};
use kok_templates::validate::ValidSpec;
use kok_templates::version::KubeVersion;

pub const FINALIZER: &str = "kok.dev/cleanup";
const CONTROLLER: &str = "tenantcluster";
/// How often a healthy tenant is looked at again (certificate expiry, health).
const RESYNC: Duration = Duration::from_secs(300);
/// How often a tenant that is still coming up is looked at.
const PROGRESS_POLL: Duration = Duration::from_secs(3);
/// How often a stalled tenant is looked at without an edit.
const STALLED_RECHECK: Duration = Duration::from_secs(300);
/// How long a recreated Service waits for its old ClusterIP to be released
/// before it takes a new one (which would invalidate certificates and pins).
const CLUSTER_IP_REUSE_WINDOW: Duration = Duration::from_secs(60);

#[instrument(skip_all, fields(tenant = %tc.name_any(), ns = tc.namespace().unwrap_or_default()))]
pub async fn reconcile(tc: Arc<TenantCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let ns = tc
        .namespace()
        .ok_or_else(|| Error::IncompleteObject(tc.name_any()))?;
    let api: Api<TenantCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let obj_ref = ObjectRef::from_obj(tc.as_ref());
    let this = tc.clone();
    let result = finalizer(&api, FINALIZER, tc, |event| async {
        match event {
            FinalizerEvent::Apply(tc) => apply_tenant(tc, &ctx).await,
            FinalizerEvent::Cleanup(tc) => cleanup(tc, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    match result {
        Ok(action) => {
            ctx.reset_failures(CONTROLLER, &obj_ref);
            Ok(action)
        }
        Err(error) => {
            report_error(&this, &error, &ctx).await;
            if error.is_stalled() {
                // Retrying cannot help until someone acts: an edit of the
                // TenantCluster wakes it at once; other fixes (a conflicting
                // object deleted) are found by rechecks that back off to 5 min.
                ctx.metrics
                    .reconcile_failed(CONTROLLER, error.metric_label());
                Ok(Action::requeue(ctx.next_retry(CONTROLLER, &obj_ref)))
            } else {
                Err(error)
            }
        }
    }
}

/// Puts a failed reconcile on the object: a condition with the API's message
/// (`Stalled` when retrying cannot help) and a Warning Event, so the reason is
/// not only in the operator's log.
async fn report_error(tc: &TenantCluster, error: &Error, ctx: &Context) {
    let inner = error.inner();
    let stalled = error.is_stalled();
    let reason = match inner {
        Error::NotOwned { .. } => "NameConflict",
        Error::VolumesNotAdoptable(_) => "VolumesNotAdoptable",
        Error::CorruptCa { .. } => "CorruptCA",
        _ if stalled => "Rejected",
        _ => "ReconcileError",
    };
    let message = inner.to_string();
    let generation = tc.metadata.generation;
    let old = tc.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = generation;
    let c = &mut status.conditions;
    conditions::set(
        c,
        condition::READY,
        false,
        reason,
        message.clone(),
        generation,
    );
    if stalled {
        conditions::set(
            c,
            condition::STALLED,
            true,
            reason,
            message.clone(),
            generation,
        );
        conditions::set(
            c,
            condition::RECONCILING,
            false,
            reason,
            "waiting for the problem to be fixed",
            generation,
        );
    } else {
        conditions::set(
            c,
            condition::RECONCILING,
            true,
            reason,
            format!("retrying: {message}"),
            generation,
        );
    }
    if let Err(e) = patch_status(ctx, tc, &old, status).await {
        warn!(error = %e, "could not record the reconcile error in status");
    }
    publish(ctx, tc, EventType::Warning, reason, "Reconcile", &message).await;
}

pub fn error_policy(tc: Arc<TenantCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_error(CONTROLLER, tc.as_ref(), error)
}

async fn apply_tenant(tc: Arc<TenantCluster>, ctx: &Context) -> Result<Action> {
    let ns = tc.namespace().unwrap_or_default();
    let name = tc.name_any();
    let generation = tc.metadata.generation;
    let old_status = tc.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    status.observed_generation = generation;

    // 1. Validate. An invalid spec touches nothing and waits for the next edit.
    //    Versions are checked against the newest that runs anywhere: in the
    //    middle of a step the apiservers are ahead of `status.version`.
    let name_errors = validate_name(&name);
    let apiserver_template = Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&Names::new(&name).apiserver())
        .await?
        .and_then(|d| first_image(d.spec.map(|s| s.template)))
        .and_then(|i| image_tag(&i).parse::<KubeVersion>().ok());
    let newest = newest_running(tc.status.as_ref(), apiserver_template);
    let validated = match validate(&tc.spec, newest.as_ref(), &ctx.policy) {
        Ok(v) if name_errors.is_empty() => Ok(v),
        Ok(_) => Err(name_errors),
        Err(errors) => Err(name_errors.into_iter().chain(errors).collect()),
    };
    let valid = match validated {
        Ok(v) => v,
        Err(errors) => {
            let message = describe(&errors);
            warn!(%message, "invalid spec");
            publish(
                ctx,
                &tc,
                EventType::Warning,
                "InvalidSpec",
                "Validate",
                &message,
            )
            .await;
            conditions::set(
                &mut status.conditions,
                condition::STALLED,
                true,
                "InvalidSpec",
                message.clone(),
                generation,
            );
            conditions::set(
                &mut status.conditions,
                condition::RECONCILING,
                false,
                "InvalidSpec",
                "waiting for the spec to be fixed",
                generation,
            );
            conditions::set(
                &mut status.conditions,
                condition::READY,
                false,
                "InvalidSpec",
                message,
                generation,
            );
            patch_status(ctx, &tc, &old_status, status).await?;
            return Ok(Action::await_change());
        }
    };
    conditions::set(
        &mut status.conditions,
        condition::STALLED,
        false,
        "SpecValid",
        "the spec is valid",
        generation,
    );

    if let Some(restore) = tc.annotations().get(kok_crds::RESTORE_ANNOTATION) {
        if let Some((reason, message)) = restore_problem(ctx, &ns, restore).await? {
            publish(ctx, &tc, EventType::Warning, reason, "Restore", &message).await;
            let c = &mut status.conditions;
            conditions::set(
                c,
                condition::STALLED,
                true,
                reason,
                message.clone(),
                generation,
            );
            conditions::set(c, condition::READY, false, reason, message, generation);
            conditions::set(
                c,
                condition::RECONCILING,
                false,
                reason,
                "the control plane is stopped until someone acts",
                generation,
            );
            patch_status(ctx, &tc, &old_status, status).await?;
            return Ok(Action::requeue(STALLED_RECHECK));
        }
        conditions::set(
            &mut status.conditions,
            condition::RECONCILING,
            true,
            "RestoreInProgress",
            format!("EtcdRestore {restore} is restoring etcd; the control plane is left to it"),
            generation,
        );
        // The control plane is (being) stopped: not Ready until the restore hands it back.
        conditions::set(
            &mut status.conditions,
            condition::READY,
            false,
            "RestoreInProgress",
            format!("EtcdRestore {restore} is restoring etcd"),
            generation,
        );
        patch_status(ctx, &tc, &old_status, status).await?;
        return Ok(Action::await_change());
    }

    if tc.spec.paused {
        conditions::set(
            &mut status.conditions,
            condition::RECONCILING,
            false,
            "Paused",
            "spec.paused is true: kok leaves the control plane as it is",
            generation,
        );
        patch_status(ctx, &tc, &old_status, status).await?;
        return Ok(Action::await_change());
    }

    let owner = tc
        .controller_owner_ref(&())
        .ok_or_else(|| Error::IncompleteObject(name.clone()))?;
    let uid = owner.uid.clone();
    let p = Placement {
        names: Names::new(&name),
        namespace: ns.clone(),
        owner,
    };
    let client = &ctx.client;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // 2. Services first: their ClusterIPs pin every name the components dial.
    //    A Service deleted by hand is recreated on the address the workloads
    //    still pin, so certificates and kubeconfigs stay valid.
    let existing_etcd = statefulsets.get_opt(&p.names.etcd()).await?;
    if existing_etcd.is_none() && status.etcd_replicas.is_none() && !tc.spec.etcd.storage.ephemeral
    {
        check_kept_volumes(ctx, &tc, &p.names, valid.etcd_replicas).await?;
    }
    let mut pinned = pinned_addresses(
        existing_etcd
            .and_then(|s| s.spec)
            .and_then(|s| s.template.spec),
    );
    pinned.extend(pinned_addresses(
        deployments
            .get_opt(&p.names.apiserver())
            .await?
            .and_then(|d| d.spec)
            .and_then(|d| d.template.spec),
    ));
    let mut etcd_member_ips = Vec::new();
    for i in 0..valid.etcd_replicas {
        let svc = apply_service(&services, cp::etcd_member_service(&p, i), &pinned, &uid).await?;
        etcd_member_ips
            .push(cluster_ip(&svc).ok_or_else(|| Error::IncompleteObject(p.names.etcd_member(i)))?);
    }
    let apiserver_svc = apply_service(
        &services,
        cp::apiserver_service(&p, tc.spec.control_plane.service.type_),
        &pinned,
        &uid,
    )
    .await?;
    let apiserver_ip =
        cluster_ip(&apiserver_svc).ok_or_else(|| Error::IncompleteObject(p.names.apiserver()))?;
    let endpoint = endpoint(ctx, &tc, &apiserver_svc, &apiserver_ip).await?;

    // 3. PKI.
    let pki_inputs = pki_inputs(
        &p,
        &tc,
        &valid,
        &apiserver_ip,
        endpoint.as_ref().map(|e| e.host.as_str()),
    );
    let pki = match tenant_pki::ensure(&secrets_api, &p, &pki_inputs).await {
        Ok(pki) => pki,
        Err(e @ Error::CorruptCa { .. }) => {
            let message = e.to_string();
            publish(
                ctx,
                &tc,
                EventType::Warning,
                "CorruptCA",
                "EnsurePKI",
                &message,
            )
            .await;
            conditions::set(
                &mut status.conditions,
                condition::CERTIFICATES,
                false,
                "CorruptCA",
                message.clone(),
                generation,
            );
            conditions::set(
                &mut status.conditions,
                condition::STALLED,
                true,
                "CorruptCA",
                message,
                generation,
            );
            patch_status(ctx, &tc, &old_status, status).await?;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    if !pki.issued.is_empty() {
        let issued = pki
            .issued
            .iter()
            .map(|(n, why)| format!("{n} ({why})"))
            .collect::<Vec<_>>()
            .join(", ");
        publish(
            ctx,
            &tc,
            EventType::Normal,
            "CertificatesIssued",
            "EnsurePKI",
            &issued,
        )
        .await;
    }

    // 4. Kubeconfigs: the admin one for users (the endpoint), the components'
    //    through the pinned apiserver name.
    let internal_url = format!("https://{}:{APISERVER_PORT}", p.names.apiserver());
    let cluster_ca = &pki.ca(CaKind::Cluster).cert_pem;
    let cm_kubeconfig = kubeconfig(
        &name,
        &internal_url,
        cluster_ca,
        "system:kube-controller-manager",
        &pki.leaves["controller-manager"],
    );
    let sched_kubeconfig = kubeconfig(
        &name,
        &internal_url,
        cluster_ca,
        "system:kube-scheduler",
        &pki.leaves["scheduler"],
    );
    apply_child(
        &secrets_api,
        &secrets::kubeconfig_secret(
            &p,
            p.names.component_kubeconfig_secret("controller-manager"),
            cm_kubeconfig.clone(),
        ),
        &uid,
    )
    .await?;
    apply_child(
        &secrets_api,
        &secrets::kubeconfig_secret(
            &p,
            p.names.component_kubeconfig_secret("scheduler"),
            sched_kubeconfig.clone(),
        ),
        &uid,
    )
    .await?;
    let admin_kubeconfig = endpoint.as_ref().map(|e| {
        kubeconfig(
            &name,
            &e.url(),
            cluster_ca,
            "kok-admin",
            &pki.leaves["admin"],
        )
    });
    if let Some(kc) = &admin_kubeconfig {
        apply_child(
            &secrets_api,
            &secrets::kubeconfig_secret(&p, p.names.admin_kubeconfig_secret(), kc.clone()),
            &uid,
        )
        .await?;
        status.kubeconfig_secret_name = Some(p.names.admin_kubeconfig_secret());
        status.endpoint = endpoint.as_ref().map(|e| e.url());
    }

    // 5. Workloads, in dependency order on first creation; afterwards every
    //    one is applied on every pass so drift is put back.
    let resolved = Resolved {
        etcd_member_ips,
        apiserver_ip,
        etcd_cluster_token: tc.uid().unwrap_or_default(),
        hashes: config_hashes(&pki, &cm_kubeconfig, &sched_kubeconfig),
    };
    apply_child(
        &Api::<NetworkPolicy>::namespaced(client.clone(), &ns),
        &cp::etcd_network_policy(
            &p,
            ctx.operator_pod_labels.clone(),
            &ctx.operator_namespace,
            ctx.operator_namespace_labels.clone(),
        ),
        &uid,
    )
    .await?;
    // Which version each component runs in this pass: an upgrade walks one
    // step at a time, etcd first, then the apiservers, then the controllers.
    let target_etcd_tag = image_tag(&cp::etcd_image(&tc.spec, &valid));

    let live_etcd = statefulsets.get_opt(&p.names.etcd()).await?;
    let live_apiserver = deployments.get_opt(&p.names.apiserver()).await?;
    let live_cm = deployments.get_opt(&p.names.controller_manager()).await?;
    let template_version = |d: &Option<Deployment>| {
        d.as_ref()
            .and_then(|d| first_image(d.spec.clone().map(|s| s.template)))
            .and_then(|i| image_tag(&i).parse().ok())
    };
    let rolled = Rolled {
        etcd_tag: live_etcd
            .as_ref()
            .filter(|s| WorkloadRollout::from_statefulset(s).rolled())
            .and_then(|s| first_image(s.spec.clone().map(|s| s.template)))
            .map(|i| image_tag(&i)),
        apiserver: live_apiserver
            .as_ref()
            .filter(|d| WorkloadRollout::from_deployment(d).rolled())
            .and(template_version(&live_apiserver)),
        apiserver_template: template_version(&live_apiserver),
        controllers_template: template_version(&live_cm),
    };
    // What runs: recorded after complete rollouts; for tenants from a kok
    // that did not record etcd, what the etcd StatefulSet has fully rolled.
    let running_kube = status.version.as_deref().and_then(|v| v.parse().ok());
    let running_etcd = status
        .etcd_version
        .clone()
        .or_else(|| rolled.etcd_tag.clone());
    let running = running_kube.zip(running_etcd.as_deref());
    let rendering = upgrade_plan::rendering(
        running,
        valid.version,
        &target_etcd_tag,
        tc.spec.etcd.version.is_some(),
        &rolled,
    )
    .map_err(|e| Error::Upgrade(e.to_string()))?;
    // Until the preflight of this upgrade passed, everything stays on what runs.
    let desired = Running {
        kube: valid.version.to_string(),
        etcd: rendering.target_etcd_tag.clone(),
    };
    let preflight_passed = old_status.upgrade.as_ref().is_some_and(|u| {
        u.phase != PHASE_COMPLETED && u.to == desired.to_string() && u.preflight_passed
    });
    let holding = !rendering.at_target() && !preflight_passed;
    let rendering = match running {
        Some((kube, etcd)) if holding => {
            upgrade_plan::rendering(Some((kube, etcd)), kube, etcd, true, &rolled)
                .map_err(|e| Error::Upgrade(e.to_string()))?
        }
        _ => rendering,
    };
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
        &cp::etcd_statefulset(&p, &etcd_spec, &valid, &resolved),
        &uid,
    )
    .await?;
    status.etcd_replicas = Some(valid.etcd_replicas);
    // Members on an older template are replaced one at a time, the leader last.
    let etcd_rolling = match etcd_roll::roll(ctx, &tc, &etcd).await? {
        EtcdRoll::Current => None,
        EtcdRoll::Rolling(why) => Some(why),
    };
    let etcd_ready = etcd
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let etcd_quorum = valid.etcd_replicas / 2 + 1;

    let apiserver = if etcd_ready >= etcd_quorum
        || deployments.get_opt(&p.names.apiserver()).await?.is_some()
    {
        Some(
            apply_child(
                &deployments,
                &cp::apiserver_deployment(&p, &tc.spec, &valid_at(rendering.apiserver), &resolved),
                &uid,
            )
            .await?,
        )
    } else {
        None
    };
    let apiserver_available = apiserver.as_ref().map(available_replicas).unwrap_or(0);
    let mut controllers_applied = Vec::new();
    for (dname, build) in [
        (
            p.names.controller_manager(),
            cp::controller_manager_deployment as fn(&_, &_, &_, &_) -> Deployment,
        ),
        (p.names.scheduler(), cp::scheduler_deployment),
    ] {
        if apiserver_available > 0 || deployments.get_opt(&dname).await?.is_some() {
            controllers_applied.push(Some(
                apply_child(
                    &deployments,
                    &build(&p, &tc.spec, &valid_at(rendering.controllers), &resolved),
                    &uid,
                )
                .await?,
            ));
        } else {
            controllers_applied.push(None);
        }
    }

    // 6. Observe and report: Ready only when every component has rolled out
    //    its current template (kstatus), so GitOps tools see a rollout as one.
    let tenant_ready = match &admin_kubeconfig {
        Some(kc) if apiserver_available > 0 => tenant_health::readyz(kc).await,
        _ => Err("the apiserver has no available replica yet".to_string()),
    };
    let observed = Observed {
        etcd: Some(WorkloadRollout::from_statefulset(&etcd)),
        apiserver: apiserver.as_ref().map(WorkloadRollout::from_deployment),
        controller_manager: controllers_applied[0]
            .as_ref()
            .map(WorkloadRollout::from_deployment),
        scheduler: controllers_applied[1]
            .as_ref()
            .map(WorkloadRollout::from_deployment),
        etcd_rolling,
        readyz: tenant_ready,
        endpoint_known: endpoint.is_some(),
    };
    let verdict = tenant_status::verdict(&observed);
    // What every component runs once this pass's rollout is complete; the
    // upgrade record compares it with what the spec asks for.
    // etcd is recorded as soon as every member runs its step's version (the
    // cluster version may move then: no going back below it).
    if verdict.components[0].ok {
        status.etcd_version = Some(rendering.etcd_tag.clone());
    }
    if verdict.ready && rendering.apiserver == rendering.controllers {
        status.version = Some(rendering.controllers.to_string());
    }
    if verdict.components[0].ok && !etcd_cluster_version_settled(&status) {
        // Read back once per change: the moment etcd cannot go back.
        match etcd_roll::cluster_version(ctx, &tc).await {
            Ok(v) => status.etcd_cluster_version = Some(v),
            Err(why) => warn!(%why, "etcd cluster version not readable yet"),
        }
    }
    let running_now = match (&status.version, &status.etcd_version) {
        (Some(kube), Some(etcd)) => Some(Running {
            kube: kube.clone(),
            etcd: etcd.clone(),
        }),
        _ => None,
    };
    let was = status.upgrade.clone();
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    status.upgrade = track_upgrade(
        status.upgrade.as_ref(),
        running_now.as_ref(),
        &desired,
        now.clone(),
    );
    if let (Some(u), Some(phase)) = (status.upgrade.as_mut(), rendering.phase) {
        if u.phase != PHASE_COMPLETED {
            let step = (u.plan.len().saturating_sub(rendering.steps_left)) as u32;
            if (u.phase.as_str(), u.step) != (phase, step) {
                u.last_progress_time = Some(now.clone());
            }
            u.phase = phase.into();
            u.step = step;
            u.message = rendering.step.as_ref().map(|s| {
                format!(
                    "step {}/{}: {s}; etcd {}, apiservers {}, controllers {}",
                    u.step + 1,
                    u.plan.len().max(1),
                    rendering.etcd_tag,
                    rendering.apiserver,
                    rendering.controllers
                )
            });
        }
    }
    let mut preflight_failed = None;
    if let Some(u) = status
        .upgrade
        .as_mut()
        .filter(|u| holding && u.phase != PHASE_COMPLETED)
    {
        let (state, backup) = upgrade::preflight(ctx, &tc, u, verdict.ready).await?;
        if u.phase != PHASE_PREFLIGHT {
            u.phase = PHASE_PREFLIGHT.into();
            u.last_progress_time = Some(now.clone());
        }
        if backup.is_some() {
            u.preflight_backup = backup;
        }
        let note = match state {
            Preflight::Passed(note) => {
                u.preflight_passed = true;
                u.last_progress_time = Some(now.clone());
                note
            }
            Preflight::Waiting(note) => note,
            Preflight::Failed(note) => {
                preflight_failed = Some(note.clone());
                note
            }
        };
        u.message = Some(format!("preflight: {note}"));
        u.preflight = Some(note);
    }
    let upgrade_open = status
        .upgrade
        .as_ref()
        .filter(|u| u.phase != PHASE_COMPLETED)
        .cloned();
    if was.as_ref().map(|w| (&w.to, &w.phase, w.step))
        != status.upgrade.as_ref().map(|u| (&u.to, &u.phase, u.step))
    {
        if let Some(u) = &status.upgrade {
            let note = match u.phase.as_str() {
                PHASE_COMPLETED => format!("upgrade to {} completed", u.to),
                phase => format!(
                    "upgrade from {} to {}: {phase}, step {}/{}",
                    u.from,
                    u.to,
                    u.step + 1,
                    u.plan.len().max(1)
                ),
            };
            publish(ctx, &tc, EventType::Normal, "Upgrade", "Upgrade", &note).await;
        }
    }
    let g = generation;
    let c = &mut status.conditions;
    for cc in &verdict.components {
        conditions::set(c, cc.type_, cc.ok, cc.reason, cc.message.clone(), g);
    }
    let expiry = pki
        .earliest_expiry
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    conditions::set(
        c,
        condition::CERTIFICATES,
        true,
        "Valid",
        format!("all certificates valid; the first expires at {expiry}"),
        g,
    );

    // Ready only when every component runs what the spec asks for: a step
    // of an upgrade that rolled out completely is not the end of it.
    let waiting_for = verdict.waiting_for.clone().or_else(|| {
        upgrade_open.as_ref().map(|u| {
            format!(
                "upgrading from {} to {}: {}",
                u.from,
                u.to,
                u.message.clone().unwrap_or_else(|| u.phase.clone())
            )
        })
    });
    let ready = waiting_for.is_none();
    match &waiting_for {
        None => {
            conditions::set(
                c,
                condition::READY,
                true,
                "Ready",
                "the tenant control plane is serving",
                g,
            );
            conditions::set(
                c,
                condition::RECONCILING,
                false,
                "Ready",
                "the control plane matches the spec",
                g,
            );
        }
        Some(msg) => {
            // An upgrade that has not moved for long is stuck: it keeps
            // serving on what runs, and says so instead of just "progressing".
            let stuck = upgrade_open.as_ref().is_some_and(upgrade_stuck);
            let reason = if stuck { "UpgradeStuck" } else { "Progressing" };
            conditions::set(c, condition::READY, false, reason, msg.clone(), g);
            conditions::set(c, condition::RECONCILING, true, reason, msg.clone(), g);
            if stuck {
                // kstatus: it will not finish on its own; it keeps serving.
                conditions::set(c, condition::STALLED, true, reason, msg.clone(), g);
            }
            if let Some(why) = &preflight_failed {
                conditions::set(
                    c,
                    condition::STALLED,
                    true,
                    "PreflightFailed",
                    why.clone(),
                    g,
                );
            }
        }
    }
    let became_ready = ready && !conditions::is_true(&old_status.conditions, condition::READY);
    // etcd settles its cluster version a moment after the members agree:
    // look again soon until it is read.
    let cluster_version_known = etcd_cluster_version_settled(&status);
    patch_status(ctx, &tc, &old_status, status).await?;
    if became_ready {
        info!("tenant control plane ready");
        publish(
            ctx,
            &tc,
            EventType::Normal,
            "Ready",
            "Reconcile",
            "the tenant control plane is serving",
        )
        .await;
    }
    Ok(Action::requeue(if ready && cluster_version_known {
        RESYNC
    } else {
        PROGRESS_POLL
    }))
}

/// Why a TenantCluster held by a restore is stuck, if it is: the EtcdRestore
/// named by the annotation was deleted or failed, leaving etcd stopped.
async fn restore_problem(
    ctx: &Context,
    ns: &str,
    restore: &str,
) -> Result<Option<(&'static str, String)>> {
    let api: Api<Lenient<EtcdRestore>> = Api::namespaced(ctx.client.clone(), ns);
    let resume = format!(
        "to start the control plane on the data its members have now, remove annotation {} (see docs/runbooks/backup-restore.md)",
        kok_crds::RESTORE_ANNOTATION
    );
    Ok(match api.get_opt(restore).await? {
        None => Some((
            "RestoreAbandoned",
            format!("EtcdRestore {restore} was deleted before it finished; the control plane is stopped; {resume}"),
        )),
        Some(r) => match &r.object {
            Ok(er) if er.status.as_ref().and_then(|s| s.phase) == Some(RestorePhase::Failed) => Some((
                "RestoreFailed",
                format!(
                    "EtcdRestore {restore} failed: {}; the control plane is stopped; {resume}",
                    er.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default()
                ),
            )),
            _ => None,
        },
    })
}

/// Patches status only when it differs from what is stored.
/// The status as validation should see it: `version` raised to what the
/// apiserver template already runs, when that is newer.
fn newest_running(
    status: Option<&TenantClusterStatus>,
    apiserver_template: Option<KubeVersion>,
) -> Option<TenantClusterStatus> {
    let mut s = status.cloned()?;
    let recorded = s
        .version
        .as_deref()
        .and_then(|v| v.parse::<KubeVersion>().ok());
    if let (Some(t), Some(r)) = (apiserver_template, recorded) {
        if t > r {
            s.version = Some(t.to_string());
        }
    }
    Some(s)
}

/// How long an upgrade step may go without moving before it is reported as stuck.
const UPGRADE_STUCK_AFTER: Duration = Duration::from_secs(30 * 60);

fn upgrade_stuck(u: &kok_crds::UpgradeStatus) -> bool {
    u.last_progress_time
        .as_ref()
        .or(u.start_time.as_ref())
        .is_some_and(|t| {
            let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
            age.as_secs() > UPGRADE_STUCK_AFTER.as_secs() as i64
        })
}

/// The tag of an image reference (`repo/etcd:3.5.16` -> `3.5.16`).
fn image_tag(image: &str) -> String {
    image
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map(|(_, tag)| tag.to_string())
        .unwrap_or_default()
}

/// The image of a pod template's first container.
fn first_image(t: Option<k8s_openapi::api::core::v1::PodTemplateSpec>) -> Option<String> {
    t?.spec?.containers.into_iter().next()?.image
}

/// Whether the recorded etcd cluster version is the minor every member runs.
fn etcd_cluster_version_settled(status: &TenantClusterStatus) -> bool {
    // A tag that is not a version (an image by digest): nothing to compare.
    let Some(running) = status
        .etcd_version
        .as_deref()
        .and_then(|v| v.parse::<upgrade_plan::EtcdVersion>().ok())
    else {
        return true;
    };
    let minor = format!("{}.{}", running.major, running.minor);
    status.etcd_cluster_version.as_deref() == Some(minor.as_str())
}

async fn patch_status(
    ctx: &Context,
    tc: &TenantCluster,
    old: &TenantClusterStatus,
    new: TenantClusterStatus,
) -> Result<()> {
    if *old == new && tc.status.is_some() {
        return Ok(());
    }
    let api: Api<TenantCluster> =
        Api::namespaced(ctx.client.clone(), &tc.namespace().unwrap_or_default());
    // `status.backup` belongs to the backup schedule: leaving it out of the
    // merge patch keeps a stale copy from this reconcile from rolling it back.
    let mut new = new;
    new.backup = None;
    api.patch_status(
        &tc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": new })),
    )
    .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    tc: &TenantCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &tc.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::kept_volumes_problem;

    fn kept(indices: &[i32]) -> Vec<(i32, String)> {
        indices
            .iter()
            .map(|i| (*i, format!("data-t-etcd-{i}")))
            .collect()
    }

    #[test]
    fn kept_claims_need_consent_and_the_right_member_count() {
        assert_eq!(kept_volumes_problem(&[], 3, false), None);
        let refused = kept_volumes_problem(&kept(&[0]), 1, false).unwrap();
        assert!(
            refused.contains("data-t-etcd-0") && refused.contains("adopt-etcd-volumes"),
            "{refused}"
        );
        assert_eq!(kept_volumes_problem(&kept(&[0, 1, 2]), 3, true), None);
        let mismatch = kept_volumes_problem(&kept(&[0]), 3, true).unwrap();
        assert!(mismatch.contains("separate etcd clusters"), "{mismatch}");
        assert!(kept_volumes_problem(&kept(&[0, 1, 2]), 1, true).is_some());
    }
}
