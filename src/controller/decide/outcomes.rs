//! Outcomes as pure functions: which Defender machine a finding's endpoint is (`match_machine`),
//! whether that machine can enforce a file indicator (`readiness`), what Defender did about the
//! test (`detection`), all three for one delivery (`evaluate`), a finding's best outcome, a
//! partner's counts and its `OutcomesAvailable` condition, and a finding's time to protect.
//!
//! The data they judge (the [`Fleet`] of machines with their antivirus health, the [`AlertBook`])
//! is read by the partner's engine (`controller::outcomes`); nothing here does IO.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::conditions::Verdict;
use crate::api::finding::ProbeFindingStatus;
use crate::api::outcome::{
    AlertRef, Correlation, MAX_ALERTS, MachineStatus, OUTCOMES_AVAILABLE, OutcomeCounts, OutcomesReason,
};
use crate::api::partner::DefenderPartnerStatus;
use crate::api::{Delivery, DeliveryState, Detection, IndicatorType, ProbeFinding, Readiness, TestState};
use crate::defender::outcomes::{Alert, AvInfo, Machine};
use crate::defender::{ALERT_READ_ROLE, MACHINE_READ_ROLE};

/// Alerts count from this long before the finding's observation time (clock skew, and the test
/// running before the probe reported it).
pub const WINDOW_LEAD: SignedDuration = SignedDuration::from_mins(10);
/// Defender calls a machine that has not reported for this long inactive.
pub const INACTIVE_AFTER: SignedDuration = SignedDuration::from_hours(7 * 24);
/// The oldest antimalware client that enforces file indicators (4.18.1901.x).
pub const MIN_PLATFORM: [u64; 3] = [4, 18, 1901];

/// What the API cannot show, so `Ready` cannot check it, by operating system.
const UNSEEN_WINDOWS: &str =
    "not visible to the API: cloud protection, behaviour monitoring, file hash computation, \"Allow or block file\"";
const UNSEEN_MAC: &str = "not visible to the API: file hash computation (mdatp config enable-file-hash-computation), \
     cloud protection, behaviour monitoring, \"Allow or block file\"";
const UNSEEN_LINUX: &str = "not visible to the API: version 101.85.27 or later, file hash computation, behaviour \
     monitoring, \"Allow or block file\"";

/// Something the correlation could not read because a role is missing (the role's name).
#[derive(Clone, Debug, PartialEq)]
pub enum Access<T> {
    Granted(T),
    Missing(&'static str),
}

/// What a partner's engine knows of Defender's machines and alerts, as findings read it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The first reads are done (or found a role missing): until then findings keep what they say.
    pub ready: bool,
    pub machines: Access<Arc<Fleet>>,
    pub alerts: Access<Arc<AlertBook>>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self { ready: false, machines: Access::Granted(Arc::default()), alerts: Access::Granted(Arc::default()) }
    }
}

/// How an endpoint is looked up when the machine list does not have it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndpointKey {
    /// A machine id, lower-case.
    Id(String),
    /// A hostname, lower-case.
    Name(String),
    /// An IP address, canonical.
    Ip(IpAddr),
}

/// The tenant's machines and their antivirus health, indexed the ways findings name them.
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    machines: Vec<Machine>,
    by_id: HashMap<String, usize>,
    by_name: HashMap<String, Vec<usize>>,
    by_label: HashMap<String, Vec<usize>>,
    by_ip: HashMap<IpAddr, Vec<usize>>,
    av: HashMap<String, AvInfo>,
    /// When the machines were last listed in full.
    pub listed_at: Option<Timestamp>,
    /// Endpoints looked up since that list that Defender does not know.
    pub not_found: HashSet<EndpointKey>,
}

