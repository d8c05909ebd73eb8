//! Validation of a TenantCluster spec: every problem names its field and why,
//! so the controller can report it as a `Stalled` condition and an Event.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kok_crds::{TenantClusterSpec, TenantClusterStatus, UpgradeStrategy};

pub use crate::field_error::{describe, FieldError, Policy};
use crate::flags::{Component, PROTECTED_FLAGS};
use crate::pki::San;
use crate::version::KubeVersion;

/// A spec that passed validation, with its strings parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    pub version: KubeVersion,
    pub etcd_replicas: i32,
    pub apiserver_replicas: i32,
    pub service_cidr: IpNet,
    pub pod_cidr: IpNet,
    /// The tenant's `kubernetes` Service IP: the first address of the service range.
    pub kubernetes_service_ip: IpAddr,
    pub extra_sans: Vec<San>,
}

/// `host[:port]` (`[v6]:port` for an IPv6 address with a port) as
/// `(host, port)`, port 6443 by default. The host must be an IP or a DNS name.
pub fn advertised_address(text: &str) -> Result<(String, i32), String> {
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: unclosed '['"))?;
            (host, after.strip_prefix(':'))
        }
        None => match text.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (text, None),
        },
    };
    let port = match port {
        None => crate::flags::APISERVER_PORT,
        Some(p) => p
            .parse::<i32>()
            .ok()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| format!("{text:?}: the port must be 1 to 65535"))?,
    };
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let is_dns = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !is_ip && !is_dns {
        return Err(format!(
            "{text:?}: {host:?} is neither an IP address nor a DNS name"
        ));
    }
    Ok((host.to_string(), port))
}

/// Where the control-plane images come from when the spec does not say.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "registry.k8s.io";

/// The registry prefix of the tenant's control-plane images.
pub fn image_repository(spec: &TenantClusterSpec) -> &str {
    spec.image_repository
        .as_deref()
        .unwrap_or(DEFAULT_IMAGE_REPOSITORY)
}

