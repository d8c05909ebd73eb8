//! The JoinToken reconciler: a bootstrap token in the tenant, and beside
//! the JoinToken a Secret with the `kubeadm join` command that uses it.
//!
//! Pending (the tenant does not serve yet) -> Ready (token in the tenant,
//! Secret written) -> Expired (its TTL passed; the tenant's token cleaner
//! removes it and the apiserver refuses it). Deleting the JoinToken deletes
//! the token in the tenant first (a finalizer), so the token stops working
//! at once.
//!
//! The token is written to the Secret (owned by the JoinToken) before it
//! is created in the tenant: a restarted operator finds and uses it again,
//! so no token is ever made that kok cannot name and revoke.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kok_crds::{JoinToken, JoinTokenPhase, JoinTokenStatus, TenantCluster};
use kok_templates::kstatus::{self, Stage};
use kok_templates::names::{tenant_names, MANAGED_BY, MANAGED_BY_LABEL};
use kok_templates::nodes::{
    bootstrap_kubeconfig, bootstrap_token_secret, ca_cert_hash, join_command, BootstrapToken,
    KUBE_SYSTEM,
};
use kok_templates::pki::kubeconfig;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, instrument};

use crate::runtime::apply::{apply, check_owner};
use crate::runtime::conditions;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, Result};
use crate::runtime::status::{apply_status, manager};
use crate::tenant::health::tenant_client;
use crate::tenant::pki::read_admin_access;

pub const FINALIZER: &str = "kok.dev/join-token";
const CONTROLLER: &str = "jointoken";
/// How often a JoinToken waiting for its tenant looks again.
const WAIT: Duration = Duration::from_secs(5);
/// Keys of the Secret beside the JoinToken.
pub const JOIN_COMMAND_KEY: &str = "joinCommand";
pub const TOKEN_KEY: &str = "token";

/// The Secret beside a JoinToken.
pub fn secret_name(jt: &str) -> String {
    format!("{jt}-join")
}

