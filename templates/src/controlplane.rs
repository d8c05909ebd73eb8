//! Builders for the tenant control plane's workloads and Services.
//!
//! The management cluster may have no cluster DNS, so nothing here resolves a
//! Service name through DNS: every name a component dials (etcd members, the
//! apiserver) is pinned to its Service's ClusterIP with `hostAliases`, which the
//! kubelet writes into `/etc/hosts`. Certificates carry the names, so they stay
//! valid when a Service is recreated with a new ClusterIP.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapKeySelector, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    HostAlias, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SecretProjection,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kok_crds::{ServiceType, TenantClusterSpec};

use crate::flags::{
    self, FlagInputs, APISERVER_PORT, CONTROLLER_MANAGER_PORT, KUBECONFIG_PATH, PKI_DIR,
    SCHEDULER_PORT,
};
use crate::names::{self, component_labels, Names, CONFIG_HASH_ANNOTATION};
use crate::security::{container_security_context, pod_security_context};
use crate::validate::ValidSpec;
pub use crate::validate::{image_repository, DEFAULT_IMAGE_REPOSITORY};

pub const ETCD_CLIENT_PORT: i32 = 2379;
pub const ETCD_PEER_PORT: i32 = 2380;
pub const ETCD_METRICS_PORT: i32 = 2381;
const ETCD_DATA_DIR: &str = "/var/lib/etcd";
/// Set by the apiserver on every Namespace from Kubernetes 1.21 on.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Marks the operator's namespace where [`NAMESPACE_NAME_LABEL`] is absent
/// (Kubernetes 1.20); `hack/deploy-operator` sets it.
pub const OPERATOR_NAMESPACE_LABEL: &str = "kok.dev/operator";

/// Where the children go and who owns them.
#[derive(Debug, Clone)]
pub struct Placement {
    pub names: Names,
    pub namespace: String,
    pub owner: OwnerReference,
}

impl Placement {
    fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(component_labels(&self.names.tenant, component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }
}

/// Everything the workloads depend on beyond the spec: addresses only known
/// once the Services exist, and hashes of the mounted configuration.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// ClusterIP of each etcd member's Service, by ordinal.
    pub etcd_member_ips: Vec<String>,
    /// ClusterIP of the apiserver Service.
    pub apiserver_ip: String,
    /// Identifies this etcd cluster (the TenantCluster UID), so members of two
    /// clusters can never join each other.
    pub etcd_cluster_token: String,
    pub hashes: ConfigHashes,
    /// The etcd member the apiservers are kept off while it is replaced
    /// (see [`crate::etcd_roll::replace_gate`]).
    pub etcd_drained_member: Option<i32>,
}

/// Hash of what each component mounts; a change rolls its pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigHashes {
    pub etcd: String,
    pub apiserver: String,
    pub controller_manager: String,
    pub scheduler: String,
}

/// Which leaf certificate files each component mounts from the certs Secret.
pub mod mounts {
    pub const ETCD: &[&str] = &[
        "etcd-server.crt",
        "etcd-server.key",
        "etcd-peer.crt",
        "etcd-peer.key",
    ];
    pub const APISERVER: &[&str] = &[
        "apiserver.crt",
        "apiserver.key",
        "apiserver-kubelet-client.crt",
        "apiserver-kubelet-client.key",
        "apiserver-etcd-client.crt",
        "apiserver-etcd-client.key",
        "front-proxy-client.crt",
        "front-proxy-client.key",
    ];
}

pub fn component_image(spec: &TenantClusterSpec, valid: &ValidSpec, component: &str) -> String {
    format!("{}/{component}:{}", image_repository(spec), valid.version)
}

pub fn etcd_image(spec: &TenantClusterSpec, valid: &ValidSpec) -> String {
    if let Some(image) = &spec.etcd.image {
        return image.clone();
    }
    let tag = spec
        .etcd
        .version
        .clone()
        .unwrap_or_else(|| valid.version.default_etcd_tag().to_string());
    format!("{}/etcd:{tag}", image_repository(spec))
}

/// The etcd minor version the members run (3.4 -> 4), read from the image tag.
/// `None` for a tag that is not a version (a digest, `latest`).
pub fn etcd_minor(spec: &TenantClusterSpec, valid: &ValidSpec) -> Option<u32> {
    let image = etcd_image(spec, valid);
    let tag = image.rsplit_once(':')?.1.trim_start_matches('v');
    let mut parts = tag.split('.');
    (parts.next()? == "3").then_some(())?;
    parts.next()?.parse().ok()
}

