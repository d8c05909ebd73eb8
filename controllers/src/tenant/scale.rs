//! Live etcd scaling: `spec.etcd.replicas` changed with the `InPlace`
//! strategy moves the serving member count one member per recorded phase
//! (see `kok_templates::etcd_scale`), recorded in `status.etcdScaling`.
//! Each action reads the membership first (a learner already added, a
//! member already removed is found, not repeated), so a restarted operator
//! whose last status write was lost resumes.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kok_crds::{EtcdScaling, ScalingPhase, TenantCluster, TenantClusterStatus};
use kok_templates::controlplane::{Placement, ETCD_PEER_PORT};
use kok_templates::etcd_scale::{self as es, Move};
use kok_templates::kstatus::Summary;
use kok_templates::restore::member_claim;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::info;

use crate::etcd::membership::{Membership, Removal, Withdrawal};
use crate::etcd::EtcdAccess;
use crate::runtime::apply::only_uid;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};

/// What the scaling did in this pass.
pub(super) enum Scaling {
    /// The member count is what the spec asks.
    Idle,
    /// A member is being added or removed (message for `Reconciling`).
    Moving(String),
    /// Waiting for a person: the message names what to do (for `Stalled`).
    Blocked(String),
}

impl Scaling {
    /// What scaling concluded, for the tenant's kstatus conditions.
    pub(super) fn summary(&self) -> Option<Summary> {
        match self {
            Scaling::Idle => None,
            Scaling::Moving(why) => Some(Summary::working("ScalingEtcd", why.clone())),
            Scaling::Blocked(why) => Some(Summary::blocked(
                "EtcdScalingBlocked",
                why.clone(),
                "waiting for a person",
            )),
        }
    }
}

fn etcd_err(e: impl std::fmt::Display) -> Error {
    Error::Etcd(e.to_string())
}

/// One step of the scaling towards `target` members. `status.etcdReplicas`
/// is the serving count the workloads were rendered with in this pass.
pub(super) async fn step(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    target: i32,
    status: &mut TenantClusterStatus,
) -> Result<Scaling> {
    let serving = status.etcd_replicas.unwrap_or(target);
    let mut s = match status.etcd_scaling.clone() {
        // The spec changed back before this member did anything: start
        // over from the count reached.
        Some(s)
            if !es::towards(&s, target)
                && (s.phase == ScalingPhase::AddingLearner
                    || s.phase == ScalingPhase::Draining) =>
        {
            if s.phase == ScalingPhase::AddingLearner {
                // Added in a pass whose record was lost: never started, so
                // removed (it would hold etcd's one learner slot).
                drop_unstarted_learner(ctx, tc, p, serving, s.member).await?;
            }
            status.etcd_scaling = None;
            return open(ctx, tc, serving, target, status).await;
        }
        Some(s) => s,
        None => return open(ctx, tc, serving, target, status).await,
    };
    let outcome = match s.phase {
        ScalingPhase::AddingLearner => add_learner(ctx, tc, p, &mut s, status).await?,
        ScalingPhase::Joining if !es::towards(&s, target) && target <= s.member => {
            withdraw_learner(ctx, tc, p, &mut s, status).await?
        }
        ScalingPhase::Joining => promote(ctx, tc, p, &mut s, status).await?,
        ScalingPhase::Draining => {
            if super::etcd_roll::apiservers_off(ctx, &p.namespace, &p.names, s.member).await? {
                s.phase = ScalingPhase::Removing;
                s.message = None;
            } else {
                s.message = Some("waiting for the apiservers to stop dialling it".into());
            }
            Step::Wait
        }
        ScalingPhase::Removing => remove(ctx, tc, p, &mut s, status).await?,
    };
    match outcome {
        Step::Wait => {
            let message = match &s.message {
                Some(m) => format!("{}: {m}", es::describe(&s)),
                None => es::describe(&s),
            };
            status.etcd_scaling = Some(s);
            Ok(Scaling::Moving(message))
        }
        Step::Blocked(why) => {
            s.message = Some(why.clone());
            status.etcd_scaling = Some(s);
            Ok(Scaling::Blocked(why))
        }
        Step::MemberDone => {
            let reached = status.etcd_replicas.unwrap_or(target);
            match es::next_move(reached, target) {
                Some(m) => {
                    s.member = match m {
                        Move::Add(i) | Move::Remove(i) => i,
                    };
                    s.phase = es::first_phase(m);
                    s.to = target;
                    s.learner_id = None;
                    s.message = None;
                    let message = es::describe(&s);
                    status.etcd_scaling = Some(s);
                    Ok(Scaling::Moving(message))
                }
                None => {
                    let seconds = (Timestamp::now().as_millisecond()
                        - s.start_time.0.as_millisecond()) as f64
                        / 1000.0;
                    let note = format!(
                        "etcd scaled from {} to {reached} members in {seconds:.1}s",
                        s.from
                    );
                    info!("{note}");
                    ctx.publish(tc, EventType::Normal, "EtcdScaled", "ScaleEtcd", &note)
                        .await;
                    status.etcd_scaling = None;
                    Ok(Scaling::Idle)
                }
            }
        }
    }
}

