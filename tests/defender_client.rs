//! The Defender client against the Entra + Defender emulator (the sandbox crate's `emulator`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use defender_operator::api::Cloud;
use defender_operator::defender::client::{ClientOptions, default_http_client};
use defender_operator::defender::{
    AllowList, BatchDeleteOutcome, Credentials, DefenderClient, DefenderError, HostPolicy, NewIndicator, RateLimiter,
    RateLimits,
};
use defender_sandbox::emulator::sandbox_values::*;
use defender_sandbox::emulator::{CallRecord, Emulator, EmulatorConfig, Endpoint};
use serde_json::json;

async fn emulator() -> Emulator {
    Emulator::start(EmulatorConfig::sandbox()).await.expect("emulator starts")
}

fn policy(emu: &Emulator) -> HostPolicy {
    HostPolicy {
        allowlist: AllowList::new(&["http://127.0.0.1:*".into()]).unwrap(),
        authority_override: Some(emu.url()),
    }
}

fn creds(tenant: &str, app: &str, secret: &str) -> Credentials {
    Credentials {
        tenant_id: tenant.into(),
        client_id: app.into(),
        proof: defender_operator::defender::assertion::Proof::Secret(secret.to_string().into()),
    }
}

fn client_with(emu: &Emulator, cloud: Cloud, credentials: Credentials, options: ClientOptions) -> DefenderClient {
    DefenderClient::with_options(
        default_http_client().unwrap(),
        cloud,
        Some(emu.url().as_str()),
        credentials,
        &policy(emu),
        Arc::new(RateLimiter::new(RateLimits::default())),
        options,
    )
    .expect("client")
}

fn client(emu: &Emulator, tenant: &str, app: &str, secret: &str) -> DefenderClient {
    client_with(emu, Cloud::Commercial, creds(tenant, app, secret), ClientOptions::default())
}

fn good(emu: &Emulator) -> DefenderClient {
    client(emu, TENANT_ID, GOOD_APP_ID, GOOD_APP_SECRET)
}

fn count(calls: &[CallRecord], endpoint: Endpoint) -> usize {
    calls.iter().filter(|c| c.endpoint == endpoint).count()
}

fn api_calls(calls: &[CallRecord]) -> Vec<&CallRecord> {
    calls.iter().filter(|c| !matches!(c.endpoint, Endpoint::TokenV2 | Endpoint::TokenV1)).collect()
}

fn sha256(i: usize) -> String {
    format!("{i:064x}")
}

fn new_indicator(value: String) -> NewIndicator {
    NewIndicator {
        indicator_value: value,
        indicator_type: "FileSha256".into(),
        action: "Block".into(),
        title: "detect: test".into(),
        description: "pushed by the client test".into(),
        application: "defender-operator".into(),
        external_id: "default/partner".into(),
        expiration_time: None,
        severity: "High".into(),
        recommended_actions: None,
        rbac_group_names: vec![],
        generate_alert: true,
    }
}

/// The error must never show the secret, in Display or Debug.
fn assert_no_secret(e: &DefenderError, secret: &str) {
    assert!(!e.to_string().contains(secret), "secret in message: {e}");
    assert!(!format!("{e:?}").contains(secret), "secret in Debug: {e:?}");
}

#[tokio::test]
async fn token_errors_are_classified() {
    let emu = emulator().await;
    let unknown_app = "a11ce000-5a4d-4b0c-8d3f-0000000000ff";
    let cases = [
        (TENANT_ID, GOOD_APP_ID, GOOD_APP_SECRET_ID, Cloud::Commercial, "InvalidSecret"),
        (TENANT_ID, GOOD_APP_ID, "wrong-secret-value", Cloud::Commercial, "InvalidSecret"),
        (TENANT_ID, unknown_app, "whatever-secret", Cloud::Commercial, "AppNotFound"),
        (UNKNOWN_TENANT_ID, GOOD_APP_ID, GOOD_APP_SECRET, Cloud::Commercial, "TenantNotFound"),
        (TENANT_ID, EXPIRED_SECRET_APP_ID, EXPIRED_SECRET_APP_SECRET, Cloud::Commercial, "SecretExpired"),
        (
            NO_DEFENDER_TENANT_ID,
            NO_DEFENDER_APP_ID,
            NO_DEFENDER_APP_SECRET,
            Cloud::Commercial,
            "DefenderNotProvisioned",
        ),
        (TENANT_ID, DISABLED_APP_ID, DISABLED_APP_SECRET, Cloud::Commercial, "AppDisabled"),
        (GOV_TENANT_ID, GOV_APP_ID, GOV_APP_SECRET, Cloud::Commercial, "WrongCloud"),
    ];
    for (tenant, app, secret, cloud, reason) in cases {
        let c = client_with(&emu, cloud, creds(tenant, app, secret), ClientOptions::default());
        let e = c.validate().await.expect_err(reason);
        assert_eq!(e.reason(), reason, "{tenant} {app}: {e}");
        assert!(!e.is_transient(), "{reason} is terminal");
        assert!(matches!(e, DefenderError::Token { aadsts: Some(_), .. }), "{e:?}");
        assert_no_secret(&e, secret);
    }
    let calls = emu.calls();
    assert_eq!(count(&calls, Endpoint::TokenV2), cases.len());
    assert!(api_calls(&calls).is_empty(), "no API call without a token: {calls:?}");
}

