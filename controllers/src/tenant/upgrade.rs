//! Upgrades, pass by pass: which version each component renders in this
//! pass (planned from what runs and what rolled, so a restarted operator
//! computes the same step), the record in `status.upgrade`, and the
//! preflight. Before the first step acts, the tenant must be healthy on what
//! it runs, and an EtcdBackup must have succeeded (unless the spec says
//! otherwise or there is nowhere to write it). The backup's name derives
//! from the upgrade's start time, so an operator restarted during the
//! preflight finds the backup it created instead of taking another.

use super::etcd_roll;
use super::workloads::{first_image, image_tag};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kok_crds::{BackupPhase, EtcdBackup, EtcdBackupSpec, UpgradePhase, UpgradeStatus};
use kok_templates::backup::TENANT_UID_LABEL;
use kok_templates::names::TENANT_LABEL;
use kok_templates::nodes::kubelet_skew_problem;
use kok_templates::tenant_status::{OpenUpgrade, Verdict};
use kok_templates::upgrade_plan::{self, track_upgrade, Rolled, Running};
use kok_templates::upgrade_plan::{note_step, preflight_backup_name, Rendering};
use kok_templates::validate::ValidSpec;
use kok_templates::version::KubeVersion;
use kube::api::ObjectMeta;
use kube::ResourceExt;

use crate::runtime::context::Context;
use crate::runtime::error::Error;
use crate::runtime::error::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::apps::v1::StatefulSet;
use kok_crds::TenantCluster;
use kok_crds::TenantClusterStatus;
use kok_templates::controlplane::Placement;
use kok_templates::controlplane::{self as cp};
use kok_templates::tenant_status::WorkloadRollout;
use kube::runtime::events::EventType;
use kube::Api;
use std::time::Duration;
use tracing::warn;

/// How long an upgrade step may go without moving before it is reported as stuck.
const UPGRADE_STUCK_AFTER: Duration = Duration::from_secs(30 * 60);

/// What this pass renders, and whether the upgrade may act yet.
pub(super) struct Pass {
    pub rendering: Rendering,
    /// What the spec asks every component to run at the end.
    pub desired: Running,
    /// An upgrade is due but its preflight has not passed: everything stays
    /// on what runs.
    pub holding: bool,
}

/// Plans this pass from what runs (recorded in status after complete
/// rollouts) and what the live templates have rolled.
pub(super) async fn plan_pass(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    valid: &ValidSpec,
    status: &TenantClusterStatus,
    in_place: bool,
) -> Result<Pass> {
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let target_etcd_tag = image_tag(&cp::etcd_image(&tc.spec, valid));
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
    let pinned = tc.spec.etcd.version.is_some();
    let rendering =
        upgrade_plan::rendering(running, valid.version, &target_etcd_tag, pinned, &rolled)
            .map_err(|e| Error::Upgrade(e.to_string()))?;
    // Until the preflight of this upgrade passed, everything stays on what runs.
    let desired = Running {
        kube: valid.version.to_string(),
        etcd: rendering.target_etcd_tag.clone(),
    };
    let preflight_passed = status.upgrade.as_ref().is_some_and(|u| {
        u.phase != UpgradePhase::Completed && u.to == desired.to_string() && u.preflight_passed
    });
    // With the Migrate strategy nothing is upgraded in place: a migration
    // moves the tenant, and until it does everything stays on what runs.
    let holding = !rendering.at_target() && (!preflight_passed || !in_place);
    let rendering = match running {
        Some((kube, etcd)) if holding => {
            upgrade_plan::rendering(Some((kube, etcd)), kube, etcd, true, &rolled)
                .map_err(|e| Error::Upgrade(e.to_string()))?
        }
        _ => rendering,
    };
    Ok(Pass {
        rendering,
        desired,
        holding,
    })
}

/// Records what every component runs once this pass's rollout is complete.
/// etcd is recorded as soon as every member runs its step's version (the
/// cluster version may move then: no going back below it); the Kubernetes
/// version once everything is ready on one version.
pub(super) async fn record_versions(
    ctx: &Context,
    tc: &TenantCluster,
    status: &mut TenantClusterStatus,
    r: &Rendering,
    verdict: &Verdict,
) {
    let etcd_rolled = verdict.components[0].ok;
    if etcd_rolled {
        status.etcd_version = Some(r.etcd_tag.clone());
    }
    if verdict.ready && r.apiserver == r.controllers {
        status.version = Some(r.controllers.to_string());
    }
    if etcd_rolled && !etcd_cluster_version_settled(status) {
        // Read back once per change: the moment etcd cannot go back.
        match etcd_roll::cluster_version(ctx, tc).await {
            Ok(v) => status.etcd_cluster_version = Some(v),
            Err(why) => warn!(%why, "etcd cluster version not readable yet"),
        }
    }
}

