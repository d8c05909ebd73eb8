//! The preflight of an upgrade: before the first step acts, the tenant must
//! be healthy on what it runs, and an EtcdBackup must have succeeded (unless
//! the spec says otherwise or there is nowhere to write it). The backup's
//! name derives from the upgrade's start time, so an operator restarted
//! during the preflight finds the backup it created instead of taking another.

use kok_crds::{BackupPhase, EtcdBackup, EtcdBackupSpec, TenantCluster, UpgradeStatus};
use kok_templates::backup::TENANT_UID_LABEL;
use kok_templates::names::TENANT_LABEL;
use kok_templates::upgrade_plan::preflight_backup_name;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use crate::runtime::context::Context;
use crate::runtime::error::Result;

/// Where the preflight stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Preflight {
    /// The steps may act; the note says what was checked or skipped.
    Passed(String),
    Waiting(String),
    /// Retrying cannot help until someone acts (the backup failed).
    Failed(String),
}

pub(super) async fn preflight(
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
    let ns = tc.namespace().unwrap_or_default();
    let name = preflight_backup_name(&tc.name_any(), start);
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let backup = match api.get_opt(&name).await? {
        Some(b) => b,
        None => {
            let mut labels = std::collections::BTreeMap::from([
                (TENANT_LABEL.to_string(), tc.name_any()),
                ("kok.dev/pre-upgrade".to_string(), "true".to_string()),
            ]);
            if let Some(uid) = tc.uid() {
                labels.insert(TENANT_UID_LABEL.to_string(), uid);
            }
            let eb = EtcdBackup {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    ..Default::default()
                },
                spec: EtcdBackupSpec {
                    tenant_cluster: tc.name_any(),
                },
                status: None,
            };
            match api.create(&PostParams::default(), &eb).await {
                Ok(b) => b,
                Err(kube::Error::Api(e)) if e.code == 409 => api.get(&name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
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
