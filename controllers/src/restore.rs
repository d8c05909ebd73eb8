//! The EtcdRestore reconciler: the restore runbook as a state machine. Each
//! phase is written to status before it acts, and every phase is idempotent,
//! so a restarted operator resumes where it stopped.
//!
//! Pending -> StoppingControlPlane -> RestoringEtcd -> StartingControlPlane
//! -> Verifying -> Completed (or Failed, with the reason, at any step).

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
use kok_templates::names::{Names, TENANT_LABEL};
use kok_templates::restore::{member_restore_job, member_restore_job_name, MemberRestore};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::backup::{open_store, Refusal};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::etcd::EtcdAccess;
use crate::snapshot::fingerprint_at;

const CONTROLLER: &str = "etcdrestore";
const POLL: Duration = Duration::from_secs(3);
/// How long after its start a restore may wait for the tenant to be Ready.
const VERIFY_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// What one step decided.
enum Step {
    /// Record `phase` and continue at once.
    Next(RestorePhase, String),
    /// Stay in the phase; look again later.
    Wait(String),
    Fail(String),
}

#[instrument(skip_all, fields(restore = %er.name_any(), ns = er.namespace().unwrap_or_default()))]
pub async fn reconcile(er: Arc<EtcdRestore>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    // The phase from the API, not the cache: acting on a stale phase could
    // redo an earlier step (stop the control plane again after handing it back).
    let api: Api<EtcdRestore> = Api::namespaced(ctx.client.clone(), &ns(&er));
    let Some(fresh) = api.get_opt(&er.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let er = Arc::new(fresh);
    let mut status = er.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or(RestorePhase::Pending);
    if matches!(phase, RestorePhase::Completed | RestorePhase::Failed) {
        return Ok(Action::await_change());
    }
    let step = match phase {
        RestorePhase::Pending => begin(&er, &ctx, &mut status).await?,
        RestorePhase::StoppingControlPlane => stop_control_plane(&er, &ctx).await?,
        RestorePhase::RestoringEtcd => restore_members(&er, &ctx, &status).await?,
        RestorePhase::StartingControlPlane => start_control_plane(&er, &ctx).await?,
        RestorePhase::Verifying => verify(&er, &ctx).await?,
        RestorePhase::Completed | RestorePhase::Failed => return Ok(Action::await_change()),
    };
    let action = match step {
        Step::Next(next, message) => {
            info!(phase = ?next, %message, "restore step");
            status.phase = Some(next);
            status.message = Some(message);
            if next == RestorePhase::Completed {
                status.completion_time = Some(now());
            }
            Action::requeue(Duration::from_millis(100))
        }
        Step::Wait(message) => {
            status.message = Some(message);
            Action::requeue(POLL)
        }
        Step::Fail(message) => {
            warn!(%message, "restore failed");
            status.phase = Some(RestorePhase::Failed);
            status.message = Some(message);
            status.completion_time = Some(now());
            Action::await_change()
        }
    };
    if er.status.as_ref() != Some(&status) {
        patch_status(&ctx, &er, &status).await?;
    }
    ctx.reset_failures(&ObjectRef::from_obj(er.as_ref()));
    Ok(action)
}

pub fn error_policy(er: Arc<EtcdRestore>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_failed(CONTROLLER, error.metric_label());
    let delay = ctx.next_retry(&ObjectRef::from_obj(er.as_ref()));
    warn!(restore = %er.name_any(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
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
        return Ok(Step::Fail(format!("TenantCluster {name} not found")));
    };
    let Some(b) = backup(ctx, er).await? else {
        return Ok(Step::Fail(format!(
            "EtcdBackup {} not found",
            er.spec.backup
        )));
    };
    let bs = b.status.clone().unwrap_or_default();
    if bs.phase != Some(BackupPhase::Succeeded) {
        return Ok(Step::Fail(format!(
            "EtcdBackup {} has not succeeded ({:?})",
            er.spec.backup, bs.phase
        )));
    }
    if b.spec.tenant_cluster != *name {
        return Ok(Step::Fail(format!(
            "EtcdBackup {} is a backup of {}, not of {name}",
            er.spec.backup, b.spec.tenant_cluster
        )));
    }
    if tc.spec.etcd.storage.ephemeral {
        return Ok(Step::Fail(
            "spec.etcd.storage.ephemeral is true: member data does not outlive the pods, \
             so there is no volume to restore into"
                .into(),
        ));
    }
    let Some(spec) = &tc.spec.backup else {
        return Ok(Step::Fail(format!(
            "TenantCluster {name} has no spec.backup.destination to read the backup from"
        )));
    };
    let store = match open_store(ctx, &ns(er), spec).await? {
        Ok(s) => s,
        Err(Refusal(why)) => return Ok(Step::Fail(why)),
    };
    let key = artifact_key(&ns(er), name, &er.spec.backup);
    if bs.location.as_deref() != Some(store.location(&key).as_str()) {
        return Ok(Step::Fail(format!(
            "the backup is stored at {:?} but the TenantCluster's destination is now {}",
            bs.location,
            store.location(&key)
        )));
    }
    match store.exists(&key).await {
        Ok(true) => {}
        Ok(false) => {
            return Ok(Step::Fail(format!(
                "the artifact {} is missing",
                store.location(&key)
            )))
        }
        // Unreachable destination: nothing was touched yet, so try again later.
        Err(e) => return Ok(Step::Wait(format!("checking the artifact: {e}"))),
    }
    if ctx.operator_image.is_none() {
        return Ok(Step::Fail(
            "the operator does not know its own image (KOK_IMAGE): restore Jobs run it".into(),
        ));
    }
    if let Some(other) = tc.annotations().get(RESTORE_ANNOTATION) {
        if other != &er.name_any() && holds_tenant(ctx, er, other).await? {
            return Ok(Step::Fail(format!(
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
        Err(kube::Error::Api(e)) if e.code == 409 => {
            return Ok(Step::Wait(
                "the TenantCluster changed; checking again".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    status.start_time = Some(now());
    let uid = er.uid().unwrap_or_default();
    status.cluster_token = Some(format!("{name}-restore-{}", &uid[..uid.len().min(8)]));
    Ok(Step::Next(
        RestorePhase::StoppingControlPlane,
        "stopping the apiservers, controller-manager, scheduler and etcd".into(),
    ))
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
    let names = Names::new(&er.spec.tenant_cluster);
    let zero = Patch::Merge(json!({"spec": {"replicas": 0}}));
    let pp = PatchParams::default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns(er));
    for d in [
        names.apiserver(),
        names.controller_manager(),
        names.scheduler(),
    ] {
        match deployments.patch(&d, &pp, &zero).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    match Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns(er))
        .patch(&names.etcd(), &pp, &zero)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
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
    status: &EtcdRestoreStatus,
) -> Result<Step> {
    let Some(tc) = tenant(ctx, er).await? else {
        return Ok(Step::Fail(
            "the TenantCluster was deleted during the restore".into(),
        ));
    };
    let Some(b) = backup(ctx, er).await? else {
        return Ok(Step::Fail(
            "the EtcdBackup was deleted during the restore".into(),
        ));
    };
    let (Some(spec), Some(sha256), Some(image), Some(owner)) = (
        tc.spec.backup.as_ref(),
        b.status.as_ref().and_then(|s| s.sha256.clone()),
        ctx.operator_image.as_deref(),
        er.controller_owner_ref(&()),
    ) else {
        return Ok(Step::Fail(
            "the backup lost its destination or checksum".into(),
        ));
    };
    let replicas = tc
        .status
        .as_ref()
        .and_then(|s| s.etcd_replicas)
        .unwrap_or(tc.spec.etcd.replicas);
    let names = Names::new(&tc.name_any());
    let key = artifact_key(&ns(er), &tc.name_any(), &er.spec.backup);
    let token = status.cluster_token.clone().unwrap_or_default();
    let uid = er.uid().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns(er));
    let mut done = 0;
    for member in 0..replicas {
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
            backups_host_path: &ctx.backups_host_path,
            operator_node: ctx.operator_node.as_deref(),
            artifact_key: &key,
            sha256: &sha256,
            cluster_token: &token,
        });
        let name = member_restore_job_name(&er.name_any(), member);
        let current = match jobs.get_opt(&name).await? {
            Some(j) => j,
            None => match jobs.create(&PostParams::default(), &job).await {
                Ok(j) => j,
                Err(kube::Error::Api(e)) if e.code == 409 => jobs.get(&name).await?,
                Err(e) => return Err(e.into()),
            },
        };
        let js = current.status.unwrap_or_default();
        let failed_for_good = js
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" && c.status == "True");
        if failed_for_good {
            return Ok(Step::Fail(format!(
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
    let api: Api<TenantCluster> = Api::namespaced(ctx.client.clone(), &ns(er));
    match api
        .patch(
            &er.spec.tenant_cluster,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {RESTORE_ANNOTATION: null}}})),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Ok(Step::Fail(
                "the TenantCluster was deleted during the restore".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Step::Next(
        RestorePhase::Verifying,
        "waiting for the tenant API, then comparing etcd with the backup".into(),
    ))
}

async fn verify(er: &EtcdRestore, ctx: &Context) -> Result<Step> {
    let Some(tc) = tenant(ctx, er).await? else {
        return Ok(Step::Fail(
            "the TenantCluster was deleted during the restore".into(),
        ));
    };
    let ready = tc
        .status
        .as_ref()
        .filter(|s| s.observed_generation == tc.metadata.generation)
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == condition::READY))
        .is_some_and(|c| c.status == "True" && c.reason == "Ready");
    if !ready || tc.annotations().contains_key(RESTORE_ANNOTATION) {
        let started = er.status.as_ref().and_then(|s| s.start_time.as_ref());
        let waited = started.map(|t| Timestamp::now().as_second() - t.0.as_second());
        if waited.is_some_and(|w| w > VERIFY_DEADLINE.as_secs() as i64) {
            return Ok(Step::Fail(format!(
                "the tenant is not Ready {} minutes after the restore started; its etcd \
                 holds the restored data (see the TenantCluster's conditions)",
                VERIFY_DEADLINE.as_secs() / 60
            )));
        }
        return Ok(Step::Wait("waiting for the tenant to be Ready".into()));
    }
    let Some(bs) = backup(ctx, er).await?.and_then(|b| b.status) else {
        return Ok(Step::Fail(
            "the EtcdBackup was deleted during the restore".into(),
        ));
    };
    let (Some(revision), Some(key_count), Some(kv_hash)) = (bs.revision, bs.key_count, bs.kv_hash)
    else {
        return Ok(Step::Fail("the backup recorded no fingerprint".into()));
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
        Err(e) if e.contains("compacted") => Ok(Step::Fail(format!(
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
        Ok(f) => Ok(Step::Fail(format!(
            "the restored etcd differs from the backup at revision {revision}: \
             {} keys (HashKV {}) instead of {key_count} ({kv_hash})",
            f.key_count, f.kv_hash
        ))),
    }
}

async fn patch_status(ctx: &Context, er: &EtcdRestore, status: &EtcdRestoreStatus) -> Result<()> {
    let api = Api::<EtcdRestore>::namespaced(ctx.client.clone(), &ns(er));
    crate::apply::patch_status(&api, &er.name_any(), status).await
}

fn now() -> Time {
    Time(Timestamp::now())
}
