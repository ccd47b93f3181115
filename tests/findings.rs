//! ProbeFinding against the sandbox: what is pushed, once, with the partner's settings; what is
//! not; selection; withdrawal by deletionPolicy. Invalid findings are in tests/bad_input.rs.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use common::*;
use defender_operator::api::{DefenderPartner, DeliveryState, ProbeFinding};
use defender_sandbox::emulator::Endpoint;
use defender_sandbox::emulator::sandbox_values as sv;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;

fn delivery_state(finding: &ProbeFinding, partner: &str) -> Option<DeliveryState> {
    finding.status.as_ref()?.deliveries.iter().find(|d| d.partner == partner).map(|d| d.state)
}

#[tokio::test]
async fn unprotected_findings_are_pushed_once_with_the_partner_settings() {
    let world = world().await;
    world.good_secret("default", "creds").await;
    world
        .partner("default", "defender", "creds", json!({"indicator": {"action": "Audit", "severity": "Medium", "expireAfter": "48h", "titlePrefix": "BAS: "}}))
        .await;
    world.attached("default", "defender").await;

    let (by_state, by_code) = (sha256(1), sha256(2));
    world
        .finding(
            "default",
            "by-state",
            &[by_state.to_uppercase()],
            json!({"state": "UNPROTECTED", "observedTime": "2030-01-01T00:00:00Z"}),
        )
        .await;
    world.finding("default", "by-code", std::slice::from_ref(&by_code), json!({"code": 101})).await;

    for name in ["by-state", "by-code"] {
        let finding = world.ready_finding("default", name).await;
        let status = finding.status.unwrap();
        assert_eq!(status.deliveries.len(), 1);
        let delivery = &status.deliveries[0];
        assert_eq!(delivery.state, DeliveryState::Submitted, "{name}");
        assert!(delivery.indicators.iter().all(|i| i.id.is_some()), "{name}: Defender ids recorded");
        assert!(delivery.submitted_time.is_some());
        assert_eq!(status.delivered.as_deref(), Some("1/1"));
    }

    let indicators = world.indicators();
    assert_eq!(
        world.indicator_values(sv::TENANT_ID),
        vec![by_state.clone(), by_code.clone()]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    let pushed =
        indicators.iter().find(|i| i["indicatorValue"].as_str().unwrap().eq_ignore_ascii_case(&by_state)).unwrap();
    assert_eq!(pushed["indicatorValue"], by_state, "stored lower-case");
    assert_eq!(pushed["indicatorType"], "FileSha256");
    assert_eq!(pushed["action"], "Audit");
    assert_eq!(pushed["generateAlert"], true, "Audit forces alerts");
    assert_eq!(pushed["severity"], "Medium");
    assert_eq!(pushed["application"], "defender-operator");
    assert_eq!(pushed["externalId"], "default/defender");
    assert_eq!(pushed["title"], "BAS: Will a malicious Office document be quarantined?");
    assert!(pushed["expirationTime"].as_str().unwrap().starts_with("2030-01-03T00:00:00"), "{pushed}");

    // Exactly once, even after more passes and a restart of the operator.
    let mut world = world;
    world.operator.take().unwrap().stop().await;
    world.defender.clear_calls();
    world.operator = Some(world.start_operator());
    world.attached("default", "defender").await;
    eventually("engine re-read Defender", WAIT, || {
        world.defender.calls().iter().any(|c| c.endpoint == Endpoint::ListIndicators)
    })
    .await;
    world.ready_finding("default", "by-state").await;
    assert_eq!(world.indicators().len(), 2);
    let writes: Vec<_> = world
        .defender
        .calls()
        .into_iter()
        .filter(|c| matches!(c.endpoint, Endpoint::ImportIndicators | Endpoint::SubmitIndicator))
        .collect();
    assert!(writes.is_empty(), "a restart re-sent indicators: {writes:?}");
}

#[tokio::test]
async fn other_states_push_nothing() {
    let world = world().await;
    world.attached_partner("default", "defender", json!({})).await;
    world.finding("default", "protected", &[sha256(1)], json!({"state": "PROTECTED"})).await;
    world.finding("default", "not-relevant", &[sha256(2)], json!({"code": 104})).await;
    world.finding("default", "error", &[sha256(3)], json!({"code": 256})).await;
    world.finding("default", "unknown-code", &[sha256(4)], json!({"code": 4242})).await;
    world.finding("default", "unprotected", &[sha256(5)], json!({"code": 101})).await;

    world.ready_finding("default", "unprotected").await;
    for name in ["protected", "not-relevant", "error", "unknown-code"] {
        let finding = world.ready_finding("default", name).await;
        assert_eq!(delivery_state(&finding, "defender"), Some(DeliveryState::Skipped), "{name}");
    }
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(5)]);
}