enum Step {
    Wait,
    MemberDone,
    Blocked(String),
}

/// Opens a scaling record when the serving count differs from the spec.
async fn open(
    ctx: &Context,
    tc: &TenantCluster,
    serving: i32,
    target: i32,
    status: &mut TenantClusterStatus,
) -> Result<Scaling> {
    let Some(m) = es::next_move(serving, target) else {
        return Ok(Scaling::Idle);
    };
    let member = match m {
        Move::Add(i) | Move::Remove(i) => i,
    };
    let s = EtcdScaling {
        from: serving,
        to: target,
        member,
        phase: es::first_phase(m),
        learner_id: None,
        start_time: Time(Timestamp::now()),
        message: None,
    };
    let note = format!("scaling etcd from {serving} to {target} members, one member at a time");
    info!("{note}");
    ctx.publish(tc, EventType::Normal, "EtcdScaling", "ScaleEtcd", &note)
        .await;
    let message = es::describe(&s);
    status.etcd_scaling = Some(s);
    Ok(Scaling::Moving(message))
}

fn peer_url(p: &Placement, i: i32) -> String {
    format!("https://{}:{ETCD_PEER_PORT}", p.names.etcd_member(i))
}

/// The first `count` members, `except` one.
async fn members(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    count: i32,
    except: Option<i32>,
) -> Result<EtcdAccess> {
    let mut access = EtcdAccess::for_generation(&ctx.client, tc, &p.names, count)
        .await
        .map_err(etcd_err)?;
    if let Some(i) = except {
        let name = p.names.etcd_member(i);
        access
            .members
            .retain(|m| m.tls_name.as_deref() != Some(name.as_str()));
    }
    Ok(access)
}

