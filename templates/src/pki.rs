//! Pure PKI for one tenant control plane: CAs, leaf certificates, the
//! service-account signing key and kubeconfigs.
//!
//! No I/O and no clock reads: the caller passes `now`, so results are
//! reproducible in tests and the controller decides where material is stored.
//! All keys are ECDSA P-256 (rcgen on ring cannot generate RSA, and every
//! Kubernetes component we run accepts ECDSA).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Lifetime of a CA; long because replacing a CA means reissuing everything.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// Lifetime of a leaf; short because leaves are renewed automatically.
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// Renew a leaf when less than this much validity is left.
pub const RENEW_BEFORE: Duration = Duration::days(30);
/// Certificates start this long before `now`, so a peer whose clock is a
/// little behind the operator's does not reject them as "not yet valid".
const BACKDATE: Duration = Duration::minutes(5);

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertKeyPair {
    pub cert_pem: String,
    pub key_pem: String,
}

// Hand-written so the private key never ends up in logs.
impl fmt::Debug for CertKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKeyPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

/// What a leaf certificate may be used for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    ServerAndClient,
}

impl Usage {
    fn server(self) -> bool {
        matches!(self, Usage::Server | Usage::ServerAndClient)
    }

    fn client(self) -> bool {
        matches!(self, Usage::Client | Usage::ServerAndClient)
    }
}

/// Everything that identifies a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    pub common_name: String,
    /// At most one entry: rcgen keeps one value per attribute type.
    pub organizations: Vec<String>,
    pub sans: Vec<San>,
    pub usage: Usage,
    pub validity: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid certificate PEM: {0}")]
    InvalidCertificate(String),
    #[error("invalid private key PEM: {0}")]
    InvalidKey(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the certificate is not a CA (basicConstraints CA:TRUE missing)")]
    NotACa,
    #[error("invalid subject: {0}")]
    InvalidSubject(String),
    #[error("invalid DNS name in SANs: {0:?}")]
    InvalidDnsName(String),
    #[error("validity {validity} starting at {now} is empty or out of range")]
    InvalidValidity {
        now: OffsetDateTime,
        validity: Duration,
    },
    #[error("certificate generation failed: {0}")]
    Generation(#[from] rcgen::Error),
    #[error("the system's random number generator failed")]
    Random,
}

/// Why a stored leaf certificate must be reissued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewalReason {
    /// The certificate, its key or the CA could not be read.
    Unparsable(String),
    /// The stored key is not the certificate's key.
    KeyMismatch,
    /// Not signed by the current CA (for example the CA was replaced).
    NotSignedByCa,
    /// Less than the renewal margin left, or already expired.
    Expiring { not_after: OffsetDateTime },
    /// Common name or organizations differ from the spec.
    SubjectChanged,
    /// The SAN set differs from the spec.
    SansChanged,
    /// Server/client usage differs from the spec.
    UsageChanged,
}

impl fmt::Display for RenewalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenewalReason::Unparsable(e) => write!(f, "certificate is unreadable: {e}"),
            RenewalReason::KeyMismatch => f.write_str("private key does not match certificate"),
            RenewalReason::NotSignedByCa => f.write_str("not signed by the current CA"),
            RenewalReason::Expiring { not_after } => write!(f, "expires at {not_after}"),
            RenewalReason::SubjectChanged => f.write_str("subject differs from spec"),
            RenewalReason::SansChanged => f.write_str("SANs differ from spec"),
            RenewalReason::UsageChanged => f.write_str("key usage differs from spec"),
        }
    }
}

