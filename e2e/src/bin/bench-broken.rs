//! What tenants that never become ready cost the management API server
//! (issue 22): prints figures, asserts nothing about them.
//!
//! Ten tenants whose etcd image cannot be pulled (valid specs, never ready,
//! not Stalled: the image may yet be pushed). The operator counts every
//! request it makes (`kok_api_requests_total`). Requests per minute are
//! measured with no tenant (the baseline: leases, watches), during the first
//! two minutes of the broken tenants (looked at every 3 s, as every broken
//! tenant was before the backoff), and from minute 3 to 5 (every 15 s).
//!
//! Needs the local cluster with the operator deployed (`hack/bench broken`).

use std::time::{Duration, Instant};

use kok_e2e::{bench, client, tenant};
use kube::api::DeleteParams;
use kube::Client;

const TENANTS: usize = 10;

/// Every `kok_api_requests_total` sample of the leader, summed.
async fn requests(client: &Client) -> f64 {
    bench::leader_metrics(client)
        .await
        .lines()
        .filter(|l| l.starts_with("kok_api_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Requests per minute over `window`, starting now.
async fn rate(client: &Client, window: Duration) -> f64 {
    let (r0, t0) = (requests(client).await, Instant::now());
    tokio::time::sleep(window).await;
    (requests(client).await - r0) * 60.0 / t0.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let client = client().await;
    let ns = format!("bench-broken-{}", std::process::id());
    let namespaces = kok_e2e::bench::make_namespace(&client, &ns).await;
    println!("# API requests of {TENANTS} tenants that never become ready");

    let baseline = rate(&client, Duration::from_secs(60)).await;
    println!("baseline (no tenant in this namespace): {baseline:.0} requests/min");

    let prefix = kok_e2e::image_prefix();
    let start = Instant::now();
    for i in 0..TENANTS {
        let mut tc = tenant::dev_tenant(&format!("broken-{i}"), 1);
        tc.spec.etcd.image = Some(format!("{prefix}/etcd:no-such-tag"));
        tenant::create(&client, &ns, &tc).await;
    }
    // The first two minutes, after the creations settle.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let early = rate(&client, Duration::from_secs(90)).await - baseline;
    // Past two minutes of not being ready: every 15 s.
    let wait = Duration::from_secs(160).saturating_sub(start.elapsed());
    tokio::time::sleep(wait).await;
    let later = rate(&client, Duration::from_secs(120)).await - baseline;
    println!(
        "{TENANTS} broken tenants, minute 0.3-1.8 (every 3 s, as before the backoff): {early:.0} requests/min"
    );
    println!("{TENANTS} broken tenants, minute 2.7-4.7 (every 15 s): {later:.0} requests/min");
    println!(
        "ratio before/after: {:.1} (after 10 min the pass is once a minute)",
        early / later.max(1.0)
    );

    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
}
