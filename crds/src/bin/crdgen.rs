//! Writes the CRD YAML of every kok resource to stdout (committed as `crds/crds.yaml`).
use kube::CustomResourceExt;

fn main() {
    let crds = [
        kok_crds::TenantCluster::crd(),
        kok_crds::EtcdBackup::crd(),
        kok_crds::EtcdRestore::crd(),
    ];
    for crd in crds {
        print!(
            "---\n{}",
            serde_yaml::to_string(&crd).expect("CRDs serialize to YAML")
        );
    }
}
