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
    let names = dns_names(&body);
    for name in ["sandbox-win11-01", "sandbox-win11-02", "laptop-7", "server-2"] {
        assert!(names.contains(&format!("{name}.{TENANT_DOMAIN}")), "{names:?}");
    }
    assert!(body["@odata.context"].as_str().unwrap().ends_with("#Machines"));
    let (_, body) = get(&emu, &token, "/api/alerts").await;
    assert_eq!(body["value"][0]["evidence"], json!([]), "lists carry evidence only with $expand");
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

// ---- Machines, antivirus health and alerts ----

fn dns_names(body: &Value) -> Vec<String> {
    body["value"].as_array().unwrap().iter().map(|m| m["computerDnsName"].as_str().unwrap().to_owned()).collect()
}

fn fqdn(name: &str) -> String {
    format!("{name}.{TENANT_DOMAIN}")
}

/// The sandbox, with `Machine.ReadWrite.All` added to the good app.
async fn sandbox_with_machine_write() -> Emulator {
    let mut config = EmulatorConfig::sandbox();
    let good = config.tenants[0].apps.iter_mut().find(|a| a.client_id == GOOD_APP_ID).unwrap();
    good.roles.push("Machine.ReadWrite.All".into());
    Emulator::start(config).await.unwrap()
}

/// An unquoted OData DateTimeOffset literal.
fn odata_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_string()
}

fn len(body: &Value) -> usize {
    body["value"].as_array().unwrap_or_else(|| panic!("a list: {body}")).len()
}

