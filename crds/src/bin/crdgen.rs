//! Writes the CRD YAML of every kok resource to stdout (committed as `crds/crds.yaml`).
use kube::CustomResourceExt;

fn main() {
    let crds = [
        kok_crds::TenantCluster::crd(),
        kok_crds::EtcdBackup::crd(),
        // EtcdRestore is designed (crds/src/backup.rs) but has no controller yet:
        // it is not installed until one acts on it (docs/runbooks/backup-restore.md).
    ];
    for crd in crds {
        print!(
            "---\n{}",
            serde_yaml::to_string(&crd).expect("CRDs serialize to YAML")
        );
    }
}
