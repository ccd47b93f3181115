//! Errors with stable PascalCase reasons, and whether they are worth retrying.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DefenderError {
    /// Token endpoint refused the credentials (classified by AADSTS code).
    #[error("{message}")]
    Token { reason: &'static str, aadsts: Option<u32>, message: String, transient: bool },
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
    #[error("throttled by Defender; retry after {retry_after:?}")]
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
    /// Stable PascalCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        todo!()
    }

    /// Worth retrying without any change by the user.
    pub fn is_transient(&self) -> bool {
        todo!()
    }

    /// How long Defender asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        todo!()
    }
}
