//! A whole sandbox in-process: the Kubernetes API server, the Defender/Entra emulator, the CRDs,
//! the RBAC of `deploy/`, and the operator itself — the same `controller::run` that `run` starts,
//! authenticated as its ServiceAccount so that a verb missing from `deploy/` fails here too.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use defender_sandbox::apiserver::{ApiServerConfig, KubeApiServer};
use defender_sandbox::emulator::{Emulator, EmulatorConfig};

use crate::controller::{self, sync::EngineConfig};
use crate::defender::{AllowList, HostPolicy};
use crate::telemetry::{Health, Metrics};

/// The operator's identity in the sandbox, as `deploy/` installs it.
pub const OPERATOR_NAMESPACE: &str = "defender-operator";
pub const OPERATOR_SERVICE_ACCOUNT: &str = "defender-operator";

const RBAC: &str = include_str!("../../deploy/base/rbac.yaml");
const CRDS: &str = include_str!("../../crds/detect.dev.yaml");

#[derive(Clone, Debug)]
pub struct SandboxOptions {
    pub emulator: EmulatorConfig,
    pub engine: EngineConfig,
    /// Watch one namespace only (as `run --namespace`).
    pub watch_namespace: Option<String>,
    /// How long one Defender call may take (as `run --defender-timeout-seconds`); default 30 s.
    pub request_timeout: Option<Duration>,
    /// What [`Sandbox::start`] installs before returning: everything (the default), or only the
    /// API server and the emulator, for an installer (Helm, kubectl) to install the rest.
    pub install: Install,
}

/// What [`Sandbox::start`] installs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Install {
    /// The CRDs, the operator's namespace, ServiceAccount and `deploy/base/rbac.yaml`.
    #[default]
    Operator,
    /// Nothing: a fresh cluster.
    Nothing,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            emulator: EmulatorConfig::sandbox(),
            engine: EngineConfig {
                coalesce: Duration::from_millis(200),
                tick: Duration::from_secs(2),
                resync: Duration::from_secs(60),
                ..Default::default()
            },
            watch_namespace: None,
            request_timeout: None,
            install: Install::Operator,
        }
    }
}

