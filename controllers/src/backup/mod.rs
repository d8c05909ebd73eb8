//! The EtcdBackup reconciler: one snapshot per object, Pending -> Running ->
//! (Verifying) -> Succeeded | Failed, each step recorded in status first so a
//! restarted operator redoes only the step it was in. kstatus conditions follow
//! the phase; an error that keeps a step from finishing is shown on the object
//! (condition and Event), not only in the operator's log.

pub mod schedule;

use std::sync::Arc;

use chrono::Utc;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kok_crds::{BackupPhase, BackupSpec, EtcdBackup, EtcdBackupStatus, TenantCluster};
use kok_templates::backup::artifact_key;
use kok_templates::backup_source::backup_source;
use kok_templates::kstatus::{self, Stage};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::{info, instrument, warn};

use crate::etcd::snapshot::{self, Fingerprint};
use crate::etcd::verify;
use crate::etcd::EtcdAccess;
use crate::runtime::conditions;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};
use crate::runtime::status::{apply_status, manager};
use crate::storage::{open_store, Refusal, Store};

const CONTROLLER: &str = "etcdbackup";

#[instrument(skip_all, fields(backup = %eb.name_any(), ns = eb.namespace().unwrap_or_default()))]
pub async fn reconcile(eb: Arc<EtcdBackup>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let ns = eb.namespace().unwrap_or_default();
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ns);
    // The phase from the API, not the cache: our own Running write queues a
    // reconcile that may start before the Succeeded write reaches the cache,
    // and a finished backup must never be taken again.
    let Some(fresh) = api.get_opt(&eb.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let status = fresh.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or(BackupPhase::Pending);
    if phase.is_terminal() {
        // Backups finished by an older kok have no conditions yet.
        if status.conditions.is_empty() {
            patch_status(&api, &fresh, &mut status.clone()).await?;
        }
        return Ok(Action::await_change());
    }
    let result = match phase {
        BackupPhase::Pending | BackupPhase::Running => run(&eb, &ctx, &api, status).await,
        BackupPhase::Verifying => verify_step(&eb, &ctx, &api, status).await,
        BackupPhase::Succeeded | BackupPhase::Failed => Ok(()),
    };
    if let Err(error) = result {
        show_error(&ctx, &api, &fresh, &error).await;
        // error_policy backs off; the next success replaces the conditions.
        return Err(error);
    }
    ctx.reset_failures(CONTROLLER, &ObjectRef::from_obj(eb.as_ref()));
    Ok(Action::await_change())
}

/// Puts a reconcile error on the object: Ready=False (and Stalled=True for
/// API errors a retry cannot fix), and a Warning Event. Best effort: when the
/// API itself is down this fails too, and the log is all there is.
async fn show_error(ctx: &Context, api: &Api<EtcdBackup>, fresh: &EtcdBackup, error: &Error) {
    let name = fresh.name_any();
    let message = error.to_string();
    // The newest conditions: the failed step may have written some already.
    let latest = match api.get_opt(&name).await {
        Ok(Some(b)) => b,
        _ => fresh.clone(),
    };
    let before = latest.status.clone().unwrap_or_default();
    let mut status = before.clone();
    error_conditions(
        &mut status.conditions,
        &message,
        is_permanent(error),
        latest.metadata.generation,
    );
    status.observed_generation = latest.metadata.generation;
    if status != before {
        // The whole status: what this writer leaves out of an apply is removed.
        if let Err(e) = apply_status(api, &latest, manager::BACKUP, &status).await {
            warn!(error = %e, "could not record the reconcile error in status");
        }
    }
    ctx.publish(
        fresh,
        EventType::Warning,
        "ReconcileError",
        "Backup",
        &message,
    )
    .await;
}

/// API errors that retrying the same request cannot fix (bad request,
/// invalid object): shown as Stalled. Retries go on with backoff regardless.
fn is_permanent(error: &Error) -> bool {
    matches!(error, Error::Kube(kube::Error::Api(e)) if e.code == 400 || e.code == 422)
}