/// Members dial each other from pod IPs that no certificate can name in
/// advance, so the peer client certificate's SANs are not checked against the
/// source address; the etcd CA (which only kok holds) still authenticates peers.
/// etcd 3.6 renamed the flag out of `experimental`.
fn etcd_peer_san_flag(minor: Option<u32>) -> &'static str {
    match minor {
        Some(m) if m >= 6 => "--peer-skip-client-san-verification=true",
        _ => "--experimental-peer-skip-client-san-verification=true",
    }
}

// ---- Services ---------------------------------------------------------------

fn service(
    meta: ObjectMeta,
    selector: BTreeMap<String, String>,
    ports: Vec<ServicePort>,
    type_: &str,
    publish_not_ready: bool,
) -> Service {
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(type_.to_string()),
            selector: Some(selector),
            ports: Some(ports),
            publish_not_ready_addresses: publish_not_ready.then_some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// One Service per etcd member: its stable address for peers and clients.
/// Not-ready addresses are published because members must reach each other
/// before any of them is ready (quorum needs the peers).
pub fn etcd_member_service(p: &Placement, ordinal: i32) -> Service {
    let name = p.names.etcd_member(ordinal);
    let mut selector = component_labels(&p.names.tenant, names::ETCD);
    selector.insert("statefulset.kubernetes.io/pod-name".into(), name.clone());
    service(
        p.meta(name, names::ETCD),
        selector,
        vec![
            port("client", ETCD_CLIENT_PORT),
            port("peer", ETCD_PEER_PORT),
        ],
        "ClusterIP",
        true,
    )
}

pub fn apiserver_service(p: &Placement, type_: ServiceType) -> Service {
    service(
        p.meta(p.names.apiserver(), names::APISERVER),
        component_labels(&p.names.tenant, names::APISERVER),
        vec![port("https", APISERVER_PORT)],
        type_.as_str(),
        false,
    )
}

// ---- etcd -------------------------------------------------------------------

fn etcd_host_aliases(p: &Placement, r: &Resolved) -> Vec<HostAlias> {
    r.etcd_member_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| HostAlias {
            ip: ip.clone(),
            hostnames: Some(vec![p.names.etcd_member(i as i32)]),
        })
        .collect()
}

fn apiserver_host_alias(p: &Placement, r: &Resolved) -> HostAlias {
    HostAlias {
        ip: r.apiserver_ip.clone(),
        hostnames: Some(vec![p.names.apiserver()]),
    }
}

/// The `--initial-cluster` value: every member by its pinned hostname.
pub fn etcd_initial_cluster(names: &Names, replicas: i32) -> String {
    (0..replicas)
        .map(|i| format!("{0}=https://{0}:{ETCD_PEER_PORT}", names.etcd_member(i)))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn etcd_client_urls(names: &Names, replicas: i32) -> Vec<String> {
    (0..replicas)
        .map(|i| format!("https://{}:{ETCD_CLIENT_PORT}", names.etcd_member(i)))
        .collect()
}

/// The members the apiservers dial: all of them, except one being drained
/// before its replacement (never the last one left).
pub fn apiserver_etcd_servers(names: &Names, replicas: i32, drained: Option<i32>) -> Vec<String> {
    let all = etcd_client_urls(names, replicas);
    match drained {
        Some(d) if replicas > 1 && (0..replicas).contains(&d) => all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i as i32 != d)
            .map(|(_, url)| url)
            .collect(),
        _ => all,
    }
}

