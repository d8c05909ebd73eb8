//! Pure builders and decisions for restoring a tenant's etcd: one Job per
//! member that rebuilds the member's data directory from a snapshot, on its own
//! volume; the per-phase deadlines; what deleting a restore midway must do.

use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, HostPathVolumeSource,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, SecretKeySelector, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kok_crds::{BackupEncryption, Destination, RestorePhase};
use sha2::{Digest, Sha256};

use crate::controlplane::{etcd_initial_cluster, ETCD_PEER_PORT};
use crate::kstatus::{Cond, Summary};
use crate::names::{component_labels, Names};
use crate::security::{container_security_context, pod_security_context};

/// Where the etcd StatefulSet mounts each member's volume.
pub const MEMBER_VOLUME_DIR: &str = "/var/lib/etcd";
/// Env var of restore Jobs holding the artifact key (from its Secret).
pub const ARTIFACT_KEY_ENV: &str = "KOK_ARTIFACT_KEY";
/// The operator's private S3 endpoint allowlist, passed on to restore Jobs.
pub const PRIVATE_S3_ENV: &str = "KOK_S3_PRIVATE_ENDPOINTS";
// Where the operator (and restore Jobs) see filesystem backup destinations.
pub use crate::backup::BACKUPS_MOUNT;
/// Label on restore Jobs and their pods naming the EtcdRestore (see
/// [`restore_label_value`]): deleting a restore finds its Jobs by it.
pub const RESTORE_LABEL: &str = "kok.dev/etcd-restore";
/// Scratch space of the restore program: the root filesystem is read-only.
const SCRATCH_DIR: &str = "/tmp";
/// How long one member Job may run, retries included. Shorter than the
/// RestoringEtcd deadline, so a stuck Job has been stopped by Kubernetes
/// before the restore gives up on it.
pub const MEMBER_JOB_DEADLINE: Duration = Duration::from_secs(25 * 60);

/// Why a restore Job cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreJobError {
    #[error("the filesystem destination {0:?} is not under {BACKUPS_MOUNT}")]
    OutsideBackupsMount(String),
    #[error("the artifact key {0:?} has no directory part")]
    FlatArtifactKey(String),
    #[error("the operator has no durable backups directory for filesystem destinations")]
    NoBackupsDirectory,
}

pub struct MemberRestore<'a> {
    pub names: &'a Names,
    pub namespace: &'a str,
    /// The EtcdRestore: names the Jobs and owns them.
    pub restore_name: &'a str,
    pub owner: OwnerReference,
    /// Unique per restore: marks a member as done, so a re-run Job is a no-op.
    pub restore_id: &'a str,
    pub member: i32,
    pub replicas: i32,
    /// The kok-operator image (it carries etcdctl).
    pub image: &'a str,
    pub destination: &'a Destination,
    /// The key Secret when artifacts are encrypted (`spec.backup.encryption`).
    pub encryption: Option<&'a BackupEncryption>,
    /// The private S3 endpoints the operator allows (`KOK_S3_PRIVATE_ENDPOINTS`).
    pub private_s3: &'a crate::backup::PrivateEndpoints,
    /// How the Job reaches a filesystem destination (unused for S3).
    pub backups: BackupsAccess<'a>,
    pub artifact_key: &'a str,
    pub sha256: &'a str,
    /// etcd's sha256 trailer the backup recorded (older backups have none).
    pub etcd_sha256: Option<&'a str>,
    /// The restored cluster's token: a new cluster ID for every restore.
    pub cluster_token: &'a str,
    /// Raise the restored revision by this much and mark it compacted (a
    /// migration's copy: clients relist instead of trusting old watches).
    /// Needs etcdutl 3.5+, which the operator image carries at [`ETCDUTL_IN_IMAGE`].
    pub bump_revision: Option<u64>,
}

/// How a restore Job reaches the operator's backups directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupsAccess<'a> {
    /// The directory is a node directory (`KOK_BACKUP_HOST_PATH`): the Job
    /// mounts it, read-only, on the node that took the backup.
    HostPath {
        /// On the node, the directory mounted as `BACKUPS_MOUNT` in the operator.
        dir: &'a str,
        node: Option<&'a str>,
    },
    /// The directory is the operator's claim (`KOK_BACKUP_CLAIM`), which no
    /// pod of another namespace can mount: the Job fetches the artifact from
    /// the operator (see `artifact_access`).
    Served {
        /// The destination's base URL (`artifact_access::served_artifact`).
        base_url: String,
        /// Good for this artifact only, for a limited time.
        token: String,
    },
    /// The operator has no durable directory: filesystem destinations are
    /// refused before a restore starts, and a Job for one cannot be built.
    None,
}

