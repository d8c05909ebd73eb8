//! Server-side apply with kok's single field manager.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

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
