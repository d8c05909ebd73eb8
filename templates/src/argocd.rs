//! Where and under which name kok may register a tenant with Argo CD. A
//! tenant chooses `spec.access.argocd`; kok writes with its own rights into
//! another namespace, so what a tenant may ask for is the platform's call:
//! - only into namespaces the operator allows (`KOK_ARGOCD_NAMESPACES`,
//!   empty by default: the integration is off until a platform turns it on);
//! - a chosen cluster name must start with the tenant's namespace and `-`
//!   (another team's Applications target clusters by name) unless the
//!   operator allows free names;
//! - never a name or server another cluster Secret there already uses;
//! - the Secret's own name is injective: `kok-<namespace>.<tenant>` (a
//!   namespace has no dots), where `kok-<namespace>-<tenant>` made
//!   `team`/`a-prod` and `team-a`/`prod` one Secret.

use kok_crds::ArgoCdCluster;

/// What the operator allows (`KOK_ARGOCD_NAMESPACES`, `KOK_ARGOCD_FREE_NAMES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgoPolicy {
    /// Namespace names; a trailing or inner `*` matches any run of characters.
    pub namespaces: Vec<String>,
    /// Any cluster name, not only `<tenant namespace>-...`.
    pub free_names: bool,
}

/// A cluster Secret already in the target namespace (not this tenant's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherCluster {
    pub secret: String,
    pub name: String,
    pub server: String,
}

/// Where the tenant's cluster Secret goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub namespace: String,
    pub secret_name: String,
    pub cluster_name: String,
}

pub fn secret_name(tenant_namespace: &str, tenant: &str) -> String {
    format!("kok-{tenant_namespace}.{tenant}")
}

/// The registration kok may write, or why not (naming the field).
pub fn decide(
    policy: &ArgoPolicy,
    tenant_namespace: &str,
    tenant: &str,
    spec: &ArgoCdCluster,
    server: &str,
    others: &[OtherCluster],
) -> Result<Registration, String> {
    if !namespace_allowed(policy, &spec.namespace) {
        return Err(format!(
            "spec.access.argocd.namespace: {:?} is not a namespace the operator registers clusters in \
             (KOK_ARGOCD_NAMESPACES: {})",
            spec.namespace,
            if policy.namespaces.is_empty() { "none".to_string() } else { policy.namespaces.join(", ") }
        ));
    }
    let prefix = format!("{tenant_namespace}-");
    let cluster_name = match &spec.name {
        Some(name) if !policy.free_names && !name.starts_with(&prefix) => {
            return Err(format!(
                "spec.access.argocd.name: {name:?} must start with {prefix:?} \
                 (the operator allows other names with KOK_ARGOCD_FREE_NAMES)"
            ))
        }
        Some(name) => name.clone(),
        None => format!("{tenant_namespace}-{tenant}"),
    };
    if let Some(o) = others.iter().find(|o| o.name == cluster_name) {
        return Err(format!(
            "spec.access.argocd.name: the Argo CD cluster name {cluster_name:?} is taken by Secret {}/{}",
            spec.namespace, o.secret
        ));
    }
    if let Some(o) = others.iter().find(|o| o.server == server) {
        return Err(format!(
            "spec.access.argocd: Secret {}/{} already registers the server {server}",
            spec.namespace, o.secret
        ));
    }
    Ok(Registration {
        namespace: spec.namespace.clone(),
        secret_name: secret_name(tenant_namespace, tenant),
        cluster_name,
    })
}

/// Whether kok may write cluster Secrets into `namespace` (checked before
/// it reads anything there).
pub fn namespace_allowed(policy: &ArgoPolicy, namespace: &str) -> bool {
    policy.namespaces.iter().any(|p| matches(p, namespace))
}

/// `*` matches any run of characters, the rest literally.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && matches(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespace: &str, name: Option<&str>) -> ArgoCdCluster {
        ArgoCdCluster {
            namespace: namespace.into(),
            name: name.map(Into::into),
            project: None,
        }
    }

    fn policy(namespaces: &[&str]) -> ArgoPolicy {
        ArgoPolicy {
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            free_names: false,
        }
    }

    const SERVER: &str = "https://10.0.0.1:6443";

    #[test]
    fn only_allowed_namespaces_and_nothing_by_default() {
        let s = spec("kube-system", None);
        let err = decide(&ArgoPolicy::default(), "team", "a", &s, SERVER, &[]).unwrap_err();
        assert!(err.starts_with("spec.access.argocd.namespace"), "{err}");
        assert!(err.contains("none"), "{err}");
        let p = policy(&["argocd", "e2e-*-argocd"]);
        assert!(decide(&p, "team", "a", &s, SERVER, &[]).is_err());
        assert!(decide(&p, "team", "a", &spec("argocd", None), SERVER, &[]).is_ok());
        assert!(decide(&p, "t", "a", &spec("e2e-x1-argocd", None), SERVER, &[]).is_ok());
        assert!(decide(&p, "t", "a", &spec("e2e-x1-argocdx", None), SERVER, &[]).is_err());
    }

    #[test]
    fn secret_names_are_injective_and_cluster_names_prefixed() {
        assert_ne!(secret_name("team", "a-prod"), secret_name("team-a", "prod"));
        let p = policy(&["argocd"]);
        let r = decide(&p, "team", "a", &spec("argocd", None), SERVER, &[]).unwrap();
        assert_eq!(r.secret_name, "kok-team.a");
        assert_eq!(r.cluster_name, "team-a");
        let chosen = spec("argocd", Some("production"));
        let err = decide(&p, "team", "a", &chosen, SERVER, &[]).unwrap_err();
        assert!(err.starts_with("spec.access.argocd.name"), "{err}");
        let free = ArgoPolicy {
            free_names: true,
            ..p.clone()
        };
        assert_eq!(
            decide(&free, "team", "a", &chosen, SERVER, &[])
                .unwrap()
                .cluster_name,
            "production"
        );
        let ok = spec("argocd", Some("team-payments"));
        assert!(decide(&p, "team", "a", &ok, SERVER, &[]).is_ok());
    }

    #[test]
    fn a_name_or_server_another_secret_uses_is_refused() {
        let p = policy(&["argocd"]);
        let others = [OtherCluster {
            secret: "prod-cluster".into(),
            name: "team-a".into(),
            server: "https://10.0.0.9:6443".into(),
        }];
        let err = decide(&p, "team", "a", &spec("argocd", None), SERVER, &others).unwrap_err();
        assert!(err.contains("taken by Secret argocd/prod-cluster"), "{err}");
        let err = decide(
            &p,
            "team",
            "b",
            &spec("argocd", None),
            "https://10.0.0.9:6443",
            &others,
        )
        .unwrap_err();
        assert!(err.contains("already registers the server"), "{err}");
        assert!(decide(&p, "team", "b", &spec("argocd", None), SERVER, &others).is_ok());
    }
}