pub fn first_label(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

impl Fleet {
    /// A full list of machines and antivirus health, read at `at`.
    pub fn listed(machines: Vec<Machine>, av: Vec<AvInfo>, at: Timestamp) -> Fleet {
        let mut fleet = Fleet { machines, listed_at: Some(at), ..Fleet::default() };
        fleet.reindex();
        for row in av {
            fleet.set_av(row);
        }
        fleet
    }

    fn reindex(&mut self) {
        let (mut by_id, mut by_name, mut by_label, mut by_ip) =
            (HashMap::new(), HashMap::<_, Vec<usize>>::new(), HashMap::<_, Vec<usize>>::new(), HashMap::new());
        for (i, machine) in self.machines.iter().enumerate() {
            by_id.insert(machine.id.to_ascii_lowercase(), i);
            if let Some(name) = machine.computer_dns_name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                let name = name.to_ascii_lowercase();
                by_label.entry(first_label(&name).to_string()).or_default().push(i);
                by_name.entry(name).or_default().push(i);
            }
            if let Some(ip) = machine.last_ip_address.as_deref().and_then(|ip| ip.trim().parse::<IpAddr>().ok()) {
                by_ip.entry(ip).or_insert_with(Vec::new).push(i);
            }
        }
        (self.by_id, self.by_name, self.by_label, self.by_ip) = (by_id, by_name, by_label, by_ip);
    }

    /// Adds a machine a look-up found, or replaces the one with its id. Returns whether anything
    /// changed.
    pub fn upsert(&mut self, machine: Machine) -> bool {
        match self.by_id.get(&machine.id.to_ascii_lowercase()) {
            Some(&i) if self.machines[i] == machine => return false,
            Some(&i) => self.machines[i] = machine,
            None => self.machines.push(machine),
        }
        self.reindex();
        true
    }

    /// [`Fleet::upsert`] for several machines, indexed once.
    pub fn upsert_all(&mut self, machines: Vec<Machine>) -> bool {
        let mut changed = false;
        for machine in machines {
            match self.by_id.get(&machine.id.to_ascii_lowercase()) {
                Some(&i) if self.machines[i] == machine => {}
                Some(&i) => {
                    self.machines[i] = machine;
                    changed = true;
                }
                None => {
                    self.by_id.insert(machine.id.to_ascii_lowercase(), self.machines.len());
                    self.machines.push(machine);
                    changed = true;
                }
            }
        }
        if changed {
            self.reindex();
        }
        changed
    }

    /// Sets a machine's antivirus health. Returns whether anything changed.
    pub fn set_av(&mut self, av: AvInfo) -> bool {
        let Some(id) = av.machine().map(str::to_ascii_lowercase) else { return false };
        if self.av.get(&id) == Some(&av) {
            return false;
        }
        self.av.insert(id, av);
        true
    }

    pub fn len(&self) -> usize {
        self.machines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Machine> {
        self.by_id.get(&id.to_ascii_lowercase()).map(|&i| &self.machines[i])
    }

    pub fn av(&self, id: &str) -> Option<&AvInfo> {
        self.av.get(&id.to_ascii_lowercase())
    }

    /// Whether this machine's antivirus health is known.
    pub fn has_av(&self, id: &str) -> bool {
        self.av.contains_key(&id.to_ascii_lowercase())
    }

    fn by_hostname(&self, hostname: &str) -> Vec<usize> {
        let hostname = hostname.to_ascii_lowercase();
        if let Some(exact) = self.by_name.get(&hostname) {
            return exact.clone();
        }
        if hostname.contains('.') {
            // An FQDN matches a machine Defender knows by its short name only.
            self.by_name.get(first_label(&hostname)).cloned().unwrap_or_default()
        } else {
            // A short name matches a machine's first DNS label.
            self.by_label.get(&hostname).cloned().unwrap_or_default()
        }
    }
}

/// The endpoint of a finding, as far as Defender could know it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointRef {
    pub machine_id: Option<String>,
    pub hostname: Option<String>,
    pub ip: Option<IpAddr>,
}

impl EndpointRef {
    pub fn of(finding: &ProbeFinding) -> Self {
        let endpoint = finding.spec.endpoint.as_ref();
        let text = |value: Option<&String>| value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        EndpointRef {
            machine_id: text(endpoint.and_then(|e| e.machine_id.as_ref())),
            hostname: text(endpoint.and_then(|e| e.hostname.as_ref())),
            ip: endpoint.and_then(|e| e.ip_address.as_deref()).and_then(|ip| ip.trim().parse().ok()),
        }
    }

