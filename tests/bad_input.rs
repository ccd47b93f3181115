//! A catalogue of bad input, one test per line. Each case shows that the input is either refused
//! by the CRD schema (the API server answers 422 `Invalid` naming the field) or accepted and given
//! a clear status (exact reason; the message names the field and the fix) — and, in every test,
//! that a good finding under an attached good partner is still delivered, exactly once.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use std::collections::BTreeSet;

use common::*;
use defender_operator::api::conditions::{READY, find};
use defender_operator::api::{DefenderPartner, DeliveryState, ProbeFinding, TestState};
use defender_sandbox::emulator::sandbox_values as sv;
use defender_sandbox::emulator::{CallRecord, Endpoint};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::Status;
use serde_json::{Value, json};

/// The namespace of the good partner and the control finding.
const NS: &str = "default";
/// The attached good partner every test keeps an eye on.
const GOOD: &str = "good";
const TEST_ID: &str = "3ebbda49-738c-4799-a8fb-206630cf609e";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fresh sandbox with the good partner applied (it attaches while the test sets up its case).
async fn world_with_good_partner() -> World {
    let world = world().await;
    world.good_secret(NS, "good-creds").await;
    world.partner(NS, GOOD, "good-creds", json!({})).await;
    world
}

/// The control: a good finding (UNPROTECTED through code 101) is delivered to the good partner
/// and Ready (every *attached* partner that selects it holds its indicators, whatever
/// detached partners of the namespace say), its value is in Defender exactly once, and the good
/// partner is still attached. Returns the finding, for the deliveries of other partners.
async fn the_good_finding_is_still_delivered(world: &World, seed: u32) -> ProbeFinding {
    let value = sha256(seed);
    world.finding(NS, "control", std::slice::from_ref(&value), json!({"code": 101})).await;
    let finding = world
        .wait_for(NS, "control", WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| {
                s.observed_generation == f.metadata.generation
                    && find(&s.conditions, READY).is_some_and(|c| c.status == "True" && c.reason == "Delivered")
            }) && delivery(f, GOOD).is_some_and(|d| d.state == DeliveryState::Submitted)
        })
        .await
        .unwrap_or_else(|e| panic!("the control finding was not delivered and Ready: {}", clip(&e.to_string())));
    let status = finding.status.as_ref().unwrap();
    assert_eq!(status.state, Some(TestState::Unprotected));
    let good = status.deliveries.iter().find(|d| d.partner == GOOD).unwrap();
    assert!(good.indicators.iter().all(|i| i.id.is_some()), "Defender ids recorded: {good:?}");
    assert_eq!(held(world, sv::TENANT_ID, &value), 1, "the control value is in Defender exactly once");
    let partner = world.attached(NS, GOOD).await;
    assert!(defender_operator::api::conditions::is_true(&partner.status.unwrap().conditions, READY));
    finding
}

/// The control finding's deliveries to partners that are not attached: each stays `Pending` and
/// says why, while the finding is Ready through the attached good partner.
fn detached_deliveries_stay_pending(control: &ProbeFinding, partners: &[&str]) {
    let ready = find(&control.status.as_ref().unwrap().conditions, READY).unwrap();
    for partner in partners {
        let d = delivery(control, partner).unwrap_or_else(|| panic!("{partner} selects the control finding"));
        assert_eq!(d.state, DeliveryState::Pending, "{partner}: {d:?}");
        let message = d.message.as_deref().unwrap_or_default();
        assert!(message.starts_with("not attached: "), "{partner}: {message}");
        assert!(ready.message.contains(partner), "Ready names {partner} as not waited for: {}", ready.message);
    }
}

/// How many indicators of the tenant carry exactly this value (case-sensitive).
fn held(world: &World, tenant: &str, value: &str) -> usize {
    world.defender.indicators(tenant).iter().filter(|i| i["indicatorValue"].as_str() == Some(value)).count()
}

fn delivery<'a>(finding: &'a ProbeFinding, partner: &str) -> Option<&'a defender_operator::api::Delivery> {
    finding.status.as_ref()?.deliveries.iter().find(|d| d.partner == partner)
}

/// A valid finding; `edit` changes its spec (adds, replaces or removes fields).
fn finding_json(name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut spec = json!({
        "test": {"id": TEST_ID, "name": "Will a malicious Office document be quarantined?"},
        "endpoint": {"hostname": "laptop-7"},
        "state": "UNPROTECTED",
        "indicators": [{"type": "FileSha256", "value": sha256(900)}],
    });
    edit(&mut spec);
    json!({"apiVersion": "detect.dev/v1alpha1", "kind": "ProbeFinding",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

/// A valid partner pointed at the emulator; `edit` changes its spec.
fn partner_json(world: &World, name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut spec = json!({"api": world.defender_api(), "credentials": {"secretRef": {"name": "good-creds"}}});
    edit(&mut spec);
    json!({"apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

/// Server-side applies a ProbeFinding or DefenderPartner given as JSON, untyped.
async fn apply(world: &World, object: &Value) -> Result<(), kube::Error> {
    let resource = match object["kind"].as_str() {
        Some("ProbeFinding") => ApiResource::erase::<ProbeFinding>(&()),
        Some("DefenderPartner") => ApiResource::erase::<DefenderPartner>(&()),
        other => panic!("apply: unexpected kind {other:?}"),
    };
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or(NS);
    let name = object["metadata"]["name"].as_str().expect("metadata.name");
    let api: Api<DynamicObject> = Api::namespaced_with(world.admin.clone(), namespace, &resource);
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(object)).await.map(|_| ())
}

/// Long values make unreadable failure messages: keep the start.
fn clip(text: &str) -> String {
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}

/// Applies `object`, which the schema must refuse: 422 `Invalid`, the message naming `field`,
/// and a cause on exactly `field` whose message contains `says`.
async fn refused(world: &World, object: &Value, field: &str, says: &str) -> Box<Status> {
    let what = format!("{} {}", object["kind"], clip(object["metadata"]["name"].as_str().unwrap_or_default()));
    let status = match apply(world, object).await {
        Err(kube::Error::Api(status)) => status,
        Err(other) => panic!("{what}: expected a 422 from the API server, got {other}"),
        Ok(()) => panic!("{what}: accepted, but the schema should refuse it ({field}: {says})"),
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"), "{what}: {}", clip(&status.message));
    assert!(status.message.contains(field), "{what}: the message should name {field}: {}", clip(&status.message));
    let causes = &status.details.as_ref().expect("details with causes").causes;
    assert!(
        causes.iter().any(|c| c.field == field && c.message.contains(says)),
        "{what}: expected a cause on {field} saying {says:?}, got {:?}",
        causes.iter().map(|c| (c.field.clone(), clip(&c.message))).collect::<Vec<_>>()
    );
    status
}

/// Waits for the finding's Ready condition to carry `reason` (at the current generation).
async fn finding_ready_reason(world: &World, name: &str, reason: &str) -> (ProbeFinding, String, String) {
    let finding = world
        .wait_for(NS, name, WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| {
                s.observed_generation == f.metadata.generation
                    && find(&s.conditions, READY).is_some_and(|c| c.reason == reason)
            })
        })
        .await
        .unwrap_or_else(|e| panic!("finding {name} should be Ready/{reason}: {}", clip(&e.to_string())));
    let ready = find(&finding.status.as_ref().unwrap().conditions, READY).unwrap().clone();
    (finding, ready.status, ready.message)
}

/// Token and API calls made with this client id (token calls) or by this app (API calls).
fn calls_of_app(world: &World, app: &str) -> Vec<CallRecord> {
    world
        .defender
        .calls()
        .into_iter()
        .filter(|c| c.app.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(app)))
        .collect()
}

/// A change to a spec, for tables of cases.
type Edit<'a> = Box<dyn Fn(&mut Value) + 'a>;

fn is_write(call: &CallRecord) -> bool {
    matches!(call.endpoint, Endpoint::ImportIndicators | Endpoint::SubmitIndicator)
}

// ---------------------------------------------------------------------------------------------
// 1. Malformed hashes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_hashes_are_refused_by_the_schema() {
    let world = world_with_good_partner().await;
    let hex = |n: usize| "0123456789abcdef".repeat(8)[..n].to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        ("FileSha256", hex(63), "a FileSha256 value is 64 hex characters"),
        ("FileSha256", hex(65), "a FileSha256 value is 64 hex characters"),
        ("FileSha256", format!("{}g", hex(63)), "a FileSha256 value is 64 hex characters"),
        ("FileSha256", format!("0x{}", hex(62)), "a FileSha256 value is 64 hex characters"),
        ("FileSha256", format!(" {}", hex(64)), "a FileSha256 value is 64 hex characters"),
        ("FileSha256", format!("{}-{}", hex(32), hex(31)), "a FileSha256 value is 64 hex characters"),
        ("FileSha1", hex(39), "a FileSha1 value is 40 hex characters"),
        ("FileSha1", hex(41), "a FileSha1 value is 40 hex characters"),
        ("FileSha1", format!("{}z", hex(39)), "a FileSha1 value is 40 hex characters"),
        ("FileMd5", hex(31), "a FileMd5 value is 32 hex characters"),
        ("FileMd5", hex(33), "a FileMd5 value is 32 hex characters"),
        ("FileMd5", format!("{}ü", hex(31)), "a FileMd5 value is 32 hex characters"),
        ("CertificateThumbprint", hex(50), "a CertificateThumbprint value is 40 (SHA-1) or 64 (SHA-256)"),
    ];
    for (i, (type_, value, says)) in cases.iter().enumerate() {
        // The bad indicator second, after a good one: the index in the field path is exact.
        let object = finding_json(&format!("malformed-{i}"), |spec| {
            spec["indicators"] = json!([{"type": "FileSha256", "value": sha256(1)}, {"type": type_, "value": value}]);
        });
        refused(&world, &object, "spec.indicators[1].value", says).await;
    }
    // An empty value is caught by the length bound before the per-type rule runs.
    let empty = finding_json("malformed-empty", |spec| spec["indicators"][0]["value"] = json!(""));
    refused(&world, &empty, "spec.indicators[0].value", "should be at least 1 chars long").await;

    the_good_finding_is_still_delivered(&world, 100).await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(100)], "nothing else was pushed");
}

