//! `crds/` must hold exactly what `defender-operator crd` prints, and the CRDs validate findings
//! on the sandbox's API server as kube-apiserver would.

use defender_operator::api::{ProbeFinding, crds};
use defender_sandbox::apiserver::{ApiServerConfig, KubeApiServer};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};

#[test]
fn crds_directory_matches_the_generated_crds() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/detect.dev.yaml"))
        .expect("crds/detect.dev.yaml exists");
    let generated = defender_operator::api::crds_yaml();
    assert!(
        committed == generated,
        "crds/detect.dev.yaml is stale: run `cargo run -- crd > crds/detect.dev.yaml` and commit it"
    );
}

#[test]
fn the_binary_prints_the_same_crds() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_defender-operator")).arg("crd").output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), defender_operator::api::crds_yaml());
}

#[test]
fn crds_carry_the_api_contract() {
    let crds = defender_operator::api::crds();
    let names: Vec<_> = crds.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        ["defenderpartners.detect.dev", "probefindings.detect.dev", "clusterdefenderpartners.detect.dev"]
    );
    for crd in &crds {
        let cluster_wide = crd.spec.names.kind == "ClusterDefenderPartner";
        assert_eq!(crd.spec.scope, if cluster_wide { "Cluster" } else { "Namespaced" });
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["detect".to_string()][..]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
        let conditions = &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{}", crd.spec.names.kind);
        assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
    }
    let finding = serde_json::to_value(&crds[1]).unwrap();
    let indicators =
        &finding["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["indicators"];
    assert_eq!((indicators["minItems"].as_u64(), indicators["maxItems"].as_u64()), (Some(1), Some(64)));
    let columns: Vec<_> =
        crds[0].spec.versions[0].additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.clone()).collect();
    assert_eq!(columns, ["State", "Tenant", "Indicators", "Reason", "Age", "Message"]);
    // A ClusterDefenderPartner shows what a DefenderPartner shows, and is `cdp`.
    let cluster = &crds[2];
    assert_eq!(cluster.spec.names.short_names.as_deref(), Some(&["cdp".to_string()][..]));
    assert_eq!(
        cluster.spec.versions[0].additional_printer_columns,
        crds[0].spec.versions[0].additional_printer_columns
    );
}

fn api_error(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_operators_crds_validate_findings() {
    let s = KubeApiServer::start(ApiServerConfig::default()).await.expect("start server");
    let client = s.admin_client();
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds() {
        let created = crd_api.create(&PostParams::default(), &crd).await.unwrap();
        let conds = created.status.unwrap().conditions.unwrap();
        assert!(conds.iter().any(|c| c.type_ == "Established" && c.status == "True"));
    }
    let pf: Api<ProbeFinding> = Api::default_namespaced(client);
    let mut finding: Value = json!({
        "apiVersion": "detect.dev/v1alpha1", "kind": "ProbeFinding", "metadata": {"name": "f1"},
        "spec": {
            "test": {"id": "3ebbda49-738c-4799-a8fb-206630cf609e", "name": "Will it be blocked?"},
            "state": "UNPROTECTED",
            "indicators": [{"type": "FileSha256", "value": "5ab2e1d3f8a2c4b6d8e0f1a3c5e7092b4d6f8a0c2e4a6b8d0f2a4c6e8b0d2f4a"}]
        }
    });
    let ok: ProbeFinding = serde_json::from_value(finding.clone()).unwrap();
    let created = pf.create(&PostParams::default(), &ok).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    // a typed round trip
    let got = pf.get("f1").await.unwrap();
    assert_eq!(got.spec, created.spec);
    // the CEL rules of the real CRD
    finding["metadata"]["name"] = json!("f2");
    finding["spec"]["indicators"][0]["value"] = json!("not-a-hash");
    let bad: ProbeFinding = serde_json::from_value(finding.clone()).unwrap();
    let e = api_error(pf.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!(e.code, 422);
    let causes = &e.details.as_ref().unwrap().causes;
    // The rule's fieldPath names the value; like kube-apiserver, the bad value shown is the type of
    // the object the rule is on, not the field's.
    assert!(
        causes.iter().any(|c| c.field == "spec.indicators[0].value"
            && c.message == "Invalid value: \"object\": a FileSha256 value is 64 hex characters"),
        "{causes:?}"
    );
    assert!(
        e.message
            .contains("spec.indicators[0].value: Invalid value: \"object\": a FileSha256 value is 64 hex characters"),
        "{}",
        e.message
    );
    finding["spec"]["indicators"][0]["value"] =
        json!("5ab2e1d3f8a2c4b6d8e0f1a3c5e7092b4d6f8a0c2e4a6b8d0f2a4c6e8b0d2f4a");
    finding["spec"].as_object_mut().unwrap().remove("state");
    let bad: ProbeFinding = serde_json::from_value(finding).unwrap();
    let e = api_error(pf.create(&PostParams::default(), &bad).await.unwrap_err());
    assert!(e.message.contains("set spec.state (e.g. UNPROTECTED) or spec.code"), "{}", e.message);
    // selectable field from the CRD
    pf.list(&ListParams::default().fields("spec.partnerRef.name=x")).await.unwrap();
    s.shutdown().await;
}
