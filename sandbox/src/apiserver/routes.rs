//! HTTP: authentication, path parsing, authorisation and dispatch to the verbs.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

use super::Inner;
use super::discovery;
use super::error::{ApiError, ApiResult};
use super::ops::{self, Ctx};
use super::rbac::{self, Attrs, User};
use super::registry::ResourceDef;
use super::store::Store;
use super::table;
use super::tokens;
use super::watch;

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new().fallback(handle).with_state(inner)
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    match handle_inner(inner, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn json_response(code: u16, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (StatusCode::from_u16(code).unwrap_or(StatusCode::OK), [(header::CONTENT_TYPE, "application/json")], body)
        .into_response()
}

/// A parsed resource path.
struct ResPath {
    group: String,
    version: String,
    ns: String,
    plural: String,
    name: String,
    sub: String,
    watch: bool,
}

fn parse_resource_path(segs: &[&str]) -> Option<ResPath> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    if rest.is_empty() {
        return None;
    }
    let (watch, rest) = if rest[0] == "watch" { (true, &rest[1..]) } else { (false, rest) };
    let get = |i: usize| rest.get(i).map(|s| s.to_string()).unwrap_or_default();
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && !(rest.len() == 3 && (rest[2] == "status" || rest[2] == "finalize"));
    let p = if namespaced_path {
        if rest.len() > 5 {
            return None;
        }
        ResPath { group, version, ns: get(1), plural: get(2), name: get(3), sub: get(4), watch }
    } else {
        if rest.len() > 3 || rest.is_empty() {
            return None;
        }
        ResPath { group, version, ns: String::new(), plural: get(0), name: get(1), sub: get(2), watch }
    };
    Some(p)
}

fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

/// `as=PartialObjectMetadata` / `as=PartialObjectMetadataList`: metadata-only clients.
fn wants_metadata(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=PartialObjectMetadata"))
}

/// What a request carries, read once before anything is decided.
struct Incoming {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
    auth: String,
    accept: String,
    user_agent: String,
    body: RawBody,
}

impl Incoming {
    async fn read(req: Request) -> ApiResult<Incoming> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let headers = req.headers().clone();
        let hdr = |name: header::HeaderName| {
            headers.get(name).and_then(|v| v.to_str().ok()).map(String::from).unwrap_or_default()
        };
        let auth = hdr(header::AUTHORIZATION);
        let accept = hdr(header::ACCEPT);
        let content_type = hdr(header::CONTENT_TYPE);
        let user_agent = hdr(header::USER_AGENT);
        let bytes = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
            .await
            .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        Ok(Incoming { method, path, query, headers, auth, accept, user_agent, body: RawBody { content_type, bytes } })
    }
}

/// A request body as sent, decoded only by the verbs that take one.
struct RawBody {
    content_type: String,
    bytes: Bytes,
}

impl RawBody {
    fn parse(&self) -> ApiResult<Value> {
        let (content_type, body) = (&self.content_type, &self.bytes);
        if content_type.starts_with("application/vnd.kubernetes.protobuf") {
            super::proto::decode(body).ok_or_else(|| {
                ApiError::unsupported_media_type(content_type, &["application/json", "application/yaml"])
            })
        } else if content_type.contains("yaml") {
            super::ops::from_yaml(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))
        }
    }
}

/// How list and get results are rendered, from the `Accept` header.
struct View {
    /// `as=Table`, with its `includeObject` policy.
    table_include: Option<String>,
    metadata_only: bool,
}

/// Authenticates, resolves the path, authorises, then runs the verb.
async fn handle_inner(inner: Arc<Inner>, req: Request) -> ApiResult<Response> {
    let Incoming { method, path, mut query, headers, auth, accept, user_agent, body } = Incoming::read(req).await?;
    if let Some(document) = tokens::issuer_document(&inner, &method, &path) {
        return Ok(document);
    }
    let user = authenticate(&inner, &auth, &method, &path)?;
    let user = impersonate(&inner, &headers, user)?;

    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(rp) = parse_resource_path(&segs) else {
        return non_resource(&inner, &user, &method, &path, &segs, &accept);
    };
    if tokens::is_token_request(&rp.group, &rp.plural, &rp.sub) && rp.version == "v1" && !rp.ns.is_empty() {
        return tokens::create_token(&inner, &user, &method, &rp.ns, &rp.name, || body.parse());
    }
    let def = served_resource(&inner, &rp)?;
    let verb = verb_of(&method, &rp, &query, &def)?;
    // a watch of one named object is a watch with a metadata.name field selector
    if verb == "watch" && !rp.name.is_empty() {
        query.insert("fieldSelector".into(), format!("metadata.name={}", rp.name));
    }
    authorize(&inner, &user, verb, &def, &rp)?;
    if rp.sub == "status" && matches!(verb, "update" | "patch") && inner.faults.take_status_conflict() {
        return Err(ApiError::conflict(&def, &rp.name));
    }
    let view = View {
        table_include: wants_table(&accept).then(|| query.get("includeObject").cloned().unwrap_or("Metadata".into())),
        metadata_only: wants_metadata(&accept),
    };
    if verb == "watch" {
        return watch_response(inner.clone(), def, &rp, &query, view);
    }

    let ctx = Ctx {
        def,
        version: rp.version.clone(),
        ns: rp.ns.clone(),
        user: &user,
        query,
        user_agent,
        warnings: Default::default(),
    };
    let mut st = inner.lock();
    if rp.sub == "scale" {
        return scale(&mut st, &ctx, verb, &rp.name, &body);
    }
    let (code, out) = run_verb(&mut st, &ctx, verb, &rp, &body, &view)?;
    drop(st);
    Ok(with_warnings(json_response(code, &out), &ctx))
}

