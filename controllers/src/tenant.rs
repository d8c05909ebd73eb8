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
use kok_templates::controlplane::{self as cp, ConfigHashes, Placement, Resolved};
use kok_templates::flags::APISERVER_PORT;
use kok_templates::names::{tenant_selector, Names};
use kok_templates::pki::{self, CaKind, San, TenantPkiInputs};
use kok_templates::secrets::{self, config_hash};
use kok_templates::tenant_status::{self, Observed, WorkloadRollout};
use kok_templates::validate::{describe, validate, validate_name, ValidSpec};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::apply::{apply, apply_child, check_owner};
use crate::conditions;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::lenient::Lenient;
use crate::pki::{self as tenant_pki, TenantPki};
use crate::tenant_health;

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
    let name_errors = validate_name(&name);
    let validated = match validate(&tc.spec, tc.status.as_ref(), &ctx.policy) {
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
    let cm_kubeconfig = pki::kubeconfig(
        &name,
        &internal_url,
        cluster_ca,
        "system:kube-controller-manager",
        &pki.leaves["controller-manager"],
    );
    let sched_kubeconfig = pki::kubeconfig(
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
        pki::kubeconfig(
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
    let etcd = apply_child(
        &statefulsets,
        &cp::etcd_statefulset(&p, &tc.spec, &valid, &resolved),
        &uid,
    )
    .await?;
    status.etcd_replicas = Some(valid.etcd_replicas);
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
                &cp::apiserver_deployment(&p, &tc.spec, &valid, &resolved),
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
                apply_child(&deployments, &build(&p, &tc.spec, &valid, &resolved), &uid).await?,
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
        readyz: tenant_ready,
        endpoint_known: endpoint.is_some(),
    };
    let verdict = tenant_status::verdict(&observed);
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

    let ready = verdict.ready;
    match &verdict.waiting_for {
        None => {
            status.version = Some(valid.version.to_string());
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
            conditions::set(c, condition::READY, false, "Progressing", msg.clone(), g);
            conditions::set(
                c,
                condition::RECONCILING,
                true,
                "Progressing",
                msg.clone(),
                g,
            );
        }
    }
    let became_ready = ready && !conditions::is_true(&old_status.conditions, condition::READY);
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
    Ok(Action::requeue(if ready { RESYNC } else { PROGRESS_POLL }))
}

/// Deletes every child kok created for the tenant, then lets the finalizer go.
/// etcd PersistentVolumeClaims are kept: they hold data, and kok did not
/// create them directly (the StatefulSet did); delete them by label to reclaim.
async fn cleanup(tc: Arc<TenantCluster>, ctx: &Context) -> Result<Action> {
    let ns = tc.namespace().unwrap_or_default();
    let selector = tenant_selector(&tc.name_any());
    let lp = ListParams::default().labels(&selector);
    let dp = DeleteParams::background();
    let c = ctx.client.clone();
    let remaining = delete_all(&Api::<Deployment>::namespaced(c.clone(), &ns), &dp, &lp).await?
        + delete_all(&Api::<StatefulSet>::namespaced(c.clone(), &ns), &dp, &lp).await?
        + delete_all(&Api::<Service>::namespaced(c.clone(), &ns), &dp, &lp).await?
        + delete_all(&Api::<NetworkPolicy>::namespaced(c.clone(), &ns), &dp, &lp).await?
        + delete_all(&Api::<Secret>::namespaced(c.clone(), &ns), &dp, &lp).await?;
    if remaining > 0 {
        return Err(Error::CleanupPending(tc.name_any()));
    }
    crate::backup_schedule::delete_all_backups(ctx, &tc).await?;
    info!("tenant children deleted; releasing finalizer");
    Ok(Action::await_change())
}

/// Deletes what matches and returns how many objects still exist afterwards.
async fn delete_all<K>(api: &Api<K>, dp: &DeleteParams, lp: &ListParams) -> Result<usize>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let existing = api.list_metadata(lp).await?;
    for obj in &existing.items {
        match api.delete(&obj.name_any(), dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
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
async fn check_kept_volumes(
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

/// Hostname -> IP pins (`hostAliases`) of a running workload.
fn pinned_addresses(pod: Option<k8s_openapi::api::core::v1::PodSpec>) -> HashMap<String, String> {
    pod.and_then(|p| p.host_aliases)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|a| {
            a.hostnames
                .unwrap_or_default()
                .into_iter()
                .map(move |h| (h, a.ip.clone()))
        })
        .collect()
}

/// Applies a Service, keeping its ClusterIP: the existing one, or when it was
/// deleted, the address the workloads still pin. A deleted Service's address is
/// released asynchronously, so reuse is retried for a bounded time before a new
/// address is taken (which rolls certificates and pins).
async fn apply_service(
    api: &Api<Service>,
    mut svc: Service,
    pinned: &HashMap<String, String>,
    owner_uid: &str,
) -> Result<Service> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let existing = api.get_opt(&name).await?;
    if let Some(existing) = &existing {
        check_owner(existing, owner_uid)?;
    }
    let existing_ip = existing.as_ref().and_then(cluster_ip);
    let wanted = existing_ip.clone().or_else(|| pinned.get(&name).cloned());
    if let Some(ip) = wanted {
        set_cluster_ip(&mut svc, Some(ip.clone()));
        let deadline = tokio::time::Instant::now() + CLUSTER_IP_REUSE_WINDOW;
        let mut delay = Duration::from_millis(500);
        loop {
            match apply(api, &svc).await {
                Ok(s) => return Ok(s),
                // Only a recreation can fail on the address (not yet released, or taken).
                Err(Error::Kube(kube::Error::Api(e))) if existing_ip.is_none() && e.code == 422 => {
                    if tokio::time::Instant::now() + delay > deadline {
                        warn!(service = %name, %ip, error = %e.message, "the pinned ClusterIP stayed unavailable; taking a new one");
                        set_cluster_ip(&mut svc, None);
                        break;
                    }
                    info!(service = %name, %ip, error = %e.message, "pinned ClusterIP not free yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(8));
                }
                Err(e) => return Err(e),
            }
        }
    }
    apply(api, &svc).await
}

fn set_cluster_ip(svc: &mut Service, ip: Option<String>) {
    if let Some(spec) = svc.spec.as_mut() {
        spec.cluster_ip = ip;
    }
}

fn cluster_ip(svc: &Service) -> Option<String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| !ip.is_empty() && ip != "None")
}

fn available_replicas(d: &Deployment) -> i32 {
    d.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// Where users reach the tenant apiserver.
pub struct Endpoint {
    pub host: String,
    pub port: i32,
}

impl Endpoint {
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }
}

async fn endpoint(
    ctx: &Context,
    tc: &TenantCluster,
    svc: &Service,
    cluster_ip: &str,
) -> Result<Option<Endpoint>> {
    Ok(match tc.spec.control_plane.service.type_ {
        ServiceType::ClusterIP => Some(Endpoint {
            host: cluster_ip.to_string(),
            port: APISERVER_PORT,
        }),
        ServiceType::NodePort => {
            let node_port = svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .and_then(|ports| ports.first())
                .and_then(|p| p.node_port);
            let nodes: Api<Node> = Api::all(ctx.client.clone());
            let node_ip = nodes
                .list(&ListParams::default().limit(1))
                .await?
                .items
                .into_iter()
                .flat_map(|n| n.status.and_then(|s| s.addresses).unwrap_or_default())
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address);
            node_ip
                .zip(node_port)
                .map(|(host, port)| Endpoint { host, port })
        }
        ServiceType::LoadBalancer => svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .and_then(|i| i.first())
            .and_then(|i| i.ip.clone().or_else(|| i.hostname.clone()))
            .map(|host| Endpoint {
                host,
                port: APISERVER_PORT,
            }),
    })
}

