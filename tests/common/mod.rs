//! Shared helpers for the integration tests: a fresh sandbox with the operator running, and
//! builders for Secrets, partners and findings.
#![allow(dead_code)]

use std::time::Duration;

use defender_operator::api::conditions::{READY, find};
use defender_operator::api::{DefenderPartner, PartnerState, ProbeFinding};
use defender_operator::sandbox::{Operator, Sandbox, SandboxOptions};
use defender_sandbox::emulator::sandbox_values as sv;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

pub const WAIT: Duration = Duration::from_secs(20);

pub struct World {
    pub sandbox: Sandbox,
    pub operator: Option<Operator>,
}

impl std::ops::Deref for World {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

pub async fn world() -> World {
    world_with(SandboxOptions::default()).await
}

pub async fn world_with(options: SandboxOptions) -> World {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info,kube=warn".into()))
        .try_init();
    let sandbox = Sandbox::start(options).await.expect("sandbox starts");
    let operator = Some(sandbox.start_operator());
    World { sandbox, operator }
}

impl World {
    pub async fn namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.admin.clone());
        api.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
            .await
            .expect("namespace created");
    }

    pub async fn secret(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let api: Api<Secret> = Api::namespaced(self.admin.clone(), namespace);
        let string_data: serde_json::Map<String, Value> =
            data.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
        let secret =
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": string_data});
        api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&secret)).await.expect("secret applied");
    }

    /// A Secret with the sandbox's good app for its first tenant.
    pub async fn good_secret(&self, namespace: &str, name: &str) {
        self.secret(
            namespace,
            name,
            &[("tenantId", sv::TENANT_ID), ("clientId", sv::GOOD_APP_ID), ("clientSecret", sv::GOOD_APP_SECRET)],
        )
        .await;
    }

    /// A Secret with the good app and a wrong client secret: Entra answers AADSTS7000215.
    pub async fn wrong_secret(&self, namespace: &str, name: &str) {
        self.secret(
            namespace,
            name,
            &[("tenantId", sv::TENANT_ID), ("clientId", sv::GOOD_APP_ID), ("clientSecret", "wrong")],
        )
        .await;
    }

    /// The usual start: a good Secret `creds`, a partner using it, and its `Attached` verdict.
    pub async fn attached_partner(&self, namespace: &str, name: &str, spec: Value) -> DefenderPartner {
        self.good_secret(namespace, "creds").await;
        self.partner(namespace, name, "creds", spec).await;
        self.attached(namespace, name).await
    }

    /// Applies a partner pointed at the emulator; `spec` is merged over the defaults.
    pub async fn partner(&self, namespace: &str, name: &str, secret: &str, spec: Value) {
        let mut full = json!({"api": self.defender_api(), "credentials": {"secretRef": {"name": secret}}});
        merge(&mut full, spec);
        let partner = json!({"apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
            "metadata": {"name": name, "namespace": namespace}, "spec": full});
        let api: Api<DefenderPartner> = Api::namespaced(self.admin.clone(), namespace);
        api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&partner)).await.expect("partner applied");
    }

    /// Applies a finding; `spec` is merged over a valid default with the given hashes.
    pub async fn finding(&self, namespace: &str, name: &str, hashes: &[String], spec: Value) {
        let indicators: Vec<Value> = hashes.iter().map(|h| json!({"type": "FileSha256", "value": h})).collect();
        let mut full = json!({
            "test": {"id": "3ebbda49-738c-4799-a8fb-206630cf609e", "name": "Will a malicious Office document be quarantined?"},
            "endpoint": {"hostname": "laptop-7"},
            "indicators": indicators,
        });
        merge(&mut full, spec);
        let finding = json!({"apiVersion": "detect.dev/v1alpha1", "kind": "ProbeFinding",
            "metadata": {"name": name, "namespace": namespace}, "spec": full});
        let api: Api<ProbeFinding> = Api::namespaced(self.admin.clone(), namespace);
        api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&finding)).await.expect("finding applied");
    }

    pub async fn attached(&self, namespace: &str, name: &str) -> DefenderPartner {
        self.wait_for(namespace, name, WAIT, |p: &DefenderPartner| {
            p.status.as_ref().is_some_and(|s| {
                s.state == Some(PartnerState::Attached) && s.observed_generation == p.metadata.generation
            })
        })
        .await
        .expect("partner attached")
    }

    pub async fn detached_with(&self, namespace: &str, name: &str, reason: &str) -> DefenderPartner {
        self.wait_for(namespace, name, WAIT, |p: &DefenderPartner| {
            p.status.as_ref().is_some_and(|s| {
                s.state == Some(PartnerState::Detached)
                    && s.reason.as_deref() == Some(reason)
                    && s.observed_generation == p.metadata.generation
            })
        })
        .await
        .unwrap_or_else(|e| panic!("partner {namespace}/{name} should be Detached/{reason}: {e}"))
    }

    pub async fn ready_finding(&self, namespace: &str, name: &str) -> ProbeFinding {
        self.wait_for(namespace, name, WAIT, |f: &ProbeFinding| {
            f.status.as_ref().is_some_and(|s| {
                s.observed_generation == f.metadata.generation
                    && find(&s.conditions, READY).is_some_and(|c| c.status == "True")
            })
        })
        .await
        .expect("finding ready")
    }

    /// Indicators the emulator holds for the sandbox's first tenant.
    pub fn indicators(&self) -> Vec<Value> {
        self.defender.indicators(sv::TENANT_ID)
    }

    pub fn indicator_values(&self, tenant: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .defender
            .indicators(tenant)
            .iter()
            .map(|i| i["indicatorValue"].as_str().unwrap().to_lowercase())
            .collect();
        values.sort();
        values
    }
}

/// Log lines written into memory (a tracing writer), to search for what must never be logged.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits (polling) until `check` holds, or panics with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A distinct SHA-256-looking value per seed.
pub fn sha256(seed: u32) -> String {
    format!("{seed:08x}").repeat(8)
}

fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, overlay) => *base = overlay,
    }
}