#[instrument(skip_all, fields(jointoken = %jt.name_any(), ns = jt.namespace().unwrap_or_default()))]
pub async fn reconcile(jt: Arc<JoinToken>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let ns = jt
        .namespace()
        .ok_or_else(|| Error::IncompleteObject(jt.name_any()))?;
    let api: Api<JoinToken> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, jt, |event| async {
        match event {
            FinalizerEvent::Apply(jt) => issue(&jt, &ctx).await,
            FinalizerEvent::Cleanup(jt) => revoke(&jt, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(jt: Arc<JoinToken>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after_error(CONTROLLER, jt.as_ref(), error)
}

/// A client of the tenant API as kok (through the apiserver Service's
/// ClusterIP), and the tenant's CA. `Err` says why not yet.
async fn tenant_access(ctx: &Context, tc: &TenantCluster) -> Result<(Client, String), String> {
    let ns = tc.namespace().unwrap_or_default();
    let names = tenant_names(tc);
    let uid = tc.uid().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let access = read_admin_access(&secrets, &names, &uid)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("its certificates are not issued yet")?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let ip = services
        .get_opt(&names.apiserver())
        .await
        .map_err(|e| e.to_string())?
        .and_then(|s| s.spec?.cluster_ip)
        .ok_or("its apiserver Service has no address yet")?;
    let server = crate::tenant::Endpoint {
        host: ip,
        port: kok_templates::flags::APISERVER_PORT,
    }
    .url();
    let kc = kubeconfig(
        &names.tenant,
        &server,
        &access.ca_pem,
        "kok-admin",
        &access.admin,
    );
    let client = tenant_client(&kc, Duration::from_secs(10)).await?;
    Ok((client, access.ca_pem))
}

fn random_token() -> Result<BootstrapToken> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 22];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::IncompleteObject("no randomness for a bootstrap token".into()))?;
    Ok(BootstrapToken::from_random(&bytes))
}

fn owner_ref(jt: &JoinToken) -> Option<OwnerReference> {
    jt.controller_owner_ref(&())
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}

async fn issue(jt: &JoinToken, ctx: &Context) -> Result<Action> {
    let ns = jt.namespace().unwrap_or_default();
    let old = jt.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = jt.metadata.generation;
    let now = Timestamp::now();

    if let Some(action) = issued_lifetime(ctx, jt, &old, status.clone(), now).await? {
        return Ok(action);
    }

    let tenants: Api<TenantCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(tc) = tenants.get_opt(&jt.spec.tenant_cluster).await? else {
        let why = format!(
            "spec.tenantCluster: no TenantCluster {ns}/{} exists",
            jt.spec.tenant_cluster
        );
        set_phase(
            &mut status,
            jt,
            JoinTokenPhase::Failed,
            "TenantNotFound",
            &why,
        );
        if old.phase != Some(JoinTokenPhase::Failed) {
            ctx.publish(jt, EventType::Warning, "TenantNotFound", "Join", &why)
                .await;
        }
        write_status(ctx, jt, &old, status).await?;
        // Created later, the tenant is found on this recheck.
        return Ok(Action::requeue(Duration::from_secs(60)));
    };
    let Some(endpoint) = tc.status.as_ref().and_then(|s| s.endpoint.clone()) else {
        let why = "waiting for the tenant to have an endpoint";
        return waiting(ctx, jt, &old, status, why).await;
    };
    let (client, ca_pem) = match tenant_access(ctx, &tc).await {
        Ok(a) => a,
        Err(why) => {
            let why = format!("waiting for the tenant API: {why}");
            return waiting(ctx, jt, &old, status, &why).await;
        }
    };

    // 1. The token, kept in the Secret first (found again after a restart).
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = jt.uid().unwrap_or_default();
    let name = secret_name(&jt.name_any());
    let existing = secrets.get_opt(&name).await?;
    if let Some(s) = &existing {
        check_owner(s, &uid)?;
    }
    let token = match existing
        .as_ref()
        .and_then(|s| secret_value(s, TOKEN_KEY))
        .and_then(|t| BootstrapToken::parse(&t))
    {
        Some(t) => t,
        None => random_token()?,
    };
    let expiration = match old.expiration_time.clone() {
        Some(t) => t,
        None => Time(
            now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
                jt.spec.ttl_seconds,
            ))
            .map_err(|e| Error::IncompleteObject(format!("expiration: {e}")))?,
        ),
    };
    let hash = ca_cert_hash(&ca_pem).map_err(Error::IncompleteObject)?;
    let command = join_command(&endpoint, &token, &hash);
    let data = [
        (JOIN_COMMAND_KEY, command.clone()),
        (TOKEN_KEY, token.to_string()),
        ("caCertHash", hash),
        ("endpoint", endpoint.clone()),
        (
            "bootstrap-kubeconfig",
            bootstrap_kubeconfig(&tc.name_any(), &endpoint, &ca_pem, &token),
        ),
    ];
    let secret = join_secret(jt, &ns, &name, data);
    apply(&secrets, &secret).await?;
    status.token_id = Some(token.id.clone());
    status.expiration_time = Some(expiration.clone());
    status.secret_name = Some(name.clone());
    status.endpoint = Some(endpoint);

    // 2. The token in the tenant. Created, never overwritten: an existing
    //    one with this id must be ours (the same JoinToken's uid).
    let tenant_secrets: Api<Secret> = Api::namespaced(client, KUBE_SYSTEM);
    let exp = expiration.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let description = jt
        .spec
        .description
        .clone()
        .unwrap_or_else(|| format!("kok JoinToken {ns}/{}", jt.name_any()));
    let wanted = bootstrap_token_secret(&token, &exp, &description, &uid);
    match tenant_secrets.create(&PostParams::default(), &wanted).await {
        Ok(_) => {}
        Err(e) if crate::runtime::api::is_conflict(&e) => {
            let theirs = tenant_secrets.get(&token.secret_name()).await?;
            let label = theirs
                .labels()
                .get(kok_templates::nodes::JOIN_TOKEN_LABEL)
                .cloned();
            if label.as_deref() != Some(uid.as_str()) {
                // Another token with this id (chance of 1 in 36^6): a new one next pass.
                secrets.delete(&name, &DeleteParams::default()).await?;
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
        }
        Err(e) => {
            let why = format!("creating the bootstrap token in the tenant: {e}");
            return waiting(ctx, jt, &old, status, &why).await;
        }
    }
    info!(token_id = %token.id, "bootstrap token issued");
    set_phase(
        &mut status,
        jt,
        JoinTokenPhase::Ready,
        "Issued",
        "the token works until its expiration",
    );
    write_status(ctx, jt, &old, status).await?;
    if old.phase != Some(JoinTokenPhase::Ready) {
        let note = format!(
            "bootstrap token {} issued; the join command is in Secret {name}",
            token.id
        );
        ctx.publish(jt, EventType::Normal, "Issued", "Join", &note)
            .await;
    }
    let left = expiration.0.as_second() - Timestamp::now().as_second();
    Ok(Action::requeue(Duration::from_secs(
        left.clamp(1, 3600) as u64 + 1,
    )))
}

