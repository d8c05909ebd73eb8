//! The EtcdRestore reconciler: the restore runbook as a state machine. Each
//! phase is written to status before it acts, and every phase is idempotent,
//! so a restarted operator resumes where it stopped.
//!
//! Pending -> StoppingControlPlane -> RestoringEtcd -> StartingControlPlane
//! -> Verifying -> Completed (or Failed, with the reason, at any step).
//!
//! Each running phase has a deadline (`kok_templates::restore::phase_deadline`).
//! A finalizer makes deleting a restore midway safe: before any member's data
//! was swapped the tenant is handed back on its original data; after, the
//! restore waits for its member Jobs and leaves the tenant stopped and
//! annotated, which the TenantCluster shows as `RestoreAbandoned`.

pub mod member;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kok_crds::{
    condition, BackupPhase, EtcdBackup, EtcdRestore, EtcdRestoreStatus, RestorePhase,
    TenantCluster, RESTORE_ANNOTATION,
};
use kok_templates::backup::artifact_key;
use kok_templates::names::{tenant_names, Names, TENANT_LABEL};
use kok_templates::restore::{
    check_incarnation, member_restore_job, member_restore_job_name, on_delete, overdue,
    restore_label_value, MemberRestore, OnDelete, RESTORE_LABEL,
};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::etcd::snapshot::fingerprint_at;
use crate::etcd::EtcdAccess;
use crate::runtime::conditions;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};
use crate::runtime::status::{apply_status, manager};
use crate::storage::serve::backups_access;
use crate::storage::{open_store, Refusal};
use kok_templates::membership::{self, Mover};

const CONTROLLER: &str = "etcdrestore";
/// Held while deleting the restore could leave the tenant silently stopped.
pub const FINALIZER: &str = "kok.dev/restore";
const POLL: Duration = Duration::from_secs(3);

/// Stalled reasons: the spec cannot work (nothing was touched), the restore
/// failed on the way, or a phase ran past its deadline.
const INVALID_SPEC: &str = "InvalidSpec";
const RESTORE_FAILED: &str = "RestoreFailed";
const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
const RECONCILE_ERROR: &str = "ReconcileError";

