//! Errors with stable PascalCase reasons, and whether they are worth retrying.
//!
//! No variant ever carries a client secret or a bearer token: messages are built from status
//! codes, AADSTS codes and sanitized error text only.

use std::time::Duration;

use crate::api::PartnerReason;

#[derive(Debug, thiserror::Error)]
pub enum DefenderError {
    /// Token endpoint refused the credentials (classified by AADSTS code).
    #[error("{message}")]
    Token { reason: PartnerReason, aadsts: Option<u32>, message: String, transient: bool },
    /// The token does not belong to the configured tenant/app or audience.
    #[error("{0}")]
    ClaimsMismatch(String),
    /// The token has no Ti write role; `missing` lists the required roles.
    #[error("the app lacks {missing:?}: grant the WindowsDefenderATP application permission and admin consent")]
    MissingPermission { missing: Vec<String>, granted: Vec<String> },
    /// The API host (or authority) is not on the operator's allow-list; nothing was sent.
    #[error("{0}")]
    HostNotAllowed(String),
    /// 429 from Defender or Entra.
    #[error("throttled; retry after {retry_after:?}")]
    Throttled { retry_after: Duration },
    /// An error body from Defender (`{"error":{code,message,target}}`), or a bare status.
    #[error("Defender answered {status} {code}: {message}")]
    Api { status: u16, code: String, message: String, target: Option<String> },
    /// Connection failure, timeout, unreadable body.
    #[error("cannot reach {host}: {message}")]
    Unreachable { host: String, message: String },
    /// A response we could not understand.
    #[error("unexpected response from Defender: {0}")]
    Protocol(String),
    /// Programming/config errors (bad URL and the like).
    #[error("{0}")]
    Config(String),
}

impl DefenderError {
    /// The partner reason this error gives (conditions, events and metric labels).
    pub fn reason(&self) -> PartnerReason {
        match self {
            DefenderError::Token { reason, .. } => *reason,
            DefenderError::ClaimsMismatch(_) => PartnerReason::TokenMismatch,
            DefenderError::MissingPermission { .. } => PartnerReason::MissingPermission,
            DefenderError::HostNotAllowed(_) => PartnerReason::ApiHostNotAllowed,
            DefenderError::Throttled { .. } => PartnerReason::Throttled,
            DefenderError::Api { status, code, .. } => match status {
                401 => PartnerReason::Unauthorized,
                403 if code.eq_ignore_ascii_case("DisabledFeature") => PartnerReason::DisabledFeature,
                403 => PartnerReason::Forbidden,
                429 => PartnerReason::Throttled,
                500..=599 => PartnerReason::DefenderUnreachable,
                _ => PartnerReason::DefenderError,
            },
            DefenderError::Unreachable { .. } => PartnerReason::DefenderUnreachable,
            DefenderError::Protocol(_) => PartnerReason::ProtocolError,
            DefenderError::Config(_) => PartnerReason::ConfigError,
        }
    }

    /// Worth retrying without any change by the user.
    pub fn is_transient(&self) -> bool {
        match self {
            DefenderError::Token { transient, .. } => *transient,
            DefenderError::Throttled { .. } | DefenderError::Unreachable { .. } => true,
            DefenderError::Api { status, .. } => matches!(status, 408 | 429 | 500..=599),
            DefenderError::ClaimsMismatch(_)
            | DefenderError::MissingPermission { .. }
            | DefenderError::HostNotAllowed(_)
            | DefenderError::Protocol(_)
            | DefenderError::Config(_) => false,
        }
    }

    /// How long Defender asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DefenderError::Throttled { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The Defender error `code` (e.g. `InvalidHashValue`), when the error came from an API body.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            DefenderError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when the error is an answer from Defender.
    pub fn status(&self) -> Option<u16> {
        match self {
            DefenderError::Api { status, .. } => Some(*status),
            DefenderError::Throttled { .. } => Some(429),
            _ => None,
        }
    }
}

/// Defender's error body: `{"error":{"code","message","target"}}`.
#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(serde::Deserialize)]
struct ErrorInner {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    target: Option<String>,
}

/// Builds an [`DefenderError::Api`] from a status and a body that may be empty or not JSON.
pub(crate) fn api_error(status: u16, body: &[u8]) -> DefenderError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok().map(|b| b.error);
    let default_code = default_code(status);
    match parsed {
        Some(inner) => DefenderError::Api {
            status,
            code: inner.code.filter(|c| !c.trim().is_empty()).unwrap_or_else(|| default_code.to_string()),
            message: inner.message.map(|m| clip(&m, 300)).unwrap_or_else(|| default_message(status).to_string()),
            target: inner.target,
        },
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            // A short plain-text body is informative; HTML error pages and the like are not.
            let message = if !text.is_empty() && !text.starts_with('<') {
                clip(text, 200)
            } else {
                default_message(status).to_string()
            };
            DefenderError::Api { status, code: default_code.to_string(), message, target: None }
        }
    }
}

