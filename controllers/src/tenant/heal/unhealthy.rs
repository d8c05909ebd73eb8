//! A member unhealthy on its own volume: timed, and once it stayed so long
//! enough (with every other member healthy and the repair budgets
//! allowing), replaced like a member that lost its data, with its volume
//! kept aside first.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kok_crds::{
    CheckPolicy, MemberReplacement, ReplacementPhase, TenantCluster, TenantClusterStatus,
};
use kok_templates::controlplane::Placement;
use kok_templates::inspection::{self as insp, ETCD_MEMBER_UNHEALTHY};
use kok_templates::membership::MemberVolume;
use kok_templates::names::Names;
use kok_templates::restore::member_claim;
use kube::api::ListParams;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::info;

use super::Healing;
use crate::etcd::EtcdAccess;
use crate::runtime::context::Context;
use crate::runtime::error::Result;

/// A member unhealthy on its own volume (not ready, no answer to a quorum
/// read through itself) is timed; once it stayed so for
/// `spec.healing.memberUnhealthySeconds` while every other member is
/// healthy, and the repair budgets allow, its replacement starts: the same
/// steps as for a lost volume, with its volume kept aside first.
pub(super) async fn unhealthy(
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
        None => crate::tenant::repairs::repair_refused(ctx, tc, status, ETCD_MEMBER_UNHEALTHY),
    };
    if let Some(why) = refused {
        let note = format!("etcd member {name} is due for replacement but not replaced: {why}");
        if !ctx.first_saying(&refusal_key(p), &note) {
            return Ok(Healing::Idle);
        }
        info!("{note}");
        ctx.publish(
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
    ctx.publish(tc, EventType::Warning, "EtcdMemberUnhealthy", "Heal", &note)
        .await;
    status.etcd_unhealthy_since.clear();
    // A later refusal is announced again.
    ctx.first_saying(&refusal_key(p), "replacing");
    status.etcd_member_replacement = Some(MemberReplacement {
        member,
        phase: ReplacementPhase::KeepingVolume,
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
pub(super) async fn keep_volume(
    ctx: &Context,
    tc: &TenantCluster,
    pv: &str,
    claim: &str,
) -> Result<()> {
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
    ctx.publish(tc, EventType::Normal, "EtcdVolumeKept", "Heal", &note)
        .await;
    Ok(())
}

/// On a volume kept aside by an unhealthy member's replacement: the claim
/// (namespace/name) it was released from.
pub const KEPT_FROM_ANNOTATION: &str = "kok.dev/kept-from-claim";
