//! Where the bearer token may go: Microsoft's documented Defender hosts, plus `--api-allowlist`.
//!
//! Built-in entries are https on port 443 only (the commercial, regional and government hosts
//! Microsoft documents for the Defender API). Extra
//! entries come from the operator (`--api-allowlist`, env `DEFENDER_API_ALLOWLIST`), never from a
//! namespace user: `http://127.0.0.1:*`, `https://*.example.com`, `https://host:8443`. Scheme,
//! host and port must all match; plain http is allowed only by an entry that says `http://`.

use url::Url;

use super::DefenderError;
use super::cloud::LOGIN_HOSTS;

/// Env var holding extra allow-list entries (comma-separated).
pub const ALLOWLIST_ENV: &str = "DEFENDER_API_ALLOWLIST";
/// Env var overriding the login authority (e.g. an emulator's base URL).
pub const AUTHORITY_ENV: &str = "DEFENDER_AUTHORITY_URL";

/// Microsoft's documented Defender for Endpoint API hosts (https, port 443).
pub const BUILTIN_API_HOSTS: &[&str] = &[
    // Commercial (§5.1)
    "api.security.microsoft.com",
    "api.securitycenter.microsoft.com",
    "us.api.security.microsoft.com",
    "eu.api.security.microsoft.com",
    "uk.api.security.microsoft.com",
    "au.api.security.microsoft.com",
    "swa.api.security.microsoft.com",
    "ina.api.security.microsoft.com",
    "api-us.securitycenter.microsoft.com",
    "api-eu.securitycenter.microsoft.com",
    "api-uk.securitycenter.microsoft.com",
    "api-au.securitycenter.microsoft.com",
    "api-us.security.microsoft.com",
    "api-eu.security.microsoft.com",
    "api-uk.security.microsoft.com",
    "api.securitycenter.windows.com",
    // US Government (§5.2)
    "api-gcc.securitycenter.microsoft.us",
    "api-gov.securitycenter.microsoft.us",
    "api-gcc.security.microsoft.us",
    "api-gov.security.microsoft.us",
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.suffix`: any host ending in `.suffix` (not `suffix` itself).
    Subdomain(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    scheme: String,
    host: HostPattern,
    /// `None` = any port (`:*`).
    port: Option<u16>,
}

impl Entry {
    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        if self.scheme != scheme || self.port.is_some_and(|p| p != port) {
            return false;
        }
        match &self.host {
            HostPattern::Exact(h) => h == host,
            HostPattern::Subdomain(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }

    fn parse(raw: &str) -> Result<Entry, DefenderError> {
        let bad = |why: &str| DefenderError::Config(format!("invalid API allow-list entry {raw:?}: {why}"));
        let entry = raw.trim();
        let (scheme, rest) = entry.split_once("://").ok_or_else(|| bad("expected scheme://host[:port]"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return Err(bad("the scheme must be http or https"));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(bad("missing host"));
        }
        if rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(bad("only scheme, host and port are allowed"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(|| bad("unclosed IPv6 bracket"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("garbage after IPv6 address"))?),
            };
            let ip: std::net::Ipv6Addr = addr.parse().map_err(|_| bad("invalid IPv6 address"))?;
            (format!("[{ip}]"), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                None => (rest.to_ascii_lowercase(), None),
            }
        };
        let port = match port {
            None => Some(if scheme == "https" { 443 } else { 80 }),
            Some("*") => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad("invalid port"))?),
        };
        let host = if let Some(suffix) = host.strip_prefix("*.") {
            if !valid_dns(suffix) || !suffix.contains('.') {
                return Err(bad("a wildcard needs a domain with at least two labels, e.g. *.example.com"));
            }
            HostPattern::Subdomain(suffix.to_string())
        } else if host.starts_with('[') || valid_dns(&host) {
            HostPattern::Exact(host)
        } else {
            return Err(bad("invalid host (wildcards only as a leading `*.`)"));
        };
        Ok(Entry { scheme, host, port })
    }
}

fn valid_dns(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

#[derive(Clone, Debug, Default)]
pub struct AllowList {
    /// Operator-supplied entries; the built-in Microsoft hosts are always allowed besides these.
    extra: Vec<Entry>,
}

impl AllowList {
    /// Built-in Microsoft hosts plus `extra` entries such as `http://127.0.0.1:*` or
    /// `https://*.example.com` (plain http only when listed explicitly). Empty entries are ignored.
    pub fn new(extra: &[String]) -> Result<Self, super::DefenderError> {
        // Each item may itself be a comma-separated list (an env value passed through unsplit).
        let extra = extra.iter().flat_map(|e| split_list(e)).map(|e| Entry::parse(&e)).collect::<Result<_, _>>()?;
        Ok(AllowList { extra })
    }

    /// Parses a comma-separated list (the `--api-allowlist` flag / `DEFENDER_API_ALLOWLIST` value).
    pub fn parse(list: &str) -> Result<Self, DefenderError> {
        Self::new(&split_list(list))
    }

    /// From `DEFENDER_API_ALLOWLIST` (built-ins only when unset).
    pub fn from_env() -> Result<Self, DefenderError> {
        match std::env::var(ALLOWLIST_ENV) {
            Ok(v) => Self::parse(&v),
            Err(_) => Ok(Self::default()),
        }
    }

    pub fn allows(&self, url: &Url) -> bool {
        let scheme = url.scheme();
        if scheme != "https" && scheme != "http" {
            return false;
        }
        // Credentials in the URL would go to whoever the host is; never send a token along.
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        if scheme == "https" && port == 443 && BUILTIN_API_HOSTS.contains(&host.as_str()) {
            return true;
        }
        self.extra.iter().any(|e| e.matches(scheme, &host, port))
    }

    /// The operator-supplied entries, normalized (for logs).
    pub fn extra_entries(&self) -> Vec<String> {
        self.extra
            .iter()
            .map(|e| {
                let host = match &e.host {
                    HostPattern::Exact(h) => h.clone(),
                    HostPattern::Subdomain(s) => format!("*.{s}"),
                };
                match e.port {
                    Some(p) => format!("{}://{host}:{p}", e.scheme),
                    None => format!("{}://{host}:*", e.scheme),
                }
            })
            .collect()
    }
}

