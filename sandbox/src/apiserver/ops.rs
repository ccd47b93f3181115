//! The verbs (get, list, create, update, patch, apply, delete) over the store, with the real
//! server's metadata, status-subresource, generation, finalizer and namespace semantics.

use base64::Engine;
use serde_json::{Map, Value, json};
use std::collections::HashMap;

use super::apply::{self, Scope};
use super::cause::Cause;
use super::error::{ApiError, ApiResult};
use super::patch;
use super::rbac::User;
use super::registry::{self, ResourceDef};
use super::schema;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{ResKey, Store};

/// A request on one resource type.
pub struct Ctx<'a> {
    pub def: ResourceDef,
    pub version: String,
    /// Empty for cluster-scoped resources and all-namespace lists.
    pub ns: String,
    pub user: &'a User,
    pub query: HashMap<String, String>,
    pub user_agent: String,
    /// `Warning` headers for the response (e.g. unknown fields dropped, fieldValidation=Warn).
    pub warnings: std::cell::RefCell<Vec<String>>,
}

impl Ctx<'_> {
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(|s| s.as_str())
    }

    fn manager(&self) -> String {
        match self.q("fieldManager") {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => {
                let ua = self.user_agent.split('/').next().unwrap_or("").trim();
                if ua.is_empty() { "unknown".into() } else { ua.to_string() }
            }
        }
    }

    fn dry_run(&self) -> bool {
        self.q("dryRun").is_some_and(|d| d == "All")
    }

    fn schema(&self) -> Option<Value> {
        self.def.schema(&self.version).cloned()
    }
}

pub fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or(jiff::Timestamp::now()).to_string()
}

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Seed the objects a fresh cluster has.
pub fn bootstrap(st: &mut Store) {
    let ts = now();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let rv = st.next_rv();
        st.put(
            &(String::new(), "namespaces".into()),
            json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "uid": uid(), "resourceVersion": rv.to_string(), "creationTimestamp": ts,
                             "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }),
        );
    }
}

/// The object as served at the requested version.
pub fn present(obj: &Value, def: &ResourceDef, version: &str) -> Value {
    let mut o = if def.is_events_v1() { convert_event(obj, false) } else { obj.clone() };
    if let Some(m) = o.as_object_mut() {
        m.insert("apiVersion".into(), json!(def.api_version(version)));
        m.insert("kind".into(), json!(def.kind));
    }
    o
}

/// core/v1 Event field ↔ events.k8s.io/v1 Event field.
const CORE_TO_V1: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];
const SHARED_EVENT_FIELDS: &[&str] = &[
    "metadata",
    "eventTime",
    "series",
    "action",
    "reason",
    "related",
    "type",
    "reportingInstance",
    "apiVersion",
    "kind",
];

