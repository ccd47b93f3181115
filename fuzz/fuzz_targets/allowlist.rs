//! The API host allow-list: entries (`--api-allowlist`) and the URLs checked against them.
//! Input: allow-list entries, a newline, a URL.
#![no_main]

use defender_operator::defender::allowlist::BUILTIN_API_HOSTS;
use defender_operator::defender::{AllowList, HostPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (entries, url) = text.split_once('\n').unwrap_or(("", text));
    let list = AllowList::parse(entries);
    let _ = HostPolicy::from_parts(&[entries.to_string()], Some(url));
    let Ok(url) = url::Url::parse(url) else { return };
    // The defaults send the token only to a Microsoft host exactly, over https on 443, with no
    // credentials in the URL.
    if AllowList::default().allows(&url) {
        assert_eq!(url.scheme(), "https");
        assert_eq!(url.port_or_known_default(), Some(443));
        assert!(url.username().is_empty() && url.password().is_none());
        assert!(url.host_str().is_some_and(|h| BUILTIN_API_HOSTS.contains(&h)), "{url}");
    }
    if let Ok(list) = list {
        let _ = list.allows(&url);
        let _ = list.extra_entries();
    }
    let _ = HostPolicy::default().allows_authority(&url);
});
