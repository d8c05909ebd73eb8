//! Inspection of a tenant cluster and its control plane: read the facts
//! (the tenant API with the admin kubeconfig, the control-plane pods, etcd),
//! let `kok_templates::inspection` decide what is wrong, repair what the
//! policy allows, record findings and repairs in status.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Endpoints, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kok_crds::{
    condition, CheckPolicy, EtcdBackup, Finding, Repair, TenantCluster, TenantClusterStatus,
};
use kok_templates::controlplane::Placement;
use kok_templates::inspection::{
    self as insp, CertFact, ComponentPodFact, Detected, EtcdMemberFact, Facts, RepairAction,
};
use kok_templates::names::tenant_selector;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::runtime::events::EventType;
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::inspect_facts as facts;
use super::pki::TenantPki;
use crate::etcd::EtcdAccess;
use crate::runtime::conditions;
use crate::runtime::context::Context;
use crate::runtime::lenient::Lenient;
use crate::runtime::paged::Pages;

/// Annotation whose change asks for an inspection now.
pub const INSPECT_ANNOTATION: &str = "kok.dev/inspect";
/// A tenant list is read in pages of this many objects: memory stays at
/// one page plus the small facts kept from each object.
const PAGE: u32 = 500;
/// CRDs and custom objects are read in smaller pages: a CRD's schema alone
/// can be hundreds of KiB, and a page must fit the tenant answer bound.
const LARGE_OBJECT_PAGE: u32 = 50;
/// How long the tenant API may take per request during an inspection.
const TENANT_TIMEOUT: Duration = Duration::from_secs(10);

/// When the next inspection is due: `None` when one is due now.
pub(super) fn due_in(tc: &TenantCluster, status: &TenantClusterStatus) -> Option<Duration> {
    let interval = interval(tc);
    let last = status.inspection.as_ref();
    let trigger = tc.annotations().get(INSPECT_ANNOTATION);
    if trigger.is_some() && trigger != last.and_then(|l| l.trigger.as_ref()) {
        return None;
    }
    let last_time = last.and_then(|l| l.last_time.as_ref())?;
    let since = Timestamp::now().as_second() - last_time.0.as_second();
    let left = interval.as_secs() as i64 - since;
    (left > 0).then(|| Duration::from_secs(left as u64))
}

/// Time since the last inspection.
pub(super) fn since_last(status: &TenantClusterStatus) -> Option<Duration> {
    let last = status.inspection.as_ref()?.last_time.as_ref()?;
    let secs = Timestamp::now().as_second() - last.0.as_second();
    Some(Duration::from_secs(secs.max(0) as u64))
}

pub(super) fn interval(tc: &TenantCluster) -> Duration {
    Duration::from_secs(
        tc.spec
            .healing
            .inspection_interval_seconds
            .map(u64::from)
            .unwrap_or(insp::DEFAULT_INTERVAL_SECS),
    )
}

/// Whether etcd has an alarm raised (NOSPACE refuses every write): checked
/// on every pass, so the repair does not wait for the next inspection.
pub(super) async fn alarm_raised(ctx: &Context, tc: &TenantCluster) -> bool {
    if insp::policy(&tc.spec.healing, insp::ETCD_ALARM) == CheckPolicy::Off {
        return false;
    }
    let Ok(access) = EtcdAccess::for_tenant(&ctx.client, tc).await else {
        return false;
    };
    tokio::time::timeout(
        Duration::from_secs(5),
        super::etcd_maintenance::alarms(&access),
    )
    .await
    .is_ok_and(|a| a.is_ok_and(|a| !a.is_empty()))
}

/// What the inspection needs from this pass.
pub(super) struct Inputs<'a> {
    pub p: &'a Placement,
    pub pki: &'a TenantPki,
    pub admin_kubeconfig: Option<&'a str>,
}