fn convert_event(obj: &Value, to_core: bool) -> Value {
    let Some(m) = obj.as_object() else { return obj.clone() };
    let mut out = Map::new();
    for (k, v) in m {
        if SHARED_EVENT_FIELDS.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
            continue;
        }
        let mapped = CORE_TO_V1
            .iter()
            .find_map(|(c, n)| if to_core { (*n == k).then_some(*c) } else { (*c == k).then_some(*n) });
        if let Some(nk) = mapped {
            out.insert(nk.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// The stored (core/v1) form of an object written through `def`.
pub fn to_storage(def: &ResourceDef, obj: Value) -> Value {
    if def.is_events_v1() { convert_event(&obj, true) } else { obj }
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

/// What `metadata.generation` tracks: everything but metadata (and status, when it has its own
/// subresource).
fn spec_part(obj: &Value, status_subresource: bool) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        if status_subresource {
            m.remove("status");
        }
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

fn strip_volatile(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(meta) = o.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("resourceVersion");
        if let Some(Value::Array(mf)) = meta.get_mut("managedFields") {
            for e in mf.iter_mut() {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
    }
    o
}

const DNS1123_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const DNS1123_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

fn validate_name(def: &ResourceDef, name: &str) -> Option<Cause> {
    if name.is_empty() {
        return Some(Cause {
            reason: "FieldValueRequired",
            message: "Required value: name or generateName is required".into(),
            field: "metadata.name".into(),
        });
    }
    let rbac = def.group == "rbac.authorization.k8s.io";
    if rbac {
        return None;
    }
    let label = def.plural == "namespaces" || def.plural == "services";
    let re = super::cel::regex(if label { DNS1123_LABEL } else { DNS1123_SUBDOMAIN }).expect("regex");
    let max = if label { 63 } else { 253 };
    if !re.is_match(name) || name.len() > max {
        let msg = if label {
            format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            )
        } else {
            format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            )
        };
        return Some(Cause { reason: "FieldValueInvalid", message: msg, field: "metadata.name".into() });
    }
    None
}

/// Reject metadata the real server could not decode into an ObjectMeta.
fn check_meta_types(meta: &Value) -> ApiResult<()> {
    let bad = |field: &str, want: &str| {
        Err(ApiError::bad_request(format!(
            "json: cannot unmarshal into Go struct field ObjectMeta.metadata.{field} of type {want}"
        )))
    };
    for f in ["labels", "annotations"] {
        match &meta[f] {
            Value::Null => {}
            Value::Object(m) if m.values().all(|v| v.is_string()) => {}
            _ => return bad(f, "map[string]string"),
        }
    }
    match &meta["finalizers"] {
        Value::Null => {}
        Value::Array(a) if a.iter().all(|v| v.is_string()) => {}
        _ => return bad("finalizers", "[]string"),
    }
    for f in ["name", "namespace", "generateName", "resourceVersion", "uid"] {
        if !(meta[f].is_null() || meta[f].is_string()) {
            return bad(f, "string");
        }
    }
    Ok(())
}

/// How managedFields are maintained for a write.
pub enum Track {
    Update,
    /// Already computed by server-side apply.
    Applied,
}

/// Validate, complete and store a write (create when `old` is None). Returns the stored object.
pub fn commit(
    st: &mut Store,
    ctx: &Ctx,
    old: Option<&Value>,
    mut new: Value,
    sub: &str,
    track: Track,
) -> ApiResult<Value> {
    let def = &ctx.def;
    let storage_version = def.versions[0].clone();
    if !new.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    new["apiVersion"] = json!(def.api_version(&storage_version));
    new["kind"] = json!(def.kind);
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    check_meta_types(&new["metadata"])?;
    let ts = now();
    match old {
        Some(old) => {
            isolate_status(def, old, &mut new, sub);
            keep_server_metadata(old, &mut new);
            check_no_finalizer_added_while_deleting(def, old, &new)?;
        }
        None => complete_created(ctx, &mut new, &ts),
    }
    let name = name_of(&new).to_string();
    validate_write(ctx, old, &mut new, &name, &ts)?;
    if def.generation {
        new["metadata"]["generation"] = json!(next_generation(def, old, &new));
    }
    if let Track::Update = track {
        let scope = if sub == "status" {
            Scope::StatusOnly
        } else if def.status_subresource {
            Scope::NoStatus
        } else {
            Scope::All
        };
        let schema = ctx.schema();
        let av = def.api_version(&ctx.version);
        apply::track_update(old, &mut new, &ctx.manager(), sub, &av, &ts, schema.as_ref(), def.builtin, scope);
    }
    if let Some(o) = old
        && strip_volatile(o) == strip_volatile(&new)
    {
        return Ok(o.clone());
    }
    store_write(st, ctx, old, new, &name)
}

/// Status subresource isolation: a write to `status` changes only the status, a write to the
/// object leaves the status as it was.
fn isolate_status(def: &ResourceDef, old: &Value, new: &mut Value, sub: &str) {
    if sub == "status" {
        let status = new.get("status").cloned();
        let mut merged = old.clone();
        merged["metadata"]["managedFields"] = new["metadata"]["managedFields"].clone();
        match status {
            Some(s) => merged["status"] = s,
            None => {
                merged.as_object_mut().map(|m| m.remove("status"));
            }
        }
        *new = merged;
    } else if def.status_subresource {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                new.as_object_mut().map(|m| m.remove("status"));
            }
        }
    }
}

/// The metadata only the server sets, or that is immutable, stays as stored.
fn keep_server_metadata(old: &Value, new: &mut Value) {
    let meta = new["metadata"].as_object_mut().expect("metadata object");
    for k in [
        "uid",
        "creationTimestamp",
        "name",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old["metadata"].get(k) {
            Some(v) => {
                meta.insert(k.into(), v.clone());
            }
            None => {
                meta.remove(k);
            }
        }
    }
    meta.remove("generateName");
    if let Some(g) = old["metadata"].get("generateName") {
        meta.insert("generateName".into(), g.clone());
    }
}

fn check_no_finalizer_added_while_deleting(def: &ResourceDef, old: &Value, new: &Value) -> ApiResult<()> {
    if !old["metadata"]["deletionTimestamp"].is_string() {
        return Ok(());
    }
    let old_f = old["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    let new_f = new["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    if new_f.iter().any(|f| !old_f.contains(f)) {
        return Err(ApiError::invalid(
            def,
            name_of(old),
            vec![Cause {
                reason: "FieldValueForbidden",
                message: "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                field: "metadata.finalizers".into(),
            }],
        ));
    }
    Ok(())
}

/// What the server fills in on create: namespace, a name from `generateName`, uid and
/// creationTimestamp; what a client may not set on create is dropped.
fn complete_created(ctx: &Ctx, new: &mut Value, ts: &str) {
    let def = &ctx.def;
    if def.namespaced {
        new["metadata"]["namespace"] = json!(ctx.ns);
    } else if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    if name_of(new).is_empty()
        && let Some(g) = new["metadata"]["generateName"].as_str()
    {
        let suffix: String = {
            use rand::Rng;
            let mut rng = rand::rng();
            const CH: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            (0..5).map(|_| CH[rng.random_range(0..CH.len())] as char).collect()
        };
        new["metadata"]["name"] = json!(format!("{g}{suffix}"));
    }
    let meta = new["metadata"].as_object_mut().expect("metadata object");
    meta.insert("uid".into(), json!(uid()));
    meta.insert("creationTimestamp".into(), json!(ts));
    for k in ["deletionTimestamp", "deletionGracePeriodSeconds", "generation", "selfLink"] {
        meta.remove(k);
    }
    if def.status_subresource && def.plural != "customresourcedefinitions" && def.plural != "namespaces" {
        new.as_object_mut().map(|m| m.remove("status"));
    }
}

/// The name, the kind's own rules, and for custom resources pruning, defaulting and the schema,
/// with `fieldValidation` deciding what unknown fields cause.
fn validate_write(ctx: &Ctx, old: Option<&Value>, new: &mut Value, name: &str, ts: &str) -> ApiResult<()> {
    let def = &ctx.def;
    let mut causes: Vec<Cause> = validate_name(def, name).into_iter().collect();
    if !causes.is_empty() {
        return Err(ApiError::invalid(def, name, causes));
    }
    kind_specific(def, old, new, ts, &mut causes);
    if def.key() == (String::new(), "events".to_string()) {
        causes.extend(super::events::validate(def, old, new));
    }
    if let Some(schema) = ctx.schema() {
        let (pruned, mut c) = schema::process(new, &schema, old);
        causes.append(&mut c);
        if ctx.q("fieldValidation") == Some("Strict") && !pruned.is_empty() {
            let msgs: Vec<String> = pruned.iter().map(|p| format!("unknown field \"{p}\"")).collect();
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                def.kind,
                ctx.version,
                def.kind,
                msgs.join(", ")
            )));
        }
        // the default (Warn): unknown fields are dropped with a warning
        if ctx.q("fieldValidation").is_none_or(|v| v == "Warn") {
            ctx.warnings.borrow_mut().extend(pruned.iter().map(|p| format!("unknown field \"{p}\"")));
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(def, name, causes));
    }
    Ok(())
}

