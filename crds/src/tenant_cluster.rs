//! `TenantCluster`: one tenant Kubernetes control plane run as pods in the
//! management cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A tenant cluster's control plane: etcd, kube-apiserver,
/// kube-controller-manager and kube-scheduler, with its own PKI.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kok.dev",
    version = "v1alpha1",
    kind = "TenantCluster",
    doc = "A tenant Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) that kok runs as pods in this cluster, with its own PKI and an admin kubeconfig Secret; upgraded, backed up and restored by kok.",
    namespaced,
    shortname = "tc",
    category = "kok",
    status = "TenantClusterStatus",
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Running","type":"string","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Etcd","type":"string","jsonPath":".status.etcdVersion"}"#,
    printcolumn = r#"{"name":"Upgrade","type":"string","jsonPath":".status.upgrade.phase"}"#,
    printcolumn = r#"{"name":"Migration","type":"string","jsonPath":".status.migration.phase","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".status.nodes.summary"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantClusterSpec {
    /// Kubernetes version of the tenant control plane, e.g. `v1.20.2` or `1.31.4`.
    #[schemars(length(max = 32), regex(pattern = r"^v?1\.[0-9]{1,3}\.[0-9]{1,4}$"))]
    pub version: String,
    #[serde(default)]
    pub etcd: EtcdSpec,
    #[serde(default)]
    pub control_plane: ControlPlaneSpec,
    #[serde(default)]
    pub networking: NetworkingSpec,
    /// Registry prefix for the control-plane images (default `registry.k8s.io`).
    /// Images are `<imageRepository>/<component>:<tag>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^\s]*[^/\s]$"))]
    pub image_repository: Option<String>,
    /// Scheduled etcd backups; unset: no schedule (on-demand EtcdBackups need it
    /// too, for the destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::BackupSpec>,
    /// How kok upgrades this tenant.
    #[serde(default)]
    pub upgrade: UpgradePolicy,
    /// When true, kok leaves every child object alone until it is unpaused.
    #[serde(default)]
    pub paused: bool,
    /// Inspection and self-healing: what kok checks, how often, and which
    /// findings it repairs itself (docs/self-healing.md).
    #[serde(default)]
    pub healing: HealingSpec,
    /// How tools reach the tenant: an Argo CD cluster Secret kok keeps current.
    #[serde(default)]
    pub access: AccessSpec,
    /// What kok runs inside the tenant cluster for its worker nodes:
    /// kube-proxy (on by default) and CoreDNS (opt-in).
    #[serde(default)]
    pub addons: AddonsSpec,
}

/// Addons kok keeps reconciled inside the tenant cluster (through the
/// tenant API, server-side applied, put back when deleted).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddonsSpec {
    /// kube-proxy as a DaemonSet on every node, following the control
    /// plane's version through upgrades.
    #[serde(default)]
    pub kube_proxy: KubeProxyAddon,
    /// CoreDNS at the tenant's DNS address (the 10th address of
    /// `networking.serviceCIDR`).
    #[serde(default, rename = "coreDNS")]
    pub core_dns: CoreDnsAddon,
}

/// The kube-proxy addon.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyAddon {
    /// Run kube-proxy (default true). When false kok deletes the DaemonSet
    /// it created (bring your own Service proxy).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// kube-proxy's `conntrack.maxPerCore`. Unset: kube-proxy's default.
    /// `0` leaves the node's conntrack table size alone, for nodes that run
    /// in a container or network namespace where it cannot be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub conntrack_max_per_core: Option<i32>,
}

impl Default for KubeProxyAddon {
    fn default() -> Self {
        Self {
            enabled: true,
            conntrack_max_per_core: None,
        }
    }
}

/// The CoreDNS addon.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoreDnsAddon {
    /// Run CoreDNS (default false).
    #[serde(default)]
    pub enabled: bool,
    /// The CoreDNS image (default `<imageRepository>/coredns:<the release
    /// paired with the tenant's Kubernetes minor>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub image: Option<String>,
}

