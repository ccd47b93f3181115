//! Service-account tokens as kube-apiserver issues them: the TokenRequest subresource
//! (`POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`), the issuer's discovery
//! documents (`/.well-known/openid-configuration`, `/openid/v1/jwks`) that relying parties such as
//! Entra fetch to verify the tokens, and authentication with the tokens issued.
//!
//! The rules are kube-apiserver's: `spec.expirationSeconds` defaults to 3600, under 600 or over
//! 2^32 is 422 `Invalid`, over the server's maximum is shortened with a warning; empty
//! `spec.audiences` means the API server's own audience (the issuer URL); the token is a JWT signed
//! RS256 whose `kid` is the base64url SHA-256 of the public key (PKIX DER).

use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, StatusCode, header};
use jiff::Timestamp;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Inner;
use super::error::{ApiError, ApiResult};
use super::rbac::{self, Attrs, User};

/// Where kube-apiserver serves the issuer's documents.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/openid/v1/jwks";

/// `spec.expirationSeconds` when the request has none (kube's default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// kube-apiserver's validation bounds for `spec.expirationSeconds`.
const MIN_EXPIRATION_SECONDS: i64 = 600;
const MAX_VALID_EXPIRATION_SECONDS: i64 = 1 << 32;

/// The service-account signing key (`--service-account-signing-key-file`), made on first use.
pub(crate) struct SigningKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    /// Base64url modulus and exponent, for the JWKS.
    n: String,
    e: String,
}

impl SigningKey {
    fn generate() -> SigningKey {
        let pair = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .expect("RSA key generation (rcgen with aws-lc-rs)");
        let spki = rcgen::PublicKeyData::subject_public_key_info(&pair);
        let (n, e) = rsa_components(&spki).expect("an RSA public key");
        SigningKey {
            encoding: EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).expect("a PKCS#8 RSA key"),
            decoding: DecodingKey::from_rsa_raw_components(&n, &e),
            kid: URL_SAFE_NO_PAD.encode(Sha256::digest(&spki)),
            n: URL_SAFE_NO_PAD.encode(&n),
            e: URL_SAFE_NO_PAD.encode(&e),
        }
    }
}

/// Modulus and exponent of an RSA SubjectPublicKeyInfo, without DER's sign padding.
fn rsa_components(spki: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).ok()?;
    match info.parsed().ok()? {
        PublicKey::RSA(rsa) => {
            let strip = |b: &[u8]| b.iter().skip_while(|x| **x == 0).copied().collect::<Vec<u8>>();
            Some((strip(rsa.modulus), strip(rsa.exponent)))
        }
        _ => None,
    }
}

impl Inner {
    fn signing_key(&self) -> &SigningKey {
        self.signing_key.get_or_init(SigningKey::generate)
    }

    /// The audiences the API server accepts (`--api-audiences`, by default the issuer).
    fn api_audiences(&self) -> Vec<String> {
        vec![self.issuer.clone()]
    }
}

/// The issuer's discovery document and key set, readable without credentials. kube-apiserver
/// registers them only when the issuer is an https URL, and by default authorises them for
/// authenticated users only; the sandbox serves them to anyone, as clusters whose issuer Entra
/// must reach do (AKS publishes its issuer publicly).
pub(crate) fn issuer_document(inner: &Inner, method: &Method, path: &str) -> Option<Response> {
    if method != Method::GET || !(path == DISCOVERY_PATH || path == JWKS_PATH) || !inner.issuer.starts_with("https://")
    {
        return None;
    }
    let (content_type, body) = if path == DISCOVERY_PATH {
        let jwks_uri = format!("https://{}{JWKS_PATH}", inner.addr);
        let doc = json!({
            "issuer": inner.issuer,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        ("application/json", doc)
    } else {
        let key = inner.signing_key();
        let jwk = json!({"use": "sig", "kty": "RSA", "kid": key.kid, "alg": "RS256", "n": key.n, "e": key.e});
        ("application/jwk-set+json", json!({"keys": [jwk]}))
    };
    let headers = [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=3600")];
    Some((StatusCode::OK, headers, body.to_string()).into_response())
}

/// Whether the path names the TokenRequest subresource of a ServiceAccount.
pub(crate) fn is_token_request(group: &str, plural: &str, sub: &str) -> bool {
    group.is_empty() && plural == "serviceaccounts" && sub == "token"
}

/// What a TokenRequest asks for, after kube's defaulting and validation.
struct Requested {
    audiences: Vec<String>,
    expiration_seconds: i64,
}

/// `POST …/serviceaccounts/{name}/token`: authorised as `create` on `serviceaccounts/token`.
pub(crate) fn create_token(
    inner: &Inner,
    user: &User,
    method: &Method,
    namespace: &str,
    name: &str,
    body: impl FnOnce() -> ApiResult<Value>,
) -> ApiResult<Response> {
    if method != Method::POST || name.is_empty() {
        return Err(ApiError::method_not_allowed("the server does not allow this method on the requested resource"));
    }
    let attrs = Attrs {
        verb: "create".into(),
        group: String::new(),
        resource: "serviceaccounts".into(),
        subresource: "token".into(),
        namespace: namespace.into(),
        name: name.into(),
    };
    if !rbac::authorize(&inner.lock(), user, &attrs) {
        return Err(ApiError::forbidden(attrs.forbidden_message(user), name, "", "serviceaccounts"));
    }
    let request = body()?;
    check_names(&request, namespace, name)?;
    let uid = service_account_uid(inner, namespace, name)?;
    let mut requested = validate(inner, &request)?;
    let mut warning = None;
    let max = inner.config.service_account_max_token_expiration.as_secs() as i64;
    if max > 0 && requested.expiration_seconds > max {
        warning = Some(format!(
            "requested expiration of {} seconds shortened to {max} seconds",
            requested.expiration_seconds
        ));
        requested.expiration_seconds = max;
    }
    let now = Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| Timestamp::now());
    let token = sign(inner, namespace, name, &uid, &requested.audiences, now, requested.expiration_seconds);
    let expires = now + jiff::SignedDuration::from_secs(requested.expiration_seconds);
    let out = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "creationTimestamp": now.to_string()},
        "spec": {"audiences": requested.audiences, "expirationSeconds": requested.expiration_seconds, "boundObjectRef": null},
        "status": {"token": token, "expirationTimestamp": expires.to_string()},
    });
    let mut response =
        (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], out.to_string()).into_response();
    if let Some(w) = warning
        && let Ok(v) = http::HeaderValue::from_str(&format!("299 - {}", json!(w)))
    {
        response.headers_mut().append(header::WARNING, v);
    }
    Ok(response)
}

