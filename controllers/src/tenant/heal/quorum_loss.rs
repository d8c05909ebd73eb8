//! A majority of etcd members lost their data: restored from the newest
//! verified backup when the policy allows, else reported with the runbook
//! step.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kok_crds::{
    BackupPhase, EtcdBackup, EtcdRestore, QuorumLoss, Repair, RestorePhase, TenantCluster,
    TenantClusterStatus,
};
use kok_templates::controlplane::Placement;
use kok_templates::inspection::{self as insp};
use kok_templates::membership::MemberVolume;
use kok_templates::restore::member_claim;
use kube::api::{ListParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use sha2::Digest as _;
use tracing::info;

use super::Healing;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};

/// A majority of members lost their data. With
/// `spec.healing.quorumLoss.restoreFromBackup`, an EtcdRestore of the newest
/// verified backup no older than `maxBackupAge` is created (once) and
/// followed; otherwise, or without such a backup, the loss is reported with
/// the runbook step. A restore of this tenant that completes after the loss
/// (kok's or a person's) ends it: the claims are recorded anew.
// Long on purpose (about 220 lines): the whole quorum-loss procedure in
// order (recovered by a restore? a restore already created? policy allows
// one? a usable backup?), each branch ending in what it leaves in status,
// so it reads as the quorum-loss section of docs/self-healing.md
// does. Each branch is a few lines of facts and one record.
pub(super) async fn quorum_loss(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    status: &mut TenantClusterStatus,
    lost: Vec<String>,
    observed: &[MemberVolume],
) -> Result<Healing> {
    let now = Timestamp::now();
    let name = tc.name_any();
    let restores: Api<EtcdRestore> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let mut q = match status.quorum_loss.clone() {
        Some(q) => q,
        None => {
            let message = format!(
                "{} of the etcd members lost their data ({}): the quorum is lost",
                lost.len(),
                lost.join(", ")
            );
            info!("{message}");
            ctx.publish(tc, EventType::Warning, "EtcdQuorumLost", "Heal", &message)
                .await;
            QuorumLoss {
                detected_time: Time(now),
                lost_members: lost,
                restore: None,
                backup: None,
                backup_time: None,
                message,
            }
        }
    };
    // Recovered: a restore of this tenant begun after the loss rebuilt the
    // members (it then hands the control plane back and waits for it to be
    // Ready before it verifies, so waiting for `Completed` would deadlock).
    let recovered = restores
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| r.spec.tenant_cluster == name)
        .find(|r| {
            let begun_after = r
                .metadata
                .creation_timestamp
                .as_ref()
                .is_some_and(|t| t.0 >= q.detected_time.0)
                || q.restore.as_deref() == Some(r.name_any().as_str());
            let rebuilt = r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| {
                matches!(
                    p,
                    RestorePhase::StartingControlPlane
                        | RestorePhase::Verifying
                        | RestorePhase::Completed
                )
            });
            begun_after && rebuilt
        });
    if let Some(r) = recovered {
        for m in observed {
            if let Some(uid) = &m.claim_uid {
                status
                    .etcd_member_claims
                    .insert(member_claim(&p.names, m.ordinal), uid.clone());
            }
        }
        let seconds = (now.as_millisecond() - q.detected_time.0.as_millisecond()) as f64 / 1000.0;
        let by_kok = q.restore.as_deref() == Some(r.name_any().as_str());
        let lost_writes = match &q.backup_time {
            Some(t) => format!("writes after {} (the backup) up to the loss are gone", t.0),
            None => format!("restored from {}", r.spec.backup),
        };
        let note = format!(
            "etcd quorum restored by EtcdRestore {} from {} {seconds:.1}s after the loss was found; {lost_writes}",
            r.name_any(),
            r.spec.backup
        );
        info!("{note}");
        ctx.publish(tc, EventType::Normal, "EtcdQuorumRestored", "Heal", &note)
            .await;
        ctx.metrics
            .repaired(insp::ETCD_QUORUM_LOST, true, Some(seconds));
        crate::tenant::repairs::push_repair(
            status,
            Repair {
                check: insp::ETCD_QUORUM_LOST.into(),
                object: "etcd".into(),
                action: if by_kok {
                    format!(
                        "restored backup {} (spec.healing.quorumLoss)",
                        r.spec.backup
                    )
                } else {
                    format!(
                        "restored backup {} (EtcdRestore {}, not kok's)",
                        r.spec.backup,
                        r.name_any()
                    )
                },
                outcome: "Succeeded".into(),
                message: Some(format!(
                    "lost members: {}; {lost_writes}",
                    q.lost_members.join(", ")
                )),
                detected_time: Some(q.detected_time.clone()),
                time: Time(now),
                seconds_to_repair: Some(seconds),
            },
        );
        status.quorum_loss = None;
        return Ok(Healing::Idle);
    }
    if let Some(restore) = &q.restore {
        // Created earlier: it runs (the tenant pass is held meanwhile) or failed.
        let failed = restores
            .get_opt(restore)
            .await?
            .and_then(|r| r.status)
            .filter(|s| s.phase == Some(RestorePhase::Failed));
        let message = match failed {
            Some(s) => format!(
                "the automatic restore {restore} failed ({}); restore by hand (docs/runbooks/backup-restore.md)",
                s.message.unwrap_or_default()
            ),
            None => format!("restoring backup {} (EtcdRestore {restore})", q.backup.clone().unwrap_or_default()),
        };
        q.message = message.clone();
        status.quorum_loss = Some(q);
        return Ok(Healing::QuorumLost(message));
    }
    let policy = &tc.spec.healing.quorum_loss;
    if !policy.restore_from_backup {
        q.message = format!(
            "{} of {} etcd members lost their data: the quorum is lost. Restore the newest backup: kubectl apply an EtcdRestore (docs/runbooks/backup-restore.md), or set spec.healing.quorumLoss.restoreFromBackup",
            q.lost_members.len(),
            observed.len()
        );
        let message = q.message.clone();
        status.quorum_loss = Some(q);
        return Ok(Healing::QuorumLost(message));
    }
    let max_age = policy
        .max_backup_age
        .as_deref()
        .and_then(|a| kok_templates::backup::parse_age(a).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(insp::DEFAULT_MAX_BACKUP_AGE_SECS);
    let backups: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let candidates: Vec<insp::BackupCandidate> = backups
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|b| b.spec.tenant_cluster == name)
        .map(|b| {
            let s = b.status.clone().unwrap_or_default();
            insp::BackupCandidate {
                name: b.name_any(),
                tenant_uid: s.tenant_cluster_uid.clone(),
                succeeded: s.phase == Some(BackupPhase::Succeeded),
                verified: s.verified == Some(true),
                completed: s.completion_time.as_ref().map(|t| t.0.as_second()),
            }
        })
        .collect();
    let uid = tc.uid().unwrap_or_default();
    let chosen = match insp::pick_backup(&candidates, &uid, now.as_second(), max_age) {
        Ok(b) => b.clone(),
        Err(why) => {
            q.message = format!(
                "the etcd quorum is lost and kok will not restore automatically: {why}. Restore by hand (docs/runbooks/backup-restore.md)"
            );
            let message = q.message.clone();
            status.quorum_loss = Some(q);
            return Ok(Healing::QuorumLost(message));
        }
    };
    // Named after the claims the members run on now: a pass that repeats
    // this step (its status was not written) finds the same name, never
    // makes a second restore.
    let mut claims: Vec<&str> = observed
        .iter()
        .filter_map(|m| m.claim_uid.as_deref())
        .collect();
    claims.sort();
    let incident: String = sha2::Sha256::digest(claims.join(",").as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let restore_name = format!("{name}-quorum-loss-{incident}");
    q.restore = Some(restore_name.clone());
    q.backup = Some(chosen.name.clone());
    q.backup_time = chosen
        .completed
        .and_then(|t| Timestamp::from_second(t).ok())
        .map(Time);
    q.message = format!(
        "restoring backup {} (EtcdRestore {restore_name}); writes after it are lost",
        chosen.name
    );
    status.quorum_loss = Some(q.clone());
    let restore: EtcdRestore = serde_json::from_value(serde_json::json!({
        "apiVersion": "kok.dev/v1alpha1",
        "kind": "EtcdRestore",
        "metadata": {
            "name": restore_name,
            "namespace": p.namespace,
            "labels": {kok_templates::names::TENANT_LABEL: name},
            "ownerReferences": [p.owner],
        },
        "spec": {"tenantCluster": name, "backup": chosen.name},
    }))
    .map_err(|e| Error::IncompleteObject(e.to_string()))?;
    crate::runtime::api::existing_is_done(restores.create(&PostParams::default(), &restore).await)?;
    let note = format!(
        "etcd quorum lost ({}); restoring the newest verified backup {} automatically (EtcdRestore {restore_name})",
        q.lost_members.join(", "),
        chosen.name
    );
    info!("{note}");
    ctx.publish(tc, EventType::Warning, "EtcdQuorumRestoring", "Heal", &note)
        .await;
    Ok(Healing::Replacing(note))
}
