//! Outcomes against the sandbox: findings matched to the emulator's machines (by hostname, id,
//! IP; ambiguity), each readiness, each detection (inside and after the window, a late alert, an
//! alert on another machine or with another hash, an alert for a PROTECTED finding), missing
//! roles, the machine tag, time to protect, and what it all costs in Defender calls and status
//! writes.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use std::time::Duration;

use common::*;
use defender_operator::api::conditions::{READY, find};
use defender_operator::api::outcome::OUTCOMES_AVAILABLE;
use defender_operator::api::{DefenderPartner, Delivery, Detection, ProbeFinding, Readiness};
use defender_operator::sandbox::SandboxOptions;
use defender_sandbox::emulator::sandbox_values as sv;
use defender_sandbox::emulator::{AppConfig, AppSecret, EmulatorConfig, Endpoint, MachineSpec, TestOutcome, TestRun};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const NS: &str = "default";

/// A partner polling alerts every 5 s (the shortest interval allowed).
fn fast() -> Value {
    json!({"correlation": {"interval": "5s"}})
}

fn ago(minutes: i64) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_mins(minutes)).to_string()
}

fn delivery(finding: &ProbeFinding) -> Option<&Delivery> {
    finding.status.as_ref()?.deliveries.first()
}

fn readiness(finding: &ProbeFinding) -> Option<Readiness> {
    Some(delivery(finding)?.machine.as_ref()?.readiness)
}

fn detection(finding: &ProbeFinding) -> Option<Detection> {
    delivery(finding)?.detection
}

/// Waits until the finding's first delivery satisfies `done`.
async fn until(world: &World, name: &str, what: &str, done: impl Fn(&Delivery) -> bool) -> ProbeFinding {
    world
        .wait_for(NS, name, Duration::from_secs(30), |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| s.observed_generation == f.metadata.generation)
                && delivery(f).is_some_and(&done)
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {what}: {e}"))
}

async fn until_detection(world: &World, name: &str, want: Detection) -> ProbeFinding {
    until(world, name, &format!("detection {want}"), |d| d.detection == Some(want)).await
}

fn calls_to(world: &World, endpoints: &[Endpoint]) -> usize {
    world.defender.calls().iter().filter(|c| endpoints.contains(&c.endpoint)).count()
}

/// The sandbox with extra apps in its first tenant: `(client id, secret, roles)`.
async fn world_with_apps(apps: &[(&str, &str, &[&str])]) -> World {
    let mut emulator = EmulatorConfig::sandbox();
    for (client_id, secret, roles) in apps {
        emulator.tenants[0].apps.push(AppConfig {
            client_id: client_id.to_string(),
            secrets: vec![AppSecret { value: secret.to_string(), expired: false }],
            roles: roles.iter().map(|r| r.to_string()).collect(),
            disabled: false,
            certificates: Vec::new(),
            federated_credentials: Vec::new(),
        });
    }
    world_with(SandboxOptions { emulator, ..SandboxOptions::default() }).await
}

async fn partner_with_app(world: &World, name: &str, client_id: &str, secret: &str, spec: Value) -> DefenderPartner {
    world
        .secret(
            NS,
            &format!("{name}-creds"),
            &[("tenantId", sv::TENANT_ID), ("clientId", client_id), ("clientSecret", secret)],
        )
        .await;
    world.partner(NS, name, &format!("{name}-creds"), spec).await;
    world.attached(NS, name).await
}