// ---------------------------------------------------------------------------------------------
// 2. Type and value disagree
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_type_that_does_not_match_its_value_is_refused() {
    let world = world_with_good_partner().await;
    let (sha256_value, sha1_value, md5_value) = (sha256(7), sha256(7)[..40].to_string(), sha256(7)[..32].to_string());
    // Hash types: the schema's per-type rules.
    let cases = [
        ("FileSha256", &sha1_value, "a FileSha256 value is 64 hex characters"),
        ("FileSha256", &md5_value, "a FileSha256 value is 64 hex characters"),
        ("FileSha1", &sha256_value, "a FileSha1 value is 40 hex characters"),
        ("FileSha1", &md5_value, "a FileSha1 value is 40 hex characters"),
        ("FileMd5", &sha256_value, "a FileMd5 value is 32 hex characters"),
        ("FileMd5", &sha1_value, "a FileMd5 value is 32 hex characters"),
        ("CertificateThumbprint", &md5_value, "a CertificateThumbprint value is 40 (SHA-1) or 64 (SHA-256)"),
    ];
    for (i, (type_, value, says)) in cases.iter().enumerate() {
        let object = finding_json(&format!("mismatch-{i}"), |spec| {
            spec["indicators"] = json!([{"type": type_, "value": value}]);
        });
        refused(&world, &object, "spec.indicators[0].value", says).await;
    }

    // Network types: the schema's per-type rules as well.
    let (ip, domain, url) = (
        "an IpAddress value is one IPv4 or IPv6 address",
        "a DomainName value is two or more dot-separated labels",
        "a Url value is an http:// or https:// URL with a host",
    );
    let network = [
        ("IpAddress", sha256_value.as_str(), ip),
        ("IpAddress", "256.1.1.1", ip),
        ("IpAddress", "10.0.0.0/8", ip),
        ("IpAddress", "2001:db8::1::7", ip),
        ("DomainName", &sha256_value, domain),
        // 40 hex characters are one valid DNS label, but no domain Defender takes.
        ("DomainName", &sha1_value, domain),
        ("DomainName", "evil.example.com.", domain),
        ("DomainName", "bücher.example", domain),
        ("Url", &sha1_value, url),
        ("Url", "evil.example.com/path", url),
        ("Url", "ftp://evil.example.com/", url),
        ("Url", "https://evil.example.com/a b", url),
    ];
    for (i, (type_, value, says)) in network.iter().enumerate() {
        let object = finding_json(&format!("network-mismatch-{i}"), |spec| {
            spec["indicators"] = json!([{"type": type_, "value": value}]);
        });
        refused(&world, &object, "spec.indicators[0].value", says).await;
    }
    // A good value of each network type passes the schema and is delivered.
    let good = json!([
        {"type": "IpAddress", "value": "2001:db8::7"},
        {"type": "DomainName", "value": "evil.example.com"},
        {"type": "Url", "value": "https://evil.example.com/payload"},
    ]);
    apply(&world, &finding_json("network-good", |spec| spec["indicators"] = good)).await.unwrap();
    finding_ready_reason(&world, "network-good", "Delivered").await;

    // What a regex cannot tell (a domain over 253 characters; a URL's host or port): the schema
    // takes it, the reconciler refuses it, naming the field.
    let label = "a".repeat(63);
    let network = [
        ("long-domain", "DomainName", format!("{label}.{label}.{label}.{label}"), "is not a domain name"),
        ("url-bad-host", "Url", "https://999.1.1.1/".to_string(), "is not a URL"),
        ("url-bad-port", "Url", "https://evil.example.com:99999/".to_string(), "is not a URL"),
    ];
    for (name, type_, value, _) in &network {
        let object = finding_json(name, |spec| {
            spec["indicators"] = json!([{"type": "FileSha256", "value": sha256(8)}, {"type": type_, "value": value}]);
        });
        apply(&world, &object).await.unwrap_or_else(|e| panic!("{name}: the schema accepts it: {e}"));
    }
    for (name, _, _, says) in &network {
        let (finding, status, message) = finding_ready_reason(&world, name, "InvalidFinding").await;
        assert_eq!(status, "False");
        assert!(message.starts_with("spec.indicators[1].value: "), "{name}: names the field: {message}");
        assert!(message.contains(says) && message.contains("fix the finding"), "{name}: says what to fix: {message}");
        assert!(finding.status.unwrap().deliveries.is_empty(), "{name}: nothing is delivered");
    }

    the_good_finding_is_still_delivered(&world, 101).await;
    // The control and the good network values; not even the valid first indicator of an invalid
    // finding is pushed.
    let mut expected: Vec<String> =
        [&sha256(101), "2001:db8::7", "evil.example.com", "https://evil.example.com/payload"].map(String::from).into();
    expected.sort();
    assert_eq!(world.indicator_values(sv::TENANT_ID), expected);
}