/// Inspects, repairs what the policies allow, and records it in `status`.
pub(super) async fn run(
    ctx: &Context,
    tc: &TenantCluster,
    inputs: &Inputs<'_>,
    status: &mut TenantClusterStatus,
) {
    let now = Timestamp::now();
    let mut errors = Vec::new();
    let mut facts = Facts {
        now: now.as_second(),
        csr_pending_secs: tc
            .spec
            .healing
            .csr_pending_seconds
            .map_or(insp::DEFAULT_CSR_PENDING_SECS, i64::from),
        control_plane_version: status.version.clone(),
        ..Default::default()
    };
    match inputs.admin_kubeconfig {
        Some(kc) => match super::health::tenant_client(kc, TENANT_TIMEOUT).await {
            Ok(client) => read_tenant(&client, &mut facts, &mut errors).await,
            Err(e) => errors.push(format!("tenant API: {e}")),
        },
        None => errors.push("tenant API: no admin kubeconfig yet".into()),
    }
    read_control_plane(ctx, tc, inputs, &mut facts, &mut errors).await;
    read_lost_members(ctx, tc, inputs, status, &mut facts, &mut errors).await;

    let spec = &tc.spec.healing;
    let detected: Vec<(Detected, CheckPolicy)> = insp::detect(&facts)
        .into_iter()
        .map(|d| {
            let policy = insp::policy(spec, d.check);
            (d, policy)
        })
        .filter(|(_, p)| *p != CheckPolicy::Off)
        .collect();
    let mut findings = insp::merge(&status.findings, &detected, now);
    // A part that could not be read keeps what was found before: not read
    // is not passed.
    let unread = insp::unread_checks(&facts);
    for f in &status.findings {
        if unread.contains(&f.check.as_str())
            && !findings
                .iter()
                .any(|n| n.check == f.check && n.object == f.object)
        {
            findings.push(f.clone());
        }
    }

    // Announce what is new.
    for f in &findings {
        if f.count == 1 && f.severity != "Info" {
            let note = format!("{}: {}: {}", f.check, f.object, f.message);
            ctx.publish(tc, EventType::Warning, "Finding", "Inspect", &note)
                .await;
        }
    }

    // Repair what the policy allows, each action once (one defragmentation
    // covers every fragmented member); no etcd maintenance while a member
    // is being replaced (a defragmenting voter of two stops writes).
    let mut done: Vec<&RepairAction> = Vec::new();
    for (d, policy) in &detected {
        let (CheckPolicy::Repair, Some(action)) = (policy, &d.repair) else {
            continue;
        };
        let etcd_maintenance = matches!(
            action,
            RepairAction::DefragmentEtcd | RepairAction::ResolveNoSpace
        );
        if done.contains(&action) || (etcd_maintenance && status.etcd_member_replacement.is_some())
        {
            continue;
        }
        done.push(action);
        let Some(finding) = findings
            .iter_mut()
            .find(|f| f.check == d.check && f.object == d.object)
        else {
            continue;
        };
        if let RepairAction::RestartControlPlanePod { .. } = action {
            if let Some(why) =
                super::repairs::repair_refused(ctx, tc, status, insp::CONTROL_PLANE_CRASH_LOOP)
            {
                finding.repair = Some(format!("not repaired: {why}"));
                continue;
            }
        }
        let started = Timestamp::now();
        let result = repair(ctx, tc, inputs, action).await;
        record_repair(ctx, tc, status, finding, action, result, started).await;
    }

    let (ok, reason, message) = insp::healthy(&findings, &errors);
    let g = tc.metadata.generation;
    conditions::set_known(
        &mut status.conditions,
        condition::HEALTHY,
        ok,
        &reason,
        message,
        g,
    );
    ctx.metrics.set_findings(
        &inputs.p.namespace,
        &inputs.p.names.tenant,
        &findings
            .iter()
            .map(|f| (f.check.clone(), f.severity.clone()))
            .collect::<Vec<_>>(),
    );
    // Not read (a tenant starting, an object skipped) is not counted as
    // unhealthy by the breaker: only findings are.
    ctx.record_fleet_health(
        &inputs.p.namespace,
        &inputs.p.names.tenant,
        ok == Some(false),
    );
    findings.truncate(insp::MAX_FINDINGS);
    status.findings = findings;
    status.inspection = Some(kok_crds::InspectionStatus {
        last_time: Some(Time(now)),
        trigger: tc.annotations().get(INSPECT_ANNOTATION).cloned(),
        checks: insp::CHECKS
            .iter()
            .filter(|(c, _, _)| insp::policy(spec, c) != CheckPolicy::Off)
            .count() as u32,
        errors,
    });
    info!(findings = status.findings.len(), "tenant inspected");
}

