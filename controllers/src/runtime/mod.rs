//! Plumbing shared by every reconciler.

pub mod api;
pub mod apply;
pub mod conditions;
pub mod context;
pub mod error;
#[cfg(test)]
pub mod fake_api;
pub mod leader;
pub mod lenient;
pub mod paged;
pub mod probe;
pub mod status;
pub mod telemetry;
pub mod triggers;
