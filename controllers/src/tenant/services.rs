//! The tenant's Services: their ClusterIPs pin every name the components
//! dial, so a recreated Service gets its old address back when it can.

use super::*;

/// Hostname -> IP pins (`hostAliases`) of a running workload.
pub(super) fn pinned_addresses(
    pod: Option<k8s_openapi::api::core::v1::PodSpec>,
) -> HashMap<String, String> {
    pod.and_then(|p| p.host_aliases)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|a| {
            a.hostnames
                .unwrap_or_default()
                .into_iter()
                .map(move |h| (h, a.ip.clone()))
        })
        .collect()
}

/// Applies a Service, keeping its ClusterIP: the existing one, or when it was
/// deleted, the address the workloads still pin. A deleted Service's address is
/// released asynchronously, so reuse is retried for a bounded time before a new
/// address is taken (which rolls certificates and pins).
pub(super) async fn apply_service(
    api: &Api<Service>,
    mut svc: Service,
    pinned: &HashMap<String, String>,
    owner_uid: &str,
) -> Result<Service> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let existing = api.get_opt(&name).await?;
    if let Some(existing) = &existing {
        check_owner(existing, owner_uid)?;
    }
    let existing_ip = existing.as_ref().and_then(cluster_ip);
    let wanted = existing_ip.clone().or_else(|| pinned.get(&name).cloned());
    if let Some(ip) = wanted {
        set_cluster_ip(&mut svc, Some(ip.clone()));
        let deadline = tokio::time::Instant::now() + CLUSTER_IP_REUSE_WINDOW;
        let mut delay = Duration::from_millis(500);
        loop {
            match apply(api, &svc).await {
                Ok(s) => return Ok(s),
                // Only a recreation can fail on the address (not yet released, or taken).
                Err(Error::Kube(kube::Error::Api(e))) if existing_ip.is_none() && e.code == 422 => {
                    if tokio::time::Instant::now() + delay > deadline {
                        warn!(service = %name, %ip, error = %e.message, "the pinned ClusterIP stayed unavailable; taking a new one");
                        set_cluster_ip(&mut svc, None);
                        break;
                    }
                    info!(service = %name, %ip, error = %e.message, "pinned ClusterIP not free yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(8));
                }
                Err(e) => return Err(e),
            }
        }
    }
    apply(api, &svc).await
}

pub(super) fn set_cluster_ip(svc: &mut Service, ip: Option<String>) {
    if let Some(spec) = svc.spec.as_mut() {
        spec.cluster_ip = ip;
    }
}

pub(super) fn cluster_ip(svc: &Service) -> Option<String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| !ip.is_empty() && ip != "None")
}

/// Where users reach the tenant apiserver.
pub struct Endpoint {
    pub host: String,
    pub port: i32,
}

impl Endpoint {
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }
}

pub(super) async fn endpoint(
    ctx: &Context,
    tc: &TenantCluster,
    svc: &Service,
    cluster_ip: &str,
) -> Result<Option<Endpoint>> {
    Ok(match tc.spec.control_plane.service.type_ {
        ServiceType::ClusterIP => Some(Endpoint {
            host: cluster_ip.to_string(),
            port: APISERVER_PORT,
        }),
        ServiceType::NodePort => {
            let node_port = svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .and_then(|ports| ports.first())
                .and_then(|p| p.node_port);
            let nodes: Api<Node> = Api::all(ctx.client.clone());
            let node_ip = nodes
                .list(&ListParams::default().limit(1))
                .await?
                .items
                .into_iter()
                .flat_map(|n| n.status.and_then(|s| s.addresses).unwrap_or_default())
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address);
            node_ip
                .zip(node_port)
                .map(|(host, port)| Endpoint { host, port })
        }
        ServiceType::LoadBalancer => svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .and_then(|i| i.first())
            .and_then(|i| i.ip.clone().or_else(|| i.hostname.clone()))
            .map(|host| Endpoint {
                host,
                port: APISERVER_PORT,
            }),
    })
}
