//! The client for one partner.
//!
//! Every request: allow-list check of the exact URL (including `@odata.nextLink`) → token (cached)
//! → rate-limiter slot for its endpoint class → send with a per-request timeout. A 429 pauses the
//! limiter key for `Retry-After` (or an exponential default) and returns `Throttled`; a 401 drops
//! the cached token so the next call fetches a new one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

use super::cloud::{self, CloudEndpoints};
use super::error::api_error;
use super::error::describe_reqwest;
pub use super::error::parse_retry_after;
use super::token::{Credentials, TokenCache, request_token};
use super::{
    AccessToken, BatchDeleteOutcome, DefenderError, EndpointClass, HostPolicy, ImportResult, Indicator, MAX_BATCH,
    NewIndicator, OPTIONAL_ROLES, RateLimiter, TI_WRITE_ROLES,
};
use crate::api::{Cloud, PartnerReason};

/// Connect timeout of [`default_http_client`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default per-request timeout (token and API calls).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Defender's largest `$top`.
pub const MAX_PAGE: usize = 10_000;

/// An HTTP client suited to Defender: rustls, connect timeout 10 s, request timeout 30 s, and no
/// redirects (a redirect must never carry the bearer token to another host).
pub fn default_http_client() -> Result<reqwest::Client, DefenderError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("defender-operator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| DefenderError::Config(format!("cannot build the HTTP client: {}", describe_reqwest(&e))))
}

/// Tunables of a [`DefenderClient`].
#[derive(Clone)]
pub struct ClientOptions {
    /// Timeout of each request (token and API).
    pub request_timeout: Duration,
    /// `$top` of each list page (at most 10,000).
    pub list_page_size: usize,
    /// Told about every API call (metrics); the client itself knows no metrics library.
    pub observer: Option<Arc<dyn CallObserver>>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("request_timeout", &self.request_timeout)
            .field("list_page_size", &self.list_page_size)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// Sees each Defender API call: its operation (`list`, `submit`, `import`, `delete`,
/// `batch_delete`, `machines`, `tag`, `avinfo`, `alerts`), HTTP status (`None` when no answer came) and duration.
pub trait CallObserver: Send + Sync {
    fn observe(&self, operation: &'static str, status: Option<u16>, elapsed: Duration);
}

fn operation(class: EndpointClass, method: &Method) -> &'static str {
    match class {
        EndpointClass::Import => "import",
        EndpointClass::BatchDelete => "batch_delete",
        EndpointClass::Machines if method == Method::GET => "machines",
        EndpointClass::Machines => "tag",
        EndpointClass::AvInfo => "avinfo",
        EndpointClass::Alerts => "alerts",
        EndpointClass::Other if method == Method::GET => "list",
        EndpointClass::Other if method == Method::DELETE => "delete",
        EndpointClass::Other => "submit",
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { request_timeout: REQUEST_TIMEOUT, list_page_size: MAX_PAGE, observer: None }
    }
}

/// What a successful validation found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validation {
    /// `tid` from the token (canonical GUID even when the tenant was given as a domain).
    pub tenant_id: String,
    pub client_id: String,
    pub granted: Vec<String>,
    /// Optional roles (`Machine.Read.All`, `Alert.Read.All`) that are not granted.
    pub missing_optional: Vec<String>,
}

struct Inner {
    http: reqwest::Client,
    endpoints: CloudEndpoints,
    /// API base without a trailing slash.
    api: Url,
    token_url: Url,
    scope: String,
    credentials: Credentials,
    policy: HostPolicy,
    tokens: TokenCache,
    limiter: Arc<RateLimiter>,
    options: ClientOptions,
}

/// Cheap to clone; clones share the token cache.
#[derive(Clone)]
pub struct DefenderClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DefenderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefenderClient")
            .field("api", &self.inner.api.as_str())
            .field("token_url", &self.inner.token_url.as_str())
            .field("tenant_id", &self.inner.credentials.tenant_id)
            .field("client_id", &self.inner.credentials.client_id)
            .finish_non_exhaustive()
    }
}

fn tenant_is_valid(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 253
        && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Percent-encodes an OData query value (spaces as `%20`, quotes and `$` encoded).
pub(super) fn encode_query_value(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>().replace('+', "%20")
}

/// A list page of Defender's API (indicators, machines, antivirus health, alerts): its items
/// as their raw text, each then read straight into what the operator keeps (a page holds up to
/// 10,000 items; no JSON value is built for any of them).
#[derive(Deserialize)]
pub(super) struct Page<'a> {
    #[serde(borrow, default)]
    pub value: Option<Vec<&'a RawValue>>,
    #[serde(default, rename = "@odata.nextLink")]
    pub next_link: Option<String>,
}