/// A running operator; dropped or stopped, it goes away like a terminated pod.
pub struct Operator {
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl Operator {
    /// Graceful stop (SIGTERM): in-flight reconciles finish.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Killed mid-flight (SIGKILL): nothing gets to finish.
    pub fn kill(self) {
        self.task.abort();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Sandbox {
    pub kube: KubeApiServer,
    pub defender: Emulator,
    /// The admin identity (what kubectl uses).
    pub admin: Client,
    pub options: SandboxOptions,
}

impl Sandbox {
    /// Starts the API server and the emulator, and installs the CRDs and the operator's RBAC
    /// (unless [`SandboxOptions::install`] says otherwise).
    pub async fn start(options: SandboxOptions) -> anyhow::Result<Self> {
        let kube = KubeApiServer::start(ApiServerConfig::default()).await.context("starting the API server")?;
        let defender = Emulator::start(options.emulator.clone()).await.context("starting the Defender emulator")?;
        let admin = kube.admin_client();
        let install = options.install;
        let sandbox = Self { kube, defender, admin, options };
        if install == Install::Nothing {
            return Ok(sandbox);
        }
        sandbox.apply_yaml(CRDS).await.context("installing the CRDs")?;
        sandbox
            .apply_yaml(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {OPERATOR_NAMESPACE}\n---\n\
                 apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {OPERATOR_SERVICE_ACCOUNT}\n  namespace: {OPERATOR_NAMESPACE}\n"
            ))
            .await?;
        sandbox.apply_yaml(RBAC).await.context("installing the operator's RBAC")?;
        Ok(sandbox)
    }

    /// The operator's configuration in the sandbox: the emulator is the only extra allowed host.
    pub fn operator_config(&self) -> controller::Config {
        let allowlist = AllowList::new(&["http://127.0.0.1:*".to_string()]).expect("a valid allow-list entry");
        controller::Config {
            namespace: self.options.watch_namespace.clone(),
            cluster_resource_namespace: OPERATOR_NAMESPACE.into(),
            host_policy: HostPolicy { allowlist, authority_override: Some(self.defender.url()) },
            engine: self.options.engine.clone(),
            rate_limits: None,
            request_timeout: self.options.request_timeout,
            instance: Some("defender-operator-sandbox".into()),
        }
    }

    /// Starts the operator under its ServiceAccount.
    pub fn start_operator(&self) -> Operator {
        self.start_operator_with(self.operator_config())
    }

    pub fn start_operator_with(&self, config: controller::Config) -> Operator {
        let metrics = Arc::new(Metrics::default());
        let mut kube_config = kube::Config::new(self.kube.url().parse().expect("the API server's URL"));
        kube_config.auth_info.token =
            Some(self.kube.service_account_token(OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT).into());
        let client = crate::telemetry::kube_client(kube_config, metrics.clone()).expect("a client for the sandbox");
        let health = Arc::new(Health::default());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(controller::run(client, config, metrics.clone(), health.clone(), async move {
            let _ = stopped.await;
        }));
        Operator { shutdown: Some(shutdown), task, metrics, health }
    }

    /// The API base partners use in the sandbox (the emulator).
    pub fn defender_api(&self) -> String {
        self.defender.url().as_str().trim_end_matches('/').to_string()
    }

    /// Applies a multi-document YAML stream as the admin (server-side apply).
    pub async fn apply_yaml(&self, yaml: &str) -> anyhow::Result<Vec<DynamicObject>> {
        apply_yaml(&self.admin, yaml).await
    }

    /// Waits until the object exists and `done` holds, or fails after `timeout` showing the
    /// object as it last was.
    pub async fn wait_for<K>(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        done: impl Fn(&K) -> bool,
    ) -> anyhow::Result<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.admin.clone(), namespace);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = api.get_opt(name).await?;
            if let Some(object) = &current
                && done(object)
            {
                return Ok(object.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} {namespace}/{name} did not reach the expected state within {timeout:?}; last seen: {}",
                    K::kind(&()),
                    current.map(|o| serde_json::to_string(&o).unwrap_or_default()).unwrap_or_else(|| "absent".into())
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kubeconfig(&self) -> String {
        self.kube.kubeconfig_yaml(&self.kube.admin_token())
    }
}

/// Server-side applies each document with field manager `sandbox`.
pub async fn apply_yaml(client: &Client, yaml: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value: serde_json::Value = serde::Deserialize::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value.clone()).context("a Kubernetes object")?;
        let types = object.types.clone().context("apiVersion and kind")?;
        let (resource, namespaced) = api_resource(&types.api_version, &types.kind)?;
        let name = object.metadata.name.clone().context("metadata.name")?;
        let api: Api<DynamicObject> = if namespaced {
            let namespace = object.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            Api::namespaced_with(client.clone(), &namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let params = PatchParams::apply("sandbox").force();
        applied.push(
            api.patch(&name, &params, &Patch::Apply(&value))
                .await
                .with_context(|| format!("applying {} {name}", types.kind))?,
        );
    }
    Ok(applied)
}

/// The kinds the sandbox applies from manifests.
fn api_resource(api_version: &str, kind: &str) -> anyhow::Result<(ApiResource, bool)> {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let erase = |resource: ApiResource, namespaced: bool| Ok((resource, namespaced));
    match (api_version, kind) {
        ("v1", "Namespace") => erase(ApiResource::erase::<core::Namespace>(&()), false),
        ("v1", "Secret") => erase(ApiResource::erase::<core::Secret>(&()), true),
        ("v1", "ConfigMap") => erase(ApiResource::erase::<core::ConfigMap>(&()), true),
        ("v1", "ServiceAccount") => erase(ApiResource::erase::<core::ServiceAccount>(&()), true),
        ("v1", "Service") => erase(ApiResource::erase::<core::Service>(&()), true),
        ("apps/v1", "Deployment") => erase(ApiResource::erase::<apps::Deployment>(&()), true),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => erase(ApiResource::erase::<rbac::ClusterRole>(&()), false),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            erase(ApiResource::erase::<rbac::ClusterRoleBinding>(&()), false)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => erase(ApiResource::erase::<rbac::Role>(&()), true),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => erase(ApiResource::erase::<rbac::RoleBinding>(&()), true),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            erase(ApiResource::erase::<CustomResourceDefinition>(&()), false)
        }
        ("detect.dev/v1alpha1", "DefenderPartner") => {
            erase(ApiResource::erase::<crate::api::DefenderPartner>(&()), true)
        }
        ("detect.dev/v1alpha1", "ProbeFinding") => erase(ApiResource::erase::<crate::api::ProbeFinding>(&()), true),
        ("detect.dev/v1alpha1", "ClusterDefenderPartner") => {
            erase(ApiResource::erase::<crate::api::ClusterDefenderPartner>(&()), false)
        }
        _ => bail!("the sandbox does not apply {api_version} {kind}"),
    }
}
