//! Which etcd member a backup streams from. A backup needs quorum (for a
//! revision every member agrees on) and one healthy member to read from, not
//! every member: a tenant with a member down is exactly when a fresh backup
//! matters most. Pure: decided from what each member answered.

/// What one member answered when probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberProbe {
    /// The member's name (`<tenant>-etcd-<i>`).
    pub name: String,
    /// The member served a linearizable read: it reached the leader and a
    /// quorum, and has applied everything committed before the read.
    pub serves_quorum_reads: bool,
    pub is_leader: bool,
    /// Raft index the member has applied (how far behind the others it is).
    pub applied_index: u64,
    /// Why it did not answer, when it did not.
    pub error: Option<String>,
}

/// The member a backup streams from, and the health it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSource {
    /// Index into the probes.
    pub member: usize,
    /// Members that served a quorum read.
    pub healthy: usize,
    pub total: usize,
}

/// Picks the member to stream from: a follower that serves quorum reads (the
/// leader's disk and CPU are spared for writes), the most caught up first;
/// the leader only when no follower can. Without quorum no member can serve
/// a consistent read, and the answer says why, per member.
pub fn backup_source(probes: &[MemberProbe]) -> Result<BackupSource, String> {
    let total = probes.len();
    let healthy = probes.iter().filter(|p| p.serves_quorum_reads).count();
    let best = probes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.serves_quorum_reads)
        // false sorts first: followers before the leader, then the highest index.
        .min_by_key(|(i, p)| (p.is_leader, std::cmp::Reverse(p.applied_index), *i));
    match best {
        Some((member, _)) => Ok(BackupSource {
            member,
            healthy,
            total,
        }),
        None => Err(no_quorum(probes)),
    }
}

fn no_quorum(probes: &[MemberProbe]) -> String {
    let total = probes.len();
    let needed = total / 2 + 1;
    let why = probes
        .iter()
        .map(|p| {
            format!(
                "{}: {}",
                p.name,
                p.error.as_deref().unwrap_or("no quorum read")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "etcd has no quorum (a consistent snapshot needs {needed} of {total} members; none could \
         serve a quorum read): {why}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: usize, healthy: bool, leader: bool, applied: u64) -> MemberProbe {
        MemberProbe {
            name: format!("t-etcd-{i}"),
            serves_quorum_reads: healthy,
            is_leader: leader,
            applied_index: applied,
            error: (!healthy).then(|| "connection refused".to_string()),
        }
    }

    #[test]
    fn a_caught_up_follower_serves_when_all_are_healthy() {
        let probes = [
            member(0, true, true, 100),
            member(1, true, false, 98),
            member(2, true, false, 99),
        ];
        let s = backup_source(&probes).unwrap();
        assert_eq!((s.member, s.healthy, s.total), (2, 3, 3));
    }

    #[test]
    fn one_member_down_still_backs_up_from_a_healthy_one() {
        let probes = [
            member(0, true, false, 50),
            member(1, false, false, 0),
            member(2, true, true, 50),
        ];
        let s = backup_source(&probes).unwrap();
        assert_eq!((s.member, s.healthy, s.total), (0, 2, 3));
    }

    #[test]
    fn the_leader_serves_when_no_follower_can() {
        let single = [member(0, true, true, 7)];
        assert_eq!(backup_source(&single).unwrap().member, 0);
        let probes = [
            member(0, false, false, 0),
            member(1, true, true, 9),
            member(2, false, false, 0),
        ];
        // Not reachable here does not mean dead: the leader served a quorum
        // read, so a quorum exists (the others answer it, not us).
        assert_eq!(backup_source(&probes).unwrap().member, 1);
    }

    #[test]
    fn without_quorum_the_refusal_names_quorum_and_every_member() {
        let probes = [
            member(0, false, false, 40),
            member(1, false, false, 0),
            member(2, false, false, 0),
        ];
        let why = backup_source(&probes).unwrap_err();
        assert!(why.contains("no quorum"), "{why}");
        assert!(why.contains("2 of 3"), "{why}");
        for i in 0..3 {
            assert!(
                why.contains(&format!("t-etcd-{i}: connection refused")),
                "{why}"
            );
        }
        assert!(backup_source(&[]).is_err());
    }
}
