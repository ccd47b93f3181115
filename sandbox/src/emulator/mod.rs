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
//! verifies the JWTs they issue, `store` keeps the indicators, `machines` describes machines and
//! their antivirus health, `machine_store` keeps them per tenant and answers the machine and
//! `deviceavinfo` calls, `alerts` keeps alerts (and those simulated test runs raise) and answers
//! the alert calls, `scenario` holds the hooks tests and the demo use to shape machines and
//! alerts, `odata` parses and evaluates `$filter`, `query` applies the other OData query options
//! and pages lists, `ratelimit` counts calls per `endpoint`, `faults` injects failures on demand,
//! `config` describes tenants and apps. [`credentials`] keeps apps' certificates and federated
//! credentials (and makes test certificates), `assertion` checks the client assertions sent
//! instead of a secret, `oidc` fetches a federated issuer's keys.
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
//! - Client assertions (`client_assertion_type` jwt-bearer): every failure is `invalid_client`
//!   401 except AADSTS90061 and AADSTS70021 (`invalid_request` 400, as observed). An assertion
//!   whose header names a certificate (`x5t`/`x5t#S256`) or whose `iss` is the client id is a
//!   certificate assertion; any other is federated. With both a secret and an assertion, the
//!   assertion is checked. Tokens so obtained carry `appidacr` `2`.
//! - Certificate assertions: PS256 must name the certificate by `x5t#S256`, RS256 by `x5t`; any
//!   other pairing or algorithm → AADSTS700027 "Client assertion failed signature validation.".
//!   `aud`: the tenant's v2 or v1 token URL (GUID or domain) on the host the request came to or
//!   on the cloud's login host. `nbf` and `exp` get 5 minutes of clock skew; Entra documents no
//!   limit on the lifetime, so none is enforced. A certificate outside its validity →
//!   AADSTS1000502. Malformed or missing claims → AADSTS50027. A reused `jti` → AADSTS50027 (no
//!   public record of Entra's answer; [`EmulatorConfig::reject_replayed_assertions`] turns the
//!   check off).
//! - Federated assertions: the issuer's documents are fetched over https only, on every exchange
//!   (no cache), trusting the CAs given to [`Emulator::trust_issuer_certificate`]; any failure →
//!   AADSTS90061. No credential for the issuer → AADSTS700211 (before any fetch); unknown `kid` →
//!   AADSTS7000272; bad signature or a non-RSA algorithm → AADSTS50027; then the time window
//!   (AADSTS700024), the subject (AADSTS700213, or AADSTS7002138 when only the case differs) and
//!   the audience (AADSTS700212, matched when any `aud` value equals the credential's). A
//!   credential still propagating ([`Emulator::set_federated_credential_propagation`]) is
//!   ignored, and a request only it would match gets AADSTS70021. Tokens issued by Entra itself →
//!   AADSTS700222. A federated token may be presented any number of times.
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
//! - Default content of every provisioned tenant: the machines of [`sandbox_machines`] (ready
//!   ones and one for each reason a machine cannot enforce a file indicator) and one alert, two
//!   hours old, on `sandbox-win11-01` (its file evidence `Prevented`).
//! - `GET /api/machines`: 404 `ResourceNotFound` only when the tenant has no machines at all (the
//!   docs' "no recent machines"); a filter that matches nothing gives 200 with `[]`. Pages hold
//!   up to 10,000 machines; `@odata.nextLink` only without `$top`. Machines are listed in the
//!   order they were added. App tokens see every machine (device groups are not enforced).
//! - Machine `$filter`: besides `eq`/`ne`/`gt`/`ge`/`lt`/`le`, `startswith` and `and`/`or`, the
//!   collection `machineTags` takes `machineTags/any(t: t eq 'x')`; `machineTags eq 'x'` is an
//!   `ODataError`. Enum properties (`healthStatus`, `onboardingStatus`, `riskScore`,
//!   `exposureLevel`, `deviceValue`) reject unknown values. Property names match
//!   case-insensitively everywhere.
//! - `GET /api/machines/{id}` and the calls under it take a device id or a computer name (full
//!   FQDN or its first label, case-insensitive; with several, the most recently seen wins).
//! - `onboardingStatus` is written `Onboarded` (as observed), compared case-insensitively.
//!   Observed-only properties are served too: `agentVersion`, `defenderAvStatus` (`Updated`,
//!   `NotUpdated`, `Disabled`, `Unknown` from the antivirus health; `NotReporting` for an
//!   onboarded machine without it), `isPotentialDuplication`, `mergedIntoMachineId`, and `type`
//!   in `ipAddresses`.
//! - `findbyip`: a machine matches when it was seen with the IP within ±15 minutes of the time.
//!   "Seen" means: its internal IPs at its `lastSeen` whenever the machine is added or edited (so
//!   the history grows), plus sightings given by [`MachineSpec::seen_with_ip`]. Times more than
//!   30 days old → 400 `BadRequest`; future times are accepted (clock skew). A bad IP →
//!   `InvalidIpAddress`, a missing parameter → `MissingRequiredParameter`, other syntax →
//!   `ODataError`. No match → 200 with `[]`.
//! - Tags: `Value` 1–200 characters (else `InvalidInput`); `Action` `Add`/`Remove` matched
//!   case-insensitively; tags compare exactly; adding a present tag or removing an absent one
//!   answers 200 with the machine unchanged. Needs `Machine.ReadWrite.All` only.
//!   `AddOrRemoveTagForMultipleMachines` takes the same body plus `MachineIds` (1 to 500) and is
//!   all or nothing: an unknown id → 404 `ResourceNotFound` naming it, nothing tagged; it answers
//!   the machines as a collection.
//! - `GET /api/deviceavinfo`: `Machine.ReadWrite.All` is accepted as well as the documented
//!   `Machine.Read.All`. Rows only for onboarded machines that report antivirus health; `id` =
//!   `machineId`; `computerDnsName` is the first DNS label (as in the documented sample); times
//!   in whole seconds; `dataRefreshTimestamp` = when the machine or its health last changed;
//!   `osVersion` `10.0.<osBuild>.<revision>` on Windows, else the machine's `version`. 20 rows a
//!   page without `$top`; `@odata.nextLink` whenever rows remain, `$top` or not.
//! - Alerts are listed in the order they appeared; `@odata.nextLink` whenever rows remain;
//!   `"evidence": []` unless `$expand=evidence` (also on `GET /api/machines/{id}/alerts`, which
//!   takes the same query options); `GET /api/alerts/{id}` includes evidence. Unknown alert →
//!   404 `ResourceNotFound`. No retention limit.
//! - Simulated test runs ([`Emulator::run_test`]): `Prevented` → an `Informational` alert from
//!   `WindowsDefenderAv`, category `Malware`, file evidence `detectionStatus` `Prevented`;
//!   `Detected` → a `Medium` alert from `WindowsDefenderAtp`, category `Execution`, file and
//!   process evidence `Detected`; `NotDetected` → no alert. `investigationState` `Queued`; the
//!   SHA-1, unless given, is a stand-in derived from the SHA-256. Alert ids follow Defender's
//!   `da<ticks>_<number>` shape.

