//! Logs, Prometheus metrics and the health server (`/healthz`, `/readyz`, `/metrics`).
//! Secrets never reach a log line: credentials and tokens have redacting `Debug`.

pub mod metrics;
mod server;

pub use metrics::Metrics;
pub use server::{Health, serve};

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// A Kubernetes client whose requests are counted in `metrics`.
pub fn kube_client(config: kube::Config, metrics: std::sync::Arc<Metrics>) -> Result<kube::Client, kube::Error> {
    let count = tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
        metrics.kube_requests.inc();
        if !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
            metrics.kube_writes.inc();
        }
        request
    });
    Ok(kube::client::ClientBuilder::try_from(config)?.with_layer(&count).build())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` overrides `default_filter` (e.g. `info`).
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry.with(fmt::layer().json().with_current_span(false)).try_init(),
        LogFormat::Text => registry.with(fmt::layer()).try_init(),
    };
}
