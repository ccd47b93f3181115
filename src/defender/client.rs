//! The client for one partner.

use std::sync::Arc;

use super::{
    AccessToken, BatchDeleteOutcome, DefenderError, HostPolicy, ImportResult, Indicator, NewIndicator, RateLimiter,
    token::Credentials,
};
use crate::api::Cloud;

/// What a successful validation found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validation {
    /// `tid` from the token (canonical GUID even when the tenant was given as a domain).
    pub tenant_id: String,
    pub client_id: String,
    pub granted: Vec<String>,
    /// Optional roles (`Machine.Read.All`, `Alert.Read.All`) that are not granted.
    pub missing_optional: Vec<String>,
}

/// Cheap to clone; clones share the token cache.
#[derive(Clone, Debug)]
pub struct DefenderClient {
    _inner: Arc<()>,
}

impl DefenderClient {
    /// Checks the API host and authority against `policy` before anything is sent:
    /// a host that is not allowed is `HostNotAllowed` (reason `ApiHostNotAllowed`).
    pub fn new(
        http: reqwest::Client,
        cloud: Cloud,
        api: Option<&str>,
        credentials: Credentials,
        policy: &HostPolicy,
        limiter: Arc<RateLimiter>,
    ) -> Result<Self, DefenderError> {
        let _ = (http, cloud, api, credentials, policy, limiter);
        todo!()
    }

    /// The API base in use (e.g. `https://api.securitycenter.microsoft.com`).
    pub fn api_base(&self) -> &url::Url {
        todo!()
    }

    /// A cached token, refreshed before expiry.
    pub async fn token(&self) -> Result<AccessToken, DefenderError> {
        todo!()
    }

    /// DESIGN.md's sequence: token → claims (`tid`, `appid`/`azp`, `aud`) → roles →
    /// `GET {api}/api/indicators?$top=1`.
    pub async fn validate(&self) -> Result<Validation, DefenderError> {
        todo!()
    }

    /// All indicators matching `filter` (an OData `$filter` expression), following paging.
    pub async fn list_indicators(&self, filter: Option<&str>) -> Result<Vec<Indicator>, DefenderError> {
        let _ = filter;
        todo!()
    }

    /// `POST /api/indicators` (create or update one).
    pub async fn submit(&self, indicator: &NewIndicator) -> Result<Indicator, DefenderError> {
        let _ = indicator;
        todo!()
    }

    /// `POST /api/indicators/import`; splits into calls of at most 500; one result per item.
    pub async fn import(&self, indicators: &[NewIndicator]) -> Result<Vec<ImportResult>, DefenderError> {
        let _ = indicators;
        todo!()
    }

    /// `DELETE /api/indicators/{id}`; 404 counts as gone.
    pub async fn delete(&self, id: &str) -> Result<(), DefenderError> {
        let _ = id;
        todo!()
    }

    /// `POST /api/indicators/BatchDelete` with at most 500 ids per call.
    pub async fn batch_delete(&self, ids: &[String]) -> Result<BatchDeleteOutcome, DefenderError> {
        let _ = ids;
        todo!()
    }
}