async fn record_repair(
    ctx: &Context,
    tc: &TenantCluster,
    status: &mut TenantClusterStatus,
    finding: &mut Finding,
    action: &RepairAction,
    result: Result<String, String>,
    started: Timestamp,
) {
    let now = Timestamp::now();
    let seconds = (now.as_millisecond() - finding.first_seen.0.as_millisecond()) as f64 / 1000.0;
    let took = (now.as_millisecond() - started.as_millisecond()) as f64 / 1000.0;
    let (outcome, message, succeeded) = match &result {
        Ok(done) => ("Succeeded", done.clone(), true),
        Err(e) => ("Failed", e.clone(), false),
    };
    finding.repair = Some(format!("{}: {outcome}: {message}", describe(action)));
    ctx.metrics
        .repaired(&finding.check, succeeded, succeeded.then_some(seconds));
    let (t, reason) = if succeeded {
        (EventType::Normal, "Repaired")
    } else {
        (EventType::Warning, "RepairFailed")
    };
    let note = format!(
        "{}: {}: {} ({message}; {took:.1}s)",
        finding.check,
        finding.object,
        describe(action)
    );
    ctx.publish(tc, t, reason, "Repair", &note).await;
    super::repairs::push_repair(
        status,
        Repair {
            check: finding.check.clone(),
            object: finding.object.clone(),
            action: describe(action),
            outcome: outcome.into(),
            message: Some(message),
            detected_time: Some(finding.first_seen.clone()),
            time: Time(now),
            seconds_to_repair: Some(seconds),
        },
    );
}

fn describe(action: &RepairAction) -> String {
    match action {
        RepairAction::ForceDeletePod { .. } => "force-deleted the Pod".into(),
        RepairAction::MigrateStoredVersions { storage, .. } => {
            format!("rewrote every object in {storage} and dropped the other stored versions")
        }
        RepairAction::DefragmentEtcd => "defragmented every etcd member, leader last".into(),
        RepairAction::ResolveNoSpace => {
            "compacted, defragmented and disarmed the NOSPACE alarm".into()
        }
        RepairAction::RestartControlPlanePod { .. } => "deleted the pod to recreate it".into(),
        RepairAction::ForceDeleteStuckPod { .. } => {
            "force-deleted the Pod stuck on a Node that is not Ready".into()
        }
    }
}

