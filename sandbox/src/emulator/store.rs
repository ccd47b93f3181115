//! The per-tenant indicator store: validation, upsert, import, delete, listing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::odata::{Kind, Schema};

pub(crate) const INDICATOR_TYPES: &[&str] =
    &["FileSha1", "FileSha256", "FileMd5", "CertificateThumbprint", "IpAddress", "DomainName", "Url"];
pub(crate) const ACTIONS: &[&str] =
    &["Warn", "Block", "Audit", "Alert", "AlertAndBlock", "BlockAndRemediate", "Allowed"];
pub(crate) const SEVERITIES: &[&str] = &["Informational", "Low", "Medium", "High"];

/// Filterable properties of `GET /api/indicators` (get-ti-indicators-collection).
pub(crate) const INDICATOR_SCHEMA: Schema = Schema {
    entity: "Indicator",
    fields: &[
        ("id", Kind::Str),
        ("application", Kind::Str),
        ("createdByDisplayName", Kind::Str),
        ("expirationTime", Kind::DateTime),
        ("generateAlert", Kind::Bool),
        ("title", Kind::Str),
        ("indicatorValue", Kind::Str),
        ("indicatorType", Kind::Enum(INDICATOR_TYPES)),
        ("creationTimeDateTimeUtc", Kind::DateTime),
        ("lastUpdateTime", Kind::DateTime),
        ("createdBy", Kind::Str),
        ("action", Kind::Enum(ACTIONS)),
        ("severity", Kind::Enum(SEVERITIES)),
        ("externalId", Kind::Str),
    ],
};

/// Formats a timestamp as Defender does: UTC with 7 fractional digits.
pub(crate) fn fmt_time(t: Timestamp) -> String {
    format!("{}.{:07}Z", t.strftime("%Y-%m-%dT%H:%M:%S"), t.subsec_nanosecond() / 100)
}

/// A 4xx answer of the indicators API: status, error code, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
}

/// A validated indicator from a request body.
#[derive(Clone, Debug)]
pub(crate) struct Input {
    pub id: Option<u64>,
    pub value: String,
    pub itype: &'static str,
    pub action: &'static str,
    pub title: String,
    pub description: String,
    pub application: Option<String>,
    pub expiration: Option<Timestamp>,
    pub severity: &'static str,
    pub recommended_actions: Option<String>,
    pub rbac_group_names: Vec<String>,
    pub rbac_group_ids: Vec<Value>,
    pub generate_alert: bool,
    pub external_id: Option<String>,
    pub educate_url: Option<String>,
}

fn canon(list: &'static [&'static str], s: &str) -> Option<&'static str> {
    list.iter().copied().find(|v| v.eq_ignore_ascii_case(s))
}

fn parse_time(s: &str) -> Option<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    // .NET's DateTimeOffset also accepts a value without offset (taken as UTC here).
    if let Ok(dt) = s.trim_end_matches('Z').parse::<jiff::civil::DateTime>() {
        return dt.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp());
    }
    None
}

fn is_hex(s: &str, lens: &[usize]) -> bool {
    lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    s.contains('.')
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn validate_value(itype: &str, value: &str) -> Result<(), ApiError> {
    let bad_hash = || ApiError::bad("InvalidHashValue", format!("Hash value {value} is invalid"));
    match itype {
        "FileSha1" => is_hex(value, &[40]).then_some(()).ok_or_else(bad_hash),
        "FileSha256" => is_hex(value, &[64]).then_some(()).ok_or_else(bad_hash),
        "FileMd5" => is_hex(value, &[32]).then_some(()).ok_or_else(bad_hash),
        "CertificateThumbprint" => is_hex(value, &[40, 64]).then_some(()).ok_or_else(bad_hash),
        "IpAddress" => value.parse::<std::net::IpAddr>().map(|_| ()).map_err(|_| {
            ApiError::bad("InvalidIpAddress", format!("Ip address {value} is invalid (CIDR notation is not supported)"))
        }),
        "DomainName" => is_domain(value)
            .then_some(())
            .ok_or_else(|| ApiError::bad("InvalidDomainName", format!("Domain name {value} is invalid"))),
        _ => {
            // Url: with or without scheme; a host is required.
            let with_scheme = if value.contains("://") { value.to_owned() } else { format!("http://{value}") };
            match url::Url::parse(&with_scheme) {
                Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) && !value.chars().any(char::is_whitespace) => {
                    Ok(())
                }
                _ => Err(ApiError::bad("InvalidUrl", format!("Url {value} is invalid"))),
            }
        }
    }
}

