//! `DefenderPartner`: a Defender tenant attached through an Entra app's credentials.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration;

/// The longest `spec.indicator.expireAfter`: ten years.
pub const MAX_EXPIRE_AFTER: &str = "87600h";
/// The longest `spec.revalidateInterval`: a week.
pub const MAX_REVALIDATE_INTERVAL: &str = "168h";
/// Secret data keys: what Kubernetes allows (`[-._a-zA-Z0-9]+`, at most 253 characters).
const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

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
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    doc = "A Microsoft Defender for Endpoint tenant, attached through an Entra app's credentials in a Secret; the operator pushes the UNPROTECTED ProbeFindings it selects there as indicators."
)]
#[serde(rename_all = "camelCase")]
pub struct DefenderPartnerSpec {
    /// Defender API base URL. Defaults to the cloud's API host. Must be https (plain http is
    /// accepted for loopback emulators only) and on the operator's API host allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^(https://[^/\s]+|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?)/?$"),
        length(max = 2048)
    )]
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
    #[schemars(schema_with = "finding_selector_schema")]
    pub finding_selector: Option<LabelSelector>,

    /// How indicators are written to Defender.
    #[serde(default)]
    pub indicator: IndicatorSettings,

    /// Whether the operator withdraws the indicators it pushed when no live finding refers to them
    /// any more, and all of them when the partner is deleted (`Delete`); suspending withdraws nothing.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// How often credentials are re-checked (jittered), e.g. `1h`; at most `168h`. They are also
    /// re-checked at once when the Secret changes.
    #[serde(default = "default_revalidate_interval")]
    #[schemars(regex(pattern = duration::PATTERN), length(max = duration::MAX_LENGTH))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) <= duration('168h')", "message": "at most 168h (a week)"}
    ]))]
    pub revalidate_interval: String,

    /// Matching findings' endpoints to Defender's machines and reading alerts, to report what
    /// Defender did about each test (`Prevented`, `Detected`, `NotDetected`).
    #[serde(default)]
    pub correlation: super::outcome::Correlation,

    /// A ClusterDefenderPartner's `namespaceSelector`, on the namespaced view the operator works
    /// with (see [`ClusterDefenderPartner::as_partner`]); never part of a DefenderPartner's API.
    #[serde(skip)]
    #[schemars(skip)]
    pub namespace_selector: Option<LabelSelector>,
}

/// The label selector's schema with `matchExpressions[].operator` limited to the operators
/// Kubernetes knows: a typo is refused when applied instead of silently selecting nothing.
fn finding_selector_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <Option<LabelSelector> as JsonSchema>::json_schema(generator);
    let operator = schema
        .pointer_mut("/properties/matchExpressions/items/properties/operator")
        .and_then(|operator| operator.as_object_mut())
        .expect("LabelSelector's schema has matchExpressions[].operator");
    operator.insert("enum".into(), serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist"]));
    schema
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

/// How the operator authenticates as the partner's Entra app.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum CredentialsType {
    /// A client secret, from `secretRef`.
    #[default]
    ClientSecret,
    /// A certificate and its RSA private key, from `secretRef` (a `kubernetes.io/tls` Secret works
    /// as it is): the operator signs a client assertion; the key never leaves the cluster.
    Certificate,
    /// Workload identity federation: a token of `serviceAccountRef`, created by the operator for
    /// each validation and token renewal, is the client assertion. No secret is stored.
    WorkloadIdentity,
}

impl CredentialsType {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialsType::ClientSecret => "ClientSecret",
            CredentialsType::Certificate => "Certificate",
            CredentialsType::WorkloadIdentity => "WorkloadIdentity",
        }
    }
}

/// Where the Entra app's credentials are.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type == 'WorkloadIdentity' || has(self.secretRef)",
     "message": "secretRef is required for type ClientSecret and Certificate",
     "fieldPath": ".secretRef", "reason": "FieldValueRequired"},
    {"rule": "self.type != 'WorkloadIdentity' || has(self.serviceAccountRef)",
     "message": "serviceAccountRef is required for type WorkloadIdentity",
     "fieldPath": ".serviceAccountRef", "reason": "FieldValueRequired"}
]))]
pub struct Credentials {
    /// `ClientSecret` (default), `Certificate` or `WorkloadIdentity`.
    #[serde(default, rename = "type")]
    pub type_: CredentialsType,
    /// The tenant GUID or verified domain; else the Secret's `tenantIdKey`, or the ServiceAccount's
    /// `azure.workload.identity/tenant-id` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tenant_id: Option<String>,
    /// The app's client id; else the Secret's `clientIdKey`, or the ServiceAccount's
    /// `azure.workload.identity/client-id` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_id: Option<String>,
    /// A Secret in the partner's namespace (types `ClientSecret` and `Certificate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// A ServiceAccount in the partner's namespace (type `WorkloadIdentity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_ref: Option<ServiceAccountRef>,
}