async fn repair(
    ctx: &Context,
    tc: &TenantCluster,
    inputs: &Inputs<'_>,
    action: &RepairAction,
) -> Result<String, String> {
    match action {
        RepairAction::ForceDeletePod {
            namespace,
            name,
            node,
        } => {
            let client = tenant(inputs).await?;
            // The Node may have come back (or joined) since it was read.
            let nodes: Api<Node> = Api::all(client.clone());
            match nodes.get_opt(node).await {
                Ok(None) => {}
                Ok(Some(_)) => return Err(format!("Node {node} exists again: left alone")),
                Err(e) => return Err(format!("checking Node {node}: {e}")),
            }
            force_delete(client, namespace, name).await
        }
        RepairAction::ForceDeleteStuckPod {
            namespace,
            name,
            node,
        } => {
            let client = tenant(inputs).await?;
            // Read again: a Node Ready again confirms the deletion itself.
            let nodes: Api<Node> = Api::all(client.clone());
            let ready = nodes
                .get_opt(node)
                .await
                .map_err(|e| format!("checking Node {node}: {e}"))?
                .and_then(|n| n.status?.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                return Err(format!("Node {node} is Ready again: left to its kubelet"));
            }
            force_delete(client, namespace, name).await
        }
        RepairAction::MigrateStoredVersions { crd, storage } => {
            let client = tenant(inputs).await?;
            migrate_stored_versions(&client, crd, storage).await
        }
        RepairAction::DefragmentEtcd => super::etcd_maintenance::defragment(ctx, tc).await,
        RepairAction::ResolveNoSpace => super::etcd_maintenance::resolve_nospace(ctx, tc).await,
        RepairAction::RestartControlPlanePod { pod } => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &inputs.p.namespace);
            match pods.delete(pod, &DeleteParams::default()).await {
                Ok(_) => Ok(format!("deleted pod {pod}")),
                Err(e) if crate::runtime::api::is_not_found(&e) => Ok("already gone".into()),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// Deletes a tenant Pod with grace period 0: no kubelet will confirm it.
async fn force_delete(client: Client, namespace: &str, name: &str) -> Result<String, String> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    match pods
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
    {
        Ok(_) => Ok("deleted with grace period 0".into()),
        Err(e) if crate::runtime::api::is_not_found(&e) => Ok("already gone".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn tenant(inputs: &Inputs<'_>) -> Result<Client, String> {
    let kc = inputs.admin_kubeconfig.ok_or("no admin kubeconfig yet")?;
    super::health::tenant_client(kc, TENANT_TIMEOUT).await
}

/// The storage-version migration the API server leaves to its users: every
/// object written back unchanged (so it is stored in the storage version),
/// then `status.storedVersions` trimmed to the storage version. A conflict
/// (the object changed meanwhile: it is then stored anew anyway) is fine.
async fn migrate_stored_versions(
    client: &Client,
    crd: &str,
    storage: &str,
) -> Result<String, String> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let def = crds.get(crd).await.map_err(|e| e.to_string())?;
    let gvk = GroupVersionKind::gvk(&def.spec.group, storage, &def.spec.names.kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &def.spec.names.plural);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut rewritten = 0u64;
    let mut pages = Pages::new(&api, ListParams::default().limit(LARGE_OBJECT_PAGE));
    while let Some(page) = pages.next().await {
        for obj in &page.map_err(|e| e.to_string())? {
            let ns = obj.namespace();
            let scoped: Api<DynamicObject> = match &ns {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            match scoped
                .replace(&obj.name_any(), &PostParams::default(), obj)
                .await
            {
                Ok(_) => rewritten += 1,
                Err(e)
                    if crate::runtime::api::is_conflict(&e)
                        || crate::runtime::api::is_not_found(&e) => {}
                Err(e) => return Err(format!("rewriting {}: {e}", obj.name_any())),
            }
        }
    }
    let patch = serde_json::json!({"status": {"storedVersions": [storage]}});
    crds.patch_status(crd, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("setting storedVersions: {e}"))?;
    Ok(format!("{rewritten} object(s) rewritten in {storage}"))
}

/// Lists `K` in pages, keeping what `keep` extracts from each object that
/// decodes. Objects that do not decode are counted, not fatal.
async fn list_facts<K, T>(
    api: Api<Lenient<K>>,
    lp: ListParams,
    what: &str,
    errors: &mut Vec<String>,
    mut keep: impl FnMut(K) -> Option<T>,
) -> Option<Vec<T>>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut undecodable = 0;
    // A caller's smaller page (Secrets) stands.
    let lp = match lp.limit {
        Some(_) => lp,
        None => lp.limit(PAGE),
    };
    let mut pages = Pages::new(&api, lp);
    while let Some(page) = pages.next().await {
        let items = match page {
            Ok(items) => items,
            Err(e) => {
                errors.push(format!("{what}: {e}"));
                return None;
            }
        };
        for item in items {
            match item.object {
                Ok(k) => out.extend(keep(k)),
                Err(_) => undecodable += 1,
            }
        }
    }
    if undecodable > 0 {
        errors.push(format!(
            "{what}: {undecodable} object(s) could not be read and were skipped"
        ));
    }
    Some(out)
}

async fn read_tenant(client: &Client, f: &mut Facts, errors: &mut Vec<String>) {
    let lp = ListParams::default;
    // Pods before Nodes: a Node that joins in between is then seen, so its
    // new pods are never taken for orphans.
    // Only pods bound to a node can be on a missing one.
    let bound = lp().fields("spec.nodeName!=");
    f.pods = list_facts(
        Api::<Lenient<Pod>>::all(client.clone()),
        bound,
        "Pods",
        errors,
        facts::pod,
    )
    .await;
    f.nodes = list_facts(
        Api::<Lenient<Node>>::all(client.clone()),
        lp(),
        "Nodes",
        errors,
        facts::node,
    )
    .await;
    // The tenant API does not answer: the rest would only wait as long.
    if f.pods.is_none() || f.nodes.is_none() {
        return;
    }
    f.leases = list_facts(
        Api::<Lenient<Lease>>::namespaced(client.clone(), "kube-node-lease"),
        lp(),
        "Leases",
        errors,
        facts::lease,
    )
    .await
    .map(|v| v.into_iter().collect());
    f.csrs = list_facts(
        Api::<Lenient<CertificateSigningRequest>>::all(client.clone()),
        lp(),
        "CertificateSigningRequests",
        errors,
        facts::csr,
    )
    .await;
    f.volumes = list_facts(
        Api::<Lenient<PersistentVolume>>::all(client.clone()),
        lp(),
        "PersistentVolumes",
        errors,
        facts::volume,
    )
    .await;
    f.claims = list_facts(
        Api::<Lenient<PersistentVolumeClaim>>::all(client.clone()),
        lp(),
        "PersistentVolumeClaims",
        errors,
        facts::claim,
    )
    .await;
    f.services = list_facts(
        Api::<Lenient<Service>>::all(client.clone()),
        lp(),
        "Services",
        errors,
        facts::service,
    )
    .await;
    // Which Services have a ready endpoint (webhooks and conversions call them).
    let ready_services: Option<Vec<String>> = list_facts(
        Api::<Lenient<Endpoints>>::all(client.clone()),
        lp(),
        "Endpoints",
        errors,
        facts::ready_service,
    )
    .await;
    let has_endpoint = |ns: &str, name: &str| {
        ready_services
            .as_ref()
            .map(|r| r.iter().any(|s| s == &format!("{ns}/{name}")))
    };
    f.crds = list_facts(
        Api::<Lenient<CustomResourceDefinition>>::all(client.clone()),
        lp().limit(LARGE_OBJECT_PAGE),
        "CustomResourceDefinitions",
        errors,
        |c| facts::crd(c, &has_endpoint),
    )
    .await;
    let mut webhooks = Vec::new();
    let validating = list_facts(
        Api::<Lenient<ValidatingWebhookConfiguration>>::all(client.clone()),
        lp(),
        "ValidatingWebhookConfigurations",
        errors,
        |c| Some(facts::validating_webhooks(c, &has_endpoint)),
    )
    .await;
    let mutating = list_facts(
        Api::<Lenient<MutatingWebhookConfiguration>>::all(client.clone()),
        lp(),
        "MutatingWebhookConfigurations",
        errors,
        |c| Some(facts::mutating_webhooks(c, &has_endpoint)),
    )
    .await;
    if let (Some(v), Some(m)) = (validating, mutating) {
        webhooks.extend(v.into_iter().flatten());
        webhooks.extend(m.into_iter().flatten());
        f.webhooks = Some(webhooks);
    }
    // The tenant's own TLS Secrets.
    let tls = lp()
        .fields("type=kubernetes.io/tls")
        .limit(super::health::SECRET_PAGE);
    let certs = list_facts(
        Api::<Lenient<Secret>>::all(client.clone()),
        tls,
        "TLS Secrets",
        errors,
        facts::tls_certificate,
    )
    .await;
    f.certificates.extend(certs.into_iter().flatten());
}

async fn read_control_plane(
    ctx: &Context,
    tc: &TenantCluster,
    inputs: &Inputs<'_>,
    f: &mut Facts,
    errors: &mut Vec<String>,
) {
    // kok's own certificates: leaves are renewed 30 days ahead; the CAs are not.
    for (name, pair) in &inputs.pki.leaves {
        if let Ok(t) = kok_templates::pki::not_after(&pair.cert_pem) {
            f.certificates.push(CertFact {
                object: format!("Certificate {name}"),
                not_after: t.unix_timestamp(),
                renewed_by_kok: true,
            });
        }
    }
    for (kind, pair) in &inputs.pki.cas {
        if let Ok(t) = kok_templates::pki::not_after(&pair.cert_pem) {
            f.certificates.push(CertFact {
                object: format!("CA {}", kind.name()),
                not_after: t.unix_timestamp(),
                renewed_by_kok: false,
            });
        }
    }
    // Ranges.
    let net = &tc.spec.networking;
    f.tenant_cidrs = vec![
        ("serviceCIDR".into(), net.service_cidr.clone()),
        ("podCIDR".into(), net.pod_cidr.clone()),
    ];
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    match nodes.list(&ListParams::default()).await {
        Ok(list) => {
            for n in list.items {
                let name = n.name_any();
                for cidr in n.spec.and_then(|s| s.pod_cidrs).unwrap_or_default() {
                    f.management_cidrs
                        .push((format!("Node {name} pod CIDR"), cidr));
                }
            }
        }
        Err(e) => errors.push(format!("management Nodes: {e}")),
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), "default");
    if let Ok(Some(ip)) = services
        .get_opt("kubernetes")
        .await
        .map(|s| s.and_then(|s| s.spec).and_then(|s| s.cluster_ip))
    {
        f.management_cidrs
            .push(("kubernetes Service IP".into(), format!("{ip}/32")));
    }
    // Control-plane pods.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &inputs.p.namespace);
    let selector = tenant_selector(&inputs.p.names.tenant);
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => {
            let now = f.now;
            f.components = Some(
                list.items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter_map(|p| component_fact(p, now))
                    .collect(),
            );
        }
        Err(e) => errors.push(format!("control-plane pods: {e}")),
    }
    // etcd.
    match etcd_facts(ctx, tc).await {
        Ok((members, alarms)) => {
            f.etcd = Some(members);
            f.etcd_alarms = alarms;
        }
        Err(e) => errors.push(format!("etcd: {e}")),
    }
    f.etcd_quota_bytes = tc.spec.etcd.quota_backend_bytes.unwrap_or(0);
    // Backups.
    if let Some(schedule) = tc
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.schedule.as_deref())
        .and_then(|s| kok_templates::backup::parse_schedule(s).ok())
    {
        let now = kok_templates::backup::from_unix(f.now);
        f.backup_interval_secs = kok_templates::backup::schedule_interval_secs(&schedule, now);
        f.backup_schedule_start = tc
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second());
        let last = tc
            .status
            .as_ref()
            .and_then(|s| s.backup.as_ref())
            .and_then(|b| b.last_successful_backup.clone());
        if let Some(name) = last {
            let backups: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &inputs.p.namespace);
            if let Ok(Some(b)) = backups.get_opt(&name).await {
                f.last_backup = b
                    .status
                    .as_ref()
                    .and_then(|s| s.completion_time.as_ref())
                    .or(b.metadata.creation_timestamp.as_ref())
                    .map(|t| t.0.as_second());
            }
        }
    }
}

