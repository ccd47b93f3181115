//! CEL checked by Google's CEL (cel-cpp, through `cel-expr-python`) rather than by eye:
//!
//! - the Flux health checks of `deploy/flux/defender-operator.yaml`, evaluated as Flux's
//!   kustomize-controller evaluates them, on the objects the operator writes in each state;
//! - every `x-kubernetes-validations` rule of the CRDs, evaluated by the sandbox's own CEL
//!   (`defender_sandbox::apiserver::cel`, what the sandbox's API server judges objects with) and
//!   by cel-cpp on generated values the rules accept and refuse: the two must agree.
//!
//! Without `cel-expr-python` these tests say so and check nothing, except in CI (see `tools`).
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;
mod tools;

use std::collections::BTreeMap;

use defender_operator::api::conditions::{READY, find};
use defender_operator::api::reason::terminal_reasons;
use defender_operator::api::{DefenderPartner, ProbeFinding};
use defender_sandbox::emulator::sandbox_values as sv;
use serde_json::{Value, json};
use tools::Python;

/// cel-cpp's answers for `cases` (expression, data): Ok(value) or Err(why).
async fn cel_cpp(python: &Python, mode: &str, cases: &[(String, Value)]) -> Vec<Result<Value, String>> {
    let request = json!({
        "mode": mode,
        "cases": cases.iter().map(|(expr, data)| json!({"expr": expr, "data": data})).collect::<Vec<_>>(),
    });
    let (code, out, err) = python.run("cel.py", &[], Some(&request.to_string())).await;
    assert_eq!(code, 0, "cel.py failed:\n{out}\n{err}");
    let answers: Vec<Value> = serde_json::from_str(&out).expect("cel.py's answers");
    assert_eq!(answers.len(), cases.len());
    answers
        .into_iter()
        .map(|a| match a.get("error") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_string()),
            None => Ok(a["value"].clone()),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Flux

/// A refusal to produce: (reason, Secret name, the Secret's keys (none: no Secret), spec).
type Refusal = (&'static str, &'static str, &'static [(&'static str, &'static str)], Value);

/// One kind's `healthCheckExprs` entry.
struct HealthCheck {
    in_progress: String,
    failed: String,
    current: String,
}

fn flux_checks() -> BTreeMap<String, HealthCheck> {
    let text = include_str!("../deploy/flux/defender-operator.yaml");
    let mut checks = BTreeMap::new();
    for doc in tools::yaml_objects(text) {
        for check in doc["spec"]["healthCheckExprs"].as_array().into_iter().flatten() {
            let s = |k: &str| check[k].as_str().unwrap_or_else(|| panic!("{k} in {check}")).to_string();
            checks.insert(
                s("kind"),
                HealthCheck { in_progress: s("inProgress"), failed: s("failed"), current: s("current") },
            );
        }
    }
    assert_eq!(checks.keys().collect::<Vec<_>>(), ["ClusterDefenderPartner", "DefenderPartner", "ProbeFinding"]);
    // A ClusterDefenderPartner's status is a DefenderPartner's: the same verdicts.
    let (cluster, partner) = (&checks["ClusterDefenderPartner"], &checks["DefenderPartner"]);
    assert_eq!(
        (&cluster.in_progress, &cluster.failed, &cluster.current),
        (&partner.in_progress, &partner.failed, &partner.current)
    );
    checks
}

/// Flux's verdict on an object (fluxcd/pkg runtime/cel StatusEvaluator): `InProgress` when
/// `status.observedGeneration` is set and differs from `metadata.generation`; else the first of
/// inProgress, failed, current that is true; `InProgress` when none is; an expression that
/// cannot be evaluated makes the status `Unknown` (kstatus), shown as `Unknown: <why>`.
async fn flux_status(python: &Python, check: &HealthCheck, object: &Value) -> String {
    if let (Some(observed), Some(generation)) =
        (object["status"]["observedGeneration"].as_i64(), object["metadata"]["generation"].as_i64())
        && observed != generation
    {
        return "InProgress".into();
    }
    let order = [(&check.in_progress, "InProgress"), (&check.failed, "Failed"), (&check.current, "Current")];
    let cases: Vec<(String, Value)> = order.iter().map(|(expr, _)| (expr.to_string(), object.clone())).collect();
    for ((_, status), answer) in order.iter().zip(cel_cpp(python, "flux", &cases).await) {
        match answer {
            Ok(Value::Bool(true)) => return status.to_string(),
            Ok(Value::Bool(false)) => {}
            Ok(other) => return format!("Unknown: not a boolean: {other}"),
            Err(why) => return format!("Unknown: {why}"),
        }
    }
    "InProgress".into()
}

/// A copy of `object` whose Ready condition (and, for a partner, the top-level reason) says
/// `reason` with `status`, as the operator writes a refusal.
fn with_ready(object: &Value, status: &str, reason: &str) -> Value {
    let mut o = object.clone();
    for c in o["status"]["conditions"].as_array_mut().expect("conditions") {
        if c["type"] == READY {
            c["status"] = json!(status);
            c["reason"] = json!(reason);
        }
    }
    if o["kind"] == "DefenderPartner" {
        o["status"]["reason"] = json!(reason);
    }
    o
}

fn ready_reason(object: &Value) -> String {
    let conditions = object["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let ready = conditions.iter().find(|c| c["type"] == READY);
    ready.map(|c| format!("{}/{}", c["status"].as_str().unwrap(), c["reason"].as_str().unwrap())).unwrap_or_default()
}

/// The Flux health checks, by cel-cpp, on the objects the operator wrote on the sandbox: an
/// attached partner is Current; partners refused for a terminal reason (ten produced for real,
/// every other terminal reason on the same object) Failed; a transient refusal InProgress; a
/// suspended partner Current; a stale generation InProgress; delivered and expired findings
/// Current, a finding waiting for a partner InProgress, one naming a missing partner Failed. An
/// object without status yet cannot be evaluated (Flux's expressions name `status`): Unknown,
/// which Flux keeps polling, as it does for InProgress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_health_checks_judge_what_the_operator_writes() {
    let Some(python) = Python::with(&["cel_expr_python"]) else { return };
    let checks = flux_checks();
    let mut world = common::world().await;

    // Attached, and refusals the emulator produces for real, each in its own namespace.
    world.namespace("team").await;
    let attached = value(&world.attached_partner("team", "defender", json!({})).await);
    let refusals: [Refusal; 10] = [
        (
            "InvalidSecret",
            "s",
            &[("tenantId", sv::TENANT_ID), ("clientId", sv::GOOD_APP_ID), ("clientSecret", "wrong")],
            json!({}),
        ),
        ("SecretNotFound", "absent", &[], json!({})),
        ("SecretKeyMissing", "s", &[("tenantId", sv::TENANT_ID)], json!({})),
        (
            "SecretExpired",
            "s",
            &[
                ("tenantId", sv::TENANT_ID),
                ("clientId", sv::EXPIRED_SECRET_APP_ID),
                ("clientSecret", sv::EXPIRED_SECRET_APP_SECRET),
            ],
            json!({}),
        ),
        (
            "AppDisabled",
            "s",
            &[
                ("tenantId", sv::TENANT_ID),
                ("clientId", sv::DISABLED_APP_ID),
                ("clientSecret", sv::DISABLED_APP_SECRET),
            ],
            json!({}),
        ),
        (
            "TenantNotFound",
            "s",
            &[
                ("tenantId", sv::UNKNOWN_TENANT_ID),
                ("clientId", sv::GOOD_APP_ID),
                ("clientSecret", sv::GOOD_APP_SECRET),
            ],
            json!({}),
        ),
        (
            "DefenderNotProvisioned",
            "s",
            &[
                ("tenantId", sv::NO_DEFENDER_TENANT_ID),
                ("clientId", sv::NO_DEFENDER_APP_ID),
                ("clientSecret", sv::NO_DEFENDER_APP_SECRET),
            ],
            json!({}),
        ),
        (
            "MissingPermission",
            "s",
            &[
                ("tenantId", sv::TENANT_ID),
                ("clientId", sv::NO_ROLES_APP_ID),
                ("clientSecret", sv::NO_ROLES_APP_SECRET),
            ],
            json!({}),
        ),
        (
            "WrongCloud",
            "s",
            &[("tenantId", sv::GOV_TENANT_ID), ("clientId", sv::GOV_APP_ID), ("clientSecret", sv::GOV_APP_SECRET)],
            json!({}),
        ),
        (
            "ApiHostNotAllowed",
            "s",
            &[("tenantId", sv::TENANT_ID), ("clientId", sv::GOOD_APP_ID), ("clientSecret", sv::GOOD_APP_SECRET)],
            json!({"api": "https://defender.example.com"}),
        ),
    ];
    let mut refused = Vec::new();
    for (reason, secret, data, spec) in refusals {
        let ns = reason.to_lowercase();
        world.namespace(&ns).await;
        if !data.is_empty() {
            world.secret(&ns, secret, data).await;
        }
        world.partner(&ns, "defender", secret, spec).await;
        refused.push((reason, value(&world.detached_with(&ns, "defender", reason).await)));
    }
    // Transient: Entra down.
    world.namespace("transient").await;
    world.defender.faults().token_endpoint_down(true);
    world.good_secret("transient", "s").await;
    world.partner("transient", "defender", "s", json!({})).await;
    let transient = value(&world.detached_with("transient", "defender", "EntraUnavailable").await);
    world.defender.faults().token_endpoint_down(false);
    // Suspended.
    world.good_secret("team", "creds2").await;
    world.partner("team", "paused", "creds2", json!({"suspend": true})).await;
    let suspended = value(&world.detached_with("team", "paused", "Suspended").await);

    // Findings: delivered, expired, waiting for a partner, naming a missing partner.
    world.finding("team", "delivered", &[common::sha256(1)], json!({"state": "UNPROTECTED"})).await;
    let delivered = value(&world.ready_finding("team", "delivered").await);
    let old = json!({"state": "UNPROTECTED", "observedTime": "2020-01-01T00:00:00Z"});
    world.finding("team", "expired", &[common::sha256(2)], old).await;
    let expired = finding_with(&world, "team", "expired", "True/Expired").await;
    world.namespace("lonely").await;
    world.finding("lonely", "waiting", &[common::sha256(3)], json!({"state": "UNPROTECTED"})).await;
    let waiting = finding_with(&world, "lonely", "waiting", "False/NoPartner").await;
    let misdirected = json!({"state": "UNPROTECTED", "partnerRef": {"name": "nobody"}});
    world.finding("team", "misdirected", &[common::sha256(4)], misdirected).await;
    let misdirected = finding_with(&world, "team", "misdirected", "False/PartnerNotFound").await;

    // With the operator stopped: a spec change it has not seen, and a partner it never saw.
    world.operator.take().expect("the operator").stop().await;
    world.partner("team", "defender", "creds", json!({"indicator": {"severity": "Low"}})).await;
    let stale =
        value(&world.sandbox.wait_for("team", "defender", common::WAIT, |_: &DefenderPartner| true).await.unwrap());
    assert!(stale["status"]["observedGeneration"].as_i64() < stale["metadata"]["generation"].as_i64(), "{stale}");
    world.partner("team", "unseen", "creds", json!({})).await;
    let unseen =
        value(&world.sandbox.wait_for("team", "unseen", common::WAIT, |_: &DefenderPartner| true).await.unwrap());
    assert!(unseen["status"].is_null(), "{unseen}");

    let partner = &checks["DefenderPartner"];
    let finding = &checks["ProbeFinding"];
    let mut expected: Vec<(String, &HealthCheck, Value, &str)> = vec![
        ("attached partner".into(), partner, attached.clone(), "Current"),
        ("transient refusal (EntraUnavailable)".into(), partner, transient, "InProgress"),
        ("suspended partner".into(), partner, suspended, "Current"),
        ("stale generation".into(), partner, stale, "InProgress"),
        ("delivered finding".into(), finding, delivered.clone(), "Current"),
        ("expired finding".into(), finding, expired, "Current"),
        ("finding without a partner (NoPartner)".into(), finding, waiting, "InProgress"),
        ("finding naming a missing partner".into(), finding, misdirected, "Failed"),
    ];
    for (reason, object) in &refused {
        expected.push((
            format!("partner refused: {reason} (written by the operator)"),
            partner,
            object.clone(),
            "Failed",
        ));
    }
    let template = &refused[0].1;
    for reason in terminal_reasons() {
        expected.push((
            format!("partner, terminal {reason}"),
            partner,
            with_ready(template, "False", reason),
            "Failed",
        ));
        expected.push((
            format!("finding, terminal {reason}"),
            finding,
            with_ready(&delivered, "False", reason),
            "Failed",
        ));
    }
    for reason in ["Throttled", "DefenderUnreachable", "Pending", "Starting", "SomeReasonAddedLater"] {
        expected.push((
            format!("partner, transient {reason}"),
            partner,
            with_ready(template, "False", reason),
            "InProgress",
        ));
        expected.push((
            format!("finding, transient {reason}"),
            finding,
            with_ready(&delivered, "False", reason),
            "InProgress",
        ));
    }
    let mut wrong = Vec::new();
    for (what, check, object, want) in &expected {
        let got = flux_status(&python, check, object).await;
        if got != *want {
            wrong.push(format!("{what} ({}): Flux says {got}, expected {want}", ready_reason(object)));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let got = flux_status(&python, partner, &unseen).await;
    assert!(
        got.starts_with("Unknown: ") && got.contains("status"),
        "a partner without status: Flux cannot evaluate expressions that name `status`: {got}"
    );
    assert_eq!(attached["status"]["state"], "Attached");
}

fn value<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("serializable")
}

async fn finding_with(world: &common::World, ns: &str, name: &str, ready: &str) -> Value {
    let found = world
        .sandbox
        .wait_for(ns, name, common::WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| {
                s.observed_generation == f.metadata.generation
                    && find(&s.conditions, READY).is_some_and(|c| format!("{}/{}", c.status, c.reason) == ready)
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{ns}/{name} {ready}: {e}"));
    serde_json::to_value(found).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The CRDs' rules: the sandbox's CEL against cel-cpp

/// One `x-kubernetes-validations` rule and the schema of the value it judges.
struct Rule {
    crd: String,
    at: String,
    rule: String,
    schema: Value,
}

fn rules() -> Vec<Rule> {
    fn walk(crd: &str, at: &str, schema: &Value, out: &mut Vec<Rule>) {
        for v in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
            out.push(Rule {
                crd: crd.into(),
                at: at.into(),
                rule: v["rule"].as_str().unwrap().into(),
                schema: schema.clone(),
            });
        }
        for (name, sub) in schema["properties"].as_object().into_iter().flatten() {
            walk(crd, &format!("{at}.{name}"), sub, out);
        }
        if schema["items"].is_object() {
            walk(crd, &format!("{at}[*]"), &schema["items"], out);
        }
    }
    let mut out = Vec::new();
    for crd in defender_operator::api::crds() {
        let crd = serde_json::to_value(crd).unwrap();
        let name = crd["metadata"]["name"].as_str().unwrap().to_string();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            walk(&name, "self", &version["schema"]["openAPIV3Schema"], &mut out);
        }
    }
    out
}

/// Durations: what the CRD's pattern admits (the edges of each rule's maximum, fractions, sums,
/// beyond an int64 of nanoseconds) and what it refuses (which the rule may still see).
const DURATIONS: &[&str] = &[
    "0s",
    "1s",
    "90s",
    "0.5m",
    "1.5h",
    "1h30m",
    "59m60s",
    "1000000ms",
    "0.000000001ms",
    "1.123456789ms",
    "1.999999999s",
    "167h59m59.999999999s",
    "168h",
    "168h0.000000001s",
    "168h1ms",
    "169h",
    "720h",
    "87599h59m59.999999999s",
    "87600h",
    "87600h0.000000001s",
    "87601h",
    "2562047h",
    "2562048h",
    "9999999h",
    "9999999h9999999h9999999h",
    "",
    "0",
    "-1h",
    "+1h",
    "1d",
    "1us",
    "1ns",
    "1\u{b5}s",
    " 1h",
    "1h ",
    "inf",
    ".5h",
    "1.h",
    "1e3s",
    "h",
    "1",
    "1hh",
];

/// Indicator values: each type's valid shapes, near misses and junk.
fn indicator_values() -> Vec<String> {
    let hex = |n: usize| "0123456789abcdef".repeat(8)[..n].to_string();
    let mut values: Vec<String> = [0, 31, 32, 33, 40, 63, 64, 65, 96].into_iter().map(hex).collect();
    values.extend([hex(64).to_uppercase(), format!("{}g", hex(63)), format!(" {}", hex(64)), format!("{}\n", hex(40))]);
    values.extend(
        [
            "10.0.0.1",
            "255.255.255.255",
            "256.1.1.1",
            "10.0.0",
            "10.0.0.1 ",
            "\t10.0.0.1",
            "01.2.3.4",
            "::1",
            "2001:db8::1",
            "2001:DB8:0:0:0:0:0:1",
            "fe80::1%eth0",
            "::ffff:10.0.0.1",
            "1::2::3",
            "evil.example.com",
            "EVIL.Example.COM",
            "localhost",
            "-bad.example.com",
            "a..b",
            "xn--bcher-kva.example",
            "bücher.example",
            "evil.example.com.",
            "a.b\u{2028}",
            "https://evil.example.com/payload",
            "http://1.2.3.4:8080/p?q=1",
            "HTTPS://A.B",
            "ftp://evil.example.com",
            "https://",
            "https://user@host/x",
            "https:\\\\evil.example.com",
            "\u{3000}https://a.b",
            "",
            "\u{0}",
        ]
        .map(String::from),
    );
    values
}

fn cases(rule: &Rule) -> Vec<Value> {
    let props = &rule.schema["properties"];
    if rule.schema["type"] == "string" && rule.schema["pattern"] == defender_operator::api::duration::PATTERN {
        return DURATIONS.iter().map(|d| json!(d)).collect();
    }
    if props["type"].is_object() && props["value"].is_object() {
        let types = props["type"]["enum"].as_array().expect("indicator types").clone();
        return types
            .iter()
            .flat_map(|t| indicator_values().into_iter().map(move |v| json!({"type": t, "value": v})))
            .collect();
    }
    if props["state"].is_object() && props["code"].is_object() {
        return vec![
            json!({}),
            json!({"state": "UNPROTECTED"}),
            json!({"code": 101}),
            json!({"state": "PROTECTED", "code": 100}),
            json!({"state": null}),
            json!({"code": null}),
            json!({"test": {"id": "x"}}),
        ];
    }
    if props["secretRef"].is_object() && props["serviceAccountRef"].is_object() {
        // Every type with and without each reference (the type is always set: it has a default).
        let mut values = Vec::new();
        for type_ in ["ClientSecret", "Certificate", "WorkloadIdentity"] {
            for (secret, account) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut credentials = json!({"type": type_});
                if secret {
                    credentials["secretRef"] = json!({"name": "creds"});
                }
                if account {
                    credentials["serviceAccountRef"] = json!({"name": "defender"});
                }
                values.push(credentials);
            }
        }
        return values;
    }
    panic!("{} {}: no generator for the value `{}` judges: add one", rule.crd, rule.at, rule.rule)
}

/// Every rule of the CRDs, on values it accepts and values it refuses: the sandbox's CEL and
/// cel-cpp (with Kubernetes' Go `duration()`) give the same answer, value for value, or both
/// fail to evaluate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandboxs_cel_agrees_with_cel_cpp_on_every_crd_rule() {
    let Some(python) = Python::with(&["cel_expr_python"]) else { return };
    let rules = rules();
    assert!(rules.len() >= 10, "the CRDs' rules: {}", rules.len());
    let mut all: Vec<(String, Value)> = Vec::new();
    let mut owners = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        for case in cases(rule) {
            all.push((rule.rule.clone(), json!({"self": case})));
            owners.push(i);
        }
    }
    let reference = cel_cpp(&python, "rule", &all).await;
    let mut disagreements = Vec::new();
    let mut verdicts: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); rules.len()];
    for (((expr, data), want), &owner) in all.iter().zip(&reference).zip(&owners) {
        let program = defender_sandbox::apiserver::cel::compile(expr)
            .unwrap_or_else(|e| panic!("the sandbox cannot compile {expr}: {e}"));
        let got = program.eval(&data["self"], None);
        let agree = match (&got, want) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        let verdict = match want {
            Ok(v) => v.to_string(),
            Err(_) => "error".to_string(),
        };
        *verdicts[owner].entry(verdict).or_default() += 1;
        if !agree {
            disagreements.push(format!("{expr}\n  self = {}\n  sandbox: {got:?}\n  cel-cpp: {want:?}", data["self"]));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} evaluations differ:\n{}",
        disagreements.len(),
        all.len(),
        disagreements.join("\n")
    );
    for (rule, verdicts) in rules.iter().zip(&verdicts) {
        assert!(
            verdicts.get("true").is_some() && verdicts.get("false").is_some(),
            "{} {}: the generated values should be both accepted and refused by `{}`: {verdicts:?}",
            rule.crd,
            rule.at,
            rule.rule
        );
    }
}