/// A Secret in the partner's namespace and the keys that hold each value.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The Secret key holding the tenant GUID or verified domain (default `tenantId`).
    #[serde(default = "default_tenant_id_key")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN), length(min = 1, max = 253))]
    pub tenant_id_key: String,
    /// The Secret key holding the app's client id (default `clientId`).
    #[serde(default = "default_client_id_key")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN), length(min = 1, max = 253))]
    pub client_id_key: String,
    /// The Secret key holding the client secret's value (default `clientSecret`).
    #[serde(default = "default_client_secret_key")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN), length(min = 1, max = 253))]
    pub client_secret_key: String,
    /// The Secret key holding the PEM certificate, the app's first (default `tls.crt`).
    #[serde(default = "default_certificate_key")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN), length(min = 1, max = 253))]
    pub certificate_key: String,
    /// The Secret key holding the PEM RSA private key, PKCS#1 or PKCS#8 (default `tls.key`).
    #[serde(default = "default_private_key_key")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN), length(min = 1, max = 253))]
    pub private_key_key: String,
}

/// A ServiceAccount of the partner's namespace whose tokens the app trusts through a federated
/// identity credential.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"), length(min = 1, max = 253))]
    pub name: String,
    /// The token's audience, as the federated credential lists it (default
    /// `api://AzureADTokenExchange`).
    #[serde(default = "default_audience")]
    #[schemars(length(min = 1, max = 600))]
    pub audience: String,
}

/// The audience Entra recommends for federated credentials.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

fn default_audience() -> String {
    TOKEN_EXCHANGE_AUDIENCE.into()
}
fn default_certificate_key() -> String {
    "tls.crt".into()
}
fn default_private_key_key() -> String {
    "tls.key".into()
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
    /// Indicators expire this long after the finding was observed, e.g. `720h`; at most `87600h`
    /// (ten years).
    #[serde(default = "default_expire_after")]
    #[schemars(regex(pattern = duration::PATTERN), length(max = duration::MAX_LENGTH))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) <= duration('87600h')", "message": "at most 87600h (ten years)"}
    ]))]
    pub expire_after: String,
    /// Prepended to the test name to form the indicator title.
    #[serde(default = "default_title_prefix")]
    #[schemars(length(max = 100))]
    pub title_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub recommended_actions: Option<String>,
    /// Device groups the indicator applies to (empty: all devices); at most 100 names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 256)))]
    pub rbac_group_names: Vec<String>,
}

impl IndicatorSettings {
    /// `expireAfter` as a duration; out of range (over [`MAX_EXPIRE_AFTER`]) or unreadable is an
    /// error naming the field, never "no expiry".
    pub fn expire_after(&self) -> Result<std::time::Duration, duration::FieldError> {
        duration::parse_at_most("spec.indicator.expireAfter", &self.expire_after, MAX_EXPIRE_AFTER)
    }
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

impl PartnerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PartnerState::Attached => "Attached",
            PartnerState::Detached => "Detached",
        }
    }
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
    /// The credentials type in use (`spec.credentials.type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_type: Option<CredentialsType>,
    /// When the credentials stop working: a certificate's `notAfter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_expiry: Option<Time>,
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
    /// The value of the `detect.dev/revalidate` annotation last acted on: set the annotation to a
    /// new value to re-validate now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_revalidate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indicators: Option<IndicatorCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<TenantQuota>,
    /// The findings this partner selects by what Defender did about them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<super::outcome::OutcomeCounts>,
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

impl DefenderPartnerSpec {
    /// `revalidateInterval` as a duration; out of range (over [`MAX_REVALIDATE_INTERVAL`]) or
    /// unreadable is an error naming the field, for the partner's status rather than a fallback.
    pub fn revalidate_interval(&self) -> Result<std::time::Duration, duration::FieldError> {
        duration::parse_at_most("spec.revalidateInterval", &self.revalidate_interval, MAX_REVALIDATE_INTERVAL)
    }
}

impl DefenderPartner {
    /// The marker written into `externalId` of every indicator this partner owns:
    /// `<namespace>/<name>`, or `ClusterDefenderPartner/<name>` for a cluster-wide partner.
    pub fn owner_marker(&self) -> String {
        match &self.metadata.namespace {
            Some(namespace) => format!("{namespace}/{}", self.metadata.name.as_deref().unwrap_or_default()),
            None => self.delivery_name(),
        }
    }

    /// How findings' deliveries name it: its name, or `ClusterDefenderPartner/<name>`.
    pub fn delivery_name(&self) -> String {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        match self.metadata.namespace {
            Some(_) => name.to_string(),
            None => format!("{CLUSTER_KIND}/{name}"),
        }
    }

    /// Whether this is the namespaced view of a ClusterDefenderPartner.
    pub fn is_cluster_wide(&self) -> bool {
        self.metadata.namespace.is_none()
    }
}

/// The kind of the cluster-wide partner, as deliveries and `partnerRef.kind` name it.
pub const CLUSTER_KIND: &str = "ClusterDefenderPartner";

