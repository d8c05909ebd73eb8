//! Status writes: server-side apply of the status subresource, one field
//! manager per writer. Each writer applies its whole view every time; what it
//! leaves out is removed, and what another writer owns (the backup schedule's
//! `status.backup` on a TenantCluster) is never touched or rolled back.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::info;

use crate::runtime::error::Result;

/// The field managers of status, one per writer.
pub mod manager {
    /// The TenantCluster reconciler: everything but `status.backup`.
    pub const TENANT: &str = "kok-tenant";
    /// The backup schedule: `status.backup` of a TenantCluster.
    pub const BACKUP_SCHEDULE: &str = "kok-backup-schedule";
    /// The EtcdBackup reconciler.
    pub const BACKUP: &str = "kok-backup";
    /// The EtcdRestore reconciler.
    pub const RESTORE: &str = "kok-restore";
    /// The JoinToken reconciler.
    pub const JOIN: &str = "kok-join";
    /// The conditions of an object that does not decode (any kind).
    pub const DECODE: &str = "kok-decode";
}

/// Applies `status` as the whole of what `manager` owns in the status of `obj`.
pub async fn apply_status<K>(
    api: &Api<K>,
    obj: &K,
    manager: &str,
    status: &impl Serialize,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    forget_update_writers(api, obj).await?;
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": obj.name_any() },
        "status": without_nulls(serde_json::to_value(status).map_err(kube::Error::SerdeError)?),
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

/// Whether `obj` is what the API stores now (the same resourceVersion). A
/// reconcile can be handed a cached object from before its own last status
/// write; acting on it would repeat a step (a repair, a member move) and
/// write back the status from before it, losing its record.
pub async fn is_current<K>(api: &Api<K>, obj: &K) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let stored = api.get_opt(&obj.name_any()).await?;
    Ok(stored.is_some_and(|s| s.meta().resource_version == obj.meta().resource_version))
}

/// Earlier kok versions merge-patched status (an `Update` entry in
/// `managedFields`). Fields such an entry co-owns outlive the apply that
/// omits them, so a cleared message would stay forever: the entry is
/// dropped once.
async fn forget_update_writers<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let entries = obj.meta().managed_fields.as_deref().unwrap_or_default();
    let stale = stale_status_writers(entries);
    if stale.is_empty() || stale.len() == entries.len() {
        // An empty list would not reset anything; leave it.
        return Ok(());
    }
    let kept: Vec<_> = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| !stale.contains(i))
        .map(|(_, e)| e.clone())
        .collect();
    // resourceVersion makes the patch conditional: a list that moved meanwhile
    // is a 409, and the next pass looks again.
    let patch = json!({"metadata": {
        "resourceVersion": obj.resource_version(),
        "managedFields": kept,
    }});
    info!(
        object = %obj.name_any(),
        "dropping the merge-patch status writer of an earlier kok"
    );
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if crate::runtime::api::is_conflict(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Indices of `managedFields` entries that wrote status by update, not apply.
fn stale_status_writers(
    entries: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry],
) -> Vec<usize> {
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            // Servers before 1.22 record no subresource: the fields tell.
            let writes_status = e.subresource.as_deref() == Some("status")
                || e.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.get("f:status").is_some());
            e.operation.as_deref() == Some("Update") && writes_status
        })
        .map(|(i, _)| i)
        .collect()
}

/// Apply treats an explicit null as a value to own; absence is what clears.
fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    fn entry(manager: &str, operation: &str, subresource: Option<&str>) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            subresource: subresource.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn only_update_writers_of_status_are_stale() {
        let entries = [
            entry("kubectl", "Apply", None),
            entry("unknown", "Update", Some("status")),
            entry("kok-tenant", "Apply", Some("status")),
            entry("kubectl-edit", "Update", None),
        ];
        assert_eq!(stale_status_writers(&entries), vec![1]);
        assert!(stale_status_writers(&entries[2..]).is_empty());
        // v1.20 records no subresource; the owned fields show the status write.
        let mut old_server = entry("unknown", "Update", None);
        old_server.fields_v1 = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
            json!({"f:metadata": {"f:finalizers": {}}, "f:status": {"f:version": {}}}),
        ));
        assert_eq!(
            stale_status_writers(&[entries[0].clone(), old_server]),
            vec![1]
        );
    }

    #[test]
    fn nulls_are_dropped_at_every_depth() {
        let v = json!({"a": null, "b": {"c": null, "d": 1}, "e": [{"f": null, "g": "x"}]});
        assert_eq!(without_nulls(v), json!({"b": {"d": 1}, "e": [{"g": "x"}]}));
    }
}
