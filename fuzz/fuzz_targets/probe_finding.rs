//! `ProbeFinding` objects as a probe (or anyone with create rights) writes them, the exit-code
//! table and Go-style durations.
#![no_main]

use defender_operator::api::{ProbeFinding, TestState, duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(finding) = serde_json::from_slice::<ProbeFinding>(data) {
        let _ = finding.effective_state();
        let _ = finding.observed_time();
        match finding.indicator_keys() {
            Ok(keys) => assert!(!keys.is_empty() && keys.len() <= 64),
            Err(e) => assert!(e.to_string().starts_with("spec.indicators")),
        }
    }
    if let [a, b, c, d, ..] = data {
        let _ = TestState::from_code(i32::from_le_bytes([*a, *b, *c, *d]));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = duration::parse(text);
    }
});
