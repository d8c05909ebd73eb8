//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    controller: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    namespace: String,
    tenant: String,
    check: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepairLabels {
    check: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    namespace: String,
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    check: String,
}

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: HistogramFamily,
    backups: Family<ResultLabels, Counter>,
    verifications: Family<ResultLabels, Counter>,
    findings: Family<FindingLabels, Gauge>,
    repairs: Family<RepairLabels, Counter>,
    repair_seconds: Family<CheckLabels, Histogram, fn() -> Histogram>,
    tenant_ready: Family<TenantLabels, Gauge>,
    cert_expiry: Family<TenantLabels, Gauge>,
    last_backup: Family<TenantLabels, Gauge>,
    backup_size: Family<TenantLabels, Gauge>,
    backup_duration: Family<TenantLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    restores: Family<ResultLabels, Counter>,
    leader: Gauge,
    api_requests: Family<MethodLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        // 10 ms .. ~80 s: a reconcile that waits on a slow API server shows up.
        let duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.01, 2.0, 14)));
        registry.register("kok_reconcile", "Reconciles run", reconciles.clone());
        registry.register(
            "kok_reconcile_errors",
            "Reconciles that failed, by reason",
            failures.clone(),
        );
        registry.register(
            "kok_reconcile_duration_seconds",
            "Time spent in one reconcile",
            duration.clone(),
        );
        let backups = Family::<ResultLabels, Counter>::default();
        let verifications = Family::<ResultLabels, Counter>::default();
        registry.register(
            "kok_etcd_backups",
            "EtcdBackups finished, by result (succeeded, failed)",
            backups.clone(),
        );
        registry.register(
            "kok_etcd_backup_verifications",
            "Backups restored into a scratch etcd, by result (passed, failed)",
            verifications.clone(),
        );
        let findings = Family::<FindingLabels, Gauge>::default();
        let repairs = Family::<RepairLabels, Counter>::default();
        // 1 s .. ~2 h: from a finding's first sighting to its repair.
        let repair_seconds: Family<CheckLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 13)));
        registry.register(
            "kok_findings",
            "Findings of the last inspection, per tenant, check and severity",
            findings.clone(),
        );
        registry.register(
            "kok_repairs",
            "Repairs kok made, by check and outcome (succeeded, failed)",
            repairs.clone(),
        );
        registry.register(
            "kok_time_to_repair_seconds",
            "From a problem's first sighting to the end of its repair, by check",
            repair_seconds.clone(),
        );
        let tenant_ready = Family::<TenantLabels, Gauge>::default();
        let cert_expiry = Family::<TenantLabels, Gauge>::default();
        let last_backup = Family::<TenantLabels, Gauge>::default();
        let backup_size = Family::<TenantLabels, Gauge>::default();
        let backup_duration =
            Family::<TenantLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let restores = Family::<ResultLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register(
            "kok_tenant_ready",
            "1 when the tenant's Ready condition is True",
            tenant_ready.clone(),
        );
        registry.register(
            "kok_certificate_expiry_timestamp_seconds",
            "When the first of the tenant's leaf certificates expires (unix time)",
            cert_expiry.clone(),
        );
        registry.register(
            "kok_last_successful_backup_timestamp_seconds",
            "When the tenant's newest successful EtcdBackup finished (unix time)",
            last_backup.clone(),
        );
        registry.register(
            "kok_last_backup_size_bytes",
            "Size of the tenant's newest successful backup",
            backup_size.clone(),
        );
        registry.register(
            "kok_last_backup_duration_seconds",
            "How long the tenant's newest successful backup took",
            backup_duration.clone(),
        );
        registry.register(
            "kok_etcd_restores",
            "EtcdRestores finished, by result (completed, failed)",
            restores.clone(),
        );
        let api_requests = Family::<MethodLabels, Counter>::default();
        registry.register(
            "kok_api_requests",
            "Requests to the management cluster's API server, by HTTP method (a watch counts once)",
            api_requests.clone(),
        );
        registry.register(
            "kok_leader",
            "1 while this replica holds the leader Lease (or runs without election)",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            backups,
            verifications,
            findings,
            repairs,
            repair_seconds,
            tenant_ready,
            cert_expiry,
            last_backup,
            backup_size,
            backup_duration,
            restores,
            leader,
            api_requests,
        }
    }

    /// Counts one request to the management API (a layer on kok's client, main.rs).
    pub fn api_request(&self, method: &http::Method) {
        self.api_requests
            .get_or_create(&MethodLabels {
                method: method.as_str().to_string(),
            })
            .inc();
    }

    /// Counts a reconcile and times it until the returned timer is dropped.
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer<'_> {
        let labels = ControllerLabels {
            controller: controller.to_string(),
        };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: self,
            labels,
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, controller: &'static str, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels {
                controller: controller.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn backup_finished(&self, succeeded: bool) {
        let result = if succeeded { "succeeded" } else { "failed" };
        self.backups
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    pub fn backup_verified(&self, passed: bool) {
        let result = if passed { "passed" } else { "failed" };
        self.verifications
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// The findings of a tenant's last inspection (`(check, severity)`
    /// pairs); checks it no longer has are set to 0.
    pub fn set_findings(&self, namespace: &str, tenant: &str, findings: &[(String, String)]) {
        let mut counts: std::collections::BTreeMap<(String, String), i64> = Default::default();
        for f in findings {
            *counts.entry(f.clone()).or_default() += 1;
        }
        for (check, _, _) in kok_templates::inspection::CHECKS {
            for severity in ["Info", "Warning", "Critical"] {
                let key = (check.to_string(), severity.to_string());
                let n = counts.get(&key).copied().unwrap_or(0);
                let labels = FindingLabels {
                    namespace: namespace.into(),
                    tenant: tenant.into(),
                    check: key.0,
                    severity: key.1,
                };
                // Series are created only once something was found.
                if n > 0 || self.findings.get(&labels).is_some() {
                    self.findings.get_or_create(&labels).set(n);
                }
            }
        }
    }

    pub fn tenant_observed(
        &self,
        namespace: &str,
        tenant: &str,
        ready: bool,
        cert_expiry_unix: Option<i64>,
    ) {
        let labels = TenantLabels {
            namespace: namespace.into(),
            tenant: tenant.into(),
        };
        self.tenant_ready.get_or_create(&labels).set(ready as i64);
        if let Some(t) = cert_expiry_unix {
            self.cert_expiry.get_or_create(&labels).set(t);
        }
    }

    pub fn backup_succeeded(
        &self,
        namespace: &str,
        tenant: &str,
        finished_unix: i64,
        size: u64,
        seconds: f64,
    ) {
        let labels = TenantLabels {
            namespace: namespace.into(),
            tenant: tenant.into(),
        };
        self.last_backup.get_or_create(&labels).set(finished_unix);
        self.backup_size.get_or_create(&labels).set(size as i64);
        self.backup_duration.get_or_create(&labels).set(seconds);
    }

    pub fn restore_finished(&self, completed: bool) {
        let result = if completed { "completed" } else { "failed" };
        self.restores
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// A replica that stops leading stops reporting tenants: its last
    /// values would go stale and fire alerts the leader no longer backs.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(leading as i64);
        if !leading {
            self.tenant_ready.clear();
            self.cert_expiry.clear();
            self.last_backup.clear();
            self.backup_size.clear();
            self.backup_duration.clear();
            self.findings.clear();
        }
    }

    /// Whether this process has a last-backup time for the tenant.
    pub fn knows_last_backup(&self, namespace: &str, tenant: &str) -> bool {
        self.last_backup
            .get(&TenantLabels {
                namespace: namespace.into(),
                tenant: tenant.into(),
            })
            .is_some()
    }

    /// Drops a deleted tenant's series.
    pub fn forget_tenant(&self, namespace: &str, tenant: &str) {
        let labels = TenantLabels {
            namespace: namespace.into(),
            tenant: tenant.into(),
        };
        self.tenant_ready.remove(&labels);
        self.cert_expiry.remove(&labels);
        self.last_backup.remove(&labels);
        self.backup_size.remove(&labels);
        self.backup_duration.remove(&labels);
        for (check, _, _) in kok_templates::inspection::CHECKS {
            for severity in ["Info", "Warning", "Critical"] {
                self.findings.remove(&FindingLabels {
                    namespace: namespace.into(),
                    tenant: tenant.into(),
                    check: check.to_string(),
                    severity: severity.into(),
                });
            }
        }
    }

    pub fn repaired(&self, check: &str, succeeded: bool, seconds_to_repair: Option<f64>) {
        let outcome = if succeeded { "succeeded" } else { "failed" };
        self.repairs
            .get_or_create(&RepairLabels {
                check: check.into(),
                outcome: outcome.into(),
            })
            .inc();
        if let (true, Some(s)) = (succeeded, seconds_to_repair) {
            self.repair_seconds
                .get_or_create(&CheckLabels {
                    check: check.into(),
                })
                .observe(s);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    labels: ControllerLabels,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Readiness of this replica: set once it is initialised (the CRD is served
/// and it is leading or standing by). Liveness is "the process serves".
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz_handler))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn readyz_handler(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let code = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    #[test]
    fn reconciles_failures_and_durations_are_rendered() {
        let m = Metrics::new();
        drop(m.reconcile_started("tenantcluster"));
        m.reconcile_failed("tenantcluster", "kube_api");
        let text = m.render();
        assert!(
            text.contains(r#"kok_reconcile_total{controller="tenantcluster"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"kok_reconcile_errors_total{controller="tenantcluster",reason="kube_api"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"kok_reconcile_duration_seconds_count{controller="tenantcluster"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn api_requests_are_counted_by_method() {
        let m = Metrics::new();
        m.api_request(&http::Method::GET);
        m.api_request(&http::Method::GET);
        m.api_request(&http::Method::PATCH);
        let text = m.render();
        assert!(
            text.contains(r#"kok_api_requests_total{method="GET"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kok_api_requests_total{method="PATCH"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn tenant_backup_restore_and_leader_series_are_rendered_and_forgotten() {
        let m = Metrics::new();
        m.tenant_observed("ns", "t", true, Some(1_900_000_000));
        m.backup_succeeded("ns", "t", 1_800_000_000, 4096, 1.5);
        m.restore_finished(true);
        m.set_leader(true);
        m.set_findings("ns", "t", &[("PodOnMissingNode".into(), "Warning".into())]);
        let text = m.render();
        for line in [
            r#"kok_tenant_ready{namespace="ns",tenant="t"} 1"#,
            r#"kok_certificate_expiry_timestamp_seconds{namespace="ns",tenant="t"} 1900000000"#,
            r#"kok_last_successful_backup_timestamp_seconds{namespace="ns",tenant="t"} 1800000000"#,
            r#"kok_last_backup_size_bytes{namespace="ns",tenant="t"} 4096"#,
            r#"kok_etcd_restores_total{result="completed"} 1"#,
            "kok_leader 1",
            r#"kok_findings{namespace="ns",tenant="t",check="PodOnMissingNode",severity="Warning"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        m.forget_tenant("ns", "t");
        let text = m.render();
        assert!(!text.contains(r#"tenant="t""#), "{text}");
    }

    #[test]
    fn a_replica_that_stops_leading_exports_no_tenant_values() {
        let m = Metrics::new();
        m.set_leader(true);
        m.tenant_observed("ns", "t", true, Some(1_900_000_000));
        m.backup_succeeded("ns", "t", 1_800_000_000, 4096, 1.5);
        m.set_findings("ns", "t", &[("PodOnMissingNode".into(), "Warning".into())]);
        m.backup_finished(true);
        m.set_leader(false);
        let text = m.render();
        assert!(!text.contains(r#"tenant="t""#), "{text}");
        assert!(text.contains("kok_leader 0"), "{text}");
        assert!(
            text.contains(r#"kok_etcd_backups_total{result="succeeded"} 1"#),
            "counters stay: {text}"
        );
        assert!(!m.knows_last_backup("ns", "t"));
        // A new leader (or a restarted one) seeds it once from status.
        m.set_leader(true);
        m.backup_succeeded("ns", "t", 1_800_000_000, 4096, 1.5);
        assert!(m.knows_last_backup("ns", "t"));
    }

    #[tokio::test]
    async fn endpoints_report_health_readiness_and_metrics() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics.clone(), health.clone(), async {
            let _ = rx.await;
        }));
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        health.set_ready(true);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        drop(metrics.reconcile_started("tenantcluster"));
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("kok_reconcile_total"), "{body}");
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