/// Checks `spec` against itself and against what already runs (`status`):
/// no downgrade across minors, no etcd member count change after creation.
pub fn validate(
    spec: &TenantClusterSpec,
    status: Option<&TenantClusterStatus>,
    policy: &Policy,
) -> Result<ValidSpec, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, reason: String| {
        errors.push(FieldError {
            field: field.to_string(),
            reason,
        })
    };

    let version = match KubeVersion::parse_supported(&spec.version) {
        Ok(v) => Some(v),
        Err(e) => {
            err("spec.version", e.to_string());
            None
        }
    };
    if let (Some(v), Some(current)) = (version, status.and_then(|s| s.version.as_deref())) {
        // Several minors up is fine: the upgrade walks them one at a time.
        // Down is refused, except a patch downgrade within one minor.
        if let Ok(current) = current.parse::<KubeVersion>() {
            if v < current && v.minor != current.minor {
                err(
                    "spec.version",
                    format!("downgrade from {current} to {v} is not supported (only a patch downgrade within one minor is)"),
                );
            }
        }
    }

    if let Some(address) = &spec.control_plane.service.advertised_address {
        if let Err(e) = advertised_address(address) {
            err("spec.controlPlane.service.advertisedAddress", e);
        }
    }
    if let Some(schedule) = &spec.healing.defragmentation_schedule {
        if let Err(e) = crate::backup::parse_schedule(schedule) {
            err("spec.healing.defragmentationSchedule", e);
        }
    }
    if let Some(age) = &spec.healing.quorum_loss.max_backup_age {
        if let Err(e) = crate::backup::parse_age(age) {
            err("spec.healing.quorumLoss.maxBackupAge", e);
        }
    }
    for name in crate::inspection::unknown_checks(&spec.healing) {
        let known = crate::inspection::CHECKS
            .iter()
            .map(|(n, _, _)| *n)
            .collect::<Vec<_>>()
            .join(", ");
        err(
            &format!("spec.healing.checks.{name}"),
            format!("no such check; known: {known}"),
        );
    }

    // A pinned etcd moves at once; the paired one is walked with the
    // Kubernetes steps (upgrade_plan), one etcd minor at a time.
    if let (Some(tag), None) = (&spec.etcd.version, &spec.etcd.image) {
        let running = status.and_then(|s| s.etcd_version.as_deref());
        if let Some(problem) = etcd_change_problem(running, tag) {
            err("spec.etcd.version", problem);
        }
    }

    let etcd_replicas = spec.etcd.replicas;
    if ![1, 3, 5].contains(&etcd_replicas) {
        err(
            "spec.etcd.replicas",
            format!("must be 1, 3 or 5 (an odd quorum size), got {etcd_replicas}"),
        );
    }
    // A changed member count is scaled live (InPlace, see etcd_scale) or
    // moved by a data migration (Migrate).
    if spec.upgrade.strategy == UpgradeStrategy::Migrate {
        // The copy goes through a snapshot in the backup destination, into
        // new claims: both must exist.
        if spec.backup.is_none() {
            err(
                "spec.backup",
                "spec.upgrade.strategy Migrate copies etcd through a snapshot in spec.backup's destination: set spec.backup".into(),
            );
        }
        if spec.etcd.storage.ephemeral {
            err(
                "spec.etcd.storage.ephemeral",
                "spec.upgrade.strategy Migrate restores into new persistent volumes: it cannot be used with ephemeral etcd".into(),
            );
        }
    }
    if !spec.etcd.storage.ephemeral {
        match crate::quantity::parse(&spec.etcd.storage.size) {
            Ok(bytes) if bytes >= 1.0 => {}
            Ok(_) => err(
                "spec.etcd.storage.size",
                format!("{:?} is not a positive size", spec.etcd.storage.size),
            ),
            Err(e) => err("spec.etcd.storage.size", e.to_string()),
        }
    }
    for (field, resources) in [
        ("spec.etcd.resources", &spec.etcd.resources),
        (
            "spec.controlPlane.apiserver.resources",
            &spec.control_plane.apiserver.resources,
        ),
        (
            "spec.controlPlane.controllerManager.resources",
            &spec.control_plane.controller_manager.resources,
        ),
        (
            "spec.controlPlane.scheduler.resources",
            &spec.control_plane.scheduler.resources,
        ),
    ] {
        for (path, problem) in resource_problems(resources.as_ref()) {
            err(&format!("{field}.{path}"), problem);
        }
    }

    let apiserver_replicas = spec.control_plane.apiserver.replicas;
    if !(1..=10).contains(&apiserver_replicas) {
        err(
            "spec.controlPlane.apiserver.replicas",
            format!("must be between 1 and 10, got {apiserver_replicas}"),
        );
    }

    let cp = &spec.control_plane;
    for (component, field, args) in [
        (
            Component::ApiServer,
            "spec.controlPlane.apiserver.extraArgs",
            &cp.apiserver.extra_args,
        ),
        (
            Component::ControllerManager,
            "spec.controlPlane.controllerManager.extraArgs",
            &cp.controller_manager.extra_args,
        ),
        (
            Component::Scheduler,
            "spec.controlPlane.scheduler.extraArgs",
            &cp.scheduler.extra_args,
        ),
    ] {
        for problem in extra_arg_problems(component, args) {
            err(field, problem);
        }
    }

    let service_cidr = parse_cidr(
        &spec.networking.service_cidr,
        "spec.networking.serviceCIDR",
        &mut err,
    );
    let pod_cidr = parse_cidr(
        &spec.networking.pod_cidr,
        "spec.networking.podCIDR",
        &mut err,
    );
    if let (Some(s), Some(p)) = (service_cidr, pod_cidr) {
        if s.contains(&p.network()) || p.contains(&s.network()) {
            err(
                "spec.networking.podCIDR",
                format!("{p} overlaps the service range {s}"),
            );
        }
    }
    let domain = &spec.networking.cluster_domain;
    if !is_dns_name(domain) {
        err(
            "spec.networking.clusterDomain",
            format!("{domain:?} is not a DNS name"),
        );
    }

    let mut extra_sans = Vec::new();
    for (i, san) in cp.cert_sans.iter().enumerate() {
        match parse_san(san) {
            Some(s) => extra_sans.push(s),
            None => err(
                &format!("spec.controlPlane.certSANs[{i}]"),
                format!("{san:?} is neither an IP address nor a DNS name"),
            ),
        }
    }

    if let Some(repo) = &spec.image_repository {
        if repo.is_empty() || repo.contains(char::is_whitespace) || repo.ends_with('/') {
            err(
                "spec.imageRepository",
                format!("{repo:?} is not a registry prefix like registry.k8s.io"),
            );
        }
    }

    if !policy.image_allowed(image_repository(spec)) {
        let why = match &spec.image_repository {
            Some(_) => "not among the image repositories the operator allows",
            None => "unset, so the default registry.k8s.io, which the operator does not allow",
        };
        err(
            "spec.imageRepository",
            format!(
                "{why} (KOK_IMAGE_REPOSITORIES: {})",
                policy.image_repositories.join(", ")
            ),
        );
    }
    for (field, image) in [
        ("spec.etcd.image", spec.etcd.image.as_deref()),
        (
            "spec.addons.coreDNS.image",
            spec.addons.core_dns.image.as_deref(),
        ),
    ] {
        if let Some(image) = image.filter(|i| !policy.image_allowed(i)) {
            err(
                field,
                format!(
                    "{image:?} is not in an image repository the operator allows \
                     (KOK_IMAGE_REPOSITORIES: {})",
                    policy.image_repositories.join(", ")
                ),
            );
        }
    }

    if let Some(backup) = &spec.backup {
        errors.extend(crate::backup::validate_backup(backup, policy));
    }

    match (version, service_cidr, pod_cidr, errors.is_empty()) {
        (Some(version), Some(service_cidr), Some(pod_cidr), true) => {
            let kubernetes_service_ip = first_host(&service_cidr);
            Ok(ValidSpec {
                version,
                etcd_replicas,
                apiserver_replicas,
                service_cidr,
                pod_cidr,
                kubernetes_service_ip,
                extra_sans,
            })
        }
        _ => Err(errors),
    }
}