#[tokio::test]
async fn entra_down_is_transient() {
    let emu = emulator().await;
    emu.faults().token_endpoint_down(true);
    let e = good(&emu).validate().await.unwrap_err();
    assert_eq!(e.reason(), "EntraUnavailable");
    assert!(e.is_transient());
    emu.faults().token_endpoint_down(false);
    good(&emu).validate().await.unwrap();
}

#[tokio::test]
async fn app_without_roles_is_missing_permission_and_writes_nothing() {
    let emu = emulator().await;
    for (app, secret) in [(NO_ROLES_APP_ID, NO_ROLES_APP_SECRET), (MACHINE_ONLY_APP_ID, MACHINE_ONLY_APP_SECRET)] {
        let e = client(&emu, TENANT_ID, app, secret).validate().await.unwrap_err();
        assert_eq!(e.reason(), "MissingPermission");
        assert!(!e.is_transient());
        match e {
            DefenderError::MissingPermission { missing, .. } => assert_eq!(missing, vec!["Ti.ReadWrite.All"]),
            other => panic!("{other:?}"),
        }
    }
    assert!(api_calls(&emu.calls()).is_empty());
}

#[tokio::test]
async fn good_app_validates_by_guid_and_by_domain() {
    let emu = emulator().await;
    let v = good(&emu).validate().await.unwrap();
    assert_eq!(v.tenant_id, TENANT_ID);
    assert_eq!(v.client_id, GOOD_APP_ID);
    assert!(v.granted.contains(&"Ti.ReadWrite.All".to_string()));
    assert!(v.missing_optional.is_empty(), "{v:?}");

    let by_domain = client(&emu, TENANT_DOMAIN, GOOD_APP_ID, GOOD_APP_SECRET).validate().await.unwrap();
    assert_eq!(by_domain.tenant_id, TENANT_ID, "the domain resolves to the GUID from `tid`");

    let own = client(&emu, TENANT_ID, TI_OWN_APP_ID, TI_OWN_APP_SECRET).validate().await.unwrap();
    assert_eq!(own.granted, vec!["Ti.ReadWrite"]);
    assert_eq!(own.missing_optional, vec!["Machine.Read.All", "Alert.Read.All"]);

    let calls = emu.calls();
    let probes: Vec<_> = api_calls(&calls);
    assert_eq!(probes.len(), 3);
    for p in probes {
        assert_eq!(p.endpoint, Endpoint::ListIndicators);
        assert!(p.path.contains("$top=1"), "{}", p.path);
        assert!(p.bearer);
        assert_eq!(p.status, 200);
    }
}

#[tokio::test]
async fn gov_cloud_uses_gov_scope() {
    let emu = emulator().await;
    let c =
        client_with(&emu, Cloud::GccHigh, creds(GOV_TENANT_ID, GOV_APP_ID, GOV_APP_SECRET), ClientOptions::default());
    let v = c.validate().await.unwrap();
    assert_eq!(v.tenant_id, GOV_TENANT_ID);
}

