//! The record of repairs and who may repair now: each check's hourly budget
//! and the fleet-wide breaker. Healing and inspection both repair; this is
//! where their budget is kept and their repairs are written down.

use k8s_openapi::jiff::Timestamp;
use kok_crds::{Repair, TenantCluster, TenantClusterStatus};
use kok_templates::inspection as insp;

use crate::runtime::context::Context;

/// Why a control-plane repair (a pod restart, the replacement of an
/// unhealthy etcd member) may not run now: the tenant's hourly budget for
/// that check is spent, or too many tenants are unhealthy at once (fleet
/// breaker).
pub(super) fn repair_refused(
    ctx: &Context,
    tc: &TenantCluster,
    status: &TenantClusterStatus,
    check: &str,
) -> Option<String> {
    let max = tc
        .spec
        .healing
        .max_repairs_per_hour
        .unwrap_or(insp::DEFAULT_MAX_REPAIRS_PER_HOUR);
    let times: Vec<i64> = status
        .repairs
        .iter()
        .filter(|r| r.check == check)
        .map(|r| r.time.0.as_second())
        .collect();
    if !insp::repair_allowed(&times, Timestamp::now().as_second(), max) {
        return Some(format!(
            "{max} {check} repairs in the last hour (spec.healing.maxRepairsPerHour)"
        ));
    }
    let (unhealthy, total) = ctx.fleet_health();
    if insp::circuit_open(
        unhealthy,
        total,
        FLEET_MAX_UNHEALTHY_PERCENT,
        FLEET_MIN_UNHEALTHY,
    ) {
        return Some(format!(
            "{unhealthy} of {total} namespaces have unhealthy tenants at once: automatic restarts are paused fleet-wide (likely a shared cause)"
        ));
    }
    None
}

/// The fleet breaker opens above this share of unhealthy tenants ...
const FLEET_MAX_UNHEALTHY_PERCENT: u32 = 50;
/// ... once at least this many are.
const FLEET_MIN_UNHEALTHY: usize = 3;

/// Appends to `status.repairs`, keeping the newest [`insp::MAX_REPAIRS`].
/// Control-plane restarts of the last hour are kept past that: the restart
/// budget counts them.
pub(super) fn push_repair(status: &mut TenantClusterStatus, repair: Repair) {
    status.repairs.push(repair);
    let hour_ago = Timestamp::now().as_second() - 3600;
    let mut excess = status.repairs.len().saturating_sub(insp::MAX_REPAIRS);
    status.repairs.retain(|r| {
        // The budgets' records are never trimmed while they count.
        let budgeted =
            r.check == insp::CONTROL_PLANE_CRASH_LOOP || r.check == insp::ETCD_MEMBER_UNHEALTHY;
        let counted = budgeted && r.time.0.as_second() > hour_ago;
        if excess > 0 && !counted {
            excess -= 1;
            return false;
        }
        true
    });
}
