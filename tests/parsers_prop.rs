//! Property tests for every parser of outside data (README, "Fuzzing"): Entra token answers,
//! JWT payloads, Defender error bodies, OData list pages, indicators and import results,
//! `Retry-After`, `ProbeFinding`s, durations and the API host allow-list.
//!
//! Each property runs 256 cases by default (the HTTP-backed ones fewer); `PROPTEST_CASES=N` sets
//! every property to N cases, e.g. `PROPTEST_CASES=20000 cargo test --release --test parsers_prop`
//! for a longer run. The coverage-guided fuzz targets for the same parsers live in `fuzz/`.

use proptest::prelude::*;
use serde_json::{Value, json};

/// The number of cases: `PROPTEST_CASES` when set, else `default`. Failures are reported with
/// their minimal input, not saved to files in the source tree.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Strings that tend to break parsers: unicode, control characters, numbers at the edges.
fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[ -~]{0,24}",
        1 => Just(String::new()),
        1 => prop::sample::select(vec![
            " ", "\n", "\r\n", "\u{0}", "\u{feff}", "é", "\u{1F600}", "ｆｆ", "٣", "null", "true", "-1", "0",
            "1e400", "NaN", "inf", "-0", "18446744073709551616", "9223372036854775808", "<html>", "AADSTS7000215",
            "Trace ID:", "'", "\"", "\\", "%00", "..", "@", "#", "?", "/", "*",
        ])
        .prop_map(String::from),
    ]
}

/// Keys the parsers look at, and some they do not.
fn interesting_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "access_token", "expires_in", "error", "error_codes", "error_description", "value", "@odata.nextLink",
            "@odata.context", "id", "indicatorValue", "indicatorType", "externalId", "externalID", "rbacGroupNames",
            "expirationTime", "generateAlert", "indicator", "isFailed", "failureReason", "tid", "appid", "azp", "aud",
            "roles", "exp", "code", "message", "target", "apiVersion", "kind", "metadata", "spec", "status", "test",
            "name", "state", "indicators", "type", "observedTime", "partnerRef", "endpoint",
        ])
        .prop_map(String::from),
        1 => odd_string(),
    ]
}

/// Any JSON value, biased towards the keys and shapes the parsers read.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((interesting_key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Arbitrary bytes, and JSON texts cut short or with a byte changed.
fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        arb_json().prop_map(|v| v.to_string().into_bytes()),
        (arb_json(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, b)| {
            let mut bytes = v.to_string().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] = b;
            bytes
        }),
        (arb_json(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let mut bytes = v.to_string().into_bytes();
            bytes.truncate(at.index(bytes.len()));
            bytes
        }),
    ]
}

/// An Entra-style client secret (`[A-Za-z0-9~._-]`, long enough not to occur in fixed text).
fn arb_secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9~._-]{16,40}"
}

// ---------------------------------------------------------------------------------------------
// Entra token endpoint (src/defender/token.rs)

mod token {
    use std::time::Duration;

    use defender_operator::defender::DefenderError;
    use defender_operator::defender::jwt::encode_unsigned;
    use defender_operator::defender::token::{
        TokenCache, classify_token_error, parse_token_response, reason_for_aadsts,
    };

    use super::*;

    /// Every AADSTS code the classifier knows (Entra's error-code reference).
    const KNOWN_CODES: &[u32] = &[
        7000215, 7000222, 7000218, 700016, 90002, 900023, 90038, 900432, 900382, 70011, 700022, 700023, 9001023,
        500011, 7000112, 70001, 53003, 530032, 90055, 90024, 90006, 90090, 50000,
    ];

    const REASONS: &[&str] = &[
        "InvalidSecret",
        "SecretExpired",
        "CredentialMissing",
        "AppNotFound",
        "TenantNotFound",
        "TenantInvalid",
        "WrongCloud",
        "ConfigError",
        "DefenderNotProvisioned",
        "AppDisabled",
        "Blocked",
        "Throttled",
        "EntraUnavailable",
        "AuthenticationFailed",
    ];

    const OAUTH_ERRORS: &[&str] = &[
        "invalid_client",
        "unauthorized_client",
        "invalid_tenant",
        "invalid_scope",
        "invalid_request",
        "unsupported_grant_type",
        "invalid_grant",
        "invalid_resource",
        "temporarily_unavailable",
        "server_error",
        "access_denied",
    ];

    fn jwt() -> String {
        encode_unsigned(&json!({"tid": "t", "appid": "a", "aud": "x", "roles": ["Ti.ReadWrite.All"]}))
    }

    fn oauth_error() -> impl Strategy<Value = String> {
        prop_oneof![prop::sample::select(OAUTH_ERRORS).prop_map(String::from), odd_string()]
    }

    /// A description that mentions an AADSTS code (maybe another one than the body's), with
    /// Entra's trace lines.
    fn description() -> impl Strategy<Value = String> {
        (prop::sample::select(KNOWN_CODES), odd_string(), any::<bool>()).prop_map(|(code, text, trace)| {
            let trace = if trace {
                "\r\nTrace ID: 1f2e\r\nCorrelation ID: 3c4d\r\nTimestamp: 2025-01-01 00:00:00Z"
            } else {
                ""
            };
            format!("AADSTS{code}: {text}{trace}")
        })
    }

    /// Lifetime of a parsed token that came without `expires_in` and `exp`.
    const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