async fn outcomes_available(world: &World, partner: &str) {
    world
        .wait_for(NS, partner, WAIT, |p: &DefenderPartner| {
            p.status.as_ref().and_then(|s| find(&s.conditions, OUTCOMES_AVAILABLE)).is_some_and(|c| c.status == "True")
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn every_readiness_value_with_the_prerequisite_it_misses() {
    let world = world().await;
    // Added before the partner: in the machine list its engine reads first.
    world.defender.put_machine(sv::TENANT_ID, MachineSpec::new("edr-3.contoso.onmicrosoft.com").av(None));
    world.attached_partner(NS, "defender", fast()).await;
    // The findings come after the machine list: an endpoint it lacks is looked up.
    outcomes_available(&world, "defender").await;
    let cases = [
        ("laptop-7", Readiness::Ready, "\"Allow or block file\""),
        ("laptop-9", Readiness::PassiveMode, "passive mode"),
        ("laptop-old-4", Readiness::Inactive, "healthStatus is Inactive"),
        ("kiosk-6", Readiness::NotOnboarded, "onboardingStatus is CanBeOnboarded"),
        ("desktop-8", Readiness::OutdatedPlatform, "4.18.1901"),
        ("build-agent-3", Readiness::NotFound, "no Defender machine has hostname build-agent-3"),
        ("edr-3", Readiness::Unknown, "no antivirus health reported"),
    ];
    for (i, (host, _, _)) in cases.iter().enumerate() {
        world
            .finding(NS, host, &[sha256(i as u32)], json!({"state": "UNPROTECTED", "endpoint": {"hostname": host}}))
            .await;
    }
    for (host, want, says) in cases {
        let finding = until(&world, host, &format!("readiness {want}"), |d| {
            d.machine.as_ref().is_some_and(|m| m.readiness == want && !m.message.starts_with("looking up"))
        })
        .await;
        let machine = delivery(&finding).unwrap().machine.clone().unwrap();
        assert!(machine.message.contains(says), "{host}: {machine:?}");
        if want != Readiness::NotFound {
            assert_eq!(machine.id, world.defender.machine_id(sv::TENANT_ID, host), "{host}");
            assert!(machine.name.unwrap().starts_with(host));
        }
    }
    // The machines were listed once; the unknown host was looked up, once.
    assert_eq!(calls_to(&world, &[Endpoint::Machines]) - 1, 1, "one list and one look-up");
    let lookups: Vec<String> = world
        .defender
        .calls()
        .into_iter()
        .filter(|c| c.endpoint == Endpoint::Machines && c.path.contains("filter"))
        .map(|c| c.path)
        .collect();
    assert_eq!(lookups.len(), 1, "{lookups:?}");
    assert!(lookups[0].contains("build-agent-3"), "{lookups:?}");
    assert_eq!(calls_to(&world, &[Endpoint::DeviceAvInfo]), 1);
}

#[tokio::test]
async fn every_detection_value_and_the_partner_counts() {
    let world = world().await;
    world.attached_partner(NS, "defender", fast()).await;
    let (prevented, detected, missed, pending, unknown) = (sha256(1), sha256(2), sha256(3), sha256(4), sha256(5));
    world.defender.run_test(sv::TENANT_ID, TestRun::new("laptop-7", &detected, TestOutcome::Detected));
    world.finding(NS, "prevented", &[prevented], json!({"state": "PROTECTED"})).await;
    world.finding(NS, "detected", std::slice::from_ref(&detected), json!({"state": "UNPROTECTED"})).await;
    // Observed three hours ago: its two-hour window is over.
    world.finding(NS, "missed", &[missed], json!({"state": "UNPROTECTED", "observedTime": ago(180)})).await;
    world
        .finding(NS, "pending", &[pending], json!({"state": "UNPROTECTED", "endpoint": {"hostname": "server-2"}}))
        .await;
    world
        .finding(NS, "unknown", &[unknown], json!({"state": "UNPROTECTED", "endpoint": {"hostname": "nowhere-1"}}))
        .await;

    until_detection(&world, "prevented", Detection::Prevented).await;
    let finding = until_detection(&world, "detected", Detection::Detected).await;
    let alerts = &delivery(&finding).unwrap().alerts;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].detection_status.as_deref(), Some("Detected"));
    assert_eq!(alerts[0].severity.as_deref(), Some("Medium"));
    assert!(alerts[0].title.as_deref().unwrap().contains("was detected"));
    assert_eq!(finding.status.as_ref().unwrap().outcome, Some(Detection::Detected));
    until_detection(&world, "missed", Detection::NotDetected).await;
    let finding = until_detection(&world, "pending", Detection::Pending).await;
    assert_eq!(readiness(&finding), Some(Readiness::Ready));
    let finding = until_detection(&world, "unknown", Detection::Unknown).await;
    assert_eq!(readiness(&finding), Some(Readiness::NotFound));
    assert_eq!(finding.status.as_ref().unwrap().outcome, Some(Detection::Unknown));

    let partner = world
        .wait_for(NS, "defender", WAIT, |p: &DefenderPartner| {
            p.status.as_ref().and_then(|s| s.outcomes.as_ref()).is_some_and(|o| o.detected == 1 && o.not_detected == 1)
        })
        .await
        .unwrap();
    let status = partner.status.unwrap();
    let outcomes = status.outcomes.unwrap();
    assert_eq!((outcomes.prevented, outcomes.detected, outcomes.not_detected, outcomes.pending), (1, 1, 1, 1));
    let available = find(&status.conditions, OUTCOMES_AVAILABLE).unwrap();
    assert_eq!((available.status.as_str(), available.reason.as_str()), ("True", "Available"));
    assert!(find(&status.conditions, READY).is_some_and(|c| c.status == "True"));
}

#[tokio::test]
async fn alerts_count_only_on_the_machine_with_the_hash_inside_the_window() {
    let world = world().await;
    world.attached_partner(NS, "defender", fast()).await;
    let hashes: Vec<String> = (10..16).map(sha256).collect();
    let [late, elsewhere, other_hash, after_window, protected, control] = hashes.clone().try_into().unwrap();
    world.finding(NS, "late", std::slice::from_ref(&late), json!({"state": "UNPROTECTED"})).await;
    world.finding(NS, "elsewhere", std::slice::from_ref(&elsewhere), json!({"state": "UNPROTECTED"})).await;
    world.finding(NS, "other-hash", &[other_hash], json!({"state": "UNPROTECTED"})).await;
    world
        .finding(
            NS,
            "after-window",
            std::slice::from_ref(&after_window),
            json!({"state": "UNPROTECTED", "observedTime": ago(180)}),
        )
        .await;
    world.finding(NS, "protected", std::slice::from_ref(&protected), json!({"state": "PROTECTED"})).await;
    world.finding(NS, "control", std::slice::from_ref(&control), json!({"state": "UNPROTECTED"})).await;
    for name in ["late", "elsewhere", "other-hash", "control"] {
        until_detection(&world, name, Detection::Pending).await;
    }

    let emu = &world.defender;
    emu.run_test(sv::TENANT_ID, TestRun::new("laptop-7", &late, TestOutcome::Detected).delay(Duration::from_secs(4)));
    emu.run_test(sv::TENANT_ID, TestRun::new("server-2", &elsewhere, TestOutcome::Detected));
    emu.run_test(sv::TENANT_ID, TestRun::new("laptop-7", &sha256(99), TestOutcome::Detected));
    emu.run_test(sv::TENANT_ID, TestRun::new("laptop-7", &after_window, TestOutcome::Detected));
    emu.run_test(sv::TENANT_ID, TestRun::new("laptop-7", &protected, TestOutcome::Prevented));
    emu.run_test(sv::TENANT_ID, TestRun::new("laptop-7", &control, TestOutcome::Detected));

    // A poll has seen the alerts that were there at once...
    until_detection(&world, "control", Detection::Detected).await;
    let finding = until(&world, "protected", "its alert listed", |d| !d.alerts.is_empty()).await;
    let delivery = delivery(&finding).unwrap();
    assert_eq!(delivery.detection, Some(Detection::Prevented), "PROTECTED stays Prevented");
    assert_eq!(delivery.alerts[0].detection_status.as_deref(), Some("Prevented"));
    // ...and the others do not count.
    let after = until_detection(&world, "after-window", Detection::NotDetected).await;
    assert!(self::delivery(&after).unwrap().alerts.is_empty(), "created after the window");
    for name in ["elsewhere", "other-hash"] {
        let finding: ProbeFinding = Api::namespaced(world.admin.clone(), NS).get(name).await.unwrap();
        assert_eq!(detection(&finding), Some(Detection::Pending), "{name}");
    }
    // The late alert is found by a later poll.
    let finding = until_detection(&world, "late", Detection::Detected).await;
    assert_eq!(self::delivery(&finding).unwrap().alerts.len(), 1);
}

#[tokio::test]
async fn without_the_roles_the_partner_stays_attached_and_outcomes_are_unknown() {
    const TI_ONLY: (&str, &str) = ("a11ce000-5a4d-4b0c-8d3f-0000000000a1", "sandbox-secret-ti-only~NOT.A.REAL.SECRET");
    const NO_ALERTS: (&str, &str) =
        ("a11ce000-5a4d-4b0c-8d3f-0000000000a2", "sandbox-secret-no-alerts~NOT.A.REAL.SECRET");
    let world = world_with_apps(&[
        (TI_ONLY.0, TI_ONLY.1, &["Ti.ReadWrite.All"]),
        (NO_ALERTS.0, NO_ALERTS.1, &["Ti.ReadWrite.All", "Machine.Read.All"]),
    ])
    .await;
    let mut spec = fast();
    spec["findingSelector"] = json!({"matchLabels": {"app": "ti-only"}});
    partner_with_app(&world, "ti-only", TI_ONLY.0, TI_ONLY.1, spec.clone()).await;
    spec["findingSelector"] = json!({"matchLabels": {"app": "no-alerts"}});
    partner_with_app(&world, "no-alerts", NO_ALERTS.0, NO_ALERTS.1, spec).await;
    for app in ["ti-only", "no-alerts"] {
        world.finding(NS, app, &[sha256(app.len() as u32)], json!({"state": "UNPROTECTED"})).await;
        let api: Api<ProbeFinding> = Api::namespaced(world.admin.clone(), NS);
        let labels = json!({"metadata": {"labels": {"app": app}}});
        api.patch(app, &PatchParams::default(), &Patch::Merge(&labels)).await.unwrap();
    }

    let finding = until(&world, "ti-only", "no machine role", |d| {
        d.state == defender_operator::api::DeliveryState::Submitted
            && d.machine.as_ref().is_some_and(|m| m.message.starts_with("Machine.Read.All is not granted"))
    })
    .await;
    let delivery = delivery(&finding).unwrap();
    assert_eq!(delivery.machine.as_ref().unwrap().readiness, Readiness::Unknown);
    assert_eq!(delivery.detection, Some(Detection::Unknown));
    assert_eq!(delivery.state, defender_operator::api::DeliveryState::Submitted, "the indicators still go");
    let finding =
        until(&world, "no-alerts", "machine matched", |d| d.machine.as_ref().is_some_and(|m| m.id.is_some())).await;
    assert_eq!(readiness(&finding), Some(Readiness::Ready));
    assert_eq!(detection(&finding), Some(Detection::Unknown));

    for (name, names) in
        [("ti-only", "Machine.Read.All and Alert.Read.All"), ("no-alerts", "the app lacks Alert.Read.All")]
    {
        let partner = world
            .wait_for(NS, name, WAIT, |p: &DefenderPartner| {
                p.status
                    .as_ref()
                    .and_then(|s| find(&s.conditions, OUTCOMES_AVAILABLE))
                    .is_some_and(|c| c.status == "False")
            })
            .await
            .unwrap();
        let status = partner.status.unwrap();
        let available = find(&status.conditions, OUTCOMES_AVAILABLE).unwrap();
        assert_eq!(available.reason, "MissingPermission", "{name}");
        assert!(
            available.message.contains(names) && available.message.contains("Ready is not affected"),
            "{available:?}"
        );
        assert_eq!(status.reason.as_deref(), Some("Attached"));
        assert!(find(&status.conditions, READY).is_some_and(|c| c.status == "True"), "{name}: Ready is unaffected");
    }
    // Nothing was asked that the roles do not allow.
    let refused = world
        .defender
        .calls()
        .into_iter()
        .filter(|c| Endpoint::MACHINE_AND_ALERT_READS.contains(&c.endpoint) && c.status == 403)
        .count();
    assert_eq!(refused, 0);
    let by_ti_only = world
        .defender
        .calls()
        .into_iter()
        .filter(|c| Endpoint::MACHINE_AND_ALERT_READS.contains(&c.endpoint) && c.app.as_deref() == Some(TI_ONLY.0))
        .count();
    assert_eq!(by_ti_only, 0);
}

#[tokio::test]
async fn ambiguity_an_explicit_machine_id_and_an_ip_address() {
    let world = world().await;
    let emu = &world.defender;
    let now = jiff::Timestamp::now();
    let old = MachineSpec::new("twin.contoso.onmicrosoft.com")
        .id(&"a".repeat(40))
        .last_seen(now - jiff::SignedDuration::from_hours(30));
    let recent = MachineSpec::new("TWIN.contoso.onmicrosoft.com").id(&"b".repeat(40));
    emu.put_machine(sv::TENANT_ID, old);
    emu.put_machine(sv::TENANT_ID, recent);
    world.attached_partner(NS, "defender", fast()).await;
    let server = emu.machine_id(sv::TENANT_ID, "server-2").unwrap();
    world.finding(NS, "twin", &[sha256(1)], json!({"state": "UNPROTECTED", "endpoint": {"hostname": "twin"}})).await;
    world
        .finding(
            NS,
            "by-id",
            &[sha256(2)],
            json!({"state": "UNPROTECTED", "endpoint": {"hostname": "laptop-7", "machineId": server.to_uppercase()}}),
        )
        .await;
    world
        .finding(
            NS,
            "by-ip",
            &[sha256(3)],
            json!({"state": "UNPROTECTED", "endpoint": {"hostname": null, "ipAddress": "10.0.2.2"}}),
        )
        .await;

    let twin = until(&world, "twin", "matched", |d| d.machine.as_ref().is_some_and(|m| m.id.is_some())).await;
    let machine = delivery(&twin).unwrap().machine.clone().unwrap();
    assert_eq!(machine.id.as_deref(), Some("b".repeat(40).as_str()), "the most recently seen");
    assert!(machine.message.contains("2 machines match hostname twin: the most recently seen is used"), "{machine:?}");
    for name in ["by-id", "by-ip"] {
        let finding = until(&world, name, "matched", |d| d.machine.as_ref().is_some_and(|m| m.id.is_some())).await;
        assert_eq!(
            delivery(&finding).unwrap().machine.as_ref().unwrap().id.as_deref(),
            Some(server.as_str()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn matched_machines_are_tagged_once() {
    let mut emulator = EmulatorConfig::sandbox();
    let good = emulator.tenants[0].apps.iter_mut().find(|a| a.client_id == sv::GOOD_APP_ID).unwrap();
    good.roles.push("Machine.ReadWrite.All".into());
    let world = world_with(SandboxOptions { emulator, ..SandboxOptions::default() }).await;
    world.attached_partner(NS, "defender", json!({"correlation": {"interval": "5s", "machineTag": "bas-test"}})).await;
    world.finding(NS, "a", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    world.finding(NS, "b", &[sha256(2)], json!({"state": "UNPROTECTED", "endpoint": {"hostname": "server-2"}})).await;
    let tags = |host: &str| {
        let id = world.defender.machine_id(sv::TENANT_ID, host).unwrap();
        let machine = world.defender.machines(sv::TENANT_ID).into_iter().find(|m| m["id"] == id.as_str()).unwrap();
        machine["machineTags"].as_array().cloned().unwrap_or_default()
    };
    eventually("both machines tagged", WAIT, || {
        tags("laptop-7").contains(&json!("bas-test")) && tags("server-2").contains(&json!("bas-test"))
    })
    .await;
    world.finding(NS, "c", &[sha256(3)], json!({"state": "UNPROTECTED"})).await;
    until_detection(&world, "c", Detection::Pending).await;
    // Two more polls: nothing more to tag.
    let polls = calls_to(&world, &[Endpoint::Alerts]);
    eventually("two more polls", WAIT, || calls_to(&world, &[Endpoint::Alerts]) >= polls + 2).await;
    assert_eq!(tags("laptop-7"), [json!("bas-test")], "once");
    assert!(tags("laptop-9").is_empty(), "no finding ran there");
    let tag_calls: Vec<_> =
        world.defender.calls().into_iter().filter(|c| c.endpoint == Endpoint::TagMachines).collect();
    assert_eq!(tag_calls.len(), 1, "{tag_calls:?}");
    assert_eq!(tag_calls[0].status, 200);
}

#[tokio::test]
async fn time_to_protect_is_set_once_with_a_metric_and_an_event() {
    let world = world().await;
    world.attached_partner(NS, "defender", fast()).await;
    world.finding(NS, "f", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    let finding = world.ready_finding(NS, "f").await;
    let submitted = delivery(&finding).unwrap().submitted_time.clone().unwrap();
    assert!(finding.status.as_ref().unwrap().protected_time.is_none());

    // The next run of the test, once Defender enforces the indicator.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    world.defender.run_test(sv::TENANT_ID, TestRun::new("laptop-7", &sha256(1), TestOutcome::Prevented));
    world.finding(NS, "f", &[sha256(1)], json!({"state": "PROTECTED", "observedTime": ago(0)})).await;
    let finding = world
        .wait_for(NS, "f", WAIT, |f: &ProbeFinding| f.status.as_ref().is_some_and(|s| s.protected_time.is_some()))
        .await
        .unwrap();
    let status = finding.status.clone().unwrap();
    let protected = status.protected_time.clone().unwrap();
    assert!(protected.0 > submitted.0, "{protected:?} after {submitted:?}");
    let took = status.time_to_protect.clone().unwrap();
    assert!(took.ends_with('s') && took != "0s", "{took}");
    assert_eq!(status.outcome, Some(Detection::Prevented));
    let metrics = world.operator.as_ref().unwrap().metrics.clone();
    assert!(metrics.encode().contains("defender_operator_time_to_protect_seconds_count 1"), "{}", metrics.encode());

    // Later results change nothing of it.
    world.finding(NS, "f", &[sha256(1)], json!({"state": "UNPROTECTED", "observedTime": ago(0)})).await;
    world.finding(NS, "f", &[sha256(1)], json!({"state": "PROTECTED", "observedTime": ago(0)})).await;
    let finding = world
        .wait_for(NS, "f", WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| s.observed_generation == f.metadata.generation)
        })
        .await
        .unwrap();
    let again = finding.status.unwrap();
    assert_eq!((again.protected_time, again.time_to_protect), (Some(protected), Some(took.clone())));
    assert!(metrics.encode().contains("defender_operator_time_to_protect_seconds_count 1"));
    let events: Api<Event> = Api::namespaced(world.admin.clone(), NS);
    let protected: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Protected"))
        .collect();
    assert_eq!(protected.len(), 1, "{protected:?}");
    assert_eq!(protected[0].involved_object.name.as_deref(), Some("f"));
    assert!(protected[0].message.as_deref().unwrap().contains(&took), "{protected:?}");
}

#[tokio::test]
async fn cost_grows_with_machines_not_findings_and_nothing_is_written_when_nothing_changed() {
    let world = world().await;
    world.attached_partner(NS, "defender", fast()).await;
    let hosts = ["laptop-7", "server-2", "laptop-9"];
    for seed in 0..30u32 {
        let host = hosts[seed as usize % 3];
        world
            .finding(
                NS,
                &format!("f{seed}"),
                &[sha256(seed)],
                json!({"state": "UNPROTECTED", "endpoint": {"hostname": host}}),
            )
            .await;
    }
    for seed in 0..30 {
        until_detection(&world, &format!("f{seed}"), Detection::Pending).await;
    }
    world
        .wait_for(NS, "defender", WAIT, |p: &DefenderPartner| {
            p.status.as_ref().and_then(|s| s.outcomes.as_ref()).is_some_and(|o| o.pending == 30)
        })
        .await
        .unwrap();
    let operator = world.operator.as_ref().unwrap();
    let writes = operator.metrics.kube_writes.get();
    let polls = calls_to(&world, &[Endpoint::Alerts]);
    eventually("two more polls", WAIT, || calls_to(&world, &[Endpoint::Alerts]) >= polls + 2).await;
    assert_eq!(operator.metrics.kube_writes.get(), writes, "a poll that found nothing new wrote nothing");
    assert_eq!(calls_to(&world, &[Endpoint::Machines]), 1, "machines listed once");
    assert_eq!(calls_to(&world, &[Endpoint::DeviceAvInfo]), 1, "antivirus health listed once");
    assert_eq!(
        calls_to(
            &world,
            &[Endpoint::MachineById, Endpoint::FindMachinesByIp, Endpoint::MachineAlerts, Endpoint::AlertById]
        ),
        0,
        "no call per finding"
    );
}

#[tokio::test]
async fn correlation_can_be_turned_off() {
    let world = world().await;
    world.attached_partner(NS, "defender", json!({"correlation": {"enabled": false}})).await;
    world.finding(NS, "f", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    let finding = world.ready_finding(NS, "f").await;
    let delivery = delivery(&finding).unwrap();
    assert!(delivery.machine.is_none() && delivery.detection.is_none());
    assert!(finding.status.unwrap().outcome.is_none());
    let partner = world
        .wait_for(NS, "defender", WAIT, |p: &DefenderPartner| {
            p.status
                .as_ref()
                .and_then(|s| find(&s.conditions, OUTCOMES_AVAILABLE))
                .is_some_and(|c| c.reason == "Disabled")
        })
        .await
        .unwrap();
    assert!(find(&partner.status.unwrap().conditions, READY).is_some_and(|c| c.status == "True"));
    assert_eq!(calls_to(&world, &Endpoint::MACHINE_AND_ALERT_READS), 0);
}

#[tokio::test]
async fn a_restart_reads_once_again_and_rewrites_no_outcome() {
    let mut world = world().await;
    world.attached_partner(NS, "defender", fast()).await;
    world.defender.run_test(sv::TENANT_ID, TestRun::new("laptop-7", &sha256(1), TestOutcome::Detected));
    world.finding(NS, "detected", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    world.finding(NS, "missed", &[sha256(2)], json!({"state": "UNPROTECTED", "observedTime": ago(180)})).await;
    world
        .finding(NS, "pending", &[sha256(3)], json!({"state": "UNPROTECTED", "endpoint": {"hostname": "laptop-9"}}))
        .await;
    until_detection(&world, "detected", Detection::Detected).await;
    until_detection(&world, "missed", Detection::NotDetected).await;
    until_detection(&world, "pending", Detection::Pending).await;
    let partner = world
        .wait_for(NS, "defender", WAIT, |p: &DefenderPartner| {
            p.status.as_ref().and_then(|s| s.outcomes.as_ref()).is_some_and(|o| o.detected == 1 && o.pending == 1)
        })
        .await
        .unwrap();
    let api: Api<ProbeFinding> = Api::namespaced(world.admin.clone(), NS);
    let versions = |list: Vec<ProbeFinding>| -> Vec<Option<String>> {
        list.into_iter().map(|f| f.metadata.resource_version).collect()
    };
    let before = versions(api.list(&ListParams::default()).await.unwrap().items);

    world.operator.take().unwrap().stop().await;
    world.defender.clear_calls();
    world.operator = Some(world.start_operator());
    eventually("machines, antivirus health and alerts read again", WAIT, || {
        [Endpoint::Machines, Endpoint::DeviceAvInfo, Endpoint::Alerts].iter().all(|e| calls_to(&world, &[*e]) == 1)
    })
    .await;
    // Another poll, judged like the first.
    eventually("another poll", WAIT, || calls_to(&world, &[Endpoint::Alerts]) >= 2).await;
    assert_eq!(versions(api.list(&ListParams::default()).await.unwrap().items), before, "no finding status written");
    let after: DefenderPartner = Api::namespaced(world.admin.clone(), NS).get("defender").await.unwrap();
    let condition = |p: &DefenderPartner| find(&p.status.as_ref().unwrap().conditions, OUTCOMES_AVAILABLE).cloned();
    assert_eq!(condition(&after), condition(&partner), "OutcomesAvailable kept, with its transition time");
    assert_eq!(after.status.unwrap().outcomes, partner.status.unwrap().outcomes);
    assert_eq!(calls_to(&world, &[Endpoint::Machines, Endpoint::DeviceAvInfo]), 2, "listed once");
}
