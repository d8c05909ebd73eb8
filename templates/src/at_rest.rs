//! Secrets encrypted at rest in the tenant's etcd (and so in every backup
//! of it): the apiserver's EncryptionConfiguration, with a key kok generates
//! once per tenant and keeps like a CA.
//!
//! The key Secret outlives its TenantCluster (no owner, not among the
//! tenant's labelled children): etcd volumes and backups outlive it too, and
//! without the key their Secrets cannot be read. A TenantCluster of the same
//! name adopts it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use serde_json::json;

use crate::names::{Names, MANAGED_BY, MANAGED_BY_LABEL};

/// The file in the Secret, and in the apiserver's PKI directory.
pub const CONFIG_FILE: &str = "encryption-config.yaml";
/// Marks the key Secret and names the tenant it belongs to (its name alone
/// could be another tenant's: `a` + `-x-encryption` = `a-x` + `-encryption`).
pub const KEY_OF_LABEL: &str = "kok.dev/encryption-key-of";
/// The first key's name; a rotation adds `key2` in front of it.
pub const FIRST_KEY_NAME: &str = "key1";

/// The configuration: Secrets sealed with XSalsa20-Poly1305 (`secretbox`)
/// under `key_b64` (32 bytes, base64); `identity` last, so Secrets written
/// before encryption was on stay readable until rewritten.
pub fn encryption_config(key_b64: &str) -> String {
    let config = json!({
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{
            "resources": ["secrets"],
            "providers": [
                {"secretbox": {"keys": [{"name": FIRST_KEY_NAME, "secret": key_b64}]}},
                {"identity": {}},
            ],
        }],
    });
    // JSON is YAML: the apiserver reads either.
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

/// The key Secret for a new tenant: labelled with its tenant, owned by
/// nobody (see the module comment).
pub fn key_secret(names: &Names, namespace: &str, config: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(names.encryption_secret()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (KEY_OF_LABEL.to_string(), names.tenant.clone()),
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_string(),
            ByteString(config.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// Why a stored key Secret cannot be used for `tenant`, if it cannot.
pub fn key_secret_problem(secret: &Secret, tenant: &str) -> Option<String> {
    let of = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(KEY_OF_LABEL));
    if of.map(String::as_str) != Some(tenant) {
        return Some(format!(
            "not labelled {KEY_OF_LABEL}={tenant}: it is not this tenant's key"
        ));
    }
    let config = secret
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_FILE))
        .map(|b| String::from_utf8_lossy(&b.0).to_string());
    match config {
        Some(c) if c.contains("EncryptionConfiguration") => None,
        Some(_) => Some(format!("{CONFIG_FILE} is not an EncryptionConfiguration")),
        None => Some(format!("no {CONFIG_FILE}")),
    }
}

/// The configuration stored in a key Secret (checked by `key_secret_problem`).
pub fn stored_config(secret: &Secret) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_FILE))
        .map(|b| String::from_utf8_lossy(&b.0).to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::TENANT_LABEL;

    #[test]
    fn secrets_are_sealed_with_the_key_and_old_plain_ones_stay_readable() {
        let config: serde_json::Value =
            serde_json::from_str(&encryption_config("c2VjcmV0")).unwrap();
        assert_eq!(config["kind"], "EncryptionConfiguration");
        let providers = &config["resources"][0]["providers"];
        assert_eq!(config["resources"][0]["resources"], json!(["secrets"]));
        assert_eq!(providers[0]["secretbox"]["keys"][0]["secret"], "c2VjcmV0");
        assert_eq!(providers[1], json!({"identity": {}}), "identity last");
    }

    #[test]
    fn the_key_secret_outlives_its_tenant_and_names_it() {
        let s = key_secret(&Names::new("demo"), "tenants", &encryption_config("a2V5"));
        assert_eq!(s.metadata.name.as_deref(), Some("demo-encryption"));
        assert!(s.metadata.owner_references.is_none(), "no owner: kept");
        let labels = s.metadata.labels.clone().unwrap();
        assert!(
            !labels.contains_key(TENANT_LABEL),
            "not among the children a deletion removes"
        );
        assert_eq!(key_secret_problem(&s, "demo"), None);
        assert!(key_secret_problem(&s, "other").is_some());
        let mut empty = s.clone();
        empty.data = None;
        assert!(key_secret_problem(&empty, "demo")
            .unwrap()
            .contains(CONFIG_FILE));
        assert!(stored_config(&s).contains("a2V5"));
    }
}