/// Access to the tenant for other tools.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessSpec {
    /// Register the tenant with Argo CD: kok writes (and, when the admin
    /// certificate is renewed, rewrites) a cluster Secret in Argo CD's
    /// namespace, and deletes it with the tenant or when this is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argocd: Option<ArgoCdCluster>,
}

/// An Argo CD cluster Secret (`argocd.argoproj.io/secret-type: cluster`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArgoCdCluster {
    /// Argo CD's namespace (default `argocd`); it must exist.
    #[serde(default = "default_argocd_namespace")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// The cluster's name in Argo CD (default `<namespace>-<name>` of the TenantCluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Argo CD project the cluster is scoped to (unset: every project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub project: Option<String>,
}

fn default_argocd_namespace() -> String {
    "argocd".into()
}

/// How kok inspects and heals a tenant.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealingSpec {
    /// Seconds between inspections of the tenant cluster (default 300). An
    /// inspection also runs when the annotation `kok.dev/inspect` changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 86400))]
    pub inspection_interval_seconds: Option<u32>,
    /// Per-check policy, by check name (`PodOnMissingNode`,
    /// `EtcdMemberLost`, ...): `Repair` (kok fixes what it found), `Report`
    /// (a finding only) or `Off`. Checks not listed use their default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub checks: BTreeMap<String, CheckPolicy>,
    /// Repairs of this tenant's control plane (pod restarts, etcd member
    /// replacements) at most this many per hour (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_repairs_per_hour: Option<u32>,
    /// What kok does when a majority of the etcd members lost their data.
    #[serde(default)]
    pub quorum_loss: QuorumLossPolicy,
    /// Defragment every etcd member on this cron schedule (5 fields, UTC),
    /// followers first and the leader last, besides the defragmentation the
    /// `EtcdFragmented` check asks for. Unset: only on that threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub defragmentation_schedule: Option<String>,
    /// An etcd member that stays unhealthy on its own volume this many
    /// seconds (default 1200: a member that crash-loops on corrupt data, or
    /// cannot start where its volume is), while every other member is
    /// healthy, is replaced (check `EtcdMemberUnhealthy`): its volume is kept
    /// aside with its data (reclaim policy `Retain`), the member is removed,
    /// added back as a learner on a fresh volume and promoted. One kept
    /// volume per tenant at a time: another replacement waits until it is
    /// deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 86400))]
    pub member_unhealthy_seconds: Option<u32>,
    /// A certificate signing request left neither approved nor denied this
    /// many seconds is reported (check `CSRPending`, default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub csr_pending_seconds: Option<u32>,
}

/// When a majority of etcd members lost their data, no member can be
/// replaced from the others: only a backup brings the data back.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuorumLossPolicy {
    /// Restore the newest verified EtcdBackup of this tenant automatically
    /// (an EtcdRestore kok creates). Off by default: the loss is reported
    /// (`Stalled`, an Event, a finding) with the runbook step.
    #[serde(default)]
    pub restore_from_backup: bool,
    /// The oldest backup an automatic restore may use, e.g. `1h` (default):
    /// the most writes it may throw away (RPO). An older one is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16))]
    pub max_backup_age: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CheckPolicy {
    /// Record a finding and repair it.
    Repair,
    /// Record a finding; repair nothing.
    Report,
    /// Do not run the check.
    Off,
}

/// The tenant's etcd cluster.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSpec {
    /// Number of members: 1, 3 or 5 (an even count adds no fault tolerance).
    /// A change is made live with the `InPlace` upgrade strategy (members
    /// added as learners or removed one at a time, no downtime), or by a data
    /// migration with `Migrate`.
    #[serde(default = "default_one")]
    #[schemars(extend("enum" = [1, 3, 5]))]
    pub replicas: i32,
    #[serde(default)]
    pub storage: EtcdStorage,
    /// etcd version (image tag); by default the one paired with the Kubernetes version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    )]
    pub version: Option<String>,
    /// Full image reference; overrides `version` and `imageRepository` for etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[^\s]+$"))]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// etcd's database quota in bytes (`--quota-backend-bytes`; etcd's
    /// default, 2 GiB, when unset). Past it etcd raises NOSPACE and refuses
    /// writes; kok compacts, defragments and disarms it (docs/self-healing.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16777216, max = 8589934592i64))]
    pub quota_backend_bytes: Option<i64>,
}

