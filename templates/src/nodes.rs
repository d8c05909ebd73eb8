//! The tenant side of worker nodes: the objects a stock `kubeadm join` of
//! the tenant's version reads (cluster-info, the bootstrap-token RBAC,
//! kubeadm-config, the kubelet configuration), the bootstrap tokens kok
//! issues, and the kubelet version skew rule that holds upgrades.
//!
//! Every object here is applied inside the tenant cluster through its API,
//! labelled `app.kubernetes.io/managed-by: kok`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kok_crds::NetworkingSpec;
use sha2::{Digest, Sha256};

use crate::names::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::version::KubeVersion;

/// The group every kok bootstrap token authenticates as (kubeadm's default,
/// so kubeadm's documentation about it holds).
pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";
pub const NODES_GROUP: &str = "system:nodes";
pub const KUBE_SYSTEM: &str = "kube-system";
pub const KUBE_PUBLIC: &str = "kube-public";
/// Where kubelets find the cluster's CA, as kubeadm writes it on a node.
const NODE_CA_FILE: &str = "/etc/kubernetes/pki/ca.crt";

/// What the tenant-side objects are computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInputs {
    /// The version the control plane runs now (the kubelet configuration
    /// ConfigMap is named after it).
    pub version: KubeVersion,
    pub cluster_name: String,
    /// `https://host:port` nodes reach the apiserver at.
    pub endpoint: String,
    pub ca_pem: String,
    pub networking: NetworkingSpec,
    pub image_repository: String,
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_string(),
            MANAGED_BY.to_string(),
        )])),
        ..Default::default()
    }
}

/// `kube-public/cluster-info`: the server and CA only, readable without
/// credentials. The tenant's bootstrap signer adds a signature per token,
/// which `kubeadm join --discovery-token-ca-cert-hash` checks.
pub fn cluster_info(endpoint: &str, ca_pem: &str) -> ConfigMap {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let kubeconfig = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: \"\"
  cluster:
    certificate-authority-data: {ca}
    server: {endpoint}
contexts: []
current-context: \"\"
preferences: {{}}
users: []
"
    );
    ConfigMap {
        metadata: meta("cluster-info", Some(KUBE_PUBLIC)),
        data: Some(BTreeMap::from([("kubeconfig".to_string(), kubeconfig)])),
        ..Default::default()
    }
}

/// The name kubeadm of this version reads the kubelet configuration from:
/// `kubelet-config-1.<minor>` until the unversioned name became the default
/// in 1.24.
pub fn kubelet_config_map_name(v: KubeVersion) -> String {
    if v.minor >= 24 {
        "kubelet-config".into()
    } else {
        format!("kubelet-config-{}.{}", v.major, v.minor)
    }
}

/// The Role name kubeadm uses for reading that ConfigMap.
fn kubelet_config_role_name(v: KubeVersion) -> String {
    if v.minor >= 24 {
        "kubeadm:kubelet-config".into()
    } else {
        format!("kubeadm:kubelet-config-{}.{}", v.major, v.minor)
    }
}

/// The kubeadm API version of the ClusterConfiguration stored in the
/// cluster for this version.
pub fn kubeadm_api_version(v: KubeVersion) -> &'static str {
    match v.minor {
        0..=21 => "kubeadm.k8s.io/v1beta2",
        22..=30 => "kubeadm.k8s.io/v1beta3",
        _ => "kubeadm.k8s.io/v1beta4",
    }
}

/// `host:port` of an `https://host:port` URL.
pub fn host_port(endpoint: &str) -> &str {
    endpoint
        .strip_prefix("https://")
        .unwrap_or(endpoint)
        .trim_end_matches('/')
}

