//! Planning an in-place upgrade: from what runs to what the spec asks for,
//! as consecutive minor steps that each respect Kubernetes' version skew
//! policy, with the etcd version paired to each step. Pure: the executor in
//! `controllers` walks the plan one step (and one component) at a time.
//!
//! Rules:
//! - Kubernetes moves one minor at a time; a jump of several minors becomes
//!   one step per minor, walked in order (intermediate steps use the last
//!   patch release of that minor when known, else `.0`).
//! - Within a step: etcd first (a newer etcd serves an older apiserver), then
//!   the apiservers, then controller-manager and scheduler (never newer than
//!   the apiserver).
//! - Downgrades are refused, except a patch downgrade within one minor.
//! - etcd never goes down a minor and moves one minor at a time; it follows
//!   the version kubeadm pairs with each step unless the spec pins one.

use std::fmt;
use std::str::FromStr;

use crate::version::KubeVersion;
use kok_crds::UpgradePhase;

/// An etcd release, `3.MINOR.PATCH` (image tags may carry a `-N` suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EtcdVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl FromStr for EtcdVersion {
    type Err = PlanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PlanError::BadEtcdVersion(s.to_string());
        let core = s.strip_prefix('v').unwrap_or(s);
        let core = core.split('-').next().unwrap_or_default();
        let parts: Vec<u32> = core
            .split('.')
            .map(|p| p.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [major, minor, patch] => Ok(Self {
                major,
                minor,
                patch,
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for EtcdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl EtcdVersion {
    /// The etcd kubeadm pairs with a Kubernetes minor.
    pub fn paired_with(k: KubeVersion) -> Self {
        k.default_etcd_tag()
            .parse()
            .expect("the pairing table holds valid etcd versions")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("downgrade from {from} to {to} is not supported (only a patch downgrade within one minor is)")]
    Downgrade { from: KubeVersion, to: KubeVersion },
    #[error("etcd downgrade from {from} to {to} is not supported")]
    EtcdDowngrade { from: EtcdVersion, to: EtcdVersion },
    #[error("etcd {from} to {to} skips a minor version; etcd upgrades one minor at a time")]
    EtcdSkip { from: EtcdVersion, to: EtcdVersion },
    #[error("{0:?} is not an etcd version like 3.5.12")]
    BadEtcdVersion(String),
}

/// The components a step rolls, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// One member at a time, followers first, the leader last.
    Etcd,
    /// Surge 1, unavailable 0, gated on `/readyz` of the new pods.
    ApiServer,
    /// Controller-manager and scheduler, after every apiserver runs the step's version.
    Controllers,
}

/// One step of a plan: the versions every component runs once it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kube: KubeVersion,
    pub etcd: EtcdVersion,
    /// What this step changes, in order (etcd absent when its version stays).
    pub components: Vec<Component>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (etcd {})", self.kube, self.etcd)
    }
}

/// The last patch release of minors that no longer get patches, so an
/// intermediate step runs a fixed, final build rather than `.0`.
fn final_patch(minor: u32) -> Option<u32> {
    Some(match minor {
        20 => 15,
        21 => 14,
        22 => 17,
        23 => 17,
        24 => 17,
        25 => 16,
        26 => 15,
        27 => 16,
        28 => 15,
        29 => 15,
        _ => return None,
    })
}

/// Where the cluster is and where the spec wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub kube: KubeVersion,
    pub etcd: EtcdVersion,
}

