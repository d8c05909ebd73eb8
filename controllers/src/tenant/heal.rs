//! Healing the tenant's etcd: replacing a member that lost its data
//! (remove it, add it back as a learner on a fresh volume, promote it once
//! caught up; one member at a time, only while quorum holds, each step
//! recorded before it acts), and the maintenance repairs inspection asks
//! for (defragmentation, NOSPACE).

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{GetOptions, MemberAddOptions};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kok_crds::{
    BackupPhase, CheckPolicy, EtcdBackup, EtcdRestore, MemberReplacement, QuorumLoss, Repair,
    RestorePhase, TenantCluster, TenantClusterStatus,
};
use kok_templates::controlplane::{self as cp, Placement, ETCD_PEER_PORT};
use kok_templates::etcd_scale;
use kok_templates::inspection::{self as insp, ETCD_MEMBER_LOST, ETCD_MEMBER_UNHEALTHY};
use kok_templates::membership::{self, lost_members, removal_keeps_quorum, MemberVolume, Mover};
use kok_templates::names::Names;
use kok_templates::restore::member_claim;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use sha2::Digest as _;
use tracing::info;

use crate::etcd::{EtcdAccess, Member};
use crate::runtime::apply::{apply_child, only_uid};
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};

/// Applies the member bootstrap ConfigMap of the etcd generation `p`
/// names (see `controlplane::Bootstrap`).
pub(super) async fn ensure_bootstrap_config(
    ctx: &Context,
    p: &Placement,
    mode: cp::Bootstrap,
) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let config = cp::etcd_bootstrap_config(p, mode);
    apply_child(&api, &config, &p.owner.uid).await?;
    Ok(())
}

/// Whether a member without data may join the running cluster: only while
/// kok re-adds a lost member (it was removed and added back as a learner
/// first). At any other time such a member finds no place (the bootstrap
/// ConfigMap is sealed) and exits before it writes anything; with
/// `existing` two members that lost their data together could elect each
/// other and serve an empty keyspace.
pub(super) fn joining(status: &TenantClusterStatus) -> bool {
    status
        .etcd_member_replacement
        .as_ref()
        .is_some_and(|r| r.phase == PHASE_RESTARTING || r.phase == PHASE_PROMOTING)
}

/// What the member healing did in this pass.
pub(super) enum Healing {
    /// Nothing to do.
    Idle,
    /// A replacement is under way (message for `Reconciling`); look again soon.
    Replacing(String),
    /// A lost quorum kok does not restore by itself: the runbook step, for
    /// `Stalled` (a person must act).
    QuorumLost(String),
}

