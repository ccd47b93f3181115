//! A Microsoft Entra + Defender for Endpoint emulator, faithful to the public API as Microsoft
//! documents it (not to what the operator's client happens to expect).
//!
//! One listener on `127.0.0.1:<random>` serves both the login authority
//! (`POST /{tenant}/oauth2/v2.0/token`, `POST /{tenant}/oauth2/token`) and the Defender API
//! (`/api/...` and `/api/v1.0/...`): indicators (list with OData, submit, import, delete,
//! BatchDelete), machines and alerts.
//!
//! Lifetime: [`Emulator`] is a cheap handle. The server stops when [`Emulator::shutdown`] is
//! called, or when the last clone of the handle is dropped (graceful; in-flight requests finish).
//!
//! Layout: `http` routes requests and answers them, `token` serves the Entra token endpoints and
//! verifies the JWTs they issue, `store` keeps the indicators, `odata` parses and evaluates
//! `$filter`, `query` applies the other OData query options and pages lists, `ratelimit` counts
//! calls per `endpoint`, `faults` injects failures on demand, `config` describes tenants and apps.
//!
//! Choices where Defender's behaviour is undocumented:
//! - Tokens: HS256 with a random per-emulator key; v1-style claims (`ver` 1.0, `appid`) from both
//!   endpoints; `roles` only when the app has roles and the resource is WindowsDefenderATP (tokens
//!   for `https://api.security.microsoft.com` — Microsoft Threat Protection — carry no roles, so
//!   the MDE API answers 403 to them).
//! - A scope/resource of another cloud: AADSTS90038 (`invalid_request`, 400) when it lives behind
//!   the other login host (commercial vs `.us`), else AADSTS500011 (the resource principal is not
//!   in the tenant). Unknown resources and tenants without Defender: AADSTS500011.
//! - `common`, `consumers` and `organizations`: AADSTS9001023 `invalid_request` 400. Missing
//!   parameters: AADSTS900144 `invalid_request` 400. Missing secret: AADSTS7000218 `invalid_client`
//!   401. Expired secret (the sent value matches an expired secret): AADSTS7000222 401. Token
//!   endpoint down: 503 `temporarily_unavailable` AADSTS50000.
//! - API check order: latency, hang, injected fault, token (401), rate limit (429), role (403),
//!   request. Rate limits count per (tenant, app, endpoint) — each endpoint its own budget;
//!   refused calls are not counted.
//! - Upsert key (indicatorType, lower-case value, sorted lower-case rbacGroupNames); an `id` in
//!   the body that names an existing indicator updates that one. `application` is kept from
//!   creation. Apps with only `Ti.ReadWrite` see and delete only their own indicators; updating
//!   another app's gives 403 `DisallowedOperation`.
//! - At the cap: single submit → 400 `BadRequest` "Maximum number of indicators reached ...";
//!   import → per-item `isFailed` with failureReason "Maximum number of indicators reached".
//! - Import: `{"Indicators": []}` → 400 `InvalidInput`; missing key (e.g. lower-case
//!   `indicators`) → 400 `MissingRequiredParameter`; failed items have `id: null`; results in
//!   request order; a value repeated in one import updates the first (same id).
//! - BatchDelete with some unknown ids: the known ones ARE deleted, then 404 `ResourceNotFound`
//!   naming the missing ids. Duplicate ids count once; a non-numeric id → 400 `InvalidInput`.
//! - POST bodies require `Content-Type: application/json` (else 415 `UnsupportedMediaType`).
//! - Lists are ordered by id; `@odata.nextLink` is emitted whenever rows remain after the page
//!   (with or without `$top`), pointing at the `Host` the client used. `$orderby`, `$select` and
//!   `$count` are supported too; unknown `$` options → 400 `ODataError`.
//! - String/enum comparisons in `$filter` are case-insensitive; DateTimeOffset properties must be
//!   compared with unquoted literals (quoted → `ODataError`, as ASP.NET OData does).
//! - `GET /api/indicators/{id}` (undocumented) is served (Endpoint::Other).
//! - Machines: two fake machines per provisioned tenant (404 when the list is empty, see
//!   [`Emulator::set_machines`]); alerts: one fake alert (`evidence` only with `$expand=evidence`).