/// The steps from `running` to `target`. `etcd_pinned`: the spec names an
/// etcd version; it is reached at the first step and kept (never lowered by
/// the pairing). Empty when nothing changes.
pub fn plan(
    running: Versions,
    target_kube: KubeVersion,
    etcd_pinned: Option<EtcdVersion>,
) -> Result<Vec<Step>, PlanError> {
    let from = running.kube;
    if target_kube < from && target_kube.minor != from.minor {
        return Err(PlanError::Downgrade {
            from,
            to: target_kube,
        });
    }
    let mut kube_steps = Vec::new();
    if target_kube.minor > from.minor {
        for minor in from.minor + 1..target_kube.minor {
            kube_steps.push(KubeVersion {
                major: from.major,
                minor,
                patch: final_patch(minor).unwrap_or(0),
            });
        }
    }
    if target_kube != from {
        kube_steps.push(target_kube);
    }

    let mut steps = Vec::new();
    let mut etcd = running.etcd;
    let etcd_for = |k: KubeVersion, current: EtcdVersion| -> EtcdVersion {
        let wanted = etcd_pinned.unwrap_or_else(|| EtcdVersion::paired_with(k));
        // The pairing never lowers etcd: a newer etcd serves older apiservers.
        wanted.max(current)
    };
    if let Some(pin) = etcd_pinned {
        if pin < etcd && pin.minor != etcd.minor {
            return Err(PlanError::EtcdDowngrade {
                from: etcd,
                to: pin,
            });
        }
    }
    // An etcd-only change (pin raised with the same Kubernetes version).
    if kube_steps.is_empty() {
        let to = etcd_pinned.unwrap_or(etcd);
        if to == etcd {
            return Ok(Vec::new());
        }
        check_etcd_step(etcd, to)?;
        return Ok(vec![Step {
            kube: from,
            etcd: to,
            components: vec![Component::Etcd],
        }]);
    }
    for kube in kube_steps {
        let to = etcd_for(kube, etcd);
        let mut components = Vec::new();
        if to != etcd {
            check_etcd_step(etcd, to)?;
            components.push(Component::Etcd);
        }
        components.extend([Component::ApiServer, Component::Controllers]);
        steps.push(Step {
            kube,
            etcd: to,
            components,
        });
        etcd = to;
    }
    Ok(steps)
}

fn check_etcd_step(from: EtcdVersion, to: EtcdVersion) -> Result<(), PlanError> {
    if to < from && to.minor != from.minor {
        return Err(PlanError::EtcdDowngrade { from, to });
    }
    if to.major != from.major || to.minor > from.minor + 1 {
        return Err(PlanError::EtcdSkip { from, to });
    }
    Ok(())
}

/// How far the current step has got, as observed. "Rolled" means the
/// workload's controller has seen its template and every pod runs it (no old
/// pod left); readiness is not required, so a pod that flaps never sends the
/// upgrade back a phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rolled {
    /// The etcd image tag every member's pod runs.
    pub etcd_tag: Option<String>,
    /// The Kubernetes version every apiserver pod runs.
    pub apiserver: Option<KubeVersion>,
    /// The version in the apiserver Deployment's template, rolled or not.
    pub apiserver_template: Option<KubeVersion>,
    /// The version in the controller-manager's template, rolled or not.
    pub controllers_template: Option<KubeVersion>,
}

/// The versions each component is rendered at in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendering {
    pub etcd_tag: String,
    pub apiserver: KubeVersion,
    pub controllers: KubeVersion,
    /// The etcd tag the upgrade ends on: the spec's, or when etcd is not
    /// pinned and already runs newer than the pairing, what runs (the
    /// pairing never lowers etcd).
    pub target_etcd_tag: String,
    /// Steps left, the current one included (0: at the target).
    pub steps_left: usize,
    /// `RollingEtcd` or `RollingControlPlane` while a step rolls.
    pub phase: Option<UpgradePhase>,
    /// The step being rolled, for status.
    pub step: Option<Step>,
}

impl Rendering {
    /// Everything renders the spec's versions: no step is left.
    pub fn at_target(&self) -> bool {
        self.steps_left == 0
    }
}