/// One pass of the etcd member healing. Records the claims of members
/// serving for the first time; finds a member whose claim changed (its data
/// is gone) and walks its replacement one recorded step per pass.
/// `joining_rendered`: the bootstrap ConfigMap says `existing` (applied
/// earlier in this pass from the status the pass began with).
pub(super) async fn members(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    replicas: i32,
    status: &mut TenantClusterStatus,
    joining_rendered: bool,
) -> Result<Healing> {
    // Kept only by a pass that looks at it (below): any other pass (a
    // replacement, a scaling, a roll) restarts the clock.
    let unhealthy_before = std::mem::take(&mut status.etcd_unhealthy_since);
    if tc.spec.etcd.storage.ephemeral {
        return Ok(Healing::Idle);
    }
    let names = &p.names;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let mut observed = Vec::new();
    for i in 0..replicas {
        let claim = claims.get_opt(&member_claim(names, i)).await?;
        let pod = pods.get_opt(&names.etcd_member(i)).await?;
        unwedge(&claims, &pods, names, i, claim.as_ref(), pod.as_ref()).await?;
        observed.push(MemberVolume {
            ordinal: i,
            claim_uid: claim
                .as_ref()
                .filter(|c| c.metadata.deletion_timestamp.is_none())
                .and_then(|c| c.uid()),
            pod_ready: pod.as_ref().is_some_and(pod_ready),
        });
    }
    let replacing = status.etcd_member_replacement.clone();
    // First sightings: a member serving on a claim not yet recorded.
    for m in &observed {
        let key = member_claim(names, m.ordinal);
        if let (true, Some(uid), false) = (
            m.pod_ready,
            &m.claim_uid,
            status.etcd_member_claims.contains_key(&key),
        ) {
            status.etcd_member_claims.insert(key, uid.clone());
        }
    }
    let mut lost = lost_members(&status.etcd_member_claims, names, &observed);
    // A learner a live scaling is adding has no vote: quorum is counted
    // over the voters.
    let voters = replicas - i32::from(etcd_scale::joining(status.etcd_scaling.as_ref()));
    // A new claim is not lost data when the member serves on it in the
    // same cluster as the others (a volume restored from a snapshot, moved
    // by hand): recorded, nothing replaced. A single member is never judged
    // so: one that lost its data serves too, an empty cluster of its own.
    // The member being replaced is judged by its replacement.
    if !lost.is_empty() && voters >= 3 {
        let access = EtcdAccess::for_tenant(&ctx.client, tc)
            .await
            .map_err(|e| Error::Etcd(e.to_string()))?;
        let ids = cluster_ids(&access).await;
        lost.retain(|(i, uid)| {
            let name = names.etcd_member(*i);
            let mine = ids.iter().find(|(n, _)| *n == name).and_then(|(_, id)| *id);
            let agreeing = ids
                .iter()
                .filter(|(n, id)| *n != name && id.is_some() && *id == mine)
                .count();
            // It and a quorum of the others answer with one cluster ID.
            let serving = mine.is_some() && agreeing + 1 >= insp::quorum(voters) as usize;
            let being_replaced = replacing.as_ref().is_some_and(|r| r.member == *i);
            if serving && !being_replaced {
                if let Some(uid) = uid {
                    status
                        .etcd_member_claims
                        .insert(member_claim(names, *i), uid.clone());
                }
                return false;
            }
            true
        });
    }
    // A lost quorum is checked first, also while a replacement runs: a
    // second member lost meanwhile ends it.
    if insp::quorum_lost(voters, lost.len() as i32) || status.quorum_loss.is_some() {
        status.etcd_member_replacement = None;
        let lost: Vec<String> = lost.iter().map(|(i, _)| names.etcd_member(*i)).collect();
        return quorum_loss(ctx, tc, p, status, lost, &observed).await;
    }
    if let Some(r) = replacing {
        let others_lost = lost.iter().any(|(i, _)| *i != r.member);
        let around = Around {
            joining_rendered,
            others_lost,
        };
        return replace(ctx, tc, p, status, r, &observed, around).await;
    }
    // Not beside another mover (a live scaling with a member in flight:
    // etcd takes one learner at a time): reported by the inspection, and
    // replaced once the members are free (`membership::may_start`).
    let record = membership::on_record(Some(status), false, false);
    if membership::may_start(Mover::Replacement, &record).is_err() {
        return Ok(Healing::Idle);
    }
    // One member at a time, and only when it is the only one lost: while
    // the bootstrap ConfigMap says `existing` for the one re-added, another
    // member without data would read it too and join with an empty log.
    if lost.len() > 1 {
        return Ok(Healing::Replacing(format!(
            "{} etcd members lost their data; kok replaces one only when it is the only one (see docs/self-healing.md)",
            lost.len()
        )));
    }
    let Some((member, found)) = lost.into_iter().next() else {
        return unhealthy(ctx, tc, p, voters, status, &observed, unhealthy_before).await;
    };
    let name = names.etcd_member(member);
    let policy = insp::policy(&tc.spec.healing, ETCD_MEMBER_LOST);
    if policy != CheckPolicy::Repair || voters < 3 {
        // Reported by the inspection; a single member that lost its data
        // is a lost quorum: only a restore brings the data back.
        return Ok(Healing::Idle);
    }
    let r = MemberReplacement {
        member,
        phase: PHASE_REMOVING.into(),
        removed_id: None,
        learner_id: None,
        lost_claim: found,
        kept_volume: None,
        detected_time: Time(Timestamp::now()),
        message: Some(format!(
            "the volume of etcd member {name} was replaced: its data is gone"
        )),
    };
    let note = format!(
        "etcd member {name} lost its data (its claim was replaced); replacing it: remove, add back as a learner, promote"
    );
    info!("{note}");
    super::publish(ctx, tc, EventType::Warning, "EtcdMemberLost", "Heal", &note).await;
    status.etcd_member_replacement = Some(r);
    Ok(Healing::Replacing(note))
}

