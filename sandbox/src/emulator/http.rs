//! HTTP routes: the Entra token endpoints and the Defender API, on one listener.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use jiff::Timestamp;
use serde_json::{Value, json};

use super::alerts::Alerts;
use super::config::EmulatorConfig;
use super::endpoint::Endpoint;
use super::faults::{Fault, Faults};
use super::machine_store::{self, Machines};
use super::query::Query;
use super::ratelimit::Limiter;
use super::store::{ApiError, Caller, INDICATOR_SCHEMA, Store, UpsertError, import_result, validate};
use super::token::{Issuer, TokenRequest, verify_jwt};

/// One request as the emulator saw it.
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub method: String,
    /// Path with query, as sent.
    pub path: String,
    pub endpoint: Endpoint,
    /// The `Host` header.
    pub host: String,
    /// Carried an `Authorization: Bearer ...` header.
    pub bearer: bool,
    /// Token calls: the tenant GUID when it resolved, else the path segment. API calls: the
    /// token's `tid` when the token verified.
    pub tenant: Option<String>,
    /// Token calls: the client id sent. API calls: the token's `appid` when it verified.
    pub app: Option<String>,
    pub status: u16,
}

/// Largest import / BatchDelete call.
pub(crate) const MAX_BATCH: usize = 500;

pub(crate) struct Shared {
    pub config: EmulatorConfig,
    pub key: [u8; 32],
    pub latency: Mutex<Duration>,
    pub faults: Faults,
    pub store: Mutex<Store>,
    pub limiter: Mutex<Limiter>,
    pub calls: Mutex<Vec<CallRecord>>,
    pub machines: Mutex<Machines>,
    pub alerts: Mutex<Alerts>,
    pub credentials: super::credentials::CredentialStore,
}

impl Shared {
    /// Canonical (lower-case GUID) id of a configured tenant given by GUID or domain.
    pub(crate) fn tenant_id(&self, tenant: &str) -> String {
        self.config
            .tenants
            .iter()
            .find(|t| t.id.eq_ignore_ascii_case(tenant) || t.domains.iter().any(|d| d.eq_ignore_ascii_case(tenant)))
            .map_or_else(|| tenant.to_ascii_lowercase(), |t| t.id.to_ascii_lowercase())
    }
}

enum Route {
    Token { v2: bool, tenant: String },
    Api { endpoint: Endpoint, id: Option<String>, prefix: &'static str },
    ApiUnknown,
    Unknown,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

fn route(method: &Method, path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs[..] {
        [tenant, "oauth2", "v2.0", "token"] => return Route::Token { v2: true, tenant: percent_decode(tenant) },
        [tenant, "oauth2", "token"] => return Route::Token { v2: false, tenant: percent_decode(tenant) },
        _ => {}
    }
    let (prefix, rest) = match segs[..] {
        [api, v, ref rest @ ..] if api.eq_ignore_ascii_case("api") && v.eq_ignore_ascii_case("v1.0") => {
            ("/api/v1.0", rest)
        }
        [api, ref rest @ ..] if api.eq_ignore_ascii_case("api") => ("/api", rest),
        _ => return Route::Unknown,
    };
    let is = |s: &str, w: &str| s.eq_ignore_ascii_case(w);
    let m = method;
    let (endpoint, id) = match rest {
        [i] if is(i, "indicators") && m == Method::GET => (Endpoint::ListIndicators, None),
        [i] if is(i, "indicators") && m == Method::POST => (Endpoint::SubmitIndicator, None),
        [i, x] if is(i, "indicators") && is(x, "import") && m == Method::POST => (Endpoint::ImportIndicators, None),
        [i, x] if is(i, "indicators") && is(x, "BatchDelete") && m == Method::POST => {
            (Endpoint::BatchDeleteIndicators, None)
        }
        [i, id] if is(i, "indicators") && m == Method::DELETE => (Endpoint::DeleteIndicator, Some(id.to_string())),
        [i, id] if is(i, "indicators") && m == Method::GET => (Endpoint::Other, Some(id.to_string())),
        [x] if is(x, "machines") && m == Method::GET => (Endpoint::Machines, None),
        [x, call] if is(x, "machines") && is(call, "AddOrRemoveTagForMultipleMachines") && m == Method::POST => {
            (Endpoint::TagMachines, None)
        }
        [x, call] if is(x, "machines") && m == Method::GET && starts_with_ignore_case(call, "findbyip(") => {
            (Endpoint::FindMachinesByIp, Some(percent_decode(call)))
        }
        [x, id] if is(x, "machines") && m == Method::GET => (Endpoint::MachineById, Some(percent_decode(id))),
        [x, id, a] if is(x, "machines") && is(a, "alerts") && m == Method::GET => {
            (Endpoint::MachineAlerts, Some(percent_decode(id)))
        }
        [x, id, t] if is(x, "machines") && is(t, "tags") && m == Method::POST => {
            (Endpoint::MachineTags, Some(percent_decode(id)))
        }
        [x] if is(x, "deviceavinfo") && m == Method::GET => (Endpoint::DeviceAvInfo, None),
        [x] if is(x, "alerts") && m == Method::GET => (Endpoint::Alerts, None),
        [x, id] if is(x, "alerts") && m == Method::GET => (Endpoint::AlertById, Some(percent_decode(id))),
        _ => return Route::ApiUnknown,
    };
    Route::Api { endpoint, id, prefix }
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

/// `{"error":{"code","message","target"}}` with a fresh tracking GUID.
pub(crate) fn error_body(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "target": uuid::Uuid::new_v4().to_string()}})
}

