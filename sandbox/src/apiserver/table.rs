//! `meta.k8s.io/v1 Table` responses: the CRD's additionalPrinterColumns (simple JSONPath incl.
//! filters like `.status.conditions[?(@.type=="Ready")].status`), and NAME/AGE-style columns for
//! built-in kinds.

use serde_json::{Value, json};

use super::ops::present;
use super::registry::ResourceDef;

/// Evaluate a simple JSONPath (`.a.b`, `.a[0]`, `.a[*].b`, `.a[?(@.k=="v")].b`); all results.
pub fn jsonpath(obj: &Value, path: &str) -> Vec<Value> {
    let p = path.trim().trim_start_matches('{').trim_end_matches('}').trim();
    let p = p.strip_prefix('$').unwrap_or(p);
    let mut cur = vec![obj.clone()];
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let key: String = chars[start..i.min(chars.len())].iter().collect::<String>().replace('\\', "");
                if key.is_empty() {
                    continue;
                }
                cur = cur.iter().filter_map(|v| v.get(&key).cloned()).collect();
            }
            '[' => {
                let start = i + 1;
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '[' {
                        depth += 1;
                    } else if chars[i] == ']' {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    i += 1;
                }
                let inner: String = chars[start..i.min(chars.len())].iter().collect();
                i += 1;
                let inner = inner.trim();
                if inner == "*" {
                    cur = cur
                        .iter()
                        .flat_map(|v| match v {
                            Value::Array(a) => a.clone(),
                            Value::Object(m) => m.values().cloned().collect(),
                            _ => vec![],
                        })
                        .collect();
                } else if let Some(f) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
                    let (lhs, op, rhs) = if let Some(k) = f.find("!=") {
                        (&f[..k], "!=", &f[k + 2..])
                    } else if let Some(k) = f.find("==") {
                        (&f[..k], "==", &f[k + 2..])
                    } else {
                        (f, "exists", "")
                    };
                    let lhs = lhs.trim().trim_start_matches('@');
                    let rhs = rhs.trim().trim_matches('"').trim_matches('\'');
                    cur = cur
                        .iter()
                        .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                        .filter(|e| {
                            let got = jsonpath(e, lhs);
                            let s = got.first().map(|g| match g {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            });
                            match op {
                                "==" => s.as_deref() == Some(rhs),
                                "!=" => s.as_deref() != Some(rhs),
                                _ => s.is_some(),
                            }
                        })
                        .collect();
                } else if let Ok(n) = inner.parse::<i64>() {
                    cur = cur
                        .iter()
                        .filter_map(|v| {
                            let a = v.as_array()?;
                            let idx = if n < 0 { a.len() as i64 + n } else { n };
                            a.get(idx as usize).cloned()
                        })
                        .collect();
                } else {
                    let key = inner.trim_matches('\'').trim_matches('"');
                    cur = cur.iter().filter_map(|v| v.get(key).cloned()).collect();
                }
            }
            _ => i += 1,
        }
    }
    cur
}

/// kubectl's/apimachinery's HumanDuration.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rs = s % 60;
        return if rs == 0 { format!("{m}m") } else { format!("{m}m{rs}s") };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let rm = (s % 3600) / 60;
        return if rm == 0 { format!("{h}h") } else { format!("{h}h{rm}m") };
    }
    if h < 48 {
        return format!("{h}h");
    }
    let d = h / 24;
    if h < 24 * 8 {
        let rh = h % 24;
        return if rh == 0 { format!("{d}d") } else { format!("{d}d{rh}h") };
    }
    if h < 24 * 365 * 2 {
        return format!("{d}d");
    }
    format!("{}y", d / 365)
}

fn age(ts: &Value) -> Value {
    match ts.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) {
        Some(t) => json!(human_duration(jiff::Timestamp::now().as_second() - t.as_second())),
        None => json!("<unknown>"),
    }
}

struct Column {
    name: String,
    ty: String,
    format: String,
    description: String,
    priority: i64,
    path: String,
}

fn col(name: &str, ty: &str, format: &str, path: &str, description: &str) -> Column {
    Column {
        name: name.into(),
        ty: ty.into(),
        format: format.into(),
        description: description.into(),
        priority: 0,
        path: path.into(),
    }
}