/// 1 on create; bumped when anything but metadata (and status, if a subresource) changed.
fn next_generation(def: &ResourceDef, old: Option<&Value>, new: &Value) -> i64 {
    match old {
        None => 1,
        Some(o) => {
            let g = o["metadata"]["generation"].as_i64().unwrap_or(1);
            if spec_part(o, def.status_subresource) != spec_part(new, def.status_subresource) { g + 1 } else { g }
        }
    }
}

/// Persists a validated write (or, on dry run, returns what would be stored).
fn store_write(st: &mut Store, ctx: &Ctx, old: Option<&Value>, mut new: Value, name: &str) -> ApiResult<Value> {
    let def = &ctx.def;
    let res = def.key();
    let ns = new["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
    // the last finalizer removed from an object being deleted: it goes
    if new["metadata"]["deletionTimestamp"].is_string()
        && new["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty())
        && def.plural != "namespaces"
    {
        if ctx.dry_run() {
            return Ok(new);
        }
        let removed = st.remove(&res, &ns, name).unwrap_or(new);
        after_remove(st, def, &ns);
        collect_garbage(st, &removed);
        return Ok(removed);
    }
    if ctx.dry_run() {
        // nothing is persisted: the object keeps the resourceVersion it had (none when new)
        match old.and_then(|o| o["metadata"].get("resourceVersion")) {
            Some(rv) => new["metadata"]["resourceVersion"] = rv.clone(),
            None => {
                new["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
            }
        }
        return Ok(new);
    }
    let rv = st.rv + 1;
    new["metadata"]["resourceVersion"] = json!(rv.to_string());
    st.next_rv();
    st.put(&res, new.clone());
    if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
        register_crd(st, &new);
    }
    Ok(new)
}

fn kind_specific(def: &ResourceDef, old: Option<&Value>, new: &mut Value, ts: &str, causes: &mut Vec<Cause>) {
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "namespaces") if old.is_none() => {
            if !new["spec"].is_object() {
                new["spec"] = json!({});
            }
            new["spec"]["finalizers"] = json!(["kubernetes"]);
            new["status"] = json!({"phase": "Active"});
            let n = name_of(new).to_string();
            new["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(n);
        }
        ("", "configmaps") | ("", "secrets")
            if old.is_some_and(|o| o["immutable"] == json!(true))
                && old.is_some_and(|o| {
                    o["data"] != new["data"] || o["binaryData"] != new["binaryData"] || new.get("stringData").is_some()
                }) =>
        {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                message: "Forbidden: field is immutable when `immutable` is set".into(),
                field: "data".into(),
            });
        }
        ("", "configmaps") | ("", "secrets")
            if old.is_some_and(|o| o["immutable"] == json!(true)) && new["immutable"] != json!(true) =>
        {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                message: "Forbidden: field is immutable when `immutable` is set".into(),
                field: "immutable".into(),
            });
        }
        ("", "secrets") => {
            if let Some(sd) = new.as_object_mut().and_then(|m| m.remove("stringData"))
                && let Some(sd) = sd.as_object()
            {
                if !new["data"].is_object() {
                    new["data"] = json!({});
                }
                for (k, v) in sd {
                    let enc = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
                    new["data"][k] = json!(enc);
                }
            }
            if new["type"].as_str().is_none_or(|t| t.is_empty()) {
                new["type"] = json!("Opaque");
            }
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => match registry::from_crd(new) {
            Ok(_) => {
                let prev = old.map(|o| o["status"].clone()).unwrap_or(Value::Null);
                let mut base = new.clone();
                base["status"] = prev;
                let mut status = registry::crd_status(&base, ts);
                // keep transition times stable
                if let Some(old) = old
                    && old["status"]["conditions"].is_array()
                {
                    status["conditions"] = old["status"]["conditions"].clone();
                }
                new["status"] = status;
            }
            Err(errs) => {
                for (field, msg) in errs {
                    causes.push(Cause { reason: "FieldValueInvalid", message: msg, field });
                }
            }
        },
        _ => {}
    }
}

