//! Emulator configuration: tenants, apps, secrets, limits, and the well-known sandbox values.

use std::time::Duration;

use super::Cloud;
use super::credentials::{AppCertificate, FederatedCredential};

/// Everything the emulator serves. `Default` has no tenants and Defender's documented limits.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    pub tenants: Vec<TenantConfig>,
    /// Per (tenant, app, endpoint) sliding-window limits. Default = the documented numbers.
    pub limits: EmulatorLimits,
    /// Added to every API (not token) call.
    pub latency: Duration,
    /// Lifetime of issued access tokens (`expires_in`). Default 3599 s.
    pub token_lifetime: Duration,
    /// Indicators whose `expirationTime` has passed are deleted (as Defender documents) instead of
    /// being listed (as OpenCTI observed).
    pub purge_expired_on_read: bool,
    /// Active indicators per tenant. Default 15,000.
    pub indicator_cap: usize,
    /// A certificate assertion whose `jti` was already accepted is refused (until its `exp`).
    /// Default true. Federated assertions (Kubernetes tokens) are reusable regardless.
    pub reject_replayed_assertions: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            tenants: Vec::new(),
            limits: EmulatorLimits::default(),
            latency: Duration::ZERO,
            token_lifetime: Duration::from_secs(3599),
            purge_expired_on_read: true,
            indicator_cap: 15_000,
            reject_replayed_assertions: true,
        }
    }
}

impl EmulatorConfig {
    /// The well-known sandbox tenants and apps of [`sandbox_values`].
    pub fn sandbox() -> Self {
        use sandbox_values::*;
        let app = |client_id: &str, secret: &str, roles: &[&str]| AppConfig {
            client_id: client_id.into(),
            secrets: vec![AppSecret { value: secret.into(), expired: false }],
            roles: roles.iter().map(|r| r.to_string()).collect(),
            disabled: false,
            certificates: Vec::new(),
            federated_credentials: Vec::new(),
        };
        Self {
            tenants: vec![
                TenantConfig {
                    id: TENANT_ID.into(),
                    domains: vec![TENANT_DOMAIN.into()],
                    cloud: Cloud::Commercial,
                    defender_provisioned: true,
                    apps: vec![
                        app(GOOD_APP_ID, GOOD_APP_SECRET, &GOOD_APP_ROLES),
                        app(NO_ROLES_APP_ID, NO_ROLES_APP_SECRET, &[]),
                        app(MACHINE_ONLY_APP_ID, MACHINE_ONLY_APP_SECRET, &["Machine.Read.All"]),
                        app(TI_OWN_APP_ID, TI_OWN_APP_SECRET, &["Ti.ReadWrite"]),
                        AppConfig {
                            client_id: EXPIRED_SECRET_APP_ID.into(),
                            secrets: vec![AppSecret { value: EXPIRED_SECRET_APP_SECRET.into(), expired: true }],
                            roles: GOOD_APP_ROLES.iter().map(|r| r.to_string()).collect(),
                            disabled: false,
                            certificates: Vec::new(),
                            federated_credentials: Vec::new(),
                        },
                        AppConfig { disabled: true, ..app(DISABLED_APP_ID, DISABLED_APP_SECRET, &GOOD_APP_ROLES) },
                    ],
                },
                TenantConfig {
                    id: TENANT2_ID.into(),
                    domains: vec![TENANT2_DOMAIN.into()],
                    cloud: Cloud::Commercial,
                    defender_provisioned: true,
                    apps: vec![app(TENANT2_APP_ID, TENANT2_APP_SECRET, &GOOD_APP_ROLES)],
                },
                TenantConfig {
                    id: NO_DEFENDER_TENANT_ID.into(),
                    domains: vec![NO_DEFENDER_TENANT_DOMAIN.into()],
                    cloud: Cloud::Commercial,
                    defender_provisioned: false,
                    apps: vec![app(NO_DEFENDER_APP_ID, NO_DEFENDER_APP_SECRET, &GOOD_APP_ROLES)],
                },
                TenantConfig {
                    id: GOV_TENANT_ID.into(),
                    domains: vec![GOV_TENANT_DOMAIN.into()],
                    cloud: Cloud::GccHigh,
                    defender_provisioned: true,
                    apps: vec![app(GOV_APP_ID, GOV_APP_SECRET, &GOOD_APP_ROLES)],
                },
            ],
            ..Self::default()
        }
    }
}