/// What one step decided.
enum Step {
    /// Record `phase` and continue at once.
    Next(RestorePhase, String),
    /// Stay in the phase; look again later.
    Wait(String),
    /// Phase Failed; the first field is the Stalled reason.
    Fail(&'static str, String),
}

/// A step that fails because the spec cannot work: nothing was touched yet.
fn invalid(message: impl Into<String>) -> Step {
    Step::Fail(INVALID_SPEC, message.into())
}

fn failed(message: impl Into<String>) -> Step {
    Step::Fail(RESTORE_FAILED, message.into())
}

#[instrument(skip_all, fields(restore = %er.name_any(), ns = er.namespace().unwrap_or_default()))]
pub async fn reconcile(er: Arc<EtcdRestore>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let api: Api<EtcdRestore> = Api::namespaced(ctx.client.clone(), &ns(&er));
    let obj_ref = ObjectRef::from_obj(er.as_ref());
    let result = finalizer(&api, FINALIZER, er.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(er) => run(er, &ctx).await,
            FinalizerEvent::Cleanup(er) => cleanup(er, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    match &result {
        Ok(_) => ctx.reset_failures(CONTROLLER, &obj_ref),
        Err(e) => report_error(&er, &ctx, e).await,
    }
    result
}

pub fn error_policy(er: Arc<EtcdRestore>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_error(CONTROLLER, er.as_ref(), error)
}

/// One step of the runbook.
async fn run(er: Arc<EtcdRestore>, ctx: &Context) -> Result<Action> {
    // The phase from the API, not the cache: acting on a stale phase could
    // redo an earlier step (stop the control plane again after handing it back).
    let api: Api<EtcdRestore> = Api::namespaced(ctx.client.clone(), &ns(&er));
    let Some(fresh) = api.get_opt(&er.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if fresh.meta().deletion_timestamp.is_some() {
        // The deletion event brings us back, into cleanup.
        return Ok(Action::await_change());
    }
    let er = Arc::new(fresh);
    let generation = er.meta().generation;
    let mut status = er.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let phase = status.phase.unwrap_or(RestorePhase::Pending);
    if matches!(phase, RestorePhase::Completed | RestorePhase::Failed) {
        // Restores finished before conditions existed get them once.
        if status.conditions.is_empty() {
            set_conditions(&mut status, RESTORE_FAILED);
            patch_status(ctx, &er, &status).await?;
        }
        return Ok(Action::await_change());
    }
    let step = match deadline_passed(&mut status, phase) {
        Some(step) => step,
        None => match phase {
            RestorePhase::Pending => begin(&er, ctx, &mut status).await?,
            RestorePhase::StoppingControlPlane => stop_control_plane(&er, ctx).await?,
            RestorePhase::RestoringEtcd => restore_members(&er, ctx, &mut status).await?,
            RestorePhase::StartingControlPlane => start_control_plane(&er, ctx).await?,
            RestorePhase::Verifying => verify(&er, ctx).await?,
            RestorePhase::Completed | RestorePhase::Failed => return Ok(Action::await_change()),
        },
    };
    let mut stalled_reason = RESTORE_FAILED;
    let action = match step {
        Step::Next(next, message) => {
            info!(phase = ?next, %message, "restore step");
            status.phase = Some(next);
            status.phase_start_time = Some(now());
            status.message = Some(message.clone());
            if next == RestorePhase::Completed {
                status.completion_time = Some(now());
                ctx.metrics.restore_finished(true);
            }
            // Each step on the object (`kubectl describe`), not only the log.
            let reason = format!("{next:?}");
            ctx.publish(er.as_ref(), EventType::Normal, &reason, "Restore", &message)
                .await;
            Action::requeue(Duration::from_millis(100))
        }
        Step::Wait(message) => {
            status.message = Some(message);
            Action::requeue(POLL)
        }
        Step::Fail(reason, message) => {
            warn!(%message, reason, "restore failed");
            stalled_reason = reason;
            status.phase = Some(RestorePhase::Failed);
            status.message = Some(message.clone());
            status.completion_time = Some(now());
            ctx.metrics.restore_finished(false);
            ctx.publish(er.as_ref(), EventType::Warning, reason, "Restore", &message)
                .await;
            Action::await_change()
        }
    };
    set_conditions(&mut status, stalled_reason);
    if er.status.as_ref() != Some(&status) {
        patch_status(ctx, &er, &status).await?;
    }
    Ok(action)
}

/// Fails the restore when its phase has run past its deadline. A phase with
/// no recorded start (restores from before phase deadlines) starts now.
fn deadline_passed(status: &mut EtcdRestoreStatus, phase: RestorePhase) -> Option<Step> {
    let Some(started) = &status.phase_start_time else {
        if phase != RestorePhase::Pending {
            status.phase_start_time = Some(now());
        }
        return None;
    };
    let elapsed = Timestamp::now().as_second() - started.0.as_second();
    let deadline = overdue(phase, Duration::from_secs(elapsed.max(0) as u64))?;
    let minutes = deadline.as_secs() / 60;
    let after = match phase {
        RestorePhase::Verifying => {
            "the control plane was handed back and etcd holds the restored data, but it is \
             not verified (see the TenantCluster's conditions)"
        }
        _ => {
            "the control plane stays stopped and the TenantCluster keeps its \
             kok.dev/restore-in-progress annotation; see docs/runbooks/backup-restore.md"
        }
    };
    Some(Step::Fail(
        DEADLINE_EXCEEDED,
        format!("phase {phase:?} did not finish within its {minutes}-minute deadline; {after}"),
    ))
}

/// kstatus conditions from the phase (`kok_templates::restore::conditions`).
fn set_conditions(status: &mut EtcdRestoreStatus, stalled_reason: &str) {
    let phase = status.phase.unwrap_or(RestorePhase::Pending);
    let message = status.message.clone().unwrap_or_default();
    let computed = kok_templates::restore::conditions(phase, &message, stalled_reason);
    conditions::apply(&mut status.conditions, computed, status.observed_generation);
}

/// Makes a failing reconcile visible on the object: a condition and a
/// Warning Event. Conflicts (retried at once) and waiting for member Jobs
/// during deletion are not failures.
async fn report_error(er: &EtcdRestore, ctx: &Context, error: &Error) {
    let inner = match error {
        Error::Finalizer(f) => match f.as_ref() {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            _ => error,
        },
        e => e,
    };
    let code = match (inner, error) {
        (Error::Kube(kube::Error::Api(e)), _) => Some(e.code),
        (_, Error::Finalizer(f)) => match f.as_ref() {
            kube::runtime::finalizer::Error::AddFinalizer(kube::Error::Api(e))
            | kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(e)) => Some(e.code),
            _ => None,
        },
        _ => None,
    };
    if matches!(inner, Error::CleanupPending(_)) || code == Some(409) {
        return;
    }
    let message = error.to_string();
    ctx.publish(
        er,
        EventType::Warning,
        RECONCILE_ERROR,
        "Reconcile",
        &message,
    )
    .await;
    let api: Api<EtcdRestore> = Api::namespaced(ctx.client.clone(), &ns(er));
    let Ok(Some(fresh)) = api.get_opt(&er.name_any()).await else {
        return;
    };
    let mut status = fresh.status.clone().unwrap_or_default();
    let generation = fresh.meta().generation;
    // The API refused the request itself: the same request cannot succeed later.
    let permanent = matches!(code, Some(400) | Some(422));
    let computed = kok_templates::kstatus::reconcile_error(RECONCILE_ERROR, &message, permanent);
    conditions::apply(&mut status.conditions, computed, generation);
    if fresh.status.as_ref().map(|s| &s.conditions) != Some(&status.conditions) {
        // The whole status: what this writer leaves out of an apply is removed.
        if let Err(e) = apply_status(&api, &fresh, manager::RESTORE, &status).await {
            warn!(error = %e, "could not record the reconcile error in status");
        }
    }
}

/// Deleting the restore: never leaves the tenant silently stopped, never
/// interrupts a member Job. See [`kok_templates::restore::on_delete`].
async fn cleanup(er: Arc<EtcdRestore>, ctx: &Context) -> Result<Action> {
    let api: Api<EtcdRestore> = Api::namespaced(ctx.client.clone(), &ns(&er));
    // The recorded phase decides what is safe: read it from the API.
    let Some(er) = api.get_opt(&er.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let status = er.status.clone().unwrap_or_default();
    let (jobs, running) = member_jobs(ctx, &er).await?;
    if running > 0 {
        let message = format!(
            "deleted: waiting for {running} member Job(s) to finish first; a member's data \
             swap is never interrupted"
        );
        if status.message.as_deref() != Some(message.as_str()) {
            let mut status = status.clone();
            status.message = Some(message);
            apply_status(&api, &er, manager::RESTORE, &status).await?;
        }
        return Err(Error::CleanupPending(format!(
            "EtcdRestore {}",
            er.name_any()
        )));
    }
    let created = status.member_jobs_created == Some(true) || jobs > 0;
    match on_delete(status.phase, created) {
        OnDelete::HandBack => {
            if release_tenant(ctx, &er).await? {
                info!("restore deleted before it changed any data; tenant handed back");
            }
        }
        OnDelete::Abandon => {
            warn!(
                "restore deleted after member data may have been replaced; the tenant stays \
                 stopped and annotated (RestoreAbandoned)"
            );
            if let Some(tc) = tenant(ctx, &er).await? {
                let event = Event {
                    type_: EventType::Warning,
                    reason: "RestoreAbandoned".into(),
                    note: Some(format!(
                        "EtcdRestore {} was deleted during {:?} after member data may have \
                         been replaced; the control plane stays stopped until a new restore \
                         completes (see docs/runbooks/backup-restore.md)",
                        er.name_any(),
                        status.phase.unwrap_or(RestorePhase::Pending)
                    )),
                    action: "Restore".into(),
                    secondary: Some(er.object_ref(&())),
                };
                if let Err(e) = ctx.recorder.publish(&event, &tc.object_ref(&())).await {
                    warn!(error = %e, "could not publish event");
                }
            }
        }
        OnDelete::Release => {}
    }
    Ok(Action::await_change())
}

/// This restore's member Jobs, and how many of them (or of their pods) are
/// still running. Found by label and owner, so names cut short still match.
async fn member_jobs(ctx: &Context, er: &EtcdRestore) -> Result<(usize, usize)> {
    let uid = er.uid().unwrap_or_default();
    let lp = ListParams::default().labels(&format!(
        "{RESTORE_LABEL}={}",
        restore_label_value(&er.name_any())
    ));
    let owned = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        m.owner_references.iter().flatten().any(|o| o.uid == uid)
    };
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &ns(er))
        .list(&lp)
        .await?
        .items;
    let ours: Vec<&Job> = jobs.iter().filter(|j| owned(&j.metadata)).collect();
    let unfinished = ours.iter().filter(|j| !job_finished(j)).count();
    // A Job deleted by someone else may leave its pod running for a while.
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns(er))
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            )
        })
        .count();
    Ok((ours.len(), unfinished.max(pods)))
}

fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// Removes the restore annotation if it names this restore, so the
/// TenantCluster reconciler starts the control plane again. Returns whether
/// it was removed. The resourceVersion makes it a compare-and-swap.
async fn release_tenant(ctx: &Context, er: &EtcdRestore) -> Result<bool> {
    let Some(tc) = tenant(ctx, er).await? else {
        return Ok(false);
    };
    if tc.annotations().get(RESTORE_ANNOTATION) != Some(&er.name_any()) {
        return Ok(false);
    }
    match Api::<TenantCluster>::namespaced(ctx.client.clone(), &ns(er))
        .patch(
            &tc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
                "resourceVersion": tc.resource_version(),
                "annotations": {RESTORE_ANNOTATION: null},
            }})),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if crate::runtime::api::is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn ns(er: &EtcdRestore) -> String {
    er.namespace().unwrap_or_default()
}

async fn tenant(ctx: &Context, er: &EtcdRestore) -> Result<Option<TenantCluster>> {
    Ok(
        Api::<TenantCluster>::namespaced(ctx.client.clone(), &ns(er))
            .get_opt(&er.spec.tenant_cluster)
            .await?,
    )
}

async fn backup(ctx: &Context, er: &EtcdRestore) -> Result<Option<EtcdBackup>> {
    Ok(Api::<EtcdBackup>::namespaced(ctx.client.clone(), &ns(er))
        .get_opt(&er.spec.backup)
        .await?)
}

