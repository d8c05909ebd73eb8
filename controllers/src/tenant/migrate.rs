//! Upgrade by data migration (`spec.upgrade.strategy: Migrate`), one phase
//! per pass, each recorded in `status.migration` before it acts (the pure
//! rules are in `kok_templates::migration`):
//!
//! 1. `Preflight`: the tenant is healthy; no object is of an API the target
//!    stops serving; every object is written back unchanged through the
//!    source apiserver, so each is stored in its current storage version.
//! 2. `CreatingTarget`: the target generation's member Services, claims and
//!    certificates (same CAs and service-account key: tokens and
//!    kubeconfigs stay valid).
//! 3. `Frozen`: the source apiservers (and controllers) are scaled to 0; no
//!    write is accepted from then on. Stopping them, rather than rejecting
//!    writes, needs nothing from the apiserver (no webhook, no etcd
//!    read-only mode) and leaves nothing running that could write.
//! 4. `Copying`: an EtcdBackup of the source (after the freeze), restored
//!    into each target member with the revision bumped and compacted.
//! 5. `Verifying`: the target etcd starts; key count and content hash per
//!    key prefix must equal the source's at the snapshot's revision.
//! 6. `CuttingOver`: the source etcd is scaled to 0, the control plane is
//!    rendered on the target, every served resource must list, and the first
//!    write the target accepts is the point of no return.
//!
//! Before that point, a spec that no longer asks for the target (reverted)
//! rolls back: what the migration created is deleted and the untouched
//! source is started again. A failed snapshot, restore or verification rolls
//! back the same way, and the migration is not retried until the spec
//! changes. After it, the source etcd is kept stopped with its claims until
//! the user deletes them.

use super::workloads::image_tag;
use super::{health, pki, services, upgrade, workloads};
use kok_templates::validate::ValidSpec;
use kube::ResourceExt;
use std::time::Duration;

use crate::runtime::paged::Pages;
use crate::storage::serve::backups_access;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kok_crds::{BackupPhase, MigrationPhase, MigrationShape, MigrationStatus, UpgradeStrategy};
use kok_templates::backup::artifact_key;
use kok_templates::kstatus::Summary;
use kok_templates::membership::{self, Mover};
use kok_templates::migration::{self as mig, Decision};
use kok_templates::names::{component_selector, APISERVER, TENANT_LABEL};
use kok_templates::restore::{
    member_restore_job, member_restore_job_name, restore_label_value, MemberRestore, RESTORE_LABEL,
};
use kok_templates::upgrade_plan::Rendering;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::{verbs, Discovery, Scope};
use serde_json::json;

use super::kubeconfigs::Kubeconfigs;
use super::pki::TenantPki;
use crate::runtime::apply::apply_child;
use crate::runtime::apply::check_owner;
use crate::runtime::conditions;
use crate::runtime::context::Context;
use crate::runtime::error::Error;
use crate::runtime::error::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Service;
use kok_crds::condition;
use kok_crds::TenantCluster;
use kok_crds::TenantClusterStatus;
use kok_templates::controlplane::Placement;
use kok_templates::controlplane::Resolved;
use kok_templates::controlplane::{self as cp};
use kube::api::DeleteParams;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::Api;
use tracing::info;
use tracing::warn;

/// How soon a migration looks again.
const STEP_POLL: Duration = Duration::from_secs(2);
/// Marks claims a migration created, with the migration's id: only those are
/// deleted by a rollback.
const CREATED_BY: &str = "kok.dev/created-by-migration";
/// Whether this migration attempt (`id`) created the claim.
fn created_by(claim: &PersistentVolumeClaim, id: &str) -> bool {
    claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CREATED_BY))
        .is_some_and(|v| v == id)
}

/// Objects per list call in the cut over's check (metadata only).
const LIST_PAGE: u32 = 250;
/// Objects per list call in the preflight's rewrite: whole objects, up to
/// 1.5 MiB each, so a page stays within a few tens of MiB.
const REWRITE_PAGE: u32 = 20;

/// What the migration made of this pass.
pub(super) enum Outcome {
    /// No migration: the normal pass goes on.
    None,
    /// A migration ran this pass; requeue with this.
    Drove(Action),
    /// A migration to what the spec asks for failed and was rolled back:
    /// the normal pass serves the source, and the tenant is Stalled with this.
    Refused(String),
}

/// What one phase did this pass.
enum Step {
    /// Still at it; the message says what it waits for.
    Stay(String),
    /// Done: on to the next phase.
    Next(String),
    /// Something failed that retrying cannot fix: give the source back.
    Abort(String),
}

/// The pieces of this pass the migration needs.
pub(super) struct Pass<'a> {
    pub p: &'a Placement,
    pub valid: &'a ValidSpec,
    pub pki: &'a TenantPki,
    pub kubeconfigs: &'a Kubeconfigs,
    pub apiserver_ip: &'a str,
}

