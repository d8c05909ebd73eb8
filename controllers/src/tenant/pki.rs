//! The tenant's PKI in Secrets: CAs created once and never replaced, leaves
//! reissued when they expire within 30 days or no longer match what they must
//! certify.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Secret;
use kok_templates::controlplane::Placement;
use kok_templates::pki::{self, CaKind, CertKeyPair, TenantPkiInputs, CA_VALIDITY, RENEW_BEFORE};
use kok_templates::secrets::{self, cert_key_pair, string_data, CA_CERT_KEY, CA_KEY_KEY};
use kube::api::PostParams;
use kube::Api;
use time::OffsetDateTime;
use tracing::info;

use crate::runtime::apply::{apply, check_owner};
use crate::runtime::error::{Error, Result};
use kok_crds::TenantCluster;
use kok_templates::controlplane::ConfigHashes;
use kok_templates::pki::San;
use kok_templates::secrets::config_hash;
use kok_templates::validate::ValidSpec;

/// What the rest of the reconcile needs from the PKI.
pub struct TenantPki {
    pub cas: HashMap<CaKind, CertKeyPair>,
    pub sa_key: String,
    pub sa_pub: String,
    /// The apiserver's EncryptionConfiguration (Secrets at rest).
    pub encryption_config: String,
    /// Every leaf by catalogue name.
    pub leaves: BTreeMap<String, CertKeyPair>,
    /// Leaves issued in this reconcile, with why.
    pub issued: Vec<(String, String)>,
    /// When the first leaf expires.
    pub earliest_expiry: Option<OffsetDateTime>,
}

impl TenantPki {
    pub fn ca(&self, kind: CaKind) -> &CertKeyPair {
        // ensure() fills all three kinds before returning.
        &self.cas[&kind]
    }
}

pub async fn ensure(
    secrets_api: &Api<Secret>,
    p: &Placement,
    inputs: &TenantPkiInputs,
) -> Result<TenantPki> {
    let now = OffsetDateTime::now_utc();
    let mut cas = HashMap::new();
    for kind in CaKind::ALL {
        let ca = ensure_ca(secrets_api, p, kind, now).await?;
        cas.insert(kind, ca);
    }
    let (sa_key, sa_pub) = ensure_service_account_key(secrets_api, p).await?;
    let encryption_config = ensure_encryption_config(secrets_api, p).await?;

    let certs_name = p.names.certs_secret();
    let stored = match secrets_api.get_opt(&certs_name).await? {
        Some(s) => {
            check_owner(&s, &p.owner.uid)?;
            string_data(&s)
        }
        None => BTreeMap::new(),
    };
    let mut leaves = BTreeMap::new();
    let mut issued = Vec::new();
    for leaf in pki::tenant_leaf_certs(inputs) {
        let ca = &cas[&leaf.ca];
        let existing = cert_key_pair(&stored, &leaf.name);
        let reason = match &existing {
            None => Some("missing".to_string()),
            Some(l) => pki::leaf_renewal_reason(l, ca, &leaf.spec, now, RENEW_BEFORE)
                .map(|r| r.to_string()),
        };
        let pair = match (existing, reason) {
            (Some(pair), None) => pair,
            (_, reason) => {
                let reason = reason.unwrap_or_else(|| "missing".into());
                info!(leaf = %leaf.name, %reason, "issuing certificate");
                issued.push((leaf.name.clone(), reason));
                pki::issue_leaf(ca, &leaf.spec, now)?
            }
        };
        leaves.insert(leaf.name.clone(), pair);
    }
    if !issued.is_empty() {
        let data = leaves
            .iter()
            .flat_map(|(name, pair)| {
                [
                    (format!("{name}.crt"), pair.cert_pem.clone()),
                    (format!("{name}.key"), pair.key_pem.clone()),
                ]
            })
            .collect();
        apply(secrets_api, &secrets::secret(p, certs_name, "Opaque", data)).await?;
    }
    let earliest_expiry = leaves
        .values()
        .filter_map(|l| pki::not_after(&l.cert_pem).ok())
        .min();
    Ok(TenantPki {
        cas,
        sa_key,
        sa_pub,
        encryption_config,
        leaves,
        issued,
        earliest_expiry,
    })
}

/// Reads a CA, or creates it when its Secret does not exist. Created with a
/// plain create, never applied: an existing CA must never be overwritten,
/// since every client certificate in the tenant chains to it.
async fn ensure_ca(
    api: &Api<Secret>,
    p: &Placement,
    kind: CaKind,
    now: OffsetDateTime,
) -> Result<CertKeyPair> {
    let name = p.names.ca_secret(kind.name());
    if let Some(existing) = api.get_opt(&name).await? {
        // A CA is adopted only from this TenantCluster: a same-named Secret of
        // another tenant or a user is never used to sign this tenant's certificates.
        check_owner(&existing, &p.owner.uid)?;
        return read_ca(&name, &existing);
    }
    let ca = pki::new_ca(&kind.common_name(&p.names.tenant), now, CA_VALIDITY)?;
    match api
        .create(
            &PostParams::default(),
            &secrets::ca_secret(p, name.clone(), &ca),
        )
        .await
    {
        Ok(_) => {
            info!(secret = %name, "created certificate authority");
            Ok(ca)
        }
        // Someone (a previous run of ours) created it meanwhile: use theirs.
        Err(e) if crate::runtime::api::is_conflict(&e) => {
            let existing = api.get(&name).await?;
            check_owner(&existing, &p.owner.uid)?;
            read_ca(&name, &existing)
        }
        Err(e) => Err(e.into()),
    }
}

