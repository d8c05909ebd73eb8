//! Upgrade by data migration (`spec.upgrade.strategy: Migrate`): a new etcd
//! generation at the target next to the running one, the data copied into
//! it while the apiservers are stopped, verified, then the control plane cut
//! over to it; the source is kept stopped. Pure: the phases and their order,
//! when a migration opens, when reverting the spec rolls it back, and the
//! per-prefix comparison that proves the copy.
//!
//! Every phase is recorded in `status.migration` before it acts, and every
//! phase's action is idempotent, so an operator restarted anywhere resumes
//! the phase it finds.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kok_crds::{MigrationShape, MigrationStatus};
use sha2::{Digest, Sha256};

use crate::upgrade_plan::EtcdVersion;
use crate::version::KubeVersion;

use kok_crds::MigrationPhase::{self, *};

/// The phases forward, in order.
pub const FORWARD: &[MigrationPhase] = &[
    Preflight,
    CreatingTarget,
    Frozen,
    Copying,
    Verifying,
    CuttingOver,
    Completed,
];

/// How far the target's revision is raised above the snapshot's: as the
/// Kubernetes docs advise for restores, far above anything a client can have
/// seen, and marked compacted, so a watch from an old resourceVersion gets
/// "too old" and relists.
pub const REVISION_BUMP: u64 = 1_000_000_000;

/// The phase after `phase` (a finished migration stays where it is).
pub fn next_phase(phase: MigrationPhase) -> MigrationPhase {
    if matches!(phase, RollingBack | RolledBack) {
        return RolledBack;
    }
    match FORWARD.iter().position(|p| *p == phase) {
        Some(i) if i + 1 < FORWARD.len() => FORWARD[i + 1],
        _ => Completed,
    }
}

/// The migration is finished one way or the other.
pub fn finished(phase: MigrationPhase) -> bool {
    matches!(phase, Completed | RolledBack)
}

/// Phases in which the target generation exists (or is being built) and
/// needs its certificates.
pub fn builds_target(phase: MigrationPhase) -> bool {
    matches!(
        phase,
        CreatingTarget | Frozen | Copying | Verifying | CuttingOver
    )
}

/// The source's apiservers are stopped in these phases (writes are frozen).
pub fn frozen(phase: MigrationPhase) -> bool {
    matches!(phase, Frozen | Copying | Verifying)
}

/// Before the control plane is started on the target (recorded first), no
/// client can have written to the target, the source is untouched, and a
/// rollback gives it back exactly.
pub fn before_point_of_no_return(m: &MigrationStatus) -> bool {
    m.cut_over_time.is_none() && m.first_write_time.is_none() && m.phase != Completed
}

/// Why the target cannot be reached from what runs in one migration: the
/// apiserver reads what the source's wrote, and Kubernetes supports that
/// across one minor only.
pub fn skew_problem(running: &MigrationShape, desired: &MigrationShape) -> Option<String> {
    let (Ok(from), Ok(to)) = (
        running.version.parse::<KubeVersion>(),
        desired.version.parse::<KubeVersion>(),
    ) else {
        return None;
    };
    (to.minor > from.minor + 1).then(|| {
        format!(
            "a migration moves at most one Kubernetes minor ({from} runs, {to} asked): go to 1.{} first",
            from.minor + 1
        )
    })
}

/// The same cluster apart from which generation serves it.
fn same_target(a: &MigrationShape, b: &MigrationShape) -> bool {
    a.version == b.version && a.etcd_version == b.etcd_version && a.etcd_replicas == b.etcd_replicas
}

/// What runs differs from what the spec asks for: with `Migrate`, that is
/// done by a migration.
pub fn due(running: &MigrationShape, desired: &MigrationShape) -> bool {
    !same_target(running, desired)
}