/// What runs now, when it is known.
fn running_shape(status: &TenantClusterStatus) -> Option<MigrationShape> {
    Some(MigrationShape {
        version: status.version.clone()?,
        etcd_version: status.etcd_version.clone()?,
        etcd_replicas: status.etcd_replicas?,
        etcd_generation: status.etcd_generation.unwrap_or(0),
    })
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Whether another operation holds the etcd members, so no migration
/// starts: a live scaling (the copy would be of a member count in between;
/// the scaling is reported as blocked), a replacement or a lost quorum (the
/// copy would be of a cluster missing a member).
fn members_busy(status: &TenantClusterStatus) -> bool {
    let record = membership::on_record(Some(status), false, false);
    membership::may_start(Mover::Migration, &record).is_err()
}

/// Drives a migration when one is on record or the spec asks for one.
/// `None`: no migration; the normal pass goes on.
pub(super) async fn pass(
    ctx: &Context,
    tc: &TenantCluster,
    x: &Pass<'_>,
    status: &mut TenantClusterStatus,
) -> Result<Outcome> {
    let Some(running) = running_shape(status) else {
        return Ok(Outcome::None);
    };
    // A phase runs only on the status its previous step wrote: every pass
    // starts by checking that (`apply_tenant`, `status::is_current`), so a
    // Verifying after a finished rollback cannot recreate the target.
    let desired = MigrationShape {
        version: x.valid.version.to_string(),
        etcd_version: image_tag(&cp::etcd_image(&tc.spec, x.valid)),
        etcd_replicas: tc.spec.etcd.replicas,
        etcd_generation: running.etcd_generation,
    };
    let generation = tc.metadata.generation;
    let mut m = match status.migration.clone() {
        Some(m) => match mig::decide(&m, &desired, generation) {
            Decision::Continue => m,
            Decision::RollBack => {
                let mut m = m;
                let note = format!(
                    "the spec no longer asks for {}: rolling back to the source",
                    mig::describe(&m.target)
                );
                mig::enter(&mut m, MigrationPhase::RollingBack, note.clone(), now());
                ctx.publish(
                    tc,
                    EventType::Normal,
                    "MigrationRollingBack",
                    "Migrate",
                    &note,
                )
                .await;
                status.migration = Some(m);
                set_conditions(status, generation);
                return Ok(Outcome::Drove(Action::requeue(Duration::from_secs(1))));
            }
            Decision::Refused(why) => {
                // The source serves again: it is reconciled, not upgraded.
                return Ok(Outcome::Refused(format!(
                    "the migration to {} was rolled back: {why}; change the spec to try again",
                    mig::describe(&m.target)
                )));
            }
            Decision::Done => {
                if !(tc.spec.upgrade.strategy == UpgradeStrategy::Migrate
                    && mig::due(&running, &desired))
                    || members_busy(status)
                {
                    return Ok(Outcome::None);
                }
                open(ctx, tc, &running, &desired, status).await?;
                return Ok(Outcome::Drove(Action::requeue(Duration::from_secs(1))));
            }
        },
        None => {
            if !(tc.spec.upgrade.strategy == UpgradeStrategy::Migrate
                && mig::due(&running, &desired))
                || members_busy(status)
            {
                return Ok(Outcome::None);
            }
            open(ctx, tc, &running, &desired, status).await?;
            return Ok(Outcome::Drove(Action::requeue(Duration::from_secs(1))));
        }
    };

    let step = match m.phase {
        MigrationPhase::Preflight => preflight(x, &mut m, status).await?,
        MigrationPhase::CreatingTarget => create_target(ctx, tc, x, &m).await?,
        MigrationPhase::Frozen => freeze(ctx, x, &mut m).await?,
        MigrationPhase::Copying => copy(ctx, tc, x, &mut m).await?,
        MigrationPhase::Verifying => verify(ctx, tc, x, &mut m).await?,
        MigrationPhase::CuttingOver => cut_over(ctx, tc, x, &mut m).await?,
        MigrationPhase::RollingBack => roll_back(ctx, tc, x, &m).await?,
        MigrationPhase::Completed | MigrationPhase::RolledBack => return Ok(Outcome::None),
    };
    let from = m.phase;
    match step {
        Step::Stay(message) => m.message = Some(message),
        Step::Next(message) => {
            let next = mig::next_phase(m.phase);
            mig::enter(&mut m, next, message.clone(), now());
            let note = format!("migration {from} -> {next}: {message}");
            info!("{note}");
            ctx.publish(tc, EventType::Normal, "Migration", "Migrate", &note)
                .await;
        }
        Step::Abort(why) => {
            let note = format!("migration failed in {from}: {why}; rolling back to the source");
            warn!("{note}");
            mig::enter(&mut m, MigrationPhase::RollingBack, why, now());
            // The spec still asks for this target: do not start over.
            m.spec_generation = generation;
            ctx.publish(tc, EventType::Warning, "MigrationFailed", "Migrate", &note)
                .await;
        }
    }
    if m.phase == MigrationPhase::Completed && from != MigrationPhase::Completed {
        // The target serves: it is what runs from now on.
        status.etcd_generation = Some(m.target.etcd_generation);
        status.etcd_replicas = Some(m.target.etcd_replicas);
        status.etcd_version = Some(m.target.etcd_version.clone());
        status.version = Some(m.target.version.clone());
        status.etcd_cluster_version = None;
        status.etcd_drained_member = None;
    }
    let finished = mig::finished(m.phase);
    status.migration = Some(m);
    set_conditions(status, generation);
    if finished {
        // The normal pass takes over from the next one.
        return Ok(Outcome::Drove(Action::requeue(Duration::from_secs(1))));
    }
    Ok(Outcome::Drove(Action::requeue(STEP_POLL)))
}

async fn open(
    ctx: &Context,
    tc: &TenantCluster,
    running: &MigrationShape,
    desired: &MigrationShape,
    status: &mut TenantClusterStatus,
) -> Result<()> {
    if let Some((field, why)) = mig::target_problem(desired) {
        return Err(Error::Upgrade(format!("{field}: {why}")));
    }
    if let Some(why) = mig::skew_problem(running, desired) {
        return Err(Error::Upgrade(format!("spec.version: {why}")));
    }
    let m = mig::open(running, desired, tc.metadata.generation, now());
    let note = m.message.clone().unwrap_or_default();
    info!("{note}");
    ctx.publish(tc, EventType::Normal, "MigrationStarted", "Migrate", &note)
        .await;
    status.migration = Some(m);
    set_conditions(status, tc.metadata.generation);
    Ok(())
}

/// kstatus while a migration runs: Reconciling, not Ready (the tenant is
/// down for writes from the freeze to the cut over).
fn set_conditions(status: &mut TenantClusterStatus, generation: Option<i64>) {
    let Some(m) = &status.migration else { return };
    if mig::finished(m.phase) {
        return;
    }
    let message = format!(
        "migrating to {}: {}: {}",
        mig::describe(&m.target),
        m.phase,
        m.message.clone().unwrap_or_default()
    );
    let migrating = Summary::working("Migrating", message);
    let fine = Some(("Migrating", ""));
    conditions::summarize(&mut status.conditions, &migrating, fine, generation);
}

fn source_placement(x: &Pass<'_>, m: &MigrationStatus) -> Placement {
    Placement {
        names: x.p.names.at_etcd_generation(m.source.etcd_generation),
        ..x.p.clone()
    }
}

fn target_placement(x: &Pass<'_>, m: &MigrationStatus) -> Placement {
    Placement {
        names: x.p.names.at_etcd_generation(m.target.etcd_generation),
        ..x.p.clone()
    }
}

/// The spec and validated view the target renders with.
fn target_spec(
    tc: &TenantCluster,
    x: &Pass<'_>,
    m: &MigrationStatus,
) -> (kok_crds::TenantClusterSpec, ValidSpec) {
    let mut spec = tc.spec.clone();
    if spec.etcd.image.is_none() {
        spec.etcd.version = Some(m.target.etcd_version.clone());
    }
    let valid = ValidSpec {
        etcd_replicas: m.target.etcd_replicas,
        ..x.valid.clone()
    };
    (spec, valid)
}

/// The addresses and hashes the target's workloads are built on.
async fn target_resolved(
    ctx: &Context,
    tc: &TenantCluster,
    x: &Pass<'_>,
    m: &MigrationStatus,
) -> Result<Resolved> {
    let tp = target_placement(x, m);
    let net = services::ensure(ctx, tc, &tp, &tp.owner.uid).await?;
    Ok(Resolved {
        etcd_member_ips: net.etcd_member_ips,
        apiserver_ip: x.apiserver_ip.to_string(),
        etcd_cluster_token: tc.uid().unwrap_or_default(),
        hashes: pki::config_hashes(
            x.pki,
            &tp.names,
            &x.kubeconfigs.controller_manager,
            &x.kubeconfigs.scheduler,
        ),
        etcd_drained_member: None,
    })
}

// ---- 1. preflight -----------------------------------------------------------

async fn preflight(
    x: &Pass<'_>,
    m: &mut MigrationStatus,
    status: &TenantClusterStatus,
) -> Result<Step> {
    // Healthy on what it runs: every component rolled out and available
    // (Ready itself says Migrating now), and the tenant API ready.
    let components = [
        condition::ETCD,
        condition::APISERVER,
        condition::CONTROLLER_MANAGER,
        condition::SCHEDULER,
    ];
    if let Some(down) = components
        .iter()
        .find(|c| !conditions::is_true(&status.conditions, c))
    {
        return Ok(Step::Stay(format!(
            "the tenant must be healthy on what it runs before a migration starts: {down} is not True"
        )));
    }
    let Some(kc) = x
        .kubeconfigs
        .admin
        .as_ref()
        .map(|_| &x.kubeconfigs.operator)
    else {
        return Ok(Step::Stay("no admin kubeconfig yet".into()));
    };
    if let Err(why) = health::readyz(kc).await {
        return Ok(Step::Stay(format!(
            "the tenant must be healthy on what it runs before a migration starts: {why}"
        )));
    }
    let client = match health::tenant_client(kc, Duration::from_secs(30)).await {
        Ok(c) => c,
        Err(e) => return Ok(Step::Stay(e)),
    };
    let discovery = match Discovery::new(client.clone()).run().await {
        Ok(d) => d,
        Err(e) => return Ok(Step::Stay(format!("tenant API discovery: {e}"))),
    };
    // Objects the target could not serve: every version of theirs is gone.
    let target: kok_templates::version::KubeVersion = m
        .target
        .version
        .parse()
        .map_err(|e| Error::Upgrade(format!("spec.version: {e}")))?;
    let mut served = Vec::new();
    for group in discovery.groups() {
        for version in group.versions() {
            for (ar, caps) in group.versioned_resources(version) {
                if !caps.supports_operation(verbs::LIST) || ar.plural.contains('/') {
                    continue;
                }
                if mig::removed_at(&ar.api_version, &ar.plural, target).is_none() {
                    served.push((ar.api_version.clone(), ar.plural.clone(), 0));
                    continue;
                }
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
                let n = match api.list_metadata(&ListParams::default().limit(1)).await {
                    Ok(l) => l.items.len() as u64,
                    // Unknown is not none: the check waits.
                    Err(e) => {
                        return Ok(Step::Stay(format!(
                            "listing {} {}: {e}",
                            ar.api_version, ar.plural
                        )))
                    }
                };
                served.push((ar.api_version.clone(), ar.plural.clone(), n));
            }
        }
    }
    m.removed_apis = mig::unservable(&served, target);
    if !m.removed_apis.is_empty() {
        return Ok(Step::Stay(format!(
            "objects the target version no longer serves must be migrated first: {}",
            m.removed_apis.join("; ")
        )));
    }
    if m.objects_rewritten.is_none() {
        match rewrite_all(&client, &discovery).await {
            Ok(n) => m.objects_rewritten = Some(n),
            Err(why) => return Ok(Step::Stay(format!("rewriting every object: {why}"))),
        }
    }
    Ok(Step::Next(format!(
        "tenant healthy; {} objects rewritten in their storage version; no object of a removed API",
        m.objects_rewritten.unwrap_or(0)
    )))
}

/// Writes every object of every updatable resource back unchanged (the
/// preferred version of each group), so etcd holds each in the storage
/// version the running apiserver writes. Events are skipped: they expire.
async fn rewrite_all(
    client: &kube::Client,
    discovery: &Discovery,
) -> std::result::Result<u64, String> {
    let mut rewritten = 0;
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            let can = |v| caps.supports_operation(v);
            if !(can(verbs::LIST) && can(verbs::UPDATE)) || ar.plural == "events" {
                continue;
            }
            let all: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let mut pages = Pages::new(&all, ListParams::default().limit(REWRITE_PAGE));
            while let Some(page) = pages.next().await {
                for obj in &page.map_err(|e| format!("{}: {e}", ar.plural))? {
                    let name = obj.metadata.name.clone().unwrap_or_default();
                    let api: Api<DynamicObject> = match (&caps.scope, &obj.metadata.namespace) {
                        (Scope::Namespaced, Some(ns)) => {
                            Api::namespaced_with(client.clone(), ns, &ar)
                        }
                        _ => Api::all_with(client.clone(), &ar),
                    };
                    match api.replace(&name, &PostParams::default(), obj).await {
                        Ok(_) => rewritten += 1,
                        // Changed (or deleted) meanwhile: its writer stored it anew.
                        Err(e)
                            if crate::runtime::api::is_conflict(&e)
                                || crate::runtime::api::is_not_found(&e) =>
                        {
                            rewritten += 1
                        }
                        Err(e) => return Err(format!("{} {name}: {e}", ar.plural)),
                    }
                }
            }
        }
    }
    Ok(rewritten)
}

