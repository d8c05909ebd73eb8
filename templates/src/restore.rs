//! Pure builders for restoring a tenant's etcd: one Job per member that
//! rebuilds the member's data directory from a snapshot, on its own volume.

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, HostPathVolumeSource, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kok_crds::Destination;

use crate::controlplane::{etcd_initial_cluster, ETCD_PEER_PORT};
use crate::names::{tenant_labels, Names};

/// Where the etcd StatefulSet mounts each member's volume.
pub const MEMBER_VOLUME_DIR: &str = "/var/lib/etcd";
/// Where the operator (and restore Jobs) see filesystem backup destinations.
pub const BACKUPS_MOUNT: &str = "/var/lib/kok/backups";

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
    /// On the node, the directory mounted as `BACKUPS_MOUNT` in the operator.
    pub backups_host_path: &'a str,
    /// The operator's node: a filesystem destination is a hostPath there.
    pub operator_node: Option<&'a str>,
    pub artifact_key: &'a str,
    pub sha256: &'a str,
    /// The restored cluster's token: a new cluster ID for every restore.
    pub cluster_token: &'a str,
}

/// The claim the etcd StatefulSet made for member `i` (template `data`).
pub fn member_claim(names: &Names, i: i32) -> String {
    format!("data-{}", names.etcd_member(i))
}

pub fn member_restore_job_name(restore: &str, member: i32) -> String {
    format!("{restore}-member-{member}")
}

pub fn member_restore_job(r: &MemberRestore<'_>) -> Job {
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
    ];
    let mut mounts = vec![VolumeMount {
        name: "data".into(),
        mount_path: MEMBER_VOLUME_DIR.into(),
        ..Default::default()
    }];
    let mut volumes = vec![Volume {
        name: "data".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: member_claim(r.names, r.member),
            read_only: None,
        }),
        ..Default::default()
    }];
    if r.destination.filesystem.is_some() {
        mounts.push(VolumeMount {
            name: "backups".into(),
            mount_path: BACKUPS_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "backups".into(),
            host_path: Some(HostPathVolumeSource {
                path: r.backups_host_path.into(),
                type_: Some("Directory".into()),
            }),
            ..Default::default()
        });
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
    }
    let mut labels = tenant_labels(&r.names.tenant);
    labels.insert("kok.dev/component".into(), "etcd-restore".into());
    Job {
        metadata: ObjectMeta {
            name: Some(member_restore_job_name(r.restore_name, r.member)),
            namespace: Some(r.namespace.into()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![r.owner.clone()]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(3),
            active_deadline_seconds: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    // The backups hostPath is the operator's node's directory.
                    node_name: r
                        .destination
                        .filesystem
                        .as_ref()
                        .and(r.operator_node.map(String::from)),
                    // etcd's data directory belongs to root in the member's volume.
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(0),
                        ..Default::default()
                    }),
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
                        ..Default::default()
                    }],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kok_crds::{FilesystemDestination, S3Destination};

    fn job(destination: &Destination) -> Job {
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
            backups_host_path: "/srv/backups",
            operator_node: Some("node-a"),
            artifact_key: "tenants/demo/b1.db",
            sha256: "ab",
            cluster_token: "demo-restore-1",
        })
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
        let fs = Destination {
            filesystem: Some(FilesystemDestination {
                path: "/var/lib/kok/backups/x".into(),
            }),
            s3: None,
        };
        let j = job(&fs);
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
        // The filesystem destination is mounted read-only: a restore never writes backups.
        let backups = &pod.containers[0].volume_mounts.as_ref().unwrap()[1];
        assert_eq!(backups.mount_path, BACKUPS_MOUNT);
        assert_eq!(backups.read_only, Some(true));
        assert_eq!(
            pod.node_name.as_deref(),
            Some("node-a"),
            "where the hostPath is"
        );
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
        assert_eq!(
            pod.volumes.as_ref().unwrap().len(),
            1,
            "no backups hostPath for S3"
        );
    }
}
