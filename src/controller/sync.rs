//! One sync engine per attached partner: the only owner of that partner's Defender traffic.
//!
//! It reads Defender's indicators once at start (and again on a slow resync to repair drift),
//! keeps that view current from its own writes, and each round sends only the difference between
//! what the findings cache wants and what Defender holds: batch import for what is missing,
//! batch delete for what `deletionPolicy: Delete` withdraws. Finding reconcilers read the view
//! to write delivery status; the engine pokes them when something they show changed. Beside it
//! runs the partner's outcome correlation (`controller::outcomes`), with the same client.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::decide::batching::{self, Batching, Patience};
use super::decide::{self, Desired, Holder, PartnerSettings, Remote, SyncReport, ValueStatus};
use super::outcomes::Correlation;
use crate::api::finding::IndicatorKey;
use crate::api::{DefenderPartner, IndicatorType, PartnerReason, ProbeFinding};
use crate::defender::{
    APPLICATION, BatchDeleteOutcome, DefenderClient, DefenderError, EndpointClass, Indicator, MAX_BATCH,
};

/// After a 429 the next round comes this soon; the rate limiter paces the calls themselves.
const THROTTLED_PAUSE: Duration = Duration::from_millis(200);

/// Tunables of the engine (defaults suit production; tests shorten them).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// A partial batch is sent once no finding has changed for this long; full batches of
    /// 500 go at once. A lone finding therefore waits about this long, a burst fills batches.
    pub coalesce: Duration,
    /// A partial batch never waits longer than this, even while findings keep changing.
    pub max_delay: Duration,
    /// How often a round runs without being woken (cheap: in-memory diff).
    pub tick: Duration,
    /// How often Defender is re-read to notice indicators deleted in the portal.
    pub resync: Duration,
    pub tenant_cap: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            coalesce: Duration::from_millis(300),
            max_delay: Duration::from_secs(10),
            tick: Duration::from_secs(30),
            resync: Duration::from_secs(600),
            tenant_cap: crate::defender::TENANT_INDICATOR_CAP,
        }
    }
}

/// Where the engine pokes the controllers.
#[derive(Clone)]
pub struct Triggers {
    pub findings: mpsc::UnboundedSender<ObjectRef<ProbeFinding>>,
    pub partners: mpsc::UnboundedSender<ObjectRef<DefenderPartner>>,
}

#[derive(Default)]
struct View {
    ready: bool,
    remote: HashMap<IndicatorKey, Remote>,
    failed: HashMap<IndicatorKey, String>,
    tenant_total: usize,
    report: SyncReport,
}

pub struct Engine {
    /// Identifies the credentials and host the engine talks with; a change restarts it.
    identity: String,
    partner: watch::Sender<Arc<DefenderPartner>>,
    view: Arc<Mutex<View>>,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
    /// Machines and alerts, read beside the indicators (`controller::outcomes`).
    correlation: Arc<Correlation>,
    correlator: JoinHandle<()>,
}

impl Engine {
    pub fn ready(&self) -> bool {
        self.view.lock().unwrap().ready
    }

    pub fn report(&self) -> SyncReport {
        let report = self.view.lock().unwrap().report.clone();
        SyncReport { outcomes: Some(self.correlation.report()), ..report }
    }

    /// What the engine read of Defender's machines and alerts.
    pub fn correlation(&self) -> &Correlation {
        &self.correlation
    }

    pub fn status_of(&self, key: &IndicatorKey) -> ValueStatus {
        let view = self.view.lock().unwrap();
        if let Some(remote) = view.remote.get(key) {
            ValueStatus::Held(remote.clone())
        } else if let Some(why) = view.failed.get(key) {
            ValueStatus::Failed(why.clone())
        } else {
            ValueStatus::Pending
        }
    }

    pub fn wake(&self) {
        self.wake.notify_one();
        self.correlation.wake();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.task.abort();
        self.correlator.abort();
    }
}

/// All running engines, by partner (`namespace/name`).
#[derive(Default)]
pub struct Engines {
    running: Mutex<HashMap<String, Arc<Engine>>>,
}

