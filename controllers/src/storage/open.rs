//! Opening a tenant's backup destination from its spec: the destination
//! policy checked again (backups, retention and restores read the spec on
//! their own), S3 credentials and the encryption key read from their Secrets.
//! What the user can fix comes back as a `Refusal`, shown on the object.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kok_crds::{BackupEncryption, BackupSpec};
use kok_templates::secrets::string_data;
use kube::Api;

use super::encryption::ArtifactKey;
use super::{S3Credentials, Store};
use crate::runtime::context::Context;
use crate::runtime::error::Result;

/// Why a destination cannot be used (a missing Secret, a refused endpoint):
/// recorded on the EtcdBackup or EtcdRestore with this message.
pub struct Refusal(pub String);

pub async fn open_store(
    ctx: &Context,
    ns: &str,
    spec: &BackupSpec,
) -> Result<Result<Store, Refusal>> {
    // The TenantCluster reconciler stalls on an invalid spec, but backups,
    // retention and restores read the spec on their own: an endpoint the
    // policy refuses (metadata service, plain http) is never contacted.
    let invalid: Vec<String> = kok_templates::backup::validate_backup(spec, &ctx.policy)
        .into_iter()
        .chain(kok_templates::backup::storage_refusal(spec, &ctx.policy))
        .filter(|e| e.field.starts_with("spec.backup.destination"))
        .map(|e| e.to_string())
        .collect();
    if !invalid.is_empty() {
        return Ok(Err(Refusal(invalid.join("; "))));
    }
    let creds = match &spec.destination.s3 {
        Some(s3) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            let Some(secret) = secrets.get_opt(&s3.credentials_secret).await? else {
                return Ok(Err(Refusal(format!(
                    "S3 credentials Secret {} not found",
                    s3.credentials_secret
                ))));
            };
            match s3_credentials(&string_data(&secret)) {
                Some(c) => Some(c),
                None => {
                    return Ok(Err(Refusal(format!(
                        "Secret {} needs keys accessKeyID and secretAccessKey",
                        s3.credentials_secret
                    ))))
                }
            }
        }
        None => None,
    };
    let key = match &spec.encryption {
        Some(enc) => match encryption_key(ctx, ns, enc).await? {
            Ok(key) => Some(Arc::new(key)),
            Err(refusal) => return Ok(Err(refusal)),
        },
        None => None,
    };
    Ok(
        Store::open(&spec.destination, creds, &ctx.policy.private_s3)
            .map(|s| s.with_key(key))
            .map_err(|e| Refusal(e.to_string())),
    )
}

/// The key named by `spec.backup.encryption`, or why it cannot be used.
async fn encryption_key(
    ctx: &Context,
    ns: &str,
    enc: &BackupEncryption,
) -> Result<Result<ArtifactKey, Refusal>> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(secret) = secrets.get_opt(&enc.key_secret).await? else {
        return Ok(Err(Refusal(format!(
            "spec.backup.encryption.keySecret: Secret {} not found",
            enc.key_secret
        ))));
    };
    let Some(value) = secret.data.as_ref().and_then(|d| d.get(&enc.key)) else {
        return Ok(Err(Refusal(format!(
            "spec.backup.encryption.key: Secret {} has no key {:?}",
            enc.key_secret, enc.key
        ))));
    };
    Ok(ArtifactKey::from_base64(&value.0).map_err(|e| {
        Refusal(format!(
            "spec.backup.encryption: Secret {}: {e}",
            enc.key_secret
        ))
    }))
}

pub fn s3_credentials(data: &BTreeMap<String, String>) -> Option<S3Credentials> {
    Some(S3Credentials {
        access_key_id: data.get("accessKeyID")?.clone(),
        secret_access_key: data.get("secretAccessKey")?.clone(),
        session_token: data.get("sessionToken").cloned(),
    })
}
