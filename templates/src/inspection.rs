//! Inspection: what is wrong with a tenant cluster and its control plane,
//! decided from facts the controller read (pure; tested on fixtures).
//!
//! detect -> record -> repair: [`detect`] turns facts into [`Detected`]
//! problems, [`merge`] records them as findings (keeping when each was first
//! seen), and the controller acts on the [`RepairAction`] of those whose
//! policy is `Repair`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kok_crds::{CheckPolicy, Finding, HealingSpec};

use crate::version::KubeVersion;

/// Every check kok runs, its default policy and what it looks at.
pub const CHECKS: &[(&str, CheckPolicy, &str)] = &[
    (POD_ON_MISSING_NODE, CheckPolicy::Repair, "tenant Pods bound to a Node that no longer exists (repair: force-delete the Pod, which no kubelet will ever confirm)"),
    (VOLUME_RELEASED, CheckPolicy::Report, "tenant PersistentVolumes Released by their claim (their data is still there: what to do with it is the owner's call)"),
    (VOLUME_FAILED, CheckPolicy::Report, "tenant PersistentVolumes whose reclaim failed"),
    (CLAIM_LOST, CheckPolicy::Report, "tenant PersistentVolumeClaims Lost (their volume is gone)"),
    (CRD_STORED_VERSION_NOT_SERVED, CheckPolicy::Repair, "tenant CRDs with objects stored in a version no longer served (repair: rewrite every object in the storage version, then drop the old version from storedVersions)"),
    (CRD_CONVERSION_UNREACHABLE, CheckPolicy::Report, "tenant CRDs whose conversion webhook Service has no ready endpoint"),
    (WEBHOOK_UNREACHABLE, CheckPolicy::Report, "admission webhooks with failurePolicy Fail whose Service has no ready endpoint (every matching request fails)"),
    (SERVICE_IP_CONFLICT, CheckPolicy::Report, "tenant Services sharing an IP (clusterIP, externalIPs, load-balancer ingress) on the same port, or using a Node's IP"),
    (NODE_IP_CONFLICT, CheckPolicy::Report, "tenant Nodes reporting the same InternalIP"),
    (CIDR_OVERLAP, CheckPolicy::Report, "tenant Service or Pod ranges overlapping the management cluster's"),
    (CERTIFICATE_EXPIRING, CheckPolicy::Report, "certificates near expiry: kok's own (which kok renews 30 days ahead) and tenant kubernetes.io/tls Secrets"),
    (ETCD_DATABASE_SIZE, CheckPolicy::Report, "etcd database over 80% of its quota"),
    (ETCD_FRAGMENTED, CheckPolicy::Repair, "etcd database more than half free pages (repair: defragment, followers first, leader last)"),
    (ETCD_ALARM, CheckPolicy::Repair, "etcd alarms: NOSPACE (repair: compact, defragment, disarm once below 80% of the quota), CORRUPT"),
    (ETCD_QUORUM_LOST, CheckPolicy::Report, "a majority of etcd members lost their data (repair is spec.healing.quorumLoss: a restore of the newest verified backup)"),
    (ETCD_MEMBER_LOST, CheckPolicy::Repair, "an etcd member whose volume was replaced (its data is gone) (repair: remove it, add it back as a learner, promote when caught up)"),
    (ETCD_MEMBER_UNHEALTHY, CheckPolicy::Repair, "an etcd member not ready and not answering a quorum read through itself for spec.healing.memberUnhealthySeconds (default 20 min) while every other member is healthy (repair: keep its volume aside with its data (reclaim policy Retain), remove the member, add it back as a learner on a fresh volume, promote when caught up)"),
    (CONTROL_PLANE_CRASH_LOOP, CheckPolicy::Repair, "control-plane pods crash-looping or unready (repair: delete the pod so it is recreated, rate-limited)"),
    (BACKUP_OVERDUE, CheckPolicy::Report, "no successful backup within twice the schedule's interval"),
    (VERSION_SKEW, CheckPolicy::Report, "control-plane components more than the supported skew apart"),
    (NODE_NOT_READY, CheckPolicy::Report, "tenant Nodes not Ready, and for how long (Critical after 5 minutes)"),
    (NODE_PRESSURE, CheckPolicy::Report, "tenant Nodes reporting MemoryPressure, DiskPressure or PIDPressure"),
    (KUBELET_VERSION_SKEW, CheckPolicy::Report, "kubelets older than the control plane allows (two minors, three from 1.28) or newer than it"),
    (CSR_PENDING, CheckPolicy::Report, "certificate signing requests neither approved nor denied for spec.healing.csrPendingSeconds (default 10 min)"),
    (NODE_LEASE_NOT_RENEWED, CheckPolicy::Report, "node Leases (kube-node-lease) not renewed for a minute: the kubelet is gone or cut off"),
    (POD_STUCK_TERMINATING, CheckPolicy::Report, "tenant Pods still terminating a minute past their grace period on a Node that is not Ready (repair, when set to Repair: force-delete the Pod; off by default, since a partitioned node may still run it)"),
];

pub const POD_ON_MISSING_NODE: &str = "PodOnMissingNode";
pub const VOLUME_RELEASED: &str = "VolumeReleased";
pub const VOLUME_FAILED: &str = "VolumeFailed";
pub const CLAIM_LOST: &str = "ClaimLost";
pub const CRD_STORED_VERSION_NOT_SERVED: &str = "CRDStoredVersionNotServed";
pub const CRD_CONVERSION_UNREACHABLE: &str = "CRDConversionUnreachable";
pub const WEBHOOK_UNREACHABLE: &str = "WebhookUnreachable";
pub const SERVICE_IP_CONFLICT: &str = "ServiceIPConflict";
pub const NODE_IP_CONFLICT: &str = "NodeIPConflict";
pub const CIDR_OVERLAP: &str = "CIDROverlap";
pub const CERTIFICATE_EXPIRING: &str = "CertificateExpiring";
pub const ETCD_DATABASE_SIZE: &str = "EtcdDatabaseSize";
pub const ETCD_FRAGMENTED: &str = "EtcdFragmented";
pub const ETCD_ALARM: &str = "EtcdAlarm";
pub const ETCD_MEMBER_LOST: &str = "EtcdMemberLost";
pub const ETCD_QUORUM_LOST: &str = "EtcdQuorumLost";
pub const ETCD_MEMBER_UNHEALTHY: &str = "EtcdMemberUnhealthy";
/// `spec.healing.memberUnhealthySeconds` when unset: well past the 10
/// minutes a member's startup probe gives it to receive a snapshot, so a
/// member catching up is not taken for a broken one.
pub const DEFAULT_MEMBER_UNHEALTHY_SECS: i64 = 1200;
/// Member health unobserved this long (a paused tenant, a restore, a
/// migration, the operator down, passes failing): the clock starts again.
pub const HEALTH_OBSERVATION_GAP_SECS: i64 = 120;
pub const CONTROL_PLANE_CRASH_LOOP: &str = "ControlPlaneCrashLoop";
pub const BACKUP_OVERDUE: &str = "BackupOverdue";
pub const VERSION_SKEW: &str = "VersionSkew";
pub const NODE_NOT_READY: &str = "NodeNotReady";
pub const NODE_PRESSURE: &str = "NodePressure";
pub const KUBELET_VERSION_SKEW: &str = "KubeletVersionSkew";
pub const CSR_PENDING: &str = "CSRPending";
pub const NODE_LEASE_NOT_RENEWED: &str = "NodeLeaseNotRenewed";
pub const POD_STUCK_TERMINATING: &str = "PodStuckTerminating";
/// A Node not Ready this long is Critical.
pub const NODE_NOT_READY_CRITICAL_SECS: i64 = 300;
/// A Lease not renewed this long (the kubelet renews every 10 s; the node
/// controller calls a node lost after 40 s).
pub const LEASE_STALE_SECS: i64 = 60;
/// A Pod still terminating this long past its grace period.
pub const STUCK_TERMINATING_SECS: i64 = 60;
pub const DEFAULT_CSR_PENDING_SECS: i64 = 600;

/// Default seconds between inspections.
pub const DEFAULT_INTERVAL_SECS: u64 = 300;
/// Default cap on control-plane repairs per tenant per hour.
pub const DEFAULT_MAX_REPAIRS_PER_HOUR: u32 = 6;
/// Findings kept in status, most severe first.
pub const MAX_FINDINGS: usize = 50;
/// Repairs kept in status.
pub const MAX_REPAIRS: usize = 20;
/// A certificate is reported this long before it expires ...
pub const CERT_WARNING_SECS: i64 = 30 * 86400;
/// ... and is critical from this long before.
pub const CERT_CRITICAL_SECS: i64 = 7 * 86400;

