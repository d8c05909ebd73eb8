//! Healing the tenant's etcd members, by concern: this pass finds members
//! that lost their data (their claim was replaced) and decides which
//! concern acts; `replace` walks a member's replacement (remove it, add it
//! back as a learner on a fresh volume, promote it once caught up; one
//! member at a time, only while quorum holds, each step recorded before it
//! acts), `unhealthy` times a member unhealthy on its own volume and starts
//! its replacement, `quorum_loss` restores a lost majority from a backup.
//! Maintenance (NOSPACE, defragmentation) is in `etcd_maintenance`.

use std::time::Duration;

use etcd_client::GetOptions;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kok_crds::{
    CheckPolicy, MemberReplacement, ReplacementPhase, TenantCluster, TenantClusterStatus,
};
use kok_templates::controlplane::{self as cp, Placement};
use kok_templates::etcd_scale;
use kok_templates::inspection::{self as insp, ETCD_MEMBER_LOST};
use kok_templates::kstatus::Summary;
use kok_templates::membership::{self, lost_members, MemberVolume, Mover};
use kok_templates::names::Names;
use kok_templates::restore::member_claim;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::info;

use crate::etcd::EtcdAccess;
use crate::runtime::apply::{apply_child, only_uid};
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};

mod quorum_loss;
mod replace;
mod unhealthy;

use self::quorum_loss::quorum_loss;
use self::replace::{replace, Around};
use self::unhealthy::unhealthy;

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
    status.etcd_member_replacement.as_ref().is_some_and(|r| {
        r.phase == ReplacementPhase::Restarting || r.phase == ReplacementPhase::Promoting
    })
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

impl Healing {
    /// What healing concluded, for the tenant's kstatus conditions.
    pub(super) fn summary(&self) -> Option<Summary> {
        match self {
            Healing::Idle => None,
            // A member is replaced under a control plane that may still serve.
            Healing::Replacing(why) => Some(Summary::Working {
                reason: "HealingEtcd".into(),
                doing: why.clone(),
                not_ready: None,
                stuck: None,
            }),
            // kok cannot bring the data back by itself: a person must act.
            Healing::QuorumLost(why) => Some(Summary::blocked(
                "EtcdQuorumLost",
                why.clone(),
                "waiting for a restore (see Stalled)",
            )),
        }
    }
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
        phase: ReplacementPhase::Removing,
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
    ctx.publish(tc, EventType::Warning, "EtcdMemberLost", "Heal", &note)
        .await;
    status.etcd_member_replacement = Some(r);
    Ok(Healing::Replacing(note))
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
