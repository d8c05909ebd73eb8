//! etcd maintenance on a running tenant: its alarms, defragmentation (on a
//! schedule, or as inspection's repair), and NOSPACE resolved. Healing and
//! inspection both call it; it decides nothing about members.

use std::time::Duration;

use etcd_client::{AlarmAction, AlarmType, CompactionOptions, GetOptions};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kok_crds::{TenantCluster, TenantClusterStatus};
use kok_templates::inspection as insp;
use kube::runtime::events::EventType;
use tracing::info;

use crate::etcd::EtcdAccess;
use crate::runtime::context::Context;

/// The cluster's alarms as `(member name, alarm)`.
pub(super) async fn alarms(
    access: &EtcdAccess,
) -> std::result::Result<Vec<(String, String)>, String> {
    let mut client = access.connect().await.map_err(|e| e.to_string())?;
    let listed = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .map_err(|e| e.to_string())?;
    if listed.alarms().is_empty() {
        return Ok(Vec::new());
    }
    let members = client.member_list().await.map_err(|e| e.to_string())?;
    Ok(listed
        .alarms()
        .iter()
        .map(|a| {
            let name = members
                .members()
                .iter()
                .find(|m| m.id() == a.member_id())
                .map(|m| m.name().to_string())
                .unwrap_or_else(|| format!("{:x}", a.member_id()));
            let alarm = match a.alarm() {
                AlarmType::Nospace => "NOSPACE".to_string(),
                AlarmType::Corrupt => "CORRUPT".to_string(),
                other => format!("{other:?}").to_uppercase(),
            };
            (name, alarm)
        })
        .collect())
}

/// Runs the scheduled defragmentation when a slot of
/// `spec.healing.defragmentationSchedule` passed since the last one (at
/// most one catch-up after downtime). Recorded in status before it acts.
pub(super) async fn scheduled_defragmentation(
    ctx: &Context,
    tc: &TenantCluster,
    status: &mut TenantClusterStatus,
) {
    let Some(schedule) = tc
        .spec
        .healing
        .defragmentation_schedule
        .as_deref()
        .and_then(|s| kok_templates::backup::parse_schedule(s).ok())
    else {
        return;
    };
    let from_unix = kok_templates::backup::from_unix;
    let last = status
        .last_defragmentation_time
        .as_ref()
        .or(tc.metadata.creation_timestamp.as_ref())
        .map(|t| from_unix(t.0.as_second()))
        .unwrap_or_else(|| from_unix(0));
    let now = from_unix(Timestamp::now().as_second());
    let Some(slot) = kok_templates::backup::due(&schedule, last, now).run else {
        return;
    };
    status.last_defragmentation_time = Timestamp::from_second(slot.timestamp()).ok().map(Time);
    let (t, reason, note) = match defragment(ctx, tc).await {
        Ok(done) => (
            EventType::Normal,
            "Defragmented",
            format!("scheduled defragmentation: {done}"),
        ),
        Err(e) => (
            EventType::Warning,
            "DefragmentationFailed",
            format!("scheduled defragmentation: {e}"),
        ),
    };
    info!("{note}");
    ctx.publish(tc, t, reason, "Defragment", &note).await;
}

/// Defragments every member that answers, followers first and the leader
/// last (a member blocks while it defragments; the leader's pause stalls
/// every write, so it goes once).
pub(super) async fn defragment(
    ctx: &Context,
    tc: &TenantCluster,
) -> std::result::Result<String, String> {
    let access = EtcdAccess::for_tenant(&ctx.client, tc)
        .await
        .map_err(|e| e.to_string())?;
    defragment_members(&access).await
}

async fn defragment_members(access: &EtcdAccess) -> std::result::Result<String, String> {
    let mut order = Vec::new();
    for m in &access.members {
        let mut c = access.connect_member(m).await.map_err(|e| e.to_string())?;
        let s = c.status().await.map_err(|e| e.to_string())?;
        let id = s.header().map(|h| h.member_id()).unwrap_or_default();
        order.push((s.leader() == id, m.clone(), s.db_size()));
    }
    order.sort_by_key(|(leader, _, _)| *leader);
    let mut done = Vec::new();
    for (_, m, before) in order {
        let mut c = access.connect_member(&m).await.map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(120), c.defragment())
            .await
            .map_err(|_| format!("{}: defragmentation took over 120s", m.url))?
            .map_err(|e| format!("{}: {e}", m.url))?;
        let after = c.status().await.map(|s| s.db_size()).unwrap_or(before);
        done.push(format!(
            "{} {:.1} -> {:.1} MiB",
            m.tls_name.clone().unwrap_or_else(|| m.url.clone()),
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        ));
    }
    Ok(done.join(", "))
}

/// NOSPACE: compact the history to the current revision, defragment every
/// member, and disarm the alarm once every database is below 80% of the
/// quota. If live data alone fills the quota, the alarm stays: disarming
/// would only let etcd fill up again (raise `spec.etcd.quotaBackendBytes`).
pub(super) async fn resolve_nospace(
    ctx: &Context,
    tc: &TenantCluster,
) -> std::result::Result<String, String> {
    let access = EtcdAccess::for_tenant(&ctx.client, tc)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = access.connect().await.map_err(|e| e.to_string())?;
    let head = client
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .map_err(|e| e.to_string())?;
    let revision = head.header().map(|h| h.revision()).unwrap_or_default();
    match client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
    {
        Ok(_) => {}
        // Compacted to it already (an earlier attempt).
        Err(e) if e.to_string().contains("compacted") => {}
        Err(e) => return Err(format!("compacting to revision {revision}: {e}")),
    }
    let defragmented = defragment_members(&access).await?;
    let quota = tc
        .spec
        .etcd
        .quota_backend_bytes
        .unwrap_or(insp::ETCD_DEFAULT_QUOTA);
    for m in &access.members {
        let mut c = access.connect_member(m).await.map_err(|e| e.to_string())?;
        let size = c.status().await.map_err(|e| e.to_string())?.db_size();
        if size * 10 > quota * 8 {
            return Err(format!(
                "after compaction and defragmentation {} still holds {:.1} MiB of a {:.1} MiB quota: the live data fills it; raise spec.etcd.quotaBackendBytes (the alarm stays armed)",
                m.tls_name.clone().unwrap_or_default(),
                size as f64 / 1048576.0,
                quota as f64 / 1048576.0
            ));
        }
    }
    let listed = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .map_err(|e| e.to_string())?;
    for a in listed
        .alarms()
        .iter()
        .filter(|a| a.alarm() == AlarmType::Nospace)
    {
        let mut options = etcd_client::AlarmOptions::new();
        options.with_member(a.member_id());
        client
            .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options))
            .await
            .map_err(|e| format!("disarming NOSPACE: {e}"))?;
    }
    Ok(format!(
        "compacted to revision {revision}; defragmented {defragmented}; NOSPACE disarmed"
    ))
}
