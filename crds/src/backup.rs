//! Backups of a tenant's etcd: the schedule in `TenantCluster.spec.backup`,
//! one `EtcdBackup` per snapshot, and `EtcdRestore`, the declared restore runbook.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `TenantCluster.spec.backup`: when to snapshot, where to, how long to keep.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Cron schedule (5 fields, UTC), e.g. `0 */6 * * *`. Unset: on-demand only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub schedule: Option<String>,
    #[serde(default)]
    pub retention: Retention,
    pub destination: Destination,
    /// Restore every backup into a scratch etcd and check it (proven restorable).
    #[serde(default)]
    pub verify: bool,
    /// What happens to the backups when the TenantCluster is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Encrypt artifacts at rest (AES-256-GCM) with a key kept in a Secret.
    /// Unset: artifacts are written as etcd produced them (mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<BackupEncryption>,
}

/// The key artifacts are encrypted with. Losing it loses the backups:
/// keep a copy outside the management cluster.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupEncryption {
    /// Secret in the TenantCluster's namespace holding the key.
    #[schemars(length(min = 1, max = 253))]
    pub key_secret: String,
    /// Data key in that Secret whose value is 32 random bytes, base64-encoded
    /// (`head -c 32 /dev/urandom | base64`). Default `key`.
    #[serde(default = "default_encryption_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_encryption_key() -> String {
    "key".into()
}

/// Which backups to keep. Retention applies to the backups the schedule
/// took, never to one taken before an upgrade or by hand; with neither field
/// set, the newest 24 scheduled backups are kept. The newest successful
/// backup and any backup a restore uses are always kept, whatever these say.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep at most this many successful scheduled backups (newest first;
    /// default 24 when `maxAge` is unset too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub keep_last: Option<u32>,
    /// Delete scheduled backups older than this (`30m`, `12h`, `7d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,6}[mhd]$"))]
    pub max_age: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the EtcdBackup objects and artifacts (default): data outlives the cluster.
    #[default]
    Retain,
    /// Delete them with the TenantCluster.
    Delete,
}

/// Where snapshots are written. Exactly one of `filesystem` and `s3`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
}

/// A directory in the operator's pod (a mounted volume or PVC).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemDestination {
    /// Absolute path inside the operator pod, e.g. `/var/lib/kok/backups`.
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
}

/// An S3-compatible bucket.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// S3 bucket (S3 naming rules).
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    /// Endpoint URL for S3-compatible stores (MinIO, Ceph); unset for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: Option<String>,
    /// S3 region (default `us-east-1`).
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Secret in the TenantCluster's namespace with keys `accessKeyID` and
    /// `secretAccessKey` (and optionally `sessionToken`).
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: String,
}

// An optional enum would render `enum: [..., null]`, which apiservers up to at
// least v1.20 reject; the phase is a plain string enum, absent until set.
fn backup_phase_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["Pending", "Running", "Verifying", "Succeeded", "Failed"]
    })
}

fn restore_phase_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["Pending", "StoppingControlPlane", "RestoringEtcd", "StartingControlPlane",
                 "Verifying", "Completed", "Failed"]
    })
}

fn default_region() -> String {
    "us-east-1".into()
}

/// One snapshot of a tenant's etcd. Created by the schedule, or by hand for an
/// on-demand backup; never modified once it has succeeded.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kok.dev",
    version = "v1alpha1",
    kind = "EtcdBackup",
    doc = "One snapshot of a TenantCluster's etcd, streamed to the destination in the TenantCluster's spec.backup, checksummed, and optionally proven restorable in a scratch etcd.",
    namespaced,
    shortname = "eb",
    category = "kok",
    status = "EtcdBackupStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.tenantCluster"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Bytes","type":"integer","jsonPath":".status.sizeBytes","priority":1}"#,
    printcolumn = r#"{"name":"Verified","type":"boolean","jsonPath":".status.verified"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupSpec {
    /// The TenantCluster (same namespace) whose etcd is snapshotted.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub tenant_cluster: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    Pending,
    Running,
    Verifying,
    Succeeded,
    Failed,
}

/// A byte count for people: `512 B`, `3.0 KiB`, `1.1 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl BackupPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, BackupPhase::Succeeded | BackupPhase::Failed)
    }
}

