//! The machines of each tenant (Machine entities, antivirus health, IP sightings) and the answers
//! of the machine calls: list, get by id or name, `findbyip`, tags and `deviceavinfo`.

use std::collections::HashMap;
use std::net::IpAddr;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use super::config::EmulatorConfig;
use super::machines::{AvSpec, HealthStatus, MachineSpec, OnboardingStatus, av_row, default_machines};
use super::odata::{Kind, Schema, parse_time};
use super::query::{MAX_TOP, Paging, Query};
use super::store::ApiError;

/// Filterable properties of `GET /api/machines` (get-machines).
pub(crate) const MACHINE_SCHEMA: Schema = Schema {
    entity: "Machine",
    fields: &[
        ("id", Kind::Str),
        ("computerDnsName", Kind::Str),
        ("version", Kind::Str),
        ("deviceValue", Kind::Enum(&["Normal", "Low", "High"])),
        ("aadDeviceId", Kind::Str),
        ("machineTags", Kind::StrList),
        ("lastSeen", Kind::DateTime),
        ("exposureLevel", Kind::Enum(&["None", "Low", "Medium", "High"])),
        ("onboardingStatus", Kind::Enum(&OnboardingStatus::ALL)),
        ("lastIpAddress", Kind::Str),
        ("healthStatus", Kind::Enum(&HealthStatus::ALL)),
        ("osPlatform", Kind::Str),
        ("riskScore", Kind::Enum(&["None", "Informational", "Low", "Medium", "High"])),
        ("rbacGroupId", Kind::Number),
    ],
};

/// Filterable properties of `GET /api/deviceavinfo` (`id` and `rbacGroupName` are not).
pub(crate) const DEVICE_AV_SCHEMA: Schema = Schema {
    entity: "DeviceAvInfo",
    fields: &[
        ("machineId", Kind::Str),
        ("computerDnsName", Kind::Str),
        ("osKind", Kind::Str),
        ("osPlatform", Kind::Str),
        ("osVersion", Kind::Str),
        ("avMode", Kind::Str),
        ("avSignatureVersion", Kind::Str),
        ("avEngineVersion", Kind::Str),
        ("avPlatformVersion", Kind::Str),
        ("quickScanResult", Kind::Str),
        ("quickScanError", Kind::Str),
        ("fullScanResult", Kind::Str),
        ("fullScanError", Kind::Str),
        ("avIsSignatureUpToDate", Kind::Str),
        ("avIsEngineUpToDate", Kind::Str),
        ("avIsPlatformUpToDate", Kind::Str),
        ("rbacGroupId", Kind::Number),
    ],
};

/// `GET /api/machines` gives no nextLink when the client set `$top`.
const MACHINE_PAGING: Paging = Paging { default_page: MAX_TOP, next_link_with_top: false };
/// `GET /api/deviceavinfo`: 20 rows a page by default; follow `@odata.nextLink`.
const AV_PAGING: Paging = Paging { default_page: 20, next_link_with_top: true };

/// `findbyip` finds machines seen with the IP this long before or after the given time...
const FIND_BY_IP_WINDOW: SignedDuration = SignedDuration::from_mins(15);
/// ...and refuses times older than this.
const FIND_BY_IP_MAX_AGE: SignedDuration = SignedDuration::from_hours(24 * 30);
/// Longest tag accepted (the API's limit is undocumented; device tags in the registry hold 200).
const MAX_TAG_LEN: usize = 200;
/// Most machines one `AddOrRemoveTagForMultipleMachines` call names.
const MAX_TAG_MACHINES: usize = 500;

struct Record {
    machine: Value,
    av: Option<AvSpec>,
    /// When this machine or its antivirus health last changed (`dataRefreshTimestamp`).
    refreshed: Timestamp,
}

/// The machine had this internal IP at that time.
struct Sighting {
    machine_id: String,
    ip: IpAddr,
    at: Timestamp,
}

#[derive(Default)]
struct TenantMachines {
    records: Vec<Record>,
    sightings: Vec<Sighting>,
}

fn id_of(machine: &Value) -> &str {
    machine["id"].as_str().unwrap_or_default()
}

fn last_seen(machine: &Value) -> Option<Timestamp> {
    machine["lastSeen"].as_str().and_then(|s| s.parse().ok())
}