    /// The keys a look-up would try, in order of precedence.
    pub fn keys(&self) -> Vec<EndpointKey> {
        if let Some(id) = &self.machine_id {
            return vec![EndpointKey::Id(id.to_ascii_lowercase())];
        }
        let name = self.hostname.as_ref().map(|h| EndpointKey::Name(h.to_ascii_lowercase()));
        name.into_iter().chain(self.ip.map(EndpointKey::Ip)).collect()
    }
}

/// Which machine an endpoint is.
#[derive(Debug, PartialEq)]
pub enum Matched<'a> {
    Machine {
        machine: &'a Machine,
        /// `machineId`, `hostname` or `ipAddress`: what matched.
        by: &'static str,
        /// How many machines matched (more than one: the most recently seen is used).
        candidates: usize,
    },
    /// No machine in the fleet; `keys` are what was tried.
    Unmatched { keys: Vec<EndpointKey> },
    /// The finding names no machine id, hostname or IP address.
    NoEndpoint,
}

/// `machineId` when given (and only it); else the hostname against `computerDnsName`
/// (case-insensitive; a short name matches the FQDN's first label); else the IP address against
/// `lastIpAddress`. Of several machines, the most recently seen.
pub fn match_machine<'a>(endpoint: &EndpointRef, fleet: &'a Fleet) -> Matched<'a> {
    let keys = endpoint.keys();
    if keys.is_empty() {
        return Matched::NoEndpoint;
    }
    let pick = |candidates: Vec<usize>, by: &'static str| -> Option<Matched<'a>> {
        let best = candidates
            .iter()
            .map(|&i| &fleet.machines[i])
            .max_by(|a, b| a.last_seen.cmp(&b.last_seen).then_with(|| b.id.cmp(&a.id)))?;
        Some(Matched::Machine { machine: best, by, candidates: candidates.len() })
    };
    if let Some(id) = &endpoint.machine_id {
        return match fleet.get(id) {
            Some(machine) => Matched::Machine { machine, by: "machineId", candidates: 1 },
            None => Matched::Unmatched { keys },
        };
    }
    let by_name = endpoint.hostname.as_deref().map(|h| fleet.by_hostname(h)).unwrap_or_default();
    if let Some(found) = pick(by_name, "hostname") {
        return found;
    }
    let by_ip = endpoint.ip.and_then(|ip| fleet.by_ip.get(&ip).cloned()).unwrap_or_default();
    pick(by_ip, "ipAddress").unwrap_or(Matched::Unmatched { keys })
}

/// Numeric comparison of a dotted version with [`MIN_PLATFORM`]; `None` when unreadable.
fn platform_at_least(version: &str, min: &[u64]) -> Option<bool> {
    let parts: Vec<u64> = version.trim().split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if parts.is_empty() {
        return None;
    }
    let padded = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    for i in 0..parts.len().max(min.len()) {
        match padded(&parts, i).cmp(&padded(min, i)) {
            std::cmp::Ordering::Greater => return Some(true),
            std::cmp::Ordering::Less => return Some(false),
            std::cmp::Ordering::Equal => {}
        }
    }
    Some(true)
}

fn date(at: Timestamp) -> String {
    at.strftime("%Y-%m-%d").to_string()
}