/// Conditions after a reconcile error.
fn error_conditions(
    conditions: &mut Vec<Condition>,
    message: &str,
    permanent: bool,
    generation: Option<i64>,
) {
    let computed = kstatus::reconcile_error("ReconcileError", message, permanent);
    conditions::apply(conditions, computed, generation);
}

/// kstatus conditions for a phase: Ready when Succeeded, Stalled when Failed,
/// Reconciling while anything is still to do. The message is the status message.
fn phase_conditions(status: &mut EtcdBackupStatus, generation: Option<i64>) {
    let phase = status.phase.unwrap_or(BackupPhase::Pending);
    let stage = match phase {
        BackupPhase::Succeeded => Stage::Done,
        BackupPhase::Failed => Stage::Failed,
        BackupPhase::Pending | BackupPhase::Running | BackupPhase::Verifying => Stage::Running,
    };
    let message = status.message.clone().unwrap_or_default();
    let computed = kstatus::phase(stage, &format!("{phase:?}"), &message);
    conditions::apply(&mut status.conditions, computed, generation);
    status.observed_generation = generation;
}

pub fn error_policy(eb: Arc<EtcdBackup>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_error(CONTROLLER, eb.as_ref(), error)
}

async fn run(
    eb: &EtcdBackup,
    ctx: &Context,
    api: &Api<EtcdBackup>,
    mut status: EtcdBackupStatus,
) -> Result<()> {
    let Target {
        tc,
        spec,
        store,
        key,
    } = match resolve(ctx, eb, true).await? {
        Ok(t) => t,
        Err(Refusal(message)) => return fail(ctx, api, eb, status, message).await,
    };
    // Quorum and one healthy member are enough: a member down is when a
    // fresh backup matters most. Decided before anything is written, so a
    // refusal leaves no artifact.
    let access = match EtcdAccess::for_tenant(&ctx.client, &tc).await {
        Ok(a) => a,
        Err(e) => return fail(ctx, api, eb, status, e.to_string()).await,
    };
    let probes = access.probe().await;
    let source = match backup_source(&probes) {
        Ok(s) => s,
        Err(why) => return fail(ctx, api, eb, status, why).await,
    };
    let member = access.members[source.member].clone();
    status.source_member = Some(probes[source.member].name.clone());
    status.healthy_members = Some(source.healthy as i32);
    status.members = Some(source.total as i32);
    status.phase = Some(BackupPhase::Running);
    status.start_time.get_or_insert_with(now);
    status.location = Some(store.location(&key));
    // Which incarnation of the name this data is: retention and restores
    // never mix up a deleted-and-recreated cluster's backups with this one's.
    status.tenant_cluster_uid = tc.metadata.uid.clone();
    if spec_uses_filesystem(&tc) {
        status.node = ctx.operator_node.clone();
    }
    status.encryption_key_id = store.key_id();
    status.message = Some(format!(
        "streaming the snapshot from {} ({} of {} members healthy)",
        probes[source.member].name, source.healthy, source.total
    ));
    patch_status(api, eb, &mut status).await?;

    // One member, no failover: the fingerprint's linearizable reads and the
    // snapshot come from the member that was checked.
    let taken = async {
        let mut etcd = access
            .connect_member(&member)
            .await
            .map_err(|e| e.to_string())?;
        snapshot::take(&mut etcd, &store, &key)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    let snap = match taken {
        Ok(s) => s,
        Err(message) => return fail(ctx, api, eb, status, message).await,
    };
    info!(
        size = snap.size,
        revision = snap.fingerprint.revision,
        "snapshot stored"
    );
    status.size_bytes = Some(snap.size);
    status.size = Some(kok_crds::human_size(snap.size));
    status.sha256 = Some(snap.sha256);
    status.etcd_sha256 = Some(snap.etcd_sha256);
    status.revision = Some(snap.fingerprint.revision);
    status.key_count = Some(snap.fingerprint.key_count);
    status.kv_hash = Some(snap.fingerprint.kv_hash);
    status.etcd_cluster_id = snap.cluster_id.map(snapshot::cluster_id_hex);
    if spec.verify {
        status.phase = Some(BackupPhase::Verifying);
        status.message = Some("restoring into a scratch etcd".into());
        patch_status(api, eb, &mut status).await?;
        verify_with(
            eb,
            ctx,
            api,
            status,
            &store,
            &key,
            snap.fingerprint.compact_revision,
        )
        .await
    } else {
        succeed(ctx, api, eb, status, "snapshot stored (not verified)").await
    }
}

/// Resumes a backup whose verification was interrupted.
async fn verify_step(
    eb: &EtcdBackup,
    ctx: &Context,
    api: &Api<EtcdBackup>,
    status: EtcdBackupStatus,
) -> Result<()> {
    // Verification reads only the artifact: the tenant need not be healthy now.
    match resolve(ctx, eb, false).await? {
        Ok(t) => verify_with(eb, ctx, api, status, &t.store, &t.key, 0).await,
        Err(Refusal(message)) => fail(ctx, api, eb, status, message).await,
    }
}

async fn verify_with(
    eb: &EtcdBackup,
    ctx: &Context,
    api: &Api<EtcdBackup>,
    mut status: EtcdBackupStatus,
    store: &Store,
    key: &str,
    compact_revision: i64,
) -> Result<()> {
    let (Some(revision), Some(key_count), Some(kv_hash), Some(sha256)) = (
        status.revision,
        status.key_count,
        status.kv_hash,
        status.sha256.clone(),
    ) else {
        return fail(
            ctx,
            api,
            eb,
            status,
            "no recorded fingerprint to verify against".into(),
        )
        .await;
    };
    let recorded = Fingerprint {
        revision,
        key_count,
        kv_hash,
        compact_revision,
    };
    let outcome = verify::verify(
        store,
        key,
        &sha256,
        &recorded,
        &ctx.etcd_tools,
        &ctx.work_dir,
    )
    .await;
    ctx.metrics.backup_verified(outcome.is_ok());
    match outcome {
        Ok(_) => {
            status.verified = Some(true);
            succeed(
                ctx,
                api,
                eb,
                status,
                "snapshot stored and verified by a restore",
            )
            .await
        }
        Err(e) => {
            status.verified = Some(false);
            fail(ctx, api, eb, status, format!("verification failed: {e}")).await
        }
    }
}

/// Everything a backup step needs.
struct Target {
    tc: TenantCluster,
    spec: BackupSpec,
    store: Store,
    key: String,
}

/// The tenant, its backup settings, the open destination and the artifact
/// key; or why the backup cannot go on. `healthy`: also require a running,
/// unpaused tenant (to take a snapshot, not to verify one).
async fn resolve(ctx: &Context, eb: &EtcdBackup, healthy: bool) -> Result<Result<Target, Refusal>> {
    let ns = eb.namespace().unwrap_or_default();
    let (tc, spec) = match backup_target(ctx, &ns, &eb.spec.tenant_cluster, healthy).await? {
        Ok(t) => t,
        Err(r) => return Ok(Err(r)),
    };
    let store = match open_store(ctx, &ns, &spec).await? {
        Ok(s) => s,
        Err(r) => return Ok(Err(r)),
    };
    let key = artifact_key(&ns, &tc.name_any(), &eb.name_any());
    Ok(Ok(Target {
        tc,
        spec,
        store,
        key,
    }))
}

/// The TenantCluster to back up and its backup settings, or why not.
async fn backup_target(
    ctx: &Context,
    ns: &str,
    name: &str,
    healthy: bool,
) -> Result<Result<(TenantCluster, BackupSpec), Refusal>> {
    let tcs: Api<TenantCluster> = Api::namespaced(ctx.client.clone(), ns);
    let Some(tc) = tcs.get_opt(name).await? else {
        return Ok(Err(Refusal(format!("TenantCluster {name} not found"))));
    };
    let Some(spec) = tc.spec.backup.clone() else {
        return Ok(Err(Refusal(format!(
            "TenantCluster {name} has no spec.backup, so no destination"
        ))));
    };
    if !healthy {
        return Ok(Ok((tc, spec)));
    }
    if let Some(restore) = tc.annotations().get(kok_crds::RESTORE_ANNOTATION) {
        return Ok(Err(Refusal(format!(
            "TenantCluster {name} is being restored by EtcdRestore {restore}"
        ))));
    }
    if tc.spec.paused {
        return Ok(Err(Refusal(format!(
            "TenantCluster {name} is paused (spec.paused)"
        ))));
    }
    // etcd's health is not required here: the snapshot step asks the members
    // themselves and needs only quorum.
    Ok(Ok((tc, spec)))
}

async fn succeed(
    ctx: &Context,
    api: &Api<EtcdBackup>,
    eb: &EtcdBackup,
    mut status: EtcdBackupStatus,
    message: &str,
) -> Result<()> {
    status.phase = Some(BackupPhase::Succeeded);
    status.message = Some(message.into());
    status.completion_time = Some(now());
    patch_status(api, eb, &mut status).await?;
    ctx.metrics.backup_finished(true);
    record_last_backup(ctx, eb, &status);
    info!("backup succeeded");
    ctx.publish(eb, EventType::Normal, "BackupSucceeded", "Backup", message)
        .await;
    Ok(())
}

/// The per-tenant gauges of a tenant's last successful backup.
fn record_last_backup(ctx: &Context, eb: &EtcdBackup, status: &EtcdBackupStatus) {
    let finished = status
        .completion_time
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or_default();
    let took = status
        .start_time
        .as_ref()
        .map(|t| (finished - t.0.as_second()) as f64)
        .unwrap_or_default();
    ctx.metrics.backup_succeeded(
        &eb.namespace().unwrap_or_default(),
        &eb.spec.tenant_cluster,
        finished,
        status.size_bytes.unwrap_or_default(),
        took,
    );
}

/// After a restart (or a change of leader) the last-backup gauges are empty
/// until the next backup, and an alert on backup age would fire or go blind:
/// they are filled from the backup the tenant's status names, once.
pub async fn seed_last_backup_metrics(ctx: &Context, namespace: &str, tenant: &str, backup: &str) {
    if ctx.metrics.knows_last_backup(namespace, tenant) {
        return;
    }
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), namespace);
    match api.get_opt(backup).await {
        Ok(Some(eb)) => {
            if let Some(status) = eb
                .status
                .as_ref()
                .filter(|s| s.phase == Some(BackupPhase::Succeeded))
            {
                record_last_backup(ctx, &eb, status);
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "reading the last backup for its metrics"),
    }
}

