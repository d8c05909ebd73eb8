//! One tenant against the others: a tenant that fills its own cluster with
//! large objects cannot make the shared operator read them all at once.
//! Prints the leader's RSS before and at its peak during the inspection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kok_e2e::{bench, tenant, wait_for, with_namespace, Poll};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(240);
const SECRETS: usize = 500;
const SECRET_BYTES: usize = 1 << 20;
/// The leader's peak RSS while it inspects 500 MiB of Secrets. Read in
/// one page (as before the bound) they are about 680 MiB of JSON and as much
/// again decoded; in pages of 16 (`health::SECRET_PAGE`) about 22 MiB each.
const RSS_BOUND_MIB: u64 = 256;

/// A self-signed certificate as PEM: expired, or valid for ten years.
fn cert(expired: bool) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["big.example.com".to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    if expired {
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
    } else {
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// 500 TLS Secrets of 1 MiB each; only the last by name holds an expired
/// certificate, so its finding shows every page was read.
async fn fill(tenant: Client) {
    let secrets: Api<Secret> = Api::namespaced(tenant, "default");
    let good = cert(false);
    let expired = cert(true);
    // The API's limit is 1 MiB of data per Secret: the padding fills it.
    let padding = ByteString(vec![b'k'; SECRET_BYTES - good.0.len() - good.1.len() - 64]);
    let made = futures::stream::iter(0..SECRETS)
        .map(|i| {
            let secrets = secrets.clone();
            let (crt, key) = if i == SECRETS - 1 { &expired } else { &good };
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(format!("big-{i:03}")),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(
                    [
                        ("tls.crt".to_string(), ByteString(crt.clone().into_bytes())),
                        ("tls.key".to_string(), ByteString(key.clone().into_bytes())),
                        ("padding".to_string(), padding.clone()),
                    ]
                    .into(),
                ),
                ..Default::default()
            };
            async move {
                // A create that timed out under load may still have landed.
                let mut last = None;
                for _ in 0..5 {
                    match secrets.create(&PostParams::default(), &secret).await {
                        Ok(_) => return,
                        Err(kube::Error::Api(e)) if e.code == 409 => return,
                        Err(e) => last = Some(e),
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                panic!("creating Secret big-{i:03}: {last:?}");
            }
        })
        .buffer_unordered(8)
        .count()
        .await;
    assert_eq!(made, SECRETS);
}

#[tokio::test]
async fn a_tenant_with_500_mib_of_secrets_is_inspected_in_bounded_memory() {
    with_namespace("isolation", |client, ns| async move {
        let mut big = tenant::dev_tenant("big", 1);
        // Only on request: the inspection below is the one measured.
        big.spec.healing =
            serde_json::from_value(json!({"inspectionIntervalSeconds": 3600})).unwrap();
        tenant::create(&client, &ns, &big).await;
        tenant::create(&client, &ns, &tenant::dev_tenant("other", 1)).await;
        tenant::wait_ready(&client, &ns, "big", READY_TIMEOUT).await;
        tenant::wait_ready(&client, &ns, "other", READY_TIMEOUT).await;

        let t0 = Instant::now();
        fill(tenant::tenant_client(&client, &ns, "big").await).await;
        eprintln!("{SECRETS} Secrets of 1 MiB written in {:?}", t0.elapsed());

        let (holder, _) = bench::leader_pod(&client).await;
        let pid = bench::operator_pid(&holder).expect("the leader's process");
        let before = bench::rss_kib(pid).expect("RSS");
        let peak = Arc::new(AtomicU64::new(before));
        let sampling = {
            let peak = peak.clone();
            tokio::spawn(async move {
                while let Some(rss) = bench::rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };

        // Meanwhile another tenant's change is reconciled.
        let other_changed = {
            let client = client.clone();
            let ns = ns.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                tenant::patch_spec(
                    &client,
                    &ns,
                    "other",
                    json!({"controlPlane": {"scheduler": {"extraArgs": {"v": "3"}}}}),
                )
                .await;
                let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
                wait_for(
                    "the other tenant's scheduler to carry --v=3",
                    Duration::from_secs(60),
                    || {
                        let deployments = deployments.clone();
                        async move {
                            let args = deployments
                                .get("other-scheduler")
                                .await
                                .ok()
                                .and_then(|d| d.spec?.template.spec)
                                .and_then(|p| p.containers.into_iter().next())
                                .and_then(|c| c.args)
                                .unwrap_or_default();
                            if args.iter().any(|a| a == "--v=3") {
                                Poll::Ready(())
                            } else {
                                Poll::Pending(format!("{args:?}"))
                            }
                        }
                    },
                )
                .await;
                t.elapsed()
            })
        };

        let t1 = Instant::now();
        let status = tenant::inspect(&client, &ns, "big", "big-secrets").await;
        let inspected_in = t1.elapsed();
        let other_in = other_changed.await.expect("the other tenant's change");
        sampling.abort();
        let peak = peak.load(Ordering::Relaxed);
        eprintln!(
            "leader RSS: {} MiB before, {} MiB at peak (bound {RSS_BOUND_MIB} MiB); \
             inspection took {inspected_in:?}; the other tenant's change {other_in:?}",
            before / 1024,
            peak / 1024
        );
        let inspection = status.inspection.clone().expect("an inspection");
        assert!(
            inspection.errors.is_empty(),
            "inspection errors: {:?}",
            inspection.errors
        );
        assert!(
            status
                .findings
                .iter()
                .any(|f| f.check == "CertificateExpiring" && f.object.contains("big-499")),
            "the last page was read: {:#?}",
            status.findings
        );
        assert!(
            peak / 1024 < RSS_BOUND_MIB,
            "the leader's RSS peaked at {} MiB",
            peak / 1024
        );
    })
    .await;
}
