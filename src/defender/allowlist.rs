//! Where the bearer token may go: Microsoft's documented Defender hosts, plus `--api-allowlist`.

use url::Url;

#[derive(Clone, Debug, Default)]
pub struct AllowList {
    // filled in by the implementation
}

impl AllowList {
    /// Built-in Microsoft hosts plus `extra` entries such as `http://127.0.0.1:*` or
    /// `https://*.example.com` (plain http only when listed explicitly).
    pub fn new(extra: &[String]) -> Result<Self, super::DefenderError> {
        todo!("{}", extra.len())
    }

    pub fn allows(&self, url: &Url) -> bool {
        todo!("{url}")
    }
}

/// Operator-level host policy: never a field a namespace user can set.
#[derive(Clone, Debug, Default)]
pub struct HostPolicy {
    pub allowlist: AllowList,
    /// Replaces the cloud's login host (for emulators).
    pub authority_override: Option<Url>,
}