/// Why etcd cannot go from the `running` tag to `wanted` in place: never
/// down a minor, never more than one minor up (etcd's own upgrade rule).
pub fn etcd_change_problem(running: Option<&str>, wanted: &str) -> Option<String> {
    use crate::upgrade_plan::EtcdVersion;
    let running: EtcdVersion = running?.parse().ok()?;
    let Ok(wanted_v) = wanted.parse::<EtcdVersion>() else {
        return Some(format!("{wanted:?} is not an etcd version like 3.5.16"));
    };
    if wanted_v.major != running.major {
        return Some(format!(
            "etcd runs {running}; {wanted_v} is another major version"
        ));
    }
    if wanted_v.minor < running.minor {
        return Some(format!(
            "etcd runs {running}; going down to {wanted_v} is not supported (etcd cannot downgrade a minor in place)"
        ));
    }
    if wanted_v.minor > running.minor + 1 {
        return Some(format!(
            "etcd runs {running}; {wanted_v} skips a minor version: upgrade to 3.{}.x first",
            running.minor + 1
        ));
    }
    None
}

/// Field errors of `metadata.name`: the API server checks the pattern and
/// length when the CRD carries them, but objects stored before that, or on a
/// CRD applied by hand, reach the operator anyway.
pub fn validate_name(name: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |reason: String| {
        errors.push(FieldError {
            field: "metadata.name".into(),
            reason,
        })
    };
    if name.len() > kok_crds::MAX_NAME_LENGTH {
        err(format!(
            "{name:?} has {} characters; at most {} fit every derived name (etcd StatefulSet labels)",
            name.len(),
            kok_crds::MAX_NAME_LENGTH
        ));
    }
    let b = name.as_bytes();
    let label_ok = b.first().is_some_and(u8::is_ascii_lowercase)
        && b.last()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if !label_ok {
        err(format!(
            "{name:?} must start with a letter and contain only lowercase letters, digits and '-' (its Services are named after it)"
        ));
    }
    if let Some(ending) = crate::names::reserved_ending(name) {
        err(format!(
            "{name:?} ends in \"-{ending}\": its objects could collide with those of a TenantCluster named {:?} in the same namespace",
            &name[..name.len() - ending.len() - 1]
        ));
    }
    errors
}