fn register_crd(st: &mut Store, crd: &Value) {
    if let Ok(def) = registry::from_crd(crd) {
        st.custom.insert(def.key(), def);
    }
}

/// Marks an object with finalizers for deletion as kube-apiserver does: a deletion timestamp, no
/// grace period, and a positive generation bumped, so controllers that filter on generation see it.
fn mark_for_deletion(o: &mut Value) {
    o["metadata"]["deletionTimestamp"] = json!(now());
    o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    if let Some(generation) = o["metadata"]["generation"].as_i64().filter(|g| *g > 0) {
        o["metadata"]["generation"] = json!(generation + 1);
    }
}

/// The garbage collector's background deletion: objects whose owners are all gone are deleted
/// (or marked for deletion when they have finalizers), transitively.
fn collect_garbage(st: &mut Store, removed: &Value) {
    let mut queue: Vec<String> = removed["metadata"]["uid"].as_str().map(String::from).into_iter().collect();
    while let Some(uid) = queue.pop() {
        for (res, ns, name) in st.dependents_of(&uid) {
            let Some(obj) = st.get(&res, &ns, &name).cloned() else { continue };
            let other_owner_alive = obj["metadata"]["ownerReferences"].as_array().is_some_and(|refs| {
                refs.iter().filter_map(|r| r["uid"].as_str()).any(|u| u != uid && st.uid_exists(u))
            });
            if other_owner_alive {
                continue;
            }
            if obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
                if !obj["metadata"]["deletionTimestamp"].is_string() {
                    let mut o = obj;
                    mark_for_deletion(&mut o);
                    let rv = st.next_rv();
                    o["metadata"]["resourceVersion"] = json!(rv.to_string());
                    st.put(&res, o);
                }
            } else if let Some(r) = st.remove(&res, &ns, &name) {
                finish_namespace(st, &ns);
                if let Some(u) = r["metadata"]["uid"].as_str() {
                    queue.push(u.to_string());
                }
            }
        }
    }
}

/// Orphan propagation: dependents stay, without their ownerReference to the deleted object.
fn orphan_dependents(st: &mut Store, removed: &Value) {
    let Some(uid) = removed["metadata"]["uid"].as_str() else { return };
    for (res, ns, name) in st.dependents_of(uid) {
        let Some(mut obj) = st.get(&res, &ns, &name).cloned() else { continue };
        if let Some(refs) = obj["metadata"]["ownerReferences"].as_array_mut() {
            refs.retain(|r| r["uid"].as_str() != Some(uid));
            if refs.is_empty() {
                obj["metadata"].as_object_mut().map(|m| m.remove("ownerReferences"));
            }
        }
        let rv = st.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.put(&res, obj);
    }
}

/// After an object left namespace `ns`: a terminating namespace that is now empty goes too.
fn finish_namespace(st: &mut Store, ns: &str) {
    if ns.is_empty() {
        return;
    }
    let nskey: ResKey = (String::new(), "namespaces".into());
    let terminating = st.get(&nskey, "", ns).is_some_and(|n| n["metadata"]["deletionTimestamp"].is_string());
    if terminating && st.resources_with_objects_in(ns).is_empty() {
        st.remove(&nskey, "", ns);
    }
}

fn after_remove(st: &mut Store, def: &ResourceDef, ns: &str) {
    if def.namespaced {
        finish_namespace(st, ns);
    }
}

pub fn get(st: &Store, ctx: &Ctx, name: &str) -> ApiResult<Value> {
    st.get(&ctx.def.key(), &ctx.ns, name)
        .map(|o| present(o, &ctx.def, &ctx.version))
        .ok_or_else(|| ApiError::not_found(&ctx.def, name))
}

