//! Pure builders from a `TenantCluster` to the objects that run it. No API client here.

pub mod pki;
