//! The three kstatus conditions of every kok object (`Ready`, `Reconciling`,
//! `Stalled`), from one summary of what a reconcile pass concluded. Each
//! controller decides its summary; only this module turns a summary into
//! conditions, so "stuck" reads the same on every kind: `Stalled` True with
//! `Reconciling` False, because kstatus (and Argo CD, Flux) read `Stalled`
//! only when nothing is in progress.

use kok_crds::condition;

/// One condition to write on the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// What a pass concluded about the whole object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Summary {
    /// The object is what its spec asks for.
    Ready {
        reason: String,
        message: String,
        /// The `Reconciling` False message.
        settled: String,
    },
    /// Moving toward the spec by itself.
    Working {
        reason: String,
        doing: String,
        /// The `Ready` False message; None leaves `Ready` as it was (a
        /// member replaced under a serving control plane).
        not_ready: Option<String>,
        /// Still moving, but not getting anywhere (an upgrade stuck on one
        /// step, a failed preflight): `Stalled` True beside `Reconciling`.
        stuck: Option<(String, String)>,
    },
    /// Will not get there until someone acts.
    Blocked {
        reason: String,
        why: String,
        /// The `Reconciling` False message: whom or what it waits for.
        waiting: String,
        /// The `Ready` False message, when it is not `why`.
        not_ready: Option<String>,
    },
    /// Finished without serving (an expired join token): nothing moves,
    /// nothing is stuck.
    Ended { reason: String, message: String },
    /// `spec.paused`: kok leaves the object as it is; `Ready` as it was.
    Paused { why: String },
}

impl Summary {
    pub fn ready(reason: &str, message: impl Into<String>, settled: impl Into<String>) -> Self {
        Summary::Ready {
            reason: reason.into(),
            message: message.into(),
            settled: settled.into(),
        }
    }

    /// Working, and not Ready while it works, for the same reason.
    pub fn working(reason: &str, doing: impl Into<String>) -> Self {
        let doing = doing.into();
        Summary::Working {
            reason: reason.into(),
            not_ready: Some(doing.clone()),
            doing,
            stuck: None,
        }
    }

    pub fn blocked(reason: &str, why: impl Into<String>, waiting: impl Into<String>) -> Self {
        Summary::Blocked {
            reason: reason.into(),
            why: why.into(),
            waiting: waiting.into(),
            not_ready: None,
        }
    }

    pub fn is_blocked(&self) -> bool {
        matches!(self, Summary::Blocked { .. })
    }

    /// `Ready`, `Reconciling` and `Stalled`, as far as this summary decides
    /// them. `fine`: the reason and message of `Stalled` False when nothing
    /// is stuck (None leaves `Stalled` as it was).
    pub fn conditions(&self, fine: Option<(&str, &str)>) -> Vec<Cond> {
        let cond = |type_, status, reason: &str, message: &str| Cond {
            type_,
            status,
            reason: reason.to_string(),
            message: message.to_string(),
        };
        let mut out = match self {
            Summary::Ready {
                reason,
                message,
                settled,
            } => vec![
                cond(condition::READY, true, reason, message),
                cond(condition::RECONCILING, false, reason, settled),
            ],
            Summary::Working {
                reason,
                doing,
                not_ready,
                stuck,
            } => {
                let mut out: Vec<Cond> = not_ready
                    .iter()
                    .map(|m| cond(condition::READY, false, reason, m))
                    .collect();
                out.push(cond(condition::RECONCILING, true, reason, doing));
                if let Some((r, why)) = stuck {
                    out.push(cond(condition::STALLED, true, r, why));
                }
                out
            }
            Summary::Blocked {
                reason,
                why,
                waiting,
                not_ready,
            } => vec![
                cond(
                    condition::READY,
                    false,
                    reason,
                    not_ready.as_deref().unwrap_or(why),
                ),
                cond(condition::RECONCILING, false, reason, waiting),
                cond(condition::STALLED, true, reason, why),
            ],
            Summary::Ended { reason, message } => vec![
                cond(condition::READY, false, reason, message),
                cond(condition::RECONCILING, false, reason, message),
            ],
            Summary::Paused { why } => {
                vec![cond(condition::RECONCILING, false, "Paused", why)]
            }
        };
        let stalled = out.iter().any(|c| c.type_ == condition::STALLED);
        if let (Some((reason, message)), false) = (fine, stalled) {
            out.push(cond(condition::STALLED, false, reason, message));
        }
        out
    }
}