/// The policy of `check` for this tenant.
pub fn policy(spec: &HealingSpec, check: &str) -> CheckPolicy {
    spec.checks.get(check).copied().unwrap_or_else(|| {
        CHECKS
            .iter()
            .find(|(name, _, _)| *name == check)
            .map(|(_, p, _)| *p)
            .unwrap_or(CheckPolicy::Report)
    })
}

/// Check names in `spec.healing.checks` that kok does not know (a typo
/// would otherwise silently keep the default).
pub fn unknown_checks(spec: &HealingSpec) -> Vec<String> {
    spec.checks
        .keys()
        .filter(|k| !CHECKS.iter().any(|(name, _, _)| name == k))
        .cloned()
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "Info",
            Severity::Warning => "Warning",
            Severity::Critical => "Critical",
        }
    }
}

/// What kok can do about a finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepairAction {
    /// Delete a tenant Pod with grace period 0, unless `node` exists again.
    ForceDeletePod {
        namespace: String,
        name: String,
        node: String,
    },
    /// Rewrite a tenant CRD's objects in its storage version, then set
    /// `status.storedVersions` to that version alone.
    MigrateStoredVersions { crd: String, storage: String },
    /// Defragment every etcd member, followers first.
    DefragmentEtcd,
    /// Compact to the current revision, defragment, disarm NOSPACE.
    ResolveNoSpace,
    /// Delete a tenant Pod with grace period 0 while `node` is still not
    /// Ready and the Pod still terminating.
    ForceDeleteStuckPod {
        namespace: String,
        name: String,
        node: String,
    },
    /// Delete a control-plane pod in the management cluster.
    RestartControlPlanePod { pod: String },
}

/// A problem found by one inspection.
#[derive(Clone, Debug, PartialEq)]
pub struct Detected {
    pub check: &'static str,
    pub severity: Severity,
    pub object: String,
    pub message: String,
    pub repair: Option<RepairAction>,
}

fn found(
    check: &'static str,
    severity: Severity,
    object: impl Into<String>,
    message: impl Into<String>,
) -> Detected {
    Detected {
        check,
        severity,
        object: object.into(),
        message: message.into(),
        repair: None,
    }
}

impl Detected {
    fn repaired_by(mut self, action: RepairAction) -> Self {
        self.repair = Some(action);
        self
    }
}

// ----- facts -----

#[derive(Clone, Debug, Default)]
pub struct NodeFact {
    pub name: String,
    pub internal_ips: Vec<String>,
    /// The Ready condition: `Some(true)`, `Some(false)`, `None` when
    /// Unknown or absent (a kubelet that stopped reporting).
    pub ready: Option<bool>,
    /// When the Ready condition last changed, and its reason.
    pub ready_since: Option<i64>,
    pub ready_reason: String,
    /// Pressure conditions that are True.
    pub pressures: Vec<String>,
    pub kubelet_version: String,
}

#[derive(Clone, Debug, Default)]
pub struct PodFact {
    pub namespace: String,
    pub name: String,
    pub node_name: Option<String>,
    /// `metadata.deletionTimestamp`: when the grace period ends.
    pub deletion: Option<i64>,
}

/// A certificate signing request.
#[derive(Clone, Debug, Default)]
pub struct CsrFact {
    pub name: String,
    pub created: i64,
    /// Neither Approved nor Denied nor Failed.
    pub pending: bool,
    pub requestor: String,
}

