//! The command line: `run` (the operator), `crd` (print the CRDs), `sandbox` (the operator on
//! the embedded sandbox; with the `sandbox` feature) and `partner attach|detach|list` (Prelude's
//! partner verbs through the Kubernetes API).

mod partner;

use clap::{Args, Parser, Subcommand};

use crate::controller;
use crate::defender::{AllowList, HostPolicy};
use crate::telemetry::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "defender-operator",
    version,
    about = "Push UNPROTECTED security-test findings to Microsoft Defender for Endpoint as indicators"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator against the cluster in KUBECONFIG (or in-cluster config).
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML (what crds/ holds).
    Crd,
    #[cfg(feature = "sandbox")]
    /// Run the whole job on the embedded sandbox: a Kubernetes API server, a Defender/Entra
    /// emulator, the CRDs, the operator and the examples. No cluster or tenant needed.
    Sandbox(crate::sandbox::demo::SandboxArgs),
    /// Attach, detach and list Defender partners (Prelude's `partner` verbs, through the
    /// Kubernetes API in KUBECONFIG).
    #[command(subcommand)]
    Partner(partner::PartnerCommand),
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch this namespace only (namespaced install); default: all namespaces.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Extra hosts the bearer token may be sent to, comma-separated (e.g. `http://127.0.0.1:*`,
    /// `https://*.example.com`); Microsoft's Defender hosts are always allowed.
    #[arg(long, env = "DEFENDER_API_ALLOWLIST", value_delimiter = ',')]
    pub api_allowlist: Vec<String>,
    /// Replaces the cloud's Entra login host (for emulators).
    #[arg(long, env = "DEFENDER_AUTHORITY_URL")]
    pub authority_url: Option<url::Url>,
    /// Address of the metrics and health server.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Run the controllers only while holding a Lease, so that several replicas can run with one
    /// active (`--leader-elect` or `--leader-elect=true`).
    #[arg(long, env = "LEADER_ELECT", action = clap::ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true")]
    pub leader_elect: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, env = "LEASE_NAME", default_value = "defender-operator")]
    pub lease_name: String,
    /// Where ClusterDefenderPartners' credentials (Secrets, ServiceAccounts) live; default: the
    /// pod's namespace in a cluster, else `default`. Never a user's namespace.
    #[arg(long, env = "CLUSTER_RESOURCE_NAMESPACE")]
    pub cluster_resource_namespace: Option<String>,
    /// Namespace of the Lease; default: the pod's namespace in a cluster, else `default`.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Seconds a lease stays valid after each renewal: the longest a crashed leader goes unreplaced.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds before expiry at which the leader renews (also the clock skew tolerated).
    #[arg(long, env = "LEASE_GRACE_SECONDS", default_value_t = 5)]
    pub lease_grace_seconds: u64,
    /// Seconds one Defender or Entra call may take before it is abandoned and retried.
    #[arg(long, env = "DEFENDER_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub defender_timeout_seconds: u64,
}

impl RunArgs {
    /// The Lease to hold when `--leader-elect` is on.
    pub fn lease_config(&self) -> anyhow::Result<crate::lease::LeaseConfig> {
        let lease = crate::lease::LeaseConfig {
            name: self.lease_name.clone(),
            namespace: self.lease_namespace.clone().unwrap_or_else(crate::lease::default_namespace),
            duration: std::time::Duration::from_secs(self.lease_duration_seconds),
            grace: std::time::Duration::from_secs(self.lease_grace_seconds),
            ..Default::default()
        };
        lease.validate()?;
        Ok(lease)
    }

    pub fn controller_config(&self) -> anyhow::Result<controller::Config> {
        let allowlist = AllowList::new(&self.api_allowlist).map_err(|e| anyhow::anyhow!("--api-allowlist: {e}"))?;
        Ok(controller::Config {
            namespace: self.namespace.clone(),
            cluster_resource_namespace: self
                .cluster_resource_namespace
                .clone()
                .unwrap_or_else(crate::lease::default_namespace),
            host_policy: HostPolicy { allowlist, authority_override: self.authority_url.clone() },
            request_timeout: Some(std::time::Duration::from_secs(self.defender_timeout_seconds)),
            ..Default::default()
        })
    }
}

pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Partner(command) => partner::run(command).await,
        Command::Crd => {
            print!("{}", crate::api::crds_yaml());
            Ok(())
        }
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => {
            // The tables are the output; logs only when something goes wrong (RUST_LOG for more).
            telemetry::init(LogFormat::Text, "warn");
            crate::sandbox::demo::run(args, shutdown_signal()).await
        }
        Command::Run(args) => {
            telemetry::init(args.log_format, "info,kube=warn,hyper=warn");
            let config = args.controller_config()?;
            let lease = if args.leader_elect { Some(args.lease_config()?) } else { None };
            let metrics = std::sync::Arc::new(telemetry::Metrics::default());
            let client = telemetry::kube_client(kube::Config::infer().await?, metrics.clone())?;
            let health = std::sync::Arc::new(telemetry::Health::default());
            telemetry::serve(args.metrics_addr, metrics.clone(), health.clone())
                .await
                .map_err(|e| anyhow::anyhow!("--metrics-addr {}: {e}", args.metrics_addr))?;
            if let Some(lease) = lease {
                let identity = crate::lease::default_identity();
                crate::lease::run_elected(client, lease, identity, metrics, health, config, shutdown_signal()).await?;
            } else {
                controller::run(client, config, metrics, health, shutdown_signal()).await;
            }
            Ok(())
        }
    }
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// An error as the user reads it: its causes on one line, each said once (many errors repeat
/// their source), a Kubernetes refusal by its message rather than the whole `Status` structure.
pub fn describe(error: &anyhow::Error) -> String {
    let mut said: Vec<String> = Vec::new();
    for cause in error.chain() {
        if matches!(cause.downcast_ref::<kube::Error>(), Some(kube::Error::Api(_))) {
            continue;
        }
        let text = cause.to_string();
        if !said.last().is_some_and(|previous| previous.contains(&text)) {
            said.push(text);
        }
    }
    said.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubernetes_refusal_is_described_by_its_message() {
        let status = kube::core::Status::failure("namespaces \"cli-test\" not found", "NotFound").with_code(404);
        let error = anyhow::Error::new(kube::Error::Api(Box::new(status))).context("listing partners");
        assert_eq!(describe(&error), "listing partners: namespaces \"cli-test\" not found: NotFound");
        let repeated = anyhow::anyhow!(std::io::Error::other("disk full")).context("writing: disk full");
        assert_eq!(describe(&repeated), "writing: disk full");
    }
}