#[derive(Deserialize)]
struct ImportResponse {
    value: Option<Vec<ImportResult>>,
}

/// Why a tenant id is refused before anything is sent, naming the Secret key and the fix.
const TENANT_INVALID_MESSAGE: &str = "the tenant id in the Secret (key tenantId, or the key \
     spec.credentials.secretRef.tenantIdKey names) is neither a GUID nor a domain name; store the directory \
     (tenant) GUID, e.g. 00000000-0000-0000-0000-000000000000, or a verified domain such as \
     contoso.onmicrosoft.com under that key";

impl DefenderClient {
    /// Checks the API host and authority against `policy` before anything is sent:
    /// a host that is not allowed is `HostNotAllowed` (reason `ApiHostNotAllowed`).
    pub fn new(
        http: reqwest::Client,
        cloud: Cloud,
        api: Option<&str>,
        credentials: Credentials,
        policy: &HostPolicy,
        limiter: Arc<RateLimiter>,
    ) -> Result<Self, DefenderError> {
        Self::with_options(http, cloud, api, credentials, policy, limiter, ClientOptions::default())
    }

    /// [`Self::new`] with explicit [`ClientOptions`].
    pub fn with_options(
        http: reqwest::Client,
        cloud: Cloud,
        api: Option<&str>,
        credentials: Credentials,
        policy: &HostPolicy,
        limiter: Arc<RateLimiter>,
        options: ClientOptions,
    ) -> Result<Self, DefenderError> {
        let endpoints = cloud::endpoints(cloud);
        let api_raw = api.map(str::trim).filter(|a| !a.is_empty()).unwrap_or(endpoints.api);
        let mut api =
            Url::parse(api_raw).map_err(|e| DefenderError::Config(format!("invalid API URL {api_raw:?}: {e}")))?;
        if api.query().is_some() || api.fragment().is_some() || api.cannot_be_a_base() {
            return Err(DefenderError::Config(format!("invalid API URL {api_raw:?}: expected scheme://host[:port]")));
        }
        // Accept `https://host/`, `https://host/api` and `https://host/api/` as the same base.
        let path = api.path().trim_end_matches('/');
        let path = path.strip_suffix("/api").unwrap_or(path).to_string();
        api.set_path(&path);
        if !policy.allowlist.allows(&api) {
            let origin = api.origin().ascii_serialization();
            let hint = if api.scheme() == "http" { " (plain http is allowed only when listed explicitly)" } else { "" };
            return Err(DefenderError::HostNotAllowed(format!(
                "API host {origin} is not on the operator's allow-list{hint}; Microsoft's Defender hosts are \
                 allowed, others only through --api-allowlist"
            )));
        }
        let tenant = credentials.tenant_id.trim();
        if !tenant_is_valid(tenant) {
            return Err(DefenderError::Token {
                reason: PartnerReason::TenantInvalid,
                aadsts: None,
                // Never the value itself: a secret pasted under the wrong key must not reach status.
                message: TENANT_INVALID_MESSAGE.into(),
                transient: false,
            });
        }
        if ["common", "organizations", "consumers"].iter().any(|t| t.eq_ignore_ascii_case(tenant)) {
            return Err(DefenderError::Token {
                reason: PartnerReason::ConfigError,
                aadsts: None,
                message: format!("the tenant must be a tenant GUID or domain, not {tenant:?}"),
                transient: false,
            });
        }
        let mut token_url = policy.authority(endpoints.login)?;
        token_url
            .path_segments_mut()
            .map_err(|_| DefenderError::Config("the authority URL cannot be a base".into()))?
            .pop_if_empty()
            .extend([tenant, "oauth2", "v2.0", "token"]);
        if !policy.allows_authority(&token_url) {
            return Err(DefenderError::HostNotAllowed(format!(
                "login host {} is not a Microsoft login host nor the operator's --authority-url",
                token_url.origin().ascii_serialization()
            )));
        }
        let mut options = options;
        options.list_page_size = options.list_page_size.clamp(1, MAX_PAGE);
        let credentials = Credentials { tenant_id: tenant.to_string(), ..credentials };
        Ok(DefenderClient {
            inner: Arc::new(Inner {
                http,
                scope: endpoints.scope(),
                endpoints,
                api,
                token_url,
                credentials,
                policy: policy.clone(),
                tokens: TokenCache::new(),
                limiter,
                options,
            }),
        })
    }

