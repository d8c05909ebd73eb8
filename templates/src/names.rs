//! Names and labels of every child object of a TenantCluster, in one place.

use std::collections::BTreeMap;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "kok";
pub const TENANT_LABEL: &str = "kok.dev/tenant-cluster";
pub const COMPONENT_LABEL: &str = "kok.dev/component";
/// Pod template annotation whose change rolls the pods (certificates, flags).
pub const CONFIG_HASH_ANNOTATION: &str = "kok.dev/config-hash";

pub const ETCD: &str = "etcd";
/// The largest etcd member count kok runs (`spec.etcd.replicas` is 1, 3 or 5).
pub const MAX_ETCD_MEMBERS: i32 = 5;
pub const APISERVER: &str = "kube-apiserver";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub const SCHEDULER: &str = "kube-scheduler";

/// Every suffix kok appends to a TenantCluster name (`<name>-<suffix>`), for
/// any kind of child. `{i}` stands for an etcd member index.
pub const CHILD_SUFFIXES: &[&str] = &[
    "etcd",
    "etcd-{i}",
    "etcd-g{n}",
    "etcd-g{n}-{i}",
    "etcd-bootstrap",
    "etcd-g{n}-bootstrap",
    "apiserver",
    "controller-manager",
    "scheduler",
    "ca",
    "front-proxy-ca",
    "etcd-ca",
    "sa",
    "encryption",
    "certs",
    "kubeconfig",
    "controller-manager-kubeconfig",
    "scheduler-kubeconfig",
];

/// Name endings that would make this tenant's children collide with another
/// tenant's in the same namespace: `a-etcd` would use `a-etcd-ca`, which is
/// `a`'s etcd CA. Derived from [`CHILD_SUFFIXES`]: whenever a suffix is
/// `<x>-<another suffix>`, a name ending in `-<x>` is ambiguous.
pub fn reserved_endings() -> Vec<String> {
    let mut endings = Vec::new();
    for long in CHILD_SUFFIXES {
        for short in CHILD_SUFFIXES {
            if let Some(x) = long.strip_suffix(&format!("-{short}")) {
                if !endings.iter().any(|e| e == x) {
                    endings.push(x.to_string());
                }
            }
        }
    }
    endings
}

/// The reserved ending `name` has, if any.
pub fn reserved_ending(name: &str) -> Option<String> {
    reserved_endings()
        .into_iter()
        .find(|x| name.ends_with(&format!("-{x}")))
}

/// Names derived from the TenantCluster name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub tenant: String,
    /// Which etcd cluster of the tenant the etcd names refer to: 0 is the
    /// one it was created with; a data migration builds generation n+1
    /// next to generation n (see `crate::migration`).
    pub etcd_generation: u32,
}