fn default_code(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "HttpError",
    }
}

fn default_message(status: u16) -> &'static str {
    match status {
        401 => "invalid or expired authorization (check the token audience and the app's tenant)",
        403 => "the token is valid but lacks permission for this call",
        404 => "not found",
        429 => "too many requests",
        500..=599 => "server error; retry later",
        _ => "no details",
    }
}

/// First line only, at most `max` characters.
pub(crate) fn clip(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    if line.chars().count() <= max {
        line.to_string()
    } else {
        let mut out: String = line.chars().take(max).collect();
        out.push('…');
        out
    }
}

/// Longest `Retry-After` honoured (anything longer is capped).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Parses `Retry-After`: delay-seconds, or an HTTP-date (capped at one hour).
pub fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let raw = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    let when = jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(raw).ok()?;
    let now = jiff::Timestamp::now();
    let secs = (when.as_millisecond() - now.as_millisecond()).max(0) as u64;
    Some(Duration::from_millis(secs).min(MAX_RETRY_AFTER))
}

/// A reqwest error with its causes, without the URL (which is reported separately).
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "failed reading the response"
    } else {
        "request failed"
    };
    let mut out = kind.to_string();
    let mut source = std::error::Error::source(e);
    let mut depth = 0;
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
        depth += 1;
        if depth > 4 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_reasons() {
        let e =
            |status, code: &str| DefenderError::Api { status, code: code.into(), message: String::new(), target: None };
        assert_eq!(e(401, "Unauthorized").reason(), "Unauthorized");
        assert_eq!(e(403, "Forbidden").reason(), "Forbidden");
        assert_eq!(e(403, "DisabledFeature").reason(), "DisabledFeature");
        assert_eq!(e(500, "InternalServerError").reason(), "DefenderUnreachable");
        assert_eq!(e(503, "x").reason(), "DefenderUnreachable");
        assert_eq!(e(400, "InvalidHashValue").reason(), "DefenderError");
        assert!(e(503, "x").is_transient());
        assert!(e(429, "x").is_transient());
        assert!(!e(400, "x").is_transient());
        assert!(!e(401, "x").is_transient());
        assert!(!e(403, "x").is_transient());
    }

    #[test]
    fn other_reasons() {
        assert_eq!(DefenderError::ClaimsMismatch("x".into()).reason(), "TokenMismatch");
        assert_eq!(DefenderError::HostNotAllowed("x".into()).reason(), "ApiHostNotAllowed");
        assert_eq!(DefenderError::Protocol("x".into()).reason(), "ProtocolError");
        assert_eq!(DefenderError::Config("x".into()).reason(), "ConfigError");
        let u = DefenderError::Unreachable { host: "h".into(), message: "m".into() };
        assert_eq!(u.reason(), "DefenderUnreachable");
        assert!(u.is_transient());
        let t = DefenderError::Throttled { retry_after: Duration::from_secs(7) };
        assert_eq!(t.reason(), "Throttled");
        assert!(t.is_transient());
        assert_eq!(t.retry_after(), Some(Duration::from_secs(7)));
        let m = DefenderError::MissingPermission { missing: vec!["Ti.ReadWrite.All".into()], granted: vec![] };
        assert_eq!(m.reason(), "MissingPermission");
        assert!(!m.is_transient());
        assert_eq!(m.retry_after(), None);
    }

    #[test]
    fn error_bodies() {
        let e = api_error(
            403,
            br#"{"error":{"code":"DisabledFeature","message":"Tenant feature not enabled","target":"43f4"}}"#,
        );
        match &e {
            DefenderError::Api { status, code, message, target } => {
                assert_eq!(*status, 403);
                assert_eq!(code, "DisabledFeature");
                assert_eq!(message, "Tenant feature not enabled");
                assert_eq!(target.as_deref(), Some("43f4"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.reason(), "DisabledFeature");
        let empty = api_error(401, b"");
        assert_eq!(empty.reason(), "Unauthorized");
        assert_eq!(empty.api_code(), Some("Unauthorized"));
        let html = api_error(502, b"<html><body>Bad gateway</body></html>");
        assert_eq!(html.api_code(), Some("BadGateway"));
        assert!(html.is_transient());
        let text = api_error(400, b"Request body is incorrect\nmore");
        assert!(text.to_string().contains("Request body is incorrect"));
        assert!(!text.to_string().contains("more"));
        let odd = api_error(400, br#"{"error":{}}"#);
        assert_eq!(odd.api_code(), Some("BadRequest"));
    }
}
