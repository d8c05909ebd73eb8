//! Walking the replacement of one etcd member, one recorded step per pass:
//! read what the recorded phase needs, let
//! `kok_templates::member_replacement::next_step` decide, act. Each step is
//! recorded before it acts, so a restart resumes it rather than repeating it.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kok_crds::{MemberReplacement, Repair, ReplacementPhase, TenantCluster, TenantClusterStatus};
use kok_templates::controlplane::{Placement, ETCD_PEER_PORT};
use kok_templates::inspection::{ETCD_MEMBER_LOST, ETCD_MEMBER_UNHEALTHY};
use kok_templates::member_replacement::{next_step, Listed, Observed, Step};
use kok_templates::membership::MemberVolume;
use kok_templates::restore::member_claim;
use kube::api::DeleteParams;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::info;

use super::unhealthy::keep_volume;
use super::Healing;
use crate::etcd::membership::Membership;
use crate::etcd::{EtcdAccess, Member};
use crate::runtime::api::gone_or_replaced_is_done;
use crate::runtime::apply::only_uid;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};

/// What a replacement step must know of the rest of the pass.
pub(super) struct Around {
    /// The bootstrap ConfigMap says `existing` (applied this pass).
    pub joining_rendered: bool,
    /// Another member lost its data too.
    pub others_lost: bool,
}

fn etcd_err(e: impl std::fmt::Display) -> Error {
    Error::Etcd(e.to_string())
}

