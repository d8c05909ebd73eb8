//! Server-side apply with kok's single field manager.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::runtime::error::{Error, Result};

pub const FIELD_MANAGER: &str = "kok";

/// Applies `obj` (which carries its own name) and returns what the API server stored.
/// Forced: kok owns these fields, so a hand edit of them is put back.
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or_else(|| Error::IncompleteObject("child without a name".into()))?;
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

/// Applies a child of the object with uid `owner_uid`, refusing to take over
/// an object of the same name that is not already its child: a user's Secret
/// or another tenant's object must never be overwritten.
pub async fn apply_child<K>(api: &Api<K>, obj: &K, owner_uid: &str) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    if let Some(existing) = api.get_opt(&name).await? {
        check_owner(&existing, owner_uid)?;
    }
    apply(api, obj).await
}

/// Ok when `obj` is controlled by `owner_uid`; else which owner it has.
pub fn check_owner<K: Resource<DynamicType = ()>>(obj: &K, owner_uid: &str) -> Result<()> {
    let refs = obj.meta().owner_references.as_deref().unwrap_or_default();
    if refs
        .iter()
        .any(|r| r.uid == owner_uid && r.controller == Some(true))
    {
        return Ok(());
    }
    let owner = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| format!("{} {} (uid {})", r.kind, r.name, r.uid))
        .unwrap_or_else(|| "nobody kok knows (no controller owner)".into());
    Err(Error::NotOwned {
        kind: K::kind(&()).into_owned(),
        name: obj.meta().name.clone().unwrap_or_default(),
        owner,
    })
}

/// Delete options that delete only the object with this uid: one made
/// again meanwhile under the same name is left alone (409 instead).
pub fn only_uid(uid: Option<String>) -> kube::api::DeleteParams {
    kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    }
}