/// The name of the EtcdBackup taken before an upgrade that started at
/// `start` (stable, so a restarted operator finds the one it created).
pub fn preflight_backup_name(
    tenant: &str,
    start: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> String {
    let stamp: String = start
        .0
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect();
    format!("{tenant}-pre-upgrade-{stamp}")
}

/// The etcd tag of a step: the running one when etcd stays, the pinned one
/// when the spec names it, else the tag kubeadm pairs with the step's minor.
fn step_etcd_tag(
    step: &Step,
    running: EtcdVersion,
    running_tag: &str,
    pinned_tag: Option<&str>,
) -> String {
    if step.etcd == running {
        return running_tag.to_string();
    }
    match pinned_tag {
        Some(tag) if tag.parse::<EtcdVersion>().ok() == Some(step.etcd) => tag.to_string(),
        _ => step.kube.default_etcd_tag().to_string(),
    }
}

/// Decides what each component runs in this pass of an upgrade from
/// `running` (kube version, etcd tag: what runs after the last complete
/// rollout; `None` before the first) to the spec's `target` and
/// `target_etcd_tag` (`pinned`: the spec names the etcd version). Stateless
/// on purpose: it depends only on what runs and what was rolled, so a
/// restarted operator computes the same step. Within a step: etcd first,
/// then the apiservers, then controller-manager and scheduler; no component
/// is ever rendered below the version its template already has.
pub fn rendering(
    running: Option<(KubeVersion, &str)>,
    target: KubeVersion,
    target_etcd_tag: &str,
    pinned: bool,
    rolled: &Rolled,
) -> Result<Rendering, PlanError> {
    let Some((kube, etcd_tag)) = running else {
        return Ok(Rendering {
            etcd_tag: target_etcd_tag.to_string(),
            apiserver: target,
            controllers: target,
            target_etcd_tag: target_etcd_tag.to_string(),
            steps_left: 0,
            phase: None,
            step: None,
        });
    };
    let running_etcd = etcd_tag.parse::<EtcdVersion>().ok();
    let wanted_etcd = target_etcd_tag.parse::<EtcdVersion>().ok();
    // The pairing never lowers etcd: unpinned, a newer running etcd stays.
    let final_etcd_tag = match (running_etcd, wanted_etcd) {
        (Some(r), Some(w)) if !pinned && r > w => etcd_tag.to_string(),
        _ => target_etcd_tag.to_string(),
    };
    // An etcd that is not a version (an image by digest) is held as it is
    // while the Kubernetes steps are walked.
    let etcd_known = running_etcd.is_some() && wanted_etcd.is_some();
    let etcd = running_etcd.unwrap_or_else(|| EtcdVersion::paired_with(kube));
    let pin = if !etcd_known {
        Some(etcd)
    } else if pinned {
        wanted_etcd
    } else {
        None
    };
    let steps = plan(Versions { kube, etcd }, target, pin)?;
    let Some(step) = steps.first().cloned() else {
        return Ok(Rendering {
            etcd_tag: final_etcd_tag.clone(),
            apiserver: target,
            controllers: target,
            target_etcd_tag: final_etcd_tag,
            steps_left: 0,
            phase: None,
            step: None,
        });
    };
    let step_tag = if etcd_known {
        step_etcd_tag(&step, etcd, etcd_tag, pinned.then_some(target_etcd_tag))
    } else {
        target_etcd_tag.to_string()
    };
    let etcd_done = rolled.etcd_tag.as_deref() == Some(step_tag.as_str());
    let apiserver_done = rolled.apiserver == Some(step.kube);
    let (mut apiserver, mut controllers, phase) =
        if step.components.contains(&Component::Etcd) && !etcd_done {
            (kube, kube, UpgradePhase::RollingEtcd)
        } else if !apiserver_done {
            (step.kube, kube, UpgradePhase::RollingControlPlane)
        } else {
            (step.kube, step.kube, UpgradePhase::RollingControlPlane)
        };
    // Never backwards within the upgrade: a template already on a newer
    // version of this upgrade keeps it (the skew rules still hold).
    if let Some(t) = rolled
        .apiserver_template
        .filter(|t| *t > apiserver && *t <= step.kube)
    {
        apiserver = t;
    }
    if let Some(t) = rolled
        .controllers_template
        .filter(|t| *t > controllers && *t <= apiserver)
    {
        controllers = t;
    }
    Ok(Rendering {
        etcd_tag: step_tag,
        apiserver,
        controllers,
        target_etcd_tag: final_etcd_tag,
        steps_left: steps.len(),
        phase: Some(phase),
        step: Some(step),
    })
}

/// What runs or is asked for: the Kubernetes version and the etcd tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub kube: String,
    pub etcd: String,
}

