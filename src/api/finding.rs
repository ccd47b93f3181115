//! `ProbeFinding`: one result of one security test on one endpoint, as a probe reported it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::outcome::{AlertRef, Detection, MachineStatus};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "detect.dev",
    version = "v1alpha1",
    kind = "ProbeFinding",
    namespaced,
    status = "ProbeFindingStatus",
    shortname = "pf",
    shortname = "finding",
    category = "detect",
    selectable = ".spec.partnerRef.name",
    printcolumn = r#"{"name":"Test","type":"string","jsonPath":".spec.test.name"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Delivered","type":"string","jsonPath":".status.delivered"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Outcome","type":"string","jsonPath":".status.outcome"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "A security test's result on one endpoint, with the indicators (hashes) of the tested binary; UNPROTECTED results are pushed to Microsoft Defender by the DefenderPartners that select it."
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.state) || has(self.code)", "message": "set spec.state (e.g. UNPROTECTED) or spec.code (the probe's exit code)"}
]))]
pub struct ProbeFindingSpec {
    pub test: TestRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// The result. When absent, it is derived from `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TestState>,
    /// The probe's exit code (`dat: <test_id>:<code>`), used when `state` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Explicit bounds: `format: int32` alone is not enforced by every API server, and one finding
    // the operator cannot read would stall the watch of all findings.
    #[schemars(range(min = i32::MIN, max = i32::MAX))]
    pub code: Option<i32>,
    /// When the probe reported the result (default: the object's creation time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_time: Option<Time>,
    /// The tested binaries' indicators.
    #[schemars(length(min = 1, max = 64))]
    pub indicators: Vec<IndicatorSpec>,
    /// Deliver to this partner only (default: every partner whose selector matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_ref: Option<PartnerRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestRef {
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"))]
    pub id: String,
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub hostname: Option<String>,
    /// e.g. `windows-x86_64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub platform: Option<String>,
    /// The endpoint's internal IP address, matched against a machine's `lastIpAddress` when no
    /// machine has the hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "ip_address_schema")]
    pub ip_address: Option<String>,
    /// The Defender machine id (40 hex characters); wins over hostname and IP matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{40}$"))]
    pub machine_id: Option<String>,
}

/// `spec.endpoint.ipAddress`: one IPv4 or IPv6 address, as the IpAddress indicator rule reads it.
fn ip_address_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let pattern = value_regex(IndicatorType::IpAddress).expect("a network type");
    schemars::json_schema!({"type": "string", "maxLength": 64, "pattern": pattern})
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartnerRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `DefenderPartner` (default, in the finding's namespace) or `ClusterDefenderPartner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PartnerKind>,
}

/// The two kinds of partner a finding can name.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PartnerKind {
    #[default]
    DefenderPartner,
    ClusterDefenderPartner,
}

/// One indicator of a tested binary. Hash values are hex of the type's length, any case.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'FileSha256' || self.value.matches('^[0-9a-fA-F]{64}$')", "message": "a FileSha256 value is 64 hex characters", "fieldPath": ".value"},
    {"rule": "self.type != 'FileSha1' || self.value.matches('^[0-9a-fA-F]{40}$')", "message": "a FileSha1 value is 40 hex characters", "fieldPath": ".value"},
    {"rule": "self.type != 'FileMd5' || self.value.matches('^[0-9a-fA-F]{32}$')", "message": "a FileMd5 value is 32 hex characters", "fieldPath": ".value"},
    {"rule": "self.type != 'CertificateThumbprint' || self.value.matches('^[0-9a-fA-F]{40}([0-9a-fA-F]{24})?$')", "message": "a CertificateThumbprint value is 40 (SHA-1) or 64 (SHA-256) hex characters", "fieldPath": ".value"},
    {"rule": value_rule(IndicatorType::IpAddress), "message": "an IpAddress value is one IPv4 or IPv6 address without a prefix length, e.g. 203.0.113.7 or 2001:db8::7", "fieldPath": ".value"},
    {"rule": value_rule(IndicatorType::DomainName), "message": "a DomainName value is two or more dot-separated labels of letters, digits and inner hyphens, without a trailing dot (Unicode names in punycode), e.g. evil.example.com", "fieldPath": ".value"},
    {"rule": value_rule(IndicatorType::Url), "message": "a Url value is an http:// or https:// URL with a host and no spaces (percent-encode them), e.g. https://evil.example.com/path", "fieldPath": ".value"}
]))]
pub struct IndicatorSpec {
    #[serde(rename = "type")]
    pub type_: IndicatorType,
    #[schemars(length(min = 1, max = 2048))]
    pub value: String,
    /// The file the hash was taken of, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub file: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum IndicatorType {
    FileSha256,
    FileSha1,
    FileMd5,
    CertificateThumbprint,
    IpAddress,
    DomainName,
    Url,
}