/// An issued token lives until its expiration, then is Expired for good.
/// `Some`: the token was issued before and this pass is done.
async fn issued_lifetime(
    ctx: &Context,
    jt: &JoinToken,
    old: &JoinTokenStatus,
    mut status: JoinTokenStatus,
    now: Timestamp,
) -> Result<Option<Action>> {
    if let (Some(JoinTokenPhase::Ready | JoinTokenPhase::Expired), Some(exp)) =
        (old.phase, old.expiration_time.as_ref())
    {
        let left = exp.0.as_second() - now.as_second();
        if left > 0 {
            set_phase(
                &mut status,
                jt,
                JoinTokenPhase::Ready,
                "Issued",
                "the token works until its expiration",
            );
            write_status(ctx, jt, old, status).await?;
            return Ok(Some(Action::requeue(Duration::from_secs(
                left.min(3600) as u64 + 1,
            ))));
        }
        set_phase(
            &mut status,
            jt,
            JoinTokenPhase::Expired,
            "Expired",
            "the token's TTL passed: the tenant apiserver refuses it; create a new JoinToken",
        );
        if old.phase != Some(JoinTokenPhase::Expired) {
            ctx.publish(
                jt,
                EventType::Normal,
                "Expired",
                "Join",
                "the bootstrap token expired",
            )
            .await;
        }
        write_status(ctx, jt, old, status).await?;
        return Ok(Some(Action::await_change()));
    }
    Ok(None)
}

/// The Secret that holds the join command and what it is made of.
fn join_secret(jt: &JoinToken, ns: &str, name: &str, data: [(&str, String); 5]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(
                [
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                    ("kok.dev/join-token".to_string(), jt.name_any()),
                ]
                .into(),
            ),
            owner_references: owner_ref(jt).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Deletes the token in the tenant. A token that already expired, or a
/// tenant that is gone, has nothing left to revoke.
async fn revoke(jt: &JoinToken, ctx: &Context) -> Result<Action> {
    let ns = jt.namespace().unwrap_or_default();
    let status = jt.status.clone().unwrap_or_default();
    let Some(id) = status.token_id.clone() else {
        return Ok(Action::await_change());
    };
    let expired = status
        .expiration_time
        .as_ref()
        .is_some_and(|t| t.0 <= Timestamp::now());
    let tenants: Api<TenantCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let tc = tenants.get_opt(&jt.spec.tenant_cluster).await?;
    let tc = match tc {
        Some(tc) if !expired && tc.metadata.deletion_timestamp.is_none() => tc,
        _ => return Ok(Action::await_change()),
    };
    let (client, _) = tenant_access(ctx, &tc).await.map_err(|why| {
        Error::IncompleteObject(format!("revoking token {id}: tenant API: {why}"))
    })?;
    let api: Api<Secret> = Api::namespaced(client, KUBE_SYSTEM);
    let name = format!("bootstrap-token-{id}");
    crate::runtime::api::gone_is_done(api.delete(&name, &DeleteParams::default()).await)?;
    info!(token_id = %id, "bootstrap token revoked");
    ctx.publish(
        jt,
        EventType::Normal,
        "Revoked",
        "Join",
        &format!("bootstrap token {id} deleted in the tenant"),
    )
    .await;
    Ok(Action::await_change())
}

/// Pending on the tenant (no endpoint, API, or token yet): recorded, and
/// looked at again soon.
async fn waiting(
    ctx: &Context,
    jt: &JoinToken,
    old: &JoinTokenStatus,
    mut status: JoinTokenStatus,
    why: &str,
) -> Result<Action> {
    set_phase(
        &mut status,
        jt,
        JoinTokenPhase::Pending,
        "WaitingForTenant",
        why,
    );
    write_status(ctx, jt, old, status).await?;
    Ok(Action::requeue(WAIT))
}

fn set_phase(
    status: &mut JoinTokenStatus,
    jt: &JoinToken,
    phase: JoinTokenPhase,
    reason: &str,
    message: &str,
) {
    let g = jt.metadata.generation;
    status.phase = Some(phase);
    let stage = match phase {
        JoinTokenPhase::Pending => Stage::Running,
        JoinTokenPhase::Ready => Stage::Done,
        JoinTokenPhase::Expired => Stage::Ended,
        JoinTokenPhase::Failed => Stage::Failed,
    };
    let computed = kstatus::phase(stage, reason, message);
    conditions::apply(&mut status.conditions, computed, g);
}

async fn write_status(
    ctx: &Context,
    jt: &JoinToken,
    old: &JoinTokenStatus,
    new: JoinTokenStatus,
) -> Result<()> {
    if *old == new && jt.status.is_some() {
        return Ok(());
    }
    let api: Api<JoinToken> =
        Api::namespaced(ctx.client.clone(), &jt.namespace().unwrap_or_default());
    apply_status(&api, jt, manager::JOIN, &new).await
}