impl fmt::Display for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (etcd {})", self.kube, self.etcd)
    }
}

/// The upgrade record after this pass. `running` is what every component
/// runs (unknown before the first complete rollout: nothing to record);
/// `desired` what the spec renders. A new record is started when the two
/// differ and no record for this target is open; it is completed when they
/// agree again. `now` is the time to stamp, RFC 3339.
pub fn track_upgrade(
    current: Option<&kok_crds::UpgradeStatus>,
    running: Option<&Running>,
    desired: &Running,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Option<kok_crds::UpgradeStatus> {
    let Some(running) = running else {
        return current.cloned();
    };
    let open = current.filter(|u| u.phase != UpgradePhase::Completed);
    if running == desired {
        return current.map(|u| match open {
            Some(_) => kok_crds::UpgradeStatus {
                phase: UpgradePhase::Completed,
                completion_time: Some(now.clone()),
                message: Some(format!("every component runs {desired}")),
                step: u.plan.len().saturating_sub(1) as u32,
                ..u.clone()
            },
            None => u.clone(),
        });
    }
    let phase = if running.etcd != desired.etcd {
        UpgradePhase::RollingEtcd
    } else {
        UpgradePhase::RollingControlPlane
    };
    match open {
        Some(u) if u.to == desired.to_string() => {
            Some(kok_crds::UpgradeStatus { phase, ..u.clone() })
        }
        _ => Some(kok_crds::UpgradeStatus {
            from: running.to_string(),
            to: desired.to_string(),
            plan: plan_names(running, desired),
            step: 0,
            phase,
            start_time: Some(now.clone()),
            last_progress_time: Some(now),
            preflight: None,
            preflight_backup: None,
            preflight_passed: false,
            completion_time: None,
            message: None,
        }),
    }
}

/// Stamps the step this pass renders onto an open record: phase, step
/// index and a message naming every component's version. Progress time
/// moves only when the phase or step does, so a step that never moves ends
/// up reported as stuck.
pub fn note_step(
    u: &mut kok_crds::UpgradeStatus,
    r: &Rendering,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) {
    let Some(phase) = r.phase else { return };
    if u.phase == UpgradePhase::Completed {
        return;
    }
    let step = u.plan.len().saturating_sub(r.steps_left) as u32;
    if (u.phase, u.step) != (phase, step) {
        u.last_progress_time = Some(now);
    }
    u.phase = phase;
    u.step = step;
    u.message = r.step.as_ref().map(|s| {
        format!(
            "step {}/{}: {s}; etcd {}, apiservers {}, controllers {}",
            u.step + 1,
            u.plan.len().max(1),
            r.etcd_tag,
            r.apiserver,
            r.controllers
        )
    });
}

/// The plan's steps as shown in status (the target alone when versions do
/// not parse, e.g. an etcd image given by digest).
fn plan_names(running: &Running, desired: &Running) -> Vec<String> {
    let parsed = (
        running.kube.parse::<KubeVersion>(),
        running.etcd.parse::<EtcdVersion>(),
        desired.kube.parse::<KubeVersion>(),
        desired.etcd.parse::<EtcdVersion>(),
    );
    if let (Ok(kube), Ok(etcd), Ok(to), Ok(etcd_to)) = parsed {
        if let Ok(steps) = plan(Versions { kube, etcd }, to, Some(etcd_to)) {
            if !steps.is_empty() {
                return steps.iter().map(ToString::to_string).collect();
            }
        }
    }
    vec![desired.to_string()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> KubeVersion {
        s.parse().unwrap()
    }

    fn e(s: &str) -> EtcdVersion {
        s.parse().unwrap()
    }

    fn at(kube: &str, etcd: &str) -> Versions {
        Versions {
            kube: k(kube),
            etcd: e(etcd),
        }
    }

    fn now(s: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(s.parse().unwrap())
    }

    fn running(kube: &str, etcd: &str) -> Running {
        Running {
            kube: kube.into(),
            etcd: etcd.into(),
        }
    }

    #[test]
    fn an_upgrade_is_recorded_from_start_to_completion() {
        let from = running("v1.20.2", "3.4.23");
        let to = running("v1.20.2", "3.5.16");
        // First creation: nothing runs yet, nothing to record.
        assert_eq!(
            track_upgrade(None, None, &from, now("2026-01-01T00:00:00Z")),
            None
        );
        assert_eq!(
            track_upgrade(None, Some(&from), &from, now("2026-01-01T00:00:00Z")),
            None
        );
        let started = track_upgrade(None, Some(&from), &to, now("2026-01-01T00:01:00Z")).unwrap();
        assert_eq!(started.phase, UpgradePhase::RollingEtcd);
        assert_eq!(started.from, "v1.20.2 (etcd 3.4.23)");
        assert_eq!(started.plan, vec!["v1.20.2 (etcd 3.5.16)"]);
        // A later pass (or a restarted operator) keeps the same record.
        let again = track_upgrade(
            Some(&started),
            Some(&from),
            &to,
            now("2026-01-01T00:02:00Z"),
        )
        .unwrap();
        assert_eq!(again.start_time, started.start_time);
        let done =
            track_upgrade(Some(&again), Some(&to), &to, now("2026-01-01T00:05:00Z")).unwrap();
        assert_eq!(done.phase, UpgradePhase::Completed);
        assert_eq!(done.completion_time, Some(now("2026-01-01T00:05:00Z")));
        // A completed record stays as it is until the next upgrade.
        assert_eq!(
            track_upgrade(Some(&done), Some(&to), &to, now("2026-02-01T00:00:00Z")),
            Some(done.clone())
        );
        let next = running("v1.21.0", "3.5.16");
        let flags =
            track_upgrade(Some(&done), Some(&to), &next, now("2026-02-01T00:00:00Z")).unwrap();
        assert_eq!(flags.phase, UpgradePhase::RollingControlPlane);
        assert_eq!(flags.from, "v1.20.2 (etcd 3.5.16)");
    }

    /// Walks `rendering` as the controller would: each pass rolls what is
    /// rendered, and a step's versions become `running` once all of it rolled.
    fn walk(
        from: (&str, &str),
        to: &str,
        to_etcd: &str,
        pinned: bool,
    ) -> Vec<(String, String, String)> {
        let mut running = (k(from.0), from.1.to_string());
        let mut rolled = Rolled {
            etcd_tag: Some(from.1.into()),
            apiserver: Some(k(from.0)),
            apiserver_template: Some(k(from.0)),
            controllers_template: Some(k(from.0)),
        };
        let mut seen = Vec::new();
        for _ in 0..40 {
            let r = rendering(
                Some((running.0, &running.1)),
                k(to),
                to_etcd,
                pinned,
                &rolled,
            )
            .unwrap();
            // The skew rules hold in every pass.
            assert!(r.controllers <= r.apiserver, "{r:?}");
            assert!(r.apiserver.minor <= r.controllers.minor + 1, "{r:?}");
            seen.push((
                r.etcd_tag.clone(),
                r.apiserver.to_string(),
                r.controllers.to_string(),
            ));
            if r.at_target() {
                return seen;
            }
            rolled = Rolled {
                etcd_tag: Some(r.etcd_tag.clone()),
                apiserver: Some(r.apiserver),
                apiserver_template: Some(r.apiserver),
                controllers_template: Some(r.controllers),
            };
            if r.apiserver == r.controllers
                && rolled.etcd_tag.as_deref() == Some(r.etcd_tag.as_str())
            {
                running = (r.controllers, r.etcd_tag.clone());
            }
        }
        panic!("no convergence: {seen:?}")
    }

    #[test]
    fn a_minor_step_rolls_etcd_then_apiservers_then_controllers() {
        let passes = walk(("v1.21.14", "3.4.13-0"), "v1.22.17", "3.5.0-0", false);
        let t = |e: &str, a: &str, c: &str| (e.to_string(), a.to_string(), c.to_string());
        assert_eq!(
            passes,
            vec![
                t("3.5.0-0", "v1.21.14", "v1.21.14"),
                t("3.5.0-0", "v1.22.17", "v1.21.14"),
                t("3.5.0-0", "v1.22.17", "v1.22.17"),
                t("3.5.0-0", "v1.22.17", "v1.22.17"),
            ]
        );
    }

    #[test]
    fn a_multi_minor_jump_is_walked_to_the_end_without_breaking_skew() {
        let passes = walk(("v1.30.4", "3.5.12-0"), "v1.33.1", "3.5.21-0", false);
        let last = passes.last().unwrap();
        assert_eq!((last.1.as_str(), last.2.as_str()), ("v1.33.1", "v1.33.1"));
        let apiservers: Vec<&str> = passes.iter().map(|p| p.1.as_str()).collect();
        for minor in ["v1.31.0", "v1.32.0"] {
            assert!(
                apiservers.contains(&minor),
                "{minor} is a step: {apiservers:?}"
            );
        }
    }

    #[test]
    fn an_etcd_only_change_and_a_patch_change_each_take_one_step() {
        let passes = walk(("v1.20.2", "3.4.23"), "v1.20.2", "3.5.16", true);
        assert_eq!(passes.first().unwrap().0, "3.5.16");
        assert_eq!(passes.first().unwrap().1, "v1.20.2");
        let passes = walk(("v1.20.2", "3.4.23"), "v1.20.3", "3.4.23", true);
        assert_eq!(
            passes[0],
            (
                "3.4.23".to_string(),
                "v1.20.3".to_string(),
                "v1.20.2".to_string()
            ),
            "the apiservers first, the controllers after"
        );
    }

    #[test]
    fn an_unpinned_etcd_is_never_lowered_by_the_pairing() {
        // etcd 3.5.16 was pinned, then the pin removed: v1.20 pairs 3.4.13.
        let rolled = Rolled {
            etcd_tag: Some("3.5.16".into()),
            apiserver: Some(k("v1.20.2")),
            apiserver_template: Some(k("v1.20.2")),
            controllers_template: Some(k("v1.20.2")),
        };
        let r = rendering(
            Some((k("v1.20.2"), "3.5.16")),
            k("v1.20.2"),
            "3.4.13-0",
            false,
            &rolled,
        )
        .unwrap();
        assert!(r.at_target());
        assert_eq!(
            (r.etcd_tag.as_str(), r.target_etcd_tag.as_str()),
            ("3.5.16", "3.5.16")
        );
        let r = rendering(
            Some((k("v1.20.2"), "3.5.16")),
            k("v1.21.0"),
            "3.4.13-0",
            false,
            &rolled,
        )
        .unwrap();
        assert_eq!(r.etcd_tag, "3.5.16");
    }

    #[test]
    fn a_flapping_pod_never_sends_a_step_backwards() {
        // Step v1.22: etcd moved to 3.5.0-0, the apiservers' template is on
        // v1.22 already; an etcd pod flaps (not rolled per readiness).
        let rolled = Rolled {
            etcd_tag: None,
            apiserver: None,
            apiserver_template: Some(k("v1.22.17")),
            controllers_template: Some(k("v1.21.14")),
        };
        let r = rendering(
            Some((k("v1.21.14"), "3.4.13-0")),
            k("v1.22.17"),
            "3.5.0-0",
            false,
            &rolled,
        )
        .unwrap();
        assert_eq!(
            r.apiserver,
            k("v1.22.17"),
            "the apiservers are not rolled back"
        );
        assert_eq!(r.controllers, k("v1.21.14"));
    }

    #[test]
    fn an_etcd_by_digest_is_held_while_kubernetes_steps_are_walked() {
        let r = rendering(
            Some((k("v1.20.2"), "sha256:abc")),
            k("v1.22.0"),
            "sha256:abc",
            true,
            &Rolled::default(),
        )
        .unwrap();
        assert_eq!(r.steps_left, 2, "one step per minor even so");
        assert_eq!(r.apiserver, k("v1.21.14"));
        assert_eq!(r.controllers, k("v1.20.2"));
        assert_eq!(r.etcd_tag, "sha256:abc");
    }

    #[test]
    fn without_a_known_running_version_everything_renders_the_target() {
        let r = rendering(None, k("v1.20.2"), "3.4.23", true, &Rolled::default()).unwrap();
        assert!(r.at_target());
    }

    #[test]
    fn etcd_versions_parse_from_image_tags() {
        assert_eq!(e("3.5.12-0"), e("3.5.12"));
        assert_eq!(e("v3.4.23").to_string(), "3.4.23");
        assert!("3.5".parse::<EtcdVersion>().is_err());
        assert!("latest".parse::<EtcdVersion>().is_err());
    }

    #[test]
    fn nothing_to_do_is_an_empty_plan() {
        assert!(plan(at("v1.20.2", "3.4.13"), k("v1.20.2"), None)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_patch_step_rolls_apiservers_then_controllers_only() {
        let p = plan(at("v1.20.2", "3.4.13"), k("v1.20.15"), None).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].kube, k("v1.20.15"));
        assert_eq!(
            p[0].components,
            vec![Component::ApiServer, Component::Controllers]
        );
    }

    #[test]
    fn a_jump_of_several_minors_is_walked_one_minor_at_a_time() {
        let p = plan(at("v1.30.4", "3.5.12"), k("v1.33.1"), None).unwrap();
        let kubes: Vec<String> = p.iter().map(|s| s.kube.to_string()).collect();
        assert_eq!(kubes, ["v1.31.0", "v1.32.0", "v1.33.1"]);
        for w in p.windows(2) {
            assert_eq!(w[1].kube.minor, w[0].kube.minor + 1);
            assert!(w[1].etcd >= w[0].etcd, "etcd never goes down");
        }
        assert_eq!(p[2].etcd, e("3.5.21"));
    }

    #[test]
    fn every_plan_from_1_20_to_1_34_respects_the_skew_rules() {
        for from in 20..=34u32 {
            for to in from..=34u32 {
                let running = Versions {
                    kube: KubeVersion {
                        major: 1,
                        minor: from,
                        patch: 1,
                    },
                    etcd: EtcdVersion::paired_with(KubeVersion {
                        major: 1,
                        minor: from,
                        patch: 0,
                    }),
                };
                let target = KubeVersion {
                    major: 1,
                    minor: to,
                    patch: 3,
                };
                let p = plan(running, target, None).unwrap();
                let mut minor = from;
                let mut etcd = running.etcd;
                for step in &p {
                    assert!(step.kube.minor == minor || step.kube.minor == minor + 1);
                    minor = step.kube.minor;
                    assert!(step.etcd.minor <= etcd.minor + 1 && step.etcd >= etcd);
                    assert_eq!(step.components.last(), Some(&Component::Controllers));
                    if step.etcd != etcd {
                        assert_eq!(step.components[0], Component::Etcd, "etcd goes first");
                    }
                    etcd = step.etcd;
                }
                assert_eq!(
                    p.last().map(|s| s.kube),
                    (from != to || target != running.kube).then_some(target)
                );
                assert_eq!(p.len() as u32, (to - from).max(1));
            }
        }
    }

    #[test]
    fn the_3_4_to_3_5_boundary_is_crossed_at_1_22() {
        let p = plan(at("v1.20.2", "3.4.13"), k("v1.23.0"), None).unwrap();
        let etcd: Vec<String> = p.iter().map(|s| s.etcd.to_string()).collect();
        assert_eq!(etcd, ["3.4.13", "3.5.0", "3.5.1"]);
        assert_eq!(
            p[0].kube,
            k("v1.21.14"),
            "an intermediate step runs the final patch"
        );
    }

    #[test]
    fn downgrades_are_refused_except_a_patch_downgrade() {
        assert!(matches!(
            plan(at("v1.31.2", "3.5.15"), k("v1.30.9"), None),
            Err(PlanError::Downgrade { .. })
        ));
        let p = plan(at("v1.31.5", "3.5.15"), k("v1.31.2"), None).unwrap();
        assert_eq!(p.len(), 1);
        assert!(!p[0].components.contains(&Component::Etcd));
    }

    #[test]
    fn etcd_alone_moves_one_minor_and_never_down() {
        // The e2e case: Kubernetes stays, etcd 3.4 -> 3.5.
        let p = plan(at("v1.20.2", "3.4.23"), k("v1.20.2"), Some(e("3.5.16"))).unwrap();
        assert_eq!(
            p,
            vec![Step {
                kube: k("v1.20.2"),
                etcd: e("3.5.16"),
                components: vec![Component::Etcd]
            }]
        );
        assert!(matches!(
            plan(at("v1.20.2", "3.5.16"), k("v1.20.2"), Some(e("3.4.23"))),
            Err(PlanError::EtcdDowngrade { .. })
        ));
        assert!(matches!(
            plan(at("v1.20.2", "3.4.23"), k("v1.20.2"), Some(e("3.6.4"))),
            Err(PlanError::EtcdSkip { .. })
        ));
        // A pinned etcd above the pairing is kept through every step.
        let p = plan(at("v1.20.2", "3.5.16"), k("v1.22.0"), Some(e("3.5.16"))).unwrap();
        assert!(p.iter().all(|s| s.etcd == e("3.5.16")));
    }

    #[test]
    fn a_step_is_stamped_and_progress_moves_only_when_it_does() {
        let from = running("v1.30.2", "3.5.16");
        let to = running("v1.32.1", "3.5.16");
        let t0 = now("2026-01-01T00:00:00Z");
        let mut u = track_upgrade(None, Some(&from), &to, t0.clone()).unwrap();
        assert_eq!(u.plan.len(), 2);
        let rolled = Rolled {
            etcd_tag: Some("3.5.16".into()),
            apiserver: Some(k("v1.30.2")),
            apiserver_template: Some(k("v1.30.2")),
            controllers_template: Some(k("v1.30.2")),
        };
        let r = rendering(
            Some((k("v1.30.2"), "3.5.16")),
            k("v1.32.1"),
            "3.5.16",
            true,
            &rolled,
        )
        .unwrap();
        let t1 = now("2026-01-01T00:01:00Z");
        note_step(&mut u, &r, t1.clone());
        assert_eq!((u.phase, u.step), (UpgradePhase::RollingControlPlane, 0));
        let message = u.message.clone().unwrap();
        assert!(message.starts_with("step 1/2: "), "{message}");
        assert!(message.contains("apiservers v1.31"), "{message}");
        // The record started on this phase and step: no progress since.
        note_step(&mut u, &r, now("2026-01-01T00:09:00Z"));
        assert_eq!(u.last_progress_time, Some(t0));
        // The first step rolled out and is recorded as running: the next
        // step is progress.
        let rolled = Rolled {
            apiserver: Some(k("v1.31.0")),
            apiserver_template: Some(k("v1.31.0")),
            controllers_template: Some(k("v1.31.0")),
            ..rolled
        };
        let r = rendering(
            Some((k("v1.31.0"), "3.5.16")),
            k("v1.32.1"),
            "3.5.16",
            true,
            &rolled,
        )
        .unwrap();
        note_step(&mut u, &r, t1.clone());
        assert_eq!(u.step, 1, "{u:?}");
        assert_eq!(u.last_progress_time, Some(t1));
        // A completed record is never reopened by a stale rendering.
        u.phase = UpgradePhase::Completed;
        note_step(&mut u, &r, now("2026-01-01T00:10:00Z"));
        assert_eq!(u.phase, UpgradePhase::Completed);
    }
}
