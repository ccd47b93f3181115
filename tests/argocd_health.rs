//! The Argo CD health checks of deploy/argocd/, run as Argo CD runs them: a Lua 5 interpreter with
//! the object as the global `obj` (numbers as floats, nulls absent, like gopher-lua's view of an
//! unstructured object), returning `{status, message}`. Fixtures cover every rule, and objects the
//! operator itself wrote on the sandbox.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use defender_operator::api::conditions::{READY, find};
use defender_operator::api::reason::terminal_reasons;
use defender_operator::api::{FindingReason, PartnerReason, ProbeFinding};
use mlua::{Lua, Table};
use serde_json::{Value, json};

const PARTNER_LUA: &str = include_str!("../deploy/argocd/health-defenderpartner.lua");
const FINDING_LUA: &str = include_str!("../deploy/argocd/health-probefinding.lua");
const ARGOCD_CM: &str = include_str!("../deploy/argocd/argocd-cm.yaml");

const TRANSIENT: [&str; 9] = [
    "Throttled",
    "DefenderUnreachable",
    "EntraUnavailable",
    "Pending",
    "Starting",
    "NoPartner",
    "Deleting",
    "Unauthorized",
    "SomeReasonAddedLater",
];

/// JSON → Lua the way Argo CD hands objects to Lua: objects and arrays as tables (arrays
/// 1-based), every number a float, nulls left out.
fn to_lua(lua: &Lua, value: &Value) -> mlua::Result<mlua::Value> {
    Ok(match value {
        Value::Null => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Number(n) => mlua::Value::Number(n.as_f64().expect("a number")),
        Value::String(s) => mlua::Value::String(lua.create_string(s)?),
        Value::Array(items) => {
            let table = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            mlua::Value::Table(table)
        }
        Value::Object(map) => {
            let table = lua.create_table()?;
            for (key, item) in map.iter().filter(|(_, v)| !v.is_null()) {
                table.raw_set(key.as_str(), to_lua(lua, item)?)?;
            }
            mlua::Value::Table(table)
        }
    })
}

/// Runs a health script on `object`; returns (status, message).
fn health(script: &str, object: &Value) -> (String, String) {
    let lua = Lua::new();
    lua.globals().set("obj", to_lua(&lua, object).unwrap()).unwrap();
    let hs: Table = lua.load(script).eval().unwrap_or_else(|e| panic!("the script runs on {object}: {e}"));
    let status: String = hs.get("status").expect("hs.status");
    let message: String = hs.get("message").unwrap_or_default();
    assert!(
        ["Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"].contains(&status.as_str()),
        "{status} is an Argo CD health status"
    );
    (status, message)
}

fn partner(generation: i64, status: Value) -> Value {
    let mut object = json!({
        "apiVersion": "detect.dev/v1alpha1",
        "kind": "DefenderPartner",
        "metadata": {"name": "defender", "namespace": "default", "generation": generation},
        "spec": {"credentials": {"secretRef": {"name": "defender-credentials"}}},
    });
    if !status.is_null() {
        object["status"] = status;
    }
    object
}

fn ready(status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({"type": "Ready", "status": status, "reason": reason, "message": message,
           "observedGeneration": generation, "lastTransitionTime": "2026-11-26T10:00:00Z"})
}

fn partner_with(generation: i64, observed: i64, condition: Value) -> Value {
    let state = if condition["status"] == "True" { "Attached" } else { "Detached" };
    partner(
        generation,
        json!({"state": state, "reason": condition["reason"], "message": condition["message"],
               "observedGeneration": observed, "conditions": [condition]}),
    )
}

fn finding_with(generation: i64, condition: Value) -> Value {
    json!({
        "apiVersion": "detect.dev/v1alpha1",
        "kind": "ProbeFinding",
        "metadata": {"name": "office-macro", "namespace": "default", "generation": generation},
        "spec": {"test": {"id": "3ebbda49-738c-4799-a8fb-206630cf609e"}, "state": "UNPROTECTED"},
        "status": {"state": "UNPROTECTED", "observedGeneration": generation, "conditions": [condition], "deliveries": []},
    })
}

