//! The Defender/Entra emulator, driven with plain HTTP (reqwest), against the documented API.

use std::time::{Duration, Instant};

use base64::Engine as _;
use defender_sandbox::emulator::sandbox_values::*;
use defender_sandbox::emulator::{Emulator, EmulatorConfig, EmulatorLimits, Endpoint};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn sandbox() -> Emulator {
    Emulator::start(EmulatorConfig::sandbox()).await.expect("emulator starts")
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn token_request(emu: &Emulator, tenant: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let url = emu.url().join(&format!("{tenant}/oauth2/v2.0/token")).unwrap();
    let r = http().post(url).form(form).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

async fn token_for(emu: &Emulator, tenant: &str, app: &str, secret: &str) -> String {
    let (status, body) = token_request(
        emu,
        tenant,
        &[("client_id", app), ("client_secret", secret), ("scope", MDE_SCOPE), ("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

async fn good_token(emu: &Emulator) -> String {
    token_for(emu, TENANT_ID, GOOD_APP_ID, GOOD_APP_SECRET).await
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn api(emu: &Emulator, path: &str) -> String {
    format!("{}{}", emu.url().as_str().trim_end_matches('/'), path)
}

async fn get(emu: &Emulator, token: &str, path: &str) -> (StatusCode, Value) {
    let r = http().get(api(emu, path)).bearer_auth(token).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(emu: &Emulator, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    let r = http().post(api(emu, path)).bearer_auth(token).json(body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn sha256(i: usize) -> String {
    format!("{i:064x}")
}

fn indicator(value: &str) -> Value {
    json!({
        "indicatorValue": value, "indicatorType": "FileSha256", "action": "Block", "title": "t",
        "description": "d", "application": "defender-operator", "generateAlert": true,
    })
}

fn assert_api_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    let target = body["error"]["target"].as_str().expect("target");
    assert!(uuid::Uuid::try_parse(target).is_ok(), "target is a GUID: {target}");
}

#[tokio::test]
async fn v2_token_has_documented_shape_and_claims() {
    let emu = sandbox().await;
    let (status, body) = token_request(
        &emu,
        TENANT_DOMAIN, // a verified domain works; tid is still the GUID
        &[
            ("client_id", GOOD_APP_ID),
            ("client_secret", GOOD_APP_SECRET),
            ("scope", MDE_SCOPE),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], json!(3599));
    assert!(body.get("refresh_token").is_none());
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);
    let c = claims(token);
    assert_eq!(c["tid"], TENANT_ID);
    assert_eq!(c["appid"], GOOD_APP_ID);
    assert_eq!(c["aud"], MDE_RESOURCE);
    assert_eq!(c["ver"], "1.0");
    assert_eq!(c["appidacr"], "1");
    assert!(c["iss"].as_str().unwrap().contains(TENANT_ID));
    assert!(c["oid"].is_string());
    let (iat, nbf, exp) = (c["iat"].as_i64().unwrap(), c["nbf"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert!(nbf <= iat && exp - iat == 3599);
    assert_eq!(c["roles"], json!(["Ti.ReadWrite.All", "Machine.Read.All", "Alert.Read.All"]));

    // HTTP Basic client authentication is accepted too.
    let url = emu.url().join(&format!("{TENANT_ID}/oauth2/v2.0/token")).unwrap();
    let r = http()
        .post(url)
        .basic_auth(GOOD_APP_ID, Some(GOOD_APP_SECRET))
        .form(&[("scope", MDE_SCOPE), ("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn v1_token_uses_resource_and_string_numbers() {
    let emu = sandbox().await;
    let url = emu.url().join(&format!("{TENANT_ID}/oauth2/token")).unwrap();
    let r = http()
        .post(url)
        .form(&[
            ("client_id", GOOD_APP_ID),
            ("client_secret", GOOD_APP_SECRET),
            ("resource", MDE_RESOURCE),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["expires_in"], "3599");
    assert!(body["expires_on"].as_str().unwrap().parse::<i64>().is_ok());
    assert!(body["not_before"].as_str().unwrap().parse::<i64>().is_ok());
    assert_eq!(body["resource"], MDE_RESOURCE);
    assert_eq!(claims(body["access_token"].as_str().unwrap())["aud"], MDE_RESOURCE);
}

#[tokio::test]
async fn token_errors_carry_aadsts_codes() {
    let emu = sandbox().await;
    let std = |app: &'static str, secret: &'static str| {
        vec![("client_id", app), ("client_secret", secret), ("scope", MDE_SCOPE), ("grant_type", "client_credentials")]
    };
    // (tenant, form fields, AADSTS code, HTTP status, `error`)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u32, u16, &'a str);
    let cases: Vec<Case> = vec![
        (TENANT_ID, std(GOOD_APP_ID, "wrong"), 7000215, 401, "invalid_client"),
        (TENANT_ID, std(GOOD_APP_ID, GOOD_APP_SECRET_ID), 7000215, 401, "invalid_client"),
        (TENANT_ID, std(EXPIRED_SECRET_APP_ID, EXPIRED_SECRET_APP_SECRET), 7000222, 401, "invalid_client"),
        (
            TENANT_ID,
            vec![("client_id", GOOD_APP_ID), ("scope", MDE_SCOPE), ("grant_type", "client_credentials")],
            7000218,
            401,
            "invalid_client",
        ),
        (TENANT_ID, std("0b5e55ed-0000-4000-8000-000000000000", "x"), 700016, 400, "unauthorized_client"),
        (TENANT_ID, std(TENANT2_APP_ID, TENANT2_APP_SECRET), 700016, 400, "unauthorized_client"),
        (UNKNOWN_TENANT_ID, std(GOOD_APP_ID, GOOD_APP_SECRET), 90002, 400, "invalid_tenant"),
        ("nowhere.example.com", std(GOOD_APP_ID, GOOD_APP_SECRET), 90002, 400, "invalid_tenant"),
        ("{contoso}", std(GOOD_APP_ID, GOOD_APP_SECRET), 900023, 400, "invalid_request"),
        ("not_a_tenant", std(GOOD_APP_ID, GOOD_APP_SECRET), 900023, 400, "invalid_request"),
        ("common", std(GOOD_APP_ID, GOOD_APP_SECRET), 9001023, 400, "invalid_request"),
        ("consumers", std(GOOD_APP_ID, GOOD_APP_SECRET), 9001023, 400, "invalid_request"),
        (NO_DEFENDER_TENANT_ID, std(NO_DEFENDER_APP_ID, NO_DEFENDER_APP_SECRET), 500011, 400, "invalid_resource"),
        (
            TENANT_ID,
            vec![
                ("client_id", GOOD_APP_ID),
                ("client_secret", GOOD_APP_SECRET),
                ("scope", MDE_RESOURCE),
                ("grant_type", "client_credentials"),
            ],
            70011,
            400,
            "invalid_scope",
        ),
        (
            TENANT_ID,
            vec![
                ("client_id", GOOD_APP_ID),
                ("client_secret", GOOD_APP_SECRET),
                ("scope", "https://nothing.example.com/.default"),
                ("grant_type", "client_credentials"),
            ],
            500011,
            400,
            "invalid_resource",
        ),
        (TENANT_ID, std(DISABLED_APP_ID, DISABLED_APP_SECRET), 7000112, 400, "unauthorized_client"),
        // A GCC High tenant asked for the commercial resource: national-cloud mismatch.
        (GOV_TENANT_ID, std(GOV_APP_ID, GOV_APP_SECRET), 90038, 400, "invalid_request"),
    ];
    for (tenant, form, code, status, error) in cases {
        let (got, body) = token_request(&emu, tenant, &form).await;
        let ctx = format!("{tenant} {form:?}: {body}");
        assert_eq!(got.as_u16(), status, "{ctx}");
        assert_eq!(body["error"], error, "{ctx}");
        assert_eq!(body["error_codes"], json!([code]), "{ctx}");
        assert!(body["error_description"].as_str().unwrap().starts_with(&format!("AADSTS{code}: ")), "{ctx}");
        for k in ["timestamp", "trace_id", "correlation_id"] {
            assert!(body[k].is_string(), "{k} in {ctx}");
        }
        assert!(!body.to_string().contains(GOOD_APP_SECRET), "never echoes the secret");
    }
    // The gov tenant gets a token for its own cloud's resource.
    let (status, _) = token_request(
        &emu,
        GOV_TENANT_ID,
        &[
            ("client_id", GOV_APP_ID),
            ("client_secret", GOV_APP_SECRET),
            ("scope", "https://api-gov.securitycenter.microsoft.us/.default"),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn roles_claim_absent_without_consent_and_api_answers_403() {
    let emu = sandbox().await;
    let token = token_for(&emu, TENANT_ID, NO_ROLES_APP_ID, NO_ROLES_APP_SECRET).await;
    assert!(claims(&token).get("roles").is_none(), "no roles claim");
    let (status, body) = get(&emu, &token, "/api/indicators?$top=1").await;
    assert_eq!(status, 403);
    assert_api_error(&body, "Forbidden");
    assert!(body["error"]["message"].as_str().unwrap().contains("(Ti.ReadWrite, Ti.ReadWrite.All)"));

    // Machine-only app: machines yes, indicators no.
    let token = token_for(&emu, TENANT_ID, MACHINE_ONLY_APP_ID, MACHINE_ONLY_APP_SECRET).await;
    assert_eq!(claims(&token)["roles"], json!(["Machine.Read.All"]));
    assert_eq!(get(&emu, &token, "/api/indicators?$top=1").await.0, 403);
    let (status, body) = get(&emu, &token, "/api/machines?$top=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"].as_array().unwrap().len(), 1);
    let (status, body) = get(&emu, &token, "/api/alerts").await;
    assert_eq!(status, 403);
    assert!(body["error"]["message"].as_str().unwrap().contains("Alert.Read.All"));

    // A token for the Defender XDR resource (api.security.microsoft.com) has no MDE roles.
    let (status, body) = token_request(
        &emu,
        TENANT_ID,
        &[
            ("client_id", GOOD_APP_ID),
            ("client_secret", GOOD_APP_SECRET),
            ("scope", "https://api.security.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let xdr = body["access_token"].as_str().unwrap();
    assert!(claims(xdr).get("roles").is_none());
    assert_eq!(get(&emu, xdr, "/api/indicators").await.0, 403);
}

#[tokio::test]
async fn api_rejects_missing_foreign_and_expired_tokens() {
    let emu = sandbox().await;
    let other = sandbox().await;
    let r = http().get(api(&emu, "/api/indicators")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_api_error(&r.json().await.unwrap(), "Unauthorized");
    assert_eq!(get(&emu, "not.a.jwt", "/api/indicators").await.0, 401);
    let foreign = good_token(&other).await;
    let (status, body) = get(&emu, &foreign, "/api/indicators").await;
    assert_eq!(status, 401);
    assert_api_error(&body, "Unauthorized");

    emu.faults().token_lifetime(Duration::ZERO);
    let expired = good_token(&emu).await;
    assert_eq!(get(&emu, &expired, "/api/indicators").await.0, 401);
    emu.faults().token_lifetime(Duration::from_secs(3599));
    assert_eq!(get(&emu, &good_token(&emu).await, "/api/indicators").await.0, 200);
}

#[tokio::test]
async fn submit_is_an_upsert_with_a_stable_id() {
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let value = sha256(1);
    let mut body = indicator(&value);
    body["externalID"] = json!("team/partner");
    let (status, first) = post(&emu, &token, "/api/indicators", &body).await;
    assert_eq!(status, 200, "create answers 200, not 201: {first}");
    let id = first["id"].as_str().unwrap().to_owned();
    assert!(id.parse::<u64>().is_ok());
    assert_eq!(first["externalId"], "team/partner");
    assert_eq!(first["sourceType"], "AadApp");
    assert_eq!(first["createdBy"], GOOD_APP_ID);
    let created = first["creationTimeDateTimeUtc"].as_str().unwrap();
    assert_eq!(created.len(), "2019-12-19T09:09:46.9139216Z".len(), "{created}");

    let mut update = indicator(&value.to_uppercase());
    update["title"] = json!("new title");
    update["application"] = json!("someone-else");
    let (status, second) = post(&emu, &token, "/api/v1.0/indicators", &update).await;
    assert_eq!(status, 200);
    assert_eq!(second["id"], id.as_str());
    assert_eq!(second["title"], "new title");
    assert_eq!(second["application"], "defender-operator", "application is applied on create only");
    assert_eq!(emu.indicators(TENANT_ID).len(), 1);

    // Validation, per the documented codes.
    let (status, body) = post(&emu, &token, "/api/indicators", &indicator("abc")).await;
    assert_eq!(status, 400);
    assert_api_error(&body, "InvalidHashValue");
    let mut missing = indicator(&sha256(2));
    missing.as_object_mut().unwrap().remove("title");
    let (status, body) = post(&emu, &token, "/api/indicators", &missing).await;
    assert_eq!(status, 400);
    assert_api_error(&body, "MissingRequiredParameter");
    assert_eq!(body["error"]["message"], "Parameter title is missing");
    let mut audit = indicator(&sha256(3));
    audit["action"] = json!("Audit");
    audit["generateAlert"] = json!(false);
    assert_eq!(post(&emu, &token, "/api/indicators", &audit).await.0, 400);
    audit["generateAlert"] = json!(true);
    assert_eq!(post(&emu, &token, "/api/indicators", &audit).await.0, 200);
}

#[tokio::test]
async fn import_enforces_batch_size_and_reports_per_item() {
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let all: Vec<Value> = (0..1200).map(|i| indicator(&sha256(i))).collect();
    let (status, body) = post(&emu, &token, "/api/indicators/import", &json!({"Indicators": all})).await;
    assert_eq!(status, 400);
    assert_api_error(&body, "MaximumBatchSizeExceeded");
    assert_eq!(body["error"]["message"], "Maximum batch size exceeded. Received: 1200, allowed: 500");
    assert!(emu.indicators(TENANT_ID).is_empty());

    for chunk in all.chunks(500) {
        let (status, body) = post(&emu, &token, "/api/indicators/import", &json!({"Indicators": chunk})).await;
        assert_eq!(status, 200);
        let results = body["value"].as_array().unwrap();
        assert_eq!(results.len(), chunk.len());
        for (item, result) in chunk.iter().zip(results) {
            assert_eq!(result["indicator"], item["indicatorValue"], "request order");
            assert_eq!(result["isFailed"], false);
            assert!(result["failureReason"].is_null());
            assert!(result["id"].as_str().unwrap().parse::<u64>().is_ok());
        }
    }
    assert_eq!(emu.indicators(TENANT_ID).len(), 1200);

    // One bad item fails alone.
    let (status, body) = post(
        &emu,
        &token,
        "/api/indicators/import",
        &json!({"Indicators": [indicator(&sha256(5000)), indicator("nope")]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["value"][0]["isFailed"], false);
    assert_eq!(body["value"][1]["isFailed"], true);
    assert!(body["value"][1]["id"].is_null());
    assert!(body["value"][1]["failureReason"].is_string());

    // Empty list and wrong-case key are 400 (the OpenCTI write probe relies on the first).
    assert_eq!(post(&emu, &token, "/api/indicators/import", &json!({"Indicators": []})).await.0, 400);
    let (status, body) =
        post(&emu, &token, "/api/indicators/import", &json!({"indicators": [indicator(&sha256(6000))]})).await;
    assert_eq!(status, 400);
    assert_api_error(&body, "MissingRequiredParameter");
}

#[tokio::test]
async fn delete_and_batch_delete() {
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let ids: Vec<String> = (0..4).map(|i| emu.insert_indicator(TENANT_ID, indicator(&sha256(i)))).collect();
    let del = |id: &str| http().delete(api(&emu, &format!("/api/indicators/{id}"))).bearer_auth(&token).send();
    assert_eq!(del(&ids[0]).await.unwrap().status(), 204);
    assert_eq!(del(&ids[0]).await.unwrap().status(), 404);

    let (status, _) = post(&emu, &token, "/api/indicators/BatchDelete", &json!({"IndicatorIds": [ids[1]]})).await;
    assert_eq!(status, 204);
    // One unknown id: 404; the known one is still deleted (documented choice).
    let (status, body) =
        post(&emu, &token, "/api/indicators/BatchDelete", &json!({"IndicatorIds": [ids[2], "999999"]})).await;
    assert_eq!(status, 404);
    assert_api_error(&body, "ResourceNotFound");
    assert_eq!(emu.indicators(TENANT_ID).len(), 1);
    assert_eq!(post(&emu, &token, "/api/indicators/BatchDelete", &json!({"IndicatorIds": []})).await.0, 400);
    let many: Vec<String> = (0..501).map(|i| i.to_string()).collect();
    let (status, body) = post(&emu, &token, "/api/indicators/BatchDelete", &json!({"IndicatorIds": many})).await;
    assert_eq!(status, 400);
    assert_api_error(&body, "MaximumBatchSizeExceeded");
    assert!(emu.remove_indicator(TENANT_ID, &ids[3]));
    assert!(!emu.remove_indicator(TENANT_ID, &ids[3]));
}

#[tokio::test]
async fn list_pages_and_filters() {
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    for i in 0..25 {
        let mut ind = indicator(&sha256(i));
        if i % 5 == 0 {
            ind["application"] = json!("other-tool");
            ind["title"] = json!("it's other");
        }
        emu.insert_indicator(TENANT_ID, ind);
    }
    let (status, body) = get(&emu, &token, "/api/indicators").await;
    assert_eq!(status, 200);
    assert_eq!(body["value"].as_array().unwrap().len(), 25);
    assert!(body["@odata.context"].as_str().unwrap().ends_with("/api/$metadata#Indicators"));
    assert!(body.get("@odata.nextLink").is_none());

    // Follow nextLink with $top=10.
    let mut seen = Vec::new();
    let mut next = Some(api(&emu, "/api/indicators?$top=10"));
    while let Some(url) = next {
        let body: Value = http().get(&url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        seen.extend(body["value"].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_owned()));
        next = body["@odata.nextLink"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 25);
    seen.dedup();
    assert_eq!(seen.len(), 25);
    let (_, body) = get(&emu, &token, "/api/indicators?$top=10&$skip=20").await;
    assert_eq!(body["value"].as_array().unwrap().len(), 5);
    assert!(body.get("@odata.nextLink").is_none());

    let (_, body) = get(&emu, &token, &format!("/api/indicators?$filter=indicatorValue+eq+'{}'", sha256(7))).await;
    assert_eq!(body["value"].as_array().unwrap().len(), 1);
    let (_, body) =
        get(&emu, &token, "/api/indicators?$filter=application eq 'other-tool' and indicatorType eq 'FileSha256'")
            .await;
    assert_eq!(body["value"].as_array().unwrap().len(), 5);
    let (_, body) = get(&emu, &token, "/api/indicators?$filter=title eq 'it''s other'").await;
    assert_eq!(body["value"].as_array().unwrap().len(), 5);
    let (_, body) = get(&emu, &token, "/api/indicators?$filter=creationTimeDateTimeUtc le 2000-01-01T00:00:00Z").await;
    assert_eq!(body["value"].as_array().unwrap().len(), 0);
    let (_, body) = get(&emu, &token, "/api/indicators?$filter=action eq 'Block'&$top=3").await;
    assert_eq!(body["value"].as_array().unwrap().len(), 3);
    assert!(body["@odata.nextLink"].as_str().unwrap().contains("$skip=3"));

    for bad in ["$filter=nope eq 'x'", "$filter=title eq 'x", "$top=10001", "$top=-1", "$filter=expirationTime le 'x'"]
    {
        let (status, body) = get(&emu, &token, &format!("/api/indicators?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert_api_error(&body, "ODataError");
    }
}

#[tokio::test]
async fn ti_readwrite_sees_only_its_own_indicators() {
    let emu = sandbox().await;
    emu.insert_indicator(TENANT_ID, indicator(&sha256(1)));
    let own = token_for(&emu, TENANT_ID, TI_OWN_APP_ID, TI_OWN_APP_SECRET).await;
    assert_eq!(post(&emu, &own, "/api/indicators", &indicator(&sha256(2))).await.0, 200);
    let (_, body) = get(&emu, &own, "/api/indicators").await;
    assert_eq!(body["value"].as_array().unwrap().len(), 1);
    let (_, body) = get(&emu, &good_token(&emu).await, "/api/indicators").await;
    assert_eq!(body["value"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn expired_indicators_are_purged_unless_configured() {
    let past = "2020-01-01T00:00:00Z";
    let emu = sandbox().await;
    let mut ind = indicator(&sha256(1));
    ind["expirationTime"] = json!(past);
    emu.insert_indicator(TENANT_ID, ind.clone());
    assert!(emu.indicators(TENANT_ID).is_empty());

    let keep =
        Emulator::start(EmulatorConfig { purge_expired_on_read: false, ..EmulatorConfig::sandbox() }).await.unwrap();
    keep.insert_indicator(TENANT_ID, ind);
    let listed = keep.indicators(TENANT_ID);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["expirationTime"], "2020-01-01T00:00:00.0000000Z");
}

#[tokio::test]
async fn import_rate_limit_answers_429_with_retry_after() {
    let config = EmulatorConfig {
        limits: EmulatorLimits { import_per_minute: 3, ..Default::default() },
        ..EmulatorConfig::sandbox()
    };
    let emu = Emulator::start(config).await.unwrap();
    let token = good_token(&emu).await;
    let body = json!({"Indicators": [indicator(&sha256(1))]});
    for _ in 0..3 {
        assert_eq!(post(&emu, &token, "/api/indicators/import", &body).await.0, 200);
    }
    let r = http().post(api(&emu, "/api/indicators/import")).bearer_auth(&token).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_api_error(&r.json().await.unwrap(), "TooManyRequests");
    // Other endpoints and other apps/tenants have their own budgets.
    assert_eq!(get(&emu, &token, "/api/indicators").await.0, 200);
    let t2 = token_for(&emu, TENANT2_ID, TENANT2_APP_ID, TENANT2_APP_SECRET).await;
    assert_eq!(post(&emu, &t2, "/api/indicators/import", &body).await.0, 200);
}

#[tokio::test]
async fn tenant_cap_fails_items_and_single_submits() {
    let emu = Emulator::start(EmulatorConfig { indicator_cap: 5, ..EmulatorConfig::sandbox() }).await.unwrap();
    let token = good_token(&emu).await;
    let items: Vec<Value> = (0..7).map(|i| indicator(&sha256(i))).collect();
    let (status, body) = post(&emu, &token, "/api/indicators/import", &json!({"Indicators": items})).await;
    assert_eq!(status, 200);
    let failed: Vec<&Value> = body["value"].as_array().unwrap().iter().filter(|r| r["isFailed"] == true).collect();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["failureReason"], "Maximum number of indicators reached");
    let (status, body) = post(&emu, &token, "/api/indicators", &indicator(&sha256(99))).await;
    assert_eq!(status, 400);
    assert_api_error(&body, "BadRequest");
    // Updating an existing one is still fine.
    assert_eq!(post(&emu, &token, "/api/indicators", &indicator(&sha256(0))).await.0, 200);
    assert_eq!(emu.indicators(TENANT_ID).len(), 5);
}

#[tokio::test]
async fn default_cap_is_15000_active_indicators() {
    let emu = sandbox().await;
    for i in 0..14_999 {
        emu.insert_indicator(TENANT_ID, indicator(&sha256(i)));
    }
    // An expired one does not count (and is purged).
    let mut old = indicator(&sha256(20_000));
    old["expirationTime"] = json!("2001-01-01T00:00:00Z");
    emu.insert_indicator(TENANT_ID, old);
    let token = good_token(&emu).await;
    let items = json!({"Indicators": [indicator(&sha256(15_000)), indicator(&sha256(15_001))]});
    let (status, body) = post(&emu, &token, "/api/indicators/import", &items).await;
    assert_eq!(status, 200);
    assert_eq!(body["value"][0]["isFailed"], false);
    assert_eq!(body["value"][1]["isFailed"], true);
    assert_eq!(body["value"][1]["failureReason"], "Maximum number of indicators reached");
    let (_, body) = get(&emu, &token, "/api/indicators?$count=true&$top=1&$select=id").await;
    assert_eq!(body["@odata.count"], 15_000);
    assert_eq!(body["value"][0].as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn latency_and_faults() {
    let emu = sandbox().await;
    let token = good_token(&emu).await;

    emu.set_latency(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(get(&emu, &token, "/api/indicators").await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t = Instant::now();
    good_token(&emu).await;
    assert!(t.elapsed() < Duration::from_millis(300), "token calls are not delayed");
    emu.set_latency(Duration::ZERO);

    emu.faults().throttle_next(2, 7);
    for _ in 0..2 {
        let r = http().get(api(&emu, "/api/indicators")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "7");
        assert_api_error(&r.json().await.unwrap(), "TooManyRequests");
    }
    assert_eq!(get(&emu, &token, "/api/indicators").await.0, 200);

    emu.faults().fail_next(1, 503);
    let (status, body) = get(&emu, &token, "/api/indicators").await;
    assert_eq!(status, 503);
    assert!(body["error"]["code"].is_string() && body["error"]["target"].is_string());
    emu.faults().fail_next(1, 500);
    let (status, body) = get(&emu, &token, "/api/indicators").await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["code"], "InternalServerError");
    assert_eq!(get(&emu, &token, "/api/indicators").await.0, 200);

    emu.faults().hang_next(1, Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(get(&emu, &token, "/api/indicators").await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    emu.faults().throttle_randomly(1.0);
    assert_eq!(get(&emu, &token, "/api/indicators").await.0, 429);
    emu.faults().throttle_next(1, 3);
    emu.faults().clear();
    assert_eq!(get(&emu, &token, "/api/indicators").await.0, 200, "clear() drops random and queued faults");

    emu.faults().token_endpoint_down(true);
    let (status, body) = token_request(
        &emu,
        TENANT_ID,
        &[
            ("client_id", GOOD_APP_ID),
            ("client_secret", GOOD_APP_SECRET),
            ("scope", MDE_SCOPE),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(body["error_description"].as_str().unwrap().starts_with("AADSTS"));
    emu.faults().token_endpoint_down(false);
    good_token(&emu).await;
}

#[tokio::test]
async fn call_log_records_host_bearer_and_identity() {
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let r = http()
        .get(api(&emu, "/api/indicators?$top=1"))
        .header("host", "api.securitycenter.microsoft.com")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let calls = emu.calls();
    assert_eq!(calls.len(), 2);
    let (tok, list) = (&calls[0], &calls[1]);
    assert_eq!(tok.endpoint, Endpoint::TokenV2);
    assert_eq!(tok.method, "POST");
    assert!(!tok.bearer);
    assert_eq!(tok.host, format!("127.0.0.1:{}", emu.url().port().unwrap()));
    assert_eq!(tok.tenant.as_deref(), Some(TENANT_ID));
    assert_eq!(tok.app.as_deref(), Some(GOOD_APP_ID));
    assert_eq!(tok.status, 200);
    assert_eq!(list.endpoint, Endpoint::ListIndicators);
    assert_eq!(list.path, "/api/indicators?$top=1");
    assert_eq!(list.host, "api.securitycenter.microsoft.com");
    assert!(list.bearer);
    assert_eq!(list.tenant.as_deref(), Some(TENANT_ID));
    assert_eq!(list.app.as_deref(), Some(GOOD_APP_ID));
    emu.clear_calls();
    assert!(emu.calls().is_empty());
}

#[tokio::test]
async fn machines_and_alerts() {
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let (status, body) = get(&emu, &token, "/api/machines").await;
    assert_eq!(status, 200);
    assert_eq!(body["value"].as_array().unwrap().len(), 2);
    assert!(body["@odata.context"].as_str().unwrap().ends_with("#Machines"));
    let (_, body) = get(&emu, &token, "/api/alerts").await;
    assert!(body["value"][0].get("evidence").is_none());
    let (_, body) = get(&emu, &token, "/api/alerts?$top=10&$expand=evidence").await;
    assert!(body["value"][0]["evidence"][0]["sha256"].is_string());
    emu.set_machines(TENANT_ID, vec![]);
    let (status, body) = get(&emu, &token, "/api/machines?$top=1").await;
    assert_eq!(status, 404);
    assert_api_error(&body, "ResourceNotFound");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let emu = sandbox().await;
    good_token(&emu).await;
    emu.shutdown().await;
    let r = http().get(api(&emu, "/api/indicators")).send().await;
    assert!(r.is_err());
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let emu = sandbox().await;
    let clone = emu.clone();
    let url = api(&emu, "/api/indicators");
    drop(emu);
    assert_eq!(http().get(&url).send().await.unwrap().status(), 401, "a clone keeps it alive");
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A fresh client: no pooled connection.
        if reqwest::Client::new().get(&url).send().await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "server still answering");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