/// Sliding-window request limits, counted per (tenant, app, endpoint). Each endpoint (submit,
/// list, delete-one, machines, alerts, …) has its own budget, as Defender documents
/// per-endpoint budgets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatorLimits {
    /// `POST /api/indicators/import`; no hourly limit is documented.
    pub import_per_minute: u32,
    pub batch_delete_per_minute: u32,
    pub batch_delete_per_hour: u32,
    /// `GET /api/deviceavinfo`.
    pub device_av_info_per_minute: u32,
    pub device_av_info_per_hour: u32,
    /// Every other API endpoint, each on its own.
    pub other_per_minute: u32,
    pub other_per_hour: u32,
}

impl Default for EmulatorLimits {
    fn default() -> Self {
        Self {
            import_per_minute: 30,
            batch_delete_per_minute: 30,
            batch_delete_per_hour: 1500,
            device_av_info_per_minute: 30,
            device_av_info_per_hour: 1000,
            other_per_minute: 100,
            other_per_hour: 1500,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TenantConfig {
    /// Tenant GUID (lower-case is canonical; matched case-insensitively).
    pub id: String,
    /// Verified domains, usable instead of the GUID in the token URL.
    pub domains: Vec<String>,
    /// Which cloud the tenant lives in: decides which MDE resource it has (see `token.rs`).
    pub cloud: Cloud,
    /// False: the WindowsDefenderATP service principal is missing, so tokens for the MDE
    /// resource fail with AADSTS500011.
    pub defender_provisioned: bool,
    pub apps: Vec<AppConfig>,
}

#[derive(Clone, Debug)]
pub struct AppConfig {
    pub client_id: String,
    pub secrets: Vec<AppSecret>,
    /// Consented WindowsDefenderATP application roles; empty = consent never granted (token
    /// without a `roles` claim).
    pub roles: Vec<String>,
    pub disabled: bool,
    /// Certificates whose key may sign client assertions (see [`super::credentials`]).
    pub certificates: Vec<AppCertificate>,
    /// Federated identity credentials: external tokens accepted as client assertions.
    pub federated_credentials: Vec<FederatedCredential>,
}

#[derive(Clone, Debug)]
pub struct AppSecret {
    pub value: String,
    pub expired: bool,
}

/// Well-known sandbox tenants, apps and (fake) secrets served by [`EmulatorConfig::sandbox`].
pub mod sandbox_values {
    /// Commercial tenant with Defender provisioned; domain [`TENANT_DOMAIN`].
    pub const TENANT_ID: &str = "c0ffee00-5a4d-4b0c-8d3f-000000000001";
    pub const TENANT_DOMAIN: &str = "contoso.onmicrosoft.com";
    /// A second good tenant, so two partners can target different tenants.
    pub const TENANT2_ID: &str = "c0ffee00-5a4d-4b0c-8d3f-000000000002";
    pub const TENANT2_DOMAIN: &str = "fabrikam.onmicrosoft.com";
    /// A tenant without Defender for Endpoint (AADSTS500011 for the MDE resource).
    pub const NO_DEFENDER_TENANT_ID: &str = "c0ffee00-5a4d-4b0c-8d3f-000000000003";
    pub const NO_DEFENDER_TENANT_DOMAIN: &str = "northwind.onmicrosoft.com";
    /// A GCC High tenant: asking it for a commercial resource gives AADSTS90038 (wrong cloud).
    pub const GOV_TENANT_ID: &str = "c0ffee00-5a4d-4b0c-8d3f-000000000004";
    pub const GOV_TENANT_DOMAIN: &str = "contoso.onmicrosoft.us";
    /// A well-formed GUID that is no tenant (AADSTS90002).
    pub const UNKNOWN_TENANT_ID: &str = "c0ffee00-5a4d-4b0c-8d3f-0000000000ff";

    /// Roles of the good apps.
    pub const GOOD_APP_ROLES: [&str; 3] = ["Ti.ReadWrite.All", "Machine.Read.All", "Alert.Read.All"];

    /// In [`TENANT_ID`]: Ti.ReadWrite.All, Machine.Read.All, Alert.Read.All.
    pub const GOOD_APP_ID: &str = "a11ce000-5a4d-4b0c-8d3f-000000000001";
    pub const GOOD_APP_SECRET: &str = "sandbox-secret-good-app~NOT.A.REAL.SECRET";
    /// The *ID* of the good app's secret: pasting it instead of the value gives AADSTS7000215.
    pub const GOOD_APP_SECRET_ID: &str = "5ec2e700-5a4d-4b0c-8d3f-000000000001";
    /// In [`TENANT_ID`]: admin consent never granted (token without `roles`).
    pub const NO_ROLES_APP_ID: &str = "a11ce000-5a4d-4b0c-8d3f-000000000002";
    pub const NO_ROLES_APP_SECRET: &str = "sandbox-secret-no-roles-app~NOT.A.REAL.SECRET";
    /// In [`TENANT_ID`]: only Machine.Read.All (no Ti role: 403 on indicators).
    pub const MACHINE_ONLY_APP_ID: &str = "a11ce000-5a4d-4b0c-8d3f-000000000003";
    pub const MACHINE_ONLY_APP_SECRET: &str = "sandbox-secret-machine-only-app~NOT.A.REAL.SECRET";
    /// In [`TENANT_ID`]: only Ti.ReadWrite (sees only its own indicators).
    pub const TI_OWN_APP_ID: &str = "a11ce000-5a4d-4b0c-8d3f-000000000004";
    pub const TI_OWN_APP_SECRET: &str = "sandbox-secret-ti-own-app~NOT.A.REAL.SECRET";
    /// In [`TENANT_ID`]: its only secret expired (AADSTS7000222).
    pub const EXPIRED_SECRET_APP_ID: &str = "a11ce000-5a4d-4b0c-8d3f-000000000005";
    pub const EXPIRED_SECRET_APP_SECRET: &str = "sandbox-secret-expired-app~NOT.A.REAL.SECRET";
    /// In [`TENANT_ID`]: disabled (AADSTS7000112).
    pub const DISABLED_APP_ID: &str = "a11ce000-5a4d-4b0c-8d3f-000000000006";
    pub const DISABLED_APP_SECRET: &str = "sandbox-secret-disabled-app~NOT.A.REAL.SECRET";
    /// In [`TENANT2_ID`]: good app (same roles as [`GOOD_APP_ID`]).
    pub const TENANT2_APP_ID: &str = "a11ce000-5a4d-4b0c-8d3f-000000000021";
    pub const TENANT2_APP_SECRET: &str = "sandbox-secret-tenant2-app~NOT.A.REAL.SECRET";
    /// In [`NO_DEFENDER_TENANT_ID`]: good app, but the tenant has no Defender.
    pub const NO_DEFENDER_APP_ID: &str = "a11ce000-5a4d-4b0c-8d3f-000000000031";
    pub const NO_DEFENDER_APP_SECRET: &str = "sandbox-secret-no-defender-app~NOT.A.REAL.SECRET";
    /// In [`GOV_TENANT_ID`]: good app in GCC High.
    pub const GOV_APP_ID: &str = "a11ce000-5a4d-4b0c-8d3f-000000000041";
    pub const GOV_APP_SECRET: &str = "sandbox-secret-gov-app~NOT.A.REAL.SECRET";

    /// The commercial MDE token scope.
    pub const MDE_SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";
    /// The commercial MDE token resource (v1 `resource`, token `aud`).
    pub const MDE_RESOURCE: &str = "https://api.securitycenter.microsoft.com";
}
