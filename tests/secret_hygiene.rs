//! Secret hygiene: recognisable client secrets go through the main scenarios (attach, wrong
//! secret, rotation, push, throttling, deletion), and certificate keys, signed assertions and
//! service-account tokens through certificate and workload-identity partners; none of them ever
//! shows up in the operator's logs at any level, in events, in any status, in metrics, or in
//! anything kubectl can read but the Secrets.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use common::*;
use defender_operator::api::{DefenderPartner, ProbeFinding};
use defender_sandbox::emulator::sandbox_values as sv;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secrets_never_leave_their_secret() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let world = world().await;
    let wrong = "LEAK-CANARY-wrong-secret-8c1f";
    let rotated_wrong = "LEAK-CANARY-rotated-wrong-77a0";
    let canaries = [sv::GOOD_APP_SECRET, wrong, rotated_wrong, sv::TENANT2_APP_SECRET];

    world.namespace("other").await;
    world.good_secret("default", "creds").await;
    world.partner("default", "good", "creds", json!({"deletionPolicy": "Delete"})).await;
    world
        .secret("other", "bad", &[("tenantId", sv::TENANT_ID), ("clientId", sv::GOOD_APP_ID), ("clientSecret", wrong)])
        .await;
    world.partner("other", "bad", "bad", json!({})).await;
    world.attached("default", "good").await;
    world.detached_with("other", "bad", "InvalidSecret").await;
    let keys = credentials_without_a_secret(&world).await;

    world.defender.faults().throttle_next(2, 1);
    for i in 0..20 {
        world.finding("default", &format!("f{i}"), &[sha256(i)], json!({"state": "UNPROTECTED"})).await;
    }
    world.ready_finding("default", "f19").await;

    // Rotation to another wrong value, then to a good one in another tenant.
    world
        .secret(
            "default",
            "creds",
            &[("tenantId", sv::TENANT_ID), ("clientId", sv::GOOD_APP_ID), ("clientSecret", rotated_wrong)],
        )
        .await;
    world.detached_with("default", "good", "InvalidSecret").await;
    world
        .secret(
            "default",
            "creds",
            &[("tenantId", sv::TENANT2_ID), ("clientId", sv::TENANT2_APP_ID), ("clientSecret", sv::TENANT2_APP_SECRET)],
        )
        .await;
    world.attached("default", "good").await;
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    partners.delete("good", &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while partners.get_opt("good").await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the partner's finalizer did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Everything readable but the Secrets themselves.
    let mut visible = String::new();
    let list = ListParams::default();
    for partner in Api::<DefenderPartner>::all(world.admin.clone()).list(&list).await.unwrap() {
        visible += &serde_json::to_string(&partner).unwrap();
    }
    for finding in Api::<ProbeFinding>::all(world.admin.clone()).list(&list).await.unwrap() {
        visible += &serde_json::to_string(&finding).unwrap();
    }
    for event in Api::<Event>::all(world.admin.clone()).list(&list).await.unwrap() {
        visible += &serde_json::to_string(&event).unwrap();
    }
    for event in Api::<CoreEvent>::all(world.admin.clone()).list(&list).await.unwrap() {
        visible += &serde_json::to_string(&event).unwrap();
    }
    assert!(visible.contains("InvalidSecret"), "the scenarios ran and left their traces");
    let metrics = world.operator.as_ref().unwrap().metrics.encode();
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(logs.contains("DEBUG") || logs.contains("TRACE"), "logs were captured at every level");

    // JWTs (access tokens, assertions, service-account tokens) all start with `eyJ`.
    let canaries = canaries.into_iter().map(String::from).chain(keys).chain(["eyJ".to_string()]);
    for canary in canaries {
        let canary = canary.as_str();
        assert!(!visible.contains(canary), "a client secret is visible in the API: {canary}");
        assert!(!metrics.contains(canary), "a client secret is in the metrics: {canary}");
        let line = logs.lines().find(|l| l.contains(canary));
        assert!(line.is_none(), "a client secret is in the logs: {}", line.unwrap_or_default());
    }
}

/// A certificate partner (one attached, one with a key that does not belong to its certificate)
/// and a workload-identity partner, in namespace `keys`; returns lines of the private keys.
async fn credentials_without_a_secret(world: &World) -> Vec<String> {
    use defender_sandbox::emulator::credentials::{TestCertificate, Validity};
    use k8s_openapi::api::core::v1::ServiceAccount;
    world.namespace("keys").await;
    let good = TestCertificate::rsa("hygiene", Validity::Valid);
    let stray = TestCertificate::rsa("stray", Validity::Valid);
    world.defender.add_certificate(sv::TENANT_ID, sv::GOOD_APP_ID, good.app_certificate()).unwrap();
    for (name, key) in [("cert", &good.private_key_pem), ("wrong-key", &stray.private_key_pem)] {
        world.secret("keys", name, &[("tls.crt", &good.certificate_pem), ("tls.key", key)]).await;
        let credentials = json!({"credentials": {"type": "Certificate", "tenantId": sv::TENANT_ID,
            "clientId": sv::GOOD_APP_ID, "secretRef": {"name": name}}});
        world.partner("keys", name, name, credentials).await;
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(world.admin.clone(), "keys");
    accounts
        .create(&Default::default(), &serde_json::from_value(json!({"metadata": {"name": "wi"}})).unwrap())
        .await
        .unwrap();
    world.defender.federate_with(sv::TENANT_ID, sv::GOOD_APP_ID, &world.kube, "keys", "wi").unwrap();
    let federated = json!({"credentials": {"type": "WorkloadIdentity", "tenantId": sv::TENANT_ID,
        "clientId": sv::GOOD_APP_ID, "serviceAccountRef": {"name": "wi"}, "secretRef": null}});
    world.partner("keys", "wi", "unused", federated).await;
    world.attached("keys", "cert").await;
    world.attached("keys", "wi").await;
    world.detached_with("keys", "wrong-key", "CertificateInvalid").await;
    [&good, &stray].iter().flat_map(|c| c.private_key_pem.lines().skip(1).take(3).map(String::from)).collect()
}
