//! Healing the tenant's etcd: replacing a member that lost its data
//! (remove it, add it back as a learner on a fresh volume, promote it once
//! caught up; one member at a time, only while quorum holds, each step
//! recorded before it acts), and the maintenance repairs inspection asks
//! for (defragmentation, NOSPACE).

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{AlarmAction, AlarmType, CompactionOptions, GetOptions, MemberAddOptions};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kok_crds::{CheckPolicy, MemberReplacement, Repair, TenantCluster, TenantClusterStatus};
use kok_templates::controlplane::{self as cp, Placement, ETCD_PEER_PORT};
use kok_templates::inspection::{self as insp, ETCD_MEMBER_LOST};
use kok_templates::names::Names;
use kok_templates::restore::member_claim;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::info;

use crate::etcd::{EtcdAccess, Member};
use crate::runtime::apply::apply_child;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};

/// Applies the member bootstrap ConfigMap of the etcd generation `p`
/// names: `existing` once every member has served on its volume.
pub(super) async fn ensure_bootstrap_config(
    ctx: &Context,
    p: &Placement,
    existing: bool,
) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &p.namespace);
    apply_child(&api, &cp::etcd_bootstrap_config(p, existing), &p.owner.uid).await?;
    Ok(())
}

/// Whether every member of the serving etcd has been seen serving on its
/// claim (recorded in `status.etcdMemberClaims`).
pub(super) fn formed(tc: &TenantCluster, names: &Names, replicas: i32) -> bool {
    !tc.spec.etcd.storage.ephemeral
        && tc.status.as_ref().is_some_and(|s| {
            (0..replicas).all(|i| s.etcd_member_claims.contains_key(&member_claim(names, i)))
        })
}

/// What the member healing did in this pass.
pub(super) enum Healing {
    /// Nothing to do.
    Idle,
    /// A replacement is under way (message for `Reconciling`); look again soon.
    Replacing(String),
}

