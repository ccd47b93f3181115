//! The partner reconciler: read the Secret, validate against Entra and Defender, start or stop
//! the partner's sync engine, and report `Attached` or `Detached` with a precise reason. The
//! decisions are `decide::partner`'s; this module reads and acts.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizing, finalizer};
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use super::decide::partner::{self as decide, Decision, EngineStep, Next, Unusable, Usable};
use super::{Context, Error};
use crate::api::partner::DefenderPartnerStatus;
use crate::api::reason::{Outlook, Reason};
use crate::api::{
    CLUSTER_KIND, ClusterDefenderPartner, DefenderPartner, DeletionPolicy, DeliveryState, EventReason, FINALIZER,
    PartnerReason, PartnerState,
};
use crate::defender::{ClientOptions, Credentials, DefenderClient};

/// A partner of either kind: a DefenderPartner, or a ClusterDefenderPartner worked with as its
/// namespaced view ([`ClusterDefenderPartner::as_partner`]).
pub trait PartnerObject:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + serde::Serialize
    + Send
    + Sync
    + 'static
{
    fn view(&self) -> DefenderPartner;
    /// The API that holds it (namespaced or cluster-wide).
    fn api(&self, client: kube::Client) -> Api<Self>;
}

impl PartnerObject for DefenderPartner {
    fn view(&self) -> DefenderPartner {
        self.clone()
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }
}

impl PartnerObject for ClusterDefenderPartner {
    fn view(&self) -> DefenderPartner {
        self.as_partner()
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }
}

pub async fn reconcile<K: PartnerObject>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api = object.api(ctx.client.clone());
    let key = partner_key(&object.view());
    let timer = ctx.metrics.reconcile(if object.meta().namespace.is_some() { "DefenderPartner" } else { CLUSTER_KIND });
    let action = finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalizing::Apply(object) => apply(Arc::new(object.view()), &ctx).await,
            Finalizing::Cleanup(object) => cleanup(Arc::new(object.view()), &ctx).await,
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

/// The backoff key of a partner of either kind.
fn partner_key(partner: &DefenderPartner) -> String {
    format!("partner/{}", partner.owner_marker())
}

/// Partners by state and indicators by delivery state, from the caches and the engines.
fn record_gauges(ctx: &Context) {
    use crate::telemetry::metrics::StateLabels;
    let partners = ctx.all_partners();
    for state in [PartnerState::Attached, PartnerState::Detached] {
        let count = partners.iter().filter(|p| p.status.as_ref().and_then(|s| s.state) == Some(state)).count();
        ctx.metrics.partners.get_or_create(&StateLabels { state: state.as_str() }).set(count as i64);
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
    let counts = [
        (DeliveryState::Submitted, submitted),
        (DeliveryState::Pending, pending),
        (DeliveryState::Failed, failed),
        (DeliveryState::External, external),
    ];
    for (state, value) in counts {
        ctx.metrics.indicators.get_or_create(&StateLabels { state: state.as_str() }).set(value);
    }
    ctx.metrics.quota_used.set(quota);
    ctx.metrics.engines.set(ctx.engines.count() as i64);
}

pub fn error_policy<K: PartnerObject>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.backoff(&partner_key(&object.view()), error)
}

/// Read, decide, act: the spec alone may decide (suspended, unusable spec); else the Secret is
/// read, and the last validation kept or Entra and Defender asked; one place then acts.
async fn apply(partner: Arc<DefenderPartner>, ctx: &Context) -> Result<Action, Error> {
    ctx.secret_index.record(&partner, &ctx.credentials_namespace(&partner));
    let unreadable = ctx.unreadable_partner(&partner);
    if let Some(decision) = decide::from_spec(&partner, unreadable.as_deref()) {
        return act(&partner, decision, None, ctx).await;
    }
    let connection = connect(&partner, ctx).await?;
    let engine_running = ctx.engines.get(&partner.owner_marker()).is_some();
    let usable = connection.as_ref().map(|c| &c.usable);
    let decision = match decide::from_credentials(&partner, usable, engine_running, Timestamp::now()) {
        Ok(decision) => decision,
        Err(validate) => {
            let connection = connection.as_ref().expect("only usable credentials are validated");
            if let Some(warning) = decide::expiring(&connection.usable, Timestamp::now()) {
                publish(ctx, &partner, EventReason::CredentialsExpiring, warning).await;
            }
            let answer = connection.client.validate().await;
            decide::from_validation(&partner, &connection.usable.credentials_hash, validate, answer, engine_running)
        }
    };
    act(&partner, decision, connection.ok(), ctx).await
}