/// An etcd environment variable read from the bootstrap ConfigMap.
fn bootstrap_env(p: &Placement, name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: p.names.etcd_bootstrap_config(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn etcd_args(spec: &TenantClusterSpec, valid: &ValidSpec, r: &Resolved) -> Vec<String> {
    let pki = |f: &str| format!("{PKI_DIR}/{f}");
    vec![
        "--name=$(POD_NAME)".into(),
        format!("--data-dir={ETCD_DATA_DIR}/data"),
        format!("--listen-client-urls=https://0.0.0.0:{ETCD_CLIENT_PORT}"),
        format!("--advertise-client-urls=https://$(POD_NAME):{ETCD_CLIENT_PORT}"),
        format!("--listen-peer-urls=https://0.0.0.0:{ETCD_PEER_PORT}"),
        format!("--initial-advertise-peer-urls=https://$(POD_NAME):{ETCD_PEER_PORT}"),
        format!("--listen-metrics-urls=http://0.0.0.0:{ETCD_METRICS_PORT}"),
        // `--initial-cluster` comes from the bootstrap ConfigMap
        // (ETCD_INITIAL_CLUSTER): a member joining a live scaling must see
        // the membership of that moment, and the template must not change.
        format!("--initial-cluster-token={}", r.etcd_cluster_token),
        "--client-cert-auth=true".into(),
        "--peer-client-cert-auth=true".into(),
        etcd_peer_san_flag(etcd_minor(spec, valid)).into(),
        format!("--trusted-ca-file={}", pki("etcd-ca.crt")),
        format!("--cert-file={}", pki("etcd-server.crt")),
        format!("--key-file={}", pki("etcd-server.key")),
        format!("--peer-trusted-ca-file={}", pki("etcd-ca.crt")),
        format!("--peer-cert-file={}", pki("etcd-peer.crt")),
        format!("--peer-key-file={}", pki("etcd-peer.key")),
        "--snapshot-count=10000".into(),
        "--auto-compaction-retention=8".into(),
    ]
    .into_iter()
    .chain(
        spec.etcd
            .quota_backend_bytes
            .map(|q| format!("--quota-backend-bytes={q}")),
    )
    .collect()
}

/// The key of [`etcd_bootstrap_config`] that etcd reads as
/// `ETCD_INITIAL_CLUSTER_STATE`.
pub const INITIAL_CLUSTER_STATE_KEY: &str = "initial-cluster-state";
/// The key of [`etcd_bootstrap_config`] that etcd reads as
/// `ETCD_INITIAL_CLUSTER`.
pub const INITIAL_CLUSTER_KEY: &str = "initial-cluster";

/// How a member that finds no data in its volume starts (a member with data
/// ignores both settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// Until every member has served once (and always for ephemeral
    /// storage, whose members start empty by design): `new`, every member.
    Forming { members: i32 },
    /// While kok adds a member (a lost one re-added, or a live scaling's
    /// learner): `existing`, with the membership of that moment, the
    /// learner included (etcd refuses to join a cluster whose membership
    /// differs from its `--initial-cluster`).
    Joining { members: i32 },
    /// Formed, nothing joining: an initial cluster that names no member, so
    /// a member that lost its data exits ("couldn't find local name", etcd
    /// 3.4 and 3.5 alike) instead of starting anything, until kok acts.
    /// `new` with every member listed would not do: a member added by
    /// `member add` has no deterministic ID, so two of them that lost their
    /// data together would bootstrap a new cluster of their own and serve
    /// an empty keyspace.
    Sealed,
}

/// The `--initial-cluster` of [`Bootstrap::Sealed`]: a name no member has,
/// on an address that cannot resolve.
pub const SEALED_INITIAL_CLUSTER: &str = "kok-sealed=https://kok-sealed.invalid:2380";

/// Which [`Bootstrap`] the members of a tenant get now. `formed`: every
/// member was seen serving on its volume.
pub fn bootstrap_mode(ephemeral: bool, members: i32, joining: bool, formed: bool) -> Bootstrap {
    if joining {
        Bootstrap::Joining { members }
    } else if ephemeral || !formed {
        Bootstrap::Forming { members }
    } else {
        Bootstrap::Sealed
    }
}

/// The ConfigMap etcd reads its bootstrap settings from
/// (`ETCD_INITIAL_CLUSTER_STATE`, `ETCD_INITIAL_CLUSTER`). A ConfigMap
/// rather than flags, so switching them does not change the pod template
/// and roll every member.
pub fn etcd_bootstrap_config(p: &Placement, mode: Bootstrap) -> ConfigMap {
    let (state, initial) = match mode {
        Bootstrap::Forming { members } => ("new", etcd_initial_cluster(&p.names, members)),
        Bootstrap::Joining { members } => ("existing", etcd_initial_cluster(&p.names, members)),
        Bootstrap::Sealed => ("new", SEALED_INITIAL_CLUSTER.to_string()),
    };
    ConfigMap {
        metadata: p.meta(p.names.etcd_bootstrap_config(), names::ETCD),
        data: Some(BTreeMap::from([
            (INITIAL_CLUSTER_STATE_KEY.to_string(), state.to_string()),
            (INITIAL_CLUSTER_KEY.to_string(), initial),
        ])),
        ..Default::default()
    }
}

fn http_probe(
    path: &str,
    port: i32,
    scheme: &str,
    period: i32,
    failures: i32,
    initial_delay: i32,
) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(port),
            scheme: Some(scheme.to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        initial_delay_seconds: Some(initial_delay),
        timeout_seconds: Some(5),
        ..Default::default()
    }
}

