//! Client-credentials tokens (v2 endpoint; the v1 shape is tolerated), cached until shortly before
//! expiry, and classified errors.
//!
//! Errors are classified by `error_codes[0]` (the AADSTS number) first, then by `error`, then by
//! the HTTP status — never by the description text, which Microsoft changes over time. The
//! description is only echoed after sanitizing (first line, no trace ids, secret redacted).

use std::future::Future;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::DefenderError;
use super::assertion::{ASSERTION_TYPE, Proof};
use super::error::describe_reqwest;
use super::jwt::Claims;
use crate::api::PartnerReason;

/// An Entra app's credentials. `Debug` never shows a secret or a key.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// GUID or verified domain.
    pub tenant_id: String,
    pub client_id: String,
    pub proof: Proof,
}

/// A bearer token and what it says about itself. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    pub secret: SecretString,
    pub claims: Claims,
    pub expires_at: Instant,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken").field("claims", &self.claims).field("expires_at", &self.expires_at).finish()
    }
}

/// Lifetime assumed when Entra sends neither `expires_in` nor a readable `exp`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The longest lifetime the cache believes.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How long before expiry a token is refreshed: the earlier of 90 % of its lifetime and 5 minutes
/// before expiry, but never earlier than half its lifetime (so short-lived tokens are still reused).
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).max(Duration::from_secs(300)).min(lifetime / 2)
}

// ---------------------------------------------------------------------------------------------
// Success bodies

/// A number (v2) or a numeric string (v1).
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrString {
    Num(f64),
    Str(String),
}

impl NumOrString {
    fn seconds(&self) -> Option<u64> {
        match self {
            NumOrString::Num(n) if n.is_finite() && *n >= 0.0 => Some(*n as u64),
            NumOrString::Num(_) => None,
            NumOrString::Str(s) => {
                s.trim().parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0).map(|n| n as u64)
            }
        }
    }
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<NumOrString>,
}

/// A parsed success body: the token, its claims and its lifetime.
pub struct IssuedToken {
    pub secret: SecretString,
    pub claims: Claims,
    pub lifetime: Duration,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken").field("claims", &self.claims).field("lifetime", &self.lifetime).finish()
    }
}

/// Parses a 200 body of the token endpoint (`expires_in` a number on v2, a string on v1).
pub fn parse_token_response(body: &[u8]) -> Result<IssuedToken, DefenderError> {
    let parsed: TokenBody = serde_json::from_slice(body)
        .map_err(|_| DefenderError::Protocol("the token endpoint answered 200 without a JSON token body".into()))?;
    let token = parsed
        .access_token
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| DefenderError::Protocol("the token endpoint answered 200 without access_token".into()))?;
    let claims = super::jwt::decode(&token)?;
    let lifetime = match parsed.expires_in.as_ref().and_then(NumOrString::seconds) {
        Some(s) => Duration::from_secs(s),
        None => claims
            .expires
            .and_then(|exp| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
                u64::try_from(exp.checked_sub(now)?).ok()
            })
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME),
    };
    // Entra's tokens live about an hour; whatever a body claims, the cache never trusts more
    // than a day (and `Instant` arithmetic never overflows).
    let lifetime = lifetime.min(MAX_LIFETIME);
    Ok(IssuedToken { secret: SecretString::from(token), claims, lifetime })
}

// ---------------------------------------------------------------------------------------------
// Error bodies

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Option<Vec<serde_json::Value>>,
}

