//! The partner reconciler: read the Secret, validate against Entra and Defender, start or stop
//! the partner's sync engine, and report `Attached` or `Detached` with a precise reason.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizing, finalizer};
use kube::{Api, Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::decide::{Attachment, partner_conditions};
use super::{Context, Error, object_key};
use crate::api::conditions;
use crate::api::partner::{DefenderPartnerStatus, IndicatorCounts, TenantQuota};
use crate::api::{DefenderPartner, DeletionPolicy, FINALIZER, MANAGER, PartnerState, REVALIDATE_ANNOTATION};
use crate::defender::{ClientOptions, Credentials, DefenderClient, Validation};

pub async fn reconcile(partner: Arc<DefenderPartner>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<DefenderPartner> = Api::namespaced(ctx.client.clone(), &partner.namespace().unwrap_or_default());
    let key = object_key(&*partner);
    let timer = ctx.metrics.reconcile("DefenderPartner");
    let action = finalizer(&api, FINALIZER, partner, |event| async {
        match event {
            Finalizing::Apply(partner) => apply(partner, &ctx).await,
            Finalizing::Cleanup(partner) => cleanup(partner, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    timer.finish(action.as_ref().map_or_else(|e| e.reason(), |_| "ok"));
    record_gauges(&ctx);
    let action = action?;
    ctx.succeeded(&key);
    Ok(action)
}

/// Partners by state and indicators by delivery state, from the caches and the engines.
fn record_gauges(ctx: &Context) {
    use crate::telemetry::metrics::StateLabels;
    let partners = ctx.partners.state();
    for state in ["Attached", "Detached"] {
        let count = partners
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.state).map(|s| format!("{s:?}")).as_deref() == Some(state))
            .count();
        ctx.metrics.partners.get_or_create(&StateLabels { state }).set(count as i64);
    }
    let (mut submitted, mut pending, mut failed, mut external, mut quota) = (0, 0, 0, 0, 0);
    for partner in partners.iter() {
        if let Some(report) = ctx.engines.get(&partner.owner_marker()).map(|e| e.report()) {
            submitted += report.submitted as i64;
            pending += report.pending as i64;
            failed += (report.failed + report.over_quota) as i64;
            external += report.external as i64;
            quota = quota.max(report.tenant_total as i64);
        }
    }
    for (state, value) in [("Submitted", submitted), ("Pending", pending), ("Failed", failed), ("External", external)] {
        ctx.metrics.indicators.get_or_create(&StateLabels { state }).set(value);
    }
    ctx.metrics.quota_used.set(quota);
}

pub fn error_policy(partner: Arc<DefenderPartner>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.backoff(&object_key(&*partner), error)
}

/// Why credentials could not even be read from the Secret: always the user's to fix.
struct SecretProblem {
    reason: &'static str,
    message: String,
}

async fn apply(partner: Arc<DefenderPartner>, ctx: &Context) -> Result<Action, Error> {
    ctx.secret_index.record(&partner);
    let marker = partner.owner_marker();
    if partner.spec.suspend {
        stop_engine(&partner, ctx);
        let status =
            detached(&partner, "Suspended", "spec.suspend is true: nothing is pushed or withdrawn", false, None);
        write_status(&partner, status, ctx).await?;
        return Ok(Action::await_change());
    }
    if let Some(problem) = spec_problem(&partner) {
        stop_engine(&partner, ctx);
        write_status(&partner, detached(&partner, "InvalidSpec", &problem, false, None), ctx).await?;
        return Ok(Action::await_change());
    }
    let credentials = match read_credentials(&partner, ctx).await? {
        Ok(credentials) => credentials,
        Err(problem) => {
            stop_engine(&partner, ctx);
            write_status(&partner, detached(&partner, problem.reason, &problem.message, false, None), ctx).await?;
            return Ok(Action::await_change());
        }
    };
    let hash = credentials_hash(&credentials);
    let client = match defender_client(&partner, credentials, ctx) {
        Ok(client) => client,
        Err(error) => {
            stop_engine(&partner, ctx);
            let mut status = detached(&partner, error.reason(), &error.to_string(), false, None);
            status.credentials_hash = Some(hash);
            write_status(&partner, status, ctx).await?;
            return Ok(Action::await_change());
        }
    };
    let identity = format!("{hash}|{}|{:?}", client.api_base(), partner.spec.cloud);
    let interval = revalidate_interval(&partner);
    let previous = partner.status.clone().unwrap_or_default();
    let requested = partner.annotations().get(REVALIDATE_ANNOTATION).cloned();
    let asked_again = requested.is_some() && requested != previous.last_handled_revalidate;

    if let Some(remaining) = still_valid(&partner, &previous, &hash, interval)
        && !asked_again
        && ctx.engines.get(&marker).is_some()
    {
        // Nothing changed since the last validation: only refresh what the engine reports.
        ensure_engine(&partner, client, identity, ctx);
        let status = attached(&partner, &previous, None, ctx);
        write_status(&partner, status, ctx).await?;
        return Ok(Action::requeue(jittered(remaining)));
    }

    match client.validate().await {
        Ok(validation) => {
            ensure_engine(&partner, client, identity, ctx);
            let mut status = attached(&partner, &previous, Some(&validation), ctx);
            status.credentials_hash = Some(hash);
            status.last_handled_revalidate = requested;
            write_status(&partner, status, ctx).await?;
            Ok(Action::requeue(jittered(interval)))
        }
        Err(error)
            if error.is_transient()
                && previous.state == Some(PartnerState::Attached)
                && previous.credentials_hash.as_deref() == Some(hash.as_str())
                && previous.observed_generation == partner.metadata.generation
                && ctx.engines.get(&marker).is_some() =>
        {
            // A hiccup while re-checking credentials that worked: keep pushing and retry with
            // backoff rather than flapping to Detached on one 503.
            warn!(partner = %marker, reason = error.reason(), %error, "re-validation failed; retrying");
            write_status(&partner, attached(&partner, &previous, None, ctx), ctx).await?;
            Err(error.into())
        }
        Err(error) => {
            let transient = error.is_transient();
            if !transient {
                stop_engine(&partner, ctx);
            }
            let (credentials_ok, permissions_ok) = match &error {
                crate::defender::DefenderError::MissingPermission { .. } => (true, Some(false)),
                crate::defender::DefenderError::Api { status: 403, .. } => (true, Some(false)),
                crate::defender::DefenderError::Token { .. } | crate::defender::DefenderError::ClaimsMismatch(_) => {
                    (false, None)
                }
                _ => (previous.state == Some(PartnerState::Attached), None),
            };
            let mut status = detached(&partner, error.reason(), &error.to_string(), credentials_ok, permissions_ok);
            status.credentials_hash = Some(hash);
            status.last_validated_time = Some(now());
            status.last_handled_revalidate = requested;
            if let crate::defender::DefenderError::MissingPermission { missing, granted } = &error {
                status.missing_permissions = missing.clone();
                status.granted_permissions = granted.clone();
            }
            write_status(&partner, status, ctx).await?;
            // What Entra or Defender refused may be fixed there (consent granted, app enabled),
            // where no Kubernetes event says so: ask again at the re-validation interval.
            if transient { Err(error.into()) } else { Ok(Action::requeue(jittered(interval))) }
        }
    }
}

/// Partner deleted: stop pushing; with `deletionPolicy: Delete`, withdraw its indicators first.
/// If the credentials are gone, the finalizer is released with a Warning rather than hanging.
async fn cleanup(partner: Arc<DefenderPartner>, ctx: &Context) -> Result<Action, Error> {
    ctx.secret_index.forget(&partner);
    stop_engine(&partner, ctx);
    // Deleting is the newer intent than suspending: a suspended partner's indicators are withdrawn
    // too when its policy says so.
    if partner.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    let deleting = |message: String| detached(&partner, "Deleting", &message, false, None);
    let withdrawing = "withdrawing this partner's indicators from Defender (deletionPolicy: Delete)";
    if partner.status.as_ref().and_then(|s| s.reason.as_deref()) != Some("Deleting") {
        write_status(&partner, deleting(withdrawing.into()), ctx).await?;
    }
    let marker = partner.owner_marker();
    let client = match read_credentials(&partner, ctx).await? {
        Ok(credentials) => defender_client(&partner, credentials, ctx).map_err(|e| e.to_string()),
        Err(problem) => Err(problem.message),
    };
    let client = match client {
        Ok(client) => client,
        Err(why) => {
            let note = format!("indicators were left in Defender because the credentials are unusable: {why}");
            warn!(partner = %marker, "{note}");
            publish(ctx, &partner, EventType::Warning, "IndicatorsNotWithdrawn", note).await;
            return Ok(Action::await_change());
        }
    };
    match super::sync::withdraw_all(&client, &marker).await {
        Ok(count) => {
            info!(partner = %marker, count, "withdrew indicators");
            publish(
                ctx,
                &partner,
                EventType::Normal,
                "Withdrawn",
                format!("withdrew {count} indicators from Defender"),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(error) if error.is_transient() && !deleting_for_long(&partner) => {
            let retrying = format!("{withdrawing}: {error}; retrying (given up after 10 minutes)");
            write_status(&partner, deleting(retrying), ctx).await?;
            Err(error.into())
        }
        Err(error) => {
            let note = format!("indicators were left in Defender: {error}");
            publish(ctx, &partner, EventType::Warning, "IndicatorsNotWithdrawn", note).await;
            Ok(Action::await_change())
        }
    }
}

/// The partner's Defender client: the operator's host policy, the shared rate limiter, metrics.
fn defender_client(
    partner: &DefenderPartner,
    credentials: Credentials,
    ctx: &Context,
) -> Result<DefenderClient, crate::defender::DefenderError> {
    let mut options = ClientOptions { observer: Some(ctx.metrics.clone()), ..Default::default() };
    if let Some(timeout) = ctx.config.request_timeout {
        options.request_timeout = timeout;
    }
    DefenderClient::with_options(
        ctx.http.clone(),
        partner.spec.cloud,
        partner.spec.api.as_deref(),
        credentials,
        &ctx.config.host_policy,
        ctx.limiter.clone(),
        options,
    )
}

/// A deletion stuck on an unreachable Defender is released after this long.
fn deleting_for_long(partner: &DefenderPartner) -> bool {
    partner
        .metadata
        .deletion_timestamp
        .as_ref()
        .is_some_and(|since| Timestamp::now().duration_since(since.0) > jiff::SignedDuration::from_mins(10))
}

async fn read_credentials(
    partner: &DefenderPartner,
    ctx: &Context,
) -> Result<Result<Credentials, SecretProblem>, Error> {
    let namespace = partner.namespace().unwrap_or_default();
    let reference = &partner.spec.credentials.secret_ref;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Ok(Err(SecretProblem {
            reason: "SecretNotFound",
            message: format!(
                "Secret {namespace}/{} not found: create it with keys {}, {} and {}",
                reference.name, reference.tenant_id_key, reference.client_id_key, reference.client_secret_key
            ),
        }));
    };
    Ok(credentials_from(&secret, partner))
}

/// Reads and checks the three values; every missing or unusable key is reported at once.
fn credentials_from(secret: &Secret, partner: &DefenderPartner) -> Result<Credentials, SecretProblem> {
    let reference = &partner.spec.credentials.secret_ref;
    let data = secret.data.clone().unwrap_or_default();
    let mut missing = Vec::new();
    let mut not_text = Vec::new();
    let mut read = |key: &str| -> Option<String> {
        match data.get(key) {
            None => {
                missing.push(key.to_string());
                None
            }
            Some(bytes) => match String::from_utf8(bytes.0.clone()) {
                Ok(text) if text.trim().is_empty() => {
                    missing.push(key.to_string());
                    None
                }
                Ok(text) => Some(text.trim().to_string()),
                Err(_) => {
                    not_text.push(key.to_string());
                    None
                }
            },
        }
    };
    let tenant_id = read(&reference.tenant_id_key);
    let client_id = read(&reference.client_id_key);
    let client_secret = read(&reference.client_secret_key);
    let name = &reference.name;
    if !missing.is_empty() {
        return Err(SecretProblem {
            reason: "SecretKeyMissing",
            message: format!(
                "Secret {name} lacks (or has empty) keys: {}. Add them, or point spec.credentials.secretRef's *Key fields at the right keys",
                missing.join(", ")
            ),
        });
    }
    if !not_text.is_empty() {
        return Err(SecretProblem {
            reason: "SecretKeyInvalid",
            message: format!("Secret {name} keys {} are not UTF-8 text: store the plain values", not_text.join(", ")),
        });
    }
    Ok(Credentials {
        tenant_id: tenant_id.unwrap_or_default(),
        client_id: client_id.unwrap_or_default(),
        client_secret: SecretString::from(client_secret.unwrap_or_default()),
    })
}

/// SHA-256 over the values used, so rotation is noticed without storing them.
pub(crate) fn credentials_hash(credentials: &Credentials) -> String {
    let mut hasher = Sha256::new();
    for part in [&credentials.tenant_id, &credentials.client_id, credentials.client_secret.expose_secret()] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn revalidate_interval(partner: &DefenderPartner) -> Duration {
    partner.spec.revalidate_interval().unwrap_or(Duration::from_secs(3600)).max(Duration::from_secs(10))
}

/// A spec value the schema lets through but the operator cannot honour (a duration over its
/// maximum), named with its field and the fix.
fn spec_problem(partner: &DefenderPartner) -> Option<String> {
    let revalidate = partner.spec.revalidate_interval().err();
    let expire = partner.spec.indicator.expire_after().err();
    let problems: Vec<String> = revalidate.into_iter().chain(expire).map(|e| e.to_string()).collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Time left before re-validation is due, when the last one still holds for these credentials
/// and this generation.
fn still_valid(
    partner: &DefenderPartner,
    status: &DefenderPartnerStatus,
    hash: &str,
    interval: Duration,
) -> Option<Duration> {
    if status.state != Some(PartnerState::Attached)
        || status.credentials_hash.as_deref() != Some(hash)
        || status.observed_generation != partner.metadata.generation
    {
        return None;
    }
    let validated = status.last_validated_time.as_ref()?.0;
    let age = Timestamp::now().duration_since(validated).unsigned_abs();
    interval.checked_sub(age)
}

fn jittered(duration: Duration) -> Duration {
    duration.mul_f64(0.9 + rand::random::<f64>() * 0.2)
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn ensure_engine(partner: &Arc<DefenderPartner>, client: DefenderClient, identity: String, ctx: &Context) {
    let started = ctx.engines.ensure(
        partner.clone(),
        client,
        identity,
        ctx.findings.clone(),
        ctx.triggers.clone(),
        ctx.config.engine.clone(),
    );
    if started {
        info!(partner = %partner.owner_marker(), "partner attached: sync engine started");
    }
}

fn stop_engine(partner: &DefenderPartner, ctx: &Context) {
    // Its findings are reconciled once the partner's new state reaches the cache (controller::run).
    ctx.engines.stop(&partner.owner_marker());
}

/// Status of an attached partner, with the engine's counts: from a fresh `validation`, or
/// (`None`) from the previous status when nothing needed re-validating.
fn attached(
    partner: &DefenderPartner,
    previous: &DefenderPartnerStatus,
    validation: Option<&Validation>,
    ctx: &Context,
) -> DefenderPartnerStatus {
    let mut status = previous.clone();
    if let Some(validation) = validation {
        status.tenant_id = Some(validation.tenant_id.clone());
        status.client_id = Some(validation.client_id.clone());
        status.granted_permissions = validation.granted.clone();
        status.granted_permissions.sort();
        status.missing_permissions = validation.missing_optional.clone();
        status.last_validated_time = Some(now());
    }
    let report = ctx.engines.get(&partner.owner_marker()).map(|e| e.report());
    let (state, verdicts) = partner_conditions(
        &Attachment::Attached {
            granted: status.granted_permissions.clone(),
            missing_optional: status.missing_permissions.clone(),
        },
        report.as_ref(),
    );
    DefenderPartnerStatus {
        state: Some(state),
        reason: Some("Attached".into()),
        message: Some(match &report {
            Some(r) if r.ready => {
                format!("attached; {} indicators in Defender, {} pending", r.submitted + r.external, r.pending)
            }
            _ => "attached; reading Defender's indicators".into(),
        }),
        observed_generation: partner.metadata.generation,
        conditions: conditions::merge(&previous.conditions, &verdicts, partner.metadata.generation, &now()),
        attached_time: match previous.state {
            Some(PartnerState::Attached) => previous.attached_time.clone().or_else(|| Some(now())),
            _ => Some(now()),
        },
        indicators: report.as_ref().map(|r| IndicatorCounts {
            desired: r.desired,
            submitted: r.submitted,
            pending: r.pending,
            failed: r.failed + r.over_quota,
            external: r.external,
        }),
        quota: report.as_ref().filter(|r| r.ready).map(|r| TenantQuota { used: r.tenant_total, limit: r.tenant_cap }),
        ..status
    }
}

fn detached(
    partner: &DefenderPartner,
    reason: &str,
    message: &str,
    credentials_ok: bool,
    permissions_ok: Option<bool>,
) -> DefenderPartnerStatus {
    let previous = partner.status.clone().unwrap_or_default();
    let (state, verdicts) = partner_conditions(
        &Attachment::Detached {
            reason: reason.to_string(),
            message: message.to_string(),
            credentials_ok,
            permissions_ok,
        },
        None,
    );
    DefenderPartnerStatus {
        state: Some(state),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        observed_generation: partner.metadata.generation,
        conditions: conditions::merge(&previous.conditions, &verdicts, partner.metadata.generation, &now()),
        tenant_id: previous.tenant_id,
        client_id: previous.client_id,
        credentials_hash: previous.credentials_hash,
        last_validated_time: previous.last_validated_time,
        last_handled_revalidate: previous.last_handled_revalidate,
        ..Default::default()
    }
}

/// Writes status by server-side apply, only when it changed; publishes an event when the state
/// or reason changed.
async fn write_status(partner: &DefenderPartner, status: DefenderPartnerStatus, ctx: &Context) -> Result<(), Error> {
    let previous = partner.status.clone().unwrap_or_default();
    if previous == status {
        return Ok(());
    }
    let api: Api<DefenderPartner> = Api::namespaced(ctx.client.clone(), &partner.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "detect.dev/v1alpha1",
        "kind": "DefenderPartner",
        "status": status,
    });
    api.patch_status(&partner.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    if (previous.state, &previous.reason) != (status.state, &status.reason) {
        let (type_, reason) = match (status.state, status.reason.as_deref()) {
            (Some(PartnerState::Attached), _) => (EventType::Normal, "Attached"),
            (_, Some(reason @ ("Suspended" | "Deleting"))) => (EventType::Normal, reason),
            (_, Some(reason)) => (EventType::Warning, reason),
            _ => (EventType::Warning, "Detached"),
        };
        let note = status.message.clone().unwrap_or_default();
        info!(partner = %partner.owner_marker(), state = ?status.state, reason = status.reason.as_deref().unwrap_or(""), "partner state changed");
        publish(ctx, partner, type_, reason, note).await;
    }
    Ok(())
}

async fn publish(ctx: &Context, partner: &DefenderPartner, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Validate".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &partner.object_ref(&())).await {
        warn!(%error, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn partner() -> DefenderPartner {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"credentials": {"secretRef": {"name": "creds"}}}
        }))
        .unwrap()
    }

    fn secret(pairs: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn all_missing_keys_are_reported_at_once() {
        let problem = credentials_from(&secret(&[("clientId", b"abc")]), &partner()).err().unwrap();
        assert_eq!(problem.reason, "SecretKeyMissing");
        assert!(
            problem.message.contains("tenantId") && problem.message.contains("clientSecret"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn empty_values_count_as_missing_and_padding_is_trimmed() {
        let problem = credentials_from(
            &secret(&[("tenantId", b"  "), ("clientId", b"abc"), ("clientSecret", b"s3cr3t")]),
            &partner(),
        )
        .err()
        .unwrap();
        assert!(problem.message.contains("tenantId") && !problem.message.contains("s3cr3t"));
        let credentials = credentials_from(
            &secret(&[("tenantId", b" t \n"), ("clientId", b"c"), ("clientSecret", b"s3cr3t\n")]),
            &partner(),
        )
        .ok()
        .unwrap();
        assert_eq!((credentials.tenant_id.as_str(), credentials.client_secret.expose_secret()), ("t", "s3cr3t"));
    }

    #[test]
    fn non_utf8_values_are_refused_without_echoing_them() {
        let problem = credentials_from(
            &secret(&[("tenantId", b"t"), ("clientId", b"c"), ("clientSecret", &[0xff, 0xfe])]),
            &partner(),
        )
        .err()
        .unwrap();
        assert_eq!(problem.reason, "SecretKeyInvalid");
        assert!(problem.message.contains("clientSecret"));
    }

    #[test]
    fn hash_changes_with_any_value_and_hides_them() {
        let make = |secret: &str| Credentials {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: SecretString::from(secret.to_string()),
        };
        let a = credentials_hash(&make("one"));
        assert_ne!(a, credentials_hash(&make("two")));
        assert_eq!(a.len(), 64);
        assert!(!a.contains("one"));
    }
}
