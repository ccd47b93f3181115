//! The alerts of each tenant: the Alert entity with its evidence, alerts that appear some time
//! after a simulated test run ([`TestRun`]), and the answers of `GET /api/alerts`,
//! `GET /api/alerts/{id}` and `GET /api/machines/{id}/alerts`.

use std::collections::HashMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

use super::config::EmulatorConfig;
use super::hex_id;
use super::machine_store::Machines;
use super::odata::{Kind, Schema};
use super::query::Query;
use super::store::{ApiError, fmt_time};

/// Filterable properties of `GET /api/alerts` (get-alerts; not `machineId` nor hashes).
pub(crate) const ALERT_SCHEMA: Schema = Schema {
    entity: "Alert",
    fields: &[
        ("alertCreationTime", Kind::DateTime),
        ("lastUpdateTime", Kind::DateTime),
        ("lastEventTime", Kind::DateTime),
        ("incidentId", Kind::Number),
        ("investigationId", Kind::Number),
        ("id", Kind::Str),
        ("assignedTo", Kind::Str),
        ("detectionSource", Kind::Str),
        ("status", Kind::Enum(&["Unknown", "New", "InProgress", "Resolved"])),
        ("severity", Kind::Enum(&["UnSpecified", "Informational", "Low", "Medium", "High"])),
        ("category", Kind::Str),
    ],
};

/// What Defender did when a machine ran a test binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestOutcome {
    /// Antivirus stopped it: an alert whose file evidence has `detectionStatus` `Prevented`.
    Prevented,
    /// It ran and EDR raised an alert: evidence `detectionStatus` `Detected`.
    Detected,
    /// Defender saw nothing: no alert.
    NotDetected,
}

/// A test binary run on a machine, for [`Emulator::run_test`](super::Emulator::run_test).
#[derive(Clone, Debug, PartialEq)]
pub struct TestRun {
    /// Machine id (or computer name) in the tenant.
    pub machine: String,
    pub sha256: String,
    /// `None`: a stable stand-in derived from the SHA-256 (it is not the file's real SHA-1).
    pub sha1: Option<String>,
    pub outcome: TestOutcome,
    /// How long after the run the alert appears in the API.
    pub delay: Duration,
    pub file_name: String,
    pub file_path: String,
    /// Alert title; `None`: a title in Defender's style for the outcome.
    pub title: Option<String>,
}

impl TestRun {
    pub fn new(machine: &str, sha256: &str, outcome: TestOutcome) -> Self {
        TestRun {
            machine: machine.into(),
            sha256: sha256.to_ascii_lowercase(),
            sha1: None,
            outcome,
            delay: Duration::ZERO,
            file_name: "probe-test.exe".into(),
            file_path: "C:\\ProgramData\\Probe".into(),
            title: None,
        }
    }