#[tokio::test]
async fn default_machines_show_each_readiness_case() {
    use defender_sandbox::emulator::sandbox_machines::*;
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let (_, machine) = get(&emu, &token, &format!("/api/machines/{}", fqdn(LAPTOP_7))).await;
    assert_eq!(machine["onboardingStatus"], "Onboarded");
    assert_eq!(machine["healthStatus"], "Active");
    assert_eq!(machine["defenderAvStatus"], "Updated");
    let id = machine["id"].as_str().unwrap();
    assert!(id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    for key in ["firstSeen", "lastSeen", "osPlatform", "osBuild", "version", "osArchitecture", "lastIpAddress"] {
        assert!(!machine[key].is_null(), "{key}: {machine}");
    }
    for key in ["lastExternalIpAddress", "riskScore", "exposureLevel", "deviceValue", "rbacGroupId", "aadDeviceId"] {
        assert!(!machine[key].is_null(), "{key}: {machine}");
    }
    assert_eq!(machine["ipAddresses"][0]["ipAddress"], machine["lastIpAddress"]);
    assert_eq!(machine["isPotentialDuplication"], false);
    assert!(machine["agentVersion"].is_string());

    let (_, av) = get(&emu, &token, "/api/deviceavinfo").await;
    let row = |name: &str| {
        let id = emu.machine_id(TENANT_ID, name).unwrap();
        av["value"].as_array().unwrap().iter().find(|r| r["machineId"] == id.as_str()).cloned()
    };
    let ready = row(LAPTOP_7).unwrap();
    assert_eq!(ready["avMode"], "0");
    assert_eq!(ready["avIsPlatformUpToDate"], "True");
    assert_eq!(ready["osKind"], "windows");
    assert_eq!(row(SERVER_2).unwrap()["avMode"], "0");
    assert_eq!(row(PASSIVE_AV).unwrap()["avMode"], "1");
    let outdated = row(OUTDATED_PLATFORM).unwrap();
    assert_eq!(outdated["avPlatformVersion"], "4.18.1807.18075");
    assert_eq!(outdated["avIsPlatformUpToDate"], "False");
    assert!(row(NOT_ONBOARDED).is_none(), "no antivirus health before onboarding");

    let (_, inactive) = get(&emu, &token, &format!("/api/machines/{INACTIVE}")).await;
    assert_eq!(inactive["healthStatus"], "Inactive");
    let last_seen: jiff::Timestamp = inactive["lastSeen"].as_str().unwrap().parse().unwrap();
    assert!(jiff::Timestamp::now().duration_since(last_seen) > jiff::SignedDuration::from_hours(24 * 30));
    let (_, kiosk) = get(&emu, &token, &format!("/api/machines/{NOT_ONBOARDED}")).await;
    assert_eq!(kiosk["onboardingStatus"], "CanBeOnboarded");
}

#[tokio::test]
async fn machine_list_filters_and_pages_as_documented() {
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let (_, all) = get(&emu, &token, "/api/machines").await;
    let total = len(&all);
    assert_eq!(total, 8);
    assert!(all.get("@odata.nextLink").is_none());

    let count = |filter: String| {
        let (emu, token) = (&emu, &token);
        async move {
            let (status, body) = get(emu, token, &format!("/api/machines?$filter={filter}")).await;
            assert_eq!(status, 200, "{filter}: {body}");
            len(&body)
        }
    };
    assert_eq!(count(format!("computerDnsName eq '{}'", fqdn("laptop-7"))).await, 1);
    assert_eq!(count(format!("ComputerDnsName eq '{}'", fqdn("LAPTOP-7"))).await, 1, "case-insensitive");
    assert_eq!(count("startswith(computerDnsName,'laptop')".into()).await, 3);
    assert_eq!(count("healthStatus ne 'Active'".into()).await, 2);
    assert_eq!(count("healthStatus eq 'Inactive' or onboardingStatus eq 'CanBeOnboarded'".into()).await, 2);
    assert_eq!(count("onboardingStatus eq 'onboarded' and healthStatus eq 'Active'".into()).await, 6);
    assert_eq!(count("machineTags/any(t: t eq 'sandbox')".into()).await, 2);
    assert_eq!(count("osPlatform eq 'WindowsServer2022'".into()).await, 1);
    assert_eq!(count("rbacGroupId eq 0".into()).await, total);
    let day_ago = odata_time(jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24));
    assert_eq!(count(format!("lastSeen gt {day_ago}")).await, total - 1);
    assert_eq!(count(format!("lastSeen le {day_ago}")).await, 1);
    assert_eq!(count("lastSeen gt 2018-08-01Z".into()).await, total, "the docs' date form");
    assert_eq!(count("computerDnsName eq 'nobody.example.com'".into()).await, 0, "200 with an empty list");

    for bad in [
        format!("lastSeen gt '{day_ago}'"),
        "healthStatus eq 'Sleepy'".into(),
        "machineTags eq 'sandbox'".into(),
        "isAadJoined eq true".into(),
    ] {
        let (status, body) = get(&emu, &token, &format!("/api/machines?$filter={bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert_api_error(&body, "ODataError");
    }

    // With $top there is no nextLink, even when rows remain: page with $skip.
    let (_, page) = get(&emu, &token, "/api/machines?$top=3").await;
    assert_eq!(len(&page), 3);
    assert!(page.get("@odata.nextLink").is_none(), "{page}");
    let mut seen = dns_names(&page);
    let mut skip = 3;
    loop {
        let (_, page) = get(&emu, &token, &format!("/api/machines?$top=3&$skip={skip}")).await;
        seen.extend(dns_names(&page));
        skip += 3;
        if len(&page) < 3 {
            break;
        }
    }
    assert_eq!(seen, dns_names(&all));
    let (status, _) = get(&emu, &token, "/api/machines?$top=10000").await;
    assert_eq!(status, 200);
    let (status, body) = get(&emu, &token, "/api/machines?$top=10001").await;
    assert_eq!(status, 400);
    assert_api_error(&body, "ODataError");
}

#[tokio::test]
async fn machine_by_id_or_name_and_its_404() {
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let id = emu.machine_id(TENANT_ID, "server-2").unwrap();
    for key in [id.clone(), fqdn("server-2"), "SERVER-2".into()] {
        let (status, body) = get(&emu, &token, &format!("/api/machines/{key}")).await;
        assert_eq!(status, 200, "{key}");
        assert_eq!(body["id"], id.as_str());
        assert!(body["@odata.context"].as_str().unwrap().ends_with("#Machines/$entity"));
    }
    let (status, body) = get(&emu, &token, "/api/machines/123123123").await;
    assert_eq!(status, 404);
    assert_api_error(&body, "ResourceNotFound");
    assert_eq!(body["error"]["message"], "Machine 123123123 was not found");
    let no_roles = token_for(&emu, TENANT_ID, NO_ROLES_APP_ID, NO_ROLES_APP_SECRET).await;
    let (status, body) = get(&emu, &no_roles, &format!("/api/machines/{id}")).await;
    assert_eq!(status, 403);
    assert_api_error(&body, "Forbidden");
    assert!(body["error"]["message"].as_str().unwrap().contains("(Machine.Read.All, Machine.ReadWrite.All)"));
    let endpoints: Vec<Endpoint> = emu.calls().iter().map(|c| c.endpoint).collect();
    assert!(endpoints.iter().filter(|e| **e == Endpoint::MachineById).count() == 5, "{endpoints:?}");
}

#[tokio::test]
async fn put_machine_and_find_by_ip() {
    use defender_sandbox::emulator::{HealthStatus, MachineSpec, OnboardingStatus};
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let now = jiff::Timestamp::now();
    let seen = now - jiff::SignedDuration::from_hours(3);
    let earlier = now - jiff::SignedDuration::from_hours(48);
    let spec = MachineSpec::new("probe-host.contoso.com")
        .ips(&["10.9.9.9", "fd00::9"])
        .last_seen(seen)
        .seen_with_ip("10.9.9.8", earlier)
        .health(HealthStatus::ImpairedCommunication)
        .onboarding(OnboardingStatus::Onboarded)
        .tags(&["Probe Runner"]);
    let id = emu.put_machine(TENANT_ID, spec.clone());
    assert_eq!(emu.put_machine(TENANT_ID, spec), id, "same name, same id: replaced");
    assert_eq!(emu.machines(TENANT_ID).iter().filter(|m| m["id"] == id.as_str()).count(), 1);
    let (_, m) = get(&emu, &token, &format!("/api/machines/{id}")).await;
    assert_eq!(m["healthStatus"], "ImpairedCommunication");
    assert_eq!(m["lastIpAddress"], "10.9.9.9");

    let find = |ip: &str, at: jiff::Timestamp| {
        let path = format!("/api/machines/findbyip(ip='{ip}',timestamp={})", odata_time(at));
        let (emu, token) = (&emu, &token);
        async move { get(emu, token, &path).await }
    };
    let ids = |body: &Value| body["value"].as_array().unwrap().iter().map(|m| m["id"].clone()).collect::<Vec<_>>();
    let (status, body) = find("10.9.9.9", seen + jiff::SignedDuration::from_mins(14)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec![json!(id)]);
    assert!(body["@odata.context"].as_str().unwrap().ends_with("#Machines"));
    assert_eq!(ids(&find("fd00::9", seen - jiff::SignedDuration::from_mins(15)).await.1), vec![json!(id)]);
    assert_eq!(len(&find("10.9.9.9", seen + jiff::SignedDuration::from_mins(16)).await.1), 0);
    assert_eq!(ids(&find("10.9.9.8", earlier).await.1), vec![json!(id)], "an earlier sighting");

    // An edit moves the machine to a new IP; the old sighting stays findable.
    let later = now - jiff::SignedDuration::from_mins(1);
    assert!(emu.update_machine(TENANT_ID, &id, |m| {
        m["lastIpAddress"] = json!("10.9.9.10");
        m["ipAddresses"] = json!([{"ipAddress": "10.9.9.10", "macAddress": "001122334455", "operationalStatus": "Up"}]);
        m["lastSeen"] = json!(later.to_string());
    }));
    assert_eq!(ids(&find("10.9.9.10", later).await.1), vec![json!(id)]);
    assert_eq!(ids(&find("10.9.9.9", seen).await.1), vec![json!(id)]);

    let (status, body) = find("10.9.9.9", now - jiff::SignedDuration::from_hours(24 * 31)).await;
    assert_eq!(status, 400, "older than 30 days");
    assert_api_error(&body, "BadRequest");
    let (status, body) = find("10.9.9.999", now).await;
    assert_eq!(status, 400);
    assert_api_error(&body, "InvalidIpAddress");
    assert!(emu.calls().iter().any(|c| c.endpoint == Endpoint::FindMachinesByIp && c.status == 200));
    assert!(emu.remove_machine(TENANT_ID, &id));
    assert_eq!(get(&emu, &token, &format!("/api/machines/{id}")).await.0, 404);
}

#[tokio::test]
async fn machine_tags_need_readwrite_and_a_case_sensitive_body() {
    let emu = sandbox_with_machine_write().await;
    let id = emu.machine_id(TENANT_ID, "laptop-7").unwrap();
    let path = format!("/api/machines/{id}/tags");
    let reader = token_for(&emu, TENANT_ID, MACHINE_ONLY_APP_ID, MACHINE_ONLY_APP_SECRET).await;
    let (status, body) = post(&emu, &reader, &path, &json!({"Value": "probe", "Action": "Add"})).await;
    assert_eq!(status, 403);
    assert!(body["error"]["message"].as_str().unwrap().contains("(Machine.ReadWrite.All)"), "{body}");

    let token = good_token(&emu).await;
    let (status, body) = post(&emu, &token, &path, &json!({"Value": "probe runner", "Action": "Add"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["machineTags"], json!(["probe runner"]));
    let (_, body) = post(&emu, &token, &path, &json!({"Value": "probe runner", "Action": "Add"})).await;
    assert_eq!(body["machineTags"], json!(["probe runner"]), "no duplicate");
    let (_, listed) = get(&emu, &token, "/api/machines?$filter=machineTags/any(t: t eq 'probe runner')").await;
    assert_eq!(len(&listed), 1);
    let (_, body) = post(&emu, &token, &path, &json!({"Value": "probe runner", "Action": "Remove"})).await;
    assert_eq!(body["machineTags"], json!([]));

    for (bad, code) in [
        (json!({"value": "x", "action": "Add"}), "MissingRequiredParameter"),
        (json!({"Value": "x", "Action": "Toggle"}), "InvalidInput"),
        (json!({"Value": "x".repeat(201), "Action": "Add"}), "InvalidInput"),
    ] {
        let (status, body) = post(&emu, &token, &path, &bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_api_error(&body, code);
    }
    let (status, body) = post(
        &emu,
        &token,
        "/api/machines/0000000000000000000000000000000000000000/tags",
        &json!({"Value": "x", "Action": "Add"}),
    )
    .await;
    assert_eq!(status, 404);
    assert_api_error(&body, "ResourceNotFound");
    assert!(emu.calls().iter().any(|c| c.endpoint == Endpoint::MachineTags && c.status == 200));
    // Machine.ReadWrite.All also reads.
    let writer_only = Emulator::start({
        let mut config = EmulatorConfig::sandbox();
        config.tenants[0].apps[0].roles = vec!["Machine.ReadWrite.All".into()];
        config
    })
    .await
    .unwrap();
    let token = good_token(&writer_only).await;
    assert_eq!(get(&writer_only, &token, "/api/machines?$top=1").await.0, 200);
    assert_eq!(get(&writer_only, &token, "/api/deviceavinfo").await.0, 200);
}

#[tokio::test]
async fn many_machines_are_tagged_in_one_call_all_or_nothing() {
    let emu = sandbox_with_machine_write().await;
    let token = good_token(&emu).await;
    let (laptop, server) =
        (emu.machine_id(TENANT_ID, "laptop-7").unwrap(), emu.machine_id(TENANT_ID, "server-2").unwrap());
    let path = "/api/machines/AddOrRemoveTagForMultipleMachines";
    let reader = token_for(&emu, TENANT_ID, MACHINE_ONLY_APP_ID, MACHINE_ONLY_APP_SECRET).await;
    let body = json!({"Value": "bas", "Action": "Add", "MachineIds": [laptop]});
    assert_eq!(post(&emu, &reader, path, &body).await.0, 403);

    let unknown = "0000000000000000000000000000000000000000";
    let (status, body) =
        post(&emu, &token, path, &json!({"Value": "bas", "Action": "Add", "MachineIds": [laptop, unknown]})).await;
    assert_eq!(status, 404);
    assert!(body["error"]["message"].as_str().unwrap().contains(unknown), "{body}");
    assert!(
        emu.machines(TENANT_ID)
            .iter()
            .all(|m| m["machineTags"].as_array().is_none_or(|t| t.is_empty() || t != &vec![json!("bas")]))
    );

    let (status, body) =
        post(&emu, &token, path, &json!({"Value": "bas", "Action": "Add", "MachineIds": [laptop, server]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(len(&body), 2);
    assert!(body["value"].as_array().unwrap().iter().all(|m| m["machineTags"] == json!(["bas"])));
    let (_, listed) = get(&emu, &token, "/api/machines?$filter=machineTags/any(t: t eq 'bas')").await;
    assert_eq!(len(&listed), 2);
    for (bad, code) in [
        (json!({"Value": "bas", "Action": "Add"}), "MissingRequiredParameter"),
        (json!({"Value": "bas", "Action": "Add", "MachineIds": []}), "InvalidInput"),
        (json!({"Value": "bas", "Action": "Add", "MachineIds": vec![laptop.clone(); 501]}), "InvalidInput"),
        (json!({"Value": "bas", "Action": "Add", "MachineIds": "x"}), "InvalidRequestBody"),
    ] {
        let (status, body) = post(&emu, &token, path, &bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_api_error(&body, code);
    }
    assert!(emu.calls().iter().any(|c| c.endpoint == Endpoint::TagMachines && c.status == 200));
}

#[tokio::test]
async fn device_av_info_filters_and_pages_by_20() {
    use defender_sandbox::emulator::{AvMode, AvSpec, MachineSpec};
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let (status, body) = get(&emu, &token, "/api/deviceavinfo").await;
    assert_eq!(status, 200);
    assert!(body["@odata.context"].as_str().unwrap().ends_with("#DeviceAvInfo"));
    assert_eq!(len(&body), 7, "onboarded machines with antivirus health");
    let row = &body["value"][0];
    assert_eq!(row["id"], row["machineId"]);
    for key in ["avMode", "avPlatformVersion", "avEngineVersion", "avSignatureVersion", "avIsEngineUpToDate"] {
        assert!(row[key].is_string(), "{key} is a string: {row}");
    }
    assert!(row["rbacGroupId"].is_number());
    for key in ["lastSeenTime", "dataRefreshTimestamp", "avPlatformUpdateTime", "osVersion", "osPlatform"] {
        assert!(row[key].is_string(), "{key}: {row}");
    }

    let (_, passive) = get(&emu, &token, "/api/deviceavinfo?$filter=avMode eq '1'").await;
    assert_eq!(len(&passive), 1);
    let (_, stale) = get(&emu, &token, "/api/deviceavinfo?$filter=avIsPlatformUpToDate eq 'False'").await;
    assert_eq!(len(&stale), 1);
    for bad in ["id eq 'x'", "rbacGroupName eq 'x'"] {
        let (status, body) = get(&emu, &token, &format!("/api/deviceavinfo?$filter={bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert_api_error(&body, "ODataError");
    }

    // Hooks: change and clear a machine's antivirus health.
    let laptop = emu.machine_id(TENANT_ID, "laptop-7").unwrap();
    assert!(emu.set_av_info(TENANT_ID, &laptop, Some(AvSpec::default().mode(AvMode::EdrBlocked))));
    let (_, rows) = get(&emu, &token, &format!("/api/deviceavinfo?$filter=machineId eq '{laptop}'")).await;
    assert_eq!(rows["value"][0]["avMode"], "4");
    assert!(emu.set_av_info(TENANT_ID, &laptop, None));
    let (_, rows) = get(&emu, &token, &format!("/api/deviceavinfo?$filter=machineId eq '{laptop}'")).await;
    assert_eq!(len(&rows), 0);
    assert_eq!(get(&emu, &token, &format!("/api/machines/{laptop}")).await.1["defenderAvStatus"], "NotReporting");

    // 25 machines: pages of 20 by default, following @odata.nextLink.
    emu.set_machines(TENANT2_ID, vec![]);
    for i in 0..25 {
        emu.put_machine(TENANT2_ID, MachineSpec::new(&format!("pc-{i:02}.fabrikam.com")));
    }
    let t2 = token_for(&emu, TENANT2_ID, TENANT2_APP_ID, TENANT2_APP_SECRET).await;
    let (_, first) = get(&emu, &t2, "/api/deviceavinfo").await;
    assert_eq!(len(&first), 20);
    let next = first["@odata.nextLink"].as_str().expect("nextLink");
    assert!(next.contains("$skip=20"), "{next}");
    let r = http().get(next).bearer_auth(&t2).send().await.unwrap();
    let second: Value = r.json().await.unwrap();
    assert_eq!(len(&second), 5);
    assert!(second.get("@odata.nextLink").is_none());
    let (_, top) = get(&emu, &t2, "/api/deviceavinfo?$top=10").await;
    assert_eq!(len(&top), 10);
    assert!(top["@odata.nextLink"].as_str().unwrap().contains("$skip=10"));

    let no_roles = token_for(&emu, TENANT_ID, NO_ROLES_APP_ID, NO_ROLES_APP_SECRET).await;
    assert_eq!(get(&emu, &no_roles, "/api/deviceavinfo").await.0, 403);
    let machine_only = token_for(&emu, TENANT_ID, MACHINE_ONLY_APP_ID, MACHINE_ONLY_APP_SECRET).await;
    assert_eq!(get(&emu, &machine_only, "/api/deviceavinfo").await.0, 200);
}

#[tokio::test]
async fn device_av_info_has_its_own_30_per_minute_limit() {
    let limits = EmulatorLimits::default();
    assert_eq!((limits.device_av_info_per_minute, limits.device_av_info_per_hour), (30, 1000));
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    for _ in 0..30 {
        assert_eq!(get(&emu, &token, "/api/deviceavinfo?$top=1").await.0, 200);
    }
    let r = http().get(api(&emu, "/api/deviceavinfo")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_api_error(&r.json().await.unwrap(), "TooManyRequests");
    // The machine list has its own budget.
    assert_eq!(get(&emu, &token, "/api/machines?$top=1").await.0, 200);
    assert!(emu.calls().iter().any(|c| c.endpoint == Endpoint::DeviceAvInfo && c.status == 429));
}

#[tokio::test]
async fn alert_list_get_and_machine_alerts() {
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let (_, list) = get(&emu, &token, "/api/alerts").await;
    assert_eq!(len(&list), 1);
    let alert = &list["value"][0];
    let id = alert["id"].as_str().unwrap();
    assert!(id.starts_with("da") && id.contains('_'), "{id}");
    for key in ["incidentId", "severity", "status", "detectionSource", "category", "title", "alertCreationTime"] {
        assert!(!alert[key].is_null(), "{key}: {alert}");
    }
    assert_eq!(alert["aadTenantId"], TENANT_ID);

    let (status, one) = get(&emu, &token, &format!("/api/alerts/{id}")).await;
    assert_eq!(status, 200);
    assert!(one["@odata.context"].as_str().unwrap().ends_with("#Alerts/$entity"));
    let evidence = &one["evidence"][0];
    assert_eq!(evidence["entityType"], "File");
    assert_eq!(evidence["detectionStatus"], "Prevented");
    assert_eq!(evidence["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(evidence["sha1"].as_str().unwrap().len(), 40);
    assert!(evidence.get("registryKey").is_some(), "every evidence property is present");
    let (status, body) = get(&emu, &token, "/api/alerts/da000_1").await;
    assert_eq!(status, 404);
    assert_api_error(&body, "ResourceNotFound");

    for (filter, n) in [("severity eq 'Informational'", 1), ("status eq 'Resolved'", 0), ("InvestigationId eq null", 1)]
    {
        let (status, body) = get(&emu, &token, &format!("/api/alerts?$filter={filter}")).await;
        assert_eq!((status.as_u16(), len(&body)), (200, n), "{filter}");
    }
    let (status, body) = get(&emu, &token, "/api/alerts?$filter=machineId eq 'x'").await;
    assert_eq!(status, 400, "machineId is not filterable");
    assert_api_error(&body, "ODataError");

    let machine = alert["machineId"].as_str().unwrap();
    let (status, body) = get(&emu, &token, &format!("/api/machines/{machine}/alerts")).await;
    assert_eq!(status, 200);
    assert_eq!(len(&body), 1);
    assert_eq!(body["value"][0]["evidence"], json!([]));
    let other = emu.machine_id(TENANT_ID, "server-2").unwrap();
    assert_eq!(len(&get(&emu, &token, &format!("/api/machines/{other}/alerts")).await.1), 0);
    let (status, body) = get(&emu, &token, "/api/machines/123123123/alerts").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["message"], "Machine 123123123 was not found");

    let machine_only = token_for(&emu, TENANT_ID, MACHINE_ONLY_APP_ID, MACHINE_ONLY_APP_SECRET).await;
    for path in [format!("/api/alerts/{id}"), format!("/api/machines/{machine}/alerts")] {
        let (status, body) = get(&emu, &machine_only, &path).await;
        assert_eq!(status, 403, "{path}");
        assert!(body["error"]["message"].as_str().unwrap().contains("(Alert.Read.All, Alert.ReadWrite.All)"));
    }
    let kinds: Vec<Endpoint> = emu.calls().iter().map(|c| c.endpoint).collect();
    for e in [Endpoint::Alerts, Endpoint::AlertById, Endpoint::MachineAlerts] {
        assert!(kinds.contains(&e), "{e:?}");
    }
}

#[tokio::test]
async fn a_test_run_raises_an_alert_after_its_delay() {
    use defender_sandbox::emulator::{TestOutcome, TestRun};
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let before = jiff::Timestamp::now();
    let since = format!("/api/alerts?$filter=alertCreationTime ge {}", odata_time(before));
    let hash = "5ab2e1d3f8a2c4b6d8e0f1a3c5e7092b4d6f8a0c2e4a6b8d0f2a4c6e8b0d2f4a";
    let laptop = emu.machine_id(TENANT_ID, "laptop-7").unwrap();
    let run = TestRun::new("laptop-7", hash, TestOutcome::Prevented)
        .delay(Duration::from_millis(1500))
        .file("office-macro.exe", "C:\\Users\\probe");
    let id = emu.run_test(TENANT_ID, run).expect("an alert is coming");
    assert_eq!(len(&get(&emu, &token, &since).await.1), 0, "not before its delay");
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (_, body) = get(&emu, &token, &since).await;
        if len(&body) > 0 || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(len(&body), 1);
    let alert = &body["value"][0];
    assert_eq!(alert["id"], id.as_str());
    assert_eq!(alert["machineId"], laptop.as_str());
    assert_eq!(alert["computerDnsName"], fqdn("laptop-7"));
    assert_eq!(alert["evidence"], json!([]));
    assert_eq!(alert["lastUpdateTime"], alert["alertCreationTime"]);
    let created: jiff::Timestamp = alert["alertCreationTime"].as_str().unwrap().parse().unwrap();
    assert!(created >= before + jiff::SignedDuration::from_millis(1500), "created when it appeared");
    let (_, body) = get(&emu, &token, &format!("{since}&$expand=evidence")).await;
    let file = &body["value"][0]["evidence"][0];
    assert_eq!(file["sha256"], hash);
    assert_eq!(file["fileName"], "office-macro.exe");
    assert_eq!(file["detectionStatus"], "Prevented");
    let (_, on_machine) = get(&emu, &token, &format!("/api/machines/{laptop}/alerts?$expand=evidence")).await;
    assert_eq!(on_machine["value"][0]["evidence"][0]["sha256"], hash);

    let detected = TestRun::new(&laptop, &sha256(9), TestOutcome::Detected).sha1(&"ab".repeat(20));
    let id = emu.run_test(TENANT_ID, detected).unwrap();
    let (_, one) = get(&emu, &token, &format!("/api/alerts/{id}")).await;
    assert_eq!(one["evidence"][0]["detectionStatus"], "Detected");
    assert_eq!(one["evidence"][0]["sha1"], "ab".repeat(20));
    assert!(emu.run_test(TENANT_ID, TestRun::new(&laptop, &sha256(10), TestOutcome::NotDetected)).is_none());
    assert_eq!(emu.alerts(TENANT_ID).len(), 3, "the default alert and two runs");
}

#[tokio::test]
async fn alerts_poll_incrementally_by_last_update_time() {
    use defender_sandbox::emulator::{TestOutcome, TestRun};
    let emu = sandbox().await;
    let token = good_token(&emu).await;
    let t0 = jiff::Timestamp::now();
    let a = emu.run_test(TENANT_ID, TestRun::new("laptop-7", &sha256(1), TestOutcome::Detected)).unwrap();
    let b = emu.run_test(TENANT_ID, TestRun::new("server-2", &sha256(2), TestOutcome::Prevented)).unwrap();
    let poll = |since: jiff::Timestamp| {
        let path = format!("/api/alerts?$filter=lastUpdateTime+ge+{}&$expand=evidence", odata_time(since));
        let (emu, token) = (&emu, &token);
        async move {
            let (status, body) = get(emu, token, &path).await;
            assert_eq!(status, 200, "{body}");
            body["value"].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        }
    };
    assert_eq!(poll(t0).await, vec![a.clone(), b.clone()], "the 2-hour-old default alert is not new");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t1 = jiff::Timestamp::now();
    assert!(poll(t1).await.is_empty());
    assert!(emu.resolve_alert(TENANT_ID, &b));
    assert_eq!(poll(t1).await, vec![b.clone()]);
    let (_, resolved) = get(&emu, &token, &format!("/api/alerts/{b}")).await;
    assert_eq!(resolved["status"], "Resolved");
    assert!(resolved["resolvedTime"].is_string());
    assert!(emu.update_alert(TENANT_ID, &a, |alert| alert["assignedTo"] = json!("soc@contoso.com")));
    assert_eq!(poll(t1).await, vec![a.clone(), b.clone()]);
    assert!(!emu.update_alert(TENANT_ID, "da1_1", |_| {}));
}