#[derive(Clone, Debug, Default)]
pub struct VolumeFact {
    pub name: String,
    pub phase: String,
    /// `namespace/name` of the claim it was bound to.
    pub claim: Option<String>,
    pub reclaim_policy: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ClaimFact {
    pub namespace: String,
    pub name: String,
    pub phase: String,
    pub volume: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ServiceFact {
    pub namespace: String,
    pub name: String,
    /// clusterIPs, externalIPs and load-balancer ingress IPs.
    pub ips: Vec<String>,
    /// `port/protocol`.
    pub ports: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct CrdFact {
    pub name: String,
    pub served: Vec<String>,
    pub storage: Option<String>,
    pub stored_versions: Vec<String>,
    /// `namespace/name` of the conversion webhook's Service, and whether it
    /// has a ready endpoint.
    pub conversion_service: Option<(String, bool)>,
}

#[derive(Clone, Debug, Default)]
pub struct WebhookFact {
    /// `ValidatingWebhookConfiguration name` or `MutatingWebhookConfiguration name`.
    pub configuration: String,
    pub webhook: String,
    pub fails_closed: bool,
    /// `namespace/name` of its Service and whether it has a ready endpoint;
    /// `None` for a URL webhook.
    pub service: Option<(String, bool)>,
}

#[derive(Clone, Debug, Default)]
pub struct CertFact {
    /// `Certificate <name>` (kok's) or `Secret <ns>/<name>` (the tenant's).
    pub object: String,
    /// Unix seconds.
    pub not_after: i64,
    /// kok renews it itself.
    pub renewed_by_kok: bool,
}

#[derive(Clone, Debug, Default)]
pub struct EtcdMemberFact {
    pub name: String,
    pub db_size: i64,
    pub db_size_in_use: i64,
    pub is_leader: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ComponentPodFact {
    pub component: String,
    pub pod: String,
    pub restarts: i32,
    /// `CrashLoopBackOff`, `ImagePullBackOff`, ...
    pub waiting_reason: Option<String>,
    pub last_exit: Option<String>,
    pub ready: bool,
    /// Seconds since the pod started (its unreadiness counts after a grace).
    pub age_secs: i64,
    pub image_tag: Option<String>,
}

/// Everything one inspection read. A `None` part was not read (its error
/// is reported apart); its checks are skipped, not passed.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub now: i64,
    pub nodes: Option<Vec<NodeFact>>,
    pub pods: Option<Vec<PodFact>>,
    pub volumes: Option<Vec<VolumeFact>>,
    pub claims: Option<Vec<ClaimFact>>,
    pub services: Option<Vec<ServiceFact>>,
    pub crds: Option<Vec<CrdFact>>,
    pub webhooks: Option<Vec<WebhookFact>>,
    pub certificates: Vec<CertFact>,
    /// The tenant's Service and Pod ranges, and the management cluster's
    /// known ranges (node pod CIDRs, the range of its `kubernetes` Service).
    pub tenant_cidrs: Vec<(String, String)>,
    pub management_cidrs: Vec<(String, String)>,
    pub etcd: Option<Vec<EtcdMemberFact>>,
    pub etcd_quota_bytes: i64,
    pub etcd_alarms: Vec<(String, String)>,
    /// Members whose volume was replaced since they served on it, of
    /// `etcd_replicas`.
    pub etcd_lost: Vec<String>,
    pub etcd_replicas: i32,
    /// Members unhealthy on their own volume, since when (the heal pass
    /// records it), and after how long they are replaced.
    pub etcd_unhealthy: BTreeMap<String, i64>,
    pub member_unhealthy_secs: i64,
    pub components: Option<Vec<ComponentPodFact>>,
    /// Seconds between scheduled backups, and the newest successful backup.
    pub backup_interval_secs: Option<i64>,
    pub last_backup: Option<i64>,
    pub backup_schedule_start: Option<i64>,
    pub csrs: Option<Vec<CsrFact>>,
    pub csr_pending_secs: i64,
    /// Node name -> when its Lease was last renewed.
    pub leases: Option<BTreeMap<String, i64>>,
    /// The version the control plane runs (`status.version`).
    pub control_plane_version: Option<String>,
}

/// The etcd quota when `--quota-backend-bytes` is not set.
pub const ETCD_DEFAULT_QUOTA: i64 = 2 * 1024 * 1024 * 1024;
/// Fragmentation is repaired only above this much free space: defragmenting
/// blocks the member, not worth it for a few MiB.
pub const FRAGMENTATION_MIN_FREE: i64 = 64 * 1024 * 1024;

/// Every problem the facts show.
pub fn detect(f: &Facts) -> Vec<Detected> {
    let mut out = Vec::new();
    if let (Some(nodes), Some(pods)) = (&f.nodes, &f.pods) {
        out.extend(pods_on_missing_nodes(nodes, pods));
    }
    if let Some(volumes) = &f.volumes {
        out.extend(volume_problems(volumes));
    }
    if let Some(claims) = &f.claims {
        out.extend(claims.iter().filter(|c| c.phase == "Lost").map(|c| {
            found(
                CLAIM_LOST,
                Severity::Critical,
                format!("PersistentVolumeClaim {}/{}", c.namespace, c.name),
                format!(
                    "the claim is Lost: its volume {} no longer exists",
                    c.volume.as_deref().unwrap_or("(none)")
                ),
            )
        }));
    }
    if let Some(crds) = &f.crds {
        out.extend(crd_problems(crds));
    }
    if let Some(webhooks) = &f.webhooks {
        out.extend(webhook_problems(webhooks));
    }
    if let Some(services) = &f.services {
        out.extend(service_ip_conflicts(
            services,
            f.nodes.as_deref().unwrap_or_default(),
        ));
    }
    if let Some(nodes) = &f.nodes {
        out.extend(node_ip_conflicts(nodes));
        out.extend(node_problems(nodes, f.now));
        if let Some(v) = f
            .control_plane_version
            .as_deref()
            .and_then(|v| v.parse().ok())
        {
            out.extend(kubelet_skew(nodes, v));
        }
        if let Some(leases) = &f.leases {
            out.extend(stale_leases(nodes, leases, f.now));
        }
        if let Some(pods) = &f.pods {
            out.extend(stuck_terminating(nodes, pods, f.now));
        }
    }
    if let Some(csrs) = &f.csrs {
        out.extend(pending_csrs(csrs, f.now, f.csr_pending_secs));
    }
    out.extend(cidr_overlaps(&f.tenant_cidrs, &f.management_cidrs));
    out.extend(expiring_certificates(&f.certificates, f.now));
    if let Some(members) = &f.etcd {
        out.extend(etcd_problems(members, f.etcd_quota_bytes, &f.etcd_alarms));
    }
    out.extend(lost_members(&f.etcd_lost, f.etcd_replicas));
    out.extend(unhealthy_members(
        &f.etcd_unhealthy,
        f.now,
        f.member_unhealthy_secs,
    ));
    if let Some(components) = &f.components {
        out.extend(control_plane_problems(components));
        out.extend(version_skew(components));
    }
    out.extend(backup_overdue(f));
    out
}

/// The checks whose facts were not read this time (their findings are
/// kept as they were, not dropped as passed).
pub fn unread_checks(f: &Facts) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut unread = |read: bool, checks: &[&'static str]| {
        if !read {
            out.extend_from_slice(checks);
        }
    };
    unread(
        f.nodes.is_some() && f.pods.is_some(),
        &[POD_ON_MISSING_NODE, NODE_IP_CONFLICT, POD_STUCK_TERMINATING],
    );
    unread(
        f.nodes.is_some(),
        &[NODE_NOT_READY, NODE_PRESSURE, KUBELET_VERSION_SKEW],
    );
    unread(
        f.nodes.is_some() && f.leases.is_some(),
        &[NODE_LEASE_NOT_RENEWED],
    );
    unread(f.csrs.is_some(), &[CSR_PENDING]);
    unread(f.volumes.is_some(), &[VOLUME_RELEASED, VOLUME_FAILED]);
    unread(f.claims.is_some(), &[CLAIM_LOST]);
    unread(
        f.crds.is_some(),
        &[CRD_STORED_VERSION_NOT_SERVED, CRD_CONVERSION_UNREACHABLE],
    );
    unread(f.webhooks.is_some(), &[WEBHOOK_UNREACHABLE]);
    unread(f.services.is_some(), &[SERVICE_IP_CONFLICT]);
    unread(
        f.etcd.is_some(),
        &[ETCD_DATABASE_SIZE, ETCD_FRAGMENTED, ETCD_ALARM],
    );
    unread(
        f.components.is_some(),
        &[CONTROL_PLANE_CRASH_LOOP, VERSION_SKEW],
    );
    out
}

pub fn pods_on_missing_nodes(nodes: &[NodeFact], pods: &[PodFact]) -> Vec<Detected> {
    let known: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    pods.iter()
        .filter_map(|p| {
            let node = p.node_name.as_deref()?;
            (!known.contains(node)).then(|| {
                found(
                    POD_ON_MISSING_NODE,
                    Severity::Warning,
                    format!("Pod {}/{}", p.namespace, p.name),
                    format!("bound to Node {node}, which no longer exists"),
                )
                .repaired_by(RepairAction::ForceDeletePod {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    node: node.to_string(),
                })
            })
        })
        .collect()
}

/// Nodes not Ready (Critical after five minutes) and under pressure.
pub fn node_problems(nodes: &[NodeFact], now: i64) -> Vec<Detected> {
    let mut out = Vec::new();
    for n in nodes {
        let object = format!("Node {}", n.name);
        if n.ready != Some(true) {
            let since = n.ready_since.map(|t| now - t).unwrap_or(0);
            let severity = if since >= NODE_NOT_READY_CRITICAL_SECS {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let state = if n.ready == Some(false) {
                "not Ready"
            } else {
                "Ready Unknown"
            };
            let why = if n.ready_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", n.ready_reason)
            };
            out.push(found(
                NODE_NOT_READY,
                severity,
                object.clone(),
                format!("{state} for {}{why}", duration(since)),
            ));
        }
        if !n.pressures.is_empty() {
            out.push(found(
                NODE_PRESSURE,
                Severity::Warning,
                object,
                format!(
                    "reports {}: the kubelet evicts pods and admits no new ones",
                    n.pressures.join(", ")
                ),
            ));
        }
    }
    out
}

/// Kubelets the control plane at `cp` may not serve.
pub fn kubelet_skew(nodes: &[NodeFact], cp: KubeVersion) -> Vec<Detected> {
    nodes
        .iter()
        .filter_map(|n| {
            let k: KubeVersion = n.kubelet_version.parse().ok()?;
            let why = crate::nodes::kubelet_skew_problem(cp, &[(n.name.clone(), k)])?;
            Some(found(
                KUBELET_VERSION_SKEW,
                Severity::Warning,
                format!("Node {}", n.name),
                why,
            ))
        })
        .collect()
}

/// Nodes whose Lease was not renewed for [`LEASE_STALE_SECS`], or that
/// have none.
pub fn stale_leases(nodes: &[NodeFact], leases: &BTreeMap<String, i64>, now: i64) -> Vec<Detected> {
    nodes
        .iter()
        .filter_map(|n| {
            let object = format!("Node {}", n.name);
            match leases.get(&n.name) {
                Some(t) if now - t < LEASE_STALE_SECS => None,
                Some(t) => Some(found(
                    NODE_LEASE_NOT_RENEWED,
                    Severity::Warning,
                    object,
                    format!(
                        "its Lease kube-node-lease/{} was last renewed {} ago",
                        n.name,
                        duration(now - t)
                    ),
                )),
                None => Some(found(
                    NODE_LEASE_NOT_RENEWED,
                    Severity::Warning,
                    object,
                    "it has no Lease in kube-node-lease: its kubelet never renewed one".to_string(),
                )),
            }
        })
        .collect()
}

/// Pods still terminating [`STUCK_TERMINATING_SECS`] past their grace
/// period on a Node that is not Ready: no kubelet will confirm them.
pub fn stuck_terminating(nodes: &[NodeFact], pods: &[PodFact], now: i64) -> Vec<Detected> {
    let not_ready: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| n.ready != Some(true))
        .map(|n| n.name.as_str())
        .collect();
    pods.iter()
        .filter_map(|p| {
            let node = p.node_name.as_deref()?;
            let overdue = now - p.deletion?;
            (overdue >= STUCK_TERMINATING_SECS && not_ready.contains(node)).then(|| {
                found(
                    POD_STUCK_TERMINATING,
                    Severity::Warning,
                    format!("Pod {}/{}", p.namespace, p.name),
                    format!(
                        "terminating {} past its grace period on Node {node}, which is not Ready",
                        duration(overdue)
                    ),
                )
                .repaired_by(RepairAction::ForceDeleteStuckPod {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    node: node.to_string(),
                })
            })
        })
        .collect()
}

/// CSRs left pending longer than `limit` seconds.
pub fn pending_csrs(csrs: &[CsrFact], now: i64, limit: i64) -> Vec<Detected> {
    csrs.iter()
        .filter(|c| c.pending && now - c.created >= limit)
        .map(|c| {
            found(
                CSR_PENDING,
                Severity::Warning,
                format!("CertificateSigningRequest {}", c.name),
                format!(
                    "pending for {} (requested by {}): neither approved nor denied",
                    duration(now - c.created),
                    c.requestor
                ),
            )
        })
        .collect()
}

pub fn volume_problems(volumes: &[VolumeFact]) -> Vec<Detected> {
    volumes
        .iter()
        .filter_map(|v| {
            let object = format!("PersistentVolume {}", v.name);
            let claim = v.claim.as_deref().unwrap_or("(none)");
            match v.phase.as_str() {
                "Released" => Some(found(
                    VOLUME_RELEASED,
                    Severity::Warning,
                    object,
                    format!(
                        "released by claim {claim} and kept (reclaim policy {}): its data is still there and nothing can bind it",
                        v.reclaim_policy.as_deref().unwrap_or("Retain")
                    ),
                )),
                "Failed" => Some(found(
                    VOLUME_FAILED,
                    Severity::Warning,
                    object,
                    format!("reclaiming it after claim {claim} failed"),
                )),
                _ => None,
            }
        })
        .collect()
}

pub fn crd_problems(crds: &[CrdFact]) -> Vec<Detected> {
    let mut out = Vec::new();
    for c in crds {
        let object = format!("CustomResourceDefinition {}", c.name);
        let unserved: Vec<&String> = c
            .stored_versions
            .iter()
            .filter(|v| !c.served.contains(v))
            .collect();
        if !unserved.is_empty() {
            let d = found(
                CRD_STORED_VERSION_NOT_SERVED,
                Severity::Warning,
                object.clone(),
                format!(
                    "objects may still be stored as {}, which is not served: they cannot be read in that version, and the version cannot be removed",
                    join(&unserved)
                ),
            );
            out.push(match &c.storage {
                Some(storage) => d.repaired_by(RepairAction::MigrateStoredVersions {
                    crd: c.name.clone(),
                    storage: storage.clone(),
                }),
                None => d,
            });
        }
        if let Some((service, false)) = &c.conversion_service {
            out.push(found(
                CRD_CONVERSION_UNREACHABLE,
                Severity::Critical,
                object,
                format!("its conversion webhook Service {service} has no ready endpoint: reads in another version fail"),
            ));
        }
    }
    out
}

pub fn webhook_problems(webhooks: &[WebhookFact]) -> Vec<Detected> {
    webhooks
        .iter()
        .filter_map(|w| match &w.service {
            Some((service, false)) if w.fails_closed => Some(found(
                WEBHOOK_UNREACHABLE,
                Severity::Critical,
                w.configuration.clone(),
                format!(
                    "webhook {} fails closed and its Service {service} has no ready endpoint: every request it matches is refused",
                    w.webhook
                ),
            )),
            _ => None,
        })
        .collect()
}

pub fn service_ip_conflicts(services: &[ServiceFact], nodes: &[NodeFact]) -> Vec<Detected> {
    // ip/port -> the Services using it.
    let mut by_endpoint: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for s in services {
        for ip in s.ips.iter().filter(|ip| !ip.is_empty() && *ip != "None") {
            for port in &s.ports {
                by_endpoint
                    .entry((ip.clone(), port.clone()))
                    .or_default()
                    .push(format!("{}/{}", s.namespace, s.name));
            }
        }
    }
    let mut out: Vec<Detected> = by_endpoint
        .into_iter()
        .filter(|(_, users)| users.len() > 1)
        .map(|((ip, port), users)| {
            found(
                SERVICE_IP_CONFLICT,
                Severity::Warning,
                format!("Services {}", users.join(", ")),
                format!("all use {ip} port {port}: traffic to it reaches one of them"),
            )
        })
        .collect();
    let node_ips: BTreeMap<&str, &str> = nodes
        .iter()
        .flat_map(|n| {
            n.internal_ips
                .iter()
                .map(move |ip| (ip.as_str(), n.name.as_str()))
        })
        .collect();
    for s in services {
        for ip in &s.ips {
            if let Some(node) = node_ips.get(ip.as_str()) {
                out.push(found(
                    SERVICE_IP_CONFLICT,
                    Severity::Warning,
                    format!("Service {}/{}", s.namespace, s.name),
                    format!("uses {ip}, the address of Node {node}"),
                ));
            }
        }
    }
    out
}

pub fn node_ip_conflicts(nodes: &[NodeFact]) -> Vec<Detected> {
    let mut by_ip: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in nodes {
        for ip in &n.internal_ips {
            by_ip.entry(ip).or_default().push(&n.name);
        }
    }
    by_ip
        .into_iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(ip, names)| {
            found(
                NODE_IP_CONFLICT,
                Severity::Warning,
                format!("Nodes {}", names.join(", ")),
                format!("all report InternalIP {ip}"),
            )
        })
        .collect()
}