fn pki_inputs(
    p: &Placement,
    tc: &TenantCluster,
    valid: &ValidSpec,
    apiserver_ip: &str,
    endpoint_host: Option<&str>,
) -> TenantPkiInputs {
    let apiserver = p.names.apiserver();
    let ns = &p.namespace;
    let mut apiserver_sans = vec![
        San::Dns(apiserver.clone()),
        San::Dns(format!("{apiserver}.{ns}")),
        San::Dns(format!("{apiserver}.{ns}.svc")),
        San::Dns(format!("{apiserver}.{ns}.svc.cluster.local")),
        San::Dns("localhost".into()),
        San::Ip([127, 0, 0, 1].into()),
        San::Ip(valid.kubernetes_service_ip),
    ];
    for host in [Some(apiserver_ip), endpoint_host].into_iter().flatten() {
        apiserver_sans.push(match host.parse() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(host.to_string()),
        });
    }
    apiserver_sans.extend(valid.extra_sans.iter().cloned());
    let mut etcd_sans: Vec<San> = (0..valid.etcd_replicas)
        .map(|i| San::Dns(p.names.etcd_member(i)))
        .collect();
    etcd_sans.push(San::Dns(p.names.etcd()));
    etcd_sans.push(San::Dns("localhost".into()));
    etcd_sans.push(San::Ip([127, 0, 0, 1].into()));
    TenantPkiInputs {
        cluster_name: p.names.tenant.clone(),
        cluster_domain: tc.spec.networking.cluster_domain.clone(),
        apiserver_sans: dedup(apiserver_sans),
        etcd_sans,
    }
}

fn dedup(mut sans: Vec<San>) -> Vec<San> {
    let mut seen = std::collections::HashSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

fn config_hashes(pki: &TenantPki, cm_kubeconfig: &str, sched_kubeconfig: &str) -> ConfigHashes {
    let leaf = |n: &str| {
        pki.leaves
            .get(n)
            .map(|l| l.cert_pem.as_str())
            .unwrap_or_default()
    };
    let ca = |k: CaKind| pki.ca(k).cert_pem.as_str();
    ConfigHashes {
        etcd: config_hash([
            ("etcd-ca", ca(CaKind::Etcd)),
            ("etcd-server", leaf("etcd-server")),
            ("etcd-peer", leaf("etcd-peer")),
        ]),
        apiserver: config_hash(
            [
                ("ca", ca(CaKind::Cluster)),
                ("front-proxy-ca", ca(CaKind::FrontProxy)),
                ("etcd-ca", ca(CaKind::Etcd)),
                ("sa.pub", pki.sa_pub.as_str()),
            ]
            .into_iter()
            .chain(
                [
                    "apiserver",
                    "apiserver-kubelet-client",
                    "apiserver-etcd-client",
                    "front-proxy-client",
                ]
                .into_iter()
                .map(|n| (n, leaf(n))),
            ),
        ),
        controller_manager: config_hash([
            ("ca", ca(CaKind::Cluster)),
            ("sa.key", pki.sa_key.as_str()),
            ("kubeconfig", cm_kubeconfig),
        ]),
        scheduler: config_hash([("kubeconfig", sched_kubeconfig)]),
    }
}

/// Patches status only when it differs from what is stored.
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
