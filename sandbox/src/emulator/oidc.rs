//! An external issuer's signing keys, fetched as Entra fetches them for a federated assertion:
//! `{iss}/.well-known/openid-configuration`, then its `jwks_uri`, both over https (Entra needs
//! them reachable from the internet over https). Nothing is cached, so a rotated key is seen at
//! once.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use serde_json::Value;

/// Why the keys could not be had (never shown to the client: Entra answers AADSTS90061).
pub(crate) type FetchError = String;

/// The issuer's key set. `extra_roots`: PEM CAs trusted besides the system's.
pub(crate) async fn signing_keys(issuer: &str, extra_roots: &[String]) -> Result<JwkSet, FetchError> {
    let client = client(extra_roots)?;
    let discovery_url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let discovery: Value = get_json(&client, &discovery_url).await?;
    let jwks_uri = discovery["jwks_uri"].as_str().ok_or("the discovery document has no jwks_uri")?;
    let keys = get_json(&client, jwks_uri).await?;
    serde_json::from_value(keys).map_err(|e| format!("{jwks_uri}: not a JWK set: {e}"))
}

fn client(extra_roots: &[String]) -> Result<reqwest::Client, FetchError> {
    let roots = extra_roots
        .iter()
        .map(|pem| reqwest::Certificate::from_pem(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a trusted issuer certificate does not read: {e}"))?;
    reqwest::Client::builder()
        .tls_certs_merge(roots)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, FetchError> {
    if !url.starts_with("https://") {
        return Err(format!("{url}: not an https URL"));
    }
    let response = client.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    response.json().await.map_err(|e| format!("{url}: not JSON: {e}"))
}
