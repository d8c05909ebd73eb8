//! What a TenantCluster's status says, computed from what was observed of its
//! workloads. Pure: tested on fixtures, no cluster.
//!
//! The rule (kstatus, and what GitOps tools wait on): a component is ready
//! only when its controller has seen the current template (observed
//! generation), every pod runs that template, none of the old ones is left and
//! all are available. A spec change therefore turns `Ready` False and
//! `Reconciling` True until the rollout is over, instead of reporting the old
//! pods as the new state.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kok_crds::condition;

use crate::kstatus::{self, Cond, Summary};
use crate::pod_trouble::PodTrouble;

/// The rollout state of one Deployment or StatefulSet, as read from the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadRollout {
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    /// `spec.replicas`.
    pub desired: i32,
    /// Pods of any template (`status.replicas`).
    pub total: i32,
    /// Pods of the current template.
    pub updated: i32,
    /// Available (Deployments) or ready (StatefulSets) pods.
    pub available: i32,
    /// StatefulSets: `currentRevision == updateRevision`; Deployments: true.
    pub revision_settled: bool,
}

impl WorkloadRollout {
    pub fn from_deployment(d: &Deployment) -> Self {
        let s = d.status.clone().unwrap_or_default();
        Self {
            generation: d.metadata.generation,
            observed_generation: s.observed_generation,
            desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            total: s.replicas.unwrap_or(0),
            updated: s.updated_replicas.unwrap_or(0),
            available: s.available_replicas.unwrap_or(0),
            revision_settled: true,
        }
    }

    pub fn from_statefulset(sts: &StatefulSet) -> Self {
        let s = sts.status.clone().unwrap_or_default();
        let on_delete = sts
            .spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.type_.as_deref())
            == Some("OnDelete");
        let settled = if on_delete {
            // With OnDelete the StatefulSet controller never moves
            // currentRevision: every pod on the update revision is the signal.
            s.update_revision.is_some()
                && s.updated_replicas.unwrap_or(0)
                    >= sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
        } else {
            match (&s.current_revision, &s.update_revision) {
                (Some(c), Some(u)) => c == u,
                // Before the controller has written revisions nothing has rolled.
                _ => false,
            }
        };
        Self {
            generation: sts.metadata.generation,
            observed_generation: s.observed_generation,
            desired: sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            total: s.replicas,
            updated: s.updated_replicas.unwrap_or(0),
            available: s.ready_replicas.unwrap_or(0),
            revision_settled: settled,
        }
    }

    /// Every pod runs the current template and none of an older one is
    /// left; unlike [`Self::pending`], readiness does not matter (an upgrade
    /// step counts as rolled even while a pod restarts).
    pub fn rolled(&self) -> bool {
        let seen = matches!(
            (self.generation, self.observed_generation),
            (Some(g), Some(o)) if o >= g
        );
        seen && self.updated >= self.desired && self.total <= self.desired && self.revision_settled
    }

    /// `None` when the rollout is complete; else what is still rolling, for
    /// the condition message.
    pub fn pending(&self) -> Option<String> {
        let seen = matches!(
            (self.generation, self.observed_generation),
            (Some(g), Some(o)) if o >= g
        ) || self.generation.is_none();
        if !seen {
            return Some("the controller has not yet seen the new template".into());
        }
        if self.updated < self.desired || !self.revision_settled {
            return Some(format!(
                "rolling out: {}/{} pods updated",
                self.updated.min(self.desired),
                self.desired
            ));
        }
        if self.total > self.desired {
            return Some(format!(
                "rolling out: {} old pods still terminating",
                self.total - self.desired
            ));
        }
        if self.available < self.desired {
            return Some(format!(
                "{}/{} pods available",
                self.available, self.desired
            ));
        }
        None
    }
}