#[test]
fn a_partner_without_status_or_with_an_old_generation_is_progressing() {
    let (status, message) = health(PARTNER_LUA, &partner(1, Value::Null));
    assert_eq!(status, "Progressing");
    assert!(message.contains("Waiting"), "{message}");

    // The operator reported Attached for generation 2, but the spec is at generation 3.
    let (status, message) = health(PARTNER_LUA, &partner_with(3, 2, ready("True", "Attached", "ok", 2)));
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("Progressing", "Waiting for the operator to observe generation 3")
    );

    // status.observedGeneration is current, the Ready condition is not.
    let (status, _) = health(PARTNER_LUA, &partner_with(3, 3, ready("True", "Attached", "ok", 2)));
    assert_eq!(status, "Progressing");

    // Status without conditions, and Ready=Unknown.
    let no_conditions = partner(1, json!({"observedGeneration": 1}));
    assert_eq!(health(PARTNER_LUA, &no_conditions).0, "Progressing");
    assert_eq!(health(PARTNER_LUA, &partner_with(1, 1, ready("Unknown", "Starting", "", 1))).0, "Progressing");
}

#[test]
fn an_attached_partner_is_healthy() {
    let (status, message) =
        health(PARTNER_LUA, &partner_with(4, 4, ready("True", "Attached", "Attached to tenant contoso", 4)));
    assert_eq!(status, "Healthy");
    assert_eq!(message, "Ready (Attached): Attached to tenant contoso");
}

#[test]
fn every_terminal_reason_is_degraded_and_every_other_reason_progressing() {
    for reason in terminal_reasons() {
        let (status, message) = health(PARTNER_LUA, &partner_with(2, 2, ready("False", reason, "what to fix", 2)));
        assert_eq!(status, "Degraded", "partner {reason}");
        assert_eq!(message, format!("Not ready ({reason}): what to fix"));
        assert_eq!(
            health(FINDING_LUA, &finding_with(2, ready("False", reason, "m", 2))).0,
            "Degraded",
            "finding {reason}"
        );
    }
    // Every reason the operator knows that is not terminal (but Suspended, its own status) waits.
    let partner_reasons = PartnerReason::ALL.iter().filter(|r| !r.is_terminal() && **r != PartnerReason::Suspended);
    let known = partner_reasons
        .map(|r| r.as_str())
        .chain(FindingReason::ALL.iter().filter(|r| !r.is_terminal()).map(|r| r.as_str()));
    for reason in TRANSIENT.into_iter().chain(known) {
        let (status, message) = health(PARTNER_LUA, &partner_with(2, 2, ready("False", reason, "retrying", 2)));
        assert_eq!(status, "Progressing", "partner {reason}");
        assert!(message.contains(reason), "{message}");
        assert_eq!(
            health(FINDING_LUA, &finding_with(2, ready("False", reason, "m", 2))).0,
            "Progressing",
            "finding {reason}"
        );
    }
}

#[test]
fn a_suspended_partner_is_suspended() {
    let (status, message) =
        health(PARTNER_LUA, &partner_with(5, 5, ready("False", "Suspended", "spec.suspend is true", 5)));
    assert_eq!((status.as_str(), message.as_str()), ("Suspended", "Suspended: spec.suspend is true"));
}

#[test]
fn findings_follow_the_same_rules() {
    // Expired: the indicators expired and are not pushed again, an expected end, not a failure.
    for reason in ["Delivered", "NothingToDeliver", "Expired"] {
        assert_eq!(health(FINDING_LUA, &finding_with(1, ready("True", reason, "", 1))).0, "Healthy", "{reason}");
    }
    let expired = ready(
        "True",
        "Expired",
        "this finding's indicators expired and are not pushed again; partner defender: expired at \
         2026-12-26T10:00:00Z (observed 2026-11-26T10:00:00Z + expireAfter 720h)",
        3,
    );
    let (status, message) = health(FINDING_LUA, &finding_with(3, expired));
    assert_eq!(status, "Healthy");
    assert!(message.starts_with("Ready (Expired): this finding's indicators expired"), "{message}");
    let mut lagging = finding_with(2, ready("True", "Delivered", "", 1));
    lagging["status"]["observedGeneration"] = json!(1);
    assert_eq!(health(FINDING_LUA, &lagging).0, "Progressing");
    let mut fresh = finding_with(1, ready("True", "Delivered", "", 1));
    fresh.as_object_mut().unwrap().remove("status");
    assert_eq!(health(FINDING_LUA, &fresh).0, "Progressing");
}

