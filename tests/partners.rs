//! DefenderPartner against the sandbox: attach, every bad-credential case, rotation, suspend,
//! events. The operator runs under the RBAC of deploy/.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use std::time::Duration;

use common::*;
use defender_operator::api::conditions::{CREDENTIALS_VALID, INDICATORS_SYNCED, PERMISSIONS_GRANTED, READY, find};
use defender_operator::api::{DefenderPartner, FINALIZER, PartnerState};
use defender_sandbox::emulator::Endpoint;
use defender_sandbox::emulator::sandbox_values as sv;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn good_credentials_attach_with_every_condition_true() {
    let world = world().await;
    world.good_secret("default", "creds").await;
    world.partner("default", "defender", "creds", json!({})).await;

    let partner = world.attached("default", "defender").await;
    let operator = world.operator.as_ref().unwrap();
    eventually("the operator reports ready (/readyz)", WAIT, || operator.health.is_ready()).await;
    let partner = world
        .wait_for("default", "defender", WAIT, |p: &DefenderPartner| {
            p.status
                .as_ref()
                .is_some_and(|s| defender_operator::api::conditions::is_true(&s.conditions, INDICATORS_SYNCED))
        })
        .await
        .unwrap_or(partner);
    let status = partner.status.unwrap();
    assert_eq!(status.tenant_id.as_deref(), Some(sv::TENANT_ID));
    assert_eq!(status.client_id.as_deref(), Some(sv::GOOD_APP_ID));
    assert_eq!(status.reason.as_deref(), Some("Attached"));
    assert!(status.granted_permissions.contains(&"Ti.ReadWrite.All".to_string()));
    assert_eq!(status.observed_generation, partner.metadata.generation);
    for type_ in [READY, CREDENTIALS_VALID, PERMISSIONS_GRANTED, INDICATORS_SYNCED] {
        let condition = find(&status.conditions, type_).unwrap_or_else(|| panic!("{type_} missing"));
        assert_eq!(condition.status, "True", "{type_}: {condition:?}");
        assert_eq!(condition.observed_generation, partner.metadata.generation, "{type_}");
    }
    assert_eq!(status.credentials_hash.as_ref().map(|h| h.len()), Some(64));
    assert!(partner.metadata.finalizers.unwrap_or_default().contains(&FINALIZER.to_string()));
}

#[tokio::test]
async fn each_bad_credential_case_detaches_with_its_reason() {
    let world = world().await;
    // (partner and Secret name, Secret data, expected reason)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "wrong-secret",
            vec![("tenantId", sv::TENANT_ID), ("clientId", sv::GOOD_APP_ID), ("clientSecret", "not-the-secret")],
            "InvalidSecret",
        ),
        (
            "unknown-app",
            vec![
                ("tenantId", sv::TENANT_ID),
                ("clientId", "deadbeef-0000-4000-8000-000000000000"),
                ("clientSecret", "x"),
            ],
            "AppNotFound",
        ),
        (
            "unknown-tenant",
            vec![
                ("tenantId", sv::UNKNOWN_TENANT_ID),
                ("clientId", sv::GOOD_APP_ID),
                ("clientSecret", sv::GOOD_APP_SECRET),
            ],
            "TenantNotFound",
        ),
        (
            "expired-secret",
            vec![
                ("tenantId", sv::TENANT_ID),
                ("clientId", sv::EXPIRED_SECRET_APP_ID),
                ("clientSecret", sv::EXPIRED_SECRET_APP_SECRET),
            ],
            "SecretExpired",
        ),
        (
            "no-ti-role",
            vec![
                ("tenantId", sv::TENANT_ID),
                ("clientId", sv::MACHINE_ONLY_APP_ID),
                ("clientSecret", sv::MACHINE_ONLY_APP_SECRET),
            ],
            "MissingPermission",
        ),
        (
            "no-consent",
            vec![
                ("tenantId", sv::TENANT_ID),
                ("clientId", sv::NO_ROLES_APP_ID),
                ("clientSecret", sv::NO_ROLES_APP_SECRET),
            ],
            "MissingPermission",
        ),
        (
            "no-defender",
            vec![
                ("tenantId", sv::NO_DEFENDER_TENANT_ID),
                ("clientId", sv::NO_DEFENDER_APP_ID),
                ("clientSecret", sv::NO_DEFENDER_APP_SECRET),
            ],
            "DefenderNotProvisioned",
        ),
        ("missing-keys", vec![("clientId", sv::GOOD_APP_ID)], "SecretKeyMissing"),
    ];
    for (name, data, _) in &cases {
        world.secret("default", name, data).await;
        world.partner("default", name, name, json!({})).await;
    }
    world.partner("default", "no-secret", "does-not-exist", json!({})).await;

    for (name, _, reason) in &cases {
        let partner = world.detached_with("default", name, reason).await;
        let status = partner.status.unwrap();
        let ready = find(&status.conditions, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", *reason), "{name}");
        assert!(!status.message.unwrap_or_default().is_empty(), "{name} explains itself");
    }
    let missing = world.detached_with("default", "missing-keys", "SecretKeyMissing").await;
    let message = missing.status.unwrap().message.unwrap();
    assert!(message.contains("tenantId") && message.contains("clientSecret"), "all missing keys at once: {message}");
    world.detached_with("default", "no-secret", "SecretNotFound").await;

    let no_role = world.detached_with("default", "no-ti-role", "MissingPermission").await.status.unwrap();
    assert!(no_role.missing_permissions.iter().any(|p| p.starts_with("Ti.ReadWrite")), "{no_role:?}");
    // Credentials are fine, the grant is not.
    assert_eq!(find(&no_role.conditions, CREDENTIALS_VALID).unwrap().status, "True");
    assert_eq!(find(&no_role.conditions, PERMISSIONS_GRANTED).unwrap().status, "False");
}

