//! Client-credentials tokens (v2 endpoint; the v1 shape is tolerated), cached until shortly before
//! expiry, and classified errors.

use std::time::Instant;

use secrecy::SecretString;

use super::jwt::Claims;

/// An Entra app's credentials. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Credentials {
    /// GUID or verified domain.
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// A bearer token and what it says about itself. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    pub secret: SecretString,
    pub claims: Claims,
    pub expires_at: Instant,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken").field("claims", &self.claims).field("expires_at", &self.expires_at).finish()
    }
}