/// `(what, cidr)` pairs of the tenant against the management cluster's.
pub fn cidr_overlaps(
    tenant: &[(String, String)],
    management: &[(String, String)],
) -> Vec<Detected> {
    let mut out = Vec::new();
    for (what, cidr) in tenant {
        let Ok(net) = cidr.parse::<IpNet>() else {
            continue;
        };
        for (theirs, other) in management {
            let Ok(other_net) = other.parse::<IpNet>() else {
                continue;
            };
            if net.contains(&other_net) || other_net.contains(&net) {
                out.push(found(
                    CIDR_OVERLAP,
                    Severity::Info,
                    format!("{what} {cidr}"),
                    format!("overlaps the management cluster's {theirs} {other}: tenant nodes that also reach the management network route one of them wrong"),
                ));
            }
        }
    }
    out
}

pub fn expiring_certificates(certs: &[CertFact], now: i64) -> Vec<Detected> {
    certs
        .iter()
        .filter_map(|c| {
            let left = c.not_after - now;
            if left > CERT_WARNING_SECS {
                return None;
            }
            let severity = if left <= CERT_CRITICAL_SECS {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let when = if left <= 0 {
                format!("expired {} ago", duration(-left))
            } else {
                format!("expires in {}", duration(left))
            };
            let who = if c.renewed_by_kok {
                "kok renews it"
            } else {
                "renew it"
            };
            Some(found(
                CERTIFICATE_EXPIRING,
                severity,
                c.object.clone(),
                format!("{when}; {who}"),
            ))
        })
        .collect()
}

pub fn etcd_problems(
    members: &[EtcdMemberFact],
    quota: i64,
    alarms: &[(String, String)],
) -> Vec<Detected> {
    let quota = if quota > 0 { quota } else { ETCD_DEFAULT_QUOTA };
    let mut out = Vec::new();
    for m in members {
        let object = format!("etcd member {}", m.name);
        if m.db_size * 10 > quota * 8 {
            out.push(found(
                ETCD_DATABASE_SIZE,
                Severity::Warning,
                object.clone(),
                format!("database {} of a {} quota", bytes(m.db_size), bytes(quota)),
            ));
        }
        let free = m.db_size - m.db_size_in_use;
        if m.db_size_in_use > 0 && free > FRAGMENTATION_MIN_FREE && free * 2 > m.db_size {
            out.push(
                found(
                    ETCD_FRAGMENTED,
                    Severity::Info,
                    object,
                    format!(
                        "{} of the {} database is free pages",
                        bytes(free),
                        bytes(m.db_size)
                    ),
                )
                .repaired_by(RepairAction::DefragmentEtcd),
            );
        }
    }
    for (member, alarm) in alarms {
        let object = format!("etcd member {member}");
        let d = match alarm.as_str() {
            "NOSPACE" => found(
                ETCD_ALARM,
                Severity::Critical,
                object,
                "NOSPACE: the database reached its quota; etcd refuses every write",
            )
            .repaired_by(RepairAction::ResolveNoSpace),
            other => found(
                ETCD_ALARM,
                Severity::Critical,
                object,
                format!("{other}: see docs/self-healing.md"),
            ),
        };
        // One NOSPACE repair covers every member.
        if !out
            .iter()
            .any(|o: &Detected| o.check == ETCD_ALARM && o.repair == d.repair && d.repair.is_some())
        {
            out.push(d);
        }
    }
    out
}

/// Members that lost their data: each is replaced while the others keep a
/// quorum; a majority lost is a lost quorum.
pub fn lost_members(lost: &[String], replicas: i32) -> Vec<Detected> {
    if quorum_lost(replicas, lost.len() as i32) {
        return vec![found(
            ETCD_QUORUM_LOST,
            Severity::Critical,
            "etcd",
            format!(
                "{} of {replicas} members lost their data ({}): no quorum holds what was committed; restore the newest backup (docs/runbooks/backup-restore.md), or let kok do it (spec.healing.quorumLoss.restoreFromBackup)",
                lost.len(),
                lost.join(", ")
            ),
        )];
    }
    lost.iter()
        .map(|m| {
            found(
                ETCD_MEMBER_LOST,
                Severity::Critical,
                format!("etcd member {m}"),
                "its volume was replaced: its data is gone; the others hold a quorum, so it is rebuilt from them",
            )
        })
        .collect()
}

/// Since when each member is unhealthy *alone*: the earlier time for one
/// still unhealthy, `now` for one newly so; a member healthy again is
/// dropped. The clock starts again for every member while more than one
/// member is down (`shared`: after a shared outage the last member back is
/// not judged by the outage's length), and when health was last observed
/// more than `HEALTH_OBSERVATION_GAP_SECS` ago (`last_observed`).
pub fn track_unhealthy(
    before: &BTreeMap<String, i64>,
    last_observed: Option<i64>,
    unhealthy_now: &[String],
    shared: bool,
    now: i64,
) -> BTreeMap<String, i64> {
    let continuous =
        !shared && last_observed.is_some_and(|t| now - t <= HEALTH_OBSERVATION_GAP_SECS);
    unhealthy_now
        .iter()
        .map(|m| {
            let since = before.get(m).copied().filter(|_| continuous);
            (m.clone(), since.unwrap_or(now))
        })
        .collect()
}

/// The member to replace because it stayed unhealthy past `after_secs`:
/// only when it is the only unhealthy one of at least 3 voters (so the
/// others keep a healthy quorum once it is removed); two or more unhealthy
/// at once is a shared cause a replacement would not fix.
pub fn unhealthy_member_due(
    since: &BTreeMap<String, i64>,
    voters: i32,
    now: i64,
    after_secs: i64,
) -> Option<&str> {
    if voters < 3 || since.len() != 1 {
        return None;
    }
    let (member, from) = since.iter().next()?;
    (now - from >= after_secs).then_some(member.as_str())
}

/// Members unhealthy on their own volume, each a finding (its repair is
/// the member replacement, which the heal pass drives).
pub fn unhealthy_members(
    since: &BTreeMap<String, i64>,
    now: i64,
    after_secs: i64,
) -> Vec<Detected> {
    since
        .iter()
        .map(|(m, from)| {
            let due = now - from >= after_secs;
            let plan = if since.len() == 1 {
                format!(
                    "replaced (its volume kept aside) once unhealthy for {} while the others keep a healthy quorum",
                    duration(after_secs)
                )
            } else {
                "not replaced while another member is unhealthy too (a shared cause)".into()
            };
            // A member restarting is normal: Critical once it is due.
            found(
                ETCD_MEMBER_UNHEALTHY,
                if due {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                format!("etcd member {m}"),
                format!(
                    "not ready and no answer to a quorum read for {}; {plan}",
                    duration(now - from)
                ),
            )
        })
        .collect()
}

/// Restarts after which a component counts as crash-looping.
pub const CRASH_LOOP_RESTARTS: i32 = 3;
/// A component pod unready this long after it started is reported.
pub const UNREADY_GRACE_SECS: i64 = 300;

pub fn control_plane_problems(pods: &[ComponentPodFact]) -> Vec<Detected> {
    pods.iter()
        .filter_map(|p| {
            let crash_looping = p.waiting_reason.as_deref() == Some("CrashLoopBackOff")
                && p.restarts >= CRASH_LOOP_RESTARTS;
            let stuck_unready = !p.ready && p.age_secs > UNREADY_GRACE_SECS;
            if !crash_looping && !stuck_unready {
                return None;
            }
            let why = match (&p.waiting_reason, &p.last_exit) {
                (Some(w), Some(e)) => format!("{w} after {} restarts; last exit: {e}", p.restarts),
                (Some(w), None) => format!("{w} after {} restarts", p.restarts),
                (None, _) => format!("not ready {} after it started", duration(p.age_secs)),
            };
            let d = found(
                CONTROL_PLANE_CRASH_LOOP,
                Severity::Critical,
                format!("{} pod {}", p.component, p.pod),
                why,
            );
            // etcd members are never restarted by this check: a member is
            // healed by the member replacement, which keeps quorum.
            Some(if p.component == crate::names::ETCD {
                d
            } else {
                d.repaired_by(RepairAction::RestartControlPlanePod { pod: p.pod.clone() })
            })
        })
        .collect()
}

/// kube-apiserver may be one minor ahead of the controller-manager and the
/// scheduler, never behind; more is out of the supported skew.
pub fn version_skew(pods: &[ComponentPodFact]) -> Vec<Detected> {
    let minor = |tag: &str| -> Option<u32> {
        let v: crate::version::KubeVersion = tag.parse().ok()?;
        Some(v.minor)
    };
    let apiservers: Vec<u32> = pods
        .iter()
        .filter(|p| p.component == crate::names::APISERVER)
        .filter_map(|p| p.image_tag.as_deref().and_then(minor))
        .collect();
    let Some(&newest) = apiservers.iter().max() else {
        return Vec::new();
    };
    let oldest = apiservers.iter().min().copied().unwrap_or(newest);
    let mut out = Vec::new();
    if newest > oldest + 1 {
        out.push(found(
            VERSION_SKEW,
            Severity::Warning,
            "kube-apiserver",
            format!("apiservers run 1.{oldest} and 1.{newest}: more than one minor apart"),
        ));
    }
    for p in pods.iter().filter(|p| {
        p.component == crate::names::CONTROLLER_MANAGER || p.component == crate::names::SCHEDULER
    }) {
        let Some(m) = p.image_tag.as_deref().and_then(minor) else {
            continue;
        };
        if m > oldest || m + 1 < oldest {
            out.push(found(
                VERSION_SKEW,
                Severity::Warning,
                format!("{} pod {}", p.component, p.pod),
                format!("runs 1.{m} against apiservers at 1.{oldest}: supported is the same minor or one older"),
            ));
        }
    }
    out
}

pub fn backup_overdue(f: &Facts) -> Option<Detected> {
    let interval = f.backup_interval_secs?;
    let since = f.last_backup.or(f.backup_schedule_start)?;
    let age = f.now - since;
    (age > 2 * interval).then(|| {
        let last = match f.last_backup {
            Some(_) => format!("the last successful backup is {} old", duration(age)),
            None => format!(
                "no backup has succeeded in the {} since the schedule began",
                duration(age)
            ),
        };
        found(
            BACKUP_OVERDUE,
            Severity::Warning,
            "backup schedule",
            format!("{last}; the schedule runs every {}", duration(interval)),
        )
    })
}

/// The findings after an inspection: those detected now, each keeping when
/// it was first seen and its count; those no longer seen are dropped. At
/// most [`MAX_FINDINGS`], most severe first.
pub fn merge(
    previous: &[Finding],
    detected: &[(Detected, CheckPolicy)],
    now: Timestamp,
) -> Vec<Finding> {
    let mut out: Vec<(Severity, Finding)> = detected
        .iter()
        .filter(|(_, p)| *p != CheckPolicy::Off)
        .map(|(d, policy)| {
            let before = previous
                .iter()
                .find(|f| f.check == d.check && f.object == d.object);
            let finding = Finding {
                check: d.check.to_string(),
                severity: d.severity.as_str().to_string(),
                object: d.object.clone(),
                message: d.message.clone(),
                first_seen: before.map(|f| f.first_seen.clone()).unwrap_or(Time(now)),
                last_seen: Time(now),
                count: before.map(|f| f.count).unwrap_or(0) + 1,
                policy: format!("{policy:?}"),
                repair: before.and_then(|f| f.repair.clone()),
            };
            (d.severity, finding)
        })
        .collect();
    // Two detections of one check and object (two members' NOSPACE) count once.
    out.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1.check.cmp(&b.1.check))
            .then_with(|| a.1.object.cmp(&b.1.object))
    });
    out.dedup_by(|a, b| a.1.check == b.1.check && a.1.object == b.1.object);
    out.into_iter().take(MAX_FINDINGS).map(|(_, f)| f).collect()
}