/// The summary that wins when several steps of one pass concluded something,
/// highest precedence first in `steps`: a step that waits for a person wins
/// over everything (the earliest such step); then `base` when it is itself
/// blocked; then the earliest step still working; then `base`. A working
/// step that leaves `Ready` alone keeps `base`'s `Ready`. `fine` as in
/// `Summary::conditions`.
pub fn combine(base: Summary, steps: &[Summary], fine: Option<(&str, &str)>) -> Vec<Cond> {
    if let Some(blocked) = steps.iter().find(|s| s.is_blocked()) {
        return blocked.conditions(fine);
    }
    if base.is_blocked() {
        return base.conditions(fine);
    }
    let Some(working) = steps.iter().find(|s| matches!(s, Summary::Working { .. })) else {
        return base.conditions(fine);
    };
    let mut out = working.conditions(fine);
    for c in base.conditions(None) {
        if !out.iter().any(|o| o.type_ == c.type_) {
            out.push(c);
        }
    }
    out
}

/// Where an object with phases stands, for [`phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Still moving (Pending, Running, Verifying).
    Running,
    /// Done and serving (Succeeded, Ready).
    Done,
    /// Done without serving, nothing stuck (an expired token).
    Ended,
    /// Will not finish without someone acting.
    Failed,
}

/// The conditions of an object whose phase says it all: the phase's reason
/// and the status message on all three.
pub fn phase(stage: Stage, reason: &str, message: &str) -> Vec<Cond> {
    let summary = match stage {
        Stage::Running => Summary::working(reason, message),
        Stage::Done => Summary::ready(reason, message, message),
        Stage::Ended => Summary::Ended {
            reason: reason.into(),
            message: message.into(),
        },
        Stage::Failed => Summary::blocked(reason, message, message),
    };
    summary.conditions(Some((reason, message)))
}