/// Up, first phase: the new ordinal's place is cleared (a claim a
/// scale-down retired is deleted; any other claim stops the scaling), every
/// serving member is healthy, and the member is added as a learner. Then the
/// serving count includes it: the StatefulSet starts its pod next pass,
/// after the bootstrap ConfigMap says `existing` with it in the membership.
async fn add_learner(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    s: &mut EtcdScaling,
    status: &mut TenantClusterStatus,
) -> Result<Step> {
    let k = s.member;
    if !tc.spec.etcd.storage.ephemeral {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &p.namespace);
        let claim_name = member_claim(&p.names, k);
        if let Some(claim) = claims.get_opt(&claim_name).await? {
            if claim.metadata.deletion_timestamp.is_some() {
                s.message = Some(format!("waiting for the old claim {claim_name} to go"));
                return Ok(Step::Wait);
            }
            let uid = claim.uid().unwrap_or_default();
            if status.etcd_retired_claims.get(&claim_name) != Some(&uid) {
                return Ok(Step::Blocked(format!(
                    "PersistentVolumeClaim {claim_name} exists and was not retired by a scale-down of this tenant: it may hold data kok must not delete. Delete it, or set spec.etcd.replicas back to {}",
                    status.etcd_replicas.unwrap_or(k)
                )));
            }
            // Its member was removed from the cluster by kok: its data is
            // a stale copy of what the serving members hold, and a member
            // starting on it would find itself removed and exit.
            let dp = only_uid(Some(uid));
            claims.delete(&claim_name, &dp).await?;
            status.etcd_retired_claims.remove(&claim_name);
            let note = format!(
                "deleted {claim_name}, kept from the scale-down that removed its member, so member {k} starts on a fresh volume"
            );
            ctx.publish(
                tc,
                EventType::Normal,
                "RetiredClaimDeleted",
                "ScaleEtcd",
                &note,
            )
            .await;
            s.message = Some(format!("waiting for the old claim {claim_name} to go"));
            return Ok(Step::Wait);
        }
        // The claim is gone: a record of it, left when the status write of
        // the pass that deleted it was lost, names nothing any more.
        status.etcd_retired_claims.remove(&claim_name);
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace);
    if pods.get_opt(&p.names.etcd_member(k)).await?.is_some() {
        s.message = Some(format!(
            "waiting for the pod of the removed member {k} to go"
        ));
        return Ok(Step::Wait);
    }
    let serving = members(ctx, tc, p, k, None).await?;
    let probes = serving.probe().await;
    if let Some(down) = probes.iter().find(|m| !m.serves_quorum_reads) {
        s.message = Some(format!(
            "waiting: member {} is not healthy ({})",
            down.name,
            down.error.clone().unwrap_or_default()
        ));
        return Ok(Step::Wait);
    }
    let mut membership = Membership::read(&serving).await.map_err(etcd_err)?;
    // Found again if it was added in a pass whose record was not written.
    let id = match membership.add_learner(&peer_url(p, k)).await {
        Ok(id) => id,
        Err(e) => {
            // Right after a promotion etcd refuses a new member for a few
            // seconds (measured: about 7 s) while the promoted one
            // settles: asked again next pass.
            s.message = Some(format!("etcd does not take a learner yet: {e}"));
            return Ok(Step::Wait);
        }
    };
    s.learner_id = Some(format!("{id:x}"));
    s.phase = ScalingPhase::Joining;
    s.message = Some("starting it; promoted once it caught up".into());
    status.etcd_replicas = Some(k + 1);
    let note = format!("added {} as a learner ({id:x})", p.names.etcd_member(k));
    info!("{note}");
    ctx.publish(tc, EventType::Normal, "EtcdMemberAdded", "ScaleEtcd", &note)
        .await;
    Ok(Step::Wait)
}

