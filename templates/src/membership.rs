//! Decisions about etcd membership, from what was observed and recorded:
//! which operation holds the members now, which members lost their data,
//! and whether one may be removed.
//!
//! Six operations move etcd members: a restore, a data migration, the
//! quorum-loss repair, a member replacement, a live scaling and the roll
//! onto a new template. Two at once would each see the other's member as
//! down, or act on member IDs the other changed. [`holder`] is the one rule
//! saying which of them may act; every mover asks it.

use std::collections::BTreeMap;

use kok_crds::TenantClusterStatus;

use crate::names::Names;
use crate::restore::member_claim;

/// An operation that moves etcd members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mover {
    /// An EtcdRestore rebuilds every member from a snapshot.
    Restore,
    /// A data migration copies etcd into a new cluster.
    Migration,
    /// A majority of members lost their data.
    QuorumLoss,
    /// One member is removed and added back.
    Replacement,
    /// A live change of the member count, one member at a time.
    Scaling,
    /// Members restart one at a time on a new template.
    Roll,
}

impl std::fmt::Display for Mover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mover::Restore => "etcd restore",
            Mover::Migration => "data migration",
            Mover::QuorumLoss => "quorum-loss repair",
            Mover::Replacement => "etcd member replacement",
            Mover::Scaling => "etcd scaling",
            Mover::Roll => "etcd roll",
        })
    }
}

/// Where a live scaling stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ScalingRecord {
    #[default]
    None,
    /// Open, between two members.
    Between,
    /// A member in flight: a learner joining, or a member leaving.
    InFlight,
}

/// What is on record now: status, the restore annotation, and whether the
/// etcd members run an older template than the StatefulSet's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnRecord {
    pub restore: bool,
    /// A migration that has not finished.
    pub migration: bool,
    pub quorum_loss: bool,
    pub replacement: bool,
    pub scaling: ScalingRecord,
    pub rolling: bool,
}

/// What `status` records, with the restore annotation (`restore`) and
/// whether the members run an older template than the StatefulSet's.
pub fn on_record(status: Option<&TenantClusterStatus>, restore: bool, rolling: bool) -> OnRecord {
    let scaling = status.and_then(|s| s.etcd_scaling.as_ref());
    OnRecord {
        restore,
        migration: status
            .and_then(|s| s.migration.as_ref())
            .is_some_and(|m| !crate::migration::finished(m.phase)),
        quorum_loss: status.is_some_and(|s| s.quorum_loss.is_some()),
        replacement: status.is_some_and(|s| s.etcd_member_replacement.is_some()),
        scaling: match (scaling, crate::etcd_scale::kept_off(scaling)) {
            (None, _) => ScalingRecord::None,
            (Some(_), Some(_)) => ScalingRecord::InFlight,
            (Some(_), None) => ScalingRecord::Between,
        },
        rolling,
    }
}

/// Which operation holds the members: the most senior one on record.
/// Seniority: a restore (it rebuilds everything), a migration (it moves the
/// data elsewhere), a lost quorum, a replacement, a scaling member in flight
/// (etcd takes one learner at a time, and a roll would see it as down), the
/// roll, and last a scaling between members (it waits for the roll).
pub fn holder(r: &OnRecord) -> Option<Mover> {
    let senior_first = [
        (r.restore, Mover::Restore),
        (r.migration, Mover::Migration),
        (r.quorum_loss, Mover::QuorumLoss),
        (r.replacement, Mover::Replacement),
        (r.scaling == ScalingRecord::InFlight, Mover::Scaling),
        (r.rolling, Mover::Roll),
        (r.scaling == ScalingRecord::Between, Mover::Scaling),
    ];
    senior_first
        .into_iter()
        .find_map(|(on, mover)| on.then_some(mover))
}

