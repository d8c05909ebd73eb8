//! How a restore Job reads a backup kept on the operator's claim
//! (`KOK_BACKUP_CLAIM`). A pod mounts only claims of its own namespace, and
//! restore Jobs run in the tenant's. So the operator serves
//! `GET /artifacts/<path>` and gives each Job a token for one artifact.
//!
//! A token names one path under the backups directory and an expiry, signed
//! with HMAC-SHA256 under a key every replica shares. A tenant's Job can
//! therefore read that tenant's artifact, and no other path, for a limited
//! time. Integrity does not rest on the token: the Job checks the sha256 the
//! backup recorded, as for every destination.

use std::time::Duration;

use ring::hmac;

use crate::restore::{RestoreJobError, MEMBER_JOB_DEADLINE};

/// The route under which the operator serves artifacts.
pub const ARTIFACTS_ROUTE: &str = "/artifacts";
/// The named port of the operator's artifact Service.
pub const ARTIFACTS_PORT_NAME: &str = "artifacts";
/// How long a token is good for: a member Job's whole life, retries
/// included, and a margin for a Job that waited to be scheduled.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(MEMBER_JOB_DEADLINE.as_secs() + 15 * 60);
const VERSION: &str = "v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is not of the form v1.<expiry>.<signature>")]
    Malformed,
    #[error("the token expired at {0} (unix time)")]
    Expired(u64),
    #[error("the token was not issued for this path")]
    WrongSignature,
}