/// Everything the tenant's status is computed from.
#[derive(Debug, Clone)]
pub struct Observed {
    /// `None`: not created yet (its dependencies are not ready).
    pub etcd: Option<WorkloadRollout>,
    /// Set while etcd members are being replaced: what is rolling and why it waits.
    pub etcd_rolling: Option<String>,
    pub apiserver: Option<WorkloadRollout>,
    pub controller_manager: Option<WorkloadRollout>,
    pub scheduler: Option<WorkloadRollout>,
    /// The tenant apiserver's `/readyz` through the admin endpoint.
    pub readyz: Result<(), String>,
    /// The apiserver Service has an address users can reach.
    pub endpoint_known: bool,
    /// Why a component's pods do not run (`crate::pod_trouble`), by
    /// condition type; read only for components that are not available.
    pub pod_troubles: Vec<(&'static str, PodTrouble)>,
}

/// One component condition to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentCondition {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The overall kstatus verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub components: Vec<ComponentCondition>,
    /// Ready and not reconciling: every component rolled out and serving.
    pub ready: bool,
    /// Why not ready (the `Ready`/`Reconciling` message), when not.
    pub waiting_for: Option<String>,
    /// A pod trouble waiting will not fix (reason, message): `Stalled`.
    pub stalled: Option<(&'static str, String)>,
}

fn component(
    type_: &'static str,
    w: Option<&WorkloadRollout>,
    extra: Option<&str>,
    trouble: Option<&PodTrouble>,
) -> ComponentCondition {
    let Some(w) = w else {
        return ComponentCondition {
            type_,
            ok: false,
            reason: "NotCreated",
            message: "waiting for the components it depends on".into(),
        };
    };
    let counts = format!("{}/{} available", w.available.min(w.desired), w.desired);
    match (w.pending(), extra, trouble) {
        // The pods' own reason, not just a count.
        (Some(why), _, Some(t)) => ComponentCondition {
            type_,
            ok: false,
            reason: t.problem.reason(),
            message: format!("{why}; {}", t.message),
        },
        (Some(why), _, None) => ComponentCondition {
            type_,
            ok: false,
            reason: if w.updated < w.desired || !w.revision_settled || w.total > w.desired {
                "RollingOut"
            } else {
                "NotAvailable"
            },
            message: why,
        },
        (None, Some(problem), _) => ComponentCondition {
            type_,
            ok: false,
            reason: "NotServing",
            message: format!("{counts}; {problem}"),
        },
        (None, None, _) => ComponentCondition {
            type_,
            ok: true,
            reason: "Available",
            message: format!("{counts}, rolled out"),
        },
    }
}

/// Component conditions and the overall verdict.
pub fn verdict(o: &Observed) -> Verdict {
    let readyz_problem = o.readyz.as_ref().err().map(String::as_str);
    let trouble = |type_: &str| {
        o.pod_troubles
            .iter()
            .find(|(t, _)| *t == type_)
            .map(|(_, trouble)| trouble)
    };
    let etcd = match &o.etcd_rolling {
        Some(why) => ComponentCondition {
            type_: condition::ETCD,
            ok: false,
            reason: "RollingOut",
            message: why.clone(),
        },
        None => component(
            condition::ETCD,
            o.etcd.as_ref(),
            None,
            trouble(condition::ETCD),
        ),
    };
    let components = vec![
        etcd,
        component(
            condition::APISERVER,
            o.apiserver.as_ref(),
            readyz_problem,
            trouble(condition::APISERVER),
        ),
        component(
            condition::CONTROLLER_MANAGER,
            o.controller_manager.as_ref(),
            None,
            trouble(condition::CONTROLLER_MANAGER),
        ),
        component(
            condition::SCHEDULER,
            o.scheduler.as_ref(),
            None,
            trouble(condition::SCHEDULER),
        ),
    ];
    // Only a component that is not available stalls the tenant.
    let stalled = components.iter().filter(|c| !c.ok).find_map(|c| {
        trouble(c.type_)
            .filter(|t| t.permanent)
            .map(|t| (t.problem.reason(), format!("{}: {}", c.type_, t.message)))
    });
    let waiting: Vec<String> = components
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{} ({})", c.type_, c.message))
        .collect();
    let waiting_for = if !waiting.is_empty() {
        Some(format!("waiting for {}", waiting.join(", ")))
    } else if !o.endpoint_known {
        Some("waiting for the apiserver Service to get an address".into())
    } else {
        None
    };
    Verdict {
        ready: waiting_for.is_none(),
        components,
        waiting_for,
        stalled,
    }
}

/// An upgrade that has not completed, as the summary conditions need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpgrade {
    pub from: String,
    pub to: String,
    /// What the current step or the preflight is doing.
    pub doing: String,
    /// No progress for longer than the operator allows.
    pub stuck: bool,
    /// The preflight failed in a way only a person can fix.
    pub preflight_failed: Option<String>,
}

/// `Stalled` False on a tenant whose spec was admitted and nothing is stuck.
pub const SPEC_VALID: (&str, &str) = ("SpecValid", "the spec is valid");