/// Reason and transience for an AADSTS code, as Entra's error-code reference describes them.
pub fn reason_for_aadsts(code: u32) -> Option<(PartnerReason, bool)> {
    Some(match code {
        7000215 => (PartnerReason::InvalidSecret, false),
        7000222 => (PartnerReason::SecretExpired, false),
        7000218 => (PartnerReason::CredentialMissing, false),
        700016 => (PartnerReason::AppNotFound, false),
        90002 => (PartnerReason::TenantNotFound, false),
        900023 => (PartnerReason::TenantInvalid, false),
        90038 | 900432 | 900382 => (PartnerReason::WrongCloud, false),
        70011 | 700022 | 700023 | 9001023 => (PartnerReason::ConfigError, false),
        500011 => (PartnerReason::DefenderNotProvisioned, false),
        7000112 | 70001 => (PartnerReason::AppDisabled, false),
        53003 | 530032 => (PartnerReason::Blocked, false),
        90055 => (PartnerReason::Throttled, true),
        90024 | 90006 | 90090 | 50000 => (PartnerReason::EntraUnavailable, true),
        // Client assertions (certificates, workload identity).
        700027 | 700024 | 50027 | 50048 | 700021 | 700222 | 90061 => (PartnerReason::AssertionRejected, false),
        1000502 => (PartnerReason::CertificateExpired, false),
        700211 | 700212 | 700213 | 7002138 => (PartnerReason::FederatedCredentialMismatch, false),
        // Right after a federated credential is created Entra may not know it yet: asked again soon.
        70021 => (PartnerReason::FederatedCredentialMismatch, true),
        _ => return None,
    })
}

/// Reason and transience for an OAuth `error` string, when no known AADSTS code came with it.
fn reason_for_error(error: &str) -> Option<(PartnerReason, bool)> {
    Some(match error {
        "temporarily_unavailable" | "server_error" => (PartnerReason::EntraUnavailable, true),
        "invalid_client" => (PartnerReason::InvalidSecret, false),
        "unauthorized_client" => (PartnerReason::AppNotFound, false),
        "invalid_tenant" => (PartnerReason::TenantNotFound, false),
        "invalid_scope" | "invalid_request" | "unsupported_grant_type" | "invalid_grant" => {
            (PartnerReason::ConfigError, false)
        }
        "invalid_resource" => (PartnerReason::DefenderNotProvisioned, false),
        _ => return None,
    })
}

fn hint(reason: PartnerReason) -> &'static str {
    match reason {
        // Entra's own description already says "the client secret value, not the client secret ID".
        PartnerReason::InvalidSecret => "Entra rejected the client secret",
        PartnerReason::SecretExpired => "the client secret has expired; create a new one and update the Secret",
        PartnerReason::CredentialMissing => "no client secret reached Entra",
        PartnerReason::AppNotFound => {
            "the client id was not found in this tenant (wrong client id, or an app of another tenant)"
        }
        PartnerReason::TenantNotFound => {
            "the tenant was not found (wrong tenant id or domain, or a tenant of another cloud)"
        }
        PartnerReason::TenantInvalid => {
            "the tenant id is malformed: store the tenant GUID or a verified domain under the Secret's tenantId key \
             (or the key spec.credentials.secretRef.tenantIdKey names)"
        }
        PartnerReason::WrongCloud => "the tenant or app belongs to another cloud; check spec.cloud",
        PartnerReason::ConfigError => "Entra rejected the token request as misconfigured",
        PartnerReason::DefenderNotProvisioned => {
            "the tenant has no Microsoft Defender for Endpoint (WindowsDefenderATP) service principal"
        }
        PartnerReason::AppDisabled => "the app is disabled in Entra",
        PartnerReason::Blocked => "a Conditional Access policy blocks this app",
        PartnerReason::EntraUnavailable => "Entra is temporarily unavailable",
        PartnerReason::Throttled => "Entra throttled the token request",
        PartnerReason::AssertionRejected => "Entra rejected the client assertion",
        PartnerReason::CertificateExpired => "Entra says the certificate is outside its validity window",
        PartnerReason::FederatedCredentialMismatch => {
            "no federated credential of the app matches the service-account token's issuer, subject and audience"
        }
        _ => "Entra refused the token request",
    }
}

/// Keeps the first line of an `error_description` (the `AADSTSnnn: ...` sentence), drops trace and
/// correlation ids, redacts `secret` if it somehow appears, and caps the length.
pub fn sanitize_description(description: &str, secret: &str) -> String {
    let mut line = description.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_string();
    for marker in ["Trace ID:", "Correlation ID:", "Timestamp:"] {
        if let Some(i) = line.find(marker) {
            line.truncate(i);
        }
    }
    let mut line = line.trim().to_string();
    if secret.len() >= 3 {
        line = line.replace(secret, "<redacted>");
    }
    super::error::clip(&line, 240)
}

