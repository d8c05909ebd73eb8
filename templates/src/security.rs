//! The one security profile of every pod kok runs: the tenant control plane,
//! restore Jobs and the operator itself. It meets Pod Security "restricted":
//! non-root, no privilege escalation, no capabilities, RuntimeDefault seccomp.

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};

/// The user and group every kok workload runs as. One identity for all of them
/// because they hand files to each other: the operator writes backup artifacts
/// (0600), restore Jobs read them and write etcd data that etcd then owns.
/// 65532 is the conventional "nonroot" user of distroless images, not `nobody`.
pub const RUN_AS: i64 = 65532;

/// Pod-level context. `fsGroup` makes volumes that support ownership management
/// (emptyDir, Secrets, most CSI volumes) writable by [`RUN_AS`]; a hostPath
/// volume is not managed, so its directory must belong to [`RUN_AS`] already.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        // Only re-own a volume when its root is not ours yet: a large etcd
        // volume is not walked on every pod start.
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

/// Container-level context.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_is_restricted() {
        let pod = pod_security_context();
        assert_eq!(pod.run_as_non_root, Some(true));
        assert_ne!(pod.run_as_user, Some(0));
        let c = container_security_context();
        assert_eq!(c.allow_privilege_escalation, Some(false));
        assert_eq!(
            c.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(
            c.seccomp_profile.map(|s| s.type_),
            Some("RuntimeDefault".to_string())
        );
    }
}