/// Items matching the request's selectors, after the continue key, as (items, continue, remaining).
pub fn list(st: &Store, ctx: &Ctx) -> ApiResult<Value> {
    let ls = LabelSelector::parse(ctx.q("labelSelector").unwrap_or(""))?;
    let fs = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or(""), &ctx.def, &ctx.version)?;
    if let (Some(rv), Some("Exact")) = (ctx.q("resourceVersion"), ctx.q("resourceVersionMatch"))
        && let Ok(rv) = rv.parse::<u64>()
        && rv <= st.storage_compacted
    {
        return Err(ApiError::expired(rv, st.storage_compacted + 1));
    }
    // A paginated list is one list as of its first page: every page and the final
    // resourceVersion carry the first page's version, so a watch from there replays whatever
    // changed while the pages were read (a real API server serves the pages from a snapshot).
    // Its continue token lasts until storage compacts that version (every 5 minutes).
    let now = unix_seconds();
    let mut list_rv = st.rv;
    let mut first_page_at = now;
    let after: Option<(String, String)> = match ctx.q("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|_| ApiError::bad_request("continue key is not valid: illegal base64 data"))?;
            let v: Value =
                serde_json::from_slice(&raw).map_err(|_| ApiError::bad_request("continue key is not valid"))?;
            if let Some(rv) = v["rv"].as_u64() {
                first_page_at = v["at"].as_u64().unwrap_or(now);
                if rv < st.storage_compacted || now.saturating_sub(first_page_at) > super::CONTINUE_LIFETIME.as_secs() {
                    return Err(ApiError::new(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                list_rv = rv;
            }
            Some((v["ns"].as_str().unwrap_or_default().into(), v["name"].as_str().unwrap_or_default().into()))
        }
        None => None,
    };
    let limit: usize = ctx.q("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let ns = if ctx.def.namespaced && !ctx.ns.is_empty() { Some(ctx.ns.as_str()) } else { None };
    // Objects come in (namespace, name) order: a page starts right after the previous one's last.
    let mut stored = st.list_after(&ctx.def.key(), ns, after.as_ref()).peekable();
    // Selectors judge what the client would see; only an Event's shape differs from the stored one.
    let selected = |o: &Value| {
        if ctx.def.is_events_v1() {
            let shown = present(o, &ctx.def, &ctx.version);
            ls.matches(&shown) && fs.matches(&shown)
        } else {
            ls.matches(o) && fs.matches(o)
        }
    };
    let mut items: Vec<Value> = Vec::new();
    while items.len() < limit
        && let Some(o) = stored.next()
    {
        if selected(o) {
            items.push(present(o, &ctx.def, &ctx.version));
        }
    }
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if stored.peek().is_some()
        && let Some(last) = items.last()
    {
        let token = json!({
            "ns": last["metadata"]["namespace"].as_str().unwrap_or_default(),
            "name": name_of(last),
            "rv": list_rv,
            "at": first_page_at,
        });
        meta["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string()));
        // As a real API server: counted only for a list without selectors (with them, unknown).
        if ls.is_empty() && fs.is_empty() {
            meta["remainingItemCount"] = json!(stored.count());
        }
    }
    Ok(json!({
        "apiVersion": ctx.def.api_version(&ctx.version),
        "kind": ctx.def.list_kind,
        "metadata": meta,
        "items": items,
    }))
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn check_namespace(st: &Store, ctx: &Ctx) -> ApiResult<()> {
    if !ctx.def.namespaced {
        return Ok(());
    }
    match st.get(&(String::new(), "namespaces".into()), "", &ctx.ns) {
        None => Err(ApiError::namespace_not_found(&ctx.ns)),
        Some(ns) if ns["metadata"]["deletionTimestamp"].is_string() => Err(ApiError::forbidden(
            format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                ctx.def.qualified(),
                "",
                ctx.ns
            ),
            "",
            &ctx.def.group,
            &ctx.def.plural,
        )),
        Some(_) => Ok(()),
    }
}

fn check_body_kind(ctx: &Ctx, body: &Value) -> ApiResult<()> {
    if let Some(k) = body["kind"].as_str()
        && !k.is_empty()
        && k != ctx.def.kind
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({})",
            body["apiVersion"].as_str().unwrap_or_default(),
            ctx.def.api_version(&ctx.version)
        )));
    }
    Ok(())
}

pub fn create(st: &mut Store, ctx: &Ctx, body: Value) -> ApiResult<Value> {
    check_body_kind(ctx, &body)?;
    check_namespace(st, ctx)?;
    if let Some(ns) = body["metadata"]["namespace"].as_str()
        && ctx.def.namespaced
        && !ns.is_empty()
        && ns != ctx.ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let name = name_of(&body).to_string();
    if !name.is_empty() && st.get(&ctx.def.key(), &ctx.ns, &name).is_some() {
        return Err(ApiError::already_exists(&ctx.def, &name));
    }
    if ctx.def.plural == "selfsubjectaccessreviews" {
        return Ok(body);
    }
    let out = commit(st, ctx, None, to_storage(&ctx.def, body), "", Track::Update)?;
    Ok(present(&out, &ctx.def, &ctx.version))
}

fn check_precondition(ctx: &Ctx, current: &Value, body: &Value, name: &str) -> ApiResult<()> {
    if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
        && !rv.is_empty()
        && rv != current["metadata"]["resourceVersion"].as_str().unwrap_or_default()
    {
        return Err(ApiError::conflict(&ctx.def, name));
    }
    if let Some(u) = body["metadata"]["uid"].as_str()
        && !u.is_empty()
        && u != current["metadata"]["uid"].as_str().unwrap_or_default()
    {
        return Err(ApiError::conflict(&ctx.def, name));
    }
    Ok(())
}