// Long on purpose (about 210 lines): it reads what the recorded phase needs,
// asks `next_step`, and each arm of one match is one step with the record it
// writes. A step and its record stay side by side, so that what a restart
// resumes from is visibly what was done; the decision itself is pure and
// table-tested in templates/src/member_replacement.rs.
pub(super) async fn replace(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    status: &mut TenantClusterStatus,
    mut r: MemberReplacement,
    observed: &[MemberVolume],
    around: Around,
) -> Result<Healing> {
    let i = r.member;
    let name = p.names.etcd_member(i);
    let peer_url = format!("https://{name}:{ETCD_PEER_PORT}");
    let claim_name = member_claim(&p.names, i);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let access = EtcdAccess::for_tenant(&ctx.client, tc)
        .await
        .map_err(etcd_err)?;
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

    // What the recorded phase needs to know, and nothing more.
    let mut seen = Observed {
        others_lost: around.others_lost,
        joining_rendered: around.joining_rendered,
        ..Default::default()
    };
    let mut membership = None;
    match r.phase {
        ReplacementPhase::KeepingVolume => {
            // Recovered meanwhile (a slow start that finished, kok's own
            // view of it healed).
            seen.recovered = observed.iter().any(|m| m.ordinal == i && m.pod_ready)
                || access
                    .probe()
                    .await
                    .iter()
                    .any(|m| m.name == name && m.serves_quorum_reads);
        }
        ReplacementPhase::Removing => {
            seen.healthy_others = others
                .probe()
                .await
                .iter()
                .filter(|p| p.serves_quorum_reads)
                .count();
            let m = Membership::read(&others).await.map_err(etcd_err)?;
            seen.voting = m.voting();
            seen.listed = m.with_peer_url(&peer_url).map(|m| Listed {
                id: m.id(),
                learner: m.is_learner(),
            });
            membership = Some(m);
        }
        ReplacementPhase::Restarting => {
            seen.claim = observed
                .iter()
                .find(|m| m.ordinal == i)
                .and_then(|m| m.claim_uid.clone());
            seen.recorded_claim = status.etcd_member_claims.get(&claim_name).cloned();
            seen.pod_up = pods
                .get_opt(&name)
                .await?
                .is_some_and(|p| p.metadata.deletion_timestamp.is_none());
        }
        ReplacementPhase::AddingLearner | ReplacementPhase::Promoting => {}
    }

    match next_step(&r, &seen) {
        Step::CallOff => {
            let note = format!(
                "etcd member {name} is healthy again: its replacement is called off before anything was changed"
            );
            info!("{note}");
            ctx.publish(tc, EventType::Normal, "EtcdMemberRecovered", "Heal", &note)
                .await;
            status.etcd_member_replacement = None;
            return Ok(Healing::Idle);
        }
        Step::KeepVolume => {
            // The volume is kept before its claim is released, and the claim
            // released while the ConfigMap is still sealed: the member's old
            // data is never started on as a learner, and a member without data
            // exits until it is re-added.
            if let Some(pv) = &r.kept_volume {
                keep_volume(ctx, tc, pv, &claim_name).await?;
            }
            if let Some(uid) = &r.lost_claim {
                // By uid: never a claim made since (a repeat of this step).
                gone_or_replaced_is_done(
                    claims
                        .delete(&claim_name, &only_uid(Some(uid.clone())))
                        .await,
                )?;
            }
            gone_or_replaced_is_done(pods.delete(&name, &DeleteParams::default()).await)?;
            r.phase = ReplacementPhase::Removing;
            r.message = Some("its volume is kept and its claim released".into());
        }
        Step::Wait(why) => r.message = Some(why),
        Step::LearnerFound(id) => {
            r.learner_id = Some(format!("{id:x}"));
            r.phase = ReplacementPhase::Restarting;
        }
        Step::Removed => r.phase = ReplacementPhase::AddingLearner,
        Step::Remove(id) => {
            let membership = membership
                .as_mut()
                .ok_or_else(|| Error::Etcd("the membership was not read".into()))?;
            r.removed_id = Some(format!("{id:x}"));
            // Recorded before it acts: a restart resumes, not repeats.
            r.phase = ReplacementPhase::AddingLearner;
            status.etcd_member_replacement = Some(r.clone());
            // It lost its data or was stopped: it does not lead.
            membership
                .remove(id)
                .await
                .map_err(|e| Error::Etcd(format!("removing member {name}: {e}")))?;
            let note = format!("removed etcd member {name} ({id:x}) from the cluster");
            info!("{note}");
            ctx.publish(tc, EventType::Normal, "EtcdMemberRemoved", "Heal", &note)
                .await;
        }
        Step::AddLearner { hold } => {
            let mut membership = Membership::read(&others).await.map_err(etcd_err)?;
            let id = membership
                .add_learner(&peer_url)
                .await
                .map_err(|e| Error::Etcd(format!("adding {name} as a learner: {e}")))?;
            r.learner_id = Some(format!("{id:x}"));
            // The next pass turns the bootstrap ConfigMap to `existing`:
            // not while another member is lost too (it would read it).
            if hold {
                r.message = Some("waiting: another member lost its data too".into());
            } else {
                r.phase = ReplacementPhase::Restarting;
            }
        }
        // The bootstrap ConfigMap said `new` when this pass began: the
        // member restarts once it says `existing` (next pass).
        Step::Stay => {}
        Step::RestartOnFreshClaim(uid) => {
            r.phase = ReplacementPhase::Promoting;
            r.lost_claim = Some(uid);
            status.etcd_member_replacement = Some(r.clone());
            gone_or_replaced_is_done(pods.delete(&name, &DeleteParams::default()).await)?;
            return Ok(Healing::Replacing(progress(
                &r,
                "restarted on its fresh volume to join",
            )));
        }
        Step::DeleteWrittenClaim(uid) => {
            // Never the claim the member served on (`next_step` checks).
            gone_or_replaced_is_done(claims.delete(&claim_name, &only_uid(Some(uid))).await)?;
            gone_or_replaced_is_done(pods.delete(&name, &DeleteParams::default()).await)?;
            return Ok(Healing::Replacing(progress(
                &r,
                "starting it on a fresh volume",
            )));
        }
        Step::Started(uid) => {
            r.phase = ReplacementPhase::Promoting;
            r.lost_claim = Some(uid);
        }
        Step::ClearStuckPod => clear_stuck_pod(&pods, &name).await?,
        Step::AddAgain => {
            r.phase = ReplacementPhase::AddingLearner;
            status.etcd_member_replacement = Some(r.clone());
            return Ok(Healing::Replacing(progress(
                &r,
                "the learner's id was lost; adding again",
            )));
        }
        Step::Promote(id) => {
            let mut membership = Membership::read(&others).await.map_err(etcd_err)?;
            // Promoted already (a restart after the promotion, before its
            // record was written) counts: it finishes instead of asking
            // again forever.
            match membership.promote(id).await {
                Ok(_) => {
                    promoted(ctx, p, status, &r);
                    let note = format!(
                        "etcd member {name} replaced: promoted from learner, {:.1}s after its data loss was found",
                        seconds_since(&r.detected_time)
                    );
                    info!("{note}");
                    ctx.publish(tc, EventType::Normal, "EtcdMemberReplaced", "Heal", &note)
                        .await;
                    return Ok(Healing::Idle);
                }
                Err(e) => {
                    let pod_note = learner_pod(&pods, &name).await?;
                    let why = format!("waiting for the learner to catch up ({pod_note}): {e}");
                    r.message = Some(why);
                }
            }
        }
    }
    let message = progress(&r, r.message.as_deref().unwrap_or(""));
    status.etcd_member_replacement = Some(r);
    Ok(Healing::Replacing(message))
}

