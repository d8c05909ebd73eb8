//! The tenant's kubeconfigs: the admin one for users (through the
//! endpoint), the controller-manager's and the scheduler's through the
//! pinned apiserver name, each in its own Secret.

use super::pki::TenantPki;
use super::services::Endpoint;
use crate::runtime::apply::apply_child;
use crate::runtime::context::Context;
use crate::runtime::error::Result;
use k8s_openapi::api::core::v1::Secret;
use kok_templates::controlplane::Placement;
use kok_templates::flags::APISERVER_PORT;
use kok_templates::pki::kubeconfig;
use kok_templates::pki::CaKind;
use kok_templates::secrets;
use kube::Api;

/// The kubeconfigs as written this pass (their hashes roll the components).
pub(super) struct Kubeconfigs {
    pub controller_manager: String,
    pub scheduler: String,
    /// `None` until the apiserver Service has an address users can reach.
    pub admin: Option<String>,
    /// kok's own: the admin identity through the apiserver Service's
    /// ClusterIP, which the operator reaches whatever users are told to dial
    /// (an advertised name may only resolve outside this cluster). Not stored.
    pub operator: String,
}

pub(super) async fn ensure(
    ctx: &Context,
    p: &Placement,
    uid: &str,
    pki: &TenantPki,
    endpoint: Option<&Endpoint>,
    apiserver_ip: &str,
) -> Result<Kubeconfigs> {
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &p.namespace);
    let tenant = &p.names.tenant;
    let internal_url = format!("https://{}:{APISERVER_PORT}", p.names.apiserver());
    let cluster_ca = &pki.ca(CaKind::Cluster).cert_pem;
    let component = |user: &str, leaf: &str| {
        kubeconfig(tenant, &internal_url, cluster_ca, user, &pki.leaves[leaf])
    };
    let kubeconfigs = Kubeconfigs {
        controller_manager: component("system:kube-controller-manager", "controller-manager"),
        scheduler: component("system:kube-scheduler", "scheduler"),
        operator: kubeconfig(
            tenant,
            &Endpoint {
                host: apiserver_ip.to_string(),
                port: APISERVER_PORT,
            }
            .url(),
            cluster_ca,
            "kok-admin",
            &pki.leaves["admin"],
        ),
        admin: endpoint.map(|e| {
            kubeconfig(
                tenant,
                &e.url(),
                cluster_ca,
                "kok-admin",
                &pki.leaves["admin"],
            )
        }),
    };
    for (component, kc) in [
        ("controller-manager", &kubeconfigs.controller_manager),
        ("scheduler", &kubeconfigs.scheduler),
    ] {
        let secret_name = p.names.component_kubeconfig_secret(component);
        let secret = secrets::kubeconfig_secret(p, secret_name, kc.clone());
        apply_child(&secrets_api, &secret, uid).await?;
    }
    if let Some(kc) = &kubeconfigs.admin {
        let secret = secrets::kubeconfig_secret(p, p.names.admin_kubeconfig_secret(), kc.clone());
        apply_child(&secrets_api, &secret, uid).await?;
    }
    Ok(kubeconfigs)
}