fn api_error(e: &ApiError) -> Response {
    json_response(e.status, &error_body(e.code, &e.message))
}

fn empty(status: u16) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

fn throttled(retry_after: u64) -> Response {
    let mut r = json_response(
        429,
        &error_body("TooManyRequests", &format!("Rate limit is exceeded. Try again in {retry_after} seconds.")),
    );
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

pub(crate) async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let authorization = headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).map(str::to_owned);
    let bearer = authorization.as_deref().is_some_and(|a| a.len() > 7 && a[..7].eq_ignore_ascii_case("bearer "));
    let path = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let body = axum::body::to_bytes(req.into_body(), 64 << 20).await.unwrap_or_default();

    let mut tenant = None;
    let mut app = None;
    let (endpoint, response) = match route(&method, uri.path()) {
        Route::Token { v2, tenant: seg } => {
            let endpoint = if v2 { Endpoint::TokenV2 } else { Endpoint::TokenV1 };
            if method != Method::POST {
                let (status, body) = super::token::aad_error(
                    400,
                    "invalid_request",
                    900561,
                    &format!("The endpoint only accepts POST requests. Received a {method} request."),
                );
                (endpoint, json_response(status, &body))
            } else {
                let lifetime = sh.faults.token_lifetime_override().unwrap_or(sh.config.token_lifetime);
                let issuer = Issuer {
                    tenants: &sh.config.tenants,
                    key: &sh.key,
                    lifetime,
                    down: sh.faults.is_token_down(),
                    credentials: &sh.credentials,
                    reject_replays: sh.config.reject_replayed_assertions,
                };
                let out = issuer
                    .handle(&TokenRequest {
                        v2,
                        tenant_segment: &seg,
                        content_type: headers.get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()),
                        authorization: authorization.as_deref(),
                        body: &body,
                        host: &host,
                    })
                    .await;
                tenant = out.tenant;
                app = out.app;
                let mut r = json_response(out.status, &out.body);
                r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache"));
                (endpoint, r)
            }
        }
        Route::Api { endpoint, id, prefix } => {
            let ctx = ApiCall {
                sh: &sh,
                endpoint,
                id,
                base: format!("http://{host}{prefix}"),
                query: uri.query().unwrap_or("").to_owned(),
                content_type: headers.get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).map(str::to_owned),
                body: &body,
            };
            let r = ctx.run(authorization.as_deref(), &mut tenant, &mut app).await;
            (endpoint, r)
        }
        Route::ApiUnknown => (
            Endpoint::Other,
            json_response(404, &error_body("ResourceNotFound", &format!("No route for {method} {}", uri.path()))),
        ),
        Route::Unknown => (Endpoint::Other, json_response(404, &error_body("NotFound", "Not found"))),
    };
    sh.calls.lock().unwrap().push(CallRecord {
        method: method.to_string(),
        path,
        endpoint,
        host,
        bearer,
        tenant,
        app,
        status: response.status().as_u16(),
    });
    response
}