fn seconds_since(t: &Time) -> f64 {
    (Timestamp::now().as_millisecond() - t.0.as_millisecond()) as f64 / 1000.0
}

/// The replacement is done: the claim the member serves on is recorded,
/// the repair counted and kept in status, and the record closed.
fn promoted(ctx: &Context, p: &Placement, status: &mut TenantClusterStatus, r: &MemberReplacement) {
    let name = p.names.etcd_member(r.member);
    if let Some(uid) = r.lost_claim.clone() {
        status
            .etcd_member_claims
            .insert(member_claim(&p.names, r.member), uid);
    }
    let now = Timestamp::now();
    let seconds = seconds_since(&r.detected_time);
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
    crate::tenant::repairs::push_repair(
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
}

/// How the learner's pod is doing while etcd says it has not caught up. A
/// learner whose pod crash-loops started before the bootstrap ConfigMap let
/// it join; it would only wait out its back-off (up to 5 minutes), so it is
/// restarted now.
async fn learner_pod(pods: &Api<Pod>, name: &str) -> Result<String> {
    let pod = pods.get_opt(name).await?;
    Ok(match pod.as_ref().and_then(waiting_reason).as_deref() {
        Some("CrashLoopBackOff") => {
            gone_or_replaced_is_done(pods.delete(name, &DeleteParams::default()).await)?;
            info!(pod = %name, "restarted a crash-looping learner to join now");
            "its pod was crash-looping: restarted".to_string()
        }
        Some(reason) => format!("its pod is waiting: {reason}"),
        None if pod.is_none() => "its pod is not there yet".to_string(),
        None => "its pod is running".to_string(),
    })
}

/// Why the pod's first waiting container waits (`CrashLoopBackOff`, ...).
fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
}