/// What this pass does with a migration on record, given what the spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Carry on with the recorded phase.
    Continue,
    /// The spec no longer asks for this target and the point of no return
    /// is not reached: give the source back.
    RollBack,
    /// Nothing to do: finished, and the spec asks for what runs.
    Done,
    /// A migration to this target failed before and was rolled back: not
    /// tried again until the spec changes.
    Refused(String),
}

pub fn decide(m: &MigrationStatus, desired: &MigrationShape, generation: Option<i64>) -> Decision {
    match m.phase {
        Completed => Decision::Done,
        RolledBack => {
            let failed_here = same_target(&m.target, desired) && m.spec_generation == generation;
            if failed_here {
                Decision::Refused(m.message.clone().unwrap_or_default())
            } else {
                Decision::Done
            }
        }
        RollingBack => Decision::Continue,
        _ if !same_target(&m.target, desired) && before_point_of_no_return(m) => Decision::RollBack,
        _ => Decision::Continue,
    }
}

/// A new migration record from what runs to what the spec asks for.
pub fn open(
    running: &MigrationShape,
    desired: &MigrationShape,
    generation: Option<i64>,
    now: Time,
) -> MigrationStatus {
    let target = MigrationShape {
        etcd_generation: running.etcd_generation + 1,
        ..desired.clone()
    };
    MigrationStatus {
        message: Some(format!(
            "migrating from {} to {}",
            describe(running),
            describe(&target)
        )),
        source: running.clone(),
        target,
        phase: Preflight,
        start_time: Some(now.clone()),
        phase_time: Some(now),
        spec_generation: generation,
        ..Default::default()
    }
}

/// `v1.20.2, etcd 3.4.23 x1 (generation 0)`.
pub fn describe(s: &MigrationShape) -> String {
    format!(
        "{}, etcd {} x{} (generation {})",
        s.version, s.etcd_version, s.etcd_replicas, s.etcd_generation
    )
}

/// Moves the record to `phase`, stamped now.
pub fn enter(
    m: &mut MigrationStatus,
    phase: MigrationPhase,
    message: impl Into<String>,
    now: Time,
) {
    if m.phase != phase {
        m.phase = phase;
        m.phase_time = Some(now.clone());
    }
    m.message = Some(message.into());
    if finished(phase) {
        m.completion_time.get_or_insert(now);
    }
}

/// Seconds from the freeze to the first write the target accepted.
pub fn downtime_seconds(freeze: &Time, first_write: &Time) -> f64 {
    let d = first_write.0.duration_since(freeze.0);
    (d.as_millis() as f64 / 1000.0).max(0.0)
}

/// Why the spec cannot be migrated to: the field and the reason.
pub fn target_problem(desired: &MigrationShape) -> Option<(&'static str, String)> {
    match desired.etcd_version.parse::<EtcdVersion>() {
        Ok(v) if (v.major, v.minor) >= (3, 5) => None,
        Ok(v) => Some((
            "spec.etcd.version",
            format!(
                "a migration restores the copy with etcdutl's --bump-revision, which needs etcd 3.5 or newer at the target, got {}.{}.{}",
                v.major, v.minor, v.patch
            ),
        )),
        Err(_) => Some((
            "spec.etcd.version",
            format!(
                "a migration needs a known etcd version at the target (3.5 or newer), got the tag {:?}",
                desired.etcd_version
            ),
        )),
    }
}

// ---- the proof of the copy --------------------------------------------------

/// The keys under one prefix: how many, and a sha256 over every key and value
/// in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixDigest {
    pub keys: u64,
    pub sha256: [u8; 32],
}

/// `/registry/configmaps/ns/name` -> `/registry/configmaps/`; a key outside
/// `/registry/` is its own first segment.
pub fn key_prefix(key: &[u8]) -> String {
    let key = String::from_utf8_lossy(key);
    let mut cut = 0;
    let mut seen = 0;
    for (i, c) in key.char_indices() {
        if c == '/' {
            seen += 1;
            cut = i + 1;
            if seen == 3 {
                break;
            }
        }
    }
    if seen < 3 {
        return key.into_owned();
    }
    key[..cut].to_string()
}

