//! API errors rendered as `meta/v1 Status` objects, with the reasons the real kube-apiserver uses.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

pub use super::cause::Cause;
use super::registry::ResourceDef;

/// An error answered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>, name: &str, group: &str, resource: &str) -> Self {
        Self::new(403, "Forbidden", message).with_details(details(name, group, resource))
    }

    pub fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{}\" not found", def.qualified(), name)).with_details(details(
            name,
            &def.group,
            &def.plural,
        ))
    }

    pub fn namespace_not_found(ns: &str) -> Self {
        Self::new(404, "NotFound", format!("namespaces \"{ns}\" not found")).with_details(details(ns, "", "namespaces"))
    }

    pub fn path_not_found() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource").with_details(json!({}))
    }

    pub fn already_exists(def: &ResourceDef, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{}\" already exists", def.qualified(), name))
            .with_details(details(name, &def.group, &def.plural))
    }

    pub fn conflict(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                def.qualified(),
                name
            ),
        )
        .with_details(details(name, &def.group, &def.plural))
    }

    pub fn conflict_msg(def: &ResourceDef, name: &str, message: String, causes: Vec<Cause>) -> Self {
        let mut d = details(name, &def.group, &def.plural);
        d["causes"] = causes_json(&causes);
        Self::new(409, "Conflict", message).with_details(d)
    }

    pub fn invalid(def: &ResourceDef, name: &str, causes: Vec<Cause>) -> Self {
        let parts: Vec<String> = causes
            .iter()
            .map(|c| if c.field.is_empty() { c.message.clone() } else { format!("{}: {}", c.field, c.message) })
            .collect();
        let joined = if parts.len() == 1 { parts[0].clone() } else { format!("[{}]", parts.join(", ")) };
        let message = format!("{}.{} \"{}\" is invalid: {}", def.kind, def.group, name, joined);
        let message =
            if def.group.is_empty() { format!("{} \"{}\" is invalid: {}", def.kind, name, joined) } else { message };
        Self::new(422, "Invalid", message).with_details(json!({
            "name": name, "group": def.group, "kind": def.kind, "causes": causes_json(&causes),
        }))
    }

    pub fn unprocessable(server_message: String) -> Self {
        Self::new(422, "Invalid", "the server rejected our request due to an error in our request").with_details(
            json!({
                "causes": [{"reason": "UnexpectedServerResponse", "message": server_message}]
            }),
        )
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message).with_details(json!({}))
    }

    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {requested} ({oldest})"))
    }

    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        let _ = content_type;
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut d = json!({ "kind": kind });
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

fn causes_json(causes: &[Cause]) -> Value {
    Value::Array(causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        (code, [(http::header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
