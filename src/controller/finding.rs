//! The finding reconciler: works out the effective state, validates the indicators, and writes
//! one delivery per partner that selects the finding, from what that partner's engine holds and
//! (its outcome) what the engine read of Defender's machines and alerts.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::decide::{self, ValueStatus};
use super::{Context, Error, object_key, outcomes};
use crate::api::conditions::{self, READY, Verdict};
use crate::api::finding::ProbeFindingStatus;
use crate::api::{DefenderPartner, Delivery, DeliveryState, EventReason, FindingReason, PartnerState, ProbeFinding};

pub async fn reconcile(finding: Arc<ProbeFinding>, ctx: Arc<Context>) -> Result<Action, Error> {
    // On a task of its own: the controller polls its reconciles on the task that also reads the
    // findings watch, which must keep up however many findings are being reconciled.
    let reconcile = tokio::spawn(async move {
        let timer = ctx.metrics.reconcile("ProbeFinding");
        let result = reconcile_finding(&finding, &ctx).await;
        timer.finish(result.as_ref().map_or_else(|e| e.reason(), |_| "ok"));
        result
    });
    match reconcile.await {
        Ok(result) => result,
        Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(_) => Ok(Action::await_change()),
    }
}

async fn reconcile_finding(finding: &Arc<ProbeFinding>, ctx: &Context) -> Result<Action, Error> {
    let partners: Vec<Arc<DefenderPartner>> = {
        let namespaces = ctx.caches().namespace_labels();
        let mut partners: Vec<_> =
            ctx.all_partners().into_iter().filter(|p| decide::selects(p, finding, &namespaces)).collect();
        partners.sort_by_key(|p| p.delivery_name());
        partners
    };
    let status = finding_status(finding, &partners, ctx);
    // The findings watch has woken the engines of a new or changed finding (controller::run).
    if about_to_be_pushed(finding, &status) {
        // A new finding an attached engine is about to push: write once, when it is delivered,
        // instead of Pending now and Submitted a second later.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    if super::status::write(ctx, &**finding, &status).await? {
        announce_protection(finding, &status, ctx).await;
    }
    ctx.succeeded(&object_key(&**finding));
    // Engines poke findings whose indicators changed; the periodic pass catches the rest
    // (e.g. a finding that expires).
    Ok(Action::requeue(Duration::from_secs(3600)))
}

/// No status yet, a few seconds old, and every delivery merely waiting for a running engine.
fn about_to_be_pushed(finding: &ProbeFinding, status: &ProbeFindingStatus) -> bool {
    let young = finding
        .metadata
        .creation_timestamp
        .as_ref()
        .is_some_and(|created| Timestamp::now().duration_since(created.0) < jiff::SignedDuration::from_secs(10));
    finding.status.is_none()
        && young
        && !status.deliveries.is_empty()
        && status.deliveries.iter().all(|d| d.state == DeliveryState::Pending && d.message.is_none())
}

/// A finding that just became protected (its `protectedTime` set by the write that just went
/// through): the time-to-protect histogram records it and an event says it, once.
async fn announce_protection(finding: &ProbeFinding, status: &ProbeFindingStatus, ctx: &Context) {
    let previous = finding.status.as_ref().and_then(|s| s.protected_time.as_ref());
    let (Some(protected), None) = (&status.protected_time, previous) else { return };
    // An older CRD that prunes the field would make every write look like the first.
    if ctx.pruned.drops("ProbeFinding", "protectedTime") {
        return;
    }
    let submitted = status
        .deliveries
        .iter()
        .filter(|d| d.state == DeliveryState::Submitted)
        .filter_map(|d| d.submitted_time.as_ref().map(|t| t.0))
        .min();
    if let Some(submitted) = submitted {
        let seconds = protected.0.duration_since(submitted).as_secs_f64().max(0.0);
        ctx.metrics.time_to_protect.observe(seconds);
    }
    let took = status.time_to_protect.as_deref().unwrap_or("?");
    let event = Event {
        type_: EventType::Normal,
        reason: EventReason::Protected.as_str().to_string(),
        note: Some(format!(
            "reported PROTECTED {took} after its indicators were submitted to Defender: the indicator works on this \
             endpoint"
        )),
        action: "Protect".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &finding.object_ref(&())).await {
        warn!(%error, "could not publish event");
    }
}

pub fn error_policy(finding: Arc<ProbeFinding>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.backoff(&object_key(&*finding), error)
}