/// Digests keys as they stream by (in key order, as etcd ranges them), with
/// memory bounded by the number of prefixes. Keys attached to a lease
/// (apiserver master leases, Events) are counted apart: etcd may expire them
/// on either side at any moment, so they cannot be compared.
#[derive(Default)]
pub struct Digester {
    open: Option<(String, u64, Sha256)>,
    done: BTreeMap<String, PrefixDigest>,
    pub leased: u64,
}

impl Digester {
    pub fn add(&mut self, key: &[u8], value: &[u8], lease: i64) {
        if lease != 0 {
            self.leased += 1;
            return;
        }
        let prefix = key_prefix(key);
        if self.open.as_ref().is_none_or(|(p, _, _)| *p != prefix) {
            self.close();
            self.open = Some((prefix, 0, Sha256::new()));
        }
        if let Some((_, n, h)) = self.open.as_mut() {
            *n += 1;
            h.update((key.len() as u64).to_be_bytes());
            h.update(key);
            h.update((value.len() as u64).to_be_bytes());
            h.update(value);
        }
    }

    fn close(&mut self) {
        if let Some((prefix, keys, h)) = self.open.take() {
            let d = PrefixDigest {
                keys,
                sha256: h.finalize().into(),
            };
            // Keys come in order, so a prefix never reopens; merge anyway.
            self.done.insert(prefix, d);
        }
    }

    pub fn finish(mut self) -> BTreeMap<String, PrefixDigest> {
        self.close();
        self.done
    }
}

/// Compares the source's digests with the target's: `Ok((keys, prefixes))`
/// when every prefix has the same count and hash, else every difference.
pub fn compare(
    source: &BTreeMap<String, PrefixDigest>,
    target: &BTreeMap<String, PrefixDigest>,
) -> Result<(u64, u64), Vec<String>> {
    let mut problems = Vec::new();
    for (prefix, s) in source {
        match target.get(prefix) {
            None => problems.push(format!("{prefix}: {} keys missing in the target", s.keys)),
            Some(t) if t.keys != s.keys => problems.push(format!(
                "{prefix}: {} keys in the source, {} in the target",
                s.keys, t.keys
            )),
            Some(t) if t.sha256 != s.sha256 => {
                problems.push(format!("{prefix}: same {} keys, different content", s.keys))
            }
            Some(_) => {}
        }
    }
    for (prefix, t) in target {
        if !source.contains_key(prefix) {
            problems.push(format!("{prefix}: {} keys only in the target", t.keys));
        }
    }
    if problems.is_empty() {
        Ok((source.values().map(|d| d.keys).sum(), source.len() as u64))
    } else {
        Err(problems)
    }
}

// ---- APIs the target no longer serves ---------------------------------------

