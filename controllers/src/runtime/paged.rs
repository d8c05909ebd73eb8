//! Listing page by page: how kok reads anything a tenant can grow (its
//! Secrets, Nodes, every resource a migration copies), so one read holds one
//! page in memory, never the whole list.
//!
//! ```text
//! let mut pages = Pages::new(&api, ListParams::default().limit(250));
//! while let Some(page) = pages.next().await {
//!     for obj in page? { ... }
//! }
//! ```

use std::fmt::Debug;

use kube::api::{ListParams, ObjectList, PartialObjectMeta};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// The pages of one list, read one call at a time.
pub struct Pages<'a, K> {
    api: &'a Api<K>,
    next: Option<ListParams>,
}

impl<'a, K> Pages<'a, K>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    /// `lp` carries the page size (`limit`) and the selectors.
    pub fn new(api: &'a Api<K>, lp: ListParams) -> Self {
        Self {
            api,
            next: Some(lp),
        }
    }

    /// The next page's objects; `None` after the last page or an error.
    pub async fn next(&mut self) -> Option<kube::Result<Vec<K>>> {
        let lp = self.next.take()?;
        Some(self.api.list(&lp).await.map(|page| {
            self.next = after(lp, &page);
            page.items
        }))
    }

    /// The next page's objects, metadata only (`list_metadata`).
    pub async fn next_metadata(&mut self) -> Option<kube::Result<Vec<PartialObjectMeta<K>>>> {
        let lp = self.next.take()?;
        Some(self.api.list_metadata(&lp).await.map(|page| {
            self.next = after(lp, &page);
            page.items
        }))
    }
}

/// The parameters of the page after `page`: none once the server gave no
/// continue token (an empty one means the same).
fn after<T: Clone>(lp: ListParams, page: &ObjectList<T>) -> Option<ListParams> {
    next_params(lp, &page.metadata)
}

fn next_params(lp: ListParams, meta: &kube::api::ListMeta) -> Option<ListParams> {
    match meta.continue_.as_deref() {
        Some(token) if !token.is_empty() => Some(lp.continue_token(token)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ListMeta;

    fn meta(token: Option<&str>) -> ListMeta {
        ListMeta {
            continue_: token.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn a_continue_token_leads_to_the_next_page_and_keeps_the_selectors() {
        let lp = ListParams::default().limit(250).labels("a=b");
        let next = next_params(lp, &meta(Some("t1"))).expect("a next page");
        assert_eq!(next.continue_token.as_deref(), Some("t1"));
        assert_eq!(next.limit, Some(250));
        assert_eq!(next.label_selector.as_deref(), Some("a=b"));
    }

    #[test]
    fn no_token_or_an_empty_one_is_the_last_page() {
        assert!(next_params(ListParams::default(), &meta(None)).is_none());
        assert!(next_params(ListParams::default(), &meta(Some(""))).is_none());
    }
}