fn requests(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])),
        ..Default::default()
    }
}

/// Mode of mounted keys and kubeconfigs: the files belong to root, so the
/// components (uid and gid [`crate::security::RUN_AS`], also the fsGroup the
/// kubelet gives these volumes) read them through the group bit.
const SECRET_FILE_MODE: i32 = 0o440;

/// A projected volume of chosen keys from several Secrets, so each pod sees
/// only the certificates it uses.
fn pki_volume(sources: Vec<(String, Vec<(&str, &str)>)>) -> Volume {
    Volume {
        name: "pki".into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(SECRET_FILE_MODE),
            sources: Some(
                sources
                    .into_iter()
                    .map(|(secret, items)| VolumeProjection {
                        secret: Some(SecretProjection {
                            name: secret,
                            items: Some(
                                items
                                    .into_iter()
                                    .map(|(key, path)| KeyToPath {
                                        key: key.to_string(),
                                        path: path.to_string(),
                                        mode: None,
                                    })
                                    .collect(),
                            ),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }),
        ..Default::default()
    }
}

fn same_name(keys: &[&'static str]) -> Vec<(&'static str, &'static str)> {
    keys.iter().map(|k| (*k, *k)).collect()
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn pod_template(p: &Placement, component: &str, hash: &str, spec: PodSpec) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(component_labels(&p.names.tenant, component)),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.to_string(),
                hash.to_string(),
            )])),
            ..Default::default()
        }),
        spec: Some(spec),
    }
}

/// Label on the pods, claims and selector of etcd generations after the
/// first, so two generations' StatefulSets never select each other's pods.
pub const ETCD_GENERATION_LABEL: &str = "kok.dev/etcd-generation";

pub fn etcd_statefulset(
    p: &Placement,
    spec: &TenantClusterSpec,
    valid: &ValidSpec,
    r: &Resolved,
) -> StatefulSet {
    let mut sts = etcd_statefulset_of_generation(p, spec, valid, r);
    let g = p.names.etcd_generation;
    if g > 0 {
        let label = |m: &mut Option<BTreeMap<String, String>>| {
            m.get_or_insert_with(Default::default)
                .insert(ETCD_GENERATION_LABEL.to_string(), g.to_string());
        };
        if let Some(spec) = sts.spec.as_mut() {
            label(&mut spec.selector.match_labels);
            label(
                &mut spec
                    .template
                    .metadata
                    .get_or_insert_with(Default::default)
                    .labels,
            );
            for claim in spec.volume_claim_templates.iter_mut().flatten() {
                label(&mut claim.metadata.labels);
            }
        }
    }
    sts
}

/// The certs Secret's keys of this generation's etcd leaves, and the file
/// names etcd reads them from (always `etcd-server.crt`, ...).
fn etcd_leaf_keys(names: &Names) -> Vec<(String, &'static str)> {
    mounts::ETCD
        .iter()
        .map(|file| {
            let (base, ext) = file.rsplit_once('.').unwrap_or((file, ""));
            (format!("{}.{ext}", names.etcd_leaf(base)), *file)
        })
        .collect()
}

