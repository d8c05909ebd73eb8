//! The phases of kok's multi-step operations on a TenantCluster, typed.
//!
//! Each was a `String` in status before; the wire keeps exactly those
//! strings (the variant names), so objects written by an earlier kok decode
//! unchanged. A phase compares equal to its string, for tests and tools
//! that read status as text.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Names the variants once: serde and the schema use the variant names, and
/// `as_str`, `Display` and the string comparison follow from the same list.
macro_rules! wire_phase {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The string on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

// Variants carry `//` comments, not docs: schemars renders documented unit
// variants as `oneOf` of `const`s, which apiservers of v1.20 do not accept.
wire_phase! {
    /// Where an upgrade is (`status.upgrade.phase`).
    #[derive(Default)]
    UpgradePhase {
        // Checking the tenant's health and taking the backup first.
        #[default]
        Preflight,
        // Rolling etcd members to the step's etcd version.
        RollingEtcd,
        // Rolling apiservers, then controller-manager and scheduler.
        RollingControlPlane,
        Completed,
    }
}

wire_phase! {
    /// Where a data migration is (`status.migration.phase`).
    #[derive(Default)]
    MigrationPhase {
        #[default]
        Preflight,
        CreatingTarget,
        // The source's apiservers are stopped: no write is accepted.
        Frozen,
        Copying,
        Verifying,
        CuttingOver,
        Completed,
        RollingBack,
        RolledBack,
    }
}

wire_phase! {
    /// Where a live change of the etcd member count is
    /// (`status.etcdScaling.phase`).
    ScalingPhase {
        // Adding: the member is being added as a learner.
        AddingLearner,
        // Adding: started, promoted once caught up.
        Joining,
        // Removing: the apiservers are moved off the member.
        Draining,
        // Removing: the member leaves the cluster.
        Removing,
    }
}

wire_phase! {
    /// Where the replacement of an etcd member is
    /// (`status.etcdMemberReplacement.phase`).
    ReplacementPhase {
        // Only for a member replaced because it stayed unhealthy: its
        // volume is being kept (released with its data).
        KeepingVolume,
        Removing,
        AddingLearner,
        Restarting,
        Promoting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TenantCluster;

    /// A TenantCluster as kok wrote it while the phases were strings: it
    /// decodes, and encodes back to the same strings.
    #[test]
    fn status_written_with_string_phases_decodes_and_round_trips() {
        let written = serde_json::json!({
            "apiVersion": "kok.dev/v1alpha1",
            "kind": "TenantCluster",
            "metadata": {"name": "t", "namespace": "ns"},
            "spec": {"version": "v1.20.2"},
            "status": {
                "upgrade": {"from": "v1.20.2 (etcd 3.4.23)", "to": "v1.21.0 (etcd 3.4.23)",
                            "plan": ["v1.21.0"], "step": 0, "phase": "RollingControlPlane"},
                "migration": {
                    "source": {"version": "v1.20.2", "etcdVersion": "3.4.23", "etcdReplicas": 1, "etcdGeneration": 0},
                    "target": {"version": "v1.20.2", "etcdVersion": "3.5.16", "etcdReplicas": 3, "etcdGeneration": 1},
                    "phase": "CuttingOver"},
                "etcdScaling": {"from": 1, "to": 3, "member": 1, "phase": "Joining",
                                "startTime": "2026-12-01T10:00:00Z"},
                "etcdMemberReplacement": {"member": 2, "phase": "KeepingVolume",
                                          "detectedTime": "2026-12-01T10:00:00Z"}
            }
        });
        let tc: TenantCluster = serde_json::from_value(written.clone()).expect("decodes");
        let status = tc.status.clone().expect("status");
        assert_eq!(
            status.upgrade.as_ref().map(|u| u.phase),
            Some(UpgradePhase::RollingControlPlane)
        );
        assert_eq!(
            status.migration.as_ref().map(|m| m.phase),
            Some(MigrationPhase::CuttingOver)
        );
        assert_eq!(
            status.etcd_scaling.as_ref().map(|s| s.phase),
            Some(ScalingPhase::Joining)
        );
        assert_eq!(
            status.etcd_member_replacement.as_ref().map(|r| r.phase),
            Some(ReplacementPhase::KeepingVolume)
        );
        let back = serde_json::to_value(&tc).unwrap();
        for (path, phase) in [
            ("/status/upgrade/phase", "RollingControlPlane"),
            ("/status/migration/phase", "CuttingOver"),
            ("/status/etcdScaling/phase", "Joining"),
            ("/status/etcdMemberReplacement/phase", "KeepingVolume"),
        ] {
            assert_eq!(
                back.pointer(path),
                Some(&serde_json::json!(phase)),
                "{path}"
            );
        }
    }

    /// Every phase's string is its variant's, both ways.
    #[test]
    fn every_phase_is_its_string_on_the_wire() {
        fn check<P: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug + Copy>(
            all: &[P],
            name: fn(P) -> &'static str,
        ) {
            for &p in all {
                let wire = serde_json::to_value(p).unwrap();
                assert_eq!(wire, serde_json::json!(name(p)));
                assert_eq!(serde_json::from_value::<P>(wire).unwrap(), p);
            }
        }
        check(UpgradePhase::ALL, UpgradePhase::as_str);
        check(MigrationPhase::ALL, MigrationPhase::as_str);
        check(ScalingPhase::ALL, ScalingPhase::as_str);
        check(ReplacementPhase::ALL, ReplacementPhase::as_str);
        assert_eq!(MigrationPhase::ALL.len(), 9);
        assert!(MigrationPhase::Copying == "Copying");
        assert!(serde_json::from_value::<ScalingPhase>(serde_json::json!("Sleeping")).is_err());
    }
}
