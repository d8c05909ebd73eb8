//! The TenantCluster reconciler: validate -> Services -> PKI -> workloads -> status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kok_crds::{condition, TenantCluster, TenantClusterStatus, UpgradeStrategy};
use kok_templates::controlplane::{self as cp, Placement, Resolved};
use kok_templates::etcd_scale;
use kok_templates::kstatus::{Cond, Summary};
use kok_templates::membership::{self, Mover};
use kok_templates::names::tenant_names;
use kok_templates::pki::CaKind;
use kok_templates::tenant_status::{self};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use self::health as tenant_health;
use crate::runtime::conditions;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};
use crate::runtime::status::{apply_status, manager};

mod access;
mod admit;
mod cleanup;
mod etcd_maintenance;
mod etcd_roll;
mod heal;
pub mod health;
mod inspect;
mod inspect_facts;
mod kubeconfigs;
mod migrate;
mod nodes;
#[cfg(test)]
mod passes;
pub mod pki;
mod repairs;
mod scale;
mod services;
mod upgrade;
mod workloads;

use self::admit::{admit, Admission};
pub use self::cleanup::kept_volumes_problem;
use self::cleanup::{check_kept_volumes, cleanup};
use self::pki::{self as tenant_pki, config_hashes, pki_inputs};
pub use self::services::Endpoint;
use kok_templates::validate::ValidSpec;

pub const FINALIZER: &str = "kok.dev/cleanup";
const CONTROLLER: &str = "tenantcluster";
/// How often a healthy tenant is looked at again (health, etcd alarms: a
/// NOSPACE alarm is found within this; the full inspection runs on its own
/// interval).
const RESYNC: Duration = Duration::from_secs(30);
/// How often a tenant that is still coming up is looked at.
const PROGRESS_POLL: Duration = Duration::from_secs(3);