/// `(path, problem)` for every request or limit that is not a quantity.
fn resource_problems(
    resources: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
) -> Vec<(String, String)> {
    let Some(r) = resources else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (resource, q) in map.iter().flatten() {
            match crate::quantity::parse(&q.0) {
                Ok(v) if v < 0.0 => problems.push((
                    format!("{kind}.{resource}"),
                    format!("{:?} is negative", q.0),
                )),
                Ok(_) => {}
                Err(e) => problems.push((format!("{kind}.{resource}"), e.to_string())),
            }
        }
    }
    problems
}

fn parse_cidr(s: &str, field: &str, err: &mut impl FnMut(&str, String)) -> Option<IpNet> {
    match s.parse::<IpNet>() {
        Ok(net) if net.trunc() == net => Some(net),
        Ok(net) => {
            err(
                field,
                format!("{s} has host bits set; did you mean {}?", net.trunc()),
            );
            None
        }
        Err(_) => {
            err(field, format!("{s:?} is not a CIDR like 10.96.0.0/12"));
            None
        }
    }
}

fn first_host(net: &IpNet) -> IpAddr {
    net.hosts().next().unwrap_or(net.network())
}

fn extra_arg_problems(component: Component, args: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for name in args.keys() {
        if name.starts_with('-') {
            problems.push(format!(
                "{name:?}: give the flag name without leading dashes"
            ));
        } else if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            problems.push(format!("{name:?} is not a flag name"));
        } else if PROTECTED_FLAGS
            .iter()
            .any(|(c, f)| *c == component && *f == name)
        {
            problems.push(format!(
                "--{name} is managed by kok and cannot be overridden"
            ));
        }
    }
    problems
}