mod alerts;
mod assertion;
mod config;
pub mod credentials;
mod endpoint;
mod faults;
mod http;
mod machine_store;
mod machines;
mod odata;
mod oidc;
mod query;
mod ratelimit;
mod scenario;
mod store;
mod token;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;
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

pub use alerts::{TestOutcome, TestRun};
pub use config::{AppConfig, AppSecret, EmulatorConfig, EmulatorLimits, TenantConfig, sandbox_values};
pub use credentials::{AppCertificate, FederatedCredential};
pub use endpoint::Endpoint;
pub use faults::Faults;
pub use http::CallRecord;
pub use machines::{AvMode, AvSpec, HealthStatus, MachineSpec, OnboardingStatus, sandbox_machines};
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

impl Emulator {
    /// Binds `127.0.0.1:0` and serves until shut down.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        Ok(Self::serve(listener, config, None)?.0)
    }

    /// Binds `bind` (e.g. `0.0.0.0:0`) and serves, on one port, plain HTTP and HTTPS with a
    /// self-signed certificate for `names` (the host names or IP addresses clients use): for
    /// clients on other machines, such as a cluster's pods, which reach a Defender API over https
    /// only. Returns the emulator and the certificate (PEM) for the clients to trust. `url()` is
    /// then the bound address; clients use one of `names` with its port.
    pub async fn start_public(
        bind: SocketAddr,
        names: &[String],
        config: EmulatorConfig,
    ) -> std::io::Result<(Emulator, String)> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let (emulator, pem) = Self::serve(listener, config, Some(names))?;
        Ok((emulator, pem.unwrap_or_default()))
    }

    fn serve(
        listener: tokio::net::TcpListener,
        config: EmulatorConfig,
        tls_names: Option<&[String]>,
    ) -> std::io::Result<(Emulator, Option<String>)> {
        let addr = listener.local_addr()?;
        let now = Timestamp::now();
        let machines = machine_store::Machines::sandbox(&config, now);
        let alerts = alerts::Alerts::sandbox(&config, &machines, now);
        let credentials = credentials::CredentialStore::from_config(&config);
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
            credentials,
        });
        let router = axum::Router::new().fallback(http::handle).with_state(shared.clone());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let (task, pem) = match tls_names {
            None => (
                tokio::spawn(async move {
                    let _ = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
                }),
                None,
            ),
            Some(names) => {
                let (pem, acceptor) = crate::apiserver::serve::tls_for(names)?;
                (tokio::spawn(crate::apiserver::serve::serve(listener, router, acceptor, stop)), Some(pem))
            }
        };
        let url = url::Url::parse(&format!("http://{addr}/")).expect("valid URL");
        Ok((Emulator { shared, server: Arc::new(Server { url, cancel, task: Mutex::new(Some(task)) }) }, pem))
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

    /// Replaces a tenant's machines with raw Machine entities, none of which reports antivirus
    /// health (an empty list makes `GET /api/machines` answer 404). See also
    /// [`Emulator::put_machine`] and the other hooks in `scenario`.
    pub fn set_machines(&self, tenant_id: &str, machines: Vec<Value>) {
        let tenant = self.shared.tenant_id(tenant_id);
        self.shared.machines.lock().unwrap().replace_all(&tenant, machines, Timestamp::now());
    }

    /// Replaces a tenant's alerts (raw Alert entities, visible at once).
    pub fn set_alerts(&self, tenant_id: &str, alerts: Vec<Value>) {
        self.shared.alerts.lock().unwrap().replace_all(&self.shared.tenant_id(tenant_id), alerts);
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