/// Whether a machine can enforce a file indicator, from what the API shows (onboarding, health,
/// last seen, antivirus mode and platform), and the message naming the prerequisite missed —
/// or, when `Ready`, those the API cannot show.
pub fn readiness(machine: &Machine, av: Option<&AvInfo>, now: Timestamp) -> (Readiness, String) {
    let onboarding = machine.onboarding_status.as_deref().map(str::trim).unwrap_or_default();
    if onboarding.is_empty() {
        return (Readiness::Unknown, "Defender does not say whether the device is onboarded".into());
    }
    if !onboarding.eq_ignore_ascii_case("Onboarded") {
        return (
            Readiness::NotOnboarded,
            format!(
                "onboardingStatus is {onboarding}: Defender for Endpoint does not run on the device, and file \
                 indicators need an onboarded device"
            ),
        );
    }
    if let Some(health) = machine.health_status.as_deref().filter(|h| !h.eq_ignore_ascii_case("Active")) {
        return (
            Readiness::Inactive,
            format!("healthStatus is {health}: the sensor does not report, so nothing it enforces can be seen"),
        );
    }
    if let Some(seen) = machine.last_seen.filter(|seen| now.duration_since(*seen) > INACTIVE_AFTER) {
        return (Readiness::Inactive, format!("last seen {}, more than 7 days ago", date(seen)));
    }
    let Some(av) = av else {
        return (
            Readiness::Unknown,
            "no antivirus health reported (deviceavinfo): whether Microsoft Defender Antivirus is in active mode, as \
             file indicators need, cannot be told"
                .into(),
        );
    };
    let mode = av.av_mode.as_deref().map(str::trim).unwrap_or_default();
    let passive = |what: &str| {
        (
            Readiness::PassiveMode,
            format!(
                "Microsoft Defender Antivirus is {what} (avMode {mode}): it blocks nothing, so file indicators are not \
                 enforced; they need it in active mode"
            ),
        )
    };
    match mode {
        "0" => {}
        "1" => return passive("in passive mode"),
        "5" => return passive("in passive audit mode"),
        "2" => return passive("disabled"),
        "4" => {
            return (
                Readiness::Unknown,
                "EDR in block mode (avMode 4): whether it enforces file indicators is not documented".into(),
            );
        }
        other => {
            return (
                Readiness::Unknown,
                format!(
                    "avMode {other:?} (another antivirus, or unknown): file indicators need Microsoft Defender \
                     Antivirus in active mode"
                ),
            );
        }
    }
    let kind = av
        .os_kind
        .clone()
        .or_else(|| machine.os_platform.clone())
        .unwrap_or_else(|| "windows".into())
        .to_ascii_lowercase();
    let unseen = if kind.starts_with("mac") {
        UNSEEN_MAC
    } else if kind.starts_with("linux") || kind.starts_with("ubuntu") || kind.starts_with("redhat") {
        UNSEEN_LINUX
    } else {
        let version = av.av_platform_version.as_deref().map(str::trim).unwrap_or_default();
        match platform_at_least(version, &MIN_PLATFORM) {
            None => {
                return (
                    Readiness::Unknown,
                    format!(
                        "antimalware client version {version:?} is unreadable: file indicators need 4.18.1901 or later"
                    ),
                );
            }
            Some(false) => {
                return (
                    Readiness::OutdatedPlatform,
                    format!("antimalware client {version} is older than the 4.18.1901 that file indicators need"),
                );
            }
            Some(true) => {
                return (
                    Readiness::Ready,
                    format!("onboarded, active, Defender Antivirus active, client {version}; {UNSEEN_WINDOWS}"),
                );
            }
        }
    };
    (Readiness::Ready, format!("onboarded, active, Defender Antivirus active; {unseen}"))
}

/// One alert as the book keeps it: what a delivery shows, and the hashes its evidence holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertSummary {
    pub id: String,
    pub title: Option<String>,
    pub severity: Option<String>,
    pub created: Timestamp,
    /// Lower-case SHA-256 and SHA-1 values of its evidence, each with that item's
    /// `detectionStatus`.
    pub hashes: Vec<(String, Option<String>)>,
}

/// The alerts read so far whose evidence holds a file hash, by machine.
#[derive(Clone, Debug, Default)]
pub struct AlertBook {
    by_machine: HashMap<String, Vec<AlertSummary>>,
    machine_of: HashMap<String, String>,
    /// When the last successful poll started: every alert created before it has been read.
    pub polled_at: Option<Timestamp>,
    /// The earliest `lastUpdateTime` read from.
    pub covered_from: Option<Timestamp>,
}

/// Longest alert title kept.
const MAX_TITLE: usize = 256;