/// Whether `mover`, on record, may take its next step: only while it holds
/// the members. `Err` names the holder it waits for.
pub fn may_move(mover: Mover, r: &OnRecord) -> Result<(), Mover> {
    match holder(r) {
        Some(h) if h != mover => Err(h),
        _ => Ok(()),
    }
}

/// Whether `mover` may start now, while `r` is on record. Nothing starts
/// beside another mover, except where the newcomer supersedes it:
/// - a restore supersedes a replacement, a scaling and a roll (it rebuilds
///   every member with a new cluster ID, so their records are void), and a
///   lost quorum (whose repair is that restore); never a migration, whose
///   source and target it cannot tell apart;
/// - a lost quorum supersedes a replacement, a scaling and a roll: members
///   that lost their data end every step that counted on them;
/// - a replacement supersedes a scaling between two members (the scaling
///   goes on once the lost member is back); never one with a member in
///   flight, since etcd takes one learner at a time.
pub fn may_start(mover: Mover, r: &OnRecord) -> Result<(), Mover> {
    let Some(h) = holder(r) else {
        return Ok(());
    };
    let supersedes = match mover {
        Mover::Restore => matches!(
            h,
            Mover::QuorumLoss | Mover::Replacement | Mover::Scaling | Mover::Roll
        ),
        Mover::QuorumLoss => matches!(h, Mover::Replacement | Mover::Scaling | Mover::Roll),
        Mover::Replacement => h == Mover::Scaling && r.scaling == ScalingRecord::Between,
        _ => false,
    };
    if h == mover || supersedes {
        Ok(())
    } else {
        Err(h)
    }
}

#[derive(Debug, Clone)]
pub struct MemberVolume {
    pub ordinal: i32,
    /// The claim's uid, unless it is missing or being deleted.
    pub claim_uid: Option<String>,
    pub pod_ready: bool,
}

