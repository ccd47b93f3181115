//! kubectl as a real client of the sandbox: apply the examples, read the printer columns, wait
//! for Ready, delete.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use std::process::Command;

use common::*;
use defender_operator::api::DefenderPartner;
use kube::Api;

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output =
        Command::new("kubectl").arg("--kubeconfig").arg(kubeconfig).args(args).output().expect("kubectl is installed");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_examples_and_sees_them_converge() {
    let world = world().await;
    let dir = std::env::temp_dir().join(format!("defender-operator-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, world.kubeconfig()).unwrap();

    // The examples as a newcomer has them, with the partners pointed at the emulator.
    let examples = dir.join("examples");
    std::fs::create_dir_all(&examples).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("  credentials:\n", &format!("  api: {}\n  credentials:\n", world.defender_api()));
        std::fs::write(examples.join(path.file_name().unwrap()), text).unwrap();
    }
    let kc = kubeconfig.clone();
    let ex = examples.clone();
    let (ok, out) =
        tokio::task::spawn_blocking(move || kubectl(&kc, &["apply", "-f", ex.to_str().unwrap()])).await.unwrap();
    assert!(ok, "kubectl apply failed: {out}");
    assert!(out.contains("defenderpartner.detect.dev/defender created"), "{out}");

    let kc = kubeconfig.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        kubectl(&kc, &["wait", "--for=condition=Ready", "dp/defender", "-n", "default", "--timeout=30s"])
    })
    .await
    .unwrap();
    assert!(ok, "kubectl wait failed: {out}");

    world.ready_finding("default", "office-macro-laptop-7").await;
    let kc = kubeconfig.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || kubectl(&kc, &["get", "dp,pf", "-A"])).await.unwrap();
    assert!(ok, "{out}");
    let header = out.lines().next().unwrap_or_default();
    for column in ["STATE", "TENANT", "INDICATORS", "REASON", "AGE"] {
        assert!(header.contains(column), "printer column {column} missing: {out}");
    }
    assert!(out.contains("Attached") && out.contains("InvalidSecret"), "{out}");
    assert!(out.contains("UNPROTECTED") && out.contains("1/1"), "{out}");
    let findings_header = out.lines().find(|l| l.starts_with("NAMESPACE") && l.contains("TEST")).unwrap_or_default();
    assert!(findings_header.contains("OUTCOME"), "printer column OUTCOME missing: {out}");

    // `kubectl get pf` shows whether each finding is Ready, from its Ready condition.
    let kc = kubeconfig.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || kubectl(&kc, &["get", "pf", "-n", "default"])).await.unwrap();
    assert!(ok, "{out}");
    let columns: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(columns, ["NAME", "TEST", "STATE", "DELIVERED", "READY", "OUTCOME", "AGE"], "{out}");
    let row = out.lines().find(|l| l.starts_with("office-macro-laptop-7 ")).unwrap_or_else(|| panic!("{out}"));
    let ready_at = out.lines().next().unwrap().find("READY").unwrap();
    assert_eq!(row[ready_at..].split_whitespace().next(), Some("True"), "{out}");

    // The operator's events (events.k8s.io/v1) as kubectl shows them on any cluster: LAST SEEN
    // from their time, SOURCE the operator and its replica, in `kubectl events` too.
    let kc = kubeconfig.clone();
    let (ok, out) =
        tokio::task::spawn_blocking(move || kubectl(&kc, &["get", "events", "-A", "-o", "wide"])).await.unwrap();
    assert!(ok, "{out}");
    let attached = out.lines().find(|l| l.contains(" Attached ")).unwrap_or_else(|| panic!("{out}"));
    assert!(attached.contains("defenderpartner/defender"), "{attached}");
    assert!(attached.contains("defender-operator, defender-operator-sandbox"), "{attached}");
    let refused = out.lines().find(|l| l.contains(" InvalidSecret ")).unwrap_or_else(|| panic!("{out}"));
    assert!(refused.contains("Warning"), "{refused}");
    let kc = kubeconfig.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || kubectl(&kc, &["events", "-A"])).await.unwrap();
    assert!(ok && out.contains("Attached") && out.contains("InvalidSecret"), "{out}");

    // The cluster-wide partner of the examples, by its short name, with the same columns.
    let kc = kubeconfig.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let (ok, out) = kubectl(&kc, &["wait", "--for=condition=Ready", "cdp/fleet", "--timeout=30s"]);
        if !ok {
            return (ok, out);
        }
        kubectl(&kc, &["get", "cdp"])
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    let columns: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(columns, ["NAME", "STATE", "TENANT", "INDICATORS", "REASON", "AGE"], "{out}");
    assert!(out.lines().any(|l| l.starts_with("fleet ") && l.contains("Attached")), "{out}");

    let kc = kubeconfig.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        kubectl(&kc, &["delete", "dp", "defender", "-n", "default", "--timeout=30s"])
    })
    .await
    .unwrap();
    assert!(ok, "kubectl delete failed: {out}");
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    assert!(partners.get_opt("defender").await.unwrap().is_none());
    // deletionPolicy: Delete in the example: its indicators were withdrawn; the cluster-wide
    // partner's (same tenant and app, so the same engine) stay.
    let left: Vec<String> =
        world.indicators().iter().map(|i| i["externalId"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(left, ["ClusterDefenderPartner/fleet"], "{:?}", world.indicators());
    let _ = std::fs::remove_dir_all(&dir);
}