impl AlertBook {
    /// Records an alert (new or updated); returns whether the book changed. Alerts without a
    /// machine, a creation time or a file hash in their evidence are of no use and not kept.
    pub fn record(&mut self, alert: &Alert) -> bool {
        let hashes: Vec<(String, Option<String>)> = alert
            .evidence
            .iter()
            .flat_map(|e| {
                [e.sha256.as_deref(), e.sha1.as_deref()]
                    .into_iter()
                    .flatten()
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .map(|h| (h, e.detection_status.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let (Some(machine), Some(created)) = (alert.machine_id.as_deref(), alert.alert_creation_time) else {
            return false;
        };
        if hashes.is_empty() {
            return false;
        }
        let machine = machine.to_ascii_lowercase();
        let summary = AlertSummary {
            id: alert.id.clone(),
            title: alert.title.as_deref().map(|t| t.chars().take(MAX_TITLE).collect()),
            severity: alert.severity.clone(),
            created,
            hashes,
        };
        if let Some(previous) = self.machine_of.get(&alert.id).cloned() {
            let list = self.by_machine.entry(previous.clone()).or_default();
            if previous == machine && list.contains(&summary) {
                return false;
            }
            list.retain(|a| a.id != alert.id);
        }
        self.machine_of.insert(alert.id.clone(), machine.clone());
        self.by_machine.entry(machine).or_default().push(summary);
        true
    }

    /// Forgets alerts created before `before`.
    pub fn prune(&mut self, before: Timestamp) {
        for list in self.by_machine.values_mut() {
            list.retain(|a| a.created >= before);
        }
        self.by_machine.retain(|_, list| !list.is_empty());
        let kept: HashSet<&String> = self.by_machine.values().flatten().map(|a| &a.id).collect();
        self.machine_of.retain(|id, _| kept.contains(id));
    }

    pub fn len(&self) -> usize {
        self.machine_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.machine_of.is_empty()
    }

    /// The alerts on `machine_id` created inside `window` whose evidence holds one of `hashes`,
    /// newest first, at most five; each with the matching evidence's `detectionStatus`.
    pub fn matching(&self, machine_id: &str, hashes: &[String], window: &Window) -> Vec<AlertRef> {
        let Some(alerts) = self.by_machine.get(&machine_id.to_ascii_lowercase()) else { return Vec::new() };
        let mut found: Vec<(&AlertSummary, Option<String>)> = alerts
            .iter()
            .filter(|a| window.start <= a.created && a.created <= window.end)
            .filter_map(|a| {
                let hit = a.hashes.iter().find(|(h, _)| hashes.contains(h))?;
                Some((a, hit.1.clone()))
            })
            .collect();
        found.sort_by(|(a, _), (b, _)| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        found
            .into_iter()
            .take(MAX_ALERTS)
            .map(|(a, status)| AlertRef {
                id: a.id.clone(),
                title: a.title.clone(),
                severity: a.severity.clone(),
                detection_status: status,
                created_time: Time(a.created),
            })
            .collect()
    }
}

/// The alerts that count for a finding: created from its observation time minus 10 minutes to
/// `alertWindow` after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl Window {
    pub fn of(observed: Timestamp, alert_window: Duration) -> Option<Window> {
        let after = SignedDuration::try_from(alert_window).ok()?;
        Some(Window { start: observed.checked_sub(WINDOW_LEAD).ok()?, end: observed.checked_add(after).ok()? })
    }
}

/// What Defender did about the test. PROTECTED is `Prevented` (the probe saw it stopped);
/// UNPROTECTED is `Detected` with an alert on the machine whose evidence holds one of the hashes
/// inside the window, `NotDetected` once a poll that started after the window found none,
/// `Pending` before; without a machine, an alerts role or a window it is `Unknown`, and so is any
/// other result. The matching alerts come along (for a PROTECTED finding too).
pub fn detection(
    state: TestState,
    window: Option<&Window>,
    hashes: &[String],
    machine: Option<&Machine>,
    alerts: &Access<Arc<AlertBook>>,
) -> (Detection, Vec<AlertRef>) {
    let book = match alerts {
        Access::Granted(book) => Some(book),
        Access::Missing(_) => None,
    };
    let matched = match (machine, book, window) {
        (Some(machine), Some(book), Some(window)) => book.matching(&machine.id, hashes, window),
        _ => Vec::new(),
    };
    let detection = match state {
        TestState::Protected => Detection::Prevented,
        TestState::Unprotected => match (machine, book, window) {
            (Some(_), Some(_), Some(_)) if !matched.is_empty() => Detection::Detected,
            (Some(_), Some(book), Some(window)) if book.polled_at.is_some_and(|at| at >= window.end) => {
                Detection::NotDetected
            }
            (Some(_), Some(_), Some(_)) => Detection::Pending,
            _ => Detection::Unknown,
        },
        _ => Detection::Unknown,
    };
    (detection, matched)
}

/// A delivery's outcome, and what the engine needs from the same evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub machine: Option<MachineStatus>,
    pub detection: Option<Detection>,
    pub alerts: Vec<AlertRef>,
    /// Endpoint keys to look up: not in the machine list, not looked up since, and the finding is
    /// newer than the list.
    pub unseen: Vec<EndpointKey>,
    /// The machine matched, if any (for the machine tag).
    pub machine_id: Option<String>,
}

/// The SHA-256 and SHA-1 values of a finding, lower-case: what alert evidence carries.
pub fn file_hashes(finding: &ProbeFinding) -> Vec<String> {
    finding
        .indicator_keys()
        .unwrap_or_default()
        .into_iter()
        .filter(|k| matches!(k.type_, IndicatorType::FileSha256 | IndicatorType::FileSha1))
        .map(|k| k.value)
        .collect()
}

/// A finding's machine, readiness and detection with one partner, from what its engine read.
pub fn evaluate(finding: &ProbeFinding, correlation: &Correlation, snapshot: &Snapshot, now: Timestamp) -> Evaluation {
    let mut evaluation = Evaluation::default();
    let endpoint = EndpointRef::of(finding);
    let machine = match &snapshot.machines {
        Access::Missing(role) => {
            evaluation.machine = Some(MachineStatus {
                id: None,
                name: None,
                readiness: Readiness::Unknown,
                message: format!("{role} is not granted: the endpoint cannot be matched to a Defender machine"),
            });
            None
        }
        Access::Granted(fleet) => match match_machine(&endpoint, fleet) {
            Matched::Machine { machine, by, candidates } => {
                let (readiness, mut message) = readiness(machine, fleet.av(&machine.id), now);
                if candidates > 1 {
                    message += &format!(
                        "; {candidates} machines match {by} {}: the most recently seen is used",
                        match by {
                            "hostname" => endpoint.hostname.clone().unwrap_or_default(),
                            _ => endpoint.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                        }
                    );
                }
                evaluation.machine = Some(MachineStatus {
                    id: Some(machine.id.clone()),
                    name: machine.computer_dns_name.clone(),
                    readiness,
                    message,
                });
                evaluation.machine_id = Some(machine.id.clone());
                Some(machine)
            }
            Matched::Unmatched { keys } => {
                let unseen = unseen(finding, &keys, fleet);
                let (readiness, message) = if unseen.is_empty() {
                    (Readiness::NotFound, format!("no Defender machine has {}", describe(&endpoint)))
                } else {
                    (Readiness::Unknown, format!("looking up {} in Defender", describe(&endpoint)))
                };
                evaluation.unseen = unseen;
                evaluation.machine = Some(MachineStatus { id: None, name: None, readiness, message });
                None
            }
            Matched::NoEndpoint => {
                evaluation.machine = Some(MachineStatus {
                    id: None,
                    name: None,
                    readiness: Readiness::NotFound,
                    message: "spec.endpoint gives no hostname, ipAddress or machineId to match a Defender machine by"
                        .into(),
                });
                None
            }
        },
    };
    let window = correlation
        .alert_window()
        .ok()
        .and_then(|alert_window| finding.observed_time().and_then(|observed| Window::of(observed, alert_window)));
    let (detection, alerts) =
        detection(finding.effective_state(), window.as_ref(), &file_hashes(finding), machine, &snapshot.alerts);
    evaluation.detection = Some(detection);
    evaluation.alerts = alerts;
    evaluation
}

/// The keys of an endpoint the machine list lacks that are worth a look-up: none when the list
/// was read after the finding was created (it would have had the machine), else those not
/// looked up since the list. A creation time has whole seconds: within the second of the list,
/// the finding may be the newer.
pub fn unseen(finding: &ProbeFinding, keys: &[EndpointKey], fleet: &Fleet) -> Vec<EndpointKey> {
    let created = finding.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let older = |listed: Timestamp, created: Timestamp| {
        created.checked_add(SignedDuration::from_secs(1)).is_ok_and(|created| created <= listed)
    };
    if matches!((fleet.listed_at, created), (Some(listed), Some(created)) if older(listed, created)) {
        return Vec::new();
    }
    keys.iter().filter(|k| !fleet.not_found.contains(*k)).cloned().collect()
}

/// `hostname laptop-7 (or lastIpAddress 10.0.1.7)`, `id 1e5b…`: what was matched on.
fn describe(endpoint: &EndpointRef) -> String {
    if let Some(id) = &endpoint.machine_id {
        return format!("id {id}");
    }
    match (&endpoint.hostname, endpoint.ip) {
        (Some(name), Some(ip)) => format!("hostname {name} (nor lastIpAddress {ip})"),
        (Some(name), None) => format!("hostname {name}"),
        (None, Some(ip)) => format!("lastIpAddress {ip}"),
        (None, None) => "the endpoint".into(),
    }
}

/// A delivery with its outcome set (or cleared, with `None`).
pub fn with_outcome(mut delivery: Delivery, evaluation: Option<&Evaluation>) -> Delivery {
    delivery.machine = evaluation.and_then(|e| e.machine.clone());
    delivery.detection = evaluation.and_then(|e| e.detection);
    delivery.alerts = evaluation.map(|e| e.alerts.clone()).unwrap_or_default();
    delivery
}

/// A delivery keeping the outcome a previous one showed (while its engine has not read Defender).
pub fn kept_outcome(mut delivery: Delivery, previous: Option<&Delivery>) -> Delivery {
    delivery.machine = previous.and_then(|p| p.machine.clone());
    delivery.detection = previous.and_then(|p| p.detection);
    delivery.alerts = previous.map(|p| p.alerts.clone()).unwrap_or_default();
    delivery
}

/// Whether a delivery already shows this evaluation.
pub fn shows(delivery: &Delivery, evaluation: &Evaluation) -> bool {
    delivery.machine == evaluation.machine
        && delivery.detection == evaluation.detection
        && delivery.alerts == evaluation.alerts
}

/// A finding's outcome over its partners: the best detection.
pub fn best(deliveries: &[Delivery]) -> Option<Detection> {
    deliveries.iter().filter_map(|d| d.detection).max_by_key(|d| d.rank())
}

/// A partner's counts.
pub fn count(detections: impl IntoIterator<Item = Detection>) -> OutcomeCounts {
    let mut counts = OutcomeCounts::default();
    for detection in detections {
        match detection {
            Detection::Prevented => counts.prevented += 1,
            Detection::Detected => counts.detected += 1,
            Detection::NotDetected => counts.not_detected += 1,
            Detection::Pending => counts.pending += 1,
            Detection::Unknown => {}
        }
    }
    counts
}

/// `protectedTime` and `timeToProtect`: set once, when the finding, UNPROTECTED with its
/// indicators `Submitted` (by the previous status), now reports PROTECTED. The protected time is
/// the new observation time when it is after the submission, else `now`; the time to protect runs
/// from the earliest submission. Once set, kept as it is.
pub fn protection(
    previous: &ProbeFindingStatus,
    state: TestState,
    observed: Option<Timestamp>,
    deliveries: &[Delivery],
    now: Timestamp,
) -> Option<(Time, String)> {
    if let (Some(at), Some(took)) = (&previous.protected_time, &previous.time_to_protect) {
        return Some((at.clone(), took.clone()));
    }
    if state != TestState::Protected || previous.state != Some(TestState::Unprotected) {
        return None;
    }
    let submitted = deliveries
        .iter()
        .filter(|d| d.state == DeliveryState::Submitted)
        .filter_map(|d| d.submitted_time.as_ref().map(|t| t.0))
        .min()?;
    let protected = observed.filter(|at| *at > submitted).unwrap_or(now).max(submitted);
    let took = protected.duration_since(submitted).unsigned_abs();
    Some((Time(protected), crate::api::duration::format(took)))
}

/// What a partner's engine reports about outcomes, for its status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorrelationReport {
    pub state: CorrelationState,
    /// The findings the partner selects by detection (once machines and alerts were read).
    pub counts: Option<OutcomeCounts>,
    /// The alert polling interval, as the spec gives it.
    pub interval: String,
    /// Why the machine tag is not added, if it is not.
    pub tag_problem: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CorrelationState {
    /// The first reads are under way.
    #[default]
    Reading,
    Disabled,
    /// A duration the operator cannot use (the message names the field).
    Invalid(String),
    /// These roles are not granted (nothing is read that needs them).
    MissingRoles(Vec<&'static str>),
    /// The first reads failed (Defender's answer).
    Failed(String),
    Available,
}

/// The partner's `OutcomesAvailable` condition from its engine's report (`None`: no engine).
/// It never affects `Ready`.
pub fn available(report: Option<&CorrelationReport>) -> Verdict {
    let Some(report) = report else {
        return Verdict::unknown(OUTCOMES_AVAILABLE, OutcomesReason::Reading, "the partner's engine is starting");
    };
    let tag = report.tag_problem.as_ref().map(|p| format!("; {p}")).unwrap_or_default();
    match &report.state {
        CorrelationState::Reading => {
            Verdict::unknown(OUTCOMES_AVAILABLE, OutcomesReason::Reading, "reading Defender's machines and alerts")
        }
        CorrelationState::Disabled => Verdict::new(
            OUTCOMES_AVAILABLE,
            false,
            OutcomesReason::Disabled,
            "spec.correlation.enabled is false: no machine is matched and no alert read",
        ),
        CorrelationState::Invalid(message) => {
            Verdict::new(OUTCOMES_AVAILABLE, false, OutcomesReason::InvalidCorrelation, message.clone())
        }
        CorrelationState::MissingRoles(roles) => {
            let effect = match (roles.contains(&MACHINE_READ_ROLE), roles.contains(&ALERT_READ_ROLE)) {
                (true, true) => "no endpoint is matched to a machine and no alert is read",
                (true, false) => "no endpoint is matched to a machine, so no detection can be told",
                _ => "machines are matched, but without alerts no detection can be told",
            };
            Verdict::new(
                OUTCOMES_AVAILABLE,
                false,
                OutcomesReason::MissingPermission,
                format!(
                    "the app lacks {}: {effect}; grant the WindowsDefenderATP application permission and admin consent \
                     (seen when the token is next renewed, within the hour); Ready is not affected{tag}",
                    roles.join(" and ")
                ),
            )
        }
        CorrelationState::Failed(message) => Verdict::new(
            OUTCOMES_AVAILABLE,
            false,
            OutcomesReason::ReadFailed,
            format!("{message}; retried every {}", report.interval),
        ),
        CorrelationState::Available => Verdict::new(
            OUTCOMES_AVAILABLE,
            true,
            OutcomesReason::Available,
            format!(
                "endpoints are matched to Defender's machines (listed hourly) and alerts read every {}{tag}",
                report.interval
            ),
        ),
    }
}

/// While the engine's first reads are under way (after a restart), an attached partner keeps what
/// its status said of outcomes — the `OutcomesAvailable` condition and the counts — rather than
/// flipping to `Reading` and back.
pub fn keep_while_reading(
    verdicts: &mut [Verdict],
    counts: &mut Option<OutcomeCounts>,
    report: Option<&CorrelationReport>,
    previous: &DefenderPartnerStatus,
) {
    if !report.is_none_or(|r| r.state == CorrelationState::Reading) {
        return;
    }
    let Some(kept) = crate::api::conditions::find(&previous.conditions, OUTCOMES_AVAILABLE) else { return };
    let Some(reason) = OutcomesReason::parse(&kept.reason) else { return };
    if reason == OutcomesReason::NotAttached {
        return;
    }
    for verdict in verdicts.iter_mut().filter(|v| v.type_ == OUTCOMES_AVAILABLE) {
        *verdict = Verdict {
            type_: OUTCOMES_AVAILABLE,
            status: kept.status == "True",
            unknown: kept.status == "Unknown",
            reason: reason.as_str(),
            message: kept.message.clone(),
        };
    }
    if counts.is_none() {
        counts.clone_from(&previous.outcomes);
    }
}

/// `OutcomesAvailable` of a partner that is not attached.
pub fn not_attached() -> Verdict {
    Verdict::unknown(OUTCOMES_AVAILABLE, OutcomesReason::NotAttached, "not attached: nothing is read")
}

#[cfg(test)]
mod tests;
