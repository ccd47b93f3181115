//! CRD structural schemas: pruning of unknown fields, defaulting, and validation (OpenAPI v3
//! keywords and `x-kubernetes-validations` CEL rules), with `field.Error`-style causes.

use serde_json::{Map, Value};

use super::cause::Cause;
use super::cel;

fn preserves(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields").and_then(|v| v.as_bool()) == Some(true)
}

fn nullable(schema: &Value) -> bool {
    schema.get("nullable").and_then(|v| v.as_bool()) == Some(true)
}

/// Drop fields the schema does not know (recording their paths), and nulls of non-nullable fields.
pub fn prune(v: &mut Value, schema: &Value, path: &str, root: bool, pruned: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(|p| p.as_object());
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let embedded = root || schema.get("x-kubernetes-embedded-resource").and_then(|v| v.as_bool()) == Some(true);
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if embedded && (k == "apiVersion" || k == "kind" || k == "metadata") {
                    if root && k == "metadata" {
                        continue;
                    }
                    if k != "metadata" || props.is_none_or(|p| !p.contains_key("metadata")) {
                        continue;
                    }
                }
                let child_path = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                let cs = props.and_then(|p| p.get(&k)).or(additional);
                match cs {
                    Some(cs) => {
                        if m.get(&k).is_some_and(|x| x.is_null()) && !nullable(cs) {
                            m.remove(&k);
                            continue;
                        }
                        if let Some(child) = m.get_mut(&k) {
                            prune(child, cs, &child_path, false, pruned);
                        }
                    }
                    None => {
                        if !preserves(schema)
                            && schema.get("additionalProperties").and_then(|a| a.as_bool()) != Some(true)
                        {
                            m.remove(&k);
                            pruned.push(child_path);
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    prune(it, is, &format!("{path}[{i}]"), false, pruned);
                }
            }
        }
        _ => {}
    }
}

/// Apply schema `default`s to absent fields.
pub fn apply_defaults(v: &mut Value, schema: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (k, ps) in props {
                    if !m.contains_key(k)
                        && let Some(d) = ps.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = m.get_mut(k) {
                        apply_defaults(child, ps);
                    }
                }
            }
            if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                let props = schema.get("properties").and_then(|p| p.as_object());
                for (k, child) in m.iter_mut() {
                    if props.is_none_or(|p| !p.contains_key(k)) {
                        apply_defaults(child, ap);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for it in items.iter_mut() {
                    apply_defaults(it, is);
                }
            }
        }
        _ => {}
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        Value::Null => "\"null\"".into(),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::Null => "null",
    }
}

fn invalid(path: &str, value: &Value, msg: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {}: {}", show(value), msg),
        field: path.into(),
    }
}

/// Validate `v` against `schema`; old is the previous value at the same place (for oldSelf).
pub fn validate(v: &Value, schema: &Value, path: &str, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let before = causes.len();
    if v.is_null() {
        if !nullable(schema) && schema.get("type").is_some() {
            causes.push(invalid(
                path,
                v,
                format!("{path} in body must be of type {}: \"null\"", schema["type"].as_str().unwrap_or("")),
            ));
        }
        return;
    }
    if let Some(cause) = type_mismatch(v, schema, path) {
        causes.push(cause);
        return;
    }
    if let Some(e) = schema.get("enum").and_then(|e| e.as_array())
        && !e.contains(v)
    {
        let supported: Vec<String> = e.iter().map(|x| x.to_string()).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: {}: supported values: {}", v, supported.join(", ")),
            field: path.into(),
        });
    }
    match v {
        Value::String(s) => validate_string(v, s, schema, path, causes),
        Value::Number(n) => validate_number(v, n, schema, path, causes),
        Value::Array(items) => validate_array(items, schema, path, causes),
        Value::Object(m) => validate_object(m, schema, path, old, causes),
        _ => {}
    }
    // CEL rules run on values that passed the structural checks
    if causes.len() == before {
        check_cel_rules(v, schema, path, old, causes);
    }
}

/// A value of another type than `type` (or `x-kubernetes-int-or-string`) asks for.
fn type_mismatch(v: &Value, schema: &Value, path: &str) -> Option<Cause> {
    let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(|b| b.as_bool()) == Some(true);
    if let Some(t) = schema.get("type").and_then(|t| t.as_str()) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            _ => true,
        };
        if !ok {
            return Some(Cause {
                reason: "FieldValueTypeInvalid",
                message: format!(
                    "Invalid value: \"{}\": {path} in body must be of type {t}: \"{}\"",
                    type_name(v),
                    type_name(v)
                ),
                field: path.into(),
            });
        }
    } else if int_or_string && !(v.is_string() || v.is_i64() || v.is_u64()) {
        return Some(Cause {
            reason: "FieldValueTypeInvalid",
            message: format!(
                "Invalid value: \"{}\": {path} in body must be of type integer,string: \"{}\"",
                type_name(v),
                type_name(v)
            ),
            field: path.into(),
        });
    }
    None
}