/// A partner's usable credentials: its Defender client, what the decisions need of them, and
/// what identifies the engine that may use them (a change restarts it).
struct Connection {
    client: DefenderClient,
    usable: Usable,
    engine_identity: String,
}

/// Reads the credentials and builds the partner's Defender client, or says why they cannot be
/// used.
async fn connect(partner: &DefenderPartner, ctx: &Context) -> Result<Result<Connection, Unusable>, Error> {
    let namespace = ctx.credentials_namespace(partner);
    let (credentials, usable) = match super::credentials::read(partner, &namespace, &ctx.client).await? {
        Ok(read) => read,
        Err(unusable) => return Ok(Err(unusable)),
    };
    Ok(match defender_client(partner, credentials, ctx) {
        Ok(client) => {
            let engine_identity = format!("{}|{}|{:?}", usable.credentials_hash, client.api_base(), partner.spec.cloud);
            Ok(Connection { client, usable, engine_identity })
        }
        Err(error) => Err(Unusable {
            reason: error.reason(),
            message: error.to_string(),
            credentials_hash: Some(usable.credentials_hash),
        }),
    })
}

/// The one place a decision is carried out: the engine, the status (and its event), the requeue.
async fn act(
    partner: &Arc<DefenderPartner>,
    decision: Decision,
    connection: Option<Connection>,
    ctx: &Context,
) -> Result<Action, Error> {
    let marker = partner.owner_marker();
    match decision.engine {
        EngineStep::Run => {
            let connection = connection.as_ref().expect("an engine runs only with usable credentials");
            ensure_engine(partner, connection.client.clone(), connection.engine_identity.clone(), ctx);
        }
        // Its findings are reconciled once the partner's new state reaches the cache
        // (controller::run).
        EngineStep::Stop => {
            ctx.engines.stop(&marker);
        }
        EngineStep::Keep => {}
    }
    let report = ctx.engines.get(&marker).map(|engine| engine.report());
    let usable = connection.as_ref().map(|c| &c.usable);
    let status = decide::status(partner, &decision.status, report.as_ref(), usable, Timestamp::now());
    write_status(partner, status, ctx).await?;
    match decision.next {
        Next::AwaitChange => Ok(Action::await_change()),
        Next::Requeue(after) => Ok(Action::requeue(jittered(after))),
        Next::Backoff(error) => {
            warn!(partner = %marker, reason = %error.reason(), %error, "validation failed; retrying");
            Err(error.into())
        }
    }
}

