//! The operator's Prometheus series. Labels are bounded sets (kind, outcome reason, operation,
//! status class, state): never object names.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: &'static str,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    pub partners: Family<StateLabels, Gauge>,
    pub indicators: Family<StateLabels, Gauge>,
    pub quota_used: Gauge,
    pub kube_requests: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("defender_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by kind and outcome (ok or an error reason)", reconciles.clone());
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register("reconcile_duration_seconds", "Reconcile duration", reconcile_duration.clone());
        let partners = Family::<StateLabels, Gauge>::default();
        registry.register("partners", "DefenderPartners by state", partners.clone());
        let indicators = Family::<StateLabels, Gauge>::default();
        registry.register("indicators", "Desired indicators by delivery state, over all partners", indicators.clone());
        let quota_used = Gauge::default();
        registry.register(
            "tenant_quota_used",
            "Largest share of Defender's 15,000-indicator cap used by any tenant, in indicators",
            quota_used.clone(),
        );
        let kube_requests = Counter::default();
        registry.register("kube_requests", "Requests sent to the Kubernetes API server", kube_requests.clone());
        Self { registry, reconciles, reconcile_duration, partners, indicators, quota_used, kube_requests }
    }
}

impl Metrics {
    /// Starts timing a reconcile; the result is recorded with [`ReconcileTimer::finish`].
    pub fn reconcile(&self, kind: &'static str) -> ReconcileTimer<'_> {
        ReconcileTimer { metrics: self, kind, started: Instant::now() }
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("metrics encode to a String");
        text
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    started: Instant,
}

impl ReconcileTimer<'_> {
    pub fn finish(self, outcome: &str) {
        self.metrics
            .reconcile_duration
            .get_or_create(&KindLabels { kind: self.kind })
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics.reconciles.get_or_create(&ReconcileLabels { kind: self.kind, outcome: outcome.to_string() }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_by_kind_and_outcome() {
        let metrics = Metrics::default();
        metrics.reconcile("DefenderPartner").finish("ok");
        metrics.reconcile("DefenderPartner").finish("InvalidSecret");
        metrics.partners.get_or_create(&StateLabels { state: "Attached" }).set(2);
        let text = metrics.encode();
        assert!(
            text.contains(r#"defender_operator_reconciles_total{kind="DefenderPartner",outcome="InvalidSecret"} 1"#),
            "{text}"
        );
        assert!(text.contains("defender_operator_reconcile_duration_seconds_count"), "{text}");
        assert!(text.contains(r#"defender_operator_partners{state="Attached"} 2"#), "{text}");
    }
}