    proptest! {
        #![proptest_config(cases(256))]

        /// Any 200 body either parses or is a `ProtocolError`; it never panics.
        #[test]
        fn success_body_never_panics(body in arb_body()) {
            if let Err(e) = parse_token_response(&body) {
                prop_assert_eq!(e.reason(), "ProtocolError");
            }
        }

        /// Token-shaped bodies with any `expires_in` and any claims parse without panicking, and
        /// neither the result's `Debug` nor the error shows the token.
        #[test]
        fn token_shaped_body_never_panics(
            claims in prop::collection::vec((interesting_key(), arb_json()), 0..6),
            expires_in in prop::option::of(arb_json()),
            extra in prop::collection::vec((interesting_key(), arb_json()), 0..3),
        ) {
            let mut claims: serde_json::Map<String, Value> = claims.into_iter().collect();
            // A very negative `exp` is a known panic, pinned by `any_lifetime_can_be_cached`.
            if claims.get("exp").and_then(Value::as_f64).is_some_and(|exp| exp < -1.0e15) {
                claims.insert("exp".into(), json!(0));
            }
            let token = encode_unsigned(&Value::Object(claims));
            let mut body: serde_json::Map<String, Value> = extra.into_iter().collect();
            body.insert("access_token".into(), json!(token));
            if let Some(e) = expires_in {
                body.insert("expires_in".into(), e);
            }
            match parse_token_response(Value::Object(body).to_string().as_bytes()) {
                Ok(issued) => prop_assert!(!format!("{issued:?}").contains(&token), "Debug shows the token"),
                Err(e) => {
                    prop_assert_eq!(e.reason(), "ProtocolError");
                    prop_assert!(!e.to_string().contains(&token), "{}", e);
                }
            }
        }

        /// `expires_in` as a v2 number or a v1 numeric string (padded or not) gives the lifetime.
        #[test]
        fn expires_in_number_or_string(seconds in 0u64..=100_000_000, form in 0u8..4, pad in "[ \t]{0,2}") {
            let expires_in = match form {
                0 => json!(seconds),
                1 => json!(seconds as f64 + 0.5),
                2 => json!(seconds.to_string()),
                _ => json!(format!("{pad}{seconds}{pad}")),
            };
            let v1 = form >= 2;
            let mut body =
                json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": 0, "access_token": jwt()});
            if v1 {
                // v1 sends its times as strings, and the resource.
                body["expires_on"] = json!("1700000000");
                body["not_before"] = json!("1699996400");
                body["resource"] = json!("https://api.securitycenter.microsoft.com");
            }
            let issued = parse_token_response(body.to_string().as_bytes()).unwrap();
            // Trusted up to a day: longer claims are capped.
            prop_assert_eq!(issued.lifetime, Duration::from_secs(seconds.min(24 * 3600)));
            prop_assert_eq!(issued.claims.tenant_id.as_deref(), Some("t"));
        }

        /// An unreadable `expires_in` (negative, not a number) falls back to the token's `exp`,
        /// then to one hour.
        #[test]
        fn unreadable_expires_in_falls_back(
            bad in prop_oneof![
                (-1.0e12f64..-0.5).prop_map(|n| json!(n)),
                "[a-z ]{0,8}|-[1-9][0-9]{0,4}|NaN|inf|-inf".prop_map(|s| json!(s)),
                Just(Value::Null),
            ],
            exp_in in prop::option::of(60i64..1_000_000),
        ) {
            let now = jiff::Timestamp::now().as_second();
            let claims = match exp_in {
                Some(k) => json!({"tid": "t", "exp": now + k}),
                None => json!({"tid": "t"}),
            };
            let body = json!({"access_token": encode_unsigned(&claims), "expires_in": bad});
            let issued = parse_token_response(body.to_string().as_bytes()).unwrap();
            match exp_in {
                Some(k) => prop_assert!(
                    issued.lifetime.as_secs().abs_diff((k as u64).min(24 * 3600)) <= 5, "{:?} vs {k}", issued.lifetime),
                None => prop_assert_eq!(issued.lifetime, DEFAULT_LIFETIME),
            }
        }

        /// Any status and any body give a classified error with a known reason; a 429 is always
        /// `Throttled`; nothing panics.
        #[test]
        fn error_body_never_panics(
            status in any::<u16>(),
            body in arb_body(),
            retry in prop::option::of(0u64..10_000),
        ) {
            let e = classify_token_error(status, &body, retry.map(Duration::from_secs), "s3cr3t-value-never-shown");
            prop_assert!(REASONS.contains(&e.reason().as_str()), "{}", e.reason());
            if status == 429 {
                prop_assert_eq!(e.reason(), "Throttled");
                prop_assert_eq!(e.retry_after(), Some(retry.map_or(Duration::from_secs(5), Duration::from_secs)));
            }
            let _ = (e.to_string(), format!("{e:?}"), e.is_transient());
        }

        /// The reason comes from `error_codes[0]`: whatever `error`, description, later codes or
        /// (non-429) status come with it.
        #[test]
        fn classified_by_first_error_code(
            code in prop::sample::select(KNOWN_CODES),
            as_string in any::<bool>(),
            error in oauth_error(),
            desc in prop::option::of(description()),
            later in prop::collection::vec(any::<u32>(), 0..3),
            status in prop::sample::select(vec![400u16, 401, 403, 404, 408, 500, 502, 503]),
        ) {
            let first = if as_string { json!(format!(" {code} ")) } else { json!(code) };
            let mut codes = vec![first];
            codes.extend(later.into_iter().map(|c| json!(c)));
            let mut body = json!({"error": error, "error_codes": codes, "trace_id": "x", "correlation_id": "y"});
            if let Some(d) = desc {
                body["error_description"] = json!(d);
            }
            let e = classify_token_error(status, body.to_string().as_bytes(), None, "s3cr3t-value-never-shown");
            let (reason, transient) = reason_for_aadsts(code).unwrap();
            prop_assert_eq!(e.reason(), reason);
            prop_assert_eq!(e.is_transient(), transient);
            match e {
                DefenderError::Token { aadsts, .. } => prop_assert_eq!(aadsts, Some(code)),
                DefenderError::Throttled { .. } => prop_assert_eq!(code, 90055),
                other => prop_assert!(false, "unexpected {other:?}"),
            }
        }

        /// The description never decides: two bodies that differ only in their description text
        /// (say, one naming AADSTS7000215) are classified alike.
        #[test]
        fn description_text_never_classifies(
            error in prop::option::of(oauth_error()),
            codes in prop::option::of(prop::collection::vec(
                prop_oneof![
                    any::<u32>().prop_map(|c| json!(c)),
                    odd_string().prop_map(|s| json!(s)),
                    Just(Value::Null),
                ],
                0..3)),
            status in any::<u16>(),
            d1 in prop::option::of(description()),
            d2 in prop::option::of(description()),
        ) {
            let body = |d: &Option<String>| {
                let mut b = json!({});
                if let Some(e) = &error { b["error"] = json!(e); }
                if let Some(c) = &codes { b["error_codes"] = json!(c); }
                if let Some(d) = d { b["error_description"] = json!(d); }
                b.to_string().into_bytes()
            };
            let a = classify_token_error(status, &body(&d1), None, "");
            let b = classify_token_error(status, &body(&d2), None, "");
            prop_assert_eq!(a.reason(), b.reason());
            prop_assert_eq!(a.is_transient(), b.is_transient());
        }

        /// A client secret that Entra echoes in its description never reaches an error's `Display`
        /// or `Debug`, wherever and however often it appears.
        #[test]
        fn secret_in_description_never_shown(
            secret in arb_secret(),
            parts in prop::collection::vec(prop_oneof![
                3 => Just(None),
                2 => odd_string().prop_map(Some),
                1 => Just(Some("\r\nTrace ID: 0000\r\n".to_string())),
            ], 1..6),
            code in prop::option::of(prop::sample::select(KNOWN_CODES)),
            error in oauth_error(),
            status in prop::sample::select(vec![400u16, 401, 403, 500, 503]),
        ) {
            // `None` parts are the secret itself.
            let description: String = parts.iter().map(|p| p.as_deref().unwrap_or(&secret)).collect();
            let mut body = json!({"error": error, "error_description": description});
            if let Some(c) = code {
                body["error_codes"] = json!([c]);
            }
            let e = classify_token_error(status, body.to_string().as_bytes(), None, &secret);
            prop_assert!(!e.to_string().contains(&secret), "{}", e);
            prop_assert!(!format!("{e:?}").contains(&secret), "{:?}", e);
        }
    }

    proptest! {
        #![proptest_config(cases(256))]

        /// The secret is never shown even when Entra (or something pretending to be it) echoes it
        /// in the `error` field and sends no usable description.
        #[test]
        fn secret_in_error_field_never_shown(
            secret in arb_secret(),
            before in "[a-z_ ]{0,12}",
            description in prop::option::of(prop::sample::select(vec!["", "\r\nTrace ID: 1", "   "])),
            status in prop::sample::select(vec![400u16, 401, 403, 500]),
        ) {
            let mut body = json!({"error": format!("{before}{secret}")});
            if let Some(d) = description {
                body["error_description"] = json!(d);
            }
            let e = classify_token_error(status, body.to_string().as_bytes(), None, &secret);
            prop_assert!(!e.to_string().contains(&secret), "{}", e);
        }

        /// Whatever `expires_in` and `exp` a 200 body carries, the token can be parsed and cached.
        #[test]
        fn any_lifetime_can_be_cached(
            expires_in in prop::option::of(prop_oneof![
                any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
                any::<u64>().prop_map(|n| json!(n)),
                any::<u64>().prop_map(|n| json!(n.to_string())),
                Just(json!("1e30")),
            ]),
            exp in prop::option::of(any::<i64>()),
        ) {
            let claims = match exp { Some(x) => json!({"tid": "t", "exp": x}), None => json!({"tid": "t"}) };
            let body = json!({"access_token": encode_unsigned(&claims), "expires_in": expires_in}).to_string();
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            rt.block_on(async {
                let cache = TokenCache::new();
                cache.get(|| async { parse_token_response(body.as_bytes()) }).await.map(drop)
            }).unwrap();
        }
    }

    /// Pins the known reasons so that `classified_by_first_error_code` cannot pass vacuously.
    #[test]
    fn table_is_total_for_known_codes() {
        for code in KNOWN_CODES {
            let (reason, _) = reason_for_aadsts(*code).expect("known code");
            assert!(REASONS.contains(&reason.as_str()), "{code}: {reason}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JWT payloads (src/defender/jwt.rs)

mod jwt {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use defender_operator::defender::jwt::{Claims, decode, encode_unsigned};

    use super::*;

    const PREFIX: &str = "unexpected response from Defender: the access token is not a readable JWT: ";

    /// A decode error says only what was wrong, never the token.
    fn check_error(e: &defender_operator::defender::DefenderError) -> Result<(), TestCaseError> {
        prop_assert_eq!(e.reason(), "ProtocolError");
        let msg = e.to_string();
        prop_assert!(
            [
                "expected header.payload.signature",
                "payload is not base64url",
                "payload is not JSON",
                "payload is not a JSON object"
            ]
            .iter()
            .any(|why| msg == format!("{PREFIX}{why}")),
            "{}",
            msg
        );
        Ok(())
    }

    fn b64(data: &[u8], engine: u8) -> String {
        match engine % 4 {
            0 => URL_SAFE_NO_PAD.encode(data),
            1 => URL_SAFE.encode(data),
            2 => STANDARD_NO_PAD.encode(data),
            _ => STANDARD.encode(data),
        }
    }

    #[derive(Clone, Debug)]
    enum Aud {
        Absent,
        One(String),
        Many(Vec<Value>),
        Other(Value),
    }

    #[derive(Clone, Debug)]
    enum Roles {
        Absent,
        Null,
        List(Vec<Value>),
        Spaced(Vec<String>),
    }

    #[derive(Clone, Debug)]
    enum Exp {
        Absent,
        Int(i64),
        Str(i64),
        Float(f64),
    }

    fn claim_string() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            2 => odd_string(),
            1 => Just(String::new()),
        ]
    }

    fn string_or_junk() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => claim_string().prop_map(Value::String),
            1 => any::<i64>().prop_map(|n| json!(n)),
            1 => Just(Value::Null),
            1 => Just(json!({"x": 1})),
        ]
    }

    fn aud() -> impl Strategy<Value = Aud> {
        prop_oneof![
            Just(Aud::Absent),
            claim_string().prop_map(Aud::One),
            prop::collection::vec(string_or_junk(), 0..4).prop_map(Aud::Many),
            prop_oneof![any::<i64>().prop_map(|n| json!(n)), Just(Value::Null), Just(json!({"a": "b"}))]
                .prop_map(Aud::Other),
        ]
    }

    fn roles() -> impl Strategy<Value = Roles> {
        prop_oneof![
            Just(Roles::Absent),
            Just(Roles::Null),
            prop::collection::vec(
                prop_oneof![
                    3 => prop::sample::select(
                            vec!["Ti.ReadWrite.All", "Ti.ReadWrite", "Machine.Read.All", "Alert.Read.All"]
                        )
                        .prop_map(|s| json!(s)),
                    1 => string_or_junk(),
                ],
                0..5
            )
            .prop_map(Roles::List),
            prop::collection::vec("[A-Za-z.]{1,16}", 0..4).prop_map(Roles::Spaced),
        ]
    }

    fn exp() -> impl Strategy<Value = Exp> {
        prop_oneof![
            Just(Exp::Absent),
            any::<i64>().prop_map(Exp::Int),
            any::<i64>().prop_map(Exp::Str),
            (-1.0e300f64..1.0e300).prop_map(Exp::Float),
        ]
    }

