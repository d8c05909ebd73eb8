//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one reconciles and the others stand by.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
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

pub struct LeaderElector {
    api: Api<Lease>,
    lease_name: String,
    identity: String,
    lease_duration: Duration,
    renew_every: Duration,
}

/// Whether `identity` may take or keep the lease at `now`: nobody holds it,
/// we hold it, or the holder stopped renewing it.
pub fn lease_is_free(spec: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) => {
                *renewed + SignedDuration::from_secs(secs.into()) < now
            }
            _ => true,
        },
    }
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, lease_name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            lease_name: lease_name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    fn our_spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
            ..Default::default()
        }
    }

    /// One attempt to take or renew the lease. Ok(true) when we hold it now.
    async fn try_acquire(&self) -> Result<bool, LeaderError> {
        let now = Timestamp::now();
        match self.api.get_opt(&self.lease_name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease_name.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.our_spec(None, now)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                if !lease_is_free(&spec, &self.identity, now) {
                    debug!(holder = ?spec.holder_identity, "lease held by another replica");
                    return Ok(false);
                }
                lease.spec = Some(self.our_spec(Some(&spec), now));
                // The resourceVersion we read makes this a compare-and-swap:
                // a 409 means another replica wrote first.
                match self
                    .api
                    .replace(&self.lease_name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) -> Result<(), LeaderError> {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    info!(lease = %self.lease_name, identity = %self.identity, "acquired leader lease");
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// Keeps renewing; returns why leadership was lost. The caller must stop
    /// reconciling at once: another replica may take over after the lease expires.
    pub async fn hold(&self) -> LeaderError {
        let mut last_success = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_every).await;
            match self.try_acquire().await {
                Ok(true) => last_success = tokio::time::Instant::now(),
                Ok(false) => {
                    let holder = self
                        .api
                        .get_opt(&self.lease_name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|l| l.spec)
                        .and_then(|s| s.holder_identity)
                        .unwrap_or_default();
                    return LeaderError::TakenOver {
                        lease: self.lease_name.clone(),
                        holder,
                    };
                }
                Err(e) => {
                    // Give up before the lease can expire under us.
                    let since = last_success.elapsed();
                    warn!(error = %e, ?since, "could not renew leader lease");
                    if since + self.renew_every >= self.lease_duration {
                        return LeaderError::RenewalFailed {
                            lease: self.lease_name.clone(),
                            secs: since.as_secs(),
                            last_error: e.to_string(),
                        };
                    }
                }
            }
        }
    }

    /// Hands the lease over on graceful shutdown so a standby need not wait for expiry.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.lease_name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!("released leader lease"),
            Err(e) => warn!(error = %e, "could not release leader lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renewed: Timestamp, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_lease_of_another_holder_is_not_free() {
        let now = Timestamp::now();
        assert!(!lease_is_free(&held_by("b", now, 15), "a", now));
        let renewed = now - SignedDuration::from_secs(10);
        assert!(!lease_is_free(&held_by("b", renewed, 15), "a", now));
    }

    #[test]
    fn an_expired_unheld_or_own_lease_is_free() {
        let now = Timestamp::now();
        let old = now - SignedDuration::from_secs(16);
        assert!(lease_is_free(&held_by("b", old, 15), "a", now), "expired");
        assert!(lease_is_free(&LeaseSpec::default(), "a", now), "never held");
        assert!(lease_is_free(&held_by("a", now, 15), "a", now), "ours");
        let released = LeaseSpec {
            holder_identity: None,
            ..held_by("b", now, 1)
        };
        assert!(lease_is_free(&released, "a", now), "released");
    }
}