/// Validates one indicator body (post-ti-indicator). Property names are case-sensitive.
pub(crate) fn validate(body: &Value) -> Result<Input, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::bad("InvalidRequestBody", "Request body is incorrect"));
    };
    let string = |name: &str| -> Result<Option<String>, ApiError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::bad(
                "InvalidRequestBody",
                format!("Request body is incorrect: '{name}' must be a string"),
            )),
        }
    };
    let required = |name: &str| -> Result<String, ApiError> {
        string(name)?.ok_or_else(|| ApiError::bad("MissingRequiredParameter", format!("Parameter {name} is missing")))
    };
    let value = required("indicatorValue")?;
    let itype_raw = required("indicatorType")?;
    let action_raw = required("action")?;
    let title = required("title")?;
    let description = required("description")?;
    if value.is_empty() {
        return Err(ApiError::bad("InvalidInput", "Recieved an empty indicator value."));
    }
    for (name, v) in [("title", &title), ("description", &description)] {
        if v.trim().is_empty() {
            return Err(ApiError::bad("MissingRequiredParameter", format!("Parameter {name} is missing")));
        }
    }
    let itype = canon(INDICATOR_TYPES, &itype_raw).ok_or_else(|| {
        ApiError::bad(
            "InvalidRequestBody",
            format!("Request body is incorrect: '{itype_raw}' is not a valid indicatorType"),
        )
    })?;
    let action = canon(ACTIONS, &action_raw).ok_or_else(|| {
        ApiError::bad("InvalidRequestBody", format!("Request body is incorrect: '{action_raw}' is not a valid action"))
    })?;
    validate_value(itype, &value)?;
    let severity = match string("severity")? {
        None => "Informational",
        Some(s) => canon(SEVERITIES, &s).ok_or_else(|| {
            ApiError::bad("InvalidRequestBody", format!("Request body is incorrect: '{s}' is not a valid severity"))
        })?,
    };
    let expiration = match string("expirationTime")? {
        None => None,
        Some(s) => Some(parse_time(&s).ok_or_else(|| {
            ApiError::bad(
                "InvalidRequestBody",
                format!("Request body is incorrect: '{s}' is not a valid expirationTime"),
            )
        })?),
    };
    let generate_alert = match obj.get("generateAlert") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(_) => {
            return Err(ApiError::bad(
                "InvalidRequestBody",
                "Request body is incorrect: 'generateAlert' must be a boolean",
            ));
        }
    };
    if action == "Audit" && !generate_alert {
        return Err(ApiError::bad("InvalidInput", "Invalid input generateAlert: it must be true when action is Audit"));
    }
    if action == "BlockAndRemediate" && matches!(itype, "IpAddress" | "DomainName" | "Url") {
        return Err(ApiError::bad(
            "InvalidInput",
            format!("Invalid input action: BlockAndRemediate is not supported for {itype}"),
        ));
    }
    let rbac_group_names = match obj.get("rbacGroupNames") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.split(',').map(|g| g.trim().to_owned()).filter(|g| !g.is_empty()).collect(),
        Some(Value::Array(a)) => {
            a.iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>().ok_or_else(|| {
                ApiError::bad("InvalidRequestBody", "Request body is incorrect: 'rbacGroupNames' must hold strings")
            })?
        }
        Some(_) => return Err(ApiError::bad("InvalidRequestBody", "Request body is incorrect: 'rbacGroupNames'")),
    };
    let rbac_group_ids = match obj.get("rbacGroupIds") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(ApiError::bad("InvalidRequestBody", "Request body is incorrect: 'rbacGroupIds'")),
    };
    let external_id = match string("externalId")? {
        Some(e) => Some(e),
        None => string("externalID")?,
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) => s.parse().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    Ok(Input {
        id,
        value,
        itype,
        action,
        title,
        description,
        application: string("application")?,
        expiration,
        severity,
        recommended_actions: string("recommendedActions")?,
        rbac_group_names,
        rbac_group_ids,
        generate_alert,
        external_id,
        educate_url: string("educateUrl")?,
    })
}

