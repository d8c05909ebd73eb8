//! Command-line flags of each control-plane component, for the declared version.
//!
//! Flags are rendered as a name -> value map so user extra args merge by name,
//! and so tests can check what each version must and must not get.

use std::collections::BTreeMap;

use crate::version::KubeVersion;

/// Where the certificates and kubeconfigs are mounted in the pods.
pub const PKI_DIR: &str = "/etc/kubernetes/pki";
pub const KUBECONFIG_PATH: &str = "/etc/kubernetes/kubeconfig/value";
pub const APISERVER_PORT: i32 = 6443;
pub const CONTROLLER_MANAGER_PORT: i32 = 10257;
pub const SCHEDULER_PORT: i32 = 10259;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    ApiServer,
    ControllerManager,
    Scheduler,
}

/// Flags kok sets from its own state (certificates, endpoints, ranges): a user
/// override would break the control plane or its PKI.
pub const PROTECTED_FLAGS: &[(Component, &str)] = &[
    (Component::ApiServer, "etcd-servers"),
    (Component::ApiServer, "etcd-cafile"),
    (Component::ApiServer, "etcd-certfile"),
    (Component::ApiServer, "etcd-keyfile"),
    (Component::ApiServer, "tls-cert-file"),
    (Component::ApiServer, "tls-private-key-file"),
    (Component::ApiServer, "client-ca-file"),
    (Component::ApiServer, "secure-port"),
    (Component::ApiServer, "service-account-key-file"),
    (Component::ApiServer, "service-account-signing-key-file"),
    (Component::ApiServer, "service-cluster-ip-range"),
    (Component::ApiServer, "encryption-provider-config"),
    (Component::ApiServer, "kubelet-client-certificate"),
    (Component::ApiServer, "kubelet-client-key"),
    (Component::ApiServer, "requestheader-client-ca-file"),
    (Component::ApiServer, "proxy-client-cert-file"),
    (Component::ApiServer, "proxy-client-key-file"),
    (Component::ControllerManager, "kubeconfig"),
    (Component::ControllerManager, "authentication-kubeconfig"),
    (Component::ControllerManager, "authorization-kubeconfig"),
    (Component::ControllerManager, "cluster-signing-cert-file"),
    (Component::ControllerManager, "cluster-signing-key-file"),
    (Component::ControllerManager, "root-ca-file"),
    (
        Component::ControllerManager,
        "service-account-private-key-file",
    ),
    (Component::Scheduler, "kubeconfig"),
    (Component::Scheduler, "authentication-kubeconfig"),
    (Component::Scheduler, "authorization-kubeconfig"),
];

/// Flags removed upstream, with the first minor that no longer accepts them:
/// passing one of these makes the component exit at start.
pub const REMOVED_FLAGS: &[(Component, &str, u32)] = &[
    (Component::ApiServer, "insecure-port", 24),
    (Component::ApiServer, "insecure-bind-address", 24),
    (Component::ApiServer, "kubelet-https", 22),
    (Component::ApiServer, "service-account-api-audiences", 22),
    (Component::ControllerManager, "port", 24),
    (Component::ControllerManager, "address", 24),
    (Component::Scheduler, "port", 23),
    (Component::Scheduler, "address", 23),
];

/// Flags each component needs to come up as kok runs it, in every version.
pub const REQUIRED_FLAGS: &[(Component, &str)] = &[
    (Component::ApiServer, "etcd-servers"),
    (Component::ApiServer, "service-account-issuer"),
    (Component::ApiServer, "service-account-key-file"),
    (Component::ApiServer, "service-account-signing-key-file"),
    (Component::ApiServer, "service-cluster-ip-range"),
    (Component::ApiServer, "tls-cert-file"),
    (Component::ApiServer, "client-ca-file"),
    (Component::ControllerManager, "kubeconfig"),
    (
        Component::ControllerManager,
        "service-account-private-key-file",
    ),
    (Component::ControllerManager, "root-ca-file"),
    (Component::ControllerManager, "cluster-signing-cert-file"),
    (Component::Scheduler, "kubeconfig"),
];

/// What the flags depend on besides the version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagInputs {
    pub version: KubeVersion,
    pub tenant: String,
    /// `https://<member>:2379` for every etcd member.
    pub etcd_servers: Vec<String>,
    /// The address the apiserver publishes in the tenant's `kubernetes` endpoints.
    pub advertise_address: Option<String>,
    pub service_cidr: String,
    pub pod_cidr: String,
    pub cluster_domain: String,
}