// ---------------------------------------------------------------------------------------------
// 3. Upper-case hashes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn upper_case_hashes_are_stored_lower_case_without_duplicates() {
    let world = world_with_good_partner().await;
    world.attached(NS, GOOD).await;
    let sha256_lower = sha256(0xabcdef12);
    let sha1_lower = sha256(0xfedcba98)[..40].to_string();
    let md5_lower = sha256(0x0badcafe)[..32].to_string();
    let mixed = |s: &str| {
        s.char_indices().map(|(i, c)| if i % 2 == 0 { c.to_ascii_uppercase() } else { c }).collect::<String>()
    };
    let upper = json!([
        {"type": "FileSha256", "value": sha256_lower.to_uppercase()},
        {"type": "FileSha1", "value": sha1_lower.to_uppercase()},
        {"type": "FileMd5", "value": mixed(&md5_lower)},
        // The same hash twice in one finding, in two spellings: one indicator.
        {"type": "FileSha256", "value": mixed(&sha256_lower)},
    ]);
    apply(&world, &finding_json("upper", |spec| spec["indicators"] = upper)).await.unwrap();
    let (finding, _, _) = finding_ready_reason(&world, "upper", "Delivered").await;
    let first = delivery(&finding, GOOD).unwrap().clone();
    assert_eq!(first.state, DeliveryState::Submitted);
    let shown: BTreeSet<&str> = first.indicators.iter().map(|i| i.value.as_str()).collect();
    assert_eq!(shown, BTreeSet::from([sha256_lower.as_str(), sha1_lower.as_str(), md5_lower.as_str()]));
    for value in [&sha256_lower, &sha1_lower, &md5_lower] {
        assert_eq!(held(&world, sv::TENANT_ID, value), 1, "{value} is in Defender once, lower-case");
    }
    assert_eq!(world.indicators().len(), 3, "no upper-case copy: {:?}", world.indicator_values(sv::TENANT_ID));

    // The same hashes arrive lower-case in another finding: nothing new is sent.
    world.defender.clear_calls();
    let lower = json!([
        {"type": "FileSha256", "value": sha256_lower},
        {"type": "FileSha1", "value": sha1_lower},
        {"type": "FileMd5", "value": md5_lower},
    ]);
    apply(&world, &finding_json("lower", |spec| spec["indicators"] = lower)).await.unwrap();
    let (finding, _, _) = finding_ready_reason(&world, "lower", "Delivered").await;
    let second = delivery(&finding, GOOD).unwrap();
    assert_eq!(second.state, DeliveryState::Submitted);
    let ids = |d: &defender_operator::api::Delivery| {
        d.indicators.iter().map(|i| (i.value.clone(), i.id.clone())).collect::<BTreeSet<_>>()
    };
    assert_eq!(ids(second), ids(&first), "the same Defender indicators");
    let writes: Vec<_> = world.defender.calls().into_iter().filter(is_write).collect();
    assert!(writes.is_empty(), "the lower-case duplicates were sent again: {writes:?}");

    the_good_finding_is_still_delivered(&world, 102).await;
    assert_eq!(world.indicators().len(), 4);
}

// ---------------------------------------------------------------------------------------------
// 4. Indicator count
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn more_than_64_or_zero_indicators_are_refused() {
    let world = world_with_good_partner().await;
    let many = |n: u32| (0..n).map(|i| json!({"type": "FileSha256", "value": sha256(1000 + i)})).collect::<Vec<_>>();
    let too_many = finding_json("sixty-five", |spec| spec["indicators"] = json!(many(65)));
    refused(&world, &too_many, "spec.indicators", "must have at most 64 items").await;
    let none = finding_json("zero", |spec| spec["indicators"] = json!([]));
    refused(&world, &none, "spec.indicators", "should have at least 1 items").await;
    let absent_list = finding_json("null-list", |spec| spec["indicators"] = Value::Null);
    refused(&world, &absent_list, "spec.indicators", "Required value").await;

    // The boundary: exactly 64 are accepted and all pushed.
    apply(&world, &finding_json("sixty-four", |spec| spec["indicators"] = json!(many(64)))).await.unwrap();
    let (finding, _, _) = finding_ready_reason(&world, "sixty-four", "Delivered").await;
    assert_eq!(delivery(&finding, GOOD).unwrap().indicators.len(), 64);

    the_good_finding_is_still_delivered(&world, 103).await;
    let mut expected: Vec<String> = (0..64).map(|i| sha256(1000 + i)).chain([sha256(103)]).collect();
    expected.sort();
    assert_eq!(world.indicator_values(sv::TENANT_ID), expected);
}

// ---------------------------------------------------------------------------------------------
// 5. Very long strings
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn very_long_strings_are_refused_by_the_schema_bounds() {
    let world = world_with_good_partner().await;
    let huge = "x".repeat(100 * 1024);
    // (object, field, bound) — every bounded free-text field, 100 KB long.
    let finding_cases: Vec<(&str, Edit, &str, usize)> = vec![
        ("test-name", Box::new(|s: &mut Value| s["test"]["name"] = json!(huge)), "spec.test.name", 200),
        ("hostname", Box::new(|s: &mut Value| s["endpoint"]["hostname"] = json!(huge)), "spec.endpoint.hostname", 253),
        ("endpoint-id", Box::new(|s: &mut Value| s["endpoint"]["id"] = json!(huge)), "spec.endpoint.id", 253),
        ("platform", Box::new(|s: &mut Value| s["endpoint"]["platform"] = json!(huge)), "spec.endpoint.platform", 64),
        ("file", Box::new(|s: &mut Value| s["indicators"][0]["file"] = json!(huge)), "spec.indicators[0].file", 1024),
        (
            "url",
            Box::new(|s: &mut Value| s["indicators"] = json!([{"type": "Url", "value": format!("https://{huge}")}])),
            "spec.indicators[0].value",
            2048,
        ),
        ("partner-ref", Box::new(|s: &mut Value| s["partnerRef"] = json!({"name": huge})), "spec.partnerRef.name", 253),
    ];
    for (name, edit, field, bound) in finding_cases {
        let object = finding_json(name, |spec| edit(spec));
        refused(&world, &object, field, &format!("Too long: may not be more than {bound}")).await;
    }
    let partner_cases: Vec<(&str, Edit, &str, usize)> = vec![
        (
            "title-prefix",
            Box::new(|s: &mut Value| s["indicator"] = json!({"titlePrefix": huge})),
            "spec.indicator.titlePrefix",
            100,
        ),
        (
            "recommended-actions",
            Box::new(|s: &mut Value| s["indicator"] = json!({"recommendedActions": huge})),
            "spec.indicator.recommendedActions",
            1000,
        ),
        (
            "secret-name",
            Box::new(|s: &mut Value| s["credentials"]["secretRef"]["name"] = json!(huge)),
            "spec.credentials.secretRef.name",
            253,
        ),
    ];
    for (name, edit, field, bound) in partner_cases {
        let object = partner_json(&world, name, |spec| edit(spec));
        refused(&world, &object, field, &format!("Too long: may not be more than {bound}")).await;
    }
    // Names far beyond Kubernetes' limit (253).
    let long_name = "a".repeat(300);
    let finding = finding_json(&long_name, |_| {});
    refused(&world, &finding, "metadata.name", "a lowercase RFC 1123 subdomain").await;
    let partner = partner_json(&world, &long_name, |_| {});
    refused(&world, &partner, "metadata.name", "a lowercase RFC 1123 subdomain").await;

    // Bounds Kubernetes and Defender imply: a URL of 2048, Secret data keys of 253, device group
    // names of 256, durations of 32. Refused by the schema, never a 100 KB status message.
    let more_partner_cases: Vec<(&str, Edit, &str, usize)> = vec![
        ("long-api", Box::new(|s: &mut Value| s["api"] = json!(format!("https://{huge}.example"))), "spec.api", 2048),
        (
            "long-tenant-key",
            Box::new(|s: &mut Value| s["credentials"]["secretRef"]["tenantIdKey"] = json!(huge)),
            "spec.credentials.secretRef.tenantIdKey",
            253,
        ),
        (
            "long-client-key",
            Box::new(|s: &mut Value| s["credentials"]["secretRef"]["clientIdKey"] = json!(huge)),
            "spec.credentials.secretRef.clientIdKey",
            253,
        ),
        (
            "long-secret-key",
            Box::new(|s: &mut Value| s["credentials"]["secretRef"]["clientSecretKey"] = json!(huge)),
            "spec.credentials.secretRef.clientSecretKey",
            253,
        ),
        (
            "long-group",
            Box::new(|s: &mut Value| s["indicator"] = json!({"rbacGroupNames": ["Tier 0", huge]})),
            "spec.indicator.rbacGroupNames[1]",
            256,
        ),
        (
            "long-expire-after",
            Box::new(|s: &mut Value| s["indicator"] = json!({"expireAfter": "1h".repeat(17)})),
            "spec.indicator.expireAfter",
            32,
        ),
        (
            "long-revalidate",
            Box::new(|s: &mut Value| s["revalidateInterval"] = json!("1h".repeat(17))),
            "spec.revalidateInterval",
            32,
        ),
    ];
    for (name, edit, field, bound) in more_partner_cases {
        let object = partner_json(&world, name, |spec| edit(spec));
        refused(&world, &object, field, &format!("Too long: may not be more than {bound}")).await;
    }
    // A Secret key name Kubernetes would never allow (it could only ever be SecretKeyMissing).
    for (i, key) in ["client secret", "a/b", "key:1"].into_iter().enumerate() {
        let object = partner_json(&world, &format!("bad-key-{i}"), |spec| {
            spec["credentials"]["secretRef"]["clientSecretKey"] = json!(key);
        });
        refused(&world, &object, "spec.credentials.secretRef.clientSecretKey", "should match").await;
    }
    // More device groups than an indicator carries.
    let groups: Vec<String> = (0..101).map(|i| format!("group-{i}")).collect();
    let many_groups = partner_json(&world, "many-groups", |spec| spec["indicator"] = json!({"rbacGroupNames": groups}));
    refused(&world, &many_groups, "spec.indicator.rbacGroupNames", "must have at most 100 items").await;
    // At the bounds: accepted, and the partner attaches (it selects no finding here).
    let at_bounds_partner = partner_json(&world, "partner-at-bounds", |spec| {
        let mut groups: Vec<String> = (0..99).map(|i| format!("g{i}")).collect();
        groups.push("G".repeat(256));
        spec["indicator"] = json!({"rbacGroupNames": groups, "expireAfter": "87600h"});
        spec["findingSelector"] = json!({"matchLabels": {"to": "partner-at-bounds"}});
    });
    apply(&world, &at_bounds_partner).await.expect("values at the bounds are accepted");
    world.attached(NS, "partner-at-bounds").await;

    // At the bounds everything is accepted and pushed; the title is prefix + full test name.
    let name_200 = "N".repeat(200);
    let at_bounds = finding_json("at-bounds", |spec| {
        spec["test"]["name"] = json!(name_200);
        spec["endpoint"] = json!({"hostname": "h".repeat(253), "id": "i".repeat(253), "platform": "p".repeat(64)});
        spec["indicators"] = json!([{"type": "FileSha256", "value": sha256(55), "file": "f".repeat(1024)}]);
    });
    apply(&world, &at_bounds).await.unwrap();
    finding_ready_reason(&world, "at-bounds", "Delivered").await;
    let pushed = world.indicators().into_iter().find(|i| i["indicatorValue"] == sha256(55)).unwrap();
    assert_eq!(pushed["title"], format!("Detect: {name_200}"));
    assert!(pushed["description"].as_str().unwrap().contains(&"h".repeat(253)), "the hostname is in the description");

    the_good_finding_is_still_delivered(&world, 104).await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(55), sha256(104)]);
}

