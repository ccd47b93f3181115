//! Faults on both sides, each with a few hundred findings in flight: Defender throttling, 5xx
//! bursts, calls that hang past the client timeout, the token endpoint down, tokens expiring
//! mid-run; watches cut, 410 Gone on resume, 409 on status writes, the API server restarted; the
//! operator killed mid-batch and the leader killed while a follower waits.
//!
//! After each: every UNPROTECTED finding is in Defender exactly once, nothing else is, every
//! status tells the truth, there was no panic, no client secret showed up anywhere, and nobody
//! helped. Each scenario prints one `reliability:` JSON line (`cargo test --test faults --
//! --nocapture | grep reliability:`); the README's Reliability table comes from them.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use defender_operator::api::conditions::{INDICATORS_SYNCED, READY, is_true};
use defender_operator::api::{DefenderPartner, DeliveryState, PartnerState, ProbeFinding};
use defender_operator::lease::{self, LeaseConfig};
use defender_operator::sandbox::cluster::{OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT};
use defender_operator::sandbox::{Sandbox, SandboxOptions};
use defender_operator::telemetry::{Health, Metrics};
use defender_sandbox::emulator::{Endpoint, Faults, sandbox_values as sv};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

/// Findings per scenario: two in three UNPROTECTED, the rest PROTECTED or ERROR.
const FINDINGS: u32 = 300;
/// How long a scenario may take to recover once its faults stop.
const RECOVERY: Duration = Duration::from_secs(120);

static LOGS: OnceLock<Captured> = OnceLock::new();
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn capture() -> &'static Captured {
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("debug,defender_operator=trace,hyper=info,h2=info,rustls=info,tower=info")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        let default_hook = std::panic::take_hook();
        // The operator's tasks run on the runtime's workers; a test's own assertions do not.
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default_hook(info)
        }));
        logs
    })
}

/// Writes the captured logs where a failed run can be read (CI keeps the target dir's tmp).
fn dump_logs(what: &str) -> std::path::PathBuf {
    let name: String = what.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("faults-{name}.log"));
    let _ = std::fs::write(&path, &*capture().0.lock().unwrap());
    path
}

/// Polls `check` until it holds; on timeout, fails with the logs saved.
async fn until(what: &str, timeout: Duration, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what} (logs: {})", dump_logs(what).display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_of(seed: u32) -> &'static str {
    match seed % 6 {
        0 => "PROTECTED",
        1 => "ERROR",
        _ => "UNPROTECTED",
    }
}

fn unprotected(seeds: Range<u32>) -> usize {
    seeds.filter(|s| state_of(*s) == "UNPROTECTED").count()
}

/// A sandbox with the operator and one attached partner, logs captured.
async fn attached_world(options: SandboxOptions) -> World {
    let world = operator_world(options).await;
    attach(&world).await;
    world
}

/// A sandbox with the operator running and nothing else, logs captured.
async fn operator_world(options: SandboxOptions) -> World {
    capture();
    let sandbox = Sandbox::start(options).await.expect("sandbox starts");
    let operator = Some(sandbox.start_operator());
    World { sandbox, operator }
}

async fn attach(world: &World) {
    world.attached_partner("default", "defender", json!({})).await;
}

/// Applies the findings of `seeds`, 16 at a time.
async fn create(world: &World, seeds: Range<u32>) {
    futures::stream::iter(seeds)
        .for_each_concurrent(16, |seed| async move {
            world.finding("default", &format!("f{seed}"), &[sha256(seed)], json!({"state": state_of(seed)})).await
        })
        .await;
}

/// What the checks found; all zero (and `partner_ok`) when the operator recovered.
#[derive(Debug, Default)]
struct Outcome {
    /// UNPROTECTED findings not in Defender, or not reported `Submitted`.
    lost: usize,
    /// Values Defender holds more than once.
    duplicates: usize,
    /// Values in Defender that no UNPROTECTED finding asked for.
    strays: usize,
    /// Findings whose status does not match what happened (stale generation, wrong delivery
    /// state, `Ready` not True).
    untrue: usize,
    partner_ok: bool,
    /// Client secrets seen in logs, objects, events or metrics.
    leaks: usize,
    panics: usize,
}

