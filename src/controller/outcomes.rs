//! The outcome correlation of one partner: a task its sync engine runs beside itself, with the
//! partner's client (so its token and rate limiter). It lists Defender's machines and their
//! antivirus health at most hourly, looks up (a few at a time, each at most once per list) the
//! endpoints of findings newer than that list, polls alerts every `spec.correlation.interval` by
//! `lastUpdateTime` with their evidence, and tags the matched machines when asked. What it read is
//! published as a [`Snapshot`] that the finding reconciler judges with `decide::outcomes`; after
//! each read it evaluates the partner's findings the same way, pokes those whose outcome changed,
//! and reports the counts and the `OutcomesAvailable` state to the partner. Its cost grows with
//! the machines and alerts of the tenant, never with the findings.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::decide::Selection;
use super::decide::outcomes::{
    self as judge, Access, AlertBook, CorrelationReport, CorrelationState, EndpointKey, EndpointRef, Evaluation, Fleet,
    Matched, Snapshot,
};
use super::sync::{Caches, Triggers};
use crate::api::outcome::Correlation as Spec;
use crate::api::{DefenderPartner, Delivery, ProbeFinding};
use crate::defender::outcomes::{Machine, odata_string};
use crate::defender::{ALERT_READ_ROLE, DefenderClient, DefenderError, MACHINE_READ_ROLE, MACHINE_WRITE_ROLE};

/// Machines and their antivirus health are listed this often at most.
pub const LIST_EVERY: Duration = Duration::from_secs(3600);
/// Each alert poll reads again what changed this long before the previous poll started, for
/// alerts Defender shows a little after their `lastUpdateTime`.
pub const POLL_OVERLAP: SignedDuration = SignedDuration::from_mins(10);
/// Alerts older than this are neither read nor kept.
pub const LOOKBACK: SignedDuration = SignedDuration::from_hours(30 * 24);
/// Endpoints looked up per round (each one machine call, and one antivirus health call for the
/// machine found)...
pub const LOOKUPS_PER_ROUND: usize = 10;
/// ...and per list period; the rest wait for the next list.
pub const LOOKUPS_PER_LIST: usize = 100;
/// After a wake (a finding changed) the correlator waits this long for more before a round.
const WAKE_DEBOUNCE: Duration = Duration::from_secs(1);

/// What one partner's correlation shares with the finding reconciler and the partner's status.
#[derive(Default)]
pub struct Correlation {
    snapshot: RwLock<Arc<Snapshot>>,
    report: Mutex<CorrelationReport>,
    wake: Notify,
}

impl Correlation {
    /// What was read so far (`ready` false until the first reads are done).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap().clone()
    }

    pub fn report(&self) -> CorrelationReport {
        self.report.lock().unwrap().clone()
    }

    /// A finding changed: its endpoint may need a look-up.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// A finding's delivery to `partner` with its outcome: judged from the partner's engine's
/// snapshot; kept as the `previous` delivery showed it while there is none (the engine is not
/// running, or has not read Defender yet); none when the partner's correlation is disabled.
pub fn with_outcome(
    delivery: Delivery,
    partner: &DefenderPartner,
    finding: &ProbeFinding,
    correlation: Option<&Correlation>,
    previous: Option<&Delivery>,
    now: Timestamp,
) -> Delivery {
    let spec = &partner.spec.correlation;
    if !spec.enabled {
        return judge::with_outcome(delivery, None);
    }
    match correlation.map(Correlation::snapshot).filter(|s| s.ready) {
        Some(snapshot) => judge::with_outcome(delivery, Some(&judge::evaluate(finding, spec, &snapshot, now))),
        None => judge::kept_outcome(delivery, previous),
    }
}

/// Starts a partner's correlation; it stops when the partner's watch channel closes or the
/// handle is aborted (the engine's drop).
pub fn spawn(
    client: DefenderClient,
    partner: watch::Receiver<Arc<DefenderPartner>>,
    caches: Caches,
    triggers: Triggers,
    indicators_read: Box<dyn Fn() -> bool + Send + Sync>,
) -> (Arc<Correlation>, JoinHandle<()>) {
    let shared = Arc::new(Correlation::default());
    let state = State::default();
    let correlator = Correlator { client, partner, caches, triggers, shared: shared.clone(), state, indicators_read };
    (shared, tokio::spawn(correlator.run()))
}

