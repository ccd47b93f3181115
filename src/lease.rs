//! Leader election on a `coordination.k8s.io/v1` Lease (with `kube-lease-manager`): of all the
//! replicas only the lease holder runs the controllers.
//!
//! - A standby replica contends for the Lease and is otherwise idle (and ready: it is healthy,
//!   and a rollout must be able to count it).
//! - On winning, it starts [`controller::run`]. While it leads, a guard re-reads the Lease every
//!   [`LeaseConfig::poll`]: if another replica holds it, or the renewal is overdue (the API server
//!   is unreachable and the lease would expire), the controllers are dropped at once — no
//!   draining, since another replica may already be reconciling — and the replica goes back to
//!   standby.
//! - On shutdown (SIGTERM) the controllers drain while the lease is still renewed, then the lease
//!   is released so that a standby takes over without waiting for it to expire.
//!
//! Failover after a crash takes at most the lease duration plus one poll period (plus up to 1 s of
//! random back-off inside the lease manager); after a graceful stop, about one poll period.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::Shared;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseParams};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::controller;
use crate::telemetry::{Health, Metrics};

/// Where the in-cluster namespace of the pod is mounted.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Which Lease to hold, and for how long.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's name (RBAC: `deploy/base/rbac.yaml` names it in `resourceNames`).
    pub name: String,
    /// The Lease's namespace (the operator's own).
    pub namespace: String,
    /// How long the lease is valid after each renewal; a crashed leader is replaced after at most
    /// this long. Whole seconds, at least 2.
    pub duration: Duration,
    /// The holder renews this long before the lease expires. Whole seconds, at least 1, less than
    /// `duration`.
    pub grace: Duration,
    /// How often a leader checks it still holds the lease, and a standby looks for a free one.
    pub poll: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            name: "defender-operator".into(),
            namespace: default_namespace(),
            duration: Duration::from_secs(15),
            grace: Duration::from_secs(5),
            poll: Duration::from_secs(2),
        }
    }
}

impl LeaseConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let (duration, grace) = (self.duration.as_secs(), self.grace.as_secs());
        if grace == 0 || duration < 2 || grace >= duration {
            return Err(Error::Config(format!(
                "the lease grace ({grace}s) must be at least 1s and less than the lease duration ({duration}s)"
            )));
        }
        if self.poll.is_zero() {
            return Err(Error::Config("the lease poll period must be positive".into()));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election: {0}")]
    Config(String),
}

