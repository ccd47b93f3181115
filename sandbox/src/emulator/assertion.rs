//! Client assertions in place of a client secret (`client_assertion_type` jwt-bearer), checked as
//! Entra documents it:
//! - a certificate assertion (signed by the app, `iss` = `sub` = client id, the certificate named
//!   by its thumbprint in the header): the key is looked up among the app's certificates, then
//!   the signature, `iss`/`sub`, `aud` (the token endpoint), the time window and `jti` reuse;
//! - a federated assertion (a token of another issuer, e.g. a Kubernetes ServiceAccount token):
//!   the app must have a federated credential for its `iss`; the keys come from the issuer's
//!   discovery document, then the signature, the time window, `sub` and `aud` are checked.
//!
//! Each failure answers with the AADSTS code, `error` and text Entra answers with (the texts are
//! those seen in Microsoft's documentation and real responses; where only a fragment is known the
//! rest follows the same pattern).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::Value;

use super::config::TenantConfig;
use super::credentials::{AppCertificate, CredentialStore, FederatedCredential, hex_upper};
use super::oidc;

/// Clock skew tolerated on `nbf` and `exp` (Microsoft's token validation default).
pub(crate) const CLOCK_SKEW_SECONDS: i64 = 300;

const CERTIFICATE_DOCS: &str = "https://learn.microsoft.com/entra/identity-platform/certificate-credentials";
const FEDERATION_DOCS: &str =
    "https://docs.microsoft.com/en-us/azure/active-directory/develop/workload-identity-federation";

/// An AADSTS failure: HTTP status, `error`, code and description.
#[derive(Debug)]
pub(crate) struct Rejection {
    pub status: u16,
    pub error: &'static str,
    pub code: u32,
    pub description: String,
}

fn invalid_client(code: u32, description: impl Into<String>) -> Rejection {
    Rejection { status: 401, error: "invalid_client", code, description: description.into() }
}

fn malformed() -> Rejection {
    invalid_client(50027, "JWT token is invalid or malformed.")
}

/// One assertion presented for an app.
pub(crate) struct Assertion<'a> {
    pub tenant: &'a TenantConfig,
    pub client_id: &'a str,
    /// The `Host` the client sent the request to: the token endpoint URL it must name in `aud`.
    pub host: &'a str,
    pub store: &'a CredentialStore,
    /// Refuse a certificate assertion whose `jti` was already accepted.
    pub reject_replays: bool,
}