/// Group/versions and resources upstream Kubernetes stopped serving, and the
/// minor that stopped (the deprecation guide).
pub const REMOVED_APIS: &[(&str, &str, u32)] = &[
    ("extensions/v1beta1", "daemonsets", 16),
    ("extensions/v1beta1", "deployments", 16),
    ("extensions/v1beta1", "replicasets", 16),
    ("extensions/v1beta1", "networkpolicies", 16),
    ("extensions/v1beta1", "podsecuritypolicies", 16),
    ("apps/v1beta1", "deployments", 16),
    ("apps/v1beta2", "deployments", 16),
    ("extensions/v1beta1", "ingresses", 22),
    ("networking.k8s.io/v1beta1", "ingresses", 22),
    ("networking.k8s.io/v1beta1", "ingressclasses", 22),
    (
        "admissionregistration.k8s.io/v1beta1",
        "mutatingwebhookconfigurations",
        22,
    ),
    (
        "admissionregistration.k8s.io/v1beta1",
        "validatingwebhookconfigurations",
        22,
    ),
    (
        "apiextensions.k8s.io/v1beta1",
        "customresourcedefinitions",
        22,
    ),
    ("apiregistration.k8s.io/v1beta1", "apiservices", 22),
    (
        "certificates.k8s.io/v1beta1",
        "certificatesigningrequests",
        22,
    ),
    ("coordination.k8s.io/v1beta1", "leases", 22),
    ("rbac.authorization.k8s.io/v1beta1", "roles", 22),
    ("rbac.authorization.k8s.io/v1beta1", "rolebindings", 22),
    ("rbac.authorization.k8s.io/v1beta1", "clusterroles", 22),
    (
        "rbac.authorization.k8s.io/v1beta1",
        "clusterrolebindings",
        22,
    ),
    ("scheduling.k8s.io/v1beta1", "priorityclasses", 22),
    ("storage.k8s.io/v1beta1", "csidrivers", 22),
    ("storage.k8s.io/v1beta1", "csinodes", 22),
    ("storage.k8s.io/v1beta1", "storageclasses", 22),
    ("storage.k8s.io/v1beta1", "volumeattachments", 22),
    ("batch/v1beta1", "cronjobs", 25),
    ("discovery.k8s.io/v1beta1", "endpointslices", 25),
    ("events.k8s.io/v1beta1", "events", 25),
    ("autoscaling/v2beta1", "horizontalpodautoscalers", 25),
    ("policy/v1beta1", "poddisruptionbudgets", 25),
    ("policy/v1beta1", "podsecuritypolicies", 25),
    ("node.k8s.io/v1beta1", "runtimeclasses", 25),
    ("autoscaling/v2beta2", "horizontalpodautoscalers", 26),
    ("flowcontrol.apiserver.k8s.io/v1beta1", "flowschemas", 26),
    (
        "flowcontrol.apiserver.k8s.io/v1beta1",
        "prioritylevelconfigurations",
        26,
    ),
    ("storage.k8s.io/v1beta1", "csistoragecapacities", 27),
    ("flowcontrol.apiserver.k8s.io/v1beta2", "flowschemas", 29),
    (
        "flowcontrol.apiserver.k8s.io/v1beta2",
        "prioritylevelconfigurations",
        29,
    ),
    ("flowcontrol.apiserver.k8s.io/v1beta3", "flowschemas", 32),
    (
        "flowcontrol.apiserver.k8s.io/v1beta3",
        "prioritylevelconfigurations",
        32,
    ),
];

/// Whether `group_version`/`resource` is gone at `target`.
pub fn removed_at(group_version: &str, resource: &str, target: KubeVersion) -> Option<u32> {
    REMOVED_APIS
        .iter()
        .find(|(gv, r, minor)| *gv == group_version && *r == resource && target.minor >= *minor)
        .map(|(_, _, minor)| *minor)
}

