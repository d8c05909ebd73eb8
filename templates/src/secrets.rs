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

/// Label Argo CD finds its cluster Secrets by.
pub const ARGOCD_SECRET_TYPE_LABEL: &str = "argocd.argoproj.io/secret-type";
/// Annotation naming the TenantCluster (`namespace/name/uid`) an Argo CD
/// cluster Secret belongs to: it lives in another namespace, so no owner
/// reference can say so.
pub const ARGOCD_OWNER_ANNOTATION: &str = "kok.dev/tenant-cluster";

/// The Argo CD cluster Secret of a tenant (where and under which names:
/// `crate::argocd::decide`): its endpoint, its CA and kok's admin client
/// certificate (the same the admin kubeconfig carries).
pub fn argocd_cluster_secret(
    p: &Placement,
    reg: &crate::argocd::Registration,
    project: Option<&str>,
    server_url: &str,
    ca_pem: &str,
    admin: &CertKeyPair,
) -> Secret {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let name = reg.cluster_name.clone();
    let config = serde_json::json!({
        "tlsClientConfig": {
            "caData": b64(ca_pem),
            "certData": b64(&admin.cert_pem),
            "keyData": b64(&admin.key_pem),
        }
    });
    let mut data = BTreeMap::from([
        ("name".to_string(), name.clone()),
        ("server".to_string(), server_url.to_string()),
        ("config".to_string(), config.to_string()),
    ]);
    if let Some(project) = project {
        data.insert("project".into(), project.to_string());
    }
    let mut labels = tenant_labels(&p.names.tenant);
    labels.insert(ARGOCD_SECRET_TYPE_LABEL.into(), "cluster".into());
    Secret {
        metadata: ObjectMeta {
            name: Some(reg.secret_name.clone()),
            namespace: Some(reg.namespace.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                ARGOCD_OWNER_ANNOTATION.to_string(),
                format!("{}/{}/{}", p.namespace, p.names.tenant, p.owner.uid),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
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
    fn an_argocd_cluster_secret_carries_the_endpoint_and_the_admin_certificate() {
        use base64::Engine as _;
        let p = Placement {
            names: crate::names::Names::new("demo"),
            namespace: "tenants".into(),
            owner: Default::default(),
        };
        let reg = crate::argocd::Registration {
            namespace: "argocd".into(),
            secret_name: "kok-tenants.demo".into(),
            cluster_name: "tenants-demo".into(),
        };
        let admin = CertKeyPair {
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        let s = argocd_cluster_secret(
            &p,
            &reg,
            Some("platform"),
            "https://10.0.0.1:6443",
            "CA",
            &admin,
        );
        assert_eq!(s.metadata.namespace.as_deref(), Some("argocd"));
        assert_eq!(s.metadata.name.as_deref(), Some("kok-tenants.demo"));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[ARGOCD_SECRET_TYPE_LABEL],
            "cluster"
        );
        let data = string_data(&s);
        assert_eq!(data["server"], "https://10.0.0.1:6443");
        assert_eq!(data["name"], "tenants-demo");
        assert_eq!(data["project"], "platform");
        let config: serde_json::Value = serde_json::from_str(&data["config"]).unwrap();
        let b64 = |v: &serde_json::Value| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(b64(&config["tlsClientConfig"]["certData"]), "CERT");
        assert_eq!(b64(&config["tlsClientConfig"]["keyData"]), "KEY");
        assert_eq!(b64(&config["tlsClientConfig"]["caData"]), "CA");
    }

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