impl Default for EtcdSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            storage: EtcdStorage::default(),
            version: None,
            image: None,
            resources: None,
            quota_backend_bytes: None,
        }
    }
}

/// Where etcd keeps its data.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdStorage {
    /// Keep data in an emptyDir: lost when a pod is replaced. For development only.
    #[serde(default)]
    pub ephemeral: bool,
    /// Size of each member's PersistentVolumeClaim (default `10Gi`): a
    /// Kubernetes quantity.
    #[serde(default = "default_storage_size")]
    #[schemars(
        length(max = 64),
        regex(pattern = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
    )]
    pub size: String,
    /// StorageClass of the claims; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

impl Default for EtcdStorage {
    fn default() -> Self {
        Self {
            ephemeral: false,
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// The control-plane components and how the apiserver is exposed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneSpec {
    /// The tenant kube-apiserver.
    #[serde(default)]
    pub apiserver: ApiServerSpec,
    #[serde(default)]
    pub controller_manager: ComponentSpec,
    #[serde(default)]
    pub scheduler: ComponentSpec,
    #[serde(default)]
    pub service: ServiceSpec,
    /// Extra subject alternative names (DNS names or IPs) for the apiserver certificate.
    #[serde(default, rename = "certSANs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub cert_sans: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiServerSpec {
    /// Number of apiserver pods, 1 to 10.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 10))]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra flags, `name: value` without the leading dashes. Flags kok manages
    /// (certificates, etcd endpoints, service range) cannot be overridden.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 100))]
    pub extra_args: BTreeMap<String, String>,
}

impl Default for ApiServerSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            resources: None,
            extra_args: BTreeMap::new(),
        }
    }
}

/// Settings shared by the controller-manager and the scheduler.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra flags, `name: value` without the leading dashes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 100))]
    pub extra_args: BTreeMap<String, String>,
}

/// How the tenant apiserver is exposed in the management cluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// `host[:port]` users reach the apiserver at (a DNS name or IP in front
    /// of the Service: a load balancer, an ingress passthrough); default port
    /// 6443. It becomes the admin kubeconfig's server, `status.endpoint`, and
    /// a name in the serving certificate. Unset: the Service's own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 259))]
    pub advertised_address: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The tenant cluster's own networks.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkingSpec {
    /// The tenant's Service range, e.g. `10.96.0.0/12`.
    #[serde(default = "default_service_cidr", rename = "serviceCIDR")]
    #[schemars(length(min = 1, max = 43))]
    pub service_cidr: String,
    /// The tenant's pod range, e.g. `10.244.0.0/16`.
    #[serde(default = "default_pod_cidr", rename = "podCIDR")]
    #[schemars(length(min = 1, max = 43))]
    pub pod_cidr: String,
    /// DNS domain of the tenant's Services (default `cluster.local`).
    #[serde(default = "default_cluster_domain")]
    #[schemars(length(min = 1, max = 253))]
    pub cluster_domain: String,
}

impl Default for NetworkingSpec {
    fn default() -> Self {
        Self {
            service_cidr: default_service_cidr(),
            pod_cidr: default_pod_cidr(),
            cluster_domain: default_cluster_domain(),
        }
    }
}

