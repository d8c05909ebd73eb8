//! Pure backup policy: the schedule (which slot is due), retention (which
//! backups go), names and artifact keys, and validation of `spec.backup`.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use kok_crds::{BackupSpec, Retention, S3Destination};

use crate::endpoint::check_endpoint;
pub use crate::endpoint::PrivateEndpoints;
use crate::field_error::{FieldError, Policy};

/// Parses a retention age: a whole number followed by `s`, `m`, `h` or `d`.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let unit = text.chars().last().ok_or("empty")?;
    let factor = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("{text:?} does not end in s, m, h or d")),
    };
    let number: u64 = text[..text.len() - 1]
        .parse()
        .map_err(|_| format!("{text:?} is not a number followed by s, m, h or d"))?;
    if number == 0 {
        return Err("must be greater than zero".into());
    }
    number
        .checked_mul(factor)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

pub fn parse_schedule(text: &str) -> Result<Cron, String> {
    if text.split_whitespace().count() != 5 {
        return Err(format!(
            "{text:?} is not a 5-field cron schedule (minute hour day month weekday)"
        ));
    }
    Cron::from_str(text).map_err(|e| format!("{text:?}: {e}"))
}

/// Where the operator (and restore Jobs) mount the filesystem destinations.
pub const BACKUPS_MOUNT: &str = "/var/lib/kok/backups";

/// Field errors of `spec.backup`, named by path.
pub fn validate_backup(spec: &BackupSpec, policy: &Policy) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |field: &str, reason: String| {
        errors.push(FieldError {
            field: format!("spec.backup.{field}"),
            reason,
        })
    };
    if let Some(schedule) = &spec.schedule {
        if let Err(e) = parse_schedule(schedule) {
            err("schedule", e);
        }
    }
    if let Some(age) = &spec.retention.max_age {
        if let Err(e) = parse_age(age) {
            err("retention.maxAge", e);
        }
    }
    if spec.retention.keep_last == Some(0) {
        err(
            "retention.keepLast",
            "must be at least 1 (the newest backup is always kept)".into(),
        );
    }
    let d = &spec.destination;
    match (&d.filesystem, &d.s3) {
        (Some(_), Some(_)) | (None, None) => {
            err("destination", "set exactly one of filesystem and s3".into())
        }
        (Some(fs), None)
            if !fs.path.starts_with(&format!("{}/", BACKUPS_MOUNT))
                || fs.path.split('/').any(|part| part == "..") =>
        {
            err(
                "destination.filesystem.path",
                format!(
                    "{:?} is not under {} (the backup volume mounted in the operator)",
                    fs.path, BACKUPS_MOUNT
                ),
            )
        }
        (None, Some(s3)) => {
            for (field, reason) in s3_errors(s3, policy) {
                err(&format!("destination.s3.{field}"), reason);
            }
        }
        _ => {}
    }
    errors
}

/// Why this operator cannot keep backups where `spec` sends them, if it
/// cannot: a filesystem destination without durable storage (the backups
/// directory is then an emptyDir: backups would report success and vanish
/// with the pod). A valid spec, refused by this installation: backups and
/// restores are refused, the control plane is still run.
pub fn storage_refusal(spec: &BackupSpec, policy: &Policy) -> Option<FieldError> {
    (spec.destination.filesystem.is_some() && !policy.durable_backups).then(|| FieldError {
        field: "spec.backup.destination.filesystem".into(),
        reason: format!(
            "the operator has no durable backup storage: {BACKUPS_MOUNT} is a directory \
             in its pod (an emptyDir) and a backup there vanishes with the pod; \
             use an s3 destination, or have the platform set the chart value \
             backups.persistentVolumeClaim (KOK_BACKUP_CLAIM) or backups.hostPath \
             (KOK_BACKUP_HOST_PATH)"
        ),
    })
}