#[instrument(skip_all, fields(tenant = %tc.name_any(), ns = tc.namespace().unwrap_or_default()))]
pub async fn reconcile(tc: Arc<TenantCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let ns = tc
        .namespace()
        .ok_or_else(|| Error::IncompleteObject(tc.name_any()))?;
    let api: Api<TenantCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let obj_ref = ObjectRef::from_obj(tc.as_ref());
    let this = tc.clone();
    let result = finalizer(&api, FINALIZER, tc, |event| async {
        match event {
            FinalizerEvent::Apply(tc) => apply_tenant(tc, &ctx).await,
            FinalizerEvent::Cleanup(tc) => cleanup(tc, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    match result {
        Ok(action) => {
            ctx.reset_failures(CONTROLLER, &obj_ref);
            Ok(action)
        }
        Err(error) => {
            report_error(&this, &error, &ctx).await;
            if error.is_stalled() {
                // Retrying cannot help until someone acts: an edit of the
                // TenantCluster wakes it at once; other fixes (a conflicting
                // object deleted) are found by rechecks that back off to 5 min.
                ctx.metrics
                    .reconcile_failed(CONTROLLER, error.metric_label());
                Ok(Action::requeue(ctx.next_retry(CONTROLLER, &obj_ref)))
            } else {
                Err(error)
            }
        }
    }
}

/// Puts a failed reconcile on the object: a condition with the API's message
/// (`Stalled` when retrying cannot help) and a Warning Event, so the reason is
/// not only in the operator's log.
async fn report_error(tc: &TenantCluster, error: &Error, ctx: &Context) {
    let inner = error.inner();
    let stalled = error.is_stalled();
    let reason = match inner {
        Error::NotOwned { .. } => "NameConflict",
        Error::VolumesNotAdoptable(_) => "VolumesNotAdoptable",
        Error::CorruptCa { .. } => "CorruptCA",
        Error::UnusableEncryptionKey { .. } => "UnusableEncryptionKey",
        _ if stalled => "Rejected",
        _ => "ReconcileError",
    };
    let message = inner.to_string();
    let generation = tc.metadata.generation;
    let old = tc.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = generation;
    let summary = if stalled {
        Summary::blocked(
            reason,
            message.clone(),
            "waiting for the problem to be fixed",
        )
    } else {
        Summary::Working {
            reason: reason.into(),
            doing: format!("retrying: {message}"),
            not_ready: Some(message.clone()),
            stuck: None,
        }
    };
    conditions::summarize(&mut status.conditions, &summary, None, generation);
    if let Err(e) = patch_status(ctx, tc, &old, status).await {
        warn!(error = %e, "could not record the reconcile error in status");
    }
    ctx.publish(tc, EventType::Warning, reason, "Reconcile", &message)
        .await;
}

pub fn error_policy(tc: Arc<TenantCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_error(CONTROLLER, tc.as_ref(), error)
}

/// One pass: admit, then Services, PKI, kubeconfigs, plan which versions
/// this pass renders, apply the workloads, observe, and write the status.
///
/// Long (about 430 lines) on purpose for now: it is the ten numbered steps
/// in order, each a call into the module that owns it, and what one step
/// hands the next (placement, PKI, kubeconfigs, rendering, what was seen)
/// stays visible as locals. The decisions are elsewhere and tested: the
/// conditions (`tenant_status::conditions`), when to look again
/// (`tenant_status::next_look`), who may move members (`membership`).
async fn apply_tenant(tc: Arc<TenantCluster>, ctx: &Context) -> Result<Action> {
    // A pass acts only on the status the previous pass wrote: the watch can
    // hand over a cached object from before that write (seen: an inspection
    // repeated on it repaired again and wrote back the status without the
    // first repair, so the hourly budget never counted it).
    let api: Api<TenantCluster> =
        Api::namespaced(ctx.client.clone(), &tc.namespace().unwrap_or_default());
    if !crate::runtime::status::is_current(&api, tc.as_ref()).await? {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let generation = tc.metadata.generation;
    let old_status = tc.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    status.observed_generation = generation;
    if let Some(h) = old_status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::HEALTHY)
    {
        let ns = tc.namespace().unwrap_or_default();
        ctx.seed_fleet_health(&ns, &tc.name_any(), h.status == "False");
    }

    // 1. Admit: an invalid spec, a restore or a pause stops the pass here.
    let valid = match admit(&tc, ctx, &mut status).await? {
        Admission::Proceed(valid) => valid,
        Admission::Hold(action, said) => {
            let fine = Some(tenant_status::SPEC_VALID);
            conditions::summarize(&mut status.conditions, &said, fine, generation);
            patch_status(ctx, &tc, &old_status, status).await?;
            return Ok(action);
        }
    };
    // Everything below renders the etcd that serves, whose member count the
    // spec may already have changed for a migration.
    let valid = ValidSpec {
        etcd_replicas: old_status.etcd_replicas.unwrap_or(valid.etcd_replicas),
        ..valid
    };
    let name = tc.name_any();
    let owner = tc
        .controller_owner_ref(&())
        .ok_or_else(|| Error::IncompleteObject(name.clone()))?;
    let uid = owner.uid.clone();
    let p = Placement {
        names: tenant_names(&tc),
        namespace: tc.namespace().unwrap_or_default(),
        owner,
    };

    // 2. Volumes kept from an earlier tenant of this name, then the Services:
    //    their ClusterIPs pin every name the components dial.
    if status.etcd_replicas.is_none() && !tc.spec.etcd.storage.ephemeral {
        let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &p.namespace);
        if statefulsets.get_opt(&p.names.etcd()).await?.is_none() {
            check_kept_volumes(ctx, &tc, &p.names, valid.etcd_replicas).await?;
        }
    }
    let net = services::ensure(ctx, &tc, &p, &uid).await?;

    // 3. PKI. A CA that does not parse is never replaced: it stops here.
    let host = net.endpoint.as_ref().map(|e| e.host.as_str());
    let inputs = pki_inputs(&p, &tc, &valid, &net.apiserver_ip, host);
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let pki = match tenant_pki::ensure(&secrets_api, &p, &inputs).await {
        Ok(pki) => pki,
        Err(e @ (Error::CorruptCa { .. } | Error::UnusableEncryptionKey { .. })) => {
            let message = e.to_string();
            let reason = match e {
                Error::CorruptCa { .. } => "CorruptCA",
                _ => "UnusableEncryptionKey",
            };
            ctx.publish(
                tc.as_ref(),
                EventType::Warning,
                reason,
                "EnsurePKI",
                &message,
            )
            .await;
            let certificates = Cond {
                type_: condition::CERTIFICATES,
                status: false,
                reason: reason.into(),
                message: message.clone(),
            };
            // Not Ready and not progressing: nothing is signed until someone restores the Secret.
            let waiting = "waiting for the Secret to be restored";
            let blocked = Summary::blocked(reason, message, waiting).conditions(None);
            let computed = blocked.into_iter().chain([certificates]);
            conditions::apply(&mut status.conditions, computed, generation);
            patch_status(ctx, &tc, &old_status, status).await?;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    if !pki.issued.is_empty() {
        let issued = pki
            .issued
            .iter()
            .map(|(n, why)| format!("{n} ({why})"))
            .collect::<Vec<_>>()
            .join(", ");
        let (t, r) = (EventType::Normal, "CertificatesIssued");
        ctx.publish(tc.as_ref(), t, r, "EnsurePKI", &issued).await;
    }

    // 4. Kubeconfigs.
    let kubeconfigs = kubeconfigs::ensure(
        ctx,
        &p,
        &uid,
        &pki,
        net.endpoint.as_ref(),
        &net.apiserver_ip,
    )
    .await?;
    if kubeconfigs.admin.is_some() {
        status.kubeconfig_secret_name = Some(p.names.admin_kubeconfig_secret());
        status.endpoint = net.endpoint.as_ref().map(|e| e.url());
    }
    access::argocd(ctx, &tc, &p, &pki, net.endpoint.as_ref(), &mut status).await?;

    // 5. A data migration (spec.upgrade.strategy: Migrate), when one is due
    //    or on record, drives the pass itself until it finishes.
    let migration = migrate::pass(
        ctx,
        &tc,
        &migrate::Pass {
            p: &p,
            valid: &valid,
            pki: &pki,
            kubeconfigs: &kubeconfigs,
            apiserver_ip: &net.apiserver_ip,
        },
        &mut status,
    )
    .await?;
    let migration_refused = match migration {
        migrate::Outcome::Drove(action) => {
            patch_status(ctx, &tc, &old_status, status).await?;
            return Ok(action);
        }
        migrate::Outcome::Refused(why) => Some(why),
        migrate::Outcome::None => None,
    };

    // 6. Plan: which version each component renders in this pass. An upgrade
    //    walks one step at a time, etcd first, then the apiservers, then the
    //    controllers.
    let in_place = tc.spec.upgrade.strategy == UpgradeStrategy::InPlace;
    let pass = upgrade::plan_pass(ctx, &tc, &p, &valid, &old_status, in_place).await?;

    // 7. Act on the workloads. A member that finds no data starts as the
    //    ConfigMap says: `existing` only while kok re-adds a lost member.
    let scaling_record = old_status.etcd_scaling.as_ref();
    let joining = heal::joining(&old_status) || etcd_scale::joining(scaling_record);
    let formed = (0..valid.etcd_replicas).all(|i| {
        old_status
            .etcd_member_claims
            .contains_key(&kok_templates::restore::member_claim(&p.names, i))
    });
    let bootstrap = cp::bootstrap_mode(
        tc.spec.etcd.storage.ephemeral,
        valid.etcd_replicas,
        joining,
        formed,
    );
    heal::ensure_bootstrap_config(ctx, &p, bootstrap).await?;
    let resolved = Resolved {
        etcd_member_ips: net.etcd_member_ips,
        apiserver_ip: net.apiserver_ip,
        etcd_cluster_token: tc.uid().unwrap_or_default(),
        // A learner joining or a member leaving by a live scaling; else
        // decided by the etcd roll in this pass (see workloads::apply).
        etcd_drained_member: etcd_scale::kept_off(scaling_record),
        hashes: config_hashes(
            &pki,
            &p.names,
            &kubeconfigs.controller_manager,
            &kubeconfigs.scheduler,
        ),
    };
    let live = workloads::apply(ctx, &tc, &p, &valid, &resolved, &pass.rendering).await?;
    status.etcd_replicas = Some(valid.etcd_replicas);
    status.etcd_drained_member = live.etcd_drained_member;
    // Who moves etcd members this pass is decided by one rule
    // (`membership::holder`). Healing: a member that lost its data is
    // replaced, one step a pass; not while the roll holds the members.
    let record = |status: &TenantClusterStatus| {
        membership::on_record(Some(status), false, live.etcd_rolling.is_some())
    };
    let healing = if membership::holder(&record(&status)) != Some(Mover::Roll) {
        heal::members(ctx, &tc, &p, valid.etcd_replicas, &mut status, joining).await?
    } else {
        // Members restart during a roll: their health is timed afresh.
        status.etcd_unhealthy_since.clear();
        heal::Healing::Idle
    };
    // Live scaling (InPlace): one member per recorded phase, only while it
    // holds the members (a replacement begun in this pass included).
    let scaling_blocked = membership::may_move(Mover::Scaling, &record(&status)).err();
    let settled = scaling_blocked.is_none() && matches!(healing, heal::Healing::Idle);
    let scaling = if !in_place {
        match &status.etcd_scaling {
            Some(s) => scale::Scaling::Blocked(format!(
                "{} is open: set spec.upgrade.strategy back to InPlace to finish it (no migration starts meanwhile)",
                etcd_scale::describe(s)
            )),
            None => scale::Scaling::Idle,
        }
    } else if settled {
        scale::step(ctx, &tc, &p, tc.spec.etcd.replicas, &mut status).await?
    } else if let Some(s) = &status.etcd_scaling {
        let waiting_for = match scaling_blocked {
            Some(holder) => holder.to_string(),
            None => "etcd repair".to_string(),
        };
        scale::Scaling::Moving(format!(
            "{}: waiting for the {waiting_for} to finish",
            etcd_scale::describe(s)
        ))
    } else {
        scale::Scaling::Idle
    };

    // 8. Observe: Ready only when every component has rolled out its current
    //    template (kstatus), so GitOps tools see a rollout as one.
    let readyz = match &kubeconfigs.admin {
        Some(_) if live.apiserver_available() > 0 => {
            tenant_health::readyz(&kubeconfigs.operator).await
        }
        _ => Err("the apiserver has no available replica yet".to_string()),
    };
    let serving = readyz.is_ok();
    let troubles = workloads::pod_troubles(ctx, &p.namespace, &name, &live).await;
    // Each trouble once as a Warning Event: a lasting state is one Event.
    for type_ in [
        condition::ETCD,
        condition::APISERVER,
        condition::CONTROLLER_MANAGER,
        condition::SCHEDULER,
    ] {
        let key = format!("pod-trouble/{}/{name}/{type_}", p.namespace);
        match troubles.iter().find(|(t, _)| *t == type_) {
            Some((_, t)) => {
                let note = format!("{} {:?} {}", t.pod, t.problem, t.permanent);
                if ctx.first_saying(&key, &note) {
                    let reason = t.problem.reason();
                    ctx.publish(
                        tc.as_ref(),
                        EventType::Warning,
                        reason,
                        "Observe",
                        &t.message,
                    )
                    .await;
                }
            }
            // Said again when it comes back after the pods ran.
            None => {
                ctx.first_saying(&key, "");
            }
        }
    }
    let verdict = tenant_status::verdict(&live.observed(readyz, net.endpoint.is_some(), troubles));

    // 8b. Worker nodes: the objects `kubeadm join` reads and the addons,
    //     inside the tenant; its nodes for status and the kubelet skew rule.
    let tenant_api = if serving {
        tenant_health::tenant_client(&kubeconfigs.operator, Duration::from_secs(10))
            .await
            .ok()
    } else {
        None
    };
    if let Some(client) = &tenant_api {
        let inputs = net.endpoint.as_ref().map(|e| {
            let running = status
                .version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(valid.version);
            kok_templates::nodes::NodeInputs {
                version: running,
                cluster_name: name.clone(),
                endpoint: e.url(),
                ca_pem: pki.ca(CaKind::Cluster).cert_pem.clone(),
                networking: tc.spec.networking.clone(),
                image_repository: cp::image_repository(&tc.spec).to_string(),
            }
        });
        // Boxed: this pass's future is large already (a debug build's
        // worker stack overflowed with it inline).
        let failed = Box::pin(nodes::pass(ctx, &tc, client, inputs, &mut status)).await;
        if let Some(note) = failed {
            if ctx.first_saying(&format!("node-bootstrap/{}/{name}", p.namespace), &note) {
                let (t, r) = (EventType::Warning, "NodeBootstrapFailed");
                ctx.publish(tc.as_ref(), t, r, "Nodes", &note).await;
            }
        }
    }
    // Before an upgrade starts, the kubelets it must still serve.
    let kubelets = match &tenant_api {
        Some(client) if pass.holding && in_place => Box::pin(nodes::read(client))
            .await
            .map(|n| nodes::kubelets(&n))
            .ok(),
        _ => None,
    };

    // 9. Record: versions, the upgrade, the conditions.
    upgrade::record_versions(ctx, &tc, &mut status, &pass.rendering, &verdict).await;
    let open_upgrade = if in_place {
        upgrade::record(
            ctx,
            &tc,
            &mut status,
            &pass,
            verdict.ready,
            kubelets.as_deref(),
        )
        .await?
    } else {
        None
    };
    // Backups this installation cannot keep: the control plane still runs,
    // but the spec is not met until the destination or the operator changes.
    let backup_refused = tc
        .spec
        .backup
        .as_ref()
        .and_then(|b| kok_templates::backup::storage_refusal(b, &ctx.policy))
        .map(|e| e.to_string());
    // What else this pass concluded, highest precedence first: a person
    // must act on the first two; scaling and healing move by themselves.
    let steps: Vec<Summary> = [
        migration_refused.map(|why| {
            // Serving, but not what the spec asks for, until the spec changes.
            Summary::blocked("MigrationFailed", why, "waiting for a spec change")
        }),
        backup_refused.as_ref().map(|why| {
            let w = "waiting for a spec or operator change";
            Summary::blocked("BackupDestinationRefused", why, w)
        }),
        scaling.summary(),
        healing.summary(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let expiry = pki
        .earliest_expiry
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let certificates = Cond {
        type_: condition::CERTIFICATES,
        status: true,
        reason: "Valid".into(),
        message: format!("all certificates valid; the first expires at {expiry}"),
    };
    let computed = tenant_status::conditions(&verdict, open_upgrade.as_ref(), &steps);
    let computed = computed.into_iter().chain([certificates]);
    conditions::apply(&mut status.conditions, computed, generation);

    // 10. Inspect (on its interval, on request, or at once when etcd raised
    //     an alarm) once the tenant API answers; repair what policy allows.
    let inspection_due = inspect::due_in(&tc, &status);
    // An alarm brings the inspection forward, at most every 30 s (its
    // repair may fail, e.g. a quota filled by live data, and each
    // inspection's status write wakes the next pass).
    let alarm_due = inspect::since_last(&status).is_none_or(|s| s >= RESYNC)
        && inspect::alarm_raised(ctx, &tc).await;
    if live.apiserver_available() > 0 && (inspection_due.is_none() || alarm_due) {
        let inputs = inspect::Inputs {
            p: &p,
            pki: &pki,
            admin_kubeconfig: Some(kubeconfigs.operator.as_str()),
        };
        inspect::run(ctx, &tc, &inputs, &mut status).await;
    }
    let next_inspection = inspect::due_in(&tc, &status).unwrap_or(inspect::interval(&tc));
    if live.apiserver_available() > 0 && status.etcd_member_replacement.is_none() {
        etcd_maintenance::scheduled_defragmentation(ctx, &tc, &mut status).await;
    }

    let ready = conditions::is_true(&status.conditions, condition::READY);
    let became_ready = ready && !conditions::is_true(&old_status.conditions, condition::READY);
    ctx.metrics.tenant_observed(
        &p.namespace,
        &name,
        ready,
        pki.earliest_expiry.map(|t| t.unix_timestamp()),
    );
    if let Some(last) = status
        .backup
        .as_ref()
        .and_then(|b| b.last_successful_backup.as_deref())
    {
        crate::backup::seed_last_backup_metrics(ctx, &p.namespace, &name, last).await;
    }
    // etcd settles its cluster version a moment after the members agree:
    // look again soon until it is read.
    let cluster_version_known = upgrade::etcd_cluster_version_settled(&status);
    let not_ready = not_ready_for(&status);
    patch_status(ctx, &tc, &old_status, status).await?;
    announce(
        ctx,
        &tc,
        &old_status,
        backup_refused.as_deref(),
        became_ready,
        &scaling,
    )
    .await;
    let replacing = matches!(healing, heal::Healing::Replacing(_))
        || matches!(scaling, scale::Scaling::Moving(_));
    Ok(Action::requeue(tenant_status::next_look(
        &tenant_status::Wake {
            ready,
            etcd_version_known: cluster_version_known,
            moving_members: replacing,
            waiting_for_person: matches!(scaling, scale::Scaling::Blocked(_))
                || matches!(healing, heal::Healing::QuorumLost(_)),
            next_inspection,
            not_ready_for: not_ready,
            resync: RESYNC,
            progress_poll: PROGRESS_POLL,
        },
    )))
}

/// The Events a pass says once: a refused backup destination (again only
/// when the reason changes), the first Ready, a blocked etcd scaling.
async fn announce(
    ctx: &Context,
    tc: &TenantCluster,
    old_status: &TenantClusterStatus,
    backup_refused: Option<&str>,
    became_ready: bool,
    scaling: &scale::Scaling,
) {
    let (namespace, name) = (tc.namespace().unwrap_or_default(), tc.name_any());
    let refusal_key = format!("backup-refused/{namespace}/{name}");
    match backup_refused {
        Some(why) if ctx.first_saying(&refusal_key, why) => {
            let (t, r) = (EventType::Warning, "BackupDestinationRefused");
            ctx.publish(tc, t, r, "Backup", why).await;
        }
        Some(_) => {}
        None => {
            ctx.first_saying(&refusal_key, "");
        }
    }
    if became_ready {
        info!("tenant control plane ready");
        let (t, r) = (EventType::Normal, "Ready");
        ctx.publish(tc, t, r, "Reconcile", "the tenant control plane is serving")
            .await;
    }
    if let scale::Scaling::Blocked(why) = &scaling {
        let before = old_status
            .etcd_scaling
            .as_ref()
            .and_then(|s| s.message.as_deref());
        if before != Some(why.as_str()) {
            let (t, r) = (EventType::Warning, "EtcdScalingBlocked");
            ctx.publish(tc, t, r, "ScaleEtcd", why).await;
        }
    }
}

/// How long the tenant has not been Ready (since its Ready condition last
/// changed; from its creation for one that never was).
fn not_ready_for(status: &TenantClusterStatus) -> Duration {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY && c.status != "True")
        .map(|c| {
            let since = k8s_openapi::jiff::Timestamp::now().as_second()
                - c.last_transition_time.0.as_second();
            Duration::from_secs(since.max(0) as u64)
        })
        .unwrap_or_default()
}

/// Writes the reconciler's view of status when it differs from what is stored.
async fn patch_status(
    ctx: &Context,
    tc: &TenantCluster,
    old: &TenantClusterStatus,
    new: TenantClusterStatus,
) -> Result<()> {
    let mut new = new;
    conditions::keep_transition_times(&old.conditions, &mut new.conditions);
    if *old == new && tc.status.is_some() {
        return Ok(());
    }
    let api: Api<TenantCluster> =
        Api::namespaced(ctx.client.clone(), &tc.namespace().unwrap_or_default());
    // `status.backup` belongs to the backup schedule's field manager: left
    // out, a stale copy from this reconcile cannot roll it back.
    new.backup = None;
    apply_status(&api, tc, manager::TENANT, &new).await
}

#[cfg(test)]
mod tests {
    use super::kept_volumes_problem;

    fn kept(indices: &[i32]) -> Vec<(i32, String)> {
        indices
            .iter()
            .map(|i| (*i, format!("data-t-etcd-{i}")))
            .collect()
    }

    #[test]
    fn kept_claims_need_consent_and_the_right_member_count() {
        assert_eq!(kept_volumes_problem(&[], 3, false), None);
        let refused = kept_volumes_problem(&kept(&[0]), 1, false).unwrap();
        assert!(
            refused.contains("data-t-etcd-0") && refused.contains("adopt-etcd-volumes"),
            "{refused}"
        );
        assert_eq!(kept_volumes_problem(&kept(&[0, 1, 2]), 3, true), None);
        let mismatch = kept_volumes_problem(&kept(&[0]), 3, true).unwrap();
        assert!(mismatch.contains("separate etcd clusters"), "{mismatch}");
        assert!(kept_volumes_problem(&kept(&[0, 1, 2]), 1, true).is_some());
    }
}