/// The rollout's summary, from the verdict and the upgrade record. Ready
/// only when every component runs what the spec asks for: a step of an
/// upgrade that rolled out completely is not the end of it.
pub fn summary(verdict: &Verdict, upgrade: Option<&OpenUpgrade>) -> Summary {
    let waiting_for = verdict
        .waiting_for
        .clone()
        .or_else(|| upgrade.map(|u| format!("upgrading from {} to {}: {}", u.from, u.to, u.doing)));
    let Some(msg) = waiting_for else {
        return Summary::ready(
            "Ready",
            "the tenant control plane is serving",
            "the control plane matches the spec",
        );
    };
    if let Some((reason, why)) = &verdict.stalled {
        // Waiting will not fix it.
        return Summary::Blocked {
            reason: reason.to_string(),
            why: why.clone(),
            waiting: "waiting for a spec or cluster change".into(),
            not_ready: Some(msg),
        };
    }
    // An upgrade that has not moved for long is stuck: it keeps serving on
    // what runs, and says so instead of just "progressing".
    let stuck = upgrade.is_some_and(|u| u.stuck);
    let reason = if stuck { "UpgradeStuck" } else { "Progressing" };
    let preflight = upgrade.and_then(|u| u.preflight_failed.clone());
    Summary::Working {
        reason: reason.into(),
        doing: msg.clone(),
        not_ready: Some(msg.clone()),
        stuck: preflight
            .map(|why| ("PreflightFailed".to_string(), why))
            .or_else(|| stuck.then(|| (reason.to_string(), msg))),
    }
}

/// Every condition a tenant pass computes, once: the components' and the
/// kstatus ones, where `steps` (highest precedence first: what else the pass
/// concluded, a migration refused, etcd scaling, healing) override the
/// rollout's summary by `kstatus::combine`'s rule.
pub fn conditions(
    verdict: &Verdict,
    upgrade: Option<&OpenUpgrade>,
    steps: &[Summary],
) -> Vec<Cond> {
    let components = verdict.components.iter().map(|c| Cond {
        type_: c.type_,
        status: c.ok,
        reason: c.reason.to_string(),
        message: c.message.clone(),
    });
    components
        .chain(kstatus::combine(
            summary(verdict, upgrade),
            steps,
            Some(SPEC_VALID),
        ))
        .collect()
}

/// How soon a tenant that is not serving is looked at again, by how long it
/// has not been: every 3 s while it starts (a start takes 8 to 30 s), every
/// 15 s after 2 minutes, every minute after 10. A pod that becomes ready
/// wakes the pass anyway (its Deployment or StatefulSet changes), so this
/// only bounds what a tenant that never comes up costs the API: a broken
/// one was re-applied every 3 s, about 20 calls each time.
pub fn progress_poll(not_ready_for: std::time::Duration) -> std::time::Duration {
    let secs = match not_ready_for.as_secs() {
        0..=119 => 3,
        120..=599 => 15,
        _ => 60,
    };
    std::time::Duration::from_secs(secs)
}

/// What decides when a tenant pass looks again.
#[derive(Debug, Clone, Copy)]
pub struct Wake {
    pub ready: bool,
    /// etcd settles its cluster version a moment after the members agree.
    pub etcd_version_known: bool,
    /// A roll or a member move in progress: etcd's progress (a learner
    /// catching up) is not a watched object, so it is polled.
    pub moving_members: bool,
    /// Scaling blocked or quorum lost: a person (or a restore, whose end
    /// wakes the pass) must act; looked at again on the resync, not polled.
    pub waiting_for_person: bool,
    pub next_inspection: std::time::Duration,
    pub not_ready_for: std::time::Duration,
    pub resync: std::time::Duration,
    pub progress_poll: std::time::Duration,
}

