//! `cargo bench --bench convergence`: P partners (`BENCH_PARTNERS`, default 1), each of its own
//! tenant and namespace, N findings in all (`BENCH_FINDINGS`, default 10,000) with distinct
//! SHA-256 values, spread evenly over the partners, on 2,000 Defender machines per tenant; on the
//! sandbox with Defender's real limits and 200 ms per Defender call. The operator runs as its own
//! process (the release binary), so its peak RSS is its own. Phases: converge, restart, single
//! findings (to the first partner, while the others each take a burst of new findings), then
//! correlation (1,000 of each tenant's tests raise alerts; every finding's detection must
//! settle). Prints a table, then one JSON line.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use defender_operator::api::Detection;
use defender_operator::api::conditions::{INDICATORS_SYNCED, is_true};
use defender_operator::api::outcome::OUTCOMES_AVAILABLE;
use defender_operator::api::{DefenderPartner, DeliveryState, PartnerState, ProbeFinding};
use defender_operator::sandbox::cluster::{OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT};
use defender_operator::sandbox::{Sandbox, SandboxOptions};
use defender_sandbox::emulator::{
    AppConfig, AppSecret, Cloud as EmulatorCloud, EmulatorConfig, EmulatorLimits, Endpoint, MachineSpec, TenantConfig,
    TestOutcome, TestRun, sandbox_values as sv,
};
use futures::StreamExt;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const LATENCY: Duration = Duration::from_millis(200);
/// Defender machines the findings run on (`host-0` … `host-1999`).
const MACHINES: usize = 2_000;
/// Tests that raise an alert in the correlation phase.
const ALERTS: usize = 1_000;
/// New findings each other partner takes while the single findings go to the first.
const BUSY: usize = 1_000;
/// The partner's alert polling interval.
const INTERVAL: Duration = Duration::from_secs(30);

/// One partner of the benchmark: its tenant, app and namespace.
#[derive(Clone, Debug)]
struct Tenant {
    id: String,
    app: String,
    secret: String,
    namespace: String,
}

/// The first is the sandbox's usual tenant in `default` (so one partner runs as before); the
/// others are made up, each with its own app and namespace.
fn tenants(count: usize) -> Vec<Tenant> {
    (0..count)
        .map(|t| match t {
            0 => Tenant {
                id: sv::TENANT_ID.into(),
                app: sv::GOOD_APP_ID.into(),
                secret: sv::GOOD_APP_SECRET.into(),
                namespace: "default".into(),
            },
            t => Tenant {
                id: format!("be0c0000-0000-4000-8000-{t:012x}"),
                app: format!("be0caa00-0000-4000-8000-{t:012x}"),
                secret: format!("bench-secret-{t}"),
                namespace: format!("tenant-{t}"),
            },
        })
        .collect()
}