/// One pass of the etcd member healing. Records the claims of members
/// serving for the first time; finds a member whose claim changed (its data
/// is gone) and walks its replacement one recorded step per pass.
pub(super) async fn members(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    replicas: i32,
    status: &mut TenantClusterStatus,
) -> Result<Healing> {
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
        observed.push(MemberVolume {
            ordinal: i,
            claim_uid: claim
                .as_ref()
                .filter(|c| c.metadata.deletion_timestamp.is_none())
                .and_then(|c| c.uid()),
            pod_ready: pod.as_ref().is_some_and(pod_ready),
        });
    }
    if let Some(r) = status.etcd_member_replacement.clone() {
        return replace(ctx, tc, p, replicas, status, r, &observed).await;
    }
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
    let lost = lost_members(&status.etcd_member_claims, names, &observed);
    let Some((member, found)) = lost.into_iter().next() else {
        return Ok(Healing::Idle);
    };
    let name = names.etcd_member(member);
    let policy = insp::policy(&tc.spec.healing, ETCD_MEMBER_LOST);
    if policy != CheckPolicy::Repair || replicas < 3 {
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

const PHASE_REMOVING: &str = "Removing";
const PHASE_ADDING: &str = "AddingLearner";
const PHASE_RESTARTING: &str = "Restarting";
const PHASE_PROMOTING: &str = "Promoting";

#[derive(Debug, Clone)]
pub(super) struct MemberVolume {
    pub ordinal: i32,
    /// The claim's uid, unless it is missing or being deleted.
    pub claim_uid: Option<String>,
    pub pod_ready: bool,
}

/// Members whose claim is not the one they were recorded serving on (a new
/// claim: the old one and its data were deleted), with the new claim's uid.
/// A missing claim is not lost yet: the StatefulSet is about to make one.
pub(super) fn lost_members(
    recorded: &BTreeMap<String, String>,
    names: &Names,
    observed: &[MemberVolume],
) -> Vec<(i32, Option<String>)> {
    observed
        .iter()
        .filter_map(|m| {
            let was = recorded.get(&member_claim(names, m.ordinal))?;
            let now = m.claim_uid.as_ref()?;
            (now != was).then(|| (m.ordinal, Some(now.clone())))
        })
        .collect()
}

/// Whether member `i` may be removed: after the removal, the members left
/// must still have a quorum of healthy ones.
pub(super) fn removal_keeps_quorum(voting: usize, healthy_others: usize) -> bool {
    let after = voting.saturating_sub(1);
    after > 0 && healthy_others > after / 2
}

async fn replace(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    replicas: i32,
    status: &mut TenantClusterStatus,
    mut r: MemberReplacement,
    observed: &[MemberVolume],
) -> Result<Healing> {
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
            r.phase = PHASE_RESTARTING.into();
        }
        PHASE_RESTARTING => {
            // The member must start on an empty volume: the claim found in
            // place of the lost one holds only what the member wrote while
            // it could not join (it panics on an empty log). It is deleted,
            // never the claim the member served on.
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
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: Some(uid.clone()),
                            resource_version: None,
                        }),
                        ..Default::default()
                    };
                    ignore_gone(claims.delete(&claim_name, &dp).await)?;
                    ignore_gone(pods.delete(&name, &DeleteParams::default()).await)?;
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
                None => {
                    // The claim is gone and a pod made before it was (and so
                    // bound to the deleted claim) waits forever: delete it,
                    // the StatefulSet makes the claim and the pod again.
                    if let Some(pod) = pods.get_opt(&name).await? {
                        let pending =
                            pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
                        if pending && pod.metadata.deletion_timestamp.is_none() {
                            ignore_gone(pods.delete(&name, &DeleteParams::default()).await)?;
                        }
                    }
                }
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
            match client.member_promote(id).await {
                Ok(_) => {
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
                    ctx.metrics.repaired(ETCD_MEMBER_LOST, true, Some(seconds));
                    super::inspect::push_repair(
                        status,
                        Repair {
                            check: ETCD_MEMBER_LOST.into(),
                            object: format!("etcd member {name}"),
                            action: "removed the member, added it back as a learner on a fresh volume, promoted it once caught up".into(),
                            outcome: "Succeeded".into(),
                            message: r.removed_id.as_ref().map(|old| {
                                format!("member id {old} -> {}", r.learner_id.clone().unwrap_or_default())
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
                    let why = format!("waiting for the learner to catch up: {e}");
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
    let _ = replicas;
    Ok(Healing::Replacing(message))
}

fn ignore_gone<T>(r: std::result::Result<T, kube::Error>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The cluster's alarms as `(member name, alarm)`.
pub(super) async fn alarms(
    access: &EtcdAccess,
) -> std::result::Result<Vec<(String, String)>, String> {
    let mut client = access.connect().await.map_err(|e| e.to_string())?;
    let listed = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .map_err(|e| e.to_string())?;
    if listed.alarms().is_empty() {
        return Ok(Vec::new());
    }
    let members = client.member_list().await.map_err(|e| e.to_string())?;
    Ok(listed
        .alarms()
        .iter()
        .map(|a| {
            let name = members
                .members()
                .iter()
                .find(|m| m.id() == a.member_id())
                .map(|m| m.name().to_string())
                .unwrap_or_else(|| format!("{:x}", a.member_id()));
            let alarm = match a.alarm() {
                AlarmType::Nospace => "NOSPACE".to_string(),
                AlarmType::Corrupt => "CORRUPT".to_string(),
                other => format!("{other:?}").to_uppercase(),
            };
            (name, alarm)
        })
        .collect())
}

/// Defragments every member that answers, followers first and the leader
/// last (a member blocks while it defragments; the leader's pause stalls
/// every write, so it goes once).
pub(super) async fn defragment(
    ctx: &Context,
    tc: &TenantCluster,
) -> std::result::Result<String, String> {
    let access = EtcdAccess::for_tenant(&ctx.client, tc)
        .await
        .map_err(|e| e.to_string())?;
    let mut order = Vec::new();
    for m in &access.members {
        let mut c = access.connect_member(m).await.map_err(|e| e.to_string())?;
        let s = c.status().await.map_err(|e| e.to_string())?;
        let id = s.header().map(|h| h.member_id()).unwrap_or_default();
        order.push((s.leader() == id, m.clone(), s.db_size()));
    }
    order.sort_by_key(|(leader, _, _)| *leader);
    let mut done = Vec::new();
    for (_, m, before) in order {
        let mut c = access.connect_member(&m).await.map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(120), c.defragment())
            .await
            .map_err(|_| format!("{}: defragmentation took over 120s", m.url))?
            .map_err(|e| format!("{}: {e}", m.url))?;
        let after = c.status().await.map(|s| s.db_size()).unwrap_or(before);
        done.push(format!(
            "{} {:.1} -> {:.1} MiB",
            m.tls_name.clone().unwrap_or_else(|| m.url.clone()),
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        ));
    }
    Ok(done.join(", "))
}

/// NOSPACE: compact the history to the current revision, defragment every
/// member, and disarm the alarm once every database is below 80% of the
/// quota. If live data alone fills the quota, the alarm stays: disarming
/// would only let etcd fill up again (raise `spec.etcd.quotaBackendBytes`).
pub(super) async fn resolve_nospace(
    ctx: &Context,
    tc: &TenantCluster,
) -> std::result::Result<String, String> {
    let access = EtcdAccess::for_tenant(&ctx.client, tc)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = access.connect().await.map_err(|e| e.to_string())?;
    let head = client
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .map_err(|e| e.to_string())?;
    let revision = head.header().map(|h| h.revision()).unwrap_or_default();
    match client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
    {
        Ok(_) => {}
        // Compacted to it already (an earlier attempt).
        Err(e) if e.to_string().contains("compacted") => {}
        Err(e) => return Err(format!("compacting to revision {revision}: {e}")),
    }
    let defragmented = defragment(ctx, tc).await?;
    let quota = tc
        .spec
        .etcd
        .quota_backend_bytes
        .unwrap_or(insp::ETCD_DEFAULT_QUOTA);
    for m in &access.members {
        let mut c = access.connect_member(m).await.map_err(|e| e.to_string())?;
        let size = c.status().await.map_err(|e| e.to_string())?.db_size();
        if size * 10 > quota * 8 {
            return Err(format!(
                "after compaction and defragmentation {} still holds {:.1} MiB of a {:.1} MiB quota: the live data fills it; raise spec.etcd.quotaBackendBytes (the alarm stays armed)",
                m.tls_name.clone().unwrap_or_default(),
                size as f64 / 1048576.0,
                quota as f64 / 1048576.0
            ));
        }
    }
    let listed = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .map_err(|e| e.to_string())?;
    for a in listed
        .alarms()
        .iter()
        .filter(|a| a.alarm() == AlarmType::Nospace)
    {
        let mut options = etcd_client::AlarmOptions::new();
        options.with_member(a.member_id());
        client
            .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options))
            .await
            .map_err(|e| format!("disarming NOSPACE: {e}"))?;
    }
    Ok(format!(
        "compacted to revision {revision}; defragmented {defragmented}; NOSPACE disarmed"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(ordinal: i32, uid: Option<&str>) -> MemberVolume {
        MemberVolume {
            ordinal,
            claim_uid: uid.map(Into::into),
            pod_ready: false,
        }
    }

    #[test]
    fn a_member_is_lost_when_its_claim_is_another_one() {
        let names = Names::new("t");
        let recorded = BTreeMap::from([
            (member_claim(&names, 0), "a".to_string()),
            (member_claim(&names, 1), "b".to_string()),
            (member_claim(&names, 2), "c".to_string()),
        ]);
        let observed = [vol(0, Some("a")), vol(1, Some("b2")), vol(2, None)];
        // Member 1 runs on a new claim; member 2's claim is missing (being
        // made again): not lost until it exists.
        assert_eq!(
            lost_members(&recorded, &names, &observed),
            [(1, Some("b2".to_string()))]
        );
        // Nothing recorded yet: nothing can be called lost.
        assert!(lost_members(&BTreeMap::new(), &names, &observed).is_empty());
    }

    #[test]
    fn a_member_is_removed_only_when_the_rest_keep_quorum() {
        // 3 members, the lost one aside: both others must be healthy.
        assert!(removal_keeps_quorum(3, 2));
        assert!(!removal_keeps_quorum(3, 1));
        // 5 members: three of the other four.
        assert!(removal_keeps_quorum(5, 3));
        assert!(!removal_keeps_quorum(5, 2));
        // Never the last member.
        assert!(!removal_keeps_quorum(1, 0));
    }
}
