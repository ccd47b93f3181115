//! `defender-operator sandbox`: the whole job on the embedded sandbox, no cluster or tenant.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use kube::Api;
use kube::api::ListParams;

use super::cluster::{Sandbox, SandboxOptions};
use crate::api::conditions::{READY, find};
use crate::api::{ClusterDefenderPartner, DefenderPartner, PartnerState, ProbeFinding};

/// The examples a newcomer reads in `deploy/examples/`, applied as they are.
const EXAMPLES: [(&str, &str); 6] = [
    ("partner.yaml", include_str!("../../deploy/examples/partner.yaml")),
    ("findings.yaml", include_str!("../../deploy/examples/findings.yaml")),
    ("bad-credentials.yaml", include_str!("../../deploy/examples/bad-credentials.yaml")),
    ("partner-certificate.yaml", include_str!("../../deploy/examples/partner-certificate.yaml")),
    ("partner-workload-identity.yaml", include_str!("../../deploy/examples/partner-workload-identity.yaml")),
    ("cluster-partner.yaml", include_str!("../../deploy/examples/cluster-partner.yaml")),
];

#[derive(clap::Args, Debug, Clone)]
pub struct SandboxArgs {
    /// Wait for the examples to converge, print the final tables and exit (non-zero naming
    /// what did not converge).
    #[arg(long)]
    pub demo: bool,
    /// Where to write the kubeconfig for `kubectl --kubeconfig`.
    #[arg(long, default_value = "sandbox.kubeconfig")]
    pub kubeconfig: PathBuf,
    /// How long `--demo` waits for convergence.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Where the operator serves `/metrics`, `/healthz` and `/readyz` (port 0: a free port; the
    /// address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub metrics_addr: std::net::SocketAddr,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::api::duration::parse(text).map_err(|e| e.to_string())
}

/// Runs until `shutdown` (without `--demo`) or until the examples converge (with it).
pub async fn run(args: SandboxArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let sandbox = Sandbox::start(SandboxOptions::default()).await?;
    std::fs::write(&args.kubeconfig, sandbox.kubeconfig())
        .with_context(|| format!("writing {}", args.kubeconfig.display()))?;
    let operator = sandbox.start_operator();
    let metrics = crate::telemetry::serve(args.metrics_addr, operator.metrics.clone(), operator.health.clone())
        .await
        .with_context(|| format!("--metrics-addr {}", args.metrics_addr))?;
    println!("Kubernetes API server: {}", sandbox.kube.url());
    println!("Defender/Entra emulator: {}", sandbox.defender.url());
    println!("Operator metrics: http://{metrics}/metrics   (health: /healthz, /readyz)");
    println!(
        "kubeconfig: {}   (try: kubectl --kubeconfig {} get dp,pf -A)",
        args.kubeconfig.display(),
        args.kubeconfig.display()
    );
    without_a_secret(&sandbox).await?;

    for (file, yaml) in EXAMPLES {
        // Partners without `spec.api` would go to Microsoft; in the sandbox they use the emulator,
        // and read its alerts every few seconds rather than minutes.
        let yaml = yaml.replace(
            "  credentials:\n",
            &format!("  api: {}\n  correlation: {{interval: 5s}}\n  credentials:\n", sandbox.defender_api()),
        );
        let applied = sandbox.apply_yaml(&yaml).await.with_context(|| format!("applying deploy/examples/{file}"))?;
        println!("applied deploy/examples/{file} ({} objects)", applied.len());
    }
    let mut staging = Staging::start(&sandbox).await?;

    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut last = String::new();
    loop {
        staging.step(&sandbox).await?;
        let (tables, mut pending) = snapshot(&sandbox).await?;
        pending.extend(staging.pending(&sandbox).await?);
        if tables != last {
            println!("\n{tables}");
            last = tables;
        }
        if args.demo && pending.is_empty() {
            println!(
                "converged: every partner has its verdict, every finding its delivery and its outcome, and \
                 {TURNS_PROTECTED} its time to protect"
            );
            return Ok(());
        }
        if args.demo && tokio::time::Instant::now() >= deadline {
            anyhow::bail!("did not converge within {:?}: {}", args.timeout, pending.join("; "));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = &mut shutdown, if !args.demo => return Ok(()),
        }
    }
}

/// What the examples of the partners without a client secret need from outside the cluster: the
/// certificate uploaded to the app (and its Secret, as cert-manager would write it), and the
/// federated credential trusting the ServiceAccount.
async fn without_a_secret(sandbox: &Sandbox) -> anyhow::Result<()> {
    use defender_sandbox::emulator::credentials::{TestCertificate, Validity};
    use defender_sandbox::emulator::sandbox_values::{GOOD_APP_ID, TENANT_ID};
    let certificate = TestCertificate::rsa("defender-operator-demo", Validity::Valid);
    sandbox.defender.add_certificate(TENANT_ID, GOOD_APP_ID, certificate.app_certificate())?;
    sandbox.defender.federate_with(TENANT_ID, GOOD_APP_ID, &sandbox.kube, "workload-identity", "defender")?;
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "defender-certificate", "namespace": "certificates"},
        "stringData": {"tls.crt": certificate.certificate_pem, "tls.key": certificate.private_key_pem}});
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: certificates\n";
    sandbox.apply_yaml(namespace).await?;
    sandbox.apply_yaml(&serde_yaml_ng::to_string(&secret)?).await.context("writing the certificate's Secret")?;
    Ok(())
}