    pub fn sha1(mut self, sha1: &str) -> Self {
        self.sha1 = Some(sha1.to_ascii_lowercase());
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn file(mut self, name: &str, path: &str) -> Self {
        self.file_name = name.into();
        self.file_path = path.into();
        self
    }

    pub fn title(mut self, title: &str) -> Self {
        self.title = Some(title.into());
        self
    }
}

/// Every evidence property, null unless set (as the documented samples list them).
fn evidence(entity_type: &str, at: &str, set: Value) -> Value {
    const KEYS: [&str; 25] = [
        "sha1",
        "sha256",
        "fileName",
        "filePath",
        "processId",
        "processCommandLine",
        "processCreationTime",
        "parentProcessId",
        "parentProcessCreationTime",
        "parentProcessFileName",
        "parentProcessFilePath",
        "ipAddress",
        "url",
        "registryKey",
        "registryHive",
        "registryValueType",
        "registryValue",
        "accountName",
        "domainName",
        "userSid",
        "aadUserId",
        "userPrincipalName",
        "detectionStatus",
        "evidenceCreationTime",
        "entityType",
    ];
    let mut item: Map<String, Value> = KEYS.iter().map(|k| (k.to_string(), Value::Null)).collect();
    item.insert("entityType".into(), json!(entity_type));
    item.insert("evidenceCreationTime".into(), json!(at));
    item.extend(set.as_object().cloned().unwrap_or_default());
    Value::Object(item)
}

/// `da<.NET ticks>_<signed 32-bit number>`, the shape of Defender's alert ids.
fn alert_id(at: Timestamp, seed: &str) -> String {
    const UNIX_EPOCH_TICKS: i128 = 621_355_968_000_000_000;
    let ticks = at.as_nanosecond() / 100 + UNIX_EPOCH_TICKS;
    let n = u32::from_str_radix(&hex_id(seed, 8), 16).unwrap_or(0) as i32;
    format!("da{ticks}_{n}")
}

/// The alert a test run raises, as it looks once it appeared at `appears`.
fn test_alert(
    run: &TestRun,
    machine: &Value,
    tenant: &str,
    ran: Timestamp,
    appears: Timestamp,
    incident: u64,
) -> Value {
    let prevented = run.outcome == TestOutcome::Prevented;
    let sha1 = run.sha1.clone().unwrap_or_else(|| hex_id(&format!("sha1-of:{}", run.sha256), 40));
    let (created, event) = (fmt_time(appears), fmt_time(ran));
    let status = if prevented { "Prevented" } else { "Detected" };
    let file = json!({"sha1": sha1, "sha256": run.sha256, "fileName": run.file_name, "filePath": run.file_path,
        "detectionStatus": status});
    let mut items = vec![evidence("File", &created, file)];
    if !prevented {
        let process = json!({"sha1": sha1, "sha256": run.sha256, "fileName": run.file_name,
            "filePath": run.file_path, "processId": 4242, "processCreationTime": event, "detectionStatus": status,
            "processCommandLine": format!("\"{}\"", run.file_name)});
        items.push(evidence("Process", &created, process));
    }
    let (title, source, category, severity, detector) = if prevented {
        ("'ProbeTest' malware was prevented".to_owned(), "WindowsDefenderAv", "Malware", "Informational", "av")
    } else {
        (
            format!("Suspicious process '{}' was detected", run.file_name),
            "WindowsDefenderAtp",
            "Execution",
            "Medium",
            "edr",
        )
    };
    json!({
        "id": alert_id(appears, &format!("{tenant}:{}:{incident}", run.sha256)),
        "incidentId": incident,
        "investigationId": null,
        "assignedTo": null,
        "severity": severity,
        "status": "New",
        "classification": null,
        "determination": null,
        "investigationState": "Queued",
        "detectionSource": source,
        "detectorId": super::machines::uuid_from(&format!("detector:{detector}")),
        "category": category,
        "threatFamilyName": prevented.then_some("ProbeTest"),
        "threatName": prevented.then_some("Trojan:Win32/ProbeTest.A"),
        "title": run.title.clone().unwrap_or(title),
        "description": "Raised by the Defender emulator for a simulated test run.",
        "alertCreationTime": created,
        "firstEventTime": event,
        "lastEventTime": event,
        "lastUpdateTime": created,
        "resolvedTime": null,
        "machineId": machine["id"],
        "computerDnsName": machine["computerDnsName"],
        "rbacGroupName": machine["rbacGroupName"],
        "aadTenantId": tenant,
        "mitreTechniques": if prevented { json!([]) } else { json!(["T1204.002"]) },
        "relatedUser": null,
        "comments": [],
        "evidence": items,
    })
}

/// An alert that appears in the API at `appears`.
struct Pending {
    appears: Timestamp,
    alert: Value,
}

#[derive(Default)]
struct TenantAlerts {
    /// In the order they appeared.
    visible: Vec<Value>,
    pending: Vec<Pending>,
    incidents: u64,
}

impl TenantAlerts {
    /// Moves the alerts whose time has come into view.
    fn promote(&mut self, now: Timestamp) {
        let (due, later): (Vec<Pending>, Vec<Pending>) = self.pending.drain(..).partition(|p| p.appears <= now);
        self.pending = later;
        let mut due = due;
        due.sort_by_key(|p| p.appears);
        self.visible.extend(due.into_iter().map(|p| p.alert));
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(404, "ResourceNotFound", format!("Alert {id} was not found"))
}

/// Lists show `"evidence": []` unless `$expand=evidence`.
fn with_evidence(mut alert: Value, expand: bool) -> Value {
    if let Some(o) = alert.as_object_mut()
        && (!expand || !o.get("evidence").is_some_and(Value::is_array))
    {
        o.insert("evidence".into(), Value::Array(Vec::new()));
    }
    alert
}

/// Every tenant's alerts.
#[derive(Default)]
pub(crate) struct Alerts {
    tenants: HashMap<String, TenantAlerts>,
}

impl Alerts {
    /// One alert, two hours old, on the first default machine of every provisioned tenant.
    pub(crate) fn sandbox(config: &EmulatorConfig, machines: &Machines, now: Timestamp) -> Alerts {
        let mut alerts = Alerts::default();
        for t in config.tenants.iter().filter(|t| t.defender_provisioned) {
            let tenant = t.id.to_ascii_lowercase();
            let machine_id = hex_id(&format!("machine:{tenant}:1"), 40);
            let Some(machine) = machines.lookup(&tenant, &machine_id) else { continue };
            let run = TestRun::new(&machine_id, &hex_id("evidence-sha256", 64), TestOutcome::Prevented)
                .sha1(&hex_id("evidence-sha1", 40))
                .file("probe.exe", "C:\\ProgramData\\probe")
                .title("A sandbox test binary was blocked");
            let at = now - SignedDuration::from_hours(2);
            let alert = test_alert(&run, machine, &tenant, at - SignedDuration::from_mins(2), at, 7);
            alerts.tenants.entry(tenant).or_default().visible.push(alert);
        }
        alerts
    }