/// Partner deleted: stop pushing; with `deletionPolicy: Delete`, withdraw its indicators first.
/// If the credentials are gone, the finalizer is released with a Warning rather than hanging.
async fn cleanup(partner: Arc<DefenderPartner>, ctx: &Context) -> Result<Action, Error> {
    ctx.secret_index.forget(&partner);
    // Its tenant's engine goes on for the tenant's other partners: told what is withdrawn below.
    let engine = ctx.engines.get(&partner.owner_marker());
    ctx.engines.stop(&partner.owner_marker());
    // Deleting is the newer intent than suspending: a suspended partner's indicators are withdrawn
    // too when its policy says so.
    if partner.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    if let Some(why) = ctx.unreadable_partner(&partner) {
        let note = format!("indicators were left in Defender: this operator cannot read the partner: {why}");
        publish(ctx, &partner, EventReason::IndicatorsNotWithdrawn, note).await;
        return Ok(Action::await_change());
    }
    let deleting = |message: &str| decide::deleting(&partner, message, Timestamp::now());
    let withdrawing = "withdrawing this partner's indicators from Defender (deletionPolicy: Delete)";
    if partner.status.as_ref().and_then(|s| s.reason.as_deref()) != Some(PartnerReason::Deleting.as_str()) {
        write_status(&partner, deleting(withdrawing), ctx).await?;
    }
    let marker = partner.owner_marker();
    let namespace = ctx.credentials_namespace(&partner);
    let client = match super::credentials::read(&partner, &namespace, &ctx.client).await? {
        Ok((credentials, _)) => defender_client(&partner, credentials, ctx).map_err(|e| e.to_string()),
        Err(unusable) => Err(unusable.message),
    };
    let client = match client {
        Ok(client) => client,
        Err(why) => {
            let note = format!("indicators were left in Defender because the credentials are unusable: {why}");
            warn!(partner = %marker, "{note}");
            publish(ctx, &partner, EventReason::IndicatorsNotWithdrawn, note).await;
            return Ok(Action::await_change());
        }
    };
    match super::sync::withdraw_all(&client, &marker).await {
        Ok(count) => {
            info!(partner = %marker, count, "withdrew indicators");
            if let Some(engine) = engine {
                engine.withdrawn();
            }
            publish(ctx, &partner, EventReason::Withdrawn, format!("withdrew {count} indicators from Defender")).await;
            Ok(Action::await_change())
        }
        Err(error) if error.is_transient() && !deleting_for_long(&partner) => {
            let retrying = format!("{withdrawing}: {error}; retrying (given up after 10 minutes)");
            write_status(&partner, deleting(&retrying), ctx).await?;
            Err(error.into())
        }
        Err(error) => {
            let note = format!("indicators were left in Defender: {error}");
            publish(ctx, &partner, EventReason::IndicatorsNotWithdrawn, note).await;
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

fn jittered(duration: Duration) -> Duration {
    duration.mul_f64(0.9 + rand::random::<f64>() * 0.2)
}

fn ensure_engine(partner: &Arc<DefenderPartner>, client: DefenderClient, identity: String, ctx: &Context) {
    let started = ctx.engines.ensure(
        partner.clone(),
        client,
        identity,
        ctx.caches(),
        ctx.triggers.clone(),
        ctx.config.engine.clone(),
    );
    if started {
        info!(partner = %partner.owner_marker(), "partner attached: sync engine started");
    }
}

/// Writes status when it changed (see `status::write`); publishes an event when the state or
/// reason changed.
async fn write_status(partner: &DefenderPartner, status: DefenderPartnerStatus, ctx: &Context) -> Result<(), Error> {
    let previous = partner.status.clone().unwrap_or_default();
    if !super::status::write_partner(ctx, partner, &status).await? {
        return Ok(());
    }
    if (previous.state, &previous.reason) != (status.state, &status.reason) {
        info!(partner = %partner.owner_marker(), state = ?status.state, reason = status.reason.as_deref().unwrap_or(""), "partner state changed");
        // The status was built from a PartnerReason: its spelling parses back.
        if let Some(reason) = status.reason.as_deref().and_then(PartnerReason::parse) {
            publish(ctx, partner, reason, status.message.clone().unwrap_or_default()).await;
        }
    }
    Ok(())
}

/// An event on the partner: Normal for what is fine, Warning for the rest (see [`Outlook`]).
async fn publish(ctx: &Context, partner: &DefenderPartner, reason: impl Reason, note: String) {
    let event = Event {
        type_: if reason.outlook() == Outlook::Fine { EventType::Normal } else { EventType::Warning },
        reason: reason.as_str().to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Validate".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &object_ref(partner)).await {
        warn!(%error, "could not publish event");
    }
}

/// What events name: the DefenderPartner, or the ClusterDefenderPartner a view stands for.
fn object_ref(partner: &DefenderPartner) -> k8s_openapi::api::core::v1::ObjectReference {
    let mut reference = partner.object_ref(&());
    if partner.is_cluster_wide() {
        reference.kind = Some(CLUSTER_KIND.into());
        reference.namespace = None;
    }
    reference
}