impl Assertion<'_> {
    pub(crate) async fn verify(&self, jwt: &str) -> Result<(), Rejection> {
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| malformed())?;
        let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(jwt).map_err(|_| malformed())?;
        let iss = claims["iss"].as_str().ok_or_else(malformed)?;
        let names_a_certificate = header.x5t.is_some() || header.x5t_s256.is_some();
        if names_a_certificate || iss.eq_ignore_ascii_case(self.client_id) {
            self.certificate(&header, &claims, jwt)
        } else {
            self.federated(&header, &claims, jwt).await
        }
    }

    fn tenant_id(&self) -> String {
        self.tenant.id.to_ascii_lowercase()
    }

    fn certificate(&self, header: &Header, claims: &Value, jwt: &str) -> Result<(), Rejection> {
        // PS256 goes with the SHA-256 thumbprint, RS256 with the SHA-1 one.
        let (thumbprint, sha256) = match (header.alg, &header.x5t, &header.x5t_s256) {
            (Algorithm::PS256, _, Some(t)) => (t, true),
            (Algorithm::RS256, Some(t), _) => (t, false),
            _ => return Err(invalid_client(700027, "Client assertion failed signature validation.")),
        };
        let presented = URL_SAFE_NO_PAD.decode(thumbprint.trim_end_matches('=')).unwrap_or_default();
        let shown = if presented.is_empty() { thumbprint.clone() } else { hex_upper(&presented) };
        let creds = self.store.of(&self.tenant_id(), self.client_id);
        let found = creds.certificates.iter().find(|c| {
            if sha256 { c.sha256_thumbprint[..] == presented[..] } else { c.sha1_thumbprint[..] == presented[..] }
        });
        let Some(cert) = found else { return Err(self.key_not_found(&shown)) };
        let now = Timestamp::now();
        if now < cert.not_before || now > cert.not_after {
            return Err(invalid_client(
                1000502,
                "The provided certificate is not within its specified validity window.",
            ));
        }
        if !certificate_key(cert).is_some_and(|key| signature_verifies(jwt, &key, header.alg)) {
            return Err(self.invalid_signature(&shown, cert));
        }
        self.certificate_claims(claims, now)
    }

    fn certificate_claims(&self, claims: &Value, now: Timestamp) -> Result<(), Rejection> {
        let text = |k: &str| claims[k].as_str();
        let (Some(iss), Some(sub), Some(jti)) = (text("iss"), text("sub"), text("jti")) else {
            return Err(malformed());
        };
        if iss != sub {
            return Err(invalid_client(50048, "Subject mismatches Issuer claim in the client assertion."));
        }
        if !iss.eq_ignore_ascii_case(self.client_id) {
            return Err(invalid_client(
                700021,
                format!(
                    "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at {CERTIFICATE_DOCS}"
                ),
            ));
        }
        if !audiences(claims).iter().any(|a| self.is_token_endpoint(a)) {
            return Err(invalid_client(700023, "Client assertion audience claim does not match Realm issuer."));
        }
        check_time_window(claims, now)?;
        let replay_key = format!("{}:{}:{jti}", self.tenant_id(), self.client_id.to_ascii_lowercase());
        let exp = claims["exp"].as_i64().unwrap_or_default();
        if self.reject_replays && !self.store.first_use(replay_key, exp, now.as_second()) {
            return Err(invalid_client(
                50027,
                "JWT token is invalid or malformed. The client assertion's 'jti' has already been used.",
            ));
        }
        Ok(())
    }

    /// Whether `aud` is this tenant's token endpoint: v2 or v1 path, tenant GUID or domain, on
    /// the host the request came to or on the cloud's real login host.
    fn is_token_endpoint(&self, aud: &str) -> bool {
        let login = match self.tenant.cloud {
            super::Cloud::GccHigh | super::Cloud::DoD => "https://login.microsoftonline.us",
            super::Cloud::Commercial | super::Cloud::Gcc => "https://login.microsoftonline.com",
        };
        let bases = [format!("http://{}", self.host), format!("https://{}", self.host), login.to_string()];
        let tenants = std::iter::once(&self.tenant.id).chain(&self.tenant.domains);
        let aud = aud.trim_end_matches('/');
        tenants.flat_map(|t| bases.iter().map(move |b| format!("{b}/{t}"))).any(|prefix| {
            ["oauth2/v2.0/token", "oauth2/token"]
                .iter()
                .any(|path| aud.eq_ignore_ascii_case(&format!("{prefix}/{path}")))
        })
    }

    fn key_not_found(&self, thumbprint: &str) -> Rejection {
        invalid_client(
            700027,
            format!(
                "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', {}]",
                self.see_keys()
            ),
        )
    }

    fn invalid_signature(&self, thumbprint: &str, cert: &AppCertificate) -> Rejection {
        let date = |t: Timestamp| t.strftime("%m/%d/%Y %H:%M:%S").to_string();
        invalid_client(
            700027,
            format!(
                "Client assertion contains an invalid signature. [Reason - Key was found, but use of the key to verify the signature failed., Thumbprint of key used by client: '{thumbprint}', Found key 'Start={}, End={}', {}]",
                date(cert.not_before),
                date(cert.not_after),
                self.see_keys()
            ),
        )
    }

    fn see_keys(&self) -> String {
        let app = self.client_id;
        format!(
            "Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{app}'. Review the documentation at https://docs.microsoft.com/en-us/graph/deployments to determine the corresponding service endpoint and https://docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http to build a query request URL, such as 'https://graph.microsoft.com/beta/applications/{app}'"
        )
    }

    async fn federated(&self, header: &Header, claims: &Value, jwt: &str) -> Result<(), Rejection> {
        let presented = Presented {
            issuer: claims["iss"].as_str().unwrap_or_default().to_string(),
            subject: claims["sub"].as_str().unwrap_or_default().to_string(),
            audiences: audiences(claims),
        };
        if is_entra_issuer(&presented.issuer) {
            return Err(invalid_client(700222, "AAD-issued tokens may not be used for federated identity flows."));
        }
        let creds = self.store.of(&self.tenant_id(), self.client_id);
        let all: Vec<&FederatedCredential> = creds.federated.iter().map(|(f, _)| f).collect();
        if !all.iter().any(|f| f.issuer == presented.issuer) {
            return Err(Mismatch::Issuer.rejection(&presented));
        }
        let keys = oidc::signing_keys(&presented.issuer, &self.store.issuer_roots()).await.map_err(|_| Rejection {
            status: 400,
            error: "invalid_request",
            code: 90061,
            description: "Request to External OIDC endpoint failed.".into(),
        })?;
        let kid = header.kid.clone().unwrap_or_default();
        let Some(jwk) = keys.find(&kid) else {
            return Err(invalid_client(
                7000272,
                format!(
                    "The certificate with identifier {kid} used to sign the federated credential could not be found in the metadata of identity provider {}. Please validate that your Identity Provider's metadata exposes the key used to sign the incoming token.",
                    presented.issuer
                ),
            ));
        };
        let key = DecodingKey::from_jwk(jwk).ok().filter(|_| is_rsa(header.alg));
        if !key.is_some_and(|key| signature_verifies(jwt, &key, header.alg)) {
            return Err(invalid_client(
                50027,
                "JWT token is invalid or malformed. External ID token from issuer failed signature verification.",
            ));
        }
        check_time_window(claims, Timestamp::now())?;
        let now = std::time::Instant::now();
        let visible: Vec<&FederatedCredential> =
            creds.federated.iter().filter(|(_, from)| *from <= now).map(|(f, _)| f).collect();
        match match_credential(&visible, &presented) {
            Ok(()) => Ok(()),
            // Only a credential not yet propagated would match: Entra's generic answer.
            Err(_) if match_credential(&all, &presented).is_ok() => Err(Rejection {
                status: 400,
                error: "invalid_request",
                code: 70021,
                description: format!(
                    "No matching federated identity record found for presented assertion. Assertion Issuer: '{}'. Assertion Subject: '{}'. Assertion Audience: '{}'. {FEDERATION_DOCS}",
                    presented.issuer,
                    presented.subject,
                    presented.audiences.join(",")
                ),
            }),
            Err(mismatch) => Err(mismatch.rejection(&presented)),
        }
    }
}