#[tokio::test]
async fn secret_rotation_revalidates_and_fixing_it_attaches_without_touching_the_partner() {
    let world = world().await;
    world.good_secret("default", "creds").await;
    world.partner("default", "defender", "creds", json!({})).await;
    let attached = world.attached("default", "defender").await;
    let generation = attached.metadata.generation;

    // Rotated to a wrong value: noticed through the Secret watch, not the hourly re-validation.
    world
        .secret(
            "default",
            "creds",
            &[("tenantId", sv::TENANT_ID), ("clientId", sv::GOOD_APP_ID), ("clientSecret", "rotated-wrong")],
        )
        .await;
    let broken = world.detached_with("default", "defender", "InvalidSecret").await;
    assert_ne!(broken.status.unwrap().credentials_hash, attached.status.unwrap().credentials_hash);

    // Fixed: Attached again, and the partner object itself was never edited.
    world.good_secret("default", "creds").await;
    let fixed = world.attached("default", "defender").await;
    assert_eq!(fixed.metadata.generation, generation);

    // Deleted: detached at once.
    let secrets: Api<Secret> = Api::namespaced(world.admin.clone(), "default");
    secrets.delete("creds", &DeleteParams::default()).await.unwrap();
    world.detached_with("default", "defender", "SecretNotFound").await;
}

#[tokio::test]
async fn suspend_detaches_and_resume_attaches() {
    let world = world().await;
    world.attached_partner("default", "defender", json!({})).await;
    world.finding("default", "a", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    let delivered = world.ready_finding("default", "a").await.status.unwrap().deliveries.remove(0);
    assert_eq!(delivered.state, defender_operator::api::DeliveryState::Submitted);
    let id = delivered.indicators[0].id.clone();
    assert!(id.is_some() && delivered.submitted_time.is_some(), "{delivered:?}");

    // Suspended: nothing is withdrawn, and the finding says so rather than going back to Pending.
    world.partner("default", "defender", "creds", json!({"suspend": true})).await;
    world.detached_with("default", "defender", "Suspended").await;
    let says = "not attached (Suspended); its indicators stay in Defender";
    let finding = world
        .wait_for("default", "a", WAIT, |f: &defender_operator::api::ProbeFinding| {
            f.status.as_ref().is_some_and(|s| s.deliveries.iter().any(|d| d.message.as_deref() == Some(says)))
        })
        .await
        .expect("the delivery says the partner is not attached");
    let status = finding.status.unwrap();
    let suspended = &status.deliveries[0];
    assert_eq!(suspended.state, defender_operator::api::DeliveryState::Submitted, "{suspended:?}");
    assert_eq!(suspended.indicators[0].id, id);
    assert_eq!(suspended.submitted_time, delivered.submitted_time);
    assert_eq!(status.delivered.as_deref(), Some("1/1"));
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(1)]);

    // Resumed (a second later, so a rewritten submittedTime would show): the same indicator, the
    // same submittedTime, nothing re-sent.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    world.partner("default", "defender", "creds", json!({"suspend": false})).await;
    world.attached("default", "defender").await;
    let finding = world
        .wait_for("default", "a", WAIT, |f: &defender_operator::api::ProbeFinding| {
            f.status.as_ref().is_some_and(|s| s.deliveries.iter().all(|d| d.message.is_none()))
        })
        .await
        .expect("the delivery no longer says the partner is not attached");
    let resumed = &finding.status.as_ref().unwrap().deliveries[0];
    assert_eq!(resumed.state, defender_operator::api::DeliveryState::Submitted, "{resumed:?}");
    assert_eq!(resumed.indicators[0].id, id);
    assert_eq!(resumed.submitted_time, delivered.submitted_time, "submittedTime kept across suspend and resume");
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(1)]);
}

