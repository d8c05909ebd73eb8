//! State shared by every reconcile: the client, the Event recorder, metrics,
//! and the per-object failure counts behind the retry backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::Client;
use kube::Resource;

use crate::runtime::telemetry::Metrics;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Labels of the operator's pods, allowed through each tenant's etcd NetworkPolicy.
    pub operator_pod_labels: std::collections::BTreeMap<String, String>,
    /// The operator's namespace and its labels: tenant etcd NetworkPolicies
    /// admit the operator's pods from this namespace only.
    pub operator_namespace: String,
    pub operator_namespace_labels: std::collections::BTreeMap<String, String>,
    /// etcd binaries for restoring backups into a scratch etcd.
    pub etcd_tools: crate::etcd::verify::Tools,
    /// Scratch space for backup verification (`KOK_WORK_DIR`, default the temp dir).
    pub work_dir: std::path::PathBuf,
    /// The operator's own image (`KOK_IMAGE`): restore Jobs run it.
    pub operator_image: Option<String>,
    /// What /var/lib/kok/backups is: an emptyDir, a node directory
    /// (`KOK_BACKUP_HOST_PATH`) or a claim (`KOK_BACKUP_CLAIM`).
    pub backups: BackupsDirectory,
    /// The node the operator runs on (`NODE_NAME`, from the downward API).
    pub operator_node: Option<String>,
    /// What specs may ask for (`KOK_ALLOW_HTTP_S3=true` accepts http S3
    /// endpoints, `KOK_S3_PRIVATE_ENDPOINTS` private ones).
    pub policy: kok_templates::validate::Policy,
    /// Consecutive failures per object, keyed by kind/namespace/name.
    failures: Mutex<HashMap<String, usize>>,
    /// Per tenant (`namespace/name`): whether its last inspection found it
    /// unhealthy. The fleet-wide repair breaker reads it.
    fleet: Mutex<FleetHealth>,
    /// The last note said per key (e.g. a refusal per tenant), so a state
    /// that lasts is announced once, not on every pass.
    said: Mutex<HashMap<String, String>>,
    /// Per key: the fingerprint of what was last done in full, and when
    /// (periodic rounds such as the tenant-side objects for nodes).
    rounds: Mutex<HashMap<String, (String, std::time::Instant)>>,
}

/// What the operator's backups directory (`/var/lib/kok/backups`) is.
#[derive(Clone, Debug)]
pub enum BackupsDirectory {
    /// An emptyDir: it dies with the pod, so filesystem destinations are refused.
    Ephemeral,
    /// A node directory (`KOK_BACKUP_HOST_PATH`).
    HostPath(String),
    /// A PersistentVolumeClaim (`KOK_BACKUP_CLAIM`), served to restore Jobs.
    Claim(ArtifactService),
}

#[derive(Clone)]
pub struct ArtifactService {
    /// The Service in the operator's namespace that selects every replica.
    pub service: String,
    /// The shared token signing key.
    pub key: Arc<Vec<u8>>,
}

// Never print the key.
impl std::fmt::Debug for ArtifactService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactService")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl BackupsDirectory {
    /// Whether a backup written there outlives the operator's pod.
    pub fn durable(&self) -> bool {
        !matches!(self, BackupsDirectory::Ephemeral)
    }
}

/// Per tenant (`namespace/name`): whether it is unhealthy, as this replica
/// last inspected it or, until then, as its status last recorded.
#[derive(Default, Debug)]
pub struct FleetHealth(HashMap<String, (bool, Source)>);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    Recorded,
    Inspected,
}

impl FleetHealth {
    fn inspected(&mut self, tenant: String, unhealthy: bool) {
        self.0.insert(tenant, (unhealthy, Source::Inspected));
    }

    /// A recorded state never overrides one this replica inspected.
    fn recorded(&mut self, tenant: String, unhealthy: bool) {
        let e = self
            .0
            .entry(tenant)
            .or_insert((unhealthy, Source::Recorded));
        if e.1 == Source::Recorded {
            e.0 = unhealthy;
        }
    }

    fn forget(&mut self, tenant: &str) {
        self.0.remove(tenant);
    }

