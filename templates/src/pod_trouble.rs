//! Why a component's pods do not run, read from the pods' own status: what a
//! person needs instead of "0/1 pods available" (the waiting reason, the
//! last crash's message, the scheduler's verdict), and whether waiting will
//! help. Pure: the controller lists the pods, this reads them.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;

/// A crash loop this long is not start-up noise: the same container keeps
/// failing (an argument the binary refuses, a data directory it cannot write).
pub const CRASH_LOOP_STALLS_AFTER_RESTARTS: i32 = 5;
/// A pod no node can take for this long will not be placed by waiting (no
/// autoscaler added a node in that time).
pub const UNSCHEDULABLE_STALLS_AFTER_SECS: i64 = 300;
/// Messages are cut to this many characters: they go into a condition.
const MESSAGE_LIMIT: usize = 300;

/// The kinds of trouble a pod reports, each a condition reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodProblem {
    /// ErrImagePull or ImagePullBackOff: the image cannot be fetched.
    ImagePull,
    /// The image reference is malformed: no retry can work.
    InvalidImageName,
    /// The container starts and exits, again and again.
    CrashLoop,
    /// No node can take the pod (resources, affinity, unbound volumes).
    Unschedulable,
    /// The container cannot be made (a missing Secret or ConfigMap key, a
    /// volume that will not mount).
    ContainerConfig,
}

impl PodProblem {
    pub fn reason(self) -> &'static str {
        match self {
            PodProblem::ImagePull => "ImagePullFailing",
            PodProblem::InvalidImageName => "InvalidImageName",
            PodProblem::CrashLoop => "CrashLoopBackOff",
            PodProblem::Unschedulable => "Unschedulable",
            PodProblem::ContainerConfig => "ContainerConfigError",
        }
    }
}

/// What one pod says about why it does not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTrouble {
    pub pod: String,
    pub problem: PodProblem,
    /// For the condition: the pod, what it reports and the detail.
    pub message: String,
    /// Waiting will not fix it: the tenant turns `Stalled`.
    pub permanent: bool,
}

/// The trouble of the first pod (by name) that reports one; `None` when
/// every pod is running or only starting.
pub fn diagnose(pods: &[Pod], now: Timestamp) -> Option<PodTrouble> {
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by_key(|p| p.metadata.name.clone());
    // A permanent trouble outranks one that may pass.
    let troubles: Vec<PodTrouble> = sorted.iter().filter_map(|p| of_pod(p, now)).collect();
    troubles
        .iter()
        .find(|t| t.permanent)
        .or_else(|| troubles.first())
        .cloned()
}

fn of_pod(pod: &Pod, now: Timestamp) -> Option<PodTrouble> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref()?;
    let trouble = |problem, detail: String, permanent| PodTrouble {
        pod: name.clone(),
        problem,
        message: cut(&format!("pod {name}: {detail}")),
        permanent,
    };
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .filter(|c| c.reason.as_deref() == Some("Unschedulable"))
    {
        let waited = c
            .last_transition_time
            .as_ref()
            .map(|t| now.as_second() - t.0.as_second())
            .unwrap_or(0);
        let what = c.message.clone().unwrap_or_else(|| "no node fits".into());
        // No running clock in the message: status would change every pass.
        let since = c
            .last_transition_time
            .as_ref()
            .map(|t| format!(" since {}", t.0))
            .unwrap_or_default();
        return Some(trouble(
            PodProblem::Unschedulable,
            format!("Unschedulable{since}: {what}"),
            waited >= UNSCHEDULABLE_STALLS_AFTER_SECS,
        ));
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    containers
        .filter_map(of_container)
        .next()
        .map(|(problem, detail, permanent)| trouble(problem, detail, permanent))
}

fn of_container(c: &ContainerStatus) -> Option<(PodProblem, String, bool)> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().unwrap_or_default();
    let message = waiting.message.clone().unwrap_or_default();
    let container = &c.name;
    match reason {
        "ErrImagePull" | "ImagePullBackOff" => Some((
            PodProblem::ImagePull,
            format!("container {container}: {reason}: {message}"),
            false,
        )),
        "InvalidImageName" => Some((
            PodProblem::InvalidImageName,
            format!("container {container}: InvalidImageName: {message}"),
            true,
        )),
        "CrashLoopBackOff" => {
            let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
            let exit = last.map(|t| t.exit_code).unwrap_or_default();
            let said = last
                .and_then(|t| t.message.as_deref())
                .map(telling_line)
                .filter(|l| !l.is_empty())
                .or_else(|| last.and_then(|t| t.reason.clone()))
                .unwrap_or_else(|| "no message".into());
            Some((
                PodProblem::CrashLoop,
                format!(
                    "container {container} crash-looping ({} restarts, exit code {exit}): {said}",
                    c.restart_count
                ),
                c.restart_count >= CRASH_LOOP_STALLS_AFTER_RESTARTS,
            ))
        }
        "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => Some((
            PodProblem::ContainerConfig,
            format!("container {container}: {reason}: {message}"),
            false,
        )),
        _ => None,
    }
}

