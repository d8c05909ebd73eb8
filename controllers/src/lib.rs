//! kok's controllers, one module per lifecycle concern; `main.rs` wires them
//! into the `kok-operator` binary. A library so integration tests can drive the
//! backup core against real etcd processes.

pub mod apply;
pub mod backup;
pub mod backup_schedule;
pub mod conditions;
pub mod context;
pub mod destination;
pub mod encryption;
pub mod error;
pub mod etcd;
pub mod leader;
pub mod lenient;
pub mod restore;
pub mod restore_member;
pub mod snapshot;
pub mod telemetry;
pub mod tenant;
pub mod tenant_health;
pub mod triggers;
pub mod verify;
