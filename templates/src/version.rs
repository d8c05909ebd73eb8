//! Kubernetes versions kok can run, and what each one pairs with.

use std::fmt;
use std::str::FromStr;

/// The oldest and newest minor versions kok renders flags for.
pub const OLDEST_MINOR: u32 = 20;
pub const NEWEST_MINOR: u32 = 34;

/// A Kubernetes release, `v1.<minor>.<patch>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("{0:?} is not a version of the form v1.MINOR.PATCH")]
    Unparsable(String),
    #[error("{0} is not supported: kok runs v1.{OLDEST_MINOR} to v1.{NEWEST_MINOR}")]
    Unsupported(KubeVersion),
}

impl FromStr for KubeVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || VersionError::Unparsable(s.to_string());
        let digits = s.strip_prefix('v').unwrap_or(s);
        let mut parts = digits.split('.');
        let mut next = || -> Result<u32, VersionError> {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let v = KubeVersion {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl KubeVersion {
    /// Parses and checks that kok knows how to run this release.
    pub fn parse_supported(s: &str) -> Result<Self, VersionError> {
        let v: KubeVersion = s.parse()?;
        if v.major != 1 || v.minor < OLDEST_MINOR || v.minor > NEWEST_MINOR {
            return Err(VersionError::Unsupported(v));
        }
        Ok(v)
    }

    /// The etcd image tag kubeadm pairs with this minor (registry.k8s.io/etcd tags).
    pub fn default_etcd_tag(&self) -> &'static str {
        match self.minor {
            0..=21 => "3.4.13-0",
            22 => "3.5.0-0",
            23 => "3.5.1-0",
            24 => "3.5.3-0",
            25 => "3.5.4-0",
            26 => "3.5.6-0",
            27 => "3.5.7-0",
            28 => "3.5.9-0",
            29 => "3.5.10-0",
            30 => "3.5.12-0",
            31 => "3.5.15-0",
            32 => "3.5.16-0",
            33 => "3.5.21-0",
            _ => "3.6.4-0",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_v() {
        let v: KubeVersion = "v1.20.2".parse().unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 20, 2));
        assert_eq!(
            "1.31.4".parse::<KubeVersion>().unwrap().to_string(),
            "v1.31.4"
        );
    }

    #[test]
    fn rejects_malformed_versions() {
        for bad in [
            "",
            "v1.20",
            "1.20.x",
            "v1.20.2.1",
            "latest",
            "v1..2",
            "v1.20.-1",
            "1.20.2-rc.0",
        ] {
            assert!(
                matches!(bad.parse::<KubeVersion>(), Err(VersionError::Unparsable(_))),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn supported_range_is_enforced() {
        assert!(KubeVersion::parse_supported("v1.20.2").is_ok());
        assert!(KubeVersion::parse_supported("v1.34.0").is_ok());
        assert!(matches!(
            KubeVersion::parse_supported("v1.19.9"),
            Err(VersionError::Unsupported(_))
        ));
        assert!(matches!(
            KubeVersion::parse_supported("v2.0.0"),
            Err(VersionError::Unsupported(_))
        ));
    }

    #[test]
    fn ordering_follows_semver() {
        let a: KubeVersion = "v1.20.10".parse().unwrap();
        let b: KubeVersion = "v1.21.0".parse().unwrap();
        let c: KubeVersion = "v1.20.9".parse().unwrap();
        assert!(a < b && c < a);
    }
}