// ---------------------------------------------------------------------------------------------
// 6. Unicode in free text
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unicode_free_text_is_pushed_with_a_sane_title_and_description() {
    let world = world().await;
    world.good_secret(NS, "good-creds").await;
    world.partner(NS, GOOD, "good-creds", json!({"indicator": {"titlePrefix": "Détection 🛡 "}})).await;
    let test_name = "Wird ein bösartiges Office-Dokument in Quarantäne verschoben? 日本語 😈 עברית";
    let hostname = "ノートPC-7.büro.example";
    apply(
        &world,
        &finding_json("unicode", |spec| {
            spec["test"]["name"] = json!(test_name);
            spec["endpoint"]["hostname"] = json!(hostname);
            spec["indicators"] = json!([{"type": "FileSha256", "value": sha256(66), "file": "böse.exe"}]);
        }),
    )
    .await
    .unwrap();
    // Control characters in free text never reach Defender's title or description.
    let tricky_name = "line one\nline two\ttabbed\u{7}bell\u{202e}reversed";
    apply(
        &world,
        &finding_json("control-chars", |spec| {
            spec["test"]["name"] = json!(tricky_name);
            spec["endpoint"]["hostname"] = json!("host\r\nInjected: header");
            spec["indicators"] = json!([{"type": "FileSha256", "value": sha256(67)}]);
        }),
    )
    .await
    .unwrap();

    let (finding, _, _) = finding_ready_reason(&world, "unicode", "Delivered").await;
    assert_eq!(finding.spec.test.name, test_name, "stored as given");
    let pushed = world.indicators().into_iter().find(|i| i["indicatorValue"] == sha256(66)).unwrap();
    assert_eq!(pushed["title"], format!("Détection 🛡 {test_name}"));
    assert_eq!(
        pushed["description"],
        format!(
            "Security test {test_name} ({TEST_ID}) ran UNPROTECTED on {hostname}. Finding default/unicode; \
             pushed by defender-operator for partner default/good."
        )
    );

    finding_ready_reason(&world, "control-chars", "Delivered").await;
    let pushed = world.indicators().into_iter().find(|i| i["indicatorValue"] == sha256(67)).unwrap();
    for field in ["title", "description"] {
        let text = pushed[field].as_str().unwrap();
        assert!(!text.chars().any(char::is_control), "{field} holds control characters: {text:?}");
        assert!(!text.contains('\u{202e}'), "{field} holds a bidi override: {text:?}");
    }
    assert_eq!(pushed["title"], "Détection 🛡 line one line two tabbed bell reversed");

    the_good_finding_is_still_delivered(&world, 105).await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(66), sha256(67), sha256(105)]);
}

// ---------------------------------------------------------------------------------------------
// 7. Missing required fields
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn missing_required_fields_are_refused_by_the_schema() {
    let world = world_with_good_partner().await;
    let remove = |spec: &mut Value, path: &[&str]| {
        let (last, parents) = path.split_last().unwrap();
        let mut at = spec;
        for key in parents {
            at = &mut at[*key];
        }
        at.as_object_mut().unwrap().remove(*last);
    };
    for (i, (path, field)) in [
        (&["indicators"][..], "spec.indicators"),
        (&["test"], "spec.test"),
        (&["test", "id"], "spec.test.id"),
        (&["test", "name"], "spec.test.name"),
    ]
    .into_iter()
    .enumerate()
    {
        let object = finding_json(&format!("missing-{i}"), |spec| remove(spec, path));
        refused(&world, &object, field, "Required value").await;
    }
    let no_type = finding_json("missing-type", |spec| remove(&mut spec["indicators"][0], &["type"]));
    refused(&world, &no_type, "spec.indicators[0].type", "Required value").await;
    let no_value = finding_json("missing-value", |spec| remove(&mut spec["indicators"][0], &["value"]));
    refused(&world, &no_value, "spec.indicators[0].value", "Required value").await;
    let no_ref_name = finding_json("missing-ref-name", |spec| spec["partnerRef"] = json!({}));
    refused(&world, &no_ref_name, "spec.partnerRef.name", "Required value").await;
    let empty_name = finding_json("empty-test-name", |spec| spec["test"]["name"] = json!(""));
    refused(&world, &empty_name, "spec.test.name", "should be at least 1 chars long").await;
    let bad_id = finding_json("bad-test-id", |spec| spec["test"]["id"] = json!("not-a-uuid"));
    refused(&world, &bad_id, "spec.test.id", "should match").await;
    // Neither state nor code: the CEL rule says which to set.
    let no_result = finding_json("no-result", |spec| remove(spec, &["state"]));
    refused(&world, &no_result, "spec", "set spec.state (e.g. UNPROTECTED) or spec.code").await;
    let mut no_spec = finding_json("no-spec", |_| {});
    no_spec.as_object_mut().unwrap().remove("spec");
    refused(&world, &no_spec, "spec", "Required value").await;

    for (i, (path, field)) in [
        (&["credentials"][..], "spec.credentials"),
        (&["credentials", "secretRef"], "spec.credentials.secretRef"),
        (&["credentials", "secretRef", "name"], "spec.credentials.secretRef.name"),
    ]
    .into_iter()
    .enumerate()
    {
        let object = partner_json(&world, &format!("missing-{i}"), |spec| remove(spec, path));
        refused(&world, &object, field, "Required value").await;
    }
    let empty_secret = partner_json(&world, "empty-secret-name", |s| s["credentials"]["secretRef"]["name"] = json!(""));
    refused(&world, &empty_secret, "spec.credentials.secretRef.name", "should be at least 1 chars long").await;
    let mut no_spec = partner_json(&world, "no-spec", |_| {});
    no_spec.as_object_mut().unwrap().remove("spec");
    refused(&world, &no_spec, "spec", "Required value").await;

    the_good_finding_is_still_delivered(&world, 106).await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(106)]);
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), NS);
    let names: Vec<String> =
        partners.list(&ListParams::default()).await.unwrap().iter().filter_map(|p| p.metadata.name.clone()).collect();
    assert_eq!(names, [GOOD], "no refused partner was stored");
}

