//! How a spec problem is reported (the field and why), and the operator-wide
//! policy validation follows. Its own module so the validators of each part
//! of the spec (validate, backup) depend on it and not on each other.

use std::fmt;

/// One invalid field: its path in the object and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Joins field errors into one message for a condition or Event.
pub fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Operator-wide settings that change what a spec may ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Accept `http://` S3 endpoints (test stores); https only otherwise.
    pub allow_http_s3: bool,
    /// Private S3 endpoints the platform allows (an in-cluster MinIO):
    /// refused otherwise, so a tenant cannot point kok at the management
    /// network.
    pub private_s3: crate::endpoint::PrivateEndpoints,
    /// Image repositories tenants may run (`KOK_IMAGE_REPOSITORIES`, prefixes
    /// such as `registry.k8s.io` or `registry.example.com/mirror`). Empty:
    /// any, as before; set on a shared management cluster, where a tenant's
    /// image runs with kok-minted certificates next to other tenants.
    pub image_repositories: Vec<String>,
    /// Where tenants may register with Argo CD (`crate::argocd`).
    pub argocd: crate::argocd::ArgoPolicy,
    /// Whether the operator's backups directory outlives its pod (a claim,
    /// `KOK_BACKUP_CLAIM`, or a hostPath, `KOK_BACKUP_HOST_PATH`). Without it the directory is an emptyDir:
    /// filesystem backups would report success and vanish with the pod, so
    /// filesystem destinations are refused.
    pub durable_backups: bool,
}

impl Policy {
    /// Whether `image` (a full reference, or a repository prefix) lies under
    /// an allowed repository. A prefix matches whole path segments only:
    /// `registry.k8s.io` does not allow `registry.k8s.io.evil.example/x`.
    pub fn image_allowed(&self, image: &str) -> bool {
        self.image_repositories.is_empty()
            || self.image_repositories.iter().any(|prefix| {
                let prefix = prefix.trim_end_matches('/');
                image == prefix
                    || image
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    }
}
