//! Pure builders from a `TenantCluster` to the objects that run it. No API client here:
//! everything is a function of its inputs, tested without a cluster.

pub mod addons;
pub mod argocd;
pub mod artifact_access;
pub mod at_rest;
pub mod backup;
pub mod backup_source;
pub mod controlplane;
pub mod endpoint;
pub mod etcd_roll;
pub mod etcd_scale;
pub mod field_error;
pub mod flags;
pub mod inspection;
pub mod kstatus;
pub mod member_replacement;
pub mod membership;
pub mod migration;
pub mod names;
pub mod nodes;
pub mod pki;
pub mod pod_trouble;
pub mod quantity;
pub mod restore;
pub mod secrets;
pub mod security;
pub mod tenant_status;
pub mod upgrade_plan;
pub mod validate;
pub mod version;