// ---------------------------------------------------------------------------------------------
// 8. Unknown enum values
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_enum_values_are_refused_by_the_schema() {
    let world = world_with_good_partner().await;
    let finding_cases = [
        ("type", "spec.indicators[0].type", "FileSha512", "\"FileSha256\""),
        ("type-lower", "spec.indicators[0].type", "filesha256", "\"FileSha256\""),
        ("state", "spec.state", "BROKEN", "\"UNPROTECTED\""),
        ("state-lower", "spec.state", "unprotected", "\"UNPROTECTED\""),
    ];
    for (name, field, value, supported) in finding_cases {
        let object = finding_json(name, |spec| match field {
            "spec.state" => spec["state"] = json!(value),
            _ => spec["indicators"][0]["type"] = json!(value),
        });
        let status = refused(&world, &object, field, &format!("Unsupported value: \"{value}\"")).await;
        assert!(status.message.contains(supported), "{name}: lists the supported values: {}", status.message);
    }
    // (name, field, spec overlay, what the cause says, one of the supported values it lists)
    let partner_cases = [
        ("deletion-policy", "spec.deletionPolicy", json!({"deletionPolicy": "Purge"}), "\"Purge\"", "\"Retain\""),
        ("cloud", "spec.cloud", json!({"cloud": "China"}), "\"China\"", "\"GCCHigh\""),
        ("cloud-lower", "spec.cloud", json!({"cloud": "commercial"}), "\"commercial\"", "\"Commercial\""),
        (
            "action",
            "spec.indicator.action",
            json!({"indicator": {"action": "Quarantine"}}),
            "\"Quarantine\"",
            "\"Audit\"",
        ),
        ("action-lower", "spec.indicator.action", json!({"indicator": {"action": "block"}}), "\"block\"", "\"Block\""),
        (
            "severity",
            "spec.indicator.severity",
            json!({"indicator": {"severity": "Critical"}}),
            "\"Critical\"",
            "\"High\"",
        ),
    ];
    for (name, field, overlay, value, supported) in partner_cases {
        let object = partner_json(&world, name, |spec| {
            for (key, v) in overlay.as_object().unwrap() {
                spec[key] = v.clone();
            }
        });
        let status = refused(&world, &object, field, &format!("Unsupported value: {value}")).await;
        assert!(status.message.contains(supported), "{name}: lists the supported values: {}", status.message);
    }
    let not_a_bool = partner_json(&world, "suspend", |spec| spec["suspend"] = json!("yes"));
    refused(&world, &not_a_bool, "spec.suspend", "must be of type boolean").await;
    // A selector operator Kubernetes does not know would select nothing, silently: refused.
    for (i, operator) in ["Equals", "in"].into_iter().enumerate() {
        let object = partner_json(&world, &format!("selector-{i}"), |spec| {
            spec["findingSelector"] =
                json!({"matchExpressions": [{"key": "team", "operator": operator, "values": ["red"]}]});
        });
        let field = "spec.findingSelector.matchExpressions[0].operator";
        let status = refused(&world, &object, field, &format!("Unsupported value: \"{operator}\"")).await;
        assert!(status.message.contains("\"DoesNotExist\""), "lists the supported operators: {}", status.message);
    }

    the_good_finding_is_still_delivered(&world, 107).await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(107)]);
}

// ---------------------------------------------------------------------------------------------
// 9. Unknown exit codes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_exit_codes_count_as_none_and_push_nothing() {
    let world = world_with_good_partner().await;
    world.attached(NS, GOOD).await;
    // Prelude's table: "anything else → NONE". NONE is not UNPROTECTED: nothing is pushed, the delivery
    // is Skipped and the finding is Ready (there is nothing to deliver).
    let codes = [0, 4, 99, 255, 257, 1000, -1, i32::MAX, i32::MIN];
    for (i, code) in codes.iter().enumerate() {
        let object = finding_json(&format!("code-{i}"), |spec| {
            spec.as_object_mut().unwrap().remove("state");
            spec["code"] = json!(code);
            spec["indicators"][0]["value"] = json!(sha256(2000 + i as u32));
        });
        apply(&world, &object).await.unwrap_or_else(|e| panic!("code {code} is accepted: {e}"));
    }
    // Not integers at all, or beyond what an exit code can be: refused by the schema. (Without
    // the bounds, a code the operator cannot read stalled the watch of every finding.)
    for (name, code, says) in [
        ("code-text", json!("101"), "must be of type integer"),
        ("code-fraction", json!(101.5), "must be of type integer"),
        ("code-too-big", json!(4_294_967_296_u64), "should be less than or equal to 2147483647"),
        ("code-too-small", json!(-2_147_483_649_i64), "should be greater than or equal to -2147483648"),
    ] {
        let object = finding_json(name, |spec| {
            spec.as_object_mut().unwrap().remove("state");
            spec["code"] = code;
        });
        refused(&world, &object, "spec.code", says).await;
    }
    for (i, code) in codes.iter().enumerate() {
        // Every delivery Skipped: nothing to deliver, which is what Ready says (not "Delivered").
        let (finding, status, message) = finding_ready_reason(&world, &format!("code-{i}"), "NothingToDeliver").await;
        assert_eq!(status, "True", "code {code}");
        assert_eq!(
            message,
            format!("nothing to push: exit code {code} is not in Prelude's exit-code table, so the result is NONE"),
            "code {code}: Ready spells the state as the API does"
        );
        let finding_status = finding.status.as_ref().unwrap();
        assert_eq!(finding_status.state, Some(TestState::None), "code {code} is NONE");
        let good = delivery(&finding, GOOD).unwrap();
        assert_eq!(good.state, DeliveryState::Skipped, "code {code}: nothing to push");
        assert!(good.indicators.iter().all(|i| i.id.is_none()), "code {code}: no Defender id");
        let expected =
            format!("nothing to push: exit code {code} is not in Prelude's exit-code table, so the result is NONE");
        assert_eq!(good.message.as_deref(), Some(expected.as_str()), "code {code}: the delivery says why");
    }

    // A state given as such is spelled as the API spells it too.
    apply(&world, &finding_json("not-relevant", |spec| spec["state"] = json!("NOT_RELEVANT"))).await.unwrap();
    let (_, _, message) = finding_ready_reason(&world, "not-relevant", "NothingToDeliver").await;
    assert_eq!(message, "nothing to push: the test was NOT_RELEVANT");

    the_good_finding_is_still_delivered(&world, 108).await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(108)], "no unknown code was pushed");
}

// ---------------------------------------------------------------------------------------------
// 10. Secret problems
// ---------------------------------------------------------------------------------------------

/// Writes a Secret from raw bytes (so values need not be UTF-8).
async fn raw_secret(world: &World, name: &str, data: &[(&str, &[u8])]) {
    let api: Api<Secret> = Api::namespaced(world.admin.clone(), NS);
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()),
        ..Default::default()
    };
    api.create(&PostParams::default(), &secret).await.expect("secret created");
}