/// kube requires a name or namespace in the body to match the URL's.
fn check_names(request: &Value, namespace: &str, name: &str) -> ApiResult<()> {
    let meta = &request["metadata"];
    for (field, expected, what) in [("name", name, "name"), ("namespace", namespace, "namespace")] {
        if let Some(given) = meta[field].as_str().filter(|g| !g.is_empty() && *g != expected) {
            return Err(invalid(
                name,
                &format!("metadata.{field}"),
                &format!("Invalid value: \"{given}\": must match the service account {what} if specified"),
            ));
        }
    }
    Ok(())
}

fn service_account_uid(inner: &Inner, namespace: &str, name: &str) -> ApiResult<String> {
    let st = inner.lock();
    match st.get(&(String::new(), "serviceaccounts".into()), namespace, name) {
        Some(sa) => Ok(sa["metadata"]["uid"].as_str().unwrap_or_default().to_string()),
        None => Err(with_details(
            ApiError::new(404, "NotFound", format!("serviceaccounts \"{name}\" not found")),
            json!({"name": name, "kind": "serviceaccounts"}),
        )),
    }
}

/// Defaults and validates `spec` as kube does (422 `Invalid` naming `spec.expirationSeconds`).
fn validate(inner: &Inner, request: &Value) -> ApiResult<Requested> {
    let spec = &request["spec"];
    let expiration_seconds = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION_SECONDS,
        v => v.as_i64().ok_or_else(|| ApiError::bad_request("spec.expirationSeconds: expected an integer"))?,
    };
    let bound = if expiration_seconds < MIN_EXPIRATION_SECONDS {
        Some("may not specify a duration less than 10 minutes")
    } else if expiration_seconds > MAX_VALID_EXPIRATION_SECONDS {
        Some("may not specify a duration larger than 2^32 seconds")
    } else {
        None
    };
    if let Some(why) = bound {
        return Err(invalid("", "spec.expirationSeconds", &format!("Invalid value: {expiration_seconds}: {why}")));
    }
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences = inner.api_audiences();
    }
    Ok(Requested { audiences, expiration_seconds })
}

/// 422 `Invalid` for kind TokenRequest.authentication.k8s.io, with one cause.
fn invalid(name: &str, field: &str, message: &str) -> ApiError {
    let error = ApiError::new(
        422,
        "Invalid",
        format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: {field}: {message}"),
    );
    with_details(
        error,
        json!({
            "name": name, "group": "authentication.k8s.io", "kind": "TokenRequest",
            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}],
        }),
    )
}

fn with_details(mut error: ApiError, details: Value) -> ApiError {
    error.details = Some(details);
    error
}

/// The JWT, with kube-apiserver's claims (`pkg/serviceaccount/claims.go`).
fn sign(
    inner: &Inner,
    namespace: &str,
    name: &str,
    uid: &str,
    audiences: &[String],
    issued_at: Timestamp,
    lifetime_seconds: i64,
) -> String {
    let key = inner.signing_key();
    let now = issued_at.as_second();
    let claims = json!({
        "iss": inner.issuer,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "aud": audiences,
        "exp": now + lifetime_seconds,
        "iat": now,
        "nbf": now,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.encoding).expect("RS256 signing")
}

/// A token signed as TokenRequest signs it, for a chosen time: what tests need for expired or
/// not-yet-valid tokens (TokenRequest itself never issues those). None when the ServiceAccount
/// does not exist.
pub(crate) fn sign_at(
    inner: &Inner,
    namespace: &str,
    name: &str,
    audiences: &[String],
    issued_at: Timestamp,
    lifetime: std::time::Duration,
) -> Option<String> {
    let uid = service_account_uid(inner, namespace, name).ok()?;
    Some(sign(inner, namespace, name, &uid, audiences, issued_at, lifetime.as_secs() as i64))
}

/// The ServiceAccount a bearer JWT issued here stands for: signed with this server's key, issued
/// by its issuer, for one of its audiences, within its validity, and the ServiceAccount (same
/// uid) still exists — as kube-apiserver checks bound tokens.
pub(crate) fn authenticate(inner: &Inner, token: &str) -> Option<User> {
    if token.matches('.').count() != 2 {
        return None;
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[&inner.issuer]);
    validation.set_audience(&inner.api_audiences());
    validation.validate_nbf = true;
    let data = jsonwebtoken::decode::<Value>(token, &inner.signing_key().decoding, &validation).ok()?;
    let k8s = &data.claims["kubernetes.io"];
    let namespace = k8s["namespace"].as_str()?;
    let name = k8s["serviceaccount"]["name"].as_str()?;
    let uid = k8s["serviceaccount"]["uid"].as_str()?;
    let exists = service_account_uid(inner, namespace, name).ok()?;
    (exists == uid).then(|| User::service_account(namespace, name))
}