impl Outcome {
    fn recovered(&self) -> bool {
        self.lost + self.duplicates + self.strays + self.untrue + self.leaks + self.panics == 0 && self.partner_ok
    }
}

async fn observe(world: &World, metrics: &[Arc<Metrics>], seeds: &Range<u32>) -> Outcome {
    let mut outcome = Outcome::default();
    let findings: Api<ProbeFinding> = Api::namespaced(world.admin.clone(), "default");
    let findings: BTreeMap<String, ProbeFinding> = match findings.list(&ListParams::default()).await {
        Ok(list) => list.items.into_iter().map(|f| (f.metadata.name.clone().unwrap_or_default(), f)).collect(),
        Err(_) => return outcome,
    };
    let mut held: BTreeMap<String, usize> = BTreeMap::new();
    for value in world.indicator_values(sv::TENANT_ID) {
        *held.entry(value).or_default() += 1;
    }
    let unprotected: BTreeSet<String> = seeds.clone().filter(|s| state_of(*s) == "UNPROTECTED").map(sha256).collect();
    outcome.duplicates = held.values().map(|n| n - 1).sum();
    outcome.strays = held.keys().filter(|v| !unprotected.contains(*v)).count();
    for seed in seeds.clone() {
        let expected = if state_of(seed) == "UNPROTECTED" { DeliveryState::Submitted } else { DeliveryState::Skipped };
        let status = findings.get(&format!("f{seed}")).and_then(|f| {
            let status = f.status.as_ref()?;
            (status.observed_generation == f.metadata.generation).then_some(status)
        });
        let delivered = status.is_some_and(|s| s.deliveries.len() == 1 && s.deliveries[0].state == expected);
        let ready = status.is_some_and(|s| is_true(&s.conditions, READY));
        if expected == DeliveryState::Submitted && (!held.contains_key(&sha256(seed)) || !delivered) {
            outcome.lost += 1;
        }
        if !delivered || !ready {
            outcome.untrue += 1;
        }
    }
    let partner: Option<DefenderPartner> =
        Api::namespaced(world.admin.clone(), "default").get_opt("defender").await.ok().flatten();
    outcome.partner_ok = partner.and_then(|p| p.status).is_some_and(|s| {
        s.state == Some(PartnerState::Attached)
            && is_true(&s.conditions, INDICATORS_SYNCED)
            && s.indicators.is_some_and(|i| i.submitted as usize == unprotected.len() && i.pending == 0)
    });

    let logs = String::from_utf8_lossy(&capture().0.lock().unwrap()).to_string();
    let partners: Api<DefenderPartner> = Api::all(world.admin.clone());
    let mut visible = serde_json::to_string(&findings).unwrap_or_default();
    visible +=
        &serde_json::to_string(&partners.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default())
            .unwrap_or_default();
    let events: Api<Event> = Api::all(world.admin.clone());
    visible += &serde_json::to_string(&events.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default())
        .unwrap_or_default();
    for metrics in metrics {
        visible += &metrics.encode();
    }
    outcome.leaks = logs.matches(sv::GOOD_APP_SECRET).count() + visible.matches(sv::GOOD_APP_SECRET).count();
    outcome.panics = PANICS.load(Ordering::SeqCst);
    outcome
}

/// Waits for the operator to recover on its own, prints the scenario's figures, and asserts them.
async fn verify(world: &World, scenario: &str, faults: usize, seeds: Range<u32>) {
    let metrics: Vec<Arc<Metrics>> = world.operator.iter().map(|o| o.metrics.clone()).collect();
    verify_with(world, &metrics, scenario, faults, seeds).await
}

