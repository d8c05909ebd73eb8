//! Replacing etcd members whose pod runs an older template (a new version,
//! flags, renewed certificates), one at a time: observe every member over
//! the etcd API, let `kok_templates::etcd_roll::next_action` decide, and act
//! on that one decision. The StatefulSet is `OnDelete`, so nothing else
//! replaces a member; an operator restarted mid-roll observes the pods'
//! revisions again and goes on from there.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kok_crds::TenantCluster;
use kok_templates::controlplane::ETCD_CLIENT_PORT;
use kok_templates::etcd_roll::{
    next_action, replace_gate, MemberObservation, MemberStatus, ReplaceGate, RollAction,
};
use kok_templates::membership::{self, Mover};
use kok_templates::names::{component_selector, tenant_names, Names, APISERVER, ETCD};
use kube::api::ListParams;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

use crate::etcd::EtcdAccess;
use crate::runtime::apply::only_uid;
use crate::runtime::context::Context;
use crate::runtime::error::Result;

/// Where the roll of the etcd members stands after this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum EtcdRoll {
    /// Every member runs the StatefulSet's current template.
    Current,
    /// Members are being replaced; the message says which and why it waits.
    Rolling(String),
}

/// This pass's roll, and the member the apiservers must stay off (recorded
/// in status, rendered into their `--etcd-servers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RollOutcome {
    pub state: EtcdRoll,
    pub drained: Option<i32>,
}

const REVISION_LABEL: &str = "controller-revision-hash";

/// `drained` is the member the apiservers were moved off in an earlier pass.
pub(super) async fn roll(
    ctx: &Context,
    tc: &TenantCluster,
    sts: &StatefulSet,
    drained: Option<i32>,
) -> Result<RollOutcome> {
    // A live scaling with a member in flight (a learner joining, a member
    // leaving) finishes it first: the roll would see that member as down.
    let scaling = tc.status.as_ref().and_then(|s| s.etcd_scaling.as_ref());
    if let Some(member) = kok_templates::etcd_scale::kept_off(scaling) {
        return Ok(RollOutcome {
            state: EtcdRoll::Rolling(format!(
                "held until the etcd scaling has moved member {member}"
            )),
            drained: None,
        });
    }
    let state = roll_members(ctx, tc, sts, drained).await?;
    Ok(match state {
        // Done: the apiservers go back to every member.
        MemberRoll::Current => RollOutcome {
            state: EtcdRoll::Current,
            drained: None,
        },
        MemberRoll::Rolling(why) => RollOutcome {
            state: EtcdRoll::Rolling(why),
            drained,
        },
        MemberRoll::Draining(i, why) => RollOutcome {
            state: EtcdRoll::Rolling(why),
            drained: Some(i),
        },
    })
}

enum MemberRoll {
    Current,
    Rolling(String),
    /// The apiservers must be moved off this member.
    Draining(i32, String),
}

