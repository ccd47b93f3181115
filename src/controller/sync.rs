//! One sync engine per tenant and app: the only owner of the Defender traffic of every attached
//! partner (namespaced or cluster-wide) that uses that app.
//!
//! It reads the tenant's indicators once at start (and again on a slow resync to repair drift),
//! keeps that view current from its own writes, and each round sends only the difference between
//! what its partners' findings want and what Defender holds: batch import for what is missing,
//! batch delete for what a partner with `deletionPolicy: Delete` withdraws. The partners share
//! one view, one rate limit and one count against the tenant's cap; each indicator still carries
//! the marker of the partner that created it, so a partner's withdrawals never touch another's,
//! and a value two partners want is written once. Finding reconcilers read the view to write
//! delivery status; the engine pokes them when something they show changed. Beside it runs each
//! partner's outcome correlation (`controller::outcomes`), with that partner's client.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::decide::batching::{self, Batching, Patience};
use super::decide::{
    self, Desired, Held, Holder, Member, NamespaceLabels, PartnerSettings, Remote, Selection, SyncReport, ValueStatus,
};
use super::outcomes::Correlation;
use crate::api::finding::IndicatorKey;
use crate::api::{ClusterDefenderPartner, DefenderPartner, IndicatorType, PartnerReason, ProbeFinding};
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
    pub cluster_partners: mpsc::UnboundedSender<ObjectRef<ClusterDefenderPartner>>,
}

impl Triggers {
    /// Queues a reconcile of `partner`, of whichever kind.
    pub fn partner(&self, partner: &DefenderPartner) {
        let name = partner.metadata.name.clone().unwrap_or_default();
        match &partner.metadata.namespace {
            Some(namespace) => _ = self.partners.send(ObjectRef::new(&name).within(namespace)),
            None => _ = self.cluster_partners.send(ObjectRef::new(&name)),
        }
    }
}

/// The caches the engines read.
#[derive(Clone)]
pub struct Caches {
    pub findings: Store<ProbeFinding>,
    /// Namespaces (their labels), for ClusterDefenderPartners' `namespaceSelector`s.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
}

impl Caches {
    pub fn namespace_labels(&self) -> NamespaceLabels {
        self.namespaces
            .state()
            .iter()
            .filter_map(|ns| Some((ns.metadata.name.clone()?, ns.metadata.labels.clone().unwrap_or_default())))
            .collect()
    }
}

/// What one engine knows of its tenant.
#[derive(Default)]
struct View {
    ready: bool,
    held: HashMap<IndicatorKey, Held>,
    failed: HashMap<IndicatorKey, String>,
    tenant_total: usize,
    reports: HashMap<String, SyncReport>,
}

/// One partner of an engine.
struct Partner {
    /// Identifies the partner's credentials and host: a change gives it a fresh client and
    /// correlation.
    identity: String,
    client: DefenderClient,
    partner: watch::Sender<Arc<DefenderPartner>>,
    correlation: Arc<Correlation>,
    correlator: JoinHandle<()>,
}

impl Drop for Partner {
    fn drop(&mut self) {
        self.correlator.abort();
    }
}

/// The engine of one tenant and app.
pub struct Engine {
    partners: Mutex<BTreeMap<String, Partner>>,
    view: Arc<Mutex<View>>,
    wake: Arc<Wake>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What wakes an engine. Changed findings are counted: while they pour in, a round runs once
/// they may fill the batch being held back (or once it is due), not on every change — a round
/// plans over every finding of the engine's partners. A partner's change runs a round at once.
#[derive(Default)]
struct Wake {
    notify: Notify,
    changes: AtomicUsize,
    urgent: AtomicBool,
}

impl Wake {
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }

    fn now(&self) {
        self.urgent.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// One partner's side of its tenant's engine.
#[derive(Clone)]
pub struct PartnerEngine {
    engine: Arc<Engine>,
    marker: String,
}

impl PartnerEngine {
    pub fn ready(&self) -> bool {
        self.engine.view.lock().unwrap().ready
    }

    pub fn report(&self) -> SyncReport {
        let report = self.engine.view.lock().unwrap().reports.get(&self.marker).cloned().unwrap_or_default();
        SyncReport { outcomes: self.correlation().map(|c| c.report()), ..report }
    }

    /// What the partner's correlation read of Defender's machines and alerts.
    pub fn correlation(&self) -> Option<Arc<Correlation>> {
        self.engine.partners.lock().unwrap().get(&self.marker).map(|p| p.correlation.clone())
    }

    /// What Defender holds of `key`, as this partner sees it: its own and its sibling partners'
    /// (same tenant and app) are held for it; anyone else's are foreign.
    pub fn status_of(&self, key: &IndicatorKey) -> ValueStatus {
        let view = self.engine.view.lock().unwrap();
        let held = view.held.get(key).cloned();
        let failed = view.failed.get(key).cloned();
        drop(view);
        match (held, failed) {
            (Some(held), _) => {
                let ours = held.owner.is_some_and(|owner| self.engine.partners.lock().unwrap().contains_key(&owner));
                ValueStatus::Held(Remote { id: held.id, holder: if ours { Holder::Us } else { Holder::Foreign } })
            }
            (None, Some(why)) => ValueStatus::Failed(why),
            (None, None) => ValueStatus::Pending,
        }
    }

    /// The partner's indicators were withdrawn (its deletion): the engine forgets them, so that
    /// a value another of its partners wants is pushed again for that one.
    pub fn withdrawn(&self) {
        let mut view = self.engine.view.lock().unwrap();
        let before = view.held.len();
        view.held.retain(|_, held| held.owner.as_deref() != Some(self.marker.as_str()));
        view.tenant_total = view.tenant_total.saturating_sub(before - view.held.len());
        drop(view);
        self.engine.wake.now();
    }
}

/// What makes two partners share an engine: the same cloud, token endpoint (tenant), app and
/// API host.
fn tenant_key(partner: &DefenderPartner, client: &DefenderClient) -> String {
    format!("{:?}|{}|{}|{}", partner.spec.cloud, client.token_url(), client.client_id(), client.api_base())
}

/// All running engines: by tenant and app, and which partner (by marker) is in which.
#[derive(Default)]
pub struct Engines {
    running: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    by_tenant: HashMap<String, Arc<Engine>>,
    by_partner: HashMap<String, String>,
}

impl Engines {
    pub fn get(&self, marker: &str) -> Option<PartnerEngine> {
        let running = self.running.lock().unwrap();
        let engine = running.by_tenant.get(running.by_partner.get(marker)?)?.clone();
        Some(PartnerEngine { engine, marker: marker.to_string() })
    }

    /// How many engines run (one per tenant and app).
    pub fn count(&self) -> usize {
        self.running.lock().unwrap().by_tenant.len()
    }

    /// Adds the partner to its tenant's engine (starting the engine if it is the first), or hands
    /// the engine the partner's latest spec. Returns true when the partner was not in it yet.
    pub fn ensure(
        &self,
        partner: Arc<DefenderPartner>,
        client: DefenderClient,
        identity: String,
        caches: Caches,
        triggers: Triggers,
        config: EngineConfig,
    ) -> bool {
        let marker = partner.owner_marker();
        let tenant = tenant_key(&partner, &client);
        let mut running = self.running.lock().unwrap();
        if running.by_partner.get(&marker).is_some_and(|current| current != &tenant) {
            // Moved to another tenant or app: out of the old engine first.
            remove(&mut running, &marker);
        }
        let engine = running
            .by_tenant
            .entry(tenant.clone())
            .or_insert_with(|| Engine::start(caches.clone(), triggers.clone(), config))
            .clone();
        running.by_partner.insert(marker.clone(), tenant);
        drop(running);
        let mut partners = engine.partners.lock().unwrap();
        if let Some(current) = partners.get(&marker)
            && current.identity == identity
        {
            current.partner.send_if_modified(|current| {
                let changed = current.spec != partner.spec || current.metadata.labels != partner.metadata.labels;
                *current = partner.clone();
                changed
            });
            drop(partners);
            engine.wake.now();
            return false;
        }
        let added = !partners.contains_key(&marker);
        let (partner_tx, partner_rx) = watch::channel(partner);
        let indicators_read = {
            let view = engine.view.clone();
            Box::new(move || view.lock().unwrap().ready)
        };
        let (correlation, correlator) =
            super::outcomes::spawn(client.clone(), partner_rx, caches, triggers, indicators_read);
        partners.insert(marker, Partner { identity, client, partner: partner_tx, correlation, correlator });
        drop(partners);
        engine.wake.now();
        added
    }

    /// Takes the partner out of its engine (stopping the engine when it was the last); returns
    /// true if it was in one.
    pub fn stop(&self, marker: &str) -> bool {
        remove(&mut self.running.lock().unwrap(), marker)
    }

    /// Wakes every engine (a finding or a namespace changed or went away).
    pub fn wake_all(&self) {
        self.wake_where(|_| true);
    }

    /// Wakes the engines, and the correlations, of the partners that may select a finding of
    /// `namespace`: those of that namespace and the cluster-wide ones. With many tenants a new
    /// finding costs one tenant's round, not every tenant's.
    pub fn wake_for(&self, namespace: &str) {
        self.wake_where(|partner| partner.metadata.namespace.as_deref().is_none_or(|ns| ns == namespace));
    }

    fn wake_where(&self, concerned: impl Fn(&DefenderPartner) -> bool) {
        for engine in self.running.lock().unwrap().by_tenant.values() {
            let mut woken = false;
            for partner in engine.partners.lock().unwrap().values() {
                if concerned(&partner.partner.borrow()) {
                    partner.correlation.wake();
                    woken = true;
                }
            }
            if woken {
                engine.wake.changed();
            }
        }
    }
}

fn remove(running: &mut Running, marker: &str) -> bool {
    let Some(tenant) = running.by_partner.remove(marker) else { return false };
    if let Some(engine) = running.by_tenant.get(&tenant) {
        let mut partners = engine.partners.lock().unwrap();
        partners.remove(marker);
        let empty = partners.is_empty();
        drop(partners);
        engine.view.lock().unwrap().reports.remove(marker);
        if empty {
            running.by_tenant.remove(&tenant);
        }
    }
    true
}

impl Engine {
    fn start(caches: Caches, triggers: Triggers, config: EngineConfig) -> Arc<Engine> {
        let engine = Arc::new(Engine {
            partners: Mutex::default(),
            view: Arc::new(Mutex::new(View::default())),
            wake: Arc::default(),
            task: Mutex::new(None),
        });
        let worker = Worker { engine: Arc::downgrade(&engine), caches, triggers, config };
        *engine.task.lock().unwrap() = Some(tokio::spawn(worker.run()));
        engine
    }
}

/// Full reads of a tenant (its indicators, machines, antivirus health or alerts) under way at
/// once, over all engines and correlations.
static FULL_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
/// The longest a read waits for its turn before it reads anyway.
const FULL_READ_TURN: Duration = Duration::from_secs(5);

/// Waits for the turn of one full read of a tenant; the turn lasts while the permit is held.
/// After a start every tenant reads at once, and each read holds a whole list (its pages, then
/// what is kept of it) for a moment: one at a time keeps the operator's peak memory to one
/// tenant's list, not all of them. A tenant whose read is slow (throttled, down) holds the others
/// back a few seconds at most.
pub(super) async fn full_read_turn() -> Option<tokio::sync::SemaphorePermit<'static>> {
    tokio::time::timeout(FULL_READ_TURN, FULL_READS.acquire()).await.ok().and_then(Result::ok)
}

/// The least pause between two rounds of an engine: well under the pause that sends a partial
/// batch, far more than enough for a full batch to leave as soon as it fills.
const ROUND_GAP: Duration = Duration::from_millis(100);

/// When the round after this one is due, and how many values this one held back.
struct NextRound {
    due: Option<Instant>,
    held_back: usize,
}

/// A partner as one round sees it.
struct Snapshot {
    partner: Arc<DefenderPartner>,
    settings: PartnerSettings,
}

struct Worker {
    engine: std::sync::Weak<Engine>,
    caches: Caches,
    triggers: Triggers,
    config: EngineConfig,
}

impl Worker {
    async fn run(self) {
        let mut findings_listed = false;
        let mut first_read_shown = false;
        let mut last_read: Option<Instant> = None;
        let mut failures: u32 = 0;
        let mut batching = Batching::new(Instant::now());
        let mut planning = Duration::ZERO;
        loop {
            let Some(engine) = self.engine.upgrade() else { return };
            let client = engine.partners.lock().unwrap().values().next().map(|p| p.client.clone());
            let Some(client) = client else {
                // Started for a partner not yet added (or between partners): wait for one.
                let wake = engine.wake.clone();
                drop(engine);
                let _ = tokio::time::timeout(self.config.tick, wake.notify.notified()).await;
                continue;
            };
            let read_due = last_read.is_none_or(|at| at.elapsed() >= self.config.resync);
            let result = if read_due {
                self.read_defender(&engine, &client).await.map(|()| last_read = Some(Instant::now()))
            } else {
                Ok(())
            };
            if result.is_ok() && !findings_listed {
                // The findings cache must be complete before any diff, or a restart would
                // withdraw indicators whose findings were simply not listed yet. Defender is read
                // meanwhile: after a restart, while the operator is still listing the findings.
                super::synced(&self.caches.findings).await;
                findings_listed = true;
            }
            if result.is_ok() && !first_read_shown {
                self.wake_findings_the_read_changed(&engine);
                first_read_shown = true;
            }
            let result = match result {
                Ok(()) => self.round(&engine, &client, &mut batching, &mut planning).await,
                Err(error) => Err(error),
            };
            let next_round = match result {
                Ok(next) => {
                    failures = 0;
                    next
                }
                Err(error) => {
                    failures += 1;
                    warn!(tenant = %client.tenant_id(), reason = %error.reason(), %error, "sync round failed");
                    self.record_error(&engine, &error);
                    let pause = match error {
                        // The limiter already holds the throttled class back; the next round may
                        // still use the other one (single submits), so only a short pause.
                        DefenderError::Throttled { .. } => THROTTLED_PAUSE,
                        _ => error.retry_after().unwrap_or_else(|| backoff(failures)),
                    };
                    drop(engine);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            let wake = engine.wake.clone();
            drop(engine);
            // A pause between rounds at least as long as the last plan took: an engine takes at
            // most half a core.
            let deadline = next_round.due.unwrap_or_else(|| Instant::now() + self.config.tick);
            tokio::time::sleep_until(deadline.min(Instant::now() + planning.max(ROUND_GAP))).await;
            self.wait_for_round(&wake, next_round, deadline, &mut batching).await;
        }
    }

    /// Waits until the next round is worth its plan: a partner changed, enough findings changed
    /// to fill the batch held back, what waits is due (findings quiet for `coalesce`, or
    /// something waiting `max_delay`), or the tick.
    async fn wait_for_round(&self, wake: &Wake, next: NextRound, mut deadline: Instant, batching: &mut Batching) {
        let patience = self.patience();
        let mut first_change = None;
        loop {
            tokio::select! {
                _ = wake.notify.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
            let now = Instant::now();
            batching.last_change = now;
            let fills_batch = wake.changes.load(Ordering::Relaxed) >= MAX_BATCH.saturating_sub(next.held_back);
            if wake.urgent.swap(false, Ordering::Relaxed) || fills_batch {
                return;
            }
            deadline = batching::due(batching, *first_change.get_or_insert(now), patience);
        }
    }

    fn patience(&self) -> Patience {
        Patience { coalesce: self.config.coalesce, max_delay: self.config.max_delay }
    }

    /// The engine's partners as this round sees them.
    fn snapshot(engine: &Engine) -> Vec<Snapshot> {
        engine
            .partners
            .lock()
            .unwrap()
            .values()
            .map(|member| {
                let partner = member.partner.borrow().clone();
                let settings = settings(&partner);
                Snapshot { partner, settings }
            })
            .collect()
    }

    /// Reads every active indicator of the tenant once: the partners', and everyone else's (to
    /// report `External` and to count the tenant against its cap).
    async fn read_defender(&self, engine: &Engine, client: &DefenderClient) -> Result<(), DefenderError> {
        let listed = {
            let _turn = full_read_turn().await;
            client.list_indicators(None).await?
        };
        let now = jiff::Timestamp::now();
        let active: Vec<&Indicator> = listed.iter().filter(|i| !expired(i, now)).collect();
        let held: HashMap<IndicatorKey, Held> =
            active.iter().filter_map(|indicator| Some((key_of(indicator)?, held_of(indicator)))).collect();
        let mut view = engine.view.lock().unwrap();
        view.tenant_total = active.len();
        view.held = held;
        view.ready = true;
        drop(view);
        info!(tenant = %client.tenant_id(), indicators = active.len(), "read Defender's indicators");
        Ok(())
    }

    /// The findings kept what they showed until the engine's first read: those whose deliveries
    /// no longer agree with it are reconciled (after a restart, few: not every finding again).
    fn wake_findings_the_read_changed(&self, engine: &Engine) {
        let snapshot = Self::snapshot(engine);
        let namespaces = self.caches.namespace_labels();
        let partners: Vec<(Selection, String)> =
            snapshot.iter().map(|p| (Selection::of(&p.partner, &namespaces), p.partner.delivery_name())).collect();
        let markers: BTreeSet<&String> = snapshot.iter().map(|p| &p.settings.marker).collect();
        let view = engine.view.lock().unwrap();
        let held = |key: &IndicatorKey| {
            let held = view.held.get(key)?;
            held.owner.as_ref().is_some_and(|owner| markers.contains(owner)).then_some(held.id.as_str())
        };
        for finding in self.caches.findings.state() {
            let changed = partners.iter().any(|(selection, delivery)| {
                selection.selects(&finding) && !decide::still_shows(&finding, delivery, held)
            });
            if changed {
                let _ = self.triggers.findings.send(super::finding_ref(&finding));
            }
        }
    }

    /// One diff-and-send round over every partner of the engine: what leaves now is
    /// [`batching::release`]'s to say. Returns when the next round is due, if sooner than the tick.
    async fn round(
        &self,
        engine: &Engine,
        client: &DefenderClient,
        batching: &mut Batching,
        planning: &mut Duration,
    ) -> Result<NextRound, DefenderError> {
        let planned = Instant::now();
        // Changes from now on are the next round's (counted twice at worst, never missed).
        engine.wake.changes.store(0, Ordering::Relaxed);
        let partners = Self::snapshot(engine);
        let findings = self.caches.findings.state();
        let namespaces = self.caches.namespace_labels();
        let now = jiff::Timestamp::now();
        let wanted: Vec<Desired> = partners
            .iter()
            .map(|p| decide::desired(&p.partner, &p.settings, findings.iter().map(|f| &**f), &namespaces, now))
            .collect();
        let members: Vec<Member> =
            partners.iter().zip(&wanted).map(|(p, desired)| Member { settings: &p.settings, desired }).collect();
        let mut plan = {
            let view = engine.view.lock().unwrap();
            decide::plan_members(&members, &view.held, view.tenant_total, self.config.tenant_cap)
        };
        *planning = planned.elapsed();
        let now = Instant::now();
        let release = batching::release(batching, plan.push.len(), plan.withdraw.len(), now, self.patience());
        let held_back = plan.push.len() - release.push;
        plan.push.truncate(release.push);
        let push: Vec<crate::defender::NewIndicator> = plan.push.iter().map(|p| p.indicator()).collect();
        if !release.withdraw {
            plan.withdraw.clear();
        }
        if !push.is_empty() || !plan.withdraw.is_empty() {
            debug!(push = push.len(), held_back, withdraw = plan.withdraw.len(), due = ?release.due, "sending");
        }

        let mut changed: BTreeSet<IndicatorKey> = BTreeSet::new();
        let outcome = self.push(engine, client, &push, &mut changed).await;
        let outcome = match outcome {
            Ok(()) => self.withdraw(engine, client, &plan.withdraw, &mut changed).await,
            Err(error) => Err(error),
        };
        for (snapshot, member) in partners.iter().zip(&members) {
            let over_quota = member.desired.push.keys().filter(|key| plan.over_quota.contains(*key)).count();
            self.update_report(engine, snapshot, member, over_quota, outcome.as_ref().err());
        }
        if !changed.is_empty() {
            let selections: Vec<Selection> = partners.iter().map(|p| Selection::of(&p.partner, &namespaces)).collect();
            let selected = findings.iter().filter(|f| selections.iter().any(|s| s.selects(f)));
            self.trigger_findings_with(&changed, selected);
        }
        outcome?;
        batching::sent(batching, &release, now);
        Ok(NextRound { due: release.due, held_back })
    }

    async fn push(
        &self,
        engine: &Engine,
        client: &DefenderClient,
        indicators: &[crate::defender::NewIndicator],
        changed: &mut BTreeSet<IndicatorKey>,
    ) -> Result<(), DefenderError> {
        for batch in indicators.chunks(MAX_BATCH) {
            // Budgets are looked up only for a batch small enough to go singly (a look-up may need
            // a token).
            let singly = batch.len() <= batching::SUBMIT_AT_MOST
                && batching::submit_singly(
                    batch.len(),
                    client.has_budget(EndpointClass::Import).await,
                    client.has_budget(EndpointClass::Other).await,
                );
            if singly {
                for indicator in batch {
                    let outcome = match client.submit(indicator).await {
                        Ok(created) => Ok(created.id),
                        Err(DefenderError::Api { status: 400, code, message, .. }) => Err(format!("{code}: {message}")),
                        Err(error) => return Err(error),
                    };
                    record(engine, indicator, outcome, changed);
                }
                continue;
            }
            let results = client.import(batch).await?;
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
                record(engine, indicator, outcome, changed);
            }
            debug!(count = batch.len(), "imported a batch");
        }
        Ok(())
    }

    async fn withdraw(
        &self,
        engine: &Engine,
        client: &DefenderClient,
        ids: &[String],
        changed: &mut BTreeSet<IndicatorKey>,
    ) -> Result<(), DefenderError> {
        for batch in ids.chunks(MAX_BATCH) {
            delete_batch(client, batch).await?;
            let gone: BTreeSet<&String> = batch.iter().collect();
            let mut view = engine.view.lock().unwrap();
            let keys: Vec<IndicatorKey> =
                view.held.iter().filter(|(_, h)| gone.contains(&h.id)).map(|(k, _)| k.clone()).collect();
            for key in keys {
                view.held.remove(&key);
                view.tenant_total = view.tenant_total.saturating_sub(1);
                changed.insert(key);
            }
        }
        Ok(())
    }

    /// The partner's counts from its wants and the engine's view; a change pokes the partner.
    fn update_report(
        &self,
        engine: &Engine,
        snapshot: &Snapshot,
        member: &Member,
        over_quota: usize,
        error: Option<&DefenderError>,
    ) {
        let mut view = engine.view.lock().unwrap();
        let report = decide::member_report(
            member,
            &view.held,
            &view.failed,
            over_quota,
            (view.ready, view.tenant_total, self.config.tenant_cap),
            error.map(|e| (e.reason(), e.to_string())),
        );
        if view.reports.get(&member.settings.marker) != Some(&report) {
            view.reports.insert(member.settings.marker.clone(), report);
            drop(view);
            self.triggers.partner(&snapshot.partner);
        }
    }

    fn record_error(&self, engine: &Engine, error: &DefenderError) {
        let recorded = Some((error.reason(), error.to_string()));
        for snapshot in Self::snapshot(engine) {
            let mut view = engine.view.lock().unwrap();
            let report = view.reports.entry(snapshot.settings.marker.clone()).or_default();
            if report.error == recorded {
                continue;
            }
            report.error = recorded.clone();
            drop(view);
            self.triggers.partner(&snapshot.partner);
        }
        if matches!(
            error.reason(),
            PartnerReason::Unauthorized | PartnerReason::Forbidden | PartnerReason::DisabledFeature
        ) {
            // The credentials may have lost their grant: let the partners re-validate.
            for snapshot in Self::snapshot(engine) {
                self.triggers.partner(&snapshot.partner);
            }
        }
    }

    fn trigger_findings_with<'a>(
        &self,
        keys: &BTreeSet<IndicatorKey>,
        findings: impl Iterator<Item = &'a Arc<ProbeFinding>>,
    ) {
        for finding in findings {
            if finding.indicator_keys().is_ok_and(|own| own.iter().any(|k| keys.contains(k))) {
                let _ = self.triggers.findings.send(super::finding_ref(finding));
            }
        }
    }
}

/// Records what Defender did with one value: its id (held by the partner whose marker the
/// indicator carries), or why it refused it.
fn record(
    engine: &Engine,
    indicator: &crate::defender::NewIndicator,
    outcome: Result<String, String>,
    changed: &mut BTreeSet<IndicatorKey>,
) {
    let Some(key) = key_from(&indicator.indicator_type, &indicator.indicator_value) else { return };
    let mut view = engine.view.lock().unwrap();
    match outcome {
        Ok(id) => {
            view.failed.remove(&key);
            view.held.insert(key.clone(), Held { id, owner: Some(indicator.external_id.clone()) });
            view.tenant_total += 1;
        }
        Err(why) => {
            view.failed.insert(key.clone(), why);
        }
    }
    changed.insert(key);
}

/// The partner's identity and settings as the engine needs them.
fn settings(partner: &DefenderPartner) -> PartnerSettings {
    PartnerSettings {
        namespace: partner.metadata.namespace.clone().unwrap_or_default(),
        name: partner.metadata.name.clone().unwrap_or_default(),
        marker: partner.owner_marker(),
        indicator: partner.spec.indicator.clone(),
        delete_withdrawn: partner.spec.deletion_policy == crate::api::DeletionPolicy::Delete,
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

/// Who holds an indicator: the partner whose marker it carries when it is of our application,
/// else no partner of ours.
fn held_of(indicator: &Indicator) -> Held {
    let ours = indicator.application.as_deref() == Some(APPLICATION);
    Held { id: indicator.id.clone(), owner: indicator.external_id.clone().filter(|_| ours) }
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