/// A member's pod that cannot go by itself: Pending on a claim that is
/// gone (it never ran; the StatefulSet makes both again once it is
/// deleted), or still Terminating a minute past its grace period (its node
/// is gone, no kubelet confirms). Called only for a member already removed
/// from etcd whose new pod starts on another claim, so nothing runs twice
/// on one volume.
async fn clear_stuck_pod(pods: &Api<Pod>, name: &str) -> Result<()> {
    let Some(pod) = pods.get_opt(name).await? else {
        return Ok(());
    };
    let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
    match &pod.metadata.deletion_timestamp {
        None if pending => Ok(gone_or_replaced_is_done(
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
            Ok(gone_or_replaced_is_done(pods.delete(name, &dp).await)?)
        }
        _ => Ok(()),
    }
}

/// A replacement resumed by a new process from its record alone, against a
/// fake management API: it takes the recorded phase's next step and no earlier one.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake_api::{self, Answer, Requests, Seen};
    use serde_json::json;

    const NS: &str = "team-a";

    fn tenant() -> TenantCluster {
        serde_json::from_value(json!({
            "apiVersion": "kok.dev/v1alpha1", "kind": "TenantCluster",
            "metadata": {"name": "t", "namespace": NS, "uid": "u-1", "generation": 1},
            "spec": {"version": "v1.20.2",
                     "etcd": {"replicas": 3, "version": "3.4.23", "storage": {"size": "1Gi"}}},
            "status": {"etcdReplicas": 3},
        }))
        .unwrap()
    }

    /// A running tenant of 3 members: its etcd access Secrets, member
    /// Services, and the pod of member 1.
    fn cluster(seen: &Seen) -> Answer {
        let name = seen.path.rsplit('/').next().unwrap_or_default();
        let secret = |data: serde_json::Value| {
            (
                200,
                json!({"apiVersion": "v1", "kind": "Secret",
                         "metadata": {"name": name, "namespace": NS}, "data": data}),
            )
        };
        let b64 = |s: &str| json!(k8s_openapi::ByteString(s.as_bytes().to_vec()));
        match (seen.method.as_str(), seen.path.as_str()) {
            ("GET", p) if p.ends_with("/secrets/t-etcd-ca") => {
                secret(json!({"tls.crt": b64("ca")}))
            }
            ("GET", p) if p.ends_with("/secrets/t-certs") => secret(json!({
                "etcd-operator-client.crt": b64("crt"), "etcd-operator-client.key": b64("key")})),
            ("GET", p) if p.contains("/services/t-etcd-") => (
                200,
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                       "spec": {"clusterIP": "10.96.0.1"}}),
            ),
            ("GET", p) if p.ends_with("/pods/t-etcd-1") => (
                200,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}}),
            ),
            ("DELETE", _) => (
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
            _ => fake_api::empty_cluster(seen),
        }
    }

    fn record(lost_claim: &str) -> MemberReplacement {
        MemberReplacement {
            member: 1,
            phase: ReplacementPhase::Restarting,
            removed_id: Some("aa".into()),
            learner_id: Some("bb".into()),
            lost_claim: Some(lost_claim.into()),
            kept_volume: None,
            detected_time: Time(Timestamp::now()),
            message: None,
        }
    }

    async fn resume(r: MemberReplacement, claim_now: &str) -> (TenantClusterStatus, Requests) {
        let (client, requests) = fake_api::client(cluster);
        let ctx = fake_api::context(client);
        let tc = tenant();
        let mut status = tc.status.clone().unwrap();
        // The claim member 1 served on before it lost its data.
        status
            .etcd_member_claims
            .insert("data-t-etcd-1".into(), "served".into());
        status.etcd_member_replacement = Some(r.clone());
        let observed = [MemberVolume {
            ordinal: 1,
            claim_uid: Some(claim_now.into()),
            pod_ready: false,
        }];
        let around = Around {
            joining_rendered: true,
            others_lost: false,
        };
        let healing = replace(
            &ctx,
            &tc,
            &fake_api::placement(&tc),
            &mut status,
            r,
            &observed,
            around,
        )
        .await
        .expect("the step runs on the API alone");
        assert!(matches!(healing, Healing::Replacing(_)));
        (status, requests)
    }

    #[tokio::test]
    async fn resumed_on_the_claim_it_wrote_it_deletes_that_claim_by_uid_and_nothing_else() {
        let (status, requests) = resume(record("written"), "written").await;

        let deletes: Vec<Seen> = requests.other_writes();
        assert_eq!(deletes.len(), 2, "{deletes:?}");
        assert!(deletes[0]
            .path
            .ends_with("/persistentvolumeclaims/data-t-etcd-1"));
        assert_eq!(
            deletes[0].body["preconditions"]["uid"], "written",
            "by uid: never a claim made since"
        );
        assert!(deletes[1].path.ends_with("/pods/t-etcd-1"));
        let r = status.etcd_member_replacement.expect("still replacing");
        assert_eq!(
            r.phase,
            ReplacementPhase::Restarting,
            "the same step until the pod is up"
        );
    }

    #[tokio::test]
    async fn resumed_with_its_pod_up_on_a_fresh_claim_it_moves_to_promoting_without_a_write() {
        let (status, requests) = resume(record("written"), "fresh").await;

        assert!(
            requests.other_writes().is_empty(),
            "{:?}",
            requests.other_writes()
        );
        let r = status.etcd_member_replacement.expect("still replacing");
        assert_eq!(r.phase, ReplacementPhase::Promoting);
        assert_eq!(
            r.lost_claim.as_deref(),
            Some("fresh"),
            "the claim it now serves on"
        );
        assert_eq!(
            r.learner_id.as_deref(),
            Some("bb"),
            "the learner is not added again"
        );
    }
}
