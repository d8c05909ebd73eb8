//! Secrets that carry the tenant's PKI and kubeconfigs, and the hashes that
//! roll pods when what they mount changes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use sha2::{Digest, Sha256};

use crate::controlplane::Placement;
use crate::names::tenant_labels;
use crate::pki::CertKeyPair;

/// Keys of a CA Secret (the `kubernetes.io/tls` layout).
pub const CA_CERT_KEY: &str = "tls.crt";
pub const CA_KEY_KEY: &str = "tls.key";
/// Key of a kubeconfig Secret (the Cluster API convention, read by Flux and Argo CD tooling).
pub const KUBECONFIG_KEY: &str = "value";

pub fn secret(p: &Placement, name: String, type_: &str, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(p.namespace.clone()),
            labels: Some(tenant_labels(&p.names.tenant)),
            owner_references: Some(vec![p.owner.clone()]),
            ..Default::default()
        },
        type_: Some(type_.to_string()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

pub fn ca_secret(p: &Placement, name: String, ca: &CertKeyPair) -> Secret {
    secret(
        p,
        name,
        "kubernetes.io/tls",
        BTreeMap::from([
            (CA_CERT_KEY.to_string(), ca.cert_pem.clone()),
            (CA_KEY_KEY.to_string(), ca.key_pem.clone()),
        ]),
    )
}

pub fn kubeconfig_secret(p: &Placement, name: String, kubeconfig: String) -> Secret {
    secret(
        p,
        name,
        "Opaque",
        BTreeMap::from([(KUBECONFIG_KEY.to_string(), kubeconfig)]),
    )
}

/// Reads a Secret's data as UTF-8 strings (PEM and YAML are text).
pub fn string_data(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| String::from_utf8(v.0.clone()).ok().map(|s| (k.clone(), s)))
        .collect()
}

/// Reads a certificate and key pair stored under `<name>.crt` / `<name>.key`
/// (or `tls.crt` / `tls.key` when `name` is `tls`).
pub fn cert_key_pair(data: &BTreeMap<String, String>, name: &str) -> Option<CertKeyPair> {
    Some(CertKeyPair {
        cert_pem: data.get(&format!("{name}.crt"))?.clone(),
        key_pem: data.get(&format!("{name}.key"))?.clone(),
    })
}

/// A stable hash of named inputs, for the pod-template annotation.
pub fn config_hash<'a>(parts: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (name, value) in parts {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(value.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hash_changes_with_any_input_and_is_stable() {
        let a = config_hash([("apiserver.crt", "A"), ("args", "--x=1")]);
        assert_eq!(a, config_hash([("apiserver.crt", "A"), ("args", "--x=1")]));
        assert_ne!(a, config_hash([("apiserver.crt", "B"), ("args", "--x=1")]));
        assert_ne!(a, config_hash([("apiserver.crt", "A"), ("args", "--x=2")]));
        // Boundaries are part of the hash: moving a byte between parts changes it.
        assert_ne!(config_hash([("a", "bc")]), config_hash([("ab", "c")]));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn cert_key_pairs_read_back_by_name() {
        let data = BTreeMap::from([
            ("tls.crt".to_string(), "C".to_string()),
            ("tls.key".to_string(), "K".to_string()),
        ]);
        let pair = cert_key_pair(&data, "tls").unwrap();
        assert_eq!((pair.cert_pem.as_str(), pair.key_pem.as_str()), ("C", "K"));
        assert!(cert_key_pair(&data, "apiserver").is_none());
    }
}
