//! The four clouds: login host, token resource (scope = resource + `/.default`), default API host.

use crate::api::Cloud;

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
    todo!("{cloud:?}")
}
