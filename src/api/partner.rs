//! `DefenderPartner`: a Defender tenant attached through an Entra app's credentials.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "detect.dev",
    version = "v1alpha1",
    kind = "DefenderPartner",
    namespaced,
    status = "DefenderPartnerStatus",
    shortname = "dp",
    shortname = "defender",
    category = "detect",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".status.tenantId"}"#,
    printcolumn = r#"{"name":"Indicators","type":"integer","jsonPath":".status.indicators.submitted"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DefenderPartnerSpec {
    /// Defender API base URL. Defaults to the cloud's API host. Must be https (plain http is
    /// accepted for loopback emulators only) and on the operator's API host allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(https://[^/\s]+|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?)/?$"))]
    pub api: Option<String>,

    /// Sovereign cloud: picks the login host and the token resource.
    #[serde(default)]
    pub cloud: Cloud,

    /// Where the Entra app's credentials are.
    pub credentials: Credentials,

    /// Detach without deleting anything.
    #[serde(default)]
    pub suspend: bool,

    /// Which ProbeFindings of this namespace this partner receives (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding_selector: Option<LabelSelector>,

    /// How indicators are written to Defender.
    #[serde(default)]
    pub indicator: IndicatorSettings,

    /// Whether indicators are withdrawn when their findings are deleted or the partner detached.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// How often credentials are re-checked (jittered). They are also re-checked at once when
    /// the Secret changes.
    #[serde(default = "default_revalidate_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub revalidate_interval: String,
}

fn default_revalidate_interval() -> String {
    "1h".into()
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Cloud {
    #[default]
    Commercial,
    #[serde(rename = "GCC")]
    Gcc,
    #[serde(rename = "GCCHigh")]
    GccHigh,
    #[serde(rename = "DoD")]
    DoD,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub secret_ref: SecretRef,
}

/// A Secret in the partner's namespace and the keys that hold each value.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default = "default_tenant_id_key")]
    pub tenant_id_key: String,
    #[serde(default = "default_client_id_key")]
    pub client_id_key: String,
    #[serde(default = "default_client_secret_key")]
    pub client_secret_key: String,
}

fn default_tenant_id_key() -> String {
    "tenantId".into()
}
fn default_client_id_key() -> String {
    "clientId".into()
}
fn default_client_secret_key() -> String {
    "clientSecret".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndicatorSettings {
    #[serde(default)]
    pub action: IndicatorAction,
    #[serde(default)]
    pub severity: Severity,
    /// Forced to true with `Audit`, as Defender requires.
    #[serde(default = "default_true")]
    pub generate_alert: bool,
    /// Indicators expire this long after the finding was observed.
    #[serde(default = "default_expire_after")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub expire_after: String,
    /// Prepended to the test name to form the indicator title.
    #[serde(default = "default_title_prefix")]
    #[schemars(length(max = 100))]
    pub title_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub recommended_actions: Option<String>,
    /// Device groups the indicator applies to (empty: all devices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rbac_group_names: Vec<String>,
}

impl Default for IndicatorSettings {
    fn default() -> Self {
        Self {
            action: IndicatorAction::default(),
            severity: Severity::default(),
            generate_alert: true,
            expire_after: default_expire_after(),
            title_prefix: default_title_prefix(),
            recommended_actions: None,
            rbac_group_names: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_expire_after() -> String {
    "720h".into()
}
fn default_title_prefix() -> String {
    "Detect: ".into()
}

/// Defender's indicator actions; `Alert` and `AlertAndBlock` are legacy but still accepted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IndicatorAction {
    Audit,
    Warn,
    #[default]
    Block,
    BlockAndRemediate,
    Allowed,
    Alert,
    AlertAndBlock,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Severity {
    Informational,
    Low,
    Medium,
    #[default]
    High,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PartnerState {
    Attached,
    Detached,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefenderPartnerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PartnerState>,
    /// PascalCase reason of the state, e.g. `InvalidSecret`; see the README's table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::conditions::schema")]
    pub conditions: Vec<Condition>,
    /// The tenant GUID from the token (canonical even when the Secret holds a domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// SHA-256 of the credential values used, to notice rotation without storing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted_permissions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_permissions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_validated_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indicators: Option<IndicatorCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<TenantQuota>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct IndicatorCounts {
    pub desired: u32,
    pub submitted: u32,
    pub pending: u32,
    pub failed: u32,
    pub external: u32,
}

/// Active indicators in the tenant against Defender's fixed cap.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TenantQuota {
    pub used: u32,
    pub limit: u32,
}

impl DefenderPartner {
    /// The marker written into `externalId` of every indicator this partner owns.
    pub fn owner_marker(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}