mod config;
mod endpoint;
mod faults;
mod http;
mod odata;
mod query;
mod ratelimit;
mod store;
mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The national clouds a tenant can live in: each has its own login host and Defender resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Cloud {
    #[default]
    Commercial,
    Gcc,
    GccHigh,
    DoD,
}

pub use config::{AppConfig, AppSecret, EmulatorConfig, EmulatorLimits, TenantConfig, sandbox_values};
pub use endpoint::Endpoint;
pub use faults::Faults;
pub use http::CallRecord;
pub use token::{MDE_APP_ID, MTP_APP_ID};

use http::Shared;
use store::{Caller, Store};

/// Handle to a running emulator. Cheap to clone; see the module docs for its lifetime.
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
    server: Arc<Server>,
}

struct Server {
    url: url::Url,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn hex_id(seed: &str, len: usize) -> String {
    Sha256::digest(seed).iter().map(|b| format!("{b:02x}")).collect::<String>()[..len].to_owned()
}

fn default_machines(tenant: &str, domain: &str) -> Vec<Value> {
    let now = Timestamp::now();
    let day = jiff::SignedDuration::from_hours(24);
    (1..=2)
        .map(|i| {
            json!({
                "id": hex_id(&format!("machine:{tenant}:{i}"), 40),
                "computerDnsName": format!("sandbox-win11-{i:02}.{domain}"),
                "firstSeen": store::fmt_time(now - day * 30),
                "lastSeen": store::fmt_time(now - jiff::SignedDuration::from_mins(5 * i)),
                "osPlatform": "Windows11",
                "osProcessor": "x64",
                "version": "23H2",
                "osBuild": 22631,
                "healthStatus": "Active",
                "onboardingStatus": "onboarded",
                "deviceValue": "Normal",
                "rbacGroupId": 0,
                "rbacGroupName": null,
                "riskScore": "Low",
                "exposureLevel": "Medium",
                "isAadJoined": true,
                "aadDeviceId": uuid::Uuid::new_v4().to_string(),
                "machineTags": ["sandbox"],
                "lastIpAddress": format!("10.0.0.{}", 10 + i),
                "lastExternalIpAddress": format!("203.0.113.{}", 10 + i),
            })
        })
        .collect()
}

fn default_alerts(tenant: &str, domain: &str) -> Vec<Value> {
    let now = Timestamp::now();
    let t = store::fmt_time(now - jiff::SignedDuration::from_hours(2));
    vec![json!({
        "id": format!("da{}_{}", &hex_id(&format!("alert:{tenant}"), 16).chars().filter(char::is_ascii_digit).collect::<String>(), 1364969609),
        "incidentId": 7,
        "investigationId": null,
        "assignedTo": null,
        "severity": "Informational",
        "status": "New",
        "classification": null,
        "determination": null,
        "detectionSource": "WindowsDefenderAv",
        "category": "Malware",
        "title": "A sandbox test binary was blocked",
        "description": "Fake alert served by the Defender emulator.",
        "alertCreationTime": t,
        "firstEventTime": t,
        "lastEventTime": t,
        "lastUpdateTime": t,
        "resolvedTime": null,
        "machineId": hex_id(&format!("machine:{tenant}:1"), 40),
        "computerDnsName": format!("sandbox-win11-01.{domain}"),
        "evidence": [{
            "entityType": "File",
            "sha1": hex_id("evidence-sha1", 40),
            "sha256": hex_id("evidence-sha256", 64),
            "fileName": "probe.exe",
            "filePath": "C:\\ProgramData\\probe",
            "detectionStatus": "Blocked",
        }],
    })]
}

impl Emulator {
    /// Binds `127.0.0.1:0` and serves until shut down.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let mut machines = HashMap::new();
        let mut alerts = HashMap::new();
        for t in config.tenants.iter().filter(|t| t.defender_provisioned) {
            let id = t.id.to_ascii_lowercase();
            let domain = t.domains.first().cloned().unwrap_or_else(|| "sandbox.local".into());
            machines.insert(id.clone(), default_machines(&id, &domain));
            alerts.insert(id.clone(), default_alerts(&id, &domain));
        }
        let shared = Arc::new(Shared {
            latency: Mutex::new(config.latency),
            config,
            key: rand::random(),
            faults: Faults::default(),
            store: Mutex::new(Store::new()),
            limiter: Mutex::default(),
            calls: Mutex::default(),
            machines: Mutex::new(machines),
            alerts: Mutex::new(alerts),
        });
        let router = axum::Router::new().fallback(http::handle).with_state(shared.clone());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        let url = url::Url::parse(&format!("http://{addr}/")).expect("valid URL");
        Ok(Emulator { shared, server: Arc::new(Server { url, cancel, task: Mutex::new(Some(task)) }) })
    }