/// After a failed reconcile: not Ready, and Stalled when retrying the same
/// request cannot help (`permanent`); `Reconciling` is left as it was (a
/// retry follows with backoff either way).
pub fn reconcile_error(reason: &str, message: &str, permanent: bool) -> Vec<Cond> {
    let cond = |type_, status| Cond {
        type_,
        status,
        reason: reason.into(),
        message: message.into(),
    };
    let mut out = vec![cond(condition::READY, false)];
    if permanent {
        out.push(cond(condition::STALLED, true));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(cs: &'a [Cond], type_: &str) -> Option<&'a Cond> {
        cs.iter().find(|c| c.type_ == type_)
    }

    fn status(cs: &[Cond], type_: &str) -> Option<bool> {
        get(cs, type_).map(|c| c.status)
    }

    #[test]
    fn blocked_is_stalled_and_not_reconciling() {
        let cs = Summary::blocked("InvalidSpec", "spec.x: bad", "waiting for the spec")
            .conditions(Some(("SpecValid", "the spec is valid")));
        assert_eq!(status(&cs, condition::READY), Some(false));
        assert_eq!(status(&cs, condition::RECONCILING), Some(false));
        assert_eq!(status(&cs, condition::STALLED), Some(true));
        assert_eq!(get(&cs, condition::STALLED).unwrap().message, "spec.x: bad");
        assert_eq!(
            get(&cs, condition::RECONCILING).unwrap().message,
            "waiting for the spec"
        );
        assert_eq!(cs.len(), 3, "no second Stalled: {cs:?}");
    }

    #[test]
    fn fine_clears_stalled_only_when_nothing_is_stuck() {
        let fine = Some(("SpecValid", "the spec is valid"));
        let ready = Summary::ready("Ready", "serving", "matches").conditions(fine);
        let s = get(&ready, condition::STALLED).unwrap();
        assert_eq!((s.status, s.reason.as_str()), (false, "SpecValid"));
        let stuck = Summary::Working {
            reason: "UpgradeStuck".into(),
            doing: "step 2".into(),
            not_ready: Some("step 2".into()),
            stuck: Some(("UpgradeStuck".into(), "no progress".into())),
        }
        .conditions(fine);
        assert_eq!(status(&stuck, condition::STALLED), Some(true));
        assert_eq!(status(&stuck, condition::RECONCILING), Some(true));
        assert_eq!(
            stuck
                .iter()
                .filter(|c| c.type_ == condition::STALLED)
                .count(),
            1
        );
        // None leaves Stalled to whoever set it.
        let paused = Summary::Paused {
            why: "paused".into(),
        }
        .conditions(None);
        assert_eq!(paused.len(), 1);
        assert_eq!(paused[0].reason, "Paused");
    }

    #[test]
    fn working_without_a_ready_message_leaves_ready_alone() {
        let healing = Summary::Working {
            reason: "HealingEtcd".into(),
            doing: "replacing member 2".into(),
            not_ready: None,
            stuck: None,
        };
        assert_eq!(status(&healing.conditions(None), condition::READY), None);
        let base = Summary::ready("Ready", "serving", "matches");
        let cs = combine(base, &[healing], None);
        let ready = get(&cs, condition::READY).unwrap();
        assert!(ready.status && ready.message == "serving", "{cs:?}");
        let r = get(&cs, condition::RECONCILING).unwrap();
        assert!(r.status && r.reason == "HealingEtcd", "{cs:?}");
    }

    #[test]
    fn precedence_a_person_first_then_the_base_stall_then_work() {
        let base_ok = || Summary::ready("Ready", "serving", "matches");
        let base_stalled = || Summary::blocked("ImagePullBackOff", "etcd: no image", "a change");
        let scaling = || Summary::working("ScalingEtcd", "adding member 3");
        let quorum = || Summary::blocked("EtcdQuorumLost", "2 of 3 lost", "a restore");
        let migration = || Summary::blocked("MigrationFailed", "target failed", "a spec change");

        // Nothing else: the base.
        assert_eq!(combine(base_ok(), &[], None), base_ok().conditions(None));
        // Work over a serving base.
        let cs = combine(base_ok(), &[scaling()], None);
        assert_eq!(get(&cs, condition::READY).unwrap().reason, "ScalingEtcd");
        assert_eq!(status(&cs, condition::RECONCILING), Some(true));
        // A base stall over work: kstatus must not read "in progress".
        let cs = combine(base_stalled(), &[scaling()], None);
        assert_eq!(status(&cs, condition::RECONCILING), Some(false));
        assert_eq!(
            get(&cs, condition::STALLED).unwrap().reason,
            "ImagePullBackOff"
        );
        // A step that waits for a person over both; the first such step wins.
        let cs = combine(base_stalled(), &[migration(), scaling(), quorum()], None);
        assert_eq!(
            get(&cs, condition::STALLED).unwrap().reason,
            "MigrationFailed"
        );
        let cs = combine(base_ok(), &[scaling(), quorum()], None);
        assert_eq!(
            get(&cs, condition::STALLED).unwrap().reason,
            "EtcdQuorumLost"
        );
        assert_eq!(status(&cs, condition::RECONCILING), Some(false));
        // Never both Stalled and Reconciling True from a blocked outcome.
        for steps in [vec![quorum()], vec![scaling(), migration()]] {
            let cs = combine(base_ok(), &steps, None);
            assert!(
                !(status(&cs, condition::STALLED) == Some(true)
                    && status(&cs, condition::RECONCILING) == Some(true))
            );
        }
    }

    #[test]
    fn ended_neither_serves_nor_moves_nor_is_stuck() {
        let cs = Summary::Ended {
            reason: "Expired".into(),
            message: "the token expired".into(),
        }
        .conditions(Some(("Expired", "the token expired")));
        assert_eq!(status(&cs, condition::READY), Some(false));
        assert_eq!(status(&cs, condition::RECONCILING), Some(false));
        assert_eq!(status(&cs, condition::STALLED), Some(false));
    }

    #[test]
    fn a_phase_sets_all_three_with_its_reason_and_message() {
        let table = [
            (Stage::Running, false, true, false),
            (Stage::Done, true, false, false),
            (Stage::Ended, false, false, false),
            (Stage::Failed, false, false, true),
        ];
        for (stage, ready, reconciling, stalled) in table {
            let cs = phase(stage, "Reason", "message");
            assert_eq!(cs.len(), 3, "{stage:?}: {cs:?}");
            assert_eq!(status(&cs, condition::READY), Some(ready), "{stage:?}");
            assert_eq!(
                status(&cs, condition::RECONCILING),
                Some(reconciling),
                "{stage:?}"
            );
            assert_eq!(status(&cs, condition::STALLED), Some(stalled), "{stage:?}");
            assert!(
                cs.iter()
                    .all(|c| c.reason == "Reason" && c.message == "message"),
                "{cs:?}"
            );
        }
    }

    #[test]
    fn a_reconcile_error_stalls_only_when_permanent() {
        let transient = reconcile_error("ReconcileError", "API down", false);
        assert_eq!(status(&transient, condition::READY), Some(false));
        assert_eq!(status(&transient, condition::STALLED), None);
        assert_eq!(status(&transient, condition::RECONCILING), None);
        let permanent = reconcile_error("ReconcileError", "invalid", true);
        assert_eq!(status(&permanent, condition::STALLED), Some(true));
    }
}