pub fn update(st: &mut Store, ctx: &Ctx, name: &str, sub: &str, body: Value) -> ApiResult<Value> {
    check_body_kind(ctx, &body)?;
    if name_of(&body) != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            name_of(&body)
        )));
    }
    let current = st.get(&ctx.def.key(), &ctx.ns, name).cloned().ok_or_else(|| ApiError::not_found(&ctx.def, name))?;
    check_precondition(ctx, &current, &body, name)?;
    let mut body = body;
    // absent or empty managedFields keep the stored ones
    if body["metadata"]["managedFields"].as_array().is_none_or(|a| a.is_empty()) {
        body["metadata"]["managedFields"] = current["metadata"]["managedFields"].clone();
    }
    let out = commit(st, ctx, Some(&current), to_storage(&ctx.def, body), sub, Track::Update)?;
    Ok(present(&out, &ctx.def, &ctx.version))
}

/// PATCH in any of the four content types. Returns (http status, object).
pub fn patch(
    st: &mut Store,
    ctx: &Ctx,
    name: &str,
    sub: &str,
    content_type: &str,
    raw: &[u8],
) -> ApiResult<(u16, Value)> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let current = st.get(&ctx.def.key(), &ctx.ns, name).cloned();
    if ct == "application/apply-patch+yaml" || ct == "application/apply-patch+cbor" {
        return apply_patch(st, ctx, name, sub, raw, current);
    }
    let accepted: &[&str] = if ctx.def.builtin {
        &[
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
        ]
    } else {
        &["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
    };
    if !accepted.contains(&ct) {
        return Err(ApiError::unsupported_media_type(ct, accepted));
    }
    let patch_body: Value =
        serde_json::from_slice(raw).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let current = current.ok_or_else(|| ApiError::not_found(&ctx.def, name))?;
    let mut doc = present(&current, &ctx.def, &ctx.version);
    match ct {
        "application/json-patch+json" => patch::json_patch(&mut doc, &patch_body)?,
        "application/merge-patch+json" => {
            if !patch_body.is_object() {
                return Err(ApiError::bad_request("error decoding patch: merge patch must be a JSON object"));
            }
            patch::merge_patch(&mut doc, &patch_body)
        }
        _ => doc = patch::strategic_merge(&doc, &patch_body)?,
    }
    if !doc["metadata"].is_object() {
        return Err(ApiError::bad_request("the patched object must be a JSON object with metadata"));
    }
    // a resourceVersion in the patch is a precondition
    if patch_body.get("metadata").and_then(|m| m.get("resourceVersion")).is_some()
        || ct == "application/json-patch+json"
    {
        check_precondition(ctx, &current, &doc, name)?;
    }
    if name_of(&doc) != name {
        return Err(ApiError::bad_request(
            "metadata.name: Invalid value: the name in the patch does not match the URL",
        ));
    }
    if doc["metadata"]["managedFields"].as_array().is_none_or(|a| a.is_empty()) {
        doc["metadata"]["managedFields"] = current["metadata"]["managedFields"].clone();
    }
    let out = commit(st, ctx, Some(&current), to_storage(&ctx.def, doc), sub, Track::Update)?;
    Ok((200, present(&out, &ctx.def, &ctx.version)))
}

fn apply_patch(
    st: &mut Store,
    ctx: &Ctx,
    name: &str,
    sub: &str,
    raw: &[u8],
    current: Option<Value>,
) -> ApiResult<(u16, Value)> {
    let applied = from_yaml(raw).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !applied.is_object() {
        return Err(ApiError::bad_request("error decoding YAML: the applied configuration must be an object"));
    }
    let manager = match ctx.q("fieldManager") {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
    };
    if applied["apiVersion"].as_str().unwrap_or_default().is_empty()
        || applied["kind"].as_str().unwrap_or_default().is_empty()
    {
        return Err(ApiError::bad_request(
            "invalid object type: apiVersion and kind must be set in an applied configuration",
        ));
    }
    check_body_kind(ctx, &applied)?;
    if !name_of(&applied).is_empty() && name_of(&applied) != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            name_of(&applied)
        )));
    }
    let force = ctx.q("force").is_some_and(|f| f == "true");
    let scope = if sub == "status" {
        Scope::StatusOnly
    } else if ctx.def.status_subresource {
        Scope::NoStatus
    } else {
        Scope::All
    };
    let ts = now();
    let schema = ctx.schema();
    let av = ctx.def.api_version(&ctx.version);
    let created = current.is_none();
    let live = match &current {
        Some(c) => {
            check_precondition(ctx, c, &applied, name)?;
            let mut l = present(c, &ctx.def, &ctx.version);
            if let Some(m) = l.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            l
        }
        None => {
            if sub == "status" {
                return Err(ApiError::not_found(&ctx.def, name));
            }
            check_namespace(st, ctx)?;
            let mut meta = Map::new();
            meta.insert("name".into(), json!(name));
            json!({ "metadata": meta })
        }
    };
    let merged = apply::apply(&live, &applied, &manager, force, sub, &av, &ts, schema.as_ref(), ctx.def.builtin, scope)
        .map_err(|c| ApiError::conflict_msg(&ctx.def, name, c.message, c.causes))?;
    let out = commit(st, ctx, current.as_ref(), to_storage(&ctx.def, merged), sub, Track::Applied)?;
    Ok((if created { 201 } else { 200 }, present(&out, &ctx.def, &ctx.version)))
}