/// A member unhealthy on its own volume (not ready, no answer to a quorum
/// read through itself) is timed; once it stayed so for
/// `spec.healing.memberUnhealthySeconds` while every other member is
/// healthy, and the repair budgets allow, its replacement starts: the same
/// steps as for a lost volume, with its volume kept aside first.
async fn unhealthy(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    voters: i32,
    status: &mut TenantClusterStatus,
    observed: &[MemberVolume],
    before: BTreeMap<String, Time>,
) -> Result<Healing> {
    let policy = insp::policy(&tc.spec.healing, ETCD_MEMBER_UNHEALTHY);
    if policy == CheckPolicy::Off || voters < 3 {
        return Ok(Healing::Idle);
    }
    let names = &p.names;
    let now = Timestamp::now();
    let last_observed = status
        .etcd_health_observed_time
        .replace(Time(now))
        .map(|t| t.0.as_second());
    // A ready pod passed etcd's own health check: the members are asked
    // only when a pod is not ready.
    let suspects: Vec<String> = observed
        .iter()
        .filter(|m| !m.pod_ready)
        .map(|m| names.etcd_member(m.ordinal))
        .collect();
    let (mut unhealthy_now, mut down) = (Vec::new(), 0);
    if !suspects.is_empty() {
        let access = match EtcdAccess::for_tenant(&ctx.client, tc).await {
            Ok(a) => a,
            Err(e) => {
                // Not observed: the clocks restart once kok can look again.
                info!("etcd member health not read: {e}");
                status.etcd_health_observed_time = None;
                return Ok(Healing::Idle);
            }
        };
        let probes = access.probe().await;
        down = probes.iter().filter(|p| !p.serves_quorum_reads).count();
        unhealthy_now = suspects
            .into_iter()
            .filter(|n| {
                probes
                    .iter()
                    .any(|p| p.name == *n && !p.serves_quorum_reads)
            })
            .collect();
    }
    let before: BTreeMap<String, i64> = before
        .into_iter()
        .map(|(m, t)| (m, t.0.as_second()))
        .collect();
    let since = insp::track_unhealthy(
        &before,
        last_observed,
        &unhealthy_now,
        down > 1,
        now.as_second(),
    );
    let after = tc
        .spec
        .healing
        .member_unhealthy_seconds
        .map_or(insp::DEFAULT_MEMBER_UNHEALTHY_SECS, i64::from);
    let due =
        insp::unhealthy_member_due(&since, voters, now.as_second(), after).map(str::to_string);
    status.etcd_unhealthy_since = since
        .iter()
        .filter_map(|(m, t)| Some((m.clone(), Time(Timestamp::from_second(*t).ok()?))))
        .collect();
    let Some(name) = due.filter(|_| policy == CheckPolicy::Repair && down == 1) else {
        return Ok(Healing::Idle);
    };
    let Some(member) = observed
        .iter()
        .map(|m| m.ordinal)
        .find(|i| names.etcd_member(*i) == name)
    else {
        return Ok(Healing::Idle);
    };
    let refused = match kept_volume_of(ctx, tc, names).await? {
        Some(pv) => Some(format!(
            "volume {pv}, kept by an earlier replacement, still exists: one kept volume per tenant at a time (delete it, or remove its annotation {KEPT_FROM_ANNOTATION}, see docs/runbooks/etcd-member-unhealthy.md)"
        )),
        None => super::repairs::repair_refused(ctx, tc, status, ETCD_MEMBER_UNHEALTHY),
    };
    if let Some(why) = refused {
        let note = format!("etcd member {name} is due for replacement but not replaced: {why}");
        if !ctx.first_saying(&refusal_key(p), &note) {
            return Ok(Healing::Idle);
        }
        info!("{note}");
        super::publish(
            ctx,
            tc,
            EventType::Warning,
            "EtcdMemberNotReplaced",
            "Heal",
            &note,
        )
        .await;
        return Ok(Healing::Idle);
    }
    // The claim it served on, and the volume behind it, to keep.
    let claim_name = member_claim(names, member);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let claim = claims.get_opt(&claim_name).await?;
    let recorded = status.etcd_member_claims.get(&claim_name).cloned();
    let (Some(claim), Some(recorded)) = (claim, recorded) else {
        return Ok(Healing::Idle);
    };
    let volume = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
    let (Some(volume), true) = (volume, claim.uid() == Some(recorded.clone())) else {
        // Not the claim it served on, or not bound: not this repair's case.
        return Ok(Healing::Idle);
    };
    let detected = before.get(&name).copied().unwrap_or(now.as_second());
    let note = format!(
        "etcd member {name} is unhealthy on its own volume for {}s (not ready, no answer to a quorum read), every other member healthy; replacing it: its volume {volume} is kept aside with its data, then the member is removed, added back as a learner on a fresh volume, promoted",
        now.as_second() - detected
    );
    info!("{note}");
    super::publish(
        ctx,
        tc,
        EventType::Warning,
        "EtcdMemberUnhealthy",
        "Heal",
        &note,
    )
    .await;
    status.etcd_unhealthy_since.clear();
    // A later refusal is announced again.
    ctx.first_saying(&refusal_key(p), "replacing");
    status.etcd_member_replacement = Some(MemberReplacement {
        member,
        phase: PHASE_KEEPING.into(),
        removed_id: None,
        learner_id: None,
        lost_claim: Some(recorded),
        kept_volume: Some(volume),
        detected_time: Time(Timestamp::from_second(detected).unwrap_or(now)),
        message: Some(format!("unhealthy for {}s", now.as_second() - detected)),
    });
    Ok(Healing::Replacing(note))
}

