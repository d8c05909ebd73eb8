//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one reconciles and the others stand by.
//!
//! Follows client-go's `leaderelection` rule: a candidate never compares the
//! Lease's timestamps (written by another node's clock) with its own clock. It
//! records on its own monotonic clock when it last *saw the record change*, and
//! takes the lease only after `leaseDurationSeconds` without a change. The leader
//! renews every retry period, bounds every attempt by a timeout, and gives up
//! (`hold()` returns) once it has not renewed for the renew deadline, which is
//! shorter than the lease duration: it stops acting before any standby can
//! consider the lease expired. Writes carry the resourceVersion that was read,
//! so of two candidates only one can win.
//!
//! The decisions are pure functions of an [`Observed`] record and `now`
//! ([`decide`], [`Tenure::attempt_budget`]); the API calls only feed them.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease API: {0}")]
    Kube(#[from] kube::Error),
    #[error("lease {lease} is now held by {holder}")]
    TakenOver { lease: String, holder: String },
    #[error("could not renew lease {lease} for {secs}s: {last_error}")]
    RenewalFailed {
        lease: String,
        secs: u64,
        last_error: String,
    },
}

/// How long things may take. The invariant that makes one leader at a time:
/// `renew_deadline + attempt lateness < lease_duration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a standby waits, after it last saw the record change, before it
    /// takes the lease. Also the longest failover after the leader dies.
    pub lease_duration: Duration,
    /// The leader stops leading when it has not renewed for this long.
    pub renew_deadline: Duration,
    /// Pause between attempts, for the leader and the standbys alike.
    pub retry_period: Duration,
    /// Bound on one attempt (a read and a write); a hung connection fails the
    /// attempt instead of keeping a deposed leader acting.
    pub attempt_timeout: Duration,
}

impl Default for Timing {
    /// client-go's defaults (15 s / 10 s / 2 s). The 5 s between the renew
    /// deadline and the lease duration absorb the leader's exit latency and the
    /// nodes' clocks running at slightly different *rates*; offsets do not
    /// matter since no timestamp crosses nodes. A 4 s attempt timeout leaves room
    /// for at least two attempts before the deadline; a healthy renewal takes
    /// milliseconds.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(4),
        }
    }
}

/// The Lease stores whole seconds; rounding up keeps the promise to standbys
/// (they wait at least as long as we assume).
fn whole_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX).max(1)
}

/// The parts of a Lease whose change shows that its holder is alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `None` when nobody holds it (never held, or released).
    pub holder: Option<String>,
    /// Only compared for equality with an earlier read, never with a clock.
    pub renew_time: Option<Timestamp>,
    pub lease_duration_seconds: Option<i32>,
    pub resource_version: Option<String>,
}

impl LeaseRecord {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            lease_duration_seconds: spec.and_then(|s| s.lease_duration_seconds),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// What this replica last saw of the lease, and when (by its own clock) it saw
/// the record change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub record: LeaseRecord,
    pub changed_at: Instant,
}