/// A new self-signed CA with a fresh key.
pub fn new_ca(
    common_name: &str,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<CertKeyPair, PkiError> {
    let (not_before, not_after) = validity_window(now, validity)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name, &[])?;
    params.not_before = not_before;
    params.not_after = not_after;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = new_key()?;
    let cert = params.self_signed(&key)?;
    Ok(CertKeyPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A leaf with a new key, signed by `ca` as stored (the CA is never regenerated here).
pub fn issue_leaf(
    ca: &CertKeyPair,
    spec: &LeafSpec,
    now: OffsetDateTime,
) -> Result<CertKeyPair, PkiError> {
    let issuer = load_issuer(ca)?;
    let (not_before, not_after) = validity_window(now, spec.validity)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(&spec.common_name, &spec.organizations)?;
    params.subject_alt_names = spec.sans.iter().map(rcgen_san).collect::<Result<_, _>>()?;
    params.not_before = not_before;
    params.not_after = not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if spec.usage.server() {
        params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if spec.usage.client() {
        params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ClientAuth);
    }
    // Lets verifiers pick the right CA during a CA rotation.
    params.use_authority_key_identifier_extension = true;
    let key = new_key()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertKeyPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A service-account token signing key: (private PKCS#8 PEM, public SPKI PEM).
pub fn new_service_account_key() -> Result<(String, String), PkiError> {
    let key = new_key()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// Why `leaf` must be reissued for `spec` under `ca` at `now`, or `None` if it is fine.
pub fn leaf_renewal_reason(
    leaf: &CertKeyPair,
    ca: &CertKeyPair,
    spec: &LeafSpec,
    now: OffsetDateTime,
    renew_before: Duration,
) -> Option<RenewalReason> {
    // Anything unreadable is replaced rather than reported as a hard error,
    // so a corrupted Secret heals itself.
    check_leaf(leaf, ca, spec, now, renew_before)
        .unwrap_or_else(|e| Some(RenewalReason::Unparsable(e.to_string())))
}

/// The expiry of a PEM certificate.
pub fn not_after(cert_pem: &str) -> Result<OffsetDateTime, PkiError> {
    let der = pem_der(cert_pem)?;
    let cert = parse_cert(&der)?;
    Ok(cert.validity().not_after.to_datetime())
}

/// A kubeconfig (v1 Config) with one cluster, one user and one current context.
pub fn kubeconfig(
    cluster_name: &str,
    server_url: &str,
    ca_cert_pem: &str,
    user: &str,
    client: &CertKeyPair,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // Names such as "system:kube-scheduler" need quoting; base64 never does.
    let cluster = yaml_quote(cluster_name);
    let server = yaml_quote(server_url);
    let user_name = yaml_quote(user);
    let context = yaml_quote(&format!("{user}@{cluster_name}"));
    let ca = b64(ca_cert_pem);
    let cert = b64(&client.cert_pem);
    let key = b64(&client.key_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user_name}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {context}
  context:
    cluster: {cluster}
    user: {user_name}
current-context: {context}
preferences: {{}}
"
    )
}

/// What the controller knows about a tenant when it builds its PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPkiInputs {
    /// The TenantCluster name, e.g. "demo".
    pub cluster_name: String,
    /// The tenant's cluster DNS domain, normally "cluster.local".
    pub cluster_domain: String,
    /// Every name/IP the apiserver is reached by (computed by the caller).
    pub apiserver_sans: Vec<San>,
    /// Every etcd member, the etcd client service, localhost, 127.0.0.1.
    pub etcd_sans: Vec<San>,
    /// The etcd generation `etcd_sans` names (its leaves are
    /// `Names::etcd_leaf`: `etcd-server`, `etcd-server-g1`, ...).
    pub etcd_generation: u32,
    /// A data migration's target etcd: its generation and names, which get
    /// leaves of their own so the running etcd's certificates never change.
    pub etcd_target: Option<(u32, Vec<San>)>,
}

/// The three CAs of a tenant control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaKind {
    Cluster,
    FrontProxy,
    Etcd,
}

impl CaKind {
    pub const ALL: [CaKind; 3] = [CaKind::Cluster, CaKind::FrontProxy, CaKind::Etcd];

    /// Short stable name, usable in Secret names.
    pub fn name(self) -> &'static str {
        match self {
            CaKind::Cluster => "ca",
            CaKind::FrontProxy => "front-proxy-ca",
            CaKind::Etcd => "etcd-ca",
        }
    }

    /// The CA's subject CN; names the tenant so certificates are traceable.
    pub fn common_name(self, cluster_name: &str) -> String {
        format!("kok-{cluster_name}-{}", self.name())
    }
}

/// One leaf of the catalogue: a stable name, its CA and what to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafCert {
    pub name: String,
    pub ca: CaKind,
    pub spec: LeafSpec,
}