// ---- 2. the target's Services, claims, certificates -------------------------

async fn create_target(
    ctx: &Context,
    tc: &TenantCluster,
    x: &Pass<'_>,
    m: &MigrationStatus,
) -> Result<Step> {
    let tp = target_placement(x, m);
    // The target's leaves were issued in this pass (the phase is on record).
    let server = tp.names.etcd_leaf("etcd-server");
    if !x.pki.leaves.contains_key(&server) {
        return Ok(Step::Stay(format!("waiting for the {server} certificate")));
    }
    let resolved = target_resolved(ctx, tc, x, m).await?;
    let (spec, valid) = target_spec(tc, x, m);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &x.p.namespace);
    let id = migration_id(tc, m);
    for i in 0..m.target.etcd_replicas {
        let Some(mut claim) = cp::etcd_member_claim(&tp, &spec, &valid, &resolved, i) else {
            return Err(Error::Upgrade(
                "the target etcd has no volume claim template".into(),
            ));
        };
        let name = claim.metadata.name.clone().unwrap_or_default();
        let existing = match claims.get_opt(&name).await? {
            Some(existing) => Some(existing),
            None => {
                claim
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(CREATED_BY.into(), id.clone());
                match claims.create(&PostParams::default(), &claim).await {
                    Ok(_) => None,
                    // Someone made it meanwhile: it is checked like any other.
                    Err(e) if crate::runtime::api::is_conflict(&e) => claims.get_opt(&name).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        match existing {
            None => {}
            Some(existing) if existing.metadata.deletion_timestamp.is_some() => {
                // A claim of an earlier attempt on its way out: the restore
                // would wait on it forever.
                return Ok(Step::Stay(format!(
                    "waiting for PersistentVolumeClaim {name} (being deleted) to be gone"
                )));
            }
            Some(existing) => {
                let ours = created_by(&existing, &id);
                if !ours {
                    return Ok(Step::Abort(format!(
                        "PersistentVolumeClaim {name} already exists and this migration did not create it; \
                         kok does not restore over data it did not create: delete or rename it"
                    )));
                }
            }
        }
    }
    Ok(Step::Next(format!(
        "{} member Services, claims and certificates of {} ready; stopping the source apiservers",
        m.target.etcd_replicas,
        tp.names.etcd()
    )))
}

/// Which attempt this is: a migration rolled back and opened again targets
/// the same generation, and must never pick up the earlier attempt's
/// snapshot (taken before writes the source accepted since) or claims.
fn attempt(m: &MigrationStatus) -> i64 {
    m.start_time.as_ref().map(|t| t.0.as_second()).unwrap_or(0)
}

/// Unique per migration attempt of this tenant incarnation.
fn migration_id(tc: &TenantCluster, m: &MigrationStatus) -> String {
    format!(
        "{}-g{}-{}",
        tc.uid().unwrap_or_default(),
        m.target.etcd_generation,
        attempt(m)
    )
}

/// The snapshot's EtcdBackup and the restore Jobs' prefix, per attempt.
fn migration_name(tc: &TenantCluster, m: &MigrationStatus) -> String {
    format!(
        "{}-migrate-g{}-{}",
        tc.name_any(),
        m.target.etcd_generation,
        attempt(m)
    )
}

// ---- 3. freeze ---------------------------------------------------------------

async fn scale(ctx: &Context, ns: &str, names: &[String], replicas: i32) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    for name in names {
        crate::runtime::api::gone_is_done(
            deployments
                .patch(name, &PatchParams::default(), &patch)
                .await,
        )?;
    }
    Ok(())
}

async fn freeze(ctx: &Context, x: &Pass<'_>, m: &mut MigrationStatus) -> Result<Step> {
    m.freeze_time.get_or_insert_with(now);
    let names = &x.p.names;
    scale(
        ctx,
        &x.p.namespace,
        &[
            names.apiserver(),
            names.controller_manager(),
            names.scheduler(),
        ],
        0,
    )
    .await?;
    // No new request reaches them now; the shutdown delay that lets load
    // balancers catch up while clients keep writing is of no use in a
    // freeze, and it is downtime. A write cut short here failed for its
    // client or committed before the snapshot, which is taken once they are gone.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &x.p.namespace);
    let selector = component_selector(&names.tenant, APISERVER);
    let listed = pods
        .list_metadata(&ListParams::default().labels(&selector))
        .await?
        .items;
    // Pods just asked to stop are still there: the next pass lists again.
    let left = listed.len();
    for pod in listed {
        let name = pod.metadata.name.unwrap_or_default();
        crate::runtime::api::gone_is_done(
            pods.delete(&name, &DeleteParams::default().grace_period(2))
                .await,
        )?;
    }
    if left > 0 {
        return Ok(Step::Stay(format!(
            "writes frozen: waiting for {left} source apiserver pods to stop"
        )));
    }
    Ok(Step::Next("no apiserver runs: taking the snapshot".into()))
}

// ---- 4. copy -----------------------------------------------------------------

async fn copy(
    ctx: &Context,
    tc: &TenantCluster,
    x: &Pass<'_>,
    m: &mut MigrationStatus,
) -> Result<Step> {
    let ns = &x.p.namespace;
    let name = migration_name(tc, m);
    let backup = upgrade::ensure_backup(ctx, tc, &name, "kok.dev/migration").await?;
    m.snapshot = Some(name.clone());
    let bs = backup.status.clone().unwrap_or_default();
    match bs.phase {
        Some(BackupPhase::Succeeded) => {}
        Some(BackupPhase::Failed) => {
            return Ok(Step::Abort(format!(
                "the snapshot, EtcdBackup {name}, failed: {}",
                bs.message.unwrap_or_default()
            )))
        }
        _ => {
            return Ok(Step::Stay(format!(
                "taking the snapshot (EtcdBackup {name})"
            )))
        }
    }
    m.snapshot_revision = bs.revision;
    m.bytes_copied = bs.size_bytes;
    m.revision_bump = Some(mig::REVISION_BUMP);
    let (Some(backup_spec), Some(sha256), Some(image)) = (
        tc.spec.backup.as_ref(),
        bs.sha256.clone(),
        ctx.operator_image.as_deref(),
    ) else {
        return Ok(Step::Abort(
            "the snapshot has no checksum, spec.backup is gone, or the operator does not know its image (KOK_IMAGE)".into(),
        ));
    };
    let tp = target_placement(x, m);
    let key = artifact_key(ns, &tc.name_any(), &name);
    let id = migration_id(tc, m);
    // How Jobs reach the artifact: worked out once, only for a Job to make.
    let mut backups = None;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let mut done = 0;
    for member in 0..m.target.etcd_replicas {
        let job_name = member_restore_job_name(&name, member);
        let current = match jobs.get_opt(&job_name).await? {
            Some(j) => {
                check_owner(&j, &x.p.owner.uid)?;
                j
            }
            None => {
                let access = match backups.clone() {
                    Some(a) => a,
                    None => match backups_access(
                        ctx,
                        &backup_spec.destination,
                        &key,
                        bs.node.as_deref(),
                    )
                    .await?
                    {
                        Ok(a) => {
                            backups = Some(a.clone());
                            a
                        }
                        Err(why) => return Ok(Step::Abort(why)),
                    },
                };
                let job = member_restore_job(&MemberRestore {
                    names: &tp.names,
                    namespace: ns,
                    restore_name: &name,
                    owner: x.p.owner.clone(),
                    restore_id: &id,
                    member,
                    replicas: m.target.etcd_replicas,
                    image,
                    destination: &backup_spec.destination,
                    encryption: backup_spec.encryption.as_ref(),
                    private_s3: &ctx.policy.private_s3,
                    backups: access,
                    artifact_key: &key,
                    sha256: &sha256,
                    etcd_sha256: bs.etcd_sha256.as_deref(),
                    cluster_token: &id,
                    bump_revision: Some(mig::REVISION_BUMP),
                });
                let job = match job {
                    Ok(job) => job,
                    Err(e) => return Ok(Step::Abort(format!("building the restore Job: {e}"))),
                };
                crate::runtime::api::create_or_get(&jobs, &job).await?
            }
        };
        let js = current.status.unwrap_or_default();
        if js
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" && c.status == "True")
        {
            return Ok(Step::Abort(format!(
                "restoring target member {member} failed (kubectl -n {ns} logs job/{job_name})"
            )));
        }
        if js.succeeded.unwrap_or(0) > 0 {
            done += 1;
        }
    }
    let total = m.target.etcd_replicas;
    if done < total {
        return Ok(Step::Stay(format!(
            "snapshot at revision {} ({} bytes) taken; {done}/{total} target members restored",
            m.snapshot_revision.unwrap_or(0),
            m.bytes_copied.unwrap_or(0)
        )));
    }
    Ok(Step::Next(format!(
        "{total}/{total} target members restored from revision {} (raised by {})",
        m.snapshot_revision.unwrap_or(0),
        mig::REVISION_BUMP
    )))
}

// ---- 5. verify ---------------------------------------------------------------

async fn verify(
    ctx: &Context,
    tc: &TenantCluster,
    x: &Pass<'_>,
    m: &mut MigrationStatus,
) -> Result<Step> {
    let tp = target_placement(x, m);
    let (spec, valid) = target_spec(tc, x, m);
    let resolved = target_resolved(ctx, tc, x, m).await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &x.p.namespace);
    // The target's members start on restored data: how a member without
    // data would start is moot until it has served (then the main pass
    // switches it to `existing`).
    let forming = cp::Bootstrap::Forming {
        members: valid.etcd_replicas,
    };
    super::heal::ensure_bootstrap_config(ctx, &tp, forming).await?;
    let sts = apply_child(
        &statefulsets,
        &cp::etcd_statefulset(&tp, &spec, &valid, &resolved),
        &x.p.owner.uid,
    )
    .await?;
    let ready = sts
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    if ready < m.target.etcd_replicas {
        return Ok(Step::Stay(format!(
            "starting the target etcd: {ready}/{} members ready",
            m.target.etcd_replicas
        )));
    }
    let Some(revision) = m.snapshot_revision else {
        return Ok(Step::Abort(
            "the snapshot's revision was not recorded".into(),
        ));
    };
    // Errors here are waited out at the migration's pace (writes are
    // frozen), not with the reconciler's growing backoff.
    let source_names = x.p.names.at_etcd_generation(m.source.etcd_generation);
    let source = crate::etcd::EtcdAccess::for_generation(
        &ctx.client,
        tc,
        &source_names,
        m.source.etcd_replicas,
    )
    .await;
    let target =
        crate::etcd::EtcdAccess::for_generation(&ctx.client, tc, &tp.names, m.target.etcd_replicas)
            .await;
    let (source, target) = match (source, target) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => return Ok(Step::Stay(format!("reaching etcd: {e}"))),
    };
    let (mut s, mut t) = match (source.connect().await, target.connect().await) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => return Ok(Step::Stay(format!("connecting to etcd: {e}"))),
    };
    let digest = crate::etcd::snapshot::digest_keyspace;
    let (source_digest, source_leased, _) = match digest(&mut s, revision).await {
        Ok(d) => d,
        Err(e) => {
            return Ok(Step::Stay(format!(
                "reading the source at revision {revision}: {e}"
            )))
        }
    };
    let (target_digest, target_leased, target_revision) = match digest(&mut t, 0).await {
        Ok(d) => d,
        Err(e) => return Ok(Step::Stay(format!("reading the target: {e}"))),
    };
    let bump = m.revision_bump.unwrap_or(0) as i64;
    if target_revision < revision + bump {
        return Ok(Step::Abort(format!(
            "the target's revision {target_revision} is below the snapshot's {revision} raised by {bump}"
        )));
    }
    match mig::compare(&source_digest, &target_digest) {
        Ok((keys, prefixes)) => {
            m.keys_verified = Some(keys);
            m.prefixes_verified = Some(prefixes);
            Ok(Step::Next(format!(
                "{keys} keys in {prefixes} prefixes identical (leased keys left out: {source_leased} source, {target_leased} target); target at revision {target_revision}"
            )))
        }
        Err(problems) => Ok(Step::Abort(format!(
            "the target differs from the source: {}",
            problems.into_iter().take(10).collect::<Vec<_>>().join("; ")
        ))),
    }
}

