//! kok's API types. Only types live here; behaviour lives in `templates` and `controllers`.

pub mod backup;
pub mod join;
pub mod phases;
pub mod tenant_cluster;

pub use backup::*;
pub use join::*;
pub use phases::*;
pub use tenant_cluster::*;

/// The API group of every kok resource.
pub const GROUP: &str = "kok.dev";

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

/// A TenantCluster name: a DNS-1035 label (its Services are named after it),
/// short enough for every derived name ([`MAX_NAME_LENGTH`]).
pub const NAME_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// Every kok CRD as installed. The API server checks `metadata.name` against
/// the schema too, so a TenantCluster whose children could not be named is
/// refused at `kubectl apply` instead of failing later.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut tenant = TenantCluster::crd();
    for version in &mut tenant.spec.versions {
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            root.properties.get_or_insert_with(Default::default).insert(
                "metadata".into(),
                JSONSchemaProps {
                    type_: Some("object".into()),
                    properties: Some(
                        [(
                            "name".to_string(),
                            JSONSchemaProps {
                                type_: Some("string".into()),
                                max_length: Some(MAX_NAME_LENGTH as i64),
                                pattern: Some(NAME_PATTERN.into()),
                                ..Default::default()
                            },
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
            );
        }
    }
    vec![
        tenant,
        EtcdBackup::crd(),
        EtcdRestore::crd(),
        JoinToken::crd(),
    ]
}