/// Members serving on another claim than the one recorded (their data is gone).
async fn read_lost_members(
    ctx: &Context,
    tc: &TenantCluster,
    inputs: &Inputs<'_>,
    status: &TenantClusterStatus,
    f: &mut Facts,
    errors: &mut Vec<String>,
) {
    let replicas = status.etcd_replicas.unwrap_or(tc.spec.etcd.replicas);
    f.etcd_replicas = replicas;
    f.etcd_unhealthy = status
        .etcd_unhealthy_since
        .iter()
        .map(|(m, t)| (m.clone(), t.0.as_second()))
        .collect();
    f.member_unhealthy_secs = tc
        .spec
        .healing
        .member_unhealthy_seconds
        .map_or(insp::DEFAULT_MEMBER_UNHEALTHY_SECS, i64::from);
    if tc.spec.etcd.storage.ephemeral {
        return;
    }
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &inputs.p.namespace);
    let mut observed = Vec::new();
    for i in 0..replicas {
        let name = kok_templates::restore::member_claim(&inputs.p.names, i);
        match claims.get_opt(&name).await {
            Ok(c) => observed.push(kok_templates::membership::MemberVolume {
                ordinal: i,
                claim_uid: c
                    .filter(|c| c.metadata.deletion_timestamp.is_none())
                    .and_then(|c| c.metadata.uid),
                pod_ready: false,
            }),
            Err(e) => {
                errors.push(format!("etcd claims: {e}"));
                return;
            }
        }
    }
    // The claim of a member replaced because it stayed unhealthy was
    // released by kok, its data kept: not a loss to report.
    let kept_aside = status
        .etcd_member_replacement
        .as_ref()
        .filter(|r| r.kept_volume.is_some())
        .map(|r| r.member);
    f.etcd_lost = kok_templates::membership::lost_members(
        &status.etcd_member_claims,
        &inputs.p.names,
        &observed,
    )
    .into_iter()
    .filter(|(i, _)| Some(*i) != kept_aside)
    .map(|(i, _)| inputs.p.names.etcd_member(i))
    .collect();
}