/// Where the last refusal to replace an unhealthy member is remembered.
fn refusal_key(p: &Placement) -> String {
    format!("{}/{}/unhealthy-refused", p.namespace, p.names.tenant)
}

/// A volume an earlier replacement of this tenant kept, if one still
/// exists (the annotation names the namespace and one of its claims).
async fn kept_volume_of(
    ctx: &Context,
    tc: &TenantCluster,
    names: &Names,
) -> Result<Option<String>> {
    let ns = tc.namespace().unwrap_or_default();
    let ours: Vec<String> = (0..kok_templates::names::MAX_ETCD_MEMBERS)
        .map(|i| format!("{ns}/{}", member_claim(names, i)))
        .collect();
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    Ok(api
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|v| {
            v.annotations()
                .get(KEPT_FROM_ANNOTATION)
                .is_some_and(|from| ours.contains(from))
        })
        .map(|v| v.name_any()))
}

/// Keeps the volume of a claim about to be released, with its data: its
/// reclaim policy is set to `Retain` (a `Delete` policy would have the
/// provisioner erase it once the claim is gone) and it is annotated with
/// where it came from. kok never deletes it.
async fn keep_volume(ctx: &Context, tc: &TenantCluster, pv: &str, claim: &str) -> Result<()> {
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(v) = api.get_opt(pv).await? else {
        return Ok(());
    };
    let retained = v
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Retain");
    let from = format!("{}/{claim}", tc.namespace().unwrap_or_default());
    let marked = v.annotations().get(KEPT_FROM_ANNOTATION) == Some(&from);
    if retained && marked {
        return Ok(());
    }
    let patch = serde_json::json!({
        "metadata": {"annotations": {KEPT_FROM_ANNOTATION: from}},
        "spec": {"persistentVolumeReclaimPolicy": "Retain"},
    });
    api.patch(
        pv,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;
    let note = format!(
        "kept volume {pv} of claim {from} with its data (reclaim policy Retain): the claim is released so the member starts on a fresh one; delete the volume once it is no longer needed"
    );
    info!("{note}");
    super::publish(ctx, tc, EventType::Normal, "EtcdVolumeKept", "Heal", &note).await;
    Ok(())
}

/// On a volume kept aside by an unhealthy member's replacement: the claim
/// (namespace/name) it was released from.
pub const KEPT_FROM_ANNOTATION: &str = "kok.dev/kept-from-claim";

/// A majority of members lost their data. With
/// `spec.healing.quorumLoss.restoreFromBackup`, an EtcdRestore of the newest
/// verified backup no older than `maxBackupAge` is created (once) and
/// followed; otherwise, or without such a backup, the loss is reported with
/// the runbook step. A restore of this tenant that completes after the loss
/// (kok's or a person's) ends it: the claims are recorded anew.
async fn quorum_loss(
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
            super::publish(
                ctx,
                tc,
                EventType::Warning,
                "EtcdQuorumLost",
                "Heal",
                &message,
            )
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
        super::publish(
            ctx,
            tc,
            EventType::Normal,
            "EtcdQuorumRestored",
            "Heal",
            &note,
        )
        .await;
        ctx.metrics
            .repaired(insp::ETCD_QUORUM_LOST, true, Some(seconds));
        super::repairs::push_repair(
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
    super::publish(
        ctx,
        tc,
        EventType::Warning,
        "EtcdQuorumRestoring",
        "Heal",
        &note,
    )
    .await;
    Ok(Healing::Replacing(note))
}

/// What a replacement step must know of the rest of the pass.
struct Around {
    /// The bootstrap ConfigMap says `existing` (applied this pass).
    joining_rendered: bool,
    /// Another member lost its data too.
    others_lost: bool,
}

const PHASE_REMOVING: &str = "Removing";
const PHASE_KEEPING: &str = "KeepingVolume";
const PHASE_ADDING: &str = "AddingLearner";
const PHASE_RESTARTING: &str = "Restarting";
const PHASE_PROMOTING: &str = "Promoting";

async fn replace(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    status: &mut TenantClusterStatus,
    mut r: MemberReplacement,
    observed: &[MemberVolume],
    around: Around,
) -> Result<Healing> {
    let Around {
        joining_rendered,
        others_lost,
    } = around;
    let names = &p.names;
    let i = r.member;
    let name = names.etcd_member(i);
    let peer_url = format!("https://{name}:{ETCD_PEER_PORT}");
    let access = EtcdAccess::for_tenant(&ctx.client, tc)
        .await
        .map_err(|e| Error::Etcd(e.to_string()))?;
    let others = EtcdAccess {
        members: access
            .members
            .iter()
            .filter(|m| m.tls_name.as_deref() != Some(name.as_str()))
            .cloned()
            .collect::<Vec<Member>>(),
        tls: access.tls.clone(),
    };
    let progress = |r: &MemberReplacement, what: &str| {
        format!("replacing etcd member {name} ({}): {what}", r.phase)
    };
    match r.phase.as_str() {
        PHASE_KEEPING => {
            // Recovered meanwhile (a slow start that finished, kok's own
            // view of it healed): nothing to replace.
            let ready = observed.iter().any(|m| m.ordinal == i && m.pod_ready);
            let serves = access
                .probe()
                .await
                .iter()
                .any(|m| m.name == name && m.serves_quorum_reads);
            if ready || serves {
                let note = format!(
                    "etcd member {name} is healthy again: its replacement is called off before anything was changed"
                );
                info!("{note}");
                super::publish(
                    ctx,
                    tc,
                    EventType::Normal,
                    "EtcdMemberRecovered",
                    "Heal",
                    &note,
                )
                .await;
                status.etcd_member_replacement = None;
                return Ok(Healing::Idle);
            }
            // The volume is kept before its claim is released, and the claim
            // released while the ConfigMap is still sealed: the member's old
            // data is never started on as a learner, and a member without data
            // exits until it is re-added.
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(ctx.client.clone(), &p.namespace);
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace);
            let claim_name = member_claim(names, i);
            if let Some(pv) = &r.kept_volume {
                keep_volume(ctx, tc, pv, &claim_name).await?;
            }
            if let Some(uid) = &r.lost_claim {
                // By uid: never a claim made since (a repeat of this step).
                let dp = only_uid(Some(uid.clone()));
                crate::runtime::api::gone_or_replaced_is_done(
                    claims.delete(&claim_name, &dp).await,
                )?;
            }
            crate::runtime::api::gone_or_replaced_is_done(
                pods.delete(&name, &DeleteParams::default()).await,
            )?;
            r.phase = PHASE_REMOVING.into();
            r.message = Some("its volume is kept and its claim released".into());
        }
        PHASE_REMOVING => {
            let probes = others.probe().await;
            let healthy = probes.iter().filter(|p| p.serves_quorum_reads).count();
            let mut client = others
                .connect()
                .await
                .map_err(|e| Error::Etcd(e.to_string()))?;
            let list = client
                .member_list()
                .await
                .map_err(|e| Error::Etcd(e.to_string()))?;
            let voting = list.members().iter().filter(|m| !m.is_learner()).count();
            let target = list
                .members()
                .iter()
                .find(|m| m.peer_urls().iter().any(|u| u == &peer_url));
            match target {
                // Added back already (a restart between the steps).
                Some(m) if m.is_learner() => {
                    r.learner_id = Some(format!("{:x}", m.id()));
                    r.phase = PHASE_RESTARTING.into();
                }
                Some(m) => {
                    if !removal_keeps_quorum(voting, healthy) {
                        let why = format!(
                            "waiting: only {healthy} of the other {} members are healthy; removing {name} would lose quorum",
                            voting.saturating_sub(1)
                        );
                        r.message = Some(why.clone());
                        status.etcd_member_replacement = Some(r.clone());
                        return Ok(Healing::Replacing(progress(&r, &why)));
                    }
                    r.removed_id = Some(format!("{:x}", m.id()));
                    // Recorded before it acts: a restart resumes, not repeats.
                    r.phase = PHASE_ADDING.into();
                    status.etcd_member_replacement = Some(r.clone());
                    client
                        .member_remove(m.id())
                        .await
                        .map_err(|e| Error::Etcd(format!("removing member {name}: {e}")))?;
                    let note =
                        format!("removed etcd member {name} ({:x}) from the cluster", m.id());
                    info!("{note}");
                    super::publish(
                        ctx,
                        tc,
                        EventType::Normal,
                        "EtcdMemberRemoved",
                        "Heal",
                        &note,
                    )
                    .await;
                }
                None => r.phase = PHASE_ADDING.into(),
            }
        }
        PHASE_ADDING => {
            let mut client = others
                .connect()
                .await
                .map_err(|e| Error::Etcd(e.to_string()))?;
            let list = client
                .member_list()
                .await
                .map_err(|e| Error::Etcd(e.to_string()))?;
            let existing = list
                .members()
                .iter()
                .find(|m| m.peer_urls().iter().any(|u| u == &peer_url))
                .map(|m| m.id());
            let id = match existing {
                Some(id) => id,
                None => {
                    let added = client
                        .member_add(
                            [peer_url.as_str()],
                            Some(MemberAddOptions::new().with_is_learner()),
                        )
                        .await
                        .map_err(|e| Error::Etcd(format!("adding {name} as a learner: {e}")))?;
                    added.member().map(|m| m.id()).unwrap_or_default()
                }
            };
            r.learner_id = Some(format!("{id:x}"));
            // The next pass turns the bootstrap ConfigMap to `existing`:
            // not while another member is lost too (it would read it).
            if others_lost {
                r.message = Some("waiting: another member lost its data too".into());
            } else {
                r.phase = PHASE_RESTARTING.into();
            }
        }
        PHASE_RESTARTING if !joining_rendered => {
            // The bootstrap ConfigMap said `new` when this pass began: the
            // member restarts once it says `existing` (next pass).
        }
        PHASE_RESTARTING if r.kept_volume.is_some() => {
            // Its claim was released in KeepingVolume, so the member's pod
            // runs on a fresh claim; started while the ConfigMap was sealed,
            // it exited. It is restarted once now that the ConfigMap says
            // `existing`, rather than after a crash-loop back-off.
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace);
            let now = observed
                .iter()
                .find(|m| m.ordinal == i)
                .and_then(|m| m.claim_uid.clone());
            match now {
                Some(uid) if Some(&uid) != r.lost_claim.as_ref() => {
                    r.phase = PHASE_PROMOTING.into();
                    r.lost_claim = Some(uid);
                    status.etcd_member_replacement = Some(r.clone());
                    crate::runtime::api::gone_or_replaced_is_done(
                        pods.delete(&name, &DeleteParams::default()).await,
                    )?;
                    return Ok(Healing::Replacing(progress(
                        &r,
                        "restarted on its fresh volume to join",
                    )));
                }
                _ => clear_stuck_pod(&pods, &name).await?,
            }
        }
        PHASE_RESTARTING => {
            // The member must start on an empty volume: the claim found in
            // place of the lost one was written by whatever the member did
            // while it could not join (a start between the steps above). It
            // is deleted, never the claim the member served on.
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(ctx.client.clone(), &p.namespace);
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace);
            let claim_name = member_claim(names, i);
            let now = observed
                .iter()
                .find(|m| m.ordinal == i)
                .and_then(|m| m.claim_uid.clone());
            let recorded = status.etcd_member_claims.get(&claim_name).cloned();
            match now {
                Some(uid)
                    if Some(&uid) == r.lost_claim.as_ref() && Some(&uid) != recorded.as_ref() =>
                {
                    let dp = only_uid(Some(uid.clone()));
                    crate::runtime::api::gone_or_replaced_is_done(
                        claims.delete(&claim_name, &dp).await,
                    )?;
                    crate::runtime::api::gone_or_replaced_is_done(
                        pods.delete(&name, &DeleteParams::default()).await,
                    )?;
                    return Ok(Healing::Replacing(progress(
                        &r,
                        "starting it on a fresh volume",
                    )));
                }
                Some(uid) => {
                    // A fresh claim: wait for the member to come up on it.
                    let pod = pods.get_opt(&name).await?;
                    if pod
                        .as_ref()
                        .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
                    {
                        r.phase = PHASE_PROMOTING.into();
                        r.lost_claim = Some(uid);
                    }
                }
                None => clear_stuck_pod(&pods, &name).await?,
            }
        }
        PHASE_PROMOTING => {
            let Some(id) = r
                .learner_id
                .as_deref()
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                r.phase = PHASE_ADDING.into();
                status.etcd_member_replacement = Some(r.clone());
                return Ok(Healing::Replacing(progress(
                    &r,
                    "the learner's id was lost; adding again",
                )));
            };
            let mut client = others
                .connect()
                .await
                .map_err(|e| Error::Etcd(e.to_string()))?;
            // Promoted already (a restart after the promotion, before its
            // record was written): finish instead of asking again forever.
            let already_voting = client
                .member_list()
                .await
                .map_err(|e| Error::Etcd(e.to_string()))?
                .members()
                .iter()
                .any(|m| m.id() == id && !m.is_learner());
            let promoted = if already_voting {
                Ok(())
            } else {
                client.member_promote(id).await.map(|_| ())
            };
            match promoted {
                Ok(()) => {
                    let claim_name = member_claim(names, i);
                    if let Some(uid) = r.lost_claim.clone() {
                        status.etcd_member_claims.insert(claim_name, uid);
                    }
                    let now = Timestamp::now();
                    let seconds =
                        (now.as_millisecond() - r.detected_time.0.as_millisecond()) as f64 / 1000.0;
                    let note = format!(
                        "etcd member {name} replaced: promoted from learner, {seconds:.1}s after its data loss was found"
                    );
                    info!("{note}");
                    super::publish(
                        ctx,
                        tc,
                        EventType::Normal,
                        "EtcdMemberReplaced",
                        "Heal",
                        &note,
                    )
                    .await;
                    let (check, action) = match &r.kept_volume {
                        Some(pv) => (
                            ETCD_MEMBER_UNHEALTHY,
                            format!("kept its volume {pv} aside with its data (Retain), removed the member, added it back as a learner on a fresh volume, promoted it once caught up"),
                        ),
                        None => (
                            ETCD_MEMBER_LOST,
                            "removed the member, added it back as a learner on a fresh volume, promoted it once caught up".into(),
                        ),
                    };
                    ctx.metrics.repaired(check, true, Some(seconds));
                    super::repairs::push_repair(
                        status,
                        Repair {
                            check: check.into(),
                            object: format!("etcd member {name}"),
                            action,
                            outcome: "Succeeded".into(),
                            message: r.removed_id.as_ref().map(|old| {
                                format!(
                                    "member id {old} -> {}",
                                    r.learner_id.clone().unwrap_or_default()
                                )
                            }),
                            detected_time: Some(r.detected_time.clone()),
                            time: Time(now),
                            seconds_to_repair: Some(seconds),
                        },
                    );
                    status.etcd_member_replacement = None;
                    return Ok(Healing::Idle);
                }
                Err(e) => {
                    // Not caught up yet ("can only promote a learner member
                    // which is in sync with leader"): try again next pass.
                    // A learner whose pod crash-loops started before the
                    // bootstrap ConfigMap let it join; it would only wait out
                    // its back-off (up to 5 minutes), so it starts now.
                    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace);
                    let pod = pods.get_opt(&name).await?;
                    let waiting = pod.as_ref().and_then(waiting_reason);
                    let pod_note = match waiting.as_deref() {
                        Some("CrashLoopBackOff") => {
                            crate::runtime::api::gone_or_replaced_is_done(
                                pods.delete(&name, &DeleteParams::default()).await,
                            )?;
                            info!(pod = %name, "restarted a crash-looping learner to join now");
                            "its pod was crash-looping: restarted".to_string()
                        }
                        Some(reason) => format!("its pod is waiting: {reason}"),
                        None if pod.is_none() => "its pod is not there yet".to_string(),
                        None => "its pod is running".to_string(),
                    };
                    let why = format!("waiting for the learner to catch up ({pod_note}): {e}");
                    r.message = Some(why.clone());
                    status.etcd_member_replacement = Some(r.clone());
                    return Ok(Healing::Replacing(progress(&r, &why)));
                }
            }
        }
        other => {
            r.message = Some(format!("unknown phase {other}; starting over"));
            r.phase = PHASE_REMOVING.into();
        }
    }
    let message = progress(&r, r.message.as_deref().unwrap_or(""));
    status.etcd_member_replacement = Some(r);
    Ok(Healing::Replacing(message))
}