fn read_ca(name: &str, secret: &Secret) -> Result<CertKeyPair> {
    let data = string_data(secret);
    let corrupt = |reason: &str| Error::CorruptCa {
        secret: name.to_string(),
        reason: reason.to_string(),
    };
    let pair = CertKeyPair {
        cert_pem: data
            .get(CA_CERT_KEY)
            .ok_or_else(|| corrupt("no tls.crt"))?
            .clone(),
        key_pem: data
            .get(CA_KEY_KEY)
            .ok_or_else(|| corrupt("no tls.key"))?
            .clone(),
    };
    pki::not_after(&pair.cert_pem).map_err(|e| corrupt(&e.to_string()))?;
    Ok(pair)
}

/// The service-account signing key is as precious as a CA: every token in the
/// tenant is signed with it, so it is also created once and never replaced.
async fn ensure_service_account_key(api: &Api<Secret>, p: &Placement) -> Result<(String, String)> {
    let name = p.names.service_account_secret();
    let read = |s: &Secret| -> Result<(String, String)> {
        let data = string_data(s);
        match (data.get("sa.key"), data.get("sa.pub")) {
            (Some(k), Some(p)) => Ok((k.clone(), p.clone())),
            _ => Err(Error::CorruptCa {
                secret: name.clone(),
                reason: "sa.key or sa.pub missing".into(),
            }),
        }
    };
    if let Some(existing) = api.get_opt(&name).await? {
        check_owner(&existing, &p.owner.uid)?;
        return read(&existing);
    }
    let (key, public) = pki::new_service_account_key()?;
    let secret = secrets::secret(
        p,
        name.clone(),
        "Opaque",
        BTreeMap::from([
            ("sa.key".to_string(), key.clone()),
            ("sa.pub".to_string(), public.clone()),
        ]),
    );
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok((key, public)),
        Err(e) if crate::runtime::api::is_conflict(&e) => {
            let existing = api.get(&name).await?;
            check_owner(&existing, &p.owner.uid)?;
            read(&existing)
        }
        Err(e) => Err(e.into()),
    }
}

/// The key that seals the tenant's Secrets in etcd: created once, never
/// replaced (Secrets sealed with it, in etcd and in every backup, need it),
/// and kept when the tenant is deleted, like its etcd volumes. A Secret of
/// that name that is not this tenant's key stalls the tenant.
async fn ensure_encryption_config(api: &Api<Secret>, p: &Placement) -> Result<String> {
    let name = p.names.encryption_secret();
    let read = |s: &Secret| match kok_templates::at_rest::key_secret_problem(s, &p.names.tenant) {
        None => Ok(kok_templates::at_rest::stored_config(s)),
        Some(reason) => Err(Error::UnusableEncryptionKey {
            secret: name.clone(),
            reason,
        }),
    };
    if let Some(existing) = api.get_opt(&name).await? {
        return read(&existing);
    }
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| Error::Pki(pki::PkiError::Random))?;
    let config = kok_templates::at_rest::encryption_config(&base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        key,
    ));
    let secret = kok_templates::at_rest::key_secret(&p.names, &p.namespace, &config);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(secret = %name, "created the key for Secrets at rest");
            Ok(config)
        }
        Err(e) if crate::runtime::api::is_conflict(&e) => read(&api.get(&name).await?),
        Err(e) => Err(e.into()),
    }
}

// ---- inputs from the TenantCluster -------------------------------------------