/// `kube-system/kubeadm-config`: the ClusterConfiguration `kubeadm join`
/// reads (networking, version, the endpoint).
pub fn kubeadm_config(i: &NodeInputs) -> ConfigMap {
    let n = &i.networking;
    let cfg = format!(
        "apiVersion: {api}
kind: ClusterConfiguration
clusterName: {name}
kubernetesVersion: {version}
controlPlaneEndpoint: {endpoint}
certificatesDir: /etc/kubernetes/pki
imageRepository: {repo}
networking:
  dnsDomain: {domain}
  podSubnet: {pods}
  serviceSubnet: {services}
",
        api = kubeadm_api_version(i.version),
        name = i.cluster_name,
        version = i.version,
        endpoint = host_port(&i.endpoint),
        repo = i.image_repository,
        domain = n.cluster_domain,
        pods = n.pod_cidr,
        services = n.service_cidr,
    );
    ConfigMap {
        metadata: meta("kubeadm-config", Some(KUBE_SYSTEM)),
        data: Some(BTreeMap::from([("ClusterConfiguration".to_string(), cfg)])),
        ..Default::default()
    }
}

/// The tenant's cluster DNS address: the 10th address of the Service
/// range, as kubeadm chooses it.
pub fn dns_address(service_cidr: &str) -> Result<IpAddr, String> {
    let net: ipnet::IpNet = service_cidr
        .parse()
        .map_err(|e| format!("{service_cidr:?}: {e}"))?;
    let ip = match net.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 10).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 10).into()),
    };
    if !net.contains(&ip) {
        return Err(format!("{service_cidr} has no 10th address"));
    }
    Ok(ip)
}

/// The kubelet configuration kubeadm downloads at join: webhook
/// authentication and authorization (so the apiserver's kubelet client is
/// checked against the tenant's RBAC), the tenant CA for client
/// certificates, cluster DNS, client certificate rotation.
pub fn kubelet_config(i: &NodeInputs) -> Result<ConfigMap, String> {
    let dns = dns_address(&i.networking.service_cidr)?;
    // kubeadm moved its default to systemd in 1.22.
    let cgroup_driver = if i.version.minor >= 22 {
        "systemd"
    } else {
        "cgroupfs"
    };
    let cfg = format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {NODE_CA_FILE}
authorization:
  mode: Webhook
cgroupDriver: {cgroup_driver}
clusterDNS:
- {dns}
clusterDomain: {domain}
rotateCertificates: true
staticPodPath: /etc/kubernetes/manifests
",
        domain = i.networking.cluster_domain,
    );
    Ok(ConfigMap {
        metadata: meta(&kubelet_config_map_name(i.version), Some(KUBE_SYSTEM)),
        data: Some(BTreeMap::from([("kubelet".to_string(), cfg)])),
        ..Default::default()
    })
}

/// RBAC objects, grouped by kind for the client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rbac {
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
}

fn group(name: &str) -> Subject {
    Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "Group".into(),
        name: name.into(),
        namespace: None,
    }
}

fn user(name: &str) -> Subject {
    Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "User".into(),
        name: name.into(),
        namespace: None,
    }
}

fn cluster_binding(name: &str, cluster_role: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: cluster_role.into(),
        },
        subjects: Some(subjects),
    }
}