impl TenantMachines {
    /// By id; else by computer name (full, or its first label), the most recently seen first.
    fn find(&self, id_or_name: &str) -> Option<usize> {
        if let Some(i) = self.records.iter().position(|r| id_of(&r.machine).eq_ignore_ascii_case(id_or_name)) {
            return Some(i);
        }
        let named = |r: &Record| {
            let name = r.machine["computerDnsName"].as_str().unwrap_or_default();
            name.eq_ignore_ascii_case(id_or_name)
                || name.split('.').next().is_some_and(|l| l.eq_ignore_ascii_case(id_or_name))
        };
        (0..self.records.len())
            .filter(|i| named(&self.records[*i]))
            .max_by_key(|i| last_seen(&self.records[*i].machine))
    }

    /// Remembers the machine's current internal IPs at its `lastSeen`, plus earlier sightings.
    fn note_sightings(&mut self, machine: &Value, earlier: &[(String, Timestamp)]) {
        let id = id_of(machine).to_owned();
        let mut seen: Vec<(String, Timestamp)> = earlier.to_vec();
        if let Some(at) = last_seen(machine) {
            let listed =
                machine["ipAddresses"].as_array().into_iter().flatten().filter_map(|a| a["ipAddress"].as_str());
            for ip in listed.chain(machine["lastIpAddress"].as_str()) {
                seen.push((ip.to_owned(), at));
            }
        }
        for (ip, at) in seen {
            let Ok(ip) = ip.parse::<IpAddr>() else { continue };
            if !self.sightings.iter().any(|s| s.machine_id == id && s.ip == ip && s.at == at) {
                self.sightings.push(Sighting { machine_id: id.clone(), ip, at });
            }
        }
    }

    /// Replaces the machine with the same id in place, or appends it.
    fn upsert(&mut self, record: Record) {
        let id = id_of(&record.machine).to_owned();
        match self.records.iter().position(|r| id_of(&r.machine) == id) {
            Some(i) => self.records[i] = record,
            None => self.records.push(record),
        }
    }
}

pub(crate) fn not_found(id: &str) -> ApiError {
    ApiError::new(404, "ResourceNotFound", format!("Machine {id} was not found"))
}

/// A single Machine entity body.
fn entity(mut machine: Value, base: &str) -> Value {
    if let Some(o) = machine.as_object_mut() {
        o.insert("@odata.context".into(), Value::String(format!("{base}/$metadata#Machines/$entity")));
    }
    machine
}

/// Every tenant's machines.
#[derive(Default)]
pub(crate) struct Machines {
    tenants: HashMap<String, TenantMachines>,
}

impl Machines {
    /// The default machines (see `machines::sandbox_machines`) in every provisioned tenant.
    pub(crate) fn sandbox(config: &EmulatorConfig, now: Timestamp) -> Machines {
        let mut m = Machines::default();
        for t in config.tenants.iter().filter(|t| t.defender_provisioned) {
            let tenant = t.id.to_ascii_lowercase();
            let domain = t.domains.first().map_or("sandbox.local", String::as_str);
            for (id, spec) in default_machines(&tenant, domain, now) {
                m.put(&tenant, spec.id(&id), now);
            }
        }
        m
    }

    /// Adds the machine, or replaces the one with the same id. Returns the id.
    pub(crate) fn put(&mut self, tenant: &str, spec: MachineSpec, now: Timestamp) -> String {
        let id = spec.id_in(tenant);
        let machine = spec.to_json(&id);
        let t = self.tenants.entry(tenant.to_owned()).or_default();
        t.note_sightings(&machine, &spec.ip_history);
        t.upsert(Record { machine, av: spec.av, refreshed: now });
        id
    }

    /// Replaces all of a tenant's machines with raw entities (no antivirus health).
    pub(crate) fn replace_all(&mut self, tenant: &str, machines: Vec<Value>, now: Timestamp) {
        let mut t = TenantMachines::default();
        for machine in machines {
            t.note_sightings(&machine, &[]);
            t.records.push(Record { machine, av: None, refreshed: now });
        }
        self.tenants.insert(tenant.to_owned(), t);
    }

    /// Edits a machine's entity in place; its IPs at its `lastSeen` join the sightings.
    pub(crate) fn update(&mut self, tenant: &str, id: &str, now: Timestamp, edit: impl FnOnce(&mut Value)) -> bool {
        let Some(t) = self.tenants.get_mut(tenant) else { return false };
        let Some(i) = t.find(id) else { return false };
        edit(&mut t.records[i].machine);
        t.records[i].refreshed = now;
        let machine = t.records[i].machine.clone();
        t.note_sightings(&machine, &[]);
        true
    }