fn finding_status(finding: &ProbeFinding, partners: &[Arc<DefenderPartner>], ctx: &Context) -> ProbeFindingStatus {
    let previous = finding.status.clone().unwrap_or_default();
    let state = finding.effective_state();
    let generation = finding.metadata.generation;
    let now = Time(Timestamp::now());
    let mut status = ProbeFindingStatus {
        state: Some(state),
        observed_generation: generation,
        // Set once, kept whatever comes after.
        protected_time: previous.protected_time.clone(),
        time_to_protect: previous.time_to_protect.clone(),
        ..Default::default()
    };

    if let Some(why) = ctx.unreadable_findings.why(finding) {
        status.state = None;
        let message = format!("the finding cannot be read: {why}; fix it to match the ProbeFinding CRD");
        let verdict = Verdict::new(READY, false, FindingReason::InvalidFinding, message);
        status.conditions = conditions::merge(&previous.conditions, &[verdict], generation, &now);
        return status;
    }
    let keys = match finding.indicator_keys() {
        Ok(keys) => keys,
        Err(invalid) => {
            let verdict =
                Verdict::new(READY, false, FindingReason::InvalidFinding, format!("{invalid}; fix the finding"));
            status.conditions = conditions::merge(&previous.conditions, &[verdict], generation, &now);
            return status;
        }
    };

    if let Some(partner_ref) = &finding.spec.partner_ref
        && partners.is_empty()
    {
        let cluster = partner_ref.kind == Some(crate::api::finding::PartnerKind::ClusterDefenderPartner);
        let named = ctx.all_partners().into_iter().find(|p| {
            p.is_cluster_wide() == cluster
                && (cluster || p.namespace() == finding.namespace())
                && p.name_any() == partner_ref.name
        });
        let verdict = decide::partner_ref_not_found(partner_ref, named.as_deref());
        status.conditions = conditions::merge(&previous.conditions, &[verdict], generation, &now);
        return status;
    }

    let mut deliveries: Vec<Delivery> = Vec::new();
    for partner in partners {
        let name = partner.delivery_name();
        let previous_delivery = previous.deliveries.iter().find(|d| d.partner == name);
        let engine = ctx.engines.get(&partner.owner_marker()).filter(|e| e.ready());
        // An attached partner whose engine has not read Defender yet (e.g. after a restart):
        // what the finding said stays true until the engine knows better.
        let kept = previous_delivery
            .filter(|_| decide::attached(partner) && previous.observed_generation == finding.metadata.generation);
        let delivery = match (&engine, kept) {
            (Some(engine), _) => {
                let lookup = |key: &crate::api::finding::IndicatorKey| -> ValueStatus { engine.status_of(key) };
                decide::partner_delivery(partner, finding, &keys, Timestamp::now(), Ok(&lookup), previous_delivery)
            }
            (None, Some(kept)) => kept.clone(),
            (None, None) => {
                let why = match partner.status.as_ref() {
                    Some(s) if s.state == Some(PartnerState::Detached) => s.reason.clone().unwrap_or_default(),
                    Some(s) if s.state == Some(PartnerState::Attached) => "its sync engine is starting".into(),
                    _ => "not validated yet".into(),
                };
                decide::partner_delivery(partner, finding, &keys, Timestamp::now(), Err(&why), previous_delivery)
            }
        };
        let mut delivery = delivery;
        if delivery.state == DeliveryState::Submitted && delivery.submitted_time.is_none() {
            delivery.submitted_time = Some(now.clone());
        }
        // What Defender did about the test on that endpoint, from what this partner's engine read.
        let correlation = ctx.engines.get(&partner.owner_marker()).and_then(|engine| engine.correlation());
        let correlation = correlation.as_deref();
        let delivery = outcomes::with_outcome(delivery, partner, finding, correlation, previous_delivery, now.0);
        deliveries.push(delivery);
    }

    let done = deliveries.iter().filter(|d| decide::delivered(d)).count();
    status.delivered = Some(format!("{done}/{}", deliveries.len()));
    let attached = |name: &str| partners.iter().any(|p| p.delivery_name() == name && decide::attached(p));
    let verdict = decide::finding_ready(finding, &deliveries, attached);
    status.conditions = conditions::merge(&previous.conditions, &[verdict], generation, &now);
    status.outcome = decide::outcomes::best(&deliveries);
    if let Some((at, took)) =
        decide::outcomes::protection(&previous, state, finding.observed_time(), &deliveries, now.0)
    {
        status.protected_time = Some(at);
        status.time_to_protect = Some(took);
    }
    status.deliveries = deliveries;
    status
}