/// Checks everything before touching anything, then takes the tenant over.
async fn begin(er: &EtcdRestore, ctx: &Context, status: &mut EtcdRestoreStatus) -> Result<Step> {
    let name = &er.spec.tenant_cluster;
    let Some(tc) = tenant(ctx, er).await? else {
        return Ok(invalid(format!("TenantCluster {name} not found")));
    };
    let Some(b) = backup(ctx, er).await? else {
        return Ok(invalid(format!("EtcdBackup {} not found", er.spec.backup)));
    };
    let bs = b.status.clone().unwrap_or_default();
    if bs.phase != Some(BackupPhase::Succeeded) {
        return Ok(invalid(format!(
            "EtcdBackup {} has not succeeded ({:?})",
            er.spec.backup, bs.phase
        )));
    }
    if b.spec.tenant_cluster != *name {
        return Ok(invalid(format!(
            "EtcdBackup {} is a backup of {}, not of {name}",
            er.spec.backup, b.spec.tenant_cluster
        )));
    }
    // A backup of another incarnation (deleted and recreated under the same
    // name) is refused unless asked for: restoring it is a deliberate act.
    let accepted = match check_incarnation(
        bs.tenant_cluster_uid.as_deref(),
        tc.uid().as_deref(),
        er.spec.accept_other_incarnation,
    ) {
        Ok(accepted) => accepted,
        Err(why) => return Ok(invalid(why)),
    };
    // The one rule on who moves etcd members: a restore supersedes a
    // replacement, scaling, roll or lost quorum, never a migration. (Another
    // restore holding the tenant is settled below, by the annotation.)
    let record = membership::on_record(tc.status.as_ref(), false, false);
    if let Err(holder) = membership::may_start(Mover::Restore, &record) {
        let phase = tc
            .status
            .as_ref()
            .and_then(|s| s.migration.as_ref())
            .map(|m| format!(" (status.migration.phase {})", m.phase))
            .unwrap_or_default();
        return Ok(invalid(format!(
            "TenantCluster {name} is in a {holder}{phase}: restore once it has finished or been rolled back"
        )));
    }
    if tc.spec.etcd.storage.ephemeral {
        return Ok(invalid(
            "spec.etcd.storage.ephemeral is true: member data does not outlive the pods, \
             so there is no volume to restore into",
        ));
    }
    let Some(spec) = &tc.spec.backup else {
        return Ok(invalid(format!(
            "TenantCluster {name} has no spec.backup.destination to read the backup from"
        )));
    };
    let store = match open_store(ctx, &ns(er), spec).await? {
        Ok(s) => s,
        Err(Refusal(why)) => return Ok(invalid(why)),
    };
    let key = artifact_key(&ns(er), name, &er.spec.backup);
    if bs.location.as_deref() != Some(store.location(&key).as_str()) {
        return Ok(invalid(format!(
            "the backup is stored at {:?} but the TenantCluster's destination is now {}",
            bs.location,
            store.location(&key)
        )));
    }
    if let Some(why) = key_mismatch(bs.encryption_key_id.as_deref(), store.key_id().as_deref()) {
        return Ok(invalid(why));
    }
    match store.exists(&key).await {
        Ok(true) => {}
        Ok(false) => {
            return Ok(invalid(format!(
                "the artifact {} is missing",
                store.location(&key)
            )))
        }
        // Unreachable destination: nothing was touched yet, so try again later.
        Err(e) => return Ok(Step::Wait(format!("checking the artifact: {e}"))),
    }
    if ctx.operator_image.is_none() {
        return Ok(failed(
            "the operator does not know its own image (KOK_IMAGE): restore Jobs run it",
        ));
    }
    if let Some(other) = tc.annotations().get(RESTORE_ANNOTATION) {
        if other != &er.name_any() && holds_tenant(ctx, er, other).await? {
            return Ok(invalid(format!(
                "EtcdRestore {other} is already restoring {name}: one restore at a time"
            )));
        }
    }
    // From here on the TenantCluster reconciler leaves the control plane alone.
    // The resourceVersion makes this a compare-and-swap: of two restores
    // starting at once, one gets a conflict and re-checks.
    match Api::<TenantCluster>::namespaced(ctx.client.clone(), &ns(er))
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
                "resourceVersion": tc.resource_version(),
                "annotations": {RESTORE_ANNOTATION: er.name_any()},
            }})),
        )
        .await
    {
        Ok(_) => {}
        Err(e) if crate::runtime::api::is_conflict(&e) => {
            return Ok(Step::Wait(
                "the TenantCluster changed; checking again".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    status.start_time = Some(now());
    status.accepted_other_incarnation = Some(accepted);
    let uid = er.uid().unwrap_or_default();
    status.cluster_token = Some(format!("{name}-restore-{}", &uid[..uid.len().min(8)]));
    let mut message = "stopping the apiservers, controller-manager, scheduler and etcd".to_string();
    if accepted {
        message.push_str(&format!(
            " (restoring a backup of another incarnation of {name}, as \
             spec.acceptOtherIncarnation allows)"
        ));
    }
    Ok(Step::Next(RestorePhase::StoppingControlPlane, message))
}

/// Whether the EtcdRestore `other` still holds the tenant: it exists and has
/// not failed. A failed or deleted restore leaves the tenant stopped and
/// annotated; a new restore may take it over.
async fn holds_tenant(ctx: &Context, er: &EtcdRestore, other: &str) -> Result<bool> {
    let other = Api::<EtcdRestore>::namespaced(ctx.client.clone(), &ns(er))
        .get_opt(other)
        .await?;
    Ok(other.is_some_and(|o| {
        !matches!(
            o.status.and_then(|s| s.phase),
            Some(RestorePhase::Failed) | Some(RestorePhase::Completed)
        )
    }))
}

async fn stop_control_plane(er: &EtcdRestore, ctx: &Context) -> Result<Step> {
    let names = match tenant(ctx, er).await? {
        Some(tc) => tenant_names(&tc),
        None => Names::new(&er.spec.tenant_cluster),
    };
    let zero = Patch::Merge(json!({"spec": {"replicas": 0}}));
    let pp = PatchParams::default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns(er));
    for d in [
        names.apiserver(),
        names.controller_manager(),
        names.scheduler(),
    ] {
        crate::runtime::api::gone_is_done(deployments.patch(&d, &pp, &zero).await)?;
    }
    crate::runtime::api::gone_is_done(
        Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns(er))
            .patch(&names.etcd(), &pp, &zero)
            .await,
    )?;
    let running = control_plane_pods(ctx, er).await?;
    if running > 0 {
        return Ok(Step::Wait(format!(
            "waiting for {running} control-plane pods to stop"
        )));
    }
    Ok(Step::Next(
        RestorePhase::RestoringEtcd,
        "rebuilding every etcd member from the snapshot".into(),
    ))
}

async fn control_plane_pods(ctx: &Context, er: &EtcdRestore) -> Result<usize> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns(er));
    let lp = ListParams::default().labels(&format!(
        "{TENANT_LABEL}={},kok.dev/component!=etcd-restore",
        er.spec.tenant_cluster
    ));
    Ok(pods.list_metadata(&lp).await?.items.len())
}

