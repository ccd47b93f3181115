//! Defender error answers (`{"error":{code,message,target}}`, plain text, HTML, nothing):
//! the first two bytes are the HTTP status, the rest the body.
#![no_main]

use defender_operator::defender::DefenderError;
use defender_operator::fuzzing::defender_api_error;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => (400, data),
    };
    let e = defender_api_error(status, body);
    let DefenderError::Api { status: s, code, message, .. } = &e else { panic!("not an Api error: {e:?}") };
    assert_eq!(*s, status);
    assert!(!code.is_empty());
    assert!(!message.contains('\n'));
    assert!(message.chars().count() <= 301);
    assert_eq!(e.is_transient(), matches!(status, 408 | 429 | 500..=599));
    let _ = (e.reason(), e.to_string(), format!("{e:?}"));
});