#[tokio::test]
async fn events_are_published_on_transitions_only() {
    let world = world().await;
    world.wrong_secret("default", "creds").await;
    world.partner("default", "defender", "creds", json!({})).await;
    world.detached_with("default", "defender", "InvalidSecret").await;
    world.good_secret("default", "creds").await;
    world.attached("default", "defender").await;

    let events: Api<Event> = Api::namespaced(world.admin.clone(), "default");
    let reasons = || async {
        let mut reasons: Vec<(String, String)> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("defender"))
            .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
            .collect();
        reasons.sort();
        reasons
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = reasons().await;
        if seen.contains(&("Normal".into(), "Attached".into())) {
            assert!(seen.contains(&("Warning".into(), "InvalidSecret".into())), "{seen:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "events seen: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing changes from here: no new events on further passes.
    let before = reasons().await;
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    partners
        .patch("defender", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(reasons().await, before);
    assert_eq!(partners.get("defender").await.unwrap().status.unwrap().state, Some(PartnerState::Attached));
}

/// The operator's own status writes do not wake it: a refused partner costs one token request per
/// change, not one more per pass (a timeout would otherwise be retried at once, past its
/// backoff). Annotating the partner asks again now — after fixing something on Entra's side.
#[tokio::test]
async fn a_refused_partner_is_asked_about_once_per_change() {
    let world = world().await;
    world.wrong_secret("default", "creds").await;
    world.partner("default", "defender", "creds", json!({})).await;
    world.detached_with("default", "defender", "InvalidSecret").await;
    let token_requests = || {
        world.defender.calls().iter().filter(|c| matches!(c.endpoint, Endpoint::TokenV2 | Endpoint::TokenV1)).count()
    };
    assert_eq!(token_requests(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(token_requests(), 1, "Entra was asked again while nothing had changed");

    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    let ask_again = json!({"metadata": {"annotations": {"detect.dev/revalidate": "1"}}});
    partners.patch("defender", &PatchParams::default(), &Patch::Merge(ask_again)).await.unwrap();
    eventually("a re-validation after the annotation", WAIT, || token_requests() == 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(token_requests(), 2, "one annotation, one re-validation");
    let partner = partners.get("defender").await.unwrap();
    assert_eq!(partner.status.unwrap().reason.as_deref(), Some("InvalidSecret"));
}

/// An attached partner re-validates when `detect.dev/revalidate` gets a new value (after a fix on
/// Entra's side, or to check a revoked consent now), and says which value it acted on.
#[tokio::test]
async fn the_revalidate_annotation_re_checks_an_attached_partner_now() {
    let world = world().await;
    world.good_secret("default", "creds").await;
    world.partner("default", "defender", "creds", json!({})).await;
    let before = world.attached("default", "defender").await.status.unwrap().last_validated_time.unwrap();
    // lastValidatedTime is to the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    let ask = json!({"metadata": {"annotations": {"detect.dev/revalidate": "2026-11-26T15:00:00Z"}}});
    partners.patch("defender", &PatchParams::default(), &Patch::Merge(ask)).await.unwrap();
    let partner = world
        .wait_for("default", "defender", WAIT, |p: &DefenderPartner| {
            p.status.as_ref().is_some_and(|s| s.last_handled_revalidate.as_deref() == Some("2026-11-26T15:00:00Z"))
        })
        .await
        .expect("the annotation is acted on");
    let status = partner.status.unwrap();
    assert!(status.last_validated_time.unwrap().0 > before.0, "validated again");
    assert_eq!(status.state, Some(PartnerState::Attached));
}

/// Findings follow their partners' lives: a new partner that never attached gets its entry in
/// every finding of the namespace, and a deleted partner's entry goes away.
#[tokio::test]
async fn findings_gain_and_lose_entries_as_partners_come_and_go() {
    let world = world().await;
    world.attached_partner("default", "defender", json!({})).await;
    world.finding("default", "a", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding("default", "a").await;

    world.secret("default", "other", &[("tenantId", sv::TENANT_ID)]).await;
    world.partner("default", "unattached", "other", json!({})).await;
    world.detached_with("default", "unattached", "SecretKeyMissing").await;
    let partners_named = |names: &'static [&'static str]| {
        move |f: &defender_operator::api::ProbeFinding| {
            f.status.as_ref().is_some_and(|s| {
                let mut seen: Vec<&str> = s.deliveries.iter().map(|d| d.partner.as_str()).collect();
                seen.sort();
                seen == names
            })
        }
    };
    world.wait_for("default", "a", WAIT, partners_named(&["defender", "unattached"])).await.expect("a new entry");

    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    partners.delete("unattached", &DeleteParams::default()).await.unwrap();
    let finding = world.wait_for("default", "a", WAIT, partners_named(&["defender"])).await.expect("entry gone");
    assert_eq!(finding.status.unwrap().delivered.as_deref(), Some("1/1"));
}