/// What a federated assertion presents.
struct Presented {
    issuer: String,
    subject: String,
    audiences: Vec<String>,
}

/// The first federated-credential field that matched nothing.
enum Mismatch {
    Issuer,
    /// Equal to a credential's subject but for case.
    SubjectCase,
    Subject,
    Audience,
}

impl Mismatch {
    fn rejection(&self, p: &Presented) -> Rejection {
        let check =
            "Check your federated identity credential Subject, Audience and Issuer against the presented assertion.";
        let please = "Please check your federated identity credential Subject, Audience and Issuer against the presented assertion.";
        let (code, description) = match self {
            Mismatch::Issuer => (
                700211,
                format!(
                    "No matching federated identity record found for presented assertion issuer '{}'. {please} {FEDERATION_DOCS}",
                    p.issuer
                ),
            ),
            Mismatch::SubjectCase => (
                7002138,
                format!(
                    "No matching federated identity record found for presented assertion subject '{}'. The subject matches with case-insensitive comparison, but not with case-sensitive comparison. {check} See documentation at: https://learn.microsoft.com/entra/workload-id/workload-identity-federation. See breaking change notification and remediation at: https://learn.microsoft.com/en-us/entra/identity-platform/reference-breaking-changes#august-2024.",
                    p.subject
                ),
            ),
            Mismatch::Subject => (
                700213,
                format!(
                    "No matching federated identity record found for presented assertion subject '{}'. {check} https://learn.microsoft.com/entra/workload-id/workload-identity-federation",
                    p.subject
                ),
            ),
            Mismatch::Audience => (
                700212,
                format!(
                    "No matching federated identity record found for presented assertion audience '{}'. {please} {FEDERATION_DOCS}",
                    p.audiences.join(",")
                ),
            ),
        };
        invalid_client(code, description)
    }
}

/// Issuer, then subject, then audience: all case-sensitive, as Entra matches them.
fn match_credential(credentials: &[&FederatedCredential], p: &Presented) -> Result<(), Mismatch> {
    let by_issuer: Vec<_> = credentials.iter().filter(|f| f.issuer == p.issuer).collect();
    if by_issuer.is_empty() {
        return Err(Mismatch::Issuer);
    }
    let by_subject: Vec<_> = by_issuer.iter().filter(|f| f.subject == p.subject).collect();
    if by_subject.is_empty() {
        let case_only = by_issuer.iter().any(|f| f.subject.eq_ignore_ascii_case(&p.subject));
        return Err(if case_only { Mismatch::SubjectCase } else { Mismatch::Subject });
    }
    if by_subject.iter().any(|f| f.audiences.iter().any(|a| p.audiences.contains(a))) {
        Ok(())
    } else {
        Err(Mismatch::Audience)
    }
}

