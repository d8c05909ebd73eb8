//! kok's controllers; `main.rs` wires them into the `kok-operator` binary. A
//! library so integration tests can drive the backup core against real etcd
//! processes. Grouped by kind:
//! - reconcilers, one directory per resource: `tenant` (TenantCluster:
//!   provisioning, rollouts and upgrades), `backup` (EtcdBackup and the
//!   schedule), `restore` (EtcdRestore and the restore Job's entry point),
//!   `join` (JoinToken: bootstrap tokens for worker nodes);
//! - engines: `etcd` (member access, snapshots, scratch-etcd verification),
//!   `storage` (backup destinations, encryption at rest);
//! - `runtime`: what every reconciler shares (context, errors, conditions,
//!   server-side apply, lenient watches, leader election, telemetry).

pub mod backup;
pub mod etcd;
pub mod join;
pub mod restore;
pub mod runtime;
pub mod storage;
pub mod tenant;