/// The argocd-cm snippet holds the scripts verbatim, under Argo CD's key format.
#[test]
fn the_argocd_cm_snippet_holds_the_scripts() {
    let cm: Value = serde_yaml_ng::from_str(ARGOCD_CM).unwrap();
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    assert_eq!(cm["data"]["resource.customizations.health.detect.dev_DefenderPartner"], PARTNER_LUA);
    assert_eq!(cm["data"]["resource.customizations.health.detect.dev_ProbeFinding"], FINDING_LUA);
    // A ClusterDefenderPartner's status is a DefenderPartner's: the same script.
    assert_eq!(cm["data"]["resource.customizations.health.detect.dev_ClusterDefenderPartner"], PARTNER_LUA);
}

/// Objects as the operator writes them: an attached partner is Healthy, a partner with a wrong
/// secret Degraded, a delivered finding Healthy, and so is one whose indicators expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_written_by_the_operator_get_the_expected_health() {
    use defender_sandbox::emulator::sandbox_values as sv;
    let world = common::world().await;
    world.namespace("team").await;
    world.good_secret("team", "good").await;
    world.partner("team", "defender", "good", json!({})).await;
    let attached = serde_json::to_value(world.attached("team", "defender").await).unwrap();
    assert_eq!(health(PARTNER_LUA, &attached).0, "Healthy", "{attached}");

    world.namespace("elsewhere").await;
    world
        .secret(
            "elsewhere",
            "wrong",
            &[("tenantId", sv::TENANT_ID), ("clientId", sv::GOOD_APP_ID), ("clientSecret", sv::GOOD_APP_SECRET_ID)],
        )
        .await;
    world.partner("elsewhere", "broken", "wrong", json!({})).await;
    let broken = serde_json::to_value(world.detached_with("elsewhere", "broken", "InvalidSecret").await).unwrap();
    let (status, message) = health(PARTNER_LUA, &broken);
    assert_eq!(status, "Degraded", "{broken}");
    assert!(message.contains("InvalidSecret"), "{message}");

    let hash = common::sha256(77);
    world.finding("team", "office-macro", &[hash], json!({"state": "UNPROTECTED"})).await;
    let delivered = serde_json::to_value(world.ready_finding("team", "office-macro").await).unwrap();
    assert_eq!(health(FINDING_LUA, &delivered).0, "Healthy", "{delivered}");

    // Observed long ago: past the default 720h expireAfter, never pushed, and not a failure.
    let old = json!({"state": "UNPROTECTED", "observedTime": "2020-01-01T00:00:00Z"});
    world.finding("team", "old-run", &[common::sha256(78)], old).await;
    let expired = world
        .wait_for("team", "old-run", common::WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| {
                s.observed_generation == f.metadata.generation
                    && find(&s.conditions, READY).is_some_and(|c| c.reason == "Expired")
            })
        })
        .await
        .unwrap();
    let expired = serde_json::to_value(expired).unwrap();
    let (status, message) = health(FINDING_LUA, &expired);
    assert_eq!(status, "Healthy", "{expired}");
    assert!(message.starts_with("Ready (Expired): "), "{message}");
}

/// The Argo CD scripts and the Flux CEL checks name exactly the operator's terminal reasons: none
/// missing, none that no longer exists.
#[test]
fn argo_cd_and_flux_agree_on_the_terminal_reasons() {
    use std::collections::BTreeSet;
    let expected: BTreeSet<&str> = terminal_reasons().into_iter().collect();
    for script in [PARTNER_LUA, FINDING_LUA] {
        let table = &script[script.find("local terminal = {").unwrap()..];
        let table = &table[..table.find('}').unwrap()];
        let lua: BTreeSet<&str> = table
            .split(',')
            .filter_map(|e| e.trim().strip_suffix(" = true"))
            .map(|e| e.rsplit(['{', ' ', '\n']).next().unwrap())
            .collect();
        assert_eq!(lua, expected);
    }
    let flux = include_str!("../deploy/flux/defender-operator.yaml");
    let failed: Vec<&str> = flux.lines().filter(|l| l.trim_start().starts_with("failed:")).collect();
    assert_eq!(failed.len(), 3, "DefenderPartner, ClusterDefenderPartner, ProbeFinding");
    for line in failed {
        let list = &line[line.find("e.reason in [").unwrap() + 13..line.rfind(']').unwrap()];
        let names: BTreeSet<&str> = list.split(',').map(|n| n.trim().trim_matches('\'')).collect();
        assert_eq!(names, expected);
    }
}
