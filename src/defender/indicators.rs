//! Indicator wire types.

use serde::{Deserialize, Serialize};

/// An indicator as Defender returns it (only the fields the operator reads).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Indicator {
    pub id: String,
    pub indicator_value: String,
    pub indicator_type: String,
    #[serde(default)]
    pub application: Option<String>,
    /// Read from `externalId` or `externalID`.
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub expiration_time: Option<String>,
    #[serde(default)]
    pub generate_alert: Option<bool>,
    #[serde(default)]
    pub rbac_group_names: Vec<String>,
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
    pub id: Option<String>,
    pub indicator: String,
    pub is_failed: bool,
    pub failure_reason: Option<String>,
}

/// BatchDelete answers 204 only when every id existed; 404 when any did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchDeleteOutcome {
    AllDeleted,
    SomeNotFound,
}