/// Env vars of a Job that fetches its artifact from the operator.
pub const ARTIFACT_URL_ENV: &str = "KOK_RESTORE_ARTIFACT_URL";
pub const ARTIFACT_TOKEN_ENV: &str = "KOK_RESTORE_ARTIFACT_TOKEN";

/// Where the kok-operator image keeps etcdutl 3.5 (off PATH).
pub const ETCDUTL_IN_IMAGE: &str = "/usr/local/lib/kok/etcdutl";

/// The claim the etcd StatefulSet made for member `i` (template `data`).
pub fn member_claim(names: &Names, i: i32) -> String {
    format!("data-{}", names.etcd_member(i))
}

/// Longest Job name: the Job controller copies it into the `job-name` label of
/// its pods, and a label value has at most 63 characters.
const MAX_JOB_NAME: usize = 63;

/// `<restore>-member-<i>`, or, when that would be longer than 63 characters
/// (an EtcdRestore name may have 253), the restore name cut short and followed
/// by a hash of the whole name, so two long names sharing a prefix differ.
pub fn member_restore_job_name(restore: &str, member: i32) -> String {
    bounded(restore, &format!("-member-{member}"), MAX_JOB_NAME)
}

/// The value of [`RESTORE_LABEL`]: the restore's name, shortened like
/// [`member_restore_job_name`] when it is longer than a label value may be.
pub fn restore_label_value(restore: &str) -> String {
    bounded(restore, "", MAX_JOB_NAME)
}

fn bounded(base: &str, suffix: &str, max: usize) -> String {
    if base.len() + suffix.len() <= max {
        return format!("{base}{suffix}");
    }
    let hash = short_hash(base);
    let keep = max.saturating_sub(suffix.len() + hash.len() + 1);
    let prefix: String = base.chars().take(keep).collect();
    // A cut may end on `-` or `.`, which may not precede another `-`.
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}-{hash}{suffix}")
}