// Long on purpose (about 190 lines): one member at a time, it gathers the
// facts `etcd_roll::next_action` decides on (the pure, table-tested part)
// and carries out the one action chosen, with the leadership move and the
// drain record it needs beside it.
async fn roll_members(
    ctx: &Context,
    tc: &TenantCluster,
    sts: &StatefulSet,
    drained: Option<i32>,
) -> Result<MemberRoll> {
    let ns = tc.namespace().unwrap_or_default();
    let names = tenant_names(tc);
    let Some(update_revision) = sts.status.as_ref().and_then(|s| s.update_revision.clone()) else {
        return Ok(MemberRoll::Rolling(
            "the StatefulSet has no revision yet".into(),
        ));
    };
    // The StatefulSet controller must have seen the current template, else
    // `updateRevision` is the previous one and up-to-date pods look stale.
    let seen = matches!(
        (sts.metadata.generation, sts.status.as_ref().and_then(|s| s.observed_generation)),
        (Some(g), Some(o)) if o >= g
    );
    if !seen {
        return Ok(MemberRoll::Rolling(
            "waiting for the StatefulSet controller to see the template".into(),
        ));
    }
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = component_selector(&names.tenant, ETCD);
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let pod_of = |i: i32| {
        let name = names.etcd_member(i);
        listed.iter().find(|p| p.name_any() == name)
    };
    let stale: Vec<i32> = (0..replicas)
        .filter(|&i| {
            pod_of(i)
                .and_then(|p| p.labels().get(REVISION_LABEL))
                .is_some_and(|r| r != &update_revision)
        })
        .collect();
    if stale.is_empty() {
        return Ok(MemberRoll::Current);
    }
    // Members to roll: only while no other operation moves members (a
    // replacement or a lost quorum would see a rolled member as down).
    let record = membership::on_record(
        tc.status.as_ref(),
        tc.annotations().contains_key(kok_crds::RESTORE_ANNOTATION),
        true,
    );
    if let Err(holder) = membership::may_move(Mover::Roll, &record) {
        return Ok(MemberRoll::Rolling(format!(
            "{} of {replicas} etcd members to roll, held until the {holder} has finished",
            stale.len()
        )));
    }

    let access = EtcdAccess::for_tenant(&ctx.client, tc)
        .await
        .map_err(|e| crate::runtime::error::Error::Etcd(e.to_string()))?;
    let mut observed = Vec::new();
    for i in 0..replicas {
        let pod = pod_of(i);
        let ready = pod.is_some_and(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        let member = access
            .members
            .iter()
            .find(|m| m.tls_name.as_deref() == Some(names.etcd_member(i).as_str()));
        let status = match member {
            Some(m) if ready => member_status(&access, m).await,
            _ => None,
        };
        observed.push(MemberObservation {
            ordinal: i,
            // A pod being deleted counts as none yet: it is on its way out.
            revision: pod
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .and_then(|p| p.labels().get(REVISION_LABEL).cloned()),
            pod_ready: ready,
            status,
        });
    }
    let progress = format!(
        "replacing etcd members one at a time: {}/{replicas} on the current template",
        replicas as usize - stale.len()
    );
    match next_action(&update_revision, &observed) {
        RollAction::Done => Ok(MemberRoll::Current),
        RollAction::Wait(why) => Ok(MemberRoll::Rolling(format!("{progress}; waiting: {why}"))),
        RollAction::MoveLeader {
            from,
            to_member_id,
            to,
        } => {
            let leader = access
                .members
                .iter()
                .find(|m| m.tls_name.as_deref() == Some(names.etcd_member(from).as_str()));
            if let Some(m) = leader {
                crate::etcd::membership::move_leader(&access, m, to_member_id)
                    .await
                    .map_err(|e| {
                        crate::runtime::error::Error::Etcd(format!("moving etcd leadership: {e}"))
                    })?;
            }
            let note = format!(
                "etcd leadership moved from {} to {} before replacing the former",
                names.etcd_member(from),
                names.etcd_member(to)
            );
            info!("{note}");
            ctx.publish(tc, EventType::Normal, "EtcdLeaderMoved", "RollEtcd", &note)
                .await;
            Ok(MemberRoll::Rolling(format!(
                "{progress}; leadership moved to member {to}"
            )))
        }
        RollAction::Replace(i) => {
            let name = names.etcd_member(i);
            let target =
                observed
                    .iter()
                    .find(|m| m.ordinal == i)
                    .cloned()
                    .unwrap_or(MemberObservation {
                        ordinal: i,
                        revision: None,
                        pod_ready: false,
                        status: None,
                    });
            let off = drained == Some(i) && apiservers_off(ctx, &ns, &names, i).await?;
            match replace_gate(&target, observed.len(), drained, off) {
                ReplaceGate::Go => {}
                ReplaceGate::Drain => {
                    let note = format!(
                        "moving the apiservers off etcd member {name} before it is replaced \
                         (a stopping etcd 3.4 member fails the requests it is serving)"
                    );
                    info!("{note}");
                    ctx.publish(
                        tc,
                        EventType::Normal,
                        "EtcdMemberDrained",
                        "RollEtcd",
                        &note,
                    )
                    .await;
                    return Ok(MemberRoll::Draining(
                        i,
                        format!("{progress}; moving the apiservers off member {i}"),
                    ));
                }
                ReplaceGate::WaitForApiservers => {
                    return Ok(MemberRoll::Rolling(format!(
                        "{progress}; waiting for every apiserver to leave member {i}"
                    )));
                }
            }
            // Only the pod observed: a pod recreated meanwhile is not deleted.
            let uid = pod_of(i).and_then(|p| p.uid());
            let dp = only_uid(uid);
            crate::runtime::api::gone_or_replaced_is_done(pods.delete(&name, &dp).await)?;
            let note = format!("replacing etcd member {name} with the current template");
            info!("{note}");
            ctx.publish(
                tc,
                EventType::Normal,
                "EtcdMemberReplaced",
                "RollEtcd",
                &note,
            )
            .await;
            Ok(MemberRoll::Rolling(format!(
                "{progress}; replacing member {i}"
            )))
        }
    }
}

/// Whether no apiserver dials member `i`: the Deployment's template leaves
/// it out, that template is rolled out, and no other pod (an old one still
/// terminating, with open etcd connections) is left.
pub(super) async fn apiservers_off(ctx: &Context, ns: &str, names: &Names, i: i32) -> Result<bool> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let Some(d) = deployments.get_opt(&names.apiserver()).await? else {
        return Ok(true);
    };
    let member_url = format!("https://{}:{ETCD_CLIENT_PORT}", names.etcd_member(i));
    if !rolled_out_without(&d, &member_url) {
        return Ok(false);
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let selector = component_selector(&names.tenant, APISERVER);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pods = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    Ok(pods.len() as i32 == want && pods.iter().all(|p| p.metadata.deletion_timestamp.is_none()))
}

/// The Deployment's template does not dial `member_url`, and the Deployment
/// controller reports that template on every replica, all available.
fn rolled_out_without(d: &Deployment, member_url: &str) -> bool {
    let dials = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| a.strip_prefix("--etcd-servers="))
        .any(|servers| servers.split(',').any(|u| u == member_url));
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let seen = matches!(
        (d.metadata.generation, d.status.as_ref().and_then(|s| s.observed_generation)),
        (Some(g), Some(o)) if o >= g
    );
    let s = d.status.clone().unwrap_or_default();
    !dials
        && seen
        && s.replicas == Some(want)
        && s.updated_replicas == Some(want)
        && s.available_replicas == Some(want)
}