/// Who is writing: an app through the API, or a portal user.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// App id (`createdBy`) or a UPN for portal users.
    pub who: String,
    /// True for apps that only hold `Ti.ReadWrite`: they see and touch only their own indicators.
    pub own_only: bool,
    pub portal: bool,
}

#[derive(Clone, Debug)]
struct Stored {
    id: u64,
    input: Input,
    key: (String, String, Vec<String>),
    source_type: &'static str,
    created_by: String,
    created: Timestamp,
    last_update: Timestamp,
    last_updated_by: Option<String>,
}

impl Stored {
    fn json(&self) -> Value {
        let i = &self.input;
        json!({
            "id": self.id.to_string(),
            "indicatorValue": i.value,
            "indicatorType": i.itype,
            "action": i.action,
            "application": i.application,
            "source": self.created_by,
            "sourceType": self.source_type,
            "createdBy": self.created_by,
            "createdByDisplayName": self.created_by,
            "createdBySource": self.created_by,
            "severity": i.severity,
            "title": i.title,
            "description": i.description,
            "recommendedActions": i.recommended_actions.clone().unwrap_or_default(),
            "rbacGroupNames": i.rbac_group_names,
            "rbacGroupIds": i.rbac_group_ids,
            "generateAlert": i.generate_alert,
            "externalId": i.external_id,
            "educateUrl": i.educate_url,
            "expirationTime": i.expiration.map(fmt_time),
            "creationTimeDateTimeUtc": fmt_time(self.created),
            "lastUpdateTime": fmt_time(self.last_update),
            "lastUpdatedBy": self.last_updated_by,
            "mitreTechniques": [],
            "category": 1,
            "historicalDetection": false,
            "lookBackPeriod": null,
            "bypassDurationHours": null,
            "notificationId": null,
            "notificationBody": null,
            "version": null,
        })
    }
}

type Key = (String, String, Vec<String>);

fn key_of(i: &Input) -> Key {
    let mut groups: Vec<String> = i.rbac_group_names.iter().map(|g| g.to_lowercase()).collect();
    groups.sort();
    (i.itype.to_owned(), i.value.to_lowercase(), groups)
}

/// Why an upsert was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UpsertError {
    /// The tenant holds `cap` active indicators already.
    Cap,
    /// An own-only app matched another app's indicator.
    NotOwner(u64),
}

/// One tenant's indicators, indexed by upsert key and by expiry.
#[derive(Debug, Default)]
struct TenantStore {
    items: BTreeMap<u64, Stored>,
    by_key: HashMap<Key, BTreeSet<u64>>,
    expiries: BTreeSet<(Timestamp, u64)>,
}

impl TenantStore {
    fn insert(&mut self, s: Stored) {
        self.by_key.entry(s.key.clone()).or_default().insert(s.id);
        if let Some(e) = s.input.expiration {
            self.expiries.insert((e, s.id));
        }
        self.items.insert(s.id, s);
    }

