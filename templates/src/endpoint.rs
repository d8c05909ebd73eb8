//! Where a tenant may point the operator's S3 client: the endpoint URL
//! rules and the operator's allowlist of private endpoints. Its own module
//! so the operator policy (`field_error::Policy`) and the backup validators
//! both depend on it, not on each other.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Hosts an endpoint may never name: the cloud metadata services, through
/// which the operator's own credentials could be read (SSRF).
const METADATA_HOSTS: &[&str] = &["metadata.google.internal", "metadata"];

/// An S3 endpoint: `https://host[:port][/path]` (`http` only if
/// `allow_http`), never a link-local or metadata host. Stricter than a URL parser on
/// purpose: no user info, query or fragment, and only hosts that every HTTP
/// client reads the same way (a WHATWG parser turns `http://2852039166/` into
/// 169.254.169.254, so numeric-looking host names are refused).
pub fn check_endpoint(
    endpoint: &str,
    allow_http: bool,
    private: &PrivateEndpoints,
) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{endpoint:?}: {why}"));
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((s, rest)) => (s.to_ascii_lowercase(), rest),
        None => return bad("not a URL (expected https://host[:port])"),
    };
    match scheme.as_str() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return bad("plain http sends credentials in the clear; use https \
                 (the operator accepts http only with KOK_ALLOW_HTTP_S3=true)")
        }
        _ => return bad("the scheme must be https"),
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if path.contains(['?', '#']) {
        return bad("no query or fragment allowed");
    }
    if authority.contains('@') {
        return bad("no user info allowed (credentials come from credentialsSecret)");
    }
    let (host, port) =
        split_host_port(authority).ok_or_else(|| format!("{endpoint:?}: no valid host"))?;
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return bad("the port must be 1-65535");
        }
    }
    const PRIVATE: &str = "a private address (loopback, cluster or site network); \
         the operator allows chosen ones with KOK_S3_PRIVATE_ENDPOINTS";
    match host {
        Host::Ip(ip) if is_link_local(ip) => {
            bad("link-local addresses (cloud metadata) are refused")
        }
        Host::Ip(ip) if ip.is_unspecified() || ip.is_multicast() => bad("not a unicast address"),
        Host::Ip(ip) if is_private(ip) && !private.allows_ip(ip) => bad(PRIVATE),
        Host::Ip(_) => Ok(()),
        Host::Name(name) if METADATA_HOSTS.contains(&name.as_str()) => {
            bad("the cloud metadata service is refused")
        }
        Host::Name(name) if is_private_name(&name) && !private.allows_host(&name) => bad(PRIVATE),
        Host::Name(_) => Ok(()),
    }
}

/// Private S3 endpoints the operator allows (`KOK_S3_PRIVATE_ENDPOINTS`: a
/// comma-separated list of address ranges such as `10.96.0.0/12` and host
/// names such as `minio.minio.svc`). Empty: none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivateEndpoints {
    nets: Vec<ipnet::IpNet>,
    hosts: Vec<String>,
}

impl PrivateEndpoints {
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut allowed = Self::default();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if let Ok(net) = item.parse::<ipnet::IpNet>() {
                allowed.nets.push(net.trunc());
            } else if let Ok(ip) = item.parse::<IpAddr>() {
                allowed.nets.push(ipnet::IpNet::from(ip));
            } else {
                match split_host_port(item) {
                    Some((Host::Name(name), None)) => allowed.hosts.push(name),
                    _ => {
                        return Err(format!(
                            "{item:?}: expected an address range (10.0.0.0/8), an address or a host name"
                        ))
                    }
                }
            }
        }
        Ok(allowed)
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && self.hosts.is_empty()
    }

    /// An address in an allowed range (never a link-local one).
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !is_link_local(ip) && self.nets.iter().any(|n| n.contains(&ip))
    }

    pub fn allows_host(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        self.hosts.contains(&name)
    }

    /// Whether a connection to `ip`, resolved from `host`, may be made: a
    /// public address, or a private one the operator allows (by range, or
    /// by naming the host). Checked again when a name resolves, so a public
    /// name that points at a private address is refused too.
    pub fn may_connect(&self, host: &str, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if is_link_local(ip) || ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        !is_private(ip) || self.allows_ip(ip) || self.allows_host(host)
    }
}

/// The list again, as `parse` reads it (passed on to restore Jobs).
impl std::fmt::Display for PrivateEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = (self.nets.iter().map(ToString::to_string))
            .chain(self.hosts.iter().cloned())
            .collect();
        f.write_str(&items.join(","))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Loopback, RFC 1918, carrier-grade NAT (100.64.0.0/10), "this network"
/// (0.0.0.0/8), benchmarking (198.18.0.0/15), IPv6 loopback and unique
/// local (fc00::/7): where cluster Services, nodes and the management
/// network live.
pub fn is_private(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
                || (a == 198 && (b == 18 || b == 19))
        }
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Names that only resolve inside a cluster or a site: `localhost`, one
/// label, and the cluster and site suffixes.
fn is_private_name(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".localhost",
        ".svc",
        ".cluster.local",
        ".local",
        ".internal",
    ];
    name == "localhost" || !name.contains('.') || SUFFIXES.iter().any(|s| name.ends_with(s))
}

enum Host {
    Ip(IpAddr),
    /// Lowercase, without a trailing dot.
    Name(String),
}

/// Splits `host[:port]` / `[v6][:port]`, accepting only a literal IP or a DNS
/// name whose last label is not numeric.
fn split_host_port(authority: &str) -> Option<(Host, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        return Some((Host::Ip(IpAddr::V6(v6.parse().ok()?)), port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return Some((Host::Ip(IpAddr::V4(v4)), port));
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let labels_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    // A numeric last label makes URL parsers read the host as an IPv4
    // address in some notation (`0xa9fea9fe`, `169.254.43518`).
    let last = name.rsplit('.').next().unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x");
    (labels_ok && !numeric).then_some((Host::Name(name), port))
}

/// 169.254.0.0/16 and fe80::/10, also when written as an IPv4-mapped IPv6;
/// and AWS's IPv6 metadata address, which is not link-local.
fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => true,
        IpAddr::V6(v6) => {
            v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}
