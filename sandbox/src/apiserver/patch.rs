//! JSON merge patch, JSON patch and strategic merge patch, and the list semantics (atomic, set,
//! map keyed by fields) shared with server-side apply.

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

/// How a list field merges.
#[derive(Debug, Clone, PartialEq)]
pub enum ListType {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// The schema node of a child property / list item (CRD structural schemas); None for built-ins.
pub fn child_schema<'a>(schema: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    let s = schema?;
    if let Some(p) = s.get("properties").and_then(|p| p.get(key)) {
        return Some(p);
    }
    match s.get("additionalProperties") {
        Some(ap) if ap.is_object() => Some(ap),
        _ => None,
    }
}

pub fn items_schema(schema: Option<&Value>) -> Option<&Value> {
    schema.and_then(|s| s.get("items"))
}

/// The list type of field `name` with schema `schema` (the list's own schema node).
pub fn list_type(schema: Option<&Value>, name: &str, builtin: bool) -> ListType {
    if let Some(s) = schema {
        match s.get("x-kubernetes-list-type").and_then(|t| t.as_str()) {
            Some("set") => return ListType::Set,
            Some("map") => {
                let keys = s
                    .get("x-kubernetes-list-map-keys")
                    .and_then(|k| k.as_array())
                    .map(|a| a.iter().filter_map(|k| k.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                return ListType::Map(keys);
            }
            Some(_) => return ListType::Atomic,
            None => {}
        }
    }
    if name == "finalizers" {
        return ListType::Set;
    }
    if name == "ownerReferences" {
        return ListType::Map(vec!["uid".into()]);
    }
    if name == "managedFields" {
        return ListType::Atomic;
    }
    if !builtin && schema.is_some() {
        return ListType::Atomic;
    }
    let key = match name {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => "name",
        "volumeMounts" | "volumeDevices" => "mountPath",
        "conditions" => "type",
        // containers' ports merge on containerPort, services' on port: whichever the element has
        "ports" => return ListType::Map(vec!["containerPort".into(), "port".into()]),
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return ListType::Atomic,
    };
    ListType::Map(vec![key.into()])
}

/// Key of a list-map element, as used in SSA `k:{...}` paths.
pub fn element_key(item: &Value, keys: &[String]) -> Option<Map<String, Value>> {
    let mut m = Map::new();
    for k in keys {
        // services' ports are keyed by port (+protocol); be lenient about missing keys
        if let Some(v) = item.get(k) {
            m.insert(k.clone(), v.clone());
        }
    }
    if m.is_empty() { None } else { Some(m) }
}

fn find_by_key(list: &[Value], key: &Map<String, Value>) -> Option<usize> {
    list.iter().position(|e| key.iter().all(|(k, v)| e.get(k) == Some(v)))
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch; a failing operation (including `test`) is a 422 like the real server.
pub fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let p: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    // one operation at a time, so that `test` behaves as in the Go implementation the real server
    // uses: a missing path tests equal to null (kube-rs' finalizer helper relies on this)
    for op in p.0 {
        if let json_patch::PatchOperation::Test(t) = &op {
            let path = t.path.to_string();
            let ok = match target.pointer(&path) {
                None | Some(Value::Null) => t.value.is_null(),
                Some(v) => *v == t.value,
            };
            if !ok {
                return Err(ApiError::unprocessable(format!("testing value {path} failed: test failed")));
            }
            continue;
        }
        json_patch::patch(target, &json_patch::Patch(vec![op])).map_err(|e| {
            ApiError::unprocessable(e.to_string().replacen(
                "operation '/0' failed at path",
                "operation failed at path",
                1,
            ))
        })?;
    }
    Ok(())
}

/// Strategic merge patch for built-in kinds: merge keys for the lists that have them, primitive
/// union for finalizers, and the `$patch`, `$retainKeys`, `$deleteFromPrimitiveList` and
/// `$setElementOrder` directives.
pub fn strategic_merge(target: &Value, patch: &Value) -> ApiResult<Value> {
    Ok(smp_value(Some(target), patch, "").unwrap_or(Value::Null))
}

fn smp_value(target: Option<&Value>, patch: &Value, name: &str) -> Option<Value> {
    match patch {
        Value::Object(pm) => {
            match pm.get("$patch").and_then(|v| v.as_str()) {
                Some("delete") => return None,
                Some("replace") => {
                    let mut m = pm.clone();
                    m.remove("$patch");
                    return Some(Value::Object(m));
                }
                _ => {}
            }
            let mut out = match target {
                Some(Value::Object(t)) => t.clone(),
                _ => Map::new(),
            };
            for (k, v) in pm {
                if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
                    continue;
                }
                if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
                    if let (Some(Value::Array(list)), Some(del)) = (out.get_mut(field), v.as_array()) {
                        list.retain(|e| !del.contains(e));
                    }
                    continue;
                }
                if v.is_null() {
                    out.remove(k);
                    continue;
                }
                match smp_value(out.get(k), v, k) {
                    Some(nv) => {
                        out.insert(k.clone(), nv);
                    }
                    None => {
                        out.remove(k);
                    }
                }
            }
            if let Some(Value::Array(keep)) = pm.get("$retainKeys") {
                let keep: Vec<&str> = keep.iter().filter_map(|k| k.as_str()).collect();
                out.retain(|k, _| keep.contains(&k.as_str()));
            }
            Some(Value::Object(out))
        }
        Value::Array(pl) => {
            let tl = match target {
                Some(Value::Array(t)) => t.clone(),
                _ => vec![],
            };
            match list_type(None, name, true) {
                ListType::Set => {
                    let mut out = tl;
                    for e in pl {
                        if !out.contains(e) {
                            out.push(e.clone());
                        }
                    }
                    Some(Value::Array(out))
                }
                ListType::Map(keys) => {
                    if pl.iter().any(|e| e.get("$patch").and_then(|p| p.as_str()) == Some("replace")) {
                        return Some(Value::Array(pl.iter().filter(|e| e.get("$patch").is_none()).cloned().collect()));
                    }
                    let mut out = tl;
                    for e in pl {
                        let Some(key) = element_key(e, &keys) else {
                            out.push(e.clone());
                            continue;
                        };
                        let pos = find_by_key(&out, &key);
                        if e.get("$patch").and_then(|p| p.as_str()) == Some("delete") {
                            if let Some(i) = pos {
                                out.remove(i);
                            }
                            continue;
                        }
                        match pos {
                            Some(i) => {
                                if let Some(nv) = smp_value(Some(&out[i]), e, "") {
                                    out[i] = nv;
                                }
                            }
                            None => {
                                if let Some(nv) = smp_value(None, e, "") {
                                    out.push(nv);
                                }
                            }
                        }
                    }
                    Some(Value::Array(out))
                }
                ListType::Atomic => Some(patch.clone()),
            }
        }
        other => Some(other.clone()),
    }
}