/// A Defender tenant for the whole cluster: a `DefenderPartner` that receives the ProbeFindings
/// of every namespace its `namespaceSelector` selects. Its credentials (Secret, ServiceAccount)
/// live in the operator's own namespace, never in a user's.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "detect.dev",
    version = "v1alpha1",
    kind = "ClusterDefenderPartner",
    status = "DefenderPartnerStatus",
    shortname = "cdp",
    category = "detect",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".status.tenantId"}"#,
    printcolumn = r#"{"name":"Indicators","type":"integer","jsonPath":".status.indicators.submitted"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    doc = "A Microsoft Defender for Endpoint tenant for the whole cluster: a DefenderPartner whose credentials live in the operator's namespace and which receives the UNPROTECTED ProbeFindings of every namespace its namespaceSelector selects."
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDefenderPartnerSpec {
    #[serde(flatten)]
    pub partner: DefenderPartnerSpec,
    /// Which namespaces' ProbeFindings it receives (default: every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "finding_selector_schema")]
    pub namespace_selector: Option<LabelSelector>,
}

impl ClusterDefenderPartner {
    /// The partner as the operator works with every partner: no namespace, the spec with its
    /// `namespaceSelector`, the same metadata and status.
    pub fn as_partner(&self) -> DefenderPartner {
        let mut spec = self.spec.partner.clone();
        spec.namespace_selector = self.spec.namespace_selector.clone();
        let mut metadata = self.metadata.clone();
        metadata.namespace = None;
        DefenderPartner { metadata, spec, status: self.status.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec_schema() -> serde_json::Value {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(DefenderPartner::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    #[test]
    fn schema_bounds_every_free_text_field() {
        let spec = spec_schema();
        let props = &spec["properties"];
        assert_eq!(props["api"]["maxLength"], 2048);
        let secret_ref = &props["credentials"]["properties"]["secretRef"]["properties"];
        for key in ["tenantIdKey", "clientIdKey", "clientSecretKey"] {
            assert_eq!(
                (secret_ref[key]["minLength"].as_u64(), secret_ref[key]["maxLength"].as_u64()),
                (Some(1), Some(253))
            );
            assert_eq!(secret_ref[key]["pattern"], SECRET_KEY_PATTERN, "{key}");
        }
        assert_eq!(secret_ref["name"]["maxLength"], 253);
        let indicator = &props["indicator"]["properties"];
        let groups = &indicator["rbacGroupNames"];
        assert_eq!(groups["maxItems"], 100);
        assert_eq!(
            (groups["items"]["minLength"].as_u64(), groups["items"]["maxLength"].as_u64()),
            (Some(1), Some(256))
        );
        for (duration, max) in
            [(&indicator["expireAfter"], MAX_EXPIRE_AFTER), (&props["revalidateInterval"], MAX_REVALIDATE_INTERVAL)]
        {
            assert_eq!(duration["maxLength"], duration::MAX_LENGTH);
            assert_eq!(duration["pattern"], duration::PATTERN);
            // The schema refuses what the operator would refuse (InvalidSpec) where CEL can.
            let rule = &duration["x-kubernetes-validations"][0];
            assert_eq!(rule["rule"], format!("duration(self) <= duration('{max}')"));
            assert!(rule["message"].as_str().unwrap().starts_with(&format!("at most {max} ")));
        }
    }

    #[test]
    fn secret_key_pattern_is_what_kubernetes_allows() {
        let pattern = regex::Regex::new(SECRET_KEY_PATTERN).unwrap();
        for good in ["tenantId", "client-secret", "app.client_id", ".dotfile", "A9"] {
            assert!(pattern.is_match(good), "{good}");
        }
        for bad in ["", "client secret", "a/b", "key:1", "ключ", "tenantId\n"] {
            assert!(!pattern.is_match(bad), "{bad:?}");
        }
    }

    #[test]
    fn durations_over_their_maximum_are_errors_naming_the_field() {
        let mut settings = IndicatorSettings::default();
        assert_eq!(settings.expire_after(), Ok(Duration::from_secs(720 * 3600)));
        settings.expire_after = MAX_EXPIRE_AFTER.into();
        assert_eq!(settings.expire_after(), Ok(Duration::from_secs(87600 * 3600)));
        settings.expire_after = "87601h".into();
        let message = settings.expire_after().unwrap_err().to_string();
        assert!(
            message.starts_with("spec.indicator.expireAfter: 87601h is more than the maximum, 87600h"),
            "{message}"
        );
        settings.expire_after = "99999999999999999999999h".into();
        let message = settings.expire_after().unwrap_err().to_string();
        assert!(message.starts_with("spec.indicator.expireAfter: invalid duration"), "{message}");

        let mut spec: DefenderPartnerSpec =
            serde_json::from_value(serde_json::json!({"credentials": {"secretRef": {"name": "s"}}})).unwrap();
        assert_eq!(spec.revalidate_interval(), Ok(Duration::from_secs(3600)));
        spec.revalidate_interval = "169h".into();
        let message = spec.revalidate_interval().unwrap_err().to_string();
        assert!(message.starts_with("spec.revalidateInterval: 169h is more than the maximum, 168h"), "{message}");
    }
}
