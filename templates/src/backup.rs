//! Pure backup policy: the schedule (which slot is due), retention (which
//! backups go), names and artifact keys, and validation of `spec.backup`.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use kok_crds::{BackupSpec, Retention};

use crate::validate::FieldError;

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

/// Field errors of `spec.backup`, named by path.
pub fn validate_backup(spec: &BackupSpec) -> Vec<FieldError> {
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
            if !fs
                .path
                .starts_with(&format!("{}/", crate::restore::BACKUPS_MOUNT))
                || fs.path.split('/').any(|part| part == "..") =>
        {
            err(
                "destination.filesystem.path",
                format!(
                    "{:?} is not under {} (the backup volume mounted in the operator)",
                    fs.path,
                    crate::restore::BACKUPS_MOUNT
                ),
            )
        }
        (None, Some(s3)) if s3.bucket.is_empty() => {
            err("destination.s3.bucket", "must not be empty".into())
        }
        (None, Some(s3)) if s3.credentials_secret.is_empty() => err(
            "destination.s3.credentialsSecret",
            "must name a Secret with accessKeyID and secretAccessKey".into(),
        ),
        _ => {}
    }
    errors
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

/// A scheduled backup's name: the tenant and its slot, so a restarted
/// operator that tries the same slot again hits "already exists", not a duplicate.
pub fn scheduled_backup_name(tenant: &str, slot: DateTime<Utc>) -> String {
    format!("{tenant}-{}", slot.format("%Y%m%d-%H%M"))
}

/// Where a backup's artifact lives inside its destination.
pub fn artifact_key(namespace: &str, tenant: &str, backup: &str) -> String {
    format!("{namespace}/{tenant}/{backup}.db")
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
}

/// The backups retention deletes. Never the newest successful one, never one a
/// restore uses, never one still running. Failed backups count against the
/// same limits as successful ones, among themselves.
pub fn retention_victims(
    backups: &[BackupRecord],
    retention: &Retention,
    now: DateTime<Utc>,
) -> Vec<String> {
    let max_age = retention
        .max_age
        .as_deref()
        .and_then(|a| parse_age(a).ok())
        .and_then(|d| chrono::Duration::from_std(d).ok());
    let mut victims = Vec::new();
    for succeeded in [true, false] {
        let mut group: Vec<&BackupRecord> = backups
            .iter()
            .filter(|b| b.finished && b.succeeded == succeeded)
            .collect();
        group.sort_by(|a, b| b.time.cmp(&a.time).then(b.name.cmp(&a.name)));
        for (i, b) in group.iter().enumerate() {
            let protected = b.in_use || (succeeded && i == 0);
            let too_many = retention.keep_last.is_some_and(|n| i >= n as usize);
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
        let mut v = retention_victims(&backups, &r, at("2026-01-01T05:00:00Z"));
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
        let v = retention_victims(&backups, &r, at("2026-01-02T00:00:00Z"));
        assert_eq!(v, vec!["old-failed"]);
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
        assert!(retention_victims(&backups, &r, at("2026-02-01T00:00:00Z")).is_empty());
    }

    fn spec(destination: Destination) -> BackupSpec {
        BackupSpec {
            schedule: Some("*/5 * * * *".into()),
            retention: Retention::default(),
            destination,
            verify: false,
            deletion_policy: Default::default(),
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
        assert!(validate_backup(&spec(fs.clone())).is_empty());

        let mut bad = spec(fs.clone());
        bad.schedule = Some("every hour".into());
        bad.retention.max_age = Some("3 weeks".into());
        bad.retention.keep_last = Some(0);
        let fields: Vec<String> = validate_backup(&bad).into_iter().map(|e| e.field).collect();
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
            validate_backup(&spec(both))[0].field,
            "spec.backup.destination"
        );
        let relative = Destination {
            filesystem: Some(FilesystemDestination {
                path: "backups".into(),
            }),
            s3: None,
        };
        assert_eq!(
            validate_backup(&spec(relative))[0].field,
            "spec.backup.destination.filesystem.path"
        );
    }
}