/// Whether the recorded etcd cluster version is the minor every member runs.
pub(super) fn etcd_cluster_version_settled(status: &TenantClusterStatus) -> bool {
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

/// Brings `status.upgrade` up to date: opened, stamped with this pass's step,
/// the preflight run while the pass holds, completed when everything runs
/// the target. Every change of phase or step is an Event. Returns the upgrade
/// while it is open, for the summary conditions.
pub(super) async fn record(
    ctx: &Context,
    tc: &TenantCluster,
    status: &mut TenantClusterStatus,
    pass: &Pass,
    healthy_on_what_runs: bool,
    kubelets: Option<&[(String, KubeVersion)]>,
) -> Result<Option<OpenUpgrade>> {
    let running_now = match (&status.version, &status.etcd_version) {
        (Some(kube), Some(etcd)) => Some(Running {
            kube: kube.clone(),
            etcd: etcd.clone(),
        }),
        _ => None,
    };
    let was = status.upgrade.clone();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    status.upgrade = track_upgrade(
        status.upgrade.as_ref(),
        running_now.as_ref(),
        &pass.desired,
        now.clone(),
    );
    if let Some(u) = status.upgrade.as_mut() {
        note_step(u, &pass.rendering, now.clone());
    }
    let mut preflight_failed = None;
    if let Some(u) = status
        .upgrade
        .as_mut()
        .filter(|u| pass.holding && u.phase != UpgradePhase::Completed)
    {
        let skew = kubelets.and_then(|k| {
            let target = pass.desired.kube.parse().ok()?;
            kubelet_skew_problem(target, k)
        });
        let (state, backup) = match skew {
            // Checked before the backup: an upgrade the nodes forbid takes none.
            Some(why) => (
                Preflight::Failed(format!("kubelet version skew: {why}")),
                None,
            ),
            None => preflight(ctx, tc, u, healthy_on_what_runs).await?,
        };
        if u.phase != UpgradePhase::Preflight {
            u.phase = UpgradePhase::Preflight;
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
    let moved = |u: &UpgradeStatus| (u.to.clone(), u.phase, u.step);
    if was.as_ref().map(moved) != status.upgrade.as_ref().map(moved) {
        if let Some(u) = &status.upgrade {
            let note = match u.phase {
                UpgradePhase::Completed => format!("upgrade to {} completed", u.to),
                phase => format!(
                    "upgrade from {} to {}: {phase}, step {}/{}",
                    u.from,
                    u.to,
                    u.step + 1,
                    u.plan.len().max(1)
                ),
            };
            ctx.publish(tc, EventType::Normal, "Upgrade", "Upgrade", &note)
                .await;
        }
    }
    Ok(status
        .upgrade
        .as_ref()
        .filter(|u| u.phase != UpgradePhase::Completed)
        .map(|u| OpenUpgrade {
            from: u.from.clone(),
            to: u.to.clone(),
            doing: u.message.clone().unwrap_or_else(|| u.phase.to_string()),
            stuck: stuck(u),
            preflight_failed,
        }))
}

fn stuck(u: &UpgradeStatus) -> bool {
    u.last_progress_time
        .as_ref()
        .or(u.start_time.as_ref())
        .is_some_and(|t| {
            let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
            age.as_secs() > UPGRADE_STUCK_AFTER.as_secs() as i64
        })
}

/// The EtcdBackup `name` of `tc` that kok takes itself (before an upgrade, for
/// a migration's copy), created when it does not exist yet; `marker` is a
/// label saying why. Found again by name, so a restarted operator takes no second one.
pub(super) async fn ensure_backup(
    ctx: &Context,
    tc: &TenantCluster,
    name: &str,
    marker: &str,
) -> Result<EtcdBackup> {
    let ns = tc.namespace().unwrap_or_default();
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(b) = api.get_opt(name).await? {
        return Ok(b);
    }
    let mut labels = std::collections::BTreeMap::from([
        (TENANT_LABEL.to_string(), tc.name_any()),
        (marker.to_string(), "true".to_string()),
    ]);
    if let Some(uid) = tc.uid() {
        labels.insert(TENANT_UID_LABEL.to_string(), uid);
    }
    let eb = EtcdBackup {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns),
            labels: Some(labels),
            ..Default::default()
        },
        spec: EtcdBackupSpec {
            tenant_cluster: tc.name_any(),
        },
        status: None,
    };
    Ok(crate::runtime::api::create_or_get(&api, &eb).await?)
}

/// Where the preflight stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Preflight {
    /// The steps may act; the note says what was checked or skipped.
    Passed(String),
    Waiting(String),
    /// Retrying cannot help until someone acts (the backup failed).
    Failed(String),
}

async fn preflight(
    ctx: &Context,
    tc: &TenantCluster,
    record: &UpgradeStatus,
    healthy_on_what_runs: bool,
) -> Result<(Preflight, Option<String>)> {
    if !healthy_on_what_runs {
        return Ok((
            Preflight::Waiting(
                "the tenant must be healthy on what it runs before an upgrade starts".into(),
            ),
            None,
        ));
    }
    if !tc.spec.upgrade.backup_first {
        return Ok((
            Preflight::Passed("backup skipped: spec.upgrade.backupFirst is false".into()),
            None,
        ));
    }
    if tc.spec.backup.is_none() {
        return Ok((
            Preflight::Passed("backup skipped: no spec.backup destination to write it to".into()),
            None,
        ));
    }
    let Some(start) = &record.start_time else {
        return Ok((
            Preflight::Waiting("the upgrade has no start time yet".into()),
            None,
        ));
    };
    let name = preflight_backup_name(&tc.name_any(), start);
    let backup = ensure_backup(ctx, tc, &name, "kok.dev/pre-upgrade").await?;
    let status = backup.status.unwrap_or_default();
    let state = match status.phase {
        Some(BackupPhase::Succeeded) => Preflight::Passed(format!("EtcdBackup {name} succeeded")),
        Some(BackupPhase::Failed) => Preflight::Failed(format!(
            "the backup before the upgrade, EtcdBackup {name}, failed: {}; delete it to try again, or set spec.upgrade.backupFirst to false",
            status.message.unwrap_or_default()
        )),
        _ => Preflight::Waiting(format!("waiting for EtcdBackup {name}")),
    };
    Ok((state, Some(name)))
}