#[tokio::test]
async fn token_is_cached_and_refreshed() {
    let emu = emulator().await;
    let c = good(&emu);
    c.validate().await.unwrap();
    c.validate().await.unwrap();
    c.clone().validate().await.unwrap();
    assert_eq!(count(&emu.calls(), Endpoint::TokenV2), 1, "clones share one cached token");

    // Concurrent callers share one token request.
    let fresh = good(&emu);
    emu.clear_calls();
    let results = futures::future::join_all((0..8).map(|_| fresh.token())).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(count(&emu.calls(), Endpoint::TokenV2), 1);

    // Short-lived tokens are refreshed before they expire (here: after half their lifetime).
    emu.faults().token_lifetime(Duration::from_secs(2));
    let short = good(&emu);
    emu.clear_calls();
    short.validate().await.unwrap();
    short.validate().await.unwrap();
    assert_eq!(count(&emu.calls(), Endpoint::TokenV2), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    short.validate().await.unwrap();
    assert_eq!(count(&emu.calls(), Endpoint::TokenV2), 2);
}

#[tokio::test]
async fn import_1200_in_three_calls_then_list() {
    let emu = emulator().await;
    let c = good(&emu);
    let items: Vec<NewIndicator> = (0..1200).map(|i| new_indicator(sha256(i))).collect();
    let results = c.import(&items).await.unwrap();
    assert_eq!(results.len(), 1200);
    for (item, r) in items.iter().zip(&results) {
        assert_eq!(r.indicator.to_lowercase(), item.indicator_value);
        assert!(!r.is_failed, "{r:?}");
        assert!(r.id.is_some());
    }
    let calls = emu.calls();
    assert_eq!(count(&calls, Endpoint::ImportIndicators), 3);
    assert_eq!(emu.indicators(TENANT_ID).len(), 1200);

    let listed = c.list_indicators(Some("application eq 'defender-operator'")).await.unwrap();
    assert_eq!(listed.len(), 1200);
    assert!(listed.iter().all(|i| i.application.as_deref() == Some("defender-operator")));
    let one = c.list_indicators(Some(&format!("indicatorValue eq '{}'", sha256(7)))).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].indicator_value, sha256(7));
    assert_eq!(one[0].external_id.as_deref(), Some("default/partner"));
}

#[tokio::test]
async fn import_reports_per_item_failures() {
    let emu = emulator().await;
    let c = good(&emu);
    let mut bad = new_indicator("not-a-hash".into());
    bad.indicator_type = "FileSha256".into();
    let items = vec![new_indicator(sha256(1)), bad, new_indicator(sha256(2))];
    match c.import(&items).await {
        Ok(results) => {
            assert_eq!(results.len(), 3);
            assert!(!results[0].is_failed && !results[2].is_failed);
            assert!(results[1].is_failed, "{:?}", results[1]);
            assert_eq!(results[1].indicator, "not-a-hash");
        }
        // Defender may also refuse the whole call with 400.
        Err(e) => assert_eq!(e.status(), Some(400), "{e:?}"),
    }
    assert!(c.import(&[]).await.unwrap().is_empty());
    assert_eq!(count(&emu.calls(), Endpoint::ImportIndicators), 1, "an empty import sends nothing");
}

#[tokio::test]
async fn list_follows_paging() {
    let emu = emulator().await;
    for i in 0..120 {
        emu.insert_indicator(TENANT_ID, json!({"indicatorValue": sha256(i), "indicatorType": "FileSha256"}));
    }
    let c = client_with(
        &emu,
        Cloud::Commercial,
        creds(TENANT_ID, GOOD_APP_ID, GOOD_APP_SECRET),
        ClientOptions { list_page_size: 50, ..Default::default() },
    );
    let all = c.list_indicators(None).await.unwrap();
    assert_eq!(all.len(), 120);
    let mut ids: Vec<_> = all.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 120);
    let calls = emu.calls();
    let lists: Vec<_> = calls.iter().filter(|c| c.endpoint == Endpoint::ListIndicators).collect();
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert!(lists.iter().all(|c| c.bearer && c.status == 200 && c.host.starts_with("127.0.0.1:")));
}

#[tokio::test]
async fn throttled_then_the_next_call_waits() {
    let emu = emulator().await;
    let c = good(&emu);
    emu.faults().throttle_next(1, 2);
    let e = c.validate().await.unwrap_err();
    assert_eq!(e.reason(), "Throttled");
    assert!(e.is_transient());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));

    let start = Instant::now();
    c.list_indicators(None).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(1900), "waited {:?}", start.elapsed());
    let calls = emu.calls();
    let api = api_calls(&calls);
    assert_eq!(api.len(), 2, "no storm: one throttled call, one after the pause: {api:?}");
    assert_eq!(api[0].status, 429);
    assert_eq!(api[1].status, 200);
}

