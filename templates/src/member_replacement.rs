//! Replacing one etcd member (`status.etcdMemberReplacement`), one decision
//! per pass: the recorded phase and what the pass observed for it go in,
//! the one step to take comes out, in the shape of
//! `etcd_roll::next_action`. The controller reads the facts, asks, and acts.
//!
//! The phases: `KeepingVolume` (only for a member replaced because it
//! stayed unhealthy: its volume is kept with its data and its claim
//! released), `Removing` (out of the membership, only while the others keep
//! a healthy quorum), `AddingLearner` (back in without a vote),
//! `Restarting` (started on a fresh volume once the bootstrap ConfigMap
//! lets it join), `Promoting` (a voter once caught up).

use kok_crds::{MemberReplacement, ReplacementPhase};

use crate::membership::removal_keeps_quorum;

/// The member as etcd lists it, found by its peer URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub id: u64,
    pub learner: bool,
}

/// What the pass observed; each phase reads only its own part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// `KeepingVolume`: the member's pod is Ready again, or it serves
    /// quorum reads.
    pub recovered: bool,
    /// `Removing`: the other members serving quorum reads.
    pub healthy_others: usize,
    /// `Removing`: members with a vote.
    pub voting: usize,
    /// `Removing`: the member in the membership.
    pub listed: Option<Listed>,
    /// `AddingLearner`: another member lost its data too.
    pub others_lost: bool,
    /// `Restarting`: the bootstrap ConfigMap said `existing` when the pass
    /// began (it is turned the pass after the learner is added).
    pub joining_rendered: bool,
    /// `Restarting`: the uid of the claim in the member's place now.
    pub claim: Option<String>,
    /// `Restarting`: the uid of the claim the member serves on, on record.
    pub recorded_claim: Option<String>,
    /// `Restarting`: the member's pod exists and is not being deleted.
    pub pod_up: bool,
}

/// The one step of this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Healthy again before anything changed: the replacement is called off.
    CallOff,
    /// Keep its volume (when one is recorded), release the claim it served
    /// on, delete its pod; then `Removing`.
    KeepVolume,
    /// Out of the membership already: on to adding it back.
    Removed,
    /// Wait, saying why.
    Wait(String),
    /// Remove member `id` (recorded first: `AddingLearner`, `removedId`).
    Remove(u64),
    /// A learner with its peer URL is there (a restart between the steps):
    /// record it and go on to `Restarting`.
    LearnerFound(u64),
    /// Add it as a learner (or find the one added before); `hold` keeps it
    /// in this phase: another member lost its data too, and the bootstrap
    /// ConfigMap must not say `existing` while that one could read it.
    AddLearner { hold: bool },
    /// Nothing until the next pass.
    Stay,
    /// A member whose volume was kept runs on the fresh claim `uid` now: it
    /// is restarted once to join (it exited while the ConfigMap was
    /// sealed), then `Promoting`.
    RestartOnFreshClaim(String),
    /// The claim `uid` in its place was written while it could not join:
    /// delete it (by uid) and the pod, so it starts on an empty volume.
    DeleteWrittenClaim(String),
    /// It runs on the fresh claim `uid`: on to `Promoting`.
    Started(String),
    /// No claim yet: a pod stuck on the old one is cleared.
    ClearStuckPod,
    /// Promote the learner `id` once etcd says it caught up.
    Promote(u64),
    /// The learner's id was lost: add it again.
    AddAgain,
}