impl IndicatorType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FileSha256 => "FileSha256",
            Self::FileSha1 => "FileSha1",
            Self::FileMd5 => "FileMd5",
            Self::CertificateThumbprint => "CertificateThumbprint",
            Self::IpAddress => "IpAddress",
            Self::DomainName => "DomainName",
            Self::Url => "Url",
        }
    }

    /// Hex lengths a value of this type may have; `None` for non-hash types.
    fn hex_lengths(self) -> Option<&'static [usize]> {
        match self {
            Self::FileSha256 => Some(&[64]),
            Self::FileSha1 => Some(&[40]),
            Self::FileMd5 => Some(&[32]),
            Self::CertificateThumbprint => Some(&[40, 64]),
            _ => None,
        }
    }
}

// The CEL rules of the network types: RE2 syntax that the `regex` crate reads the same way (the
// sandbox's CEL uses it for `matches`): ASCII classes, `[.]` for a dot, `\x{..}` escapes, no
// Perl classes, no lookaround. Kubernetes estimates a `matches` at (maxLength 2048 / 10) x
// (regex length / 4) per indicator, x64 indicators: far below its per-rule limit of 10^7.

/// What `str::trim` (the reconciler's) takes off both ends: Unicode White_Space.
const WHITE_SPACE: &str =
    r"\x{9}-\x{d}\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}";
/// White_Space and control characters (Cc), which a URL may not hold once trimmed.
const BLANK_OR_CONTROL: &str =
    r"\x{0}-\x{20}\x{7f}-\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}";

/// 0 to 255 without leading zeros, as `std::net` reads an IPv4 octet.
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
/// One IPv6 group: 1 to 4 hex digits.
const H16: &str = "[0-9a-fA-F]{1,4}";

/// The regex the CRD checks a value of this network type with (anchored; surrounding White_Space
/// allowed, as the reconciler trims). `None` for the hash types, whose rules are literal above.
fn value_regex(type_: IndicatorType) -> Option<String> {
    let core = match type_ {
        IndicatorType::IpAddress => {
            let v4 = format!("({OCTET}[.]){{3}}{OCTET}");
            // RFC 3986's IPv6address, which `std::net::Ipv6Addr` also follows: 8 groups, or
            // fewer around one `::`; the last 2 groups may be an IPv4 address.
            let h = H16;
            let ls32 = format!("({h}:{h}|{v4})");
            let before_ls32 = [
                format!("({h}:){{6}}"),
                format!("::({h}:){{5}}"),
                format!("({h})?::({h}:){{4}}"),
                format!("(({h}:){{0,1}}{h})?::({h}:){{3}}"),
                format!("(({h}:){{0,2}}{h})?::({h}:){{2}}"),
                format!("(({h}:){{0,3}}{h})?::{h}:"),
                format!("(({h}:){{0,4}}{h})?::"),
            ]
            .join("|");
            let v6 = format!("({before_ls32}){ls32}|(({h}:){{0,5}}{h})?::{h}|(({h}:){{0,6}}{h})?::");
            format!("{v4}|{v6}")
        }
        IndicatorType::DomainName => {
            let label = "[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?";
            // Not checked here: at most 253 characters in all (the reconciler checks it).
            format!("{label}([.]{label})+")
        }
        IndicatorType::Url => {
            // WHATWG parsing (the `url` crate) is lenient: any slashes after the scheme, userinfo
            // up to the last `@`, then a host that is not empty. Not checked here: that the host
            // is a valid domain or IP address, and the port (the reconciler checks them).
            let c = BLANK_OR_CONTROL;
            let scheme = "[hH][tT][tT][pP][sS]?:";
            let userinfo = format!(r"([^/\\?#{c}]*@)?");
            let host_and_port = format!(r"[^/\\?#@:<>^|{c}][^/\\?#@<>^|{c}]*");
            let rest = format!(r"([/\\?#][^{c}]*)?");
            format!(r"{scheme}[/\\]*{userinfo}{host_and_port}{rest}")
        }
        _ => return None,
    };
    Some(format!("^[{WHITE_SPACE}]*({core})[{WHITE_SPACE}]*$"))
}