async fn verify_with(world: &World, metrics: &[Arc<Metrics>], scenario: &str, faults: usize, seeds: Range<u32>) {
    assert!(faults > 0, "{scenario}: no fault was injected");
    let started = tokio::time::Instant::now();
    let outcome = loop {
        let outcome = observe(world, metrics, &seeds).await;
        if outcome.recovered() || started.elapsed() > RECOVERY {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let findings = seeds.len();
    let unprotected = unprotected(seeds.clone());
    println!(
        "reliability: {}",
        json!({
            "scenario": scenario, "faults": faults, "findings": findings, "unprotected": unprotected,
            "duplicates": outcome.duplicates, "lost": outcome.lost, "strays": outcome.strays,
            "untrue_statuses": outcome.untrue, "secret_leaks": outcome.leaks, "panics": outcome.panics,
            "recovered_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        })
    );
    if !outcome.recovered() {
        panic!("{scenario}: not recovered within {RECOVERY:?}: {outcome:?} (logs: {})", dump_logs(scenario).display());
    }
}

fn emulator_faults_served(world: &World) -> usize {
    world.defender.calls().iter().filter(|c| c.status == 429 || c.status >= 500).count()
}

/// Half the findings meet the first burst, the other half the second (once the first half is in).
async fn two_bursts(scenario: &str, first: impl Fn(&Faults), second: impl Fn(&Faults)) {
    let world = attached_world(SandboxOptions::default()).await;
    first(world.defender.faults());
    create(&world, 0..FINDINGS / 2).await;
    until("the first half pushed after the burst", WAIT, || world.indicators().len() == unprotected(0..FINDINGS / 2))
        .await;
    second(world.defender.faults());
    create(&world, FINDINGS / 2..FINDINGS).await;
    until("the second burst was served", WAIT, || world.defender.faults().pending() == 0).await;
    verify(&world, scenario, emulator_faults_served(&world), 0..FINDINGS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defender_throttling_bursts() {
    let (first, second) = (|f: &Faults| f.throttle_next(5, 2), |f: &Faults| f.throttle_next(5, 1));
    two_bursts("Defender 429 bursts with Retry-After", first, second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defender_server_error_bursts() {
    two_bursts("Defender 500/503 bursts", |f| f.fail_next(3, 500), |f| f.fail_next(3, 503)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defender_calls_hang_past_the_client_timeout() {
    let options = SandboxOptions { request_timeout: Some(Duration::from_secs(2)), ..Default::default() };
    let world = attached_world(options).await;
    // A hung call is still answered (late) by Defender: an import may land after the operator
    // gave up on it, and the retry must not duplicate it.
    world.defender.faults().hang_next(3, Duration::from_secs(4));
    create(&world, 0..FINDINGS).await;
    until("every hang was served", Duration::from_secs(60), || world.defender.faults().pending() == 0).await;
    verify(&world, "Defender calls hanging past the client timeout", 3, 0..FINDINGS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_down() {
    let world = operator_world(SandboxOptions::default()).await;
    // Down before the partner is first validated: Detached with a transient reason, retried.
    world.defender.faults().token_endpoint_down(true);
    world.good_secret("default", "creds").await;
    world.partner("default", "defender", "creds", json!({})).await;
    create(&world, 0..FINDINGS).await;
    until("the operator met the outage", WAIT, || token_failures(&world) >= 2).await;
    let partner: DefenderPartner = Api::namespaced(world.admin.clone(), "default").get("defender").await.unwrap();
    assert_eq!(partner.status.and_then(|s| s.state), Some(PartnerState::Detached), "not attached while Entra is down");
    assert!(world.indicators().is_empty());
    world.defender.faults().token_endpoint_down(false);
    verify(&world, "Entra token endpoint down", token_failures(&world), 0..FINDINGS).await;
}

fn token_failures(world: &World) -> usize {
    world
        .defender
        .calls()
        .iter()
        .filter(|c| matches!(c.endpoint, Endpoint::TokenV1 | Endpoint::TokenV2) && c.status >= 500)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_mid_run() {
    let world = operator_world(SandboxOptions::default()).await;
    // Tokens live 3 s; Defender answers slowly, so the run spans several of them.
    world.defender.faults().token_lifetime(Duration::from_secs(3));
    attach(&world).await;
    world.defender.set_latency(Duration::from_millis(300));
    let tokens_before = token_calls(&world);
    for part in 0..3 {
        create(&world, part * FINDINGS / 3..(part + 1) * FINDINGS / 3).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    world.defender.set_latency(Duration::ZERO);
    let expired = token_calls(&world) - tokens_before;
    assert!(expired >= 2, "tokens were renewed during the run ({expired})");
    let rejected = world.defender.calls().iter().filter(|c| c.status == 401).count();
    assert_eq!(rejected, 0, "no call went out with an expired token");
    verify(&world, "access tokens expiring mid-run", expired, 0..FINDINGS).await;
}

fn token_calls(world: &World) -> usize {
    world.defender.calls().iter().filter(|c| matches!(c.endpoint, Endpoint::TokenV1 | Endpoint::TokenV2)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_watches_cut() {
    let world = attached_world(SandboxOptions::default()).await;
    let mut cuts = 0;
    for part in 0..6 {
        create(&world, part * FINDINGS / 6..(part + 1) * FINDINGS / 6).await;
        world.kube.cut_watches();
        cuts += 1;
    }
    verify(&world, "Kubernetes watches cut", cuts, 0..FINDINGS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_410_gone_on_resume() {
    let world = attached_world(SandboxOptions::default()).await;
    let mut expiries = 0;
    for part in 0..5 {
        create(&world, part * FINDINGS / 5..(part + 1) * FINDINGS / 5).await;
        world.kube.expire_watch_history();
        world.kube.cut_watches();
        expiries += 1;
    }
    verify(&world, "Kubernetes 410 Gone on watch resume", expiries, 0..FINDINGS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_409_on_status_writes() {
    let world = attached_world(SandboxOptions::default()).await;
    world.kube.conflict_next_status_writes(FINDINGS as usize / 2);
    create(&world, 0..FINDINGS).await;
    let served = world.kube.status_conflicts_served();
    until("every conflict was served", Duration::from_secs(60), || {
        world.kube.status_conflicts_served() == FINDINGS as usize / 2
    })
    .await;
    assert!(served > 0);
    verify(&world, "Kubernetes 409 Conflict on status writes", world.kube.status_conflicts_served(), 0..FINDINGS).await;
}

/// The test's own client, like any, may hold connections the restart closed: the first requests
/// on them fail until the pool has new ones.
async fn answering_again(world: &World) {
    let findings: Api<ProbeFinding> = Api::namespaced(world.admin.clone(), "default");
    let deadline = tokio::time::Instant::now() + WAIT;
    while findings.list(&ListParams::default().limit(1)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the API server did not answer after its restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_api_server_restarted() {
    let world = attached_world(SandboxOptions::default()).await;
    create(&world, 0..FINDINGS / 2).await;
    world.kube.restart(Duration::from_secs(2)).await.expect("the API server comes back on its port");
    answering_again(&world).await;
    create(&world, FINDINGS / 2..FINDINGS).await;
    world.kube.restart(Duration::from_millis(500)).await.expect("the API server comes back on its port");
    answering_again(&world).await;
    verify(&world, "Kubernetes API server restarted (state kept)", 2, 0..FINDINGS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_mid_batch() {
    let mut world = attached_world(SandboxOptions::default()).await;
    world.defender.set_latency(Duration::from_millis(700));
    create(&world, 0..FINDINGS).await;
    until("an import is in flight", WAIT, || {
        world.defender.calls().iter().any(|c| c.endpoint == Endpoint::ImportIndicators)
            || world.indicators().len() < FINDINGS as usize
    })
    .await;
    world.operator.take().unwrap().kill();
    world.defender.set_latency(Duration::ZERO);
    world.operator = Some(world.start_operator());
    verify(&world, "operator killed mid-batch, restarted", 1, 0..FINDINGS).await;
}

struct Elected {
    metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<Result<(), lease::Error>>,
    /// SIGTERM: the replica drains and steps down.
    terminate: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Elected {
    /// Stops the replica as Kubernetes does in a rolling update: SIGTERM, then waits for it.
    async fn terminate(mut self) {
        let _ = self.terminate.take().unwrap().send(());
        let _ = (&mut self.task).await;
    }
}

/// One replica of the Deployment: `lease::run_elected` as the operator's ServiceAccount, with a
/// short lease so the test does not wait the production 15 s.
fn replica(sandbox: &Sandbox, identity: &str) -> Elected {
    let client = sandbox.kube.client(&sandbox.kube.service_account_token(OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT));
    let lease = LeaseConfig {
        namespace: OPERATOR_NAMESPACE.into(),
        duration: Duration::from_secs(4),
        grace: Duration::from_secs(1),
        ..LeaseConfig::default()
    };
    let mut config = sandbox.operator_config();
    config.instance = Some(identity.into());
    let metrics = Arc::new(Metrics::default());
    let (terminate, terminated) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(lease::run_elected(
        client,
        lease,
        identity.into(),
        metrics.clone(),
        Arc::new(Health::default()),
        config,
        async move {
            let _ = terminated.await;
        },
    ));
    Elected { metrics, task, terminate: Some(terminate) }
}

/// Who holds the operator's Lease.
async fn lease_holder(world: &World) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(world.admin.clone(), OPERATOR_NAMESPACE);
    leases.get("defender-operator").await.ok()?.spec?.holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_a_follower_waits() {
    capture();
    let world = World { sandbox: Sandbox::start(SandboxOptions::default()).await.unwrap(), operator: None };
    let a = replica(&world, "replica-a");
    let b = replica(&world, "replica-b");
    attach(&world).await;
    world.defender.set_latency(Duration::from_millis(700));
    create(&world, 0..FINDINGS).await;
    until("an import was sent", WAIT, || {
        world.defender.calls().iter().any(|c| c.endpoint == Endpoint::ImportIndicators)
    })
    .await;
    // Whoever leads is killed; the other one takes over when the lease runs out.
    let holder = lease_holder(&world).await;
    let (leader, follower) = if holder.as_deref() == Some("replica-a") { (a, b) } else { (b, a) };
    leader.task.abort();
    world.defender.set_latency(Duration::ZERO);
    verify_with(
        &world,
        &[leader.metrics, follower.metrics.clone()],
        "leader killed, follower took over",
        1,
        0..FINDINGS,
    )
    .await;
    follower.task.abort();
}

/// A rolling upgrade of the two-replica Deployment: a replica of the new version starts while the
/// old leader is pushing, then the old one gets SIGTERM (as the Deployment's rollout sends it) and
/// the new one takes over the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_replaces_the_leader_mid_push() {
    capture();
    let world = World { sandbox: Sandbox::start(SandboxOptions::default()).await.unwrap(), operator: None };
    let old = replica(&world, "replica-old");
    attach(&world).await;
    world.defender.set_latency(Duration::from_millis(700));
    create(&world, 0..FINDINGS).await;
    until("an import was sent", WAIT, || {
        world.defender.calls().iter().any(|c| c.endpoint == Endpoint::ImportIndicators)
    })
    .await;
    assert_eq!(lease_holder(&world).await.as_deref(), Some("replica-old"));
    let new = replica(&world, "replica-new");
    old.terminate().await;
    world.defender.set_latency(Duration::ZERO);
    verify_with(
        &world,
        std::slice::from_ref(&new.metrics),
        "rolling upgrade: leader replaced mid-push",
        1,
        0..FINDINGS,
    )
    .await;
    assert_eq!(lease_holder(&world).await.as_deref(), Some("replica-new"));
    new.task.abort();
}