#[tokio::test]
async fn secret_problems_detach_with_a_reason_naming_the_key() {
    let world = world_with_good_partner().await;
    // Recognisable values that must never show up outside their Secret.
    let canary = "LEAK-CANARY-client-secret-3f9a";
    let padded_canary = format!("  {}\n", sv::GOOD_APP_SECRET);
    let tenant = sv::TENANT_ID.as_bytes();
    // A real app of the tenant, used by no other partner: any call made for these would show.
    let app = sv::TI_OWN_APP_ID.as_bytes();
    // (partner and Secret name, Secret data, key overrides, reason, keys the message must name)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a [u8])>, Value, &'a str, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "key-missing",
            vec![("tenantId", tenant), ("clientId", app)],
            json!({}),
            "SecretKeyMissing",
            vec!["clientSecret"],
        ),
        (
            "keys-missing",
            vec![("clientSecret", canary.as_bytes())],
            json!({}),
            "SecretKeyMissing",
            vec!["tenantId", "clientId"],
        ),
        (
            "renamed-key-missing",
            vec![("tenantId", tenant), ("clientId", app), ("clientSecret", canary.as_bytes())],
            json!({"clientSecretKey": "password"}),
            "SecretKeyMissing",
            vec!["password"],
        ),
        (
            "value-empty",
            vec![("tenantId", tenant), ("clientId", app), ("clientSecret", &b""[..])],
            json!({}),
            "SecretKeyMissing",
            vec!["clientSecret"],
        ),
        (
            "value-blank",
            vec![("tenantId", &b" \n"[..]), ("clientId", app), ("clientSecret", canary.as_bytes())],
            json!({}),
            "SecretKeyMissing",
            vec!["tenantId"],
        ),
        (
            "value-not-utf8",
            vec![("tenantId", tenant), ("clientId", app), ("clientSecret", &[0x4c, 0x45, 0xff, 0xfe, 0x41, 0x4b])],
            json!({}),
            "SecretKeyInvalid",
            vec!["clientSecret"],
        ),
    ];
    for (name, data, keys, _, _) in &cases {
        raw_secret(&world, name, data).await;
        let mut secret_ref = json!({"name": name});
        for (key, value) in keys.as_object().unwrap() {
            secret_ref[key] = value.clone();
        }
        world.partner(NS, name, name, json!({"credentials": {"secretRef": secret_ref}})).await;
    }
    // Whitespace around the values (`echo` into a Secret adds a newline): trimmed and used.
    raw_secret(
        &world,
        "value-padded",
        &[
            ("tenantId", format!("{}\n", sv::TENANT_ID).as_bytes()),
            ("clientId", format!(" {} ", sv::GOOD_APP_ID).as_bytes()),
            ("clientSecret", padded_canary.as_bytes()),
        ],
    )
    .await;
    world
        .partner(NS, "value-padded", "value-padded", json!({"findingSelector": {"matchLabels": {"to": "padded"}}}))
        .await;

    for (name, _, _, reason, keys) in &cases {
        let partner = world.detached_with(NS, name, reason).await;
        let status = partner.status.unwrap();
        // Shown only with the secret values blanked, should a failure print it.
        let message = status.message.clone().unwrap_or_default().replace(canary, "<canary>");
        for key in keys {
            assert!(message.contains(key), "{name}: the message names {key}: {message}");
        }
        let fix = if *reason == "SecretKeyMissing" { "Add them" } else { "store the plain values" };
        assert!(message.contains(fix), "{name}: the message says how to fix it: {message}");
        assert!(message.contains(name), "{name}: the message names the Secret: {message}");
        let ready = find(&status.conditions, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", *reason), "{name}");
        assert_eq!(status.credentials_hash, None, "{name}: no hash of values that were never read");
    }
    let padded = world.attached(NS, "value-padded").await.status.unwrap();
    assert_eq!(
        (padded.tenant_id.as_deref(), padded.client_id.as_deref()),
        (Some(sv::TENANT_ID), Some(sv::GOOD_APP_ID)),
        "padding trimmed"
    );

    // No token was asked for with unreadable credentials.
    assert!(calls_of_app(&world, sv::TI_OWN_APP_ID).is_empty(), "a call was made with unreadable credentials");
    assert!(!calls_of_app(&world, sv::GOOD_APP_ID).is_empty(), "the call log records the app");

    // The detached partners select the control finding too: their deliveries wait, Ready does not.
    let control = the_good_finding_is_still_delivered(&world, 109).await;
    let detached: Vec<&str> = cases.iter().map(|(name, ..)| *name).collect();
    detached_deliveries_stay_pending(&control, &detached);
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(109)]);

    // Nothing readable outside the Secrets holds a secret value (the non-UTF-8 bytes included).
    let mut visible = String::new();
    for partner in
        Api::<DefenderPartner>::namespaced(world.admin.clone(), NS).list(&ListParams::default()).await.unwrap()
    {
        visible += &serde_json::to_string(&partner).unwrap();
    }
    for event in Api::<Event>::namespaced(world.admin.clone(), NS).list(&ListParams::default()).await.unwrap() {
        visible += &serde_json::to_string(&event).unwrap();
    }
    assert!(visible.contains("SecretKeyInvalid"), "the statuses and events were read");
    for (what, secret) in [("canary", canary), ("good secret", sv::GOOD_APP_SECRET), ("non-UTF-8 value", "LE\u{fffd}")]
    {
        assert!(!visible.contains(secret), "the {what} is visible in a status or an event");
    }
}

// ---------------------------------------------------------------------------------------------
// 11. Tenant given as a domain
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_tenant_given_as_a_domain_attaches_to_its_tenant_guid() {
    let world = world_with_good_partner().await;
    // README: "tenantId: <GUID> # or a verified domain"; status.tenantId is the GUID from the token.
    // These partners live in their own namespace, so the control finding stays the good partner's.
    let ns = "tenants";
    world.namespace(ns).await;
    let credentials = |tenant: &str| {
        [
            ("tenantId", tenant.to_string()),
            ("clientId", sv::GOOD_APP_ID.into()),
            ("clientSecret", sv::GOOD_APP_SECRET.into()),
        ]
    };
    let cases = [
        ("by-domain", sv::TENANT_DOMAIN.to_string()),
        ("by-domain-upper", sv::TENANT_DOMAIN.to_uppercase()),
        ("unknown-domain", "nosuch.onmicrosoft.com".to_string()),
        ("not-a-tenant", "contoso onmicrosoft/com".to_string()),
    ];
    for (name, tenant) in &cases {
        let data = credentials(tenant);
        let data: Vec<(&str, &str)> = data.iter().map(|(k, v)| (*k, v.as_str())).collect();
        world.secret(ns, name, &data).await;
        // Each receives only the findings labelled for it.
        world.partner(ns, name, name, json!({"findingSelector": {"matchLabels": {"to": name}}})).await;
    }

    for name in ["by-domain", "by-domain-upper"] {
        let status = world.attached(ns, name).await.status.unwrap();
        assert_eq!(status.tenant_id.as_deref(), Some(sv::TENANT_ID), "{name}: the canonical GUID, not the domain");
    }
    let token_paths: Vec<String> =
        world.defender.calls().into_iter().filter(|c| c.endpoint == Endpoint::TokenV2).map(|c| c.path).collect();
    assert!(
        token_paths.iter().any(|p| p.starts_with(&format!("/{}/oauth2/v2.0/token", sv::TENANT_DOMAIN))),
        "the domain was sent to Entra as given: {token_paths:?}"
    );
    let unknown = world.detached_with(ns, "unknown-domain", "TenantNotFound").await.status.unwrap();
    let message = unknown.message.unwrap_or_default();
    assert!(message.contains("nosuch.onmicrosoft.com"), "names the tenant: {message}");
    let invalid = world.detached_with(ns, "not-a-tenant", "TenantInvalid").await.status.unwrap();
    let message = invalid.message.unwrap_or_default();
    assert!(message.contains("neither a GUID nor a domain"), "says what is wrong: {message}");
    assert!(message.contains("key tenantId") && message.contains("tenantIdKey"), "names the Secret key: {message}");
    assert!(message.contains("store the directory (tenant) GUID"), "says how to fix it: {message}");
    assert!(!message.contains("contoso onmicrosoft"), "never echoes a Secret value: {message}");
    assert!(
        !token_paths.iter().any(|p| p.contains("contoso%20onmicrosoft") || p.contains("contoso onmicrosoft")),
        "a malformed tenant is never sent to Entra: {token_paths:?}"
    );

    // A finding through the domain partner lands in the tenant the domain names.
    world.finding(ns, "via-domain", &[sha256(77)], json!({"code": 101})).await;
    let findings: Api<ProbeFinding> = Api::namespaced(world.admin.clone(), ns);
    let label = json!({"metadata": {"labels": {"to": "by-domain"}}});
    findings.patch("via-domain", &PatchParams::default(), &Patch::Merge(label)).await.unwrap();
    let finding = world
        .wait_for(ns, "via-domain", WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| s.observed_generation == f.metadata.generation)
                && delivery(f, "by-domain").is_some_and(|d| d.state == DeliveryState::Submitted)
        })
        .await
        .unwrap();
    assert_eq!(finding.status.unwrap().deliveries.len(), 1);
    let pushed = world.indicators().into_iter().find(|i| i["indicatorValue"] == sha256(77)).unwrap();
    assert_eq!(pushed["externalId"], "tenants/by-domain");

    the_good_finding_is_still_delivered(&world, 110).await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(77), sha256(110)]);
}