/// The `Healthy` condition: False on a finding of Warning or worse;
/// otherwise True, or Unknown (`None`) when a part could not be read (the
/// tenant API down, say): not read is not passed.
pub fn healthy(findings: &[Finding], unread: &[String]) -> (Option<bool>, String, String) {
    let serious: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.severity != Severity::Info.as_str())
        .collect();
    match serious.first() {
        None if !unread.is_empty() => (
            None,
            "InspectionIncomplete".into(),
            format!(
                "nothing of Warning or worse in what was read; not read: {}",
                unread.join("; ")
            ),
        ),
        None => (
            Some(true),
            "NoFindings".into(),
            "the last inspection found nothing of Warning or worse".into(),
        ),
        Some(first) => (
            Some(false),
            first.check.clone(),
            format!(
                "{} finding(s); first: {}: {}",
                serious.len(),
                first.object,
                first.message
            ),
        ),
    }
}

/// Whether the tenant may take another control-plane repair: fewer than
/// `max_per_hour` in the last hour (`repair_times`: unix seconds).
pub fn repair_allowed(repair_times: &[i64], now: i64, max_per_hour: u32) -> bool {
    let recent = repair_times.iter().filter(|t| now - **t < 3600).count();
    (recent as u32) < max_per_hour
}

/// The fleet-wide circuit breaker: when more than `max_share_percent` of
/// the tenants (and at least `min_unhealthy` of them) are unhealthy at
/// once, the cause is likely shared (the management cluster, a bad
/// release) and restarting pods everywhere would make it worse.
pub fn circuit_open(
    unhealthy: usize,
    total: usize,
    max_share_percent: u32,
    min_unhealthy: usize,
) -> bool {
    unhealthy >= min_unhealthy && unhealthy * 100 > total * max_share_percent as usize
}