fn columns(def: &ResourceDef, version: &str) -> Vec<Column> {
    let name = col(
        "Name",
        "string",
        "name",
        ".metadata.name",
        "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    );
    let age_col = col(
        "Age",
        "date",
        "",
        ".metadata.creationTimestamp",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    if let Some(cv) = def.crd_version(version) {
        let mut cols = vec![name];
        if cv.columns.is_empty() {
            cols.push(age_col);
        }
        for c in &cv.columns {
            cols.push(Column {
                name: c["name"].as_str().unwrap_or_default().into(),
                ty: c["type"].as_str().unwrap_or("string").into(),
                format: c["format"].as_str().unwrap_or_default().into(),
                description: c["description"].as_str().unwrap_or_default().into(),
                priority: c["priority"].as_i64().unwrap_or(0),
                path: c["jsonPath"].as_str().unwrap_or_default().into(),
            });
        }
        return cols;
    }
    let mut cols = vec![name];
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "namespaces") => cols.push(col("Status", "string", "", ".status.phase", "The status of the namespace")),
        ("", "configmaps") => cols.push(col("Data", "integer", "", "#count:.data", "Number of data items")),
        ("", "secrets") => {
            cols.push(col("Type", "string", "", ".type", "The type of the secret"));
            cols.push(col("Data", "integer", "", "#count:.data", "Number of data items"));
        }
        ("apps", "deployments") => {
            cols.push(col("Ready", "string", "", "#ready", "Number of ready replicas"));
            cols.push(col("Up-to-date", "integer", "", ".status.updatedReplicas", "Updated replicas"));
            cols.push(col("Available", "integer", "", ".status.availableReplicas", "Available replicas"));
        }
        ("", "events") | ("events.k8s.io", "events") => {
            // kube-apiserver's Event printer, for both versions (it prints the internal form).
            let wide = |mut c: Column| {
                c.priority = 1;
                c
            };
            return vec![
                col(
                    "Last Seen",
                    "string",
                    "",
                    "#event:lastseen",
                    "The time at which the most recent occurrence of this event was recorded.",
                ),
                col(
                    "Type",
                    "string",
                    "",
                    ".type",
                    "Type of this event (Normal, Warning), new types could be added in the future",
                ),
                col(
                    "Reason",
                    "string",
                    "",
                    ".reason",
                    "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
                ),
                col("Object", "string", "", "#event:object", "The object that this event is about."),
                wide(col(
                    "Subobject",
                    "string",
                    "",
                    "#event:subobject",
                    "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2].",
                )),
                wide(col(
                    "Source",
                    "string",
                    "",
                    "#event:source",
                    "The component reporting this event. Should be a short machine understandable string.",
                )),
                col(
                    "Message",
                    "string",
                    "",
                    "#event:message",
                    "A human-readable description of the status of this operation.",
                ),
                wide(col(
                    "First Seen",
                    "string",
                    "",
                    "#event:firstseen",
                    "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
                )),
                wide(col("Count", "string", "", "#event:count", "The number of times this event has occurred.")),
                wide(col("Name", "string", "name", ".metadata.name", "Name must be unique within a namespace.")),
            ];
        }
        ("coordination.k8s.io", "leases") => {
            cols.push(col("Holder", "string", "", ".spec.holderIdentity", "The holder of the lease"))
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            cols.push(col("Created At", "date", "", "#created", "When the CRD was created"))
        }
        _ => {}
    }
    if def.plural != "customresourcedefinitions" {
        cols.push(age_col);
    }
    cols
}

fn cell(obj: &Value, c: &Column) -> Value {
    if let Some(p) = c.path.strip_prefix("#count:") {
        return json!(jsonpath(obj, p).first().and_then(|v| v.as_object()).map(|m| m.len()).unwrap_or(0));
    }
    if c.path == "#ready" {
        let ready = obj["status"]["readyReplicas"].as_i64().unwrap_or(0);
        let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        return json!(format!("{ready}/{want}"));
    }
    if let Some(which) = c.path.strip_prefix("#event:") {
        return event_cell(obj, which);
    }
    if c.path == "#created" {
        return obj["metadata"]["creationTimestamp"].clone();
    }
    let results = jsonpath(obj, &c.path);
    let Some(v) = results.first() else { return Value::Null };
    match c.ty.as_str() {
        "date" => age(v),
        "integer" => v.as_i64().map(|i| json!(i)).unwrap_or(Value::Null),
        "number" => v.as_f64().map(|f| json!(f)).unwrap_or(Value::Null),
        "boolean" => v.as_bool().map(|b| json!(b)).unwrap_or(Value::Null),
        _ => match v {
            Value::String(s) => json!(s),
            Value::Null => Value::Null,
            other => json!(other.to_string()),
        },
    }
}