/// `minLength`, `maxLength`, `pattern` and `format`.
fn validate_string(v: &Value, s: &str, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let n = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(|x| x.as_u64())
        && n < min
    {
        causes.push(invalid(path, v, format!("{path} in body should be at least {min} chars long")));
    }
    if let Some(max) = schema.get("maxLength").and_then(|x| x.as_u64())
        && n > max
    {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            message: format!("Too long: may not be more than {max} bytes"),
            field: path.into(),
        });
    }
    if let Some(p) = schema.get("pattern").and_then(|x| x.as_str()) {
        match cel::regex(p) {
            Ok(re) if !re.is_match(s) => {
                causes.push(invalid(path, v, format!("{path} in body should match '{p}'")));
            }
            _ => {}
        }
    }
    if let Some(f) = schema.get("format").and_then(|x| x.as_str()) {
        let ok = match f {
            "date-time" => s.parse::<jiff::Timestamp>().is_ok(),
            "date" => s.parse::<jiff::civil::Date>().is_ok(),
            "uuid" => uuid::Uuid::parse_str(s).is_ok(),
            _ => true,
        };
        if !ok {
            causes.push(invalid(path, v, format!("{path} in body must be of type {f}: {s:?}")));
        }
    }
}

/// `minimum` and `maximum`, with their `exclusive` flags.
fn validate_number(v: &Value, n: &serde_json::Number, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let x = n.as_f64().unwrap_or(0.0);
    if let Some(min) = schema.get("minimum").and_then(|m| m.as_f64()) {
        let excl = schema.get("exclusiveMinimum").and_then(|b| b.as_bool()) == Some(true);
        if x < min || (excl && x == min) {
            let rel = if excl { "greater than" } else { "greater than or equal to" };
            causes.push(invalid(path, v, format!("{path} in body should be {rel} {}", schema["minimum"])));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(|m| m.as_f64()) {
        let excl = schema.get("exclusiveMaximum").and_then(|b| b.as_bool()) == Some(true);
        if x > max || (excl && x == max) {
            let rel = if excl { "less than" } else { "less than or equal to" };
            causes.push(invalid(path, v, format!("{path} in body should be {rel} {}", schema["maximum"])));
        }
    }
}

/// `minItems`, `maxItems`, the items themselves, and the uniqueness `x-kubernetes-list-type`
/// `map` and `set` demand.
fn validate_array(items: &[Value], schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(min) = schema.get("minItems").and_then(|x| x.as_u64())
        && (items.len() as u64) < min
    {
        causes.push(invalid(
            path,
            &Value::from(items.len()),
            format!("{path} in body should have at least {min} items"),
        ));
    }
    if let Some(max) = schema.get("maxItems").and_then(|x| x.as_u64())
        && (items.len() as u64) > max
    {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            message: format!("Too many: {}: must have at most {max} items", items.len()),
            field: path.into(),
        });
    }
    if let Some(is) = schema.get("items") {
        for (i, it) in items.iter().enumerate() {
            validate(it, is, &format!("{path}[{i}]"), None, causes);
        }
    }
    match schema.get("x-kubernetes-list-type").and_then(|t| t.as_str()) {
        Some("map") => check_map_keys_unique(items, schema, path, causes),
        Some("set") => check_set_unique(items, path, causes),
        _ => {}
    }
}

fn check_map_keys_unique(items: &[Value], schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let keys: Vec<&str> = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(|k| k.as_array())
        .map(|a| a.iter().filter_map(|k| k.as_str()).collect())
        .unwrap_or_default();
    let key_of = |it: &Value| -> Vec<Value> { keys.iter().map(|k| it[*k].clone()).collect() };
    for (i, it) in items.iter().enumerate() {
        let k = key_of(it);
        if items[..i].iter().any(|o| key_of(o) == k) {
            let shown: Vec<String> = keys.iter().zip(&k).map(|(n, v)| format!("\"{n}\":{v}")).collect();
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                message: format!("Duplicate value: map[string]interface {{}}{{{}}}", shown.join(", ")),
                field: format!("{path}[{i}]"),
            });
        }
    }
}

fn check_set_unique(items: &[Value], path: &str, causes: &mut Vec<Cause>) {
    for (i, it) in items.iter().enumerate() {
        if items[..i].contains(it) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                message: format!("Duplicate value: {it}"),
                field: format!("{path}[{i}]"),
            });
        }
    }
}