/// When a tenant pass looks again.
pub fn next_look(w: &Wake) -> std::time::Duration {
    if w.waiting_for_person {
        w.resync
    } else if w.ready && w.etcd_version_known && !w.moving_members {
        w.resync.min(w.next_inspection)
    } else if w.ready || w.moving_members {
        w.progress_poll
    } else {
        progress_poll(w.not_ready_for)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_tenant_that_never_comes_up_is_polled_less_and_less() {
        use std::time::Duration as D;
        assert_eq!(progress_poll(D::from_secs(0)), D::from_secs(3));
        assert_eq!(progress_poll(D::from_secs(119)), D::from_secs(3));
        assert_eq!(progress_poll(D::from_secs(120)), D::from_secs(15));
        assert_eq!(progress_poll(D::from_secs(3600)), D::from_secs(60));
    }
    use super::*;

    fn done(n: i32) -> WorkloadRollout {
        WorkloadRollout {
            generation: Some(2),
            observed_generation: Some(2),
            desired: n,
            total: n,
            updated: n,
            available: n,
            revision_settled: true,
        }
    }

    fn serving() -> Observed {
        Observed {
            etcd: Some(done(3)),
            etcd_rolling: None,
            apiserver: Some(done(2)),
            controller_manager: Some(done(1)),
            scheduler: Some(done(1)),
            readyz: Ok(()),
            endpoint_known: true,
            pod_troubles: vec![],
        }
    }

    #[test]
    fn a_finished_rollout_is_ready() {
        let v = verdict(&serving());
        assert!(v.ready, "{v:?}");
        assert!(v.components.iter().all(|c| c.ok));
        assert_eq!(v.waiting_for, None);
    }

    #[test]
    fn a_template_change_not_yet_seen_is_not_ready() {
        // The measured bug: after an extraArgs change the old pods were
        // reported as the new state.
        let mut o = serving();
        o.apiserver.as_mut().unwrap().generation = Some(3);
        let v = verdict(&o);
        assert!(!v.ready);
        let api = &v.components[1];
        assert_eq!((api.type_, api.ok), (condition::APISERVER, false));
        assert!(api.message.contains("not yet seen"), "{api:?}");
        assert!(v.waiting_for.unwrap().contains(condition::APISERVER));
    }

    #[test]
    fn a_surge_rollout_is_not_ready_until_the_old_pods_are_gone() {
        let mut o = serving();
        // surge 1: 3 pods, 2 of them new, all available.
        let a = o.apiserver.as_mut().unwrap();
        a.total = 3;
        a.available = 3;
        let v = verdict(&o);
        assert!(!v.ready);
        assert_eq!(v.components[1].reason, "RollingOut");
        assert!(
            v.components[1].message.contains("1 old pods"),
            "{:?}",
            v.components[1]
        );
        // Half-way: 1 of 2 updated.
        let a = o.apiserver.as_mut().unwrap();
        a.updated = 1;
        assert!(verdict(&o).components[1]
            .message
            .contains("1/2 pods updated"));
    }

    #[test]
    fn a_member_replacement_in_progress_is_reported_as_such() {
        let mut o = serving();
        o.etcd_rolling = Some("replacing etcd members one at a time: 1/3".into());
        let v = verdict(&o);
        assert!(!v.ready);
        assert_eq!(v.components[0].reason, "RollingOut");
        assert!(v.components[0].message.contains("1/3"));
    }

    #[test]
    fn a_statefulset_is_rolled_out_only_when_its_revisions_agree() {
        let mut o = serving();
        o.etcd.as_mut().unwrap().revision_settled = false;
        let v = verdict(&o);
        assert!(!v.ready);
        assert_eq!(v.components[0].reason, "RollingOut");
    }

    #[test]
    fn unavailable_pods_and_a_failing_readyz_are_reported_apart() {
        let mut o = serving();
        o.scheduler.as_mut().unwrap().available = 0;
        o.readyz = Err("readyz: etcd not ok".into());
        let v = verdict(&o);
        assert_eq!(v.components[3].reason, "NotAvailable");
        assert_eq!(v.components[1].reason, "NotServing");
        assert!(v.components[1].message.contains("etcd not ok"));
        assert!(!v.ready);
    }

    #[test]
    fn missing_components_and_endpoint_keep_it_reconciling() {
        let mut o = serving();
        o.controller_manager = None;
        assert_eq!(verdict(&o).components[2].reason, "NotCreated");
        let mut o = serving();
        o.endpoint_known = false;
        let v = verdict(&o);
        assert!(!v.ready);
        assert!(v.waiting_for.unwrap().contains("address"));
    }

    #[test]
    fn statefulset_and_deployment_status_are_read_as_kstatus_does() {
        let sts: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"generation": 4},
            "spec": {"replicas": 3, "serviceName": "x", "selector": {},
                     "template": {}},
            "status": {"observedGeneration": 4, "replicas": 3, "readyReplicas": 3,
                       "updatedReplicas": 3, "currentRevision": "r1", "updateRevision": "r2"}
        }))
        .unwrap();
        let w = WorkloadRollout::from_statefulset(&sts);
        assert!(!w.revision_settled);
        assert!(w.pending().is_some());
        // kok's etcd is OnDelete: there currentRevision never moves, and all
        // pods on the update revision is what counts.
        let mut on_delete = sts.clone();
        on_delete.spec.as_mut().unwrap().update_strategy =
            Some(serde_json::from_value(serde_json::json!({"type": "OnDelete"})).unwrap());
        assert_eq!(
            WorkloadRollout::from_statefulset(&on_delete).pending(),
            None
        );
        on_delete.status.as_mut().unwrap().updated_replicas = Some(2);
        assert!(WorkloadRollout::from_statefulset(&on_delete)
            .pending()
            .is_some());
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"generation": 7},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 7, "replicas": 2, "updatedReplicas": 2,
                       "availableReplicas": 2}
        }))
        .unwrap();
        assert_eq!(WorkloadRollout::from_deployment(&d).pending(), None);
        assert!(WorkloadRollout::from_deployment(&d).rolled());
        let mut unready = d.clone();
        unready.status.as_mut().unwrap().available_replicas = Some(1);
        let w = WorkloadRollout::from_deployment(&unready);
        assert!(w.rolled() && w.pending().is_some(), "rolled, not available");
    }

    fn open(stuck: bool, preflight_failed: Option<&str>) -> OpenUpgrade {
        OpenUpgrade {
            from: "v1.30.2".into(),
            to: "v1.31.0".into(),
            doing: "step 1/1: etcd".into(),
            stuck,
            preflight_failed: preflight_failed.map(Into::into),
        }
    }

    fn find<'a>(cs: &'a [Cond], t: &str) -> Vec<&'a Cond> {
        cs.iter().filter(|c| c.type_ == t).collect()
    }

    #[test]
    fn summary_is_ready_only_with_nothing_rolling_and_no_open_upgrade() {
        let done = verdict(&serving());
        let s = summary(&done, None).conditions(None);
        assert!(
            find(&s, condition::READY)[0].status && !find(&s, condition::RECONCILING)[0].status
        );
        assert!(find(&s, condition::STALLED).is_empty());

        // A finished step of an unfinished upgrade: still reconciling.
        let s = summary(&done, Some(&open(false, None))).conditions(None);
        assert!(
            !find(&s, condition::READY)[0].status && find(&s, condition::RECONCILING)[0].status
        );
        assert_eq!(find(&s, condition::READY)[0].reason, "Progressing");
        assert!(find(&s, condition::READY)[0]
            .message
            .contains("upgrading from v1.30.2 to v1.31.0"));

        let mut rolling = serving();
        rolling.apiserver.as_mut().unwrap().updated = 1;
        let s = summary(&verdict(&rolling), None).conditions(None);
        assert!(
            !find(&s, condition::READY)[0].status && find(&s, condition::RECONCILING)[0].status
        );
    }

    #[test]
    fn a_stuck_upgrade_or_failed_preflight_is_stalled_but_reconciling() {
        let done = verdict(&serving());
        let s = summary(&done, Some(&open(true, None))).conditions(None);
        assert_eq!(find(&s, condition::RECONCILING)[0].reason, "UpgradeStuck");
        assert!(find(&s, condition::STALLED)[0].status);
        let s = summary(&done, Some(&open(false, Some("EtcdBackup x failed")))).conditions(None);
        let stalled = find(&s, condition::STALLED);
        assert_eq!(stalled.len(), 1);
        assert_eq!(stalled[0].reason, "PreflightFailed");
        assert_eq!(stalled[0].message, "EtcdBackup x failed");
    }

    fn trouble(permanent: bool) -> PodTrouble {
        PodTrouble {
            pod: "t-apiserver-x".into(),
            problem: crate::pod_trouble::PodProblem::CrashLoop,
            message: "pod t-apiserver-x: container kube-apiserver crash-looping".into(),
            permanent,
        }
    }

    #[test]
    fn a_pods_reason_is_on_its_component_and_a_permanent_one_stalls() {
        let mut o = serving();
        o.apiserver.as_mut().unwrap().available = 0;
        o.pod_troubles = vec![(condition::APISERVER, trouble(false))];
        let v = verdict(&o);
        let api = &v.components[1];
        assert_eq!(api.reason, "CrashLoopBackOff");
        assert!(
            api.message
                .starts_with("0/2 pods available; pod t-apiserver-x"),
            "{api:?}"
        );
        assert_eq!(v.stalled, None);
        let s = summary(&v, None).conditions(None);
        assert!(find(&s, condition::RECONCILING)[0].status);
        assert!(find(&s, condition::STALLED).is_empty());

        o.pod_troubles = vec![(condition::APISERVER, trouble(true))];
        let s = summary(&verdict(&o), None).conditions(None);
        let stalled = find(&s, condition::STALLED);
        assert!(stalled[0].status);
        assert_eq!(stalled[0].reason, "CrashLoopBackOff");
        assert!(stalled[0].message.contains("crash-looping"), "{stalled:?}");
        assert!(
            !find(&s, condition::RECONCILING)[0].status,
            "kstatus: Stalled, not InProgress"
        );
        assert!(!find(&s, condition::READY)[0].status);

        // A component that is available does not stall on an old pod's trouble.
        let mut o = serving();
        o.pod_troubles = vec![(condition::APISERVER, trouble(true))];
        assert_eq!(verdict(&o).stalled, None);
    }

    #[test]
    fn a_pass_computes_every_condition_once_with_precedence() {
        let get = |cs: &[Cond], t: &str| cs.iter().find(|c| c.type_ == t).cloned().unwrap();
        let once = |cs: &[Cond]| {
            for t in [condition::READY, condition::RECONCILING, condition::STALLED] {
                assert_eq!(cs.iter().filter(|c| c.type_ == t).count(), 1, "{t}: {cs:?}");
            }
        };
        // Serving while healing replaces a member: still Ready, reconciling.
        let healing = Summary::Working {
            reason: "HealingEtcd".into(),
            doing: "replacing member 1".into(),
            not_ready: None,
            stuck: None,
        };
        let cs = conditions(&verdict(&serving()), None, &[healing]);
        once(&cs);
        assert!(get(&cs, condition::READY).status);
        assert_eq!(get(&cs, condition::RECONCILING).reason, "HealingEtcd");
        assert_eq!(get(&cs, condition::STALLED).reason, "SpecValid");
        assert!(
            cs.iter().any(|c| c.type_ == condition::APISERVER),
            "components too"
        );

        // A pod that will not run beats scaling's progress...
        let mut o = serving();
        o.apiserver.as_mut().unwrap().available = 0;
        o.pod_troubles = vec![(condition::APISERVER, trouble(true))];
        let scaling = Summary::working("ScalingEtcd", "adding member 3");
        let cs = conditions(&verdict(&o), None, std::slice::from_ref(&scaling));
        once(&cs);
        assert_eq!(get(&cs, condition::STALLED).reason, "CrashLoopBackOff");
        assert!(!get(&cs, condition::RECONCILING).status);
        // ...and a refused migration beats both.
        let refused = Summary::blocked("MigrationFailed", "target failed", "a spec change");
        let cs = conditions(&verdict(&o), None, &[refused, scaling]);
        once(&cs);
        assert_eq!(get(&cs, condition::STALLED).reason, "MigrationFailed");
        assert_eq!(get(&cs, condition::READY).reason, "MigrationFailed");
    }

    #[test]
    fn a_pass_looks_again_by_what_it_waits_for() {
        use std::time::Duration as D;
        let settled = Wake {
            ready: true,
            etcd_version_known: true,
            moving_members: false,
            waiting_for_person: false,
            next_inspection: D::from_secs(120),
            not_ready_for: D::ZERO,
            resync: D::from_secs(300),
            progress_poll: D::from_secs(5),
        };
        assert_eq!(
            next_look(&settled),
            D::from_secs(120),
            "the inspection comes first"
        );
        let w = Wake {
            next_inspection: D::from_secs(900),
            ..settled
        };
        assert_eq!(next_look(&w), D::from_secs(300));
        let w = Wake {
            moving_members: true,
            ..settled
        };
        assert_eq!(next_look(&w), D::from_secs(5));
        let w = Wake {
            etcd_version_known: false,
            ..settled
        };
        assert_eq!(next_look(&w), D::from_secs(5));
        let w = Wake {
            ready: false,
            not_ready_for: D::from_secs(700),
            ..settled
        };
        assert_eq!(next_look(&w), D::from_secs(60));
        // Moving members while not Ready is polled, not backed off.
        let w = Wake {
            ready: false,
            moving_members: true,
            not_ready_for: D::from_secs(700),
            ..settled
        };
        assert_eq!(next_look(&w), D::from_secs(5));
        // A person must act: the resync, even mid-move.
        let w = Wake {
            waiting_for_person: true,
            moving_members: true,
            ..settled
        };
        assert_eq!(next_look(&w), D::from_secs(300));
    }
}