/// The CEL rule for a network type: `self.type != 'X' || self.value.matches('<regex>')`.
fn value_rule(type_: IndicatorType) -> String {
    let regex = value_regex(type_).expect("a network type");
    debug_assert!(!regex.contains('\''));
    format!("self.type != '{}' || self.value.matches('{}')", type_.as_str(), regex.replace('\\', r"\\"))
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum TestState {
    #[serde(rename = "PROTECTED")]
    Protected,
    #[serde(rename = "UNPROTECTED")]
    Unprotected,
    #[serde(rename = "ERROR")]
    Error,
    #[serde(rename = "NOT_RELEVANT")]
    NotRelevant,
    #[serde(rename = "NONE")]
    None,
}

impl TestState {
    /// Prelude's exit-code table (the `dat: <test_id>:<code>` protocol).
    pub fn from_code(code: i32) -> Self {
        match code {
            101 => Self::Unprotected,
            9 | 15 | 100 | 105 | 106 | 107 | 126 | 127 | 137 => Self::Protected,
            104 | 108 | 109 => Self::NotRelevant,
            1 | 2 | 3 | 102 | 103 | 110 | 256 => Self::Error,
            _ => Self::None,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeFindingStatus {
    /// The effective result: `spec.state`, or derived from `spec.code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TestState>,
    /// Partners done with the finding (indicators held, nothing to push, or expired) over the
    /// partners that select it, e.g. `1/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<Delivery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::conditions::schema")]
    pub conditions: Vec<Condition>,
    /// The best detection over the partners: Prevented > Detected > NotDetected > Pending > Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Detection>,
    /// When the finding, UNPROTECTED when its indicators were submitted, reported PROTECTED.
    /// Set once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_time: Option<Time>,
    /// From the indicators' `submittedTime` to `protectedTime`, e.g. `23m5s`. Set once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_protect: Option<String>,
}

/// Where this finding's indicators stand with one partner.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub partner: String,
    pub state: DeliveryState,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indicators: Vec<DeliveredIndicator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The Defender machine the endpoint was matched to, and whether it can enforce the indicator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineStatus>,
    /// What Defender did about the test on that machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<Detection>,
    /// Defender's alerts on that machine whose evidence holds one of the hashes, inside the
    /// window; at most 5, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub alerts: Vec<AlertRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredIndicator {
    #[serde(rename = "type")]
    pub type_: IndicatorType,
    pub value: String,
    /// Defender's indicator id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

crate::api::reason::reasons! {
    /// A finding's delivery to one partner (`status.deliveries[].state`).
    #[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
    pub enum DeliveryState {
        /// In Defender, created by this partner.
        Submitted => Fine, "—";
        /// Waiting to be sent (or the partner is not attached yet).
        Pending => Retrying, "—";
        Failed => Terminal, "Fix what the message names (the finding's value, or the partner's `expireAfter`).";
        /// Already in Defender under another owner; left untouched.
        External => Fine, "—";
        /// Nothing to deliver (the test was not UNPROTECTED).
        Skipped => Fine, "—";
        /// The finding is past its expiry: done, its indicators are not pushed again.
        Expired => Fine, "—";
        /// Withdrawn from Defender.
        Withdrawn => Fine, "—";
    }
}

/// A finding's indicator after validation: canonical (lower-case for hex types).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndicatorKey {
    pub type_: IndicatorType,
    pub value: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidFinding {
    #[error("spec.indicators[{index}].value: {message}")]
    Indicator { index: usize, message: String },
    #[error("spec.indicators: {0}")]
    Indicators(String),
}

impl ProbeFinding {
    /// `spec.state` if given, else the state the exit code maps to.
    pub fn effective_state(&self) -> TestState {
        match (self.spec.state, self.spec.code) {
            (Some(state), _) => state,
            (None, Some(code)) => TestState::from_code(code),
            (None, None) => TestState::None,
        }
    }

    /// When the probe observed the result: `spec.observedTime`, else the creation time.
    pub fn observed_time(&self) -> Option<jiff::Timestamp> {
        self.spec.observed_time.as_ref().or(self.metadata.creation_timestamp.as_ref()).map(|t| t.0)
    }

    /// The indicators, validated again (the schema may be older than the operator) and canonical.
    pub fn indicator_keys(&self) -> Result<Vec<IndicatorKey>, InvalidFinding> {
        let indicators = &self.spec.indicators;
        if indicators.is_empty() || indicators.len() > 64 {
            return Err(InvalidFinding::Indicators(format!(
                "{} indicators given; a finding carries 1 to 64",
                indicators.len()
            )));
        }
        let mut keys: Vec<IndicatorKey> = indicators
            .iter()
            .enumerate()
            .map(|(index, indicator)| {
                canonical(indicator).map_err(|message| InvalidFinding::Indicator { index, message })
            })
            .collect::<Result<_, _>>()?;
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

fn canonical(indicator: &IndicatorSpec) -> Result<IndicatorKey, String> {
    let value = indicator.value.trim();
    let type_ = indicator.type_;
    let value = match type_.hex_lengths() {
        Some(lengths) => {
            if !value.chars().all(|c| c.is_ascii_hexdigit()) || !lengths.contains(&value.len()) {
                let expected = lengths.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(" or ");
                return Err(format!(
                    "{:?} is not a {} value: expected {expected} hex characters",
                    truncate(value, 80),
                    type_.as_str()
                ));
            }
            value.to_ascii_lowercase()
        }
        None => match type_ {
            IndicatorType::IpAddress => {
                value
                    .parse::<std::net::IpAddr>()
                    .map_err(|_| format!("{:?} is not an IP address", truncate(value, 80)))?;
                value.to_string()
            }
            IndicatorType::DomainName => {
                // Two labels at least: Defender refuses a bare name (e.g. a hash typed DomainName).
                let valid = value.len() <= 253
                    && value.contains('.')
                    && value.split('.').all(|label| {
                        !label.is_empty()
                            && label.len() <= 63
                            && !label.starts_with('-')
                            && !label.ends_with('-')
                            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    });
                if !valid {
                    return Err(format!("{:?} is not a domain name (e.g. evil.example.com)", truncate(value, 80)));
                }
                value.to_ascii_lowercase()
            }
            _ => {
                // The `url` crate drops tabs and newlines anywhere and percent-encodes spaces, but
                // the value is pushed as given, not as parsed, and the Defender emulator
                // (the sandbox's) refuses a URL with blanks in it.
                if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!(
                        "{:?} is not a URL: it holds spaces or control characters (percent-encode them)",
                        truncate(value, 80)
                    ));
                }
                let parsed = url::Url::parse(value).map_err(|_| format!("{:?} is not a URL", truncate(value, 80)))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(format!("{:?} is not an http(s) URL", truncate(value, 80)));
                }
                value.to_string()
            }
        },
    };
    Ok(IndicatorKey { type_, value })
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use defender_sandbox::apiserver::cel;
    use serde_json::{Value, json};

    fn finding(state: Option<TestState>, code: Option<i32>, indicators: Vec<IndicatorSpec>) -> ProbeFinding {
        ProbeFinding::new(
            "f",
            ProbeFindingSpec {
                test: TestRef { id: "2b6d3b5a-1a2b-4c3d-8e9f-0a1b2c3d4e5f".into(), name: "t".into() },
                endpoint: None,
                state,
                code,
                observed_time: None,
                indicators,
                partner_ref: None,
            },
        )
    }

    fn sha256(value: &str) -> IndicatorSpec {
        IndicatorSpec { type_: IndicatorType::FileSha256, value: value.into(), file: None }
    }

    #[test]
    fn exit_code_table() {
        assert_eq!(TestState::from_code(101), TestState::Unprotected);
        for code in [9, 15, 100, 105, 106, 107, 126, 127, 137] {
            assert_eq!(TestState::from_code(code), TestState::Protected, "{code}");
        }
        for code in [104, 108, 109] {
            assert_eq!(TestState::from_code(code), TestState::NotRelevant, "{code}");
        }
        for code in [1, 2, 3, 102, 103, 110, 256] {
            assert_eq!(TestState::from_code(code), TestState::Error, "{code}");
        }
        for code in [0, 4, 99, 255, 1000, -1] {
            assert_eq!(TestState::from_code(code), TestState::None, "{code}");
        }
    }

    #[test]
    fn state_wins_over_code() {
        assert_eq!(finding(Some(TestState::Protected), Some(101), vec![]).effective_state(), TestState::Protected);
        assert_eq!(finding(None, Some(101), vec![]).effective_state(), TestState::Unprotected);
        assert_eq!(finding(None, None, vec![]).effective_state(), TestState::None);
    }

    #[test]
    fn hashes_are_lower_cased_and_deduplicated() {
        let upper = "A".repeat(64);
        let keys = finding(None, Some(101), vec![sha256(&upper), sha256(&"a".repeat(64))]).indicator_keys().unwrap();
        assert_eq!(keys, vec![IndicatorKey { type_: IndicatorType::FileSha256, value: "a".repeat(64) }]);
    }

    #[test]
    fn wrong_hash_length_names_the_field() {
        let err = finding(None, Some(101), vec![sha256(&"a".repeat(64)), sha256(&"b".repeat(40))])
            .indicator_keys()
            .unwrap_err();
        assert!(matches!(err, InvalidFinding::Indicator { index: 1, .. }));
        assert!(err.to_string().starts_with("spec.indicators[1].value"), "{err}");
        assert!(err.to_string().contains("64 hex"), "{err}");
    }

    #[test]
    fn non_hex_and_too_many_are_refused() {
        assert!(finding(None, Some(101), vec![sha256(&"g".repeat(64))]).indicator_keys().is_err());
        assert!(finding(None, Some(101), vec![sha256(&"a".repeat(64)); 65]).indicator_keys().is_err());
        assert!(finding(None, Some(101), vec![]).indicator_keys().is_err());
    }

    #[test]
    fn other_types_are_checked() {
        let of = |type_, value: &str| IndicatorSpec { type_, value: value.into(), file: None };
        let ok = finding(
            None,
            Some(101),
            vec![
                of(IndicatorType::IpAddress, "10.0.0.1"),
                of(IndicatorType::DomainName, "Evil.Example.com"),
                of(IndicatorType::Url, "https://x.test/a"),
            ],
        );
        let keys = ok.indicator_keys().unwrap();
        assert!(keys.iter().any(|k| k.value == "evil.example.com"));
        assert!(finding(None, Some(101), vec![of(IndicatorType::IpAddress, "10.0.0.0/8")]).indicator_keys().is_err());
        assert!(finding(None, Some(101), vec![of(IndicatorType::Url, "ftp://x")]).indicator_keys().is_err());
        assert!(finding(None, Some(101), vec![of(IndicatorType::DomainName, "bad domain")]).indicator_keys().is_err());
        for bare in ["a94a8fe5ccb19ba61c4c0873d391e987982fbbd3", "localhost", "-evil.example.com", "evil-.example.com"]
        {
            let err = finding(None, Some(101), vec![of(IndicatorType::DomainName, bare)]).indicator_keys().unwrap_err();
            assert!(err.to_string().contains("is not a domain name"), "{bare}: {err}");
        }
    }

    #[test]
    fn urls_with_blanks_inside_are_refused() {
        // `url::Url::parse` takes them (dropping the tab, encoding the space); Defender would not.
        for value in ["https://x.test/a b", "ht\ttp://x.test/", "https://x.test/\u{1}", "\u{1}https://x.test/"] {
            let indicator = IndicatorSpec { type_: IndicatorType::Url, value: value.into(), file: None };
            let err = canonical(&indicator).unwrap_err();
            assert!(err.contains("is not a URL: it holds spaces or control characters"), "{value:?}: {err}");
        }
        let padded = IndicatorSpec { type_: IndicatorType::Url, value: " https://x.test/a \n".into(), file: None };
        assert_eq!(canonical(&padded).unwrap().value, "https://x.test/a");
    }

    // --- The CRD's rules for the network types against the reconciler ---------------------------

    /// The `x-kubernetes-validations` rules on an indicator, as the generated CRD carries them.
    fn crd_indicator_rules() -> Vec<cel::Program> {
        let crd = serde_json::to_value(<ProbeFinding as kube::CustomResourceExt>::crd()).unwrap();
        let at = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/indicators/items";
        let rules = crd.pointer(&format!("{at}/x-kubernetes-validations")).and_then(Value::as_array).unwrap();
        rules.iter().map(|r| cel::compile(r["rule"].as_str().unwrap()).unwrap()).collect()
    }

    /// Whether the API server's CEL rules take the indicator (the sandbox's evaluator, whose
    /// `matches` is the `regex` crate).
    fn schema_accepts(rules: &[cel::Program], type_: IndicatorType, value: &str) -> bool {
        let indicator = json!({"type": type_.as_str(), "value": value});
        rules.iter().all(|rule| match rule.eval(&indicator, None) {
            Ok(Value::Bool(verdict)) => verdict,
            other => panic!("{type_:?} {value:?}: a rule did not evaluate to a bool: {other:?}"),
        })
    }

    /// Every rule that checks `self.value` names `spec.indicators[i].value` (its `fieldPath`),
    /// like the reconciler's own errors; and `kubectl explain probefinding` says what one is.
    #[test]
    fn value_rules_name_the_value_field_and_the_crd_is_described() {
        let crd = serde_json::to_value(<ProbeFinding as kube::CustomResourceExt>::crd()).unwrap();
        let schema = "/spec/versions/0/schema/openAPIV3Schema";
        let at = format!("{schema}/properties/spec/properties/indicators/items/x-kubernetes-validations");
        let rules = crd.pointer(&at).and_then(Value::as_array).unwrap();
        assert_eq!(rules.len(), 7);
        for rule in rules {
            let src = rule["rule"].as_str().unwrap();
            assert!(src.contains("self.value"), "{src}");
            assert_eq!(rule["fieldPath"], ".value", "{src}");
        }
        let description = crd.pointer(&format!("{schema}/description")).and_then(Value::as_str).unwrap();
        assert!(description.starts_with("A security test's result on one endpoint"), "{description}");
        assert!(!description.contains("Auto-generated"), "{description}");
    }

    fn reconciler_accepts(type_: IndicatorType, value: &str) -> bool {
        canonical(&IndicatorSpec { type_, value: value.into(), file: None }).is_ok()
    }

    fn network_regex(type_: IndicatorType) -> regex::Regex {
        regex::Regex::new(&value_regex(type_).unwrap()).unwrap()
    }

    /// Both take it, neither does, or only the schema (a known looser case: the reconciler is the
    /// final check). "Only the reconciler" is the one outcome that must never happen: the API
    /// server would refuse a finding the operator would deliver.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Takes {
        Both,
        Neither,
        SchemaOnly,
    }

    #[test]
    fn network_rules_agree_with_the_reconciler() {
        use IndicatorType::{DomainName, IpAddress, Url};
        use Takes::{Both, Neither, SchemaOnly};
        let label63 = "a".repeat(63);
        let domain253 = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
        let domain255 = format!("{label63}.{label63}.{label63}.{label63}");
        let label64 = format!("{}.example.com", "a".repeat(64));
        let sha1 = "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3";
        let table: Vec<(IndicatorType, &str, Takes)> = vec![
            // IPv4
            (IpAddress, "203.0.113.7", Both),
            (IpAddress, "0.0.0.0", Both),
            (IpAddress, "255.255.255.255", Both),
            (IpAddress, " 203.0.113.7\n", Both),
            (IpAddress, "256.1.1.1", Neither),
            (IpAddress, "999.1.1.1", Neither),
            (IpAddress, "1.2.3.256", Neither),
            (IpAddress, "01.2.3.4", Neither),
            (IpAddress, "1.2.3", Neither),
            (IpAddress, "1.2.3.4.5", Neither),
            (IpAddress, "10.0.0.0/8", Neither),
            (IpAddress, "203.0.113.7:443", Neither),
            (IpAddress, "203.0.113 .7", Neither),
            (IpAddress, "١.٢.٣.٤", Neither),
            // IPv6: full, compressed, IPv4-mapped and -embedded
            (IpAddress, "2001:0db8:0000:0000:0000:ff00:0042:8329", Both),
            (IpAddress, "2001:DB8::7", Both),
            (IpAddress, "::1", Both),
            (IpAddress, "::", Both),
            (IpAddress, "fe80::", Both),
            (IpAddress, "1:2:3:4:5:6:7::", Both),
            (IpAddress, "::2:3:4:5:6:7:8", Both),
            (IpAddress, "::ffff:192.0.2.1", Both),
            (IpAddress, "64:ff9b::192.0.2.33", Both),
            (IpAddress, "1:2:3:4:5:6:192.0.2.1", Both),
            (IpAddress, "\u{a0}::1\u{3000}", Both),
            (IpAddress, "1:2:3:4:5:6:7:8:9", Neither),
            (IpAddress, "1:2:3:4:5:6:7", Neither),
            (IpAddress, "1:2:3:4:5:6:7:8::", Neither),
            (IpAddress, "1::2::3", Neither),
            (IpAddress, ":1::2", Neither),
            (IpAddress, "12345::", Neither),
            (IpAddress, "::g", Neither),
            (IpAddress, "::ffff:256.1.1.1", Neither),
            (IpAddress, "::ffff:01.2.3.4", Neither),
            (IpAddress, "1:2:3:4:5:6:7:192.0.2.1", Neither),
            (IpAddress, "192.0.2.1::", Neither),
            (IpAddress, "fe80::1%eth0", Neither),
            (IpAddress, "[::1]", Neither),
            (IpAddress, "2001:db8::/32", Neither),
            (IpAddress, "evil.example.com", Neither),
            (IpAddress, sha1, Neither),
            (IpAddress, "", Neither),
            // Domain names
            (DomainName, "evil.example.com", Both),
            (DomainName, "Evil.Example.COM", Both),
            (DomainName, "a.b", Both),
            (DomainName, "xn--bcher-kva.example", Both),
            (DomainName, "a-b.c--d.e9", Both),
            (DomainName, "1.2.3.4", Both),
            (DomainName, "\tevil.example.com \n", Both),
            (DomainName, &domain253, Both),
            (DomainName, "localhost", Neither),
            (DomainName, sha1, Neither),
            (DomainName, "evil.example.com.", Neither),
            (DomainName, ".evil.example.com", Neither),
            (DomainName, "evil..example.com", Neither),
            (DomainName, "bücher.example", Neither),
            (DomainName, "-evil.example.com", Neither),
            (DomainName, "evil-.example.com", Neither),
            (DomainName, "evil_x.example.com", Neither),
            (DomainName, "evil example.com", Neither),
            (DomainName, "evil.example.com:443", Neither),
            (DomainName, "*.example.com", Neither),
            (DomainName, "https://evil.example.com", Neither),
            (DomainName, "evil.example.com/path", Neither),
            (DomainName, &label64, Neither),
            (DomainName, &domain255, SchemaOnly), // over 253 characters, labels all valid
            // URLs
            (Url, "https://evil.example.com/path", Both),
            (Url, "http://x.test", Both),
            (Url, "HTTPS://X.TEST/A", Both),
            (Url, "https://evil.example.com:8443/a/b?c=d&e#f", Both),
            (Url, "https://user:pw@x.test/", Both),
            (Url, "https://[2001:db8::7]:8080/", Both),
            (Url, "https://203.0.113.7/", Both),
            (Url, "https://bücher.example/ü", Both),
            (Url, "https://xn--bcher-kva.example", Both),
            (Url, "https://x.test/a%20b", Both),
            (Url, " https://x.test/\n", Both),
            // WHATWG parsing takes these; so does the schema.
            (Url, "http:x.test", Both),
            (Url, "https:///x.test", Both),
            (Url, r"https:\\x.test\a", Both),
            (Url, "evil.example.com/path", Neither),
            (Url, "//evil.example.com/path", Neither),
            (Url, "ftp://x.test", Neither),
            (Url, "file:///etc/passwd", Neither),
            (Url, "javascript:alert(1)", Neither),
            (Url, "httpx://x.test", Neither),
            (Url, "https://", Neither),
            (Url, "https:", Neither),
            (Url, "http://@", Neither),
            (Url, "https://:443/", Neither),
            (Url, "https://x.test/a b", Neither),
            (Url, "https://x .test", Neither),
            (Url, "ht\ttp://x.test", Neither),
            (Url, "https://x.test/\u{7f}", Neither),
            (Url, "https://ex<ample.com", Neither),
            (Url, sha1, Neither),
            // The host and the port are the reconciler's to check.
            (Url, "https://999.1.1.1/", SchemaOnly),
            (Url, "https://x.test:99999/", SchemaOnly),
            (Url, "https://x.test:https/", SchemaOnly),
            (Url, "https://[::1/", SchemaOnly),
            (Url, "https://a%20b.test/", SchemaOnly),
        ];
        let rules = crd_indicator_rules();
        let mut wrong = vec![];
        for (type_, value, expected) in &table {
            let took = match (schema_accepts(&rules, *type_, value), reconciler_accepts(*type_, value)) {
                (true, true) => Both,
                (false, false) => Neither,
                (true, false) => SchemaOnly,
                (false, true) => {
                    wrong.push(format!("{type_:?} {value:?}: the schema refuses what the reconciler takes"));
                    continue;
                }
            };
            if took != *expected {
                wrong.push(format!("{type_:?} {value:?}: expected {expected:?}, got {took:?}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// The classes the rules are built of are exactly what `str::trim` takes off, and what a URL
    /// may not hold: every `char`.
    #[test]
    fn white_space_classes_are_exact() {
        let white = regex::Regex::new(&format!("^[{WHITE_SPACE}]$")).unwrap();
        let blank = regex::Regex::new(&format!("^[{BLANK_OR_CONTROL}]$")).unwrap();
        let mut buf = [0u8; 4];
        for c in (0..=char::MAX as u32).filter_map(char::from_u32) {
            let c_str = c.encode_utf8(&mut buf);
            assert_eq!(white.is_match(c_str), c.is_whitespace(), "{c:?}");
            assert_eq!(blank.is_match(c_str), c.is_whitespace() || c.is_control(), "{c:?}");
        }
    }

    /// RE2 (Kubernetes) and the `regex` crate (the sandbox) read these regexes the same way only
    /// without their differences: no Perl classes (Unicode-wide in `regex`), no flags, no
    /// lookaround or backreferences (which RE2 refuses), no `\` escapes but `\x{..}` and `\\`.
    #[test]
    fn network_regexes_use_the_syntax_re2_and_regex_share() {
        for type_ in [IndicatorType::IpAddress, IndicatorType::DomainName, IndicatorType::Url] {
            let regex = value_regex(type_).unwrap();
            assert!(!regex.contains("(?"), "{type_:?}: {regex}");
            let mut rest = regex.as_str();
            while let Some(at) = rest.find('\\') {
                rest = &rest[at + 1..];
                assert!(
                    rest.starts_with("x{") || rest.starts_with('\\'),
                    "{type_:?}: an escape other than \\x{{..}}: {rest}"
                );
                rest = &rest[1..];
            }
            // One `matches` on a 2048-character value, as Kubernetes estimates it, times 64
            // indicators, well within its limit of 10^7 per rule.
            let estimate = (2048u64 / 10 + 1) * (regex.len() as u64).div_ceil(4) * 64;
            assert!(estimate < 5_000_000, "{type_:?}: estimated cost {estimate}");
        }
    }

    /// Every 1- to 3-digit octet, in IPv4 and in IPv4-in-IPv6 addresses.
    #[test]
    fn ipv4_octets_agree_exhaustively() {
        let regex = network_regex(IndicatorType::IpAddress);
        let digits = "0123456789";
        let mut octets: Vec<String> = digits.chars().map(String::from).collect();
        for _ in 0..2 {
            let longer: Vec<String> = octets
                .iter()
                .filter(|o| o.len() == octets.last().unwrap().len())
                .flat_map(|o| digits.chars().map(move |d| format!("{o}{d}")))
                .collect();
            octets.extend(longer);
        }
        assert_eq!(octets.len(), 1110);
        for octet in &octets {
            for value in [format!("{octet}.0.0.0"), format!("1.2.3.{octet}"), format!("::ffff:1.{octet}.3.4")] {
                assert_eq!(regex.is_match(&value), reconciler_accepts(IndicatorType::IpAddress, &value), "{value}");
            }
        }
    }

    /// Every arrangement of up to 17 groups and colons (`a`, `aa`, `a:a`, `a::a`, `:::`, ...: nine
    /// groups at most), bare and followed by a group or an IPv4 address.
    #[test]
    fn ipv6_shapes_agree_exhaustively() {
        let regex = network_regex(IndicatorType::IpAddress);
        for len in 0..=17u32 {
            for bits in 0..(1u32 << len) {
                let shape: String = (0..len).map(|i| if bits >> i & 1 == 1 { ':' } else { 'a' }).collect();
                for value in [shape.clone(), format!("{shape}192.0.2.1"), format!("{shape}f")] {
                    assert_eq!(regex.is_match(&value), reconciler_accepts(IndicatorType::IpAddress, &value), "{value}");
                }
            }
        }
    }

    /// Every string of up to 6 characters from letters, a digit, `-`, `.` and `_`.
    #[test]
    fn domain_shapes_agree_exhaustively() {
        let regex = network_regex(IndicatorType::DomainName);
        let alphabet = ['a', 'Z', '0', '-', '.', '_'];
        let mut values = vec![String::new()];
        let mut at = 0;
        while at < values.len() {
            if values[at].len() < 6 {
                let longer: Vec<String> = alphabet.iter().map(|c| format!("{}{c}", values[at])).collect();
                values.extend(longer);
            }
            at += 1;
        }
        for value in &values {
            assert_eq!(regex.is_match(value), reconciler_accepts(IndicatorType::DomainName, value), "{value:?}");
        }
    }

    /// Every ASCII character and a few others, in every part of a URL: whatever the reconciler
    /// takes, the schema takes (the schema may take more: hosts and ports are the reconciler's).
    #[test]
    fn url_characters_never_refused_when_the_reconciler_takes_them() {
        let regex = network_regex(IndicatorType::Url);
        let others = ['ü', '\u{a0}', '\u{85}', '\u{200b}', '\u{3000}', '\u{feff}', '\u{1f600}'];
        let templates = [
            "{}https://x.test/p",
            "https://x.test/p{}",
            "h{}ttp://x.test/",
            "http{}://x.test/",
            "https:{}//x.test/",
            "https:/{}/x.test/",
            "https://{}x.test/",
            "https://x{}.test/",
            "https://x.test{}/",
            "https://x.test{}",
            "https://x.test:{}/",
            "https://x.test:8{}/",
            "https://u{}@x.test/",
            "https://x.test/{}",
            "https://x.test/?{}",
            "https://x.test/#{}",
            "https://[::1{}]/",
        ];
        for c in (0u8..128).map(char::from).chain(others) {
            for template in templates {
                let value = template.replace("{}", &c.to_string());
                if reconciler_accepts(IndicatorType::Url, &value) {
                    assert!(regex.is_match(&value), "the schema refuses what the reconciler takes: {value:?}");
                }
            }
        }
    }
}