/// Builds the classified error for a non-2xx answer of the token endpoint.
pub fn classify_token_error(status: u16, body: &[u8], retry_after: Option<Duration>, secret: &str) -> DefenderError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let aadsts = parsed.error_codes.as_ref().and_then(|c| c.first()).and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    // `error` is outside text too: one line, clipped, the secret blanked, like the description.
    let error = sanitize_description(parsed.error.as_deref().unwrap_or(""), secret);
    let error = error.as_str();
    let (reason, transient) =
        aadsts.and_then(reason_for_aadsts).or_else(|| reason_for_error(error)).unwrap_or(match status {
            429 => (PartnerReason::Throttled, true),
            500..=599 | 408 => (PartnerReason::EntraUnavailable, true),
            _ => (PartnerReason::AuthenticationFailed, false),
        });
    if reason == PartnerReason::Throttled || status == 429 {
        return DefenderError::Throttled { retry_after: retry_after.unwrap_or(Duration::from_secs(5)) };
    }
    let detail = match parsed.error_description.as_deref().map(|d| sanitize_description(d, secret)) {
        Some(d) if !d.is_empty() => d,
        _ => match (aadsts, error) {
            (Some(code), "") => format!("HTTP {status}, AADSTS{code}"),
            (Some(code), e) => format!("HTTP {status} {e}, AADSTS{code}"),
            (None, "") => format!("HTTP {status}"),
            (None, e) => format!("HTTP {status} {e}"),
        },
    };
    DefenderError::Token { reason, aadsts, message: format!("{} ({detail})", hint(reason)), transient }
}

// ---------------------------------------------------------------------------------------------
// Fetch

/// Requests a token: `POST {token_url}` with client_id, scope, grant_type and the proof — the
/// client secret, or a client assertion (signed here with the certificate, or obtained from the
/// assertion source).
pub async fn request_token(
    http: &reqwest::Client,
    token_url: &url::Url,
    credentials: &Credentials,
    scope: &str,
    timeout: Duration,
) -> Result<IssuedToken, DefenderError> {
    let assertion = match &credentials.proof {
        Proof::Secret(_) => None,
        Proof::Certificate(key) => {
            Some(key.assertion(&credentials.client_id, token_url.as_str(), jiff::Timestamp::now())?)
        }
        Proof::Federated(source) => Some(source.assertion().await?),
    };
    // What must never be echoed: the secret or the assertion.
    let secret = match (&credentials.proof, &assertion) {
        (Proof::Secret(secret), _) => secret.expose_secret(),
        (_, Some(assertion)) => assertion.expose_secret(),
        (_, None) => "",
    };
    let mut form =
        vec![("client_id", credentials.client_id.as_str()), ("scope", scope), ("grant_type", "client_credentials")];
    match &assertion {
        None => form.push(("client_secret", secret)),
        Some(_) => form.extend([("client_assertion_type", ASSERTION_TYPE), ("client_assertion", secret)]),
    }
    let host = token_url.host_str().unwrap_or("").to_string();
    let unreachable = |what: String| DefenderError::Token {
        reason: PartnerReason::EntraUnavailable,
        aadsts: None,
        message: format!("cannot reach the login endpoint {host}: {what}"),
        transient: true,
    };
    let response = http
        .post(token_url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| unreachable(describe_reqwest(&e)))?;
    let status = response.status().as_u16();
    let retry_after = super::error::parse_retry_after(response.headers());
    let body = response.bytes().await.map_err(|e| unreachable(describe_reqwest(&e)))?;
    if (200..300).contains(&status) {
        let issued = parse_token_response(&body)?;
        tracing::debug!(tenant = %credentials.tenant_id, client_id = %credentials.client_id,
            lifetime_s = issued.lifetime.as_secs(), "token issued");
        Ok(issued)
    } else {
        let mut err = classify_token_error(status, &body, retry_after, secret);
        if assertion.is_some() {
            err = as_assertion_error(err);
        }
        if let (
            DefenderError::Token { reason: PartnerReason::FederatedCredentialMismatch, message, .. },
            Some(assertion),
        ) = (&mut err, &assertion)
        {
            *message += &federated_credential_needed(assertion.expose_secret());
        }
        tracing::debug!(tenant = %credentials.tenant_id, client_id = %credentials.client_id, status,
            reason = %err.reason(), "token request refused");
        Err(err)
    }
}