fn parse_san(s: &str) -> Option<San> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(San::Ip(ip));
    }
    let name = s.strip_prefix("*.").unwrap_or(s);
    is_dns_name(name).then(|| San::Dns(s.to_string()))
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    /// The examples the docs point users at are accepted as they are.
    #[test]
    fn the_shipped_examples_are_valid() {
        for (file, text) in [
            (
                "tenantcluster.yaml",
                include_str!("../../examples/tenantcluster.yaml"),
            ),
            (
                "tenantcluster-production.yaml",
                include_str!("../../examples/tenantcluster-production.yaml"),
            ),
        ] {
            let tc: kok_crds::TenantCluster = serde_yaml::from_str(text)
                .unwrap_or_else(|e| panic!("examples/{file} does not parse: {e}"));
            if let Err(errors) = super::validate(&tc.spec, None, &Default::default()) {
                panic!("examples/{file} is refused: {errors:?}");
            }
        }
    }

    #[test]
    fn etcd_moves_up_one_minor_at_a_time_and_never_down() {
        assert_eq!(
            etcd_change_problem(None, "3.5.16"),
            None,
            "nothing recorded yet"
        );
        assert_eq!(etcd_change_problem(Some("3.4.23"), "3.5.16"), None);
        assert_eq!(
            etcd_change_problem(Some("3.5.16"), "3.5.12-0"),
            None,
            "a patch step down is allowed"
        );
        assert!(etcd_change_problem(Some("3.5.16"), "3.4.23")
            .unwrap()
            .contains("down"));
        assert!(etcd_change_problem(Some("3.4.23"), "3.6.4")
            .unwrap()
            .contains("skips"));
        assert!(etcd_change_problem(Some("3.4.23"), "latest")
            .unwrap()
            .contains("not an etcd version"));
    }

    use super::*;

    fn spec(yaml: &str) -> TenantClusterSpec {
        serde_json::from_value(serde_yaml_value(yaml)).expect("test spec deserializes")
    }

    fn serde_yaml_value(yaml: &str) -> serde_json::Value {
        serde_yaml::from_str(yaml).expect("test YAML parses")
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn images_come_only_from_allowed_repositories_when_the_operator_says() {
        let policy = Policy {
            image_repositories: vec!["registry.example.com/mirror".into(), "kok.local".into()],
            ..Default::default()
        };
        let ok = spec(
            "version: v1.20.2\nimageRepository: registry.example.com/mirror/k8s\n\
             etcd: {image: kok.local/etcd:3.4.23}\naddons: {coreDNS: {image: kok.local/coredns:1.7.0}}",
        );
        assert!(validate(&ok, None, &policy).is_ok());
        assert!(
            validate(&spec("version: v1.20.2"), None, &Policy::default()).is_ok(),
            "unset: any"
        );
        let defaulted = validate(&spec("version: v1.20.2"), None, &policy).unwrap_err();
        assert_eq!(fields(&defaulted), ["spec.imageRepository"]);
        assert!(
            defaulted[0].reason.contains("registry.k8s.io"),
            "{}",
            defaulted[0]
        );
        let bad = spec(
            "version: v1.20.2\nimageRepository: registry.example.com/mirrorx\n\
             etcd: {image: kok.local.evil.example/etcd:3.4.23}\n\
             addons: {coreDNS: {image: docker.io/coredns/coredns:1.7.0}}",
        );
        let errors = validate(&bad, None, &policy).unwrap_err();
        assert_eq!(
            fields(&errors),
            [
                "spec.imageRepository",
                "spec.etcd.image",
                "spec.addons.coreDNS.image"
            ]
        );
        assert!(
            errors[1].reason.contains("KOK_IMAGE_REPOSITORIES"),
            "{}",
            errors[1]
        );
    }

    #[test]
    fn minimal_spec_is_valid_with_defaults() {
        let v = validate(&spec("version: v1.20.2"), None, &Policy::default()).expect("valid");
        assert_eq!(v.version.minor, 20);
        assert_eq!(v.etcd_replicas, 1);
        assert_eq!(v.kubernetes_service_ip.to_string(), "10.96.0.1");
    }

    #[test]
    fn even_etcd_replicas_name_the_field() {
        let errors = validate(
            &spec("version: v1.20.2\netcd: {replicas: 2}"),
            None,
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(fields(&errors), ["spec.etcd.replicas"]);
        assert!(errors[0].reason.contains("1, 3 or 5"), "{}", errors[0]);
    }

    #[test]
    fn a_misspelt_check_name_is_refused_with_the_known_ones() {
        let errors = validate(
            &spec("version: v1.20.2\nhealing: {checks: {PodOnMisingNode: Off, VolumeReleased: Repair}}"),
            None,
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(fields(&errors), ["spec.healing.checks.PodOnMisingNode"]);
        assert!(
            errors[0].reason.contains("PodOnMissingNode"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn advertised_addresses_are_hosts_with_an_optional_port() {
        assert_eq!(
            advertised_address("kok.example.com").unwrap(),
            ("kok.example.com".to_string(), 6443)
        );
        assert_eq!(
            advertised_address("10.0.0.5:443").unwrap(),
            ("10.0.0.5".to_string(), 443)
        );
        assert_eq!(
            advertised_address("[fd00::1]:8443").unwrap(),
            ("fd00::1".to_string(), 8443)
        );
        assert_eq!(advertised_address("fd00::1").unwrap().0, "fd00::1");
        for bad in ["https://x", "x:0", "x:70000", "a b", "-x.com", "[fd00::1"] {
            assert!(advertised_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn healing_schedules_and_ages_name_their_field() {
        let errors = validate(
            &spec("version: v1.20.2\nhealing: {defragmentationSchedule: weekly, quorumLoss: {maxBackupAge: soon}}"),
            None,
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(
            fields(&errors),
            [
                "spec.healing.defragmentationSchedule",
                "spec.healing.quorumLoss.maxBackupAge"
            ]
        );
    }

    #[test]
    fn unparsable_version_names_the_field() {
        let errors =
            validate(&spec("version: one-point-twenty"), None, &Policy::default()).unwrap_err();
        assert_eq!(fields(&errors), ["spec.version"]);
        assert!(describe(&errors).starts_with("spec.version: "));
    }

    #[test]
    fn minor_downgrades_are_refused_and_jumps_are_walked() {
        let status = TenantClusterStatus {
            version: Some("v1.21.3".into()),
            ..Default::default()
        };
        let down =
            validate(&spec("version: v1.20.2"), Some(&status), &Policy::default()).unwrap_err();
        assert_eq!(fields(&down), ["spec.version"]);
        assert!(down[0].reason.contains("downgrade"));
        // Several minors at once: planned as one step per minor.
        assert!(validate(&spec("version: v1.24.0"), Some(&status), &Policy::default()).is_ok());
        assert!(validate(&spec("version: v1.22.0"), Some(&status), &Policy::default()).is_ok());
        assert!(validate(&spec("version: v1.21.9"), Some(&status), &Policy::default()).is_ok());
        // A patch downgrade within the minor is allowed.
        assert!(validate(&spec("version: v1.21.1"), Some(&status), &Policy::default()).is_ok());
    }

    #[test]
    fn etcd_member_count_may_change_after_creation() {
        let status = TenantClusterStatus {
            etcd_replicas: Some(1),
            ..Default::default()
        };
        for replicas in [3, 5] {
            let s = spec(&format!("version: v1.20.2\netcd: {{replicas: {replicas}}}"));
            let v = validate(&s, Some(&status), &Policy::default()).unwrap();
            assert_eq!(v.etcd_replicas, replicas);
        }
    }

    #[test]
    fn protected_and_malformed_extra_args_are_refused() {
        let s = spec(
            "version: v1.20.2\ncontrolPlane:\n  apiserver:\n    extraArgs: {etcd-servers: http://evil:2379, --v: '4', audit-log-maxage: '3'}",
        );
        let errors = validate(&s, None, &Policy::default()).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors
            .iter()
            .all(|e| e.field == "spec.controlPlane.apiserver.extraArgs"));
        assert!(describe(&errors).contains("--etcd-servers is managed by kok"));
    }

    #[test]
    fn cidrs_are_checked() {
        let errors = validate(
            &spec("version: v1.20.2\nnetworking: {serviceCIDR: 10.96.0.1/12, podCIDR: banana}"),
            None,
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(
            fields(&errors),
            ["spec.networking.serviceCIDR", "spec.networking.podCIDR"]
        );
        let overlap = validate(
            &spec(
                "version: v1.20.2\nnetworking: {serviceCIDR: 10.0.0.0/8, podCIDR: 10.244.0.0/16}",
            ),
            None,
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(fields(&overlap), ["spec.networking.podCIDR"]);
    }

    #[test]
    fn cert_sans_accept_ips_and_names_only() {
        let ok = validate(
            &spec("version: v1.20.2\ncontrolPlane: {certSANs: [10.0.0.9, api.example.com, '*.example.com']}"),
            None,
            &Policy::default(),
        )
        .unwrap();
        assert_eq!(ok.extra_sans.len(), 3);
        let errors = validate(
            &spec("version: v1.20.2\ncontrolPlane: {certSANs: ['not a name']}"),
            None,
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(fields(&errors), ["spec.controlPlane.certSANs[0]"]);
    }

    #[test]
    fn names_are_checked_for_pattern_length_and_collisions() {
        assert!(validate_name("demo").is_empty());
        assert!(validate_name(&"a".repeat(kok_crds::MAX_NAME_LENGTH)).is_empty());
        let long = validate_name(&"a".repeat(kok_crds::MAX_NAME_LENGTH + 1));
        assert_eq!(fields(&long), ["metadata.name"]);
        assert!(long[0].reason.contains("at most 47"), "{}", long[0]);
        for bad in ["1demo", "Demo", "demo-", "de_mo", "de.mo"] {
            assert_eq!(fields(&validate_name(bad)), ["metadata.name"], "{bad}");
        }
        let collide = validate_name("good-etcd");
        assert!(collide[0].reason.contains("\"good\""), "{}", collide[0]);
    }

    #[test]
    fn quantities_name_their_field() {
        let errors = validate(
            &spec("version: v1.20.2\netcd: {storage: {size: lots}, resources: {requests: {cpu: banana, memory: 1Gi}}}"),
            None,
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(
            fields(&errors),
            ["spec.etcd.storage.size", "spec.etcd.resources.requests.cpu"]
        );
        let ephemeral = validate(
            &spec("version: v1.20.2\netcd: {storage: {ephemeral: true, size: lots}}"),
            None,
            &Policy::default(),
        );
        assert!(ephemeral.is_ok(), "size is unused for ephemeral etcd");
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let errors = validate(
            &spec("version: nope\netcd: {replicas: 4}\ncontrolPlane: {apiserver: {replicas: 0}}"),
            None,
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(
            fields(&errors),
            [
                "spec.version",
                "spec.etcd.replicas",
                "spec.controlPlane.apiserver.replicas"
            ]
        );
    }
}
