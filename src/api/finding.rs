//! `ProbeFinding`: one result of one security test on one endpoint, as a probe reported it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
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
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartnerRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One indicator of a tested binary. Hash values are hex of the type's length, any case.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'FileSha256' || self.value.matches('^[0-9a-fA-F]{64}$')", "message": "a FileSha256 value is 64 hex characters"},
    {"rule": "self.type != 'FileSha1' || self.value.matches('^[0-9a-fA-F]{40}$')", "message": "a FileSha1 value is 40 hex characters"},
    {"rule": "self.type != 'FileMd5' || self.value.matches('^[0-9a-fA-F]{32}$')", "message": "a FileMd5 value is 32 hex characters"},
    {"rule": "self.type != 'CertificateThumbprint' || self.value.matches('^[0-9a-fA-F]{40}([0-9a-fA-F]{24})?$')", "message": "a CertificateThumbprint value is 40 (SHA-1) or 64 (SHA-256) hex characters"}
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
    /// Partners holding the indicators over partners that should, e.g. `1/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<Delivery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::conditions::schema")]
    pub conditions: Vec<Condition>,
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

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeliveryState {
    /// In Defender, created by this partner.
    Submitted,
    /// Waiting to be sent (or the partner is not attached yet).
    Pending,
    Failed,
    /// Already in Defender under another owner; left untouched.
    External,
    /// Nothing to deliver (the test was not UNPROTECTED).
    Skipped,
    /// The finding is past its expiry; nothing is pushed.
    Expired,
    /// Withdrawn from Defender.
    Withdrawn,
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
}