    /// `http://127.0.0.1:PORT/`: both the login authority and the API base.
    pub fn url(&self) -> url::Url {
        self.server.url.clone()
    }

    /// The active indicators of a tenant (GUID or domain), as the list API would return them to
    /// an app with `Ti.ReadWrite.All`, ordered by id.
    pub fn indicators(&self, tenant_id: &str) -> Vec<Value> {
        let tenant = self.shared.tenant_id(tenant_id);
        let mut store = self.shared.store.lock().unwrap();
        store.purge(&tenant, self.shared.config.purge_expired_on_read, Timestamp::now());
        store.list(&tenant, None)
    }

    /// Whether the tenant holds an active indicator with this value; cheap enough to poll.
    pub fn holds(&self, tenant_id: &str, value: &str) -> bool {
        let tenant = self.shared.tenant_id(tenant_id);
        let mut store = self.shared.store.lock().unwrap();
        store.purge(&tenant, self.shared.config.purge_expired_on_read, Timestamp::now());
        store.holds_value(&tenant, value)
    }

    /// Every request so far (token and API), in arrival order of their answers.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.shared.calls.lock().unwrap().clone()
    }

    pub fn clear_calls(&self) {
        self.shared.calls.lock().unwrap().clear();
    }

    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Latency added to every API (not token) call from now on.
    pub fn set_latency(&self, latency: Duration) {
        *self.shared.latency.lock().unwrap() = latency;
    }

    /// Creates (or updates, by the same upsert key) an indicator as a portal user would: not
    /// owned by any app, `sourceType` `User`. Missing `title`, `description` and `action` get
    /// defaults; the tenant cap is NOT enforced (handy to fill a tenant). Returns the id.
    ///
    /// # Panics
    /// When the indicator is invalid (bad type or value).
    pub fn insert_indicator(&self, tenant_id: &str, indicator: Value) -> String {
        let mut body = indicator;
        let obj = body.as_object_mut().expect("insert_indicator takes a JSON object");
        for (k, v) in [("title", "Added in the portal"), ("description", "Added in the portal"), ("action", "Block")] {
            obj.entry(k).or_insert_with(|| Value::String(v.into()));
        }
        let input = store::validate(&body).unwrap_or_else(|e| panic!("insert_indicator: {}: {}", e.code, e.message));
        let tenant = self.shared.tenant_id(tenant_id);
        let caller = Caller { who: "admin@sandbox.onmicrosoft.com".into(), own_only: false, portal: true };
        let now = Timestamp::now();
        let mut store = self.shared.store.lock().unwrap();
        store.purge(&tenant, self.shared.config.purge_expired_on_read, now);
        let v = store.upsert(&tenant, input, &caller, None, now).expect("no cap, no ownership check");
        v["id"].as_str().expect("id").to_owned()
    }

    /// Deletes an indicator as if in the portal. False when it did not exist.
    pub fn remove_indicator(&self, tenant_id: &str, id: &str) -> bool {
        let tenant = self.shared.tenant_id(tenant_id);
        self.shared.store.lock().unwrap().delete(&tenant, id, None)
    }

    /// Replaces a tenant's machines (an empty list makes `GET /api/machines` answer 404).
    pub fn set_machines(&self, tenant_id: &str, machines: Vec<Value>) {
        self.shared.machines.lock().unwrap().insert(self.shared.tenant_id(tenant_id), machines);
    }

    /// Replaces a tenant's alerts.
    pub fn set_alerts(&self, tenant_id: &str, alerts: Vec<Value>) {
        self.shared.alerts.lock().unwrap().insert(self.shared.tenant_id(tenant_id), alerts);
    }

    /// Stops the server (in-flight requests get up to 2 s to finish). Idempotent.
    pub async fn shutdown(&self) {
        self.server.cancel.cancel();
        let task = self.server.task.lock().unwrap().take();
        if let Some(mut task) = task
            && tokio::time::timeout(Duration::from_secs(2), &mut task).await.is_err()
        {
            task.abort();
        }
    }
}
