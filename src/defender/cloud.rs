//! The four clouds: login host, token resource (scope = resource + `/.default`), default API host.
//!
//! As Microsoft documents the national clouds for Defender for Endpoint: the token resource (and
//! so the scope) is the cloud's MDE resource whatever API host is used
//! (`api.security.microsoft.com` still needs the `api.securitycenter.microsoft.com/.default`
//! scope).

use crate::api::Cloud;

/// The "WindowsDefenderATP" resource application; tokens may carry it as `aud`.
pub const WINDOWS_DEFENDER_ATP_APP_ID: &str = "fc780465-2017-40d4-a0c5-307022471b92";

const LOGIN_COMMERCIAL: &str = "https://login.microsoftonline.com";
const LOGIN_US_GOV: &str = "https://login.microsoftonline.us";
const MDE_COMMERCIAL: &str = "https://api.securitycenter.microsoft.com";
const MDE_GCC: &str = "https://api-gcc.securitycenter.microsoft.us";
const MDE_GOV: &str = "https://api-gov.securitycenter.microsoft.us";

/// Login hosts Microsoft documents for the client-credentials grant (always allowed to receive the secret).
pub const LOGIN_HOSTS: [&str; 2] = ["login.microsoftonline.com", "login.microsoftonline.us"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEndpoints {
    /// e.g. `https://login.microsoftonline.com`
    pub login: &'static str,
    /// e.g. `https://api.securitycenter.microsoft.com` (the token resource)
    pub resource: &'static str,
    /// Default API base, e.g. `https://api.securitycenter.microsoft.com`
    pub api: &'static str,
}

pub fn endpoints(cloud: Cloud) -> CloudEndpoints {
    match cloud {
        Cloud::Commercial => CloudEndpoints { login: LOGIN_COMMERCIAL, resource: MDE_COMMERCIAL, api: MDE_COMMERCIAL },
        Cloud::Gcc => CloudEndpoints { login: LOGIN_COMMERCIAL, resource: MDE_GCC, api: MDE_GCC },
        Cloud::GccHigh | Cloud::DoD => CloudEndpoints { login: LOGIN_US_GOV, resource: MDE_GOV, api: MDE_GOV },
    }
}

impl CloudEndpoints {
    /// The client-credentials scope: always the MDE resource + `/.default`.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.resource)
    }

    /// Token audiences (`aud`) that mean "a WindowsDefenderATP token of this cloud": the resource,
    /// the documented aliases (§1.3) and the resource app id.
    pub fn audiences(&self) -> Vec<&'static str> {
        let mut out = vec![self.resource, WINDOWS_DEFENDER_ATP_APP_ID];
        if self.login == LOGIN_US_GOV {
            out.push("https://securitycenter.onmicrosoft.us/windowsatpservice");
        } else {
            out.push("https://securitycenter.onmicrosoft.com/windowsatpservice");
        }
        if self.resource == MDE_COMMERCIAL {
            out.push("https://api.securitycenter.windows.com");
        }
        out
    }

    /// Whether `aud` is one of [`Self::audiences`] (case-insensitive, trailing `/` ignored).
    pub fn accepts_audience(&self, aud: &str) -> bool {
        let aud = aud.trim().trim_end_matches('/');
        self.audiences().iter().any(|a| a.eq_ignore_ascii_case(aud))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clouds_per_reference_table() {
        let c = endpoints(Cloud::Commercial);
        assert_eq!(c.login, "https://login.microsoftonline.com");
        assert_eq!(c.api, "https://api.securitycenter.microsoft.com");
        assert_eq!(c.scope(), "https://api.securitycenter.microsoft.com/.default");
        let g = endpoints(Cloud::Gcc);
        assert_eq!(g.login, "https://login.microsoftonline.com");
        assert_eq!(g.scope(), "https://api-gcc.securitycenter.microsoft.us/.default");
        assert_eq!(g.api, g.resource);
        for cloud in [Cloud::GccHigh, Cloud::DoD] {
            let h = endpoints(cloud);
            assert_eq!(h.login, "https://login.microsoftonline.us");
            assert_eq!(h.resource, "https://api-gov.securitycenter.microsoft.us");
            assert_eq!(h.api, h.resource);
        }
    }

    #[test]
    fn audiences() {
        let c = endpoints(Cloud::Commercial);
        assert!(c.accepts_audience("https://api.securitycenter.microsoft.com"));
        assert!(c.accepts_audience("https://api.securitycenter.microsoft.com/"));
        assert!(c.accepts_audience(WINDOWS_DEFENDER_ATP_APP_ID));
        assert!(c.accepts_audience("https://api.securitycenter.windows.com"));
        assert!(c.accepts_audience("https://securitycenter.onmicrosoft.com/windowsatpservice"));
        assert!(!c.accepts_audience("https://api.security.microsoft.com"));
        assert!(!c.accepts_audience("https://graph.microsoft.com"));
        assert!(!c.accepts_audience("https://api-gov.securitycenter.microsoft.us"));
        let h = endpoints(Cloud::GccHigh);
        assert!(h.accepts_audience("https://api-gov.securitycenter.microsoft.us"));
        assert!(!h.accepts_audience("https://api.securitycenter.microsoft.com"));
    }
}