fn etcd_leaf_items<'a>(keys: &'a [(String, &'static str)]) -> Vec<(&'a str, &'a str)> {
    keys.iter().map(|(k, f)| (k.as_str(), *f)).collect()
}

/// The claim of member `i` as the StatefulSet's template would make it,
/// for a migration to create (and fill) before the StatefulSet exists.
pub fn etcd_member_claim(
    p: &Placement,
    spec: &TenantClusterSpec,
    valid: &ValidSpec,
    r: &Resolved,
    i: i32,
) -> Option<PersistentVolumeClaim> {
    let sts = etcd_statefulset(p, spec, valid, r);
    let mut claim = sts.spec?.volume_claim_templates?.into_iter().next()?;
    claim.metadata.name = Some(format!("data-{}", p.names.etcd_member(i)));
    claim.metadata.namespace = Some(p.namespace.clone());
    Some(claim)
}

fn etcd_statefulset_of_generation(
    p: &Placement,
    spec: &TenantClusterSpec,
    valid: &ValidSpec,
    r: &Resolved,
) -> StatefulSet {
    let storage = &spec.etcd.storage;
    let data_volume_name = "data".to_string();
    let leaf_keys = etcd_leaf_keys(&p.names);
    let mut volumes = vec![pki_volume(vec![
        (
            p.names.ca_secret("etcd-ca"),
            vec![("tls.crt", "etcd-ca.crt")],
        ),
        (p.names.certs_secret(), etcd_leaf_items(&leaf_keys)),
    ])];
    let claim_templates = if storage.ephemeral {
        volumes.push(Volume {
            name: data_volume_name.clone(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        });
        None
    } else {
        Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(data_volume_name.clone()),
                labels: Some(component_labels(&p.names.tenant, names::ETCD)),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(storage.size.clone()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }])
    };
    let container = Container {
        name: "etcd".into(),
        image: Some(etcd_image(spec, valid)),
        image_pull_policy: Some("IfNotPresent".into()),
        // A crash's last log lines become its termination message, so the
        // TenantCluster can say why (`pod_trouble`) without reading logs.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        command: Some(vec!["etcd".into()]),
        args: Some(etcd_args(spec, valid, r)),
        env: Some(vec![
            EnvVar {
                name: "POD_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            // Read when the data dir is empty (ignored otherwise).
            bootstrap_env(p, "ETCD_INITIAL_CLUSTER_STATE", INITIAL_CLUSTER_STATE_KEY),
            bootstrap_env(p, "ETCD_INITIAL_CLUSTER", INITIAL_CLUSTER_KEY),
        ]),
        ports: Some(vec![
            container_port("client", ETCD_CLIENT_PORT),
            container_port("peer", ETCD_PEER_PORT),
            container_port("metrics", ETCD_METRICS_PORT),
        ]),
        // Probed every second: the apiservers are created once etcd reports
        // quorum ready, so a slow readiness probe is start-up time (issue 12:
        // a 5 s period cost up to 5 s per tenant start).
        readiness_probe: Some(http_probe("/health", ETCD_METRICS_PORT, "HTTP", 1, 3, 0)),
        // A member receiving a large snapshot (a learner joining, a member
        // restarting far behind) is unhealthy until it applied it: up to 10
        // minutes before the liveness probe may kill it.
        startup_probe: Some(http_probe("/health", ETCD_METRICS_PORT, "HTTP", 1, 600, 0)),
        liveness_probe: Some(http_probe("/health", ETCD_METRICS_PORT, "HTTP", 10, 8, 0)),
        resources: Some(
            spec.etcd
                .resources
                .clone()
                .unwrap_or_else(|| requests("50m", "128Mi")),
        ),
        volume_mounts: Some(vec![
            mount("pki", PKI_DIR),
            VolumeMount {
                name: data_volume_name,
                mount_path: ETCD_DATA_DIR.into(),
                ..Default::default()
            },
        ]),
        // etcd writes only under its data dir (an emptyDir or a claim, made
        // ours by fsGroup), so the root filesystem stays read-only.
        security_context: Some(container_security_context()),
        ..Default::default()
    };
    StatefulSet {
        metadata: p.meta(p.names.etcd(), names::ETCD),
        spec: Some(StatefulSetSpec {
            replicas: Some(valid.etcd_replicas),
            service_name: Some(p.names.etcd()),
            // All members must start together: none is ready until a quorum runs.
            pod_management_policy: Some("Parallel".into()),
            // kok replaces members itself, one at a time, followers first and
            // the leader last after a leader move (see etcd_roll.rs).
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(component_labels(&p.names.tenant, names::ETCD)),
                ..Default::default()
            },
            template: pod_template(
                p,
                names::ETCD,
                &r.hashes.etcd,
                PodSpec {
                    containers: vec![container],
                    host_aliases: Some(etcd_host_aliases(p, r)),
                    volumes: Some(volumes),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(pod_security_context()),
                    ..Default::default()
                },
            ),
            volume_claim_templates: claim_templates,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

// ---- apiserver, controller-manager, scheduler -------------------------------

pub fn flag_inputs(
    p: &Placement,
    spec: &TenantClusterSpec,
    valid: &ValidSpec,
    r: &Resolved,
) -> FlagInputs {
    FlagInputs {
        version: valid.version,
        tenant: p.names.tenant.clone(),
        etcd_servers: apiserver_etcd_servers(&p.names, valid.etcd_replicas, r.etcd_drained_member),
        advertise_address: Some(r.apiserver_ip.clone()),
        service_cidr: valid.service_cidr.to_string(),
        pod_cidr: valid.pod_cidr.to_string(),
        cluster_domain: spec.networking.cluster_domain.clone(),
    }
}

struct ControlPlaneDeployment {
    name: String,
    component: &'static str,
    replicas: i32,
    args: Vec<String>,
    port: i32,
    readiness_path: &'static str,
    liveness_path: &'static str,
    resources: ResourceRequirements,
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
    host_aliases: Vec<HostAlias>,
    hash: String,
    termination_grace_seconds: i64,
}

fn deployment(
    p: &Placement,
    spec: &TenantClusterSpec,
    valid: &ValidSpec,
    d: ControlPlaneDeployment,
) -> Deployment {
    let container = Container {
        name: d.component.into(),
        image: Some(component_image(spec, valid, d.component)),
        image_pull_policy: Some("IfNotPresent".into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        command: Some(vec![d.component.into()]),
        args: Some(d.args),
        ports: Some(vec![container_port("https", d.port)]),
        // Every second: Ready (and the controllers' start) follows at once.
        readiness_probe: Some(http_probe(d.readiness_path, d.port, "HTTPS", 1, 3, 0)),
        liveness_probe: Some(http_probe(d.liveness_path, d.port, "HTTPS", 10, 8, 30)),
        resources: Some(d.resources),
        volume_mounts: Some(d.mounts),
        // The components write nothing to disk: their serving certificates
        // are mounted (apiserver) or generated in memory (controller-manager
        // and scheduler have no --cert-dir).
        security_context: Some(container_security_context()),
        ..Default::default()
    };
    Deployment {
        metadata: p.meta(d.name, d.component),
        spec: Some(DeploymentSpec {
            replicas: Some(d.replicas),
            selector: LabelSelector {
                match_labels: Some(component_labels(&p.names.tenant, d.component)),
                ..Default::default()
            },
            // Never fewer ready replicas than desired while rolling: clients keep working.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: pod_template(
                p,
                d.component,
                &d.hash,
                PodSpec {
                    containers: vec![container],
                    host_aliases: Some(d.host_aliases),
                    volumes: Some(d.volumes),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(d.termination_grace_seconds),
                    security_context: Some(pod_security_context()),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn apiserver_deployment(
    p: &Placement,
    spec: &TenantClusterSpec,
    valid: &ValidSpec,
    r: &Resolved,
) -> Deployment {
    let flag_values = flags::apiserver_flags(&flag_inputs(p, spec, valid, r));
    let cp = &spec.control_plane.apiserver;
    let mut aliases = etcd_host_aliases(p, r);
    aliases.push(apiserver_host_alias(p, r));
    deployment(
        p,
        spec,
        valid,
        ControlPlaneDeployment {
            name: p.names.apiserver(),
            component: names::APISERVER,
            replicas: valid.apiserver_replicas,
            args: flags::render_args(&flag_values, &cp.extra_args),
            port: APISERVER_PORT,
            readiness_path: "/readyz",
            liveness_path: "/livez",
            resources: cp
                .resources
                .clone()
                .unwrap_or_else(|| requests("100m", "256Mi")),
            volumes: vec![pki_volume(vec![
                (p.names.ca_secret("ca"), vec![("tls.crt", "ca.crt")]),
                (
                    p.names.ca_secret("front-proxy-ca"),
                    vec![("tls.crt", "front-proxy-ca.crt")],
                ),
                (
                    p.names.ca_secret("etcd-ca"),
                    vec![("tls.crt", "etcd-ca.crt")],
                ),
                (
                    p.names.service_account_secret(),
                    vec![("sa.key", "sa.key"), ("sa.pub", "sa.pub")],
                ),
                (
                    p.names.encryption_secret(),
                    vec![(crate::at_rest::CONFIG_FILE, crate::at_rest::CONFIG_FILE)],
                ),
                (p.names.certs_secret(), same_name(mounts::APISERVER)),
            ])],
            mounts: vec![mount("pki", PKI_DIR)],
            host_aliases: aliases,
            hash: r.hashes.apiserver.clone(),
            // The shutdown delay, then up to a minute for requests in flight.
            termination_grace_seconds: flags::APISERVER_SHUTDOWN_DELAY_SECONDS + 65,
        },
    )
}

fn kubeconfig_volume(secret: String) -> Volume {
    Volume {
        name: "kubeconfig".into(),
        secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(SECRET_FILE_MODE),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn kubeconfig_dir() -> &'static str {
    KUBECONFIG_PATH.trim_end_matches("/value")
}

pub fn controller_manager_deployment(
    p: &Placement,
    spec: &TenantClusterSpec,
    valid: &ValidSpec,
    r: &Resolved,
) -> Deployment {
    let flag_values = flags::controller_manager_flags(&flag_inputs(p, spec, valid, r));
    let cm = &spec.control_plane.controller_manager;
    deployment(
        p,
        spec,
        valid,
        ControlPlaneDeployment {
            name: p.names.controller_manager(),
            component: names::CONTROLLER_MANAGER,
            replicas: 1,
            args: flags::render_args(&flag_values, &cm.extra_args),
            port: CONTROLLER_MANAGER_PORT,
            readiness_path: "/healthz",
            liveness_path: "/healthz",
            resources: cm
                .resources
                .clone()
                .unwrap_or_else(|| requests("50m", "128Mi")),
            volumes: vec![
                pki_volume(vec![
                    (
                        p.names.ca_secret("ca"),
                        vec![("tls.crt", "ca.crt"), ("tls.key", "ca.key")],
                    ),
                    (
                        p.names.ca_secret("front-proxy-ca"),
                        vec![("tls.crt", "front-proxy-ca.crt")],
                    ),
                    (p.names.service_account_secret(), vec![("sa.key", "sa.key")]),
                ]),
                kubeconfig_volume(p.names.component_kubeconfig_secret("controller-manager")),
            ],
            mounts: vec![mount("pki", PKI_DIR), mount("kubeconfig", kubeconfig_dir())],
            host_aliases: vec![apiserver_host_alias(p, r)],
            hash: r.hashes.controller_manager.clone(),
            termination_grace_seconds: 30,
        },
    )
}

pub fn scheduler_deployment(
    p: &Placement,
    spec: &TenantClusterSpec,
    valid: &ValidSpec,
    r: &Resolved,
) -> Deployment {
    let flag_values = flags::scheduler_flags(&flag_inputs(p, spec, valid, r));
    let s = &spec.control_plane.scheduler;
    deployment(
        p,
        spec,
        valid,
        ControlPlaneDeployment {
            name: p.names.scheduler(),
            component: names::SCHEDULER,
            replicas: 1,
            args: flags::render_args(&flag_values, &s.extra_args),
            port: SCHEDULER_PORT,
            readiness_path: "/healthz",
            liveness_path: "/healthz",
            resources: s
                .resources
                .clone()
                .unwrap_or_else(|| requests("20m", "64Mi")),
            volumes: vec![kubeconfig_volume(
                p.names.component_kubeconfig_secret("scheduler"),
            )],
            mounts: vec![mount("kubeconfig", kubeconfig_dir())],
            host_aliases: vec![apiserver_host_alias(p, r)],
            hash: r.hashes.scheduler.clone(),
            termination_grace_seconds: 30,
        },
    )
}

/// Selects the operator's namespace and no other. `kubernetes.io/metadata.name`
/// is unique and set by the apiserver, so it wins when the Namespace carries it
/// (1.21+); on 1.20 the dedicated [`OPERATOR_NAMESPACE_LABEL`], else every label
/// the Namespace has. With no labels at all, the name label is still the only
/// selector that cannot match another namespace: on 1.20 it then admits no one,
/// which fails closed.
pub fn operator_namespace_selector(
    namespace: &str,
    namespace_labels: BTreeMap<String, String>,
) -> LabelSelector {
    let pick = |key: &str| {
        namespace_labels
            .get(key)
            .map(|v| BTreeMap::from([(key.to_string(), v.clone())]))
    };
    let labels = if namespace_labels
        .get(NAMESPACE_NAME_LABEL)
        .map(String::as_str)
        == Some(namespace)
    {
        pick(NAMESPACE_NAME_LABEL).unwrap_or_default()
    } else if let Some(labels) = pick(OPERATOR_NAMESPACE_LABEL) {
        labels
    } else if !namespace_labels.is_empty() {
        namespace_labels
    } else {
        BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string())])
    };
    LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    }
}

/// Only this tenant's etcd members (peers) and apiservers, and the kok
/// operator (health checks, backups), may reach the tenant's etcd. The
/// operator is recognised by its pod labels *and* its namespace: pod labels
/// alone could be copied by anyone who can create a pod anywhere.
fn tcp_ports(ports: &[i32]) -> Vec<NetworkPolicyPort> {
    ports
        .iter()
        .map(|&port| NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect()
}

pub fn etcd_network_policy(
    p: &Placement,
    operator_pod_labels: BTreeMap<String, String>,
    operator_namespace: &str,
    operator_namespace_labels: BTreeMap<String, String>,
) -> NetworkPolicy {
    let tenant = &p.names.tenant;
    let from_pods =
        |labels: BTreeMap<String, String>, namespace: Option<LabelSelector>| NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels),
                ..Default::default()
            }),
            // Both selectors in one peer: the pod must match both (no
            // namespace selector means the policy's own namespace).
            namespace_selector: namespace,
            ..Default::default()
        };
    let operator = from_pods(
        operator_pod_labels,
        Some(operator_namespace_selector(
            operator_namespace,
            operator_namespace_labels,
        )),
    );
    NetworkPolicy {
        metadata: p.meta(p.names.etcd_network_policy(), names::ETCD),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(component_labels(tenant, names::ETCD)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![
                        from_pods(component_labels(tenant, names::ETCD), None),
                        from_pods(component_labels(tenant, names::APISERVER), None),
                        operator.clone(),
                    ]),
                    ports: Some(tcp_ports(&[ETCD_CLIENT_PORT, ETCD_PEER_PORT])),
                },
                // Metrics: only the operator, which reads the etcd cluster
                // version there after an upgrade.
                NetworkPolicyIngressRule {
                    from: Some(vec![operator]),
                    ports: Some(tcp_ports(&[ETCD_METRICS_PORT])),
                },
            ]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selected(namespace_labels: &[(&str, &str)]) -> BTreeMap<String, String> {
        operator_namespace_selector("kok-system", labels(namespace_labels))
            .match_labels
            .unwrap()
    }

    #[test]
    fn the_operator_namespace_is_selected_by_name_where_the_apiserver_sets_it() {
        // 1.21+: the name label is unique; other labels are not relied on.
        assert_eq!(
            selected(&[
                (NAMESPACE_NAME_LABEL, "kok-system"),
                (OPERATOR_NAMESPACE_LABEL, "true"),
                ("team", "platform"),
            ]),
            labels(&[(NAMESPACE_NAME_LABEL, "kok-system")])
        );
    }

    #[test]
    fn on_1_20_the_operator_label_selects_the_namespace() {
        assert_eq!(
            selected(&[(OPERATOR_NAMESPACE_LABEL, "true"), ("team", "platform")]),
            labels(&[(OPERATOR_NAMESPACE_LABEL, "true")])
        );
        // Without it, every label the namespace has.
        assert_eq!(
            selected(&[("team", "platform"), ("env", "prod")]),
            labels(&[("team", "platform"), ("env", "prod")])
        );
    }

    #[test]
    fn an_unlabelled_namespace_never_selects_every_namespace() {
        // An empty selector would match all namespaces; the name label fails closed.
        assert_eq!(
            selected(&[]),
            labels(&[(NAMESPACE_NAME_LABEL, "kok-system")])
        );
    }

    #[test]
    fn a_member_without_data_may_bootstrap_only_before_the_cluster_formed() {
        use Bootstrap::*;
        // Forming: every member starts `new`.
        assert_eq!(
            bootstrap_mode(false, 3, false, false),
            Forming { members: 3 }
        );
        // kok adding a member wins over everything.
        assert_eq!(bootstrap_mode(false, 4, true, true), Joining { members: 4 });
        assert_eq!(bootstrap_mode(true, 2, true, true), Joining { members: 2 });
        // Formed: sealed, so a member that lost its data waits for kok.
        assert_eq!(bootstrap_mode(false, 3, false, true), Sealed);
        // Ephemeral members start empty by design: never sealed.
        assert_eq!(bootstrap_mode(true, 1, false, true), Forming { members: 1 });
    }

    #[test]
    fn the_apiservers_dial_every_member_but_a_drained_one() {
        let names = Names::new("t");
        let urls = |d| apiserver_etcd_servers(&names, 3, d);
        assert_eq!(urls(None).len(), 3);
        assert_eq!(
            urls(Some(1)),
            ["https://t-etcd-0:2379", "https://t-etcd-2:2379"]
        );
        // Never an empty list, never an ordinal that does not exist.
        assert_eq!(apiserver_etcd_servers(&names, 1, Some(0)).len(), 1);
        assert_eq!(urls(Some(7)).len(), 3);
    }
}
