//! The Entra + Defender for Endpoint client. Knows nothing of Kubernetes.
//!
//! One [`DefenderClient`] per partner (tenant + app + API host) owns all traffic for it: the
//! token cache, the host allow-list check, and the shared per-(tenant, app, endpoint class) rate
//! limiter. Errors carry a [`crate::api::PartnerReason`] ([`DefenderError::reason`]) used for
//! conditions, events and metric labels.
//!
//! Layout: [`client`] makes the calls (validation, indicators) through [`ratelimit`] and
//! [`token`] (the client-credentials flow and its cache, classified by AADSTS code); [`jwt`]
//! reads the token's claims; [`cloud`] and [`allowlist`] decide the hosts a token may go to;
//! [`indicators`] holds the wire types; [`error`] the errors and the parsing of error answers;
//! [`outcomes`] the machines, antivirus health and alerts calls and their wire types.

pub mod allowlist;
pub mod assertion;
pub mod client;
pub mod cloud;
pub mod error;
pub mod indicators;
pub mod jwt;
pub mod outcomes;
pub mod ratelimit;
pub mod token;

pub use allowlist::{AllowList, HostPolicy};
pub use client::{CallObserver, ClientOptions, DefenderClient, Validation, default_http_client};
pub use cloud::CloudEndpoints;
pub use error::DefenderError;
pub use indicators::{BatchDeleteOutcome, ImportResult, Indicator, NewIndicator};
pub use jwt::Claims;
pub use ratelimit::{EndpointClass, RateLimiter, RateLimits};
pub use token::{AccessToken, Credentials};

/// Roles that allow writing indicators (`Ti.ReadWrite` only sees its own).
pub const TI_WRITE_ROLES: [&str; 2] = ["Ti.ReadWrite.All", "Ti.ReadWrite"];
/// Roles reported when missing, never required.
pub const OPTIONAL_ROLES: [&str; 2] = ["Machine.Read.All", "Alert.Read.All"];
/// Reading machines and their antivirus health (`Machine.ReadWrite.All` also does).
pub const MACHINE_READ_ROLE: &str = "Machine.Read.All";
/// Reading alerts (`Alert.ReadWrite.All` also does).
pub const ALERT_READ_ROLE: &str = "Alert.Read.All";
/// Tagging machines.
pub const MACHINE_WRITE_ROLE: &str = "Machine.ReadWrite.All";
/// The `application` field of every indicator the operator creates.
pub const APPLICATION: &str = "defender-operator";
/// Defender's fixed cap of active indicators per tenant.
pub const TENANT_INDICATOR_CAP: usize = 15_000;
/// Largest import / BatchDelete call Defender accepts.
pub const MAX_BATCH: usize = 500;