/// A StatefulSet wedge (kubernetes#74374): a member's claim was deleted
/// while its pod was recreated, so the new pod refers to a claim on its way
/// out. It stays Pending, and as long as it exists the claim's
/// `kubernetes.io/pvc-protection` finalizer holds the deletion up; once the
/// claim is gone, the StatefulSet does not make it again for that pod. The
/// pod never ran, so no one uses the volume: the finalizer is released, and
/// a Pending pod without its claim is deleted so the StatefulSet makes both.
async fn unwedge(
    claims: &Api<PersistentVolumeClaim>,
    pods: &Api<Pod>,
    names: &Names,
    i: i32,
    claim: Option<&PersistentVolumeClaim>,
    pod: Option<&Pod>,
) -> Result<()> {
    let Some(pod) = pod.filter(|p| {
        p.metadata.deletion_timestamp.is_none()
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
            && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()
    }) else {
        return Ok(());
    };
    match claim {
        Some(c) if c.metadata.deletion_timestamp.is_some() => {
            let finalizers: Vec<String> = c
                .finalizers()
                .iter()
                .filter(|f| *f != "kubernetes.io/pvc-protection")
                .cloned()
                .collect();
            if finalizers.len() != c.finalizers().len() {
                let patch = serde_json::json!({"metadata": {
                    "finalizers": finalizers,
                    "resourceVersion": c.resource_version(),
                }});
                let pp = kube::api::PatchParams::default();
                match claims
                    .patch(&c.name_any(), &pp, &kube::api::Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => info!(
                        member = i,
                        "released a claim being deleted that only an unscheduled pod referred to"
                    ),
                    Err(e)
                        if crate::runtime::api::is_not_found(&e)
                            || crate::runtime::api::is_conflict(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        None => {
            let dp = only_uid(pod.uid());
            crate::runtime::api::gone_or_replaced_is_done(
                pods.delete(&names.etcd_member(i), &dp).await,
            )?;
            info!(member = i, "deleted a pending etcd pod whose claim is gone");
        }
        Some(_) => {}
    }
    Ok(())
}

/// A member's pod that cannot go by itself: Pending on a claim that is
/// gone (it never ran; the StatefulSet makes both again once it is
/// deleted), or still Terminating a minute past its grace period (its node
/// is gone, no kubelet confirms). Called only for a member already removed from etcd whose new
/// pod starts on another claim, so nothing runs twice on one volume.
/// Why the pod's first waiting container waits (`CrashLoopBackOff`, ...).
fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
}

async fn clear_stuck_pod(pods: &Api<Pod>, name: &str) -> Result<()> {
    let Some(pod) = pods.get_opt(name).await? else {
        return Ok(());
    };
    let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
    match &pod.metadata.deletion_timestamp {
        None if pending => Ok(crate::runtime::api::gone_or_replaced_is_done(
            pods.delete(name, &DeleteParams::default()).await,
        )?),
        Some(since) if Timestamp::now().as_second() - since.0.as_second() > 60 => {
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..only_uid(pod.uid())
            };
            info!(
                pod = name,
                "force-deleting an etcd pod stuck terminating (its member is already removed)"
            );
            Ok(crate::runtime::api::gone_or_replaced_is_done(
                pods.delete(name, &dp).await,
            )?)
        }
        _ => Ok(()),
    }
}

/// Each member's cluster ID, as it answers alone (`None`: no answer).
async fn cluster_ids(access: &EtcdAccess) -> Vec<(String, Option<u64>)> {
    let asks = access.members.iter().map(|m| async move {
        let name = m.tls_name.clone().unwrap_or_else(|| m.url.clone());
        let id = tokio::time::timeout(Duration::from_secs(5), async {
            let mut c = access.connect_member(m).await.ok()?;
            // A linearizable read: only a member of a cluster with a leader answers.
            c.get("health", Some(GetOptions::new().with_count_only()))
                .await
                .ok()?
                .header()
                .map(|h| h.cluster_id())
        })
        .await
        .ok()
        .flatten();
        (name, id)
    });
    futures::future::join_all(asks).await
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
