//! `defender-operator partner attach|detach|list` against the sandbox, as a user runs them.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use common::*;
use defender_operator::api::{Cloud, DefenderPartner, PartnerState};
use defender_sandbox::emulator::sandbox_values as sv;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

struct Cli {
    kubeconfig: std::path::PathBuf,
}

impl Cli {
    async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-operator"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("the binary runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into(),
            String::from_utf8_lossy(&output.stderr).into(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_list_suspend_and_detach_a_partner() {
    let world = world().await;
    let kubeconfig = std::env::temp_dir().join(format!("defender-operator-cli-{}.kubeconfig", std::process::id()));
    std::fs::write(&kubeconfig, world.kubeconfig()).unwrap();
    let cli = Cli { kubeconfig: kubeconfig.clone() };
    let api = world.defender_api();

    let secret = format!("{}/{}", sv::GOOD_APP_ID, sv::GOOD_APP_SECRET);
    let (ok, out, err) = cli
        .run(&["partner", "attach", "defender", "--user", sv::TENANT_ID, "--secret", &secret, "--api", &api], &[])
        .await;
    assert!(ok, "attach failed: {out}{err}");
    assert!(out.contains("Attached") && out.contains(sv::TENANT_ID), "{out}");

    // `--cloud gcc-high` writes the CRD's spelling (GCCHigh), which the API server takes.
    let gov_secret = format!("{}/{}", sv::GOV_APP_ID, sv::GOV_APP_SECRET);
    let gov = ["--name", "gov", "--user", sv::GOV_TENANT_ID, "--secret", &gov_secret, "--cloud", "gcc-high"];
    let (ok, out, err) =
        cli.run(&[&["partner", "attach", "defender", "--api", &api][..], &gov[..]].concat(), &[]).await;
    assert!(ok, "attach --cloud gcc-high failed: {out}{err}");
    assert!(out.contains("Attached") && out.contains(sv::GOV_TENANT_ID), "{out}");
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    assert_eq!(partners.get("gov").await.unwrap().spec.cloud, Cloud::GccHigh);

    // The secret from the environment, not the command line; a wrong one is refused with its reason.
    let wrong = "not-the-secret-4711";
    let (ok, out, err) = cli
        .run(
            &[
                "partner",
                "attach",
                "defender",
                "--name",
                "other",
                "--user",
                sv::TENANT_ID,
                "--secret",
                sv::GOOD_APP_ID,
                "--api",
                &api,
            ],
            &[("DEFENDER_CLIENT_SECRET", wrong)],
        )
        .await;
    assert!(!ok, "a wrong secret must not attach: {out}");
    assert!(err.contains("Detached: InvalidSecret"), "{err}");
    assert!(!out.contains(wrong) && !err.contains(wrong), "the secret was printed");

    let (ok, out, _) = cli.run(&["partner", "list"], &[]).await;
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("STATE") && lines[0].contains("REASON"), "{out}");
    assert!(lines.iter().any(|l| l.contains("defender") && l.contains("Attached")), "{out}");
    assert!(lines.iter().any(|l| l.contains("other") && l.contains("InvalidSecret")), "{out}");

    let (ok, _, err) = cli.run(&["partner", "detach", "defender", "--suspend"], &[]).await;
    assert!(ok, "{err}");
    world.detached_with("default", "defender", "Suspended").await;

    let secrets: Api<Secret> = Api::namespaced(world.admin.clone(), "default");
    assert!(secrets.get_opt("defender-credentials").await.unwrap().is_some(), "attach wrote it");
    let (ok, out, err) = cli.run(&["partner", "detach", "defender"], &[]).await;
    assert!(ok, "{err}");
    assert!(out.contains("Detached default/defender"), "{out}");
    assert!(partners.get_opt("defender").await.unwrap().is_none());
    // The Secret attach wrote goes with its partner; another partner's stays.
    assert!(secrets.get_opt("defender-credentials").await.unwrap().is_none(), "{out}");
    assert!(secrets.get_opt("other-credentials").await.unwrap().is_some());
    let other = partners.get("other").await.unwrap();
    assert_eq!(other.status.unwrap().state, Some(PartnerState::Detached));
    let _ = std::fs::remove_file(&kubeconfig);
}

/// `sandbox --demo` converges, showing every outcome and a time to protect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_every_outcome_and_a_time_to_protect() {
    let kubeconfig = std::env::temp_dir().join(format!("defender-operator-demo-{}.kubeconfig", std::process::id()));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-operator"))
        .args(["sandbox", "--demo", "--timeout", "90s", "--kubeconfig"])
        .arg(&kubeconfig)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("the binary runs");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}{}", String::from_utf8_lossy(&output.stderr));
    let last = out.rsplit("NAMESPACE                FINDING").next().unwrap();
    for outcome in ["Prevented", "Detected", "NotDetected", "Pending", "Unknown"] {
        assert!(last.contains(&format!(" {outcome} ")), "{outcome} missing in:\n{last}");
    }
    for readiness in ["Ready", "PassiveMode", "NotFound"] {
        assert!(last.contains(readiness), "{readiness} missing in:\n{last}");
    }
    assert!(last.contains("default/office-macro-laptop-7: PROTECTED at"), "{last}");
    assert!(out.contains("converged:"), "{out}");
    let _ = std::fs::remove_file(kubeconfig);
}