#[tokio::test]
async fn server_errors_and_timeouts_are_transient() {
    let emu = emulator().await;
    let c = client_with(
        &emu,
        Cloud::Commercial,
        creds(TENANT_ID, GOOD_APP_ID, GOOD_APP_SECRET),
        ClientOptions { request_timeout: Duration::from_millis(500), ..Default::default() },
    );
    c.token().await.unwrap();
    emu.faults().fail_next(1, 503);
    let e = c.validate().await.unwrap_err();
    assert_eq!(e.reason(), "DefenderUnreachable");
    assert!(e.is_transient());

    emu.faults().hang_next(1, Duration::from_secs(3));
    let e = c.list_indicators(None).await.unwrap_err();
    assert_eq!(e.reason(), "DefenderUnreachable", "{e:?}");
    assert!(e.is_transient());
    c.validate().await.unwrap();
}

#[tokio::test]
async fn host_not_on_the_allow_list_gets_nothing() {
    let emu = emulator().await;
    let port = emu.url().port().unwrap();
    for api in [format!("http://localhost:{port}"), format!("https://127.0.0.1:{port}")] {
        let e = DefenderClient::new(
            default_http_client().unwrap(),
            Cloud::Commercial,
            Some(&api),
            creds(TENANT_ID, GOOD_APP_ID, GOOD_APP_SECRET),
            &policy(&emu),
            Arc::new(RateLimiter::default()),
        )
        .unwrap_err();
        assert_eq!(e.reason(), "ApiHostNotAllowed", "{api}");
        assert!(!e.is_transient());
    }
    // Not even a token request went out.
    assert!(emu.calls().is_empty(), "{:?}", emu.calls());
}

#[tokio::test]
async fn submit_delete_and_batch_delete() {
    let emu = emulator().await;
    let c = good(&emu);
    let created = c.submit(&new_indicator(sha256(42))).await.unwrap();
    assert_eq!(created.indicator_value, sha256(42));
    assert_eq!(created.application.as_deref(), Some("defender-operator"));
    // Submitting again updates the same indicator.
    let again = c.submit(&new_indicator(sha256(42))).await.unwrap();
    assert_eq!(again.id, created.id);

    c.delete(&created.id).await.unwrap();
    c.delete(&created.id).await.unwrap(); // 404: already gone
    let deletes: Vec<u16> =
        emu.calls().iter().filter(|c| c.endpoint == Endpoint::DeleteIndicator).map(|c| c.status).collect();
    assert_eq!(deletes, vec![204, 404]);
    assert!(emu.indicators(TENANT_ID).is_empty());

    let results = c.import(&(0..3).map(|i| new_indicator(sha256(100 + i))).collect::<Vec<_>>()).await.unwrap();
    let ids: Vec<String> = results.iter().map(|r| r.id.clone().unwrap()).collect();
    assert_eq!(c.batch_delete(&ids[..2]).await.unwrap(), BatchDeleteOutcome::AllDeleted);
    assert_eq!(emu.indicators(TENANT_ID).len(), 1);
    let with_missing = vec![ids[2].clone(), ids[0].clone()];
    assert_eq!(c.batch_delete(&with_missing).await.unwrap(), BatchDeleteOutcome::SomeNotFound);
    assert!(emu.indicators(TENANT_ID).is_empty());
    assert_eq!(c.batch_delete(&[]).await.unwrap(), BatchDeleteOutcome::AllDeleted);
    assert_eq!(count(&emu.calls(), Endpoint::BatchDeleteIndicators), 2);
}

#[tokio::test]
async fn batch_delete_splits_at_500() {
    let emu = emulator().await;
    let c = good(&emu);
    let results = c.import(&(0..501).map(|i| new_indicator(sha256(i))).collect::<Vec<_>>()).await.unwrap();
    let ids: Vec<String> = results.into_iter().map(|r| r.id.unwrap()).collect();
    assert_eq!(c.batch_delete(&ids).await.unwrap(), BatchDeleteOutcome::AllDeleted);
    assert_eq!(count(&emu.calls(), Endpoint::BatchDeleteIndicators), 2);
    assert!(emu.indicators(TENANT_ID).is_empty());
}

// ------------------------------------------------------------------------------------------------
// A hostile API: its `@odata.nextLink` points at a host that is not on the allow-list.

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, String, bool)>>>);