/// One cell of an Event's row, as kube-apiserver's printer computes it from either version:
/// times from `lastTimestamp`/`firstTimestamp` when a core/v1 client set them, else from
/// `eventTime`, and from `series` when the event repeated; the count 1 for a single event of the
/// new API; the source from the reporting controller and instance when `source` is empty.
fn event_cell(obj: &Value, which: &str) -> Value {
    // the core/v1 field, else its events.k8s.io/v1 name
    let field = |core: &str, v1: &str| -> Value {
        let v = obj.get(core).filter(|v| !v.is_null()).or_else(|| obj.get(v1)).cloned().unwrap_or(Value::Null);
        if v.as_str() == Some("") { Value::Null } else { v }
    };
    let since = |v: &Value| if v.is_string() { age(v) } else { json!("<unknown>") };
    let first = match field("firstTimestamp", "deprecatedFirstTimestamp") {
        Value::Null => since(&obj["eventTime"]),
        t => since(&t),
    };
    let series = &obj["series"];
    match which {
        "lastseen" if series.is_object() => since(&series["lastObservedTime"]),
        "lastseen" => match field("lastTimestamp", "deprecatedLastTimestamp") {
            Value::Null => first,
            t => since(&t),
        },
        "firstseen" => first,
        "count" if series.is_object() => json!(series["count"].as_i64().unwrap_or(0)),
        "count" => json!(field("count", "deprecatedCount").as_i64().filter(|c| *c != 0).unwrap_or(1)),
        "object" | "subobject" => {
            let r = field("involvedObject", "regarding");
            let (kind, name) =
                (r["kind"].as_str().unwrap_or_default().to_lowercase(), r["name"].as_str().unwrap_or(""));
            match which {
                "subobject" => json!(r["fieldPath"].as_str().unwrap_or_default()),
                _ if name.is_empty() => json!(kind),
                _ => json!(format!("{kind}/{name}")),
            }
        }
        "source" => {
            let source = field("source", "deprecatedSource");
            let first_of = |a: &Value, b: Value| -> String {
                a.as_str()
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .or_else(|| b.as_str().map(String::from))
                    .unwrap_or_default()
            };
            let component = first_of(&source["component"], field("reportingComponent", "reportingController"));
            let instance = first_of(&source["host"], field("reportingInstance", "reportingInstance"));
            json!(if instance.is_empty() { component } else { format!("{component}, {instance}") })
        }
        "message" => json!(field("message", "note").as_str().unwrap_or_default().trim()),
        _ => Value::Null,
    }
}

/// A Table of `objs`; `include` is the includeObject option (None, Metadata, Object).
pub fn table(
    def: &ResourceDef,
    version: &str,
    objs: &[Value],
    include: &str,
    list_meta: Value,
    with_cols: bool,
) -> Value {
    let _ = with_cols;
    let cols = columns(def, version);
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols.iter().map(|c| cell(o, c)).collect();
            let mut row = json!({"cells": cells});
            match include {
                "None" => {}
                "Object" => row["object"] = present(o, def, version),
                _ => {
                    let mut meta = o["metadata"].clone();
                    if let Some(m) = meta.as_object_mut() {
                        m.remove("managedFields");
                    }
                    row["object"] =
                        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta});
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": cols.iter().map(|c| json!({
            "name": c.name, "type": c.ty, "format": c.format, "description": c.description, "priority": c.priority,
        })).collect::<Vec<_>>(),
        "rows": rows,
    })
}

/// An object as `PartialObjectMetadata` (`Accept: ...;as=PartialObjectMetadata`): metadata only,
/// so a metadata watch on Secrets never carries their data.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"].clone()})
}

/// A list as `PartialObjectMetadataList`.
pub fn partial_metadata_list(list: &Value) -> Value {
    let items: Vec<Value> =
        list["items"].as_array().map(|items| items.iter().map(partial_metadata).collect()).unwrap_or_default();
    json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list["metadata"].clone(), "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_filters() {
        let o =
            json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(jsonpath(&o, ".status.conditions[?(@.type==\"Ready\")].status"), vec![json!("True")]);
        assert_eq!(jsonpath(&o, ".status.conditions[0].type"), vec![json!("A")]);
        assert_eq!(jsonpath(&o, ".status.conditions[*].type").len(), 2);
        assert!(jsonpath(&o, ".spec.x").is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 30), "30h");
        assert_eq!(human_duration(86400 * 3), "3d");
    }
}