// ---- 6. cut over -------------------------------------------------------------

async fn cut_over(
    ctx: &Context,
    tc: &TenantCluster,
    x: &Pass<'_>,
    m: &mut MigrationStatus,
) -> Result<Step> {
    let ns = &x.p.namespace;
    let sp = source_placement(x, m);
    // The point of no return is on record before anything can write to the
    // target: once its apiservers run, controllers and clients write there,
    // and a rollback would lose that.
    if m.cut_over_time.is_none() {
        m.cut_over_time = Some(now());
        return Ok(Step::Stay(
            "point of no return recorded: starting the control plane on the target".into(),
        ));
    }
    // The source etcd stops: nothing may reach it any more.
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    match statefulsets
        .patch(
            &sp.names.etcd(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
    {
        Ok(_) => {}
        Err(e) if crate::runtime::api::is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    // The control plane on the target, as the normal pass will render it.
    let tp = target_placement(x, m);
    let (_, valid) = target_spec(tc, x, m);
    let resolved = target_resolved(ctx, tc, x, m).await?;
    let target_version = valid.version;
    let rendering = Rendering {
        etcd_tag: m.target.etcd_version.clone(),
        apiserver: target_version,
        controllers: target_version,
        target_etcd_tag: m.target.etcd_version.clone(),
        steps_left: 0,
        phase: None,
        step: None,
    };
    // Seen as the normal pass will see it once the target is recorded as
    // what runs (the etcd roll looks at the target's members).
    let mut tc_target = tc.clone();
    if let Some(s) = tc_target.status.as_mut() {
        s.etcd_drained_member = None;
        s.etcd_generation = Some(m.target.etcd_generation);
        s.etcd_replicas = Some(m.target.etcd_replicas);
    }
    let live = workloads::apply(ctx, &tc_target, &tp, &valid, &resolved, &rendering).await?;
    if live.apiserver_available() == 0 {
        return Ok(Step::Stay("starting the apiservers on the target".into()));
    }
    let Some(kc) = x
        .kubeconfigs
        .admin
        .as_ref()
        .map(|_| &x.kubeconfigs.operator)
    else {
        return Ok(Step::Stay("no admin kubeconfig yet".into()));
    };
    if let Err(why) = health::readyz(kc).await {
        return Ok(Step::Stay(format!(
            "the target apiserver is not ready: {why}"
        )));
    }
    let client = match health::tenant_client(kc, Duration::from_secs(30)).await {
        Ok(c) => c,
        Err(e) => return Ok(Step::Stay(e)),
    };
    // Every served resource lists from the target.
    let listed = match list_every_resource(&client).await {
        Ok(n) => n,
        Err(why) => {
            return Ok(Step::Stay(format!(
                "listing every resource on the target: {why}"
            )))
        }
    };
    // The point of no return: the first write the target accepts.
    if m.first_write_time.is_none() {
        let cms: Api<ConfigMap> = Api::namespaced(client, "kube-system");
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "kok-migration"},
            "data": {
                "from": mig::describe(&m.source),
                "to": mig::describe(&m.target),
            }
        }))
        .map_err(|e| Error::Upgrade(e.to_string()))?;
        let pp = PatchParams::apply("kok-migration").force();
        if let Err(e) = cms.patch("kok-migration", &pp, &Patch::Apply(&cm)).await {
            return Ok(Step::Stay(format!(
                "the first write on the target failed: {e}"
            )));
        }
        let written = now();
        if let Some(freeze) = &m.freeze_time {
            m.downtime_seconds = Some(mig::downtime_seconds(freeze, &written));
        }
        m.first_write_time = Some(written);
    }
    m.kept = std::iter::once(format!("StatefulSet {} (scaled to 0)", sp.names.etcd()))
        .chain(
            (0..m.source.etcd_replicas)
                .map(|i| format!("PersistentVolumeClaim data-{}", sp.names.etcd_member(i))),
        )
        .collect();
    Ok(Step::Next(format!(
        "the target serves: {listed} objects listed, first write accepted; writes were frozen for {:.1} s; the source is kept stopped: {}",
        m.downtime_seconds.unwrap_or(0.0),
        m.kept.join(", ")
    )))
}

