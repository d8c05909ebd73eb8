//! kstatus conditions: set one, keep its transition time when nothing changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kok_templates::kstatus::{Cond, Summary};

pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    set_known(conditions, type_, Some(status), reason, message, generation);
}

/// Like `set`; `None` is status Unknown.
pub fn set_known(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: Option<bool>,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = match status {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let mut message = message.into();
    // Apiservers up to at least v1.20 reject an empty `message` on a CRD
    // condition as "null" (measured), so an empty message falls back to the reason.
    if message.is_empty() {
        message = reason.to_string();
    }
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(Timestamp::now());
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: Time(Timestamp::now()),
        }),
    }
}

/// Writes what a pass computed (`kok_templates::kstatus`): the one place a
/// computed summary becomes the object's conditions.
pub fn apply(
    conditions: &mut Vec<Condition>,
    computed: impl IntoIterator<Item = Cond>,
    generation: Option<i64>,
) {
    for c in computed {
        set(
            conditions, c.type_, c.status, &c.reason, c.message, generation,
        );
    }
}

/// Writes a summary's `Ready`, `Reconciling` and `Stalled`; `fine` as in
/// `Summary::conditions`.
pub fn summarize(
    conditions: &mut Vec<Condition>,
    summary: &Summary,
    fine: Option<(&str, &str)>,
    generation: Option<i64>,
) {
    apply(conditions, summary.conditions(fine), generation);
}

/// A pass may set a condition one way and then the other (`Stalled` is
/// cleared when the spec is admitted, set again when a pod cannot run):
/// where the pass ends with the status the object already had, its
/// transition time stays. Otherwise every such pass would write status, and
/// the write would start the next pass at once.
pub fn keep_transition_times(old: &[Condition], new: &mut [Condition]) {
    for c in new.iter_mut() {
        if let Some(before) = old
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = before.last_transition_time.clone();
        }
    }
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut cs = Vec::new();
        set(&mut cs, "Ready", false, "Progressing", "starting", Some(1));
        let first = cs[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set(
            &mut cs,
            "Ready",
            false,
            "Progressing",
            "still starting",
            Some(2),
        );
        assert_eq!(
            cs[0].last_transition_time, first,
            "same status keeps the time"
        );
        assert_eq!(cs[0].message, "still starting");
        set(&mut cs, "Ready", true, "Ready", "up", Some(2));
        assert_ne!(cs[0].last_transition_time, first, "a new status moves it");
        assert!(is_true(&cs, "Ready"));
        assert_eq!(cs.len(), 1);
    }

    #[test]
    fn an_empty_message_becomes_the_reason() {
        let mut cs = Vec::new();
        set(&mut cs, "Stalled", false, "SpecValid", "", Some(1));
        assert_eq!(cs[0].message, "SpecValid");
    }

    #[test]
    fn a_condition_set_back_within_a_pass_keeps_its_transition_time() {
        let mut old = Vec::new();
        set(&mut old, "Stalled", true, "CrashLoopBackOff", "x", Some(1));
        let before = old[0].last_transition_time.clone();
        let mut new = old.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set(&mut new, "Stalled", false, "SpecValid", "ok", Some(1));
        set(&mut new, "Stalled", true, "CrashLoopBackOff", "x", Some(1));
        assert_ne!(
            new[0].last_transition_time, before,
            "two flips stamp a new time"
        );
        keep_transition_times(&old, &mut new);
        assert_eq!(new, old, "nothing to write");
        // A real change keeps its new time.
        set(&mut new, "Stalled", false, "SpecValid", "ok", Some(1));
        let changed = new[0].last_transition_time.clone();
        keep_transition_times(&old, &mut new);
        assert_eq!(new[0].last_transition_time, changed);
    }
}
