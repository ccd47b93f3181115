//! Events: one resource with two representations (core/v1 and events.k8s.io/v1, converted in
//! [`super::ops`]), validated as kube-apiserver's `ValidateEventCreate`/`ValidateEventUpdate` do.
//!
//! - Every Event passes the legacy rules: an Event with `eventTime` ("new") names its
//!   `reportingController` (a qualified name), `reportingInstance`, `action` and `reason` (each
//!   at most 128 characters) and a note of at most 1 KiB; one without names its involved
//!   object's namespace or is in `default`.
//! - Written through events.k8s.io/v1, it must also have `eventTime`, a `type` of `Normal` or
//!   `Warning`, a `series` (if any) with `count` ≥ 2 and a `lastObservedTime`, and none of the
//!   deprecated core fields (`deprecatedFirstTimestamp`, `deprecatedLastTimestamp`,
//!   `deprecatedCount`, `deprecatedSource`): the API server never fills those in, so the core/v1
//!   view of such an Event has no `firstTimestamp`, `lastTimestamp`, `count` or `source`, and
//!   `kubectl get events` shows its times from `eventTime` and `series`. An update through
//!   events.k8s.io/v1 may change only the series (and metadata).

use serde_json::Value;

use super::cause::Cause;
use super::registry::ResourceDef;

const LIMIT: usize = 128;
const NOTE_LIMIT: usize = 1024;

fn text<'a>(event: &'a Value, field: &str) -> &'a str {
    event[field].as_str().unwrap_or_default()
}

fn required(field: &str) -> Cause {
    Cause { reason: "FieldValueRequired", message: "Required value".into(), field: field.into() }
}

fn invalid(field: &str, value: &str, detail: &str) -> Cause {
    Cause { reason: "FieldValueInvalid", message: format!("Invalid value: {value:?}: {detail}"), field: field.into() }
}

/// What kube-apiserver refuses in `new` (the stored, core/v1 form), written through `def` over
/// `old`.
pub fn validate(def: &ResourceDef, old: Option<&Value>, new: &Value) -> Vec<Cause> {
    let mut causes = legacy(def, new);
    if !def.is_events_v1() {
        return causes;
    }
    causes.extend(series(new));
    match old {
        None => causes.extend(strict_create(new)),
        Some(old) => causes.extend(immutable(old, new)),
    }
    causes
}

/// The rules every Event passes, whatever the API version.
fn legacy(def: &ResourceDef, event: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let namespace = event["metadata"]["namespace"].as_str().unwrap_or_default();
    let involved = event["involvedObject"]["namespace"].as_str().unwrap_or_default();
    let controller = if def.is_events_v1() { "reportingController" } else { "reportingComponent" };
    if event["eventTime"].as_str().unwrap_or_default().is_empty() {
        let agrees =
            if involved.is_empty() { namespace.is_empty() || namespace == "default" } else { namespace == involved };
        if !agrees {
            causes.push(invalid("involvedObject.namespace", involved, "does not match event.namespace"));
        }
        return causes;
    }
    if involved.is_empty() && namespace != "default" && namespace != "kube-system" {
        causes.push(invalid("involvedObject.namespace", involved, "does not match event.namespace"));
    }
    let reporting = text(event, "reportingComponent");
    if reporting.is_empty() {
        causes.push(required(controller));
    } else if let Some(problem) = qualified_name(reporting) {
        causes.push(invalid(controller, reporting, &problem));
    }
    for (field, limit) in [("reportingInstance", LIMIT), ("action", LIMIT), ("reason", LIMIT)] {
        let value = text(event, field);
        if value.is_empty() {
            causes.push(required(field));
        } else if value.len() > limit {
            causes.push(invalid(field, "", &format!("can have at most {limit} characters")));
        }
    }
    if text(event, "message").len() > NOTE_LIMIT {
        causes.push(invalid("message", "", &format!("can have at most {NOTE_LIMIT} characters")));
    }
    causes
}

fn series(event: &Value) -> Vec<Cause> {
    let series = &event["series"];
    if !series.is_object() {
        return vec![];
    }
    let mut causes = Vec::new();
    if series["count"].as_i64().unwrap_or(0) < 2 {
        causes.push(invalid("series.count", "", "should be at least 2"));
    }
    if series["lastObservedTime"].as_str().unwrap_or_default().is_empty() {
        causes.push(required("series.lastObservedTime"));
    }
    causes
}

/// Created through events.k8s.io/v1: a time, a type, and none of the deprecated fields.
fn strict_create(event: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if text(event, "eventTime").is_empty() {
        causes.push(required("eventTime"));
    }
    let kind = text(event, "type");
    if kind != "Normal" && kind != "Warning" {
        causes.push(invalid("type", "", &format!("has invalid value: {kind}")));
    }
    for (core, v1) in [
        ("firstTimestamp", "deprecatedFirstTimestamp"),
        ("lastTimestamp", "deprecatedLastTimestamp"),
        ("count", "deprecatedCount"),
    ] {
        let set = match &event[core] {
            Value::Null => false,
            Value::Number(n) => n.as_i64() != Some(0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if set {
            causes.push(invalid(v1, "", "needs to be unset"));
        }
    }
    let source = &event["source"];
    if !text(source, "component").is_empty() || !text(source, "host").is_empty() {
        causes.push(invalid("deprecatedSource", "", "needs to be unset"));
    }
    causes
}

/// Updated through events.k8s.io/v1: only the series (and metadata) may change.
fn immutable(old: &Value, new: &Value) -> Vec<Cause> {
    [
        "involvedObject",
        "reason",
        "message",
        "source",
        "firstTimestamp",
        "lastTimestamp",
        "count",
        "type",
        "eventTime",
        "action",
        "related",
        "reportingComponent",
        "reportingInstance",
    ]
    .into_iter()
    .filter(|field| old[*field] != new[*field])
    .map(|field| {
        let shown = match field {
            "reportingComponent" => "reportingController",
            other => other,
        };
        Cause { reason: "FieldValueInvalid", message: "Invalid value: field is immutable".into(), field: shown.into() }
    })
    .collect()
}

/// Why `name` is not a Kubernetes qualified name (`[prefix/]name`), if it is not.
fn qualified_name(name: &str) -> Option<String> {
    let (prefix, local) = match name.split_once('/') {
        Some((prefix, local)) => (Some(prefix), local),
        None => (None, name),
    };
    let local_ok = !local.is_empty()
        && local.len() <= 63
        && local.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && local.starts_with(|c: char| c.is_ascii_alphanumeric())
        && local.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !local_ok {
        return Some(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an \
             alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is \
             '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
                .into(),
        );
    }
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    });
    (!prefix_ok).then(|| "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into())
}
