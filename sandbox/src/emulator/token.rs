//! Entra token endpoints (v1 and v2 client-credentials) and the JWTs they issue.
//!
//! Tokens are v1-style (`ver` "1.0", `appid`, `aud` = the requested resource, as MDE issues
//! them even from the v2 endpoint), signed HS256 with a random per-emulator key, and verified on
//! every API call. The client authenticates with a secret (form or HTTP Basic) or with a client
//! assertion (`client_assertion_type` jwt-bearer + `client_assertion`, checked in `assertion`);
//! the token says which in `appidacr` (`1` secret, `2` assertion).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Cloud;
use super::assertion::Assertion;
use super::config::{AppConfig, TenantConfig};
use super::credentials::{CLIENT_ASSERTION_TYPE, CredentialStore};

/// The WindowsDefenderATP resource app id.
pub const MDE_APP_ID: &str = "fc780465-2017-40d4-a0c5-307022471b92";
/// The "Microsoft Threat Protection" (Defender XDR) resource app id: a different resource whose
/// tokens carry none of the WindowsDefenderATP roles.
pub const MTP_APP_ID: &str = "8ee8fdad-f234-4243-8f3b-15c294843740";

const ALL_CLOUDS: &[Cloud] = &[Cloud::Commercial, Cloud::Gcc, Cloud::GccHigh, Cloud::DoD];
const COMMERCIAL: &[Cloud] = &[Cloud::Commercial];
const COMMERCIAL_GCC: &[Cloud] = &[Cloud::Commercial, Cloud::Gcc];
const GCC: &[Cloud] = &[Cloud::Gcc];
const GOV: &[Cloud] = &[Cloud::GccHigh, Cloud::DoD];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResourceKind {
    /// WindowsDefenderATP: tokens carry the app's roles.
    Mde,
    /// Microsoft Threat Protection: tokens carry no WindowsDefenderATP roles.
    Mtp,
}

/// The resource identifiers the emulator knows, and the clouds in which each exists.
const RESOURCES: &[(&str, ResourceKind, &[Cloud])] = &[
    ("https://api.securitycenter.microsoft.com", ResourceKind::Mde, COMMERCIAL),
    ("https://securitycenter.onmicrosoft.com/windowsatpservice", ResourceKind::Mde, COMMERCIAL_GCC),
    ("https://api.securitycenter.windows.com", ResourceKind::Mde, COMMERCIAL),
    ("https://api-gcc.securitycenter.microsoft.us", ResourceKind::Mde, GCC),
    ("https://api-gov.securitycenter.microsoft.us", ResourceKind::Mde, GOV),
    ("https://securitycenter.onmicrosoft.us/windowsatpservice", ResourceKind::Mde, GOV),
    (MDE_APP_ID, ResourceKind::Mde, ALL_CLOUDS),
    ("https://api.security.microsoft.com", ResourceKind::Mtp, COMMERCIAL),
    ("https://api-gcc.security.microsoft.us", ResourceKind::Mtp, GCC),
    ("https://api-gov.security.microsoft.us", ResourceKind::Mtp, GOV),
    (MTP_APP_ID, ResourceKind::Mtp, ALL_CLOUDS),
];

/// Looks a resource identifier up (case-insensitive, trailing `/` ignored).
pub(crate) fn resource_kind(resource: &str) -> Option<(ResourceKind, &'static [Cloud])> {
    let r = resource.trim_end_matches('/');
    RESOURCES.iter().find(|(id, _, _)| id.eq_ignore_ascii_case(r)).map(|(_, k, c)| (*k, *c))
}

