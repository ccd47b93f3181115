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

/// `partner attach` replaces only what it wrote: a partner applied by someone else (kubectl, a
/// GitOps tool), or a Secret of the name attach would write, is refused and left untouched
/// unless `--overwrite`, which then replaces the partner's spec with attach's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_refuses_to_overwrite_what_it_did_not_write() {
    let world = world().await;
    let kubeconfig = std::env::temp_dir().join(format!("defender-operator-cli-ow-{}.kubeconfig", std::process::id()));
    std::fs::write(&kubeconfig, world.kubeconfig()).unwrap();
    let cli = Cli { kubeconfig: kubeconfig.clone() };
    let api = world.defender_api();
    let partners: Api<DefenderPartner> = Api::namespaced(world.admin.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(world.admin.clone(), "default");

    // A partner from GitOps (field manager "test"), with its own Secret and a Low severity.
    world.good_secret("default", "gitops-credentials").await;
    world
        .partner("default", "defender", "gitops-credentials", serde_json::json!({"indicator": {"severity": "Low"}}))
        .await;
    world.attached("default", "defender").await;
    let secret = format!("{}/{}", sv::GOOD_APP_ID, sv::GOOD_APP_SECRET);
    let attach = ["partner", "attach", "defender", "--user", sv::TENANT_ID, "--secret", &secret, "--api", &api];
    let (ok, out, err) = cli.run(&attach, &[]).await;
    assert!(!ok, "attach replaced a partner it did not write: {out}");
    assert!(
        err.contains("DefenderPartner default/defender exists and was not written by `partner attach`")
            && err.contains("managed by test")
            && err.contains("--overwrite"),
        "{err}"
    );
    let untouched = partners.get("defender").await.unwrap();
    assert_eq!(untouched.spec.credentials.secret_ref.unwrap().name, "gitops-credentials");
    assert!(secrets.get_opt("defender-credentials").await.unwrap().is_none(), "nothing was written");

    let (ok, out, err) = cli.run(&[&attach[..], &["--overwrite"]].concat(), &[]).await;
    assert!(ok, "attach --overwrite: {out}{err}");
    let replaced = partners.get("defender").await.unwrap();
    assert_eq!(replaced.spec.credentials.secret_ref.unwrap().name, "defender-credentials");
    assert_ne!(
        serde_json::to_value(&replaced.spec.indicator).unwrap()["severity"],
        "Low",
        "the other manager's fields are gone"
    );
    assert!(replaced.metadata.finalizers.unwrap_or_default().contains(&"detect.dev/indicators".to_string()));
    // Now it is attach's: attaching again (a rotated secret) needs no --overwrite.
    let (ok, out, err) = cli.run(&attach, &[]).await;
    assert!(ok, "re-attach: {out}{err}");

    // A Secret of the name attach would write, written by someone else, is refused too.
    world.good_secret("default", "other-credentials").await;
    let other = ["partner", "attach", "defender", "--name", "other", "--user", sv::TENANT_ID, "--secret", &secret];
    let (ok, _, err) = cli.run(&[&other[..], &["--api", &api]].concat(), &[]).await;
    assert!(!ok && err.contains("Secret default/other-credentials exists and was not written by"), "{err}");
    assert!(partners.get_opt("other").await.unwrap().is_none());
    let _ = std::fs::remove_file(&kubeconfig);
}

/// `defender-operator sandbox` prints where the operator's `/metrics` is, and serves it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_command_serves_the_operators_metrics_on_the_printed_address() {
    use tokio::io::AsyncBufReadExt;
    let dir = std::env::temp_dir().join(format!("defender-operator-sandbox-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-operator"))
        .args(["sandbox", "--kubeconfig"])
        .arg(dir.join("kubeconfig"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the sandbox starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("Operator metrics: ") {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("the sandbox ended without printing the metrics address")
    })
    .await
    .expect("the metrics address is printed");
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/metrics"), "{url}");
    // The examples converge: the partner gauge says so, as the operator counts it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        // The demo's partners: one of each credentials type and a cluster-wide one attached, one
        // refused.
        if text.contains(r#"defender_operator_partners{state="Attached"} 4"#) {
            assert!(text.contains("defender_operator_reconciles_total"), "{text}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no Attached partner in:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let ready = reqwest::get(url.replace("/metrics", "/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
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
