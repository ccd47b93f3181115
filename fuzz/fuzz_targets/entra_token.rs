//! Entra token endpoint answers: the 200 body (`parse_token_response`) and the refusal body
//! (`classify_token_error`), which must never show the client secret.
#![no_main]

use std::time::Duration;

use defender_operator::defender::token::{classify_token_error, parse_token_response};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "Fz8Q~fuzz.secret_value-0123456789abcdef";

/// Replaces every `$S` with the secret, so the fuzzer can make Entra echo it anywhere.
fn echo_secret(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(b"$S") {
            out.extend_from_slice(SECRET.as_bytes());
            i += 2;
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(issued) = parse_token_response(data) {
        let _ = format!("{issued:?}");
    }

    let (status, body) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => (400, data),
    };
    let body = echo_secret(body);
    let e = classify_token_error(status, &body, Some(Duration::from_secs(1)), SECRET);
    let _ = (e.reason(), e.is_transient(), e.retry_after());
    if status == 429 {
        assert_eq!(e.reason(), "Throttled");
    }
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(SECRET), "the client secret leaked: {shown}");
});