/// Reasons that, with a client assertion, mean the assertion was refused: `invalid_client`
/// without a known code (which a secret flow reads as a wrong secret), and AADSTS700023 (an
/// assertion's audience; a misconfigured scope otherwise).
fn as_assertion_error(error: DefenderError) -> DefenderError {
    match error {
        DefenderError::Token { reason: PartnerReason::InvalidSecret, aadsts, message, transient }
        | DefenderError::Token {
            reason: PartnerReason::ConfigError,
            aadsts: aadsts @ Some(700023),
            message,
            transient,
        } => DefenderError::Token { reason: PartnerReason::AssertionRejected, aadsts, message, transient },
        other => other,
    }
}

/// What the app's federated credential must say to match the token it was shown.
fn federated_credential_needed(assertion: &str) -> String {
    let Ok(claims) = super::jwt::decode(assertion) else { return String::new() };
    format!(
        "; the app needs a federated credential with issuer '{}', subject '{}' and audience '{}'",
        claims.issuer.unwrap_or_default(),
        claims.subject.unwrap_or_default(),
        claims.audience.unwrap_or_default()
    )
}

// ---------------------------------------------------------------------------------------------
// Cache

struct Cached {
    token: AccessToken,
    refresh_at: tokio::time::Instant,
    expires_at: tokio::time::Instant,
}