    /// `(unhealthy, known)` namespaces (see `fleet_counts`).
    fn counts(&self) -> (usize, usize) {
        kok_templates::inspection::fleet_counts(
            self.0
                .iter()
                .map(|(key, (u, _))| (key.split('/').next().unwrap_or(key), *u)),
        )
    }
}

/// What the operator is told at start (flags or their environment
/// variables: see `kok-operator --help`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Scratch space for backup verification.
    pub work_dir: std::path::PathBuf,
    /// The operator's own image: restore Jobs run it.
    pub operator_image: Option<String>,
    /// What /var/lib/kok/backups is.
    pub backups: BackupsDirectory,
    /// The node the operator runs on.
    pub operator_node: Option<String>,
    /// Accept http:// S3 endpoints.
    pub allow_http_s3: bool,
    /// Private S3 endpoints allowed.
    pub private_s3: kok_templates::backup::PrivateEndpoints,
    /// Image repositories tenants may run (empty: any).
    pub image_repositories: Vec<String>,
    /// Where tenants may register with Argo CD.
    pub argocd: kok_templates::argocd::ArgoPolicy,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        operator_pod_labels: std::collections::BTreeMap<String, String>,
        operator_namespace: String,
        operator_namespace_labels: std::collections::BTreeMap<String, String>,
        settings: Settings,
    ) -> Self {
        let durable_backups = settings.backups.durable();
        Self {
            client,
            recorder,
            metrics,
            operator_pod_labels,
            operator_namespace,
            operator_namespace_labels,
            etcd_tools: crate::etcd::verify::Tools::from_env(),
            work_dir: settings.work_dir,
            operator_image: settings.operator_image.filter(|s| !s.is_empty()),
            backups: settings.backups,
            operator_node: settings.operator_node.filter(|s| !s.is_empty()),
            policy: kok_templates::validate::Policy {
                allow_http_s3: settings.allow_http_s3,
                private_s3: settings.private_s3,
                image_repositories: settings.image_repositories,
                argocd: settings.argocd,
                durable_backups,
            },
            failures: Mutex::default(),
            fleet: Mutex::default(),
            said: Mutex::default(),
            rounds: Mutex::default(),
        }
    }

    /// Publishes an Event on `obj`: the one way kok tells a person what it
    /// did or why it cannot. A failure to publish is only logged: an Event
    /// never decides a step.
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            // The API refuses notes over 1 kB.
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }

    /// Records a tenant's health as its last inspection found it.
    pub fn record_fleet_health(&self, namespace: &str, tenant: &str, unhealthy: bool) {
        if let Ok(mut fleet) = self.fleet.lock() {
            fleet.inspected(format!("{namespace}/{tenant}"), unhealthy);
        }
    }

    /// Seeds the breaker with a tenant's last recorded inspection (its
    /// `Healthy` condition) until this replica inspects it: a replica that
    /// just became leader knows the fleet's state from the first pass over
    /// every tenant, not only after each tenant's next inspection.
    pub fn seed_fleet_health(&self, namespace: &str, tenant: &str, unhealthy: bool) {
        if let Ok(mut fleet) = self.fleet.lock() {
            fleet.recorded(format!("{namespace}/{tenant}"), unhealthy);
        }
    }

    /// Whether `note` is new for `key` (and remembers it): a lasting state
    /// gets one Event, not one per pass.
    pub fn first_saying(&self, key: &str, note: &str) -> bool {
        self.said.lock().is_ok_and(|mut said| {
            let new = said.get(key).map(String::as_str) != Some(note);
            if new {
                said.insert(key.to_string(), note.to_string());
            }
            new
        })
    }

    /// Whether a round keyed `key` is due: what it would do changed
    /// (`fingerprint`), or `every` passed since it was last done.
    pub fn round_due(&self, key: &str, fingerprint: &str, every: Duration) -> bool {
        self.rounds
            .lock()
            .map_or(true, |rounds| match rounds.get(key) {
                Some((fp, at)) => fp != fingerprint || at.elapsed() >= every,
                None => true,
            })
    }

    /// Records a round done in full.
    pub fn round_done(&self, key: &str, fingerprint: &str) {
        if let Ok(mut rounds) = self.rounds.lock() {
            rounds.insert(
                key.to_string(),
                (fingerprint.to_string(), std::time::Instant::now()),
            );
        }
    }

    /// Forgets a deleted tenant.
    pub fn forget_fleet_member(&self, namespace: &str, tenant: &str) {
        if let Ok(mut fleet) = self.fleet.lock() {
            fleet.forget(&format!("{namespace}/{tenant}"));
        }
    }

    /// `(unhealthy, known)` namespaces holding tenants.
    pub fn fleet_health(&self) -> (usize, usize) {
        self.fleet.lock().map(|f| f.counts()).unwrap_or((0, 0))
    }

    /// The delay before retrying `obj` after its n-th consecutive failure:
    /// exponential from 1 s to 5 min with jitter, so a broken object never
    /// retries hot and many broken objects do not retry in step.
    /// Counted per controller: the schedule succeeding on a TenantCluster does
    /// not reset the tenant reconciler's backoff for the same object.
    pub fn next_retry<K: Resource<DynamicType = ()>>(
        &self,
        controller: &str,
        obj: &ObjectRef<K>,
    ) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key(controller, obj)).or_insert(0);
        *n += 1;
        retry_delay(*n)
    }

    pub fn reset_failures<K: Resource<DynamicType = ()>>(
        &self,
        controller: &str,
        obj: &ObjectRef<K>,
    ) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(controller, obj));
    }

    /// The one `error_policy` of every controller: count the failure, log it,
    /// retry with this object's growing backoff (never a hot loop).
    pub fn retry_after_error<K: Resource<DynamicType = ()>>(
        &self,
        controller: &'static str,
        obj: &K,
        error: &crate::runtime::error::Error,
    ) -> kube::runtime::controller::Action {
        self.metrics
            .reconcile_failed(controller, error.metric_label());
        let obj_ref = ObjectRef::from_obj(obj);
        let delay = self.next_retry(controller, &obj_ref);
        tracing::warn!(%controller, object = %obj_ref, %error, retry_in = ?delay, "reconcile failed");
        kube::runtime::controller::Action::requeue(delay)
    }
}

