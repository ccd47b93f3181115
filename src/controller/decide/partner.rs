//! A partner reconcile's decisions. The reconciler reads (the partner, its Secret), asks these
//! functions what to do, asks Entra and Defender when they say so, asks again with the answer,
//! then acts in one place: the engine step, the status write and its event, when to look again.
//! No IO here.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::SyncReport;
use crate::api::conditions::{self, CREDENTIALS_VALID, INDICATORS_SYNCED, PERMISSIONS_GRANTED, READY, Verdict};
use crate::api::partner::{DefenderPartnerStatus, IndicatorCounts, TenantQuota};
use crate::api::{DefenderPartner, PartnerReason, PartnerState, REVALIDATE_ANNOTATION};
use crate::defender::{DefenderError, Validation};

/// Why a partner's credentials cannot be used, found before asking Entra (a missing Secret or
/// key, a malformed tenant, a host off the allow-list).
#[derive(Clone, Debug, PartialEq)]
pub struct Unusable {
    pub reason: PartnerReason,
    pub message: String,
    /// The credentials' hash, when they could be read.
    pub credentials_hash: Option<String>,
}

/// Usable credentials, as far as the decisions need them.
#[derive(Clone, Debug, PartialEq)]
pub struct Usable {
    /// SHA-256 of the values used: a change means re-validating.
    pub credentials_hash: String,
    /// A certificate's validity window.
    pub valid_from: Option<Timestamp>,
    pub valid_until: Option<Timestamp>,
}

/// How soon a partner is asked again when what it misses is not watched (a ServiceAccount, RBAC).
pub const UNWATCHED_RETRY: Duration = Duration::from_secs(60);

/// How long before a certificate expires each validation warns about it.
pub const EXPIRING_WITHIN: jiff::SignedDuration = jiff::SignedDuration::from_hours(30 * 24);

/// The warning to publish when the credentials expire within [`EXPIRING_WITHIN`].
pub fn expiring(usable: &Usable, now: Timestamp) -> Option<String> {
    let until = usable.valid_until?;
    (until > now && until.duration_since(now) <= EXPIRING_WITHIN).then(|| {
        let days = until.duration_since(now).as_hours() / 24;
        format!(
            "the certificate expires at {until} (in {days} days): upload a new one to the app and update the Secret"
        )
    })
}

/// What happens to the partner's sync engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineStep {
    /// Start it, or hand the running one the partner's latest spec.
    Run,
    Stop,
    /// Leave it as it is (a transient failure: it keeps pushing, or stays stopped).
    Keep,
}

/// The status to write, before the engine's counts and the clock are added.
#[derive(Clone, Debug, PartialEq)]
pub enum StatusUpdate {
    /// Attached: from a fresh validation, or (`None`) from the previous status.
    Attached {
        validation: Option<Validation>,
        credentials_hash: Option<String>,
        handled_revalidate: Handled,
    },
    Detached(Detach),
}