pub fn next_step(r: &MemberReplacement, o: &Observed) -> Step {
    match r.phase {
        ReplacementPhase::KeepingVolume if o.recovered => Step::CallOff,
        ReplacementPhase::KeepingVolume => Step::KeepVolume,
        ReplacementPhase::Removing => match o.listed {
            Some(Listed { id, learner: true }) => Step::LearnerFound(id),
            Some(Listed { id, .. }) if removal_keeps_quorum(o.voting, o.healthy_others) => {
                Step::Remove(id)
            }
            Some(_) => Step::Wait(format!(
                "waiting: only {} of the other {} members are healthy; removing it would lose quorum",
                o.healthy_others,
                o.voting.saturating_sub(1)
            )),
            None => Step::Removed,
        },
        ReplacementPhase::AddingLearner => Step::AddLearner {
            hold: o.others_lost,
        },
        ReplacementPhase::Restarting if !o.joining_rendered => Step::Stay,
        ReplacementPhase::Restarting if r.kept_volume.is_some() => match &o.claim {
            Some(uid) if Some(uid) != r.lost_claim.as_ref() => {
                Step::RestartOnFreshClaim(uid.clone())
            }
            _ => Step::ClearStuckPod,
        },
        ReplacementPhase::Restarting => match &o.claim {
            Some(uid)
                if Some(uid) == r.lost_claim.as_ref() && Some(uid) != o.recorded_claim.as_ref() =>
            {
                Step::DeleteWrittenClaim(uid.clone())
            }
            Some(uid) if o.pod_up => Step::Started(uid.clone()),
            Some(_) => Step::Stay,
            None => Step::ClearStuckPod,
        },
        ReplacementPhase::Promoting => match r
            .learner_id
            .as_deref()
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            Some(id) => Step::Promote(id),
            None => Step::AddAgain,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use ReplacementPhase::*;

    fn record(phase: ReplacementPhase) -> MemberReplacement {
        MemberReplacement {
            member: 1,
            phase,
            removed_id: None,
            learner_id: None,
            lost_claim: Some("old".into()),
            kept_volume: None,
            detected_time: Time(Timestamp::UNIX_EPOCH),
            message: None,
        }
    }

    fn kept(phase: ReplacementPhase) -> MemberReplacement {
        MemberReplacement {
            kept_volume: Some("pv-1".into()),
            ..record(phase)
        }
    }

    fn removing(listed: Option<Listed>, voting: usize, healthy_others: usize) -> Observed {
        Observed {
            listed,
            voting,
            healthy_others,
            ..Default::default()
        }
    }

    fn restarting(claim: Option<&str>, recorded: Option<&str>, pod_up: bool) -> Observed {
        Observed {
            joining_rendered: true,
            claim: claim.map(Into::into),
            recorded_claim: recorded.map(Into::into),
            pod_up,
            ..Default::default()
        }
    }

    #[test]
    fn a_member_healthy_again_is_left_alone_before_anything_changed() {
        let recovered = Observed {
            recovered: true,
            ..Default::default()
        };
        assert_eq!(next_step(&kept(KeepingVolume), &recovered), Step::CallOff);
        assert_eq!(
            next_step(&kept(KeepingVolume), &Observed::default()),
            Step::KeepVolume
        );
    }

    #[test]
    fn a_voter_is_removed_only_while_the_others_keep_quorum() {
        let voter = Some(Listed {
            id: 7,
            learner: false,
        });
        // 3 voters, the 2 others healthy: 2 of 2 left.
        assert_eq!(
            next_step(&record(Removing), &removing(voter, 3, 2)),
            Step::Remove(7)
        );
        // 3 voters, 1 other healthy: 1 of 2 left is no quorum.
        assert!(matches!(
            next_step(&record(Removing), &removing(voter, 3, 1)),
            Step::Wait(w) if w.contains("only 1 of the other 2")
        ));
        // A learner with its URL: added back before a restart.
        let learner = Some(Listed {
            id: 9,
            learner: true,
        });
        assert_eq!(
            next_step(&record(Removing), &removing(learner, 3, 0)),
            Step::LearnerFound(9)
        );
        // Gone already (removed before a restart).
        assert_eq!(
            next_step(&record(Removing), &removing(None, 2, 2)),
            Step::Removed
        );
    }

    #[test]
    fn the_learner_is_held_while_another_member_lost_its_data() {
        let others_lost = Observed {
            others_lost: true,
            ..Default::default()
        };
        assert_eq!(
            next_step(&record(AddingLearner), &others_lost),
            Step::AddLearner { hold: true }
        );
        assert_eq!(
            next_step(&record(AddingLearner), &Observed::default()),
            Step::AddLearner { hold: false }
        );
    }

    #[test]
    fn a_restart_waits_for_the_configmap_then_starts_on_an_empty_volume() {
        // The ConfigMap did not say `existing` when the pass began.
        let sealed = Observed {
            claim: Some("old".into()),
            ..Default::default()
        };
        assert_eq!(next_step(&record(Restarting), &sealed), Step::Stay);
        // The claim it lost was written meanwhile, and is not the one on record.
        assert_eq!(
            next_step(
                &record(Restarting),
                &restarting(Some("old"), Some("served"), true)
            ),
            Step::DeleteWrittenClaim("old".into())
        );
        // The claim on record is never deleted.
        assert_eq!(
            next_step(
                &record(Restarting),
                &restarting(Some("old"), Some("old"), true)
            ),
            Step::Started("old".into())
        );
        // A fresh claim: promoted once its pod is up.
        assert_eq!(
            next_step(
                &record(Restarting),
                &restarting(Some("fresh"), Some("served"), true)
            ),
            Step::Started("fresh".into())
        );
        assert_eq!(
            next_step(
                &record(Restarting),
                &restarting(Some("fresh"), Some("served"), false)
            ),
            Step::Stay
        );
        assert_eq!(
            next_step(&record(Restarting), &restarting(None, None, false)),
            Step::ClearStuckPod
        );
    }

    #[test]
    fn a_member_whose_volume_was_kept_is_restarted_once_on_its_fresh_claim() {
        assert_eq!(
            next_step(
                &kept(Restarting),
                &restarting(Some("fresh"), Some("old"), true)
            ),
            Step::RestartOnFreshClaim("fresh".into())
        );
        assert_eq!(
            next_step(&kept(Restarting), &restarting(Some("old"), None, true)),
            Step::ClearStuckPod
        );
        assert_eq!(
            next_step(&kept(Restarting), &restarting(None, None, false)),
            Step::ClearStuckPod
        );
    }

    #[test]
    fn promotion_needs_the_learner_id_on_record() {
        let mut r = record(Promoting);
        assert_eq!(next_step(&r, &Observed::default()), Step::AddAgain);
        r.learner_id = Some("2a".into());
        assert_eq!(next_step(&r, &Observed::default()), Step::Promote(0x2a));
        r.learner_id = Some("not hex".into());
        assert_eq!(next_step(&r, &Observed::default()), Step::AddAgain);
    }
}