async fn fail(
    ctx: &Context,
    api: &Api<EtcdBackup>,
    eb: &EtcdBackup,
    mut status: EtcdBackupStatus,
    message: String,
) -> Result<()> {
    warn!(%message, "backup failed");
    status.phase = Some(BackupPhase::Failed);
    status.message = Some(message.clone());
    status.completion_time = Some(now());
    patch_status(api, eb, &mut status).await?;
    ctx.metrics.backup_finished(false);
    ctx.publish(eb, EventType::Warning, "BackupFailed", "Backup", &message)
        .await;
    Ok(())
}

/// Writes `status` with the conditions its phase implies.
async fn patch_status(
    api: &Api<EtcdBackup>,
    eb: &EtcdBackup,
    status: &mut EtcdBackupStatus,
) -> Result<()> {
    phase_conditions(status, eb.metadata.generation);
    apply_status(api, eb, manager::BACKUP, status).await
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// The time a backup finished (or was created), for retention.
pub fn backup_time(eb: &EtcdBackup) -> chrono::DateTime<Utc> {
    let ts = eb
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .or(eb.metadata.creation_timestamp.as_ref())
        .map(|t| t.0.as_second())
        .unwrap_or_default();
    kok_templates::backup::from_unix(ts)
}

/// Whether the tenant's backups go to the operator's node-local directory.
fn spec_uses_filesystem(tc: &TenantCluster) -> bool {
    tc.spec
        .backup
        .as_ref()
        .is_some_and(|b| b.destination.filesystem.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kok_crds::condition::{READY, RECONCILING, STALLED};

    fn status_of(conditions: &[Condition], type_: &str) -> (String, String) {
        let c = conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    fn pair(status: &str, reason: &str) -> (String, String) {
        (status.into(), reason.into())
    }

    #[test]
    fn conditions_follow_the_phase() {
        let mut s = EtcdBackupStatus {
            phase: Some(BackupPhase::Running),
            message: Some("streaming the snapshot".into()),
            ..Default::default()
        };
        phase_conditions(&mut s, Some(1));
        assert_eq!(status_of(&s.conditions, READY), pair("False", "Running"));
        assert_eq!(
            status_of(&s.conditions, RECONCILING),
            pair("True", "Running")
        );
        assert_eq!(status_of(&s.conditions, STALLED), pair("False", "Running"));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(s.conditions[0].message, "streaming the snapshot");

        s.phase = Some(BackupPhase::Succeeded);
        phase_conditions(&mut s, Some(1));
        assert_eq!(status_of(&s.conditions, READY), pair("True", "Succeeded"));
        assert_eq!(
            status_of(&s.conditions, RECONCILING),
            pair("False", "Succeeded")
        );
        assert_eq!(
            status_of(&s.conditions, STALLED),
            pair("False", "Succeeded")
        );
        assert_eq!(s.conditions.len(), 3);

        let mut failed = EtcdBackupStatus {
            phase: Some(BackupPhase::Failed),
            message: Some("TenantCluster db is paused".into()),
            ..Default::default()
        };
        phase_conditions(&mut failed, None);
        assert_eq!(
            status_of(&failed.conditions, READY),
            pair("False", "Failed")
        );
        assert_eq!(
            status_of(&failed.conditions, STALLED),
            pair("True", "Failed")
        );
        assert_eq!(
            status_of(&failed.conditions, RECONCILING),
            pair("False", "Failed")
        );

        // No phase yet is Pending.
        let mut new = EtcdBackupStatus::default();
        phase_conditions(&mut new, Some(2));
        assert_eq!(
            status_of(&new.conditions, RECONCILING),
            pair("True", "Pending")
        );
    }

    fn api_error(code: u16) -> Error {
        Error::Kube(kube::Error::Api(Box::new(
            kube::core::Status::failure("nope", "Invalid").with_code(code),
        )))
    }

    #[test]
    fn reconcile_errors_show_as_not_ready_and_invalid_requests_as_stalled() {
        assert!(is_permanent(&api_error(422)));
        assert!(is_permanent(&api_error(400)));
        assert!(!is_permanent(&api_error(500)));
        assert!(!is_permanent(&api_error(409)));
        assert!(!is_permanent(&Error::IncompleteObject("x".into())));

        let mut s = EtcdBackupStatus {
            phase: Some(BackupPhase::Running),
            ..Default::default()
        };
        phase_conditions(&mut s, Some(1));
        let mut transient = s.conditions.clone();
        error_conditions(&mut transient, "API down", false, Some(1));
        assert_eq!(
            status_of(&transient, READY),
            pair("False", "ReconcileError")
        );
        assert_eq!(status_of(&transient, STALLED), pair("False", "Running"));
        let same = transient.clone();
        error_conditions(&mut transient, "API down", false, Some(1));
        assert_eq!(transient, same, "the same error again changes nothing");

        let mut permanent = s.conditions.clone();
        error_conditions(&mut permanent, "status is invalid", true, Some(1));
        assert_eq!(
            status_of(&permanent, STALLED),
            pair("True", "ReconcileError")
        );
        assert_eq!(
            permanent
                .iter()
                .find(|c| c.type_ == STALLED)
                .unwrap()
                .message,
            "status is invalid"
        );
    }
}