fn success_status(def: &ResourceDef, obj: &Value) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name_of(obj), "group": def.group, "kind": def.plural, "uid": obj["metadata"]["uid"]},
    })
}

/// DELETE one object. Returns (status code, body).
pub fn delete(st: &mut Store, ctx: &Ctx, name: &str, options: &Value) -> ApiResult<(u16, Value)> {
    let res = ctx.def.key();
    let current = st.get(&res, &ctx.ns, name).cloned().ok_or_else(|| ApiError::not_found(&ctx.def, name))?;
    check_delete_preconditions(ctx, name, &current, &options["preconditions"])?;
    let dry = ctx.dry_run();
    if current["metadata"]["deletionTimestamp"].is_string() {
        return Ok((200, present(&current, &ctx.def, &ctx.version)));
    }
    if ctx.def.plural == "namespaces" && ctx.def.group.is_empty() {
        if dry {
            return Ok((200, present(&current, &ctx.def, &ctx.version)));
        }
        let ns = terminate_namespace(st, &res, &current, name);
        return Ok((200, present(&ns, &ctx.def, &ctx.version)));
    }
    if let Some(mut o) = held_by_finalizers(&current, options) {
        if dry {
            return Ok((200, present(&o, &ctx.def, &ctx.version)));
        }
        let rv = st.next_rv();
        o["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.put(&res, o.clone());
        return Ok((200, present(&o, &ctx.def, &ctx.version)));
    }
    if dry {
        return Ok((200, present(&current, &ctx.def, &ctx.version)));
    }
    let removed = st.remove(&res, &ctx.ns, name).unwrap_or(current);
    let orphan = options["propagationPolicy"].as_str() == Some("Orphan") || options["orphanDependents"] == json!(true);
    if orphan {
        orphan_dependents(st, &removed);
    } else {
        collect_garbage(st, &removed);
    }
    if ctx.def.group == "apiextensions.k8s.io"
        && ctx.def.plural == "customresourcedefinitions"
        && let Ok(d) = registry::from_crd(&removed)
    {
        st.drop_resource(&d.key());
        st.custom.remove(&d.key());
    }
    after_remove(st, &ctx.def, &ctx.ns);
    if ctx.def.builtin && ctx.def.plural != "customresourcedefinitions" {
        Ok((200, success_status(&ctx.def, &removed)))
    } else {
        Ok((200, present(&removed, &ctx.def, &ctx.version)))
    }
}

/// `preconditions.resourceVersion` and `preconditions.uid` of DeleteOptions.
fn check_delete_preconditions(ctx: &Ctx, name: &str, current: &Value, pre: &Value) -> ApiResult<()> {
    if let Some(rv) = pre["resourceVersion"].as_str()
        && rv != current["metadata"]["resourceVersion"].as_str().unwrap_or_default()
    {
        return Err(ApiError::conflict_msg(
            &ctx.def,
            name,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                ctx.def.qualified(),
                current["metadata"]["resourceVersion"].as_str().unwrap_or_default()
            ),
            vec![],
        ));
    }
    if let Some(u) = pre["uid"].as_str()
        && u != current["metadata"]["uid"].as_str().unwrap_or_default()
    {
        return Err(ApiError::conflict_msg(
            &ctx.def,
            name,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                ctx.def.qualified(),
                current["metadata"]["uid"].as_str().unwrap_or_default()
            ),
            vec![],
        ));
    }
    Ok(())
}

/// Marks the namespace Terminating and does the namespace controller's work at once: what is in
/// it is deleted (or marked, when finalizers hold it), and the namespace goes when nothing is
/// left. Returns the namespace as marked.
fn terminate_namespace(st: &mut Store, res: &ResKey, current: &Value, name: &str) -> Value {
    let mut ns = current.clone();
    ns["metadata"]["deletionTimestamp"] = json!(now());
    ns["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    ns["status"]["phase"] = json!("Terminating");
    let rv = st.next_rv();
    ns["metadata"]["resourceVersion"] = json!(rv.to_string());
    st.put(res, ns.clone());
    for rk in st.resources_with_objects_in(name) {
        let names: Vec<String> = st.list(&rk, Some(name)).iter().map(|o| name_of(o).to_string()).collect();
        for n in names {
            let Some(obj) = st.get(&rk, name, &n).cloned() else { continue };
            if obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
                if !obj["metadata"]["deletionTimestamp"].is_string() {
                    let mut o = obj;
                    mark_for_deletion(&mut o);
                    let rv = st.next_rv();
                    o["metadata"]["resourceVersion"] = json!(rv.to_string());
                    st.put(&rk, o);
                }
            } else {
                st.remove(&rk, name, &n);
            }
        }
    }
    if st.resources_with_objects_in(name).is_empty() {
        st.remove(res, "", name);
    }
    ns
}