/// What the fleet breaker counts: `(unhealthy, all)` owners, an owner being
/// the namespace that holds tenants (one team), unhealthy when any of its
/// tenants is. Whoever may create TenantClusters in one namespace counts
/// once however many broken tenants it makes, so it cannot pause healing
/// for everybody else; a shared cause makes every namespace unhealthy.
pub fn fleet_counts<'a>(tenants: impl IntoIterator<Item = (&'a str, bool)>) -> (usize, usize) {
    let mut owners: BTreeMap<&str, bool> = BTreeMap::new();
    for (namespace, unhealthy) in tenants {
        *owners.entry(namespace).or_default() |= unhealthy;
    }
    (owners.values().filter(|u| **u).count(), owners.len())
}

/// Members needed for a quorum of `replicas`.
pub fn quorum(replicas: i32) -> i32 {
    replicas / 2 + 1
}

/// Whether members that lost their data (`lost` of `replicas`) took the
/// quorum with them: then no member can be rebuilt from the others.
pub fn quorum_lost(replicas: i32, lost: i32) -> bool {
    lost > 0 && replicas - lost < quorum(replicas)
}

/// An EtcdBackup as a candidate for an automatic restore.
#[derive(Clone, Debug, Default)]
pub struct BackupCandidate {
    pub name: String,
    pub tenant_uid: Option<String>,
    pub succeeded: bool,
    pub verified: bool,
    /// Unix seconds.
    pub completed: Option<i64>,
}

/// The backup an automatic restore uses: the newest that succeeded, was
/// verified restorable, was taken of this incarnation of the tenant, and
/// is at most `max_age_secs` old. The error says why there is none.
pub fn pick_backup<'a>(
    backups: &'a [BackupCandidate],
    tenant_uid: &str,
    now: i64,
    max_age_secs: i64,
) -> Result<&'a BackupCandidate, String> {
    let usable: Vec<&BackupCandidate> = backups
        .iter()
        .filter(|b| b.succeeded && b.verified && b.tenant_uid.as_deref() == Some(tenant_uid))
        .collect();
    let newest = usable
        .iter()
        .filter_map(|b| Some((b.completed?, *b)))
        .max_by_key(|(t, _)| *t);
    match newest {
        None => Err(format!(
            "no verified backup of this tenant ({} backup(s) found; a backup counts once it succeeded and was verified restorable: spec.backup.verify)",
            backups.len()
        )),
        Some((t, _)) if now - t > max_age_secs => Err(format!(
            "the newest verified backup is {} old, past spec.healing.quorumLoss.maxBackupAge ({})",
            duration(now - t),
            duration(max_age_secs)
        )),
        Some((_, b)) => Ok(b),
    }
}

/// Default for `spec.healing.quorumLoss.maxBackupAge`.
pub const DEFAULT_MAX_BACKUP_AGE_SECS: i64 = 3600;