    fn remove(&mut self, id: u64) -> Option<Stored> {
        let s = self.items.remove(&id)?;
        if let Some(ids) = self.by_key.get_mut(&s.key) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_key.remove(&s.key);
            }
        }
        if let Some(e) = s.input.expiration {
            self.expiries.remove(&(e, id));
        }
        Some(s)
    }

    fn expired(&self, now: Timestamp) -> Vec<u64> {
        self.expiries.iter().take_while(|(e, _)| *e <= now).map(|(_, id)| *id).collect()
    }

    fn active_count(&self, now: Timestamp) -> usize {
        self.items.len() - self.expiries.iter().take_while(|(e, _)| *e <= now).count()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    tenants: HashMap<String, TenantStore>,
    next_id: u64,
}

fn visible_to(caller: Option<&Caller>, s: &Stored) -> bool {
    caller.is_none_or(|c| !c.own_only || s.created_by == c.who)
}

impl Store {
    pub(crate) fn new() -> Self {
        Self { tenants: HashMap::new(), next_id: 1001 }
    }

    /// Removes expired indicators when `purge` is set (Defender deletes them at expiry).
    pub(crate) fn purge(&mut self, tenant: &str, purge: bool, now: Timestamp) {
        if purge && let Some(t) = self.tenants.get_mut(tenant) {
            for id in t.expired(now) {
                t.remove(id);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn active_count(&self, tenant: &str, now: Timestamp) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.active_count(now))
    }

    /// Creates or updates; returns the entity JSON.
    pub(crate) fn upsert(
        &mut self,
        tenant: &str,
        input: Input,
        caller: &Caller,
        cap: Option<usize>,
        now: Timestamp,
    ) -> Result<Value, UpsertError> {
        let key = key_of(&input);
        let t = self.tenants.entry(tenant.to_owned()).or_default();
        let existing =
            input.id.filter(|id| t.items.get(id).is_some_and(|s| visible_to(Some(caller), s))).or_else(|| {
                let ids = t.by_key.get(&key)?;
                // Prefer one the caller may update.
                ids.iter().copied().find(|id| visible_to(Some(caller), &t.items[id])).or(ids.first().copied())
            });
        if let Some(id) = existing {
            if !visible_to(Some(caller), &t.items[&id]) {
                return Err(UpsertError::NotOwner(id));
            }
            let mut s = t.remove(id).expect("found above");
            let application = s.input.application.take(); // applied only on create
            s.input = Input { application, id: Some(id), ..input };
            s.key = key;
            s.last_update = now;
            s.last_updated_by = Some(caller.who.clone());
            let json = s.json();
            t.insert(s);
            return Ok(json);
        }
        if cap.is_some_and(|cap| t.active_count(now) >= cap) {
            return Err(UpsertError::Cap);
        }
        let id = self.next_id;
        self.next_id += 1;
        let s = Stored {
            id,
            input: Input { id: Some(id), ..input },
            key,
            source_type: if caller.portal { "User" } else { "AadApp" },
            created_by: caller.who.clone(),
            created: now,
            last_update: now,
            last_updated_by: None,
        };
        let json = s.json();
        t.insert(s);
        Ok(json)
    }

    /// Indicators visible to `caller` (all when `None`), ordered by id.
    pub(crate) fn list(&self, tenant: &str, caller: Option<&Caller>) -> Vec<Value> {
        self.tenants
            .get(tenant)
            .map(|t| t.items.values().filter(|s| visible_to(caller, s)).map(Stored::json).collect())
            .unwrap_or_default()
    }

    /// Whether an indicator with this value (any type, any case) is held: cheap, no JSON.
    pub(crate) fn holds_value(&self, tenant: &str, value: &str) -> bool {
        let value = value.to_lowercase();
        self.tenants.get(tenant).is_some_and(|t| t.by_key.keys().any(|(_, v, _)| *v == value))
    }

    pub(crate) fn get(&self, tenant: &str, id: &str, caller: Option<&Caller>) -> Option<Value> {
        let id: u64 = id.parse().ok()?;
        let s = self.tenants.get(tenant)?.items.get(&id)?;
        visible_to(caller, s).then(|| s.json())
    }

    /// Deletes one; false when not found (or not visible to the caller).
    pub(crate) fn delete(&mut self, tenant: &str, id: &str, caller: Option<&Caller>) -> bool {
        let Ok(id) = id.parse::<u64>() else { return false };
        let Some(t) = self.tenants.get_mut(tenant) else { return false };
        if t.items.get(&id).is_some_and(|s| visible_to(caller, s)) {
            t.remove(id);
            true
        } else {
            false
        }
    }
}

/// Builds an `{"error": ...}`-less per-item import result.
pub(crate) fn import_result(id: Option<&str>, indicator: Option<&str>, failure: Option<String>) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), id.map_or(Value::Null, |i| Value::String(i.into())));
    m.insert("indicator".into(), indicator.map_or(Value::Null, |i| Value::String(i.into())));
    m.insert("isFailed".into(), Value::Bool(failure.is_some()));
    m.insert("failureReason".into(), failure.map_or(Value::Null, Value::String));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: &str) -> Value {
        json!({"indicatorValue": value, "indicatorType": "FileSha256", "action": "Block", "title": "t", "description": "d"})
    }

    #[test]
    fn validation_codes() {
        let sha = "a".repeat(64);
        assert!(validate(&body(&sha)).is_ok());
        assert_eq!(validate(&body("xyz")).unwrap_err().code, "InvalidHashValue");
        let mut b = body(&sha);
        b.as_object_mut().unwrap().remove("title");
        assert_eq!(validate(&b).unwrap_err().message, "Parameter title is missing");
        let mut b = body(&sha);
        b["IndicatorValue"] = b["indicatorValue"].take();
        b.as_object_mut().unwrap().remove("indicatorValue");
        assert_eq!(validate(&b).unwrap_err().code, "MissingRequiredParameter");
        let mut b = body(&sha);
        b["action"] = json!("Audit");
        assert_eq!(validate(&b).unwrap_err().status, 400);
        b["generateAlert"] = json!(true);
        assert!(validate(&b).is_ok());
        let ip = json!({"indicatorValue": "10.0.0.0/8", "indicatorType": "IpAddress", "action": "Block", "title": "t", "description": "d"});
        assert_eq!(validate(&ip).unwrap_err().code, "InvalidIpAddress");
        let mut b = body(&sha);
        b["externalID"] = json!("x");
        assert_eq!(validate(&b).unwrap().external_id.as_deref(), Some("x"));
    }

    #[test]
    fn seven_fraction_digits() {
        let t: Timestamp = "2019-12-19T09:09:46.9139216Z".parse().unwrap();
        assert_eq!(fmt_time(t), "2019-12-19T09:09:46.9139216Z");
        let t: Timestamp = "2020-12-12T00:00:00Z".parse().unwrap();
        assert_eq!(fmt_time(t), "2020-12-12T00:00:00.0000000Z");
    }

    #[test]
    fn upsert_keeps_id_and_application() {
        let mut s = Store::new();
        let now = Timestamp::now();
        let app = Caller { who: "app".into(), own_only: false, portal: false };
        let sha = "b".repeat(64);
        let mut i = validate(&body(&sha)).unwrap();
        i.application = Some("first".into());
        let a = s.upsert("t", i.clone(), &app, Some(10), now).unwrap();
        i.application = Some("second".into());
        i.value = sha.to_uppercase();
        i.title = "new".into();
        let b = s.upsert("t", i, &app, Some(10), now).unwrap();
        assert_eq!(a["id"], b["id"]);
        assert_eq!(b["application"], "first");
        assert_eq!(b["title"], "new");
        assert_eq!(s.active_count("t", now), 1);
    }
}