    proptest! {
        #![proptest_config(cases(256))]

        /// Any string decodes or fails with a fixed message; never a panic, never an echo.
        #[test]
        fn decode_never_panics(token in prop_oneof![any::<String>(), "[A-Za-z0-9_=.+/ -]{0,64}"]) {
            if let Err(e) = decode(&token) {
                check_error(&e)?;
            }
        }

        /// Three segments whose payload is base64 of arbitrary bytes or of arbitrary JSON.
        #[test]
        fn decode_never_panics_on_base64_payloads(
            payload in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..128),
                arb_json().prop_map(|v| v.to_string().into_bytes()),
            ],
            engine in any::<u8>(),
            header in "[A-Za-z0-9_-]{0,12}",
            tail in prop::sample::select(vec!["", ".", ".sig", ".sig.more", ".."]),
        ) {
            let token = format!("{header}.{}{tail}", b64(&payload, engine));
            let is_object = serde_json::from_slice::<Value>(&payload).is_ok_and(|v| v.is_object());
            match decode(&token) {
                Ok(_) => prop_assert!(is_object),
                Err(e) => {
                    prop_assert!(!is_object);
                    check_error(&e)?;
                }
            }
        }

        /// Generated claims survive `encode_unsigned` → `decode` (and the other base64 alphabets,
        /// padding, surrounding whitespace): `aud` a string or an array, `roles` absent → empty,
        /// `appid` before `azp`, empty strings as absent.
        #[test]
        fn claims_round_trip(
            tid in prop::option::of(string_or_junk()),
            appid in prop::option::of(string_or_junk()),
            azp in prop::option::of(string_or_junk()),
            aud in aud(),
            roles in roles(),
            exp in exp(),
            extra in prop::collection::vec(("x-[a-z]{1,6}", arb_json()), 0..3),
            engine in any::<u8>(),
            ws in "[ \t\n]{0,2}",
        ) {
            let mut payload: serde_json::Map<String, Value> = extra.into_iter().collect();
            let mut put = |k: &str, v: Option<Value>| if let Some(v) = v { payload.insert(k.into(), v); };
            put("tid", tid.clone());
            put("appid", appid.clone());
            put("azp", azp.clone());
            put("aud", match &aud {
                Aud::Absent => None,
                Aud::One(s) => Some(json!(s)),
                Aud::Many(items) => Some(json!(items)),
                Aud::Other(v) => Some(v.clone()),
            });
            put("roles", match &roles {
                Roles::Absent => None,
                Roles::Null => Some(Value::Null),
                Roles::List(items) => Some(json!(items)),
                Roles::Spaced(items) => Some(json!(items.join(" "))),
            });
            put("exp", match &exp {
                Exp::Absent => None,
                Exp::Int(n) => Some(json!(n)),
                Exp::Str(n) => Some(json!(n.to_string())),
                Exp::Float(f) => Some(json!(f)),
            });
            let payload = Value::Object(payload);
            let token = if engine % 5 == 4 {
                encode_unsigned(&payload)
            } else {
                format!("{ws}eyJhbGciOiJub25lIn0.{}.{ws}", b64(payload.to_string().as_bytes(), engine))
            };

            let text =
                |v: &Option<Value>| v.as_ref().and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
            let audiences: Vec<String> = match &aud {
                Aud::One(s) => vec![s.clone()],
                Aud::Many(items) => items.iter().filter_map(Value::as_str).map(String::from).collect(),
                Aud::Absent | Aud::Other(_) => vec![],
            };
            let expected = Claims {
                tenant_id: text(&tid),
                app_id: text(&appid).or_else(|| text(&azp)),
                audience: audiences.first().cloned(),
                roles: match &roles {
                    Roles::List(items) => items.iter().filter_map(Value::as_str).map(String::from).collect(),
                    Roles::Spaced(items) => items.clone(),
                    Roles::Absent | Roles::Null => vec![],
                },
                expires: match exp {
                    Exp::Absent => None,
                    Exp::Int(n) | Exp::Str(n) => Some(n),
                    Exp::Float(f) => Some(f as i64),
                },
                audiences,
                // The generated payloads carry no `iss` or `sub`.
                issuer: None,
                subject: None,
            };
            prop_assert_eq!(decode(&token).unwrap(), expected);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Defender error bodies (src/defender/error.rs)

mod defender_error {
    use defender_operator::defender::DefenderError;
    use defender_operator::fuzzing::{clip, defender_api_error};

    use super::*;

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

    fn status() -> impl Strategy<Value = u16> {
        prop_oneof![
            3 => prop::sample::select(vec![400u16, 401, 403, 404, 408, 409, 429, 500, 502, 503, 504]),
            1 => any::<u16>(),
        ]
    }

    proptest! {
        #![proptest_config(cases(256))]

        /// Any status and body give an `Api` error whose reason and transience follow the status,
        /// with a one-line message of bounded length; never a panic.
        #[test]
        fn any_body_never_panics(status in status(), body in arb_body()) {
            let e = defender_api_error(status, &body);
            let DefenderError::Api { status: s, code, message, .. } = &e else {
                return Err(TestCaseError::fail(format!("not an Api error: {e:?}")));
            };
            prop_assert_eq!(*s, status);
            prop_assert!(!code.is_empty());
            prop_assert!(!message.contains('\n'), "{:?}", message);
            prop_assert!(message.chars().count() <= 301, "{}", message.chars().count());
            prop_assert_eq!(e.is_transient(), matches!(status, 408 | 429 | 500..=599));
            let expected = match status {
                401 => "Unauthorized",
                403 if code.eq_ignore_ascii_case("DisabledFeature") => "DisabledFeature",
                403 => "Forbidden",
                429 => "Throttled",
                500..=599 => "DefenderUnreachable",
                _ => "DefenderError",
            };
            prop_assert_eq!(e.reason(), expected);
            let _ = (e.to_string(), format!("{e:?}"));
        }

        /// A well-formed body gives its code (as sent), its message's first line (clipped to
        /// 300 characters) and its target, whatever else the body holds.
        #[test]
        fn valid_body_gives_its_code(
            status in status(),
            code in prop_oneof![
                prop::sample::select(vec!["InvalidHashValue", "DisabledFeature", "BadRequest", "Forbidden",
                    "MaximumIndicatorsReached", "InvalidRequestBody"]).prop_map(String::from),
                odd_string().prop_filter("non-blank", |c| !c.trim().is_empty()),
            ],
            message in prop::option::of(odd_string()),
            target in prop::option::of(odd_string()),
            extra in prop::collection::vec(("x-[a-z]{1,6}", arb_json()), 0..3),
        ) {
            let mut inner = json!({"code": code});
            if let Some(m) = &message { inner["message"] = json!(m); }
            if let Some(t) = &target { inner["target"] = json!(t); }
            let mut body: serde_json::Map<String, Value> = extra.into_iter().collect();
            body.insert("error".into(), inner);
            let e = defender_api_error(status, Value::Object(body).to_string().as_bytes());
            prop_assert_eq!(e.api_code(), Some(code.as_str()));
            match e {
                DefenderError::Api { message: m, target: t, .. } => {
                    if let Some(sent) = &message {
                        prop_assert_eq!(m, clip(sent, 300));
                    }
                    prop_assert_eq!(t, target);
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }

        /// A blank or missing code, or a body that is not Defender's shape, gives the status's code.
        #[test]
        fn missing_code_gives_status_code(
            status in status(),
            code in prop::option::of(prop_oneof!["[ \t]{0,3}".prop_map(|s| json!(s)), Just(Value::Null)]),
            text in prop::option::of(odd_string()),
        ) {
            let body = match (&code, &text) {
                (Some(c), _) => json!({"error": {"code": c}}).to_string(),
                (None, Some(t)) => t.clone(),
                (None, None) => String::new(),
            };
            // A plain-text body that happens to be Defender's shape with a code is not this case.
            prop_assume!(serde_json::from_str::<Value>(&body).ok()
                .and_then(|v| v.pointer("/error/code").and_then(Value::as_str).map(|c| !c.trim().is_empty()))
                != Some(true));
            let e = defender_api_error(status, body.as_bytes());
            prop_assert_eq!(e.api_code(), Some(default_code(status)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Indicators, import results, Retry-After (src/defender/indicators.rs, client.rs)

mod indicators {
    use std::time::Duration;

    use defender_operator::defender::client::parse_retry_after;
    use defender_operator::defender::{ImportResult, Indicator};

    use super::*;

    /// Fields Defender sends that the operator does not read.
    const OTHER_FIELDS: &[&str] = &[
        "lastUpdatedBy",
        "lastUpdateTime",
        "createdBy",
        "createdByDisplayName",
        "createdBySource",
        "creationTimeDateTimeUtc",
        "recommendedActions",
        "mitreTechniques",
        "historicalDetection",
        "lookBackPeriod",
        "bypassDurationHours",
        "category",
        "source",
        "sourceType",
        "version",
        "certificateInfo",
        "educateUrl",
        "notificationId",
        "notificationBody",
    ];

    #[derive(Clone, Debug)]
    pub(crate) struct GenIndicator {
        pub id: Value,
        pub id_text: String,
        pub value: String,
        pub external: Option<(bool, String)>,
        pub rbac: Option<Option<Vec<String>>>,
        pub optional: Vec<(&'static str, Option<Value>)>,
        pub other: Vec<(&'static str, Value)>,
    }

    impl GenIndicator {
        pub(crate) fn to_json(&self) -> Value {
            let mut m = serde_json::Map::new();
            for (k, v) in &self.other {
                m.insert((*k).into(), v.clone());
            }
            m.insert("id".into(), self.id.clone());
            m.insert("indicatorValue".into(), json!(self.value));
            m.insert("indicatorType".into(), json!("FileSha256"));
            if let Some((upper_d, ext)) = &self.external {
                m.insert(if *upper_d { "externalID" } else { "externalId" }.into(), json!(ext));
            }
            match &self.rbac {
                None => {}
                Some(None) => {
                    m.insert("rbacGroupNames".into(), Value::Null);
                }
                Some(Some(groups)) => {
                    m.insert("rbacGroupNames".into(), json!(groups));
                }
            }
            for (k, v) in &self.optional {
                m.insert((*k).into(), v.clone().unwrap_or(Value::Null));
            }
            Value::Object(m)
        }

        pub(crate) fn check(&self, i: &Indicator) -> Result<(), TestCaseError> {
            prop_assert_eq!(&i.id, &self.id_text);
            prop_assert_eq!(&i.indicator_value, &self.value);
            prop_assert_eq!(i.indicator_type.as_str(), "FileSha256");
            prop_assert_eq!(i.external_id.as_deref(), self.external.as_ref().map(|(_, e)| e.as_str()));
            // The other fields (action, title, rbacGroupNames, …) are not read: any value parses.
            for (k, v) in &self.optional {
                let got = match *k {
                    "application" => i.application.clone().map(Value::String),
                    "expirationTime" => i.expiration_time.clone().map(Value::String),
                    _ => continue,
                };
                prop_assert_eq!(&got, v, "{}", k);
            }
            Ok(())
        }
    }

    /// Defender ids: numeric strings, bare integers (even negative), or any string.
    fn id() -> impl Strategy<Value = (Value, String)> {
        prop_oneof![
            3 => "[1-9][0-9]{0,18}".prop_map(|s| (json!(s), s)),
            2 => any::<u64>().prop_map(|n| (json!(n), n.to_string())),
            1 => any::<i64>().prop_map(|n| (json!(n), n.to_string())),
            1 => odd_string().prop_map(|s| (json!(s), s)),
        ]
    }

    pub(crate) fn gen_indicator() -> impl Strategy<Value = GenIndicator> {
        let optional = prop::collection::vec(
            prop_oneof![
                prop::option::of(odd_string()).prop_map(|v| ("application", v.map(Value::String))),
                prop::option::of(prop::sample::select(vec!["Block", "Audit", "Warn", "Allowed", "AlertAndBlock"]))
                    .prop_map(|v| ("action", v.map(|s| json!(s)))),
                prop::option::of(prop::sample::select(vec!["Informational", "Low", "Medium", "High"]))
                    .prop_map(|v| ("severity", v.map(|s| json!(s)))),
                prop::option::of(odd_string()).prop_map(|v| ("title", v.map(Value::String))),
                prop::option::of(odd_string()).prop_map(|v| ("description", v.map(Value::String))),
                prop::option::of(odd_string()).prop_map(|v| ("expirationTime", v.map(Value::String))),
                prop::option::of(any::<bool>()).prop_map(|v| ("generateAlert", v.map(Value::Bool))),
            ],
            0..7,
        )
        .prop_map(|mut fields| {
            // One value per field (the last one generated wins, as in the JSON object).
            let mut seen = std::collections::HashSet::new();
            fields.reverse();
            fields.retain(|(k, _)| seen.insert(*k));
            fields
        });
        (
            id(),
            "[0-9a-fA-F]{64}",
            prop::option::of((any::<bool>(), odd_string())),
            prop::option::of(prop::option::of(prop::collection::vec(odd_string(), 0..3))),
            optional,
            prop::collection::vec((prop::sample::select(OTHER_FIELDS), arb_json()), 0..3),
        )
            .prop_map(|((id, id_text), value, external, rbac, optional, other)| GenIndicator {
                id,
                id_text,
                value,
                external,
                rbac,
                optional,
                other,
            })
    }

    fn retry_after(value: &str) -> Option<Duration> {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, reqwest::header::HeaderValue::from_str(value).ok()?);
        parse_retry_after(&h)
    }

    proptest! {
        #![proptest_config(cases(256))]

        /// Any JSON is an indicator, an import result, or an error; never a panic. A parsed
        /// indicator's expiry check never panics either.
        #[test]
        fn arbitrary_json_never_panics(v in arb_json()) {
            if let Ok(i) = serde_json::from_value::<Indicator>(v.clone()) {
                let _ = i.is_expired(jiff::Timestamp::now());
            }
            let _ = serde_json::from_value::<ImportResult>(v.clone());
            let _ = serde_json::from_slice::<Indicator>(v.to_string().as_bytes());
        }

        /// Defender's indicator shape is read whatever its variations: `externalID` or
        /// `externalId`, numeric ids, null `rbacGroupNames`, nulls, fields the operator ignores.
        #[test]
        fn indicator_tolerant(g in gen_indicator()) {
            let parsed: Indicator = serde_json::from_value(g.to_json())
                .map_err(|e| TestCaseError::fail(format!("{e}: {}", g.to_json())))?;
            g.check(&parsed)?;
            // What the operator writes back (e.g. in tests and the emulator) reads the same.
            let again: Indicator = serde_json::from_value(serde_json::to_value(&parsed).unwrap()).unwrap();
            prop_assert_eq!(again, parsed);
        }

        /// An import result's id may be a string, a number, null or absent; `isFailed` defaults
        /// to false.
        #[test]
        fn import_result_tolerant(
            id in prop::option::of(prop_oneof![
                "[0-9]{1,12}".prop_map(|s| (json!(s), Some(s))),
                any::<u64>().prop_map(|n| (json!(n), Some(n.to_string()))),
                Just((Value::Null, None)),
                Just((json!(true), None)),
            ]),
            indicator in odd_string(),
            failed in prop::option::of(any::<bool>()),
            reason in prop::option::of(prop::option::of(odd_string())),
            other in prop::collection::vec((prop::sample::select(OTHER_FIELDS), arb_json()), 0..2),
        ) {
            let mut m: serde_json::Map<String, Value> =
                other.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            m.insert("indicator".into(), json!(indicator));
            if let Some((v, _)) = &id { m.insert("id".into(), v.clone()); }
            if let Some(f) = failed { m.insert("isFailed".into(), json!(f)); }
            if let Some(r) = &reason { m.insert("failureReason".into(), json!(r)); }
            let r: ImportResult = serde_json::from_value(Value::Object(m)).unwrap();
            prop_assert_eq!(r.id, id.and_then(|(_, s)| s));
            prop_assert_eq!(r.indicator, indicator);
            prop_assert_eq!(r.is_failed, failed.unwrap_or(false));
            prop_assert_eq!(r.failure_reason, reason.flatten());
        }

        /// Any header value: no panic, never more than an hour, never negative.
        #[test]
        fn retry_after_never_panics(raw in prop_oneof![
            "[ -~]{0,32}",
            "-?[0-9]{0,25}(\\.[0-9]{0,5})?(e-?[0-9]{1,3})?",
            any::<String>(),
        ]) {
            if let Some(d) = retry_after(&raw) {
                prop_assert!(d <= Duration::from_secs(3600), "{:?}", d);
            }
            // Non-visible bytes (obs-text) are not a number of seconds nor a date.
            let mut h = reqwest::header::HeaderMap::new();
            if let Ok(v) = reqwest::header::HeaderValue::from_bytes(raw.as_bytes()) {
                h.insert(reqwest::header::RETRY_AFTER, v);
                let _ = parse_retry_after(&h);
            }
        }

        /// Delay-seconds: whole or fractional, capped at an hour; negative ones are ignored.
        #[test]
        fn retry_after_seconds(secs in 0u64..100_000, frac in prop::option::of(0u32..1000), negative in any::<bool>()) {
            let text = match frac { Some(f) => format!("{secs}.{f:03}"), None => secs.to_string() };
            let expected = Duration::from_secs(secs) + Duration::from_millis(frac.unwrap_or(0) as u64);
            if negative && expected > Duration::ZERO {
                prop_assert_eq!(retry_after(&format!("-{text}")), None);
            } else {
                let d = retry_after(&text).unwrap();
                let want = expected.min(Duration::from_secs(3600));
                prop_assert!(d.abs_diff(want) < Duration::from_millis(2), "{:?} vs {:?}", d, want);
            }
        }

        /// An HTTP-date: the time until then, zero when past, capped at an hour.
        #[test]
        fn retry_after_http_date(offset in -1_000_000i64..1_000_000) {
            let when = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(offset);
            let date = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&when).unwrap();
            let d = retry_after(&date).unwrap();
            let want = Duration::from_secs(offset.clamp(0, 3600) as u64);
            prop_assert!(d.abs_diff(want) <= Duration::from_secs(2), "{date}: {:?} vs {:?}", d, want);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OData list pages and import answers, through the real client against a local stub server
// (src/defender/client.rs keeps the page type private; see fuzzing notes in the README).

mod odata {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{Method, StatusCode, Uri};
    use defender_operator::api::Cloud;
    use defender_operator::defender::client::{ClientOptions, default_http_client};
    use defender_operator::defender::jwt::encode_unsigned;
    use defender_operator::defender::{
        AllowList, Credentials, DefenderClient, HostPolicy, NewIndicator, RateLimiter, RateLimits,
    };

    use super::indicators::{GenIndicator, gen_indicator};
    use super::*;

    const TENANT: &str = "11111111-1111-1111-1111-111111111111";
    const APP: &str = "22222222-2222-2222-2222-222222222222";

    /// Answers the token endpoint, and everything else from `pages` (keyed by path and query as
    /// sent), 404 when absent; every request is logged.
    #[derive(Default)]
    struct Stub {
        pages: Mutex<HashMap<String, Vec<u8>>>,
        import: Mutex<Vec<u8>>,
        log: Mutex<Vec<String>>,
    }

    async fn handle(State(stub): State<Arc<Stub>>, method: Method, uri: Uri, _body: Bytes) -> (StatusCode, Vec<u8>) {
        let key = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
        if uri.path().ends_with("/oauth2/v2.0/token") {
            let token = encode_unsigned(&json!({"tid": TENANT, "appid": APP,
                "aud": "https://api.securitycenter.microsoft.com", "roles": ["Ti.ReadWrite.All"]}));
            return (StatusCode::OK, json!({"access_token": token, "expires_in": 3599}).to_string().into_bytes());
        }
        stub.log.lock().unwrap().push(key.clone());
        if method == Method::POST && uri.path() == "/api/indicators/import" {
            return (StatusCode::OK, stub.import.lock().unwrap().clone());
        }
        match stub.pages.lock().unwrap().get(&key) {
            Some(body) => (StatusCode::OK, body.clone()),
            None => {
                (StatusCode::NOT_FOUND, b"{\"error\":{\"code\":\"NotFound\",\"message\":\"no such page\"}}".to_vec())
            }
        }
    }

    /// A stub server and clients for it, on one runtime for all cases of a property.
    struct Harness {
        rt: tokio::runtime::Runtime,
        stub: Arc<Stub>,
        addr: SocketAddr,
    }

    impl Harness {
        fn start() -> Harness {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let stub = Arc::new(Stub::default());
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
            let addr = listener.local_addr().unwrap();
            let app = axum::Router::new().fallback(handle).with_state(stub.clone());
            rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
            Harness { rt, stub, addr }
        }

        fn base(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// A client allowed to talk to this stub's port only, with no rate limit to speak of.
        fn client(&self, page_size: usize) -> DefenderClient {
            let policy = HostPolicy {
                allowlist: AllowList::new(&[self.base()]).unwrap(),
                authority_override: Some(url::Url::parse(&self.base()).unwrap()),
            };
            let limits = RateLimits {
                import_per_minute: u32::MAX,
                batch_delete_per_minute: u32::MAX,
                other_per_minute: u32::MAX,
                other_per_hour: u32::MAX,
                av_info_per_minute: u32::MAX,
                av_info_per_hour: u32::MAX,
            };
            DefenderClient::with_options(
                default_http_client().unwrap(),
                Cloud::Commercial,
                Some(&self.base()),
                Credentials {
                    tenant_id: TENANT.into(),
                    client_id: APP.into(),
                    proof: defender_operator::defender::assertion::Proof::Secret("s".to_string().into()),
                },
                &policy,
                Arc::new(RateLimiter::new(limits)),
                ClientOptions {
                    request_timeout: Duration::from_secs(10),
                    list_page_size: page_size,
                    ..ClientOptions::default()
                },
            )
            .unwrap()
        }

        fn serve(&self, pages: HashMap<String, Vec<u8>>) {
            *self.stub.pages.lock().unwrap() = pages;
            self.stub.log.lock().unwrap().clear();
        }

        fn requests(&self) -> Vec<String> {
            self.stub.log.lock().unwrap().clone()
        }
    }

    /// How a page points at the next one.
    #[derive(Clone, Debug)]
    enum Link {
        Absolute,
        RootRelative,
        PathRelative,
        /// No link: the page is full, so the client asks for `$skip`.
        Skip,
    }

    #[derive(Clone, Debug)]
    struct GenPage {
        items: Vec<GenIndicator>,
        link: Link,
        padded: bool,
        context: bool,
    }

    const TOP: usize = 3;

    fn gen_page() -> impl Strategy<Value = GenPage> {
        (
            prop::collection::vec(gen_indicator(), 0..=TOP),
            prop_oneof![Just(Link::Absolute), Just(Link::RootRelative), Just(Link::PathRelative), Just(Link::Skip)],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(items, link, padded, context)| GenPage { items, link, padded, context })
    }

    /// Registers `pages` as the stub would serve them and returns what `list_indicators` should
    /// give: every item in order, the first of each id.
    fn lay_out(h: &Harness, pages: &[GenPage], last_has_null_link: bool) -> Vec<GenIndicator> {
        let mut served = HashMap::new();
        let mut url = format!("/api/indicators?$top={TOP}");
        let mut skip = 0;
        let mut expected: Vec<GenIndicator> = Vec::new();
        for (n, page) in pages.iter().enumerate() {
            let last = n + 1 == pages.len();
            let mut body = json!({"value": page.items.iter().map(GenIndicator::to_json).collect::<Vec<_>>()});
            if page.context {
                body["@odata.context"] = json!("https://api.securitycenter.microsoft.com/api/$metadata#Indicators");
            }
            skip += page.items.len();
            for item in &page.items {
                if !expected.iter().any(|e| e.id_text == item.id_text) {
                    expected.push(item.clone());
                }
            }
            let next = format!("/api/indicators?$top={TOP}&$skiptoken=p{n}");
            let link = match (&page.link, last) {
                (_, true) => {
                    if last_has_null_link {
                        body["@odata.nextLink"] = Value::Null;
                    }
                    None
                }
                (Link::Skip, false) if page.items.len() == TOP => None,
                (Link::Absolute | Link::Skip, false) => Some(format!("{}{next}", h.base())),
                (Link::RootRelative, false) => Some(next.clone()),
                (Link::PathRelative, false) => Some(format!("indicators?$top={TOP}&$skiptoken=p{n}")),
            };
            let following = match &link {
                Some(l) => {
                    body["@odata.nextLink"] = json!(if page.padded { format!(" {l} ") } else { l.clone() });
                    Some(next)
                }
                // A full page without a link: the client asks for the next one with `$skip`.
                None if page.items.len() >= TOP => Some(format!("/api/indicators?$top={TOP}&$skip={skip}")),
                None => None,
            };
            served.insert(url.clone(), body.to_string().into_bytes());
            match following {
                Some(f) if last => {
                    // The last page was full: Defender answers the `$skip` request with nothing.
                    served.insert(f, json!({"value": []}).to_string().into_bytes());
                }
                Some(f) => url = f,
                None => break,
            }
        }
        h.serve(served);
        expected
    }

    fn new_indicator(value: &str) -> NewIndicator {
        NewIndicator {
            indicator_value: value.into(),
            indicator_type: "FileSha256".into(),
            action: "Block".into(),
            title: "t".into(),
            description: "d".into(),
            application: "defender-operator".into(),
            external_id: "ns/p".into(),
            expiration_time: None,
            severity: "High".into(),
            recommended_actions: None,
            rbac_group_names: vec![],
            generate_alert: true,
        }
    }

    /// Links that leave the allowed origin: another port, lookalike hosts, other schemes.
    fn foreign_link() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["https", "http", "ftp", "wss"]),
            prop_oneof![
                "[a-z]{1,8}\\.(test|invalid|example)",
                Just("127.0.0.1.evil.test".to_string()),
                Just("127.0.0.2".to_string()),
                Just("localhost".to_string()),
                Just("[::1]".to_string()),
            ],
            prop::option::of(1u16..),
        )
            .prop_map(|(scheme, host, port)| match port {
                Some(p) => format!("{scheme}://{host}:{p}/api/indicators?page=2"),
                None => format!("{scheme}://{host}/api/indicators?page=2"),
            })
    }

    #[test]
    fn list_pages_follow_links_and_skip() {
        let h = Harness::start();
        let client = h.client(TOP);
        proptest!(cases(64), |(pages in prop::collection::vec(gen_page(), 1..5), null_link in any::<bool>())| {
            let expected = lay_out(&h, &pages, null_link);
            let got = h.rt.block_on(client.list_indicators(None))
                .map_err(|e| TestCaseError::fail(format!("{e} after {:?}", h.requests())))?;
            prop_assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                e.check(g)?;
            }
        });
    }

    #[test]
    fn list_any_page_body_never_panics() {
        let h = Harness::start();
        let client = h.client(10_000);
        let first = "/api/indicators?$top=10000".to_string();
        proptest!(cases(64), |(body in prop_oneof![
            arb_body(),
            prop::collection::vec(arb_json(), 0..4).prop_map(|items| json!({"value": items}).to_string().into_bytes()),
            (prop::collection::vec(gen_indicator(), 0..3), odd_string()).prop_map(|(items, link)| json!({
                "value": items.iter().map(GenIndicator::to_json).collect::<Vec<_>>(),
                "@odata.nextLink": link,
            }).to_string().into_bytes()),
        ])| {
            h.serve(HashMap::from([(first.clone(), body)]));
            let result = h.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), client.list_indicators(None)).await
            });
            let result = result.map_err(|_| TestCaseError::fail("list_indicators did not end"))?;
            if let Err(e) = result {
                prop_assert!(
                    ["ProtocolError", "DefenderError", "ApiHostNotAllowed"].contains(&e.reason().as_str()),
                    "{}: {}", e.reason(), e
                );
            }
            prop_assert!(h.requests().len() <= 3, "{:?}", h.requests());
        });
    }

    #[test]
    fn next_link_off_the_allow_list_is_never_followed() {
        let h = Harness::start();
        let client = h.client(10_000);
        let first = "/api/indicators?$top=10000".to_string();
        proptest!(cases(64), |(link in foreign_link(), items in prop::collection::vec(gen_indicator(), 0..3))| {
            let body = json!({"value": items.iter().map(GenIndicator::to_json).collect::<Vec<_>>(),
                              "@odata.nextLink": link});
            h.serve(HashMap::from([(first.clone(), body.to_string().into_bytes())]));
            let e = h.rt.block_on(client.list_indicators(None)).unwrap_err();
            prop_assert_eq!(e.reason(), "ApiHostNotAllowed", "{}", e);
            prop_assert_eq!(h.requests(), vec![first.clone()]);
        });
    }

    #[test]
    fn next_link_loop_is_refused() {
        let h = Harness::start();
        let client = h.client(10_000);
        let first = "/api/indicators?$top=10000".to_string();
        proptest!(cases(32), |(len in 1usize..5, back in any::<prop::sample::Index>())| {
            // Page k links to page k+1; the last links back to an earlier one.
            let url = |k: usize| if k == 0 { first.clone() } else { format!("/api/indicators?page={k}") };
            let target = back.index(len);
            let pages = (0..len).map(|k| {
                let next = if k + 1 < len { url(k + 1) } else { url(target) };
                (url(k), json!({"value": [], "@odata.nextLink": next}).to_string().into_bytes())
            }).collect();
            h.serve(pages);
            let e = h.rt.block_on(client.list_indicators(None)).unwrap_err();
            prop_assert_eq!(e.reason(), "ProtocolError");
            prop_assert_eq!(h.requests().len(), len);
        });
    }

    /// Import answers are matched to the input by value (any case, any order); an item Defender
    /// left out is reported failed; the output follows the input.
    #[test]
    fn import_results_matched_by_value() {
        let h = Harness::start();
        let client = h.client(10_000);
        proptest!(cases(64), |(
            values in prop::collection::hash_set("[0-9a-f]{64}", 1..12),
            answered in prop::collection::vec((any::<bool>(), any::<bool>(), any::<bool>(), any::<u32>()), 12),
            order in any::<u64>(),
        )| {
            let values: Vec<String> = values.into_iter().collect();
            let mut results = Vec::new();
            for (v, (present, failed, upper, id)) in values.iter().zip(&answered) {
                if *present {
                    let shown = if *upper { v.to_ascii_uppercase() } else { v.clone() };
                    results.push(if *failed {
                        json!({"id": null, "indicator": shown, "isFailed": true, "failureReason": "no"})
                    } else {
                        json!({"id": id, "indicator": shown, "isFailed": false, "failureReason": null})
                    });
                }
            }
            // Defender does not promise any order.
            let n = results.len();
            if n > 1 {
                let mut seed = order;
                for i in (1..n).rev() {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    results.swap(i, (seed >> 33) as usize % (i + 1));
                }
            }
            *h.stub.import.lock().unwrap() = json!({"value": results}).to_string().into_bytes();
            let input: Vec<NewIndicator> = values.iter().map(|v| new_indicator(v)).collect();
            let out = h.rt.block_on(client.import(&input)).unwrap();
            prop_assert_eq!(out.len(), values.len());
            for ((r, v), (present, failed, _, id)) in out.iter().zip(&values).zip(&answered) {
                prop_assert_eq!(&r.indicator.to_ascii_lowercase(), v);
                prop_assert_eq!(r.is_failed, !*present || *failed);
                prop_assert_eq!(r.id.clone(), (*present && !*failed).then(|| id.to_string()));
            }
        });
    }

    #[test]
    fn import_any_answer_never_panics() {
        let h = Harness::start();
        let client = h.client(10_000);
        proptest!(cases(64), |(body in prop_oneof![
            arb_body(),
            prop::collection::vec(arb_json(), 0..4).prop_map(|items| json!({"value": items}).to_string().into_bytes()),
        ])| {
            *h.stub.import.lock().unwrap() = body;
            let input = vec![new_indicator(&"a".repeat(64)), new_indicator(&"b".repeat(64))];
            match h.rt.block_on(client.import(&input)) {
                Ok(out) => prop_assert_eq!(out.len(), 2),
                Err(e) => prop_assert_eq!(e.reason(), "ProtocolError", "{}", e),
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// ProbeFinding and durations (src/api/finding.rs, src/api/duration.rs)

mod finding {
    use defender_operator::api::finding::{IndicatorKey, InvalidFinding};
    use defender_operator::api::{IndicatorSpec, IndicatorType, ProbeFinding, TestState, duration};

    use super::*;

    const HASH_TYPES: &[(IndicatorType, &[usize])] = &[
        (IndicatorType::FileSha256, &[64]),
        (IndicatorType::FileSha1, &[40]),
        (IndicatorType::FileMd5, &[32]),
        (IndicatorType::CertificateThumbprint, &[40, 64]),
    ];

    const TYPE_NAMES: &[&str] =
        &["FileSha256", "FileSha1", "FileMd5", "CertificateThumbprint", "IpAddress", "DomainName", "Url"];

    fn finding(indicators: Vec<IndicatorSpec>) -> ProbeFinding {
        serde_json::from_value(json!({
            "apiVersion": "detect.dev/v1alpha1", "kind": "ProbeFinding",
            "metadata": {"name": "f", "namespace": "ns"},
            "spec": {"test": {"id": "2b6d3b5a-1a2b-4c3d-8e9f-0a1b2c3d4e5f", "name": "t"}, "code": 101,
                     "indicators": indicators},
        }))
        .unwrap()
    }

    /// Hex of one of the type's lengths, each digit in a random case.
    fn valid_hash() -> impl Strategy<Value = (IndicatorType, String)> {
        // Digits and their case come from two random words (cheaper than a strategy per digit).
        (prop::sample::select(HASH_TYPES), any::<prop::sample::Index>(), any::<[u64; 4]>(), any::<u64>()).prop_map(
            |((type_, lengths), pick, digits, case)| {
                let len = lengths[pick.index(lengths.len())];
                let value = (0..len)
                    .map(|i| {
                        let d = (digits[i / 16] >> (4 * (i % 16))) & 0xf;
                        let c = char::from_digit(d as u32, 16).unwrap();
                        if case >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c }
                    })
                    .collect();
                (type_, value)
            },
        )
    }

    /// A hash value that is wrong for its type: bad length or a character that is not hex.
    fn invalid_hash() -> impl Strategy<Value = (IndicatorType, String)> {
        prop_oneof![
            // Wrong length.
            (prop::sample::select(HASH_TYPES), 0usize..100, "[0-9a-fA-F]{100}")
                .prop_filter_map("length must be wrong", |((type_, lengths), len, hex)| (!lengths.contains(&len))
                    .then(|| (type_, hex[..len].to_string()))),
            // Right length, one character that is not an ASCII hex digit.
            (
                valid_hash(),
                any::<prop::sample::Index>(),
                prop_oneof![
                    Just('g'),
                    Just('G'),
                    Just('z'),
                    Just(' '),
                    Just('-'),
                    Just('é'),
                    Just('ｆ'),
                    Just('٣'),
                    Just('\u{0}'),
                    Just('\u{1F600}'),
                    Just('x')
                ]
            )
                .prop_map(|((type_, value), at, c)| {
                    let mut chars: Vec<char> = value.chars().collect();
                    let i = at.index(chars.len());
                    // Inside the value (an outer space would be trimmed, not refused).
                    let c = if c == ' ' && (i == 0 || i + 1 == chars.len()) { 'g' } else { c };
                    chars[i] = c;
                    (type_, chars.into_iter().collect())
                }),
        ]
    }

    fn spec(type_: IndicatorType, value: String) -> IndicatorSpec {
        IndicatorSpec { type_, value, file: None }
    }

    /// Prelude's exit-code table, written out independently of the code under test.
    fn state_for(code: i32) -> TestState {
        const PROTECTED: [i32; 9] = [9, 15, 100, 105, 106, 107, 126, 127, 137];
        const NOT_RELEVANT: [i32; 3] = [104, 108, 109];
        const ERROR: [i32; 7] = [1, 2, 3, 102, 103, 110, 256];
        if code == 101 {
            TestState::Unprotected
        } else if PROTECTED.contains(&code) {
            TestState::Protected
        } else if NOT_RELEVANT.contains(&code) {
            TestState::NotRelevant
        } else if ERROR.contains(&code) {
            TestState::Error
        } else {
            TestState::None
        }
    }

    fn code() -> impl Strategy<Value = i32> {
        prop_oneof![
            2 => any::<i32>(),
            3 => -2i32..300,
            1 => prop::sample::select(vec![101, 9, 15, 100, 105, 106, 107, 126, 127, 137, 104, 108, 109, 1, 2, 3, 102,
                103, 110, 256, 0, i32::MIN, i32::MAX]),
        ]
    }

    fn state() -> impl Strategy<Value = TestState> {
        prop::sample::select(vec![
            TestState::Protected,
            TestState::Unprotected,
            TestState::Error,
            TestState::NotRelevant,
            TestState::None,
        ])
    }

    /// A finding-shaped object with arbitrary values in the places a probe fills in.
    fn finding_shaped() -> impl Strategy<Value = Value> {
        let indicator = (
            prop_oneof![prop::sample::select(TYPE_NAMES).prop_map(|t| json!(t)), arb_json()],
            prop_oneof![odd_string().prop_map(Value::String), valid_hash().prop_map(|(_, v)| json!(v)), arb_json()],
            prop::option::of(arb_json()),
        )
            .prop_map(|(t, v, f)| {
                let mut i = json!({"type": t, "value": v});
                if let Some(f) = f {
                    i["file"] = f;
                }
                i
            });
        (
            prop_oneof![odd_string().prop_map(Value::String), arb_json()],
            prop::option::of(prop_oneof![
                prop::sample::select(vec!["PROTECTED", "UNPROTECTED", "ERROR", "NOT_RELEVANT", "NONE"])
                    .prop_map(|s| json!(s)),
                arb_json()
            ]),
            prop::option::of(prop_oneof![any::<i64>().prop_map(|n| json!(n)), arb_json()]),
            prop::option::of(prop_oneof![
                Just(json!("2025-01-01T00:00:00Z")),
                odd_string().prop_map(Value::String),
                arb_json()
            ]),
            prop_oneof![
                4 => prop::collection::vec(indicator, 0..6),
                // Around the 64-indicator limit, with cheaper values.
                1 => prop::collection::vec(
                    (prop::sample::select(TYPE_NAMES), valid_hash())
                        .prop_map(|(t, (_, v))| json!({"type": t, "value": v})),
                    60..70
                ),
            ],
            prop::option::of(arb_json()),
        )
            .prop_map(|(name, state, code, observed, indicators, partner)| {
                let mut spec = json!({"test": {"id": "2b6d3b5a-1a2b-4c3d-8e9f-0a1b2c3d4e5f", "name": name},
                                      "indicators": indicators});
                if let Some(s) = state {
                    spec["state"] = s;
                }
                if let Some(c) = code {
                    spec["code"] = c;
                }
                if let Some(o) = observed {
                    spec["observedTime"] = o;
                }
                if let Some(p) = partner {
                    spec["partnerRef"] = json!({"name": p});
                }
                json!({"apiVersion": "detect.dev/v1alpha1", "kind": "ProbeFinding",
                       "metadata": {"name": "f", "namespace": "ns"}, "spec": spec})
            })
    }

    /// Checks what a parsed finding offers; none of it may panic.
    fn exercise(f: &ProbeFinding) -> Result<(), TestCaseError> {
        let _ = f.effective_state();
        let _ = f.observed_time();
        match f.indicator_keys() {
            Ok(keys) => prop_assert!(!keys.is_empty() && keys.len() <= 64),
            Err(e) => prop_assert!(e.to_string().starts_with("spec.indicators"), "{}", e),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(cases(256))]

        /// Any JSON (and any bytes) is a finding or a deserialization error; never a panic.
        #[test]
        fn arbitrary_json_never_panics(v in arb_json(), body in arb_body()) {
            if let Ok(f) = serde_json::from_value::<ProbeFinding>(v) {
                exercise(&f)?;
            }
            if let Ok(f) = serde_json::from_slice::<ProbeFinding>(&body) {
                exercise(&f)?;
            }
        }

        /// Finding-shaped objects with arbitrary values where a probe writes: never a panic.
        #[test]
        fn finding_shaped_never_panics(v in finding_shaped()) {
            if let Ok(f) = serde_json::from_value::<ProbeFinding>(v) {
                exercise(&f)?;
            }
        }

        /// Valid hashes of any case (and padded with spaces) are accepted, lower-cased and
        /// deduplicated.
        #[test]
        fn valid_hashes_are_canonical(
            hashes in prop::collection::vec((valid_hash(), "[ \t]{0,2}", "[ \t]{0,2}"), 1..=64),
        ) {
            let specs = hashes.iter().map(|((t, v), a, b)| spec(*t, format!("{a}{v}{b}"))).collect();
            let keys = finding(specs).indicator_keys().unwrap();
            let mut expected: Vec<IndicatorKey> =
                hashes.iter().map(|((t, v), _, _)| IndicatorKey { type_: *t, value: v.to_ascii_lowercase() }).collect();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(keys, expected);
        }

        /// One wrong hash among valid ones is refused, with an error naming its index.
        #[test]
        fn invalid_hash_names_its_index(
            valid in prop::collection::vec(valid_hash(), 0..63),
            bad in invalid_hash(),
            at in any::<prop::sample::Index>(),
        ) {
            let i = at.index(valid.len() + 1);
            let mut specs: Vec<IndicatorSpec> = valid.into_iter().map(|(t, v)| spec(t, v)).collect();
            specs.insert(i, spec(bad.0, bad.1.clone()));
            let err = finding(specs).indicator_keys().unwrap_err();
            prop_assert!(matches!(err, InvalidFinding::Indicator { index, .. } if index == i), "{:?}", err);
            let text = err.to_string();
            let prefix = format!("spec.indicators[{i}].value: ");
            prop_assert!(text.starts_with(&prefix), "{}", text);
            prop_assert!(text.contains(bad.0.as_str()), "{}", text);
        }

        /// No indicators, or more than 64, is refused as a whole.
        #[test]
        fn indicator_count_is_bounded(n in prop_oneof![Just(0usize), 65usize..100]) {
            let specs = vec![spec(IndicatorType::FileMd5, "0".repeat(32)); n];
            let err = finding(specs).indicator_keys().unwrap_err();
            prop_assert!(matches!(err, InvalidFinding::Indicators(_)), "{:?}", err);
            prop_assert!(err.to_string().starts_with("spec.indicators: "), "{}", err);
        }

        /// IP addresses are kept as given; domain names are lower-cased; http(s) URLs are kept.
        #[test]
        fn other_types(
            ip in prop_oneof![any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
                              any::<std::net::Ipv6Addr>().prop_map(|a| a.to_string())],
            labels in prop::collection::vec("[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?", 2..5),
            url in "https?://[a-z]{1,10}\\.test(/[A-Za-z0-9_~-]{0,10}){0,3}",
        ) {
            let domain = labels.join(".");
            let keys = finding(vec![
                spec(IndicatorType::IpAddress, ip.clone()),
                spec(IndicatorType::DomainName, domain.clone()),
                spec(IndicatorType::Url, url.clone()),
            ]).indicator_keys().unwrap();
            let ip = IndicatorKey { type_: IndicatorType::IpAddress, value: ip };
            prop_assert!(keys.contains(&ip), "{:?}", keys);
            let lower = domain.to_ascii_lowercase();
            prop_assert!(keys.contains(&IndicatorKey { type_: IndicatorType::DomainName, value: lower }), "{:?}", keys);
            prop_assert!(keys.contains(&IndicatorKey { type_: IndicatorType::Url, value: url.clone() }), "{:?}", keys);
        }

        /// Without `state`, the state follows the exit-code table for every `i32`; `state`, when
        /// given, wins over any code.
        #[test]
        fn effective_state_follows_the_table(code in code(), given in prop::option::of(state())) {
            let mut f = finding(vec![spec(IndicatorType::FileMd5, "0".repeat(32))]);
            f.spec.code = Some(code);
            f.spec.state = given;
            prop_assert_eq!(TestState::from_code(code), state_for(code));
            prop_assert_eq!(f.effective_state(), given.unwrap_or(state_for(code)));
            f.spec.code = None;
            prop_assert_eq!(f.effective_state(), given.unwrap_or(TestState::None));
        }

        /// What the schema admits (within a sane range: up to 10^6 per part) parses, to the sum
        /// of its parts.
        #[test]
        fn duration_pattern_admits_parse(
            parts in prop::collection::vec((0u64..1_000_000, prop::option::of(0u32..1000),
                prop::sample::select(vec!["ms", "s", "m", "h"])), 1..5),
        ) {
            let text: String = parts.iter().map(|(n, f, u)| match f {
                Some(f) => format!("{n}.{f:03}{u}"),
                None => format!("{n}{u}"),
            }).collect();
            prop_assert!(regex::Regex::new(duration::PATTERN).unwrap().is_match(&text));
            let want: f64 = parts.iter().map(|(n, f, u)| {
                let v = *n as f64 + f.unwrap_or(0) as f64 / 1000.0;
                v * match *u { "ms" => 0.001, "s" => 1.0, "m" => 60.0, _ => 3600.0 }
            }).sum();
            let got = duration::parse(&text).unwrap();
            prop_assert!((got.as_secs_f64() - want).abs() <= want * 1e-9 + 1e-6, "{}: {:?} vs {}", text, got, want);
        }

        /// Whatever the parser accepts, the schema admits once the value is trimmed and its
        /// numbers are written out in full (`.5` → `0.5`, `1.` → `1`): the parser is only more
        /// lenient than the schema in those two ways, and the schema rejects first.
        #[test]
        fn duration_parse_within_pattern(text in prop_oneof![
            "[0-9.]{0,4}(ms|s|m|h|d|us|)[0-9.]{0,3}(ms|s|m|h|)",
            " ?[0-9]{1,3}(\\.[0-9]{0,2})?(ms|s|m|h) ?",
            "[ -~]{0,10}",
        ]) {
            let pattern = regex::Regex::new(duration::PATTERN).unwrap();
            if duration::parse(&text).is_ok() {
                let normalized = regex::Regex::new(r"(^|[a-z])\.").unwrap().replace_all(text.trim(), "${1}0.");
                let normalized = regex::Regex::new(r"\.([a-z])").unwrap().replace_all(&normalized, "$1");
                prop_assert!(pattern.is_match(&normalized), "{:?} parsed but {:?} is not admitted", text, normalized);
            } else {
                prop_assert!(!pattern.is_match(&text), "{:?} is admitted but does not parse", text);
            }
        }
    }

    /// The exit-code table around every listed code, exhaustively (the property above samples
    /// the whole `i32` range).
    #[test]
    fn exit_code_table_exhaustive_window() {
        for code in (-70_000..=70_000).chain([i32::MIN, i32::MIN + 1, i32::MAX - 1, i32::MAX]) {
            assert_eq!(TestState::from_code(code), state_for(code), "{code}");
        }
    }

    proptest! {
        #![proptest_config(cases(256))]

        /// `duration::parse` never panics.
        #[test]
        fn duration_parse_never_panics(text in prop_oneof![
            any::<String>(),
            "[0-9]{15,40}(\\.[0-9]{1,3})?(ms|s|m|h)",
        ]) {
            let _ = duration::parse(&text);
        }

        /// The parser accepts exactly what the schema pattern admits.
        #[test]
        fn duration_parse_agrees_with_pattern(text in "[ ]?[0-9.]{1,4}(ms|s|m|h)[ ]?") {
            let pattern = regex::Regex::new(duration::PATTERN).unwrap();
            prop_assert_eq!(duration::parse(&text).is_ok(), pattern.is_match(&text), "{:?}", text);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// API host allow-list (src/defender/allowlist.rs)

mod allowlist {
    use defender_operator::defender::allowlist::BUILTIN_API_HOSTS;
    use defender_operator::defender::cloud::LOGIN_HOSTS;
    use defender_operator::defender::{AllowList, HostPolicy};
    use url::Url;

    use super::*;

    /// Ways to glue an attacker's text to a Microsoft host.
    const GLUE: &[&str] =
        &["", ".", "-", "_", "%2e", "%2E", "\u{3002}", "\u{ff0e}", "@", ":443@", "#@", "?@", "\\@", "/", "..", ":"];

    fn builtin() -> impl Strategy<Value = &'static str> {
        prop::sample::select(BUILTIN_API_HOSTS)
    }

    fn evil() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9-]{1,12}(\\.[a-z]{2,6})?",
            Just("evil.test".to_string()),
            Just("evil".to_string()),
            Just("com".to_string()),
            Just("127.0.0.1".to_string()),
        ]
    }

    /// The security property: the default list allows a URL only if the token would go to one of
    /// Microsoft's hosts exactly, over https on port 443, with no credentials in the URL.
    fn check_default(url: &Url) -> Result<(), TestCaseError> {
        let allowed = AllowList::default().allows(url);
        let exact = url.scheme() == "https"
            && url.port_or_known_default() == Some(443)
            && url.username().is_empty()
            && url.password().is_none()
            && url.host_str().is_some_and(|h| BUILTIN_API_HOSTS.contains(&h));
        prop_assert_eq!(allowed, exact, "{}", url);
        Ok(())
    }

    /// Raw allow-list entries: mostly entry-shaped, sometimes anything.
    fn entry() -> impl Strategy<Value = String> {
        prop_oneof![
            (
                prop::sample::select(vec!["https", "http", "HTTP", "ftp", "", "*"]),
                prop::sample::select(vec!["://", ":/", "//", ""]),
                prop_oneof![
                    "(\\*\\.)?[a-z0-9-]{0,10}(\\.[a-z0-9-]{0,10}){0,3}",
                    Just("[::1]".to_string()),
                    Just("[::1".to_string()),
                    Just("[zz]".to_string()),
                    odd_string(),
                ],
                prop::option::of(prop_oneof![
                    "[0-9]{1,6}".prop_map(|p| p.to_string()),
                    Just("*".to_string()),
                    odd_string()
                ]),
                prop::sample::select(vec!["", "/", "/api", "?x", " "]),
            )
                .prop_map(|(s, sep, h, p, tail)| match p {
                    Some(p) => format!("{s}{sep}{h}:{p}{tail}"),
                    None => format!("{s}{sep}{h}{tail}"),
                }),
            any::<String>(),
        ]
    }

    fn any_url() -> impl Strategy<Value = Url> {
        prop_oneof![
            any::<String>(),
            "[a-z]{2,5}://[ -~]{0,30}",
            (builtin(), prop::sample::select(GLUE), evil(), any::<bool>()).prop_map(|(h, g, e, first)| if first {
                format!("https://{h}{g}{e}/api")
            } else {
                format!("https://{e}{g}{h}/api")
            }),
        ]
        .prop_filter_map("a URL", |s| Url::parse(&s).ok())
    }

    proptest! {
        #![proptest_config(cases(256))]

        /// A host that merely starts or ends with a Microsoft host, joined by any glue, is never
        /// allowed by the defaults; the URL is allowed only when its real host is exactly one.
        #[test]
        fn lookalikes_refused(
            host in builtin(), glue in prop::sample::select(GLUE), evil in evil(), evil_first in any::<bool>(),
            scheme in prop::sample::select(vec!["https", "http", "HTTPS", "wss"]),
            port in prop::option::of(prop::sample::select(vec![443u16, 80, 8443, 444])),
            upper in any::<bool>(),
        ) {
            let host = if upper { host.to_ascii_uppercase() } else { host.to_string() };
            let joined = if evil_first { format!("{evil}{glue}{host}") } else { format!("{host}{glue}{evil}") };
            let authority = match port { Some(p) => format!("{joined}:{p}"), None => joined };
            if let Ok(url) = Url::parse(&format!("{scheme}://{authority}/api/indicators")) {
                check_default(&url)?;
                // The plain-text form: a host that starts or ends with a Microsoft host is refused.
                if let Some(h) = url.host_str()
                    && !BUILTIN_API_HOSTS.contains(&h)
                {
                    prop_assert!(!AllowList::default().allows(&url), "{}", url);
                }
            }
        }

        /// Any URL: the defaults follow the security property; nothing panics.
        #[test]
        fn defaults_on_any_url(url in any_url()) {
            check_default(&url)?;
        }

        /// Any allow-list entries parse or are refused as configuration errors, and a list that
        /// parsed answers for any URL without panicking; the built-ins are always allowed and a
        /// Microsoft-lookalike is allowed only if an entry names it.
        #[test]
        fn entries_never_panic(
            entries in prop::collection::vec(entry(), 0..4),
            urls in prop::collection::vec(any_url(), 1..4),
        ) {
            let joined = entries.join(",");
            let _ = AllowList::parse(&joined);
            let _ = HostPolicy::from_parts(&entries, entries.first().map(String::as_str));
            match AllowList::new(&entries) {
                Ok(list) => {
                    for url in &urls {
                        let _ = list.allows(url);
                    }
                    let _ = list.extra_entries();
                    for host in BUILTIN_API_HOSTS {
                        prop_assert!(list.allows(&Url::parse(&format!("https://{host}/api")).unwrap()), "{}", host);
                    }
                }
                Err(e) => prop_assert_eq!(e.reason(), "ConfigError"),
            }
        }

        /// `*.suffix` allows `label.suffix` and nothing that merely ends with `suffix`.
        #[test]
        fn wildcard_needs_a_dot(
            suffix in "[a-z0-9]{1,8}\\.[a-z]{2,6}",
            label in "[a-z0-9]{1,8}",
            port in prop::option::of(1u16..),
        ) {
            let entry = match port {
                Some(p) => format!("https://*.{suffix}:{p}"),
                None => format!("https://*.{suffix}"),
            };
            let list = AllowList::new(&[entry]).unwrap();
            let at = |host: &str| {
                let p = port.unwrap_or(443);
                Url::parse(&format!("https://{host}:{p}/api")).unwrap()
            };
            prop_assert!(list.allows(&at(&format!("{label}.{suffix}"))), "{} {} {:?}", label, suffix, port);
            prop_assert!(list.allows(&at(&format!("{label}.{label}.{suffix}"))), "{} {} {:?}", label, suffix, port);
            prop_assert!(!list.allows(&at(&suffix)), "{} {} {:?}", label, suffix, port);
            prop_assert!(!list.allows(&at(&format!("{label}{suffix}"))), "{} {} {:?}", label, suffix, port);
            prop_assert!(!list.allows(&at(&format!("{label}.{suffix}.x{label}"))), "{} {} {:?}", label, suffix, port);
            prop_assert!(!list.allows(&at(&format!("{label}.{suffix}.evil.test"))), "{} {} {:?}", label, suffix, port);
            let other_port = port.unwrap_or(443).wrapping_add(1).max(1);
            let elsewhere = Url::parse(&format!("https://{label}.{suffix}:{other_port}/")).unwrap();
            prop_assert!(!list.allows(&elsewhere), "{}", elsewhere);
            let plain = Url::parse(&format!("http://{label}.{suffix}:{}/", port.unwrap_or(443))).unwrap();
            prop_assert!(!list.allows(&plain), "{}", plain);
        }

        /// The client secret goes only to Microsoft's login hosts exactly, or the override.
        #[test]
        fn login_lookalikes_refused(
            host in prop::sample::select(LOGIN_HOSTS.to_vec()), glue in prop::sample::select(GLUE), evil in evil(),
            evil_first in any::<bool>(),
        ) {
            let joined = if evil_first { format!("{evil}{glue}{host}") } else { format!("{host}{glue}{evil}") };
            if let Ok(url) = Url::parse(&format!("https://{joined}/t/oauth2/v2.0/token")) {
                let exact = url.host_str().is_some_and(|h| LOGIN_HOSTS.contains(&h))
                    && url.username().is_empty()
                    && url.password().is_none()
                    && url.port_or_known_default() == Some(443);
                prop_assert_eq!(HostPolicy::default().allows_authority(&url), exact, "{}", url);
            }
        }
    }
}
