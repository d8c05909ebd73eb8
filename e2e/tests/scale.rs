//! Live etcd scaling (issue 10): a persistent tenant goes 1 -> 3 -> 5 -> 3
//! -> 1 -> 3 members by spec changes alone, under a steady load through its
//! API, every object kept; the last step reuses ordinals whose claims the
//! scale-down retired.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kok_crds::TenantCluster;
use kok_e2e::load::{objects_present, start_load};
use kok_e2e::volumes::{make_volumes, remove_volumes};
use kok_e2e::{etcd, tenant, wait_for, with_namespace, Poll};
use kube::api::ListParams;
use kube::Api;
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// One scaling step: members added as learners one at a time, the
/// apiservers rolled onto the new membership, on a node shared with other tests.
const STEP_TIMEOUT: Duration = Duration::from_secs(420);
/// Claims made: 1, then 2 and 3 more, then 2 again after the retired ones go.
const VOLUMES: i32 = 7;

#[tokio::test]
async fn etcd_scales_live_from_one_to_five_and_back_under_load() {
    with_namespace("scale", |client, ns| async move {
        make_volumes(&client, &ns, VOLUMES).await;
        let mut tc = tenant::dev_tenant("sc", 1);
        tc.spec.etcd.storage =
            serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "sc", READY_TIMEOUT).await;
        let tenant_api = tenant::tenant_client(&client, &ns, "sc").await;
        let stop = Arc::new(AtomicBool::new(false));
        let (load_task, load) = start_load(tenant_api.clone(), stop.clone());
        let api: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);

        let mut from = 1;
        for to in [3, 5, 3, 1, 3] {
            let started = Instant::now();
            tenant::patch_spec(&client, &ns, "sc", json!({"etcd": {"replicas": to}})).await;
            let reached = wait_for(
                &format!("etcd scaled from {from} to {to} members, Ready"),
                STEP_TIMEOUT,
                || async {
                    let tc = api.get("sc").await.unwrap();
                    let generation = tc.metadata.generation;
                    let ready_condition = tenant::condition(&tc, "Ready");
                    let ready = ready_condition.is_some_and(|c| c.status == "True");
                    let reason = ready_condition
                        .map(|c| format!("{}: {}", c.reason, c.message))
                        .unwrap_or_default();
                    let s = tc.status.clone().unwrap_or_default();
                    if s.etcd_replicas == Some(to)
                        && s.etcd_scaling.is_none()
                        && s.observed_generation == generation
                        && ready
                    {
                        Poll::Ready(s)
                    } else {
                        Poll::Pending(format!(
                            "etcdReplicas {:?}, scaling {:?}, Ready: {reason}",
                            s.etcd_replicas, s.etcd_scaling
                        ))
                    }
                },
            )
            .await;
            let took = started.elapsed();
            // etcd itself: `to` voting members, no learner left behind.
            let members = etcd::membership(&client, &ns, "sc").await;
            assert_eq!(members.len(), to as usize, "{members:?}");
            assert!(members.iter().all(|(_, learner)| !learner), "{members:?}");
            let names: Vec<String> = (0..to).map(|i| format!("sc-etcd-{i}")).collect();
            assert_eq!(
                members.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                names
            );
            // Claims of removed members are kept, and recorded as retired.
            if to < from {
                for i in to..from {
                    let claim = format!("data-sc-etcd-{i}");
                    assert!(
                        reached.etcd_retired_claims.contains_key(&claim),
                        "{claim} retired: {:?}",
                        reached.etcd_retired_claims
                    );
                }
            }
            println!(
                "etcd {from} -> {to} members: {:.1} s (spec edit to Ready)",
                took.as_secs_f64()
            );
            from = to;
        }
        // The last scale-up went through ordinals 1 and 2 again: their
        // retired claims were deleted and replaced, the others are kept.
        let s = api.get("sc").await.unwrap().status.unwrap_or_default();
        let retired: Vec<&String> = s.etcd_retired_claims.keys().collect();
        assert_eq!(retired, ["data-sc-etcd-3", "data-sc-etcd-4"]);

        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        load_task.await.unwrap();
        let (writes, failures, retried, worst) = {
            let l = load.lock().unwrap();
            (l.writes, l.failures.clone(), l.retried.clone(), l.worst)
        };
        println!(
            "load through all steps: {writes} writes + reads, {} failed, {} sent again on a closed connection; worst request {:.0} ms",
            failures.len(),
            retried.len(),
            worst.as_secs_f64() * 1000.0
        );
        assert!(writes > 50, "the load barely ran: {writes} writes");
        assert!(failures.is_empty(), "requests failed while scaling: {failures:?}");
        // Each step rolls the apiservers once (at most one race each).
        assert!(retried.len() <= 5, "closed connections: {retried:?}");
        // Every object written is there.
        let present = objects_present(tenant_api).await;
        assert_eq!(present, writes, "objects written while scaling");

        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let reasons: Vec<String> = events
            .list(&ListParams::default().fields("involvedObject.name=sc"))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        for reason in ["EtcdScaling", "EtcdMemberAdded", "EtcdMemberPromoted", "EtcdMemberRemoved", "RetiredClaimDeleted", "EtcdScaled"] {
            assert!(reasons.iter().any(|r| r == reason), "Event {reason} in {reasons:?}");
        }
        assert!(!reasons.iter().any(|r| r == "EtcdScalingBlocked"), "{reasons:?}");
        remove_volumes(&client, &ns, VOLUMES).await;
    })
    .await;
}