    /// `$top` of each list page.
    pub(super) fn page_size(&self) -> usize {
        self.inner.options.list_page_size
    }

    /// The API base in use (e.g. `https://api.securitycenter.microsoft.com`).
    pub fn api_base(&self) -> &url::Url {
        &self.inner.api
    }

    /// The token endpoint in use (`{authority}/{tenant}/oauth2/v2.0/token`).
    pub fn token_url(&self) -> &url::Url {
        &self.inner.token_url
    }

    /// The cloud's endpoints (login, token resource, default API).
    pub fn endpoints(&self) -> &CloudEndpoints {
        &self.inner.endpoints
    }

    pub fn tenant_id(&self) -> &str {
        &self.inner.credentials.tenant_id
    }

    pub fn client_id(&self) -> &str {
        &self.inner.credentials.client_id
    }

    /// A cached token, refreshed before expiry.
    pub async fn token(&self) -> Result<AccessToken, DefenderError> {
        let inner = &self.inner;
        inner
            .tokens
            .get(|| {
                request_token(
                    &inner.http,
                    &inner.token_url,
                    &inner.credentials,
                    &inner.scope,
                    inner.options.request_timeout,
                )
            })
            .await
    }

    /// The attach sequence: token → claims (`tid`, `appid`/`azp`, `aud`) → roles →
    /// `GET {api}/api/indicators?$top=1`.
    pub async fn validate(&self) -> Result<Validation, DefenderError> {
        let token = self.token().await?;
        let tenant_id = self.check_claims(&token)?;
        let roles = &token.claims.roles;
        let mut granted: Vec<String> = roles.clone();
        granted.sort();
        granted.dedup();
        if !TI_WRITE_ROLES.iter().any(|r| token.claims.has_role(r)) {
            return Err(DefenderError::MissingPermission { missing: vec![TI_WRITE_ROLES[0].to_string()], granted });
        }
        let missing_optional = OPTIONAL_ROLES
            .iter()
            .filter(|r| {
                // `X.ReadWrite.All` covers `X.Read.All`.
                let write = r.replace(".Read.", ".ReadWrite.");
                !token.claims.has_role(r) && !token.claims.has_role(&write)
            })
            .map(|r| r.to_string())
            .collect();
        let url = self.url_with_query("/api/indicators", "$top=1")?;
        let (status, body) = self.send(EndpointClass::Other, Method::GET, url, None).await?;
        if status != 200 {
            return Err(api_error(status, &body));
        }
        Ok(Validation { tenant_id, client_id: self.inner.credentials.client_id.clone(), granted, missing_optional })
    }

    /// Checks `tid`, `appid`/`azp` and `aud`; returns the canonical tenant GUID.
    fn check_claims(&self, token: &AccessToken) -> Result<String, DefenderError> {
        let claims = &token.claims;
        let configured = &self.inner.credentials.tenant_id;
        let tid = claims
            .tenant_id
            .clone()
            .ok_or_else(|| DefenderError::ClaimsMismatch("the token carries no tenant (tid) claim".into()))?;
        match uuid::Uuid::parse_str(configured) {
            Ok(want) => {
                if uuid::Uuid::parse_str(&tid).ok() != Some(want) {
                    return Err(DefenderError::ClaimsMismatch(format!(
                        "the token was issued for tenant {tid}, not the configured tenant {configured}"
                    )));
                }
            }
            Err(_) => {
                // The tenant was given as a domain: Entra resolved it; `tid` is the canonical GUID.
                if uuid::Uuid::parse_str(&tid).is_err() {
                    return Err(DefenderError::ClaimsMismatch(format!("the token's tenant {tid:?} is not a GUID")));
                }
            }
        }
        let client_id = &self.inner.credentials.client_id;
        match &claims.app_id {
            Some(app) if app.eq_ignore_ascii_case(client_id) => {}
            Some(app) => {
                return Err(DefenderError::ClaimsMismatch(format!(
                    "the token was issued to app {app}, not the configured client id {client_id}"
                )));
            }
            None => return Err(DefenderError::ClaimsMismatch("the token carries no appid/azp claim".into())),
        }
        if !claims.audiences.iter().any(|a| self.inner.endpoints.accepts_audience(a)) {
            return Err(DefenderError::ClaimsMismatch(format!(
                "the token's audience {:?} is not Defender for Endpoint ({}) for this cloud",
                claims.audiences, self.inner.endpoints.resource
            )));
        }
        Ok(tid.to_ascii_lowercase())
    }