#[tokio::test]
async fn two_partners_both_get_it_and_selection_is_respected() {
    let world = world().await;
    world.good_secret("default", "creds").await;
    world
        .secret(
            "default",
            "creds2",
            &[("tenantId", sv::TENANT2_ID), ("clientId", sv::TENANT2_APP_ID), ("clientSecret", sv::TENANT2_APP_SECRET)],
        )
        .await;
    world.partner("default", "first", "creds", json!({})).await;
    world.partner("default", "second", "creds2", json!({"findingSelector": {"matchLabels": {"team": "red"}}})).await;
    world.attached("default", "first").await;
    world.attached("default", "second").await;

    // Labelled red: both partners. Unlabelled: only the first. Pinned to second: only second.
    world.finding("default", "red", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    let findings: Api<ProbeFinding> = Api::namespaced(world.admin.clone(), "default");
    findings
        .patch(
            "red",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {"team": "red"}}})),
        )
        .await
        .unwrap();
    world.finding("default", "plain", &[sha256(2)], json!({"state": "UNPROTECTED"})).await;
    world
        .finding("default", "pinned", &[sha256(3)], json!({"state": "UNPROTECTED", "partnerRef": {"name": "second"}}))
        .await;
    // Pinned findings still need the selector of the partner they name.
    let red_label = json!({"metadata": {"labels": {"team": "red"}}});
    findings.patch("pinned", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(red_label)).await.unwrap();

    let red = world
        .wait_for("default", "red", WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| s.delivered.as_deref() == Some("2/2"))
        })
        .await
        .unwrap();
    assert_eq!(delivery_state(&red, "second"), Some(DeliveryState::Submitted));
    world.ready_finding("default", "plain").await;
    let pinned = world.ready_finding("default", "pinned").await;
    assert_eq!(pinned.status.unwrap().deliveries.iter().map(|d| d.partner.as_str()).collect::<Vec<_>>(), ["second"]);

    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(1), sha256(2)]);
    assert_eq!(world.indicator_values(sv::TENANT2_ID), vec![sha256(1), sha256(3)]);
}

#[tokio::test]
async fn a_value_owned_by_someone_else_is_reported_external_and_left_alone() {
    let world = world().await;
    let foreign = world.defender.insert_indicator(
        sv::TENANT_ID,
        json!({"indicatorValue": sha256(9), "indicatorType": "FileSha256", "action": "Allowed", "title": "portal",
               "description": "added by hand", "application": "portal"}),
    );
    world.attached_partner("default", "defender", json!({"deletionPolicy": "Delete"})).await;
    world.finding("default", "f", &[sha256(9)], json!({"state": "UNPROTECTED"})).await;

    let finding = world.ready_finding("default", "f").await;
    let delivery = &finding.status.unwrap().deliveries[0];
    assert_eq!(delivery.state, DeliveryState::External);
    assert_eq!(delivery.indicators[0].id.as_deref(), Some(foreign.as_str()));
    let findings: Api<ProbeFinding> = Api::namespaced(world.admin.clone(), "default");
    findings.delete("f", &DeleteParams::default()).await.unwrap();
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    partners.delete("defender", &DeleteParams::default()).await.unwrap();
    wait_gone(&partners, "defender").await;
    let held = world.indicators();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["action"], "Allowed", "never modified");
}