fn gov_login(cloud: Cloud) -> bool {
    matches!(cloud, Cloud::GccHigh | Cloud::DoD)
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

pub(crate) fn sign_jwt(key: &[u8], claims: &Value) -> String {
    let header = json!({"typ": "JWT", "alg": "HS256", "kid": "defender-emulator"});
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = hmac_sha256(key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// What the API needs from a verified token.
#[derive(Clone, Debug)]
pub(crate) struct TokenClaims {
    pub tenant: String,
    pub app: String,
    pub roles: Vec<String>,
}

/// Verifies signature, `nbf`/`exp` and `aud`. The error is the 401 message.
pub(crate) fn verify_jwt(key: &[u8], token: &str, now: i64) -> Result<TokenClaims, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts[..] else {
        return Err("Authorization header is malformed: the bearer token is not a JWT.".into());
    };
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| "The bearer token signature is malformed.".to_string())?;
    let expected = hmac_sha256(key, format!("{h}.{p}").as_bytes());
    if sig.len() != expected.len() || sig.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return Err("The bearer token signature is invalid.".into());
    }
    let claims: Value = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| "The bearer token payload is malformed.".to_string())?;
    let exp = claims["exp"].as_i64().unwrap_or(0);
    if exp <= now {
        return Err(format!("The bearer token expired at {exp} (now {now})."));
    }
    if claims["nbf"].as_i64().unwrap_or(i64::MAX) > now + 300 {
        return Err("The bearer token is not yet valid.".into());
    }
    let aud = claims["aud"].as_str().unwrap_or_default();
    if resource_kind(aud).is_none() {
        return Err(format!("The bearer token audience '{aud}' is invalid for this resource."));
    }
    let s = |k: &str| claims[k].as_str().map(str::to_owned).ok_or_else(|| format!("The bearer token lacks '{k}'."));
    Ok(TokenClaims {
        tenant: s("tid")?,
        app: s("appid")?,
        roles: claims["roles"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
    })
}

/// A token-endpoint answer: HTTP status and JSON body, plus what to record.
pub(crate) struct TokenOutcome {
    pub status: u16,
    pub body: Value,
    pub tenant: Option<String>,
    pub app: Option<String>,
}

/// Builds the AADSTS error body (shape of reference-error-codes).
pub(crate) fn aad_error(status: u16, error: &str, code: u32, description: &str) -> (u16, Value) {
    let now = jiff::Timestamp::now();
    let ts = now.strftime("%Y-%m-%d %H:%M:%SZ").to_string();
    let trace = uuid::Uuid::new_v4().to_string();
    let corr = uuid::Uuid::new_v4().to_string();
    (
        status,
        json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}"
            ),
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

fn is_guid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok() && s.len() == 36
}

fn is_domain(s: &str) -> bool {
    s.contains('.')
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Inputs of one token request.
pub(crate) struct TokenRequest<'a> {
    /// `true` for `/oauth2/v2.0/token`.
    pub v2: bool,
    pub tenant_segment: &'a str,
    pub content_type: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub body: &'a [u8],
    /// The `Host` header: a certificate assertion's `aud` names the endpoint on it.
    pub host: &'a str,
}

pub(crate) struct Issuer<'a> {
    pub tenants: &'a [TenantConfig],
    pub key: &'a [u8],
    pub lifetime: std::time::Duration,
    pub down: bool,
    pub credentials: &'a CredentialStore,
    /// Refuse a certificate assertion whose `jti` was already used.
    pub reject_replays: bool,
}

fn oid_for(tenant: &str, app: &str) -> String {
    let h = Sha256::digest(format!("oid:{tenant}:{app}"));
    uuid::Builder::from_random_bytes(h[..16].try_into().unwrap()).into_uuid().to_string()
}

