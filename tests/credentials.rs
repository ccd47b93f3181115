//! Partners that attach without a client secret: a certificate in a Secret, and workload identity
//! (a ServiceAccount's tokens, trusted by the app through a federated credential). Each bad input
//! gives its reason; nothing is re-sent when a live partner changes its credentials.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use common::{World, sha256, world};
use defender_operator::api::{CredentialsType, DefenderPartner, PartnerState};
use defender_sandbox::emulator::Endpoint;
use defender_sandbox::emulator::credentials::{FederatedCredential, TestCertificate, Validity};
use defender_sandbox::emulator::sandbox_values as sv;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "default";

/// A `kubernetes.io/tls` Secret with `certificate`'s PEMs, as cert-manager would write it.
async fn tls_secret(world: &World, name: &str, certificate_pem: &str, private_key_pem: &str) {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(world.admin.clone(), NS);
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": certificate_pem, "tls.key": private_key_pem}});
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&secret)).await.expect("TLS Secret applied");
}

/// A certificate partner of the sandbox's good app reading `secret`.
async fn certificate_partner(world: &World, name: &str, secret: &str) {
    let credentials = json!({"credentials": {"type": "Certificate", "tenantId": sv::TENANT_ID,
        "clientId": sv::GOOD_APP_ID, "secretRef": {"name": secret}}});
    world.partner(NS, name, secret, credentials).await;
}

/// A workload-identity partner of the sandbox's good app using ServiceAccount `account`.
async fn federated_partner(world: &World, name: &str, account: &str, audience: Option<&str>) {
    let mut reference = json!({"name": account});
    if let Some(audience) = audience {
        reference["audience"] = json!(audience);
    }
    let spec = json!({"api": world.defender_api(), "credentials": {"type": "WorkloadIdentity",
        "tenantId": sv::TENANT_ID, "clientId": sv::GOOD_APP_ID, "serviceAccountRef": reference}});
    let partner = json!({"apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
        "metadata": {"name": name, "namespace": NS}, "spec": spec});
    let api: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), NS);
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&partner)).await.expect("partner applied");
}

async fn service_account(world: &World, namespace: &str, name: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(world.admin.clone(), namespace);
    let account = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &account).await.expect("ServiceAccount created");
}

fn token_calls(world: &World) -> usize {
    world.defender.calls().iter().filter(|c| matches!(c.endpoint, Endpoint::TokenV2 | Endpoint::TokenV1)).count()
}