/// What the backup did and what its artifact holds (kstatus conditions).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupStatus {
    /// `Pending`, `Running`, `Verifying`, `Succeeded`, `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "backup_phase_schema")]
    pub phase: Option<BackupPhase>,
    /// Why the backup failed, or what it is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// etcd revision the recorded key count and hash refer to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Keys in the tenant's keyspace at `revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_count: Option<i64>,
    /// etcd `HashKV` at `revision`: the content hash a restore must reproduce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_hash: Option<u32>,
    /// Bytes stored (the artifact as written, sealed or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// `sizeBytes` for people (`1.1 GiB`), for `kubectl get etcdbackups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// sha256 of the artifact as stored, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// etcd's own sha256 of the database (the snapshot's last 32 bytes),
    /// hex. A restore of a plain artifact on a filesystem destination checks
    /// that the artifact ends with it and lets `snapshot restore` check the
    /// database against it, so the artifact is read once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_sha256: Option<String>,
    /// `file:///…` or `s3://bucket/key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// True once restored into a scratch etcd and found identical; false if that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// `metadata.uid` of the TenantCluster snapshotted: which incarnation of a
    /// name the data belongs to (a deleted and recreated cluster has a new uid).
    #[serde(
        rename = "tenantClusterUID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tenant_cluster_uid: Option<String>,
    /// The etcd cluster ID the snapshot came from, lowercase hex as etcdctl prints it.
    #[serde(
        rename = "etcdClusterID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub etcd_cluster_id: Option<String>,
    /// The node whose backups hostPath holds a filesystem artifact: restore
    /// Jobs run there, wherever the operator's leader runs later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Set when the artifact is encrypted: the id of the key (not the key),
    /// so a restore with another key is refused before anything is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_id: Option<String>,
    /// The etcd member the snapshot streamed from (a healthy follower when
    /// there is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_member: Option<String>,
    /// Members that served a quorum read when the backup started; fewer than
    /// `members` means the backup was taken while etcd was degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_members: Option<i32>,
    /// Members of the tenant's etcd when the backup started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<i32>,
    /// The generation the conditions describe (kstatus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus: `Ready` (Succeeded), `Reconciling` (Pending, Running,
    /// Verifying), `Stalled` (Failed, or an API error that retrying cannot fix).
    /// One entry per condition type (a list map: each writer owns its types).
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// Restores a TenantCluster's etcd from an EtcdBackup: the declared runbook.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kok.dev",
    version = "v1alpha1",
    kind = "EtcdRestore",
    doc = "Restores a TenantCluster's etcd from an EtcdBackup: stops the control plane, rebuilds every member from the snapshot (keeping the old data), starts it again; resumable after an operator restart.",
    namespaced,
    shortname = "er",
    category = "kok",
    status = "EtcdRestoreStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.tenantCluster"}"#,
    printcolumn = r#"{"name":"Backup","type":"string","jsonPath":".spec.backup"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EtcdRestoreSpec {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    /// The TenantCluster (same namespace) to restore.
    pub tenant_cluster: String,
    /// EtcdBackup (same namespace) to restore from; it must have succeeded.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub backup: String,
    /// Restore a backup taken from another incarnation of the TenantCluster (a
    /// deleted-and-recreated TenantCluster of the same name, e.g. disaster
    /// recovery). Without it, a backup whose `tenantClusterUID` differs from the
    /// TenantCluster's uid is refused before anything is stopped.
    #[serde(default)]
    pub accept_other_incarnation: bool,
}

/// The restore runbook's steps, in order. Each is recorded before it is
/// acted on, so a restarted operator resumes where it stopped.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum RestorePhase {
    Pending,
    StoppingControlPlane,
    RestoringEtcd,
    StartingControlPlane,
    Verifying,
    Completed,
    Failed,
}

/// Where the restore runbook is (kstatus conditions).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdRestoreStatus {
    /// The runbook step: `Pending`, `StoppingControlPlane`, `RestoringEtcd`, `StartingControlPlane`, `Verifying`, `Completed`, `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "restore_phase_schema")]
    pub phase: Option<RestorePhase>,
    /// What the step does or waits for, or why the restore failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The etcd cluster token of the restored cluster (a new cluster ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_token: Option<String>,
    /// When the current phase began: each phase has its own deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_start_time: Option<Time>,
    /// Recorded before the first member Job is created: from then on some
    /// member's data may have been replaced, so deleting the restore no longer
    /// hands the tenant back on its original data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_jobs_created: Option<bool>,
    /// True when the backup came from another incarnation of the TenantCluster
    /// (different uid) and `spec.acceptOtherIncarnation` allowed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_other_incarnation: Option<bool>,
    /// The generation the conditions describe (kstatus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus: `Ready` (Completed), `Reconciling` (running), `Stalled`
    /// (Failed, or the spec cannot work).
    /// One entry per condition type (a list map: each writer owns its types).
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}