struct Correlator {
    client: DefenderClient,
    partner: watch::Receiver<Arc<DefenderPartner>>,
    caches: Caches,
    triggers: Triggers,
    shared: Arc<Correlation>,
    state: State,
    /// Whether the engine has read Defender's indicators: they come first after a start.
    indicators_read: Box<dyn Fn() -> bool + Send + Sync>,
}

#[derive(Default)]
struct State {
    fleet: Arc<Fleet>,
    book: Arc<AlertBook>,
    listed: Option<Instant>,
    polled: Option<Instant>,
    /// Endpoints looked up since the last list.
    looked_up: usize,
    more_lookups: bool,
    /// The outcome (a fingerprint) each finding was poked for, by uid, while its status does
    /// not show it.
    poked_for: HashMap<String, u64>,
    /// (tag, machine id) added by this engine.
    tagged: HashSet<(String, String)>,
    tag_problem: Option<String>,
    /// The spec and the roles of the last evaluation: a change evaluates again.
    judged: Option<(Spec, bool, bool)>,
    counts: Option<crate::api::outcome::OutcomeCounts>,
    report_state: Option<CorrelationState>,
    error: Option<String>,
    failures: u32,
}

/// What the findings of the partner ask for: the machines they matched, the endpoints to look
/// up, and how far back alerts must be read.
#[derive(Default)]
struct Scan {
    matched: BTreeSet<String>,
    unseen: BTreeSet<EndpointKey>,
    needed_from: Option<Timestamp>,
}

impl Correlator {
    async fn run(mut self) {
        let marker = self.partner.borrow().owner_marker();
        super::synced(&self.caches.findings).await;
        // The indicators first: they are what the partner is for, and one large read at a time
        // keeps a start's memory down.
        while !(self.indicators_read)() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        debug!(partner = %marker, "outcome correlation started");
        loop {
            let partner = self.partner.borrow().clone();
            let pause = match self.round(&partner).await {
                Ok(pause) => {
                    self.state.failures = 0;
                    self.state.error = None;
                    pause
                }
                Err(error) => {
                    self.state.failures += 1;
                    warn!(partner = %marker, reason = %error.reason(), %error, "reading Defender's machines or alerts failed");
                    self.state.error = Some(error.to_string());
                    self.publish_report(&partner);
                    let interval = partner.spec.correlation.interval().unwrap_or(LIST_EVERY);
                    error.retry_after().unwrap_or_else(|| backoff(self.state.failures, interval))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shared.wake.notified() => tokio::time::sleep(WAKE_DEBOUNCE).await,
                changed = self.partner.changed() => if changed.is_err() { return },
            }
        }
    }

    /// One round: what is due is read, then findings are judged if anything changed. Returns
    /// when the next round is due.
    async fn round(&mut self, partner: &DefenderPartner) -> Result<Duration, DefenderError> {
        let spec = partner.spec.correlation.clone();
        if !spec.enabled {
            self.set_state(partner, CorrelationState::Disabled);
            return Ok(LIST_EVERY);
        }
        let (interval, _) = match (spec.interval(), spec.alert_window()) {
            (Ok(interval), Ok(window)) => (interval, window),
            (Err(invalid), _) | (_, Err(invalid)) => {
                self.set_state(partner, CorrelationState::Invalid(invalid.to_string()));
                return Ok(LIST_EVERY);
            }
        };
        let token = self.client.token().await?;
        let can_read =
            |role: &str| token.claims.has_role(role) || token.claims.has_role(&role.replace(".Read.", ".ReadWrite."));
        let (machines_ok, alerts_ok) = (can_read(MACHINE_READ_ROLE), can_read(ALERT_READ_ROLE));
        let can_tag = token.claims.has_role(MACHINE_WRITE_ROLE);
        let mut changed = self.state.judged.as_ref() != Some(&(spec.clone(), machines_ok, alerts_ok));
        let mut first_error: Option<DefenderError> = None;

        if machines_ok && self.state.listed.is_none_or(|at| at.elapsed() >= LIST_EVERY) {
            match self.list_machines(partner).await {
                Ok(()) => changed = true,
                Err(error) => _ = first_error.get_or_insert(error),
            }
        }
        let scan = self.scan(partner, machines_ok);
        if machines_ok && !scan.unseen.is_empty() && first_error.is_none() {
            match self.look_up(&scan.unseen).await {
                Ok(found) => changed |= found,
                Err(error) => _ = first_error.get_or_insert(error),
            }
        } else {
            self.state.more_lookups = false;
        }
        if alerts_ok && self.state.polled.is_none_or(|at| at.elapsed() >= interval) {
            match self.poll_alerts(scan.needed_from).await {
                Ok(()) => changed = true,
                Err(error) => _ = first_error.get_or_insert(error),
            }
        }
        match spec.tag() {
            Some(tag) if machines_ok && can_tag => self.tag(tag, &scan.matched).await,
            Some(tag) => {
                self.state.tag_problem =
                    Some(format!("machineTag {tag:?} is not added: {MACHINE_WRITE_ROLE} is not granted"))
            }
            None => self.state.tag_problem = None,
        }

        let snapshot = Snapshot {
            ready: (!machines_ok || self.state.listed.is_some()) && (!alerts_ok || self.state.polled.is_some()),
            machines: if machines_ok {
                Access::Granted(self.state.fleet.clone())
            } else {
                Access::Missing(MACHINE_READ_ROLE)
            },
            alerts: if alerts_ok { Access::Granted(self.state.book.clone()) } else { Access::Missing(ALERT_READ_ROLE) },
        };
        let ready = snapshot.ready;
        *self.shared.snapshot.write().unwrap() = Arc::new(snapshot.clone());
        if changed && ready {
            self.state.counts = Some(self.judge(partner, &spec, &snapshot));
            self.state.judged = Some((spec.clone(), machines_ok, alerts_ok));
        }
        let missing: Vec<&'static str> = [(machines_ok, MACHINE_READ_ROLE), (alerts_ok, ALERT_READ_ROLE)]
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, role)| role)
            .collect();
        let state = if !missing.is_empty() {
            CorrelationState::MissingRoles(missing)
        } else if ready {
            CorrelationState::Available
        } else {
            CorrelationState::Reading
        };
        if let Some(error) = first_error {
            self.state.report_state = Some(state);
            return Err(error);
        }
        self.set_state(partner, state);

