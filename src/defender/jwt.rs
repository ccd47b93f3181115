//! JWT payload inspection (no signature check: the token is only forwarded to Defender).

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// `tid`
    pub tenant_id: Option<String>,
    /// `appid` (v1) or `azp` (v2)
    pub app_id: Option<String>,
    /// `aud`
    pub audience: Option<String>,
    /// `roles`; empty when the claim is absent (nothing consented)
    pub roles: Vec<String>,
    /// `exp`, Unix seconds
    pub expires: Option<i64>,
}

pub fn decode(token: &str) -> Result<Claims, super::DefenderError> {
    todo!("{}", token.len())
}
