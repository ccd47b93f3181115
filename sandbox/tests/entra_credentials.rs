//! Entra client authentication without a secret, against the emulator: certificate assertions,
//! and federated assertions (workload identity) with the sandbox API server as the issuer.

use std::time::Duration;

use base64::Engine as _;
use defender_sandbox::apiserver::{ApiServerConfig, KubeApiServer};
use defender_sandbox::emulator::credentials::{
    AssertionHeader, CLIENT_ASSERTION_TYPE, FederatedCredential, TOKEN_EXCHANGE_AUDIENCE, TestCertificate, Validity,
    assertion_claims, sandbox_federated_credential,
};
use defender_sandbox::emulator::sandbox_values::*;
use defender_sandbox::emulator::{Emulator, EmulatorConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn sandbox() -> Emulator {
    Emulator::start(EmulatorConfig::sandbox()).await.expect("emulator starts")
}

fn token_url(emu: &Emulator, tenant: &str) -> String {
    emu.url().join(&format!("{tenant}/oauth2/v2.0/token")).unwrap().to_string()
}

/// A client-credentials request authenticated by `assertion` instead of a secret.
async fn exchange(emu: &Emulator, client_id: &str, assertion: &str) -> (StatusCode, Value) {
    let form = [
        ("client_id", client_id),
        ("scope", MDE_SCOPE),
        ("grant_type", "client_credentials"),
        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    let r = reqwest::Client::new().post(token_url(emu, TENANT_ID)).form(&form).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The AADSTS code and the description's first line (without trace and correlation ids).
fn failure(body: &Value) -> (u64, String) {
    let description = body["error_description"].as_str().unwrap_or_default();
    let first = description.split("\r\n").next().unwrap_or_default();
    (body["error_codes"][0].as_u64().unwrap_or_default(), first.to_string())
}

fn assert_failure(status: StatusCode, body: &Value, want: (u16, &str, u64)) -> String {
    let (code, text) = failure(body);
    assert_eq!((status.as_u16(), body["error"].as_str().unwrap_or_default(), code), want, "{body}");
    text
}

/// The good app with a fresh RSA certificate registered.
async fn with_certificate() -> (Emulator, TestCertificate) {
    let emu = sandbox().await;
    let cert = TestCertificate::rsa("defender-partner", Validity::Valid);
    emu.add_certificate(TENANT_ID, GOOD_APP_ID, cert.app_certificate()).unwrap();
    (emu, cert)
}

#[tokio::test]
async fn certificate_assertions_ps256_and_rs256_get_the_same_token_as_a_secret() {
    let (emu, cert) = with_certificate().await;
    let aud = token_url(&emu, TENANT_ID);
    for header in [AssertionHeader::Ps256X5tS256, AssertionHeader::Rs256X5t] {
        let assertion = cert.sign_assertion(header, &assertion_claims(GOOD_APP_ID, &aud));
        let (status, body) = exchange(&emu, GOOD_APP_ID, &assertion).await;
        assert_eq!(status, 200, "{header:?}: {body}");
        let claims = claims_of(body["access_token"].as_str().unwrap());
        assert_eq!(claims["appid"], GOOD_APP_ID);
        assert_eq!(claims["appidacr"], "2", "assertion-authenticated");
        assert_eq!(claims["roles"], json!(GOOD_APP_ROLES));
        assert_eq!(claims["aud"], MDE_RESOURCE);
        let api = reqwest::Client::new()
            .get(emu.url().join("api/indicators").unwrap())
            .bearer_auth(body["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(api.status(), 200, "the API takes it");
    }
    // `aud` may also name the real login host, the v1 path, or the tenant's domain
    for aud in [
        format!("https://login.microsoftonline.com/{TENANT_ID}/oauth2/v2.0/token"),
        format!("https://login.microsoftonline.com/{TENANT_DOMAIN}/oauth2/token"),
        token_url(&emu, TENANT_DOMAIN),
    ] {
        let assertion = cert.sign_assertion(AssertionHeader::Ps256X5tS256, &assertion_claims(GOOD_APP_ID, &aud));
        assert_eq!(exchange(&emu, GOOD_APP_ID, &assertion).await.0, 200, "{aud}");
    }
}

#[tokio::test]
async fn certificate_assertion_key_and_signature_failures() {
    let (emu, cert) = with_certificate().await;
    let aud = token_url(&emu, TENANT_ID);
    // mixed pairs: PS256 goes with x5t#S256, RS256 with x5t
    for header in [AssertionHeader::Ps256X5t, AssertionHeader::Rs256X5tS256] {
        let (status, body) =
            exchange(&emu, GOOD_APP_ID, &cert.sign_assertion(header, &assertion_claims(GOOD_APP_ID, &aud))).await;
        let text = assert_failure(status, &body, (401, "invalid_client", 700027));
        assert_eq!(text, "AADSTS700027: Client assertion failed signature validation.");
    }
    // an unregistered certificate: named by its thumbprint
    let other = TestCertificate::rsa("someone-else", Validity::Valid);
    let (status, body) = exchange(
        &emu,
        GOOD_APP_ID,
        &other.sign_assertion(AssertionHeader::Rs256X5t, &assertion_claims(GOOD_APP_ID, &aud)),
    )
    .await;
    let text = assert_failure(status, &body, (401, "invalid_client", 700027));
    let thumbprint = other.app_certificate().thumbprint_hex();
    assert!(
        text.starts_with(&format!(
            "AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{GOOD_APP_ID}'."
        )),
        "{text}"
    );
    // a SHA-256 thumbprint in x5t is looked up as SHA-1: not found
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5t = Some(cert.app_certificate().x5t_s256());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(cert.private_key_pem.as_bytes()).unwrap();
    let sha256_in_x5t = jsonwebtoken::encode(&header, &assertion_claims(GOOD_APP_ID, &aud), &key).unwrap();
    let (status, body) = exchange(&emu, GOOD_APP_ID, &sha256_in_x5t).await;
    assert!(assert_failure(status, &body, (401, "invalid_client", 700027)).contains("The key was not found."));
    // the registered certificate's thumbprint, another key's signature
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
    header.x5t_s256 = Some(cert.app_certificate().x5t_s256());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(other.private_key_pem.as_bytes()).unwrap();
    let forged = jsonwebtoken::encode(&header, &assertion_claims(GOOD_APP_ID, &aud), &key).unwrap();
    let (status, body) = exchange(&emu, GOOD_APP_ID, &forged).await;
    let text = assert_failure(status, &body, (401, "invalid_client", 700027));
    assert!(
        text.starts_with("AADSTS700027: Client assertion contains an invalid signature. [Reason - Key was found, but use of the key to verify the signature failed., Thumbprint of key used by client: '"),
        "{text}"
    );
    assert!(text.contains("Found key 'Start="), "{text}");
    // not a JWT at all
    let (status, body) = exchange(&emu, GOOD_APP_ID, "not-a-jwt").await;
    let text = assert_failure(status, &body, (401, "invalid_client", 50027));
    assert_eq!(text, "AADSTS50027: JWT token is invalid or malformed.");
    // removed: no longer found
    assert!(emu.remove_certificate(TENANT_ID, GOOD_APP_ID, &cert.app_certificate()));
    let (status, body) = exchange(
        &emu,
        GOOD_APP_ID,
        &cert.sign_assertion(AssertionHeader::Ps256X5tS256, &assertion_claims(GOOD_APP_ID, &aud)),
    )
    .await;
    assert!(assert_failure(status, &body, (401, "invalid_client", 700027)).contains("The key was not found."));
}

#[tokio::test]
async fn certificate_assertion_claim_failures() {
    let (emu, cert) = with_certificate().await;
    let aud = token_url(&emu, TENANT_ID);
    let sign = |claims: &Value| cert.sign_assertion(AssertionHeader::Ps256X5tS256, claims);
    let now = jiff::Timestamp::now().as_second();

    let mut wrong_aud = assertion_claims(GOOD_APP_ID, &aud);
    wrong_aud["aud"] = json!(format!("https://login.microsoftonline.com/{TENANT2_ID}/oauth2/v2.0/token"));
    let (status, body) = exchange(&emu, GOOD_APP_ID, &sign(&wrong_aud)).await;
    let text = assert_failure(status, &body, (401, "invalid_client", 700023));
    assert_eq!(text, "AADSTS700023: Client assertion audience claim does not match Realm issuer.");

    let mut sub_differs = assertion_claims(GOOD_APP_ID, &aud);
    sub_differs["sub"] = json!(NO_ROLES_APP_ID);
    let (status, body) = exchange(&emu, GOOD_APP_ID, &sign(&sub_differs)).await;
    let text = assert_failure(status, &body, (401, "invalid_client", 50048));
    assert_eq!(text, "AADSTS50048: Subject mismatches Issuer claim in the client assertion.");

    let another_app = assertion_claims(NO_ROLES_APP_ID, &aud);
    let (status, body) = exchange(&emu, GOOD_APP_ID, &sign(&another_app)).await;
    let text = assert_failure(status, &body, (401, "invalid_client", 700021));
    assert!(
        text.starts_with("AADSTS700021: Client assertion application identifier doesn't match 'client_id' parameter.")
    );

    let mut expired = assertion_claims(GOOD_APP_ID, &aud);
    expired["nbf"] = json!(now - 3600);
    expired["exp"] = json!(now - 1800);
    let (status, body) = exchange(&emu, GOOD_APP_ID, &sign(&expired)).await;
    let text = assert_failure(status, &body, (401, "invalid_client", 700024));
    let at = |s: i64| format!("{}.0000000Z", jiff::Timestamp::from_second(s).unwrap().strftime("%Y-%m-%dT%H:%M:%S"));
    assert!(text.starts_with("AADSTS700024: Client assertion is not within its valid time range. Current time: "));
    assert!(
        text.ends_with(&format!(
            ", assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials",
            at(now - 3600),
            at(now - 1800)
        )),
        "{text}"
    );
    let mut not_yet = assertion_claims(GOOD_APP_ID, &aud);
    not_yet["nbf"] = json!(now + 3600);
    not_yet["exp"] = json!(now + 3900);
    let (status, body) = exchange(&emu, GOOD_APP_ID, &sign(&not_yet)).await;
    assert_failure(status, &body, (401, "invalid_client", 700024));
    // no nbf is "valid from 1970": accepted
    let mut no_nbf = assertion_claims(GOOD_APP_ID, &aud);
    no_nbf.as_object_mut().unwrap().remove("nbf");
    assert_eq!(exchange(&emu, GOOD_APP_ID, &sign(&no_nbf)).await.0, 200);

    // the same jti twice
    let once = sign(&assertion_claims(GOOD_APP_ID, &aud));
    assert_eq!(exchange(&emu, GOOD_APP_ID, &once).await.0, 200);
    let (status, body) = exchange(&emu, GOOD_APP_ID, &once).await;
    let text = assert_failure(status, &body, (401, "invalid_client", 50027));
    assert!(text.contains("'jti' has already been used"), "{text}");
}

#[tokio::test]
async fn certificate_validity_and_missing_credentials() {
    let emu = sandbox().await;
    let aud = token_url(&emu, TENANT_ID);
    let expired = TestCertificate::rsa("old", Validity::Expired);
    let future = TestCertificate::rsa("new", Validity::NotYetValid);
    let now = jiff::Timestamp::now();
    assert!(expired.app_certificate().not_after < now);
    assert!(future.app_certificate().not_before > now);
    for cert in [&expired, &future] {
        emu.add_certificate(TENANT_ID, GOOD_APP_ID, cert.app_certificate()).unwrap();
        let assertion = cert.sign_assertion(AssertionHeader::Ps256X5tS256, &assertion_claims(GOOD_APP_ID, &aud));
        let (status, body) = exchange(&emu, GOOD_APP_ID, &assertion).await;
        let text = assert_failure(status, &body, (401, "invalid_client", 1000502));
        assert_eq!(text, "AADSTS1000502: The provided certificate is not within its specified validity window.");
    }
    // an EC certificate: readable, but its key is not RSA
    let ec = TestCertificate::ec("ec");
    assert!(ec.private_key_pem.contains("BEGIN PRIVATE KEY"));
    assert!(jsonwebtoken::EncodingKey::from_rsa_pem(ec.private_key_pem.as_bytes()).is_err());
    assert!(ec.app_certificate().not_after > now);
    // an assertion type without an assertion, or an assertion without its type: no credential
    let r = reqwest::Client::new()
        .post(&aud)
        .form(&[
            ("client_id", GOOD_APP_ID),
            ("scope", MDE_SCOPE),
            ("grant_type", "client_credentials"),
            ("client_assertion", "x.y.z"),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_failure(status, &body, (401, "invalid_client", 7000218));
    // unknown apps cannot get credentials
    assert!(emu.add_certificate(TENANT_ID, "a11ce000-5a4d-4b0c-8d3f-0000000000ee", ec.app_certificate()).is_err());
}

mod federated {
    //! Workload identity: ServiceAccount tokens of the sandbox API server as client assertions.
    use super::*;

    async fn cluster() -> KubeApiServer {
        let s = KubeApiServer::start(ApiServerConfig::default()).await.unwrap();
        for name in ["partner", "other"] {
            let r = reqwest::Client::new()
                .post(format!("{}/api/v1/namespaces/default/serviceaccounts", s.url()))
                .bearer_auth(s.admin_token())
                .json(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        s
    }

    /// A TokenRequest token, as the operator will mint it.
    async fn sa_token(s: &KubeApiServer, name: &str, audience: &str) -> String {
        let tr: Value = reqwest::Client::new()
            .post(format!("{}/api/v1/namespaces/default/serviceaccounts/{name}/token", s.url()))
            .bearer_auth(s.admin_token())
            .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                          "spec": {"audiences": [audience], "expirationSeconds": 600}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tr["status"]["token"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_matching_federated_credential_gets_the_app_token() {
        let (s, emu) = (cluster().await, sandbox().await);
        let fic = emu.federate_with(TENANT_ID, GOOD_APP_ID, &s, "default", "partner").unwrap();
        assert_eq!(fic.issuer, s.service_account_issuer());
        assert_eq!(fic.subject, "system:serviceaccount:default:partner");
        assert_eq!(fic.audiences, [TOKEN_EXCHANGE_AUDIENCE]);
        let token = sa_token(&s, "partner", TOKEN_EXCHANGE_AUDIENCE).await;
        let (status, body) = exchange(&emu, GOOD_APP_ID, &token).await;
        assert_eq!(status, 200, "{body}");
        let claims = claims_of(body["access_token"].as_str().unwrap());
        assert_eq!((claims["appid"].as_str(), claims["appidacr"].as_str()), (Some(GOOD_APP_ID), Some("2")));
        assert_eq!(claims["roles"], json!(GOOD_APP_ROLES));
        // a Kubernetes token may be presented again (kubelet-projected tokens are)
        assert_eq!(exchange(&emu, GOOD_APP_ID, &token).await.0, 200);
        // ESO asks for several audiences: one matching is enough
        let tr: Value = reqwest::Client::new()
            .post(format!("{}/api/v1/namespaces/default/serviceaccounts/partner/token", s.url()))
            .bearer_auth(s.admin_token())
            .json(&json!({"spec": {"audiences": [TOKEN_EXCHANGE_AUDIENCE, "https://kubernetes.default.svc"]}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(exchange(&emu, GOOD_APP_ID, tr["status"]["token"].as_str().unwrap()).await.0, 200);
        // another app without the credential
        let (status, body) = exchange(&emu, NO_ROLES_APP_ID, &token).await;
        assert_failure(status, &body, (401, "invalid_client", 700211));
    }

    #[tokio::test]
    async fn issuer_subject_and_audience_mismatches_name_what_was_presented() {
        let (s, emu) = (cluster().await, sandbox().await);
        emu.trust_issuer_certificate(&s.certificate_pem());
        let issuer = s.service_account_issuer();
        let see = "Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://docs.microsoft.com/en-us/azure/active-directory/develop/workload-identity-federation";

        // the trailing slash counts
        let slash = FederatedCredential::kubernetes("with-slash", &format!("{issuer}/"), "default", "partner");
        emu.add_federated_credential(TENANT_ID, GOOD_APP_ID, slash).unwrap();
        let token = sa_token(&s, "partner", TOKEN_EXCHANGE_AUDIENCE).await;
        let (status, body) = exchange(&emu, GOOD_APP_ID, &token).await;
        let text = assert_failure(status, &body, (401, "invalid_client", 700211));
        assert_eq!(
            text,
            format!(
                "AADSTS700211: No matching federated identity record found for presented assertion issuer '{issuer}'. {see}"
            )
        );
        assert!(emu.remove_federated_credential(TENANT_ID, GOOD_APP_ID, "with-slash"));

        emu.add_federated_credential(TENANT_ID, GOOD_APP_ID, sandbox_federated_credential(&s, "default", "partner"))
            .unwrap();
        let other = sa_token(&s, "other", TOKEN_EXCHANGE_AUDIENCE).await;
        let (status, body) = exchange(&emu, GOOD_APP_ID, &other).await;
        let text = assert_failure(status, &body, (401, "invalid_client", 700213));
        assert_eq!(
            text,
            "AADSTS700213: No matching federated identity record found for presented assertion subject 'system:serviceaccount:default:other'. Check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
        );

        let wrong_audience = sa_token(&s, "partner", "api://other").await;
        let (status, body) = exchange(&emu, GOOD_APP_ID, &wrong_audience).await;
        let text = assert_failure(status, &body, (401, "invalid_client", 700212));
        assert_eq!(
            text,
            format!(
                "AADSTS700212: No matching federated identity record found for presented assertion audience 'api://other'. {see}"
            )
        );

        // case-sensitive subjects
        let upper = FederatedCredential::kubernetes("upper", &issuer, "default", "Other");
        emu.add_federated_credential(TENANT_ID, GOOD_APP_ID, upper).unwrap();
        let (status, body) = exchange(&emu, GOOD_APP_ID, &other).await;
        let text = assert_failure(status, &body, (401, "invalid_client", 7002138));
        assert!(
            text.contains(
                "The subject matches with case-insensitive comparison, but not with case-sensitive comparison."
            )
        );
    }

    #[tokio::test]
    async fn expired_tokens_unreachable_issuers_unknown_keys_and_propagation() {
        let (s, emu) = (cluster().await, sandbox().await);
        // the issuer's certificate is not trusted: Entra cannot fetch its documents
        emu.add_federated_credential(TENANT_ID, GOOD_APP_ID, sandbox_federated_credential(&s, "default", "partner"))
            .unwrap();
        let token = sa_token(&s, "partner", TOKEN_EXCHANGE_AUDIENCE).await;
        let (status, body) = exchange(&emu, GOOD_APP_ID, &token).await;
        let text = assert_failure(status, &body, (400, "invalid_request", 90061));
        assert_eq!(text, "AADSTS90061: Request to External OIDC endpoint failed.");
        emu.trust_issuer_certificate(&s.certificate_pem());
        assert_eq!(exchange(&emu, GOOD_APP_ID, &token).await.0, 200);

        // expired
        let long_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
        let expired = s
            .service_account_jwt_at(
                "default",
                "partner",
                &[TOKEN_EXCHANGE_AUDIENCE],
                long_ago,
                Duration::from_secs(600),
            )
            .unwrap();
        let (status, body) = exchange(&emu, GOOD_APP_ID, &expired).await;
        let text = assert_failure(status, &body, (401, "invalid_client", 700024));
        assert!(text.starts_with("AADSTS700024: Client assertion is not within its valid time range."), "{text}");

        // signed by a key the issuer does not publish (another server claiming the same issuer)
        let impostor = KubeApiServer::start(ApiServerConfig {
            service_account_issuer: Some(s.service_account_issuer()),
            ..ApiServerConfig::default()
        })
        .await
        .unwrap();
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/namespaces/default/serviceaccounts", impostor.url()))
            .bearer_auth(impostor.admin_token())
            .json(&json!({"metadata": {"name": "partner"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let forged = sa_token(&impostor, "partner", TOKEN_EXCHANGE_AUDIENCE).await;
        let (status, body) = exchange(&emu, GOOD_APP_ID, &forged).await;
        let text = assert_failure(status, &body, (401, "invalid_client", 7000272));
        assert!(
            text.contains(
                "used to sign the federated credential could not be found in the metadata of identity provider"
            )
        );

        // right after a credential is created, Entra may not know it yet
        emu.set_federated_credential_propagation(Duration::from_secs(60));
        emu.add_federated_credential(TENANT_ID, GOOD_APP_ID, sandbox_federated_credential(&s, "default", "other"))
            .unwrap();
        let other = sa_token(&s, "other", TOKEN_EXCHANGE_AUDIENCE).await;
        let (status, body) = exchange(&emu, GOOD_APP_ID, &other).await;
        let text = assert_failure(status, &body, (400, "invalid_request", 70021));
        assert_eq!(
            text,
            format!(
                "AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '{}'. Assertion Subject: 'system:serviceaccount:default:other'. Assertion Audience: '{TOKEN_EXCHANGE_AUDIENCE}'. https://docs.microsoft.com/en-us/azure/active-directory/develop/workload-identity-federation",
                s.service_account_issuer()
            )
        );
        impostor.shutdown().await;
        s.shutdown().await;
    }

    #[tokio::test]
    async fn federated_credentials_are_checked_as_graph_checks_them() {
        let emu = sandbox().await;
        let fic = |name: &str, subject: &str| FederatedCredential {
            name: name.into(),
            issuer: "https://issuer.example".into(),
            subject: subject.into(),
            audiences: vec![TOKEN_EXCHANGE_AUDIENCE.into()],
        };
        assert!(emu.add_federated_credential(TENANT_ID, GOOD_APP_ID, fic("-bad", "s")).is_err());
        let mut two = fic("two-audiences", "s");
        two.audiences.push("api://x".into());
        assert!(emu.add_federated_credential(TENANT_ID, GOOD_APP_ID, two).is_err());
        emu.add_federated_credential(TENANT_ID, GOOD_APP_ID, fic("one", "s")).unwrap();
        assert!(emu.add_federated_credential(TENANT_ID, GOOD_APP_ID, fic("same-pair", "s")).is_err());
        for i in 1..20 {
            emu.add_federated_credential(TENANT_ID, GOOD_APP_ID, fic(&format!("n{i:02}"), &format!("s{i}"))).unwrap();
        }
        assert!(emu.add_federated_credential(TENANT_ID, GOOD_APP_ID, fic("twenty-first", "s21")).is_err());
    }
}