impl Observed {
    /// The observation after reading `record` at `now`: the time of change is
    /// kept when the record is the same as before.
    pub fn update(previous: Option<&Observed>, record: LeaseRecord, now: Instant) -> Self {
        match previous {
            Some(p) if p.record == record => p.clone(),
            _ => Self {
                record,
                changed_at: now,
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: write a new renewTime.
    Renew,
    /// Nobody holds it, or its holder has not renewed it for a lease duration.
    Take,
    /// Another replica holds it; it is free in `free_in` if nothing changes.
    Wait { holder: String, free_in: Duration },
}

/// What `identity` may do with the observed lease at `now`. The lease's own
/// duration counts when it has one (the holder advertises it), else ours.
pub fn decide(observed: &Observed, identity: &str, now: Instant, timing: &Timing) -> Decision {
    let Some(holder) = observed.record.holder.as_deref() else {
        return Decision::Take;
    };
    if holder == identity {
        return Decision::Renew;
    }
    let duration = match observed.record.lease_duration_seconds {
        Some(secs) if secs > 0 => Duration::from_secs(secs.unsigned_abs().into()),
        _ => timing.lease_duration,
    };
    let unchanged_for = now.saturating_duration_since(observed.changed_at);
    match duration.checked_sub(unchanged_for) {
        Some(free_in) if !free_in.is_zero() => Decision::Wait {
            holder: holder.to_string(),
            free_in,
        },
        _ => Decision::Take,
    }
}

/// The leader's side: when it last renewed, counted from the *start* of that
/// attempt (the write reached the API server no earlier, so no standby can
/// have seen it earlier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tenure {
    pub renewed_at: Instant,
}

impl Tenure {
    /// How long the next renew attempt may take, or `None` when the renew
    /// deadline has passed and leadership is lost.
    pub fn attempt_budget(&self, now: Instant, timing: &Timing) -> Option<Duration> {
        let left = (self.renewed_at + timing.renew_deadline).saturating_duration_since(now);
        (!left.is_zero()).then(|| left.min(timing.attempt_timeout))
    }
}

/// The outcome of one attempt to take or renew the lease.
#[derive(Debug)]
enum Attempt {
    /// We hold it now.
    Held,
    /// Another replica holds it.
    HeldBy(String, Duration),
    /// Another replica wrote between our read and our write.
    Conflict,
}

#[derive(Default)]
struct State {
    observed: Option<Observed>,
    tenure: Option<Tenure>,
}

pub struct LeaderElector {
    api: Api<Lease>,
    lease_name: String,
    identity: String,
    timing: Timing,
    // Never held across an await.
    state: Mutex<State>,
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, lease_name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            lease_name: lease_name.to_string(),
            identity: identity.to_string(),
            timing: Timing::default(),
            state: Mutex::default(),
        }
    }

