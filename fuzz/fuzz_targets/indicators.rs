//! Defender list pages, indicators, import results and `Retry-After`.
//!
//! The page envelope type is private to `defender::client`; this target reads the envelope the
//! way `list_indicators` does (`value` items as `Indicator`, `@odata.nextLink` resolved against
//! the page and checked against the allow-list), with the crate's public types.
#![no_main]

use defender_operator::defender::client::parse_retry_after;
use defender_operator::defender::{AllowList, ImportResult, Indicator};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Some(items) = page.get("value").and_then(|v| v.as_array()) {
            for item in items {
                if let Ok(indicator) = serde_json::from_value::<Indicator>(item.clone()) {
                    let _ = indicator.is_expired(jiff::Timestamp::now());
                }
                let _ = serde_json::from_value::<ImportResult>(item.clone());
            }
        }
        if let Some(link) = page.get("@odata.nextLink").and_then(|l| l.as_str()) {
            let base = url::Url::parse("https://api.securitycenter.microsoft.com/api/indicators?$top=1").unwrap();
            if let Ok(next) = url::Url::options().base_url(Some(&base)).parse(link.trim()) {
                let _ = AllowList::default().allows(&next);
            }
        }
    }
    let _ = serde_json::from_slice::<Indicator>(data);
    let _ = serde_json::from_slice::<ImportResult>(data);

    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, value);
        if let Some(wait) = parse_retry_after(&headers) {
            assert!(wait <= std::time::Duration::from_secs(3600));
        }
    }
});