struct ApiCall<'a> {
    sh: &'a Shared,
    endpoint: Endpoint,
    id: Option<String>,
    /// e.g. `http://127.0.0.1:1234/api`
    base: String,
    query: String,
    content_type: Option<String>,
    body: &'a [u8],
}

const TI_ROLES: &[&str] = &["Ti.ReadWrite", "Ti.ReadWrite.All"];
const MACHINE_ROLES: &[&str] = &["Machine.Read.All", "Machine.ReadWrite.All"];
const ALERT_ROLES: &[&str] = &["Alert.Read.All", "Alert.ReadWrite.All"];
const MACHINE_WRITE_ROLES: &[&str] = &["Machine.ReadWrite.All"];

/// The application roles of which a call needs one.
fn accepted_roles(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        Endpoint::Machines | Endpoint::MachineById | Endpoint::FindMachinesByIp | Endpoint::DeviceAvInfo => {
            MACHINE_ROLES
        }
        Endpoint::MachineTags | Endpoint::TagMachines => MACHINE_WRITE_ROLES,
        Endpoint::Alerts | Endpoint::AlertById | Endpoint::MachineAlerts => ALERT_ROLES,
        _ => TI_ROLES,
    }
}

impl ApiCall<'_> {
    async fn run(
        &self,
        authorization: Option<&str>,
        tenant: &mut Option<String>,
        app: &mut Option<String>,
    ) -> Response {
        let latency = *self.sh.latency.lock().unwrap();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(hang) = self.sh.faults.take_hang() {
            tokio::time::sleep(hang).await;
        }
        // Record who called even when a fault answers.
        let now = Timestamp::now();
        let token = authorization.and_then(|a| {
            let (scheme, t) = a.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| t.trim().to_owned())
        });
        let claims = token.as_deref().map(|t| verify_jwt(&self.sh.key, t, now.as_second()));
        if let Some(Ok(c)) = &claims {
            *tenant = Some(c.tenant.clone());
            *app = Some(c.app.clone());
        }
        let tenant_fault = tenant.as_deref().and_then(|t| self.sh.faults.take_tenant_fault(t));
        match tenant_fault.or_else(|| self.sh.faults.take_fault()) {
            Some(Fault::Throttle { retry_after_secs }) => return throttled(retry_after_secs),
            Some(Fault::Fail { status }) => {
                let code = match status {
                    502 => "BadGateway",
                    503 => "ServiceUnavailable",
                    504 => "GatewayTimeout",
                    _ => "InternalServerError",
                };
                return json_response(status, &error_body(code, ""));
            }
            None => {}
        }
        let claims = match claims {
            None => return unauthorized("Authorization has been denied for this request."),
            Some(Err(msg)) => return unauthorized(&msg),
            Some(Ok(c)) => c,
        };
        if !self.sh.config.tenants.iter().any(|t| t.id.eq_ignore_ascii_case(&claims.tenant)) {
            return unauthorized("The bearer token was issued for an unknown tenant.");
        }
        let tid = claims.tenant.to_ascii_lowercase();
        let limited = self.sh.limiter.lock().unwrap().check(
            &self.sh.config.limits,
            &tid,
            &claims.app.to_ascii_lowercase(),
            self.endpoint,
            Instant::now(),
        );
        if let Err(retry_after) = limited {
            return throttled(retry_after);
        }
        let accepted = accepted_roles(self.endpoint);
        if !claims.roles.iter().any(|r| accepted.contains(&r.as_str())) {
            return json_response(
                403,
                &error_body(
                    "Forbidden",
                    &format!(
                        "The application does not have any of the required application permissions ({}) to access the resource.",
                        accepted.join(", ")
                    ),
                ),
            );
        }
        let caller = Caller {
            who: claims.app.clone(),
            own_only: !claims.roles.iter().any(|r| r == "Ti.ReadWrite.All"),
            portal: false,
        };
        let result = match self.endpoint {
            Endpoint::ListIndicators => self.list(&tid, &caller, now),
            Endpoint::SubmitIndicator => self.submit(&tid, &caller, now),
            Endpoint::ImportIndicators => self.import(&tid, &caller, now),
            Endpoint::DeleteIndicator => self.delete(&tid, &caller, now),
            Endpoint::BatchDeleteIndicators => self.batch_delete(&tid, &caller, now),
            Endpoint::Machines
            | Endpoint::MachineById
            | Endpoint::FindMachinesByIp
            | Endpoint::MachineTags
            | Endpoint::TagMachines
            | Endpoint::DeviceAvInfo
            | Endpoint::MachineAlerts
            | Endpoint::Alerts
            | Endpoint::AlertById => self.devices(&tid, now).map(|body| json_response(200, &body)),
            _ => self.get_one(&tid, &caller, now),
        };
        result.unwrap_or_else(|e| api_error(&e))
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        let ct_ok = self
            .content_type
            .as_deref()
            .is_some_and(|c| c.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"));
        if !ct_ok {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "The request body must be sent with Content-Type: application/json",
            ));
        }
        serde_json::from_slice(self.body)
            .map_err(|e| ApiError::new(400, "InvalidRequestBody", format!("Request body is incorrect: {e}")))
    }

    fn store(&self, tenant: &str, now: Timestamp) -> std::sync::MutexGuard<'_, Store> {
        let mut s = self.sh.store.lock().unwrap();
        s.purge(tenant, self.sh.config.purge_expired_on_read, now);
        s
    }

    fn list(&self, tenant: &str, caller: &Caller, now: Timestamp) -> Result<Response, ApiError> {
        let q = Query::parse(&self.query, &INDICATOR_SCHEMA, false)?;
        let rows = self.store(tenant, now).list(tenant, Some(caller));
        Ok(json_response(200, &q.page(rows, &self.base, "indicators", "Indicators")))
    }

    fn get_one(&self, tenant: &str, caller: &Caller, now: Timestamp) -> Result<Response, ApiError> {
        let id = self.id.as_deref().unwrap_or_default();
        match self.store(tenant, now).get(tenant, id, Some(caller)) {
            Some(mut v) => {
                v.as_object_mut().expect("object").insert(
                    "@odata.context".into(),
                    Value::String(format!("{}/$metadata#Indicators/$entity", self.base)),
                );
                Ok(json_response(200, &v))
            }
            None => Err(ApiError::new(404, "ResourceNotFound", format!("Indicator {id} was not found"))),
        }
    }

    fn submit(&self, tenant: &str, caller: &Caller, now: Timestamp) -> Result<Response, ApiError> {
        let input = validate(&self.json_body()?)?;
        let cap = self.sh.config.indicator_cap;
        match self.store(tenant, now).upsert(tenant, input, caller, Some(cap), now) {
            Ok(mut v) => {
                v.as_object_mut().expect("object").insert(
                    "@odata.context".into(),
                    Value::String(format!("{}/$metadata#Indicators/$entity", self.base)),
                );
                Ok(json_response(200, &v))
            }
            Err(UpsertError::Cap) => Err(ApiError::new(
                400,
                "BadRequest",
                format!("Maximum number of indicators reached ({cap} active indicators per tenant)"),
            )),
            Err(UpsertError::NotOwner(id)) => Err(ApiError::new(
                403,
                "DisallowedOperation",
                format!("Indicator {id} was created by another application and cannot be updated with Ti.ReadWrite"),
            )),
        }
    }

    fn import(&self, tenant: &str, caller: &Caller, now: Timestamp) -> Result<Response, ApiError> {
        let body = self.json_body()?;
        let items = match body.get("Indicators") {
            None | Some(Value::Null) => {
                return Err(ApiError::new(400, "MissingRequiredParameter", "Parameter Indicators is missing"));
            }
            Some(Value::Array(a)) => a,
            Some(_) => {
                return Err(ApiError::new(
                    400,
                    "InvalidRequestBody",
                    "Request body is incorrect: 'Indicators' must be an array",
                ));
            }
        };
        if items.is_empty() {
            return Err(ApiError::new(400, "InvalidInput", "Invalid input Indicators: the list is empty"));
        }
        if items.len() > MAX_BATCH {
            return Err(ApiError::new(
                400,
                "MaximumBatchSizeExceeded",
                format!("Maximum batch size exceeded. Received: {}, allowed: {MAX_BATCH}", items.len()),
            ));
        }
        let cap = self.sh.config.indicator_cap;
        let mut store = self.store(tenant, now);
        let results: Vec<Value> = items
            .iter()
            .map(|item| {
                let value = item.get("indicatorValue").and_then(Value::as_str);
                match validate(item) {
                    Err(e) => import_result(None, value, Some(e.message)),
                    Ok(input) => match store.upsert(tenant, input, caller, Some(cap), now) {
                        Ok(v) => import_result(v["id"].as_str(), value, None),
                        Err(UpsertError::Cap) => {
                            import_result(None, value, Some("Maximum number of indicators reached".into()))
                        }
                        Err(UpsertError::NotOwner(id)) => import_result(
                            None,
                            value,
                            Some(format!("Indicator {id} was created by another application")),
                        ),
                    },
                }
            })
            .collect();
        drop(store);
        Ok(json_response(
            200,
            &json!({"@odata.context": format!("{}/$metadata#Collection(microsoft.windowsDefenderATP.api.ImportIndicatorResult)", self.base), "value": results}),
        ))
    }

    fn delete(&self, tenant: &str, caller: &Caller, now: Timestamp) -> Result<Response, ApiError> {
        let id = self.id.as_deref().unwrap_or_default();
        if self.store(tenant, now).delete(tenant, id, Some(caller)) {
            Ok(empty(204))
        } else {
            Err(ApiError::new(404, "ResourceNotFound", format!("Indicator {id} was not found")))
        }
    }

    fn batch_delete(&self, tenant: &str, caller: &Caller, now: Timestamp) -> Result<Response, ApiError> {
        let body = self.json_body()?;
        let ids = match body.get("IndicatorIds") {
            None | Some(Value::Null) => {
                return Err(ApiError::new(400, "MissingRequiredParameter", "Parameter IndicatorIds is missing"));
            }
            Some(Value::Array(a)) => a,
            Some(_) => {
                return Err(ApiError::new(
                    400,
                    "InvalidRequestBody",
                    "Request body is incorrect: 'IndicatorIds' must be an array",
                ));
            }
        };
        if ids.is_empty() {
            return Err(ApiError::new(400, "InvalidInput", "Invalid input IndicatorIds: the list is empty"));
        }
        if ids.len() > MAX_BATCH {
            return Err(ApiError::new(
                400,
                "MaximumBatchSizeExceeded",
                format!("Maximum batch size exceeded. Received: {}, allowed: {MAX_BATCH}", ids.len()),
            ));
        }
        let mut parsed: Vec<String> = Vec::with_capacity(ids.len());
        for id in ids {
            let s = match id {
                Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.clone(),
                Value::Number(n) if n.is_u64() => n.to_string(),
                other => {
                    return Err(ApiError::new(
                        400,
                        "InvalidInput",
                        format!("Invalid input IndicatorIds: {other} is not a valid id"),
                    ));
                }
            };
            if !parsed.contains(&s) {
                parsed.push(s);
            }
        }
        let mut store = self.store(tenant, now);
        let missing: Vec<&String> = parsed.iter().filter(|id| !store.delete(tenant, id, Some(caller))).collect();
        drop(store);
        if missing.is_empty() {
            Ok(empty(204))
        } else {
            let list: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            Err(ApiError::new(404, "ResourceNotFound", format!("Indicators were not found: {}", list.join(", "))))
        }
    }

    /// The machine, antivirus health and alert calls.
    fn devices(&self, tenant: &str, now: Timestamp) -> Result<Value, ApiError> {
        let id = self.id.as_deref().unwrap_or_default();
        let (query, base) = (self.query.as_str(), self.base.as_str());
        let machines = || self.sh.machines.lock().unwrap();
        match self.endpoint {
            Endpoint::Machines => machines().list(tenant, query, base),
            Endpoint::MachineById => machines().get(tenant, id, base),
            Endpoint::FindMachinesByIp => machines().find_by_ip(tenant, id, query, base, now),
            Endpoint::MachineTags => {
                let body = self.json_body()?;
                machines().tag(tenant, id, &body, base)
            }
            Endpoint::TagMachines => {
                let body = self.json_body()?;
                machines().tag_many(tenant, &body, base)
            }
            Endpoint::DeviceAvInfo => machines().av_info(tenant, query, base),
            Endpoint::MachineAlerts => {
                let machine_id = machines().id_of(tenant, id).ok_or_else(|| machine_store::not_found(id))?;
                self.sh.alerts.lock().unwrap().list(tenant, Some(&machine_id), query, base, now)
            }
            Endpoint::AlertById => self.sh.alerts.lock().unwrap().get(tenant, id, base, now),
            _ => self.sh.alerts.lock().unwrap().list(tenant, None, query, base, now),
        }
    }
}