/// The line of a termination message (the log's tail, with
/// `FallbackToLogsOnError`) that says what went wrong: the last one naming
/// an error, else the last line. Usage text printed after an error is noise.
pub fn telling_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let telling = |l: &&&str| {
        let lower = l.to_ascii_lowercase();
        [
            "error",
            "invalid",
            "failed",
            "fatal",
            "denied",
            "cannot",
            "unknown flag",
        ]
        .iter()
        .any(|w| lower.contains(w))
    };
    lines
        .iter()
        .rev()
        .find(telling)
        .or(lines.last())
        .map(|l| l.to_string())
        .unwrap_or_default()
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_LIMIT) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-12-03T12:00:00Z".parse().unwrap()
    }

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name}, "status": status})).unwrap()
    }

    fn waiting(reason: &str, message: &str, restarts: i32, last: serde_json::Value) -> Pod {
        pod(
            "t-etcd-0",
            json!({"containerStatuses": [{
                "name": "etcd", "image": "x", "imageID": "", "ready": false,
                "restartCount": restarts,
                "state": {"waiting": {"reason": reason, "message": message}},
                "lastState": last,
            }]}),
        )
    }

    #[test]
    fn image_pull_failures_name_the_image_and_may_pass() {
        let p = waiting(
            "ImagePullBackOff",
            "Back-off pulling image \"kok.local/etcd:9.9.9\"",
            0,
            json!({}),
        );
        let t = diagnose(&[p], now()).unwrap();
        assert_eq!(t.problem, PodProblem::ImagePull);
        assert!(t.message.contains("kok.local/etcd:9.9.9"), "{t:?}");
        assert!(t.message.starts_with("pod t-etcd-0: "), "{t:?}");
        assert!(!t.permanent);
    }

    #[test]
    fn an_invalid_image_name_is_permanent() {
        let p = waiting(
            "InvalidImageName",
            "Failed to apply default image tag \"Kok.Local/etcd:3.4\": invalid reference format",
            0,
            json!({}),
        );
        let t = diagnose(&[p], now()).unwrap();
        assert_eq!(t.problem.reason(), "InvalidImageName");
        assert!(t.permanent);
    }

    #[test]
    fn a_crash_loop_says_the_error_line_and_stalls_after_some_restarts() {
        let log = "I1203 starting\nError: invalid argument \"x\" for \"--v\" flag: strconv.ParseInt: parsing \"x\": invalid syntax\nUsage:\n  kube-apiserver [flags]\n";
        let last = json!({"terminated": {"exitCode": 1, "reason": "Error", "message": log}});
        let early = waiting("CrashLoopBackOff", "back-off 10s", 2, last.clone());
        let t = diagnose(&[early], now()).unwrap();
        assert_eq!(t.problem, PodProblem::CrashLoop);
        assert!(t.message.contains("exit code 1"), "{t:?}");
        assert!(t.message.contains("invalid argument \"x\""), "{t:?}");
        assert!(!t.message.contains("Usage"), "{t:?}");
        assert!(!t.permanent, "two restarts may still be start-up");
        let late = waiting(
            "CrashLoopBackOff",
            "back-off 5m",
            CRASH_LOOP_STALLS_AFTER_RESTARTS,
            last,
        );
        assert!(diagnose(&[late], now()).unwrap().permanent);
    }

    #[test]
    fn a_crash_without_a_message_says_its_reason() {
        let last = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
        let t = diagnose(&[waiting("CrashLoopBackOff", "", 1, last)], now()).unwrap();
        assert!(t.message.contains("OOMKilled"), "{t:?}");
    }

    #[test]
    fn unschedulable_pods_carry_the_schedulers_message_and_stall_after_a_while() {
        let at = |since: &str| {
            pod(
                "t-apiserver-abc",
                json!({"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient cpu.",
                    "lastTransitionTime": since,
                }]}),
            )
        };
        let fresh = diagnose(&[at("2026-12-03T11:59:00Z")], now()).unwrap();
        assert_eq!(fresh.problem, PodProblem::Unschedulable);
        assert!(fresh.message.contains("Insufficient cpu"), "{fresh:?}");
        assert!(!fresh.permanent);
        let old = diagnose(&[at("2026-12-03T11:50:00Z")], now()).unwrap();
        assert!(old.permanent);
        let later = diagnose(
            &[at("2026-12-03T11:50:00Z")],
            "2026-12-03T12:01:00Z".parse().unwrap(),
        );
        assert_eq!(
            later.unwrap().message,
            old.message,
            "the same message on every pass"
        );
    }

    #[test]
    fn running_and_starting_pods_report_nothing() {
        let starting = waiting("ContainerCreating", "", 0, json!({}));
        let running = pod(
            "t-etcd-1",
            json!({"containerStatuses": [{
                "name": "etcd", "image": "x", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}},
            }]}),
        );
        assert_eq!(diagnose(&[starting, running], now()), None);
    }

    #[test]
    fn a_permanent_trouble_outranks_one_that_may_pass() {
        let mut pulling = waiting("ImagePullBackOff", "", 0, json!({}));
        pulling.metadata.name = Some("a".into());
        let mut invalid = waiting("InvalidImageName", "", 0, json!({}));
        invalid.metadata.name = Some("b".into());
        let t = diagnose(&[pulling, invalid], now()).unwrap();
        assert_eq!(t.pod, "b");
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(2000);
        let t = diagnose(&[waiting("ErrImagePull", &long, 0, json!({}))], now()).unwrap();
        assert!(t.message.chars().count() <= MESSAGE_LIMIT + 3);
    }

    #[test]
    fn the_telling_line_is_the_last_error() {
        assert_eq!(
            telling_line("a\ncannot access data directory: permission denied\n\n"),
            "cannot access data directory: permission denied"
        );
        assert_eq!(telling_line("one\ntwo\n"), "two");
        assert_eq!(telling_line(""), "");
    }
}