    /// All indicators matching `filter` (an OData `$filter` expression), following paging.
    pub async fn list_indicators(&self, filter: Option<&str>) -> Result<Vec<Indicator>, DefenderError> {
        let top = self.inner.options.list_page_size;
        let filter_q =
            filter.map(str::trim).filter(|f| !f.is_empty()).map(|f| format!("&$filter={}", encode_query_value(f)));
        let page_url = |skip: usize| {
            let skip_q = if skip > 0 { format!("&$skip={skip}") } else { String::new() };
            self.url_with_query("/api/indicators", &format!("$top={top}{skip_q}{}", filter_q.as_deref().unwrap_or("")))
        };
        let mut out: Vec<Indicator> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut skip = 0usize;
        let mut url = page_url(0)?;
        let mut visited: HashSet<String> = HashSet::new();
        for _ in 0..10_000 {
            if !visited.insert(url.to_string()) {
                return Err(DefenderError::Protocol("indicator paging loops back to a page already read".into()));
            }
            let (status, body) = self.send(EndpointClass::Other, Method::GET, url.clone(), None).await?;
            if status != 200 {
                return Err(api_error(status, &body));
            }
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| DefenderError::Protocol(format!("indicator list is not JSON: {e}")))?;
            let items = page.value.ok_or_else(|| DefenderError::Protocol("indicator list without `value`".into()))?;
            let count = items.len();
            for (i, item) in items.into_iter().enumerate() {
                let indicator: Indicator = serde_json::from_str(item.get())
                    .map_err(|e| DefenderError::Protocol(format!("indicator #{} of a list page: {e}", skip + i)))?;
                if seen.insert(indicator.id.clone()) {
                    out.push(indicator);
                }
            }
            skip += count;
            match page.next_link.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
                Some(link) => {
                    // Relative links resolve against the page; `send` checks the allow-list again.
                    url = Url::options()
                        .base_url(Some(&url))
                        .parse(link)
                        .map_err(|e| DefenderError::Protocol(format!("invalid @odata.nextLink: {e}")))?;
                }
                None if count >= top => url = page_url(skip)?,
                None => return Ok(out),
            }
        }
        Err(DefenderError::Protocol("indicator paging did not end".into()))
    }

    /// `POST /api/indicators` (create or update one).
    /// Whether a call of `class` would go out now, without waiting for the rate limiter.
    pub async fn has_budget(&self, class: EndpointClass) -> bool {
        let inner = &self.inner;
        let tenant = match self.token().await {
            Ok(token) => token.claims.tenant_id.clone().unwrap_or_else(|| inner.credentials.tenant_id.clone()),
            Err(_) => inner.credentials.tenant_id.clone(),
        };
        inner.limiter.would_allow(&tenant, &inner.credentials.client_id, class)
    }

    pub async fn submit(&self, indicator: &NewIndicator) -> Result<Indicator, DefenderError> {
        let body = serde_json::to_value(indicator).map_err(|e| DefenderError::Config(e.to_string()))?;
        let url = self.url("/api/indicators")?;
        let (status, bytes) = self.send(EndpointClass::Other, Method::POST, url, Some(&body)).await?;
        if !(200..300).contains(&status) {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| DefenderError::Protocol(format!("submitted indicator: {e}")))
    }

    /// `POST /api/indicators/import`; splits into calls of at most 500; one result per item.
    ///
    /// Results are matched to the input by indicator value (not position), in input order; an item
    /// Defender did not answer for is reported as failed. A 400 for a whole call is an error.
    pub async fn import(&self, indicators: &[NewIndicator]) -> Result<Vec<ImportResult>, DefenderError> {
        let mut out = Vec::with_capacity(indicators.len());
        for chunk in indicators.chunks(MAX_BATCH) {
            let body = serde_json::json!({ "Indicators": chunk });
            let url = self.url("/api/indicators/import")?;
            let (status, bytes) = self.send(EndpointClass::Import, Method::POST, url, Some(&body)).await?;
            if !(200..300).contains(&status) {
                return Err(api_error(status, &bytes));
            }
            let parsed: ImportResponse = serde_json::from_slice(&bytes)
                .map_err(|e| DefenderError::Protocol(format!("import response is not JSON: {e}")))?;
            let results =
                parsed.value.ok_or_else(|| DefenderError::Protocol("import response without `value`".into()))?;
            let mut by_value: HashMap<String, VecDeque<ImportResult>> = HashMap::new();
            for r in results {
                by_value.entry(r.indicator.to_ascii_lowercase()).or_default().push_back(r);
            }
            for item in chunk {
                let key = item.indicator_value.to_ascii_lowercase();
                let result = by_value.get_mut(&key).and_then(VecDeque::pop_front).unwrap_or_else(|| ImportResult {
                    id: None,
                    indicator: item.indicator_value.clone(),
                    is_failed: true,
                    failure_reason: Some("Defender returned no result for this indicator".into()),
                });
                out.push(result);
            }
        }
        Ok(out)
    }

    /// `DELETE /api/indicators/{id}`; 404 counts as gone.
    pub async fn delete(&self, id: &str) -> Result<(), DefenderError> {
        if id.trim().is_empty() {
            return Err(DefenderError::Config("cannot delete an indicator without an id".into()));
        }
        let mut url = self.url("/api/indicators")?;
        url.path_segments_mut().map_err(|_| DefenderError::Config("bad API URL".into()))?.push(id.trim());
        let (status, bytes) = self.send(EndpointClass::Other, Method::DELETE, url, None).await?;
        match status {
            200..=299 | 404 => Ok(()),
            _ => Err(api_error(status, &bytes)),
        }
    }

    /// `POST /api/indicators/BatchDelete` with at most 500 ids per call.
    pub async fn batch_delete(&self, ids: &[String]) -> Result<BatchDeleteOutcome, DefenderError> {
        let mut outcome = BatchDeleteOutcome::AllDeleted;
        for chunk in ids.chunks(MAX_BATCH) {
            let body = serde_json::json!({ "IndicatorIds": chunk });
            let url = self.url("/api/indicators/BatchDelete")?;
            let (status, bytes) = self.send(EndpointClass::BatchDelete, Method::POST, url, Some(&body)).await?;
            match status {
                200..=299 => {}
                404 => outcome = BatchDeleteOutcome::SomeNotFound,
                _ => return Err(api_error(status, &bytes)),
            }
        }
        Ok(outcome)
    }

    pub(super) fn url(&self, path: &str) -> Result<Url, DefenderError> {
        let base = self.inner.api.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}")).map_err(|e| DefenderError::Config(format!("bad API URL: {e}")))
    }

    pub(super) fn url_with_query(&self, path: &str, query: &str) -> Result<Url, DefenderError> {
        let mut url = self.url(path)?;
        url.set_query(Some(query));
        Ok(url)
    }

    /// One API request: allow-list → token → limiter → send. Returns status and body for any
    /// status but 429 (which becomes `Throttled` after pausing the limiter key).
    pub(super) async fn send(
        &self,
        class: EndpointClass,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Vec<u8>), DefenderError> {
        let inner = &self.inner;
        if !inner.policy.allowlist.allows(&url) {
            return Err(DefenderError::HostNotAllowed(format!(
                "refusing to send the token to {}: not on the operator's allow-list",
                url.origin().ascii_serialization()
            )));
        }
        let token = self.token().await?;
        let tenant = token.claims.tenant_id.clone().unwrap_or_else(|| inner.credentials.tenant_id.clone());
        let app = inner.credentials.client_id.as_str();
        inner.limiter.acquire(&tenant, app, class).await;
        let host = url.host_str().unwrap_or("").to_string();
        let mut request = inner
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(token.secret.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(inner.options.request_timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let unreachable =
            |e: reqwest::Error| DefenderError::Unreachable { host: host.clone(), message: describe_reqwest(&e) };
        let started = std::time::Instant::now();
        let sent = request.send().await;
        if let Some(observer) = &inner.options.observer {
            let status = sent.as_ref().ok().map(|r| r.status().as_u16());
            observer.observe(operation(class, &method), status, started.elapsed());
        }
        let response = sent.map_err(unreachable)?;
        let status = response.status().as_u16();
        tracing::debug!(%method, path = url.path(), status, class = class.as_str(), "defender call");
        if status == 429 {
            let asked = parse_retry_after(response.headers());
            let wait = inner.limiter.throttled(&tenant, app, class, asked);
            tracing::info!(tenant = %tenant, client_id = app, class = class.as_str(), wait_ms = wait.as_millis() as u64,
                "throttled by Defender");
            return Err(DefenderError::Throttled { retry_after: wait });
        }
        inner.limiter.succeeded(&tenant, app, class);
        if status == 401 {
            inner.tokens.invalidate(&token).await;
        }
        let bytes = response.bytes().await.map_err(unreachable)?;
        Ok((status, bytes.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(tenant: &str) -> Credentials {
        Credentials {
            tenant_id: tenant.into(),
            client_id: "c".into(),
            proof: super::super::assertion::Proof::Secret("s".to_string().into()),
        }
    }

    fn client(
        cloud: Cloud,
        api: Option<&str>,
        tenant: &str,
        policy: &HostPolicy,
    ) -> Result<DefenderClient, DefenderError> {
        DefenderClient::new(reqwest::Client::new(), cloud, api, creds(tenant), policy, Arc::new(RateLimiter::default()))
    }

    #[test]
    fn api_base_defaults_and_allow_list() {
        let p = HostPolicy::default();
        let c = client(Cloud::Commercial, None, "contoso.com", &p).unwrap();
        assert_eq!(c.api_base().as_str(), "https://api.securitycenter.microsoft.com/");
        assert_eq!(c.token_url().as_str(), "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token");
        let g = client(Cloud::GccHigh, None, "t", &p).unwrap();
        assert_eq!(g.api_base().host_str(), Some("api-gov.securitycenter.microsoft.us"));
        assert_eq!(g.token_url().host_str(), Some("login.microsoftonline.us"));
        let eu = client(Cloud::Commercial, Some("https://eu.api.security.microsoft.com/api/"), "t", &p).unwrap();
        assert_eq!(eu.url("/api/indicators").unwrap().as_str(), "https://eu.api.security.microsoft.com/api/indicators");
        for bad in [
            "https://api.securitycenter.microsoft.com.evil.com",
            "http://api.securitycenter.microsoft.com",
            "https://evil.example.com",
            "http://127.0.0.1:8080",
        ] {
            let e = client(Cloud::Commercial, Some(bad), "t", &p).unwrap_err();
            assert_eq!(e.reason(), "ApiHostNotAllowed", "{bad}");
        }
        assert_eq!(client(Cloud::Commercial, Some("not a url"), "t", &p).unwrap_err().reason(), "ConfigError");
        assert_eq!(client(Cloud::Commercial, None, "", &p).unwrap_err().reason(), "TenantInvalid");
        assert_eq!(client(Cloud::Commercial, None, "a/b", &p).unwrap_err().reason(), "TenantInvalid");
        let message = client(Cloud::Commercial, None, "contoso onmicrosoft/com", &p).unwrap_err().to_string();
        assert!(message.contains("neither a GUID nor a domain name"), "{message}");
        assert!(message.contains("key tenantId") && message.contains("tenantIdKey"), "names the key: {message}");
        assert!(message.contains("store the directory (tenant) GUID"), "says the fix: {message}");
        assert!(!message.contains("contoso onmicrosoft"), "never echoes the value: {message}");
        assert_eq!(client(Cloud::Commercial, None, "common", &p).unwrap_err().reason(), "ConfigError");
    }

    #[test]
    fn authority_override() {
        let p = HostPolicy::from_parts(&["http://127.0.0.1:*".into()], Some("http://127.0.0.1:4000/prefix/")).unwrap();
        let c = client(Cloud::Commercial, Some("http://127.0.0.1:4000"), "t", &p).unwrap();
        assert_eq!(c.token_url().as_str(), "http://127.0.0.1:4000/prefix/t/oauth2/v2.0/token");
        assert_eq!(c.endpoints().scope(), "https://api.securitycenter.microsoft.com/.default");
    }

    #[test]
    fn retry_after_forms() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(reqwest::header::RETRY_AFTER, "99999".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(3600)));
        h.insert(reqwest::header::RETRY_AFTER, "Thu, 01 Jan 1970 00:00:01 GMT".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&later).unwrap();
        h.insert(reqwest::header::RETRY_AFTER, date.parse().unwrap());
        let d = parse_retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(110) && d <= Duration::from_secs(120), "{d:?}");
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&h), None);
    }

    #[test]
    fn filter_encoding() {
        assert_eq!(
            encode_query_value("application eq 'defender-operator' and x+y"),
            "application%20eq%20%27defender-operator%27%20and%20x%2By"
        );
    }
}