fn read_config_map(
    name: &str,
    namespace: &str,
    cm: &str,
    subjects: Vec<Subject>,
) -> (Role, RoleBinding) {
    let role = Role {
        metadata: meta(name, Some(namespace)),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(vec![cm.into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: meta(name, Some(namespace)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.into(),
        },
        subjects: Some(subjects),
    };
    (role, binding)
}

/// The RBAC kubeadm sets up for joining nodes: bootstrap tokens may post
/// CSRs that are approved without a person (and so are nodes' renewals),
/// read the node list (a name already taken), kubeadm-config and the
/// kubelet configuration; anyone may read cluster-info.
pub fn bootstrap_rbac(v: KubeVersion) -> Rbac {
    let bootstrappers = || vec![group(BOOTSTRAP_GROUP)];
    let get_nodes = ClusterRole {
        metadata: meta("kubeadm:get-nodes", None),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["nodes".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
        ..Default::default()
    };
    let (cluster_info_role, cluster_info_binding) = read_config_map(
        "kubeadm:bootstrap-signer-clusterinfo",
        KUBE_PUBLIC,
        "cluster-info",
        vec![user("system:anonymous")],
    );
    let (config_role, config_binding) = read_config_map(
        "kubeadm:nodes-kubeadm-config",
        KUBE_SYSTEM,
        "kubeadm-config",
        vec![group(BOOTSTRAP_GROUP), group(NODES_GROUP)],
    );
    let (kubelet_role, kubelet_binding) = read_config_map(
        &kubelet_config_role_name(v),
        KUBE_SYSTEM,
        &kubelet_config_map_name(v),
        vec![group(NODES_GROUP), group(BOOTSTRAP_GROUP)],
    );
    Rbac {
        cluster_roles: vec![get_nodes],
        cluster_role_bindings: vec![
            cluster_binding(
                "kubeadm:kubelet-bootstrap",
                "system:node-bootstrapper",
                bootstrappers(),
            ),
            cluster_binding(
                "kubeadm:node-autoapprove-bootstrap",
                "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                bootstrappers(),
            ),
            cluster_binding(
                "kubeadm:node-autoapprove-certificate-rotation",
                "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                vec![group(NODES_GROUP)],
            ),
            cluster_binding("kubeadm:get-nodes", "kubeadm:get-nodes", bootstrappers()),
        ],
        roles: vec![cluster_info_role, config_role, kubelet_role],
        role_bindings: vec![cluster_info_binding, config_binding, kubelet_binding],
    }
}

/// A bootstrap token: `<6 chars>.<16 chars>` of `[a-z0-9]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl BootstrapToken {
    /// From 22 random bytes (the caller's randomness): each byte picks one
    /// of the 36 characters. The modulo bias (256 % 36) is the same kubeadm
    /// accepts with its own generator; 16 characters still carry over 80
    /// bits.
    pub fn from_random(bytes: &[u8; 22]) -> Self {
        const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let s: String = bytes
            .iter()
            .map(|b| ALPHABET[(*b as usize) % 36] as char)
            .collect();
        Self {
            id: s[..6].into(),
            secret: s[6..].into(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let (id, secret) = s.split_once('.')?;
        let ok = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        (ok(id, 6) && ok(secret, 16)).then(|| Self {
            id: id.into(),
            secret: secret.into(),
        })
    }

    /// `bootstrap-token-<id>`, in the tenant's kube-system.
    pub fn secret_name(&self) -> String {
        format!("bootstrap-token-{}", self.id)
    }
}

impl std::fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

/// Label on the bootstrap token Secrets kok made, naming the JoinToken.
pub const JOIN_TOKEN_LABEL: &str = "kok.dev/join-token";

/// The tenant's `kube-system/bootstrap-token-<id>` Secret: authentication
/// for joining nodes and the signature of cluster-info, until `expiration`
/// (RFC 3339). The tenant's token cleaner deletes it when it expires, and
/// the apiserver refuses it from then on.
pub fn bootstrap_token_secret(
    token: &BootstrapToken,
    expiration: &str,
    description: &str,
    owner: &str,
) -> Secret {
    let mut m = meta(&token.secret_name(), Some(KUBE_SYSTEM));
    m.labels
        .get_or_insert_with(Default::default)
        .insert(JOIN_TOKEN_LABEL.into(), owner.into());
    let data = [
        ("token-id", token.id.as_str()),
        ("token-secret", token.secret.as_str()),
        ("expiration", expiration),
        ("description", description),
        ("usage-bootstrap-authentication", "true"),
        ("usage-bootstrap-signing", "true"),
        ("auth-extra-groups", BOOTSTRAP_GROUP),
    ];
    Secret {
        metadata: m,
        type_: Some("bootstrap.kubernetes.io/token".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// `sha256:<hex>` of the CA certificate's SubjectPublicKeyInfo: what
/// `kubeadm join --discovery-token-ca-cert-hash` pins.
pub fn ca_cert_hash(ca_pem: &str) -> Result<String, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .map_err(|e| format!("CA certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
        .map_err(|e| format!("CA certificate: {e}"))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    let digest = Sha256::digest(spki);
    Ok(format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

/// The command a node runs to join.
pub fn join_command(endpoint: &str, token: &BootstrapToken, ca_hash: &str) -> String {
    format!(
        "kubeadm join {} --token {token} --discovery-token-ca-cert-hash {ca_hash}",
        host_port(endpoint)
    )
}

/// A kubeconfig that authenticates with the bootstrap token, for a
/// kubelet started with `--bootstrap-kubeconfig` without kubeadm.
pub fn bootstrap_kubeconfig(
    cluster_name: &str,
    endpoint: &str,
    ca_pem: &str,
    token: &BootstrapToken,
) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster_name}
  cluster:
    server: {endpoint}
    certificate-authority-data: {ca}
users:
- name: tls-bootstrap-token-user
  user:
    token: {token}
contexts:
- name: tls-bootstrap-token-user@{cluster_name}
  context:
    cluster: {cluster_name}
    user: tls-bootstrap-token-user
current-context: tls-bootstrap-token-user@{cluster_name}
preferences: {{}}
"
    )
}

/// What status keeps of one Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub ready: bool,
    /// `status.nodeInfo.kubeletVersion`, e.g. `v1.20.2`.
    pub kubelet_version: String,
}

/// At most this many not-ready nodes are named in status.
pub const NAMED_NOT_READY: usize = 20;

/// `status.nodes`: ready of total, kubelets by version, the first
/// not-ready nodes by name.
pub fn nodes_status(nodes: &[NodeState]) -> kok_crds::NodesStatus {
    let ready = nodes.iter().filter(|n| n.ready).count() as i32;
    let total = nodes.len() as i32;
    let mut kubelet_versions = BTreeMap::new();
    for n in nodes.iter().filter(|n| !n.kubelet_version.is_empty()) {
        *kubelet_versions
            .entry(n.kubelet_version.clone())
            .or_insert(0) += 1;
    }
    let mut not_ready: Vec<String> = nodes
        .iter()
        .filter(|n| !n.ready)
        .map(|n| n.name.clone())
        .collect();
    not_ready.sort();
    not_ready.truncate(NAMED_NOT_READY);
    kok_crds::NodesStatus {
        ready,
        total,
        summary: format!("{ready}/{total}"),
        kubelet_versions,
        not_ready,
        observed_time: None,
    }
}

/// How many minors a kubelet may be older than the apiserver of minor
/// `apiserver_minor` (two until 1.27, three from 1.28 on); it may never be
/// newer.
pub fn kubelet_skew(apiserver_minor: u32) -> u32 {
    if apiserver_minor >= 28 {
        3
    } else {
        2
    }
}

/// Why the control plane may not run `target` with these kubelets (node
/// name, kubelet version): the nodes too old for it, or newer than it.
/// Nodes are named, at most five of each kind.
pub fn kubelet_skew_problem(
    target: KubeVersion,
    kubelets: &[(String, KubeVersion)],
) -> Option<String> {
    let allowed = kubelet_skew(target.minor);
    let too_old: Vec<String> = kubelets
        .iter()
        .filter(|(_, k)| k.major != target.major || k.minor + allowed < target.minor)
        .map(|(n, k)| format!("{n} ({k})"))
        .collect();
    let too_new: Vec<String> = kubelets
        .iter()
        .filter(|(_, k)| k.minor > target.minor)
        .map(|(n, k)| format!("{n} ({k})"))
        .collect();
    let named = |v: &[String]| {
        let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        if v.len() > 5 {
            s.push_str(&format!(" and {} more", v.len() - 5));
        }
        s
    };
    let mut why = Vec::new();
    if !too_old.is_empty() {
        why.push(format!(
            "{target} allows kubelets at most {allowed} minor versions older (v1.{} or newer); upgrade these nodes first: {}",
            target.minor.saturating_sub(allowed),
            named(&too_old)
        ));
    }
    if !too_new.is_empty() {
        why.push(format!(
            "kubelets may not be newer than the apiserver ({target}): {}",
            named(&too_new)
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{new_ca, CA_VALIDITY};

    fn v(minor: u32) -> KubeVersion {
        KubeVersion {
            major: 1,
            minor,
            patch: 0,
        }
    }

    fn inputs(minor: u32) -> NodeInputs {
        NodeInputs {
            version: v(minor),
            cluster_name: "demo".into(),
            endpoint: "https://10.202.0.7:6443".into(),
            ca_pem: String::new(),
            networking: NetworkingSpec::default(),
            image_repository: "kok.local".into(),
        }
    }

    #[test]
    fn the_kubelet_config_map_is_named_as_each_kubeadm_reads_it() {
        assert_eq!(kubelet_config_map_name(v(20)), "kubelet-config-1.20");
        assert_eq!(kubelet_config_map_name(v(23)), "kubelet-config-1.23");
        assert_eq!(kubelet_config_map_name(v(24)), "kubelet-config");
        assert_eq!(kubelet_config_map_name(v(34)), "kubelet-config");
        let rbac = bootstrap_rbac(v(20));
        let role = rbac
            .roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some("kubeadm:kubelet-config-1.20"))
            .expect("the kubelet config role");
        assert_eq!(
            role.rules.as_ref().unwrap()[0].resource_names,
            Some(vec!["kubelet-config-1.20".to_string()])
        );
    }

    #[test]
    fn kubeadm_config_carries_the_tenant_networks_and_endpoint() {
        let cm = kubeadm_config(&inputs(20));
        let cfg = &cm.data.unwrap()["ClusterConfiguration"];
        assert!(cfg.contains("apiVersion: kubeadm.k8s.io/v1beta2"), "{cfg}");
        assert!(
            cfg.contains("controlPlaneEndpoint: 10.202.0.7:6443"),
            "{cfg}"
        );
        assert!(cfg.contains("podSubnet: 10.244.0.0/16"), "{cfg}");
        assert!(cfg.contains("kubernetesVersion: v1.20.0"), "{cfg}");
        assert_eq!(kubeadm_api_version(v(22)), "kubeadm.k8s.io/v1beta3");
        assert_eq!(kubeadm_api_version(v(31)), "kubeadm.k8s.io/v1beta4");
    }

    #[test]
    fn kubelets_get_the_tenant_dns_address_and_webhook_authorization() {
        let cm = kubelet_config(&inputs(20)).unwrap();
        let cfg = &cm.data.unwrap()["kubelet"];
        assert!(cfg.contains("- 10.96.0.10"), "{cfg}");
        assert!(cfg.contains("mode: Webhook"), "{cfg}");
        assert!(cfg.contains("cgroupDriver: cgroupfs"), "{cfg}");
        let newer = kubelet_config(&inputs(22)).unwrap().data.unwrap();
        assert!(newer["kubelet"].contains("cgroupDriver: systemd"));
        assert_eq!(
            dns_address("10.100.0.0/16").unwrap().to_string(),
            "10.100.0.10"
        );
        assert!(dns_address("10.0.0.0/29").is_err());
        assert!(dns_address("nonsense").is_err());
    }

    #[test]
    fn only_anonymous_reads_cluster_info_and_only_tokens_get_csrs_approved() {
        let rbac = bootstrap_rbac(v(20));
        let info = rbac
            .role_bindings
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some("kubeadm:bootstrap-signer-clusterinfo"))
            .unwrap();
        assert_eq!(info.metadata.namespace.as_deref(), Some(KUBE_PUBLIC));
        assert_eq!(info.subjects.as_ref().unwrap()[0].name, "system:anonymous");
        let approve = rbac
            .cluster_role_bindings
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some("kubeadm:node-autoapprove-bootstrap"))
            .unwrap();
        assert_eq!(approve.subjects.as_ref().unwrap()[0].name, BOOTSTRAP_GROUP);
        for b in &rbac.cluster_role_bindings {
            for s in b.subjects.as_ref().unwrap() {
                assert_ne!(s.name, "system:anonymous", "{:?}", b.metadata.name);
                assert_ne!(s.name, "system:unauthenticated", "{:?}", b.metadata.name);
            }
        }
    }

    #[test]
    fn tokens_have_kubeadm_form_and_parse_back() {
        let t = BootstrapToken::from_random(&[7; 22]);
        assert_eq!(t.id.len(), 6);
        assert_eq!(t.secret.len(), 16);
        assert_eq!(BootstrapToken::parse(&t.to_string()), Some(t.clone()));
        assert_eq!(BootstrapToken::parse("abc.def"), None);
        assert_eq!(BootstrapToken::parse("ABCDEF.0123456789abcdef"), None);
        let s = bootstrap_token_secret(&t, "2026-12-04T00:00:00Z", "node", "ns/jt");
        assert_eq!(s.type_.as_deref(), Some("bootstrap.kubernetes.io/token"));
        assert_eq!(s.metadata.name, Some(format!("bootstrap-token-{}", t.id)));
        let data = s.data.unwrap();
        assert_eq!(data["token-secret"].0, t.secret.as_bytes());
        assert_eq!(data["expiration"].0, b"2026-12-04T00:00:00Z");
        assert_eq!(data["auth-extra-groups"].0, BOOTSTRAP_GROUP.as_bytes());
    }

    #[test]
    fn the_ca_hash_pins_the_public_key_and_the_command_uses_the_endpoint() {
        let ca = new_ca("demo-ca", time::OffsetDateTime::now_utc(), CA_VALIDITY).unwrap();
        let hash = ca_cert_hash(&ca.cert_pem).unwrap();
        assert!(
            hash.starts_with("sha256:") && hash.len() == 7 + 64,
            "{hash}"
        );
        let other = new_ca("demo-ca", time::OffsetDateTime::now_utc(), CA_VALIDITY).unwrap();
        assert_ne!(hash, ca_cert_hash(&other.cert_pem).unwrap());
        assert!(ca_cert_hash("not a certificate").is_err());
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(
            join_command("https://10.202.0.7:6443", &t, &hash),
            format!("kubeadm join 10.202.0.7:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {hash}")
        );
        let kc = bootstrap_kubeconfig("demo", "https://10.202.0.7:6443", &ca.cert_pem, &t);
        assert!(kc.contains("token: abcdef.0123456789abcdef"), "{kc}");
    }

    #[test]
    fn node_status_counts_ready_of_total_and_kubelets_by_version() {
        let n = |name: &str, ready, v: &str| NodeState {
            name: name.into(),
            ready,
            kubelet_version: v.into(),
        };
        let s = nodes_status(&[
            n("b", false, "v1.20.2"),
            n("a", true, "v1.20.2"),
            n("c", true, "v1.19.9"),
        ]);
        assert_eq!((s.ready, s.total, s.summary.as_str()), (2, 3, "2/3"));
        assert_eq!(s.kubelet_versions["v1.20.2"], 2);
        assert_eq!(s.kubelet_versions["v1.19.9"], 1);
        assert_eq!(s.not_ready, ["b"]);
        let none = nodes_status(&[]);
        assert_eq!(none.summary, "0/0");
        let many: Vec<_> = (0..30).map(|i| n(&format!("n{i:02}"), false, "")).collect();
        let s = nodes_status(&many);
        assert_eq!(s.not_ready.len(), NAMED_NOT_READY);
        assert!(s.kubelet_versions.is_empty());
    }

    /// The skew rule for every control-plane minor kok runs: a kubelet may
    /// be two minors older (three from 1.28), never newer.
    #[test]
    fn kubelet_skew_holds_the_control_plane_for_every_minor() {
        for target in 20..=34u32 {
            let allowed = if target >= 28 { 3 } else { 2 };
            for kubelet in 17..=35u32 {
                let nodes = vec![("n1".to_string(), v(kubelet))];
                let problem = kubelet_skew_problem(v(target), &nodes);
                let fits = kubelet <= target && target - kubelet <= allowed;
                assert_eq!(
                    problem.is_none(),
                    fits,
                    "apiserver 1.{target}, kubelet 1.{kubelet}: {problem:?}"
                );
                if let Some(why) = problem {
                    assert!(why.contains("n1 (v1."), "{why}");
                }
            }
        }
        assert_eq!(kubelet_skew_problem(v(25), &[]), None);
        let many: Vec<_> = (0..8).map(|i| (format!("n{i}"), v(20))).collect();
        let why = kubelet_skew_problem(v(23), &many).unwrap();
        assert!(
            why.contains("upgrade these nodes first") && why.contains("and 3 more"),
            "{why}"
        );
    }
}
