//! Access for other tools: the Argo CD cluster Secret kok writes in Argo
//! CD's namespace (`spec.access.argocd`), rewritten every pass so a renewed
//! admin certificate or a new endpoint reaches Argo CD, and deleted when
//! unset or with the tenant.

use super::pki;
use super::services::Endpoint;
use kok_crds::{condition, TenantCluster, TenantClusterStatus};
use kok_templates::argocd::{self as argo, OtherCluster};
use kok_templates::pki::CaKind;
use kok_templates::secrets::{
    argocd_cluster_secret, string_data, ARGOCD_OWNER_ANNOTATION, ARGOCD_SECRET_TYPE_LABEL,
};
use kube::api::{DeleteParams, ListParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;

use crate::runtime::apply::apply;
use crate::runtime::conditions;
use crate::runtime::context::Context;
use crate::runtime::error::Result;
use k8s_openapi::api::core::v1::Secret;
use kok_templates::controlplane::Placement;
use kube::Api;
use tracing::warn;

/// Cluster Secrets read from Argo CD's namespace to find a collision: a
/// bound on what one pass reads there.
const MAX_CLUSTER_SECRETS: u32 = 500;

/// Writes, moves or removes the tenant's Argo CD cluster Secret, where the
/// operator's policy allows it (`kok_templates::argocd::decide`). A refusal
/// or a problem is the condition `ArgoCDRegistered` False and a Warning
/// Event; the rest of the pass goes on.
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
    let generation = tc.metadata.generation;
    let Some(spec) = tc.spec.access.argocd.as_ref() else {
        status.conditions.retain(|c| c.type_ != condition::ARGOCD);
        if let Some(old) = previous {
            delete_if_ours(ctx, &old, &owner).await?;
        }
        status.argocd_cluster_secret = None;
        return Ok(());
    };
    let (Some(ep), Some(admin)) = (endpoint, pki.leaves.get("admin")) else {
        return Ok(()); // no endpoint yet: next pass
    };
    let server = ep.url();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &spec.namespace);
    // Nothing is read in a namespace kok may not write to.
    let listed = if argo::namespace_allowed(&ctx.policy.argocd, &spec.namespace) {
        others(&api, &owner).await
    } else {
        Ok(Vec::new())
    };
    let outcome = match listed {
        Err(e) => Err((
            "ArgoCDSecretFailed",
            format!("reading cluster Secrets in {}: {e}", spec.namespace),
        )),
        Ok(others) => match argo::decide(
            &ctx.policy.argocd,
            &p.namespace,
            &p.names.tenant,
            spec,
            &server,
            &others,
        ) {
            Err(why) => {
                // No longer allowed (a policy changed): the old one goes too.
                if let Some(old) = previous.clone() {
                    delete_if_ours(ctx, &old, &owner).await?;
                    status.argocd_cluster_secret = None;
                }
                Err(("ArgoCDRefused", why))
            }
            Ok(reg) => {
                let secret = argocd_cluster_secret(
                    p,
                    &reg,
                    spec.project.as_deref(),
                    &server,
                    &pki.ca(CaKind::Cluster).cert_pem,
                    admin,
                );
                let (ns, name) = (&reg.namespace, &reg.secret_name);
                match api.get_opt(name).await {
                    Ok(Some(existing)) if annotation(&existing) != Some(owner.as_str()) => Err((
                        "ArgoCDSecretFailed",
                        format!("Secret {ns}/{name} exists and is not this tenant's Argo CD cluster Secret: left alone"),
                    )),
                    Ok(_) => match apply(&api, &secret).await {
                        Ok(_) => Ok(format!("{ns}/{name}")),
                        Err(e) => Err((
                            "ArgoCDSecretFailed",
                            format!("writing the Argo CD cluster Secret {ns}/{name}: {e}"),
                        )),
                    },
                    Err(e) => Err(("ArgoCDSecretFailed", format!("reading Secret {ns}/{name}: {e}"))),
                }
            }
        },
    };
    match outcome {
        Err((reason, why)) => {
            warn!("{why}");
            let c = &mut status.conditions;
            conditions::set(c, condition::ARGOCD, false, reason, &why, generation);
            if ctx.first_saying(&format!("argocd/{owner}"), &why) {
                ctx.publish(tc, EventType::Warning, reason, "Access", &why)
                    .await;
            }
        }
        Ok(key) => {
            let note = format!("Argo CD cluster Secret {key} written");
            let c = &mut status.conditions;
            conditions::set(c, condition::ARGOCD, true, "Registered", &note, generation);
            if previous.as_ref() != Some(&key) {
                ctx.publish(tc, EventType::Normal, "ArgoCDRegistered", "Access", &note)
                    .await;
                // Moved (another namespace, or the name of an older kok).
                if let Some(old) = previous {
                    delete_if_ours(ctx, &old, &owner).await?;
                }
            }
            ctx.first_saying(&format!("argocd/{owner}"), "");
            status.argocd_cluster_secret = Some(key);
        }
    }
    Ok(())
}

/// The other cluster Secrets in Argo CD's namespace (not this tenant's).
async fn others(
    api: &Api<Secret>,
    owner: &str,
) -> std::result::Result<Vec<OtherCluster>, kube::Error> {
    let lp = ListParams::default()
        .labels(&format!("{ARGOCD_SECRET_TYPE_LABEL}=cluster"))
        .limit(MAX_CLUSTER_SECRETS);
    Ok(api
        .list(&lp)
        .await?
        .items
        .iter()
        .filter(|s| annotation(s) != Some(owner))
        .map(|s| {
            let data = string_data(s);
            OtherCluster {
                secret: s.name_any(),
                name: data.get("name").cloned().unwrap_or_default(),
                server: data.get("server").cloned().unwrap_or_default(),
            }
        })
        .collect())
}

/// Deletes the Argo CD cluster Secret `namespace/name` if it is this tenant's.
pub(super) async fn delete_if_ours(ctx: &Context, key: &str, owner: &str) -> Result<()> {
    let Some((ns, name)) = key.split_once('/') else {
        return Ok(());
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(s) = api.get_opt(name).await? {
        if annotation(&s) == Some(owner) {
            crate::runtime::api::gone_is_done(api.delete(name, &DeleteParams::default()).await)?;
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