/// The pod's namespace when running in a cluster, else `default`.
pub fn default_namespace() -> String {
    std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
        .ok()
        .map(|ns| ns.trim().to_string())
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// This replica's name in the Lease: the pod name (`POD_NAME`, else `HOSTNAME`), else a random one.
///
/// A pod name is stable across container restarts, so a restarted leader takes its own lease
/// back at once (its previous process is gone, so that is safe).
pub fn default_identity() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|value| !value.trim().is_empty())
        .unwrap_or_else(|| format!("defender-operator-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))
}

/// Runs the controllers only while this replica holds the Lease, until `shutdown` resolves; then
/// drains them and releases the Lease. Errors talking to the API server are retried; only a
/// bad [`LeaseConfig`] is returned as an error.
pub async fn run_elected(
    client: Client,
    lease: LeaseConfig,
    identity: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    config: controller::Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    lease.validate()?;
    let shutdown: Shared<futures::future::BoxFuture<'static, ()>> = shutdown.boxed().shared();
    let api: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
    let mut retry = Backoff::default();
    info!(lease = %lease.name, namespace = %lease.namespace, %identity, "leader election: standing by");

    loop {
        if shutdown.peek().is_some() {
            return Ok(());
        }
        // Standby: healthy, not reconciling.
        health.set_ready(true);
        // A fresh manager each round re-reads the Lease, so its idea of who leads is never stale.
        let manager = tokio::select! {
            _ = shutdown.clone() => return Ok(()),
            built = build(&client, &lease, &identity) => match built {
                Ok(manager) => manager,
                Err(error) => {
                    warn!(%error, lease = %lease.name, "leader election: cannot read the lease; retrying");
                    if retry.sleep_unless(shutdown.clone()).await {
                        return Ok(());
                    }
                    continue;
                }
            },
        };
        let acquired = tokio::select! {
            _ = shutdown.clone() => {
                // A lock may have landed just now; give it back.
                release(&manager, &lease).await;
                return Ok(());
            }
            _ = lease_free(&api, &lease, &identity) => {
                debug!(lease = %lease.name, "leader election: the lease is free; contending now");
                continue;
            }
            changed = manager.changed() => changed,
        };
        match acquired {
            Ok(true) => retry.reset(),
            Ok(false) => continue,
            Err(error) => {
                warn!(%error, lease = %lease.name, "leader election: lease update failed; retrying");
                if retry.sleep_unless(shutdown.clone()).await {
                    return Ok(());
                }
                continue;
            }
        }

        info!(lease = %lease.name, %identity, "leader election: acquired the lease; starting the controllers");
        health.set_ready(false);
        let term = lead(&client, &manager, &lease, &identity, &metrics, &health, &config, shutdown.clone()).await;
        match term {
            Term::Stopped => {
                release(&manager, &lease).await;
                info!(lease = %lease.name, %identity, "leader election: controllers drained, lease released");
                return Ok(());
            }
            Term::Lost(why) => {
                warn!(lease = %lease.name, %identity, %why, "leader election: lost the lease; controllers stopped");
            }
        }
    }
}

enum Term {
    /// Shut down and drained; the lease is still ours to release.
    Stopped,
    /// No longer (surely) the holder; the controllers were dropped mid-flight.
    Lost(String),
}

#[allow(clippy::too_many_arguments)]
async fn lead(
    client: &Client,
    manager: &LeaseManager,
    lease: &LeaseConfig,
    identity: &str,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    config: &controller::Config,
    shutdown: Shared<futures::future::BoxFuture<'static, ()>>,
) -> Term {
    let (stop, stopped) = oneshot::channel::<()>();
    let mut stop = Some(stop);
    // Polled in place (not spawned): dropping it drops the controllers and their sync engines.
    let controllers = controller::run(client.clone(), config.clone(), metrics.clone(), health.clone(), async move {
        let _ = stopped.await;
    });
    // Renews the lease; resolves only when the holder changed or a renewal failed.
    let renewals = manager.changed();
    let guard = still_holding(Api::namespaced(client.clone(), &lease.namespace), lease, identity);
    tokio::pin!(controllers, renewals, guard);
    let mut shutdown = shutdown;
    loop {
        tokio::select! {
            biased;
            why = &mut guard => return Term::Lost(why),
            renewed = &mut renewals => return Term::Lost(match renewed {
                Ok(_) => "another replica holds the lease".into(),
                Err(error) => format!("renewing the lease failed: {error}"),
            }),
            _ = &mut controllers => {
                if stop.is_some() {
                    warn!("the controllers stopped by themselves");
                }
                return Term::Stopped;
            }
            _ = &mut shutdown, if stop.is_some() => {
                info!("shutting down: draining the controllers (the lease is kept until they stop)");
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
            }
        }
    }
}

/// Resolves with the reason once this replica can no longer be sure it holds the lease: another
/// identity holds it, it is gone, or the last renewal seen is about to expire (so renewals are
/// failing or hanging).
async fn still_holding(api: Api<Lease>, lease: &LeaseConfig, identity: &str) -> String {
    // The lease was acquired or renewed just now.
    let mut valid_until = SystemTime::now() + lease.duration;
    // Stop this long before expiry: the next holder may start right at expiry.
    let margin = Duration::from_secs(1).min(lease.grace / 2);
    loop {
        tokio::time::sleep(lease.poll).await;
        match tokio::time::timeout(lease.poll.max(Duration::from_secs(1)), api.get_opt(&lease.name)).await {
            Ok(Ok(Some(current))) => {
                let spec = current.spec.unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(identity) {
                    return format!(
                        "the lease is held by {}",
                        spec.holder_identity.as_deref().unwrap_or("nobody (released)")
                    );
                }
                if let Some(until) = expiry(&spec) {
                    valid_until = until;
                }
            }
            Ok(Ok(None)) => return "the lease was deleted".into(),
            Ok(Err(error)) => debug!(%error, "leader election: reading the lease failed"),
            Err(_) => debug!("leader election: reading the lease timed out"),
        }
        if SystemTime::now() + margin >= valid_until {
            return "the lease was not renewed in time".into();
        }
    }
}

/// Resolves when the lease, held by another replica, is released or expired: the standby then
/// contends at once instead of sleeping until the expiry it last saw.
async fn lease_free(api: &Api<Lease>, lease: &LeaseConfig, identity: &str) {
    loop {
        tokio::time::sleep(lease.poll).await;
        if let Ok(Ok(Some(current))) =
            tokio::time::timeout(lease.poll.max(Duration::from_secs(1)), api.get_opt(&lease.name)).await
        {
            let spec = current.spec.unwrap_or_default();
            let free = match spec.holder_identity.as_deref() {
                None => true,
                Some(holder) if holder == identity => true,
                Some(_) => expiry(&spec).is_none_or(|until| SystemTime::now() > until),
            };
            if free {
                return;
            }
        }
    }
}

fn expiry(spec: &k8s_openapi::api::coordination::v1::LeaseSpec) -> Option<SystemTime> {
    let renewed: SystemTime = spec.renew_time.as_ref()?.0.into();
    let seconds = u64::try_from(spec.lease_duration_seconds?).ok()?;
    Some(renewed + Duration::from_secs(seconds))
}

async fn build(client: &Client, lease: &LeaseConfig, identity: &str) -> kube_lease_manager::Result<LeaseManager> {
    // Field manager `kube-lease-manager-<identity>`: unique per replica, stable across rebuilds.
    let params = LeaseParams::new(identity, lease.duration.as_secs(), lease.grace.as_secs());
    LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_parameters(params)
        .build()
        .await
}

async fn release(manager: &LeaseManager, lease: &LeaseConfig) {
    match tokio::time::timeout(Duration::from_secs(5), manager.release()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, lease = %lease.name, "leader election: releasing the lease failed"),
        Err(_) => warn!(lease = %lease.name, "leader election: releasing the lease timed out"),
    }
}

/// 1 s doubling to 30 s, for API errors while standing by.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps; true when `shutdown` resolved meanwhile.
    async fn sleep_unless(&mut self, shutdown: impl Future<Output = ()>) -> bool {
        let delay = Duration::from_secs((1u64 << self.attempt.min(5)).min(30));
        self.attempt += 1;
        tokio::select! {
            _ = shutdown => true,
            _ = tokio::time::sleep(delay) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_config_is_validated() {
        assert!(LeaseConfig::default().validate().is_ok());
        let bad = |duration, grace| LeaseConfig {
            duration: Duration::from_secs(duration),
            grace: Duration::from_secs(grace),
            ..LeaseConfig::default()
        };
        assert!(bad(15, 15).validate().is_err());
        assert!(bad(15, 0).validate().is_err());
        assert!(bad(1, 1).validate().is_err());
        assert!(bad(2, 1).validate().is_ok());
    }

    #[test]
    fn expiry_is_renew_time_plus_duration() {
        let renewed = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let spec = k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some("a".into()),
            renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(renewed)),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_015);
        assert_eq!(expiry(&spec), Some(expected));
        assert_eq!(expiry(&Default::default()), None);
    }
}
