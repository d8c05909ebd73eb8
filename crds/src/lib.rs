//! kok's API types. Only types live here; behaviour lives in `templates` and `controllers`.

pub mod backup;
pub mod tenant_cluster;

pub use backup::*;
pub use tenant_cluster::*;

/// The API group of every kok resource.
pub const GROUP: &str = "kok.dev";