#[tokio::test]
async fn delete_policy_withdraws_with_the_finding_and_with_the_partner() {
    let world = world().await;
    world.attached_partner("default", "defender", json!({"deletionPolicy": "Delete"})).await;
    world.finding("default", "a", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    world.finding("default", "b", &[sha256(2)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding("default", "a").await;
    world.ready_finding("default", "b").await;
    assert_eq!(world.indicators().len(), 2);

    let findings: Api<ProbeFinding> = Api::namespaced(world.admin.clone(), "default");
    findings.delete("a", &DeleteParams::default()).await.unwrap();
    eventually("indicator of the deleted finding withdrawn", WAIT, || {
        world.indicator_values(sv::TENANT_ID) == vec![sha256(2)]
    })
    .await;

    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    partners.delete("defender", &DeleteParams::default()).await.unwrap();
    eventually("all indicators withdrawn", WAIT, || world.indicators().is_empty()).await;
    wait_gone(&partners, "defender").await;
}

/// Deleting is the newer intent: a suspended partner with `deletionPolicy: Delete` withdraws its
/// indicators too. While Defender fails, the partner says `Deleting` and why.
#[tokio::test]
async fn deleting_a_suspended_partner_withdraws_and_says_deleting_meanwhile() {
    let world = world().await;
    world.attached_partner("default", "defender", json!({"deletionPolicy": "Delete"})).await;
    world.finding("default", "a", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding("default", "a").await;
    world.partner("default", "defender", "creds", json!({"deletionPolicy": "Delete", "suspend": true})).await;
    world.detached_with("default", "defender", "Suspended").await;

    world.defender.faults().fail_next(1, 503);
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    partners.delete("defender", &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = partners.get("defender").await.unwrap().status.unwrap_or_default();
        let message = status.message.unwrap_or_default();
        if status.reason.as_deref() == Some("Deleting") && message.contains("retrying") {
            assert!(message.starts_with("withdrawing this partner's indicators from Defender"), "{message}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never said Deleting with the error: {message}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eventually("the indicator withdrawn", WAIT, || world.indicators().is_empty()).await;
    wait_gone(&partners, "defender").await;
}

#[tokio::test]
async fn retain_policy_leaves_indicators_in_defender() {
    let world = world().await;
    world.attached_partner("default", "defender", json!({})).await;
    world.finding("default", "a", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding("default", "a").await;

    let findings: Api<ProbeFinding> = Api::namespaced(world.admin.clone(), "default");
    findings.delete("a", &DeleteParams::default()).await.unwrap();
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    partners.delete("defender", &DeleteParams::default()).await.unwrap();
    wait_gone(&partners, "defender").await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(1)]);
}

#[tokio::test]
async fn the_finalizer_never_hangs_when_the_secret_is_gone() {
    let world = world().await;
    world.attached_partner("default", "defender", json!({"deletionPolicy": "Delete"})).await;
    world.finding("default", "a", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding("default", "a").await;

    let secrets: Api<Secret> = Api::namespaced(world.admin.clone(), "default");
    secrets.delete("creds", &DeleteParams::default()).await.unwrap();
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    partners.delete("defender", &DeleteParams::default()).await.unwrap();
    wait_gone(&partners, "defender").await;
    // The indicator could not be withdrawn, and a Warning says so.
    assert_eq!(world.indicators().len(), 1);
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(world.admin.clone(), "default");
    let warned = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("IndicatorsNotWithdrawn"));
    assert!(warned, "a Warning event explains the indicators left behind");
}

async fn wait_gone(partners: &Api<DefenderPartner>, name: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while partners.get_opt(name).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "partner {name} still there (finalizer stuck?)");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A finding the API server accepts but the operator cannot read (here: the CRD's schema loosened,
/// as after a version skew) is reported on its own and stalls nothing, not even a fresh list.
#[tokio::test]
async fn an_unreadable_finding_is_reported_and_stalls_nothing() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
    let mut world = world().await;
    world.attached_partner("default", "defender", json!({})).await;

    let crds = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        "customresourcedefinitions",
    );
    let crds: Api<DynamicObject> = Api::all_with(world.admin.clone(), &crds);
    let mut crd = crds.get("probefindings.detect.dev").await.unwrap();
    crd.data["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] =
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    crds.replace("probefindings.detect.dev", &PostParams::default(), &crd).await.unwrap();
    let findings = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("detect.dev", "v1alpha1", "ProbeFinding"),
        "probefindings",
    );
    let untyped: Api<DynamicObject> = Api::namespaced_with(world.admin.clone(), "default", &findings);
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "detect.dev/v1alpha1", "kind": "ProbeFinding", "metadata": {"name": "unreadable"},
        "spec": {"test": {"id": "3ebbda49-738c-4799-a8fb-206630cf609e", "name": "x"}, "state": "UNPROTECTED",
                 "indicators": "not a list"}
    }))
    .unwrap();
    untyped.create(&PostParams::default(), &bad).await.unwrap();

    world.finding("default", "good", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding("default", "good").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = untyped.get("unreadable").await.unwrap().data["status"].clone();
        let says_why = status["conditions"].as_array().is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c["reason"] == "InvalidFinding" && c["message"].as_str().is_some_and(|m| m.contains("cannot be read"))
            })
        });
        if says_why {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the unreadable finding should say why: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A restarted operator lists it again: the list must not fail.
    world.operator.take().unwrap().stop().await;
    world.operator = Some(world.start_operator());
    world.finding("default", "after-restart", &[sha256(2)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding("default", "after-restart").await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(1), sha256(2)]);
}