/// The object marked for deletion when finalizers keep it (after Foreground deletion, which
/// completes at once, added and removed its own); None when it can be removed now.
fn held_by_finalizers(current: &Value, options: &Value) -> Option<Value> {
    let has_finalizers = current["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    let orphan_or_fg = options["propagationPolicy"].as_str() == Some("Foreground");
    if !(has_finalizers || orphan_or_fg) {
        return None;
    }
    let mut o = current.clone();
    mark_for_deletion(&mut o);
    if orphan_or_fg {
        let mut f = o["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
        if !f.contains(&json!("foregroundDeletion")) {
            f.push(json!("foregroundDeletion"));
        }
        // nothing owns dependents here: foreground deletion completes at once
        f.retain(|x| x != "foregroundDeletion");
        o["metadata"]["finalizers"] = json!(f);
        if f.is_empty() {
            o["metadata"].as_object_mut().map(|m| m.remove("finalizers"));
        }
    }
    o["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()).then_some(o)
}

/// DELETE on a collection: deletes what the selectors match; returns the list of them.
pub fn delete_collection(st: &mut Store, ctx: &Ctx, options: &Value) -> ApiResult<Value> {
    let mut l = list(st, ctx)?;
    let items = l["items"].as_array().cloned().unwrap_or_default();
    let mut out = vec![];
    for it in items {
        let name = name_of(&it).to_string();
        let ns = it["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let sub_ctx = Ctx {
            def: ctx.def.clone(),
            version: ctx.version.clone(),
            ns,
            user: ctx.user,
            query: ctx.query.clone(),
            user_agent: ctx.user_agent.clone(),
            warnings: Default::default(),
        };
        if let Ok((_, o)) = delete(st, &sub_ctx, &name, options) {
            out.push(if o["kind"] == "Status" { it } else { o });
        }
    }
    l["items"] = Value::Array(out);
    l["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    Ok(l)
}

fn get_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path.trim_start_matches('.').split('.') {
        cur = cur.get(seg)?;
    }
    Some(cur)
}

fn set_path(obj: &mut Value, path: &str, v: Value) {
    let mut cur = obj;
    for seg in path.trim_start_matches('.').split('.') {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = cur.as_object_mut().expect("object").entry(seg.to_string()).or_insert(Value::Null);
    }
    *cur = v;
}

fn label_selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    for e in sel["matchExpressions"].as_array().cloned().unwrap_or_default() {
        let key = e["key"].as_str().unwrap_or_default();
        let vals: Vec<&str> =
            e["values"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
        match e["operator"].as_str() {
            Some("In") => parts.push(format!("{key} in ({})", vals.join(","))),
            Some("NotIn") => parts.push(format!("{key} notin ({})", vals.join(","))),
            Some("Exists") => parts.push(key.to_string()),
            Some("DoesNotExist") => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

/// The autoscaling/v1 Scale view of an object.
fn to_scale(obj: &Value, def: &ResourceDef) -> Value {
    let paths = def.scale.as_ref().expect("scale subresource");
    let selector = match &paths.label_selector {
        Some(p) => get_path(obj, p).cloned().unwrap_or(Value::Null),
        None => json!(label_selector_string(&obj["spec"]["selector"])),
    };
    let meta = &obj["metadata"];
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": get_path(obj, &paths.spec_replicas).cloned().unwrap_or(json!(0))},
        "status": {"replicas": get_path(obj, &paths.status_replicas).cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// GET/PUT/PATCH on the scale subresource. `body` is None for GET.
pub fn scale(st: &mut Store, ctx: &Ctx, name: &str, write: Option<(&str, &[u8])>) -> ApiResult<Value> {
    let current = st.get(&ctx.def.key(), &ctx.ns, name).cloned().ok_or_else(|| ApiError::not_found(&ctx.def, name))?;
    let view = to_scale(&current, &ctx.def);
    let Some((content_type, raw)) = write else { return Ok(view) };
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let new_view = match ct {
        "application/json-patch+json" => {
            let p: Value = serde_json::from_slice(raw).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let mut v = view.clone();
            patch::json_patch(&mut v, &p)?;
            v
        }
        "application/merge-patch+json" | "application/strategic-merge-patch+json" | "application/apply-patch+yaml" => {
            let p = from_yaml(raw).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let mut v = view.clone();
            patch::merge_patch(&mut v, &p);
            v
        }
        _ => serde_json::from_slice(raw).map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    check_precondition(ctx, &current, &new_view, name)?;
    let replicas = new_view["spec"]["replicas"].clone();
    if !replicas.is_i64() || replicas.as_i64().unwrap_or(-1) < 0 {
        return Err(ApiError::invalid(
            &ctx.def,
            name,
            vec![Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                field: "spec.replicas".into(),
            }],
        ));
    }
    let mut obj = current.clone();
    set_path(&mut obj, &ctx.def.scale.as_ref().expect("scale").spec_replicas, replicas);
    let out = commit(st, ctx, Some(&current), obj, "scale", Track::Update)?;
    Ok(to_scale(&out, &ctx.def))
}

/// A YAML body (an apply patch, a `kubectl` manifest). Clients mostly send JSON, which is YAML
/// too: read as JSON first, much faster, and as YAML when it is not JSON.
pub fn from_yaml(raw: &[u8]) -> Result<Value, serde_yaml_ng::Error> {
    match serde_json::from_slice(raw) {
        Ok(value) => Ok(value),
        Err(_) => serde_yaml_ng::from_slice(raw),
    }
}