/// Whether this pass acted on the `detect.dev/revalidate` annotation (and on which value).
#[derive(Clone, Debug, PartialEq)]
pub enum Handled {
    Unchanged,
    Value(Option<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Detach {
    pub reason: PartnerReason,
    pub message: String,
    pub credentials_ok: bool,
    pub permissions_ok: Option<bool>,
    pub credentials_hash: Option<String>,
    /// Entra or Defender answered: `lastValidatedTime` moves.
    pub validated: bool,
    pub handled_revalidate: Handled,
    /// (missing, granted) roles, when the answer was a missing permission.
    pub permissions: Option<(Vec<String>, Vec<String>)>,
}

impl Detach {
    fn new(reason: PartnerReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            credentials_ok: false,
            permissions_ok: None,
            credentials_hash: None,
            validated: false,
            handled_revalidate: Handled::Unchanged,
            permissions: None,
        }
    }
}

/// When to look at the partner again.
#[derive(Debug)]
pub enum Next {
    /// At the next change of the partner or its Secret.
    AwaitChange,
    /// After this long (jittered by the reconciler), or sooner on a change.
    Requeue(Duration),
    /// With the controller's backoff: the error is transient.
    Backoff(DefenderError),
}

#[derive(Debug)]
pub struct Decision {
    pub engine: EngineStep,
    pub status: StatusUpdate,
    pub next: Next,
}

impl Decision {
    fn detach(detach: Detach) -> Self {
        Self { engine: EngineStep::Stop, status: StatusUpdate::Detached(detach), next: Next::AwaitChange }
    }
}

/// A validation is due: `interval` is the re-validation interval, `requested` the annotation's value.
#[derive(Clone, Debug, PartialEq)]
pub struct Validate {
    pub interval: Duration,
    pub requested: Option<String>,
}

/// Decided from the spec alone, before anything is read: a partner the operator could not read
/// (`unreadable` says why, naming the field), suspended, or a spec the operator cannot honour (a
/// duration over its maximum, named with its field).
pub fn from_spec(partner: &DefenderPartner, unreadable: Option<&str>) -> Option<Decision> {
    if let Some(why) = unreadable {
        let message = format!(
            "defender-operator {} cannot read this partner: {why}; upgrade the operator (CRDs first) or remove it",
            env!("CARGO_PKG_VERSION")
        );
        return Some(Decision::detach(Detach::new(PartnerReason::UnsupportedSpec, message)));
    }
    if partner.spec.suspend {
        let message = "spec.suspend is true: nothing is pushed or withdrawn";
        return Some(Decision::detach(Detach::new(PartnerReason::Suspended, message)));
    }
    let revalidate = partner.spec.revalidate_interval().err();
    let expire = partner.spec.indicator.expire_after().err();
    let problems: Vec<String> = revalidate.into_iter().chain(expire).map(|e| e.to_string()).collect();
    (!problems.is_empty()).then(|| Decision::detach(Detach::new(PartnerReason::InvalidSpec, problems.join("; "))))
}

/// Decided once the credentials were read: detach when they cannot be used (a certificate
/// outside its validity window included, without asking Entra); keep the last validation while it
/// holds for these credentials and this generation (and the engine runs, and no re-validation was
/// asked for); else validate.
pub fn from_credentials(
    partner: &DefenderPartner,
    credentials: Result<&Usable, &Unusable>,
    engine_running: bool,
    now: Timestamp,
) -> Result<Decision, Validate> {
    let usable = match credentials {
        Ok(usable) => usable,
        Err(unusable) => {
            let mut detach = Detach::new(unusable.reason, unusable.message.clone());
            detach.credentials_hash = unusable.credentials_hash.clone();
            let mut decision = Decision::detach(detach);
            // A ServiceAccount or the operator's RBAC is fixed where no watch of the operator
            // sees it: asked again soon.
            if matches!(unusable.reason, PartnerReason::ServiceAccountNotFound | PartnerReason::TokenRequestDenied) {
                decision.next = Next::Requeue(UNWATCHED_RETRY);
            }
            return Ok(decision);
        }
    };
    let hash = usable.credentials_hash.as_str();
    let outside = match (usable.valid_from, usable.valid_until) {
        (_, Some(until)) if until <= now => Some((
            PartnerReason::CertificateExpired,
            format!("the certificate expired at {until}: upload a new one to the app and update the Secret"),
        )),
        (Some(from), _) if from > now => Some((
            PartnerReason::CertificateInvalid,
            format!("the certificate is not valid before {from}: use a certificate that is valid now"),
        )),
        _ => None,
    };
    if let Some((reason, message)) = outside {
        let mut detach = Detach::new(reason, message);
        detach.credentials_hash = Some(hash.to_string());
        return Ok(Decision::detach(detach));
    }
    let interval = revalidate_interval(partner);
    let previous = partner.status.clone().unwrap_or_default();
    let requested = partner.metadata.annotations.as_ref().and_then(|a| a.get(REVALIDATE_ANNOTATION)).cloned();
    let asked_again = requested.is_some() && requested != previous.last_handled_revalidate;
    match still_valid(partner, &previous, hash, interval, now) {
        Some(remaining) if !asked_again && engine_running => Ok(Decision {
            engine: EngineStep::Run,
            status: StatusUpdate::Attached {
                validation: None,
                credentials_hash: None,
                handled_revalidate: Handled::Unchanged,
            },
            next: Next::Requeue(remaining),
        }),
        _ => Err(Validate { interval, requested }),
    }
}

/// Decided from Entra's and Defender's answer.
pub fn from_validation(
    partner: &DefenderPartner,
    hash: &str,
    validate: Validate,
    answer: Result<Validation, DefenderError>,
    engine_running: bool,
) -> Decision {
    let previous = partner.status.clone().unwrap_or_default();
    let error = match answer {
        Ok(validation) => {
            return Decision {
                engine: EngineStep::Run,
                status: StatusUpdate::Attached {
                    validation: Some(validation),
                    credentials_hash: Some(hash.to_string()),
                    handled_revalidate: Handled::Value(validate.requested),
                },
                next: Next::Requeue(validate.interval),
            };
        }
        Err(error) => error,
    };
    let transient = error.is_transient();
    if transient
        && previous.state == Some(PartnerState::Attached)
        && previous.credentials_hash.as_deref() == Some(hash)
        && previous.observed_generation == partner.metadata.generation
        && engine_running
    {
        // A hiccup while re-checking credentials that worked: keep pushing and retry with
        // backoff rather than flapping to Detached on one 503.
        return Decision {
            engine: EngineStep::Keep,
            status: StatusUpdate::Attached {
                validation: None,
                credentials_hash: None,
                handled_revalidate: Handled::Unchanged,
            },
            next: Next::Backoff(error),
        };
    }
    let (credentials_ok, permissions_ok) = match &error {
        DefenderError::MissingPermission { .. } | DefenderError::Api { status: 403, .. } => (true, Some(false)),
        DefenderError::Token { .. } | DefenderError::ClaimsMismatch(_) => (false, None),
        _ => (previous.state == Some(PartnerState::Attached), None),
    };
    let detach = Detach {
        credentials_ok,
        permissions_ok,
        credentials_hash: Some(hash.to_string()),
        validated: true,
        handled_revalidate: Handled::Value(validate.requested),
        permissions: match &error {
            DefenderError::MissingPermission { missing, granted } => Some((missing.clone(), granted.clone())),
            _ => None,
        },
        ..Detach::new(error.reason(), error.to_string())
    };
    Decision {
        engine: if transient { EngineStep::Keep } else { EngineStep::Stop },
        status: StatusUpdate::Detached(detach),
        // What Entra or Defender refused may be fixed there (consent granted, app enabled), where
        // no Kubernetes event says so: ask again at the re-validation interval.
        next: if transient { Next::Backoff(error) } else { Next::Requeue(validate.interval) },
    }
}

pub fn revalidate_interval(partner: &DefenderPartner) -> Duration {
    partner.spec.revalidate_interval().unwrap_or(Duration::from_secs(3600)).max(Duration::from_secs(10))
}

/// Time left before re-validation is due, when the last one still holds for these credentials
/// and this generation.
fn still_valid(
    partner: &DefenderPartner,
    status: &DefenderPartnerStatus,
    hash: &str,
    interval: Duration,
    now: Timestamp,
) -> Option<Duration> {
    if status.state != Some(PartnerState::Attached)
        || status.credentials_hash.as_deref() != Some(hash)
        || status.observed_generation != partner.metadata.generation
    {
        return None;
    }
    let validated = status.last_validated_time.as_ref()?.0;
    let age = now.duration_since(validated).unsigned_abs();
    interval.checked_sub(age)
}

/// The status an update gives, with the engine's `report` (when it runs) and the credentials
/// read (when they could be) at `now`.
pub fn status(
    partner: &DefenderPartner,
    update: &StatusUpdate,
    report: Option<&SyncReport>,
    usable: Option<&Usable>,
    now: Timestamp,
) -> DefenderPartnerStatus {
    let mut status = status_of(partner, update, report, now);
    status.credentials_type = Some(partner.spec.credentials.type_);
    if let Some(usable) = usable {
        status.credentials_expiry = usable.valid_until.map(Time);
    }
    status
}

fn status_of(
    partner: &DefenderPartner,
    update: &StatusUpdate,
    report: Option<&SyncReport>,
    now: Timestamp,
) -> DefenderPartnerStatus {
    let previous = partner.status.clone().unwrap_or_default();
    match update {
        StatusUpdate::Attached { validation, credentials_hash, handled_revalidate } => {
            let mut status = attached(partner, &previous, validation.as_ref(), report, now);
            if credentials_hash.is_some() {
                status.credentials_hash = credentials_hash.clone();
            }
            if let Handled::Value(value) = handled_revalidate {
                status.last_handled_revalidate = value.clone();
            }
            status
        }
        StatusUpdate::Detached(detach) => {
            let mut status = detached(partner, detach, now);
            if detach.credentials_hash.is_some() {
                status.credentials_hash = detach.credentials_hash.clone();
            }
            if detach.validated {
                status.last_validated_time = Some(Time(now));
            }
            if let Handled::Value(value) = &detach.handled_revalidate {
                status.last_handled_revalidate = value.clone();
            }
            if let Some((missing, granted)) = &detach.permissions {
                status.missing_permissions = missing.clone();
                status.granted_permissions = granted.clone();
            }
            status
        }
    }
}

/// Status of an attached partner, with the engine's counts: from a fresh `validation`, or
/// (`None`) from the previous status when nothing needed re-validating.
fn attached(
    partner: &DefenderPartner,
    previous: &DefenderPartnerStatus,
    validation: Option<&Validation>,
    report: Option<&SyncReport>,
    now: Timestamp,
) -> DefenderPartnerStatus {
    let now = Time(now);
    let mut status = previous.clone();
    if let Some(validation) = validation {
        status.tenant_id = Some(validation.tenant_id.clone());
        status.client_id = Some(validation.client_id.clone());
        status.granted_permissions = validation.granted.clone();
        status.granted_permissions.sort();
        status.missing_permissions = validation.missing_optional.clone();
        status.last_validated_time = Some(now.clone());
    }
    let (state, mut verdicts) = partner_conditions(
        &Attachment::Attached {
            granted: status.granted_permissions.clone(),
            missing_optional: status.missing_permissions.clone(),
        },
        report,
    );
    let correlation = report.and_then(|r| r.outcomes.as_ref());
    let mut outcomes = correlation.and_then(|o| o.counts.clone());
    super::outcomes::keep_while_reading(&mut verdicts, &mut outcomes, correlation, previous);
    DefenderPartnerStatus {
        state: Some(state),
        reason: Some(PartnerReason::Attached.to_string()),
        message: Some(match report {
            Some(r) if r.ready => {
                format!("attached; {} indicators in Defender, {} pending", r.submitted + r.external, r.pending)
            }
            _ => "attached; reading Defender's indicators".into(),
        }),
        observed_generation: partner.metadata.generation,
        conditions: conditions::merge(&previous.conditions, &verdicts, partner.metadata.generation, &now),
        attached_time: match previous.state {
            Some(PartnerState::Attached) => previous.attached_time.clone().or_else(|| Some(now.clone())),
            _ => Some(now.clone()),
        },
        indicators: report.map(|r| IndicatorCounts {
            desired: r.desired,
            submitted: r.submitted,
            pending: r.pending,
            failed: r.failed + r.over_quota,
            external: r.external,
        }),
        quota: report.filter(|r| r.ready).map(|r| TenantQuota { used: r.tenant_total, limit: r.tenant_cap }),
        outcomes,
        ..status
    }
}

/// Status of a detached partner: what identifies its credentials and last validation stays.
pub fn detached(partner: &DefenderPartner, detach: &Detach, now: Timestamp) -> DefenderPartnerStatus {
    let previous = partner.status.clone().unwrap_or_default();
    let (state, verdicts) = partner_conditions(
        &Attachment::Detached {
            reason: detach.reason,
            message: detach.message.clone(),
            credentials_ok: detach.credentials_ok,
            permissions_ok: detach.permissions_ok,
        },
        None,
    );
    DefenderPartnerStatus {
        state: Some(state),
        reason: Some(detach.reason.to_string()),
        message: Some(detach.message.clone()),
        observed_generation: partner.metadata.generation,
        conditions: conditions::merge(&previous.conditions, &verdicts, partner.metadata.generation, &Time(now)),
        tenant_id: previous.tenant_id,
        client_id: previous.client_id,
        credentials_type: previous.credentials_type,
        credentials_expiry: previous.credentials_expiry,
        credentials_hash: previous.credentials_hash,
        last_validated_time: previous.last_validated_time,
        last_handled_revalidate: previous.last_handled_revalidate,
        ..Default::default()
    }
}

/// The status of a partner being deleted whose indicators are being withdrawn.
pub fn deleting(partner: &DefenderPartner, message: impl Into<String>, now: Timestamp) -> DefenderPartnerStatus {
    detached(partner, &Detach::new(PartnerReason::Deleting, message), now)
}

/// The outcome of one partner reconcile, before it becomes status.
#[derive(Clone, Debug, PartialEq)]
pub enum Attachment {
    Attached { granted: Vec<String>, missing_optional: Vec<String> },
    Detached { reason: PartnerReason, message: String, credentials_ok: bool, permissions_ok: Option<bool> },
}

/// Conditions for a partner from its attach verdict and the sync engine's report.
pub fn partner_conditions(verdict: &Attachment, sync: Option<&SyncReport>) -> (PartnerState, Vec<Verdict>) {
    use PartnerReason::*;
    match verdict {
        Attachment::Attached { missing_optional, .. } => {
            let permissions_message = if missing_optional.is_empty() {
                "all permissions granted".to_string()
            } else {
                format!("Ti write role granted; optional {} not granted", missing_optional.join(", "))
            };
            let synced = match sync {
                Some(report) => report.verdict(),
                None => Verdict::new(INDICATORS_SYNCED, false, Starting, "the sync engine is reading Defender"),
            };
            // Attached but not working: the tenant is full and nothing more can be pushed until
            // someone makes room. Throttling, outages and refused values are the findings' to tell.
            let ready = if synced.reason == QuotaExceeded.as_str() {
                Verdict::new(READY, false, QuotaExceeded, synced.message.clone())
            } else {
                Verdict::new(READY, true, Attached, "credentials valid and Defender reachable")
            };
            (
                PartnerState::Attached,
                vec![
                    ready,
                    Verdict::new(
                        CREDENTIALS_VALID,
                        true,
                        Valid,
                        "a token was issued for the configured tenant and app",
                    ),
                    Verdict::new(PERMISSIONS_GRANTED, true, Granted, permissions_message),
                    synced,
                    // Never affects Ready.
                    super::outcomes::available(sync.and_then(|r| r.outcomes.as_ref())),
                ],
            )
        }
        Attachment::Detached { reason, message, credentials_ok, permissions_ok } => {
            // Suspended, deleting or an unusable spec: the credentials were not even tried.
            let unchecked = matches!(reason, Suspended | Deleting | InvalidSpec | UnsupportedSpec);
            let credentials = if *credentials_ok {
                Verdict::new(CREDENTIALS_VALID, true, Valid, "a token was issued for the configured tenant and app")
            } else if unchecked {
                Verdict::unknown(CREDENTIALS_VALID, NotChecked, format!("not checked: {message}"))
            } else {
                Verdict::new(CREDENTIALS_VALID, false, *reason, message.clone())
            };
            let permissions = match permissions_ok {
                Some(true) => Verdict::new(PERMISSIONS_GRANTED, true, Granted, "Ti write role granted"),
                Some(false) => Verdict::new(PERMISSIONS_GRANTED, false, *reason, message.clone()),
                None => Verdict::unknown(PERMISSIONS_GRANTED, NotChecked, "not checked: no valid token"),
            };
            (
                PartnerState::Detached,
                vec![
                    Verdict::new(READY, false, *reason, message.clone()),
                    credentials,
                    permissions,
                    Verdict::new(INDICATORS_SYNCED, false, Detached, "nothing is pushed while detached"),
                    super::outcomes::not_attached(),
                ],
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner(status: Option<serde_json::Value>, annotations: serde_json::Value) -> DefenderPartner {
        let mut object = serde_json::json!({
            "apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
            "metadata": {"name": "p", "namespace": "ns", "generation": 2, "annotations": annotations},
            "spec": {"credentials": {"secretRef": {"name": "creds"}}, "revalidateInterval": "1h"}
        });
        if let Some(status) = status {
            object["status"] = status;
        }
        serde_json::from_value(object).unwrap()
    }

    fn validated_at(seconds_ago: i64, hash: &str, generation: i64) -> serde_json::Value {
        let at = Timestamp::from_second(NOW - seconds_ago).unwrap();
        serde_json::json!({"state": "Attached", "reason": "Attached", "credentialsHash": hash,
            "observedGeneration": generation, "lastValidatedTime": at.to_string()})
    }

    const NOW: i64 = 1_800_000_000;

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    fn usable(hash: &str) -> Usable {
        Usable { credentials_hash: hash.into(), valid_from: None, valid_until: None }
    }

    fn validation() -> Validation {
        Validation {
            tenant_id: "t".into(),
            client_id: "c".into(),
            granted: vec!["Ti.ReadWrite.All".into()],
            missing_optional: vec![],
        }
    }

    #[test]
    fn suspension_and_an_unusable_spec_detach_before_anything_is_read() {
        let mut suspended = partner(None, serde_json::json!({}));
        suspended.spec.suspend = true;
        let decision = from_spec(&suspended, None).unwrap();
        assert_eq!(decision.engine, EngineStep::Stop);
        assert!(matches!(&decision.status, StatusUpdate::Detached(d) if d.reason == PartnerReason::Suspended));
        assert!(matches!(decision.next, Next::AwaitChange));

        let mut invalid = partner(None, serde_json::json!({}));
        invalid.spec.revalidate_interval = "200h".into();
        let decision = from_spec(&invalid, None).unwrap();
        let StatusUpdate::Detached(detach) = &decision.status else { panic!("{decision:?}") };
        assert_eq!(detach.reason, PartnerReason::InvalidSpec);
        assert!(detach.message.contains("revalidateInterval"), "{}", detach.message);
        assert!(from_spec(&partner(None, serde_json::json!({})), None).is_none());
        // What the operator cannot read comes first, naming the field and the operator's version.
        let decision = from_spec(&suspended, Some("spec.credentials: missing field `secretRef`")).unwrap();
        let StatusUpdate::Detached(detach) = &decision.status else { panic!("{decision:?}") };
        assert_eq!(detach.reason, PartnerReason::UnsupportedSpec);
        assert!(detach.message.contains("spec.credentials") && detach.message.contains(env!("CARGO_PKG_VERSION")));
        assert_eq!(decision.engine, EngineStep::Stop);
    }

    #[test]
    fn unusable_credentials_detach_and_keep_their_hash() {
        let unusable = Unusable {
            reason: PartnerReason::ApiHostNotAllowed,
            message: "not allowed".into(),
            credentials_hash: Some("h".into()),
        };
        let decision = from_credentials(&partner(None, serde_json::json!({})), Err(&unusable), true, now()).unwrap();
        assert_eq!(decision.engine, EngineStep::Stop);
        let status = status(&partner(None, serde_json::json!({})), &decision.status, None, None, now());
        assert_eq!(
            (status.reason.as_deref(), status.credentials_hash.as_deref()),
            (Some("ApiHostNotAllowed"), Some("h"))
        );
    }

    #[test]
    fn what_no_watch_sees_is_asked_again_soon_and_the_rest_awaits_a_change() {
        let partner = partner(None, serde_json::json!({}));
        let refused = |reason| Unusable { reason, message: "m".into(), credentials_hash: None };
        for reason in [PartnerReason::ServiceAccountNotFound, PartnerReason::TokenRequestDenied] {
            let decision = from_credentials(&partner, Err(&refused(reason)), true, now()).unwrap();
            assert!(matches!(decision.next, Next::Requeue(after) if after == UNWATCHED_RETRY), "{reason}");
        }
        let decision = from_credentials(&partner, Err(&refused(PartnerReason::SecretNotFound)), true, now()).unwrap();
        assert!(matches!(decision.next, Next::AwaitChange), "the Secret is watched");
    }

    #[test]
    fn a_validation_that_still_holds_is_kept_until_it_is_due_or_asked_for() {
        let fresh = partner(Some(validated_at(600, "h", 2)), serde_json::json!({}));
        let decision = from_credentials(&fresh, Ok(&usable("h")), true, now()).unwrap();
        assert_eq!(decision.engine, EngineStep::Run);
        assert!(matches!(decision.next, Next::Requeue(left) if left == Duration::from_secs(3000)));
        // Due, other credentials, a new generation, no engine, or asked for: validate.
        let due = partner(Some(validated_at(3601, "h", 2)), serde_json::json!({}));
        assert!(from_credentials(&due, Ok(&usable("h")), true, now()).is_err());
        assert!(from_credentials(&fresh, Ok(&usable("other")), true, now()).is_err());
        assert!(
            from_credentials(
                &partner(Some(validated_at(600, "h", 1)), serde_json::json!({})),
                Ok(&usable("h")),
                true,
                now()
            )
            .is_err()
        );
        assert!(from_credentials(&fresh, Ok(&usable("h")), false, now()).is_err());
        let asked = partner(Some(validated_at(600, "h", 2)), serde_json::json!({REVALIDATE_ANNOTATION: "1"}));
        let validate = from_credentials(&asked, Ok(&usable("h")), true, now()).unwrap_err();
        assert_eq!(validate, Validate { interval: Duration::from_secs(3600), requested: Some("1".into()) });
    }

    #[test]
    fn a_certificate_outside_its_validity_detaches_without_asking_entra() {
        let partner = partner(None, serde_json::json!({}));
        let at = |days: i64| now().checked_add(jiff::SignedDuration::from_hours(24 * days)).unwrap();
        let certificate =
            |from: i64, until: i64| Usable { valid_from: Some(at(from)), valid_until: Some(at(until)), ..usable("h") };
        let expired = from_credentials(&partner, Ok(&certificate(-400, -1)), true, now()).unwrap();
        assert!(matches!(&expired.status, StatusUpdate::Detached(d) if d.reason == PartnerReason::CertificateExpired));
        assert_eq!(expired.engine, EngineStep::Stop);
        let early = from_credentials(&partner, Ok(&certificate(1, 400)), true, now()).unwrap();
        assert!(matches!(&early.status, StatusUpdate::Detached(d) if d.reason == PartnerReason::CertificateInvalid));
        assert!(from_credentials(&partner, Ok(&certificate(-1, 400)), true, now()).is_err(), "valid: validated");
        // The expiry is in status, and a warning is due within 30 days of it.
        let status = status(&partner, &expired.status, None, Some(&certificate(-400, -1)), now());
        assert_eq!(status.credentials_expiry, Some(Time(at(-1))));
        assert_eq!(status.credentials_type, Some(crate::api::CredentialsType::ClientSecret));
        assert!(expiring(&certificate(-1, 29), now()).unwrap().contains("in 29 days"));
        assert_eq!(expiring(&certificate(-1, 31), now()), None);
        assert_eq!(expiring(&certificate(-400, -1), now()), None, "expired is not expiring");
    }

    #[test]
    fn a_successful_validation_attaches_and_records_what_it_handled() {
        let partner = partner(None, serde_json::json!({}));
        let validate = Validate { interval: Duration::from_secs(3600), requested: Some("7".into()) };
        let decision = from_validation(&partner, "h", validate, Ok(validation()), false);
        assert_eq!(decision.engine, EngineStep::Run);
        let status = status(&partner, &decision.status, None, None, now());
        assert_eq!(status.state, Some(PartnerState::Attached));
        assert_eq!(
            (
                status.credentials_hash.as_deref(),
                status.last_handled_revalidate.as_deref(),
                status.tenant_id.as_deref()
            ),
            (Some("h"), Some("7"), Some("t"))
        );
        assert_eq!(status.last_validated_time, Some(Time(now())));
    }

    #[test]
    fn a_transient_failure_of_working_credentials_keeps_the_partner_attached() {
        let working = partner(Some(validated_at(3600, "h", 2)), serde_json::json!({}));
        let validate = Validate { interval: Duration::from_secs(3600), requested: None };
        let outage = || DefenderError::Unreachable { host: "h".into(), message: "timeout".into() };
        let decision = from_validation(&working, "h", validate.clone(), Err(outage()), true);
        assert_eq!(decision.engine, EngineStep::Keep);
        assert!(matches!(decision.status, StatusUpdate::Attached { validation: None, .. }));
        assert!(matches!(decision.next, Next::Backoff(_)));
        // Not attached before (or other credentials): Detached, the engine left as it is, backoff.
        let decision = from_validation(&working, "other", validate, Err(outage()), true);
        assert_eq!(decision.engine, EngineStep::Keep);
        assert!(
            matches!(&decision.status, StatusUpdate::Detached(d) if d.reason == PartnerReason::DefenderUnreachable && d.credentials_ok)
        );
        assert!(matches!(decision.next, Next::Backoff(_)));
    }

    #[test]
    fn a_refusal_detaches_stops_the_engine_and_is_asked_again_at_the_interval() {
        let partner = partner(None, serde_json::json!({}));
        let validate = Validate { interval: Duration::from_secs(3600), requested: None };
        let refusal = DefenderError::MissingPermission { missing: vec!["Ti.ReadWrite.All".into()], granted: vec![] };
        let decision = from_validation(&partner, "h", validate, Err(refusal), true);
        assert_eq!(decision.engine, EngineStep::Stop);
        assert!(matches!(decision.next, Next::Requeue(interval) if interval == Duration::from_secs(3600)));
        let status = status(&partner, &decision.status, None, None, now());
        assert_eq!(status.reason.as_deref(), Some("MissingPermission"));
        assert_eq!(status.missing_permissions, ["Ti.ReadWrite.All"]);
        assert_eq!(status.last_validated_time, Some(Time(now())));
        let credentials = conditions::find(&status.conditions, CREDENTIALS_VALID).unwrap();
        assert_eq!(credentials.status, "True");
    }

    fn available() -> super::super::outcomes::CorrelationReport {
        let state = super::super::outcomes::CorrelationState::Available;
        super::super::outcomes::CorrelationReport { state, ..Default::default() }
    }

    #[test]
    fn outcomes_available_never_affects_ready() {
        let attached = Attachment::Attached { granted: vec!["Ti.ReadWrite.All".into()], missing_optional: vec![] };
        let missing = super::super::outcomes::CorrelationState::MissingRoles(vec!["Machine.Read.All"]);
        let report = super::super::outcomes::CorrelationReport { state: missing, ..Default::default() };
        let sync = SyncReport { ready: true, outcomes: Some(report), ..Default::default() };
        let (state, verdicts) = partner_conditions(&attached, Some(&sync));
        let by_type = |t: &str| verdicts.iter().find(|v| v.type_ == t).unwrap().clone();
        assert_eq!(state, PartnerState::Attached);
        assert!(by_type(READY).status);
        let outcomes = by_type(crate::api::outcome::OUTCOMES_AVAILABLE);
        assert_eq!((outcomes.status, outcomes.reason), (false, "MissingPermission"));
        let detached = Attachment::Detached {
            reason: PartnerReason::InvalidSecret,
            message: "m".into(),
            credentials_ok: false,
            permissions_ok: None,
        };
        let (_, verdicts) = partner_conditions(&detached, None);
        let outcomes = verdicts.iter().find(|v| v.type_ == crate::api::outcome::OUTCOMES_AVAILABLE).unwrap();
        assert!(outcomes.unknown && outcomes.reason == "NotAttached");
    }

    #[test]
    fn partner_conditions_follow_the_verdict() {
        let (state, verdicts) = partner_conditions(
            &Attachment::Attached {
                granted: vec!["Ti.ReadWrite.All".into()],
                missing_optional: vec!["Alert.Read.All".into()],
            },
            Some(&SyncReport { ready: true, submitted: 3, outcomes: Some(available()), ..Default::default() }),
        );
        assert_eq!(state, PartnerState::Attached);
        assert!(verdicts.iter().all(|v| v.status));
        assert!(verdicts[2].message.contains("Alert.Read.All"));

        let (state, verdicts) = partner_conditions(
            &Attachment::Detached {
                reason: PartnerReason::MissingPermission,
                message: "grant Ti.ReadWrite.All".into(),
                credentials_ok: true,
                permissions_ok: Some(false),
            },
            None,
        );
        assert_eq!(state, PartnerState::Detached);
        let by_type = |t: &str| verdicts.iter().find(|v| v.type_ == t).unwrap().clone();
        assert!(!by_type(READY).status && by_type(CREDENTIALS_VALID).status && !by_type(PERMISSIONS_GRANTED).status);
        assert_eq!(by_type(READY).reason, "MissingPermission");
    }

    #[test]
    fn an_attached_partner_at_the_tenant_cap_is_not_ready() {
        let attached = Attachment::Attached { granted: vec!["Ti.ReadWrite.All".into()], missing_optional: vec![] };
        let full =
            SyncReport { ready: true, over_quota: 5, tenant_total: 15_000, tenant_cap: 15_000, ..Default::default() };
        let (state, verdicts) = partner_conditions(&attached, Some(&full));
        assert_eq!(state, PartnerState::Attached);
        let ready = verdicts.iter().find(|v| v.type_ == READY).unwrap();
        assert_eq!((ready.status, ready.reason), (false, "QuotaExceeded"));
        assert!(ready.message.contains("15000 of the 15000"), "{}", ready.message);
        // A transient error of the last round does not flap Ready.
        let throttled =
            SyncReport { ready: true, error: Some((PartnerReason::Throttled, "429".into())), ..Default::default() };
        let (_, verdicts) = partner_conditions(&attached, Some(&throttled));
        assert!(verdicts.iter().find(|v| v.type_ == READY).unwrap().status);
    }

    #[test]
    fn what_was_not_checked_is_unknown() {
        let detached = |reason: PartnerReason| {
            let attachment =
                Attachment::Detached { reason, message: "m".into(), credentials_ok: false, permissions_ok: None };
            partner_conditions(&attachment, None).1
        };
        let by_type = |verdicts: &[Verdict], t: &str| verdicts.iter().find(|v| v.type_ == t).unwrap().clone();
        let refused = detached(PartnerReason::InvalidSecret);
        let credentials = by_type(&refused, CREDENTIALS_VALID);
        assert!(!credentials.status && !credentials.unknown && credentials.reason == "InvalidSecret");
        let permissions = by_type(&refused, PERMISSIONS_GRANTED);
        assert!(permissions.unknown && permissions.reason == "NotChecked", "{permissions:?}");
        for reason in [PartnerReason::Suspended, PartnerReason::Deleting, PartnerReason::InvalidSpec] {
            let credentials = by_type(&detached(reason), CREDENTIALS_VALID);
            assert!(credentials.unknown && credentials.reason == "NotChecked", "{reason}: {credentials:?}");
            assert!(!by_type(&detached(reason), READY).unknown, "Ready is False with the reason: {reason}");
        }
    }
}