    pub(crate) fn remove(&mut self, tenant: &str, id: &str) -> bool {
        let Some(t) = self.tenants.get_mut(tenant) else { return false };
        let Some(i) = t.find(id) else { return false };
        t.records.remove(i);
        true
    }

    /// Sets (or with `None` clears) a machine's antivirus health; `defenderAvStatus` follows.
    pub(crate) fn set_av(&mut self, tenant: &str, id: &str, av: Option<AvSpec>, now: Timestamp) -> bool {
        let Some(t) = self.tenants.get_mut(tenant) else { return false };
        let Some(i) = t.find(id) else { return false };
        let record = &mut t.records[i];
        let status = av.as_ref().map_or("NotReporting", AvSpec::defender_av_status);
        record.machine["defenderAvStatus"] = Value::String(status.into());
        record.av = av;
        record.refreshed = now;
        true
    }

    pub(crate) fn entities(&self, tenant: &str) -> Vec<Value> {
        self.tenants.get(tenant).map(|t| t.records.iter().map(|r| r.machine.clone()).collect()).unwrap_or_default()
    }

    /// The id of a machine given by id or computer name.
    pub(crate) fn id_of(&self, tenant: &str, id_or_name: &str) -> Option<String> {
        self.lookup(tenant, id_or_name).map(|m| id_of(m).to_owned())
    }

    /// A machine by id or computer name.
    pub(crate) fn lookup(&self, tenant: &str, id_or_name: &str) -> Option<&Value> {
        let t = self.tenants.get(tenant)?;
        t.find(id_or_name).map(|i| &t.records[i].machine)
    }

    /// `GET /api/machines`: 404 when the tenant has no machines at all, else a (maybe empty) page.
    pub(crate) fn list(&self, tenant: &str, query: &str, base: &str) -> Result<Value, ApiError> {
        let q = Query::parse(query, &MACHINE_SCHEMA, false)?;
        let rows = self.entities(tenant);
        if rows.is_empty() {
            return Err(ApiError::new(404, "ResourceNotFound", "No recent machines were found"));
        }
        Ok(q.page_with(rows, base, "machines", "Machines", MACHINE_PAGING))
    }

    /// `GET /api/machines/{id}`: by device id or computer name.
    pub(crate) fn get(&self, tenant: &str, id_or_name: &str, base: &str) -> Result<Value, ApiError> {
        let machine = self.lookup(tenant, id_or_name).ok_or_else(|| not_found(id_or_name))?;
        Ok(entity(machine.clone(), base))
    }

    /// `GET /api/machines/findbyip(ip='…',timestamp=…)`; `call` is that last path segment.
    pub(crate) fn find_by_ip(
        &self,
        tenant: &str,
        call: &str,
        query: &str,
        base: &str,
        now: Timestamp,
    ) -> Result<Value, ApiError> {
        let (ip, at) = parse_find_by_ip(call)?;
        if now.duration_since(at) > FIND_BY_IP_MAX_AGE {
            return Err(ApiError::new(400, "BadRequest", "The given timestamp must be in the past 30 days"));
        }
        let q = Query::parse(query, &MACHINE_SCHEMA, false)?;
        let t = self.tenants.get(tenant);
        let sightings = t.map_or(&[][..], |t| t.sightings.as_slice());
        let near = |s: &&Sighting| s.ip == ip && s.at.duration_since(at).abs() <= FIND_BY_IP_WINDOW;
        let ids: Vec<&str> = sightings.iter().filter(near).map(|s| s.machine_id.as_str()).collect();
        let rows: Vec<Value> = t
            .map(|t| t.records.iter().filter(|r| ids.contains(&id_of(&r.machine))).map(|r| r.machine.clone()).collect())
            .unwrap_or_default();
        Ok(q.page_with(rows, base, &format!("machines/{call}"), "Machines", MACHINE_PAGING))
    }

    /// `POST /api/machines/{id}/tags` with `{"Value": "…", "Action": "Add" | "Remove"}`.
    pub(crate) fn tag(&mut self, tenant: &str, id: &str, body: &Value, base: &str) -> Result<Value, ApiError> {
        let (tag, add) = parse_tag_body(body)?;
        let t = self.tenants.get_mut(tenant).ok_or_else(|| not_found(id))?;
        let i = t.find(id).ok_or_else(|| not_found(id))?;
        let machine = &mut t.records[i].machine;
        apply_tag(machine, &tag, add);
        Ok(entity(machine.clone(), base))
    }