/// The partners' and findings' tables, and what has not converged yet.
async fn snapshot(sandbox: &Sandbox) -> anyhow::Result<(String, Vec<String>)> {
    let cluster_partners =
        Api::<ClusterDefenderPartner>::all(sandbox.admin.clone()).list(&ListParams::default()).await?;
    let partners: Vec<DefenderPartner> = Api::<DefenderPartner>::all(sandbox.admin.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .chain(cluster_partners.items.iter().map(ClusterDefenderPartner::as_partner))
        .collect();
    let findings = Api::<ProbeFinding>::all(sandbox.admin.clone()).list(&ListParams::default()).await?;
    let mut pending = Vec::new();
    let mut attached_namespaces: BTreeMap<String, bool> = BTreeMap::new();

    let mut text = format!(
        "{:<24} {:<30} {:<10} {:<17} {:<38} {:<11} {}\n",
        "NAMESPACE", "PARTNER", "STATE", "CREDENTIALS", "TENANT", "INDICATORS", "REASON"
    );
    for partner in &partners {
        let status = partner.status.clone().unwrap_or_default();
        let namespace = partner.metadata.namespace.clone().unwrap_or_else(|| "(cluster-wide)".into());
        let name = partner.delivery_name();
        let attached = status.state == Some(PartnerState::Attached);
        *attached_namespaces.entry(namespace.clone()).or_insert(true) &= attached;
        if status.state.is_none() || status.observed_generation != partner.metadata.generation {
            pending.push(format!("partner {namespace}/{name} has no verdict"));
        }
        text += &format!(
            "{:<24} {:<30} {:<10} {:<17} {:<38} {:<11} {}\n",
            namespace,
            name,
            status.state.map(|s| format!("{s:?}")).unwrap_or_default(),
            status.credentials_type.map(|t| t.as_str()).unwrap_or_default(),
            status.tenant_id.unwrap_or_default(),
            status.indicators.map(|i| i.submitted.to_string()).unwrap_or_default(),
            status.reason.unwrap_or_default(),
        );
    }
    text += &format!(
        "\n{:<24} {:<26} {:<13} {:<10} {:<24} {:<12} {:<13} {}\n",
        "NAMESPACE", "FINDING", "STATE", "DELIVERED", "READY", "OUTCOME", "READINESS", "MACHINE"
    );
    let mut protected = String::new();
    for finding in &findings {
        let status = finding.status.clone().unwrap_or_default();
        let namespace = finding.metadata.namespace.clone().unwrap_or_default();
        let name = finding.metadata.name.clone().unwrap_or_default();
        let ready = find(&status.conditions, READY);
        let fully_attached = attached_namespaces.get(&namespace).copied().unwrap_or(false);
        if status.observed_generation != finding.metadata.generation
            || (fully_attached && ready.is_none_or(|c| c.status != "True"))
        {
            pending.push(format!("finding {namespace}/{name} is not delivered"));
        }
        let machine = status.deliveries.first().and_then(|d| d.machine.clone());
        text += &format!(
            "{:<24} {:<26} {:<13} {:<10} {:<24} {:<12} {:<13} {}\n",
            namespace,
            name,
            status
                .state
                .map(|s| serde_json::to_value(s).unwrap().as_str().unwrap_or_default().to_string())
                .unwrap_or_default(),
            status.delivered.clone().unwrap_or_default(),
            ready.map(|c| format!("{} ({})", c.status, c.reason)).unwrap_or_default(),
            status.outcome.map(|o| o.as_str()).unwrap_or_default(),
            machine.as_ref().map(|m| m.readiness.as_str()).unwrap_or_default(),
            machine.and_then(|m| m.name).unwrap_or_default(),
        );
        if let (Some(took), Some(at)) = (&status.time_to_protect, &status.protected_time) {
            protected += &format!(
                "{namespace}/{name}: PROTECTED at {at} ({took} after its indicator was submitted; Defender \
                 documents 15 minutes to 2 hours in a real tenant)\n",
                at = at.0.strftime("%H:%M:%S")
            );
        }
    }
    if !protected.is_empty() {
        text += &format!("\n{protected}");
    }
    Ok((text, pending))
}

/// The finding that comes back PROTECTED once its indicator is in Defender.
const TURNS_PROTECTED: &str = "office-macro-laptop-7";
/// A finding Defender never alerted on, observed before its window closed.
const MISSED: &str = "lateral-movement-laptop-7";

/// What the demo makes Defender do so that every outcome shows: the example tests that ran
/// UNPROTECTED on `laptop-7` raise alerts (Detected), one more test observed three hours ago
/// raised none (NotDetected: its two-hour window is over), and once Defender holds the office
/// macro's indicator its next run comes back PROTECTED (Prevented, with its time to protect).
/// The others show Prevented (a PROTECTED result), Pending (a machine in passive mode, window
/// open) and Unknown (an endpoint Defender does not know).
struct Staging {
    /// When the office macro's detection was first shown.
    shown: Option<tokio::time::Instant>,
    flipped: bool,
}

/// How long the demo's Defender takes to enforce the office macro's indicator (a real one takes
/// 15 minutes to 2 hours).
const ENFORCED_AFTER: Duration = Duration::from_secs(8);

impl Staging {
    async fn start(sandbox: &Sandbox) -> anyhow::Result<Self> {
        use defender_sandbox::emulator::{TestOutcome, TestRun, sandbox_values::TENANT_ID};
        for name in [TURNS_PROTECTED, "ransomware-sim-laptop-7"] {
            let hash = example_hash(name)?;
            sandbox.defender.run_test(TENANT_ID, TestRun::new("laptop-7", &hash, TestOutcome::Detected));
        }
        let observed = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(3);
        let missed = format!(
            "apiVersion: detect.dev/v1alpha1\nkind: ProbeFinding\nmetadata: {{name: {MISSED}, namespace: default}}\n\
             spec:\n  test: {{id: 0b2d4f6a-8c1e-4a3c-9e5f-7a9c1e3b5d7f, name: Will lateral movement be detected?}}\n  \
             endpoint: {{hostname: laptop-7}}\n  state: UNPROTECTED\n  observedTime: '{observed}'\n  \
             indicators:\n    - {{type: FileSha256, value: {}}}\n",
            "4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8a0b2d4f6a8c0e2b4d6f8a0c2e4b6d"
        );
        sandbox.apply_yaml(&missed).await.context("applying the demo's NotDetected finding")?;
        println!("staged: alerts for two tests on laptop-7; {MISSED}, observed three hours ago, without one");
        Ok(Staging { shown: None, flipped: false })
    }

    /// Once the office macro's indicator is in Defender and its detection shown, and Defender had
    /// a few seconds to enforce it, the test runs again and is blocked.
    async fn step(&mut self, sandbox: &Sandbox) -> anyhow::Result<()> {
        use defender_sandbox::emulator::{TestOutcome, TestRun, sandbox_values::TENANT_ID};
        use kube::api::{Patch, PatchParams};
        if self.flipped {
            return Ok(());
        }
        let api = Api::<ProbeFinding>::namespaced(sandbox.admin.clone(), "default");
        let Some(finding) = api.get_opt(TURNS_PROTECTED).await? else { return Ok(()) };
        let shown = finding.status.as_ref().and_then(|s| s.deliveries.first()).is_some_and(|d| {
            d.state == crate::api::DeliveryState::Submitted && d.detection == Some(crate::api::Detection::Detected)
        });
        if !shown {
            return Ok(());
        }
        let since = *self.shown.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < ENFORCED_AFTER {
            return Ok(());
        }
        let hash = example_hash(TURNS_PROTECTED)?;
        sandbox.defender.run_test(TENANT_ID, TestRun::new("laptop-7", &hash, TestOutcome::Prevented));
        let rerun =
            serde_json::json!({"spec": {"state": "PROTECTED", "observedTime": jiff::Timestamp::now().to_string()}});
        api.patch(TURNS_PROTECTED, &PatchParams::default(), &Patch::Merge(&rerun)).await?;
        println!("staged: {TURNS_PROTECTED} ran again after its indicator reached Defender, and was blocked");
        self.flipped = true;
        Ok(())
    }

    /// What is still missing for the demo to have shown everything.
    async fn pending(&self, sandbox: &Sandbox) -> anyhow::Result<Vec<String>> {
        use crate::api::Detection;
        let findings =
            Api::<ProbeFinding>::namespaced(sandbox.admin.clone(), "default").list(&ListParams::default()).await?;
        let mut pending = Vec::new();
        let shown: Vec<Detection> = findings.items.iter().filter_map(|f| f.status.as_ref()?.outcome).collect();
        for outcome in Detection::ALL {
            if !shown.contains(outcome) {
                pending.push(format!("no finding shows {outcome} yet"));
            }
        }
        for finding in &findings.items {
            let name = finding.metadata.name.clone().unwrap_or_default();
            let status = finding.status.clone().unwrap_or_default();
            if status.outcome.is_none() {
                pending.push(format!("finding default/{name} has no outcome"));
            }
            if name == TURNS_PROTECTED && status.time_to_protect.is_none() {
                pending.push(format!("{TURNS_PROTECTED} has no time to protect"));
            }
        }
        Ok(pending)
    }
}

/// The first hash of an example finding (deploy/examples/findings.yaml).
fn example_hash(name: &str) -> anyhow::Result<String> {
    for document in serde_yaml_ng::Deserializer::from_str(EXAMPLES[1].1) {
        let value: serde_json::Value = serde::Deserialize::deserialize(document)?;
        if value["metadata"]["name"] == name {
            let hash = value["spec"]["indicators"][0]["value"].as_str().context("an indicator value")?;
            return Ok(hash.to_string());
        }
    }
    anyhow::bail!("no example finding {name}")
}
