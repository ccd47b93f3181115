//! Version skew: CRDs and an operator of different versions, installed in either order (GitOps
//! applies them in some order; a rollback may revert one and not the other). In each case: no
//! panic, no stall, no write loop, and every partner and finding the operator can read goes on.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use std::time::Duration;

use common::{World, sha256};
use defender_operator::api::{DefenderPartner, ProbeFinding};
use defender_operator::sandbox::{Sandbox, SandboxOptions};
use defender_sandbox::emulator::sandbox_values::TENANT_ID;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

/// The previous release's CRDs, as it shipped them.
const PREVIOUS_RELEASE: &str = include_str!("fixtures/crds-0.1.0.yaml");
/// How long a quiet stretch is watched for a write loop.
const QUIET: Duration = Duration::from_secs(60);
const NS: &str = "default";

/// `yaml`'s CRDs with `edit(kind, schema)` applied to each one's `openAPIV3Schema`.
fn edited(yaml: &str, edit: impl Fn(&str, &mut Value)) -> String {
    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let mut crd: Value = serde::Deserialize::deserialize(document).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        edit(&kind, crd.pointer_mut("/spec/versions/0/schema/openAPIV3Schema").unwrap());
        documents.push(serde_yaml_ng::to_string(&crd).unwrap());
    }
    documents.join("---\n")
}

/// CRDs older than the operator: the previous release's, without status fields this operator
/// writes, as CRDs from before those fields were added are. The API server prunes them from every
/// status write.
fn older_crds() -> String {
    edited(PREVIOUS_RELEASE, |kind, schema| {
        let status = schema.pointer_mut("/properties/status/properties").unwrap().as_object_mut().unwrap();
        match kind {
            "DefenderPartner" => {
                status.remove("quota");
                status.remove("lastHandledRevalidate");
            }
            _ => {
                status.remove("delivered");
                let delivery = status["deliveries"].pointer_mut("/items/properties").unwrap();
                delivery.as_object_mut().unwrap().remove("submittedTime");
            }
        }
    })
}

/// CRDs newer than the operator: a credentials type this operator does not know (with its own
/// field and rules), and a spec field it does not know.
fn newer_crds() -> String {
    edited(include_str!("../crds/detect.dev.yaml"), |kind, schema| {
        if kind != "DefenderPartner" {
            return;
        }
        let spec = schema.pointer_mut("/properties/spec/properties").unwrap().as_object_mut().unwrap();
        spec.insert("futureKnob".into(), json!({"type": "boolean"}));
        let credentials = spec["credentials"].as_object_mut().unwrap();
        credentials.remove("x-kubernetes-validations");
        let properties = credentials["properties"].as_object_mut().unwrap();
        properties.insert("type".into(), json!({"type": "string"}));
        properties.insert(
            "managedIdentity".into(),
            json!({"type": "object", "properties": {"clientId": {"type": "string"}}}),
        );
    })
}

/// A sandbox whose CRDs are `crds` from the start, with the operator running.
async fn world_on(crds: &str) -> World {
    let sandbox = Sandbox::start(SandboxOptions::default()).await.expect("sandbox starts");
    sandbox.apply_yaml(crds).await.expect("CRDs replaced");
    let operator = Some(sandbox.start_operator());
    World { sandbox, operator }
}

/// Objects of kind `K` as the API server holds them, readable or not.
fn untyped<K: kube::Resource<DynamicType = ()>>(world: &World) -> Api<DynamicObject> {
    Api::namespaced_with(world.admin.clone(), NS, &ApiResource::erase::<K>(&()))
}

