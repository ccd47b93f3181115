//! `crds/` must hold exactly what `defender-operator crd` prints.

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
    assert_eq!(names, ["defenderpartners.detect.dev", "probefindings.detect.dev"]);
    for crd in &crds {
        assert_eq!(crd.spec.scope, "Namespaced");
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
}