/// Every leaf certificate one tenant control plane needs.
pub fn tenant_leaf_certs(inputs: &TenantPkiInputs) -> Vec<LeafCert> {
    let domain = &inputs.cluster_domain;
    // In-cluster clients reach the apiserver through the "kubernetes" Service.
    let service_names = [
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        format!("kubernetes.default.svc.{domain}"),
    ];
    let apiserver_sans = dedup(
        inputs
            .apiserver_sans
            .iter()
            .cloned()
            .chain(service_names.into_iter().map(San::Dns)),
    );
    let masters = &["system:masters"][..];
    use CaKind::{Cluster, Etcd, FrontProxy};
    use Usage::{Client, Server, ServerAndClient};
    let names = crate::names::Names::new(&inputs.cluster_name);
    let generations = std::iter::once((inputs.etcd_generation, &inputs.etcd_sans))
        .chain(inputs.etcd_target.iter().map(|(g, sans)| (*g, sans)));
    let mut etcd_leaves = Vec::new();
    for (g, sans) in generations {
        let sans = dedup(sans.iter().cloned());
        let n = names.at_etcd_generation(g);
        for base in ["etcd-server", "etcd-peer"] {
            let mut l = leaf(base, Etcd, base, &[], sans.clone(), ServerAndClient);
            l.name = n.etcd_leaf(base);
            etcd_leaves.push(l);
        }
    }
    let mut leaves = vec![
        leaf(
            "apiserver",
            Cluster,
            "kube-apiserver",
            &[],
            apiserver_sans,
            Server,
        ),
        leaf(
            "apiserver-kubelet-client",
            Cluster,
            "kube-apiserver-kubelet-client",
            masters,
            vec![],
            Client,
        ),
        leaf(
            "front-proxy-client",
            FrontProxy,
            "front-proxy-client",
            &[],
            vec![],
            Client,
        ),
        leaf(
            "apiserver-etcd-client",
            Etcd,
            "kube-apiserver-etcd-client",
            &[],
            vec![],
            Client,
        ),
        leaf(
            "etcd-operator-client",
            Etcd,
            "kok-etcd-client",
            &[],
            vec![],
            Client,
        ),
        leaf("admin", Cluster, "kok-admin", masters, vec![], Client),
        leaf(
            "controller-manager",
            Cluster,
            "system:kube-controller-manager",
            &[],
            vec![],
            Client,
        ),
        leaf(
            "scheduler",
            Cluster,
            "system:kube-scheduler",
            &[],
            vec![],
            Client,
        ),
    ];
    leaves.extend(etcd_leaves);
    leaves
}

fn leaf(
    name: &str,
    ca: CaKind,
    common_name: &str,
    organizations: &[&str],
    sans: Vec<San>,
    usage: Usage,
) -> LeafCert {
    LeafCert {
        name: name.to_string(),
        ca,
        spec: LeafSpec {
            common_name: common_name.to_string(),
            organizations: organizations.iter().map(|o| o.to_string()).collect(),
            sans,
            usage,
            validity: LEAF_VALIDITY,
        },
    }
}

/// Keeps the first occurrence, so the order the caller chose is preserved.
fn dedup(sans: impl IntoIterator<Item = San>) -> Vec<San> {
    let mut out: Vec<San> = Vec::new();
    for san in sans {
        if !out.contains(&san) {
            out.push(san);
        }
    }
    out
}

fn new_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

fn load_key(key_pem: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(key_pem).map_err(|e| PkiError::InvalidKey(e.to_string()))
}

fn validity_window(
    now: OffsetDateTime,
    validity: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let invalid = || PkiError::InvalidValidity { now, validity };
    if validity <= Duration::ZERO {
        return Err(invalid());
    }
    let not_before = now.checked_sub(BACKDATE).ok_or_else(invalid)?;
    let not_after = now.checked_add(validity).ok_or_else(invalid)?;
    Ok((not_before, not_after))
}

fn subject(common_name: &str, organizations: &[String]) -> Result<DistinguishedName, PkiError> {
    if common_name.is_empty() {
        return Err(PkiError::InvalidSubject("empty common name".into()));
    }
    // rcgen stores one value per attribute type; a second O would be dropped silently.
    if organizations.len() > 1 {
        return Err(PkiError::InvalidSubject(format!(
            "at most one organization is supported, got {organizations:?}"
        )));
    }
    let mut dn = DistinguishedName::new();
    if let Some(org) = organizations.first() {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    dn.push(DnType::CommonName, common_name);
    Ok(dn)
}

fn rcgen_san(san: &San) -> Result<SanType, PkiError> {
    match san {
        San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        San::Dns(name) if name.is_empty() => Err(PkiError::InvalidDnsName(name.clone())),
        San::Dns(name) => name
            .as_str()
            .try_into()
            .map(SanType::DnsName)
            .map_err(|_| PkiError::InvalidDnsName(name.clone())),
    }
}

/// Loads a stored CA for signing, refusing material that would yield unverifiable leaves.
fn load_issuer(ca: &CertKeyPair) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let der = pem_der(&ca.cert_pem)?;
    let cert = parse_cert(&der)?;
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        return Err(PkiError::NotACa);
    }
    let key = load_key(&ca.key_pem)?;
    if key.subject_public_key_info() != cert.public_key().raw {
        return Err(PkiError::KeyMismatch);
    }
    Issuer::from_ca_cert_pem(&ca.cert_pem, key)
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))
}

/// The DER of the first PEM block, which must be a certificate.
fn pem_der(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    if block.label != "CERTIFICATE" {
        return Err(PkiError::InvalidCertificate(format!(
            "expected a CERTIFICATE block, found {:?}",
            block.label
        )));
    }
    Ok(block.contents)
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCertificate("trailing data".into()));
    }
    Ok(cert)
}

