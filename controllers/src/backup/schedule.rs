//! Per TenantCluster: start scheduled EtcdBackups (kok's own cron: the
//! management cluster may not serve CronJob) and apply retention. Retention
//! and deletionPolicy act only on backups of this incarnation of the name
//! (its uid): a recreated cluster never deletes its predecessor's data.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kok_crds::{
    BackupPhase, BackupScheduleStatus, EtcdBackup, EtcdBackupSpec, EtcdRestore, RestorePhase,
    TenantCluster,
};
use kok_templates::backup::{
    artifact_key, due, parse_schedule, retention_victims, scheduled_backup_name, BackupRecord,
    Incarnation, TENANT_UID_LABEL,
};
use kok_templates::names::TENANT_LABEL;

/// On the backups the schedule takes: the only ones retention prunes.
pub const SCHEDULED_LABEL: &str = "kok.dev/scheduled";
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::backup::backup_time;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};
use crate::runtime::lenient::Lenient;
use crate::runtime::status::{apply_status, manager};
use crate::storage::{open_store, Refusal};

const CONTROLLER: &str = "backupschedule";
/// Retention by age needs a look now and then even when no slot is near.
const RETENTION_POLL: Duration = Duration::from_secs(300);

#[instrument(skip_all, fields(tenant = %tc.name_any(), ns = tc.namespace().unwrap_or_default()))]
pub async fn reconcile(tc: Arc<TenantCluster>, ctx: Arc<Context>) -> Result<Action> {
    let result = run_schedule(tc.clone(), ctx.clone()).await;
    if let Err(error) = &result {
        // The schedule writes no conditions of its own (the tenant reconciler
        // owns them): a failing schedule is shown as a Warning Event.
        ctx.publish(
            tc.as_ref(),
            EventType::Warning,
            "BackupScheduleError",
            "Backup",
            &format!("backup schedule and retention: {error}"),
        )
        .await;
    }
    result
}

async fn run_schedule(tc: Arc<TenantCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let Some(spec) = tc.spec.backup.clone() else {
        return Ok(Action::await_change());
    };
    if tc.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = tc.namespace().unwrap_or_default();
    let name = tc.name_any();
    let backups = tenant_backups(&ctx, &ns, &name).await?;

    // Retention first: deleting never depends on the schedule being valid.
    apply_retention(&ctx, &tc, &spec, &backups).await?;

    let mut status = tc
        .status
        .as_ref()
        .and_then(|s| s.backup.clone())
        .unwrap_or_default();
    let old = status.clone();
    let current = incarnation(&tc)?;
    status.last_successful_backup = backups
        .iter()
        .filter(|b| phase(b) == Some(BackupPhase::Succeeded))
        .filter(|b| made_by(&current, b))
        .max_by_key(|b| backup_time(b))
        .map(|b| b.name_any());

    let mut wake = RETENTION_POLL;
    if let Some(Ok(schedule)) = spec.schedule.as_deref().map(parse_schedule) {
        let now = Utc::now();
        let counted_from = status
            .last_schedule_time
            .as_ref()
            .or(tc.metadata.creation_timestamp.as_ref())
            .map(|t| kok_templates::backup::from_unix(t.0.as_second()))
            .unwrap_or(now);
        let d = due(&schedule, counted_from, now);
        // A destination this installation refuses gets no doomed backup per
        // slot (the TenantCluster is Stalled saying why); the first slot
        // after it is fixed runs.
        let refused = kok_templates::backup::storage_refusal(&spec, &ctx.policy).is_some();
        if let Some(slot) = d.run.filter(|_| !refused) {
            start_scheduled(&ctx, &tc, &backups, slot).await?;
            status.last_schedule_time = Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(slot.timestamp()).unwrap_or_default(),
            ));
        }
        if let Some(next) = d.next {
            let until = (next - now).to_std().unwrap_or_default() + Duration::from_secs(1);
            wake = wake.min(until);
        }
    }
    if status != old {
        patch_schedule_status(&ctx, &tc, &status).await?;
    }
    ctx.reset_failures(CONTROLLER, &ObjectRef::from_obj(tc.as_ref()));
    Ok(Action::requeue(wake))
}

pub fn error_policy(tc: Arc<TenantCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_error(CONTROLLER, tc.as_ref(), error)
}