/// One token per client, refreshed before expiry; concurrent callers share one request.
#[derive(Default)]
pub struct TokenCache {
    slot: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

impl TokenCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached token, or a new one from `fetch` (only one fetch runs at a time; callers that
    /// waited get its result from the cache). If a refresh fails transiently while the cached
    /// token is still valid for a while, the cached token is returned.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<AccessToken, DefenderError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<IssuedToken, DefenderError>>,
    {
        let mut slot = self.slot.lock().await;
        let now = tokio::time::Instant::now();
        if let Some(c) = slot.as_ref()
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let started = now;
        match fetch().await {
            Ok(issued) => {
                let expires_at = started + issued.lifetime;
                let token =
                    AccessToken { secret: issued.secret, claims: issued.claims, expires_at: expires_at.into_std() };
                *slot = Some(Cached {
                    token: token.clone(),
                    refresh_at: expires_at - refresh_margin(issued.lifetime),
                    expires_at,
                });
                Ok(token)
            }
            Err(e) => {
                if e.is_transient()
                    && let Some(c) = slot.as_ref()
                    && tokio::time::Instant::now() + Duration::from_secs(30) < c.expires_at
                {
                    tracing::warn!(reason = %e.reason(), "token refresh failed; using the cached token");
                    return Ok(c.token.clone());
                }
                Err(e)
            }
        }
    }

    /// Drops the cached token if it is `token` (e.g. after a 401), so the next call fetches anew.
    pub async fn invalidate(&self, token: &AccessToken) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|c| c.token.secret.expose_secret() == token.secret.expose_secret()) {
            *slot = None;
        }
    }

    /// Drops any cached token.
    pub async fn clear(&self) {
        *self.slot.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;

    fn jwt() -> String {
        super::super::jwt::encode_unsigned(
            &json!({"tid": "t", "appid": "a", "aud": "x", "roles": ["Ti.ReadWrite.All"]}),
        )
    }

    #[test]
    fn expires_in_number_or_string() {
        let t = jwt();
        let v2 = parse_token_response(
            json!({"token_type":"Bearer","expires_in":3599,"ext_expires_in":0,"access_token":t}).to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(v2.lifetime, Duration::from_secs(3599));
        assert_eq!(v2.claims.tenant_id.as_deref(), Some("t"));
        let v1 = parse_token_response(
            json!({"token_type":"Bearer","expires_in":"3599","expires_on":"1700000000","not_before":"1699996400",
                   "resource":"https://api.securitycenter.microsoft.com","access_token":t})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(v1.lifetime, Duration::from_secs(3599));
        let none = parse_token_response(json!({"access_token": t}).to_string().as_bytes()).unwrap();
        assert_eq!(none.lifetime, DEFAULT_LIFETIME);
        assert!(format!("{v1:?}").find(&t).is_none(), "Debug never shows the token");
    }

    #[test]
    fn bad_success_bodies() {
        assert_eq!(parse_token_response(b"").unwrap_err().reason(), "ProtocolError");
        assert_eq!(parse_token_response(b"<html>").unwrap_err().reason(), "ProtocolError");
        assert_eq!(parse_token_response(br#"{"expires_in":1}"#).unwrap_err().reason(), "ProtocolError");
        assert_eq!(parse_token_response(br#"{"access_token":"nope"}"#).unwrap_err().reason(), "ProtocolError");
        let e = parse_token_response(br#"{"access_token":"not-a-jwt-value","expires_in":"x"}"#).unwrap_err();
        assert!(!e.to_string().contains("not-a-jwt-value"));
    }

    fn aadsts_body(code: u32, error: &str) -> Vec<u8> {
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: Something happened for app 'x'.\r\nTrace ID: 0000\r\nCorrelation ID: 1111\r\nTimestamp: 2024-07-15 11:14:02Z"),
            "error_codes": [code],
            "trace_id": "0000",
            "correlation_id": "1111"
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn every_aadsts_code() {
        let cases = [
            (7000215, "invalid_client", 401, "InvalidSecret"),
            (7000222, "invalid_client", 401, "SecretExpired"),
            (7000218, "invalid_client", 400, "CredentialMissing"),
            (700016, "unauthorized_client", 400, "AppNotFound"),
            (90002, "invalid_tenant", 400, "TenantNotFound"),
            (900023, "invalid_request", 400, "TenantInvalid"),
            (90038, "invalid_request", 400, "WrongCloud"),
            (900432, "invalid_client", 400, "WrongCloud"),
            (900382, "invalid_request", 400, "WrongCloud"),
            (70011, "invalid_scope", 400, "ConfigError"),
            (700022, "invalid_scope", 400, "ConfigError"),
            (700023, "invalid_scope", 400, "ConfigError"),
            (9001023, "invalid_request", 400, "ConfigError"),
            (500011, "invalid_resource", 400, "DefenderNotProvisioned"),
            (7000112, "unauthorized_client", 400, "AppDisabled"),
            (70001, "unauthorized_client", 400, "AppDisabled"),
            (53003, "access_denied", 400, "Blocked"),
            (530032, "access_denied", 400, "Blocked"),
        ];
        for (code, error, status, reason) in cases {
            let e = classify_token_error(status, &aadsts_body(code, error), None, "s3cr3t");
            assert_eq!(e.reason(), reason, "{code}");
            assert!(!e.is_transient(), "{code}");
            match &e {
                DefenderError::Token { aadsts, message, .. } => {
                    assert_eq!(*aadsts, Some(code));
                    assert!(message.contains(&format!("AADSTS{code}")), "{message}");
                    assert!(!message.contains("Trace ID") && !message.contains("0000"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        // A malformed tenant says which Secret key to fix and how.
        let e = classify_token_error(400, &aadsts_body(900023, "invalid_request"), None, "s3cr3t").to_string();
        assert!(e.contains("tenantId key") && e.contains("tenantIdKey"), "{e}");
        assert!(e.contains("store the tenant GUID or a verified domain"), "{e}");
    }

    #[test]
    fn code_wins_over_error_and_error_over_status() {
        // The code decides even when `error` says something else.
        assert_eq!(
            classify_token_error(401, &aadsts_body(7000222, "invalid_client"), None, "").reason(),
            "SecretExpired"
        );
        // Unknown code: fall back to `error`.
        assert_eq!(
            classify_token_error(400, &aadsts_body(12345, "invalid_tenant"), None, "").reason(),
            "TenantNotFound"
        );
        // Description text is never used for classification.
        let body = json!({"error": "weird", "error_description": "AADSTS7000215: Invalid client secret"}).to_string();
        assert_eq!(classify_token_error(400, body.as_bytes(), None, "").reason(), "AuthenticationFailed");
        // Codes as strings are tolerated.
        let body = json!({"error": "x", "error_codes": ["700016"]}).to_string();
        assert_eq!(classify_token_error(400, body.as_bytes(), None, "").reason(), "AppNotFound");
    }

    #[test]
    fn transient_errors() {
        let e = classify_token_error(503, b"", None, "");
        assert_eq!(e.reason(), "EntraUnavailable");
        assert!(e.is_transient());
        let e = classify_token_error(400, json!({"error":"temporarily_unavailable"}).to_string().as_bytes(), None, "");
        assert_eq!(e.reason(), "EntraUnavailable");
        assert!(e.is_transient());
        let e = classify_token_error(500, b"<html>oops</html>", None, "");
        assert_eq!(e.reason(), "EntraUnavailable");
        let e = classify_token_error(429, b"", Some(Duration::from_secs(9)), "");
        assert_eq!(e.reason(), "Throttled");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(9)));
        assert!(e.is_transient());
        let e = classify_token_error(400, &aadsts_body(90055, "temporarily_unavailable"), None, "");
        assert_eq!(e.reason(), "Throttled");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
        let e = classify_token_error(400, &aadsts_body(50000, "temporarily_unavailable"), None, "");
        assert_eq!(e.reason(), "EntraUnavailable");
        assert!(e.is_transient());
        let e = classify_token_error(400, b"not json", None, "");
        assert_eq!(e.reason(), "AuthenticationFailed");
        assert!(!e.is_transient());
    }

    #[test]
    fn secret_never_echoed() {
        let secret = "Abc~1234567890.secretvalue";
        let body = json!({
            "error": "invalid_client",
            "error_description": format!("AADSTS7000215: Invalid client secret provided: {secret}.\r\nTrace ID: 1"),
            "error_codes": [7000215]
        })
        .to_string();
        let e = classify_token_error(401, body.as_bytes(), None, secret);
        assert!(!e.to_string().contains(secret), "{e}");
        assert!(!format!("{e:?}").contains(secret));
        let creds = Credentials { tenant_id: "t".into(), client_id: "c".into(), proof: Proof::Secret(secret.into()) };
        assert!(!format!("{creds:?}").contains(secret));
    }

    #[test]
    fn refresh_timing() {
        // One hour: 90 % of the lifetime is earlier than 5 min before expiry.
        assert_eq!(refresh_margin(Duration::from_secs(3600)), Duration::from_secs(360));
        // Ten minutes: 5 min before expiry is earlier than 90 %.
        assert_eq!(refresh_margin(Duration::from_secs(600)), Duration::from_secs(300));
        // Very short: never earlier than half the lifetime.
        assert_eq!(refresh_margin(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(refresh_margin(Duration::ZERO), Duration::ZERO);
    }

    fn issued(lifetime: u64) -> Result<IssuedToken, DefenderError> {
        parse_token_response(json!({"access_token": jwt(), "expires_in": lifetime}).to_string().as_bytes())
    }

    #[tokio::test(start_paused = true)]
    async fn cache_reuses_then_refreshes() {
        let cache = TokenCache::new();
        let calls = AtomicUsize::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            issued(3600)
        };
        cache.get(fetch).await.unwrap();
        cache.get(fetch).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(3239)).await;
        cache.get(fetch).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "still fresh before 90 %");
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.get(fetch).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "refreshed at 90 %");
    }

    #[tokio::test(start_paused = true)]
    async fn single_flight() {
        let cache = Arc::new(TokenCache::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get(|| async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            issued(3600)
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_refresh_failure_keeps_valid_token_and_invalidate() {
        let cache = TokenCache::new();
        let first = cache.get(|| async { issued(3600) }).await.unwrap();
        tokio::time::advance(Duration::from_secs(3300)).await;
        let again = cache
            .get(|| async { Err(DefenderError::Unreachable { host: "h".into(), message: "down".into() }) })
            .await
            .unwrap();
        assert_eq!(again.secret.expose_secret(), first.secret.expose_secret());
        // A terminal failure is reported.
        let err = cache.get(|| async { Err(DefenderError::Config("bad".into())) }).await.unwrap_err();
        assert_eq!(err.reason(), "ConfigError");
        cache.invalidate(&first).await;
        let calls = AtomicUsize::new(0);
        cache
            .get(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                issued(3600)
            })
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
