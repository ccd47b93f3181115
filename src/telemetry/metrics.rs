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
pub struct DefenderLabels {
    pub operation: &'static str,
    /// The HTTP status, or `error` when no answer came.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
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
    /// Sync engines running: one per tenant and app.
    pub engines: Gauge,
    pub kube_requests: Counter,
    /// The requests that write (create, update, patch, delete).
    pub kube_writes: Counter,
    pub defender_requests: Family<DefenderLabels, Counter>,
    pub defender_request_duration: Family<OperationLabels, Histogram>,
    pub defender_throttled: Family<OperationLabels, Counter>,
    /// Status fields the API server did not keep (an older CRD prunes them), each counted once.
    pub status_writes_not_kept: Family<KindLabels, Counter>,
    /// From a finding's indicators being submitted to the finding reporting PROTECTED.
    pub time_to_protect: Histogram,
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
        registry.register(
            "partners",
            "Partners (DefenderPartners and ClusterDefenderPartners) by state",
            partners.clone(),
        );
        let indicators = Family::<StateLabels, Gauge>::default();
        registry.register("indicators", "Desired indicators by delivery state, over all partners", indicators.clone());
        let quota_used = Gauge::default();
        registry.register(
            "tenant_quota_used",
            "Largest share of Defender's 15,000-indicator cap used by any tenant, in indicators",
            quota_used.clone(),
        );
        let engines = Gauge::default();
        registry.register("engines", "Sync engines running: one per tenant and app", engines.clone());
        let kube_requests = Counter::default();
        registry.register("kube_requests", "Requests sent to the Kubernetes API server", kube_requests.clone());
        let kube_writes = Counter::default();
        registry.register(
            "kube_writes",
            "Requests sent to the Kubernetes API server that write (status, events, finalizers, leases)",
            kube_writes.clone(),
        );
        let defender_requests = Family::<DefenderLabels, Counter>::default();
        registry.register(
            "defender_requests",
            "Defender API calls by operation and HTTP status",
            defender_requests.clone(),
        );
        let defender_request_duration = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "defender_request_duration_seconds",
            "Defender API call latency by operation",
            defender_request_duration.clone(),
        );
        let defender_throttled = Family::<OperationLabels, Counter>::default();
        registry.register(
            "defender_throttled",
            "Defender API calls answered 429 (throttled)",
            defender_throttled.clone(),
        );
        let status_writes_not_kept = Family::<KindLabels, Counter>::default();
        registry.register(
            "status_writes_not_kept",
            "Status fields the API server did not keep (the installed CRD is older than the operator), each counted \
             once: they are no longer written",
            status_writes_not_kept.clone(),
        );
        // 30 s to about 68 h: Defender enforces file indicators in 15 minutes to 2 hours.
        let time_to_protect = Histogram::new(exponential_buckets(30.0, 2.0, 14));
        registry.register(
            "time_to_protect_seconds",
            "From a finding's indicators being submitted to Defender to the finding reporting PROTECTED",
            time_to_protect.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_duration,
            partners,
            indicators,
            quota_used,
            engines,
            kube_requests,
            kube_writes,
            defender_requests,
            defender_request_duration,
            defender_throttled,
            status_writes_not_kept,
            time_to_protect,
        }
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

impl crate::defender::CallObserver for Metrics {
    fn observe(&self, operation: &'static str, status: Option<u16>, elapsed: std::time::Duration) {
        let status_label = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.defender_requests.get_or_create(&DefenderLabels { operation, status: status_label }).inc();
        self.defender_request_duration.get_or_create(&OperationLabels { operation }).observe(elapsed.as_secs_f64());
        if status == Some(429) {
            self.defender_throttled.get_or_create(&OperationLabels { operation }).inc();
        }
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

        use crate::defender::CallObserver;
        metrics.observe("import", Some(200), std::time::Duration::from_millis(40));
        metrics.observe("import", Some(429), std::time::Duration::from_millis(5));
        metrics.observe("list", None, std::time::Duration::from_secs(30));
        let text = metrics.encode();
        assert!(
            text.contains(r#"defender_operator_defender_requests_total{operation="import",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"defender_operator_defender_requests_total{operation="list",status="error"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"defender_operator_defender_throttled_total{operation="import"} 1"#), "{text}");
        assert!(
            text.contains(r#"defender_operator_defender_request_duration_seconds_count{operation="import"} 2"#),
            "{text}"
        );
    }
}
