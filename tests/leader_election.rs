//! Leader election on the sandbox: two operators under the ServiceAccount and RBAC of `deploy/`,
//! only the Lease holder reconciles; killing it hands over within the lease duration, a graceful
//! stop hands over at once.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::World;
use defender_operator::api::DefenderPartner;
use defender_operator::lease::{self, LeaseConfig};
use defender_operator::sandbox::cluster::{OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT};
use defender_operator::sandbox::{Sandbox, SandboxOptions};
use defender_operator::telemetry::{Health, Metrics};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How soon a standby must take over from a killed leader (README, High availability).
const FAILOVER_TARGET: Duration = Duration::from_secs(20);

struct Elected {
    identity: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), lease::Error>>,
}

/// Starts `lease::run_elected` as the operator's ServiceAccount, like one replica of the Deployment.
fn start(sandbox: &Sandbox, identity: &str) -> Elected {
    let client = sandbox.kube.client(&sandbox.kube.service_account_token(OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT));
    let lease = LeaseConfig { namespace: OPERATOR_NAMESPACE.into(), ..LeaseConfig::default() };
    let mut config = sandbox.operator_config();
    config.instance = Some(identity.into());
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(lease::run_elected(
        client,
        lease,
        identity.into(),
        metrics.clone(),
        health.clone(),
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    Elected { identity: identity.into(), metrics, health, shutdown: Some(shutdown), task }
}

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info,kube=warn".into()))
        .try_init();
}

/// Reconciles run so far, over kinds and outcomes.
fn reconciles(metrics: &Metrics) -> f64 {
    metrics
        .encode()
        .lines()
        .filter(|line| line.starts_with("defender_operator_reconciles_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn holder(sandbox: &Sandbox) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(sandbox.admin.clone(), OPERATOR_NAMESPACE);
    api.get_opt("defender-operator").await.ok().flatten()?.spec?.holder_identity
}

async fn wait_for_holder(sandbox: &Sandbox, candidates: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let current = holder(sandbox).await;
        if let Some(current) = &current
            && candidates.contains(&current.as_str())
        {
            return current.clone();
        }
        assert!(Instant::now() < deadline, "no holder among {candidates:?} within {timeout:?}; holder: {current:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_observed(world: &World, generation: i64, timeout: Duration) -> DefenderPartner {
    world
        .wait_for("team", "defender", timeout, |p: &DefenderPartner| {
            p.metadata.generation == Some(generation)
                && p.status.as_ref().is_some_and(|s| s.observed_generation == Some(generation))
        })
        .await
        .expect("the partner's new generation is reconciled")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    logs();
    let sandbox = Sandbox::start(SandboxOptions::default()).await.expect("sandbox starts");
    let world = World { sandbox, operator: None };

    let a = start(&world, "operator-a");
    let b = start(&world, "operator-b");
    let first = wait_for_holder(&world, &["operator-a", "operator-b"], Duration::from_secs(10)).await;
    let (mut leader, mut standby) = if first == a.identity { (a, b) } else { (b, a) };
    println!("leader: {}, standby: {}", leader.identity, standby.identity);

    world.namespace("team").await;
    world.good_secret("team", "defender-credentials").await;
    world.partner("team", "defender", "defender-credentials", json!({})).await;
    let attached = world.attached("team", "defender").await;
    let generation = attached.metadata.generation.expect("a generation");

    // Only the leader reconciled; the standby is ready (healthy, idle), the leader once synced.
    assert!(reconciles(&leader.metrics) > 0.0, "the leader reconciled");
    assert_eq!(reconciles(&standby.metrics), 0.0, "the standby never reconciled");
    assert!(standby.health.is_ready(), "a standby is ready");
    // The leader's readiness (caches synced) is set by `controller::run`, not checked here.
    assert_eq!(holder(&world).await.as_deref(), Some(leader.identity.as_str()));

    // Kill the leader (SIGKILL: nothing is released), then change the partner at once: the new
    // leader must pick that up.
    let killed = Instant::now();
    leader.task.abort();
    let _ = (&mut leader.task).await;
    world.partner("team", "defender", "defender-credentials", json!({"indicator": {"severity": "Medium"}})).await;
    let new_holder =
        wait_for_holder(&world, &[standby.identity.as_str()], FAILOVER_TARGET + Duration::from_secs(10)).await;
    let lease_failover = killed.elapsed();
    wait_observed(&world, generation + 1, FAILOVER_TARGET + Duration::from_secs(10)).await;
    let failover = killed.elapsed();
    println!(
        "failover after killing the leader: {new_holder} held the lease after {:.1} s and reconciled after {:.1} s",
        lease_failover.as_secs_f64(),
        failover.as_secs_f64()
    );
    assert!(failover < FAILOVER_TARGET, "failover took {failover:?}, target {FAILOVER_TARGET:?}");
    // Counted when its reconcile returns, a moment after the status write observed above.
    common::eventually("the new leader reconciles", Duration::from_secs(10), || reconciles(&standby.metrics) > 0.0)
        .await;

    // Graceful stop (SIGTERM) of the new leader: it drains, releases, and a fresh replica takes
    // over without waiting for the lease to expire.
    let mut c = start(&world, "operator-c");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reconciles(&c.metrics), 0.0, "a standby does not reconcile");
    let stopping = Instant::now();
    let _ = standby.shutdown.take().expect("running").send(());
    let stopped = tokio::time::timeout(Duration::from_secs(10), &mut standby.task)
        .await
        .expect("the leader drains and stops within 10 s")
        .expect("the task is not aborted");
    assert!(stopped.is_ok(), "run_elected returns Ok after a graceful stop: {stopped:?}");
    assert_ne!(holder(&world).await.as_deref(), Some(standby.identity.as_str()), "the lease was released");
    wait_for_holder(&world, &["operator-c"], Duration::from_secs(10)).await;
    let handover = stopping.elapsed();
    world.partner("team", "defender", "defender-credentials", json!({"indicator": {"severity": "Low"}})).await;
    wait_observed(&world, generation + 2, Duration::from_secs(20)).await;
    println!(
        "handover after a graceful stop: operator-c held the lease after {:.1} s and reconciled after {:.1} s",
        handover.as_secs_f64(),
        stopping.elapsed().as_secs_f64()
    );
    assert!(handover < Duration::from_secs(5), "a released lease is taken within a poll period: {handover:?}");

    let _ = c.shutdown.take().map(|s| s.send(()));
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut c.task).await;
}

#[tokio::test]
async fn a_bad_lease_configuration_is_refused() {
    let sandbox = Sandbox::start(SandboxOptions::default()).await.expect("sandbox starts");
    let client = sandbox.kube.client(&sandbox.kube.service_account_token(OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT));
    let lease =
        LeaseConfig { duration: Duration::from_secs(5), grace: Duration::from_secs(5), ..LeaseConfig::default() };
    let result = lease::run_elected(
        client,
        lease,
        "x".into(),
        Arc::new(Metrics::default()),
        Arc::new(Health::default()),
        sandbox.operator_config(),
        std::future::pending(),
    )
    .await;
    assert!(result.is_err(), "grace must be less than the duration");
}

#[test]
fn the_leader_election_flags_parse() {
    use clap::Parser;
    use defender_operator::cli::{Cli, Command};
    let run =
        |args: &[&str]| match Cli::try_parse_from(["defender-operator", "run"].iter().chain(args)).unwrap().command {
            Command::Run(run) => run,
            other => panic!("{other:?}"),
        };
    let defaults = run(&[]);
    assert!(!defaults.leader_elect, "off by default");
    assert_eq!(defaults.lease_name, "defender-operator");
    assert!(run(&["--leader-elect"]).leader_elect);
    assert!(run(&["--leader-elect=true"]).leader_elect);
    assert!(!run(&["--leader-elect=false"]).leader_elect);
    let custom = run(&["--leader-elect", "--lease-name=x", "--lease-namespace=ops", "--lease-duration-seconds=20"]);
    let lease = custom.lease_config().unwrap();
    assert_eq!((lease.name.as_str(), lease.namespace.as_str(), lease.duration.as_secs()), ("x", "ops", 20));
    assert!(run(&["--lease-duration-seconds=5", "--lease-grace-seconds=5"]).lease_config().is_err());
}
