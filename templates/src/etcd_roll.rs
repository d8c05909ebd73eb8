//! Rolling a tenant's etcd to a new pod template (a new version, flags,
//! certificates) one member at a time, the way an operator does it by hand:
//! followers first, each one healthy and caught up before the next, and the
//! leader last, after its leadership was moved to an updated member. Pure:
//! the controller observes the members, this decides the one next action.
//!
//! The StatefulSet uses `OnDelete`, so no pod is replaced except by this
//! decision; a restarted operator re-observes and continues (the state is
//! the pods' revisions, nothing else).

/// One member as observed: its pod, and its own answer over the etcd API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberObservation {
    pub ordinal: i32,
    /// The pod's `controller-revision-hash`; `None` when there is no pod.
    pub revision: Option<String>,
    pub pod_ready: bool,
    /// The member answered a status call: its id, raft index, whether it leads.
    pub status: Option<MemberStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberStatus {
    pub member_id: u64,
    pub leader_id: u64,
    pub raft_index: u64,
}

impl MemberObservation {
    fn is_leader(&self) -> bool {
        self.status.is_some_and(|s| s.member_id == s.leader_id)
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollAction {
    /// Every member runs the current template and is healthy.
    Done,
    /// Something is not healthy or caught up yet: act on nothing.
    Wait(String),
    /// Hand leadership to an updated member before the leader is replaced.
    MoveLeader {
        from: i32,
        to_member_id: u64,
        to: i32,
    },
    /// Delete this member's pod; the StatefulSet recreates it on the new template.
    Replace(i32),
}

/// How far behind the leader's raft index a member may be and still count as
/// caught up (etcd's own health check allows a small lag too).
pub const MAX_RAFT_LAG: u64 = 1000;

/// The next action to roll `members` to `update_revision`.
pub fn next_action(update_revision: &str, members: &[MemberObservation]) -> RollAction {
    // A stale member that is down already costs nothing to replace, and
    // replacing it is the only way out when its template is what is broken
    // (a bad image or flag: with OnDelete nothing else would ever replace it).
    if let Some(down) = members.iter().find(|m| {
        m.revision.as_deref().is_some_and(|r| r != update_revision)
            && (!m.pod_ready || m.status.is_none())
    }) {
        return RollAction::Replace(down.ordinal);
    }
    // Otherwise safety first: never take a member down while another is
    // unhealthy, since with 3 members that would lose quorum.
    for m in members {
        if m.revision.is_none() {
            return RollAction::Wait(format!("member {} has no pod yet", m.ordinal));
        }
        if !m.pod_ready {
            return RollAction::Wait(format!("member {} is not ready", m.ordinal));
        }
        if m.status.is_none() {
            return RollAction::Wait(format!("member {} does not answer", m.ordinal));
        }
    }
    if !members.iter().any(MemberObservation::is_leader) {
        return RollAction::Wait("no member reports itself leader".into());
    }
    // The furthest any member got: whoever lags it by much is still catching up.
    let leader_index = members
        .iter()
        .filter_map(|m| m.status.map(|s| s.raft_index))
        .max()
        .unwrap_or(0);
    for m in members {
        let index = m.status.map(|s| s.raft_index).unwrap_or(0);
        if leader_index.saturating_sub(index) > MAX_RAFT_LAG {
            return RollAction::Wait(format!(
                "member {} is catching up (raft index {index} of {leader_index})",
                m.ordinal
            ));
        }
    }
    let stale = |m: &&MemberObservation| m.revision.as_deref() != Some(update_revision);
    // Followers first, highest ordinal first (the StatefulSet's own order).
    if let Some(f) = members
        .iter()
        .filter(stale)
        .filter(|m| !m.is_leader())
        .max_by_key(|m| m.ordinal)
    {
        return RollAction::Replace(f.ordinal);
    }
    let Some(leader) = members.iter().filter(stale).find(|m| m.is_leader()) else {
        return RollAction::Done;
    };
    // Only the leader is left: move leadership to an updated member first,
    // so the cluster never waits out an election while it is replaced.
    match members
        .iter()
        .filter(|m| !stale(m) && !m.is_leader())
        .max_by_key(|m| m.ordinal)
    {
        Some(to) => RollAction::MoveLeader {
            from: leader.ordinal,
            to_member_id: to.status.map(|s| s.member_id).unwrap_or_default(),
            to: to.ordinal,
        },
        // A single member: nobody to hand over to.
        None => RollAction::Replace(leader.ordinal),
    }
}

/// Whether a member chosen by [`next_action`] may be stopped now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceGate {
    /// Delete its pod.
    Go,
    /// First roll the apiservers onto the other members (record the member as
    /// drained; the apiservers render without it).
    Drain,
    /// The apiservers are rolling off it: old pods may still dial it.
    WaitForApiservers,
}

/// etcd 3.4 with TLS serves gRPC inside its HTTP server and stops it
/// abruptly on SIGTERM (etcd#8916): a request in flight on a stopping member
/// fails with an empty HTTP 200 ("missing content-type field"), which the
/// apiserver's etcd client does not retry. So a member that serves is
/// stopped only once no apiserver dials it: the apiservers are first rolled
/// (one surge pod, none unavailable) onto the other members, and every old
/// apiserver pod is gone. `apiservers_off` says the live apiservers run a
/// template without the member and no other pod exists.
pub fn replace_gate(
    target: &MemberObservation,
    members: usize,
    drained: Option<i32>,
    apiservers_off: bool,
) -> ReplaceGate {
    let serving = target.pod_ready && target.status.is_some();
    if members < 2 || !serving {
        // Alone it cannot be avoided; down it serves nothing to drain.
        ReplaceGate::Go
    } else if drained != Some(target.ordinal) {
        ReplaceGate::Drain
    } else if !apiservers_off {
        ReplaceGate::WaitForApiservers
    } else {
        ReplaceGate::Go
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "rev-2";
    const OLD: &str = "rev-1";

    fn member(ordinal: i32, revision: &str, leader: i32) -> MemberObservation {
        MemberObservation {
            ordinal,
            revision: Some(revision.into()),
            pod_ready: true,
            status: Some(MemberStatus {
                member_id: 100 + ordinal as u64,
                leader_id: 100 + leader as u64,
                raft_index: 5000,
            }),
        }
    }

    /// Applies an action to a simulated cluster: replaced members come back
    /// on the new revision; a leader move changes who leads.
    fn simulate(mut members: Vec<MemberObservation>) -> Vec<RollAction> {
        let mut actions = Vec::new();
        for _ in 0..10 {
            let a = next_action(NEW, &members);
            actions.push(a.clone());
            match a {
                RollAction::Done => return actions,
                RollAction::Replace(i) => members[i as usize].revision = Some(NEW.into()),
                RollAction::MoveLeader { to_member_id, .. } => {
                    for m in &mut members {
                        m.status.as_mut().unwrap().leader_id = to_member_id;
                    }
                }
                RollAction::Wait(why) => panic!("unexpected wait: {why}"),
            }
        }
        panic!("no convergence: {actions:?}")
    }

    #[test]
    fn followers_go_first_and_the_leader_last_after_handing_over() {
        let actions = simulate(vec![
            member(0, OLD, 1),
            member(1, OLD, 1),
            member(2, OLD, 1),
        ]);
        assert_eq!(
            actions,
            vec![
                RollAction::Replace(2),
                RollAction::Replace(0),
                RollAction::MoveLeader {
                    from: 1,
                    to_member_id: 102,
                    to: 2
                },
                RollAction::Replace(1),
                RollAction::Done,
            ]
        );
    }

    #[test]
    fn a_single_member_is_replaced_directly() {
        assert_eq!(
            simulate(vec![member(0, OLD, 0)]),
            vec![RollAction::Replace(0), RollAction::Done]
        );
    }

    #[test]
    fn nothing_moves_while_any_member_is_unhealthy_or_behind() {
        let healthy = vec![member(0, NEW, 0), member(1, OLD, 0), member(2, OLD, 0)];
        // Member 0 (updated) is not ready: the stale, healthy ones wait.
        let mut m = healthy.clone();
        m[0].pod_ready = false;
        assert!(matches!(next_action(NEW, &m), RollAction::Wait(w) if w.contains("member 0")));
        let mut m = healthy.clone();
        m[0].status = None;
        assert!(matches!(next_action(NEW, &m), RollAction::Wait(_)));
        let mut m = healthy.clone();
        m[0].revision = None;
        assert!(matches!(next_action(NEW, &m), RollAction::Wait(_)));
        let mut m = healthy.clone();
        m[1].status.as_mut().unwrap().raft_index = 5000 - MAX_RAFT_LAG - 1;
        assert!(
            matches!(next_action(NEW, &m), RollAction::Wait(w) if w.contains("member 1 is catching up"))
        );
        let mut m = healthy.clone();
        for x in &mut m {
            x.status.as_mut().unwrap().leader_id = 0;
        }
        assert!(matches!(next_action(NEW, &m), RollAction::Wait(_)));
        assert_eq!(next_action(NEW, &healthy), RollAction::Replace(2));
    }

    #[test]
    fn a_stale_member_that_is_down_is_replaced_at_once() {
        // Member 1 crash-loops on the old template (or never came up): only a
        // replacement can fix it, and it serves nothing meanwhile.
        let mut m = vec![member(0, NEW, 0), member(1, OLD, 0), member(2, OLD, 0)];
        m[1].pod_ready = false;
        m[1].status = None;
        assert_eq!(next_action(NEW, &m), RollAction::Replace(1));
        // But a member on the new template that is still starting is waited for.
        let mut m = vec![member(0, NEW, 0), member(1, NEW, 0), member(2, OLD, 0)];
        m[1].pod_ready = false;
        assert!(matches!(next_action(NEW, &m), RollAction::Wait(_)));
    }

    #[test]
    fn an_up_to_date_cluster_is_done() {
        let m = vec![member(0, NEW, 2), member(1, NEW, 2), member(2, NEW, 2)];
        assert_eq!(next_action(NEW, &m), RollAction::Done);
    }

    #[test]
    fn a_serving_member_is_stopped_only_after_the_apiservers_left_it() {
        let m = member(2, OLD, 0);
        assert_eq!(replace_gate(&m, 3, None, true), ReplaceGate::Drain);
        // Drained for another member: this one must be drained itself.
        assert_eq!(replace_gate(&m, 3, Some(1), true), ReplaceGate::Drain);
        assert_eq!(
            replace_gate(&m, 3, Some(2), false),
            ReplaceGate::WaitForApiservers
        );
        assert_eq!(replace_gate(&m, 3, Some(2), true), ReplaceGate::Go);
    }

    #[test]
    fn a_lone_or_down_member_is_stopped_without_draining() {
        assert_eq!(
            replace_gate(&member(0, OLD, 0), 1, None, false),
            ReplaceGate::Go
        );
        let mut down = member(1, OLD, 0);
        down.pod_ready = false;
        assert_eq!(replace_gate(&down, 3, None, false), ReplaceGate::Go);
        let mut silent = member(1, OLD, 0);
        silent.status = None;
        assert_eq!(replace_gate(&silent, 3, None, false), ReplaceGate::Go);
    }
}