async fn member_status(access: &EtcdAccess, m: &crate::etcd::Member) -> Option<MemberStatus> {
    let mut client = access.connect_member(m).await.ok()?;
    let s = client.status().await.ok()?;
    Some(MemberStatus {
        member_id: s.header()?.member_id(),
        leader_id: s.leader(),
        raft_index: s.raft_index(),
    })
}

/// The etcd cluster version (`etcd_cluster_version` on a member's metrics
/// endpoint), e.g. `3.5`: once every member runs 3.5 the cluster moves to it,
/// and from then on the data cannot go back to 3.4 binaries.
pub(super) async fn cluster_version(
    ctx: &Context,
    tc: &TenantCluster,
) -> std::result::Result<String, String> {
    let ns = tc.namespace().unwrap_or_default();
    let names = tenant_names(tc);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod = pods
        .get_opt(&names.etcd_member(0))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("member 0 has no pod")?;
    let ip = pod
        .status
        .and_then(|s| s.pod_ip)
        .ok_or("member 0 has no pod IP")?;
    let port = kok_templates::controlplane::ETCD_METRICS_PORT;
    let body = tokio::time::timeout(Duration::from_secs(5), http_get(&ip, port, "/metrics"))
        .await
        .map_err(|_| format!("{ip}:{port}: no answer within 5 s"))?
        .map_err(|e| format!("{ip}:{port}: {e}"))?;
    parse_cluster_version(&body)
        .ok_or_else(|| format!("{ip}:{port}: no etcd_cluster_version in the metrics"))
}

async fn http_get(host: &str, port: i32, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(format!("{host}:{port}")).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut body = Vec::new();
    // Bounded: etcd's metrics are a few hundred kB.
    stream.take(8 << 20).read_to_end(&mut body).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `etcd_cluster_version{cluster_version="3.5"} 1` -> `3.5`.
pub(super) fn parse_cluster_version(metrics: &str) -> Option<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("etcd_cluster_version{"))
        .filter(|l| l.trim_end().ends_with(" 1"))
        .find_map(|l| {
            let rest = l.split("cluster_version=\"").nth(1)?;
            Some(rest.split('"').next()?.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::{parse_cluster_version, rolled_out_without};
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};

    fn apiservers(servers: &str, generation: i64, observed: i64, updated: i32) -> Deployment {
        Deployment {
            metadata: kube::api::ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                template: PodTemplateSpec {
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            args: Some(vec![
                                "--allow-privileged=false".into(),
                                format!("--etcd-servers={servers}"),
                            ]),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(3),
                updated_replicas: Some(updated),
                available_replicas: Some(3),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn apiservers_are_off_a_member_once_a_template_without_it_rolled_out() {
        let m1 = "https://t-etcd-1:2379";
        let without = "https://t-etcd-0:2379,https://t-etcd-2:2379";
        let with = "https://t-etcd-0:2379,https://t-etcd-1:2379,https://t-etcd-2:2379";
        assert!(rolled_out_without(&apiservers(without, 4, 4, 3), m1));
        assert!(!rolled_out_without(&apiservers(with, 4, 4, 3), m1));
        // The controller has not seen the new template, or is mid-roll.
        assert!(!rolled_out_without(&apiservers(without, 5, 4, 3), m1));
        assert!(!rolled_out_without(&apiservers(without, 4, 4, 2), m1));
        // A prefix of another member's URL is not that member.
        assert!(rolled_out_without(
            &apiservers("https://t-etcd-10:2379", 1, 1, 3),
            m1
        ));
    }

    #[test]
    fn the_cluster_version_is_read_from_etcd_metrics() {
        let metrics = "# HELP etcd_cluster_version Which version is running.\n\
                       # TYPE etcd_cluster_version gauge\n\
                       etcd_cluster_version{cluster_version=\"3.5\"} 1\n\
                       etcd_server_version{server_version=\"3.5.16\"} 1\n";
        assert_eq!(parse_cluster_version(metrics).as_deref(), Some("3.5"));
        assert_eq!(
            parse_cluster_version("etcd_server_version{server_version=\"3.5.16\"} 1"),
            None
        );
    }
}