fn phase(b: &EtcdBackup) -> Option<BackupPhase> {
    b.status.as_ref().and_then(|s| s.phase)
}

/// The TenantCluster's incarnation: its uid and creation time.
fn incarnation(tc: &TenantCluster) -> Result<Incarnation> {
    Ok(Incarnation {
        uid: tc
            .metadata
            .uid
            .clone()
            .ok_or_else(|| Error::IncompleteObject(tc.name_any()))?,
        created: tc
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| kok_templates::backup::from_unix(t.0.as_second())),
    })
}

/// The uid a backup belongs to: what it recorded when it ran, else the
/// label the schedule gave it.
fn tenant_uid(b: &EtcdBackup) -> Option<&str> {
    b.status
        .as_ref()
        .and_then(|s| s.tenant_cluster_uid.as_deref())
        .or_else(|| b.labels().get(TENANT_UID_LABEL).map(String::as_str))
}

fn created(b: &EtcdBackup) -> Option<chrono::DateTime<Utc>> {
    b.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| kok_templates::backup::from_unix(t.0.as_second()))
}

fn made_by(current: &Incarnation, b: &EtcdBackup) -> bool {
    current.made(tenant_uid(b), created(b))
}

/// Every EtcdBackup of the tenant, scheduled or made by hand.
/// An EtcdBackup that cannot be decoded is left out (it is reported on
/// itself): one bad object never stops the schedule of every tenant.
pub async fn tenant_backups(ctx: &Context, ns: &str, tenant: &str) -> Result<Vec<EtcdBackup>> {
    let api: Api<Lenient<EtcdBackup>> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|b| b.object.ok())
        .filter(|b| b.spec.tenant_cluster == tenant)
        .collect())
}