/// Tokens issued by Entra itself may not be exchanged.
fn is_entra_issuer(issuer: &str) -> bool {
    let host = issuer.split("://").nth(1).unwrap_or_default().split(['/', ':']).next().unwrap_or_default();
    ["login.microsoftonline.com", "login.windows.net", "login.microsoft.com", "sts.windows.net"]
        .iter()
        .any(|h| host.eq_ignore_ascii_case(h) || host.to_ascii_lowercase().ends_with(&format!(".{h}")))
}

/// `aud` as a list (a JWT may carry one string or an array).
fn audiences(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    }
}

fn is_rsa(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512
    )
}

/// The certificate's RSA public key (None for another key type).
fn certificate_key(cert: &AppCertificate) -> Option<DecodingKey> {
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&cert.der).ok()?;
    let spki = parsed.public_key();
    (spki.algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION)
        .then(|| DecodingKey::from_rsa_der(&spki.subject_public_key.data))
}

/// The signature alone: the claims are checked apart, each with its own answer.
fn signature_verifies(jwt: &str, key: &DecodingKey, alg: Algorithm) -> bool {
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(jwt, key, &validation).is_ok()
}

/// `nbf` (absent = 1970) and `exp`, with [`CLOCK_SKEW_SECONDS`]: AADSTS700024 outside.
fn check_time_window(claims: &Value, now: Timestamp) -> Result<(), Rejection> {
    let nbf = claims["nbf"].as_i64().unwrap_or(0);
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let t = now.as_second();
    if nbf - CLOCK_SKEW_SECONDS <= t && t < exp + CLOCK_SKEW_SECONDS {
        return Ok(());
    }
    let at = |s: i64| Timestamp::from_second(s).map(precise).unwrap_or_default();
    Err(invalid_client(
        700024,
        format!(
            "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at {CERTIFICATE_DOCS}",
            precise(now),
            at(nbf),
            at(exp)
        ),
    ))
}

/// `2024-12-07T12:09:18.3149355Z`: seven fractional digits, as Entra writes times.
fn precise(t: Timestamp) -> String {
    format!("{}.{:07}Z", t.strftime("%Y-%m-%dT%H:%M:%S"), t.subsec_nanosecond() / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fic(issuer: &str, subject: &str, audience: &str) -> FederatedCredential {
        FederatedCredential {
            name: "x".into(),
            issuer: issuer.into(),
            subject: subject.into(),
            audiences: vec![audience.into()],
        }
    }

    #[test]
    fn matching_is_issuer_then_subject_then_audience_case_sensitive() {
        let f = fic("https://i", "system:serviceaccount:ns:sa", "api://AzureADTokenExchange");
        let p =
            |i: &str, s: &str, a: &str| Presented { issuer: i.into(), subject: s.into(), audiences: vec![a.into()] };
        let ok = p("https://i", "system:serviceaccount:ns:sa", "api://AzureADTokenExchange");
        assert!(match_credential(&[&f], &ok).is_ok());
        assert!(matches!(
            match_credential(&[&f], &p("https://i/", &ok.subject, "api://AzureADTokenExchange")),
            Err(Mismatch::Issuer)
        ));
        assert!(matches!(
            match_credential(&[&f], &p("https://i", "system:serviceaccount:NS:sa", "api://AzureADTokenExchange")),
            Err(Mismatch::SubjectCase)
        ));
        assert!(matches!(
            match_credential(&[&f], &p("https://i", "system:serviceaccount:ns:other", "api://AzureADTokenExchange")),
            Err(Mismatch::Subject)
        ));
        assert!(matches!(
            match_credential(&[&f], &p("https://i", &ok.subject, "api://other")),
            Err(Mismatch::Audience)
        ));
    }

    #[test]
    fn entra_issuers_are_recognised() {
        assert!(is_entra_issuer("https://login.microsoftonline.com/t/v2.0"));
        assert!(is_entra_issuer("https://sts.windows.net/t/"));
        assert!(!is_entra_issuer("https://oidc.prod-aks.azure.com/x/"));
    }

    #[test]
    fn times_have_seven_fractional_digits() {
        let t: Timestamp = "2024-12-07T12:09:18.3149355Z".parse().unwrap();
        assert_eq!(precise(t), "2024-12-07T12:09:18.3149355Z");
        assert_eq!(precise(Timestamp::UNIX_EPOCH), "1970-01-01T00:00:00.0000000Z");
    }
}
