//! The tenant's Services: their ClusterIPs pin every name the components
//! dial, so a recreated Service gets its old address back when it can.

use crate::runtime::apply::apply;
use crate::runtime::apply::check_owner;
use crate::runtime::context::Context;
use crate::runtime::error::Error;
use crate::runtime::error::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::Service;
use kok_crds::ServiceType;
use kok_crds::TenantCluster;
use kok_templates::controlplane::Placement;
use kok_templates::controlplane::{self as cp};
use kok_templates::flags::APISERVER_PORT;
use kube::api::ListParams;
use kube::Api;
use std::collections::HashMap;
use std::time::Duration;
use tracing::info;
use tracing::warn;

/// How long a recreated Service waits for its old ClusterIP to be released
/// before it takes a new one (which would invalidate certificates and pins).
const CLUSTER_IP_REUSE_WINDOW: Duration = Duration::from_secs(60);

/// The addresses the rest of the control plane is built on.
pub(super) struct Network {
    pub etcd_member_ips: Vec<String>,
    pub apiserver_ip: String,
    /// `None` until users have an address to reach the apiserver at.
    pub endpoint: Option<Endpoint>,
}

/// Applies every Service. A Service deleted by hand is recreated on the
/// address the workloads still pin, so certificates and kubeconfigs stay valid.
pub(super) async fn ensure(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    uid: &str,
) -> Result<Network> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let pod_spec = |t: Option<k8s_openapi::api::core::v1::PodTemplateSpec>| t.and_then(|t| t.spec);
    let mut pinned = pinned_addresses(pod_spec(
        statefulsets
            .get_opt(&p.names.etcd())
            .await?
            .and_then(|s| s.spec)
            .map(|s| s.template),
    ));
    pinned.extend(pinned_addresses(pod_spec(
        deployments
            .get_opt(&p.names.apiserver())
            .await?
            .and_then(|d| d.spec)
            .map(|d| d.template),
    )));
    // A Service (and so a pinned address) for every member the tenant may
    // ever have, not only those it runs: a member added by a live scaling
    // is then reachable from the others without rolling them.
    let mut etcd_member_ips = Vec::new();
    for i in 0..kok_templates::names::MAX_ETCD_MEMBERS {
        let svc = apply_service(&services, cp::etcd_member_service(p, i), &pinned, uid).await?;
        etcd_member_ips
            .push(cluster_ip(&svc).ok_or_else(|| Error::IncompleteObject(p.names.etcd_member(i)))?);
    }
    let apiserver_svc = apply_service(
        &services,
        cp::apiserver_service(p, tc.spec.control_plane.service.type_),
        &pinned,
        uid,
    )
    .await?;
    let apiserver_ip =
        cluster_ip(&apiserver_svc).ok_or_else(|| Error::IncompleteObject(p.names.apiserver()))?;
    let endpoint = endpoint(ctx, tc, &apiserver_svc, &apiserver_ip).await?;
    Ok(Network {
        etcd_member_ips,
        apiserver_ip,
        endpoint,
    })
}

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
    // What users are told to dial, when a name or address is put in front.
    if let Some(address) = &tc.spec.control_plane.service.advertised_address {
        if let Ok((host, port)) = kok_templates::validate::advertised_address(address) {
            return Ok(Some(Endpoint { host, port }));
        }
    }
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
