//! Live scaling of a tenant's etcd (`spec.etcd.replicas` changed with the
//! `InPlace` strategy): which member moves next, and what each recorded
//! phase means for the rest of the pass. One member at a time:
//!
//! - up: add the next ordinal as a learner (`AddingLearner`), let its pod
//!   start and join with the membership of that moment, promote it once
//!   etcd says it caught up (`Joining`); the apiservers dial it only then;
//! - down: move the apiservers off the highest ordinal (`Draining`), then
//!   remove it from the cluster (`Removing`, leadership moved first); the
//!   StatefulSet shrinks after, and its claim is kept (retired).
//!
//! Scaling 1 -> 3 passes through 2 voting members (quorum 2) for as long as
//! the second learner takes to catch up, as with etcd's own runbook.

use kok_crds::EtcdScaling;
use kok_crds::ScalingPhase::{self, *};

/// The next member to move from `serving` members towards `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Add this ordinal (the next one up).
    Add(i32),
    /// Remove this ordinal (the highest one).
    Remove(i32),
}

pub fn next_move(serving: i32, target: i32) -> Option<Move> {
    use std::cmp::Ordering::*;
    match serving.cmp(&target) {
        Less => Some(Move::Add(serving)),
        Greater if serving > 1 => Some(Move::Remove(serving - 1)),
        _ => None,
    }
}

/// The first phase of a move.
pub fn first_phase(m: Move) -> ScalingPhase {
    match m {
        Move::Add(_) => AddingLearner,
        Move::Remove(_) => Draining,
    }
}

/// The member the apiservers must not dial during this phase: a learner
/// refuses most requests, and a member about to be removed must have no
/// clients left.
pub fn kept_off(s: Option<&EtcdScaling>) -> Option<i32> {
    let s = s?;
    matches!(s.phase, Joining | Draining | Removing).then_some(s.member)
}

/// Whether a member that starts without data must join the running
/// cluster (`existing`): only the learner kok added for this phase.
pub fn joining(s: Option<&EtcdScaling>) -> bool {
    s.is_some_and(|s| s.phase == Joining)
}

/// Whether the recorded scaling still goes where the spec asks. A spec
/// changed back mid-way is followed from the member count reached: the
/// record is closed after its current member and a new one opened.
pub fn towards(s: &EtcdScaling, target: i32) -> bool {
    s.to == target
}

/// `<from> -> <to>` for messages.
pub fn describe(s: &EtcdScaling) -> String {
    let member = match s.phase {
        AddingLearner | Joining => "adding",
        _ => "removing",
    };
    format!(
        "scaling etcd {} -> {} members: {member} member {} ({})",
        s.from, s.to, s.member, s.phase
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn record(member: i32, phase: ScalingPhase) -> EtcdScaling {
        EtcdScaling {
            from: 1,
            to: 3,
            member,
            phase,
            learner_id: None,
            start_time: Time(Timestamp::UNIX_EPOCH),
            message: None,
        }
    }

    #[test]
    fn members_are_added_upwards_and_removed_from_the_top() {
        assert_eq!(next_move(1, 3), Some(Move::Add(1)));
        assert_eq!(next_move(2, 3), Some(Move::Add(2)));
        assert_eq!(next_move(3, 5), Some(Move::Add(3)));
        assert_eq!(next_move(5, 3), Some(Move::Remove(4)));
        assert_eq!(next_move(3, 1), Some(Move::Remove(2)));
        assert_eq!(next_move(2, 1), Some(Move::Remove(1)));
        assert_eq!(next_move(3, 3), None);
        // The last member is never removed.
        assert_eq!(next_move(1, 0), None);
    }

    #[test]
    fn the_apiservers_stay_off_a_learner_and_a_member_on_its_way_out() {
        assert_eq!(kept_off(None), None);
        // Not yet in the membership the apiservers are rendered from.
        assert_eq!(kept_off(Some(&record(1, AddingLearner))), None);
        assert_eq!(kept_off(Some(&record(1, Joining))), Some(1));
        assert_eq!(kept_off(Some(&record(2, Draining))), Some(2));
        assert_eq!(kept_off(Some(&record(2, Removing))), Some(2));
    }

    #[test]
    fn only_the_added_learner_starts_as_existing() {
        assert!(!joining(None));
        assert!(!joining(Some(&record(1, AddingLearner))));
        assert!(joining(Some(&record(1, Joining))));
        assert!(!joining(Some(&record(2, Draining))));
    }

    #[test]
    fn a_record_is_followed_only_while_the_spec_asks_for_its_target() {
        let r = record(1, Joining);
        assert!(towards(&r, 3));
        assert!(!towards(&r, 1));
        assert_eq!(
            describe(&r),
            "scaling etcd 1 -> 3 members: adding member 1 (Joining)"
        );
    }
}