fn message(path: &str, expires_unix: u64) -> String {
    format!("{VERSION}\n{path}\n{expires_unix}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A token for `path` (as [`request_path`] normalizes it), good until
/// `expires_unix`.
pub fn mint(key: &[u8], path: &str, expires_unix: u64) -> String {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        message(path, expires_unix).as_bytes(),
    );
    format!("{VERSION}.{expires_unix}.{}", hex(tag.as_ref()))
}

/// Whether `token` lets its bearer read `path` at `now_unix`. The signature
/// is compared in constant time.
pub fn check(key: &[u8], path: &str, token: &str, now_unix: u64) -> Result<(), TokenError> {
    let mut parts = token.splitn(3, '.');
    let (Some(VERSION), Some(expires), Some(signature)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    let signature = unhex(signature).ok_or(TokenError::Malformed)?;
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        message(path, expires).as_bytes(),
        &signature,
    )
    .map_err(|_| TokenError::WrongSignature)?;
    if now_unix > expires {
        return Err(TokenError::Expired(expires));
    }
    Ok(())
}

/// A requested path, relative to the backups directory, if it stays inside
/// it: no empty, `.` or `..` segment, no leading slash. Returned unchanged,
/// so the path a token is checked for is the one that is opened.
pub fn request_path(path: &str) -> Option<&str> {
    let inside = !path.is_empty()
        && path
            .split('/')
            .all(|segment| !matches!(segment, "" | "." | ".."));
    inside.then_some(path)
}

/// Where a restore Job fetches an artifact that the operator serves.
#[derive(Debug, PartialEq, Eq)]
pub struct ServedArtifact {
    /// The destination's base URL. The Job appends the artifact key to it,
    /// as it does for any store.
    pub base_url: String,
    /// The artifact's path under the backups directory: what the token names.
    pub path: String,
}

/// `origin` is `http://<service address>:<port>`. The destination path must
/// lie under the backups mount, as for a hostPath.
pub fn served_artifact(
    origin: &str,
    destination_path: &str,
    artifact_key: &str,
) -> Result<ServedArtifact, RestoreJobError> {
    let relative = crate::restore::relative_to_backups(destination_path)?;
    let path = match relative.as_str() {
        "" => artifact_key.to_string(),
        dir => format!("{dir}/{artifact_key}"),
    };
    if request_path(&path).is_none() || !artifact_key.contains('/') {
        return Err(RestoreJobError::FlatArtifactKey(artifact_key.into()));
    }
    // Each segment percent-encoded: the server decodes the path it is asked
    // for, which must be the one the token names (a `#`, `?` or `%` in a
    // directory name would otherwise change it).
    let mut base_url = format!("{}{ARTIFACTS_ROUTE}", origin.trim_end_matches('/'));
    for segment in relative.split('/').filter(|s| !s.is_empty()) {
        base_url.push('/');
        base_url.push_str(&encode_segment(segment));
    }
    Ok(ServedArtifact { base_url, path })
}

/// `segment` with every byte but RFC 3986's unreserved ones percent-encoded.
fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_reads_its_own_path_until_it_expires() {
        let token = mint(KEY, "fs/team-a/demo/b1.db", 1_000);
        assert_eq!(check(KEY, "fs/team-a/demo/b1.db", &token, 999), Ok(()));
        assert_eq!(check(KEY, "fs/team-a/demo/b1.db", &token, 1_000), Ok(()));
        assert_eq!(
            check(KEY, "fs/team-a/demo/b1.db", &token, 1_001),
            Err(TokenError::Expired(1_000))
        );
    }

    #[test]
    fn a_token_for_one_tenant_reads_no_other_path() {
        let token = mint(KEY, "fs/team-a/demo/b1.db", 1_000);
        for other in [
            "fs/team-b/demo/b1.db",
            "fs/team-a/demo/b2.db",
            "team-a/demo/b1.db",
        ] {
            assert_eq!(
                check(KEY, other, &token, 10),
                Err(TokenError::WrongSignature),
                "{other}"
            );
        }
    }

    #[test]
    fn a_changed_expiry_or_key_breaks_the_signature() {
        let token = mint(KEY, "a/b.db", 1_000);
        let stretched = token.replacen("1000", "9999", 1);
        assert_eq!(
            check(KEY, "a/b.db", &stretched, 10),
            Err(TokenError::WrongSignature)
        );
        assert_eq!(
            check(b"another key", "a/b.db", &token, 10),
            Err(TokenError::WrongSignature)
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "v1",
            "v1.10",
            "v2.10.00",
            "v1.x.00",
            "v1.10.zz",
            "v1.10.abc",
        ] {
            assert_eq!(
                check(KEY, "a/b.db", bad, 0),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn requested_paths_stay_inside_the_backups_directory() {
        assert_eq!(request_path("fs/ns/t/b.db"), Some("fs/ns/t/b.db"));
        for outside in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a//b",
            "a/./b",
            "a/",
        ] {
            assert_eq!(request_path(outside), None, "{outside:?}");
        }
    }

    #[test]
    fn a_served_artifact_is_fetched_under_its_destination() {
        let served = served_artifact(
            "http://10.96.0.20:8081",
            "/var/lib/kok/backups/fs/",
            "ns/t/b1.db",
        )
        .unwrap();
        assert_eq!(served.base_url, "http://10.96.0.20:8081/artifacts/fs");
        assert_eq!(served.path, "fs/ns/t/b1.db");
        let at_root = served_artifact(
            "http://10.96.0.20:8081/",
            "/var/lib/kok/backups",
            "ns/t/b1.db",
        )
        .unwrap();
        assert_eq!(at_root.base_url, "http://10.96.0.20:8081/artifacts");
        assert_eq!(at_root.path, "ns/t/b1.db");
        // Dropped `.` and empty segments; an odd character encoded in the URL
        // and plain in the path the token names.
        let odd =
            served_artifact("http://h", "/var/lib/kok/backups/./a//b #?%/", "ns/t/b1.db").unwrap();
        assert_eq!(odd.base_url, "http://h/artifacts/a/b%20%23%3F%25");
        assert_eq!(odd.path, "a/b #?%/ns/t/b1.db");
        assert!(served_artifact("http://x", "/etc", "ns/t/b1.db").is_err());
        assert!(served_artifact("http://x", "/var/lib/kok/backups", "b1.db").is_err());
        assert!(served_artifact("http://x", "/var/lib/kok/backups", "ns/../b1.db").is_err());
    }
}