/// Members whose claim is not the one they were recorded serving on (a new
/// claim: the old one and its data were deleted), with the new claim's uid.
/// A missing claim is not lost yet: the StatefulSet is about to make one.
pub fn lost_members(
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
pub fn removal_keeps_quorum(voting: usize, healthy_others: usize) -> bool {
    let after = voting.saturating_sub(1);
    after > 0 && healthy_others > after / 2
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

    const ALL: [Mover; 6] = [
        Mover::Restore,
        Mover::Migration,
        Mover::QuorumLoss,
        Mover::Replacement,
        Mover::Scaling,
        Mover::Roll,
    ];

    /// `m` alone on record (a scaling with a member in flight).
    fn only(m: Mover) -> OnRecord {
        let mut r = OnRecord::default();
        match m {
            Mover::Restore => r.restore = true,
            Mover::Migration => r.migration = true,
            Mover::QuorumLoss => r.quorum_loss = true,
            Mover::Replacement => r.replacement = true,
            Mover::Scaling => r.scaling = ScalingRecord::InFlight,
            Mover::Roll => r.rolling = true,
        }
        r
    }

    fn both(a: Mover, b: Mover) -> OnRecord {
        let (x, y) = (only(a), only(b));
        OnRecord {
            restore: x.restore || y.restore,
            migration: x.migration || y.migration,
            quorum_loss: x.quorum_loss || y.quorum_loss,
            replacement: x.replacement || y.replacement,
            scaling: if x.scaling != ScalingRecord::None {
                x.scaling
            } else {
                y.scaling
            },
            rolling: x.rolling || y.rolling,
        }
    }

    #[test]
    fn with_nothing_on_record_anything_may_start_and_nothing_holds() {
        let r = OnRecord::default();
        assert_eq!(holder(&r), None);
        for m in ALL {
            assert_eq!(may_start(m, &r), Ok(()), "{m}");
            assert_eq!(may_move(m, &r), Ok(()), "{m}");
        }
    }

    /// Every pair: `on` is on record and `wants` asks to start. The table
    /// says which may; in every other case the one on record holds.
    #[test]
    fn every_pair_of_movers_has_one_answer() {
        use Mover::*;
        let starts = |on: Mover, wants: Mover| -> bool {
            on == wants
                || matches!(
                    (wants, on),
                    (Restore, QuorumLoss | Replacement | Scaling | Roll)
                        | (QuorumLoss, Replacement | Scaling | Roll)
                )
        };
        for on in ALL {
            let r = only(on);
            assert_eq!(holder(&r), Some(on));
            for wants in ALL {
                let expected = if starts(on, wants) { Ok(()) } else { Err(on) };
                assert_eq!(
                    may_start(wants, &r),
                    expected,
                    "{wants} while {on} is on record"
                );
                // Only the holder moves: no second mover takes a step.
                let moves = if wants == on { Ok(()) } else { Err(on) };
                assert_eq!(
                    may_move(wants, &r),
                    moves,
                    "{wants} moving while {on} holds"
                );
            }
        }
    }

    #[test]
    fn two_on_record_the_senior_one_holds_and_alone_moves() {
        use Mover::*;
        let seniority = [Restore, Migration, QuorumLoss, Replacement, Scaling, Roll];
        for (i, senior) in seniority.iter().enumerate() {
            for junior in &seniority[i + 1..] {
                let r = both(*senior, *junior);
                assert_eq!(holder(&r), Some(*senior), "{senior} and {junior}");
                assert_eq!(may_move(*junior, &r), Err(*senior));
                assert_eq!(may_move(*senior, &r), Ok(()));
            }
        }
    }

    #[test]
    fn a_scaling_between_members_waits_for_the_roll_and_one_in_flight_holds_it() {
        let between = OnRecord {
            scaling: ScalingRecord::Between,
            rolling: true,
            ..Default::default()
        };
        assert_eq!(holder(&between), Some(Mover::Roll));
        assert_eq!(may_move(Mover::Scaling, &between), Err(Mover::Roll));
        let in_flight = OnRecord {
            scaling: ScalingRecord::InFlight,
            ..between
        };
        assert_eq!(may_move(Mover::Roll, &in_flight), Err(Mover::Scaling));
        // Alone, a scaling between members moves, and a lost member's
        // replacement may start beside it (and then holds the members).
        let alone = OnRecord {
            scaling: ScalingRecord::Between,
            ..Default::default()
        };
        assert_eq!(may_move(Mover::Scaling, &alone), Ok(()));
        assert_eq!(may_start(Mover::Replacement, &alone), Ok(()));
        let replacing = OnRecord {
            replacement: true,
            ..alone
        };
        assert_eq!(
            may_move(Mover::Scaling, &replacing),
            Err(Mover::Replacement)
        );
        assert_eq!(
            may_start(Mover::Replacement, &in_flight),
            Err(Mover::Scaling),
            "etcd takes one learner at a time"
        );
    }

    #[test]
    fn the_record_is_read_from_status_as_todays_kok_writes_it() {
        // A status as kok writes it: a scaling with a learner joining, a
        // finished migration.
        let status: TenantClusterStatus = serde_json::from_value(serde_json::json!({
            "etcdScaling": {
                "from": 3, "to": 5, "member": 3, "phase": "Joining",
                "startTime": "2026-12-03T10:00:00Z"
            },
            "migration": {
                "phase": "Completed",
                "source": {"version": "1.20.2", "etcdVersion": "3.4.23", "etcdReplicas": 3, "etcdGeneration": 0},
                "target": {"version": "1.20.2", "etcdVersion": "3.5.16", "etcdReplicas": 3, "etcdGeneration": 1}
            }
        }))
        .unwrap();
        let r = on_record(Some(&status), false, true);
        assert_eq!(r.scaling, ScalingRecord::InFlight);
        assert!(!r.migration, "a finished migration holds nothing");
        assert_eq!(holder(&r), Some(Mover::Scaling));
        assert_eq!(holder(&on_record(None, true, false)), Some(Mover::Restore));
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
