//! The e2e harness: a cluster from `KUBECONFIG`, a namespace per test, and waits
//! that say what they last saw when they time out.
//!
//! The same tests run against the local cluster (`hack/local-cluster`) or any
//! other cluster (kind, k3d) whose nodes have the images under `KOK_IMAGE_PREFIX`.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

/// The registry prefix the test images live under (`kok.local` on the local cluster).
pub fn image_prefix() -> String {
    std::env::var("KOK_IMAGE_PREFIX").unwrap_or_else(|_| "kok.local".to_string())
}

/// An image of the local set, e.g. `image("etcd:3.4.23")`.
pub fn image(name_and_tag: &str) -> String {
    format!("{}/{}", image_prefix(), name_and_tag)
}

/// A client for the cluster under test. Fails loudly: an e2e run without a
/// cluster is an error, not a skip.
pub async fn client() -> Client {
    match Client::try_default().await {
        Ok(c) => c,
        Err(e) => panic!(
            "no cluster to test against ({e}); run `hack/local-cluster up` and \
             `eval \"$(hack/local-cluster env)\"` first"
        ),
    }
}

/// Runs `test` with a fresh namespace, then deletes the namespace whether the
/// test passed or panicked (the panic is re-raised after cleanup).
pub async fn with_namespace<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let client = client().await;
    // Namespaced mode (`hack/e2e-run --namespaced`): the runner hands each
    // test a namespace the operator was deployed to watch, made already.
    let name = std::env::var("KOK_E2E_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("e2e-{prefix}-{}", unique_suffix()));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("kok.dev/e2e".to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &ns).await {
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        other => {
            other.unwrap_or_else(|e| panic!("creating test namespace {name}: {e}"));
        }
    }

    let outcome = tokio::spawn(test(client.clone(), name.clone())).await;

    if namespaced_mode() {
        release_kok_objects(&client, &name).await;
    }
    if let Err(e) = namespaces.delete(&name, &DeleteParams::background()).await {
        eprintln!("warning: could not delete test namespace {name}: {e}");
    }
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("test task in {name} was cancelled: {e}");
    }
}

/// The runner gave this test a namespace the operator watches (namespaced mode).
fn namespaced_mode() -> bool {
    std::env::var("KOK_E2E_NAMESPACE").is_ok_and(|n| !n.is_empty())
}

/// In namespaced mode kok's rights in a namespace go with the namespace, so
/// its objects with finalizers are deleted first, as docs/operator.md asks
/// of a platform team: afterwards kok could not let them go.
async fn release_kok_objects(client: &Client, ns: &str) {
    use kok_crds::{EtcdRestore, JoinToken, TenantCluster};
    let lp = kube::api::ListParams::default();
    let dp = DeleteParams::background();
    let tenants: Api<TenantCluster> = Api::namespaced(client.clone(), ns);
    let tokens: Api<JoinToken> = Api::namespaced(client.clone(), ns);
    let restores: Api<EtcdRestore> = Api::namespaced(client.clone(), ns);
    let _ = tenants.delete_collection(&dp, &lp).await;
    let _ = tokens.delete_collection(&dp, &lp).await;
    let _ = restores.delete_collection(&dp, &lp).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        // A failed list is not "gone": it counts as one left.
        let left = tenants.list(&lp).await.map_or(1, |l| l.items.len())
            + tokens.list(&lp).await.map_or(1, |l| l.items.len())
            + restores.list(&lp).await.map_or(1, |l| l.items.len());
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "warning: kok objects in {ns} still there after 180 s; the namespace may stay Terminating"
    );
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{:x}{:04x}", std::process::id() & 0xfff, nanos & 0xffff)
}

/// What one poll of a wait saw: done with a value, or not yet with a description.
pub enum Poll<T> {
    Ready(T),
    Pending(String),
}

/// Polls `check` every `interval` until it is ready; on timeout panics with
/// what it was waiting for and the last state it saw.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Poll<T>>,
{
    let start = Instant::now();
    let interval = Duration::from_millis(500);
    let mut last;
    loop {
        match check().await {
            Poll::Ready(v) => return v,
            Poll::Pending(seen) => last = seen,
        }
        if start.elapsed() >= timeout {
            panic!(
                "timed out after {:?} waiting for {what}; last seen: {last}",
                timeout
            );
        }
        tokio::time::sleep(interval).await;
    }
}

/// Kills every operator pod at once (grace 0, like `kill -9`): the
/// Deployment starts new ones, which must pick up where the old ones were.
pub async fn kill_operator(client: &Client) {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{DeleteParams, ListParams};
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kok-system");
    let lp = ListParams::default().labels("app.kubernetes.io/name=kok-operator");
    for p in pods.list_metadata(&lp).await.unwrap().items {
        let name = p.metadata.name.unwrap_or_default();
        let _ = pods
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await;
    }
}

pub mod bench;
pub mod etcd;
pub mod http;
pub mod load;
pub mod nodes;
pub mod tenant;
pub mod volumes;
pub mod workloads;