/// Observed state, following kstatus: `observedGeneration` and the
/// `Ready`, `Reconciling` and `Stalled` conditions, plus one per component.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantClusterStatus {
    /// The generation the conditions describe (kstatus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One entry per condition type (a list map: each writer owns its types).
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The Kubernetes version the control plane runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The etcd members that serve now (the StatefulSet's replicas): the
    /// count the cluster was created with, changed one member at a time by
    /// a live scaling (`etcdScaling`) or by a data migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_replicas: Option<i32>,
    /// A live change of the etcd member count in progress (a learner added
    /// and promoted, or a member removed, one at a time), recorded before
    /// each step acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_scaling: Option<EtcdScaling>,
    /// Claims (name -> uid) of members a scale-down removed from the cluster.
    /// Kept, never deleted by the scale-down; a later scale-up deletes such
    /// a claim (only with this uid: its member left the cluster, so its data
    /// is a stale copy) before the new member starts in its place.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub etcd_retired_claims: BTreeMap<String, String>,
    /// Which of the tenant's etcd clusters serves: 0 is `<name>-etcd`, a
    /// data migration's target is `<name>-etcd-g<n>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_generation: Option<u32>,
    /// A data migration (`spec.upgrade.strategy: Migrate`), recorded before
    /// each step acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
    /// While etcd members are replaced one at a time: the member the
    /// apiservers were moved off before it is stopped (they dial the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_drained_member: Option<i32>,
    /// The etcd version every member runs (image tag), once a rollout is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
    /// The etcd cluster version (`3.5`) after the last member moved: the
    /// data can no longer be served by older etcd binaries (the point of no
    /// return of an etcd minor upgrade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_cluster_version: Option<String>,
    /// The upgrade in progress, or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeStatus>,
    /// `https://host:port` of the tenant apiserver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Secret (same namespace) holding the admin kubeconfig under the key `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupScheduleStatus>,
    /// The last inspection: when it ran and what it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspection: Option<InspectionStatus>,
    /// What kok found wrong, now (a finding that is no longer seen is
    /// removed; its repair stays in `repairs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// The last repairs kok made (newest last, at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<Repair>,
    /// The claim (uid) each etcd member was last seen serving with: a member
    /// whose claim changed lost its data and is replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub etcd_member_claims: BTreeMap<String, String>,
    /// The Argo CD cluster Secret kok wrote (`namespace/name`), to delete
    /// when `spec.access.argocd` is unset or the tenant goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argocd_cluster_secret: Option<String>,
    /// The scheduled slot of the last scheduled defragmentation
    /// (`spec.healing.defragmentationSchedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_defragmentation_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// etcd members (by pod name) unhealthy on their own volume, and since
    /// when: replaced after `spec.healing.memberUnhealthySeconds`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub etcd_unhealthy_since:
        BTreeMap<String, k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When kok last looked at the members' health: a gap of more than two
    /// minutes (a pause, a restore, the operator down) restarts the clocks
    /// of `etcdUnhealthySince`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_health_observed_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// An etcd member replacement in progress, recorded before each step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_member_replacement: Option<MemberReplacement>,
    /// A majority of etcd members lost their data: what was found, and the
    /// restore kok started (`spec.healing.quorumLoss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_loss: Option<QuorumLoss>,
    /// The tenant's worker nodes as its API reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodesStatus>,
}

/// Worker nodes of the tenant cluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodesStatus {
    /// Nodes whose `Ready` condition is True.
    pub ready: i32,
    /// Every Node object.
    pub total: i32,
    /// `ready/total`, for the printer column.
    pub summary: String,
    /// How many nodes run each kubelet version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kubelet_versions: BTreeMap<String, i32>,
    /// Nodes that are not Ready (at most 20 named).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<String>,
    /// When kok last read the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// A lost etcd quorum and its recovery.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuorumLoss {
    pub detected_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Members whose data is gone.
    pub lost_members: Vec<String>,
    /// The EtcdRestore kok created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
    /// The EtcdBackup restored, and when it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// What is lost (the writes after the backup), or why kok does not restore.
    pub message: String,
}