async fn hostile_api() -> (String, Seen) {
    use axum::extract::{Request, State};
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let token = defender_operator::defender::jwt::encode_unsigned(&json!({
        "tid": TENANT_ID, "appid": GOOD_APP_ID, "aud": MDE_RESOURCE, "roles": ["Ti.ReadWrite.All"],
    }));
    let app = axum::Router::new()
        .fallback(move |State(seen): State<Seen>, req: Request| {
            let token = token.clone();
            async move {
                let host = req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
                let bearer = req.headers().contains_key("authorization");
                seen.0.lock().unwrap().push((host, req.uri().to_string(), bearer));
                if req.uri().path().ends_with("/token") {
                    axum::Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": token}))
                } else {
                    axum::Json(json!({
                        "value": [{"id": "1", "indicatorValue": sha256(1), "indicatorType": "FileSha256"}],
                        "@odata.nextLink": format!("http://localhost:{port}/api/indicators?$skip=1"),
                    }))
                }
            }
        })
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}"), seen)
}

#[tokio::test]
async fn next_link_to_a_foreign_host_is_not_followed() {
    let (base, seen) = hostile_api().await;
    let policy = HostPolicy {
        allowlist: AllowList::new(&["http://127.0.0.1:*".into()]).unwrap(),
        authority_override: Some(url::Url::parse(&base).unwrap()),
    };
    let c = DefenderClient::new(
        default_http_client().unwrap(),
        Cloud::Commercial,
        Some(&base),
        creds(TENANT_ID, GOOD_APP_ID, GOOD_APP_SECRET),
        &policy,
        Arc::new(RateLimiter::default()),
    )
    .unwrap();
    let e = c.list_indicators(None).await.unwrap_err();
    assert_eq!(e.reason(), "ApiHostNotAllowed");
    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|(host, _, _)| host.starts_with("127.0.0.1:")), "{seen:?}");
    assert!(!seen.iter().any(|(host, _, bearer)| host.starts_with("localhost") && *bearer));
}

// ------------------------------------------------------------------------------------------------
// A Defender that pages by `$skip` only (no `@odata.nextLink`), as the docs describe.

async fn skip_only_api(total: usize) -> (String, Seen) {
    use axum::extract::{Request, State};
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let token = defender_operator::defender::jwt::encode_unsigned(&json!({
        "tid": TENANT_ID, "appid": GOOD_APP_ID, "aud": MDE_RESOURCE, "roles": ["Ti.ReadWrite.All"],
    }));
    let app = axum::Router::new()
        .fallback(move |State(seen): State<Seen>, req: Request| {
            let token = token.clone();
            async move {
                let host = req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
                let bearer = req.headers().contains_key("authorization");
                seen.0.lock().unwrap().push((host, req.uri().to_string(), bearer));
                if req.uri().path().ends_with("/token") {
                    // The v1 shape: `expires_in` as a string.
                    return axum::Json(json!({"token_type": "Bearer", "expires_in": "3599", "access_token": token}));
                }
                let query: std::collections::HashMap<String, String> =
                    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
                let top: usize = query.get("$top").map_or(10_000, |t| t.parse().unwrap());
                let skip: usize = query.get("$skip").map_or(0, |s| s.parse().unwrap());
                let rows: Vec<_> = (skip..total.min(skip + top))
                    .map(|i| json!({"id": i + 1, "indicatorValue": sha256(i), "indicatorType": "FileSha256"}))
                    .collect();
                axum::Json(json!({"@odata.context": "x", "value": rows}))
            }
        })
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}"), seen)
}

#[tokio::test]
async fn list_pages_by_skip_without_next_link() {
    let (base, seen) = skip_only_api(5).await;
    let policy = HostPolicy::from_parts(&["http://127.0.0.1:*".into()], Some(&base)).unwrap();
    let c = DefenderClient::with_options(
        default_http_client().unwrap(),
        Cloud::Commercial,
        Some(&base),
        creds(TENANT_ID, GOOD_APP_ID, GOOD_APP_SECRET),
        &policy,
        Arc::new(RateLimiter::default()),
        ClientOptions { list_page_size: 2, ..Default::default() },
    )
    .unwrap();
    assert!(!format!("{c:?}").contains(GOOD_APP_SECRET));
    let all = c.list_indicators(Some("application eq 'defender-operator'")).await.unwrap();
    assert_eq!(all.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec!["1", "2", "3", "4", "5"]);
    let seen = seen.0.lock().unwrap().clone();
    let lists: Vec<&str> = seen.iter().filter(|(_, p, _)| p.starts_with("/api/")).map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        lists,
        vec![
            "/api/indicators?$top=2&$filter=application%20eq%20%27defender-operator%27",
            "/api/indicators?$top=2&$skip=2&$filter=application%20eq%20%27defender-operator%27",
            "/api/indicators?$top=2&$skip=4&$filter=application%20eq%20%27defender-operator%27",
        ]
    );
    assert!(seen.iter().filter(|(_, p, _)| p.starts_with("/api/")).all(|(_, _, bearer)| *bearer));
    assert!(seen.iter().filter(|(_, p, _)| p.ends_with("/token")).all(|(_, _, bearer)| !*bearer));
}