fn tenant_config(tenant: &Tenant) -> TenantConfig {
    TenantConfig {
        id: tenant.id.clone(),
        domains: Vec::new(),
        cloud: EmulatorCloud::Commercial,
        defender_provisioned: true,
        apps: vec![AppConfig {
            client_id: tenant.app.clone(),
            secrets: vec![AppSecret { value: tenant.secret.clone(), expired: false }],
            roles: sv::GOOD_APP_ROLES.iter().map(|r| r.to_string()).collect(),
            disabled: false,
            certificates: Vec::new(),
            federated_credentials: Vec::new(),
        }],
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let partners = env("BENCH_PARTNERS", 1).max(1);
    let findings = env("BENCH_FINDINGS", 10_000).div_ceil(partners) * partners;
    let singles = env("BENCH_SINGLES", 100);
    // `BENCH_CORRELATION=0`: the partners' correlation off, no correlation phase (to compare).
    let correlation = std::env::var("BENCH_CORRELATION").map_or(true, |v| v != "0");
    let dir = tempdir()?;
    if let Ok(filter) = std::env::var("BENCH_SANDBOX_LOG") {
        // The sandbox's own log (API server, emulator), beside the operators' logs.
        let log = std::fs::File::create(dir.join("sandbox.log"))?;
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(Mutex::new(log)).init();
    }
    let tenants = tenants(partners);
    let mut emulator = EmulatorConfig { latency: LATENCY, ..EmulatorConfig::sandbox() };
    emulator.tenants.extend(tenants.iter().skip(1).map(tenant_config));
    let limits = emulator.limits.clone();
    let sandbox = Sandbox::start(SandboxOptions { emulator, ..Default::default() }).await?;
    let kubeconfig = dir.join("operator.kubeconfig");
    std::fs::write(
        &kubeconfig,
        sandbox.kube.kubeconfig_yaml(&sandbox.kube.service_account_token(OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT)),
    )?;

    // Each tenant's machines exist before its partner: its first machine list has them.
    for tenant in &tenants {
        for i in 0..MACHINES {
            sandbox.defender.put_machine(&tenant.id, MachineSpec::new(&format!("host-{i}.bench.contoso.com")));
        }
        setup_partner(&sandbox, tenant, correlation).await?;
    }
    // Every finding was observed a minute before the run started; the correlation phase closes
    // their alert windows (alertWindow) just after its alerts.
    let observed = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(1);
    let observed = jiff::Timestamp::from_second(observed.as_second())?;
    let metrics_port = free_port()?;
    println!("operator logs: {}/operator-*.log (BENCH_OPERATOR_LOG sets RUST_LOG)", dir.display());
    let mut operator = spawn_operator(&sandbox, &kubeconfig, metrics_port, &dir.join("operator-1.log"))?;
    for tenant in &tenants {
        wait_attached(&sandbox, tenant, correlation).await?;
    }
    sandbox.defender.clear_calls();
    let kube_before = kube_requests(metrics_port).await?;

    // Converge: create N findings (the partners' in turn), wait until every one is Submitted.
    let started = Instant::now();
    create_findings(&sandbox, (0..findings).map(|i| (i, &tenants[i % partners])), partners, observed).await?;
    wait_all_submitted(&sandbox, findings, Duration::from_secs(600)).await?;
    let converge = started.elapsed();
    let calls = Calls::of(&sandbox);
    let converge_kube_requests = kube_requests(metrics_port).await? - kube_before;
    let peak_rss = peak_rss_mib(&operator)?;
    let held: usize = tenants.iter().map(|t| sandbox.defender.indicators(&t.id).len()).sum();
    let duplicates = held as i64 - findings as i64;
    // Each phase says what it measured as it ends, so that a later failure loses nothing.
    eprintln!(
        "phase converge: {:.1}s, {} write calls ({} most of one tenant), {duplicates} duplicates, peak RSS {peak_rss:.1} MiB",
        converge.as_secs_f64(),
        calls.writes(),
        calls.most_writes_of_a_tenant()
    );

    // Restart: a fresh operator, same cluster and tenants.
    operator.kill_and_wait()?;
    sandbox.defender.clear_calls();
    let restarted = Instant::now();
    let mut operator = spawn_operator(&sandbox, &kubeconfig, metrics_port, &dir.join("operator-2.log"))?;
    let steady_at = wait_steady_after_restart(&sandbox, &tenants, metrics_port, findings / partners).await?;
    let restart_converge = steady_at - restarted;
    // The restarted engines' correlation reads machines, antivirus health and alerts once again.
    if correlation {
        wait_correlation_reads(&sandbox, &tenants).await?;
    }
    let restart_calls = Calls::of(&sandbox);
    let restart_rss = peak_rss_mib(&operator)?;
    let restart_kube_requests = kube_requests(metrics_port).await?;
    eprintln!(
        "phase restart: {:.1}s, {} Defender calls ({} most of one tenant), {} writes, peak RSS {restart_rss:.1} MiB",
        restart_converge.as_secs_f64(),
        restart_calls.total(),
        restart_calls.most_of_a_tenant(),
        restart_calls.writes()
    );

    // One new finding alone, to the first partner, while every other partner takes a burst of
    // new findings: time until its indicator is in Defender.
    let busy = BUSY * (partners - 1);
    let first_busy = 2_000_000;
    let bursts = (0..busy).map(|i| (first_busy + i, &tenants[1 + i % (partners - 1).max(1)]));
    let bursts = create_findings(&sandbox, bursts.collect::<Vec<_>>(), partners, observed);
    let singles_run = async {
        let mut latencies = Vec::with_capacity(singles);
        for i in 0..singles {
            let value = sha256(1_000_000 + i);
            let started = Instant::now();
            create_findings(&sandbox, [(1_000_000 + i, &tenants[0])], partners, observed).await?;
            loop {
                if sandbox.defender.holds(&tenants[0].id, &value) {
                    break;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    if let Ok(metrics) = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await {
                        std::fs::write(dir.join("operator-2.metrics"), metrics.text().await.unwrap_or_default())?;
                    }
                    bail!(
                        "single finding {i} not pushed within 60 s (operator log: {})",
                        dir.join("operator-2.log").display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies.push(started.elapsed());
        }
        anyhow::Ok(latencies)
    };
    let (bursts, latencies) = tokio::join!(bursts, singles_run);
    bursts?;
    let mut latencies = latencies?;
    latencies.sort();
    let p99 = latencies.get((latencies.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or_default();
    eprintln!("phase singles: p99 {} ms of {singles}, {busy} others meanwhile", p99.as_millis());
    wait_all_submitted(&sandbox, findings + singles + busy, Duration::from_secs(300)).await?;

    // Correlation: the findings' windows close a few seconds from now; 1,000 of each tenant's
    // tests raise an alert on their machine now. Every finding must settle: Detected or
    // NotDetected.
    let total = findings + singles + busy;
    let expected = Expected { partners, alerted: ALERTS.min(findings / partners) };
    let figures = if correlation {
        let phase = correlation_phase(&sandbox, &tenants, &operator, metrics_port, observed, expected, total);
        Some(phase.await?)
    } else {
        None
    };
    operator.kill_and_wait()?;

    let naive = naive_seconds(findings / partners, &limits);
    println!(
        "defender-operator convergence benchmark ({} cores, Defender latency {LATENCY:?}, real limits)",
        num_cpus()
    );
    println!("{:<44} {:>14}", "partners (one tenant each)", partners);
    println!("{:<44} {:>14}", "findings", findings);
    println!("{:<44} {:>13.1}s", "converge (create -> all Submitted)", converge.as_secs_f64());
    println!("{:<44} {:>14}", "Defender calls", calls.total());
    for (endpoint, count) in calls.by_endpoint() {
        println!("  {:<42} {:>14}", endpoint, count);
    }
    println!("{:<44} {:>14}", "Defender write calls", calls.writes());
    println!("{:<44} {:>14}", "Defender write calls, most of one tenant", calls.most_writes_of_a_tenant());
    println!("{:<44} {:>14}", "duplicate indicators", duplicates);
    println!("{:<44} {:>14}", "Kubernetes API requests (operator)", converge_kube_requests);
    println!("{:<44} {:>10.1} MiB", "operator peak RSS", peak_rss);
    println!("{:<44} {:>13.1}s", "restart: time to steady state", restart_converge.as_secs_f64());
    println!("{:<44} {:>14}", "restart: Defender calls", restart_calls.total());
    for (endpoint, count) in restart_calls.by_endpoint() {
        println!("  {:<42} {:>14}", endpoint, count);
    }
    println!("{:<44} {:>14}", "restart: Defender write calls", restart_calls.writes());
    println!("{:<44} {:>14}", "restart: Kubernetes API requests", restart_kube_requests);
    println!("{:<44} {:>10.1} MiB", "restart: operator peak RSS", restart_rss);
    let label = format!("single finding p99 (of {singles}, {busy} others meanwhile)");
    println!("{:<44} {:>11.0} ms", label, p99.as_secs_f64() * 1000.0);
    println!("{:<44} {:>13.0}s", "naive baseline (one submit per indicator)", naive);
    if let Some(f) = &figures {
        let alerts = expected.alerted * partners;
        println!("{:<44} {:>14}", "correlation: findings / machines / alerts", format!("{total}/{MACHINES}/{alerts}"));
        let settled = format!("correlation: settled (interval {INTERVAL:?})");
        println!("{:<44} {:>13.1}s", settled, f.outcome_settle.as_secs_f64());
        println!("{:<44} {:>14}", "correlation: alert polls until settled", f.polls);
        println!("{:<44} {:>14}", "correlation: Defender read calls", f.calls.correlation_reads());
        for (endpoint, count) in f.calls.by_endpoint() {
            println!("  {:<42} {:>14}", endpoint, count);
        }
        println!("{:<44} {:>14}", "correlation: Kubernetes API requests", f.kube_requests);
        println!("{:<44} {:>14}", "correlation: first partner's outcomes", f.counts);
        println!("{:<44} {:>10.1} MiB", "correlation: operator peak RSS (restarted)", f.rss);
    }
    println!(
        "{}",
        json!({
            "partners": partners,
            "findings": findings,
            "converge_s": round(converge.as_secs_f64()),
            "defender_calls": calls.by_endpoint(),
            "kube_requests": converge_kube_requests,
            "operator_peak_rss_mib": round(peak_rss),
            "restart_converge_s": round(restart_converge.as_secs_f64()),
            "restart_defender_calls": restart_calls.total(),
            "restart_defender_calls_per_tenant_max": restart_calls.most_of_a_tenant(),
            "restart_defender_write_calls": restart_calls.writes(),
            "restart_kube_requests": restart_kube_requests,
            "restart_peak_rss_mib": round(restart_rss),
            "naive_converge_s": round(naive),
            "single_finding_p99_ms": round(p99.as_secs_f64() * 1000.0),
            "busy_findings": busy,
            "defender_write_calls": calls.writes(),
            "defender_write_calls_per_tenant_max": calls.most_writes_of_a_tenant(),
            "duplicates": duplicates,
            "restart_correlation_read_calls": restart_calls.correlation_reads(),
            "restart_correlation_read_calls_per_tenant_max": restart_calls.most_correlation_reads_of_a_tenant(),
            "correlation": correlation,
            "correlation_findings": figures.as_ref().map(|_| total),
            "correlation_machines": MACHINES * partners,
            "correlation_alerts": figures.as_ref().map(|_| expected.alerted * partners),
            "correlation_interval_s": INTERVAL.as_secs(),
            "outcome_settle_s": figures.as_ref().map(|f| round(f.outcome_settle.as_secs_f64())),
            "outcome_polls_to_settle": figures.as_ref().map(|f| f.polls),
            "correlation_read_calls": figures.as_ref().map(|f| f.calls.correlation_reads()),
            "correlation_kube_requests": figures.as_ref().map(|f| f.kube_requests),
            "correlation_peak_rss_mib": figures.as_ref().map(|f| round(f.rss)),
        })
    );
    Ok(())
}

/// The Defender calls (not the token calls) the emulator recorded, by tenant and endpoint.
struct Calls(BTreeMap<(String, String), u64>);

impl Calls {
    const WRITES: [&str; 4] = ["ImportIndicators", "SubmitIndicator", "DeleteIndicator", "BatchDeleteIndicators"];

    fn of(sandbox: &Sandbox) -> Self {
        let mut calls = BTreeMap::new();
        for call in sandbox.defender.calls() {
            if matches!(call.endpoint, Endpoint::TokenV1 | Endpoint::TokenV2) {
                continue;
            }
            let tenant = call.tenant.clone().unwrap_or_default();
            *calls.entry((tenant, format!("{:?}", call.endpoint))).or_insert(0) += 1;
        }
        Calls(calls)
    }

    fn by_endpoint(&self) -> BTreeMap<String, u64> {
        let mut by_endpoint = BTreeMap::new();
        for ((_, endpoint), count) in &self.0 {
            *by_endpoint.entry(endpoint.clone()).or_insert(0) += count;
        }
        by_endpoint
    }

    /// The most calls any one tenant got of the endpoints `pick` chooses.
    fn most_of_a_tenant_where(&self, pick: impl Fn(&str) -> bool) -> u64 {
        let mut by_tenant: BTreeMap<&str, u64> = BTreeMap::new();
        for ((tenant, endpoint), count) in &self.0 {
            if pick(endpoint) {
                *by_tenant.entry(tenant).or_insert(0) += count;
            }
        }
        by_tenant.into_values().max().unwrap_or(0)
    }

    fn sum_where(&self, pick: impl Fn(&str) -> bool) -> u64 {
        self.0.iter().filter(|((_, endpoint), _)| pick(endpoint)).map(|(_, count)| count).sum()
    }

    fn total(&self) -> u64 {
        self.sum_where(|_| true)
    }

    fn most_of_a_tenant(&self) -> u64 {
        self.most_of_a_tenant_where(|_| true)
    }

    fn writes(&self) -> u64 {
        self.sum_where(|e| Self::WRITES.contains(&e))
    }

    fn most_writes_of_a_tenant(&self) -> u64 {
        self.most_of_a_tenant_where(|e| Self::WRITES.contains(&e))
    }

    fn is_correlation_read(endpoint: &str) -> bool {
        Endpoint::MACHINE_AND_ALERT_READS.iter().any(|e| format!("{e:?}") == endpoint)
    }

    fn correlation_reads(&self) -> u64 {
        self.sum_where(Self::is_correlation_read)
    }

    fn most_correlation_reads_of_a_tenant(&self) -> u64 {
        self.most_of_a_tenant_where(Self::is_correlation_read)
    }
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("defender-operator-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn sha256(seed: usize) -> String {
    format!("{seed:016x}").repeat(4)
}

async fn setup_partner(sandbox: &Sandbox, tenant: &Tenant, correlation: bool) -> anyhow::Result<()> {
    let Tenant { id, app, secret, namespace } = tenant;
    if namespace != "default" {
        sandbox.apply_yaml(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n")).await?;
    }
    sandbox
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: creds, namespace: {namespace}}}\nstringData:\n  tenantId: {id}\n  clientId: {app}\n  clientSecret: {secret}\n---\n\
             apiVersion: detect.dev/v1alpha1\nkind: DefenderPartner\nmetadata: {{name: defender, namespace: {namespace}}}\n\
             spec: {{api: '{}', credentials: {{secretRef: {{name: creds}}}}, correlation: {{enabled: {correlation}, interval: {}s}}}}\n",
            sandbox.defender_api(),
            INTERVAL.as_secs()
        ))
        .await?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The operator's own count of requests to the Kubernetes API, from its /metrics.
async fn kube_requests(port: u16) -> anyhow::Result<u64> {
    metric_sum(port, "defender_operator_kube_requests_total ").await
}

/// The sum of the operator's /metrics samples whose line starts with `prefix`.
async fn metric_sum(port: u16, prefix: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await
            && let Ok(text) = response.text().await
        {
            let mut sum = 0.0;
            for line in text.lines().filter(|l| l.starts_with(prefix)) {
                sum += line.split_whitespace().last().context("a value")?.parse::<f64>()?;
            }
            return Ok(sum as u64);
        }
        if Instant::now() > deadline {
            bail!("the operator's /metrics did not answer");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The operator's process; killed when dropped, so that a failed run leaves nothing behind.
struct OperatorProcess(Child);

impl OperatorProcess {
    fn kill_and_wait(&mut self) -> std::io::Result<()> {
        self.0.kill()?;
        self.0.wait().map(|_| ())
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_operator(
    sandbox: &Sandbox,
    kubeconfig: &std::path::Path,
    metrics_port: u16,
    log: &std::path::Path,
) -> anyhow::Result<OperatorProcess> {
    let log = std::fs::File::create(log)?;
    let child = Command::new(env!("CARGO_BIN_EXE_defender-operator"))
        .args(["run", "--api-allowlist", "http://127.0.0.1:*", "--authority-url"])
        .arg(sandbox.defender.url().as_str())
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting the operator binary")?;
    Ok(OperatorProcess(child))
}

/// Attached, indicators in sync, and (with `correlation`) the first machine list and alert poll
/// done.
async fn wait_attached(sandbox: &Sandbox, tenant: &Tenant, correlation: bool) -> anyhow::Result<()> {
    sandbox
        .wait_for(&tenant.namespace, "defender", Duration::from_secs(60), |p: &DefenderPartner| {
            p.status.as_ref().is_some_and(|s| {
                s.state == Some(PartnerState::Attached)
                    && is_true(&s.conditions, INDICATORS_SYNCED)
                    && (!correlation || is_true(&s.conditions, OUTCOMES_AVAILABLE))
            })
        })
        .await?;
    Ok(())
}

/// Creates finding `finding-<i>` in the namespace of its tenant, for each `(i, tenant)`. Its
/// machine is `host-<k>` of that tenant, where `k` is its place among the tenant's findings.
async fn create_findings<'a>(
    sandbox: &Sandbox,
    findings: impl IntoIterator<Item = (usize, &'a Tenant)>,
    partners: usize,
    observed: jiff::Timestamp,
) -> anyhow::Result<()> {
    let results: Vec<_> = futures::stream::iter(findings)
        .map(|(i, tenant)| {
            let api: Api<ProbeFinding> = Api::namespaced(sandbox.admin.clone(), &tenant.namespace);
            async move {
                let finding: ProbeFinding = serde_json::from_value(json!({
                    "apiVersion": "detect.dev/v1alpha1", "kind": "ProbeFinding",
                    "metadata": {"name": format!("finding-{i}")},
                    "spec": {"test": {"id": "3ebbda49-738c-4799-a8fb-206630cf609e", "name": "Will a malicious Office document be quarantined?"},
                             "endpoint": {"hostname": format!("host-{}", (i / partners) % MACHINES)}, "code": 101,
                             "observedTime": observed.to_string(),
                             "indicators": [{"type": "FileSha256", "value": sha256(i)}]}
                }))?;
                api.create(&PostParams::default(), &finding).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(())
}

fn is_submitted(f: &ProbeFinding) -> bool {
    f.status.as_ref().is_some_and(|s| {
        s.observed_generation == f.metadata.generation
            && s.deliveries.iter().all(|d| d.state == DeliveryState::Submitted)
            && !s.deliveries.is_empty()
    })
}

async fn submitted(sandbox: &Sandbox) -> anyhow::Result<usize> {
    let api: Api<ProbeFinding> = Api::all(sandbox.admin.clone());
    Ok(api.list(&ListParams::default()).await?.items.iter().filter(|f| is_submitted(f)).count())
}

/// Watched rather than listed: listing every finding every second would load the 2 cores being
/// measured.
async fn wait_all_submitted(sandbox: &Sandbox, count: usize, timeout: Duration) -> anyhow::Result<()> {
    let counting = watch_until(sandbox.admin.clone(), count, is_submitted);
    match tokio::time::timeout(timeout, counting).await {
        Ok(done) => done.map(|_| ()),
        Err(_) => bail!("only {} of {count} findings Submitted after {timeout:?}", submitted(sandbox).await?),
    }
}

/// Watches the findings of every namespace until `count` of them are `done`; returns when.
async fn watch_until(
    client: kube::Client,
    count: usize,
    done: impl Fn(&ProbeFinding) -> bool,
) -> anyhow::Result<Instant> {
    use kube::runtime::{WatchStreamExt, watcher};
    let api: Api<ProbeFinding> = Api::all(client);
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut seen: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    let mut finished = 0usize;
    while let Some(event) = stream.next().await {
        // A watch that fell behind the server's history is listed again by the watcher.
        let finding = match event {
            Ok(watcher::Event::Apply(finding) | watcher::Event::InitApply(finding)) => finding,
            _ => continue,
        };
        let now = done(&finding);
        let key =
            format!("{}/{}", finding.metadata.namespace.unwrap_or_default(), finding.metadata.name.unwrap_or_default());
        let before = seen.insert(key, now).unwrap_or(false);
        finished = finished + usize::from(now) - usize::from(before);
        if finished >= count {
            return Ok(Instant::now());
        }
    }
    bail!("the findings' watch ended")
}

/// Steady after a restart: the new operator is ready (its caches are synced), each tenant's
/// engine has read Defender (a full list, not the partner check's `$top=1`), it has reconciled
/// every finding, every partner reports its indicators in sync, and every finding is still
/// Submitted.
async fn wait_steady_after_restart(
    sandbox: &Sandbox,
    tenants: &[Tenant],
    metrics_port: u16,
    per_tenant: usize,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let calls = sandbox.defender.calls();
        let read = |tenant: &Tenant| {
            calls.iter().any(|c| {
                c.endpoint == Endpoint::ListIndicators
                    && c.status == 200
                    && c.tenant.as_deref() == Some(tenant.id.as_str())
                    && !c.path.split(['?', '&']).any(|part| part.ends_with("top=1"))
            })
        };
        let ready = reqwest::get(format!("http://127.0.0.1:{metrics_port}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success());
        let reconciled = metric_sum(metrics_port, r#"defender_operator_reconciles_total{kind="ProbeFinding""#).await?;
        if ready && tenants.iter().all(read) && reconciled as usize >= per_tenant * tenants.len() {
            // Steady from the moment every partner reports its values held; the findings are
            // then checked (one list of them all, which takes a while and is not the operator's).
            let steady_at = Instant::now();
            let mut synced = true;
            for tenant in tenants {
                let api: Api<DefenderPartner> = Api::namespaced(sandbox.admin.clone(), &tenant.namespace);
                let partner = api.get("defender").await?;
                synced &= partner.status.as_ref().is_some_and(|s| {
                    is_true(&s.conditions, INDICATORS_SYNCED)
                        && s.indicators.as_ref().is_some_and(|i| i.submitted as usize >= per_tenant)
                });
            }
            if synced && submitted(sandbox).await? >= per_tenant * tenants.len() {
                return Ok(steady_at);
            }
        }
        if Instant::now() > deadline {
            bail!("not steady 300 s after the restart");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the correlation phase measured.
struct Figures {
    polls: usize,
    outcome_settle: Duration,
    calls: Calls,
    kube_requests: u64,
    counts: String,
    rss: f64,
}

/// Which findings the correlation phase expects Detected: the first `alerted` of each of the
/// `partners` tenants (by their place among the tenant's findings); the others NotDetected.
#[derive(Clone, Copy)]
struct Expected {
    partners: usize,
    alerted: usize,
}

impl Expected {
    fn detection(&self, finding: &str) -> Detection {
        let index: usize = finding.trim_start_matches("finding-").parse().unwrap_or(usize::MAX);
        if index / self.partners < self.alerted { Detection::Detected } else { Detection::NotDetected }
    }
}

/// Closes the findings' alert windows a few seconds from now, makes the expected tests raise an
/// alert on their machine, and waits until every finding's detection settled.
async fn correlation_phase(
    sandbox: &Sandbox,
    tenants: &[Tenant],
    operator: &OperatorProcess,
    metrics_port: u16,
    observed: jiff::Timestamp,
    expected: Expected,
    total: usize,
) -> anyhow::Result<Figures> {
    sandbox.defender.clear_calls();
    let kube_before = kube_requests(metrics_port).await?;
    // Watched rather than listed: listing every finding every second would load the 2 cores
    // being measured.
    let settled = move |f: &ProbeFinding| {
        let want = expected.detection(f.metadata.name.as_deref().unwrap_or_default());
        f.status.as_ref().and_then(|s| s.deliveries.first()).and_then(|d| d.detection) == Some(want)
    };
    let settling = tokio::spawn(watch_until(sandbox.admin.clone(), total, settled));
    let alerts_created = Instant::now();
    for local in 0..expected.alerted {
        for (t, tenant) in tenants.iter().enumerate() {
            let finding = local * expected.partners + t;
            let run = TestRun::new(&format!("host-{}", local % MACHINES), &sha256(finding), TestOutcome::Detected);
            sandbox.defender.run_test(&tenant.id, run);
        }
    }
    // The windows close a few seconds after the last alert was raised (raising 10,000 takes a
    // while): the findings without one are then NotDetected.
    let window = (jiff::Timestamp::now().as_second() - observed.as_second()) + 5;
    let window = json!({"spec": {"correlation": {"alertWindow": format!("{window}s")}}});
    for tenant in tenants {
        let partners: Api<DefenderPartner> = Api::namespaced(sandbox.admin.clone(), &tenant.namespace);
        partners.patch("defender", &PatchParams::default(), &Patch::Merge(&window)).await?;
    }
    let settled_at = tokio::time::timeout(Duration::from_secs(600), settling)
        .await
        .context("findings not settled within 600 s")???;
    let polls = sandbox.defender.calls().iter().filter(|c| c.endpoint == Endpoint::Alerts).count();
    let outcome_settle = settled_at.duration_since(alerts_created);
    let calls = Calls::of(sandbox);
    let kube_requests = kube_requests(metrics_port).await? - kube_before;
    let counts = wait_partner_counts(sandbox, &tenants[0], expected.alerted).await?;
    Ok(Figures { polls, outcome_settle, calls, kube_requests, counts, rss: peak_rss_mib(operator)? })
}

/// Waits until the correlation has listed machines and antivirus health and polled alerts of
/// every tenant.
async fn wait_correlation_reads(sandbox: &Sandbox, tenants: &[Tenant]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let calls = sandbox.defender.calls();
        let read = |tenant: &Tenant, e: Endpoint| {
            calls.iter().any(|c| c.endpoint == e && c.status == 200 && c.tenant.as_deref() == Some(tenant.id.as_str()))
        };
        let all_read = tenants
            .iter()
            .all(|t| read(t, Endpoint::Machines) && read(t, Endpoint::DeviceAvInfo) && read(t, Endpoint::Alerts));
        if all_read {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the restarted operator did not read every tenant's machines and alerts within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first partner's counts once they say `detected` and every other finding of it is
/// `notDetected`.
async fn wait_partner_counts(sandbox: &Sandbox, tenant: &Tenant, detected: usize) -> anyhow::Result<String> {
    let api: Api<ProbeFinding> = Api::namespaced(sandbox.admin.clone(), &tenant.namespace);
    let not_detected = api.list(&ListParams::default()).await?.items.len() - detected;
    let partner = sandbox
        .wait_for(&tenant.namespace, "defender", Duration::from_secs(120), |p: &DefenderPartner| {
            p.status
                .as_ref()
                .and_then(|s| s.outcomes.as_ref())
                .is_some_and(|o| o.detected as usize == detected && o.not_detected as usize == not_detected)
        })
        .await?;
    Ok(serde_json::to_string(&partner.status.and_then(|s| s.outcomes))?)
}

fn peak_rss_mib(operator: &OperatorProcess) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", operator.0.id()))?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmHWM in /proc/<pid>/status")?;
    Ok(kib / 1024.0)
}

/// One submit call per indicator under the same limits as the emulator (per-minute and
/// per-hour sliding windows), each call taking the same latency, one at a time.
fn naive_seconds(findings: usize, limits: &EmulatorLimits) -> f64 {
    let (per_minute, per_hour) = (limits.other_per_minute as usize, limits.other_per_hour as usize);
    let latency = LATENCY.as_secs_f64();
    let mut sent: Vec<f64> = Vec::with_capacity(findings);
    let mut now = 0.0f64;
    for _ in 0..findings {
        let n = sent.len();
        if n >= per_minute {
            now = now.max(sent[n - per_minute] + 60.0);
        }
        if n >= per_hour {
            now = now.max(sent[n - per_hour] + 3600.0);
        }
        sent.push(now);
        now += latency;
    }
    now
}
