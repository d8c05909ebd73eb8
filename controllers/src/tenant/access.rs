//! Access for other tools: the Argo CD cluster Secret kok writes in Argo
//! CD's namespace (`spec.access.argocd`), rewritten every pass so a renewed
//! admin certificate or a new endpoint reaches Argo CD, and deleted when
//! unset or with the tenant.

use kok_crds::{TenantCluster, TenantClusterStatus};
use kok_templates::pki::CaKind;
use kok_templates::secrets::{argocd_cluster_secret, argocd_secret_name, ARGOCD_OWNER_ANNOTATION};
use kube::api::DeleteParams;
use kube::runtime::events::EventType;

use super::*;
use crate::runtime::apply::apply;

/// Writes, moves or removes the tenant's Argo CD cluster Secret. A problem
/// the user can fix (Argo CD's namespace missing, a Secret of that name not
/// kok's) is an Event; the rest of the pass goes on.
pub(super) async fn argocd(
    ctx: &Context,
    tc: &TenantCluster,
    p: &Placement,
    pki: &pki::TenantPki,
    endpoint: Option<&Endpoint>,
    status: &mut TenantClusterStatus,
) -> Result<()> {
    let previous = status.argocd_cluster_secret.clone();
    let owner = format!("{}/{}/{}", p.namespace, p.names.tenant, p.owner.uid);
    let wanted = match (
        tc.spec.access.argocd.as_ref(),
        endpoint,
        pki.leaves.get("admin"),
    ) {
        (Some(spec), Some(ep), Some(admin)) => Some(argocd_cluster_secret(
            p,
            spec,
            &ep.url(),
            &pki.ca(CaKind::Cluster).cert_pem,
            admin,
        )),
        _ => None,
    };
    let key = wanted.as_ref().map(|s| {
        format!(
            "{}/{}",
            s.metadata.namespace.clone().unwrap_or_default(),
            argocd_secret_name(p)
        )
    });
    if let Some(secret) = &wanted {
        let ns = secret.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let name = argocd_secret_name(p);
        let problem = match api.get_opt(&name).await {
            Ok(Some(existing)) if annotation(&existing) != Some(owner.as_str()) => Some(format!(
                "Secret {ns}/{name} exists and is not this tenant's Argo CD cluster Secret: left alone"
            )),
            Ok(_) => match apply(&api, secret).await {
                Ok(_) => None,
                Err(e) => Some(format!("writing the Argo CD cluster Secret {ns}/{name}: {e}")),
            },
            Err(e) => Some(format!("reading Secret {ns}/{name}: {e}")),
        };
        if let Some(why) = problem {
            warn!("{why}");
            super::publish(
                ctx,
                tc,
                EventType::Warning,
                "ArgoCDSecretFailed",
                "Access",
                &why,
            )
            .await;
            return Ok(());
        }
        if previous.is_none() || previous != key {
            let note = format!("Argo CD cluster Secret {ns}/{name} written");
            super::publish(
                ctx,
                tc,
                EventType::Normal,
                "ArgoCDRegistered",
                "Access",
                &note,
            )
            .await;
        }
    }
    if let Some(old) = previous.filter(|p| Some(p) != key.as_ref()) {
        delete_if_ours(ctx, &old, &owner).await?;
    }
    status.argocd_cluster_secret = key;
    Ok(())
}

/// Deletes the Argo CD cluster Secret `namespace/name` if it is this tenant's.
pub(super) async fn delete_if_ours(ctx: &Context, key: &str, owner: &str) -> Result<()> {
    let Some((ns, name)) = key.split_once('/') else {
        return Ok(());
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(s) = api.get_opt(name).await? {
        if annotation(&s) == Some(owner) {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

fn annotation(s: &Secret) -> Option<&str> {
    s.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ARGOCD_OWNER_ANNOTATION))
        .map(String::as_str)
}
