//! Reconcile errors. Each has a short label for the failure metric.

use kok_templates::pki::PkiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("certificate authority in Secret {secret} is unusable ({reason}); kok never regenerates a CA, restore the Secret")]
    CorruptCa { secret: String, reason: String },
    #[error("the key for Secrets at rest in Secret {secret} is unusable ({reason}); kok never regenerates it (Secrets in etcd and in backups are sealed with it): restore the Secret")]
    UnusableEncryptionKey { secret: String, reason: String },
    #[error("PKI: {0}")]
    Pki(#[from] PkiError),
    #[error("object {0} has no namespace or uid yet")]
    IncompleteObject(String),
    #[error("children of {0} are still being deleted")]
    CleanupPending(String),
    #[error("{kind} {name} already exists and belongs to {owner}, not to this TenantCluster; kok does not take it over: delete or rename it")]
    NotOwned {
        kind: String,
        name: String,
        owner: String,
    },
    #[error("{0}")]
    VolumesNotAdoptable(String),
    #[error("tenant etcd: {0}")]
    Etcd(String),
    #[error("upgrade: {0}")]
    Upgrade(String),
    #[error("{0}")]
    ArtifactService(String),
}

impl Error {
    /// Low-cardinality label for `kok_reconcile_errors_total{reason=...}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
            Error::CorruptCa { .. } => "corrupt_ca",
            Error::UnusableEncryptionKey { .. } => "unusable_encryption_key",
            Error::Pki(_) => "pki",
            Error::IncompleteObject(_) => "incomplete_object",
            Error::CleanupPending(_) => "cleanup_pending",
            Error::NotOwned { .. } => "not_owned",
            Error::VolumesNotAdoptable(_) => "volumes_not_adoptable",
            Error::Etcd(_) => "etcd",
            Error::Upgrade(_) => "upgrade",
            Error::ArtifactService(_) => "artifact_service",
        }
    }

    /// The API server's answer, when the error is one.
    pub fn api_response(&self) -> Option<&kube::core::Status> {
        match self {
            Error::Kube(kube::Error::Api(e)) => Some(e),
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.api_response(),
                kube::runtime::finalizer::Error::AddFinalizer(kube::Error::Api(e))
                | kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(e)) => Some(e),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether retrying cannot help until someone changes something: the API
    /// refused the object as invalid (400/422), or a name is taken.
    pub fn is_stalled(&self) -> bool {
        match self {
            Error::NotOwned { .. }
            | Error::VolumesNotAdoptable(_)
            | Error::CorruptCa { .. }
            | Error::UnusableEncryptionKey { .. }
            | Error::Upgrade(_) => true,
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_stalled(),
                _ => self
                    .api_response()
                    .is_some_and(|r| matches!(r.code, 400 | 422)),
            },
            _ => self
                .api_response()
                .is_some_and(|r| matches!(r.code, 400 | 422)),
        }
    }

    /// The innermost error, without the finalizer's wrapping.
    pub fn inner(&self) -> &Error {
        match self {
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            _ => self,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
