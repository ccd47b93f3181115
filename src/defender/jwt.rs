//! JWT payload inspection (no signature check: the token is only forwarded to Defender).

use base64::Engine as _;
use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// `tid`
    pub tenant_id: Option<String>,
    /// `appid` (v1) or `azp` (v2)
    pub app_id: Option<String>,
    /// `aud` (the first one when `aud` is an array)
    pub audience: Option<String>,
    /// `roles`; empty when the claim is absent (nothing consented)
    pub roles: Vec<String>,
    /// `exp`, Unix seconds
    pub expires: Option<i64>,
    /// Every `aud` value (`aud` may be a string or an array).
    pub audiences: Vec<String>,
    /// `iss`
    pub issuer: Option<String>,
    /// `sub`
    pub subject: Option<String>,
}

impl Claims {
    /// Whether `roles` holds `role` (exact, as Entra emits app-role values).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Decodes the payload (second segment) of a compact JWT. Never panics; the error message never
/// contains the token.
pub fn decode(token: &str) -> Result<Claims, super::DefenderError> {
    let bad = |why: &str| super::DefenderError::Protocol(format!("the access token is not a readable JWT: {why}"));
    let mut parts = token.trim().split('.');
    let (Some(_header), Some(payload)) = (parts.next(), parts.next()) else {
        return Err(bad("expected header.payload.signature"));
    };
    let payload = payload.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(payload))
        .map_err(|_| bad("payload is not base64url"))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad("payload is not JSON"))?;
    let Value::Object(map) = value else {
        return Err(bad("payload is not a JSON object"));
    };
    let string = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string).filter(|s| !s.is_empty());
    let audiences: Vec<String> = match map.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let roles = match map.get("roles") {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let expires = match map.get("exp") {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    Ok(Claims {
        tenant_id: string("tid"),
        app_id: string("appid").or_else(|| string("azp")),
        audience: audiences.first().cloned(),
        roles,
        expires,
        audiences,
        issuer: string("iss"),
        subject: string("sub"),
    })
}

/// Builds an unsigned JWT with `payload` (tests and emulators).
pub fn encode_unsigned(payload: &Value) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = engine.encode(payload.to_string());
    format!("{header}.{body}.")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn v1_with_appid() {
        let t = encode_unsigned(&json!({
            "aud": "https://api.securitycenter.microsoft.com",
            "tid": "11111111-1111-1111-1111-111111111111",
            "appid": "22222222-2222-2222-2222-222222222222",
            "roles": ["Ti.ReadWrite.All", "Machine.Read.All"],
            "exp": 1700000000,
            "ver": "1.0"
        }));
        let c = decode(&t).unwrap();
        assert_eq!(c.tenant_id.as_deref(), Some("11111111-1111-1111-1111-111111111111"));
        assert_eq!(c.app_id.as_deref(), Some("22222222-2222-2222-2222-222222222222"));
        assert_eq!(c.audience.as_deref(), Some("https://api.securitycenter.microsoft.com"));
        assert_eq!(c.audiences, vec!["https://api.securitycenter.microsoft.com"]);
        assert_eq!(c.roles, vec!["Ti.ReadWrite.All", "Machine.Read.All"]);
        assert!(c.has_role("Ti.ReadWrite.All"));
        assert_eq!(c.expires, Some(1700000000));
    }

    #[test]
    fn v2_with_azp_and_aud_array_roles_absent() {
        let t = encode_unsigned(&json!({
            "aud": ["fc780465-2017-40d4-a0c5-307022471b92", "https://x"],
            "tid": "t", "azp": "app", "exp": "1700000001", "ver": "2.0"
        }));
        let c = decode(&t).unwrap();
        assert_eq!(c.app_id.as_deref(), Some("app"));
        assert_eq!(c.audience.as_deref(), Some("fc780465-2017-40d4-a0c5-307022471b92"));
        assert_eq!(c.audiences.len(), 2);
        assert!(c.roles.is_empty());
        assert_eq!(c.expires, Some(1700000001));
    }

    #[test]
    fn appid_wins_over_azp_and_padding_tolerated() {
        let engine = base64::engine::general_purpose::URL_SAFE;
        let body = engine.encode(br#"{"appid":"a","azp":"b","roles":null}"#);
        let c = decode(&format!("x.{body}.sig")).unwrap();
        assert_eq!(c.app_id.as_deref(), Some("a"));
        assert!(c.roles.is_empty());
        assert_eq!(c.audience, None);
    }

    #[test]
    fn garbage_never_panics() {
        for t in ["", ".", "..", "abc", "a.b.c", "a.!!!.c", "a.bnVsbA.c", "a.WzFd.c", "\u{1F600}.\u{1F600}", "a.e30"] {
            let r = decode(t);
            if let Ok(c) = &r {
                assert_eq!(c, &Claims::default(), "{t}");
            } else {
                assert_eq!(r.unwrap_err().reason(), "ProtocolError");
            }
        }
        let t = encode_unsigned(&json!({"tid": 5, "roles": [1, "Ti.ReadWrite"], "aud": {"x": 1}, "exp": 1.5e300}));
        let c = decode(&t).unwrap();
        assert_eq!(c.tenant_id, None);
        assert_eq!(c.roles, vec!["Ti.ReadWrite"]);
        assert_eq!(c.audience, None);
    }

    #[test]
    fn error_does_not_echo_token() {
        let e = decode("secret-token-value-without-dots").unwrap_err();
        assert!(!e.to_string().contains("secret-token"));
    }
}
