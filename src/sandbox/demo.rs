//! `defender-operator sandbox`: the whole job on the embedded sandbox, no cluster or tenant.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use kube::Api;
use kube::api::ListParams;

use super::cluster::{Sandbox, SandboxOptions};
use crate::api::conditions::{READY, find};
use crate::api::{DefenderPartner, PartnerState, ProbeFinding};

/// The examples a newcomer reads in `deploy/examples/`, applied as they are.
const EXAMPLES: [(&str, &str); 5] = [
    ("partner.yaml", include_str!("../../deploy/examples/partner.yaml")),
    ("findings.yaml", include_str!("../../deploy/examples/findings.yaml")),
    ("bad-credentials.yaml", include_str!("../../deploy/examples/bad-credentials.yaml")),
    ("partner-certificate.yaml", include_str!("../../deploy/examples/partner-certificate.yaml")),
    ("partner-workload-identity.yaml", include_str!("../../deploy/examples/partner-workload-identity.yaml")),
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
        // Partners without `spec.api` would go to Microsoft; in the sandbox they use the emulator.
        let yaml = yaml.replace("  credentials:\n", &format!("  api: {}\n  credentials:\n", sandbox.defender_api()));
        let applied = sandbox.apply_yaml(&yaml).await.with_context(|| format!("applying deploy/examples/{file}"))?;
        println!("applied deploy/examples/{file} ({} objects)", applied.len());
    }

    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut last = String::new();
    loop {
        let (tables, pending) = snapshot(&sandbox).await?;
        if tables != last {
            println!("\n{tables}");
            last = tables;
        }
        if args.demo && pending.is_empty() {
            println!("converged: every partner has its verdict and every finding its delivery");
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
    let partners = Api::<DefenderPartner>::all(sandbox.admin.clone()).list(&ListParams::default()).await?;
    let findings = Api::<ProbeFinding>::all(sandbox.admin.clone()).list(&ListParams::default()).await?;
    let mut pending = Vec::new();
    let mut attached_namespaces: BTreeMap<String, bool> = BTreeMap::new();

    let mut text = format!(
        "{:<24} {:<20} {:<10} {:<17} {:<38} {:<11} {}\n",
        "NAMESPACE", "PARTNER", "STATE", "CREDENTIALS", "TENANT", "INDICATORS", "REASON"
    );
    for partner in &partners {
        let status = partner.status.clone().unwrap_or_default();
        let namespace = partner.metadata.namespace.clone().unwrap_or_default();
        let name = partner.metadata.name.clone().unwrap_or_default();
        let attached = status.state == Some(PartnerState::Attached);
        *attached_namespaces.entry(namespace.clone()).or_insert(true) &= attached;
        if status.state.is_none() || status.observed_generation != partner.metadata.generation {
            pending.push(format!("partner {namespace}/{name} has no verdict"));
        }
        text += &format!(
            "{:<24} {:<20} {:<10} {:<17} {:<38} {:<11} {}\n",
            namespace,
            name,
            status.state.map(|s| format!("{s:?}")).unwrap_or_default(),
            status.credentials_type.map(|t| t.as_str()).unwrap_or_default(),
            status.tenant_id.unwrap_or_default(),
            status.indicators.map(|i| i.submitted.to_string()).unwrap_or_default(),
            status.reason.unwrap_or_default(),
        );
    }
    text += &format!("\n{:<24} {:<26} {:<13} {:<10} {}\n", "NAMESPACE", "FINDING", "STATE", "DELIVERED", "READY");
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
        text += &format!(
            "{:<24} {:<26} {:<13} {:<10} {}\n",
            namespace,
            name,
            status
                .state
                .map(|s| serde_json::to_value(s).unwrap().as_str().unwrap_or_default().to_string())
                .unwrap_or_default(),
            status.delivered.unwrap_or_default(),
            ready.map(|c| format!("{} ({})", c.status, c.reason)).unwrap_or_default(),
        );
    }
    Ok((text, pending))
}
