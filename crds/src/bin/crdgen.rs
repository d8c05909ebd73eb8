//! Writes the CRD YAML of every kok resource to stdout (committed as `crds/crds.yaml`).

fn main() {
    for crd in kok_crds::crds() {
        print!(
            "---\n{}",
            serde_yaml::to_string(&crd).expect("CRDs serialize to YAML")
        );
    }
}