impl Issuer<'_> {
    pub(crate) async fn handle(&self, req: &TokenRequest<'_>) -> TokenOutcome {
        let mut out = TokenOutcome { status: 0, body: Value::Null, tenant: None, app: None };
        let (status, body) = self.issue(req, &mut out).await;
        out.status = status;
        out.body = body;
        out
    }

    async fn issue(&self, req: &TokenRequest<'_>, out: &mut TokenOutcome) -> (u16, Value) {
        if self.down {
            return aad_error(
                503,
                "temporarily_unavailable",
                50000,
                "There was an error issuing a token or an issue with our sign-in service. The service is temporarily unavailable. Please try again.",
            );
        }
        let seg = req.tenant_segment;
        out.tenant = Some(seg.to_owned());
        let lower = seg.to_ascii_lowercase();
        if matches!(lower.as_str(), "common" | "consumers" | "organizations") {
            return aad_error(
                400,
                "invalid_request",
                9001023,
                "The grant type isn't supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint.",
            );
        }
        if !is_guid(seg) && !is_domain(seg) {
            return aad_error(
                400,
                "invalid_request",
                900023,
                &format!(
                    "Specified tenant identifier '{seg}' is neither a valid DNS name, nor a valid external domain."
                ),
            );
        }
        let Some(tenant) = self
            .tenants
            .iter()
            .find(|t| t.id.eq_ignore_ascii_case(seg) || t.domains.iter().any(|d| d.eq_ignore_ascii_case(seg)))
        else {
            return aad_error(
                400,
                "invalid_tenant",
                90002,
                &format!(
                    "Tenant '{seg}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
                ),
            );
        };
        let tenant_id = tenant.id.to_ascii_lowercase();
        out.tenant = Some(tenant_id.clone());

        let form_ok = req.content_type.is_some_and(|c| {
            c.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
        let form: Vec<(String, String)> =
            if form_ok { url::form_urlencoded::parse(req.body).into_owned().collect() } else { Vec::new() };
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
        let missing = |name: &str| {
            aad_error(
                400,
                "invalid_request",
                900144,
                &format!("The request body must contain the following parameter: '{name}'."),
            )
        };

        let Some(grant_type) = field("grant_type") else { return missing("grant_type") };
        if grant_type != "client_credentials" {
            return aad_error(
                400,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{grant_type}'."),
            );
        }

        // HTTP Basic (RFC 6749 §2.3.1): form-urlencoded id and secret.
        let basic = req.authorization.and_then(|a| {
            let (scheme, rest) = a.trim().split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return None;
            }
            let raw = String::from_utf8(STANDARD.decode(rest.trim()).ok()?).ok()?;
            let (id, secret) = raw.split_once(':')?;
            let dec =
                |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
            Some((dec(id)?, dec(secret)?))
        });
        let client_id = field("client_id").or_else(|| basic.as_ref().map(|(id, _)| id.clone()));
        let secret =
            field("client_secret").or_else(|| basic.as_ref().map(|(_, s)| s.clone()).filter(|s| !s.is_empty()));
        let Some(client_id) = client_id else { return missing("client_id") };
        out.app = Some(client_id.clone());

        // Scope (v2) or resource (v1).
        let resource = if req.v2 {
            let Some(scope) = field("scope") else { return missing("scope") };
            let scopes: Vec<&str> = scope.split_whitespace().collect();
            match scopes[..] {
                [one] if one.ends_with("/.default") && one.len() > "/.default".len() => {
                    one.trim_end_matches("/.default").to_owned()
                }
                _ => {
                    return aad_error(
                        400,
                        "invalid_scope",
                        70011,
                        &format!(
                            "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
                        ),
                    );
                }
            }
        } else {
            let Some(resource) = field("resource") else { return missing("resource") };
            resource
        };

        let Some(app) = tenant.apps.iter().find(|a| a.client_id.eq_ignore_ascii_case(&client_id)) else {
            return aad_error(
                400,
                "unauthorized_client",
                700016,
                &format!(
                    "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                    tenant.domains.first().unwrap_or(&tenant.id)
                ),
            );
        };
        if app.disabled {
            return aad_error(
                400,
                "unauthorized_client",
                7000112,
                &format!("Application '{}'({}) is disabled.", app.client_id, app.client_id),
            );
        }
        let assertion = field("client_assertion")
            .filter(|_| field("client_assertion_type").as_deref() == Some(CLIENT_ASSERTION_TYPE));
        let appidacr = match (secret, assertion) {
            (_, Some(assertion)) => {
                let check = Assertion {
                    tenant,
                    client_id: &app.client_id,
                    host: req.host,
                    store: self.credentials,
                    reject_replays: self.reject_replays,
                };
                if let Err(r) = check.verify(&assertion).await {
                    return aad_error(r.status, r.error, r.code, &r.description);
                }
                "2"
            }
            (Some(secret), None) => match check_secret(app, &secret) {
                Ok(()) => "1",
                Err(refusal) => return refusal,
            },
            (None, None) => {
                return aad_error(
                    401,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                );
            }
        };
        self.resource_token(req.v2, tenant, app, &resource, appidacr)
    }

    /// The token for `resource`, or why the tenant has none to give.
    fn resource_token(
        &self,
        v2: bool,
        tenant: &TenantConfig,
        app: &AppConfig,
        resource: &str,
        appidacr: &str,
    ) -> (u16, Value) {
        let tenant_id = tenant.id.to_ascii_lowercase();
        let not_found = || {
            aad_error(
                400,
                "invalid_resource",
                500011,
                &format!(
                    "The resource principal named {resource} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.",
                    tenant.domains.first().unwrap_or(&tenant.id)
                ),
            )
        };
        let Some((kind, clouds)) = resource_kind(resource) else { return not_found() };
        if !clouds.contains(&tenant.cloud) {
            if clouds.iter().all(|c| gov_login(*c) != gov_login(tenant.cloud)) {
                // The resource lives behind the other login host: a national-cloud mismatch.
                return aad_error(
                    400,
                    "invalid_request",
                    90038,
                    &format!(
                        "Tenant '{tenant_id}' is set to use the cloud instance '{}'. The requested resource '{resource}' belongs to another cloud instance, which does not federate with it.",
                        if gov_login(tenant.cloud) { "microsoftonline.us" } else { "microsoftonline.com" }
                    ),
                );
            }
            return not_found();
        }
        if !tenant.defender_provisioned {
            return not_found();
        }
        (200, self.success(v2, tenant, app, resource, kind, appidacr))
    }

    fn success(
        &self,
        v2: bool,
        tenant: &TenantConfig,
        app: &AppConfig,
        resource: &str,
        kind: ResourceKind,
        appidacr: &str,
    ) -> Value {
        let now = jiff::Timestamp::now().as_second();
        let lifetime = self.lifetime.as_secs() as i64;
        let tid = tenant.id.to_ascii_lowercase();
        let iss = if gov_login(tenant.cloud) {
            format!("https://login.microsoftonline.us/{tid}/")
        } else {
            format!("https://sts.windows.net/{tid}/")
        };
        let oid = oid_for(&tid, &app.client_id);
        let mut claims = json!({
            "aud": resource,
            "iss": iss,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "aio": "sandbox",
            "app_displayname": format!("sandbox app {}", app.client_id),
            "appid": app.client_id,
            "appidacr": appidacr,
            "idp": iss,
            "idtyp": "app",
            "oid": oid,
            "sub": oid,
            "tid": tid,
            "uti": uuid::Uuid::new_v4().simple().to_string(),
            "ver": "1.0",
        });
        if kind == ResourceKind::Mde && !app.roles.is_empty() {
            claims["roles"] = json!(app.roles);
        }
        let token = sign_jwt(self.key, &claims);
        if v2 {
            json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token})
        } else {
            json!({
                "token_type": "Bearer",
                "expires_in": lifetime.to_string(),
                "ext_expires_in": lifetime.to_string(),
                "expires_on": (now + lifetime).to_string(),
                "not_before": now.to_string(),
                "resource": resource,
                "access_token": token,
            })
        }
    }
}