/// Splits a comma-separated flag/env value into trimmed, non-empty entries.
pub fn split_list(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Parses an authority override (`--authority-url`): an absolute http(s) URL without query,
/// fragment or credentials. Its path (if any) is kept as a prefix before `/{tenant}/oauth2/...`.
pub fn parse_authority(raw: &str) -> Result<Url, DefenderError> {
    let bad = |why: &str| DefenderError::Config(format!("invalid authority URL {raw:?}: {why}"));
    let url = Url::parse(raw.trim()).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none() {
        return Err(bad("missing host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(bad("only scheme, host, port and path are allowed"));
    }
    Ok(url)
}

/// Operator-level host policy: never a field a namespace user can set.
#[derive(Clone, Debug, Default)]
pub struct HostPolicy {
    pub allowlist: AllowList,
    /// Replaces the cloud's login host (for emulators).
    pub authority_override: Option<Url>,
}

impl HostPolicy {
    /// From the flag values (`--api-allowlist` entries, `--authority-url`).
    pub fn from_parts(allowlist: &[String], authority: Option<&str>) -> Result<Self, DefenderError> {
        let allowlist = AllowList::new(allowlist)?;
        let authority_override = authority.filter(|a| !a.trim().is_empty()).map(parse_authority).transpose()?;
        Ok(HostPolicy { allowlist, authority_override })
    }

    /// From `DEFENDER_API_ALLOWLIST` and `DEFENDER_AUTHORITY_URL`.
    pub fn from_env() -> Result<Self, DefenderError> {
        let list = std::env::var(ALLOWLIST_ENV).unwrap_or_default();
        let authority = std::env::var(AUTHORITY_ENV).ok();
        Self::from_parts(&[list], authority.as_deref())
    }

    /// The login authority for `cloud_login` (e.g. `https://login.microsoftonline.com`), or the override.
    pub fn authority(&self, cloud_login: &str) -> Result<Url, DefenderError> {
        match &self.authority_override {
            Some(u) => Ok(u.clone()),
            None => Url::parse(cloud_login).map_err(|e| DefenderError::Config(format!("bad login URL: {e}"))),
        }
    }

    /// Whether the client secret may be sent to `url`: Microsoft's login hosts (https, 443), or
    /// the operator's authority override (same scheme, host and port).
    pub fn allows_authority(&self, url: &Url) -> bool {
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        if let Some(o) = &self.authority_override
            && o.scheme() == url.scheme()
            && o.host_str().map(str::to_ascii_lowercase) == url.host_str().map(str::to_ascii_lowercase)
            && o.port_or_known_default() == url.port_or_known_default()
        {
            return true;
        }
        url.scheme() == "https"
            && url.port_or_known_default() == Some(443)
            && url.host_str().is_some_and(|h| LOGIN_HOSTS.iter().any(|l| l.eq_ignore_ascii_case(h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn builtins_https_443_only() {
        let a = AllowList::default();
        for host in BUILTIN_API_HOSTS {
            assert!(a.allows(&u(&format!("https://{host}/api/indicators"))), "{host}");
            assert!(a.allows(&u(&format!("https://{host}:443/api/indicators"))), "{host}");
            assert!(!a.allows(&u(&format!("http://{host}/api/indicators"))), "{host}");
            assert!(!a.allows(&u(&format!("https://{host}:8443/api"))), "{host}");
        }
        assert!(a.allows(&u("https://API.SecurityCenter.Microsoft.com/api")));
        assert!(a.allows(&u("https://api-gcc.securitycenter.microsoft.us/api")));
        assert!(a.allows(&u("https://eu.api.security.microsoft.com/api")));
    }

    #[test]
    fn lookalikes_refused() {
        let a = AllowList::default();
        assert!(!a.allows(&u("https://api.securitycenter.microsoft.com.evil.com/api")));
        assert!(!a.allows(&u("https://api.securitycenter.microsoft.com.")));
        assert!(!a.allows(&u("https://evil-api.securitycenter.microsoft.com/api")));
        assert!(!a.allows(&u("https://api.securitycenter.microsoft.com@evil.com/api")));
        assert!(!a.allows(&u("https://user:pw@api.securitycenter.microsoft.com/api")));
        assert!(!a.allows(&u("https://evil.example.com/api")));
        assert!(!a.allows(&u("https://login.microsoftonline.com/x")));
        assert!(!a.allows(&u("ftp://api.securitycenter.microsoft.com/")));
        assert!(!a.allows(&u("http://127.0.0.1:8080/")));
    }

    #[test]
    fn wildcard_port() {
        let a = AllowList::new(&["http://127.0.0.1:*".into()]).unwrap();
        assert!(a.allows(&u("http://127.0.0.1:8080/api")));
        assert!(a.allows(&u("http://127.0.0.1:1/api")));
        assert!(a.allows(&u("http://127.0.0.1/api")));
        assert!(!a.allows(&u("https://127.0.0.1:8080/api")), "scheme must match");
        assert!(!a.allows(&u("http://localhost:8080/api")));
        assert!(!a.allows(&u("http://127.0.0.2:8080/api")));
        assert!(a.allows(&u("https://api.securitycenter.microsoft.com/api")), "built-ins stay");
    }

    #[test]
    fn wildcard_subdomain_and_explicit_port() {
        let a = AllowList::new(&["https://*.example.com".into(), "https://host.test:8443".into()]).unwrap();
        assert!(a.allows(&u("https://a.example.com/x")));
        assert!(a.allows(&u("https://a.b.example.com/x")));
        assert!(!a.allows(&u("https://example.com/x")));
        assert!(!a.allows(&u("https://badexample.com/x")));
        assert!(!a.allows(&u("https://a.example.com.evil.com/x")));
        assert!(!a.allows(&u("http://a.example.com/x")), "https entry does not allow http");
        assert!(!a.allows(&u("https://a.example.com:8443/x")), "default port 443 only");
        assert!(a.allows(&u("https://host.test:8443/")));
        assert!(!a.allows(&u("https://host.test/")));
        assert!(!a.allows(&u("http://host.test:8443/")));
    }

    #[test]
    fn http_only_when_explicit() {
        let a = AllowList::new(&["http://emulator.local".into()]).unwrap();
        assert!(a.allows(&u("http://emulator.local/api")));
        assert!(!a.allows(&u("http://emulator.local:8080/api")));
        let b = AllowList::new(&["emulator.local".into()]);
        assert!(b.is_err(), "an entry without a scheme is refused rather than guessed");
    }

    #[test]
    fn ipv6_and_bad_entries() {
        let a = AllowList::new(&["http://[::1]:*".into()]).unwrap();
        assert!(a.allows(&u("http://[::1]:9000/api")));
        for bad in
            ["*://x.com", "https://*", "https://*.com", "https://a.*.com", "https://x.com/path", "https://x:port"]
        {
            assert!(AllowList::new(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(AllowList::new(&["ftp://x.com".into()]).is_err());
    }

    #[test]
    fn parse_lists() {
        assert_eq!(
            split_list(" http://127.0.0.1:* , https://*.example.com,,"),
            vec!["http://127.0.0.1:*".to_string(), "https://*.example.com".to_string()]
        );
        let a = AllowList::parse("http://127.0.0.1:*,https://*.example.com").unwrap();
        assert_eq!(a.extra_entries(), vec!["http://127.0.0.1:*", "https://*.example.com:443"]);
        assert!(AllowList::parse("").unwrap().extra_entries().is_empty());
        let joined = AllowList::new(&["http://127.0.0.1:*, https://h.test:8443".into(), " ".into()]).unwrap();
        assert_eq!(joined.extra_entries(), vec!["http://127.0.0.1:*", "https://h.test:8443"]);
        let p = HostPolicy::from_parts(&["http://127.0.0.1:*,https://x.test:8443".into()], Some("http://127.0.0.1:9/"))
            .unwrap();
        assert_eq!(p.allowlist.extra_entries().len(), 2);
        assert_eq!(p.authority_override.unwrap().as_str(), "http://127.0.0.1:9/");
        assert!(HostPolicy::from_parts(&[], Some("not a url")).is_err());
        assert!(HostPolicy::from_parts(&[], Some("http://x/?q=1")).is_err());
        assert!(HostPolicy::from_parts(&[], Some("")).unwrap().authority_override.is_none());
    }

    #[test]
    fn authority() {
        let p = HostPolicy::default();
        assert_eq!(
            p.authority("https://login.microsoftonline.us").unwrap().as_str(),
            "https://login.microsoftonline.us/"
        );
        assert!(p.allows_authority(&u("https://login.microsoftonline.com/t/oauth2/v2.0/token")));
        assert!(p.allows_authority(&u("https://login.microsoftonline.us/t/oauth2/v2.0/token")));
        assert!(!p.allows_authority(&u("http://login.microsoftonline.com/t")));
        assert!(!p.allows_authority(&u("https://login.microsoftonline.com.evil.com/t")));
        assert!(!p.allows_authority(&u("http://127.0.0.1:5000/t")));
        let o = HostPolicy { authority_override: Some(u("http://127.0.0.1:5000")), ..Default::default() };
        assert_eq!(o.authority("https://login.microsoftonline.com").unwrap().as_str(), "http://127.0.0.1:5000/");
        assert!(o.allows_authority(&u("http://127.0.0.1:5000/t/oauth2/v2.0/token")));
        assert!(!o.allows_authority(&u("http://127.0.0.1:5001/t")));
        assert!(o.allows_authority(&u("https://login.microsoftonline.com/t")));
    }
}