pub(super) fn pki_inputs(
    p: &Placement,
    tc: &TenantCluster,
    valid: &ValidSpec,
    apiserver_ip: &str,
    endpoint_host: Option<&str>,
) -> TenantPkiInputs {
    let apiserver = p.names.apiserver();
    let ns = &p.namespace;
    let mut apiserver_sans = vec![
        San::Dns(apiserver.clone()),
        San::Dns(format!("{apiserver}.{ns}")),
        San::Dns(format!("{apiserver}.{ns}.svc")),
        San::Dns(format!("{apiserver}.{ns}.svc.cluster.local")),
        San::Dns("localhost".into()),
        San::Ip([127, 0, 0, 1].into()),
        San::Ip(valid.kubernetes_service_ip),
    ];
    for host in [Some(apiserver_ip), endpoint_host].into_iter().flatten() {
        apiserver_sans.push(match host.parse() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(host.to_string()),
        });
    }
    apiserver_sans.extend(valid.extra_sans.iter().cloned());
    let etcd_sans = etcd_sans_of(&p.names);
    TenantPkiInputs {
        cluster_name: p.names.tenant.clone(),
        cluster_domain: tc.spec.networking.cluster_domain.clone(),
        apiserver_sans: dedup(apiserver_sans),
        etcd_sans,
        etcd_generation: p.names.etcd_generation,
        // A migration's target etcd, from the moment it is opened until it
        // serves (then it is the active generation above).
        etcd_target: tc
            .status
            .as_ref()
            .and_then(|s| s.migration.as_ref())
            .filter(|m| kok_templates::migration::builds_target(m.phase))
            .map(|m| {
                let target = p.names.at_etcd_generation(m.target.etcd_generation);
                (m.target.etcd_generation, etcd_sans_of(&target))
            }),
    }
}

/// Every member one etcd generation may ever have (a live scaling adds
/// members without new certificates), its client Service name, localhost.
fn etcd_sans_of(names: &kok_templates::names::Names) -> Vec<San> {
    let mut sans: Vec<San> = (0..kok_templates::names::MAX_ETCD_MEMBERS)
        .map(|i| San::Dns(names.etcd_member(i)))
        .collect();
    sans.push(San::Dns(names.etcd()));
    sans.push(San::Dns("localhost".into()));
    sans.push(San::Ip([127, 0, 0, 1].into()));
    sans
}

pub(super) fn dedup(mut sans: Vec<San>) -> Vec<San> {
    let mut seen = std::collections::HashSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

/// The hash of what an etcd generation's pods mount.
pub(super) fn etcd_config_hash(pki: &TenantPki, names: &kok_templates::names::Names) -> String {
    let leaf = |n: String| {
        pki.leaves
            .get(&n)
            .map(|l| l.cert_pem.clone())
            .unwrap_or_default()
    };
    let (server, peer) = (
        leaf(names.etcd_leaf("etcd-server")),
        leaf(names.etcd_leaf("etcd-peer")),
    );
    config_hash([
        ("etcd-ca", pki.ca(CaKind::Etcd).cert_pem.as_str()),
        ("etcd-server", server.as_str()),
        ("etcd-peer", peer.as_str()),
    ])
}

pub(super) fn config_hashes(
    pki: &TenantPki,
    names: &kok_templates::names::Names,
    cm_kubeconfig: &str,
    sched_kubeconfig: &str,
) -> ConfigHashes {
    let leaf = |n: &str| {
        pki.leaves
            .get(n)
            .map(|l| l.cert_pem.as_str())
            .unwrap_or_default()
    };
    let ca = |k: CaKind| pki.ca(k).cert_pem.as_str();
    ConfigHashes {
        etcd: etcd_config_hash(pki, names),
        apiserver: config_hash(
            [
                ("ca", ca(CaKind::Cluster)),
                ("front-proxy-ca", ca(CaKind::FrontProxy)),
                ("etcd-ca", ca(CaKind::Etcd)),
                ("sa.pub", pki.sa_pub.as_str()),
                // A rotation (a key put in front) reaches the apiservers.
                ("encryption", pki.encryption_config.as_str()),
            ]
            .into_iter()
            .chain(
                [
                    "apiserver",
                    "apiserver-kubelet-client",
                    "apiserver-etcd-client",
                    "front-proxy-client",
                ]
                .into_iter()
                .map(|n| (n, leaf(n))),
            ),
        ),
        controller_manager: config_hash([
            ("ca", ca(CaKind::Cluster)),
            ("sa.key", pki.sa_key.as_str()),
            ("kubeconfig", cm_kubeconfig),
        ]),
        scheduler: config_hash([("kubeconfig", sched_kubeconfig)]),
    }
}

/// What another controller (join tokens) needs to act in a tenant as kok:
/// the cluster CA and the admin identity, read from the tenant's Secrets
/// (never created here). `None` while the tenant has not issued them yet.
pub struct AdminAccess {
    pub ca_pem: String,
    pub admin: CertKeyPair,
}

pub async fn read_admin_access(
    secrets_api: &Api<Secret>,
    names: &kok_templates::names::Names,
    owner_uid: &str,
) -> Result<Option<AdminAccess>> {
    let ca_name = names.ca_secret(CaKind::Cluster.name());
    let (Some(ca), Some(certs)) = (
        secrets_api.get_opt(&ca_name).await?,
        secrets_api.get_opt(&names.certs_secret()).await?,
    ) else {
        return Ok(None);
    };
    check_owner(&ca, owner_uid)?;
    check_owner(&certs, owner_uid)?;
    let ca = read_ca(&ca_name, &ca)?;
    Ok(
        cert_key_pair(&string_data(&certs), "admin").map(|admin| AdminAccess {
            ca_pem: ca.cert_pem,
            admin,
        }),
    )
}
