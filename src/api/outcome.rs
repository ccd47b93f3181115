//! Outcomes: did Defender catch the test? The partner's `spec.correlation`, the per-delivery
//! `machine`, `detection` and `alerts`, the partner's `status.outcomes` counts, and the reasons
//! they carry (readiness, detection, the `OutcomesAvailable` condition), each with its outlook and
//! fix like every other reason.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration;

/// The longest `spec.correlation.alertWindow`: 30 days, Defender's look-back for machines by IP
/// and Prelude's for outcomes.
pub const MAX_ALERT_WINDOW: &str = "720h";
pub const MIN_ALERT_WINDOW: &str = "1m";
/// `spec.correlation.interval`: one alert poll per interval, within Defender's 1,500 calls an hour.
pub const MAX_INTERVAL: &str = "24h";
pub const MIN_INTERVAL: &str = "5s";
/// Most alerts a delivery lists.
pub const MAX_ALERTS: usize = 5;
/// The condition on a partner that says whether outcomes can be read.
pub const OUTCOMES_AVAILABLE: &str = "OutcomesAvailable";

/// How a partner matches findings to Defender's machines and reads its alerts.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Correlation {
    /// Match endpoints to machines and read alerts (when `Machine.Read.All` and `Alert.Read.All`
    /// are granted).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Alerts created from the finding's observation time minus 10 minutes to this long after it
    /// count for the finding, e.g. `2h`; 1m to 720h.
    #[serde(default = "default_alert_window")]
    #[schemars(regex(pattern = duration::PATTERN), length(max = duration::MAX_LENGTH))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) >= duration('1m') && duration(self) <= duration('720h')", "message": "between 1m and 720h (30 days)"}
    ]))]
    pub alert_window: String,
    /// How often new and updated alerts are read (one call each time), e.g. `5m`; 5s to 24h.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = duration::PATTERN), length(max = duration::MAX_LENGTH))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) >= duration('5s') && duration(self) <= duration('24h')", "message": "between 5s and 24h"}
    ]))]
    pub interval: String,
    /// A machine tag added to the machines that run tests, so the SOC can tell test activity
    /// apart (needs `Machine.ReadWrite.All`). Added once; never removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub machine_tag: Option<String>,
}

impl Default for Correlation {
    fn default() -> Self {
        Self { enabled: true, alert_window: default_alert_window(), interval: default_interval(), machine_tag: None }
    }
}

impl Correlation {
    /// `alertWindow` as a duration, or an error naming the field.
    pub fn alert_window(&self) -> Result<std::time::Duration, duration::FieldError> {
        duration::parse_between("spec.correlation.alertWindow", &self.alert_window, MIN_ALERT_WINDOW, MAX_ALERT_WINDOW)
    }

    /// `interval` as a duration, or an error naming the field.
    pub fn interval(&self) -> Result<std::time::Duration, duration::FieldError> {
        duration::parse_between("spec.correlation.interval", &self.interval, MIN_INTERVAL, MAX_INTERVAL)
    }

    /// The tag to add, if any (blank counts as none).
    pub fn tag(&self) -> Option<&str> {
        self.machine_tag.as_deref().map(str::trim).filter(|t| !t.is_empty())
    }
}

fn default_true() -> bool {
    true
}
fn default_alert_window() -> String {
    "2h".into()
}
fn default_interval() -> String {
    "5m".into()
}

/// Per partner, how many of the findings it selects Defender prevented, only detected, missed, or
/// has not answered for yet (findings whose outcome is `Unknown` are not counted).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct OutcomeCounts {
    pub prevented: u32,
    pub detected: u32,
    pub not_detected: u32,
    pub pending: u32,
}

/// The Defender machine a delivery's endpoint was matched to, and whether it can enforce a file
/// indicator at all.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    /// Defender's machine id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `computerDnsName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub readiness: Readiness,
    /// Which prerequisite is missed, or which the API cannot show.
    pub message: String,
}

/// One of Defender's alerts on the machine whose evidence holds one of the finding's hashes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertRef {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// The matching evidence's `detectionStatus` (`Detected`, `Prevented`, `Blocked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_status: Option<String>,
    pub created_time: Time,
}

crate::api::reason::reasons! {
    /// Whether a matched machine can enforce a file indicator (`deliveries[].machine.readiness`).
    #[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
    pub enum Readiness {
        /// Every prerequisite the API shows is met (the message names those it cannot show).
        Ready => Fine, "—";
        NotFound => Terminal, "Onboard the endpoint, or give `spec.endpoint.machineId` (or the `hostname`/`ipAddress` Defender shows).";
        NotOnboarded => Terminal, "Onboard the device to Defender for Endpoint.";
        Inactive => Terminal, "Bring the device back online and check its sensor (it has not reported for 7 days, or its health is not Active).";
        PassiveMode => Terminal, "Make Microsoft Defender Antivirus the active antivirus: in passive mode it blocks nothing, so an indicator cannot fix this finding.";
        OutdatedPlatform => Terminal, "Update the antimalware platform (client) to 4.18.1901 or later.";
        Unknown => Retrying, "Grant `Machine.Read.All`; otherwise see the message (no antivirus health reported, EDR in block mode).";
    }
}

crate::api::reason::reasons! {
    /// What Defender did about the test on that machine (`deliveries[].detection`,
    /// `status.outcome`), best first.
    #[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
    pub enum Detection {
        /// The test was stopped on the endpoint (the probe said PROTECTED).
        Prevented => Fine, "—";
        /// It ran, and Defender raised an alert whose evidence holds the test binary's hash.
        Detected => Fine, "—";
        /// It ran, and no such alert came within the window.
        NotDetected => Terminal, "Check the machine's readiness; the indicator the operator pushed makes the next run Prevented once Defender enforces it.";
        /// The window is still open.
        Pending => Retrying, "—";
        /// No machine, a role missing, or a result that is neither PROTECTED nor UNPROTECTED.
        Unknown => Retrying, "Grant `Machine.Read.All` and `Alert.Read.All`, or match the endpoint (see `machine.message`).";
    }
}

impl Detection {
    /// Prevented > Detected > NotDetected > Pending > Unknown.
    pub fn rank(self) -> u8 {
        match self {
            Detection::Prevented => 4,
            Detection::Detected => 3,
            Detection::NotDetected => 2,
            Detection::Pending => 1,
            Detection::Unknown => 0,
        }
    }
}

crate::api::reason::reasons! {
    /// Why a partner's `OutcomesAvailable` condition is what it is. It never affects `Ready`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum OutcomesReason {
        /// True: machines are matched and alerts read every interval.
        Available => Fine, "—";
        /// Unknown: the first reads of machines and alerts are under way.
        Reading => Retrying, "—";
        /// False: `spec.correlation.enabled` is false.
        Disabled => Fine, "—";
        /// False: `Machine.Read.All` or `Alert.Read.All` is not granted (the message names it).
        MissingPermission => Terminal, "Add the WindowsDefenderATP application permissions `Machine.Read.All` and `Alert.Read.All` and **grant admin consent**.";
        /// False: a correlation duration the operator cannot use (the message names the field).
        InvalidCorrelation => Terminal, "Set `spec.correlation.alertWindow` (1m to 720h) and `interval` (5s to 24h) in range.";
        /// False: Defender refused or failed the reads before any succeeded (retried each interval).
        ReadFailed => Retrying, "Usually transient; the message says what Defender answered.";
        /// Unknown: the partner is not attached, so nothing is read.
        NotAttached => Fine, "—";
    }
}
