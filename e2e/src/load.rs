//! A steady client load through a tenant's API while kok moves its control
//! plane (upgrades, scaling): what failed, what was sent again, the slowest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// The load: one write and one read every `LOAD_PERIOD`, at most `LOAD_MAX` writes.
pub const LOAD_PERIOD: Duration = Duration::from_millis(100);
pub const LOAD_MAX: usize = 5000;

/// What the steady load saw.
#[derive(Default)]
pub struct Load {
    pub writes: usize,
    pub reads: usize,
    pub failures: Vec<String>,
    /// Requests sent again after a stopping apiserver closed the kept-alive
    /// connection they were written to (see `closed_under_us`).
    pub retried: Vec<String>,
    pub worst: Duration,
}

/// A request written to a kept-alive connection at the instant the
/// apiserver closed it at the end of its shutdown delay. HTTP/1.1 cannot
/// avoid this race; Go's transport, and so kubectl and client-go, sends such a
/// request again by itself, and kube-rs does not, so the load does it here.
/// Connect errors (traffic routed to a stopped apiserver) are not this and
/// still fail the test.
pub fn closed_under_us(e: &kube::Error) -> bool {
    e.to_string().contains("client error (SendRequest)")
}

/// Writes a ConfigMap and reads it back, over and over, until `stop`.
pub fn start_load(
    tenant: Client,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Load>>) {
    let load = Arc::new(Mutex::new(Load::default()));
    let seen = load.clone();
    let task = tokio::spawn(async move {
        let cms: Api<ConfigMap> = Api::namespaced(tenant, "default");
        for i in 0..LOAD_MAX {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let name = format!("load-{i:05}");
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": name}, "data": {"i": i.to_string()}}),
            )
            .unwrap();
            let t = Instant::now();
            let mut retried = Vec::new();
            let mut written = cms.create(&PostParams::default(), &cm).await;
            if let Err(e) = &written {
                if closed_under_us(e) {
                    retried.push(format!("create {name}: {e}"));
                    // The first attempt may have been applied: then the
                    // object is there, which is what the write asked for.
                    written = match cms.create(&PostParams::default(), &cm).await {
                        Err(kube::Error::Api(s)) if s.code == 409 => cms.get(&name).await,
                        other => other,
                    };
                }
            }
            let read = match &written {
                Ok(_) => {
                    let mut read = cms.get(&name).await;
                    if let Err(e) = &read {
                        if closed_under_us(e) {
                            retried.push(format!("get {name}: {e}"));
                            read = cms.get(&name).await;
                        }
                    }
                    Some(read)
                }
                Err(_) => None,
            };
            let took = t.elapsed();
            {
                let mut l = seen.lock().unwrap();
                l.retried.extend(retried);
                l.worst = l.worst.max(took);
                match written {
                    Ok(_) => l.writes += 1,
                    Err(e) => l.failures.push(format!("create {name}: {e}")),
                }
                match read {
                    Some(Ok(_)) => l.reads += 1,
                    Some(Err(e)) => l.failures.push(format!("get {name}: {e}")),
                    None => {}
                }
            }
            tokio::time::sleep(LOAD_PERIOD).await;
        }
    });
    (task, load)
}

/// How many of the load's objects the tenant holds now.
pub async fn objects_present(tenant: Client) -> usize {
    let cms: Api<ConfigMap> = Api::namespaced(tenant, "default");
    cms.list(&ListParams::default())
        .await
        .expect("listing the load's ConfigMaps")
        .items
        .iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("load-"))
        })
        .count()
}