async fn start_scheduled(
    ctx: &Context,
    tc: &TenantCluster,
    backups: &[EtcdBackup],
    slot: chrono::DateTime<Utc>,
) -> Result<()> {
    let ns = tc.namespace().unwrap_or_default();
    // A slow backup must not make them pile up: this slot is skipped, visibly.
    if let Some(running) = backups
        .iter()
        .find(|b| !phase(b).is_some_and(BackupPhase::is_terminal))
    {
        let note = format!(
            "skipped the {slot} backup: {} is still running",
            running.name_any()
        );
        warn!(%note);
        ctx.publish(tc, EventType::Warning, "BackupSkipped", "Backup", &note)
            .await;
        return Ok(());
    }
    let uid = tc
        .metadata
        .uid
        .clone()
        .ok_or_else(|| Error::IncompleteObject(tc.name_any()))?;
    let name = scheduled_backup_name(&tc.name_any(), slot);
    let backup = EtcdBackup {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(
                [
                    (TENANT_LABEL.to_string(), tc.name_any()),
                    (SCHEDULED_LABEL.to_string(), "true".to_string()),
                    (TENANT_UID_LABEL.to_string(), uid),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: EtcdBackupSpec {
            tenant_cluster: tc.name_any(),
        },
        status: None,
    };
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &backup).await {
        Ok(_) => info!(backup = %name, "started a scheduled backup"),
        // Already started for this slot (by us before a restart): not a second run.
        Err(e) if crate::runtime::api::is_conflict(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn apply_retention(
    ctx: &Context,
    tc: &TenantCluster,
    spec: &kok_crds::BackupSpec,
    backups: &[EtcdBackup],
) -> Result<()> {
    let ns = tc.namespace().unwrap_or_default();
    let restores: Api<Lenient<EtcdRestore>> = Api::namespaced(ctx.client.clone(), &ns);
    // Until the EtcdRestore CRD is installed there is no restore to protect.
    let restores = match restores.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) if crate::runtime::api::is_not_found(&e) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    // A restore that cannot be read may be using any backup: delete none.
    let Ok(restores) = restores
        .into_iter()
        .map(|r| r.object)
        .collect::<std::result::Result<Vec<EtcdRestore>, String>>()
    else {
        warn!("an EtcdRestore in {ns} cannot be read: retention waits");
        return Ok(());
    };
    let mut in_use: Vec<String> = restores
        .into_iter()
        // A failed restore keeps its backup too: it is the one to retry with.
        .filter(|r| r.status.as_ref().and_then(|s| s.phase) != Some(RestorePhase::Completed))
        .map(|r| r.spec.backup)
        .collect();
    // The snapshot a running migration copies from.
    if let Some(snapshot) = tc
        .status
        .as_ref()
        .and_then(|s| s.migration.as_ref())
        .filter(|m| !kok_templates::migration::finished(m.phase))
        .and_then(|m| m.snapshot.clone())
    {
        in_use.push(snapshot);
    }
    let records: Vec<BackupRecord> = backups
        .iter()
        .map(|b| BackupRecord {
            name: b.name_any(),
            time: backup_time(b),
            succeeded: phase(b) == Some(BackupPhase::Succeeded),
            finished: phase(b).is_some_and(BackupPhase::is_terminal),
            in_use: in_use.contains(&b.name_any()),
            tenant_uid: tenant_uid(b).map(str::to_string),
            created: created(b),
            etcd_cluster_id: b.status.as_ref().and_then(|s| s.etcd_cluster_id.clone()),
            scheduled: b.labels().get(SCHEDULED_LABEL).is_some_and(|v| v == "true"),
        })
        .collect();
    let victims = retention_victims(&records, &spec.retention, &incarnation(tc)?, Utc::now());
    if victims.is_empty() {
        return Ok(());
    }
    let store = match open_store(ctx, &ns, spec).await? {
        Ok(s) => s,
        Err(Refusal(why)) => {
            warn!(%why, "retention cannot reach the destination");
            return Ok(());
        }
    };
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ns);
    for victim in victims {
        // The artifact first: an object without artifact is visible, an
        // artifact without object would be a silent leak.
        if let Err(e) = store
            .delete(&artifact_key(&ns, &tc.name_any(), &victim))
            .await
        {
            warn!(backup = %victim, error = %e, "could not delete the artifact; keeping the backup");
            continue;
        }
        match api.delete(&victim, &DeleteParams::default()).await {
            Ok(_) => info!(backup = %victim, "retention deleted a backup"),
            Err(e) if crate::runtime::api::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// With `deletionPolicy: Delete`, a deleted TenantCluster takes its backups along.
pub async fn delete_all_backups(ctx: &Context, tc: &TenantCluster) -> Result<()> {
    let Some(spec) = &tc.spec.backup else {
        return Ok(());
    };
    if spec.deletion_policy != kok_crds::DeletionPolicy::Delete {
        return Ok(());
    }
    let ns = tc.namespace().unwrap_or_default();
    // Only this cluster's backups: a TenantCluster re-created under the same
    // name must not delete what an earlier one deliberately retained.
    let current = incarnation(tc)?;
    let backups: Vec<EtcdBackup> = tenant_backups(ctx, &ns, &tc.name_any())
        .await?
        .into_iter()
        .filter(|b| made_by(&current, b))
        .collect();
    let store = match open_store(ctx, &ns, spec).await? {
        Ok(s) => s,
        Err(Refusal(why)) => {
            // Deleting the objects without their artifacts would orphan data
            // with no record: keep both, and say so.
            let note = format!("deletionPolicy Delete: backups kept, destination unusable: {why}");
            warn!(%note);
            ctx.publish(tc, EventType::Warning, "BackupsKept", "Backup", &note)
                .await;
            return Ok(());
        }
    };
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ns);
    for b in backups {
        let key = artifact_key(&ns, &tc.name_any(), &b.name_any());
        if let Err(e) = store.delete(&key).await {
            warn!(backup = %b.name_any(), error = %e, "could not delete the artifact; keeping the backup");
            continue;
        }
        crate::runtime::api::gone_is_done(
            api.delete(&b.name_any(), &DeleteParams::default()).await,
        )?;
    }
    Ok(())
}

async fn patch_schedule_status(
    ctx: &Context,
    tc: &TenantCluster,
    status: &BackupScheduleStatus,
) -> Result<()> {
    let api: Api<TenantCluster> =
        Api::namespaced(ctx.client.clone(), &tc.namespace().unwrap_or_default());
    apply_status(
        &api,
        tc,
        manager::BACKUP_SCHEDULE,
        &json!({ "backup": status }),
    )
    .await
}