// ---------------------------------------------------------------------------------------------
// 12. API hosts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn api_hosts_not_https_or_not_microsoft_get_no_token() {
    let world = world_with_good_partner().await;
    // Refused by the schema: plain http anywhere but loopback, no scheme, paths, other schemes.
    for (i, api) in [
        "http://api.securitycenter.microsoft.com",
        "http://eu.api.security.microsoft.com:443",
        "api.securitycenter.microsoft.com",
        "ftp://api.securitycenter.microsoft.com",
        "https://api.securitycenter.microsoft.com/api/indicators",
        "https://",
    ]
    .into_iter()
    .enumerate()
    {
        let object = partner_json(&world, &format!("schema-host-{i}"), |spec| spec["api"] = json!(api));
        refused(&world, &object, "spec.api", "should match").await;
    }

    // Accepted by the schema, refused by the operator's allow-list (http://127.0.0.1:* in the
    // sandbox): the emulator itself under another name, https to the allowed address, lookalikes.
    // These partners use the second tenant's app, so any call for them would show in the log.
    world
        .secret(
            NS,
            "tenant2-creds",
            &[("tenantId", sv::TENANT2_ID), ("clientId", sv::TENANT2_APP_ID), ("clientSecret", sv::TENANT2_APP_SECRET)],
        )
        .await;
    let port = world.defender.url().port().unwrap();
    let hosts = [
        ("http-localhost", format!("http://localhost:{port}"), "http://localhost"),
        ("http-ipv6-loopback", format!("http://[::1]:{port}"), "http://[::1]"),
        ("https-allowed-address", format!("https://127.0.0.1:{port}"), "https://127.0.0.1"),
        ("not-microsoft", "https://defender.evil.example".to_string(), "https://defender.evil.example"),
        (
            "lookalike",
            "https://api.securitycenter.microsoft.com.evil.example".to_string(),
            "https://api.securitycenter.microsoft.com.evil.example",
        ),
        ("lookalike-port", "https://api.securitycenter.microsoft.com:8443".to_string(), ":8443"),
    ];
    for (name, api, _) in &hosts {
        let object = partner_json(&world, name, |spec| {
            spec["api"] = json!(api);
            spec["credentials"]["secretRef"]["name"] = json!("tenant2-creds");
        });
        apply(&world, &object).await.unwrap_or_else(|e| panic!("{name}: the schema accepts {api}: {e}"));
    }
    for (name, _, origin) in &hosts {
        let status = world.detached_with(NS, name, "ApiHostNotAllowed").await.status.unwrap();
        let message = status.message.unwrap_or_default();
        assert!(message.contains(origin), "{name}: the message names the host: {message}");
        assert!(message.contains("allow-list") && message.contains("--api-allowlist"), "{name}: the fix: {message}");
        if origin.starts_with("http://") {
            assert!(message.contains("plain http is allowed only when listed explicitly"), "{name}: {message}");
        }
    }
    assert!(
        calls_of_app(&world, sv::TENANT2_APP_ID).is_empty(),
        "no token or API call was made for a partner whose host is not allowed"
    );
    let elsewhere: Vec<_> = world.defender.calls().into_iter().filter(|c| !c.host.starts_with("127.0.0.1:")).collect();
    assert!(elsewhere.is_empty(), "calls reached the emulator under another name: {elsewhere:?}");

    let control = the_good_finding_is_still_delivered(&world, 111).await;
    let detached: Vec<&str> = hosts.iter().map(|(name, ..)| *name).collect();
    detached_deliveries_stay_pending(&control, &detached);
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(111)]);
    assert!(world.indicator_values(sv::TENANT2_ID).is_empty());

    // The credentials were fine all along: pointed at an allowed host, the same partner attaches.
    let fixed = partner_json(&world, "not-microsoft", |spec| {
        spec["credentials"]["secretRef"]["name"] = json!("tenant2-creds");
    });
    apply(&world, &fixed).await.unwrap();
    world.attached(NS, "not-microsoft").await;
    assert!(!calls_of_app(&world, sv::TENANT2_APP_ID).is_empty(), "the call log shows the partner's calls now");
}

// ---------------------------------------------------------------------------------------------
// 13. Missing partner
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_finding_naming_a_missing_partner_says_partner_not_found() {
    let world = world_with_good_partner().await;
    world.namespace("elsewhere").await;
    world.good_secret("elsewhere", "creds").await;
    // A partner of that name exists, but in another namespace: references never cross namespaces.
    world.partner("elsewhere", "late", "creds", json!({})).await;
    world.attached("elsewhere", "late").await;
    apply(&world, &finding_json("pinned", |spec| spec["partnerRef"] = json!({"name": "late"}))).await.unwrap();

    let (finding, status, message) = finding_ready_reason(&world, "pinned", "PartnerNotFound").await;
    assert_eq!(status, "False");
    assert!(message.contains("spec.partnerRef") && message.contains("\"late\""), "names the field: {message}");
    assert!(message.contains("does not exist in this namespace"), "says what is wrong: {message}");
    assert!(finding.status.unwrap().deliveries.is_empty(), "not delivered to the good partner either");

    the_good_finding_is_still_delivered(&world, 112).await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(112)], "the pinned finding went nowhere");

    // The partner it names is created, but its selector leaves the finding out: still not
    // delivered, and the message says the partner exists and why it does not receive it.
    world.partner(NS, "late", "good-creds", json!({"findingSelector": {"matchLabels": {"team": "red"}}})).await;
    world.attached(NS, "late").await;
    let finding = world
        .wait_for(NS, "pinned", WAIT, |f: &ProbeFinding| {
            f.status.as_ref().and_then(|s| find(&s.conditions, READY)).is_some_and(|c| c.message.contains("exists"))
        })
        .await
        .unwrap_or_else(|e| panic!("the pinned finding should say its partner exists: {}", clip(&e.to_string())));
    let ready = find(&finding.status.as_ref().unwrap().conditions, READY).unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "PartnerNotFound"));
    assert!(!ready.message.contains("does not exist"), "the partner exists: {}", ready.message);
    assert!(
        ready.message.contains("spec.partnerRef names DefenderPartner \"late\", which exists but does not receive")
            && ready.message.contains("spec.findingSelector (team=red) does not match this finding's labels"),
        "says why: {}",
        ready.message
    );
    assert!(ready.message.contains("label the finding to match"), "says how to fix it: {}", ready.message);
    assert!(finding.status.unwrap().deliveries.is_empty());
    assert_eq!(held(&world, sv::TENANT_ID, &sha256(900)), 0, "not pushed");

    // The fix: the selector goes (applied without it); the finding is then delivered there, and
    // only there.
    world.partner(NS, "late", "good-creds", json!({})).await;
    let (finding, _, _) = finding_ready_reason(&world, "pinned", "Delivered").await;
    let partners: Vec<&str> = finding.status.as_ref().unwrap().deliveries.iter().map(|d| d.partner.as_str()).collect();
    assert_eq!(partners, ["late"]);
    assert_eq!(held(&world, sv::TENANT_ID, &sha256(900)), 1);
    world.attached(NS, GOOD).await;
}

