//! The tenant's workloads as observed.

use super::*;

pub(super) fn available_replicas(d: &Deployment) -> i32 {
    d.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}
