//! Client-side limits per (tenant, app, endpoint class), just under Defender's documented ones,
//! and pauses after a 429's `Retry-After`.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointClass {
    /// `POST /api/indicators/import`
    Import,
    /// `POST /api/indicators/BatchDelete`
    BatchDelete,
    /// submit, list, delete-one, machines, alerts
    Other,
}

#[derive(Clone, Debug)]
pub struct RateLimits {
    pub import_per_minute: u32,
    pub batch_delete_per_minute: u32,
    pub other_per_minute: u32,
    pub other_per_hour: u32,
}

/// Shared by every client; keyed internally by (tenant, app, class).
#[derive(Debug, Default)]
pub struct RateLimiter {
    // filled in by the implementation
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        todo!("{limits:?}")
    }

    /// Waits until a call of `class` is allowed for (tenant, app).
    pub async fn acquire(&self, tenant: &str, app: &str, class: EndpointClass) {
        todo!("{tenant}{app}{class:?}")
    }

    /// Blocks (tenant, app, class) for `retry_after` after a 429.
    pub fn pause(&self, tenant: &str, app: &str, class: EndpointClass, retry_after: Duration) {
        todo!("{tenant}{app}{class:?}{retry_after:?}")
    }
}