impl Engines {
    pub fn get(&self, partner: &str) -> Option<Arc<Engine>> {
        self.running.lock().unwrap().get(partner).cloned()
    }

    /// Starts the partner's engine, or hands the running one the partner's latest spec.
    /// Returns true when a new engine was started.
    pub fn ensure(
        &self,
        partner: Arc<DefenderPartner>,
        client: DefenderClient,
        identity: String,
        findings: Store<ProbeFinding>,
        triggers: Triggers,
        config: EngineConfig,
    ) -> bool {
        let key = partner.owner_marker();
        let mut running = self.running.lock().unwrap();
        if let Some(engine) = running.get(&key)
            && engine.identity == identity
        {
            engine.partner.send_if_modified(|current| {
                let changed = current.spec != partner.spec || current.metadata.labels != partner.metadata.labels;
                *current = partner.clone();
                changed
            });
            engine.wake();
            return false;
        }
        let (partner_tx, partner_rx) = watch::channel(partner);
        let view = Arc::new(Mutex::new(View::default()));
        let wake = Arc::new(Notify::new());
        let indicators_read = {
            let view = view.clone();
            Box::new(move || view.lock().unwrap().ready)
        };
        let (correlation, correlator) = super::outcomes::spawn(
            client.clone(),
            partner_rx.clone(),
            findings.clone(),
            triggers.clone(),
            indicators_read,
        );
        let worker =
            Worker { client, partner: partner_rx, findings, view: view.clone(), wake: wake.clone(), triggers, config };
        let task = tokio::spawn(worker.run());
        let engine = Engine { identity, partner: partner_tx, view, wake, task, correlation, correlator };
        running.insert(key, Arc::new(engine));
        true
    }

    /// Stops the partner's engine; returns true if one was running.
    pub fn stop(&self, partner: &str) -> bool {
        self.running.lock().unwrap().remove(partner).is_some()
    }

    /// Wakes every engine of a namespace (a finding there changed or went away).
    pub fn wake_namespace(&self, namespace: &str) {
        let prefix = format!("{namespace}/");
        for (key, engine) in self.running.lock().unwrap().iter() {
            if key.starts_with(&prefix) {
                engine.wake();
            }
        }
    }
}

struct Worker {
    client: DefenderClient,
    partner: watch::Receiver<Arc<DefenderPartner>>,
    findings: Store<ProbeFinding>,
    view: Arc<Mutex<View>>,
    wake: Arc<Notify>,
    triggers: Triggers,
    config: EngineConfig,
}