    /// `POST /api/machines/AddOrRemoveTagForMultipleMachines` with `{"Value", "Action",
    /// "MachineIds": [...]}` (at most 500): all or nothing; an unknown id is a 404 naming it.
    pub(crate) fn tag_many(&mut self, tenant: &str, body: &Value, base: &str) -> Result<Value, ApiError> {
        let (tag, add) = parse_tag_body(body)?;
        let ids = match body.get("MachineIds") {
            None | Some(Value::Null) => {
                return Err(ApiError::new(400, "MissingRequiredParameter", "Parameter MachineIds is missing"));
            }
            Some(Value::Array(ids)) => ids,
            Some(_) => {
                return Err(ApiError::new(
                    400,
                    "InvalidRequestBody",
                    "Request body is incorrect: 'MachineIds' must be an array",
                ));
            }
        };
        if ids.is_empty() || ids.len() > MAX_TAG_MACHINES {
            return Err(ApiError::new(
                400,
                "InvalidInput",
                format!("Invalid input MachineIds: 1 to {MAX_TAG_MACHINES} machine ids, got {}", ids.len()),
            ));
        }
        let t = self.tenants.entry(tenant.to_owned()).or_default();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            let id = id.as_str().unwrap_or_default();
            match t.records.iter().position(|r| id_of(&r.machine).eq_ignore_ascii_case(id)) {
                Some(i) => found.push(i),
                None => missing.push(id.to_owned()),
            }
        }
        if !missing.is_empty() {
            return Err(ApiError::new(
                404,
                "ResourceNotFound",
                format!("Machines were not found: {}", missing.join(", ")),
            ));
        }
        let mut machines = Vec::new();
        for i in found {
            let machine = &mut t.records[i].machine;
            apply_tag(machine, &tag, add);
            machines.push(machine.clone());
        }
        Ok(serde_json::json!({"@odata.context": format!("{base}/$metadata#Machines"), "value": machines}))
    }

    /// `GET /api/deviceavinfo`: onboarded machines that report antivirus health.
    pub(crate) fn av_info(&self, tenant: &str, query: &str, base: &str) -> Result<Value, ApiError> {
        let q = Query::parse(query, &DEVICE_AV_SCHEMA, false)?;
        let onboarded =
            |r: &&Record| r.machine["onboardingStatus"].as_str().is_some_and(|s| s.eq_ignore_ascii_case("Onboarded"));
        let rows: Vec<Value> = self
            .tenants
            .get(tenant)
            .map(|t| {
                t.records
                    .iter()
                    .filter(onboarded)
                    .filter_map(|r| r.av.as_ref().map(|av| av_row(&r.machine, av, r.refreshed)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(q.page_with(rows, base, "deviceavinfo", "DeviceAvInfo", AV_PAGING))
    }
}

fn odata_error(msg: impl Into<String>) -> ApiError {
    ApiError::new(400, "ODataError", msg)
}

/// `findbyip(ip='10.0.0.1',timestamp=2024-05-01T10:00:00Z)`: the IP quoted, the time not.
fn parse_find_by_ip(call: &str) -> Result<(IpAddr, Timestamp), ApiError> {
    let args = call
        .get("findbyip(".len()..)
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| odata_error(format!("Bad request: malformed function call '{call}'")))?;
    let (mut ip, mut timestamp) = (None, None);
    for part in args.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, value) = part.split_once('=').ok_or_else(|| odata_error(format!("Syntax error at '{part}'")))?;
        match name.trim().to_ascii_lowercase().as_str() {
            "ip" => ip = Some(value.trim()),
            "timestamp" => timestamp = Some(value.trim()),
            other => return Err(odata_error(format!("The parameter '{other}' is not in scope"))),
        }
    }
    let missing = |p: &str| ApiError::new(400, "MissingRequiredParameter", format!("Parameter {p} is missing"));
    let ip = ip.ok_or_else(|| missing("ip"))?;
    let ip = ip
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .ok_or_else(|| odata_error(format!("The ip parameter must be a string literal: {ip}")))?;
    let ip = ip
        .parse::<IpAddr>()
        .map_err(|_| ApiError::new(400, "InvalidIpAddress", format!("IP address {ip} is invalid")))?;
    let timestamp = timestamp.ok_or_else(|| missing("timestamp"))?;
    let at = parse_time(timestamp)
        .ok_or_else(|| odata_error(format!("'{timestamp}' is not a valid Edm.DateTimeOffset literal")))?;
    Ok((ip, at))
}

