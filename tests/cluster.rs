//! ClusterDefenderPartners beside DefenderPartners, and one engine per tenant and app: findings of
//! the namespaces a cluster partner selects are delivered to it, its credentials come from the
//! operator's namespace only, partners of one tenant share one read, one limiter and one count,
//! and a tenant in trouble slows only its own partners.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use std::time::Duration;

use common::{WAIT, World, sha256, world};
use defender_operator::api::{ClusterDefenderPartner, DeliveryState, PartnerState, ProbeFinding};
use defender_operator::sandbox::cluster::OPERATOR_NAMESPACE;
use defender_sandbox::emulator::Endpoint;
use defender_sandbox::emulator::sandbox_values as sv;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

const CLUSTER: &str = "ClusterDefenderPartner/fleet";

/// A namespace with labels.
async fn labelled_namespace(world: &World, name: &str, labels: Value) {
    let api: Api<Namespace> = Api::all(world.admin.clone());
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&namespace)).await.unwrap();
}

/// A ClusterDefenderPartner of the sandbox's good app; `spec` is merged over it.
async fn cluster_partner(world: &World, name: &str, secret: &str, spec: Value) {
    let mut full = json!({"api": world.defender_api(), "credentials": {"secretRef": {"name": secret}}});
    for (key, value) in spec.as_object().unwrap() {
        full[key] = value.clone();
    }
    let partner = json!({"apiVersion": "detect.dev/v1alpha1", "kind": "ClusterDefenderPartner",
        "metadata": {"name": name}, "spec": full});
    let api: Api<ClusterDefenderPartner> = Api::all(world.admin.clone());
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&partner)).await.unwrap();
}

async fn cluster_partner_in(world: &World, name: &str, state: PartnerState, reason: &str) -> ClusterDefenderPartner {
    let api: Api<ClusterDefenderPartner> = Api::all(world.admin.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let partner = api.get(name).await.unwrap();
        let status = partner.status.clone().unwrap_or_default();
        if status.state == Some(state) && status.reason.as_deref() == Some(reason) {
            return partner;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} is not {state:?}/{reason}: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The finding once its delivery to `partner` is in `state`.
async fn delivered(world: &World, namespace: &str, finding: &str, partner: &str, state: DeliveryState) -> ProbeFinding {
    world
        .wait_for(namespace, finding, WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| s.deliveries.iter().any(|d| d.partner == partner && d.state == state))
        })
        .await
        .unwrap_or_else(|e| panic!("{namespace}/{finding} to {partner}: {e}"))
}

