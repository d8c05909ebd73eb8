//! Admission of a pass: an invalid spec, a restore that holds the control
//! plane, or a pause stop the pass before it touches anything.

use super::workloads::{first_image, image_tag};
use crate::runtime::context::Context;
use crate::runtime::error::Result;
use crate::runtime::lenient::Lenient;
use k8s_openapi::api::apps::v1::Deployment;
use kok_crds::EtcdRestore;
use kok_crds::RestorePhase;
use kok_crds::TenantCluster;
use kok_crds::TenantClusterStatus;
use kok_templates::kstatus::Summary;
use kok_templates::names::Names;
use kok_templates::validate::describe;
use kok_templates::validate::validate;
use kok_templates::validate::validate_name;
use kok_templates::validate::ValidSpec;
use kok_templates::version::KubeVersion;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::Api;
use kube::ResourceExt;
use std::time::Duration;
use tracing::warn;

/// How often a stalled tenant is looked at without an edit.
const STALLED_RECHECK: Duration = Duration::from_secs(300);

/// Whether this pass may act.
pub(super) enum Admission {
    Proceed(ValidSpec),
    /// Stop here, with what to say (the pass writes it); `Action` says when
    /// to look again.
    Hold(Action, Summary),
}

pub(super) async fn admit(
    tc: &TenantCluster,
    ctx: &Context,
    status: &mut TenantClusterStatus,
) -> Result<Admission> {
    let ns = tc.namespace().unwrap_or_default();
    let name = tc.name_any();

    // An invalid spec touches nothing and waits for the next edit. Versions
    // are checked against the newest that runs anywhere: in the middle of a
    // step the apiservers are ahead of `status.version`.
    let name_errors = validate_name(&name);
    let apiserver_template = Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&Names::new(&name).apiserver())
        .await?
        .and_then(|d| first_image(d.spec.map(|s| s.template)))
        .and_then(|i| image_tag(&i).parse::<KubeVersion>().ok());
    let newest = newest_running(tc.status.as_ref(), apiserver_template);
    let validated = match validate(&tc.spec, newest.as_ref(), &ctx.policy) {
        Ok(v) if name_errors.is_empty() => Ok(v),
        Ok(_) => Err(name_errors),
        Err(errors) => Err(name_errors.into_iter().chain(errors).collect()),
    };
    let valid = match validated {
        Ok(v) => v,
        Err(errors) => {
            let message = describe(&errors);
            warn!(%message, "invalid spec");
            ctx.publish(tc, EventType::Warning, "InvalidSpec", "Validate", &message)
                .await;
            let invalid =
                Summary::blocked("InvalidSpec", message, "waiting for the spec to be fixed");
            return Ok(Admission::Hold(Action::await_change(), invalid));
        }
    };
    if let Some(restore) = tc.annotations().get(kok_crds::RESTORE_ANNOTATION) {
        let held = restore_hold(ctx, &ns, restore).await?;
        if held.rebuilding {
            // Every member is rebuilt from one snapshot with a new cluster
            // ID: a replacement, scaling or roll on record acted on members
            // that no longer exist (`membership::may_start`: the restore
            // supersedes them). Their records would resume against the
            // restored cluster, so they end here.
            status.etcd_member_replacement = None;
            status.etcd_scaling = None;
            status.etcd_drained_member = None;
            status.etcd_unhealthy_since.clear();
        }
        if let Some((reason, message)) = held.problem {
            ctx.publish(tc, EventType::Warning, reason, "Restore", &message)
                .await;
            let r = "the control plane is stopped until someone acts";
            let held = Summary::blocked(reason, message, r);
            return Ok(Admission::Hold(Action::requeue(STALLED_RECHECK), held));
        }
        let restoring = Summary::Working {
            reason: "RestoreInProgress".into(),
            doing: format!(
                "EtcdRestore {restore} is restoring etcd; the control plane is left to it"
            ),
            // The control plane is (being) stopped: not Ready until the restore hands it back.
            not_ready: Some(format!("EtcdRestore {restore} is restoring etcd")),
            stuck: None,
        };
        return Ok(Admission::Hold(Action::await_change(), restoring));
    }

    if tc.spec.paused {
        let why = "spec.paused is true: kok leaves the control plane as it is".into();
        return Ok(Admission::Hold(
            Action::await_change(),
            Summary::Paused { why },
        ));
    }
    Ok(Admission::Proceed(valid))
}

/// A TenantCluster held by a restore, as that restore stands.
struct RestoreHold {
    /// Why it is stuck, if it is: the EtcdRestore named by the annotation
    /// was deleted or failed, leaving etcd stopped.
    problem: Option<(&'static str, String)>,
    /// The restore may have begun replacing members' data.
    rebuilding: bool,
}

async fn restore_hold(ctx: &Context, ns: &str, restore: &str) -> Result<RestoreHold> {
    let api: Api<Lenient<EtcdRestore>> = Api::namespaced(ctx.client.clone(), ns);
    let resume = format!(
        "to start the control plane on the data its members have now, remove annotation {} (see docs/runbooks/backup-restore.md)",
        kok_crds::RESTORE_ANNOTATION
    );
    let Some(r) = api.get_opt(restore).await? else {
        return Ok(RestoreHold {
            problem: Some((
                "RestoreAbandoned",
                format!("EtcdRestore {restore} was deleted before it finished; the control plane is stopped; {resume}"),
            )),
            rebuilding: false,
        });
    };
    let status = r.object.as_ref().ok().and_then(|er| er.status.as_ref());
    let problem = match status {
        Some(s) if s.phase == Some(RestorePhase::Failed) => Some((
            "RestoreFailed",
            format!(
                "EtcdRestore {restore} failed: {}; the control plane is stopped; {resume}",
                s.message.clone().unwrap_or_default()
            ),
        )),
        _ => None,
    };
    Ok(RestoreHold {
        problem,
        rebuilding: status.and_then(|s| s.member_jobs_created) == Some(true),
    })
}

/// The status as validation should see it: `version` raised to what the
/// apiserver template already runs, when that is newer.
fn newest_running(
    status: Option<&TenantClusterStatus>,
    apiserver_template: Option<KubeVersion>,
) -> Option<TenantClusterStatus> {
    let mut s = status.cloned()?;
    let recorded = s
        .version
        .as_deref()
        .and_then(|v| v.parse::<KubeVersion>().ok());
    if let (Some(t), Some(r)) = (apiserver_template, recorded) {
        if t > r {
            s.version = Some(t.to_string());
        }
    }
    Some(s)
}