/// When the tenant was last inspected.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InspectionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The `kok.dev/inspect` annotation value the last inspection answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Checks run.
    #[serde(default)]
    pub checks: u32,
    /// Checks that could not run (the tenant API did not answer, ...): check: why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One problem kok found, and what it did about it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// The check that found it (`PodOnMissingNode`, ...).
    pub check: String,
    /// `Info`, `Warning` or `Critical`.
    pub severity: String,
    /// What it is about: `Pod default/web-1` in the tenant, `etcd member
    /// <name>`, `Certificate <name>`.
    pub object: String,
    /// What is wrong, in words.
    pub message: String,
    pub first_seen: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    pub last_seen: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Inspections in a row that found it.
    #[serde(default)]
    pub count: u32,
    /// `Repair` or `Report`: what the check's policy says.
    pub policy: String,
    /// The repair taken, if any, and how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<String>,
}

/// A repair kok made.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Repair {
    /// The check the repair answered.
    pub check: String,
    /// What was repaired.
    pub object: String,
    /// What was done.
    pub action: String,
    /// `Succeeded` or `Failed`.
    pub outcome: String,
    /// What the repair did or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the problem was first seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    pub time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// From detection to the end of the repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_to_repair: Option<f64>,
}

/// Replacing an etcd member that lost its data: remove it from the cluster,
/// add it back as a learner on a fresh volume, promote it once caught up.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberReplacement {
    /// The member's ordinal.
    pub member: i32,
    /// `KeepingVolume` (only for a member replaced because it stayed
    /// unhealthy), `Removing`, `AddingLearner`, `Restarting`, `Promoting`.
    pub phase: crate::ReplacementPhase,
    /// The etcd member ID removed (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_id: Option<String>,
    /// The learner's etcd member ID (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learner_id: Option<String>,
    /// The claim (uid) found in place of the one the member served with;
    /// for a member replaced because it stayed unhealthy, the claim it
    /// served on, released once its volume is kept (`keptVolume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_claim: Option<String>,
    /// Set for a member replaced because it stayed unhealthy on its own
    /// volume: the PersistentVolume kept with its data (reclaim policy
    /// `Retain`, left `Released`): kok never deletes it; delete it once it is
    /// no longer needed (docs/runbooks/etcd-member-unhealthy.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_volume: Option<String>,
    pub detected_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// What the step waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A live change of the etcd member count (`spec.etcd.replicas` with the
/// `InPlace` upgrade strategy): one member at a time, added as a learner
/// and promoted once caught up, or moved off by the apiservers and removed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdScaling {
    /// The member count when the scaling began.
    pub from: i32,
    /// The member count asked for.
    pub to: i32,
    /// The ordinal of the member being added or removed.
    pub member: i32,
    /// Adding: `AddingLearner`, `Joining` (started, promoted once caught
    /// up). Removing: `Draining` (apiservers moved off it), `Removing`.
    pub phase: crate::ScalingPhase,
    /// The learner's etcd member ID (hex), once added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learner_id: Option<String>,
    pub start_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// What the step waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Progress of the backup schedule, so a restarted operator neither repeats
/// nor misses (more than one) scheduled run.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// The scheduled time of the last run kok started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The newest EtcdBackup that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<String>,
}

/// Set on a TenantCluster by its owner to let a new TenantCluster take over
/// etcd PersistentVolumeClaims that already exist under its names (kept from a
/// deleted TenantCluster of the same name). Without it kok refuses to start on
/// someone else's data.
pub const ADOPT_VOLUMES_ANNOTATION: &str = "kok.dev/adopt-etcd-volumes";

/// The longest TenantCluster name: every derived name and label must fit.
/// The tightest is the StatefulSet's `controller-revision-hash` label,
/// `<name>-etcd-<hash of up to 10 chars>`, a label value of at most 63.
pub const MAX_NAME_LENGTH: usize = 47;

/// Set on a TenantCluster by a running EtcdRestore (value: its name): the
/// TenantCluster reconciler leaves the control plane to the restore meanwhile.
pub const RESTORE_ANNOTATION: &str = "kok.dev/restore-in-progress";