fn component_fact(p: Pod, now: i64) -> Option<ComponentPodFact> {
    let component = p
        .labels()
        .get(kok_templates::names::COMPONENT_LABEL)
        .cloned()?;
    let status = p.status.clone().unwrap_or_default();
    let container = status.container_statuses.as_ref()?.first()?.clone();
    let waiting_reason = container
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone());
    let last_exit = container
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| {
            format!(
                "{} (exit {})",
                t.reason.as_deref().unwrap_or("Terminated"),
                t.exit_code
            )
        });
    let started = status
        .start_time
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(now);
    let image_tag = p
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
        .and_then(|i| i.rsplit_once(':').map(|(_, t)| t.to_string()));
    Some(ComponentPodFact {
        component,
        pod: p.name_any(),
        restarts: container.restart_count,
        waiting_reason,
        last_exit,
        ready: container.ready,
        age_secs: now - started,
        image_tag,
    })
}

/// Each member's database size and leadership, and the cluster's alarms.
async fn etcd_facts(
    ctx: &Context,
    tc: &TenantCluster,
) -> Result<(Vec<EtcdMemberFact>, Vec<(String, String)>), String> {
    let access = EtcdAccess::for_tenant(&ctx.client, tc)
        .await
        .map_err(|e| e.to_string())?;
    let mut members = Vec::new();
    for m in &access.members {
        let name = m.tls_name.clone().unwrap_or_else(|| m.url.clone());
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            let mut c = access.connect_member(m).await.map_err(|e| e.to_string())?;
            c.status().await.map_err(|e| e.to_string())
        })
        .await;
        match answer {
            Ok(Ok(s)) => {
                let id = s.header().map(|h| h.member_id()).unwrap_or_default();
                members.push(EtcdMemberFact {
                    name,
                    db_size: s.db_size(),
                    db_size_in_use: s.raft_used_db_size(),
                    is_leader: s.leader() == id,
                });
            }
            Ok(Err(e)) => warn!(member = %name, error = %e, "etcd member status"),
            Err(_) => warn!(member = %name, "etcd member status: no answer within 5s"),
        }
    }
    let alarms = super::etcd_maintenance::alarms(&access).await?;
    Ok((members, alarms))
}
