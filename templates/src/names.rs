//! Names and labels of every child object of a TenantCluster, in one place.

use std::collections::BTreeMap;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "kok";
pub const TENANT_LABEL: &str = "kok.dev/tenant-cluster";
pub const COMPONENT_LABEL: &str = "kok.dev/component";
/// Pod template annotation whose change rolls the pods (certificates, flags).
pub const CONFIG_HASH_ANNOTATION: &str = "kok.dev/config-hash";

pub const ETCD: &str = "etcd";
pub const APISERVER: &str = "kube-apiserver";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub const SCHEDULER: &str = "kube-scheduler";

/// Names derived from the TenantCluster name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub tenant: String,
}

impl Names {
    pub fn new(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_string(),
        }
    }
    /// The etcd StatefulSet and its client Service.
    pub fn etcd(&self) -> String {
        format!("{}-etcd", self.tenant)
    }
    /// Member `i`: its pod, its own Service, and the hostname peers use.
    pub fn etcd_member(&self, i: i32) -> String {
        format!("{}-etcd-{i}", self.tenant)
    }
    pub fn apiserver(&self) -> String {
        format!("{}-apiserver", self.tenant)
    }
    pub fn controller_manager(&self) -> String {
        format!("{}-controller-manager", self.tenant)
    }
    pub fn scheduler(&self) -> String {
        format!("{}-scheduler", self.tenant)
    }
    pub fn etcd_network_policy(&self) -> String {
        format!("{}-etcd", self.tenant)
    }
    /// Secret of one CA (`ca`, `front-proxy-ca`, `etcd-ca`).
    pub fn ca_secret(&self, ca: &str) -> String {
        format!("{}-{ca}", self.tenant)
    }
    /// Secret with the service-account signing key pair.
    pub fn service_account_secret(&self) -> String {
        format!("{}-sa", self.tenant)
    }
    /// Secret with every leaf certificate and key (`<leaf>.crt`, `<leaf>.key`).
    pub fn certs_secret(&self) -> String {
        format!("{}-certs", self.tenant)
    }
    /// The admin kubeconfig (key `value`, the Cluster API convention).
    pub fn admin_kubeconfig_secret(&self) -> String {
        format!("{}-kubeconfig", self.tenant)
    }
    pub fn component_kubeconfig_secret(&self, component: &str) -> String {
        format!("{}-{component}-kubeconfig", self.tenant)
    }
}

/// Labels on every child of the tenant.
pub fn tenant_labels(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (TENANT_LABEL.to_string(), tenant.to_string()),
    ])
}

/// Labels of one component's objects; also its pod selector.
pub fn component_labels(tenant: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = tenant_labels(tenant);
    labels.insert(COMPONENT_LABEL.to_string(), component.to_string());
    labels
}

/// Selector of all children of a tenant, for list and delete calls.
pub fn tenant_selector(tenant: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{TENANT_LABEL}={tenant}")
}