fn key<K: Resource<DynamicType = ()>>(controller: &str, obj: &ObjectRef<K>) -> String {
    format!(
        "{controller}:{}/{}/{}",
        K::kind(&()),
        obj.namespace.as_deref().unwrap_or_default(),
        obj.name
    )
}

pub fn retry_delay(consecutive_failures: usize) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(consecutive_failures.saturating_sub(1))
        .unwrap_or(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::{retry_delay, FleetHealth};
    use std::time::Duration;

    #[test]
    fn the_fleet_is_known_from_status_until_inspected() {
        let mut f = FleetHealth::default();
        f.recorded("a/t1".into(), true);
        f.recorded("b/t2".into(), false);
        assert_eq!(f.counts(), (1, 2), "a new leader knows the recorded state");
        f.inspected("a/t1".into(), false);
        f.recorded("a/t1".into(), true);
        assert_eq!(
            f.counts(),
            (0, 2),
            "an older record never overrides an inspection"
        );
        f.recorded("b/t2".into(), true);
        assert_eq!(f.counts(), (1, 2), "a newer record replaces a record");
        f.forget("b/t2");
        assert_eq!(f.counts(), (0, 1));
        f.inspected("c/t1".into(), true);
        f.inspected("c/t2".into(), true);
        assert_eq!(f.counts(), (1, 2), "a namespace counts once");
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        // With jitter the delay lies in [base, 2*base).
        let first = retry_delay(1);
        assert!(
            first >= Duration::from_secs(1) && first < Duration::from_secs(2),
            "{first:?}"
        );
        let fifth = retry_delay(5);
        assert!(
            fifth >= Duration::from_secs(16) && fifth < Duration::from_secs(32),
            "{fifth:?}"
        );
        let late = retry_delay(40);
        assert!(late <= Duration::from_secs(600), "{late:?}");
        assert!(late >= Duration::from_secs(300), "{late:?}");
    }
}