    fn tenant(&mut self, tenant: &str, now: Timestamp) -> &mut TenantAlerts {
        let t = self.tenants.entry(tenant.to_owned()).or_default();
        t.promote(now);
        t
    }

    pub(crate) fn replace_all(&mut self, tenant: &str, alerts: Vec<Value>) {
        self.tenants.insert(tenant.to_owned(), TenantAlerts { visible: alerts, ..TenantAlerts::default() });
    }

    /// Schedules the alert of a test run on `machine`; `None` when the outcome raises none.
    pub(crate) fn schedule(&mut self, tenant: &str, machine: &Value, run: &TestRun, now: Timestamp) -> Option<String> {
        if run.outcome == TestOutcome::NotDetected {
            return None;
        }
        let delay = SignedDuration::try_from(run.delay).unwrap_or(SignedDuration::MAX);
        let appears = now.checked_add(delay).unwrap_or(Timestamp::MAX);
        let t = self.tenant(tenant, now);
        t.incidents += 1;
        let alert = test_alert(run, machine, tenant, now, appears, 1000 + t.incidents);
        let id = alert["id"].as_str().map(str::to_owned);
        t.pending.push(Pending { appears, alert });
        id
    }

    /// Edits a visible alert; its `lastUpdateTime` then becomes `now`.
    pub(crate) fn update(&mut self, tenant: &str, id: &str, now: Timestamp, edit: impl FnOnce(&mut Value)) -> bool {
        let t = self.tenant(tenant, now);
        let Some(alert) = t.visible.iter_mut().find(|a| a["id"].as_str() == Some(id)) else { return false };
        edit(alert);
        alert["lastUpdateTime"] = Value::String(fmt_time(now));
        true
    }

    /// The visible alerts with their evidence.
    pub(crate) fn all(&mut self, tenant: &str, now: Timestamp) -> Vec<Value> {
        self.tenant(tenant, now).visible.clone()
    }

    /// `GET /api/alerts`, or with `machine_id` `GET /api/machines/{id}/alerts`.
    pub(crate) fn list(
        &mut self,
        tenant: &str,
        machine_id: Option<&str>,
        query: &str,
        base: &str,
        now: Timestamp,
    ) -> Result<Value, ApiError> {
        let q = Query::parse(query, &ALERT_SCHEMA, true)?;
        let on_machine =
            |a: &&Value| machine_id.is_none_or(|m| a["machineId"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(m)));
        let rows: Vec<Value> = self
            .tenant(tenant, now)
            .visible
            .iter()
            .filter(on_machine)
            .map(|a| with_evidence(a.clone(), q.expand_evidence))
            .collect();
        let path = machine_id.map_or_else(|| "alerts".to_owned(), |m| format!("machines/{m}/alerts"));
        Ok(q.page(rows, base, &path, "Alerts"))
    }

    /// `GET /api/alerts/{id}`: with its evidence.
    pub(crate) fn get(&mut self, tenant: &str, id: &str, base: &str, now: Timestamp) -> Result<Value, ApiError> {
        let alert = self.tenant(tenant, now).visible.iter().find(|a| a["id"].as_str() == Some(id)).cloned();
        let mut alert = with_evidence(alert.ok_or_else(|| not_found(id))?, true);
        alert["@odata.context"] = Value::String(format!("{base}/$metadata#Alerts/$entity"));
        Ok(alert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_ids_look_like_defenders() {
        let at: Timestamp = "2021-01-26T20:33:57.7220239Z".parse().unwrap();
        let id = alert_id(at, "x");
        let (ticks, n) = id.strip_prefix("da").unwrap().split_once('_').unwrap();
        assert_eq!(ticks, "637472900377220239");
        assert!(n.parse::<i32>().is_ok());
    }

    #[test]
    fn a_test_alert_appears_only_after_its_delay() {
        let mut alerts = Alerts::default();
        let machine = json!({"id": "m1", "computerDnsName": "pc.contoso.com", "rbacGroupName": null});
        let now = Timestamp::now();
        let run = TestRun::new("m1", &"a".repeat(64), TestOutcome::Detected).delay(Duration::from_secs(60));
        let id = alerts.schedule("t", &machine, &run, now).unwrap();
        assert!(alerts.all("t", now).is_empty());
        let later = now + SignedDuration::from_secs(60);
        let shown = alerts.all("t", later);
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0]["id"], id);
        assert_eq!(shown[0]["alertCreationTime"], fmt_time(later));
        assert_eq!(shown[0]["evidence"][0]["detectionStatus"], "Detected");
        let none = TestRun::new("m1", &"b".repeat(64), TestOutcome::NotDetected);
        assert!(alerts.schedule("t", &machine, &none, now).is_none());
    }
}
