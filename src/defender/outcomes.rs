//! Machines, antivirus health and alerts: the wire types and the calls that tell what Defender did
//! about a test (the outcome correlation), and the machine tag call.
//!
//! Lists page as Defender documents it: `$top` with `$skip` until a short page (machines give no
//! `@odata.nextLink` with `$top`), or the `@odata.nextLink` when one is given (`send` checks it
//! against the allow-list like any URL). Entities are read leniently: fields the operator does not
//! use are ignored, numbers where strings are documented are accepted, and an item that cannot be
//! read at all is skipped (and counted in the log) rather than failing the whole list.

use std::collections::HashSet;

use jiff::Timestamp;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use url::Url;

use super::client::{Page, encode_query_value};
use super::error::api_error;
use super::{DefenderClient, DefenderError, EndpointClass};

/// Most machines one tag call names (`AddOrRemoveTagForMultipleMachines`).
pub const MAX_TAG_BATCH: usize = 500;

/// A machine (`GET /api/machines`), the fields the operator uses.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub id: String,
    #[serde(default, deserialize_with = "text")]
    pub computer_dns_name: Option<String>,
    #[serde(default, deserialize_with = "time")]
    pub last_seen: Option<Timestamp>,
    #[serde(default, deserialize_with = "text")]
    pub last_ip_address: Option<String>,
    /// `Active`, `Inactive`, `ImpairedCommunication`, `NoSensorData`, ...
    #[serde(default, deserialize_with = "text")]
    pub health_status: Option<String>,
    /// `Onboarded` (observed), `onboarded` (documented), `CanBeOnboarded`, `Unsupported`,
    /// `InsufficientInfo`; the documentation spells the key `onboardingstatus`.
    #[serde(default, alias = "onboardingstatus", deserialize_with = "text")]
    pub onboarding_status: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub os_platform: Option<String>,
    #[serde(default, deserialize_with = "texts")]
    pub machine_tags: Vec<String>,
}

/// A machine's antivirus health (`GET /api/deviceavinfo`), the fields the operator uses.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AvInfo {
    #[serde(default, deserialize_with = "text")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub machine_id: Option<String>,
    /// `"0"` active, `"1"` passive, `"2"` disabled, `"3"`/`""` other, `"4"` EDR in block mode,
    /// `"5"` passive audit.
    #[serde(default, deserialize_with = "text")]
    pub av_mode: Option<String>,
    /// The antimalware client ("platform") version, e.g. `4.18.2206.108`.
    #[serde(default, deserialize_with = "text")]
    pub av_platform_version: Option<String>,
    /// `windows`, `mac`, `linux`.
    #[serde(default, deserialize_with = "text")]
    pub os_kind: Option<String>,
}

impl AvInfo {
    /// The machine this row is about (`machineId`, else `id`, which is the same).
    pub fn machine(&self) -> Option<&str> {
        self.machine_id.as_deref().or(self.id.as_deref())
    }
}

/// An alert (`GET /api/alerts?$expand=evidence`), the fields the operator uses.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub id: String,
    #[serde(default, deserialize_with = "text")]
    pub title: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub severity: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub machine_id: Option<String>,
    #[serde(default, deserialize_with = "time")]
    pub alert_creation_time: Option<Timestamp>,
    #[serde(default, deserialize_with = "time")]
    pub last_update_time: Option<Timestamp>,
    #[serde(default, deserialize_with = "evidence")]
    pub evidence: Vec<Evidence>,
}

/// One evidence item of an alert: a file's hashes and what Defender did about it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    #[serde(default, deserialize_with = "text")]
    pub entity_type: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub sha1: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub sha256: Option<String>,
    /// `Detected`, `Prevented`, `Blocked` (observed), or null.
    #[serde(default, deserialize_with = "text")]
    pub detection_status: Option<String>,
}

/// A string, number or boolean as text; null (or anything else) as none.
fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// An RFC 3339 time; anything unreadable as none.
fn time<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Timestamp>, D::Error> {
    Ok(text(deserializer)?.and_then(|s| s.trim().parse().ok()))
}

/// A list of strings; null as empty, items that are not text left out.
fn texts<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Array(items) => items.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    })
}

/// Evidence items; null as none, unreadable items left out.
fn evidence<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Evidence>, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Array(items) => items.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect(),
        _ => Vec::new(),
    })
}

