//! The sync engine at Defender's limits: drift repaired, expired values left alone, the tenant
//! cap respected, and an operator killed mid-batch recovers without duplicates.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use std::time::Duration;

use common::*;
use defender_operator::api::conditions::{INDICATORS_SYNCED, READY, find};
use defender_operator::api::{DefenderPartner, DeliveryState, PartnerState, ProbeFinding};
use defender_operator::controller::sync::EngineConfig;
use defender_operator::sandbox::SandboxOptions;
use defender_sandbox::emulator::{EmulatorConfig, Endpoint, sandbox_values as sv};
use futures::StreamExt;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

fn fast_resync() -> SandboxOptions {
    let mut options = SandboxOptions::default();
    options.engine.resync = Duration::from_secs(1);
    options.engine.tick = Duration::from_millis(500);
    options
}

#[tokio::test]
async fn an_indicator_deleted_in_the_portal_is_pushed_again_but_an_expired_one_is_not() {
    let world = world_with(fast_resync()).await;
    world.attached_partner("default", "defender", json!({"indicator": {"expireAfter": "1h"}})).await;
    world.finding("default", "live", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    // Observed in 2020 with a 1 h expiry: nothing to push.
    world
        .finding(
            "default",
            "old",
            &[sha256(2)],
            json!({"state": "UNPROTECTED", "observedTime": "2020-01-01T00:00:00Z"}),
        )
        .await;
    world.ready_finding("default", "live").await;
    let old = world
        .wait_for("default", "old", WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| s.deliveries.first().is_some_and(|d| d.state == DeliveryState::Expired))
        })
        .await
        .unwrap();
    let status = old.status.unwrap();
    assert_eq!(status.deliveries[0].state, DeliveryState::Expired);
    assert_eq!(
        status.deliveries[0].message.as_deref(),
        Some("expired at 2020-01-01T01:00:00Z (observed 2020-01-01T00:00:00Z + expireAfter 1h); not pushed again")
    );
    // An expected end, not a failure: Ready, done for DELIVERED.
    let ready = find(&status.conditions, READY).expect("a Ready condition");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Expired"));
    assert_eq!(
        ready.message,
        "this finding's indicators expired and are not pushed again; partner defender: expired at \
         2020-01-01T01:00:00Z (observed 2020-01-01T00:00:00Z + expireAfter 1h)"
    );
    assert_eq!(status.delivered.as_deref(), Some("1/1"));

    // Someone deletes the live one in the Defender portal.
    let id = world.indicators()[0]["id"].as_str().unwrap().to_string();
    assert!(world.defender.remove_indicator(sv::TENANT_ID, &id));
    eventually("drift repaired", WAIT, || world.indicator_values(sv::TENANT_ID) == vec![sha256(1)]).await;
    assert_ne!(world.indicators()[0]["id"].as_str().unwrap(), id, "pushed again as a new indicator");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), vec![sha256(1)], "the expired value is never pushed");
}