fn authenticate(inner: &Inner, auth: &str, method: &Method, path: &str) -> ApiResult<User> {
    match auth.strip_prefix("Bearer ").map(str::trim).and_then(|t| inner.user_for(t)) {
        Some(u) => Ok(u),
        // with no credentials at all, the public-info endpoints answer (system:public-info-viewer)
        None if auth.is_empty()
            && method == Method::GET
            && matches!(path, "/version" | "/healthz" | "/livez" | "/readyz") =>
        {
            Ok(User::anonymous())
        }
        None => Err(ApiError::unauthorized()),
    }
}

/// Impersonation (kubectl --as / --as-group), for users RBAC allows to impersonate.
fn impersonate(inner: &Inner, headers: &HeaderMap, user: User) -> ApiResult<User> {
    let Some(target) = headers.get("impersonate-user").and_then(|v| v.to_str().ok()) else {
        return Ok(user);
    };
    let groups: Vec<String> =
        headers.get_all("impersonate-group").iter().filter_map(|v| v.to_str().ok().map(String::from)).collect();
    let sa = target.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':'));
    let attrs = match sa {
        Some((ns, name)) => Attrs {
            verb: "impersonate".into(),
            group: String::new(),
            resource: "serviceaccounts".into(),
            subresource: String::new(),
            namespace: ns.into(),
            name: name.into(),
        },
        None => Attrs {
            verb: "impersonate".into(),
            group: String::new(),
            resource: "users".into(),
            subresource: String::new(),
            namespace: String::new(),
            name: target.into(),
        },
    };
    let allowed = {
        let st = inner.lock();
        rbac::authorize(&st, &user, &attrs)
    };
    if !allowed {
        return Err(ApiError::forbidden(attrs.forbidden_message(&user), &attrs.name, "", &attrs.resource));
    }
    Ok(match sa {
        Some((ns, name)) => User::service_account(ns, name),
        None => {
            let mut g = groups;
            g.push("system:authenticated".into());
            User { name: target.into(), groups: g, admin: false }
        }
    })
}

/// Paths that name no resource: health checks and what [`discovery::handle`] serves.
fn non_resource(
    inner: &Inner,
    user: &User,
    method: &Method,
    path: &str,
    segs: &[&str],
    accept: &str,
) -> ApiResult<Response> {
    if !rbac::non_resource_allowed(user, path, method) {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!("forbidden: User \"{}\" cannot {} path \"{}\"", user.name, method.as_str().to_lowercase(), path),
        ));
    }
    let st = inner.lock();
    if matches!(segs, ["healthz"] | ["livez"] | ["readyz"]) {
        return Ok((StatusCode::OK, "ok").into_response());
    }
    match discovery::handle(inner, &st, path, accept) {
        Some((ct, v)) => {
            let body = serde_json::to_vec(&v).unwrap_or_default();
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response())
        }
        None => Err(ApiError::path_not_found()),
    }
}

/// The resource the path names, if it is served with that scope and subresource.
fn served_resource(inner: &Inner, rp: &ResPath) -> ApiResult<ResourceDef> {
    let def = {
        let st = inner.lock();
        inner.lookup(&st, &rp.group, &rp.version, &rp.plural).ok_or_else(ApiError::path_not_found)?
    };
    if (!def.namespaced && !rp.ns.is_empty()) || (def.namespaced && rp.ns.is_empty() && !rp.name.is_empty()) {
        return Err(ApiError::path_not_found());
    }
    if !(rp.sub.is_empty()
        || (rp.sub == "status" && def.status_subresource)
        || (rp.sub == "scale" && def.scale.is_some()))
    {
        return Err(ApiError::path_not_found());
    }
    Ok(def)
}

fn verb_of(
    method: &Method,
    rp: &ResPath,
    query: &HashMap<String, String>,
    def: &ResourceDef,
) -> ApiResult<&'static str> {
    let is_watch = rp.watch || query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (method, rp.name.is_empty()) {
        (&Method::GET, false) if !is_watch => "get",
        (&Method::GET, _) if is_watch => "watch",
        (&Method::GET, true) => "list",
        (&Method::POST, true) => "create",
        (&Method::PUT, false) => "update",
        (&Method::PATCH, false) => "patch",
        (&Method::DELETE, false) => "delete",
        (&Method::DELETE, true) => "deletecollection",
        _ => {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
    };
    if !def.verbs.contains(&verb) {
        return Err(ApiError::method_not_allowed("the server does not allow this method on the requested resource"));
    }
    Ok(verb)
}