/// Whether `ip` (a Service or Node address) is in `cidr`.
pub fn in_cidr(ip: &str, cidr: &str) -> bool {
    match (ip.parse::<IpAddr>(), cidr.parse::<IpNet>()) {
        (Ok(ip), Ok(net)) => net.contains(&ip),
        _ => false,
    }
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

fn duration(secs: i64) -> String {
    match secs {
        s if s >= 2 * 86400 => format!("{}d", s / 86400),
        s if s >= 2 * 3600 => format!("{}h", s / 3600),
        s if s >= 120 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn bytes(b: i64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str) -> NodeFact {
        NodeFact {
            name: name.into(),
            internal_ips: vec![ip.into()],
            ready: Some(true),
            kubelet_version: "v1.20.2".into(),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_not_ready_under_pressure_or_too_old_are_found() {
        let now = 10_000;
        let mut down = node("down", "10.0.0.2");
        down.ready = None;
        down.ready_since = Some(now - 400);
        down.ready_reason = "NodeStatusUnknown".into();
        let mut late = node("late", "10.0.0.3");
        late.ready = Some(false);
        late.ready_since = Some(now - 30);
        late.pressures = vec!["DiskPressure".into()];
        late.kubelet_version = "v1.17.0".into();
        let nodes = [node("fine", "10.0.0.1"), down, late];
        let found = node_problems(&nodes, now);
        let by = |o: &str, c: &str| {
            found
                .iter()
                .find(|d| d.object == o && d.check == c)
                .cloned()
        };
        let d = by("Node down", NODE_NOT_READY).unwrap();
        assert_eq!(d.severity, Severity::Critical);
        assert!(
            d.message
                .contains("Ready Unknown for 6m (NodeStatusUnknown)"),
            "{}",
            d.message
        );
        assert_eq!(
            by("Node late", NODE_NOT_READY).unwrap().severity,
            Severity::Warning
        );
        assert!(by("Node late", NODE_PRESSURE)
            .unwrap()
            .message
            .contains("DiskPressure"));
        assert!(found.iter().all(|d| d.object != "Node fine"));
        let skew = kubelet_skew(&nodes, "v1.20.2".parse().unwrap());
        assert_eq!(skew.len(), 1);
        assert_eq!(skew[0].object, "Node late");
        assert!(
            kubelet_skew(&nodes, "v1.19.0".parse().unwrap()).len() == 2,
            "newer kubelets too"
        );
    }

    #[test]
    fn stale_leases_pending_csrs_and_stuck_pods_are_found() {
        let now = 10_000;
        let mut gone = node("gone", "10.0.0.2");
        gone.ready = None;
        let nodes = [node("fine", "10.0.0.1"), gone];
        let leases = BTreeMap::from([
            ("fine".to_string(), now - 5),
            ("gone".to_string(), now - 90),
        ]);
        let stale = stale_leases(&nodes, &leases, now);
        assert_eq!(stale.len(), 1);
        assert!(
            stale[0].message.contains("1m") || stale[0].message.contains("90s"),
            "{}",
            stale[0].message
        );
        assert_eq!(
            stale_leases(&nodes, &BTreeMap::new(), now).len(),
            2,
            "no Lease at all"
        );
        let pod = |name: &str, node: &str, deletion: Option<i64>| PodFact {
            namespace: "default".into(),
            name: name.into(),
            node_name: Some(node.into()),
            deletion,
        };
        let pods = [
            pod("stuck", "gone", Some(now - 120)),
            pod("just-deleted", "gone", Some(now - 10)),
            pod("live-node", "fine", Some(now - 600)),
            pod("running", "gone", None),
        ];
        let stuck = stuck_terminating(&nodes, &pods, now);
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert_eq!(stuck[0].object, "Pod default/stuck");
        assert!(matches!(
            stuck[0].repair,
            Some(RepairAction::ForceDeleteStuckPod { .. })
        ));
        assert_eq!(
            policy(&HealingSpec::default(), POD_STUCK_TERMINATING),
            CheckPolicy::Report
        );
        let csr = |name: &str, age: i64, pending| CsrFact {
            name: name.into(),
            created: now - age,
            pending,
            requestor: "system:bootstrap:abcdef".into(),
        };
        let csrs = [
            csr("old", 700, true),
            csr("new", 10, true),
            csr("done", 9000, false),
        ];
        let pending = pending_csrs(&csrs, now, DEFAULT_CSR_PENDING_SECS);
        assert_eq!(pending.len(), 1);
        assert!(pending[0].message.contains("system:bootstrap:abcdef"));
        let facts = Facts {
            now,
            ..Default::default()
        };
        let unread = unread_checks(&facts);
        for c in [
            NODE_NOT_READY,
            CSR_PENDING,
            NODE_LEASE_NOT_RENEWED,
            POD_STUCK_TERMINATING,
        ] {
            assert!(unread.contains(&c), "{c} is not read without its facts");
        }
    }

    #[test]
    fn a_pod_on_a_deleted_node_is_found_and_force_deleted() {
        let nodes = [node("a", "10.0.0.1")];
        let pods = [
            PodFact {
                namespace: "default".into(),
                name: "on-a".into(),
                node_name: Some("a".into()),
                deletion: None,
            },
            PodFact {
                namespace: "default".into(),
                name: "on-gone".into(),
                node_name: Some("gone".into()),
                deletion: None,
            },
            PodFact {
                namespace: "default".into(),
                name: "pending".into(),
                node_name: None,
                deletion: None,
            },
        ];
        let found = pods_on_missing_nodes(&nodes, &pods);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].object, "Pod default/on-gone");
        assert_eq!(
            found[0].repair,
            Some(RepairAction::ForceDeletePod {
                namespace: "default".into(),
                name: "on-gone".into(),
                node: "gone".into()
            })
        );
    }

    #[test]
    fn released_and_failed_volumes_and_lost_claims_are_reported_only() {
        let volumes = [
            VolumeFact {
                name: "pv-released".into(),
                phase: "Released".into(),
                claim: Some("default/gone".into()),
                reclaim_policy: Some("Retain".into()),
            },
            VolumeFact {
                name: "pv-bound".into(),
                phase: "Bound".into(),
                ..Default::default()
            },
            VolumeFact {
                name: "pv-failed".into(),
                phase: "Failed".into(),
                ..Default::default()
            },
        ];
        let found = volume_problems(&volumes);
        let checks: Vec<_> = found.iter().map(|d| d.check).collect();
        assert_eq!(checks, [VOLUME_RELEASED, VOLUME_FAILED]);
        assert!(found.iter().all(|d| d.repair.is_none()));
        let f = Facts {
            claims: Some(vec![ClaimFact {
                namespace: "ns".into(),
                name: "c".into(),
                phase: "Lost".into(),
                volume: Some("pv-x".into()),
            }]),
            ..Default::default()
        };
        let lost = detect(&f);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].check, CLAIM_LOST);
        assert_eq!(lost[0].severity, Severity::Critical);
    }

    #[test]
    fn an_unserved_stored_version_is_migrated_to_the_storage_version() {
        let crds = [
            CrdFact {
                name: "widgets.example.com".into(),
                served: vec!["v2".into()],
                storage: Some("v2".into()),
                stored_versions: vec!["v1".into(), "v2".into()],
                conversion_service: None,
            },
            CrdFact {
                name: "fine.example.com".into(),
                served: vec!["v1".into()],
                storage: Some("v1".into()),
                stored_versions: vec!["v1".into()],
                conversion_service: Some(("ns/conv".into(), false)),
            },
        ];
        let found = crd_problems(&crds);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].check, CRD_STORED_VERSION_NOT_SERVED);
        assert!(found[0].message.contains("v1"), "{}", found[0].message);
        assert_eq!(
            found[0].repair,
            Some(RepairAction::MigrateStoredVersions {
                crd: "widgets.example.com".into(),
                storage: "v2".into()
            })
        );
        assert_eq!(found[1].check, CRD_CONVERSION_UNREACHABLE);
    }

    #[test]
    fn a_fail_closed_webhook_without_endpoints_is_critical() {
        let hooks = [
            WebhookFact {
                configuration: "ValidatingWebhookConfiguration deny".into(),
                webhook: "deny.example.com".into(),
                fails_closed: true,
                service: Some(("ns/svc".into(), false)),
            },
            WebhookFact {
                configuration: "ValidatingWebhookConfiguration lenient".into(),
                webhook: "lenient.example.com".into(),
                fails_closed: false,
                service: Some(("ns/svc".into(), false)),
            },
            WebhookFact {
                configuration: "MutatingWebhookConfiguration up".into(),
                webhook: "up.example.com".into(),
                fails_closed: true,
                service: Some(("ns/up".into(), true)),
            },
        ];
        let found = webhook_problems(&hooks);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].object, "ValidatingWebhookConfiguration deny");
    }

    #[test]
    fn services_sharing_an_ip_and_port_or_a_node_ip_conflict() {
        let svc = |name: &str, ip: &str, port: &str| ServiceFact {
            namespace: "default".into(),
            name: name.into(),
            ips: vec![ip.into()],
            ports: vec![port.into()],
        };
        let services = [
            svc("a", "192.0.2.10", "80/TCP"),
            svc("b", "192.0.2.10", "80/TCP"),
            svc("c", "192.0.2.10", "443/TCP"),
            svc("d", "10.0.0.1", "80/TCP"),
            svc("headless", "None", "80/TCP"),
            svc("headless2", "None", "80/TCP"),
        ];
        let found = service_ip_conflicts(&services, &[node("n1", "10.0.0.1")]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].object, "Services default/a, default/b");
        assert!(found[1].message.contains("Node n1"));
        let nodes = [
            node("n1", "10.0.0.5"),
            node("n2", "10.0.0.5"),
            node("n3", "10.0.0.6"),
        ];
        let found = node_ip_conflicts(&nodes);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].object, "Nodes n1, n2");
    }

    #[test]
    fn overlapping_ranges_are_found_either_way_round() {
        let tenant = [
            ("serviceCIDR".to_string(), "10.96.0.0/12".to_string()),
            ("podCIDR".to_string(), "10.244.0.0/16".to_string()),
        ];
        let management = [("node pod CIDR".to_string(), "10.244.3.0/24".to_string())];
        let found = cidr_overlaps(&tenant, &management);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].object, "podCIDR 10.244.0.0/16");
        let none = cidr_overlaps(&tenant, &[("x".into(), "172.16.0.0/16".into())]);
        assert!(none.is_empty());
    }

    #[test]
    fn certificates_warn_at_30_days_and_are_critical_at_7() {
        let now = 1_000_000_000;
        let cert = |object: &str, days: i64| CertFact {
            object: object.into(),
            not_after: now + days * 86400,
            renewed_by_kok: false,
        };
        let certs = [cert("a", 60), cert("b", 20), cert("c", 3), cert("d", -1)];
        let found = expiring_certificates(&certs, now);
        let got: Vec<_> = found
            .iter()
            .map(|d| (d.object.as_str(), d.severity))
            .collect();
        assert_eq!(
            got,
            [
                ("b", Severity::Warning),
                ("c", Severity::Critical),
                ("d", Severity::Critical)
            ]
        );
        assert!(found[2].message.contains("expired"), "{}", found[2].message);
    }

    #[test]
    fn etcd_size_fragmentation_and_nospace() {
        let mib = 1024 * 1024;
        let members = [
            EtcdMemberFact {
                name: "t-etcd-0".into(),
                db_size: 90 * mib,
                db_size_in_use: 10 * mib,
                is_leader: true,
            },
            EtcdMemberFact {
                name: "t-etcd-1".into(),
                db_size: 20 * mib,
                db_size_in_use: 19 * mib,
                is_leader: false,
            },
        ];
        let alarms = [
            ("t-etcd-0".to_string(), "NOSPACE".to_string()),
            ("t-etcd-1".to_string(), "NOSPACE".to_string()),
        ];
        let found = etcd_problems(&members, 100 * mib, &alarms);
        let checks: Vec<_> = found.iter().map(|d| d.check).collect();
        // Size over 80% and fragmented on member 0; one NOSPACE repair.
        assert_eq!(checks, [ETCD_DATABASE_SIZE, ETCD_FRAGMENTED, ETCD_ALARM]);
        assert_eq!(found[2].repair, Some(RepairAction::ResolveNoSpace));
        assert!(etcd_problems(&members[1..], 0, &[]).is_empty());
    }

    #[test]
    fn crash_loops_restart_pods_but_never_etcd_members() {
        let pod = |component: &str, reason: Option<&str>, restarts: i32| ComponentPodFact {
            component: component.into(),
            pod: format!("t-{component}-x"),
            restarts,
            waiting_reason: reason.map(Into::into),
            last_exit: Some("Error (exit 1)".into()),
            ready: false,
            age_secs: 60,
            image_tag: None,
        };
        let found = control_plane_problems(&[
            pod("kube-apiserver", Some("CrashLoopBackOff"), 5),
            pod("etcd", Some("CrashLoopBackOff"), 5),
            pod("kube-scheduler", Some("CrashLoopBackOff"), 1),
        ]);
        assert_eq!(found.len(), 2);
        assert!(matches!(
            found[0].repair,
            Some(RepairAction::RestartControlPlanePod { .. })
        ));
        assert_eq!(found[1].repair, None);
        assert!(found[0].message.contains("5 restarts"));
    }

    #[test]
    fn version_skew_beyond_one_minor_is_reported() {
        let pod = |component: &str, tag: &str| ComponentPodFact {
            component: component.into(),
            pod: format!("{component}-{tag}"),
            ready: true,
            image_tag: Some(tag.into()),
            ..Default::default()
        };
        assert!(version_skew(&[
            pod("kube-apiserver", "v1.21.0"),
            pod("kube-controller-manager", "v1.20.2"),
        ])
        .is_empty());
        let found = version_skew(&[
            pod("kube-apiserver", "v1.20.2"),
            pod("kube-scheduler", "v1.21.0"),
            pod("kube-controller-manager", "v1.18.0"),
        ]);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn a_backup_older_than_two_intervals_is_overdue() {
        let f = |last: Option<i64>| Facts {
            now: 10_000,
            backup_interval_secs: Some(3600),
            last_backup: last,
            backup_schedule_start: Some(0),
            ..Default::default()
        };
        assert!(backup_overdue(&f(Some(9_000))).is_none());
        assert!(backup_overdue(&f(Some(2_000))).is_some());
        assert!(backup_overdue(&f(None))
            .unwrap()
            .message
            .contains("no backup has succeeded"));
    }

    #[test]
    fn merging_keeps_first_seen_counts_and_drops_what_is_gone() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let d = |object: &str, severity| {
            (
                Detected {
                    check: POD_ON_MISSING_NODE,
                    severity,
                    object: object.into(),
                    message: "m".into(),
                    repair: None,
                },
                CheckPolicy::Repair,
            )
        };
        let first = merge(
            &[],
            &[d("a", Severity::Warning), d("b", Severity::Info)],
            t0,
        );
        assert_eq!(first.len(), 2);
        let second = merge(
            &first,
            &[d("a", Severity::Warning), d("c", Severity::Critical)],
            t1,
        );
        let objects: Vec<_> = second.iter().map(|f| f.object.as_str()).collect();
        assert_eq!(objects, ["c", "a"], "most severe first; b is gone");
        assert_eq!(second[1].first_seen, Time(t0));
        assert_eq!(second[1].last_seen, Time(t1));
        assert_eq!(second[1].count, 2);
        let off = merge(&[], &[(d("x", Severity::Warning).0, CheckPolicy::Off)], t0);
        assert!(off.is_empty());
        let (ok, reason, _) = healthy(&second, &[]);
        assert_eq!(ok, Some(false));
        assert_eq!(reason, POD_ON_MISSING_NODE);
        let info_only = merge(&[], &[d("i", Severity::Info)], t0);
        assert_eq!(healthy(&info_only, &[]).0, Some(true));
        let (unknown, reason, message) = healthy(&info_only, &["tenant API: refused".into()]);
        assert_eq!(unknown, None, "not read is not passed");
        assert_eq!(reason, "InspectionIncomplete");
        assert!(message.contains("tenant API: refused"), "{message}");
        assert_eq!(
            healthy(&second, &["tenant API: refused".into()]).0,
            Some(false),
            "a finding still counts when another part was not read"
        );
    }

    #[test]
    fn checks_whose_facts_were_not_read_are_named() {
        let f = Facts {
            nodes: Some(vec![]),
            pods: None,
            volumes: Some(vec![]),
            ..Default::default()
        };
        let unread = unread_checks(&f);
        assert!(unread.contains(&POD_ON_MISSING_NODE));
        assert!(unread.contains(&CLAIM_LOST));
        assert!(!unread.contains(&VOLUME_RELEASED));
    }

    #[test]
    fn quorum_is_lost_with_a_majority_of_members() {
        assert!(quorum_lost(1, 1));
        assert!(!quorum_lost(3, 1));
        assert!(quorum_lost(3, 2));
        assert!(!quorum_lost(5, 2));
        assert!(quorum_lost(5, 3));
        assert!(!quorum_lost(3, 0));
    }

    #[test]
    fn an_automatic_restore_takes_the_newest_verified_backup_of_this_tenant_within_its_age() {
        let b = |name: &str, uid: &str, verified: bool, completed: i64| BackupCandidate {
            name: name.into(),
            tenant_uid: Some(uid.into()),
            succeeded: true,
            verified,
            completed: Some(completed),
        };
        let now = 100_000;
        let backups = [
            b("old", "u1", true, now - 5000),
            b("newer", "u1", true, now - 600),
            b("unverified", "u1", false, now - 60),
            b("other-incarnation", "u0", true, now - 30),
        ];
        assert_eq!(
            pick_backup(&backups, "u1", now, 3600).unwrap().name,
            "newer"
        );
        let too_old = pick_backup(&backups[..1], "u1", now, 3600).unwrap_err();
        assert!(too_old.contains("maxBackupAge"), "{too_old}");
        let none = pick_backup(&backups[2..], "u1", now, 3600).unwrap_err();
        assert!(none.contains("no verified backup"), "{none}");
    }

    #[test]
    fn policies_default_per_check_and_unknown_names_are_refused() {
        let mut spec = HealingSpec::default();
        assert_eq!(policy(&spec, POD_ON_MISSING_NODE), CheckPolicy::Repair);
        assert_eq!(policy(&spec, VOLUME_RELEASED), CheckPolicy::Report);
        spec.checks
            .insert(POD_ON_MISSING_NODE.into(), CheckPolicy::Report);
        spec.checks
            .insert("PodOnMisingNode".into(), CheckPolicy::Off);
        assert_eq!(policy(&spec, POD_ON_MISSING_NODE), CheckPolicy::Report);
        assert_eq!(unknown_checks(&spec), ["PodOnMisingNode"]);
    }

    #[test]
    fn repairs_are_rate_limited_and_the_fleet_breaker_opens_on_a_shared_cause() {
        let now = 10_000;
        assert!(repair_allowed(&[now - 4000, now - 100], now, 2));
        assert!(!repair_allowed(&[now - 200, now - 100], now, 2));
        assert!(!repair_allowed(&[], now, 0));
        assert!(!circuit_open(1, 2, 50, 3), "too few to call it shared");
        assert!(circuit_open(6, 10, 50, 3));
        assert!(!circuit_open(5, 10, 50, 3));
    }

    #[test]
    fn one_namespace_counts_once_in_the_fleet_breaker() {
        // Ten broken tenants of one team beside three healthy teams.
        let mut fleet: Vec<(&str, bool)> = vec![("team-a", true); 10];
        fleet.extend([("team-b", false), ("team-c", false), ("team-d", false)]);
        let (unhealthy, all) = fleet_counts(fleet.iter().copied());
        assert_eq!((unhealthy, all), (1, 4));
        assert!(!circuit_open(unhealthy, all, 50, 3));
        // A shared cause: every team has an unhealthy tenant.
        let shared = [
            ("team-a", true),
            ("team-b", true),
            ("team-b", false),
            ("team-c", true),
        ];
        let (unhealthy, all) = fleet_counts(shared);
        assert_eq!((unhealthy, all), (3, 3));
        assert!(circuit_open(unhealthy, all, 50, 3));
    }

    fn since(v: &[(&str, i64)]) -> BTreeMap<String, i64> {
        v.iter().map(|(m, t)| (m.to_string(), *t)).collect()
    }

    #[test]
    fn an_unhealthy_member_keeps_its_first_time_until_it_is_healthy_again() {
        let before = since(&[("t-etcd-1", 100), ("t-etcd-2", 150)]);
        let now = track_unhealthy(&before, Some(170), &["t-etcd-1".into()], false, 200);
        assert_eq!(now, since(&[("t-etcd-1", 100)]), "healthy again: dropped");
        let two = track_unhealthy(
            &before,
            Some(170),
            &["t-etcd-1".into(), "t-etcd-0".into()],
            true,
            200,
        );
        assert_eq!(
            two,
            since(&[("t-etcd-0", 200), ("t-etcd-1", 200)]),
            "a shared outage restarts every clock"
        );
        let after_gap = track_unhealthy(&before, Some(10), &["t-etcd-1".into()], false, 200);
        assert_eq!(
            after_gap,
            since(&[("t-etcd-1", 200)]),
            "unobserved for more than the gap: the clock starts again"
        );
        let never = track_unhealthy(&before, None, &["t-etcd-1".into()], false, 200);
        assert_eq!(never, since(&[("t-etcd-1", 200)]));
    }

    #[test]
    fn only_a_lone_unhealthy_member_of_three_or_more_is_replaced_after_the_threshold() {
        let one = since(&[("t-etcd-1", 100)]);
        assert_eq!(unhealthy_member_due(&one, 3, 699, 600), None, "not yet");
        assert_eq!(unhealthy_member_due(&one, 3, 700, 600), Some("t-etcd-1"));
        assert_eq!(unhealthy_member_due(&one, 5, 700, 600), Some("t-etcd-1"));
        assert_eq!(
            unhealthy_member_due(&one, 1, 9999, 600),
            None,
            "a single member has no others to rebuild it from"
        );
        let two = since(&[("t-etcd-1", 100), ("t-etcd-2", 100)]);
        assert_eq!(
            unhealthy_member_due(&two, 5, 9999, 600),
            None,
            "two at once: a shared cause"
        );
        assert_eq!(unhealthy_member_due(&BTreeMap::new(), 3, 9999, 600), None);
    }

    #[test]
    fn an_unhealthy_member_is_a_finding_that_says_what_kok_will_do() {
        let f = Facts {
            now: 400,
            etcd_unhealthy: since(&[("t-etcd-1", 100)]),
            member_unhealthy_secs: 600,
            ..Default::default()
        };
        let found = detect(&f);
        let d = found
            .iter()
            .find(|d| d.check == ETCD_MEMBER_UNHEALTHY)
            .expect("a finding");
        assert_eq!(d.object, "etcd member t-etcd-1");
        assert!(d.message.contains("for 5m;"), "{}", d.message);
        assert!(d.message.contains("replaced"), "{}", d.message);
        assert_eq!(d.severity, Severity::Warning, "not due yet");
        let due = unhealthy_members(&since(&[("t-etcd-1", 100)]), 700, 600);
        assert_eq!(due[0].severity, Severity::Critical);
        let two = unhealthy_members(&since(&[("a", 0), ("b", 0)]), 10, 600);
        assert!(two.iter().all(|d| d.message.contains("not replaced")));
    }
}