/// The secret sent, against the app's: AADSTS7000222 when it matches only an expired one,
/// AADSTS7000215 when it matches none.
fn check_secret(app: &AppConfig, secret: &str) -> Result<(), (u16, Value)> {
    if app.secrets.iter().any(|s| !s.expired && s.value == secret) {
        return Ok(());
    }
    if app.secrets.iter().any(|s| s.expired && s.value == secret) {
        return Err(aad_error(
            401,
            "invalid_client",
            7000222,
            &format!(
                "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                app.client_id
            ),
        ));
    }
    Err(aad_error(
        401,
        "invalid_client",
        7000215,
        &format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
            app.client_id
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn jwt_roundtrip_and_tamper() {
        let key = b"k";
        let t = sign_jwt(key, &json!({"tid": "t", "appid": "a", "aud": MDE_APP_ID, "exp": 100, "nbf": 0}));
        let c = verify_jwt(key, &t, 50).unwrap();
        assert_eq!((c.tenant.as_str(), c.app.as_str()), ("t", "a"));
        assert!(c.roles.is_empty());
        assert!(verify_jwt(key, &t, 100).is_err(), "expired");
        assert!(verify_jwt(b"other", &t, 50).is_err(), "foreign key");
        let bad = sign_jwt(key, &json!({"tid": "t", "appid": "a", "aud": "https://graph.microsoft.com", "exp": 100}));
        assert!(verify_jwt(key, &bad, 50).is_err(), "foreign audience");
    }

    #[test]
    fn tenant_identifier_forms() {
        assert!(is_guid("c0ffee00-5a4d-4b0c-8d3f-000000000001"));
        assert!(!is_guid("c0ffee005a4d4b0c8d3f000000000001"));
        assert!(is_domain("contoso.onmicrosoft.com"));
        assert!(!is_domain("{contoso}"));
        assert!(!is_domain("contoso"));
    }
}