/// Problems of an S3 destination as (field under `s3`, reason).
fn s3_errors(s3: &S3Destination, policy: &Policy) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    if let Err(e) = check_bucket(&s3.bucket) {
        errors.push(("bucket", e));
    }
    if let Some(prefix) = &s3.prefix {
        if prefix.split('/').any(|part| part == "..") {
            errors.push(("prefix", format!("{prefix:?} must not contain `..`")));
        }
    }
    if let Some(endpoint) = &s3.endpoint {
        if let Err(e) = check_endpoint(endpoint, policy.allow_http_s3, &policy.private_s3) {
            errors.push(("endpoint", e));
        }
    }
    if s3.region.trim().is_empty() {
        errors.push(("region", "must not be empty".into()));
    }
    if s3.credentials_secret.is_empty() {
        errors.push((
            "credentialsSecret",
            "must name a Secret with accessKeyID and secretAccessKey".into(),
        ));
    }
    errors
}

/// S3 bucket naming rules: 3-63 of lowercase letters, digits, dots and
/// hyphens, starting and ending with a letter or digit, not an IP address.
pub fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !ok_chars
        || !alnum(bucket.bytes().next())
        || !alnum(bucket.bytes().last())
        || bucket.contains("..")
        || bucket.parse::<Ipv4Addr>().is_ok()
    {
        return Err(format!(
            "{bucket:?} is not an S3 bucket name (3-63 lowercase letters, digits, dots, hyphens; \
             starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// What the schedule asks for now.
#[derive(Debug, PartialEq, Eq)]
pub struct Due {
    /// The slot to run now, if one passed since the last run. Several missed
    /// slots (operator down) collapse into the newest one: at most one catch-up.
    pub run: Option<DateTime<Utc>>,
    /// The next slot after `now`: when to look again.
    pub next: Option<DateTime<Utc>>,
}

/// `last`: the slot of the last run started (from status), or the time the
/// schedule started to count (the TenantCluster's creation) if none ran yet.
pub fn due(schedule: &Cron, last: DateTime<Utc>, now: DateTime<Utc>) -> Due {
    let newest_passed = schedule
        .find_previous_occurrence(&now, true)
        .ok()
        .filter(|slot| *slot > last);
    Due {
        run: newest_passed,
        next: schedule.find_next_occurrence(&now, false).ok(),
    }
}

/// The longest gap between two runs of `schedule` around `now` (seconds):
/// what "overdue" is measured against.
pub fn schedule_interval_secs(schedule: &Cron, now: DateTime<Utc>) -> Option<i64> {
    let previous = schedule.find_previous_occurrence(&now, true).ok()?;
    let next = schedule.find_next_occurrence(&now, false).ok()?;
    let after = schedule.find_next_occurrence(&next, false).ok()?;
    Some(((next - previous).num_seconds()).max((after - next).num_seconds()))
}

/// A scheduled backup's name: the tenant and its slot, so a restarted
/// operator that tries the same slot again hits "already exists", not a duplicate.
pub fn scheduled_backup_name(tenant: &str, slot: DateTime<Utc>) -> String {
    format!("{tenant}-{}", slot.format("%Y%m%d-%H%M"))
}

/// Where a backup's artifact lives inside its destination.
pub fn artifact_key(namespace: &str, tenant: &str, backup: &str) -> String {
    format!("{namespace}/{tenant}/{backup}.db")
}

/// Label on scheduled EtcdBackups: the uid of the TenantCluster that made them.
pub const TENANT_UID_LABEL: &str = "kok.dev/tenant-uid";

/// One incarnation of a TenantCluster name: a cluster deleted and created
/// again under the same name is a different one, with other data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incarnation {
    pub uid: String,
    /// `metadata.creationTimestamp`.
    pub created: Option<DateTime<Utc>>,
}

impl Incarnation {
    /// Whether a backup recording `tenant_uid` (status, else the schedule's
    /// label) and created at `created` is of this incarnation. Backups from
    /// before uids were recorded count as this one's only if created since this
    /// one was: anything older may be a predecessor's and is never ours to delete.
    pub fn made(&self, tenant_uid: Option<&str>, created: Option<DateTime<Utc>>) -> bool {
        match tenant_uid {
            Some(uid) => uid == self.uid,
            None => matches!((created, self.created), (Some(b), Some(c)) if b >= c),
        }
    }
}

/// What retention needs to know about one EtcdBackup.
#[derive(Debug, Clone)]
pub struct BackupRecord {
    pub name: String,
    /// Completion (or, if unfinished, creation) time.
    pub time: DateTime<Utc>,
    pub succeeded: bool,
    pub finished: bool,
    /// A restore refers to it.
    pub in_use: bool,
    /// The TenantCluster uid it recorded (status, else label); none before uids were recorded.
    pub tenant_uid: Option<String>,
    /// `metadata.creationTimestamp` of the EtcdBackup.
    pub created: Option<DateTime<Utc>>,
    /// The etcd cluster ID the snapshot came from (none if unknown).
    pub etcd_cluster_id: Option<String>,
    /// Taken by the schedule (label `kok.dev/scheduled`). Only these are
    /// pruned: a backup taken before an upgrade (its rollback point) or by
    /// hand stays until someone deletes it.
    pub scheduled: bool,
}

/// Scheduled backups kept when `spec.backup.retention` sets neither
/// `keepLast` nor `maxAge`: without a bound, EtcdBackup objects and
/// artifacts would grow for ever.
pub const DEFAULT_KEEP_LAST: u32 = 24;

/// The backups retention deletes. Only backups of `current` count and can go:
/// a predecessor's (same name, other uid) are neither deleted nor push out
/// this incarnation's, so an empty new cluster cannot evict the last good data.
/// Never the newest successful one, never one a restore uses, never one still
/// running. Failed backups count against the same limits as successful ones,
/// among themselves. Within an incarnation, only snapshots of the etcd cluster
/// the newest successful backup came from count: when etcd was replaced (a
/// wiped volume, a restore: a new cluster ID), snapshots of the new cluster
/// never push out the older cluster's, which stay until deleted by hand.
///
/// Only scheduled backups count and can go ([`BackupRecord::scheduled`]);
/// with no limit set, the newest [`DEFAULT_KEEP_LAST`] are kept.
pub fn retention_victims(
    backups: &[BackupRecord],
    retention: &Retention,
    current: &Incarnation,
    now: DateTime<Utc>,
) -> Vec<String> {
    let keep_last = match (retention.keep_last, &retention.max_age) {
        (None, None) => Some(DEFAULT_KEEP_LAST),
        (n, _) => n,
    };
    let max_age = retention
        .max_age
        .as_deref()
        .and_then(|a| parse_age(a).ok())
        .and_then(|d| chrono::Duration::from_std(d).ok());
    let ours = |b: &&BackupRecord| current.made(b.tenant_uid.as_deref(), b.created);
    let live_cluster = backups
        .iter()
        .filter(ours)
        .filter(|b| b.finished && b.succeeded)
        .max_by(|a, b| a.time.cmp(&b.time).then(a.name.cmp(&b.name)))
        .and_then(|b| b.etcd_cluster_id.clone());
    let same_cluster = |b: &&BackupRecord| match (&live_cluster, &b.etcd_cluster_id) {
        (Some(live), Some(id)) => live == id,
        _ => true,
    };
    let mut victims = Vec::new();
    for succeeded in [true, false] {
        let mut group: Vec<&BackupRecord> = backups
            .iter()
            .filter(|b| b.finished && b.succeeded == succeeded && b.scheduled)
            .filter(ours)
            .filter(same_cluster)
            .collect();
        group.sort_by(|a, b| b.time.cmp(&a.time).then(b.name.cmp(&a.name)));
        for (i, b) in group.iter().enumerate() {
            let protected = b.in_use || (succeeded && i == 0);
            let too_many = keep_last.is_some_and(|n| i >= n as usize);
            let too_old = max_age.is_some_and(|age| now - b.time > age);
            if !protected && (too_many || too_old) {
                victims.push(b.name.clone());
            }
        }
    }
    victims
}

pub fn from_unix(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 0).single().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kok_crds::{Destination, FilesystemDestination, S3Destination};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn ages_parse_with_units_and_refuse_the_rest() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_age("7w").is_err());
        assert!(parse_age("h").is_err());
        assert!(parse_age("0d").is_err());
        assert!(parse_age("").is_err());
        assert!(
            parse_age("99999999999999999d").is_err(),
            "overflow is refused, not wrapped"
        );
    }

    #[test]
    fn a_due_slot_runs_once_and_missed_slots_collapse() {
        let every_hour = parse_schedule("0 * * * *").unwrap();
        // Nothing passed since the last run: nothing to do, look again at 11:00.
        let d = due(
            &every_hour,
            at("2026-01-01T10:00:00Z"),
            at("2026-01-01T10:30:00Z"),
        );
        assert_eq!(d.run, None);
        assert_eq!(d.next, Some(at("2026-01-01T11:00:00Z")));
        // The operator was down from 10:30 to 13:20: one run, for 13:00.
        let d = due(
            &every_hour,
            at("2026-01-01T10:00:00Z"),
            at("2026-01-01T13:20:00Z"),
        );
        assert_eq!(d.run, Some(at("2026-01-01T13:00:00Z")));
        // Exactly on the slot, it is due.
        let d = due(
            &every_hour,
            at("2026-01-01T10:00:00Z"),
            at("2026-01-01T11:00:00Z"),
        );
        assert_eq!(d.run, Some(at("2026-01-01T11:00:00Z")));
        // After recording 11:00 as run, the same instant is no longer due.
        let d = due(
            &every_hour,
            at("2026-01-01T11:00:00Z"),
            at("2026-01-01T11:00:30Z"),
        );
        assert_eq!(d.run, None);
    }

    #[test]
    fn a_schedule_interval_is_its_longest_gap() {
        let now = at("2026-03-04T05:06:07Z");
        let hourly = parse_schedule("0 * * * *").unwrap();
        assert_eq!(schedule_interval_secs(&hourly, now), Some(3600));
        let nightly = parse_schedule("0 2 * * *").unwrap();
        assert_eq!(schedule_interval_secs(&nightly, now), Some(86400));
    }

    #[test]
    fn scheduled_names_are_stable_per_slot() {
        let slot = at("2026-03-04T05:06:00Z");
        assert_eq!(scheduled_backup_name("demo", slot), "demo-20260304-0506");
        assert_eq!(
            scheduled_backup_name("demo", slot),
            scheduled_backup_name("demo", slot)
        );
    }

    fn record(name: &str, time: &str, succeeded: bool) -> BackupRecord {
        BackupRecord {
            name: name.into(),
            time: at(time),
            succeeded,
            finished: true,
            in_use: false,
            tenant_uid: Some("uid-now".into()),
            created: Some(at(time)),
            etcd_cluster_id: None,
            scheduled: true,
        }
    }

    #[test]
    fn retention_prunes_only_scheduled_backups_and_bounds_them_by_default() {
        let mut backups: Vec<BackupRecord> = (0..30)
            .map(|i| {
                record(
                    &format!("s{i:02}"),
                    &format!("2026-01-01T{:02}:{:02}:00Z", i / 60, i % 60),
                    true,
                )
            })
            .collect();
        // The rollback point of an upgrade and one taken by hand, both old.
        let mut pre_upgrade = record("pre-upgrade", "2025-12-01T00:00:00Z", true);
        pre_upgrade.scheduled = false;
        let mut by_hand = record("by-hand", "2025-12-02T00:00:00Z", true);
        by_hand.scheduled = false;
        backups.push(pre_upgrade);
        backups.push(by_hand);
        let none = Retention {
            keep_last: None,
            max_age: None,
        };
        let mut v = retention_victims(&backups, &none, &current(), at("2026-01-02T00:00:00Z"));
        v.sort();
        let expected: Vec<String> = (0..30 - DEFAULT_KEEP_LAST as usize)
            .map(|i| format!("s{i:02}"))
            .collect();
        assert_eq!(v, expected, "the oldest scheduled ones beyond the default");
        let strict = Retention {
            keep_last: Some(1),
            max_age: Some("1m".into()),
        };
        let v = retention_victims(&backups, &strict, &current(), at("2026-02-01T00:00:00Z"));
        assert!(
            !v.contains(&"pre-upgrade".to_string()) && !v.contains(&"by-hand".to_string()),
            "{v:?}"
        );
        assert_eq!(v.len(), 29, "every scheduled one but the newest");
        // An age limit alone applies no count default.
        let by_age = Retention {
            keep_last: None,
            max_age: Some("7d".into()),
        };
        assert!(
            retention_victims(&backups, &by_age, &current(), at("2026-01-02T00:00:00Z")).is_empty()
        );
    }

    /// The TenantCluster as it is now: uid-now, created on 2025-06-01.
    fn current() -> Incarnation {
        Incarnation {
            uid: "uid-now".into(),
            created: Some(at("2025-06-01T00:00:00Z")),
        }
    }

    #[test]
    fn retention_keeps_the_newest_n() {
        let backups = vec![
            record("b1", "2026-01-01T01:00:00Z", true),
            record("b2", "2026-01-01T02:00:00Z", true),
            record("b3", "2026-01-01T03:00:00Z", true),
            record("b4", "2026-01-01T04:00:00Z", true),
        ];
        let r = Retention {
            keep_last: Some(2),
            max_age: None,
        };
        let mut v = retention_victims(&backups, &r, &current(), at("2026-01-01T05:00:00Z"));
        v.sort();
        assert_eq!(v, vec!["b1", "b2"]);
    }

    #[test]
    fn retention_by_age_never_deletes_the_newest_success_or_one_in_use() {
        let mut backups = vec![
            record("old-ok", "2026-01-01T00:00:00Z", true),
            record("older-ok", "2025-12-31T00:00:00Z", true),
            record("old-failed", "2026-01-01T00:30:00Z", false),
        ];
        backups[1].in_use = true;
        let r = Retention {
            keep_last: None,
            max_age: Some("1h".into()),
        };
        // Everything is older than an hour: the newest success stays, so does
        // the one a restore uses; the failed one goes.
        let v = retention_victims(&backups, &r, &current(), at("2026-01-02T00:00:00Z"));
        assert_eq!(v, vec!["old-failed"]);
    }

    #[test]
    fn snapshots_of_a_replaced_etcd_never_push_out_the_old_clusters() {
        // etcd was wiped (or restored) after b2: b3 and b4 come from a new
        // cluster ID, and the old cluster's last good data must survive them.
        let mut backups = vec![
            record("b1", "2026-01-01T01:00:00Z", true),
            record("b2", "2026-01-01T02:00:00Z", true),
            record("b3", "2026-01-01T03:00:00Z", true),
            record("b4", "2026-01-01T04:00:00Z", true),
            record("b5", "2026-01-01T05:00:00Z", true),
        ];
        for (b, id) in backups.iter_mut().zip(["old", "old", "new", "new", "new"]) {
            b.etcd_cluster_id = Some(id.into());
        }
        let r = Retention {
            keep_last: Some(2),
            max_age: Some("1h".into()),
        };
        let v = retention_victims(&backups, &r, &current(), at("2026-01-03T00:00:00Z"));
        assert_eq!(v, vec!["b4", "b3"], "only the live cluster's are trimmed");
    }

    #[test]
    fn retention_leaves_running_backups_alone() {
        let mut running = record("running", "2025-01-01T00:00:00Z", false);
        running.finished = false;
        let backups = vec![running, record("ok", "2026-01-01T00:00:00Z", true)];
        let r = Retention {
            keep_last: Some(1),
            max_age: Some("1s".into()),
        };
        assert!(retention_victims(&backups, &r, &current(), at("2026-02-01T00:00:00Z")).is_empty());
    }

    #[test]
    fn retention_never_crosses_a_recreation_of_the_cluster() {
        // The old cluster's good backups, then the new (empty) cluster's.
        let mut old1 = record("old-1", "2025-05-01T00:00:00Z", true);
        let mut old2 = record("old-2", "2025-05-02T00:00:00Z", true);
        let mut old_failed = record("old-failed", "2025-05-03T00:00:00Z", false);
        for b in [&mut old1, &mut old2, &mut old_failed] {
            b.tenant_uid = Some("uid-before".into());
        }
        let backups = vec![
            old1,
            old2,
            old_failed,
            record("new-1", "2025-06-02T00:00:00Z", true),
            record("new-2", "2025-06-03T00:00:00Z", true),
            record("new-3", "2025-06-04T00:00:00Z", true),
        ];
        let r = Retention {
            keep_last: Some(1),
            max_age: Some("1d".into()),
        };
        let mut v = retention_victims(&backups, &r, &current(), at("2025-07-01T00:00:00Z"));
        v.sort();
        // The old incarnation's are neither deleted nor counted: new-3 is this
        // cluster's newest, so it stays although it is older than maxAge.
        assert_eq!(v, vec!["new-1", "new-2"]);
    }

    #[test]
    fn backups_without_a_uid_belong_to_the_cluster_created_before_them() {
        let c = current();
        let born = at("2025-06-01T00:00:00Z");
        assert!(c.made(None, Some(born)), "same second: made by this one");
        assert!(c.made(None, Some(at("2025-06-01T00:00:01Z"))));
        assert!(
            !c.made(None, Some(at("2025-05-31T23:59:59Z"))),
            "a predecessor's"
        );
        assert!(!c.made(None, None), "unknown age: never ours to delete");
        let unborn = Incarnation {
            uid: "uid-now".into(),
            created: None,
        };
        assert!(!unborn.made(None, Some(born)));
        // A recorded uid decides, whatever the times say.
        assert!(c.made(Some("uid-now"), Some(at("2020-01-01T00:00:00Z"))));
        assert!(!c.made(Some("uid-other"), Some(at("2030-01-01T00:00:00Z"))));

        let mut legacy_old = record("legacy-old", "2025-05-01T00:00:00Z", true);
        legacy_old.tenant_uid = None;
        let mut legacy_new = record("legacy-new", "2025-06-02T00:00:00Z", true);
        legacy_new.tenant_uid = None;
        let backups = vec![
            legacy_old,
            legacy_new,
            record("new", "2025-06-03T00:00:00Z", true),
        ];
        let r = Retention {
            keep_last: Some(1),
            max_age: None,
        };
        let v = retention_victims(&backups, &r, &c, at("2025-07-01T00:00:00Z"));
        assert_eq!(v, vec!["legacy-new"]);
    }

    fn spec(destination: Destination) -> BackupSpec {
        BackupSpec {
            schedule: Some("*/5 * * * *".into()),
            retention: Retention::default(),
            destination,
            verify: false,
            deletion_policy: Default::default(),
            encryption: None,
        }
    }

    #[test]
    fn backup_spec_errors_name_the_field() {
        let fs = Destination {
            filesystem: Some(FilesystemDestination {
                path: "/var/lib/kok/backups/prod".into(),
            }),
            s3: None,
        };
        let durable = Policy {
            durable_backups: true,
            ..Default::default()
        };
        assert!(validate_backup(&spec(fs.clone()), &durable).is_empty());

        let mut bad = spec(fs.clone());
        bad.schedule = Some("every hour".into());
        bad.retention.max_age = Some("3 weeks".into());
        bad.retention.keep_last = Some(0);
        let fields: Vec<String> = validate_backup(&bad, &durable)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.backup.schedule",
                "spec.backup.retention.maxAge",
                "spec.backup.retention.keepLast"
            ]
        );

        let both = Destination {
            s3: Some(S3Destination {
                bucket: "b".into(),
                prefix: None,
                endpoint: None,
                region: "us-east-1".into(),
                credentials_secret: "creds".into(),
            }),
            ..fs
        };
        assert_eq!(
            validate_backup(&spec(both), &durable)[0].field,
            "spec.backup.destination"
        );
        let relative = Destination {
            filesystem: Some(FilesystemDestination {
                path: "backups".into(),
            }),
            s3: None,
        };
        assert_eq!(
            validate_backup(&spec(relative), &durable)[0].field,
            "spec.backup.destination.filesystem.path"
        );
    }

    #[test]
    fn filesystem_destinations_need_durable_backup_storage() {
        // The chart's default: the backups directory is an emptyDir.
        let fs = spec(Destination {
            filesystem: Some(FilesystemDestination {
                path: "/var/lib/kok/backups/prod".into(),
            }),
            s3: None,
        });
        // A valid spec, which this installation cannot honour.
        assert!(validate_backup(&fs, &Policy::default()).is_empty());
        let refusal = storage_refusal(&fs, &Policy::default()).expect("refused");
        assert_eq!(refusal.field, "spec.backup.destination.filesystem");
        assert!(refusal.reason.contains("backups.hostPath"), "{refusal}");
        let durable = Policy {
            durable_backups: true,
            ..Default::default()
        };
        assert_eq!(storage_refusal(&fs, &durable), None);
        // S3 needs no backups directory.
        let s3 = s3_spec(|_| {});
        assert_eq!(storage_refusal(&s3, &Policy::default()), None);
    }

    fn s3_spec(f: impl FnOnce(&mut S3Destination)) -> BackupSpec {
        let mut s3 = S3Destination {
            bucket: "kok-backups".into(),
            prefix: Some("prod/eu".into()),
            endpoint: Some("https://minio.example.com:9000".into()),
            region: "us-east-1".into(),
            credentials_secret: "creds".into(),
        };
        f(&mut s3);
        spec(Destination {
            filesystem: None,
            s3: Some(s3),
        })
    }

    fn s3_fields(spec: &BackupSpec, allow_http_s3: bool) -> Vec<String> {
        let policy = Policy {
            allow_http_s3,
            ..Default::default()
        };
        validate_backup(spec, &policy)
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    const ENDPOINT: &str = "spec.backup.destination.s3.endpoint";

    #[test]
    fn s3_endpoints_are_https_urls_and_never_metadata_services() {
        for ok in [
            "https://minio.example.com:9000",
            "https://s3.eu-central-1.amazonaws.com",
            "https://203.0.113.5:9000/",
            "https://[2001:db8::1]:9000",
            "HTTPS://Minio.Example.COM.",
        ] {
            assert!(
                s3_fields(&s3_spec(|s| s.endpoint = Some(ok.into())), false).is_empty(),
                "{ok}"
            );
        }
        for bad in [
            "minio.example.com:9000",
            "ftp://minio.example.com",
            "https://",
            "https://user:pw@minio.example.com",
            "https://minio.example.com/?x=1",
            "https://minio.example.com:99999",
            "https://minio.example.com:",
            "https://exa mple.com",
            "https://169.254.169.254",
            "https://169.254.169.254:80/latest/meta-data",
            "https://169.254.0.1",
            "https://[fe80::1]",
            "https://[febf::1]:9000",
            "https://[::ffff:169.254.169.254]",
            "https://[fd00:ec2::254]",
            "https://metadata.google.internal",
            "https://METADATA.google.internal./computeMetadata/v1",
            // Other spellings of 169.254.169.254 that URL parsers accept.
            "https://2852039166",
            "https://0xa9fea9fe",
            "https://169.254.43518",
            "https://0251.0376.0251.0376",
            "https://169%2e254%2e169%2e254",
        ] {
            let spec = s3_spec(|s| s.endpoint = Some(bad.into()));
            assert_eq!(s3_fields(&spec, true), vec![ENDPOINT], "{bad}");
        }
    }

    #[test]
    fn private_endpoints_need_the_operator_allowlist() {
        let local = Policy {
            allow_http_s3: false,
            private_s3: PrivateEndpoints::parse("127.0.0.0/8, minio.minio.svc").unwrap(),
            ..Default::default()
        };
        for private in [
            "https://127.0.0.1:6443",
            "https://10.96.0.1",
            "https://172.16.5.5:9000",
            "https://192.168.1.10",
            "https://100.64.0.1",
            "https://[::1]:9000",
            "https://[fd12::5]",
            "https://[::ffff:10.0.0.1]",
            "https://localhost:9000",
            "https://minio:9000",
            "https://minio.minio.svc",
            "https://kubernetes.default.svc.cluster.local",
            "https://vault.corp.internal",
        ] {
            let spec = s3_spec(|s| s.endpoint = Some(private.into()));
            let errors = validate_backup(&spec, &Policy::default());
            assert_eq!(errors.len(), 1, "{private}");
            assert!(
                errors[0].reason.contains("KOK_S3_PRIVATE_ENDPOINTS"),
                "{}",
                errors[0]
            );
        }
        for allowed in ["https://127.0.0.1:9000", "https://minio.minio.svc:9000"] {
            let spec = s3_spec(|s| s.endpoint = Some(allowed.into()));
            assert!(validate_backup(&spec, &local).is_empty(), "{allowed}");
        }
        let other = s3_spec(|s| s.endpoint = Some("https://10.0.0.1".into()));
        assert_eq!(validate_backup(&other, &local).len(), 1, "not in the list");
        // The allowlist never opens link-local addresses.
        let wide = PrivateEndpoints::parse("0.0.0.0/0").unwrap();
        assert!(!wide.allows_ip("169.254.169.254".parse().unwrap()));
        assert!(PrivateEndpoints::parse("10.0.0.0/33").is_err());
        let again = PrivateEndpoints::parse(&local.private_s3.to_string()).unwrap();
        assert_eq!(again, local.private_s3, "{}", local.private_s3);
        assert!(PrivateEndpoints::parse("https://x").is_err());
    }

    #[test]
    fn a_resolved_address_is_checked_against_the_allowlist() {
        let allowed = PrivateEndpoints::parse("10.96.0.0/12,minio.minio.svc").unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(allowed.may_connect("s3.amazonaws.com", ip("52.219.0.1")));
        assert!(
            !allowed.may_connect("rebind.example.com", ip("127.0.0.1")),
            "a public name that resolves to loopback"
        );
        assert!(allowed.may_connect("s3.example.com", ip("10.96.0.20")));
        assert!(allowed.may_connect("minio.minio.svc", ip("10.244.1.7")));
        assert!(!allowed.may_connect("minio.minio.svc", ip("169.254.169.254")));
        assert!(!allowed.may_connect("x.example.com", ip("::ffff:192.168.0.1")));
    }

    #[test]
    fn plain_http_endpoints_need_the_operator_policy() {
        let spec = s3_spec(|s| s.endpoint = Some("http://minio.example.com:19000".into()));
        let errors = validate_backup(&spec, &Policy::default());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, ENDPOINT);
        assert!(
            errors[0].reason.contains("KOK_ALLOW_HTTP_S3"),
            "{}",
            errors[0]
        );
        assert!(s3_fields(&spec, true).is_empty());
        // The policy never opens link-local addresses.
        let metadata = s3_spec(|s| s.endpoint = Some("http://169.254.169.254".into()));
        assert_eq!(s3_fields(&metadata, true), vec![ENDPOINT]);
    }

    #[test]
    fn s3_bucket_prefix_and_region_follow_the_s3_rules() {
        for ok in ["abc", "kok-backups", "kok.backups.2026", &"a".repeat(63)] {
            assert!(check_bucket(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            &"a".repeat(64),
            "Kok",
            "kok_backups",
            "-kok",
            "kok-",
            "a..b",
            "192.168.1.1",
            "kok/x",
        ] {
            assert!(check_bucket(bad).is_err(), "{bad}");
        }
        let all_bad = s3_spec(|s| {
            s.bucket = "My_Bucket".into();
            s.prefix = Some("tenants/../other".into());
            s.region = " ".into();
            s.credentials_secret = String::new();
        });
        assert_eq!(
            s3_fields(&all_bad, false),
            vec![
                "spec.backup.destination.s3.bucket",
                "spec.backup.destination.s3.prefix",
                "spec.backup.destination.s3.region",
                "spec.backup.destination.s3.credentialsSecret",
            ]
        );
        // No endpoint (AWS) and a prefix with dots in names are fine.
        let aws = s3_spec(|s| {
            s.endpoint = None;
            s.prefix = Some("v1.2/..hidden".into());
        });
        assert!(s3_fields(&aws, false).is_empty());
    }
}