fn unauthorized(msg: &str) -> Response {
    let mut r = json_response(401, &error_body("Unauthorized", msg));
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |m: Method, p: &str| match route(&m, p) {
            Route::Api { endpoint, .. } => Some(endpoint),
            Route::Token { v2: true, .. } => Some(Endpoint::TokenV2),
            Route::Token { v2: false, .. } => Some(Endpoint::TokenV1),
            _ => None,
        };
        assert_eq!(r(Method::POST, "/contoso.com/oauth2/v2.0/token"), Some(Endpoint::TokenV2));
        assert_eq!(r(Method::POST, "/t/oauth2/token"), Some(Endpoint::TokenV1));
        assert_eq!(r(Method::GET, "/api/indicators"), Some(Endpoint::ListIndicators));
        assert_eq!(r(Method::GET, "/api/v1.0/indicators"), Some(Endpoint::ListIndicators));
        assert_eq!(r(Method::POST, "/api/indicators/batchdelete"), Some(Endpoint::BatchDeleteIndicators));
        assert_eq!(r(Method::POST, "/api/indicators/import"), Some(Endpoint::ImportIndicators));
        assert_eq!(r(Method::DELETE, "/api/indicators/12"), Some(Endpoint::DeleteIndicator));
        assert_eq!(r(Method::GET, "/api/machines"), Some(Endpoint::Machines));
        assert_eq!(r(Method::GET, "/api/machines/abc"), Some(Endpoint::MachineById));
        assert_eq!(
            r(Method::GET, "/api/machines/findbyip(ip='10.0.0.1',timestamp=2024-01-01T00:00:00Z)"),
            Some(Endpoint::FindMachinesByIp)
        );
        assert_eq!(r(Method::GET, "/api/machines/abc/alerts"), Some(Endpoint::MachineAlerts));
        assert_eq!(r(Method::POST, "/api/machines/abc/tags"), Some(Endpoint::MachineTags));
        assert_eq!(r(Method::GET, "/api/machines/abc/tags"), None);
        assert_eq!(r(Method::POST, "/api/machines/AddOrRemoveTagForMultipleMachines"), Some(Endpoint::TagMachines));
        assert_eq!(r(Method::GET, "/api/deviceavinfo"), Some(Endpoint::DeviceAvInfo));
        assert_eq!(r(Method::GET, "/api/alerts"), Some(Endpoint::Alerts));
        assert_eq!(r(Method::GET, "/api/v1.0/alerts/da1_2"), Some(Endpoint::AlertById));
        assert_eq!(r(Method::PUT, "/api/indicators"), None);
        assert_eq!(r(Method::GET, "/nothing"), None);
    }
}