async fn restore_members(
    er: &EtcdRestore,
    ctx: &Context,
    status: &mut EtcdRestoreStatus,
) -> Result<Step> {
    let Some(tc) = tenant(ctx, er).await? else {
        return Ok(failed("the TenantCluster was deleted during the restore"));
    };
    let Some(b) = backup(ctx, er).await? else {
        return Ok(failed("the EtcdBackup was deleted during the restore"));
    };
    let (Some(spec), Some(sha256), Some(image), Some(owner)) = (
        tc.spec.backup.as_ref(),
        b.status.as_ref().and_then(|s| s.sha256.clone()),
        ctx.operator_image.as_deref(),
        er.controller_owner_ref(&()),
    ) else {
        return Ok(failed("the backup lost its destination or checksum"));
    };
    let replicas = tc
        .status
        .as_ref()
        .and_then(|s| s.etcd_replicas)
        .unwrap_or(tc.spec.etcd.replicas);
    let names = tenant_names(&tc);
    let key = artifact_key(&ns(er), &tc.name_any(), &er.spec.backup);
    let token = status.cluster_token.clone().unwrap_or_default();
    let uid = er.uid().unwrap_or_default();
    // Recorded before the first Job exists: from then on a member's data may
    // be replaced, and deleting the restore must no longer hand the tenant back.
    if status.member_jobs_created != Some(true) {
        status.member_jobs_created = Some(true);
        patch_status(ctx, er, status).await?;
    }
    let backup_node = b.status.as_ref().and_then(|s| s.node.as_deref());
    // How Jobs reach the artifact: worked out once, and only when a Job is
    // to be made (a Job running already needs nothing more).
    let mut backups = None;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns(er));
    let mut done = 0;
    for member in 0..replicas {
        let name = member_restore_job_name(&er.name_any(), member);
        let current = match jobs.get_opt(&name).await? {
            // A Job of that name that this restore did not create is never
            // taken for its own: its success would say nothing.
            Some(j) => match crate::runtime::apply::check_owner(&j, &uid) {
                Ok(()) => j,
                Err(e) => return Ok(failed(e.to_string())),
            },
            None => {
                let access = match backups.clone() {
                    Some(a) => a,
                    None => {
                        match backups_access(ctx, &spec.destination, &key, backup_node).await? {
                            Ok(a) => {
                                backups = Some(a.clone());
                                a
                            }
                            Err(why) => return Ok(failed(why)),
                        }
                    }
                };
                let job = member_restore_job(&MemberRestore {
                    names: &names,
                    namespace: &ns(er),
                    restore_name: &er.name_any(),
                    owner: owner.clone(),
                    restore_id: &uid,
                    member,
                    replicas,
                    image,
                    destination: &spec.destination,
                    encryption: spec.encryption.as_ref(),
                    private_s3: &ctx.policy.private_s3,
                    backups: access,
                    artifact_key: &key,
                    sha256: &sha256,
                    etcd_sha256: b.status.as_ref().and_then(|s| s.etcd_sha256.as_deref()),
                    cluster_token: &token,
                    bump_revision: None,
                });
                let job = match job {
                    Ok(job) => job,
                    Err(e) => return Ok(failed(format!("building the restore Job: {e}"))),
                };
                crate::runtime::api::create_or_get(&jobs, &job).await?
            }
        };
        let js = current.status.unwrap_or_default();
        let failed_for_good = js
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" && c.status == "True");
        if failed_for_good {
            return Ok(failed(format!(
                "restoring member {member} failed (kubectl -n {} logs job/{name}); the control \
                 plane stays stopped and the tenant stays annotated {RESTORE_ANNOTATION}; \
                 previous member data is kept as data.pre-restore-{uid} where it was replaced",
                ns(er)
            )));
        }
        if js.succeeded.unwrap_or(0) > 0 {
            done += 1;
        }
    }
    if done < replicas {
        return Ok(Step::Wait(format!("{done}/{replicas} members rebuilt")));
    }
    Ok(Step::Next(
        RestorePhase::StartingControlPlane,
        format!("{replicas}/{replicas} members rebuilt; starting etcd, then the control plane"),
    ))
}