#[tokio::test]
async fn pushing_stops_before_the_tenant_cap_with_quota_exceeded() {
    let mut options = SandboxOptions::default();
    options.emulator = EmulatorConfig { indicator_cap: 10, ..EmulatorConfig::sandbox() };
    options.engine = EngineConfig { tenant_cap: 10, ..options.engine };
    let world = world_with(options).await;
    for i in 0..7 {
        world.defender.insert_indicator(
            sv::TENANT_ID,
            json!({"indicatorValue": sha256(100 + i), "indicatorType": "FileSha256", "title": "other tool"}),
        );
    }
    world.attached_partner("default", "defender", json!({})).await;
    for i in 0..5 {
        world.finding("default", &format!("f{i}"), &[sha256(i)], json!({"state": "UNPROTECTED"})).await;
    }
    let partner = world
        .wait_for("default", "defender", WAIT, |p: &DefenderPartner| {
            p.status.as_ref().is_some_and(|s| {
                find(&s.conditions, INDICATORS_SYNCED).is_some_and(|c| c.reason == "QuotaExceeded")
                    && s.quota.as_ref().is_some_and(|q| q.used == 10)
            })
        })
        .await
        .unwrap();
    let status = partner.status.unwrap();
    assert_eq!(find(&status.conditions, INDICATORS_SYNCED).unwrap().status, "False");
    let ready = find(&status.conditions, READY).unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "QuotaExceeded"));
    assert_eq!(status.state, Some(PartnerState::Attached), "still attached: what is in Defender stays");
    assert_eq!(status.quota.as_ref().map(|q| q.limit), Some(10));
    assert_eq!(status.indicators.as_ref().map(|i| (i.submitted, i.failed)), Some((3, 2)));
    assert_eq!(world.indicators().len(), 10, "3 pushed, 2 held back, nothing failed at Defender");
    let refused_by_defender = world.defender.calls().into_iter().filter(|c| c.status >= 400).count();
    assert_eq!(refused_by_defender, 0, "the operator stopped before the cap instead of hitting it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_mid_batch_restarts_without_duplicates_and_delivers_everything() {
    const FINDINGS: u32 = 1_200;
    let mut world = world().await;
    world.attached_partner("default", "defender", json!({})).await;
    // Slow Defender: each import takes a while, so the kill lands with a batch in flight.
    world.defender.set_latency(Duration::from_millis(700));

    let findings: Api<ProbeFinding> = Api::namespaced(world.admin.clone(), "default");
    futures::stream::iter(0..FINDINGS)
        .for_each_concurrent(16, |i| {
            let world = &world;
            async move { world.finding("default", &format!("f{i}"), &[sha256(i)], json!({"code": 101})).await }
        })
        .await;
    eventually("the first batch landed", Duration::from_secs(60), || !world.indicators().is_empty()).await;
    assert!(world.indicators().len() < FINDINGS as usize, "killed before the end");
    world.operator.take().unwrap().kill();
    // A request the killed process had in flight still completes at Defender (as it would for
    // real): let it land before observing what the restarted operator sends.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let landed_before_kill = world.indicators().len();

    world.defender.clear_calls();
    world.defender.set_latency(Duration::ZERO);
    world.operator = Some(world.start_operator());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let list = findings.list(&ListParams::default()).await.unwrap();
        let submitted = list
            .items
            .iter()
            .filter(|f| {
                f.status.as_ref().is_some_and(|s| s.deliveries.iter().any(|d| d.state == DeliveryState::Submitted))
            })
            .count();
        if submitted == FINDINGS as usize {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {submitted} of {FINDINGS} Submitted after the restart");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let values = world.indicator_values(sv::TENANT_ID);
    let mut unique = values.clone();
    unique.dedup();
    assert_eq!(values.len(), FINDINGS as usize, "every UNPROTECTED finding is in Defender");
    assert_eq!(unique.len(), values.len(), "no duplicates");
    // The restarted operator read Defender first and sent only what was missing.
    let calls = world.defender.calls();
    let first_import = calls.iter().position(|c| c.endpoint == Endpoint::ImportIndicators);
    let first_list = calls.iter().position(|c| c.endpoint == Endpoint::ListIndicators);
    assert!(first_list.is_some() && (first_import.is_none() || first_list < first_import), "listed before importing");
    let imports = calls.iter().filter(|c| c.endpoint == Endpoint::ImportIndicators).count();
    let missing = FINDINGS as usize - landed_before_kill;
    assert!(imports <= missing.div_ceil(500) + 1, "{imports} imports for at most {missing} missing values");
}

#[tokio::test]
async fn a_lone_finding_does_not_wait_for_a_spent_import_budget() {
    let mut world = world().await;
    let operator = world.operator.take().unwrap();
    eventually("the first operator is ready", WAIT, || operator.health.is_ready()).await;
    operator.stop().await;
    let mut config = world.operator_config();
    config.rate_limits = Some(defender_operator::defender::RateLimits { import_per_minute: 1, ..Default::default() });
    world.operator = Some(world.start_operator_with(config));
    world.attached_partner("default", "defender", json!({})).await;

    for i in 0..3 {
        let started = tokio::time::Instant::now();
        world.finding("default", &format!("lone-{i}"), &[sha256(i)], json!({"state": "UNPROTECTED"})).await;
        eventually("the lone finding's indicator is in Defender", Duration::from_secs(5), || {
            world.defender.holds(sv::TENANT_ID, &sha256(i))
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(3), "finding {i} took {:?}", started.elapsed());
    }
    let calls = world.defender.calls();
    let count = |endpoint| calls.iter().filter(|c| c.endpoint == endpoint).count();
    assert_eq!(count(Endpoint::ImportIndicators), 1, "one import while the budget lasted");
    assert_eq!(count(Endpoint::SubmitIndicator), 2, "then single submits");
    assert!(calls.iter().all(|c| c.status != 429), "never throttled");
}

#[tokio::test]
async fn a_throttled_import_does_not_hold_a_lone_finding_back() {
    let world = world().await;
    world.attached_partner("default", "defender", json!({})).await;
    eventually("the engine read Defender", WAIT, || {
        world.defender.calls().iter().any(|c| c.endpoint == Endpoint::ListIndicators)
    })
    .await;
    // And its first reads of machines and alerts are done: the next call is the import.
    world
        .wait_for("default", "defender", WAIT, |p: &DefenderPartner| {
            p.status.as_ref().is_some_and(|s| {
                defender_operator::api::conditions::is_true(
                    &s.conditions,
                    defender_operator::api::outcome::OUTCOMES_AVAILABLE,
                )
            })
        })
        .await
        .unwrap();

    // Defender's import budget is spent elsewhere (another process of the same app): 429, 30 s.
    world.defender.faults().throttle_next(1, 30);
    let started = tokio::time::Instant::now();
    world.finding("default", "lone", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    eventually("pushed despite the 429", Duration::from_secs(5), || world.defender.holds(sv::TENANT_ID, &sha256(1)))
        .await;
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let calls = world.defender.calls();
    assert!(calls.iter().any(|c| c.endpoint == Endpoint::ImportIndicators && c.status == 429), "{calls:?}");
    assert!(calls.iter().any(|c| c.endpoint == Endpoint::SubmitIndicator && c.status == 200), "{calls:?}");
    let imports_after =
        calls.iter().skip_while(|c| c.status != 429).filter(|c| c.endpoint == Endpoint::ImportIndicators).count();
    assert_eq!(imports_after, 1, "no import retried inside the Retry-After");
}

/// Two findings share a hash: one UNPROTECTED, one PROTECTED. The indicator stays while either
/// exists (a later PROTECTED result is the indicator working) and the partner counts it;
/// with `deletionPolicy: Delete` it goes with the last finding that refers to it.
#[tokio::test]
async fn a_hash_shared_by_findings_stays_while_one_refers_to_it_and_is_counted() {
    let world = world().await;
    world.attached_partner("default", "defender", json!({"deletionPolicy": "Delete"})).await;
    world.finding("default", "laptop-a", &[sha256(7)], json!({"code": 101})).await;
    world.finding("default", "laptop-b", &[sha256(7)], json!({"code": 100})).await;
    world.ready_finding("default", "laptop-a").await;
    world.ready_finding("default", "laptop-b").await;

    let findings: Api<ProbeFinding> = Api::namespaced(world.admin.clone(), "default");
    findings.delete("laptop-a", &Default::default()).await.unwrap();
    let counted = |submitted: u32| {
        move |p: &DefenderPartner| {
            p.status
                .as_ref()
                .and_then(|s| s.indicators.as_ref())
                .is_some_and(|i| (i.desired, i.submitted) == (submitted, submitted))
        }
    };
    // A later finding: once it is delivered, the engine has had a round since the deletion.
    world.finding("default", "laptop-c", &[sha256(8)], json!({"code": 101})).await;
    world.ready_finding("default", "laptop-c").await;
    world.wait_for("default", "defender", WAIT, counted(2)).await.expect("the kept indicator is counted");
    let mut held = vec![sha256(7), sha256(8)];
    held.sort();
    assert_eq!(world.indicator_values(sv::TENANT_ID), held, "sha256(7) kept for laptop-b");

    findings.delete("laptop-b", &Default::default()).await.unwrap();
    findings.delete("laptop-c", &Default::default()).await.unwrap();
    eventually("withdrawn with the last finding", WAIT, || world.indicators().is_empty()).await;
    world.wait_for("default", "defender", WAIT, counted(0)).await.expect("nothing counted");
}

/// While the operator is down, someone replaces one of its indicators in the portal. The
/// restarted engine's first read shows the value held by someone else: that finding is reconciled
/// (External), though nothing is pushed for it; the finding whose delivery still agrees is not
/// written again.
#[tokio::test]
async fn after_a_restart_a_finding_whose_value_changed_hands_while_down_shows_it() {
    let mut world = world().await;
    world.attached_partner("default", "defender", json!({})).await;
    world.finding("default", "kept", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    world.finding("default", "replaced", &[sha256(2)], json!({"state": "UNPROTECTED"})).await;
    let kept = world.ready_finding("default", "kept").await;
    world.ready_finding("default", "replaced").await;

    world.operator.take().unwrap().kill();
    let ours = world.indicators().into_iter().find(|i| i["indicatorValue"] == sha256(2)).unwrap();
    assert!(world.defender.remove_indicator(sv::TENANT_ID, ours["id"].as_str().unwrap()));
    let foreign = world.defender.insert_indicator(
        sv::TENANT_ID,
        json!({"indicatorValue": sha256(2), "indicatorType": "FileSha256", "application": "portal"}),
    );
    world.defender.clear_calls();
    world.operator = Some(world.start_operator());

    let replaced = world
        .wait_for("default", "replaced", WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| s.deliveries.first().is_some_and(|d| d.state == DeliveryState::External))
        })
        .await
        .unwrap();
    let delivery = &replaced.status.unwrap().deliveries[0];
    assert_eq!(delivery.indicators[0].id.as_deref(), Some(foreign.as_str()));
    let writes = [Endpoint::ImportIndicators, Endpoint::SubmitIndicator];
    assert!(!world.defender.calls().iter().any(|c| writes.contains(&c.endpoint)), "nothing pushed: it is held");
    let findings: Api<ProbeFinding> = Api::namespaced(world.admin.clone(), "default");
    let kept_now = findings.get("kept").await.unwrap();
    assert_eq!(kept_now.metadata.resource_version, kept.metadata.resource_version, "not written again");
}