/// An OData DateTimeOffset literal (unquoted), to the second.
pub fn odata_time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// An OData string literal: single quotes doubled.
pub fn odata_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl DefenderClient {
    /// Every machine of the tenant (`$top` pages, `$skip`). A tenant without machines (404, as
    /// the documentation says, or an empty list, as observed) gives none.
    pub async fn list_machines(&self) -> Result<Vec<Machine>, DefenderError> {
        self.list_all(EndpointClass::Machines, "/api/machines", "", |m: &Machine| m.id.clone()).await
    }

    /// Machines matching an OData `$filter`, e.g. `startswith(computerDnsName,'laptop-7')`.
    pub async fn find_machines(&self, filter: &str) -> Result<Vec<Machine>, DefenderError> {
        let extra = format!("&$filter={}", encode_query_value(filter));
        self.list_all(EndpointClass::Machines, "/api/machines", &extra, |m: &Machine| m.id.clone()).await
    }

    /// `GET /api/machines/{id}`; an unknown id gives none.
    pub async fn machine(&self, id: &str) -> Result<Option<Machine>, DefenderError> {
        let mut url = self.url("/api/machines")?;
        url.path_segments_mut().map_err(|_| DefenderError::Config("bad API URL".into()))?.push(id.trim());
        let (status, body) = self.send(EndpointClass::Machines, Method::GET, url, None).await?;
        match status {
            200 => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| DefenderError::Protocol(format!("machine {id}: {e}"))),
            404 => Ok(None),
            _ => Err(api_error(status, &body)),
        }
    }

    /// Antivirus health of every machine that reports it, or of those `filter` selects (e.g.
    /// `machineId eq '…'`).
    pub async fn list_av_info(&self, filter: Option<&str>) -> Result<Vec<AvInfo>, DefenderError> {
        let extra = filter.map(|f| format!("&$filter={}", encode_query_value(f))).unwrap_or_default();
        let key = |a: &AvInfo| a.machine().unwrap_or_default().to_ascii_lowercase();
        self.list_all(EndpointClass::AvInfo, "/api/deviceavinfo", &extra, key).await
    }

    /// Alerts created or updated since `since`, with their evidence.
    pub async fn list_alerts_updated_since(&self, since: Timestamp) -> Result<Vec<Alert>, DefenderError> {
        let filter = format!("lastUpdateTime ge {}", odata_time(since));
        let extra = format!("&$filter={}&$expand=evidence", encode_query_value(&filter));
        self.list_all(EndpointClass::Alerts, "/api/alerts", &extra, |a: &Alert| a.id.clone()).await
    }

    /// Adds `tag` to the machines (`AddOrRemoveTagForMultipleMachines`, 500 a call).
    pub async fn tag_machines(&self, ids: &[String], tag: &str) -> Result<(), DefenderError> {
        for chunk in ids.chunks(MAX_TAG_BATCH) {
            let body = serde_json::json!({"Value": tag, "Action": "Add", "MachineIds": chunk});
            let url = self.url("/api/machines/AddOrRemoveTagForMultipleMachines")?;
            let (status, bytes) = self.send(EndpointClass::Machines, Method::POST, url, Some(&body)).await?;
            if !(200..300).contains(&status) {
                return Err(api_error(status, &bytes));
            }
        }
        Ok(())
    }

    /// Every item of a list, following paging; deduplicated by `key`. `extra` is more of the
    /// query (encoded, starting with `&`).
    async fn list_all<T: DeserializeOwned>(
        &self,
        class: EndpointClass,
        path: &str,
        extra: &str,
        key: impl Fn(&T) -> String,
    ) -> Result<Vec<T>, DefenderError> {
        let top = self.page_size();
        let page_url = |skip: usize| {
            let skip_q = if skip > 0 { format!("&$skip={skip}") } else { String::new() };
            self.url_with_query(path, &format!("$top={top}{skip_q}{extra}"))
        };
        let (mut out, mut seen, mut visited) = (Vec::new(), HashSet::new(), HashSet::new());
        let (mut skip, mut unreadable) = (0usize, 0usize);
        let mut url: Url = page_url(0)?;
        for page in 0..10_000 {
            if !visited.insert(url.to_string()) {
                return Err(DefenderError::Protocol(format!("{path} paging loops back to a page already read")));
            }
            let (status, body) = self.send(class, Method::GET, url.clone(), None).await?;
            if status == 404 && page == 0 && path == "/api/machines" {
                return Ok(out);
            }
            if status != 200 {
                return Err(api_error(status, &body));
            }
            let (items, next_link, count, skipped) = read_page::<T>(&body, path)?;
            unreadable += skipped;
            for item in items {
                if seen.insert(key(&item)) {
                    out.push(item);
                }
            }
            skip += count;
            match next_link {
                Some(link) => {
                    url = Url::options()
                        .base_url(Some(&url))
                        .parse(&link)
                        .map_err(|e| DefenderError::Protocol(format!("invalid @odata.nextLink: {e}")))?;
                }
                None if count >= top => url = page_url(skip)?,
                None => {
                    if unreadable > 0 {
                        tracing::warn!(path, unreadable, "skipped items of a Defender list the operator cannot read");
                    }
                    return Ok(out);
                }
            }
        }
        Err(DefenderError::Protocol(format!("{path} paging did not end")))
    }
}