        let mut pause = LIST_EVERY.saturating_sub(self.state.listed.map_or(Duration::ZERO, |at| at.elapsed()));
        if alerts_ok {
            pause = pause.min(interval.saturating_sub(self.state.polled.map_or(Duration::ZERO, |at| at.elapsed())));
        }
        if self.state.more_lookups {
            pause = pause.min(Duration::from_secs(1));
        }
        Ok(pause.max(Duration::from_millis(100)))
    }

    /// Every machine and every antivirus health row; the look-ups start afresh.
    async fn list_machines(&mut self, partner: &DefenderPartner) -> Result<(), DefenderError> {
        let _turn = super::sync::full_read_turn().await;
        let started = Timestamp::now();
        let machines = self.client.list_machines().await?;
        let av = self.client.list_av_info(None).await?;
        info!(partner = %partner.owner_marker(), machines = machines.len(), antivirus = av.len(), "listed Defender's machines");
        self.state.fleet = Arc::new(Fleet::listed(machines, av, started));
        self.state.listed = Some(Instant::now());
        self.state.looked_up = 0;
        Ok(())
    }

    /// The partner's findings: the machines they match and the endpoints worth a look-up.
    fn scan(&self, partner: &DefenderPartner, machines_ok: bool) -> Scan {
        let mut scan = Scan::default();
        let fleet = &self.state.fleet;
        let selection = Selection::of(partner, &self.caches.namespace_labels());
        for finding in self.caches.findings.state() {
            if !selection.selects(&finding) {
                continue;
            }
            if let Some(observed) = finding.observed_time() {
                let start = observed.checked_sub(judge::WINDOW_LEAD).unwrap_or(observed);
                scan.needed_from = Some(scan.needed_from.map_or(start, |from| from.min(start)));
            }
            if !machines_ok || self.state.listed.is_none() {
                continue;
            }
            match judge::match_machine(&EndpointRef::of(&finding), fleet) {
                Matched::Machine { machine, .. } => {
                    scan.matched.insert(machine.id.clone());
                }
                Matched::Unmatched { keys } => scan.unseen.extend(judge::unseen(&finding, &keys, fleet)),
                Matched::NoEndpoint => {}
            }
        }
        scan
    }

    /// Looks up endpoints the list did not have: by id, by the hostname's first label
    /// (`startswith`), or by `lastIpAddress`; then the antivirus health of the machine that
    /// matched. What Defender does not know is remembered until the next list. Returns whether
    /// anything changed.
    async fn look_up(&mut self, keys: &BTreeSet<EndpointKey>) -> Result<bool, DefenderError> {
        let mut changed = false;
        self.state.more_lookups = false;
        for (this_round, key) in keys.iter().enumerate() {
            if this_round >= LOOKUPS_PER_ROUND || self.state.looked_up >= LOOKUPS_PER_LIST {
                self.state.more_lookups = self.state.looked_up < LOOKUPS_PER_LIST;
                break;
            }
            self.state.looked_up += 1;
            let (found, endpoint): (Vec<Machine>, EndpointRef) = match key {
                EndpointKey::Id(id) => (
                    self.client.machine(id).await?.into_iter().collect(),
                    EndpointRef { machine_id: Some(id.clone()), ..Default::default() },
                ),
                EndpointKey::Name(name) => {
                    let filter = format!("startswith(computerDnsName,{})", odata_string(judge::first_label(name)));
                    let endpoint = EndpointRef { hostname: Some(name.clone()), ..Default::default() };
                    (self.client.find_machines(&filter).await?, endpoint)
                }
                EndpointKey::Ip(ip) => {
                    let filter = format!("lastIpAddress eq {}", odata_string(&ip.to_string()));
                    (self.client.find_machines(&filter).await?, EndpointRef { ip: Some(*ip), ..Default::default() })
                }
            };
            let fleet = Arc::make_mut(&mut self.state.fleet);
            changed |= fleet.upsert_all(found);
            let matched = match judge::match_machine(&endpoint, fleet) {
                Matched::Machine { machine, .. } => Some(machine.id.clone()),
                _ => None,
            };
            match matched {
                Some(id) if !fleet.has_av(&id) => {
                    let filter = format!("machineId eq {}", odata_string(&id));
                    let rows = self.client.list_av_info(Some(&filter)).await?;
                    let fleet = Arc::make_mut(&mut self.state.fleet);
                    for row in rows {
                        changed |= fleet.set_av(row);
                    }
                }
                Some(_) => {}
                None => {
                    fleet.not_found.insert(key.clone());
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    /// Reads the alerts updated since the last poll (less [`POLL_OVERLAP`]), or since the
    /// earliest window a finding needs when that is earlier than what was read.
    async fn poll_alerts(&mut self, needed_from: Option<Timestamp>) -> Result<(), DefenderError> {
        let now = Timestamp::now();
        let oldest = now.checked_sub(LOOKBACK).unwrap_or(now);
        let recent = now.checked_sub(POLL_OVERLAP).unwrap_or(now);
        // A finding observed "in the future" (a probe's clock ahead) needs what is recent.
        let needed = needed_from.map(|from| from.clamp(oldest, recent));
        let book = &self.state.book;
        let since = match (book.polled_at, book.covered_from) {
            (Some(polled), Some(from)) => {
                let next = polled.checked_sub(POLL_OVERLAP).unwrap_or(polled);
                match needed {
                    Some(needed) if needed < from => needed.min(next),
                    _ => next,
                }
            }
            _ => needed.unwrap_or(recent),
        }
        .max(oldest);
        let alerts = {
            let _turn = super::sync::full_read_turn().await;
            self.client.list_alerts_updated_since(since).await?
        };
        let book = Arc::make_mut(&mut self.state.book);
        let mut recorded = 0;
        for alert in &alerts {
            recorded += usize::from(book.record(alert));
        }
        book.polled_at = Some(now);
        let covered = book.covered_from.map_or(since, |from| from.min(since));
        let keep_from = needed.unwrap_or(since).min(since).max(oldest);
        book.prune(keep_from);
        book.covered_from = Some(covered.max(keep_from));
        self.state.polled = Some(Instant::now());
        debug!(since = %since, read = alerts.len(), recorded, kept = book.len(), "polled alerts");
        Ok(())
    }

    /// Adds the tag to the matched machines that lack it (and that this engine did not tag).
    async fn tag(&mut self, tag: &str, matched: &BTreeSet<String>) {
        let fleet = &self.state.fleet;
        let ids: Vec<String> = matched
            .iter()
            .filter(|id| !self.state.tagged.contains(&(tag.to_string(), (*id).clone())))
            .filter(|id| fleet.get(id).is_some_and(|m| !m.machine_tags.iter().any(|t| t == tag)))
            .cloned()
            .collect();
        if ids.is_empty() {
            return;
        }
        match self.client.tag_machines(&ids, tag).await {
            Ok(()) => {
                info!(tag, machines = ids.len(), "tagged machines");
                self.state.tagged.extend(ids.into_iter().map(|id| (tag.to_string(), id)));
                self.state.tag_problem = None;
            }
            Err(error) => {
                warn!(tag, %error, "could not tag machines");
                self.state.tag_problem = Some(format!("machineTag {tag:?} could not be added: {error}"));
            }
        }
    }

    /// Judges every finding of the partner: pokes those whose outcome is not what they show
    /// (once per outcome: a finding poked for this outcome is not poked again while its status
    /// catches up); returns the counts.
    fn judge(
        &mut self,
        partner: &DefenderPartner,
        spec: &Spec,
        snapshot: &Snapshot,
    ) -> crate::api::outcome::OutcomeCounts {
        let now = Timestamp::now();
        // `ClusterDefenderPartner/<name>` for a cluster-wide partner, not its bare name.
        let name = partner.delivery_name();
        let mut detections = Vec::new();
        // Only the findings whose status does not show their outcome yet: usually none.
        let mut poked_for = HashMap::new();
        let selection = Selection::of(partner, &self.caches.namespace_labels());
        for finding in self.caches.findings.state() {
            if !selection.selects(&finding) || finding.indicator_keys().is_err() {
                continue;
            }
            let evaluation = judge::evaluate(&finding, spec, snapshot, now);
            detections.extend(evaluation.detection);
            let shows = finding
                .status
                .as_ref()
                .and_then(|s| s.deliveries.iter().find(|d| d.partner == name))
                .is_some_and(|d| judge::shows(d, &evaluation));
            if shows {
                continue;
            }
            let key = finding.metadata.uid.clone().unwrap_or_else(|| ObjectRef::from_obj(&*finding).to_string());
            let print = fingerprint(&evaluation);
            if self.state.poked_for.get(&key) != Some(&print) {
                let _ = self.triggers.findings.send(super::finding_ref(&finding));
            }
            poked_for.insert(key, print);
        }
        if !poked_for.is_empty() {
            debug!(partner = %partner.owner_marker(), waiting = poked_for.len(), "findings whose outcome changed");
        }
        self.state.poked_for = poked_for;
        judge::count(detections)
    }

    fn set_state(&mut self, partner: &DefenderPartner, state: CorrelationState) {
        self.state.report_state = Some(state);
        self.publish_report(partner);
    }

    /// The report for the partner's status; the partner is poked when it changed.
    fn publish_report(&mut self, partner: &DefenderPartner) {
        let mut state = self.state.report_state.clone().unwrap_or_default();
        if let Some(error) = &self.state.error
            && matches!(state, CorrelationState::Reading)
        {
            state = CorrelationState::Failed(error.clone());
        }
        let enabled = matches!(state, CorrelationState::Available | CorrelationState::MissingRoles(_));
        let report = CorrelationReport {
            counts: if enabled { self.state.counts.clone() } else { None },
            state,
            interval: partner.spec.correlation.interval.clone(),
            tag_problem: self.state.tag_problem.clone(),
        };
        let mut current = self.shared.report.lock().unwrap();
        if *current != report {
            *current = report;
            drop(current);
            self.triggers.partner(partner);
        }
    }
}

/// A finding's outcome, as a number that changes when any of it changes.
fn fingerprint(evaluation: &Evaluation) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    if let Some(machine) = &evaluation.machine {
        (&machine.id, &machine.name, machine.readiness.as_str(), &machine.message).hash(&mut hasher);
    }
    evaluation.detection.map(|d| d.as_str()).hash(&mut hasher);
    for alert in &evaluation.alerts {
        (&alert.id, &alert.title, &alert.severity, &alert.detection_status, alert.created_time.0.as_second())
            .hash(&mut hasher);
    }
    hasher.finish()
}

/// After a failure without `Retry-After`: 5 s doubling, at most the polling interval (and at
/// least a minute), with jitter.
fn backoff(failures: u32, interval: Duration) -> Duration {
    let base = Duration::from_secs(5).saturating_mul(1 << failures.saturating_sub(1).min(10));
    base.min(interval.max(Duration::from_secs(60))).mul_f64(0.85 + rand::random::<f64>() * 0.3)
}
