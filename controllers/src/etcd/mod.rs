//! Connecting to a tenant's etcd with the client certificate kok issued for
//! itself (`etcd-operator-client`), one member at a time.

pub mod membership;
pub mod snapshot;
pub mod verify;

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use k8s_openapi::api::core::v1::{Secret, Service};
use kok_crds::TenantCluster;
use kok_templates::backup_source::MemberProbe;
use kok_templates::names::{tenant_names, Names};
use kok_templates::secrets::string_data;
use kube::{Api, ResourceExt};

/// How long a member may take to answer a health probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// One member's address and the name its certificate carries.
#[derive(Clone, Debug)]
pub struct Member {
    pub url: String,
    /// TLS server name to verify (`<tenant>-etcd-<i>`); `None` for plain http.
    pub tls_name: Option<String>,
}

#[derive(Clone)]
pub struct Tls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Clone)]
pub struct EtcdAccess {
    pub members: Vec<Member>,
    pub tls: Option<Tls>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("no etcd member answered: {0}")]
    Unreachable(String),
    #[error("tenant etcd access: {0}")]
    Access(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl EtcdAccess {
    /// Connects to the first member that answers a status call.
    pub async fn connect(&self) -> Result<Client, EtcdError> {
        let mut last = String::from("no members");
        for m in &self.members {
            let options = self.options(m, Duration::from_secs(5), Duration::from_secs(30));
            match Client::connect([m.url.as_str()], Some(options)).await {
                Ok(mut c) => match c.status().await {
                    Ok(_) => return Ok(c),
                    Err(e) => last = format!("{}: {e}", m.url),
                },
                Err(e) => last = format!("{}: {e}", m.url),
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    /// A client of member `m` alone (no failover to the others): what that
    /// member itself reports is what a rolling replacement needs to know.
    pub async fn connect_member(&self, m: &Member) -> Result<Client, EtcdError> {
        let options = self.options(m, Duration::from_secs(3), Duration::from_secs(10));
        Client::connect([m.url.as_str()], Some(options))
            .await
            .map_err(|e| EtcdError::Unreachable(format!("{}: {e}", m.url)))
    }

    /// Asks every member, in parallel, whether it serves a quorum read: a
    /// linearizable get through that member alone succeeds only when a
    /// leader and a quorum exist and the member has applied everything
    /// committed before it. Bounded: a member that does not answer within
    /// a few seconds counts as down.
    pub async fn probe(&self) -> Vec<MemberProbe> {
        let probes = self.members.iter().map(|m| async move {
            let name = m.tls_name.clone().unwrap_or_else(|| m.url.clone());
            let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
                let mut c = self.connect_member(m).await?;
                let status = c.status().await?;
                // Any key: etcdctl's endpoint health reads "health" the same way.
                c.get("health", Some(GetOptions::new().with_count_only()))
                    .await?;
                let id = status.header().map(|h| h.member_id()).unwrap_or_default();
                Ok::<_, EtcdError>((status.leader() == id, status.raft_applied_index()))
            })
            .await;
            let (is_leader, applied_index, error) = match answer {
                Ok(Ok((leader, applied))) => (leader, applied, None),
                Ok(Err(e)) => (false, 0, Some(e.to_string())),
                Err(_) => (
                    false,
                    0,
                    Some(format!("no answer within {PROBE_TIMEOUT:?}")),
                ),
            };
            MemberProbe {
                name,
                serves_quorum_reads: error.is_none(),
                is_leader,
                applied_index,
                error,
            }
        });
        futures::future::join_all(probes).await
    }

    /// Connection options for member `m`: TLS with kok's client certificate
    /// when the tenant's etcd uses it.
    fn options(&self, m: &Member, connect: Duration, timeout: Duration) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(connect)
            .with_timeout(timeout);
        if let (Some(tls), Some(name)) = (&self.tls, &m.tls_name) {
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                    .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                    .domain_name(name.clone()),
            );
        }
        options
    }

    /// The members of a running tenant, by their Services' ClusterIPs;
    /// not a learner a live scaling is adding (it refuses most requests) nor
    /// a member it is removing.
    pub async fn for_tenant(client: &kube::Client, tc: &TenantCluster) -> Result<Self, EtcdError> {
        let status = tc.status.as_ref();
        let replicas = status
            .and_then(|s| s.etcd_replicas)
            .unwrap_or(tc.spec.etcd.replicas);
        let names = tenant_names(tc);
        let mut access = Self::for_generation(client, tc, &names, replicas).await?;
        let kept_off =
            kok_templates::etcd_scale::kept_off(status.and_then(|s| s.etcd_scaling.as_ref()))
                .map(|i| names.etcd_member(i));
        if access.members.len() > 1 {
            access
                .members
                .retain(|m| kept_off.is_none() || m.tls_name != kept_off);
        }
        Ok(access)
    }

    /// The `replicas` members of the etcd generation `names` refers to (a
    /// migration reaches its source and its target this way).
    pub async fn for_generation(
        client: &kube::Client,
        tc: &TenantCluster,
        names: &Names,
        replicas: i32,
    ) -> Result<Self, EtcdError> {
        let ns = tc.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let read = |s: Option<Secret>, what: &str| {
            s.map(|s| string_data(&s))
                .ok_or_else(|| EtcdError::Access(format!("Secret {what} not found")))
        };
        let ca = read(
            secrets.get_opt(&names.ca_secret("etcd-ca")).await?,
            "etcd CA",
        )?;
        let certs = read(
            secrets.get_opt(&names.certs_secret()).await?,
            "certificates",
        )?;
        let field = |m: &std::collections::BTreeMap<String, String>, k: &str| {
            m.get(k)
                .cloned()
                .ok_or_else(|| EtcdError::Access(format!("key {k} missing")))
        };
        let tls = Tls {
            ca_pem: field(&ca, "tls.crt")?,
            cert_pem: field(&certs, "etcd-operator-client.crt")?,
            key_pem: field(&certs, "etcd-operator-client.key")?,
        };
        let mut members = Vec::new();
        for i in 0..replicas {
            let name = names.etcd_member(i);
            if let Some(ip) = services
                .get_opt(&name)
                .await?
                .and_then(|s| s.spec)
                .and_then(|s| s.cluster_ip)
            {
                members.push(Member {
                    url: format!(
                        "https://{ip}:{}",
                        kok_templates::controlplane::ETCD_CLIENT_PORT
                    ),
                    tls_name: Some(name),
                });
            }
        }
        Ok(Self {
            members,
            tls: Some(tls),
        })
    }
}