/// Of the resources the source serves, with their object counts, those whose
/// objects the target could not serve at all: every version the source
/// serves them under is gone at the target. A resource that moved (Ingress
/// to networking.k8s.io/v1) is still served and not reported.
/// `served` is `(group/version, resource, objects)`.
pub fn unservable(served: &[(String, String, u64)], target: KubeVersion) -> Vec<String> {
    let mut out = Vec::new();
    for (gv, resource, objects) in served {
        let Some(minor) = removed_at(gv, resource, target) else {
            continue;
        };
        let still_served = served
            .iter()
            .any(|(other, r, _)| r == resource && removed_at(other, r, target).is_none());
        if *objects > 0 && !still_served {
            out.push(format!(
                "{objects} {resource} of {gv} (not served since 1.{minor})"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(version: &str, etcd: &str, replicas: i32, generation: u32) -> MigrationShape {
        MigrationShape {
            version: version.into(),
            etcd_version: etcd.into(),
            etcd_replicas: replicas,
            etcd_generation: generation,
        }
    }

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    #[test]
    fn the_phases_run_in_order_and_end() {
        let mut phase = Preflight;
        let mut seen = vec![phase];
        while !finished(phase) {
            phase = next_phase(phase);
            seen.push(phase);
        }
        assert_eq!(seen, FORWARD);
        assert_eq!(next_phase(RollingBack), RolledBack);
        assert_eq!(next_phase(Completed), Completed);
        // Writes are frozen from the freeze to the cut over, not before or after.
        assert!(!frozen(CreatingTarget) && frozen(Frozen) && frozen(Verifying));
        assert!(!frozen(CuttingOver));
        assert!(builds_target(CreatingTarget) && !builds_target(Completed));
    }

    #[test]
    fn a_migration_opens_for_any_difference_and_targets_the_next_generation() {
        let running = shape("v1.20.2", "3.4.23", 1, 0);
        assert!(!due(&running, &shape("v1.20.2", "3.4.23", 1, 7)));
        let desired = shape("v1.20.2", "3.5.16", 3, 0);
        assert!(due(&running, &desired));
        let m = open(&running, &desired, Some(4), t(0));
        assert_eq!(m.phase, Preflight);
        assert_eq!(m.target, shape("v1.20.2", "3.5.16", 3, 1));
        assert_eq!(m.source, running);
        assert!(m.message.unwrap().contains("etcd 3.5.16 x3 (generation 1)"));
    }

    #[test]
    fn reverting_the_spec_rolls_back_only_before_the_point_of_no_return() {
        let running = shape("v1.20.2", "3.4.23", 1, 0);
        let desired = shape("v1.20.2", "3.5.16", 3, 0);
        let mut m = open(&running, &desired, Some(4), t(0));
        for phase in [
            Preflight,
            CreatingTarget,
            Frozen,
            Copying,
            Verifying,
            CuttingOver,
        ] {
            enter(&mut m, phase, "", t(1));
            assert_eq!(decide(&m, &desired, Some(4)), Decision::Continue, "{phase}");
            assert_eq!(decide(&m, &running, Some(5)), Decision::RollBack, "{phase}");
        }
        // The control plane was started on the target: from here it finishes.
        m.cut_over_time = Some(t(2));
        assert_eq!(decide(&m, &running, Some(5)), Decision::Continue);
        enter(&mut m, Completed, "done", t(3));
        assert_eq!(decide(&m, &running, Some(5)), Decision::Done);
        assert!(m.completion_time.is_some());
    }

    #[test]
    fn a_failed_migration_is_not_retried_until_the_spec_changes() {
        let running = shape("v1.20.2", "3.4.23", 1, 0);
        let desired = shape("v1.20.2", "3.5.16", 3, 0);
        let mut m = open(&running, &desired, Some(4), t(0));
        enter(&mut m, RolledBack, "verify found differences", t(1));
        assert!(
            matches!(decide(&m, &desired, Some(4)), Decision::Refused(w) if w.contains("differences"))
        );
        assert_eq!(decide(&m, &desired, Some(5)), Decision::Done);
        // Rolled back on request (the spec went back to what runs): done.
        assert_eq!(decide(&m, &running, Some(4)), Decision::Done);
    }

    #[test]
    fn downtime_is_from_the_freeze_to_the_first_write() {
        let freeze =
            Time(k8s_openapi::jiff::Timestamp::from_millisecond(1_800_000_000_000).unwrap());
        let write =
            Time(k8s_openapi::jiff::Timestamp::from_millisecond(1_800_000_012_345).unwrap());
        assert_eq!(downtime_seconds(&freeze, &write), 12.345);
    }

    #[test]
    fn a_migration_moves_one_kubernetes_minor_at_most() {
        let running = shape("v1.30.4", "3.5.16", 3, 0);
        assert!(skew_problem(&running, &shape("v1.31.0", "3.5.16", 3, 0)).is_none());
        assert!(skew_problem(&running, &shape("v1.30.9", "3.5.16", 3, 0)).is_none());
        let why = skew_problem(&running, &shape("v1.33.0", "3.5.16", 3, 0)).unwrap();
        assert!(why.contains("go to 1.31 first"), "{why}");
    }

    #[test]
    fn only_etcd_3_5_or_newer_can_be_a_target() {
        assert!(target_problem(&shape("v1.20.2", "3.5.16", 3, 1)).is_none());
        assert!(target_problem(&shape("v1.20.2", "3.6.0", 3, 1)).is_none());
        let (field, why) = target_problem(&shape("v1.20.2", "3.4.23", 3, 1)).unwrap();
        assert_eq!(field, "spec.etcd.version");
        assert!(why.contains("3.5 or newer"), "{why}");
        assert!(target_problem(&shape("v1.20.2", "sha256-abc", 3, 1)).is_some());
    }

    #[test]
    fn keys_group_by_resource() {
        assert_eq!(
            key_prefix(b"/registry/configmaps/default/a"),
            "/registry/configmaps/"
        );
        assert_eq!(
            key_prefix(b"/registry/apiregistration.k8s.io/apiservices/v1."),
            "/registry/apiregistration.k8s.io/"
        );
        assert_eq!(
            key_prefix(b"/registry/ranges/serviceips"),
            "/registry/ranges/"
        );
        assert_eq!(key_prefix(b"compact_rev_key"), "compact_rev_key");
    }

    fn digest(kvs: &[(&str, &str, i64)]) -> (BTreeMap<String, PrefixDigest>, u64) {
        let mut d = Digester::default();
        for (k, v, lease) in kvs {
            d.add(k.as_bytes(), v.as_bytes(), *lease);
        }
        let leased = d.leased;
        (d.finish(), leased)
    }

    #[test]
    fn the_copy_is_proven_prefix_by_prefix() {
        let source = [
            ("/registry/configmaps/default/a", "1", 0),
            ("/registry/configmaps/default/b", "2", 0),
            ("/registry/events/default/e", "x", 7),
            ("/registry/secrets/default/s", "3", 0),
        ];
        let (s, leased) = digest(&source);
        assert_eq!(leased, 1);
        assert_eq!(compare(&s, &s), Ok((3, 2)));
        // An expired Event on one side does not count.
        let (t, _) = digest(&[source[0], source[1], source[3]]);
        assert_eq!(compare(&s, &t), Ok((3, 2)));
        // A changed value, a missing key, an extra prefix: each is named.
        let (changed, _) = digest(&[
            ("/registry/configmaps/default/a", "1", 0),
            ("/registry/configmaps/default/b", "9", 0),
            ("/registry/secrets/default/s", "3", 0),
        ]);
        let problems = compare(&s, &changed).unwrap_err();
        assert_eq!(
            problems,
            ["/registry/configmaps/: same 2 keys, different content"]
        );
        let (missing, _) = digest(&[("/registry/configmaps/default/a", "1", 0)]);
        let problems = compare(&s, &missing).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("1 in the target")),
            "{problems:?}"
        );
        assert!(problems
            .iter()
            .any(|p| p.contains("/registry/secrets/: 1 keys missing")));
        let problems = compare(&missing, &s).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("only in the target")),
            "{problems:?}"
        );
    }

    #[test]
    fn objects_the_target_cannot_serve_are_reported_moved_apis_are_not() {
        let v = |minor| KubeVersion {
            major: 1,
            minor,
            patch: 0,
        };
        let served = vec![
            ("extensions/v1beta1".to_string(), "ingresses".to_string(), 4),
            (
                "networking.k8s.io/v1".to_string(),
                "ingresses".to_string(),
                4,
            ),
            (
                "policy/v1beta1".to_string(),
                "podsecuritypolicies".to_string(),
                2,
            ),
            ("batch/v1beta1".to_string(), "cronjobs".to_string(), 0),
        ];
        assert!(unservable(&served, v(20)).is_empty());
        assert!(unservable(&served, v(24)).is_empty());
        assert_eq!(
            unservable(&served, v(25)),
            ["2 podsecuritypolicies of policy/v1beta1 (not served since 1.25)"]
        );
    }
}