/// Touches every named object every few seconds for a quiet minute (each touch makes the operator
/// reconcile it again) and returns the operator's Kubernetes writes meanwhile.
async fn writes_while_touching(world: &World, partners: &[&str], findings: &[&str]) -> u64 {
    let writes = || world.operator.as_ref().unwrap().metrics.kube_writes.get();
    let before = writes();
    let deadline = tokio::time::Instant::now() + QUIET;
    let mut touch = 0;
    while tokio::time::Instant::now() < deadline {
        touch += 1;
        let patch = json!({"metadata": {"annotations": {"test.detect.dev/touch": touch.to_string()}}});
        for (kind, names) in [(untyped::<DefenderPartner>(world), partners), (untyped::<ProbeFinding>(world), findings)]
        {
            for name in names {
                kind.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    writes() - before
}

/// An older CRD prunes status fields the operator writes: everything still works, and the operator
/// notices the fields do not stick instead of writing them again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_crd_prunes_status_fields_without_a_write_loop() {
    let world = world_on(&older_crds()).await;
    world.attached_partner(NS, "defender", json!({})).await;
    for seed in 0..3 {
        world.finding(NS, &format!("f{seed}"), &[sha256(seed)], json!({"state": "UNPROTECTED"})).await;
    }
    for seed in 0..3 {
        world.ready_finding(NS, &format!("f{seed}")).await;
    }
    assert_eq!(world.indicator_values(TENANT_ID).len(), 3);
    let writes = writes_while_touching(&world, &["defender"], &["f0", "f1", "f2"]).await;
    assert_eq!(writes, 0, "status writes while nothing changed");
    let text = world.operator.as_ref().unwrap().metrics.encode();
    assert!(
        text.contains(r#"defender_operator_status_writes_not_kept_total{kind="ProbeFinding"}"#)
            && text.contains(r#"defender_operator_status_writes_not_kept_total{kind="DefenderPartner"}"#),
        "the pruned fields are counted:\n{text}"
    );
}

/// Objects written under the previous release's CRDs, then the current CRDs and a restarted
/// operator: they read as before, converge, and settle without a write loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_from_the_previous_release_keep_working_after_the_upgrade() {
    let mut world = world_on(PREVIOUS_RELEASE).await;
    world.attached_partner(NS, "defender", json!({})).await;
    world.finding(NS, "old", &[sha256(10)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding(NS, "old").await;
    // The upgrade as documented: CRDs first, then the operator.
    world.operator.take().unwrap().stop().await;
    world.apply_yaml(include_str!("../crds/detect.dev.yaml")).await.unwrap();
    world.operator = Some(world.start_operator());
    world.finding(NS, "new", &[sha256(11)], json!({"state": "UNPROTECTED"})).await;
    world.ready_finding(NS, "new").await;
    world.ready_finding(NS, "old").await;
    assert_eq!(world.indicator_values(TENANT_ID), [sha256(10), sha256(11)], "nothing sent twice");
    assert_eq!(writes_while_touching(&world, &["defender"], &["old", "new"]).await, 0);
}

/// CRDs newer than the operator: a partner the operator cannot read (a credentials type it does
/// not know) is reported on its own, a field it does not know is ignored and left alone, and
/// everything else goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_from_a_newer_crd_is_reported_and_stalls_nothing() {
    let sandbox = Sandbox::start(SandboxOptions::default()).await.expect("sandbox starts");
    sandbox.apply_yaml(&newer_crds()).await.expect("CRDs replaced");
    // There before the operator starts: in its very first list, which must not fail.
    let unreadable = json!({"apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
        "metadata": {"name": "managed", "namespace": NS},
        "spec": {"credentials": {"type": "ManagedIdentity", "managedIdentity": {"clientId": "defender"}}}});
    sandbox.apply_yaml(&serde_yaml_ng::to_string(&unreadable).unwrap()).await.unwrap();
    let operator = Some(sandbox.start_operator());
    let world = World { sandbox, operator };
    world.attached_partner(NS, "defender", json!({"futureKnob": true})).await;
    world.finding(NS, "f", &[sha256(20)], json!({"state": "UNPROTECTED", "partnerRef": {"name": "defender"}})).await;
    world.ready_finding(NS, "f").await;

    let untyped = untyped::<DefenderPartner>(&world);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let managed = loop {
        let managed = untyped.get("managed").await.unwrap();
        if managed.data["status"]["reason"] == "UnsupportedSpec" {
            break managed;
        }
        assert!(tokio::time::Instant::now() < deadline, "not reported: {managed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(managed.data["status"]["state"], "Detached");
    let message = managed.data["status"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("spec.credentials") && message.contains(env!("CARGO_PKG_VERSION")), "{message}");
    let events: Api<Event> = Api::namespaced(world.admin.clone(), NS);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let list = events.list(&ListParams::default()).await.unwrap();
        let reported = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("UnsupportedSpec")
                && e.type_.as_deref() == Some("Warning")
                && e.involved_object.name.as_deref() == Some("managed")
        });
        if reported {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no UnsupportedSpec event: {list:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The field the operator does not know is still there: never written back.
    let raw = untyped.get("defender").await.unwrap();
    assert_eq!(raw.data["spec"]["futureKnob"], json!(true), "{raw:?}");
    assert_eq!(writes_while_touching(&world, &["defender", "managed"], &["f"]).await, 0);
}
