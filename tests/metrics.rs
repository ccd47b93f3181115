//! The operator's /metrics during a sandbox run: every documented series is there, with bounded
//! labels (no object names), and nothing secret.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use common::*;
use defender_sandbox::emulator::sandbox_values as sv;
use serde_json::json;

#[tokio::test]
async fn metrics_show_reconciles_defender_calls_and_states() {
    let world = world().await;
    world.attached_partner("default", "defender", json!({})).await;
    world.finding("default", "f", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding("default", "f").await;
    // A reconcile after the push records the gauges with the new counts.
    world.partner("default", "defender", "creds", json!({"indicator": {"severity": "Medium"}})).await;

    let operator = world.operator.as_ref().unwrap();
    eventually("indicator gauge updated", WAIT, || {
        operator.metrics.encode().contains(r#"defender_operator_indicators{state="Submitted"} 1"#)
    })
    .await;
    let text = operator.metrics.encode();
    for series in [
        r#"defender_operator_reconciles_total{kind="DefenderPartner",outcome="ok"}"#,
        r#"defender_operator_reconciles_total{kind="ProbeFinding",outcome="ok"}"#,
        r#"kind="ProbeFinding"} "#,
        "defender_operator_reconcile_duration_seconds_bucket{",
        r#"defender_operator_defender_requests_total{operation="list",status="200"}"#,
        r#"defender_operator_defender_requests_total{operation="import",status="200"}"#,
        r#"operation="import"} "#,
        "defender_operator_defender_request_duration_seconds_bucket{",
        r#"defender_operator_partners{state="Attached"} 1"#,
        r#"defender_operator_tenant_quota_used 1"#,
        "defender_operator_kube_requests_total",
        "defender_operator_kube_writes_total",
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    assert!(
        !text.contains("default/defender") && !text.contains(sv::GOOD_APP_SECRET),
        "high-cardinality or secret label"
    );
}
