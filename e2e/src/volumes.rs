//! Static hostPath PersistentVolumes for tenants with persistent etcd: the
//! local cluster has no volume provisioner, so tests make their own.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

pub fn pv_dir(ns: &str, i: i32) -> String {
    format!("/var/lib/kok-local/pv/{ns}-{i}")
}

/// The user etcd and the restore Jobs run as (kok_templates::security::RUN_AS).
const ETCD_UID: u32 = 65532;

/// One hostPath PV per member, in a StorageClass named after the namespace.
/// The directories are made here, owned by etcd's user and private to it: a
/// directory kubelet creates (DirectoryOrCreate) belongs to root, which a
/// non-root etcd cannot write, and fsGroup does not apply to hostPath.
pub async fn make_volumes(client: &Client, ns: &str, members: i32) {
    use std::os::unix::fs::PermissionsExt;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for i in 0..members {
        let dir = pv_dir(ns, i);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {dir}: {e}"));
        std::os::unix::fs::chown(&dir, Some(ETCD_UID), Some(ETCD_UID))
            .unwrap_or_else(|e| panic!("chown {dir} (the test runs as root on the node): {e}"));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod {dir}: {e}"));
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": format!("{ns}-{i}"), "labels": {"kok.dev/e2e": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": ns,
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": dir, "type": "Directory"},
            }
        }))
        .unwrap();
        pvs.create(&PostParams::default(), &pv)
            .await
            .expect("creating a PV");
    }
}

pub async fn remove_volumes(client: &Client, ns: &str, members: i32) {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for i in 0..members {
        let _ = pvs
            .delete(&format!("{ns}-{i}"), &DeleteParams::default())
            .await;
        let _ = std::fs::remove_dir_all(pv_dir(ns, i));
    }
}

/// The directory on the node that holds member `i`'s volume: PVs bind to
/// claims in any order, so it is read from the claim's binding.
pub async fn member_dir(client: &Client, ns: &str, tc: &str, i: i32) -> String {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let claim = format!("data-{tc}-etcd-{i}");
    let volume = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get(&claim)
        .await
        .unwrap_or_else(|e| panic!("claim {claim}: {e}"))
        .spec
        .and_then(|s| s.volume_name)
        .unwrap_or_else(|| panic!("claim {claim} is not bound"));
    Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await
        .unwrap_or_else(|e| panic!("volume {volume}: {e}"))
        .spec
        .and_then(|s| s.host_path)
        .map(|h| h.path)
        .unwrap_or_else(|| panic!("volume {volume} is not a hostPath"))
}