type Flags = BTreeMap<String, String>;

fn flags<const N: usize>(pairs: [(&str, String); N]) -> Flags {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn pki(file: &str) -> String {
    format!("{PKI_DIR}/{file}")
}

/// How long a stopping apiserver keeps serving while its endpoint is removed
/// (kube-proxy and the endpoints controller need a few seconds).
pub const APISERVER_SHUTDOWN_DELAY_SECONDS: i64 = 10;

pub fn apiserver_flags(i: &FlagInputs) -> Flags {
    let mut f = flags([
        ("bind-address", "0.0.0.0".into()),
        ("secure-port", APISERVER_PORT.to_string()),
        ("etcd-servers", i.etcd_servers.join(",")),
        ("etcd-cafile", pki("etcd-ca.crt")),
        ("etcd-certfile", pki("apiserver-etcd-client.crt")),
        ("etcd-keyfile", pki("apiserver-etcd-client.key")),
        ("client-ca-file", pki("ca.crt")),
        ("tls-cert-file", pki("apiserver.crt")),
        ("tls-private-key-file", pki("apiserver.key")),
        (
            "kubelet-client-certificate",
            pki("apiserver-kubelet-client.crt"),
        ),
        ("kubelet-client-key", pki("apiserver-kubelet-client.key")),
        (
            "kubelet-preferred-address-types",
            "InternalIP,ExternalIP,Hostname".into(),
        ),
        ("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        ("requestheader-allowed-names", "front-proxy-client".into()),
        (
            "requestheader-extra-headers-prefix",
            "X-Remote-Extra-".into(),
        ),
        ("requestheader-group-headers", "X-Remote-Group".into()),
        ("requestheader-username-headers", "X-Remote-User".into()),
        ("proxy-client-cert-file", pki("front-proxy-client.crt")),
        ("proxy-client-key-file", pki("front-proxy-client.key")),
        (
            "service-account-issuer",
            format!("https://kubernetes.default.svc.{}", i.cluster_domain),
        ),
        ("service-account-key-file", pki("sa.pub")),
        ("service-account-signing-key-file", pki("sa.key")),
        ("service-cluster-ip-range", i.service_cidr.clone()),
        // Secrets sealed in etcd and its backups (`at_rest`).
        (
            "encryption-provider-config",
            pki(crate::at_rest::CONFIG_FILE),
        ),
        ("authorization-mode", "Node,RBAC".into()),
        ("enable-admission-plugins", "NodeRestriction".into()),
        ("enable-bootstrap-token-auth", "true".into()),
        ("allow-privileged", "true".into()),
        ("profiling", "false".into()),
        // On SIGTERM keep serving (with /readyz failing) until the Service
        // has dropped this pod: a rolling update then loses no request.
        (
            "shutdown-delay-duration",
            format!("{APISERVER_SHUTDOWN_DELAY_SECONDS}s"),
        ),
    ]);
    if let Some(addr) = &i.advertise_address {
        f.insert("advertise-address".into(), addr.clone());
    }
    if i.version.minor < 24 {
        // Before 1.24 the unauthenticated port still existed; make sure it is off.
        f.insert("insecure-port".into(), "0".into());
    }
    f
}

pub fn controller_manager_flags(i: &FlagInputs) -> Flags {
    let mut f = flags([
        ("kubeconfig", KUBECONFIG_PATH.into()),
        ("authentication-kubeconfig", KUBECONFIG_PATH.into()),
        ("authorization-kubeconfig", KUBECONFIG_PATH.into()),
        ("bind-address", "0.0.0.0".into()),
        ("secure-port", CONTROLLER_MANAGER_PORT.to_string()),
        ("leader-elect", "true".into()),
        ("cluster-name", i.tenant.clone()),
        ("cluster-signing-cert-file", pki("ca.crt")),
        ("cluster-signing-key-file", pki("ca.key")),
        ("root-ca-file", pki("ca.crt")),
        ("service-account-private-key-file", pki("sa.key")),
        ("use-service-account-credentials", "true".into()),
        ("controllers", "*,bootstrapsigner,tokencleaner".into()),
        ("service-cluster-ip-range", i.service_cidr.clone()),
        ("cluster-cidr", i.pod_cidr.clone()),
        ("allocate-node-cidrs", "true".into()),
        ("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        ("profiling", "false".into()),
    ]);
    if i.version.minor < 24 {
        f.insert("port".into(), "0".into());
    }
    f
}

pub fn scheduler_flags(i: &FlagInputs) -> Flags {
    let mut f = flags([
        ("kubeconfig", KUBECONFIG_PATH.into()),
        ("authentication-kubeconfig", KUBECONFIG_PATH.into()),
        ("authorization-kubeconfig", KUBECONFIG_PATH.into()),
        ("bind-address", "0.0.0.0".into()),
        ("secure-port", SCHEDULER_PORT.to_string()),
        ("leader-elect", "true".into()),
        ("profiling", "false".into()),
    ]);
    if i.version.minor < 23 {
        f.insert("port".into(), "0".into());
    }
    f
}

/// `--name=value` arguments: kok's flags with the user's extra args merged over them
/// (validation has already refused overrides of protected flags).
pub fn render_args(flags: &Flags, extra: &BTreeMap<String, String>) -> Vec<String> {
    let mut merged = flags.clone();
    merged.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged.iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(minor: u32) -> FlagInputs {
        FlagInputs {
            version: KubeVersion {
                major: 1,
                minor,
                patch: 0,
            },
            tenant: "demo".into(),
            etcd_servers: vec!["https://demo-etcd-0:2379".into()],
            advertise_address: Some("10.202.0.10".into()),
            service_cidr: "10.96.0.0/12".into(),
            pod_cidr: "10.244.0.0/16".into(),
            cluster_domain: "cluster.local".into(),
        }
    }

    fn rendered(c: Component, minor: u32) -> Flags {
        let i = inputs(minor);
        match c {
            Component::ApiServer => apiserver_flags(&i),
            Component::ControllerManager => controller_manager_flags(&i),
            Component::Scheduler => scheduler_flags(&i),
        }
    }

    const VERSIONS: [u32; 5] = [20, 31, 32, 33, 34];
    const COMPONENTS: [Component; 3] = [
        Component::ApiServer,
        Component::ControllerManager,
        Component::Scheduler,
    ];

    #[test]
    fn no_version_gets_a_flag_removed_in_it() {
        for minor in VERSIONS {
            for c in COMPONENTS {
                let f = rendered(c, minor);
                for (rc, flag, removed_in) in REMOVED_FLAGS {
                    if *rc == c && minor >= *removed_in {
                        assert!(
                            !f.contains_key(*flag),
                            "v1.{minor} {c:?} must not get --{flag}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_version_gets_the_required_flags() {
        for minor in VERSIONS {
            for (c, flag) in REQUIRED_FLAGS {
                assert!(
                    rendered(*c, minor).contains_key(*flag),
                    "v1.{minor} {c:?} needs --{flag}"
                );
            }
        }
    }

    #[test]
    fn old_versions_turn_insecure_ports_off() {
        assert_eq!(
            rendered(Component::ApiServer, 20)
                .get("insecure-port")
                .map(String::as_str),
            Some("0")
        );
        assert_eq!(
            rendered(Component::ControllerManager, 20)
                .get("port")
                .map(String::as_str),
            Some("0")
        );
        assert_eq!(
            rendered(Component::Scheduler, 20)
                .get("port")
                .map(String::as_str),
            Some("0")
        );
        assert!(!rendered(Component::Scheduler, 23).contains_key("port"));
    }

    #[test]
    fn etcd_servers_list_every_member() {
        let mut i = inputs(20);
        i.etcd_servers = (0..3)
            .map(|n| format!("https://demo-etcd-{n}:2379"))
            .collect();
        assert_eq!(
            apiserver_flags(&i)["etcd-servers"],
            "https://demo-etcd-0:2379,https://demo-etcd-1:2379,https://demo-etcd-2:2379"
        );
    }

    #[test]
    fn extra_args_override_by_name_and_render_sorted() {
        let f = flags([("v", "2".to_string()), ("a", "1".to_string())]);
        let extra = BTreeMap::from([("v".to_string(), "4".to_string())]);
        assert_eq!(render_args(&f, &extra), ["--a=1", "--v=4"]);
    }

    #[test]
    fn protected_flags_are_flags_kok_sets() {
        for (c, flag) in PROTECTED_FLAGS {
            assert!(
                rendered(*c, 20).contains_key(*flag),
                "{c:?} --{flag} is protected but never set"
            );
        }
    }
}