/// The tag call's body: property names are case-sensitive, the Action value is not.
fn parse_tag_body(body: &Value) -> Result<(String, bool), ApiError> {
    let obj = body.as_object().ok_or_else(|| ApiError::new(400, "InvalidRequestBody", "Request body is incorrect"))?;
    let text = |name: &str| match obj.get(name) {
        None | Some(Value::Null) => {
            Err(ApiError::new(400, "MissingRequiredParameter", format!("Parameter {name} is missing")))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::new(
            400,
            "InvalidRequestBody",
            format!("Request body is incorrect: '{name}' must be a string"),
        )),
    };
    let tag = text("Value")?;
    let action = text("Action")?;
    if tag.trim().is_empty() || tag.chars().count() > MAX_TAG_LEN {
        return Err(ApiError::new(
            400,
            "InvalidInput",
            format!("Invalid input Value: a tag has 1 to {MAX_TAG_LEN} characters"),
        ));
    }
    let add = match action.to_ascii_lowercase().as_str() {
        "add" => true,
        "remove" => false,
        _ => {
            return Err(ApiError::new(
                400,
                "InvalidInput",
                format!("Invalid input Action: '{action}'. Allowed values are 'Add' and 'Remove'"),
            ));
        }
    };
    Ok((tag, add))
}

/// Adds `tag` to a machine's `machineTags` once, or removes it.
fn apply_tag(machine: &mut Value, tag: &str, add: bool) {
    if !machine["machineTags"].is_array() {
        machine["machineTags"] = Value::Array(Vec::new());
    }
    let tags = machine["machineTags"].as_array_mut().expect("an array");
    let present = tags.iter().any(|v| v.as_str() == Some(tag));
    if add && !present {
        tags.push(Value::String(tag.to_owned()));
    } else if !add {
        tags.retain(|v| v.as_str() != Some(tag));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_by_ip_call_syntax() {
        let (ip, at) = parse_find_by_ip("findbyip(ip='10.248.240.38',timestamp=2019-09-22T08:44:05Z)").unwrap();
        assert_eq!(ip.to_string(), "10.248.240.38");
        assert_eq!(at.to_string(), "2019-09-22T08:44:05Z");
        for (bad, code) in [
            ("findbyip(timestamp=2019-09-22T08:44:05Z)", "MissingRequiredParameter"),
            ("findbyip(ip='10.0.0.1')", "MissingRequiredParameter"),
            ("findbyip(ip='nope',timestamp=2019-09-22T08:44:05Z)", "InvalidIpAddress"),
            ("findbyip(ip=10.0.0.1,timestamp=2019-09-22T08:44:05Z)", "ODataError"),
            ("findbyip(ip='10.0.0.1',timestamp='2019-09-22T08:44:05Z')", "ODataError"),
            ("findbyip(ip='10.0.0.1',when=2019-09-22T08:44:05Z)", "ODataError"),
            ("findbyip(ip='10.0.0.1'", "ODataError"),
        ] {
            assert_eq!(parse_find_by_ip(bad).unwrap_err().code, code, "{bad}");
        }
    }

    #[test]
    fn tag_body_keys_are_case_sensitive() {
        let ok = serde_json::json!({"Value": "probe runner", "Action": "remove"});
        assert_eq!(parse_tag_body(&ok).unwrap(), ("probe runner".into(), false));
        for (bad, code) in [
            (serde_json::json!({"value": "x", "action": "Add"}), "MissingRequiredParameter"),
            (serde_json::json!({"Value": "x"}), "MissingRequiredParameter"),
            (serde_json::json!({"Value": "x", "Action": "Toggle"}), "InvalidInput"),
            (serde_json::json!({"Value": " ", "Action": "Add"}), "InvalidInput"),
            (serde_json::json!({"Value": 3, "Action": "Add"}), "InvalidRequestBody"),
            (serde_json::json!(["x"]), "InvalidRequestBody"),
        ] {
            assert_eq!(parse_tag_body(&bad).unwrap_err().code, code, "{bad}");
        }
    }
}