fn check_leaf(
    leaf: &CertKeyPair,
    ca: &CertKeyPair,
    spec: &LeafSpec,
    now: OffsetDateTime,
    renew_before: Duration,
) -> Result<Option<RenewalReason>, PkiError> {
    let leaf_der = pem_der(&leaf.cert_pem)?;
    let cert = parse_cert(&leaf_der)?;
    let ca_der = pem_der(&ca.cert_pem)?;
    let ca_cert = parse_cert(&ca_der)?;
    let key = load_key(&leaf.key_pem)?;

    if key.subject_public_key_info() != cert.public_key().raw {
        return Ok(Some(RenewalReason::KeyMismatch));
    }
    if !signed_by(&cert, &ca_cert) {
        return Ok(Some(RenewalReason::NotSignedByCa));
    }
    let not_after = cert.validity().not_after.to_datetime();
    if not_after - now < renew_before {
        return Ok(Some(RenewalReason::Expiring { not_after }));
    }
    if !subject_matches(&cert, spec)? {
        return Ok(Some(RenewalReason::SubjectChanged));
    }
    if cert_sans(&cert)? != normalized(&spec.sans) {
        return Ok(Some(RenewalReason::SansChanged));
    }
    if !usage_matches(&cert, spec.usage)? {
        return Ok(Some(RenewalReason::UsageChanged));
    }
    Ok(None)
}

/// Name chaining alone is not enough: a replaced CA may reuse the same name.
fn signed_by(cert: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok()
}

fn subject_matches(cert: &X509Certificate<'_>, spec: &LeafSpec) -> Result<bool, PkiError> {
    let bad = |e: x509_parser::error::X509Error| PkiError::InvalidCertificate(e.to_string());
    let cns = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str())
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let orgs = cert
        .subject()
        .iter_organization()
        .map(|a| a.as_str())
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(bad)?;
    let wanted_orgs: BTreeSet<&str> = spec.organizations.iter().map(String::as_str).collect();
    Ok(cns == [spec.common_name.as_str()] && orgs == wanted_orgs)
}

/// SANs compared as a set; DNS names are case-insensitive.
fn normalized(sans: &[San]) -> BTreeSet<San> {
    sans.iter()
        .map(|san| match san {
            San::Dns(name) => San::Dns(name.to_ascii_lowercase()),
            San::Ip(ip) => San::Ip(*ip),
        })
        .collect()
}

fn cert_sans(cert: &X509Certificate<'_>) -> Result<BTreeSet<San>, PkiError> {
    let ext = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    let mut sans = Vec::new();
    for name in ext.iter().flat_map(|ext| &ext.value.general_names) {
        sans.push(match name {
            GeneralName::DNSName(dns) => San::Dns((*dns).to_string()),
            GeneralName::IPAddress(bytes) => San::Ip(ip_from_bytes(bytes)?),
            other => {
                return Err(PkiError::InvalidCertificate(format!(
                    "unexpected SAN {other:?}"
                )))
            }
        });
    }
    Ok(normalized(&sans))
}

fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, PkiError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::from(v6));
    }
    Err(PkiError::InvalidCertificate(format!(
        "IP SAN of {} bytes",
        bytes.len()
    )))
}

fn usage_matches(cert: &X509Certificate<'_>, usage: Usage) -> Result<bool, PkiError> {
    let eku = cert
        .extended_key_usage()
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    let (server, client) = eku.map_or((false, false), |e| {
        (e.value.server_auth, e.value.client_auth)
    });
    Ok(server == usage.server() && client == usage.client())
}