/// Reads of the tenant's indicators (not the validation's `$top=1` probes).
fn indicator_reads(world: &World) -> usize {
    let probe = |path: &str| path.contains("top=1&") || path.ends_with("top=1");
    world.defender.calls().iter().filter(|c| c.endpoint == Endpoint::ListIndicators && !probe(&c.path)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_partner_receives_the_findings_of_the_namespaces_it_selects() {
    let world = world().await;
    labelled_namespace(&world, "team-red", json!({"defender": "fleet"})).await;
    labelled_namespace(&world, "team-blue", json!({})).await;
    world.good_secret(OPERATOR_NAMESPACE, "fleet-credentials").await;
    let selector = json!({"namespaceSelector": {"matchLabels": {"defender": "fleet"}}, "deletionPolicy": "Delete"});
    cluster_partner(&world, "fleet", "fleet-credentials", selector).await;
    cluster_partner_in(&world, "fleet", PartnerState::Attached, "Attached").await;

    world.finding("team-red", "red", &[sha256(1)], json!({"state": "UNPROTECTED"})).await;
    world.finding("team-blue", "blue", &[sha256(2)], json!({"state": "UNPROTECTED"})).await;
    let red = delivered(&world, "team-red", "red", CLUSTER, DeliveryState::Submitted).await;
    assert_eq!(red.status.unwrap().deliveries.len(), 1);
    let blue = world
        .wait_for("team-blue", "blue", WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| s.observed_generation == f.metadata.generation)
        })
        .await
        .unwrap();
    assert!(blue.status.unwrap().deliveries.is_empty(), "team-blue is not selected");
    assert_eq!(world.indicator_values(sv::TENANT_ID), [sha256(1)]);
    let pushed = world.indicators();
    assert_eq!(pushed[0]["externalId"], CLUSTER, "indicators carry the cluster partner's marker");

    // team-red's labels stop matching: no delivery any more, and (Delete) its indicator goes.
    labelled_namespace(&world, "team-red", json!({})).await;
    world
        .wait_for("team-red", "red", WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| s.deliveries.is_empty())
        })
        .await
        .expect("no delivery once team-red is not selected");
    common::eventually("the indicator withdrawn", WAIT, || world.indicator_values(sv::TENANT_ID).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_partners_credentials_come_from_the_operators_namespace_only() {
    let world = world().await;
    world.namespace("team").await;
    // The Secret exists, but in a user's namespace: never read for a cluster partner.
    world.good_secret("team", "fleet-credentials").await;
    cluster_partner(&world, "fleet", "fleet-credentials", json!({})).await;
    let partner = cluster_partner_in(&world, "fleet", PartnerState::Detached, "SecretNotFound").await;
    let message = partner.status.unwrap().message.unwrap();
    assert!(message.contains(&format!("{OPERATOR_NAMESPACE}/fleet-credentials")), "{message}");
    // Created where it belongs, it is picked up at once (the Secret is watched).
    world.good_secret(OPERATOR_NAMESPACE, "fleet-credentials").await;
    cluster_partner_in(&world, "fleet", PartnerState::Attached, "Attached").await;
}

/// A DefenderPartner and a ClusterDefenderPartner of one tenant and app share one engine: one
/// read of Defender, a value both want written once, one count; deleting one (Delete) withdraws
/// only what it created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kinds_on_one_tenant_share_its_engine() {
    let world = world().await;
    labelled_namespace(&world, "team", json!({})).await;
    world.good_secret(OPERATOR_NAMESPACE, "fleet-credentials").await;
    world.good_secret("team", "creds").await;
    world.partner("team", "local", "creds", json!({"deletionPolicy": "Delete"})).await;
    world.attached("team", "local").await;
    cluster_partner(&world, "fleet", "fleet-credentials", json!({"deletionPolicy": "Delete"})).await;
    cluster_partner_in(&world, "fleet", PartnerState::Attached, "Attached").await;
    let metrics = world.operator.as_ref().unwrap().metrics.encode();
    assert!(metrics.contains("defender_operator_engines 1\n"), "one engine for the tenant:\n{metrics}");
    common::eventually("the engine read Defender", WAIT, || indicator_reads(&world) >= 1).await;
    assert_eq!(indicator_reads(&world), 1, "one read of Defender at start, for both partners");

    // Both receive `both`; only the cluster partner receives `pinned`.
    world.finding("team", "both", &[sha256(3)], json!({"state": "UNPROTECTED"})).await;
    let pinned = json!({"state": "UNPROTECTED", "partnerRef": {"name": "fleet", "kind": "ClusterDefenderPartner"}});
    world.finding("team", "pinned", &[sha256(4)], pinned).await;
    let both = delivered(&world, "team", "both", CLUSTER, DeliveryState::Submitted).await;
    let both = delivered(&world, "team", "both", "local", DeliveryState::Submitted)
        .await
        .status
        .unwrap_or_else(|| both.status.unwrap());
    assert_eq!(both.deliveries.len(), 2, "{both:?}");
    delivered(&world, "team", "pinned", CLUSTER, DeliveryState::Submitted).await;
    assert_eq!(world.indicator_values(sv::TENANT_ID), [sha256(3), sha256(4)], "written once each");

    // Deleting the cluster partner withdraws its own `pinned` only; `both` was written once,
    // by whichever partner came first, and stays while `local` wants it.
    let api: Api<ClusterDefenderPartner> = Api::all(world.admin.clone());
    api.delete("fleet", &DeleteParams::default()).await.unwrap();
    common::eventually("the cluster partner gone", WAIT, || {
        !world.indicator_values(sv::TENANT_ID).contains(&sha256(4))
    })
    .await;
    delivered(&world, "team", "both", "local", DeliveryState::Submitted).await;
    common::eventually("both is in Defender", WAIT, || world.indicator_values(sv::TENANT_ID) == [sha256(3)]).await;
}

/// One tenant answering only 429s and 503s slows its own partners, not another tenant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_in_trouble_slows_only_its_own_partners() {
    let world = world().await;
    world.namespace("troubled").await;
    world.namespace("fine").await;
    world.good_secret("troubled", "creds").await;
    world
        .secret(
            "fine",
            "creds",
            &[("tenantId", sv::TENANT2_ID), ("clientId", sv::TENANT2_APP_ID), ("clientSecret", sv::TENANT2_APP_SECRET)],
        )
        .await;
    world.partner("troubled", "defender", "creds", json!({})).await;
    world.partner("fine", "defender", "creds", json!({})).await;
    world.attached("troubled", "defender").await;
    world.attached("fine", "defender").await;

    world.defender.faults().tenant_outage(sv::TENANT_ID);
    for seed in 0..20 {
        world.finding("troubled", &format!("t{seed}"), &[sha256(100 + seed)], json!({"state": "UNPROTECTED"})).await;
        world.finding("fine", &format!("f{seed}"), &[sha256(200 + seed)], json!({"state": "UNPROTECTED"})).await;
    }
    // The fine tenant converges within the usual wait: were the troubled tenant's backoff (which
    // doubles to 30 s) its own, it would not.
    for seed in 0..20 {
        world.ready_finding("fine", &format!("f{seed}")).await;
    }
    assert_eq!(world.indicator_values(sv::TENANT2_ID).len(), 20);
    assert!(world.indicator_values(sv::TENANT_ID).is_empty(), "the troubled tenant got nothing in");

    world.defender.faults().end_tenant_outage(sv::TENANT_ID);
    for seed in 0..20 {
        world.ready_finding("troubled", &format!("t{seed}")).await;
    }
    assert_eq!(world.indicator_values(sv::TENANT_ID).len(), 20, "and it recovers, nothing lost");
}