/// Condition types kok sets on a TenantCluster.
/// How an upgrade begins.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradePolicy {
    /// Take an EtcdBackup (to `spec.backup`'s destination) before the first
    /// step and start only once it succeeded (default true). Without
    /// `spec.backup` there is nowhere to write it: the upgrade starts and
    /// `status.upgrade.preflight` says the backup was skipped.
    #[serde(default = "default_true")]
    pub backup_first: bool,
    /// `InPlace` (default): roll the running control plane one step at a
    /// time. `Migrate`: build a new etcd at the target next to the running
    /// one, copy the data into it while the apiservers are stopped, verify,
    /// cut over, and keep the old etcd stopped (see docs/upgrades.md).
    #[serde(default)]
    pub strategy: UpgradeStrategy,
}

impl Default for UpgradePolicy {
    fn default() -> Self {
        Self {
            backup_first: true,
            strategy: UpgradeStrategy::InPlace,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UpgradeStrategy {
    #[default]
    InPlace,
    Migrate,
}

fn default_true() -> bool {
    true
}

/// An upgrade as kok walks it, recorded before each step acts, so a
/// restarted operator resumes the same step.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStatus {
    /// What ran when the upgrade began, e.g. `v1.20.2 (etcd 3.4.23)`.
    pub from: String,
    /// What the spec asks for.
    pub to: String,
    /// One entry per step, in order.
    #[serde(default)]
    pub plan: Vec<String>,
    /// Index in `plan` of the step being rolled.
    #[serde(default)]
    pub step: u32,
    /// `Preflight`, `RollingEtcd`, `RollingControlPlane`, `Completed`.
    pub phase: crate::UpgradePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// What the preflight found (tenant health, the backup taken first, or
    /// why it was skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<String>,
    /// The EtcdBackup taken before the first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight_backup: Option<String>,
    /// The preflight passed: the steps may act.
    #[serde(default)]
    pub preflight_passed: bool,
    /// When the upgrade last moved (a new step or phase); `UpgradeStuck`
    /// is measured from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// What the phase does or waits for, or why the migration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The etcd cluster and control plane a migration moves from or to.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationShape {
    /// Kubernetes version of the apiservers, controller-manager and scheduler.
    pub version: String,
    /// etcd image tag.
    pub etcd_version: String,
    /// etcd members.
    pub etcd_replicas: i32,
    /// etcd generation: 0 is `<name>-etcd`, n is `<name>-etcd-g<n>`.
    pub etcd_generation: u32,
}

/// Progress of a data migration. Every step is recorded here before it
/// acts, so a restarted operator resumes it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    pub source: MigrationShape,
    pub target: MigrationShape,
    /// `Preflight`, `CreatingTarget`, `Frozen`, `Copying`, `Verifying`,
    /// `CuttingOver`, `Completed`, `RollingBack`, `RolledBack`.
    pub phase: crate::MigrationPhase,
    /// What the step waits for, or why it is stuck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The TenantCluster generation the migration was opened for: a
    /// migration that failed is tried again only after the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When the phase began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Objects written back unchanged through the source apiserver in the
    /// preflight, so every one is stored in its current storage version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects_rewritten: Option<u64>,
    /// Objects of APIs the target version no longer serves (the preflight
    /// refuses to go on while there are any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_apis: Vec<String>,
    /// When the source apiservers were stopped: no write is accepted from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The EtcdBackup the copy is taken from (after the freeze).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The source's revision in that snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_revision: Option<i64>,
    /// Bytes copied (the snapshot's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_copied: Option<u64>,
    /// How far the target's revision was raised above the source's, so
    /// watchers relist rather than trust an old resourceVersion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_bump: Option<u64>,
    /// Keys found identical in the target (per key prefix: count and hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_verified: Option<u64>,
    /// Key prefixes compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes_verified: Option<u64>,
    /// When the control plane was started on the target: the point of no
    /// return (recorded before it starts). Before it, reverting the spec
    /// rolls back to the untouched source; from it on, the target may hold
    /// writes and the migration always finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_over_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The first write the target accepted (the end of the downtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_write_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// From the freeze to the first write: how long the tenant accepted no writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// What is kept of the source (its StatefulSet and claims, stopped),
    /// for the user to delete once satisfied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
}

pub mod condition {
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
    pub const ETCD: &str = "EtcdReady";
    pub const APISERVER: &str = "APIServerReady";
    pub const CONTROLLER_MANAGER: &str = "ControllerManagerReady";
    pub const SCHEDULER: &str = "SchedulerReady";
    pub const CERTIFICATES: &str = "CertificatesReady";
    /// True when the last inspection found nothing of `Warning` or worse.
    pub const HEALTHY: &str = "Healthy";
    /// Set when `spec.access.argocd` is: whether the Argo CD cluster Secret
    /// is written, or why the operator refused it.
    pub const ARGOCD: &str = "ArgoCDRegistered";
}

fn default_one() -> i32 {
    1
}
fn default_storage_size() -> String {
    "10Gi".into()
}
fn default_service_cidr() -> String {
    "10.96.0.0/12".into()
}
fn default_pod_cidr() -> String {
    "10.244.0.0/16".into()
}
fn default_cluster_domain() -> String {
    "cluster.local".into()
}

#[cfg(test)]
mod tests {
    use super::TenantCluster;
    use kube::CustomResourceExt;

