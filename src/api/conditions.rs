//! Upstream `meta/v1 Condition` helpers: `lastTransitionTime` moves only when `status` does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{JsonSchema, Schema, SchemaGenerator};

use super::reason::Reason;

pub const READY: &str = "Ready";
pub const CREDENTIALS_VALID: &str = "CredentialsValid";
pub const PERMISSIONS_GRANTED: &str = "PermissionsGranted";
pub const INDICATORS_SYNCED: &str = "IndicatorsSynced";

/// A condition as a reconciler decides it, before timestamps and generations are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub status: bool,
    /// Not checked (status `Unknown`); `status` is then false.
    pub unknown: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn new(type_: &'static str, status: bool, reason: impl Reason, message: impl Into<String>) -> Self {
        Self { type_, status, unknown: false, reason: reason.as_str(), message: message.into() }
    }

    /// A condition that could not be checked (e.g. permissions without a valid token).
    pub fn unknown(type_: &'static str, reason: impl Reason, message: impl Into<String>) -> Self {
        Self { unknown: true, ..Self::new(type_, false, reason, message) }
    }
}

/// Merge `verdicts` into `existing`: a condition keeps its `lastTransitionTime` unless its status
/// flipped, so rewriting the same verdict is a no-op and never re-triggers a watch.
pub fn merge(existing: &[Condition], verdicts: &[Verdict], generation: Option<i64>, now: &Time) -> Vec<Condition> {
    let mut merged: Vec<Condition> = verdicts
        .iter()
        .map(|verdict| {
            let status = match (verdict.unknown, verdict.status) {
                (true, _) => "Unknown",
                (false, true) => "True",
                (false, false) => "False",
            }
            .to_string();
            let previous = existing.iter().find(|c| c.type_ == verdict.type_);
            let last_transition_time = match previous {
                Some(previous) if previous.status == status => previous.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: verdict.type_.to_string(),
                status,
                reason: verdict.reason.to_string(),
                message: verdict.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    // Conditions this writer does not decide (none today) are kept as they were.
    for condition in existing {
        if !merged.iter().any(|c| c.type_ == condition.type_) {
            merged.push(condition.clone());
        }
    }
    merged
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Schema of a `conditions` list: a list-map keyed by `type`, as upstream types declare it.
pub fn schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<Condition> as JsonSchema>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PartnerReason;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn new_condition_gets_now() {
        let merged = merge(&[], &[Verdict::new(READY, true, PartnerReason::Attached, "ok")], Some(3), &at(100));
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].status, "True");
        assert_eq!(merged[0].observed_generation, Some(3));
        assert_eq!(merged[0].last_transition_time, at(100));
    }

    #[test]
    fn unchanged_status_keeps_transition_time_even_if_reason_changes() {
        let first = merge(&[], &[Verdict::new(READY, false, PartnerReason::InvalidSecret, "a")], Some(1), &at(100));
        let second = merge(&first, &[Verdict::new(READY, false, PartnerReason::AppNotFound, "b")], Some(2), &at(200));
        assert_eq!(second[0].last_transition_time, at(100));
        assert_eq!(second[0].reason, "AppNotFound");
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn flipped_status_moves_transition_time() {
        let first = merge(&[], &[Verdict::new(READY, false, PartnerReason::InvalidSecret, "a")], Some(1), &at(100));
        let second = merge(&first, &[Verdict::new(READY, true, PartnerReason::Attached, "b")], Some(1), &at(200));
        assert_eq!(second[0].last_transition_time, at(200));
    }

    #[test]
    fn unknown_is_its_own_status() {
        let unknown = merge(
            &[],
            &[Verdict::unknown(PERMISSIONS_GRANTED, PartnerReason::NotChecked, "no token")],
            Some(1),
            &at(100),
        );
        assert_eq!(unknown[0].status, "Unknown");
        let granted = merge(
            &unknown,
            &[Verdict::new(PERMISSIONS_GRANTED, true, PartnerReason::Granted, "ok")],
            Some(1),
            &at(200),
        );
        assert_eq!((granted[0].status.as_str(), granted[0].last_transition_time.0.as_second()), ("True", 200));
    }

    #[test]
    fn same_verdict_twice_is_identical() {
        let verdicts = [
            Verdict::new(READY, true, PartnerReason::Attached, "ok"),
            Verdict::new(CREDENTIALS_VALID, true, PartnerReason::Valid, "ok"),
        ];
        let first = merge(&[], &verdicts, Some(1), &at(100));
        let second = merge(&first, &verdicts, Some(1), &at(500));
        assert_eq!(first, second);
    }
}