type PageOf<T> = (Vec<T>, Option<String>, usize, usize);

/// A list page: its readable items, its next link, how many items it had, how many were skipped.
fn read_page<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<PageOf<T>, DefenderError> {
    let page: Page =
        serde_json::from_slice(body).map_err(|e| DefenderError::Protocol(format!("{what} list is not JSON: {e}")))?;
    let items = page.value.ok_or_else(|| DefenderError::Protocol(format!("{what} list without `value`")))?;
    let count = items.len();
    // An item that cannot be read is skipped (and counted), not the page.
    let read: Vec<T> = items.iter().filter_map(|item| serde_json::from_str(item.get()).ok()).collect();
    let skipped = count - read.len();
    let next = page.next_link.map(|l| l.trim().to_string()).filter(|l| !l.is_empty());
    Ok((read, next, count, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_are_read_leniently() {
        let machine: Machine = serde_json::from_value(serde_json::json!({
            "id": "1e5bc9d7e413ddd7902c2932e418702b84d0cc07", "computerDnsName": "mymachine1.contoso.com",
            "lastSeen": "2018-08-02T14:55:03.7791856Z", "onboardingstatus": "onboarded", "healthStatus": "Active",
            "lastIpAddress": null, "machineTags": null, "rbacGroupId": 140, "osBuild": 18209
        }))
        .unwrap();
        assert_eq!(machine.onboarding_status.as_deref(), Some("onboarded"));
        assert_eq!(machine.last_seen.unwrap().to_string(), "2018-08-02T14:55:03.7791856Z");
        assert!(machine.machine_tags.is_empty() && machine.last_ip_address.is_none());

        let av: AvInfo = serde_json::from_value(serde_json::json!({"id": "m", "avMode": 0})).unwrap();
        assert_eq!((av.machine(), av.av_mode.as_deref()), (Some("m"), Some("0")));

        let alert: Alert = serde_json::from_value(serde_json::json!({
            "id": "da1_2", "alertCreationTime": "not a time", "evidence": [
                {"entityType": "File", "sha256": "AB", "detectionStatus": "Prevented"}, 42, null]
        }))
        .unwrap();
        assert_eq!(alert.alert_creation_time, None);
        assert_eq!(alert.evidence.len(), 1, "unreadable items left out");
        let none: Alert = serde_json::from_value(serde_json::json!({"id": "x", "evidence": null})).unwrap();
        assert!(none.evidence.is_empty());
    }

    #[test]
    fn a_page_skips_what_it_cannot_read() {
        let body = br#"{"value": [{"id": "a"}, {"noId": true}, {"id": "b"}], "@odata.nextLink": " "}"#;
        let (items, next, count, skipped) = read_page::<Machine>(body, "machine").unwrap();
        assert_eq!((items.len(), next, count, skipped), (2, None, 3, 1));
        assert!(read_page::<Machine>(b"{}", "machine").is_err());
    }

    #[test]
    fn odata_literals() {
        assert_eq!(odata_string("o'brien-pc"), "'o''brien-pc'");
        let at: Timestamp = "2026-01-02T03:04:05.678Z".parse().unwrap();
        assert_eq!(odata_time(at), "2026-01-02T03:04:05Z");
    }
}
