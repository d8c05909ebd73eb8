//! The API's answers kok treats alike everywhere: an object already gone
//! (404), one made already or changed since it was read (409).

use std::fmt::Debug;

use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// 404: the object is not there.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// 409: the object exists already, or changed since it was read.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// A removal that finds its object gone already is done.
pub fn gone_is_done<T>(r: kube::Result<T>) -> kube::Result<()> {
    match r {
        Err(e) if !is_not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

/// A removal bound to one incarnation (a uid precondition) that finds the
/// object gone, or replaced by a newer one (409), is done: nothing of what
/// it meant to remove is left.
pub fn gone_or_replaced_is_done<T>(r: kube::Result<T>) -> kube::Result<()> {
    match r {
        Err(e) if !is_not_found(&e) && !is_conflict(&e) => Err(e),
        _ => Ok(()),
    }
}

/// A create that finds its object made already (by an earlier pass, or a
/// replica before a restart) is done.
pub fn existing_is_done<T>(r: kube::Result<T>) -> kube::Result<()> {
    match r {
        Err(e) if !is_conflict(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Creates `obj`, or reads the object that exists under its name.
pub async fn create_or_get<K>(api: &Api<K>, obj: &K) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Err(e) if is_conflict(&e) => api.get(&obj.name_any()).await,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("test", "Test")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn each_helper_forgives_only_its_answer() {
        assert!(gone_is_done::<()>(Err(api_error(404))).is_ok());
        assert!(gone_is_done::<()>(Err(api_error(409))).is_err());
        assert!(gone_or_replaced_is_done::<()>(Err(api_error(409))).is_ok());
        assert!(gone_or_replaced_is_done::<()>(Err(api_error(500))).is_err());
        assert!(existing_is_done::<()>(Err(api_error(409))).is_ok());
        assert!(existing_is_done::<()>(Err(api_error(404))).is_err());
        assert!(existing_is_done(Ok(1)).is_ok());
    }
}