impl Worker {
    async fn run(mut self) {
        let marker = self.partner.borrow().owner_marker();
        info!(partner = %marker, "sync engine started");
        // The findings cache must be complete before any diff, or a restart would withdraw
        // indicators whose findings were simply not listed yet.
        super::synced(&self.findings).await;
        let mut last_read: Option<Instant> = None;
        let mut failures: u32 = 0;
        let mut batching = Batching { last_change: Instant::now(), pending_since: None };
        loop {
            let read_due = last_read.is_none_or(|at| at.elapsed() >= self.config.resync);
            let result =
                if read_due { self.read_defender().await.map(|()| last_read = Some(Instant::now())) } else { Ok(()) };
            let result = match result {
                Ok(()) => self.round(&mut batching).await,
                Err(error) => Err(error),
            };
            let next_round = match result {
                Ok(next) => {
                    failures = 0;
                    next
                }
                Err(error) => {
                    failures += 1;
                    warn!(partner = %marker, reason = %error.reason(), %error, "sync round failed");
                    self.record_error(&error);
                    if matches!(
                        error.reason(),
                        PartnerReason::Unauthorized | PartnerReason::Forbidden | PartnerReason::DisabledFeature
                    ) {
                        // The credentials may have lost their grant: let the partner re-validate.
                        let _ = self.triggers.partners.send(ObjectRef::from_obj(&**self.partner.borrow()));
                    }
                    let pause = match error {
                        // The limiter already holds the throttled class back; the next round may
                        // still use the other one (single submits), so only a short pause.
                        DefenderError::Throttled { .. } => THROTTLED_PAUSE,
                        _ => error.retry_after().unwrap_or_else(|| backoff(failures)),
                    };
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            let wait = next_round.unwrap_or(self.config.tick);
            tokio::select! {
                _ = self.wake.notified() => batching.last_change = Instant::now(),
                _ = tokio::time::sleep(wait) => {}
                changed = self.partner.changed() => if changed.is_err() { return },
            }
        }
    }

    fn settings(&self) -> (Arc<DefenderPartner>, PartnerSettings) {
        let partner = self.partner.borrow().clone();
        let settings = PartnerSettings {
            namespace: partner.metadata.namespace.clone().unwrap_or_default(),
            name: partner.metadata.name.clone().unwrap_or_default(),
            marker: partner.owner_marker(),
            indicator: partner.spec.indicator.clone(),
            delete_withdrawn: partner.spec.deletion_policy == crate::api::DeletionPolicy::Delete,
        };
        (partner, settings)
    }

    /// Reads every active indicator of the tenant once: ours, and everyone else's (to report
    /// `External` and to count the tenant against its cap).
    async fn read_defender(&self) -> Result<(), DefenderError> {
        let marker = self.partner.borrow().owner_marker();
        let listed = self.client.list_indicators(None).await?;
        let now = jiff::Timestamp::now();
        let active: Vec<&Indicator> = listed.iter().filter(|i| !expired(i, now)).collect();
        let remote: HashMap<IndicatorKey, Remote> =
            active.iter().filter_map(|indicator| Some((key_of(indicator)?, remote_of(indicator, &marker)))).collect();
        let mut view = self.view.lock().unwrap();
        let was_ready = view.ready;
        view.tenant_total = active.len();
        view.remote = remote;
        view.ready = true;
        drop(view);
        info!(partner = %marker, indicators = active.len(), "read Defender's indicators");
        if !was_ready {
            self.trigger_namespace();
        }
        Ok(())
    }

    /// One diff-and-send round: what leaves now is [`batching::release`]'s to say. Returns when
    /// the next round is due, if sooner than the tick.
    async fn round(&self, batching: &mut Batching) -> Result<Option<Duration>, DefenderError> {
        let (partner, settings) = self.settings();
        let findings = self.findings.state();
        let desired = decide::desired(&partner, &settings, findings.iter().map(|f| &**f), jiff::Timestamp::now());
        let mut plan = {
            let view = self.view.lock().unwrap();
            decide::plan(&desired, &view.remote, settings.delete_withdrawn, view.tenant_total, self.config.tenant_cap)
        };
        let patience = Patience { coalesce: self.config.coalesce, max_delay: self.config.max_delay };
        let release = batching::release(batching, plan.push.len(), plan.withdraw.len(), Instant::now(), patience);
        plan.push.truncate(release.push);
        if !release.withdraw {
            plan.withdraw.clear();
        }
        if !plan.push.is_empty() || !plan.withdraw.is_empty() {
            debug!(push = plan.push.len(), withdraw = plan.withdraw.len(), due = ?release.due, "sending");
        }

        let mut changed: BTreeSet<IndicatorKey> = BTreeSet::new();
        let outcome = self.push(&plan.push, &mut changed).await;
        let outcome = match outcome {
            Ok(()) => self.withdraw(&plan.withdraw, &mut changed).await,
            Err(error) => Err(error),
        };
        self.update_report(&desired, plan.over_quota.len(), outcome.as_ref().err());
        if !changed.is_empty() {
            self.trigger_findings_with(&changed, &findings);
        }
        outcome?;
        batching::sent(batching, &release);
        Ok(release.due.map(|due| due.saturating_duration_since(Instant::now())))
    }

    async fn push(
        &self,
        indicators: &[crate::defender::NewIndicator],
        changed: &mut BTreeSet<IndicatorKey>,
    ) -> Result<(), DefenderError> {
        for batch in indicators.chunks(MAX_BATCH) {
            // Budgets are looked up only for a batch small enough to go singly (a look-up may need
            // a token).
            let singly = batch.len() <= batching::SUBMIT_AT_MOST
                && batching::submit_singly(
                    batch.len(),
                    self.client.has_budget(EndpointClass::Import).await,
                    self.client.has_budget(EndpointClass::Other).await,
                );
            if singly {
                for indicator in batch {
                    let outcome = match self.client.submit(indicator).await {
                        Ok(created) => Ok(created.id),
                        Err(DefenderError::Api { status: 400, code, message, .. }) => Err(format!("{code}: {message}")),
                        Err(error) => return Err(error),
                    };
                    self.record(indicator, outcome, changed);
                }
                continue;
            }
            let results = self.client.import(batch).await?;
            let by_value: HashMap<String, &crate::defender::ImportResult> =
                results.iter().map(|r| (r.indicator.to_ascii_lowercase(), r)).collect();
            for indicator in batch {
                let outcome = match by_value.get(&indicator.indicator_value.to_ascii_lowercase()) {
                    Some(result) if !result.is_failed && result.id.is_some() => {
                        Ok(result.id.clone().unwrap_or_default())
                    }
                    Some(result) => Err(result.failure_reason.clone().unwrap_or_else(|| "refused by Defender".into())),
                    None => Err("Defender returned no result for this value".into()),
                };
                self.record(indicator, outcome, changed);
            }
            debug!(count = batch.len(), "imported a batch");
        }
        Ok(())
    }

    /// Records what Defender did with one value: its id, or why it refused it.
    fn record(
        &self,
        indicator: &crate::defender::NewIndicator,
        outcome: Result<String, String>,
        changed: &mut BTreeSet<IndicatorKey>,
    ) {
        let Some(key) = key_from(&indicator.indicator_type, &indicator.indicator_value) else { return };
        let mut view = self.view.lock().unwrap();
        match outcome {
            Ok(id) => {
                view.failed.remove(&key);
                view.remote.insert(key.clone(), Remote { id, holder: Holder::Us });
                view.tenant_total += 1;
            }
            Err(why) => {
                view.failed.insert(key.clone(), why);
            }
        }
        changed.insert(key);
    }

    async fn withdraw(&self, ids: &[String], changed: &mut BTreeSet<IndicatorKey>) -> Result<(), DefenderError> {
        for batch in ids.chunks(MAX_BATCH) {
            delete_batch(&self.client, batch).await?;
            let gone: BTreeSet<&String> = batch.iter().collect();
            let mut view = self.view.lock().unwrap();
            let keys: Vec<IndicatorKey> =
                view.remote.iter().filter(|(_, r)| gone.contains(&r.id)).map(|(k, _)| k.clone()).collect();
            for key in keys {
                view.remote.remove(&key);
                view.tenant_total = view.tenant_total.saturating_sub(1);
                changed.insert(key);
            }
        }
        Ok(())
    }

    fn update_report(&self, desired: &Desired, over_quota: usize, error: Option<&DefenderError>) {
        let mut view = self.view.lock().unwrap();
        let mut report = SyncReport {
            ready: view.ready,
            desired: desired.push.len() as u32,
            over_quota: over_quota as u32,
            tenant_total: view.tenant_total as u32,
            tenant_cap: self.config.tenant_cap as u32,
            error: error.map(|e| (e.reason(), e.to_string())),
            ..Default::default()
        };
        for key in desired.push.keys() {
            match view.remote.get(key).map(|r| &r.holder) {
                Some(Holder::Us) => report.submitted += 1,
                Some(Holder::Foreign) => report.external += 1,
                None if view.failed.contains_key(key) => report.failed += 1,
                None => report.pending += 1,
            }
        }
        // Values that stay for live findings no longer asking for them (a later PROTECTED result
        // is the indicator working) are in Defender for this partner too.
        let kept = desired.referenced.iter().filter(|key| !desired.push.contains_key(*key));
        let kept = kept.filter(|key| matches!(view.remote.get(*key), Some(r) if r.holder == Holder::Us)).count() as u32;
        report.desired += kept;
        report.submitted += kept;
        if report != view.report {
            view.report = report;
            drop(view);
            let _ = self.triggers.partners.send(ObjectRef::from_obj(&**self.partner.borrow()));
        }
    }

    fn record_error(&self, error: &DefenderError) {
        let mut view = self.view.lock().unwrap();
        let error = Some((error.reason(), error.to_string()));
        if view.report.error != error {
            view.report.error = error;
            drop(view);
            let _ = self.triggers.partners.send(ObjectRef::from_obj(&**self.partner.borrow()));
        }
    }

    fn trigger_namespace(&self) {
        let namespace = self.partner.borrow().metadata.namespace.clone();
        super::wake_findings_in(namespace.as_deref(), &self.findings, &self.triggers.findings);
    }

    fn trigger_findings_with(&self, keys: &BTreeSet<IndicatorKey>, findings: &[Arc<ProbeFinding>]) {
        for finding in findings {
            if finding.indicator_keys().is_ok_and(|own| own.iter().any(|k| keys.contains(k))) {
                let _ = self.triggers.findings.send(ObjectRef::from_obj(&**finding));
            }
        }
    }
}

/// Exponential backoff with jitter for failures without `Retry-After`: 1 s doubling to 30 s.
fn backoff(failures: u32) -> Duration {
    let base = 2u64.saturating_pow(failures.saturating_sub(1).min(5)).min(30);
    let jitter = rand::random::<f64>() * 0.3 + 0.85;
    Duration::from_secs_f64(base as f64 * jitter)
}

fn key_from(type_: &str, value: &str) -> Option<IndicatorKey> {
    let type_: IndicatorType = serde_json::from_value(serde_json::Value::String(type_.to_string())).ok()?;
    let value = match type_ {
        IndicatorType::FileSha256
        | IndicatorType::FileSha1
        | IndicatorType::FileMd5
        | IndicatorType::CertificateThumbprint
        | IndicatorType::DomainName => value.to_ascii_lowercase(),
        _ => value.to_string(),
    };
    Some(IndicatorKey { type_, value })
}

fn key_of(indicator: &Indicator) -> Option<IndicatorKey> {
    key_from(&indicator.indicator_type, &indicator.indicator_value)
}

/// Ours when it carries our application and this partner's marker.
fn remote_of(indicator: &Indicator, marker: &str) -> Remote {
    let ours =
        indicator.application.as_deref() == Some(APPLICATION) && indicator.external_id.as_deref() == Some(marker);
    Remote { id: indicator.id.clone(), holder: if ours { Holder::Us } else { Holder::Foreign } }
}

/// Defender may still list expired indicators; they count as gone.
fn expired(indicator: &Indicator, now: jiff::Timestamp) -> bool {
    indicator.expiration_time.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).is_some_and(|at| at <= now)
}

/// Withdraws every indicator this partner created (partner deleted with `deletionPolicy: Delete`).
pub async fn withdraw_all(client: &DefenderClient, marker: &str) -> Result<usize, DefenderError> {
    let filter = format!("application eq '{APPLICATION}'");
    let ours: Vec<String> = client
        .list_indicators(Some(&filter))
        .await?
        .into_iter()
        .filter(|i| i.application.as_deref() == Some(APPLICATION) && i.external_id.as_deref() == Some(marker))
        .map(|i| i.id)
        .collect();
    for batch in ours.chunks(MAX_BATCH) {
        delete_batch(client, batch).await?;
    }
    Ok(ours.len())
}

/// One BatchDelete; when Defender says some ids were missing (without saying which), the rest
/// are deleted one by one (404 counts as gone).
async fn delete_batch(client: &DefenderClient, ids: &[String]) -> Result<(), DefenderError> {
    if client.batch_delete(ids).await? == BatchDeleteOutcome::SomeNotFound {
        for id in ids {
            client.delete(id).await?;
        }
    }
    Ok(())
}