#[tokio::test]
async fn import_at_the_tenant_cap_fails_per_item() {
    let emu = Emulator::start(EmulatorConfig { indicator_cap: 2, ..EmulatorConfig::sandbox() }).await.unwrap();
    let c = good(&emu);
    let results = c.import(&(0..3).map(|i| new_indicator(sha256(i))).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(results.iter().filter(|r| r.is_failed).count(), 1, "{results:?}");
    let failed = results.iter().find(|r| r.is_failed).unwrap();
    assert!(failed.id.is_none());
    assert!(failed.failure_reason.as_deref().unwrap_or("").contains("Maximum number of indicators"), "{failed:?}");
    let e = c.submit(&new_indicator(sha256(9))).await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(!e.is_transient());
}

/// Machines, antivirus health and alerts, read with small pages: `$top`+`$skip` for machines
/// (no nextLink with `$top`), the nextLink for antivirus health and alerts; filtered look-ups; the
/// tag call; 403 without the role.
#[tokio::test]
async fn machines_antivirus_health_and_alerts_page_completely() {
    use defender_sandbox::emulator::{MachineSpec, TestOutcome, TestRun};
    let emu = emulator().await;
    for i in 0..7 {
        emu.put_machine(TENANT_ID, MachineSpec::new(&format!("pc-{i}.contoso.com")));
    }
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(2);
    for i in 0..5 {
        emu.run_test(TENANT_ID, TestRun::new(&format!("pc-{i}"), &sha256(i), TestOutcome::Detected));
    }
    let small = ClientOptions { list_page_size: 3, ..ClientOptions::default() };
    let reader = client_with(&emu, Cloud::Commercial, creds(TENANT_ID, GOOD_APP_ID, GOOD_APP_SECRET), small);

    let machines = reader.list_machines().await.unwrap();
    assert_eq!(machines.len(), emu.machines(TENANT_ID).len(), "every machine, once");
    let paths: Vec<String> =
        emu.calls().into_iter().filter(|c| c.endpoint == Endpoint::Machines).map(|c| c.path).collect();
    assert!(paths.iter().all(|p| p.contains("top=3")) && paths.iter().any(|p| p.contains("skip=3")), "{paths:?}");
    let av = reader.list_av_info(None).await.unwrap();
    assert!(av.len() >= 7 && av.iter().all(|a| a.machine().is_some() && a.av_mode.is_some()), "{av:?}");
    let alerts = reader.list_alerts_updated_since(since).await.unwrap();
    assert_eq!(alerts.len(), 5, "the default alert is older");
    assert!(alerts.iter().all(|a| a.evidence.iter().any(|e| e.sha256.is_some())), "with their evidence");

    let found = reader.find_machines("startswith(computerDnsName,'pc-1')").await.unwrap();
    assert_eq!(found.iter().map(|m| m.computer_dns_name.clone().unwrap()).collect::<Vec<_>>(), ["pc-1.contoso.com"]);
    let id = emu.machine_id(TENANT_ID, "pc-1").unwrap();
    assert_eq!(reader.machine(&id).await.unwrap().map(|m| m.id), Some(id.clone()));
    assert_eq!(reader.machine(&"0".repeat(40)).await.unwrap(), None, "404 is none");
    let one = reader.list_av_info(Some(&format!("machineId eq '{id}'"))).await.unwrap();
    assert_eq!(one.len(), 1);

    // Tagging needs Machine.ReadWrite.All, which the good app lacks.
    let error = reader.tag_machines(std::slice::from_ref(&id), "bas").await.unwrap_err();
    assert_eq!(error.status(), Some(403), "{error}");
    // Alerts need Alert.Read.All.
    let machine_only = client(&emu, TENANT_ID, MACHINE_ONLY_APP_ID, MACHINE_ONLY_APP_SECRET);
    assert_eq!(machine_only.list_alerts_updated_since(since).await.unwrap_err().status(), Some(403));
    assert!(!machine_only.list_machines().await.unwrap().is_empty());
}