impl Names {
    pub fn new(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_string(),
            etcd_generation: 0,
        }
    }
    /// The same tenant's names for etcd generation `g`.
    pub fn at_etcd_generation(&self, g: u32) -> Self {
        Self {
            tenant: self.tenant.clone(),
            etcd_generation: g,
        }
    }
    /// The etcd StatefulSet and its client Service: `<t>-etcd`, and
    /// `<t>-etcd-g<n>` for later generations.
    pub fn etcd(&self) -> String {
        match self.etcd_generation {
            0 => format!("{}-etcd", self.tenant),
            g => format!("{}-etcd-g{g}", self.tenant),
        }
    }
    /// ConfigMap with how a member without data starts (`new` until every
    /// member has served once, then `existing`: see `controlplane::etcd_bootstrap_config`).
    pub fn etcd_bootstrap_config(&self) -> String {
        format!("{}-bootstrap", self.etcd())
    }
    /// Member `i`: its pod, its own Service, and the hostname peers use.
    pub fn etcd_member(&self, i: i32) -> String {
        format!("{}-{i}", self.etcd())
    }
    /// The name of a per-generation leaf certificate (`etcd-server`,
    /// `etcd-peer`) in the certs Secret: generation 0 keeps the plain name.
    pub fn etcd_leaf(&self, base: &str) -> String {
        match self.etcd_generation {
            0 => base.to_string(),
            g => format!("{base}-g{g}"),
        }
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
    /// Secret with the EncryptionConfiguration of Secrets at rest (`at_rest`).
    pub fn encryption_secret(&self) -> String {
        format!("{}-encryption", self.tenant)
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

/// The names of a TenantCluster's children, etcd at the generation that serves.
pub fn tenant_names(tc: &kok_crds::TenantCluster) -> Names {
    let name = tc.metadata.name.as_deref().unwrap_or_default();
    let g = tc
        .status
        .as_ref()
        .and_then(|s| s.etcd_generation)
        .unwrap_or(0);
    Names::new(name).at_etcd_generation(g)
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

/// Selector of one component's pods of a tenant, for list calls.
pub fn component_selector(tenant: &str, component: &str) -> String {
    component_labels(tenant, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Selector of all children of a tenant, for list and delete calls.
pub fn tenant_selector(tenant: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{TENANT_LABEL}={tenant}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every child name of a tenant, by the methods the controllers use.
    fn children(n: &Names) -> Vec<String> {
        let mut all = vec![
            n.etcd(),
            n.apiserver(),
            n.controller_manager(),
            n.scheduler(),
            n.service_account_secret(),
            n.encryption_secret(),
            n.certs_secret(),
            n.admin_kubeconfig_secret(),
            n.component_kubeconfig_secret("controller-manager"),
            n.component_kubeconfig_secret("scheduler"),
        ];
        all.extend((0..5).map(|i| n.etcd_member(i)));
        all.extend(["ca", "front-proxy-ca", "etcd-ca"].map(|ca| n.ca_secret(ca)));
        for g in 1..4 {
            let later = n.at_etcd_generation(g);
            all.push(later.etcd());
            all.extend((0..5).map(|i| later.etcd_member(i)));
        }
        all
    }

    #[test]
    fn the_catalogue_covers_every_child_name() {
        let n = Names::new("t");
        for child in children(&n) {
            let suffix = child.strip_prefix("t-").unwrap();
            let number = |s: &str| s.parse::<u32>().is_ok();
            let generic = match suffix.strip_prefix("etcd-") {
                Some(i) if number(i) => "etcd-{i}",
                Some(rest) => match rest.strip_prefix('g').map(|r| r.split_once('-')) {
                    Some(Some((g, i))) if number(g) && number(i) => "etcd-g{n}-{i}",
                    Some(None) if number(&rest[1..]) => "etcd-g{n}",
                    _ => suffix,
                },
                None => suffix,
            };
            assert!(CHILD_SUFFIXES.contains(&generic), "{child} not catalogued");
        }
    }

    #[test]
    fn reserved_endings_are_the_ambiguous_ones() {
        let mut endings = reserved_endings();
        endings.sort();
        assert_eq!(
            endings,
            ["controller-manager", "etcd", "front-proxy", "scheduler"]
        );
        assert_eq!(reserved_ending("good-etcd").as_deref(), Some("etcd"));
        assert_eq!(
            reserved_ending("etcd"),
            None,
            "only a dash-separated ending"
        );
        assert_eq!(reserved_ending("good-etcd2"), None);
    }

    #[test]
    fn names_without_reserved_endings_never_share_a_child() {
        let tenants = [
            "a",
            "a-b",
            "a-etcd-0",
            "a-etcd-g1",
            "a-etcd-g1-0",
            "a-sa",
            "a-certs",
            "a-ca",
            "a-apiserver",
            "b",
        ];
        let mut seen = std::collections::HashMap::new();
        for t in tenants {
            assert_eq!(reserved_ending(t), None, "{t}");
            for child in children(&Names::new(t)) {
                if let Some(other) = seen.insert(child.clone(), t) {
                    panic!("{t} and {other} share {child}");
                }
            }
        }
    }
}