/// Lists every resource the tenant API serves (preferred versions), page by
/// page; the number of objects listed.
async fn list_every_resource(client: &kube::Client) -> std::result::Result<u64, String> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|e| format!("discovery: {e}"))?;
    let mut n = 0;
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if !caps.supports_operation(verbs::LIST) {
                continue;
            }
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let mut pages = Pages::new(&api, ListParams::default().limit(LIST_PAGE));
            while let Some(page) = pages.next_metadata().await {
                n += page.map_err(|e| format!("{}: {e}", ar.plural))?.len() as u64;
            }
        }
    }
    Ok(n)
}

// ---- rollback ----------------------------------------------------------------

/// Deletes what the migration created (the target StatefulSet, its restore
/// Jobs, the claims it made, the target's member Services) and starts the
/// source etcd again; the normal pass then starts the source apiservers.
async fn roll_back(
    ctx: &Context,
    tc: &TenantCluster,
    x: &Pass<'_>,
    m: &MigrationStatus,
) -> Result<Step> {
    let ns = &x.p.namespace;
    let tp = target_placement(x, m);
    let sp = source_placement(x, m);
    let uid = &x.p.owner.uid;
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(sts) = statefulsets.get_opt(&tp.names.etcd()).await? {
        check_owner(&sts, uid)?;
        statefulsets
            .delete(&tp.names.etcd(), &DeleteParams::default())
            .await?;
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "{RESTORE_LABEL}={}",
        restore_label_value(&migration_name(tc, m))
    ));
    for job in jobs.list(&lp).await?.items {
        if job
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == *uid)
        {
            let dp = DeleteParams {
                propagation_policy: Some(kube::api::PropagationPolicy::Background),
                ..Default::default()
            };
            crate::runtime::api::gone_is_done(jobs.delete(&job.name_any(), &dp).await)?;
        }
    }
    // Target pods must be gone before their claims go.
    let target_pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list_metadata(&ListParams::default().labels(&format!(
            "{}={},{}={}",
            cp::ETCD_GENERATION_LABEL,
            m.target.etcd_generation,
            TENANT_LABEL,
            tc.name_any()
        )))
        .await?
        .items
        .len();
    if target_pods > 0 {
        return Ok(Step::Stay(format!(
            "waiting for {target_pods} target etcd pods to stop"
        )));
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let id = migration_id(tc, m);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    // Every member Service (one per possible member), the claims it made.
    for i in 0..kok_templates::names::MAX_ETCD_MEMBERS {
        let claim = format!("data-{}", tp.names.etcd_member(i));
        if let Some(c) = claims.get_opt(&claim).await? {
            let ours = created_by(&c, &id);
            if ours {
                claims.delete(&claim, &DeleteParams::default()).await?;
            }
        }
        let svc = tp.names.etcd_member(i);
        if let Some(s) = services.get_opt(&svc).await? {
            check_owner(&s, uid)?;
            services.delete(&svc, &DeleteParams::default()).await?;
        }
    }
    // The source etcd, as it was.
    match statefulsets
        .patch(
            &sp.names.etcd(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": m.source.etcd_replicas}})),
        )
        .await
    {
        Ok(_) => {}
        Err(e) if crate::runtime::api::is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Step::Next(format!(
        "{} and what the migration created are deleted; the source {} serves again",
        tp.names.etcd(),
        sp.names.etcd()
    )))
}

/// A migration resumed by a new process at a recorded phase, against a fake
/// management API: what the phase does, and that it deletes only what the
/// migration made.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake_api::{self, Answer, Requests, Seen};
    use crate::tenant::kubeconfigs::Kubeconfigs;
    use kok_templates::names::Names;

    const NS: &str = "team-a";
    const UID: &str = "u-1";

    /// 3 members of etcd 3.4 (generation 0) migrating to 3.5 (generation 1), at `phase`.
    fn tenant(phase: &str) -> TenantCluster {
        serde_json::from_value(json!({
            "apiVersion": "kok.dev/v1alpha1", "kind": "TenantCluster",
            "metadata": {"name": "t", "namespace": NS, "uid": UID, "generation": 4,
                         "resourceVersion": "40"},
            "spec": {"version": "v1.20.2", "upgrade": {"strategy": "Migrate"},
                     "backup": {"destination": {"filesystem": {"path": "/var/lib/kok/backups/t"}}},
                     "etcd": {"replicas": 3, "version": "3.5.16", "storage": {"size": "1Gi"}}},
            "status": {
                "version": "v1.20.2", "etcdVersion": "3.4.23", "etcdReplicas": 3,
                "migration": {
                    "source": {"version": "v1.20.2", "etcdVersion": "3.4.23",
                               "etcdReplicas": 3, "etcdGeneration": 0},
                    "target": {"version": "v1.20.2", "etcdVersion": "3.5.16",
                               "etcdReplicas": 3, "etcdGeneration": 1},
                    "phase": phase, "specGeneration": 4,
                    "startTime": "2026-12-01T00:00:00Z", "phaseTime": "2026-12-01T00:01:00Z",
                },
            },
        }))
        .unwrap()
    }

    fn owned_by_tenant() -> serde_json::Value {
        json!([{"apiVersion": "kok.dev/v1alpha1", "kind": "TenantCluster", "name": "t",
                "uid": UID, "controller": true}])
    }

    /// The pass as a restarted operator runs it, on `route`.
    async fn resume(
        phase: &str,
        route: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> (TenantCluster, TenantClusterStatus, Outcome, Requests) {
        let tc = tenant(phase);
        let stored = serde_json::to_value(&tc).unwrap();
        let (client, requests) = fake_api::client(move |seen| {
            // The stored TenantCluster is the one the pass was handed: not stale.
            if seen.is_read() && seen.path.ends_with("/tenantclusters/t") {
                return (200, stored.clone());
            }
            route(seen)
        });
        let ctx = fake_api::context(client);
        let valid = kok_templates::validate::validate(&tc.spec, None, &Default::default())
            .expect("a valid spec");
        let p = fake_api::placement(&tc);
        let empty = || kok_templates::pki::CertKeyPair {
            cert_pem: String::new(),
            key_pem: String::new(),
        };
        let pki = crate::tenant::pki::TenantPki {
            cas: kok_templates::pki::CaKind::ALL
                .into_iter()
                .map(|k| (k, empty()))
                .collect(),
            sa_key: String::new(),
            sa_pub: String::new(),
            encryption_config: String::new(),
            // The target's server certificate, issued in an earlier pass.
            leaves: [(
                Names::new("t")
                    .at_etcd_generation(1)
                    .etcd_leaf("etcd-server"),
                empty(),
            )]
            .into(),
            issued: Vec::new(),
            earliest_expiry: None,
        };
        let kubeconfigs = Kubeconfigs {
            controller_manager: String::new(),
            scheduler: String::new(),
            admin: None,
            operator: String::new(),
        };
        let x = Pass {
            p: &p,
            valid: &valid,
            pki: &pki,
            kubeconfigs: &kubeconfigs,
            apiserver_ip: "10.96.0.2",
        };
        let mut status = tc.status.clone().unwrap();
        let outcome = pass(&ctx, &tc, &x, &mut status)
            .await
            .expect("the phase runs on the API alone");
        (tc, status, outcome, requests)
    }

    fn writes(requests: &Requests) -> Vec<(String, String)> {
        requests
            .other_writes()
            .into_iter()
            .map(|s| {
                (
                    s.method.to_string(),
                    s.path.rsplit('/').next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn apiserver_pods(count: usize) -> impl Fn(&Seen) -> Answer + Send + Sync {
        move |seen| {
            if seen.is_list() && seen.path.ends_with("/pods") {
                let pods = (0..count)
                    .map(|i| json!({"metadata": {"name": format!("t-apiserver-{i}"), "namespace": NS}}))
                    .collect();
                return fake_api::list(pods);
            }
            fake_api::empty_cluster(seen)
        }
    }

    #[tokio::test]
    async fn resumed_frozen_it_stops_the_source_control_plane_and_waits_for_its_pods() {
        let (_, status, outcome, requests) = resume("Frozen", apiserver_pods(2)).await;

        assert!(matches!(outcome, Outcome::Drove(_)));
        let writes = writes(&requests);
        for component in ["t-apiserver", "t-controller-manager", "t-scheduler"] {
            assert!(
                writes.contains(&("PATCH".into(), component.into())),
                "{component} scaled to 0: {writes:?}"
            );
        }
        assert!(writes.contains(&("DELETE".into(), "t-apiserver-0".into())));
        assert!(writes.contains(&("DELETE".into(), "t-apiserver-1".into())));
        assert_eq!(writes.len(), 5, "nothing else: {writes:?}");
        let m = status.migration.unwrap();
        assert_eq!(m.phase, MigrationPhase::Frozen, "until the pods are gone");
        assert!(
            m.freeze_time.is_some(),
            "the freeze is timed from its first pass"
        );
    }

    #[tokio::test]
    async fn resumed_frozen_with_no_apiserver_left_it_moves_on_to_the_copy() {
        let (_, status, _, requests) = resume("Frozen", apiserver_pods(0)).await;

        assert_eq!(status.migration.unwrap().phase, MigrationPhase::Copying);
        assert_eq!(requests.events().len(), 1, "the step is told once");
        assert!(writes(&requests).iter().all(|(verb, _)| verb == "PATCH"));
    }

    #[tokio::test]
    async fn resumed_rolling_back_it_deletes_only_what_the_migration_made_and_restores_the_source()
    {
        let tc = tenant("RollingBack");
        let m = tc.status.as_ref().unwrap().migration.clone().unwrap();
        let ours = migration_id(&tc, &m);
        let owner = owned_by_tenant();
        let (_, status, _, requests) = resume("RollingBack", move |seen| {
            let name = seen.path.rsplit('/').next().unwrap_or_default().to_string();
            let object = |kind: &str, meta: serde_json::Value| {
                let api_version = if kind == "StatefulSet" {
                    "apps/v1"
                } else {
                    "v1"
                };
                (
                    200,
                    json!({"apiVersion": api_version, "kind": kind, "metadata": meta}),
                )
            };
            match (seen.method.as_str(), name.as_str()) {
                ("GET", "t-etcd-g1") if seen.path.contains("/statefulsets/") => object(
                    "StatefulSet",
                    json!({"name": name, "namespace": NS, "ownerReferences": owner}),
                ),
                // Member 0's claim was made by this migration; member 1's
                // was not (kept from before, with data): it stays.
                ("GET", "data-t-etcd-g1-0") => object(
                    "PersistentVolumeClaim",
                    json!({"name": name, "namespace": NS,
                           "annotations": {CREATED_BY: ours}}),
                ),
                ("GET", "data-t-etcd-g1-1") => object(
                    "PersistentVolumeClaim",
                    json!({"name": name, "namespace": NS}),
                ),
                ("GET", "t-etcd-g1-0") if seen.path.contains("/services/") => object(
                    "Service",
                    json!({"name": name, "namespace": NS, "ownerReferences": owner}),
                ),
                ("DELETE", _) => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                ),
                _ => fake_api::empty_cluster(seen),
            }
        })
        .await;

        let writes = writes(&requests);
        assert!(
            writes.contains(&("DELETE".into(), "t-etcd-g1".into())),
            "{writes:?}"
        );
        assert!(writes.contains(&("DELETE".into(), "data-t-etcd-g1-0".into())));
        assert!(
            !writes.contains(&("DELETE".into(), "data-t-etcd-g1-1".into())),
            "a claim the migration did not make is never deleted: {writes:?}"
        );
        assert!(writes.contains(&("DELETE".into(), "t-etcd-g1-0".into())));
        let source = requests
            .other_writes()
            .into_iter()
            .find(|s| s.method == http::Method::PATCH && s.path.ends_with("/statefulsets/t-etcd"))
            .expect("the source etcd is scaled back");
        assert_eq!(source.body["spec"]["replicas"], 3);
        assert!(
            writes
                .iter()
                .all(|(_, name)| name.contains("g1") || name == "t-etcd"),
            "only the target's objects and the source etcd: {writes:?}"
        );
        assert_eq!(status.migration.unwrap().phase, MigrationPhase::RolledBack);
    }

    #[tokio::test]
    async fn resumed_creating_the_target_it_never_restores_over_a_claim_it_did_not_make() {
        let (_, status, _, requests) = resume("CreatingTarget", |seen| {
            if seen.method == http::Method::PATCH && seen.path.contains("/services/") {
                let mut svc = seen.body.clone();
                svc["spec"]["clusterIP"] = json!("10.96.0.10");
                return (200, svc);
            }
            if seen.is_read()
                && seen
                    .path
                    .ends_with("/persistentvolumeclaims/data-t-etcd-g1-0")
            {
                // A claim with data that this migration did not create.
                return (
                    200,
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "metadata": {"name": "data-t-etcd-g1-0", "namespace": NS}}),
                );
            }
            fake_api::empty_cluster(seen)
        })
        .await;

        let m = status.migration.unwrap();
        assert_eq!(m.phase, MigrationPhase::RollingBack);
        assert!(
            m.message
                .as_deref()
                .unwrap_or("")
                .contains("data-t-etcd-g1-0"),
            "{:?}",
            m.message
        );
        let events = requests.events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["reason"], "MigrationFailed");
        // Only the target's Services were applied: no claim made, nothing deleted.
        let writes = writes(&requests);
        assert!(
            writes
                .iter()
                .all(|(verb, name)| verb == "PATCH" && name.starts_with("t-")),
            "{writes:?}"
        );
        assert!(
            !requests
                .other_writes()
                .iter()
                .any(|s| s.path.contains("/persistentvolumeclaims")),
            "no claim is made or deleted"
        );
    }

    #[tokio::test]
    async fn resumed_in_preflight_on_an_unhealthy_tenant_it_waits_and_touches_nothing() {
        // No component condition is True in the recorded status.
        let (_, status, _, requests) = resume("Preflight", fake_api::empty_cluster).await;

        let m = status.migration.unwrap();
        assert_eq!(m.phase, MigrationPhase::Preflight);
        assert!(
            m.message
                .as_deref()
                .unwrap_or("")
                .contains("must be healthy"),
            "{:?}",
            m.message
        );
        assert!(
            requests.other_writes().is_empty(),
            "{:?}",
            requests.other_writes()
        );
        assert!(requests.events().is_empty());
    }
}
