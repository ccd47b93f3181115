//! Indicator wire types.

use serde::{Deserialize, Serialize};

/// An indicator as Defender returns it (only the fields the operator reads).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Indicator {
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    pub indicator_value: String,
    pub indicator_type: String,
    #[serde(default)]
    pub application: Option<String>,
    /// Read from `externalId` or `externalID`.
    #[serde(default, alias = "externalID")]
    pub external_id: Option<String>,
    #[serde(default)]
    pub expiration_time: Option<String>,
}

impl Indicator {
    /// Whether `expirationTime` is at or before `now` (an expired indicator may still be listed;
    /// treat it as absent). Unparseable times count as not expired.
    pub fn is_expired(&self, now: jiff::Timestamp) -> bool {
        self.expiration_time.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).is_some_and(|t| t <= now)
    }
}

/// Defender ids are numeric strings; tolerate a bare number.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("expected a string or number id, got {other}"))),
    }
}

/// A body for submit/import (case-sensitive field names, as Defender requires).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewIndicator {
    pub indicator_value: String,
    pub indicator_type: String,
    pub action: String,
    pub title: String,
    pub description: String,
    pub application: String,
    pub external_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,
    pub severity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recommended_actions: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rbac_group_names: Vec<String>,
    pub generate_alert: bool,
}

/// One per-item result of `/api/indicators/import`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportResult {
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub id: Option<String>,
    pub indicator: String,
    #[serde(default)]
    pub is_failed: bool,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

fn opt_string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// BatchDelete answers 204 only when every id existed; 404 when any did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchDeleteOutcome {
    AllDeleted,
    SomeNotFound,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn indicator_tolerant_parsing() {
        let i: Indicator = serde_json::from_value(json!({
            "id": 995, "indicatorValue": "abc", "indicatorType": "FileSha256", "externalID": "ns/p",
            "rbacGroupNames": null, "expirationTime": null, "lastUpdatedBy": null, "generateAlert": true
        }))
        .unwrap();
        assert_eq!(i.id, "995");
        assert_eq!(i.external_id.as_deref(), Some("ns/p"));
        assert!(!i.is_expired(jiff::Timestamp::now()));
        let j: Indicator = serde_json::from_value(json!({
            "id": "2841", "indicatorValue": "abc", "indicatorType": "FileSha256", "externalId": "x",
            "expirationTime": "2020-01-01T00:00:00.0000000Z"
        }))
        .unwrap();
        assert_eq!(j.external_id.as_deref(), Some("x"));
        assert!(j.is_expired(jiff::Timestamp::now()));
    }

    #[test]
    fn new_indicator_wire_names() {
        let n = NewIndicator {
            indicator_value: "v".into(),
            indicator_type: "FileSha256".into(),
            action: "Block".into(),
            title: "t".into(),
            description: "d".into(),
            application: "defender-operator".into(),
            external_id: "ns/p".into(),
            expiration_time: None,
            severity: "High".into(),
            recommended_actions: None,
            rbac_group_names: vec![],
            generate_alert: true,
        };
        let v = serde_json::to_value(&n).unwrap();
        for key in [
            "indicatorValue",
            "indicatorType",
            "action",
            "title",
            "description",
            "application",
            "externalId",
            "severity",
            "generateAlert",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert!(v.get("expirationTime").is_none());
    }

    #[test]
    fn import_result_failed_item() {
        let r: ImportResult = serde_json::from_value(json!({"id": null, "indicator": "x", "isFailed": true,
            "failureReason": "Maximum number of indicators reached"}))
        .unwrap();
        assert_eq!(r.id, None);
        assert!(r.is_failed);
    }
}