/// `required`, then each property against its schema (or `additionalProperties`).
fn validate_object(m: &Map<String, Value>, schema: &Value, path: &str, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if let Some(req) = schema.get("required").and_then(|r| r.as_array()) {
        for r in req.iter().filter_map(|r| r.as_str()) {
            if !m.contains_key(r) {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    message: "Required value".into(),
                    field: join(path, r),
                });
            }
        }
    }
    let props = schema.get("properties").and_then(|p| p.as_object());
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (k, cv) in m {
        if path.is_empty() && (k == "metadata" || k == "apiVersion" || k == "kind") {
            continue;
        }
        let old_child = old.and_then(|o| o.get(k));
        if let Some(ps) = props.and_then(|p| p.get(k)) {
            validate(cv, ps, &join(path, k), old_child, causes);
        } else if let Some(ap) = additional {
            validate(cv, ap, &format!("{path}[{k}]"), old_child, causes);
        }
    }
}

/// The `x-kubernetes-validations` rules of `schema`; transition rules (those using `oldSelf`) only
/// when there is an old value.
fn check_cel_rules(v: &Value, schema: &Value, path: &str, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let Some(rules) = schema.get("x-kubernetes-validations").and_then(|r| r.as_array()) else {
        return;
    };
    for rule in rules {
        let src = rule["rule"].as_str().unwrap_or_default();
        let uses_old = src.contains("oldSelf");
        if uses_old && old.is_none() {
            continue;
        }
        let field = match rule["fieldPath"].as_str() {
            Some(fp) => format!("{path}{fp}"),
            None => path.to_string(),
        };
        let msg = rule["messageExpression"]
            .as_str()
            .and_then(|e| cel::compiled(e).and_then(|p| p.eval(v, old)).ok())
            .and_then(|m| m.as_str().map(String::from))
            .or_else(|| rule["message"].as_str().map(String::from))
            .unwrap_or_else(|| format!("failed rule: {src}"));
        let reason = match rule["reason"].as_str() {
            Some("FieldValueRequired") => "FieldValueRequired",
            Some("FieldValueDuplicate") => "FieldValueDuplicate",
            Some("FieldValueForbidden") => "FieldValueForbidden",
            _ => "FieldValueInvalid",
        };
        let result = cel::compiled(src).and_then(|p| p.eval(v, old));
        match result {
            Ok(Value::Bool(true)) => {}
            // As kube-apiserver words each reason (field.Required, field.Forbidden, …).
            Ok(Value::Bool(false)) => {
                let message = match reason {
                    "FieldValueRequired" => format!("Required value: {msg}"),
                    "FieldValueForbidden" => format!("Forbidden: {msg}"),
                    _ => format!("Invalid value: \"{}\": {msg}", type_name(v)),
                };
                causes.push(Cause { reason, message, field })
            }
            Ok(other) => causes.push(invalid(&field, v, format!("rule did not evaluate to a bool: {other}"))),
            Err(e) => causes.push(Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: \"{}\": {e} evaluating rule: {src}", type_name(v)),
                field,
            }),
        }
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() { k.to_string() } else { format!("{path}.{k}") }
}

/// Problems with the `x-kubernetes-validations` rules of a CRD schema (rules that do not compile).
pub fn check_rules(schema: &Value, path: &str, out: &mut Vec<(String, String)>) {
    if let Some(rules) = schema.get("x-kubernetes-validations").and_then(|r| r.as_array()) {
        for (i, r) in rules.iter().enumerate() {
            let src = r["rule"].as_str().unwrap_or_default();
            if let Err(e) = cel::compile(src) {
                out.push((
                    format!("{path}.x-kubernetes-validations[{i}].rule"),
                    format!("Invalid value: {src:?}: compilation failed: ERROR: {e}"),
                ));
            }
        }
    }
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            check_rules(v, &format!("{path}.properties[{k}]"), out);
        }
    }
    for k in ["items", "additionalProperties"] {
        if let Some(v) = schema.get(k).filter(|v| v.is_object()) {
            check_rules(v, &format!("{path}.{k}"), out);
        }
    }
}

/// Prune, default and validate a custom resource against its version's schema.
pub fn process(obj: &mut Value, schema: &Value, old: Option<&Value>) -> (Vec<String>, Vec<Cause>) {
    let mut pruned = vec![];
    prune(obj, schema, "", true, &mut pruned);
    apply_defaults(obj, schema);
    let mut causes = vec![];
    validate(obj, schema, "", old, &mut causes);
    (pruned, causes)
}

/// Keep only what an object needs when no schema exists (no-op helper for symmetry).
pub fn empty_object() -> Value {
    Value::Object(Map::new())
}
