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

/// The two forms without a client secret: a certificate (written to a `kubernetes.io/tls` Secret)
/// and a ServiceAccount (no Secret; the client id from its annotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_with_a_certificate_or_a_service_account() {
    use defender_sandbox::emulator::credentials::{TestCertificate, Validity};
    let world = world().await;
    let dir = std::env::temp_dir().join(format!("defender-operator-cli-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, world.kubeconfig()).unwrap();
    let cli = Cli { kubeconfig };
    let api = world.defender_api();

    let certificate = TestCertificate::rsa("cli", Validity::Valid);
    world.defender.add_certificate(sv::TENANT_ID, sv::GOOD_APP_ID, certificate.app_certificate()).unwrap();
    let (crt, key) = (dir.join("app.crt"), dir.join("app.key"));
    std::fs::write(&crt, &certificate.certificate_pem).unwrap();
    std::fs::write(&key, &certificate.private_key_pem).unwrap();
    let (crt, key) = (crt.to_str().unwrap(), key.to_str().unwrap());
    let (ok, out, err) = cli
        .run(
            &[
                "partner",
                "attach",
                "defender",
                "--name",
                "cert",
                "--user",
                sv::TENANT_ID,
                "--client-id",
                sv::GOOD_APP_ID,
                "--certificate",
                crt,
                "--private-key",
                key,
                "--api",
                &api,
            ],
            &[],
        )
        .await;
    assert!(ok && out.contains("Attached"), "attach --certificate failed: {out}{err}");
    let secrets: Api<Secret> = Api::namespaced(world.admin.clone(), "default");
    assert_eq!(secrets.get("cert-credentials").await.unwrap().type_.as_deref(), Some("kubernetes.io/tls"));
    // A key that is not the certificate's is refused before anything is written.
    let other = TestCertificate::rsa("other", Validity::Valid);
    let stray = dir.join("other.key");
    std::fs::write(&stray, &other.private_key_pem).unwrap();
    let (ok, _, err) = cli
        .run(
            &[
                "partner",
                "attach",
                "defender",
                "--name",
                "stray",
                "--user",
                sv::TENANT_ID,
                "--client-id",
                sv::GOOD_APP_ID,
                "--certificate",
                crt,
                "--private-key",
                stray.to_str().unwrap(),
                "--api",
                &api,
            ],
            &[],
        )
        .await;
    assert!(!ok && err.contains("does not belong"), "{err}");
    assert!(secrets.get_opt("stray-credentials").await.unwrap().is_none());

    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(world.admin.clone(), "default");
    let account = serde_json::json!({"metadata": {"name": "defender",
        "annotations": {"azure.workload.identity/client-id": sv::GOOD_APP_ID}}});
    accounts.create(&Default::default(), &serde_json::from_value(account).unwrap()).await.unwrap();
    world.defender.federate_with(sv::TENANT_ID, sv::GOOD_APP_ID, &world.kube, "default", "defender").unwrap();
    let (ok, out, err) = cli
        .run(
            &[
                "partner",
                "attach",
                "defender",
                "--name",
                "federated",
                "--user",
                sv::TENANT_ID,
                "--service-account",
                "defender",
                "--api",
                &api,
            ],
            &[],
        )
        .await;
    assert!(ok && out.contains("Attached"), "attach --service-account failed: {out}{err}");
    assert!(secrets.get_opt("federated-credentials").await.unwrap().is_none(), "no Secret for workload identity");
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    assert_eq!(partners.get("federated").await.unwrap().spec.credentials.client_id.as_deref(), Some(sv::GOOD_APP_ID));
    let _ = std::fs::remove_dir_all(&dir);
}