/// 8 hex digits of sha256: stable across releases (unlike std's hasher), so a
/// restarted operator finds the Jobs it created.
fn short_hash(s: &str) -> String {
    Sha256::digest(s.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a restore Job mounts a filesystem destination: only the directory
/// holding this tenant's artifacts (`<destination>/<namespace>/<tenant>`), at
/// the same path as in the operator, so the destination reads the same.
#[derive(Debug, PartialEq, Eq)]
pub struct ArtifactMount {
    /// On the node (under the operator's backups hostPath).
    pub host_path: String,
    /// In the Job's container.
    pub mount_path: String,
}

/// The destination's directory relative to [`BACKUPS_MOUNT`] (empty for
/// the mount itself), if it lies under it. Empty and `.` segments are
/// dropped (the spec allows them; they name the same directory).
pub fn relative_to_backups(destination_path: &str) -> Result<String, RestoreJobError> {
    let outside = || RestoreJobError::OutsideBackupsMount(destination_path.into());
    let rest = destination_path
        .strip_prefix(BACKUPS_MOUNT)
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .ok_or_else(outside)?;
    let segments: Vec<&str> = rest
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    if segments.contains(&"..") {
        return Err(outside());
    }
    Ok(segments.join("/"))
}

pub fn artifact_mount(
    destination_path: &str,
    backups_host_path: &str,
    artifact_key: &str,
) -> Result<ArtifactMount, RestoreJobError> {
    let dest = destination_path.trim_end_matches('/');
    let relative = match relative_to_backups(destination_path)? {
        dir if dir.is_empty() => dir,
        dir => format!("/{dir}"),
    };
    let (dir, _file) = artifact_key
        .rsplit_once('/')
        .filter(|(dir, _)| !dir.is_empty() && !dir.split('/').any(|p| p == ".."))
        .ok_or_else(|| RestoreJobError::FlatArtifactKey(artifact_key.into()))?;
    Ok(ArtifactMount {
        host_path: format!(
            "{}{relative}/{dir}",
            backups_host_path.trim_end_matches('/')
        ),
        mount_path: format!("{dest}/{dir}"),
    })
}

pub fn member_restore_job(r: &MemberRestore<'_>) -> Result<Job, RestoreJobError> {
    let member = r.names.etcd_member(r.member);
    let env = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    };
    let mut envs = vec![
        env("KOK_RESTORE_ID", r.restore_id.into()),
        env("KOK_RESTORE_MEMBER", member.clone()),
        env(
            "KOK_RESTORE_PEER_URL",
            format!("https://{member}:{ETCD_PEER_PORT}"),
        ),
        env(
            "KOK_RESTORE_INITIAL_CLUSTER",
            etcd_initial_cluster(r.names, r.replicas),
        ),
        env("KOK_RESTORE_TOKEN", r.cluster_token.into()),
        env("KOK_RESTORE_DATA_ROOT", MEMBER_VOLUME_DIR.into()),
        env("KOK_RESTORE_KEY", r.artifact_key.into()),
        env("KOK_RESTORE_SHA256", r.sha256.into()),
        env(
            "KOK_RESTORE_DESTINATION",
            serde_json::to_string(r.destination).unwrap_or_default(),
        ),
        env("TMPDIR", SCRATCH_DIR.into()),
    ];
    if let Some(etcd_sha256) = r.etcd_sha256 {
        envs.push(env("KOK_RESTORE_ETCD_SHA256", etcd_sha256.into()));
    }
    if let Some(bump) = r.bump_revision {
        envs.push(env("KOK_RESTORE_BUMP_REVISION", bump.to_string()));
        envs.push(env("KOK_ETCDUTL", ETCDUTL_IN_IMAGE.into()));
    }
    let mut mounts = vec![
        VolumeMount {
            name: "data".into(),
            mount_path: MEMBER_VOLUME_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "scratch".into(),
            mount_path: SCRATCH_DIR.into(),
            ..Default::default()
        },
    ];
    let mut volumes = vec![
        Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: member_claim(r.names, r.member),
                read_only: None,
            }),
            ..Default::default()
        },
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    // The backups hostPath is on the node that took the backup.
    let mut node_name = None;
    if let Some(fs) = &r.destination.filesystem {
        match &r.backups {
            BackupsAccess::HostPath { dir, node } => {
                // Only this tenant's artifacts, read-only: a restore Job of one
                // tenant can neither read another tenant's backups nor change any.
                let m = artifact_mount(&fs.path, dir, r.artifact_key)?;
                mounts.push(VolumeMount {
                    name: "backups".into(),
                    mount_path: m.mount_path,
                    read_only: Some(true),
                    ..Default::default()
                });
                volumes.push(Volume {
                    name: "backups".into(),
                    host_path: Some(HostPathVolumeSource {
                        path: m.host_path,
                        type_: Some("Directory".into()),
                    }),
                    ..Default::default()
                });
                node_name = node.map(String::from);
            }
            BackupsAccess::Served { base_url, token } => {
                envs.push(env(ARTIFACT_URL_ENV, base_url.clone()));
                envs.push(env(ARTIFACT_TOKEN_ENV, token.clone()));
            }
            BackupsAccess::None => return Err(RestoreJobError::NoBackupsDirectory),
        }
    }
    if let Some(s3) = &r.destination.s3 {
        let from_secret = |name: &str, key: &str, optional: bool| EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: s3.credentials_secret.clone(),
                    key: key.into(),
                    optional: Some(optional),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        envs.push(from_secret("KOK_S3_ACCESS_KEY_ID", "accessKeyID", false));
        envs.push(from_secret(
            "KOK_S3_SECRET_ACCESS_KEY",
            "secretAccessKey",
            false,
        ));
        envs.push(from_secret("KOK_S3_SESSION_TOKEN", "sessionToken", true));
        if !r.private_s3.is_empty() {
            envs.push(EnvVar {
                name: PRIVATE_S3_ENV.into(),
                value: Some(r.private_s3.to_string()),
                ..Default::default()
            });
        }
    }
    if let Some(enc) = r.encryption {
        envs.push(EnvVar {
            name: ARTIFACT_KEY_ENV.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: enc.key_secret.clone(),
                    key: enc.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let mut labels = component_labels(&r.names.tenant, "etcd-restore");
    labels.insert(RESTORE_LABEL.into(), restore_label_value(r.restore_name));
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(member_restore_job_name(r.restore_name, r.member)),
            namespace: Some(r.namespace.into()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![r.owner.clone()]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(3),
            active_deadline_seconds: Some(MEMBER_JOB_DEADLINE.as_secs() as i64),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    node_name,
                    // The Job needs no API access: no token in the pod.
                    automount_service_account_token: Some(false),
                    // The same identity as etcd (and the operator, which wrote
                    // the artifact 0600): the rebuilt data is etcd's to open.
                    security_context: Some(pod_security_context()),
                    containers: vec![Container {
                        name: "restore".into(),
                        image: Some(r.image.into()),
                        image_pull_policy: Some("IfNotPresent".into()),
                        command: Some(vec![
                            "/usr/local/bin/kok-operator".into(),
                            "restore-member".into(),
                        ]),
                        env: Some(envs),
                        volume_mounts: Some(mounts),
                        security_context: Some(container_security_context()),
                        ..Default::default()
                    }],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// How long each running phase may take, measured from when it began. Past
/// it the restore fails, with the reason, instead of waiting forever.
pub fn phase_deadline(phase: RestorePhase) -> Option<Duration> {
    let minutes = match phase {
        // Pods stop within their grace period (30 s by default); 5 minutes
        // covers a slow kubelet, not a pod that will never stop.
        RestorePhase::StoppingControlPlane => 5,
        // Every member Job, retries included, has MEMBER_JOB_DEADLINE (25 min)
        // to download and rebuild; the phase waits a little longer for them.
        RestorePhase::RestoringEtcd => 30,
        // One patch of the TenantCluster; only an unreachable API takes long.
        RestorePhase::StartingControlPlane => 10,
        // etcd, then the apiservers start from scratch: image pulls and
        // certificate checks included, a healthy tenant is Ready in minutes.
        RestorePhase::Verifying => 30,
        // Pending waits only for the destination, touching nothing; terminal
        // phases do not run.
        RestorePhase::Pending | RestorePhase::Completed | RestorePhase::Failed => return None,
    };
    Some(Duration::from_secs(minutes * 60))
}

/// The deadline `phase` has passed, if it has, after `elapsed` in it.
pub fn overdue(phase: RestorePhase, elapsed: Duration) -> Option<Duration> {
    phase_deadline(phase).filter(|deadline| elapsed > *deadline)
}

/// What deleting an EtcdRestore must do to the tenant before it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// No member's data was touched (or every member holds the restored
    /// data): clear the annotation, so the tenant runs again.
    HandBack,
    /// Some members may hold restored data and others not: leave the tenant
    /// stopped and annotated; the TenantCluster then shows `RestoreAbandoned`.
    Abandon,
    /// Finished (Completed or Failed): nothing to hand back.
    Release,
}

/// The decision from what the restore recorded. `member_jobs_created` is
/// true once a member Job may exist, i.e. once a data swap may have begun.
pub fn on_delete(phase: Option<RestorePhase>, member_jobs_created: bool) -> OnDelete {
    match phase.unwrap_or(RestorePhase::Pending) {
        RestorePhase::Pending | RestorePhase::StoppingControlPlane => OnDelete::HandBack,
        RestorePhase::RestoringEtcd if !member_jobs_created => OnDelete::HandBack,
        RestorePhase::RestoringEtcd => OnDelete::Abandon,
        // Every member was rebuilt from the same snapshot: consistent data.
        RestorePhase::StartingControlPlane | RestorePhase::Verifying => OnDelete::HandBack,
        RestorePhase::Completed | RestorePhase::Failed => OnDelete::Release,
    }
}

/// Whether the backup may be restored into this incarnation of the tenant.
/// `Ok(true)`: it comes from another incarnation and the restore accepts
/// that; `Ok(false)`: same incarnation, or the backup did not record one.
pub fn check_incarnation(
    backup_tenant_uid: Option<&str>,
    tenant_uid: Option<&str>,
    accept_other_incarnation: bool,
) -> Result<bool, String> {
    match (backup_tenant_uid, tenant_uid) {
        (Some(from), Some(now)) if from != now => {
            if accept_other_incarnation {
                Ok(true)
            } else {
                Err(format!(
                    "the backup was taken from TenantCluster uid {from}, but the TenantCluster \
                     of that name now has uid {now} (it was deleted and recreated); set \
                     spec.acceptOtherIncarnation: true to restore it anyway"
                ))
            }
        }
        _ => Ok(false),
    }
}

/// A restore's kstatus conditions from its phase: Ready only when
/// Completed, Stalled (with `stalled_reason`) when Failed, Reconciling while
/// it runs.
pub fn conditions(phase: RestorePhase, message: &str, stalled_reason: &str) -> Vec<Cond> {
    match phase {
        RestorePhase::Completed => {
            Summary::ready("Completed", message, "").conditions(Some(("Completed", "")))
        }
        RestorePhase::Failed => Summary::blocked(stalled_reason, message, "").conditions(None),
        running => {
            let summary = Summary::working(&format!("{running:?}"), message);
            summary.conditions(Some(("Progressing", "")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kok_crds::{FilesystemDestination, S3Destination};

    fn job(destination: &Destination) -> Job {
        job_with(destination, None)
    }

    fn job_with(destination: &Destination, encryption: Option<&BackupEncryption>) -> Job {
        let names = Names::new("demo");
        member_restore_job(&MemberRestore {
            names: &names,
            namespace: "tenants",
            restore_name: "r1",
            owner: OwnerReference::default(),
            restore_id: "uid-1",
            member: 1,
            replicas: 3,
            image: "kok.local/kok-operator:dev",
            destination,
            encryption,
            private_s3: &Default::default(),
            backups: BackupsAccess::HostPath {
                dir: "/srv/backups",
                node: Some("node-a"),
            },
            artifact_key: "tenants/demo/b1.db",
            sha256: "ab",
            etcd_sha256: None,
            cluster_token: "demo-restore-1",
            bump_revision: None,
        })
        .unwrap()
    }

    fn env(job: &Job, name: &str) -> Option<String> {
        job.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    }

    #[test]
    fn a_member_job_rebuilds_that_member_on_its_own_claim() {
        let j = job(&filesystem());
        assert_eq!(j.metadata.name.as_deref(), Some("r1-member-1"));
        let pod = j.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let claim = pod.volumes.as_ref().unwrap()[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap();
        assert_eq!(claim.claim_name, "data-demo-etcd-1");
        assert_eq!(
            env(&j, "KOK_RESTORE_MEMBER").as_deref(),
            Some("demo-etcd-1")
        );
        assert_eq!(
            env(&j, "KOK_RESTORE_INITIAL_CLUSTER").as_deref(),
            Some("demo-etcd-0=https://demo-etcd-0:2380,demo-etcd-1=https://demo-etcd-1:2380,demo-etcd-2=https://demo-etcd-2:2380")
        );
        // Only the tenant's artifact directory, read-only: a restore never
        // writes backups, nor reads another tenant's.
        let backups = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "backups")
            .unwrap();
        assert_eq!(backups.mount_path, "/var/lib/kok/backups/x/tenants/demo");
        assert_eq!(backups.read_only, Some(true));
        let host = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "backups")
            .and_then(|v| v.host_path.as_ref())
            .unwrap();
        assert_eq!(host.path, "/srv/backups/x/tenants/demo");
        assert_eq!(
            pod.node_name.as_deref(),
            Some("node-a"),
            "where the hostPath is"
        );
    }

    #[test]
    fn the_artifact_key_comes_from_its_secret_only_when_encrypted() {
        let fs = Destination {
            filesystem: Some(FilesystemDestination {
                path: "/var/lib/kok/backups".into(),
            }),
            s3: None,
        };
        assert!(env_var(&job(&fs), ARTIFACT_KEY_ENV).is_none());
        let enc = BackupEncryption {
            key_secret: "backup-key".into(),
            key: "key".into(),
        };
        let j = job_with(&fs, Some(&enc));
        let var = env_var(&j, ARTIFACT_KEY_ENV).unwrap();
        assert!(var.value.is_none(), "the key is never inlined in the Job");
        let r = var.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("backup-key", "key"));
    }

    fn env_var(job: &Job, name: &str) -> Option<k8s_openapi::api::core::v1::EnvVar> {
        job.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)
            .cloned()
    }

    #[test]
    fn s3_credentials_come_from_the_secret_not_the_spec() {
        let s3 = Destination {
            filesystem: None,
            s3: Some(S3Destination {
                bucket: "b".into(),
                prefix: None,
                endpoint: None,
                region: "us-east-1".into(),
                credentials_secret: "creds".into(),
            }),
        };
        let j = job(&s3);
        let pod = j.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let envs = pod.containers[0].env.as_ref().unwrap();
        let key = envs
            .iter()
            .find(|e| e.name == "KOK_S3_SECRET_ACCESS_KEY")
            .unwrap();
        assert!(key.value.is_none());
        let r = key
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("creds", "secretAccessKey")
        );
        assert!(
            pod.volumes
                .as_ref()
                .unwrap()
                .iter()
                .all(|v| v.host_path.is_none()),
            "no backups hostPath for S3"
        );
    }

    fn filesystem() -> Destination {
        Destination {
            filesystem: Some(FilesystemDestination {
                path: "/var/lib/kok/backups/x".into(),
            }),
            s3: None,
        }
    }

    #[test]
    fn a_member_job_runs_restricted_without_an_api_token() {
        let j = job(&filesystem());
        let pod = j.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_user, Some(crate::security::RUN_AS));
        assert_eq!(psc.run_as_group, Some(crate::security::RUN_AS));
        assert_eq!(psc.fs_group, Some(crate::security::RUN_AS));
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        let c = &pod.containers[0];
        assert_eq!(c.security_context, Some(container_security_context()));
        // The root filesystem is read-only: TMPDIR points at an emptyDir.
        assert_eq!(env(&j, "TMPDIR").as_deref(), Some(SCRATCH_DIR));
        let scratch = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == SCRATCH_DIR)
            .unwrap();
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == scratch.name)
            .unwrap();
        assert!(volume.empty_dir.is_some());
    }

    #[test]
    fn the_job_carries_the_restore_label_and_a_deadline_inside_the_phase_deadline() {
        let j = job(&filesystem());
        let labels = j.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get(RESTORE_LABEL).map(String::as_str), Some("r1"));
        assert_eq!(
            labels.get("kok.dev/component").map(String::as_str),
            Some("etcd-restore")
        );
        let pod_labels = j.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
        assert_eq!(pod_labels.labels.as_ref(), Some(labels));
        let job_deadline = j.spec.as_ref().unwrap().active_deadline_seconds.unwrap();
        let phase = phase_deadline(RestorePhase::RestoringEtcd).unwrap();
        assert!((job_deadline as u64) < phase.as_secs());
    }

    /// A DNS-1123 subdomain that is also a valid label value.
    fn valid_name_and_label(s: &str) -> bool {
        let ok_chars = s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        s.len() <= 63
            && ok_chars
            && ends(s.chars().next())
            && ends(s.chars().last())
            && !s.contains(".-")
            && !s.contains("-.")
            && !s.contains("..")
    }

    #[test]
    fn job_names_fit_a_label_value_for_any_restore_name() {
        for len in [1, 54, 55, 63, 200, 253] {
            let name: String = "r".repeat(len);
            for member in [0, 2, 10] {
                let job = member_restore_job_name(&name, member);
                assert!(valid_name_and_label(&job), "{len}: {job}");
                assert!(job.ends_with(&format!("-member-{member}")), "{job}");
                assert_eq!(job, member_restore_job_name(&name, member), "stable");
            }
            let label = restore_label_value(&name);
            assert!(valid_name_and_label(&label), "{len}: {label}");
        }
        // Short enough: the name is kept whole (54 + "-member-0" = 63).
        assert_eq!(member_restore_job_name("r", 0), "r-member-0");
        let fits = "a".repeat(54);
        assert_eq!(
            member_restore_job_name(&fits, 0),
            format!("{fits}-member-0")
        );
        assert_eq!(restore_label_value(&"a".repeat(63)), "a".repeat(63));
        // One longer: cut, with a hash of the whole name.
        let long = "a".repeat(55);
        let cut = member_restore_job_name(&long, 0);
        assert_eq!(cut.len(), 63);
        assert_ne!(cut, format!("{long}-member-0"));
        assert!(cut.starts_with("aaaa"));
    }

    #[test]
    fn long_names_sharing_a_prefix_get_distinct_jobs() {
        let a = format!("{}-a", "x".repeat(198));
        let b = format!("{}-b", "x".repeat(198));
        assert_ne!(
            member_restore_job_name(&a, 0),
            member_restore_job_name(&b, 0)
        );
        assert_ne!(restore_label_value(&a), restore_label_value(&b));
    }

    #[test]
    fn a_cut_never_leaves_a_dot_or_dash_before_the_hash() {
        // The cut lands right after a "." or "-" at several offsets.
        for pad in 40..60 {
            let name = format!("{}.x-y.{}", "a".repeat(pad), "b".repeat(150));
            let job = member_restore_job_name(&name, 1);
            assert!(valid_name_and_label(&job), "{job}");
            let label = restore_label_value(&name);
            assert!(valid_name_and_label(&label), "{label}");
        }
    }

    #[test]
    fn the_artifact_mount_is_the_tenant_directory_under_the_host_path() {
        assert_eq!(
            artifact_mount("/var/lib/kok/backups/e2e/", "/srv/b/", "ns/t/b1.db"),
            Ok(ArtifactMount {
                host_path: "/srv/b/e2e/ns/t".into(),
                mount_path: "/var/lib/kok/backups/e2e/ns/t".into(),
            })
        );
        assert_eq!(
            artifact_mount("/var/lib/kok/backups", "/srv/b", "ns/t/b1.db")
                .unwrap()
                .host_path,
            "/srv/b/ns/t"
        );
        for outside in [
            "/var/lib/kok/backupsX",
            "/etc",
            "/var/lib/kok/backups/../../etc",
        ] {
            assert!(matches!(
                artifact_mount(outside, "/srv/b", "ns/t/b1.db"),
                Err(RestoreJobError::OutsideBackupsMount(_))
            ));
        }
        assert!(matches!(
            artifact_mount("/var/lib/kok/backups/x", "/srv/b", "b1.db"),
            Err(RestoreJobError::FlatArtifactKey(_))
        ));
    }

    /// The Job of member 0 of 1, for `destination` reached as `backups`.
    fn member_zero(
        destination: &Destination,
        backups: BackupsAccess<'_>,
    ) -> Result<Job, RestoreJobError> {
        member_restore_job(&MemberRestore {
            names: &Names::new("demo"),
            namespace: "tenants",
            restore_name: "r1",
            owner: OwnerReference::default(),
            restore_id: "uid-1",
            member: 0,
            replicas: 1,
            image: "img",
            destination,
            encryption: None,
            private_s3: &Default::default(),
            backups,
            artifact_key: "tenants/demo/b1.db",
            sha256: "ab",
            etcd_sha256: None,
            cluster_token: "t",
            bump_revision: None,
        })
    }

    #[test]
    fn a_job_fetches_a_served_artifact_on_any_node_without_a_mount() {
        let served = BackupsAccess::Served {
            base_url: "http://10.96.0.20:8081/artifacts/fs".into(),
            token: "v1.10.ab".into(),
        };
        let job = member_zero(&filesystem(), served).unwrap();
        assert_eq!(
            env(&job, ARTIFACT_URL_ENV).as_deref(),
            Some("http://10.96.0.20:8081/artifacts/fs")
        );
        assert_eq!(env(&job, ARTIFACT_TOKEN_ENV).as_deref(), Some("v1.10.ab"));
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.node_name, None);
        let volumes: Vec<String> = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert!(!volumes.contains(&"backups".to_string()), "{volumes:?}");
    }

    #[test]
    fn a_filesystem_destination_without_a_backups_directory_fails_the_build() {
        let built = member_zero(&filesystem(), BackupsAccess::None);
        assert_eq!(built.err(), Some(RestoreJobError::NoBackupsDirectory));
    }

    #[test]
    fn a_destination_outside_the_mount_fails_the_build() {
        let dest = Destination {
            filesystem: Some(FilesystemDestination {
                path: "/etc".into(),
            }),
            s3: None,
        };
        let host_path = BackupsAccess::HostPath {
            dir: "/srv/backups",
            node: None,
        };
        assert!(member_zero(&dest, host_path).is_err());
    }

    #[test]
    fn each_running_phase_has_a_deadline() {
        let min = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(
            phase_deadline(RestorePhase::StoppingControlPlane),
            Some(min(5))
        );
        assert_eq!(phase_deadline(RestorePhase::RestoringEtcd), Some(min(30)));
        assert_eq!(
            phase_deadline(RestorePhase::StartingControlPlane),
            Some(min(10))
        );
        assert_eq!(phase_deadline(RestorePhase::Verifying), Some(min(30)));
        for p in [
            RestorePhase::Pending,
            RestorePhase::Completed,
            RestorePhase::Failed,
        ] {
            assert_eq!(phase_deadline(p), None);
            assert_eq!(overdue(p, min(10_000)), None);
        }
    }

    #[test]
    fn overdue_only_past_the_deadline() {
        let p = RestorePhase::StoppingControlPlane;
        assert_eq!(overdue(p, Duration::ZERO), None);
        assert_eq!(overdue(p, Duration::from_secs(300)), None, "at, not past");
        assert_eq!(
            overdue(p, Duration::from_secs(301)),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            overdue(RestorePhase::RestoringEtcd, Duration::from_secs(301)),
            None
        );
    }

    #[test]
    fn deleting_before_any_swap_hands_the_tenant_back() {
        use RestorePhase::*;
        assert_eq!(on_delete(None, false), OnDelete::HandBack);
        assert_eq!(on_delete(Some(Pending), false), OnDelete::HandBack);
        assert_eq!(
            on_delete(Some(StoppingControlPlane), false),
            OnDelete::HandBack
        );
        assert_eq!(on_delete(Some(RestoringEtcd), false), OnDelete::HandBack);
    }

    #[test]
    fn deleting_after_a_swap_may_have_begun_abandons_the_tenant_stopped() {
        use RestorePhase::*;
        assert_eq!(on_delete(Some(RestoringEtcd), true), OnDelete::Abandon);
        // Every member rebuilt: the data is consistent, the tenant may run.
        assert_eq!(
            on_delete(Some(StartingControlPlane), true),
            OnDelete::HandBack
        );
        assert_eq!(on_delete(Some(Verifying), true), OnDelete::HandBack);
        assert_eq!(on_delete(Some(Completed), true), OnDelete::Release);
        assert_eq!(on_delete(Some(Failed), true), OnDelete::Release);
        assert_eq!(on_delete(Some(Failed), false), OnDelete::Release);
    }

    #[test]
    fn another_incarnation_is_refused_unless_accepted() {
        assert_eq!(check_incarnation(Some("u1"), Some("u1"), false), Ok(false));
        // Backups from before uids were recorded cannot be checked.
        assert_eq!(check_incarnation(None, Some("u1"), false), Ok(false));
        let refused = check_incarnation(Some("old"), Some("new"), false).unwrap_err();
        assert!(
            refused.contains("old") && refused.contains("new"),
            "{refused}"
        );
        assert!(refused.contains("acceptOtherIncarnation"));
        assert_eq!(check_incarnation(Some("old"), Some("new"), true), Ok(true));
    }

    #[test]
    fn a_restore_reads_as_kstatus_from_its_phase() {
        use kok_crds::condition;
        let get = |cs: &[Cond], t: &str| cs.iter().find(|c| c.type_ == t).map(|c| c.status);
        let done = conditions(RestorePhase::Completed, "restored", "DeadlineExceeded");
        assert_eq!(get(&done, condition::READY), Some(true));
        assert_eq!(get(&done, condition::RECONCILING), Some(false));
        assert_eq!(get(&done, condition::STALLED), Some(false));
        let failed = conditions(
            RestorePhase::Failed,
            "the artifact is corrupt",
            "VerifyFailed",
        );
        let stalled = failed
            .iter()
            .find(|c| c.type_ == condition::STALLED)
            .unwrap();
        assert!(stalled.status && stalled.reason == "VerifyFailed");
        assert_eq!(get(&failed, condition::RECONCILING), Some(false));
        let running = conditions(RestorePhase::StoppingControlPlane, "stopping", "x");
        assert_eq!(get(&running, condition::RECONCILING), Some(true));
        assert_eq!(get(&running, condition::READY), Some(false));
        let r = running
            .iter()
            .find(|c| c.type_ == condition::READY)
            .unwrap();
        assert_eq!(r.reason, "StoppingControlPlane");
    }
}