/// Hands the tenant back to its reconciler, which starts etcd and, once etcd
/// has quorum, the apiservers, then the controller-manager and scheduler.
async fn start_control_plane(er: &EtcdRestore, ctx: &Context) -> Result<Step> {
    if tenant(ctx, er).await?.is_none() {
        return Ok(failed("the TenantCluster was deleted during the restore"));
    }
    release_tenant(ctx, er).await?;
    Ok(Step::Next(
        RestorePhase::Verifying,
        "waiting for the tenant API, then comparing etcd with the backup".into(),
    ))
}

async fn verify(er: &EtcdRestore, ctx: &Context) -> Result<Step> {
    let Some(tc) = tenant(ctx, er).await? else {
        return Ok(failed("the TenantCluster was deleted during the restore"));
    };
    let ready = tc
        .status
        .as_ref()
        .filter(|s| s.observed_generation == tc.metadata.generation)
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == condition::READY))
        .is_some_and(|c| c.status == "True" && c.reason == "Ready");
    if !ready || tc.annotations().contains_key(RESTORE_ANNOTATION) {
        // The Verifying deadline (see `deadline_passed`) ends this wait.
        return Ok(Step::Wait("waiting for the tenant to be Ready".into()));
    }
    let Some(bs) = backup(ctx, er).await?.and_then(|b| b.status) else {
        return Ok(failed("the EtcdBackup was deleted during the restore"));
    };
    let (Some(revision), Some(key_count), Some(kv_hash)) = (bs.revision, bs.key_count, bs.kv_hash)
    else {
        return Ok(failed("the backup recorded no fingerprint"));
    };
    let restored = async {
        let etcd = EtcdAccess::for_tenant(&ctx.client, &tc)
            .await
            .map_err(|e| e.to_string())?;
        let mut c = etcd.connect().await.map_err(|e| e.to_string())?;
        fingerprint_at(&mut c, revision)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match restored {
        Err(e) if e.contains("compacted") => Ok(failed(format!(
            "the tenant compacted past the backup's revision {revision} before it could be \
             compared ({e}); the data was restored but is not verified"
        ))),
        Err(e) => Ok(Step::Wait(format!("reading the restored etcd: {e}"))),
        Ok(f) if f.key_count == key_count && f.kv_hash == kv_hash => Ok(Step::Next(
            RestorePhase::Completed,
            format!(
                "restored: the tenant API answers and etcd at revision {revision} holds the \
                 backup's {key_count} keys (HashKV {kv_hash})"
            ),
        )),
        Ok(f) => Ok(failed(format!(
            "the restored etcd differs from the backup at revision {revision}: \
             {} keys (HashKV {}) instead of {key_count} ({kv_hash})",
            f.key_count, f.kv_hash
        ))),
    }
}

