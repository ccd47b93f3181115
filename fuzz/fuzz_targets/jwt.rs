//! JWT payloads (`jwt::decode`): any string, and any bytes as the payload segment.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use defender_operator::defender::jwt::{decode, encode_unsigned};
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "unexpected response from Defender: the access token is not a readable JWT: ";
const WHY: [&str; 4] = [
    "expected header.payload.signature",
    "payload is not base64url",
    "payload is not JSON",
    "payload is not a JSON object",
];

fn check(token: &str) {
    match decode(token) {
        Ok(claims) => {
            assert_eq!(claims.audience.as_ref(), claims.audiences.first());
            let _ = claims.has_role("Ti.ReadWrite.All");
        }
        Err(e) => {
            // A fixed text that says what is wrong, never the token.
            assert_eq!(e.reason(), "ProtocolError");
            let message = e.to_string();
            let why = message.strip_prefix(PREFIX).unwrap_or_else(|| panic!("unexpected error: {message}"));
            assert!(WHY.contains(&why), "unexpected error: {message}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    check(&format!("eyJhbGciOiJub25lIn0.{}.sig", URL_SAFE_NO_PAD.encode(data)));
    // Any JSON object survives encode → decode.
    if let Ok(value @ serde_json::Value::Object(_)) = serde_json::from_slice::<serde_json::Value>(data) {
        decode(&encode_unsigned(&value)).expect("an encoded JSON object decodes");
    }
});