/// A YAML double-quoted scalar; JSON-style escapes are valid YAML.
fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    // 2026-01-01T00:00:00Z: tests never read the clock.
    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_767_225_600).expect("valid timestamp")
    }

    fn der_of(pem: &str) -> Vec<u8> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
        assert_eq!(block.label, "CERTIFICATE");
        block.contents
    }

    fn x509(der: &[u8]) -> X509Certificate<'_> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der).expect("X.509");
        assert!(rest.is_empty());
        cert
    }

    fn dns(s: &str) -> San {
        San::Dns(s.to_string())
    }

    fn ip4(a: u8, b: u8, c: u8, d: u8) -> San {
        San::Ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
    }

    fn server_spec() -> LeafSpec {
        LeafSpec {
            common_name: "kube-apiserver".into(),
            organizations: vec![],
            sans: vec![
                dns("demo-apiserver"),
                dns("demo-apiserver.ns.svc"),
                ip4(10, 96, 0, 1),
                San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ],
            usage: Usage::Server,
            validity: LEAF_VALIDITY,
        }
    }

    fn client_spec() -> LeafSpec {
        LeafSpec {
            common_name: "kok-admin".into(),
            organizations: vec!["system:masters".into()],
            sans: vec![],
            usage: Usage::Client,
            validity: LEAF_VALIDITY,
        }
    }

    fn ca() -> CertKeyPair {
        new_ca("kok-demo-ca", now(), CA_VALIDITY).expect("CA")
    }

    fn strs<'a, 'b: 'a>(
        it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'b>>,
    ) -> Vec<String> {
        it.map(|a| a.as_str().expect("string attribute").to_string())
            .collect()
    }

    fn assert_window(cert: &X509Certificate<'_>, validity: Duration) {
        let nb = cert.validity().not_before.to_datetime();
        let na = cert.validity().not_after.to_datetime();
        assert!(nb <= now(), "not_before {nb} after now");
        assert!(
            (na - (now() + validity)).abs() <= Duration::minutes(1),
            "not_after {na}"
        );
    }

    /// Every property a correct leaf must have, checked against the raw certificate.
    fn assert_leaf(ca: &CertKeyPair, leaf: &CertKeyPair, spec: &LeafSpec) {
        let ca_der = der_of(&ca.cert_pem);
        let ca_cert = x509(&ca_der);
        let der = der_of(&leaf.cert_pem);
        let cert = x509(&der);

        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        cert.verify_signature(Some(ca_cert.public_key()))
            .expect("signature verifies with the CA key");

        let key = KeyPair::from_pem(&leaf.key_pem).expect("leaf key");
        assert_eq!(key.subject_public_key_info(), cert.public_key().raw);

        let mut sans = Vec::new();
        if let Some(ext) = cert.subject_alternative_name().expect("SAN ext") {
            for name in &ext.value.general_names {
                sans.push(match name {
                    GeneralName::DNSName(d) => dns(d),
                    GeneralName::IPAddress(b) => San::Ip(ip_from_bytes(b).expect("IP")),
                    other => panic!("unexpected SAN {other:?}"),
                });
            }
        }
        assert_eq!(sans, spec.sans, "SANs exactly as specified");

        let ku = cert.key_usage().expect("KU").expect("KU present").value;
        assert!(ku.digital_signature() && ku.key_encipherment());
        assert!(!ku.key_cert_sign() && !ku.crl_sign());

        let eku = cert
            .extended_key_usage()
            .expect("EKU")
            .expect("EKU present")
            .value;
        assert_eq!(eku.server_auth, spec.usage.server());
        assert_eq!(eku.client_auth, spec.usage.client());
        assert!(!eku.any);

        let bc = cert
            .basic_constraints()
            .expect("BC")
            .expect("BC present")
            .value;
        assert!(!bc.ca);

        assert_window(&cert, spec.validity);
        assert_eq!(
            strs(cert.subject().iter_common_name()),
            vec![spec.common_name.clone()]
        );
        assert_eq!(strs(cert.subject().iter_organization()), spec.organizations);
    }

    #[test]
    fn ca_is_self_signed_ca() {
        let ca = ca();
        let der = der_of(&ca.cert_pem);
        let cert = x509(&der);
        assert_eq!(cert.issuer().as_raw(), cert.subject().as_raw());
        cert.verify_signature(None).expect("self-signature");
        let bc = cert.basic_constraints().expect("BC").expect("BC present");
        assert!(bc.value.ca && bc.critical);
        let ku = cert.key_usage().expect("KU").expect("KU present").value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        assert_eq!(strs(cert.subject().iter_common_name()), vec!["kok-demo-ca"]);
        assert_window(&cert, CA_VALIDITY);
        assert!(ca.key_pem.contains("BEGIN PRIVATE KEY"));
    }

    #[test]
    fn server_and_client_leaves_are_correct() {
        let ca = ca();
        for spec in [
            server_spec(),
            client_spec(),
            LeafSpec {
                usage: Usage::ServerAndClient,
                ..server_spec()
            },
        ] {
            let leaf = issue_leaf(&ca, &spec, now()).expect("leaf");
            assert_leaf(&ca, &leaf, &spec);
        }
    }

    #[test]
    fn same_ca_pem_signs_every_leaf() {
        let ca = ca();
        let before = ca.clone();
        let a = issue_leaf(&ca, &server_spec(), now()).expect("a");
        let b = issue_leaf(&ca, &server_spec(), now()).expect("b");
        assert_eq!(ca, before);
        assert_ne!(a.key_pem, b.key_pem, "a new key for every leaf");
        assert_ne!(a.cert_pem, b.cert_pem);
        assert_leaf(&ca, &a, &server_spec());
        assert_leaf(&ca, &b, &server_spec());
    }

    #[test]
    fn issue_rejects_bad_inputs() {
        let ca = ca();
        let other = new_ca("other", now(), CA_VALIDITY).expect("other CA");
        let leaf = issue_leaf(&ca, &client_spec(), now()).expect("leaf");
        let garbage = CertKeyPair {
            cert_pem: "not a pem".into(),
            key_pem: ca.key_pem.clone(),
        };
        let swapped = CertKeyPair {
            cert_pem: ca.cert_pem.clone(),
            key_pem: other.key_pem.clone(),
        };
        let two_orgs = LeafSpec {
            organizations: vec!["a".into(), "b".into()],
            ..client_spec()
        };
        let no_time = LeafSpec {
            validity: Duration::ZERO,
            ..client_spec()
        };
        let spec = client_spec();
        assert!(matches!(
            issue_leaf(&garbage, &spec, now()),
            Err(PkiError::InvalidCertificate(_))
        ));
        assert!(matches!(
            issue_leaf(&leaf, &spec, now()),
            Err(PkiError::NotACa)
        ));
        assert!(matches!(
            issue_leaf(&swapped, &spec, now()),
            Err(PkiError::KeyMismatch)
        ));
        assert!(matches!(
            issue_leaf(&ca, &two_orgs, now()),
            Err(PkiError::InvalidSubject(_))
        ));
        assert!(matches!(
            issue_leaf(&ca, &no_time, now()),
            Err(PkiError::InvalidValidity { .. })
        ));
    }

    #[test]
    fn renewal_none_when_fresh_and_sans_reordered() {
        let ca = ca();
        let spec = server_spec();
        let leaf = issue_leaf(&ca, &spec, now()).expect("leaf");
        assert_eq!(
            leaf_renewal_reason(&leaf, &ca, &spec, now(), RENEW_BEFORE),
            None
        );
        let mut reordered = spec.clone();
        reordered.sans.reverse();
        reordered.sans.push(dns("DEMO-APISERVER"));
        let later = now() + Duration::days(300);
        assert_eq!(
            leaf_renewal_reason(&leaf, &ca, &reordered, later, RENEW_BEFORE),
            None
        );
    }

    #[test]
    fn renewal_when_expiring_or_expired() {
        let ca = ca();
        let spec = server_spec();
        let leaf = issue_leaf(&ca, &spec, now()).expect("leaf");
        let expiry = not_after(&leaf.cert_pem).expect("not_after");
        for at in [now() + Duration::days(340), now() + Duration::days(400)] {
            assert_eq!(
                leaf_renewal_reason(&leaf, &ca, &spec, at, RENEW_BEFORE),
                Some(RenewalReason::Expiring { not_after: expiry })
            );
        }
    }

    #[test]
    fn renewal_when_sans_change() {
        let ca = ca();
        let spec = server_spec();
        let leaf = issue_leaf(&ca, &spec, now()).expect("leaf");
        let mut added = spec.clone();
        added.sans.push(dns("extra.example.com"));
        let mut removed = spec.clone();
        removed.sans.pop();
        for changed in [added, removed] {
            assert_eq!(
                leaf_renewal_reason(&leaf, &ca, &changed, now(), RENEW_BEFORE),
                Some(RenewalReason::SansChanged)
            );
        }
    }

    #[test]
    fn renewal_when_signed_by_another_ca_with_same_name() {
        let old_ca = ca();
        let replacement = ca(); // same CN, new key: only the signature tells them apart
        let spec = server_spec();
        let leaf = issue_leaf(&old_ca, &spec, now()).expect("leaf");
        assert_eq!(
            leaf_renewal_reason(&leaf, &replacement, &spec, now(), RENEW_BEFORE),
            Some(RenewalReason::NotSignedByCa)
        );
        let other = new_ca_named("someone-else");
        assert_eq!(
            leaf_renewal_reason(&leaf, &other, &spec, now(), RENEW_BEFORE),
            Some(RenewalReason::NotSignedByCa)
        );
    }

    fn new_ca_named(cn: &str) -> CertKeyPair {
        new_ca(cn, now(), CA_VALIDITY).expect("CA")
    }

    #[test]
    fn renewal_on_subject_usage_key_and_garbage() {
        let ca = ca();
        let spec = client_spec();
        let leaf = issue_leaf(&ca, &spec, now()).expect("leaf");
        let check =
            |l: &CertKeyPair, s: &LeafSpec| leaf_renewal_reason(l, &ca, s, now(), RENEW_BEFORE);

        let no_org = LeafSpec {
            organizations: vec![],
            ..spec.clone()
        };
        assert_eq!(check(&leaf, &no_org), Some(RenewalReason::SubjectChanged));
        let both = LeafSpec {
            usage: Usage::ServerAndClient,
            ..spec.clone()
        };
        assert_eq!(check(&leaf, &both), Some(RenewalReason::UsageChanged));

        let other = issue_leaf(&ca, &spec, now()).expect("other");
        let mixed = CertKeyPair {
            cert_pem: leaf.cert_pem.clone(),
            key_pem: other.key_pem,
        };
        assert_eq!(check(&mixed, &spec), Some(RenewalReason::KeyMismatch));

        let garbage = CertKeyPair {
            cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            key_pem: leaf.key_pem.clone(),
        };
        assert!(matches!(
            check(&garbage, &spec),
            Some(RenewalReason::Unparsable(_))
        ));
        let reason = check(&garbage, &spec).expect("reason").to_string();
        assert!(reason.starts_with("certificate is unreadable"), "{reason}");
    }

    #[test]
    fn not_after_reads_expiry_and_rejects_garbage() {
        let ca = ca();
        let expiry = not_after(&ca.cert_pem).expect("not_after");
        assert!((expiry - (now() + CA_VALIDITY)).abs() <= Duration::minutes(1));
        assert!(matches!(
            not_after("junk"),
            Err(PkiError::InvalidCertificate(_))
        ));
        assert!(matches!(
            not_after(&ca.key_pem),
            Err(PkiError::InvalidCertificate(_))
        ));
    }

    #[test]
    fn service_account_key_pems_parse_and_match() {
        let (private_pem, public_pem) = new_service_account_key().expect("SA key");
        assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let key = KeyPair::from_pem(&private_pem).expect("PKCS#8");
        assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);

        let (_, block) = x509_parser::pem::parse_x509_pem(public_pem.as_bytes()).expect("PEM");
        assert_eq!(block.label, "PUBLIC KEY");
        use x509_parser::prelude::FromDer as _;
        let (rest, spki) =
            x509_parser::x509::SubjectPublicKeyInfo::from_der(&block.contents).expect("SPKI");
        assert!(rest.is_empty());
        assert!(matches!(
            spki.parsed(),
            Ok(x509_parser::public_key::PublicKey::EC(_))
        ));
        assert_eq!(key.subject_public_key_info(), block.contents);
    }

    #[test]
    fn kubeconfig_is_valid_yaml_with_decodable_data() {
        let ca = ca();
        let client = issue_leaf(&ca, &client_spec(), now()).expect("client");
        let user = "system:kube-scheduler";
        let yaml = kubeconfig(
            "demo",
            "https://demo-apiserver:6443",
            &ca.cert_pem,
            user,
            &client,
        );
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("YAML");
        let b64 = |v: &serde_yaml::Value| {
            let s = v.as_str().expect("string");
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .expect("base64"),
            )
            .expect("utf8")
        };

        assert_eq!(doc["apiVersion"].as_str(), Some("v1"));
        assert_eq!(doc["kind"].as_str(), Some("Config"));
        let cluster = &doc["clusters"][0];
        assert_eq!(cluster["name"].as_str(), Some("demo"));
        assert_eq!(
            cluster["cluster"]["server"].as_str(),
            Some("https://demo-apiserver:6443")
        );
        assert_eq!(
            b64(&cluster["cluster"]["certificate-authority-data"]),
            ca.cert_pem
        );
        let u = &doc["users"][0];
        assert_eq!(u["name"].as_str(), Some(user));
        assert_eq!(b64(&u["user"]["client-certificate-data"]), client.cert_pem);
        assert_eq!(b64(&u["user"]["client-key-data"]), client.key_pem);
        let ctx = &doc["contexts"][0];
        assert_eq!(ctx["context"]["cluster"].as_str(), Some("demo"));
        assert_eq!(ctx["context"]["user"].as_str(), Some(user));
        assert_eq!(doc["current-context"], ctx["name"]);
        assert_eq!(doc["contexts"].as_sequence().map(Vec::len), Some(1));
    }

    #[test]
    fn yaml_quote_round_trips_awkward_strings() {
        for s in [
            "plain",
            "a: b",
            "#x",
            "quote\"back\\slash",
            "tab\tnl\n",
            "- [x]",
            "yes",
            "",
        ] {
            let doc: serde_yaml::Value =
                serde_yaml::from_str(&format!("k: {}", yaml_quote(s))).expect("YAML");
            assert_eq!(doc["k"].as_str(), Some(s));
        }
    }

    fn inputs() -> TenantPkiInputs {
        TenantPkiInputs {
            cluster_name: "demo".into(),
            cluster_domain: "tenant.local".into(),
            apiserver_sans: vec![
                dns("demo-apiserver"),
                dns("demo-apiserver.tenants.svc"),
                dns("kubernetes"), // duplicate of a built-in name: kept once
                ip4(10, 96, 0, 10),
                ip4(127, 0, 0, 1),
                dns("localhost"),
            ],
            etcd_sans: vec![
                dns("demo-etcd-0.demo-etcd.tenants.svc"),
                dns("demo-etcd-client.tenants.svc"),
                dns("localhost"),
                ip4(127, 0, 0, 1),
            ],
            etcd_generation: 0,
            etcd_target: None,
        }
    }

    #[test]
    fn a_migration_target_gets_etcd_leaves_of_its_own() {
        let mut i = inputs();
        i.etcd_target = Some((1, vec![dns("demo-etcd-g1-0")]));
        let leaves = tenant_leaf_certs(&i);
        let get = |n: &str| leaves.iter().find(|l| l.name == n).expect(n);
        // The running etcd's leaves are unchanged: nothing of it rolls.
        assert_eq!(get("etcd-server").spec.sans, inputs().etcd_sans);
        assert_eq!(get("etcd-server-g1").spec.sans, vec![dns("demo-etcd-g1-0")]);
        assert_eq!(get("etcd-peer-g1").spec.sans, vec![dns("demo-etcd-g1-0")]);
        // Once the target is the active generation, its leaves keep their names.
        i.etcd_generation = 1;
        i.etcd_sans = vec![dns("demo-etcd-g1-0")];
        i.etcd_target = None;
        let after = tenant_leaf_certs(&i);
        assert!(after.iter().any(|l| l.name == "etcd-server-g1"));
        assert!(!after.iter().any(|l| l.name == "etcd-server"));
    }

    #[test]
    fn catalogue_shape() {
        let leaves = tenant_leaf_certs(&inputs());
        let names: Vec<_> = leaves.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "apiserver",
                "apiserver-kubelet-client",
                "front-proxy-client",
                "apiserver-etcd-client",
                "etcd-operator-client",
                "admin",
                "controller-manager",
                "scheduler",
                "etcd-server",
                "etcd-peer",
            ]
        );
        let get = |n: &str| leaves.iter().find(|l| l.name == n).expect(n);

        let api = get("apiserver");
        assert_eq!((api.ca, api.spec.usage), (CaKind::Cluster, Usage::Server));
        assert_eq!(api.spec.common_name, "kube-apiserver");
        assert_eq!(
            api.spec.sans,
            vec![
                dns("demo-apiserver"),
                dns("demo-apiserver.tenants.svc"),
                dns("kubernetes"),
                ip4(10, 96, 0, 10),
                ip4(127, 0, 0, 1),
                dns("localhost"),
                dns("kubernetes.default"),
                dns("kubernetes.default.svc"),
                dns("kubernetes.default.svc.tenant.local"),
            ]
        );
        for n in ["etcd-server", "etcd-peer"] {
            assert_eq!(get(n).spec.sans, inputs().etcd_sans);
            assert_eq!(
                (get(n).ca, get(n).spec.usage),
                (CaKind::Etcd, Usage::ServerAndClient)
            );
        }
        for n in ["apiserver-kubelet-client", "admin"] {
            assert_eq!(
                get(n).spec.organizations,
                vec!["system:masters".to_string()]
            );
        }
        assert_eq!(get("front-proxy-client").ca, CaKind::FrontProxy);
        assert_eq!(
            get("etcd-operator-client").spec.common_name,
            "kok-etcd-client"
        );
        assert_eq!(
            get("controller-manager").spec.common_name,
            "system:kube-controller-manager"
        );
        assert_eq!(get("scheduler").spec.common_name, "system:kube-scheduler");
        assert!(leaves.iter().all(|l| l.spec.validity == LEAF_VALIDITY));
        assert_eq!(CaKind::Etcd.common_name("demo"), "kok-demo-etcd-ca");
    }

    #[test]
    fn catalogue_issues_and_verifies_against_its_ca() {
        let cas: Vec<(CaKind, CertKeyPair)> = CaKind::ALL
            .iter()
            .map(|k| {
                (
                    *k,
                    new_ca(&k.common_name("demo"), now(), CA_VALIDITY).expect("CA"),
                )
            })
            .collect();
        let ca_for = |k: CaKind| &cas.iter().find(|(kind, _)| *kind == k).expect("CA").1;
        for leaf in tenant_leaf_certs(&inputs()) {
            let ca = ca_for(leaf.ca);
            let issued = issue_leaf(ca, &leaf.spec, now()).expect(&leaf.name);
            assert_leaf(ca, &issued, &leaf.spec);
            assert_eq!(
                leaf_renewal_reason(&issued, ca, &leaf.spec, now(), RENEW_BEFORE),
                None,
                "{}",
                leaf.name
            );
            // Every leaf is rejected by the other CAs.
            for (kind, other) in &cas {
                if *kind != leaf.ca {
                    assert_eq!(
                        leaf_renewal_reason(&issued, other, &leaf.spec, now(), RENEW_BEFORE),
                        Some(RenewalReason::NotSignedByCa)
                    );
                }
            }
        }
    }
}