async fn patch_status(ctx: &Context, er: &EtcdRestore, status: &EtcdRestoreStatus) -> Result<()> {
    let api = Api::<EtcdRestore>::namespaced(ctx.client.clone(), &ns(er));
    apply_status(&api, er, manager::RESTORE, status).await
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Why an artifact sealed with key `recorded` cannot be opened with the
/// destination's key `current` (checked before the control plane is stopped).
fn key_mismatch(recorded: Option<&str>, current: Option<&str>) -> Option<String> {
    match (recorded, current) {
        (Some(r), None) => Some(format!(
            "the backup is encrypted with key {r}: set spec.backup.encryption of the TenantCluster to the Secret holding it"
        )),
        (Some(r), Some(c)) if r != c => Some(format!(
            "the backup is encrypted with key {r} but spec.backup.encryption names key {c}"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn restores_need_the_key_the_backup_was_sealed_with() {
        use super::key_mismatch;
        assert_eq!(key_mismatch(None, None), None);
        // A plain artifact reads with or without a key configured now.
        assert_eq!(key_mismatch(None, Some("k1")), None);
        assert_eq!(key_mismatch(Some("k1"), Some("k1")), None);
        assert!(key_mismatch(Some("k1"), None)
            .unwrap()
            .contains("spec.backup.encryption"));
        assert!(key_mismatch(Some("k1"), Some("k2")).unwrap().contains("k2"));
    }

    use super::*;

    fn status(phase: RestorePhase, started_secs_ago: Option<i64>) -> EtcdRestoreStatus {
        EtcdRestoreStatus {
            phase: Some(phase),
            message: Some("doing it".into()),
            phase_start_time: started_secs_ago
                .map(|s| Time(Timestamp::from_second(Timestamp::now().as_second() - s).unwrap())),
            observed_generation: Some(1),
            ..Default::default()
        }
    }

    fn cond<'a>(s: &'a EtcdRestoreStatus, type_: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn conditions_follow_the_phase() {
        let mut s = status(RestorePhase::RestoringEtcd, None);
        set_conditions(&mut s, RESTORE_FAILED);
        assert_eq!(cond(&s, condition::READY).0, "False");
        assert_eq!(cond(&s, condition::RECONCILING), ("True", "RestoringEtcd"));
        assert_eq!(cond(&s, condition::STALLED).0, "False");

        s.phase = Some(RestorePhase::Completed);
        set_conditions(&mut s, RESTORE_FAILED);
        assert_eq!(cond(&s, condition::READY), ("True", "Completed"));
        assert_eq!(cond(&s, condition::RECONCILING).0, "False");
        assert_eq!(cond(&s, condition::STALLED).0, "False");

        let mut f = status(RestorePhase::Failed, None);
        set_conditions(&mut f, INVALID_SPEC);
        assert_eq!(cond(&f, condition::READY).0, "False");
        assert_eq!(cond(&f, condition::RECONCILING).0, "False");
        assert_eq!(cond(&f, condition::STALLED), ("True", INVALID_SPEC));
        assert_eq!(f.conditions.len(), 3);
        assert!(f
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1)));
    }

    #[test]
    fn a_phase_past_its_deadline_fails_with_the_reason() {
        let mut s = status(RestorePhase::StoppingControlPlane, Some(6 * 60));
        match deadline_passed(&mut s, RestorePhase::StoppingControlPlane) {
            Some(Step::Fail(reason, message)) => {
                assert_eq!(reason, DEADLINE_EXCEEDED);
                assert!(message.contains("StoppingControlPlane"), "{message}");
                assert!(message.contains("5-minute"), "{message}");
                assert!(message.contains("stays stopped"), "{message}");
            }
            _ => panic!("expected a failure"),
        }
        let mut s = status(RestorePhase::StoppingControlPlane, Some(60));
        assert!(deadline_passed(&mut s, RestorePhase::StoppingControlPlane).is_none());
    }

    #[test]
    fn a_phase_without_a_recorded_start_starts_its_clock_now() {
        let mut s = status(RestorePhase::RestoringEtcd, None);
        assert!(deadline_passed(&mut s, RestorePhase::RestoringEtcd).is_none());
        assert!(s.phase_start_time.is_some());
        let mut p = status(RestorePhase::Pending, None);
        assert!(deadline_passed(&mut p, RestorePhase::Pending).is_none());
        assert!(p.phase_start_time.is_none(), "Pending has no deadline");
    }
}
