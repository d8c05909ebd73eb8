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
    #[error("PKI: {0}")]
    Pki(#[from] PkiError),
    #[error("object {0} has no namespace or uid yet")]
    IncompleteObject(String),
    #[error("children of {0} are still being deleted")]
    CleanupPending(String),
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
            Error::Pki(_) => "pki",
            Error::IncompleteObject(_) => "incomplete_object",
            Error::CleanupPending(_) => "cleanup_pending",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