fn message(partner: &DefenderPartner) -> String {
    partner.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_partner_attaches_pushes_and_picks_up_a_rotation() {
    let world = world().await;
    let first = TestCertificate::rsa("defender-operator", Validity::Valid);
    world.defender.add_certificate(sv::TENANT_ID, sv::GOOD_APP_ID, first.app_certificate()).unwrap();
    tls_secret(&world, "app-tls", &first.certificate_pem, &first.private_key_pem).await;
    certificate_partner(&world, "cert", "app-tls").await;
    let attached = world.attached(NS, "cert").await;
    let status = attached.status.unwrap();
    assert_eq!(status.credentials_type, Some(CredentialsType::Certificate));
    let expiry = status.credentials_expiry.expect("the certificate's notAfter");
    world.finding(NS, "f", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding(NS, "f").await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), [sha256(1)]);

    // Rotation: the next certificate is uploaded to the app, then written to the Secret.
    let next = TestCertificate::rsa("defender-operator-next", Validity::Valid);
    world.defender.add_certificate(sv::TENANT_ID, sv::GOOD_APP_ID, next.app_certificate()).unwrap();
    world.defender.remove_certificate(sv::TENANT_ID, sv::GOOD_APP_ID, &first.app_certificate());
    tls_secret(&world, "app-tls", &next.certificate_pem, &next.private_key_pem).await;
    let rotated = world
        .wait_for(NS, "cert", common::WAIT, |p: &DefenderPartner| {
            p.status.as_ref().is_some_and(|s| {
                s.state == Some(PartnerState::Attached) && s.credentials_hash != status.credentials_hash
            })
        })
        .await
        .expect("the new certificate validated at once");
    assert!(rotated.status.unwrap().credentials_expiry.is_some_and(|at| at.0 >= expiry.0));
    assert_eq!(world.indicator_values(sv::TENANT_ID), [sha256(1)], "nothing re-sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_each_give_their_reason() {
    let world = world().await;
    let good = TestCertificate::rsa("good", Validity::Valid);
    let other = TestCertificate::rsa("other", Validity::Valid);
    let expired = TestCertificate::rsa("expired", Validity::Expired);
    let early = TestCertificate::rsa("early", Validity::NotYetValid);
    let unknown = TestCertificate::rsa("unknown-to-entra", Validity::Valid);
    let ec = TestCertificate::ec("ec");
    for certificate in [&good, &expired, &early] {
        world.defender.add_certificate(sv::TENANT_ID, sv::GOOD_APP_ID, certificate.app_certificate()).unwrap();
    }
    let cases: [(&str, &str, &str, &str, &str); 6] = [
        ("wrong-key", &good.certificate_pem, &other.private_key_pem, "CertificateInvalid", "does not belong"),
        ("expired", &expired.certificate_pem, &expired.private_key_pem, "CertificateExpired", "expired at"),
        ("early", &early.certificate_pem, &early.private_key_pem, "CertificateInvalid", "not valid before"),
        ("unknown", &unknown.certificate_pem, &unknown.private_key_pem, "AssertionRejected", "AADSTS700027"),
        ("no-key", &good.certificate_pem, &good.certificate_pem, "CertificateInvalid", "not a PEM private key"),
        ("ec-key", &ec.certificate_pem, &ec.private_key_pem, "CertificateInvalid", "not an RSA key"),
    ];
    for (name, certificate, key, _, _) in &cases {
        tls_secret(&world, name, certificate, key).await;
        certificate_partner(&world, name, name).await;
    }
    for (name, _, _, reason, says) in &cases {
        let partner = world.detached_with(NS, name, reason).await;
        let message = message(&partner);
        assert!(message.contains(says), "{name}: {message}");
        // Never key material: no line of any PEM body.
        let pem_lines = [&good, &other, &ec].into_iter().flat_map(|c| c.private_key_pem.lines().nth(1));
        for line in pem_lines {
            assert!(!message.contains(line), "{name}: key material in: {message}");
        }
    }
    // What is checked locally never reaches Entra: only the unknown certificate asked for a token.
    let expired_partner = world.detached_with(NS, "expired", "CertificateExpired").await;
    assert!(expired_partner.status.unwrap().credentials_expiry.is_some());
    assert_eq!(token_calls(&world), 1, "only the certificate Entra does not know was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_identity_partner_attaches_with_a_service_account_token() {
    let world = world().await;
    service_account(&world, NS, "defender").await;
    world.defender.federate_with(sv::TENANT_ID, sv::GOOD_APP_ID, &world.kube, NS, "defender").unwrap();
    federated_partner(&world, "federated", "defender", None).await;
    let attached = world.attached(NS, "federated").await;
    assert_eq!(attached.status.unwrap().credentials_type, Some(CredentialsType::WorkloadIdentity));
    world.finding(NS, "f", &[sha256(2)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding(NS, "f").await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), [sha256(2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_workload_identity_setups_each_give_their_reason() {
    let world = world().await;
    let issuer = world.kube.service_account_issuer();
    world.namespace("elsewhere").await;
    for account in ["audience", "subject"] {
        service_account(&world, NS, account).await;
    }
    service_account(&world, "elsewhere", "foreign").await;
    world.defender.trust_issuer_certificate(&world.kube.certificate_pem());
    let add = |credential: FederatedCredential| {
        world.defender.add_federated_credential(sv::TENANT_ID, sv::GOOD_APP_ID, credential).unwrap()
    };
    // The app trusts "audience" for another audience, "subject" under another name, "issuer" from
    // another cluster.
    let mut other_audience = FederatedCredential::kubernetes("audience", &issuer, NS, "audience");
    other_audience.audiences = vec!["api://SomethingElse".into()];
    add(other_audience);
    add(FederatedCredential::kubernetes("subject", &issuer, NS, "someone-else"));
    add(FederatedCredential::kubernetes("foreign", &issuer, "elsewhere", "foreign"));

    federated_partner(&world, "missing", "nobody", None).await;
    federated_partner(&world, "foreign", "foreign", None).await;
    federated_partner(&world, "audience", "audience", None).await;
    federated_partner(&world, "subject", "subject", None).await;

    let missing = world.detached_with(NS, "missing", "ServiceAccountNotFound").await;
    assert!(message(&missing).contains("default/nobody"), "{}", message(&missing));
    // A ServiceAccount of another namespace is never used: the partner's namespace has none.
    let foreign = world.detached_with(NS, "foreign", "ServiceAccountNotFound").await;
    assert!(message(&foreign).contains("default/foreign"), "{}", message(&foreign));
    let subject = format!("system:serviceaccount:{NS}:");
    for (name, says) in [("audience", "AADSTS700212"), ("subject", "AADSTS700213")] {
        let partner = world.detached_with(NS, name, "FederatedCredentialMismatch").await;
        assert_names_what_the_app_needs(&partner, says, &issuer, &format!("{subject}{name}"));
    }
}

/// The mismatch message says which (the AADSTS code) and what the app would need: this cluster's
/// issuer, the ServiceAccount's subject, the audience. Never the token.
fn assert_names_what_the_app_needs(partner: &DefenderPartner, code: &str, issuer: &str, subject: &str) {
    let message = message(partner);
    assert!(message.contains(code), "{message}");
    assert!(
        message.contains(&format!("issuer '{issuer}'"))
            && message.contains(&format!("subject '{subject}'"))
            && message.contains("audience 'api://AzureADTokenExchange'"),
        "{message}"
    );
    assert!(!message.contains("eyJ"), "a token in the message: {message}");
}

/// The app trusts only another cluster's issuer: Entra finds no credential for this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_the_app_does_not_trust_is_a_mismatch() {
    let world = world().await;
    service_account(&world, NS, "defender").await;
    let elsewhere =
        FederatedCredential::kubernetes("other-cluster", "https://other-cluster.example/issuer", NS, "defender");
    world.defender.add_federated_credential(sv::TENANT_ID, sv::GOOD_APP_ID, elsewhere).unwrap();
    federated_partner(&world, "issuer", "defender", None).await;
    let partner = world.detached_with(NS, "issuer", "FederatedCredentialMismatch").await;
    let issuer = world.kube.service_account_issuer();
    assert_names_what_the_app_needs(&partner, "AADSTS700211", &issuer, &format!("system:serviceaccount:{NS}:defender"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_request_denied_by_rbac_is_reported() {
    let world = world().await;
    service_account(&world, NS, "defender").await;
    world.defender.federate_with(sv::TENANT_ID, sv::GOOD_APP_ID, &world.kube, NS, "defender").unwrap();
    // The operator's ClusterRole without its serviceaccounts/token rule.
    let roles: Api<ClusterRole> = Api::all(world.admin.clone());
    let mut role = roles.get("defender-operator").await.unwrap();
    role.rules.as_mut().unwrap().retain(|rule| !rule.resources.iter().flatten().any(|r| r == "serviceaccounts/token"));
    role.metadata.managed_fields = None;
    roles.replace("defender-operator", &PostParams::default(), &role).await.unwrap();
    federated_partner(&world, "denied", "defender", None).await;
    let denied = world.detached_with(NS, "denied", "TokenRequestDenied").await;
    assert!(message(&denied).contains("serviceaccounts/token"), "{}", message(&denied));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_without_its_reference_is_refused_by_the_schema() {
    let world = world().await;
    let resource = kube::api::ApiResource::erase::<DefenderPartner>(&());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(world.admin.clone(), NS, &resource);
    for (name, credentials, field) in [
        ("no-account", json!({"type": "WorkloadIdentity"}), "spec.credentials.serviceAccountRef"),
        ("no-secret", json!({"type": "Certificate", "tenantId": "t", "clientId": "c"}), "spec.credentials.secretRef"),
    ] {
        let partner: Value = json!({"apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
            "metadata": {"name": name, "namespace": NS}, "spec": {"credentials": credentials}});
        let refused = api.patch(name, &PatchParams::apply("test"), &Patch::Apply(&partner)).await.unwrap_err();
        let kube::Error::Api(status) = refused else { panic!("{name}: {refused}") };
        assert_eq!(status.code, 422, "{name}");
        assert!(status.message.contains(&format!("{field}: Required value")), "{name}: {}", status.message);
    }
}

/// A live partner moves from a client secret to workload identity and back: re-validated each
/// time, and nothing already in Defender is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_a_live_partner_between_secret_and_workload_identity_resends_nothing() {
    let world = world().await;
    world.attached_partner(NS, "defender", json!({})).await;
    world.finding(NS, "f", &[sha256(3)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding(NS, "f").await;
    let imports = || world.defender.calls().iter().filter(|c| c.endpoint == Endpoint::ImportIndicators).count();
    let before = imports();

    service_account(&world, NS, "defender").await;
    world.defender.federate_with(sv::TENANT_ID, sv::GOOD_APP_ID, &world.kube, NS, "defender").unwrap();
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), NS);
    let switch = |credentials: Value| {
        let patch = json!({"spec": {"credentials": credentials}});
        let partners = partners.clone();
        async move { partners.patch("defender", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap() }
    };
    switch(json!({"type": "WorkloadIdentity", "tenantId": sv::TENANT_ID, "clientId": sv::GOOD_APP_ID,
        "serviceAccountRef": {"name": "defender"}, "secretRef": null}))
    .await;
    let switched = world
        .wait_for(NS, "defender", common::WAIT, |p: &DefenderPartner| {
            p.status.as_ref().is_some_and(|s| {
                s.state == Some(PartnerState::Attached)
                    && s.credentials_type == Some(CredentialsType::WorkloadIdentity)
                    && s.observed_generation == p.metadata.generation
            })
        })
        .await
        .expect("attached with workload identity");
    assert!(switched.spec.credentials.secret_ref.is_none());
    switch(json!({"type": "ClientSecret", "tenantId": null, "clientId": null, "serviceAccountRef": null,
        "secretRef": {"name": "creds"}}))
    .await;
    world
        .wait_for(NS, "defender", common::WAIT, |p: &DefenderPartner| {
            p.status.as_ref().is_some_and(|s| {
                s.state == Some(PartnerState::Attached)
                    && s.credentials_type == Some(CredentialsType::ClientSecret)
                    && s.observed_generation == p.metadata.generation
            })
        })
        .await
        .expect("back on the client secret");
    world.ready_finding(NS, "f").await;
    assert_eq!(imports(), before, "no indicator re-sent");
    assert_eq!(world.indicator_values(sv::TENANT_ID), [sha256(3)]);
}

/// A certificate that expires within 30 days still attaches, and each validation warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_soon_is_warned_about() {
    use k8s_openapi::api::events::v1::Event;
    let world = world().await;
    let soon = TestCertificate::rsa("soon", Validity::ExpiringSoon);
    world.defender.add_certificate(sv::TENANT_ID, sv::GOOD_APP_ID, soon.app_certificate()).unwrap();
    tls_secret(&world, "soon", &soon.certificate_pem, &soon.private_key_pem).await;
    certificate_partner(&world, "soon", "soon").await;
    world.attached(NS, "soon").await;
    let events: Api<Event> = Api::namespaced(world.admin.clone(), NS);
    let warning = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("CredentialsExpiring"))
        .expect("a CredentialsExpiring event");
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(warning.note.unwrap_or_default().contains("days"));
}