fn authorize(inner: &Inner, user: &User, verb: &str, def: &ResourceDef, rp: &ResPath) -> ApiResult<()> {
    let attrs = Attrs {
        verb: verb.into(),
        group: def.group.clone(),
        resource: def.plural.clone(),
        subresource: rp.sub.clone(),
        namespace: rp.ns.clone(),
        name: rp.name.clone(),
    };
    let st = inner.lock();
    if !rbac::authorize(&st, user, &attrs) {
        return Err(ApiError::forbidden(attrs.forbidden_message(user), &rp.name, &def.group, &def.plural));
    }
    Ok(())
}

fn watch_response(
    inner: Arc<Inner>,
    def: ResourceDef,
    rp: &ResPath,
    query: &HashMap<String, String>,
    view: View,
) -> ApiResult<Response> {
    let body =
        watch::watch(inner, def, rp.version.clone(), rp.ns.clone(), query, view.table_include, view.metadata_only)?;
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::empty())))
}

/// The scale subresource: get, update and patch only.
fn scale(st: &mut Store, ctx: &Ctx, verb: &str, name: &str, body: &RawBody) -> ApiResult<Response> {
    let out = match verb {
        "get" => ops::scale(st, ctx, name, None)?,
        "update" | "patch" => ops::scale(st, ctx, name, Some((&body.content_type, &body.bytes)))?,
        _ => {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
    };
    Ok(json_response(200, &out))
}

/// The verbs other than watch, on anything but the scale subresource. Returns (status code, body).
fn run_verb(
    st: &mut Store,
    ctx: &Ctx,
    verb: &str,
    rp: &ResPath,
    body: &RawBody,
    view: &View,
) -> ApiResult<(u16, Value)> {
    Ok(match verb {
        "get" => {
            let o = ops::get(st, ctx, &rp.name)?;
            match &view.table_include {
                Some(inc) => (
                    200,
                    table::table(
                        &ctx.def,
                        &ctx.version,
                        &[o],
                        inc,
                        json!({"resourceVersion": st.rv.to_string()}),
                        true,
                    ),
                ),
                None if view.metadata_only => (200, table::partial_metadata(&o)),
                None => (200, o),
            }
        }
        "list" => {
            let l = ops::list(st, ctx)?;
            match &view.table_include {
                Some(inc) => {
                    let items = l["items"].as_array().cloned().unwrap_or_default();
                    (200, table::table(&ctx.def, &ctx.version, &items, inc, l["metadata"].clone(), true))
                }
                None if view.metadata_only => (200, table::partial_metadata_list(&l)),
                None => (200, l),
            }
        }
        "create" => {
            let b = body.parse()?;
            if ctx.def.plural == "selfsubjectaccessreviews" {
                (201, self_subject_access_review(st, ctx.user, b))
            } else {
                (201, ops::create(st, ctx, b)?)
            }
        }
        "update" => (200, ops::update(st, ctx, &rp.name, &rp.sub, body.parse()?)?),
        "patch" => ops::patch(st, ctx, &rp.name, &rp.sub, &body.content_type, &body.bytes)?,
        "delete" => ops::delete(st, ctx, &rp.name, &delete_options(ctx, &body.bytes))?,
        "deletecollection" => (200, ops::delete_collection(st, ctx, &delete_options(ctx, &body.bytes))?),
        _ => return Err(ApiError::method_not_allowed("unsupported")),
    })
}

/// Answers whether the caller may do what the review asks; nothing is stored.
fn self_subject_access_review(st: &Store, user: &User, mut review: Value) -> Value {
    let ra = &review["spec"]["resourceAttributes"];
    let s = |k: &str| ra[k].as_str().unwrap_or_default().to_string();
    let a = Attrs {
        verb: s("verb"),
        group: s("group"),
        resource: s("resource"),
        subresource: s("subresource"),
        namespace: s("namespace"),
        name: s("name"),
    };
    let allowed = rbac::authorize(st, user, &a);
    review["status"] = json!({"allowed": allowed});
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!("SelfSubjectAccessReview");
    review
}

/// DeleteOptions: the body's (an empty or unparsable body counts as none), with
/// `?propagationPolicy=` overriding it.
fn delete_options(ctx: &Ctx, body: &[u8]) -> Value {
    let mut opts: Value = if body.is_empty() { json!({}) } else { serde_json::from_slice(body).unwrap_or(json!({})) };
    if let Some(p) = ctx.q("propagationPolicy") {
        opts["propagationPolicy"] = json!(p);
    }
    opts
}

/// The warnings the verb collected, as `Warning: 299 - "..."` headers.
fn with_warnings(mut resp: Response, ctx: &Ctx) -> Response {
    for w in ctx.warnings.borrow().iter() {
        let v = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(h) = http::HeaderValue::from_str(&v) {
            resp.headers_mut().append(header::WARNING, h);
        }
    }
    resp
}