/// Up, second phase: promote the learner once etcd says it is in sync.
async fn promote(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    s: &mut EtcdScaling,
    status: &mut TenantClusterStatus,
) -> Result<Step> {
    let k = s.member;
    let voters = members(ctx, tc, p, k + 1, Some(k)).await?;
    let mut membership = Membership::read(&voters).await.map_err(etcd_err)?;
    let Some(id) = membership.with_peer_url(&peer_url(p, k)).map(|m| m.id()) else {
        // Not in the membership (removed by hand?): add it again.
        s.phase = ScalingPhase::AddingLearner;
        status.etcd_replicas = Some(k);
        s.message = Some("the learner left the membership; adding it again".into());
        return Ok(Step::Wait);
    };
    if let Err(e) = membership.promote(id).await {
        // Not in sync with the leader yet: its pod is starting or still
        // receiving the snapshot.
        s.message = Some(format!("waiting for the learner to catch up: {e}"));
        return Ok(Step::Wait);
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let claim_name = member_claim(&p.names, k);
    if let Some(uid) = claims.get_opt(&claim_name).await?.and_then(|c| c.uid()) {
        status.etcd_member_claims.insert(claim_name, uid);
    }
    let note = format!(
        "promoted {} ({id:x}) to a voting member",
        p.names.etcd_member(k)
    );
    info!("{note}");
    ctx.publish(
        tc,
        EventType::Normal,
        "EtcdMemberPromoted",
        "ScaleEtcd",
        &note,
    )
    .await;
    Ok(Step::MemberDone)
}

/// The spec asked for fewer members while a learner was joining: the
/// learner (no vote, so no quorum at stake) is removed and its claim retired.
async fn withdraw_learner(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    s: &mut EtcdScaling,
    status: &mut TenantClusterStatus,
) -> Result<Step> {
    let k = s.member;
    let voters = members(ctx, tc, p, k + 1, Some(k)).await?;
    let mut membership = Membership::read(&voters).await.map_err(etcd_err)?;
    let withdrawn = membership
        .withdraw_learner(&peer_url(p, k))
        .await
        .map_err(|e| Error::Etcd(format!("removing learner {k}: {e}")))?;
    if withdrawn == Withdrawal::Voting {
        // Promoted meanwhile: it is a voter now, removed the usual way.
        return promote(ctx, tc, p, s, status).await;
    }
    retire(ctx, p, k, status).await?;
    Ok(Step::MemberDone)
}

/// Down, last phase: with the apiservers off it, the member is removed
/// (leadership moved away first; only if the others keep a healthy
/// quorum). The serving count drops, the StatefulSet shrinks next pass, and
/// the member's claim is kept, recorded as retired.
async fn remove(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    s: &mut EtcdScaling,
    status: &mut TenantClusterStatus,
) -> Result<Step> {
    let k = s.member;
    if !super::etcd_roll::apiservers_off(ctx, &p.namespace, &p.names, k).await? {
        s.phase = ScalingPhase::Draining;
        s.message = Some("the apiservers dial it again; draining".into());
        return Ok(Step::Wait);
    }
    let all = members(ctx, tc, p, k + 1, None).await?;
    let others = members(ctx, tc, p, k + 1, Some(k)).await?;
    let healthy_names: Vec<String> = others
        .probe()
        .await
        .into_iter()
        .filter(|m| m.serves_quorum_reads)
        .map(|m| m.name)
        .collect();
    let healthy = healthy_names.len();
    let mut membership = Membership::read(&others).await.map_err(etcd_err)?;
    let voting = membership.voting();
    let Some(id) = membership.with_peer_url(&peer_url(p, k)).map(|m| m.id()) else {
        // Removed in a pass whose record was not written.
        retire(ctx, p, k, status).await?;
        return Ok(Step::MemberDone);
    };
    if !kok_templates::membership::removal_keeps_quorum(voting, healthy) {
        s.message = Some(format!(
            "waiting: only {healthy} of the other {} members are healthy",
            voting.saturating_sub(1)
        ));
        return Ok(Step::Wait);
    }
    let successor = membership
        .members()
        .iter()
        .find(|m| m.id() != id && !m.is_learner() && healthy_names.iter().any(|n| n == m.name()))
        .map(|m| m.id());
    let own = all
        .members
        .iter()
        .find(|m| m.tls_name.as_deref() == Some(p.names.etcd_member(k).as_str()));
    let removal = membership
        .remove_voter(id, &all, own, successor)
        .await
        .map_err(|e| Error::Etcd(format!("removing member {k}: {e}")))?;
    if let Removal::LeadershipMoved(to) = removal {
        s.message = Some(format!("leadership moved to {to:x}"));
        return Ok(Step::Wait);
    }
    let note = format!(
        "removed {} ({id:x}) from the cluster",
        p.names.etcd_member(k)
    );
    info!("{note}");
    ctx.publish(
        tc,
        EventType::Normal,
        "EtcdMemberRemoved",
        "ScaleEtcd",
        &note,
    )
    .await;
    retire(ctx, p, k, status).await?;
    Ok(Step::MemberDone)
}

/// Removes a learner at ordinal `k` that never started (no record of it
/// survived), from the `serving` voters.
async fn drop_unstarted_learner(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    serving: i32,
    k: i32,
) -> Result<()> {
    let voters = members(ctx, tc, p, serving, None).await?;
    let mut membership = Membership::read(&voters).await.map_err(etcd_err)?;
    membership
        .withdraw_learner(&peer_url(p, k))
        .await
        .map_err(|e| Error::Etcd(format!("removing learner {k}: {e}")))?;
    Ok(())
}

/// Member `k` left the cluster: the serving count drops to `k`, its claim
/// is kept and recorded as retired (a later scale-up may delete it, and
/// only it), and it is no longer watched for data loss.
async fn retire(
    ctx: &Context,
    p: &Placement,
    k: i32,
    status: &mut TenantClusterStatus,
) -> Result<()> {
    status.etcd_replicas = Some(k);
    let claim_name = member_claim(&p.names, k);
    status.etcd_member_claims.remove(&claim_name);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &p.namespace);
    if let Some(uid) = claims.get_opt(&claim_name).await?.and_then(|c| c.uid()) {
        status.etcd_retired_claims.insert(claim_name, uid);
    }
    Ok(())
}