// ---------------------------------------------------------------------------------------------
// 14. Durations out of range
// ---------------------------------------------------------------------------------------------

/// The partner CRD as it was before its duration maxima were CEL rules.
async fn without_duration_rules(world: &World) {
    let crds = ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        "customresourcedefinitions",
    );
    let crds: Api<DynamicObject> = Api::all_with(world.admin.clone(), &crds);
    let mut crd = crds.get("defenderpartners.detect.dev").await.unwrap();
    let spec = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties";
    for field in ["indicator/properties/expireAfter", "revalidateInterval"] {
        let field = crd.data.pointer_mut(&format!("{spec}/{field}")).and_then(Value::as_object_mut).unwrap();
        assert!(field.remove("x-kubernetes-validations").is_some(), "the CRD should carry the rule being removed");
    }
    crds.replace("defenderpartners.detect.dev", &PostParams::default(), &crd).await.unwrap();
}

#[tokio::test]
async fn bad_endpoints_and_correlation_settings_are_refused_naming_the_field() {
    let world = world_with_good_partner().await;
    for (i, (field, value)) in
        [("ipAddress", json!("10.0.0.300")), ("ipAddress", json!("laptop-7")), ("machineId", json!("laptop-7"))]
            .into_iter()
            .enumerate()
    {
        let object = finding_json(&format!("endpoint-{i}"), |spec| spec["endpoint"][field] = value.clone());
        refused(&world, &object, &format!("spec.endpoint.{field}"), "should match").await;
    }
    for (i, (field, value, says)) in [
        ("interval", json!("1s"), "between 5s and 24h"),
        ("interval", json!("25h"), "between 5s and 24h"),
        ("alertWindow", json!("30s"), "between 1m and 720h"),
        ("alertWindow", json!("721h"), "between 1m and 720h"),
        ("alertWindow", json!("two hours"), "should match"),
        ("machineTag", json!(""), "should be at least 1 chars long"),
        ("machineTag", json!("t".repeat(201)), "Too long: may not be more than 200"),
    ]
    .into_iter()
    .enumerate()
    {
        let object =
            partner_json(&world, &format!("correlation-{i}"), |spec| spec["correlation"] = json!({field: value}));
        refused(&world, &object, &format!("spec.correlation.{field}"), says).await;
    }
    the_good_finding_is_still_delivered(&world, 50).await;
}

#[tokio::test]
async fn durations_out_of_range_are_refused_naming_the_field() {
    let world = world_with_good_partner().await;
    // Numbers no clock holds, or too long to be a duration at all: refused by the schema (each
    // number has at most 7 digits), never read as "never expires" or as the 1h default.
    for (i, (field, value)) in [
        ("spec.indicator.expireAfter", "99999999999999999999999h"),
        ("spec.indicator.expireAfter", "10000000h"),
        ("spec.indicator.expireAfter", "1.1234567890h"),
        ("spec.revalidateInterval", "99999999999999999999999h"),
        ("spec.revalidateInterval", "1h99999999m"),
    ]
    .into_iter()
    .enumerate()
    {
        let object = partner_json(&world, &format!("duration-{i}"), |spec| match field {
            "spec.revalidateInterval" => spec["revalidateInterval"] = json!(value),
            _ => spec["indicator"] = json!({"expireAfter": value}),
        });
        refused(&world, &object, field, "should match").await;
    }

    // Readable, but over the maximum (ten years; a week): the schema's CEL rule refuses it.
    let over_expiry = partner_json(&world, "over-expiry", |spec| spec["indicator"] = json!({"expireAfter": "87601h"}));
    refused(&world, &over_expiry, "spec.indicator.expireAfter", "at most 87600h").await;
    let over_interval = partner_json(&world, "over-interval", |spec| spec["revalidateInterval"] = json!("169h"));
    refused(&world, &over_interval, "spec.revalidateInterval", "at most 168h").await;

    // A partner stored before that rule (an older CRD; here the rules removed) is the operator's to
    // refuse: nothing is pushed without an expiry, and the finding says which partner field is
    // wrong and what the maximum is. (In a namespace of its own, so the good partner does not
    // receive the finding as well.)
    without_duration_rules(&world).await;
    let ns = "durations";
    world.namespace(ns).await;
    world.good_secret(ns, "creds").await;
    world.partner(ns, "long-expiry", "creds", json!({"indicator": {"expireAfter": "87601h"}})).await;
    let partner = world.detached_with(ns, "long-expiry", "InvalidSpec").await;
    assert_eq!(
        partner.status.unwrap().message.as_deref(),
        Some("spec.indicator.expireAfter: 87601h is more than the maximum, 87600h; set a shorter duration")
    );
    world.partner(ns, "slow-check", "creds", json!({"revalidateInterval": "169h"})).await;
    let partner = world.detached_with(ns, "slow-check", "InvalidSpec").await;
    assert!(partner.status.unwrap().message.unwrap().contains("spec.revalidateInterval: 169h"));
    world.finding(ns, "long-expiry", &[sha256(140)], json!({"state": "UNPROTECTED"})).await;
    let ready_with = |reason: &'static str| {
        move |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| {
                s.observed_generation == f.metadata.generation
                    && find(&s.conditions, READY).is_some_and(|c| c.reason == reason)
            })
        }
    };
    let finding = world
        .wait_for(ns, "long-expiry", WAIT, ready_with("DeliveryFailed"))
        .await
        .unwrap_or_else(|e| panic!("the finding should be DeliveryFailed: {}", clip(&e.to_string())));
    let ready = find(&finding.status.as_ref().unwrap().conditions, READY).unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(
        ready.message,
        "partner long-expiry: spec.indicator.expireAfter: 87601h is more than the maximum, 87600h; set a shorter \
         duration"
    );
    let failed = delivery(&finding, "long-expiry").unwrap();
    assert_eq!(failed.state, DeliveryState::Failed);
    assert!(failed.indicators.iter().all(|i| i.id.is_none()), "no Defender id: {failed:?}");
    assert_eq!(delivery(&finding, "slow-check").unwrap().state, DeliveryState::Pending);
    assert_eq!(held(&world, sv::TENANT_ID, &sha256(140)), 0, "nothing pushed with an unusable expiry");

    the_good_finding_is_still_delivered(&world, 113).await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(113)]);

    // The fix: the maximum itself. Pushed, expiring ten years after the observation.
    world.partner(ns, "long-expiry", "creds", json!({"indicator": {"expireAfter": "87600h"}})).await;
    let finding = world
        .wait_for(ns, "long-expiry", WAIT, ready_with("Delivered"))
        .await
        .unwrap_or_else(|e| panic!("the finding should be Delivered: {}", clip(&e.to_string())));
    assert_eq!(delivery(&finding, "long-expiry").unwrap().state, DeliveryState::Submitted);
    let pushed = world.indicators().into_iter().find(|i| i["indicatorValue"] == sha256(140)).unwrap();
    let observed = finding.metadata.creation_timestamp.unwrap().0;
    let expected = observed.checked_add(jiff::SignedDuration::from_hours(87600)).unwrap();
    let expires: jiff::Timestamp = pushed["expirationTime"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires.as_second(), expected.as_second(), "{}", pushed["expirationTime"]);
}