    /// Other timings; panics unless renew deadline < lease duration, which is
    /// what keeps two replicas from leading at once.
    pub fn with_timing(mut self, timing: Timing) -> Self {
        assert!(
            timing.renew_deadline < timing.lease_duration,
            "renew deadline must be shorter than the lease duration"
        );
        self.timing = timing;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn our_spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(whole_seconds(self.timing.lease_duration)),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            // For people reading the Lease; no replica compares it with a clock.
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
            ..Default::default()
        }
    }

    /// One read and, when the lease is ours or free, one compare-and-swap write.
    async fn attempt(&self) -> Result<Attempt, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease_name.clone()),
                    ..Default::default()
                },
                spec: Some(self.our_spec(None, Timestamp::now())),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => Ok(self.wrote(&created)),
                Err(e) if crate::runtime::api::is_conflict(&e) => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let now = Instant::now();
        let decision = {
            let mut state = self.state();
            let observed = Observed::update(state.observed.as_ref(), LeaseRecord::of(&lease), now);
            let decision = decide(&observed, &self.identity, now, &self.timing);
            state.observed = Some(observed);
            decision
        };
        if let Decision::Wait { holder, free_in } = decision {
            return Ok(Attempt::HeldBy(holder, free_in));
        }
        if decision == Decision::Take {
            info!(lease = %self.lease_name, previous = ?lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()), "taking the leader lease");
        }
        lease.spec = Some(self.our_spec(lease.spec.as_ref(), Timestamp::now()));
        // metadata.resourceVersion is the one we read: a 409 means another
        // replica wrote first, and it, not we, holds the lease.
        match self
            .api
            .replace(&self.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => Ok(self.wrote(&written)),
            Err(e) if crate::runtime::api::is_conflict(&e) => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    fn wrote(&self, lease: &Lease) -> Attempt {
        let mut state = self.state();
        state.observed = Some(Observed::update(
            None,
            LeaseRecord::of(lease),
            Instant::now(),
        ));
        Attempt::Held
    }

    /// One attempt bounded by `budget`; on success the tenure counts from its start.
    async fn bounded_attempt(&self, budget: Duration) -> Result<Attempt, String> {
        let started = Instant::now();
        match tokio::time::timeout(budget, self.attempt()).await {
            Ok(Ok(Attempt::Held)) => {
                self.state().tenure = Some(Tenure {
                    renewed_at: started,
                });
                Ok(Attempt::Held)
            }
            Ok(Ok(other)) => Ok(other),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {budget:?}")),
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) -> Result<(), LeaderError> {
        loop {
            match self.bounded_attempt(self.timing.attempt_timeout).await {
                Ok(Attempt::Held) => {
                    info!(lease = %self.lease_name, identity = %self.identity, "acquired leader lease");
                    return Ok(());
                }
                Ok(Attempt::HeldBy(holder, free_in)) => {
                    debug!(%holder, ?free_in, "leader lease held by another replica")
                }
                Ok(Attempt::Conflict) => debug!("another replica wrote the leader lease first"),
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Keeps renewing; returns why leadership was lost, at the latest when the
    /// renew deadline passes without a renewal. The caller must stop reconciling
    /// at once: a standby takes over a lease duration after the last renewal.
    pub async fn hold(&self) -> LeaderError {
        let mut last_error = String::from("never acquired");
        loop {
            let tenure = self.state().tenure;
            let lost = |last_error: String| LeaderError::RenewalFailed {
                lease: self.lease_name.clone(),
                secs: tenure.map_or(0, |t| t.renewed_at.elapsed().as_secs()),
                last_error,
            };
            // Sleep no further than the deadline, so hold() returns on time.
            let Some(until_deadline) =
                tenure.and_then(|t| t.attempt_budget(Instant::now(), &self.timing))
            else {
                return lost(last_error);
            };
            tokio::time::sleep(self.timing.retry_period.min(until_deadline)).await;
            let Some(budget) = tenure.and_then(|t| t.attempt_budget(Instant::now(), &self.timing))
            else {
                return lost(last_error);
            };
            match self.bounded_attempt(budget).await {
                Ok(Attempt::Held) => {}
                Ok(Attempt::HeldBy(holder, _)) => {
                    return LeaderError::TakenOver {
                        lease: self.lease_name.clone(),
                        holder,
                    };
                }
                // The next read tells who wrote; until then we may still hold it.
                Ok(Attempt::Conflict) => last_error = "conflicting write to the lease".into(),
                Err(e) => {
                    warn!(error = %e, "could not renew leader lease");
                    last_error = e;
                }
            }
        }
    }

    /// Hands the lease over on graceful shutdown so a standby need not wait for
    /// expiry. Best effort, bounded by one attempt timeout.
    pub async fn release(&self) {
        let release = async {
            let Some(mut lease) = self.api.get_opt(&self.lease_name).await? else {
                return Ok(false);
            };
            let Some(spec) = lease.spec.as_mut() else {
                return Ok(false);
            };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            // Compare-and-swap on the resourceVersion read, like every write.
            self.api
                .replace(&self.lease_name, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        };
        match tokio::time::timeout(self.timing.attempt_timeout, release).await {
            Ok(Ok(true)) => info!("released leader lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, "could not release leader lease"),
            Err(_) => warn!("could not release leader lease: no answer in time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn record(holder: Option<&str>, renewed: Timestamp, rv: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_string),
            renew_time: Some(renewed),
            lease_duration_seconds: Some(15),
            resource_version: Some(rv.into()),
        }
    }

    #[test]
    fn the_advertised_duration_is_never_shorter_than_ours() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(15 * SEC), 15);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_remote_renew_time_does_not_matter() {
        let timing = Timing::default();
        let t0 = Instant::now();
        // Far in the past by the remote clock: not expired on first sight.
        // Far in the future: expires like any other once it stops changing.
        for renewed in [ts("2000-01-01T00:00:00Z"), ts("2100-01-01T00:00:00Z")] {
            let seen = Observed::update(None, record(Some("b"), renewed, "7"), t0);
            assert_eq!(
                decide(&seen, "a", t0, &timing),
                Decision::Wait {
                    holder: "b".into(),
                    free_in: 15 * SEC
                },
                "{renewed}"
            );
            assert!(matches!(
                decide(&seen, "a", t0 + 14 * SEC, &timing),
                Decision::Wait { .. }
            ));
            assert_eq!(decide(&seen, "a", t0 + 15 * SEC, &timing), Decision::Take);
        }
    }

    #[test]
    fn the_lease_is_free_only_after_a_lease_duration_without_a_change() {
        let timing = Timing::default();
        let t0 = Instant::now();
        let renewed = ts("2025-01-01T00:00:00Z");
        let seen = Observed::update(None, record(Some("b"), renewed, "1"), t0);
        // Reading the same record again does not restart the clock.
        let same = Observed::update(Some(&seen), record(Some("b"), renewed, "1"), t0 + 10 * SEC);
        assert_eq!(same.changed_at, t0);
        assert_eq!(decide(&same, "a", t0 + 15 * SEC, &timing), Decision::Take);
        // A renewal (new renewTime, or only a new resourceVersion) restarts it.
        let later = ts("2025-01-01T00:00:10Z");
        for changed in [
            record(Some("b"), later, "2"),
            record(Some("b"), renewed, "2"),
        ] {
            let renewal = Observed::update(Some(&seen), changed, t0 + 10 * SEC);
            assert_eq!(renewal.changed_at, t0 + 10 * SEC);
            assert!(matches!(
                decide(&renewal, "a", t0 + 24 * SEC, &timing),
                Decision::Wait { free_in, .. } if free_in == SEC
            ));
            assert_eq!(
                decide(&renewal, "a", t0 + 25 * SEC, &timing),
                Decision::Take
            );
        }
        // A new holder is a change too.
        let taken = Observed::update(Some(&seen), record(Some("c"), renewed, "1"), t0 + 20 * SEC);
        assert!(matches!(
            decide(&taken, "a", t0 + 30 * SEC, &timing),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn the_holders_advertised_duration_counts() {
        let timing = Timing::default();
        let t0 = Instant::now();
        let mut long = record(Some("b"), ts("2025-01-01T00:00:00Z"), "1");
        long.lease_duration_seconds = Some(60);
        let seen = Observed::update(None, long.clone(), t0);
        assert!(matches!(
            decide(&seen, "a", t0 + 30 * SEC, &timing),
            Decision::Wait { .. }
        ));
        assert_eq!(decide(&seen, "a", t0 + 60 * SEC, &timing), Decision::Take);
        // Missing or nonsense: ours.
        long.lease_duration_seconds = Some(-5);
        let seen = Observed::update(None, long, t0);
        assert_eq!(decide(&seen, "a", t0 + 15 * SEC, &timing), Decision::Take);
    }

    #[test]
    fn an_unheld_or_own_lease_needs_no_wait() {
        let timing = Timing::default();
        let t0 = Instant::now();
        let now = ts("2025-01-01T00:00:00Z");
        let released = Observed::update(None, record(None, now, "3"), t0);
        assert_eq!(decide(&released, "a", t0, &timing), Decision::Take);
        let mut empty = record(None, now, "3");
        empty.holder = LeaseRecord::of(&Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .holder;
        assert_eq!(empty.holder, None, "an empty holder is no holder");
        let ours = Observed::update(None, record(Some("a"), now, "4"), t0);
        assert_eq!(decide(&ours, "a", t0, &timing), Decision::Renew);
    }

    #[test]
    fn leadership_is_lost_at_the_renew_deadline() {
        let timing = Timing::default();
        assert!(timing.renew_deadline + timing.retry_period <= timing.lease_duration);
        let t0 = Instant::now();
        let tenure = Tenure { renewed_at: t0 };
        assert_eq!(
            tenure.attempt_budget(t0 + 2 * SEC, &timing),
            Some(timing.attempt_timeout)
        );
        // Near the deadline an attempt may only use what is left.
        assert_eq!(tenure.attempt_budget(t0 + 9 * SEC, &timing), Some(SEC));
        assert_eq!(tenure.attempt_budget(t0 + 10 * SEC, &timing), None);
        assert_eq!(tenure.attempt_budget(t0 + 60 * SEC, &timing), None);
    }

    /// A fake Lease API: GET/POST/PUT with resourceVersion checks like the
    /// API server's, reached at `http://addr/<client>/...` so that one client's
    /// requests can be made to hang.
    mod fake_api {
        use std::collections::HashSet;
        use std::sync::{Arc, Mutex};

        use axum::body::Bytes;
        use axum::extract::State;
        use axum::http::{Method, StatusCode, Uri};
        use axum::response::{IntoResponse, Response};
        use k8s_openapi::api::coordination::v1::Lease;
        use kube::Client;

        #[derive(Default)]
        pub struct Server {
            pub lease: Mutex<Option<Lease>>,
            pub hung: Mutex<HashSet<String>>,
            version: Mutex<u64>,
        }

        fn status(code: StatusCode, reason: &str) -> Response {
            let body = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": reason, "reason": reason, "code": code.as_u16(),
            });
            (code, body.to_string()).into_response()
        }

        async fn handle(
            State(server): State<Arc<Server>>,
            method: Method,
            uri: Uri,
            body: Bytes,
        ) -> Response {
            let client = uri.path().split('/').nth(1).unwrap_or_default().to_string();
            if server.hung.lock().unwrap().contains(&client) {
                std::future::pending::<()>().await;
            }
            let mut stored = server.lease.lock().unwrap();
            let stored_rv = stored
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone());
            let next = || {
                let mut v = server.version.lock().unwrap();
                *v += 1;
                v.to_string()
            };
            let json = |code: StatusCode, lease: &Lease| {
                (code, serde_json::to_string(lease).unwrap()).into_response()
            };
            match method {
                Method::GET => match stored.as_ref() {
                    Some(lease) => json(StatusCode::OK, lease),
                    None => status(StatusCode::NOT_FOUND, "NotFound"),
                },
                Method::POST if stored.is_some() => status(StatusCode::CONFLICT, "AlreadyExists"),
                Method::POST | Method::PUT => {
                    let mut lease: Lease = serde_json::from_slice(&body).unwrap();
                    if method == Method::PUT && lease.metadata.resource_version != stored_rv {
                        return status(StatusCode::CONFLICT, "Conflict");
                    }
                    lease.metadata.resource_version = Some(next());
                    *stored = Some(lease.clone());
                    json(StatusCode::OK, &lease)
                }
                _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            }
        }

        pub async fn start() -> (Arc<Server>, std::net::SocketAddr) {
            let server = Arc::new(Server::default());
            let app = axum::Router::new()
                .fallback(handle)
                .with_state(server.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (server, addr)
        }

        pub fn client(addr: std::net::SocketAddr, name: &str) -> Client {
            let url = format!("http://{addr}/{name}").parse().unwrap();
            Client::try_from(kube::Config::new(url)).unwrap()
        }
    }

    fn fast() -> Timing {
        // The Lease holds whole seconds, so the lease duration is one.
        Timing {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(1),
            retry_period: Duration::from_millis(200),
            attempt_timeout: Duration::from_millis(400),
        }
    }

    fn elector(addr: std::net::SocketAddr, name: &str) -> LeaderElector {
        LeaderElector::new(fake_api::client(addr, name), "kok-system", "kok", name)
            .with_timing(fast())
    }

    #[tokio::test]
    async fn one_of_two_candidates_leads_and_a_hung_leader_steps_down_before_takeover() {
        let (server, addr) = fake_api::start().await;
        let (a, b) = (elector(addr, "a"), elector(addr, "b"));
        let (leader, standby) = tokio::select! {
            r = a.acquire() => { r.unwrap(); (&a, &b) }
            r = b.acquire() => { r.unwrap(); (&b, &a) }
        };
        // While the leader renews, the standby never gets the lease.
        let waited = tokio::time::timeout(fast().lease_duration + SEC, async {
            tokio::select! {
                lost = leader.hold() => panic!("leader lost the lease: {lost}"),
                _ = standby.acquire() => panic!("standby acquired a held lease"),
            }
        })
        .await;
        assert!(waited.is_err());

        // The leader's API calls hang: it must give up within the renew
        // deadline, and the standby may take over only a lease duration
        // after it last saw a renewal.
        server.hung.lock().unwrap().insert(leader.identity.clone());
        let renewed_at = leader.state().tenure.unwrap().renewed_at;
        let both = async {
            tokio::join!(async { (leader.hold().await, Instant::now()) }, async {
                standby.acquire().await.unwrap();
                Instant::now()
            })
        };
        let ((lost, lost_at), taken_at) = tokio::time::timeout(3 * fast().lease_duration, both)
            .await
            .expect("a leader whose API calls hang must give up");
        assert!(matches!(lost, LeaderError::RenewalFailed { .. }), "{lost}");
        // Timers fire late on a loaded machine; the margin to takeover is 1 s.
        let slack = Duration::from_millis(500);
        assert!(lost_at <= renewed_at + fast().renew_deadline + slack);
        assert!(lost_at < taken_at);
        assert!(taken_at >= renewed_at + fast().lease_duration);
        let holder = server.lease.lock().unwrap().clone().unwrap();
        assert_eq!(
            LeaseRecord::of(&holder).holder.as_deref(),
            Some(standby.identity.as_str())
        );
    }

    #[tokio::test]
    async fn a_deposed_leader_sees_the_new_holder_and_a_released_lease_is_free_at_once() {
        let (server, addr) = fake_api::start().await;
        let (a, b) = (elector(addr, "a"), elector(addr, "b"));
        a.acquire().await.unwrap();
        // Someone else writes the lease (e.g. after a's long pause).
        {
            let mut stored = server.lease.lock().unwrap();
            let lease = stored.as_mut().unwrap();
            lease.spec.as_mut().unwrap().holder_identity = Some("c".into());
            lease.metadata.resource_version = Some("100".into());
        }
        match a.hold().await {
            LeaderError::TakenOver { holder, .. } => assert_eq!(holder, "c"),
            other => panic!("{other}"),
        }
        // c releases; b takes the lease at its first attempt.
        {
            let mut stored = server.lease.lock().unwrap();
            let lease = stored.as_mut().unwrap();
            lease.spec.as_mut().unwrap().holder_identity = None;
            lease.metadata.resource_version = Some("101".into());
        }
        tokio::time::timeout(fast().retry_period, b.acquire())
            .await
            .expect("a released lease is free")
            .unwrap();
        b.release().await;
        let released = LeaseRecord::of(server.lease.lock().unwrap().as_ref().unwrap());
        assert_eq!(released.holder, None);
    }

    #[tokio::test]
    async fn a_leader_that_lost_its_lease_campaigns_again_as_a_standby() {
        // The operator no longer exits on a lost lease: the same elector
        // must be usable for the next term.
        let (server, addr) = fake_api::start().await;
        let (a, b) = (elector(addr, "a"), elector(addr, "b"));
        a.acquire().await.unwrap();
        server.hung.lock().unwrap().insert("a".into());
        let lost = tokio::time::timeout(3 * fast().lease_duration, a.hold())
            .await
            .expect("a hung leader gives up");
        assert!(matches!(lost, LeaderError::RenewalFailed { .. }), "{lost}");
        b.acquire().await.unwrap();
        // a's API answers again: it waits as a standby while b renews...
        server.hung.lock().unwrap().clear();
        let waited = tokio::time::timeout(fast().lease_duration + SEC, async {
            tokio::select! {
                lost = b.hold() => panic!("b lost the lease: {lost}"),
                _ = a.acquire() => panic!("a took a held lease"),
            }
        })
        .await;
        assert!(waited.is_err());
        // ...and leads again once b is gone.
        b.release().await;
        tokio::time::timeout(2 * fast().retry_period, a.acquire())
            .await
            .expect("a takes the released lease")
            .unwrap();
        let holder = LeaseRecord::of(server.lease.lock().unwrap().as_ref().unwrap());
        assert_eq!(holder.holder.as_deref(), Some("a"));
    }
}