    /// `kubectl explain` and the API reference need a description on every
    /// field of every kind.
    #[test]
    fn backup_sizes_read_as_people_write_them() {
        assert_eq!(crate::human_size(512), "512 B");
        assert_eq!(crate::human_size(3 * 1024), "3.0 KiB");
        assert_eq!(crate::human_size(1_181_116_006), "1.1 GiB");
    }

    #[test]
    fn every_field_of_every_kind_is_described() {
        fn walk(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
            let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
                return;
            };
            for (name, sub) in props {
                let p = format!("{path}.{name}");
                let skipped = p.starts_with(".metadata") || p == ".apiVersion" || p == ".kind";
                if !skipped && sub.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
                if let Some(items) = sub.get("items") {
                    walk(items, &format!("{p}[]"), missing);
                }
            }
        }
        let mut missing = Vec::new();
        for crd in [
            TenantCluster::crd(),
            crate::EtcdBackup::crd(),
            crate::EtcdRestore::crd(),
        ] {
            let kind = crd.spec.names.kind.clone();
            let schema = serde_json::to_value(
                crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            assert!(
                schema.get("description").is_some(),
                "{kind} has no description"
            );
            let mut m = Vec::new();
            walk(&schema, "", &mut m);
            missing.extend(m.into_iter().map(|p| format!("{kind}{p}")));
        }
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:#?}"
        );
    }

    #[test]
    fn kubectl_get_shows_why_a_tenant_is_not_ready_and_kok_lists_every_kind() {
        let crd = TenantCluster::crd();
        let columns: Vec<(String, i32)> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.priority.unwrap_or(0)))
            .collect();
        let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Version",
                "Running",
                "Etcd",
                "Upgrade",
                "Migration",
                "Ready",
                "Reason",
                "Nodes",
                "Endpoint",
                "Age"
            ]
        );
        // The migration phase only in `-o wide`.
        assert!(columns.contains(&("Migration".to_string(), 1)));
        assert_eq!(crd.spec.names.categories, Some(vec!["kok".to_string()]));
        assert_eq!(
            crate::EtcdBackup::crd().spec.names.categories,
            Some(vec!["kok".to_string()])
        );
        assert_eq!(
            crate::EtcdRestore::crd().spec.names.categories,
            Some(vec!["kok".to_string()])
        );
        assert_eq!(
            crate::JoinToken::crd().spec.names.categories,
            Some(vec!["kok".to_string()])
        );
    }
}
