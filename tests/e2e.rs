//! End to end, on any cluster: the chart installed with the real Helm library, the operator
//! reaching a Defender/Entra emulator over HTTPS, and the scenarios that matter — attach, each
//! credential refusal, push, a restart that re-sends nothing, both deletion policies, detach.
//!
//! Where it runs:
//! - `DEFENDER_E2E_KUBECONFIG=<path>`: that cluster (kind, k3d, a real one). The operator's image
//!   is `DEFENDER_E2E_IMAGE` (default the chart's); its pods reach this process's emulator at
//!   `DEFENDER_E2E_EMULATOR_HOST` (required: an address of this machine the pods can reach, e.g.
//!   the kind network's gateway), on `DEFENDER_E2E_EMULATOR_PORT` (default: a free port).
//!   `.github/workflows/e2e.yaml` runs it on kind.
//! - otherwise (CI): the sandbox's API server, where no kubelet runs pods: this test runs the
//!   chart's Deployment itself, one `defender-operator` process per replica, with the
//!   Deployment's arguments and environment, its ServiceAccount's token and its ConfigMap
//!   volumes (a process kubelet).
//!
//! Needs `helm-sdkpy` (see `tools`): without it, outside CI, it says so and checks nothing.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod tools;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use defender_operator::api::{DefenderPartner, ProbeFinding};
use defender_operator::sandbox::{Install, Sandbox, SandboxOptions};
use defender_sandbox::emulator::sandbox_values as sv;
use defender_sandbox::emulator::{Emulator, EmulatorConfig, Endpoint};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tools::Helm;

const NAMESPACE: &str = "defender-operator";
const RELEASE: &str = "defender-operator";
const CA_MOUNT: &str = "/etc/defender-e2e";

/// Where the operator runs.
enum Runtime {
    /// The sandbox's API server; the Deployment's pods as local processes.
    Sandbox { sandbox: Box<Sandbox>, pods: Vec<Process>, starts: usize },
    /// A cluster with a kubelet.
    Cluster,
}

struct E2e {
    admin: Client,
    helm: Helm,
    emulator: Emulator,
    /// The emulator's base URL as the operator's pods reach it (https).
    url: String,
    ca: String,
    runtime: Runtime,
    dir: PathBuf,
    wait: Duration,
}

/// One replica run as a process.
struct Process {
    name: String,
    child: tokio::process::Child,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl E2e {
    async fn start() -> Option<E2e> {
        let dir = std::env::temp_dir().join(format!("defender-operator-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (kubeconfig, admin, runtime, host, bind, wait) = match std::env::var("DEFENDER_E2E_KUBECONFIG") {
            Ok(path) => {
                let host = std::env::var("DEFENDER_E2E_EMULATOR_HOST").expect(
                    "DEFENDER_E2E_EMULATOR_HOST: an address of this machine that the cluster's pods reach \
                     (for kind: docker network inspect kind -f '{{(index .IPAM.Config 0).Gateway}}')",
                );
                let port: u16 = std::env::var("DEFENDER_E2E_EMULATOR_PORT").map(|p| p.parse().unwrap()).unwrap_or(0);
                let config = kube::config::Kubeconfig::read_from(&path).expect("DEFENDER_E2E_KUBECONFIG reads");
                let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await.unwrap();
                let admin = Client::try_from(config).unwrap();
                let bind = SocketAddr::from(([0, 0, 0, 0], port));
                (PathBuf::from(path), admin, Runtime::Cluster, host, bind, Duration::from_secs(180))
            }
            Err(_) => {
                let options = SandboxOptions { install: Install::Nothing, ..Default::default() };
                let sandbox = Sandbox::start(options).await.expect("sandbox starts");
                let kubeconfig = dir.join("kubeconfig");
                std::fs::write(&kubeconfig, sandbox.kubeconfig()).unwrap();
                let admin = sandbox.admin.clone();
                let runtime = Runtime::Sandbox { sandbox: Box::new(sandbox), pods: Vec::new(), starts: 0 };
                let bind = SocketAddr::from(([127, 0, 0, 1], 0));
                (kubeconfig, admin, runtime, "127.0.0.1".to_string(), bind, Duration::from_secs(30))
            }
        };
        let helm = Helm::new(&kubeconfig, NAMESPACE)?;
        let (emulator, ca) = Emulator::start_public(bind, std::slice::from_ref(&host), EmulatorConfig::sandbox())
            .await
            .expect("the emulator starts");
        let url = format!("https://{host}:{}", emulator.url().port().unwrap());
        Some(E2e { admin, helm, emulator, url, ca, runtime, dir, wait })
    }

    fn is_sandbox(&self) -> bool {
        matches!(self.runtime, Runtime::Sandbox { .. })
    }

    /// The chart's values for this cluster: the emulator as the Defender API and Entra, trusted
    /// through its CA (a ConfigMap mounted, `SSL_CERT_FILE`), allowed by the NetworkPolicy.
    fn values(&self) -> Value {
        let port = self.url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        let host = self.url.trim_start_matches("https://").rsplit_once(':').unwrap().0.to_string();
        let mut values = json!({
            "apiAllowlist": [format!("https://{host}:*")],
            "authorityUrl": format!("{}/", self.url),
            "logFormat": "text",
            "networkPolicy": {"egressPorts": [443, 6443, port]},
            "extraVolumes": [{"name": "e2e-ca", "configMap": {"name": "defender-e2e-ca"}}],
            "extraVolumeMounts": [{"name": "e2e-ca", "mountPath": CA_MOUNT, "readOnly": true}],
            "extraEnv": [{"name": "SSL_CERT_FILE", "value": format!("{CA_MOUNT}/ca.crt")}],
        });
        if let Ok(image) = std::env::var("DEFENDER_E2E_IMAGE") {
            let (repository, tag) = image.rsplit_once(':').expect("DEFENDER_E2E_IMAGE is repository:tag");
            values["image"] = json!({"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"});
        }
        values
    }

    /// As the README says: the namespace labelled `restricted`, then `helm install`.
    async fn install(&mut self) {
        self.namespace(NAMESPACE).await;
        let labels = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
        Api::<Namespace>::all(self.admin.clone())
            .patch(NAMESPACE, &PatchParams::default(), &Patch::Merge(&labels))
            .await
            .unwrap();
        let ca = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "defender-e2e-ca"},
                        "data": {"ca.crt": self.ca}});
        Api::<ConfigMap>::namespaced(self.admin.clone(), NAMESPACE)
            .patch("defender-e2e-ca", &PatchParams::apply("e2e").force(), &Patch::Apply(&ca))
            .await
            .unwrap();
        let wait = if self.is_sandbox() { 0 } else { self.wait.as_secs() };
        let release = self.helm.install(RELEASE, &self.values(), wait).await.expect("helm install");
        assert_eq!(release.status, "deployed");
        self.start_pods().await;
    }

    /// Sandbox: runs the Deployment's replicas as processes, as a kubelet would run its pods.
    async fn start_pods(&mut self) {
        let Runtime::Sandbox { sandbox, pods, starts } = &mut self.runtime else { return };
        *starts += 1;
        let deployment = Api::<Deployment>::namespaced(self.admin.clone(), NAMESPACE).get(RELEASE).await.unwrap();
        let deployment = serde_json::to_value(deployment).unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let account = pod["serviceAccountName"].as_str().unwrap();
        let token = sandbox.kube.service_account_token(NAMESPACE, account);
        let replicas = deployment["spec"]["replicas"].as_i64().unwrap();
        for i in 0..replicas {
            let name = format!("{RELEASE}-{starts}-{i}");
            let root = self.dir.join("pods").join(&name);
            std::fs::create_dir_all(&root).unwrap();
            // The pod's API credentials, as the projected kube-api-access volume gives them.
            let kubeconfig = root.join("kubeconfig");
            std::fs::write(&kubeconfig, sandbox.kube.kubeconfig_yaml(&token)).unwrap();
            // ConfigMap volumes, under the pod's root; paths in the environment follow them.
            let mut mounts: Vec<(String, PathBuf)> = Vec::new();
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
                let Some(config_map) = volume["configMap"]["name"].as_str() else { continue };
                let data = Api::<ConfigMap>::namespaced(self.admin.clone(), NAMESPACE).get(config_map).await.unwrap();
                let target = root.join(mount["mountPath"].as_str().unwrap().trim_start_matches('/'));
                std::fs::create_dir_all(&target).unwrap();
                for (key, value) in data.data.unwrap_or_default() {
                    std::fs::write(target.join(key), value).unwrap();
                }
                mounts.push((mount["mountPath"].as_str().unwrap().to_string(), target));
            }
            let mut env: BTreeMap<String, String> = BTreeMap::new();
            for var in container["env"].as_array().into_iter().flatten() {
                let value = match (&var["value"], var["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
                    (Value::String(v), _) => v.clone(),
                    (_, Some("metadata.name")) => name.clone(),
                    (_, Some("metadata.namespace")) => NAMESPACE.to_string(),
                    other => panic!("the process kubelet cannot give {var}: {other:?}"),
                };
                let value = mounts.iter().fold(value, |v, (from, to)| v.replacen(from, to.to_str().unwrap(), 1));
                env.insert(var["name"].as_str().unwrap().to_string(), value);
            }
            // Each pod has its own network namespace; here they share one, so each gets a port.
            let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let args: Vec<String> = container["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .map(|a| if a.starts_with("--metrics-addr=") { format!("--metrics-addr={metrics}") } else { a })
                .collect();
            let log = root.join("log");
            let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-operator"))
                .args(&args)
                .envs(&env)
                .env("KUBECONFIG", &kubeconfig)
                .env("RUST_LOG", std::env::var("E2E_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()))
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::options().append(true).open(&log).unwrap())
                .kill_on_drop(true)
                .spawn()
                .expect("the operator starts");
            // The startup probe.
            let healthz = format!("http://{metrics}/healthz");
            let deadline = tokio::time::Instant::now() + self.wait;
            while reqwest::get(&healthz).await.map(|r| r.status() != 200).unwrap_or(true) {
                assert!(tokio::time::Instant::now() < deadline, "{name} never served /healthz: {}", log.display());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            pods.push(Process { name, child, log });
        }
    }

    /// Every replica stopped gracefully (SIGTERM, as a rollout does) and started again.
    async fn restart_operator(&mut self) {
        match &mut self.runtime {
            Runtime::Sandbox { pods, .. } => {
                for mut pod in pods.drain(..) {
                    let pid = pod.child.id().expect("running").to_string();
                    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
                    let stopped = tokio::time::timeout(Duration::from_secs(30), pod.child.wait()).await;
                    assert!(stopped.is_ok(), "{} did not stop on SIGTERM: {}", pod.name, pod.log.display());
                }
                self.start_pods().await;
            }
            Runtime::Cluster => {
                let pods: Api<Pod> = Api::namespaced(self.admin.clone(), NAMESPACE);
                let selector = format!("app.kubernetes.io/instance={RELEASE}");
                let old: Vec<String> = pods
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .filter_map(|p| p.metadata.name)
                    .collect();
                pods.delete_collection(&DeleteParams::default(), &ListParams::default().labels(&selector))
                    .await
                    .unwrap();
                let deadline = tokio::time::Instant::now() + self.wait;
                loop {
                    let now = pods.list(&ListParams::default().labels(&selector)).await.unwrap().items;
                    let ready = now
                        .iter()
                        .filter(|p| !old.contains(p.metadata.name.as_ref().unwrap()))
                        .filter(|p| {
                            p.status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                        })
                        .count();
                    if ready >= 2 && now.iter().all(|p| !old.contains(p.metadata.name.as_ref().unwrap())) {
                        break;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "the restarted pods are not ready");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.admin.clone());
        if api.get_opt(name).await.unwrap().is_none() {
            let ns = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            api.create(&PostParams::default(), &ns).await.unwrap();
        }
    }

    async fn secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let data: serde_json::Map<String, Value> = data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data});
        Api::<Secret>::namespaced(self.admin.clone(), ns)
            .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&secret))
            .await
            .unwrap();
    }

    async fn partner(&self, ns: &str, name: &str, secret: &str, policy: &str) {
        let partner = json!({"apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner", "metadata": {"name": name},
            "spec": {"api": self.url, "credentials": {"secretRef": {"name": secret}}, "deletionPolicy": policy}});
        Api::<DefenderPartner>::namespaced(self.admin.clone(), ns)
            .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&partner))
            .await
            .unwrap();
    }

    async fn finding(&self, ns: &str, name: &str, hash: &str) {
        let finding = json!({"apiVersion": "detect.dev/v1alpha1", "kind": "ProbeFinding", "metadata": {"name": name},
            "spec": {"test": {"id": "3ebbda49-738c-4799-a8fb-206630cf609e", "name": "Will a malicious Office document be quarantined?"},
                     "endpoint": {"hostname": "laptop-7"}, "state": "UNPROTECTED",
                     "indicators": [{"type": "FileSha256", "value": hash}]}});
        Api::<ProbeFinding>::namespaced(self.admin.clone(), ns)
            .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&finding))
            .await
            .unwrap();
    }

    /// Polls `check` until it gives Some, or fails naming `what` (and where the logs are).
    async fn until<T, F: std::future::Future<Output = Option<T>>>(&self, what: &str, check: impl Fn() -> F) -> T {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            if let Some(done) = check().await {
                return done;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}{}", self.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn logs(&self) -> String {
        match &self.runtime {
            Runtime::Sandbox { pods, .. } => {
                format!(
                    " (operator logs: {})",
                    pods.iter().map(|p| p.log.display().to_string()).collect::<Vec<_>>().join(", ")
                )
            }
            Runtime::Cluster => format!(" (kubectl -n {NAMESPACE} logs -l app.kubernetes.io/instance={RELEASE})"),
        }
    }

    /// The partner's state and reason once the operator judged its current generation.
    async fn verdict(&self, ns: &str, name: &str) -> (String, String) {
        let api: Api<DefenderPartner> = Api::namespaced(self.admin.clone(), ns);
        self.until(&format!("a verdict on partner {ns}/{name}"), || {
            let api = api.clone();
            async move {
                let p = api.get_opt(name).await.ok()??;
                let s = p.status.as_ref()?;
                (s.observed_generation == p.metadata.generation && s.state.is_some()).then(|| {
                    (
                        serde_json::to_value(s.state).unwrap().as_str().unwrap().to_string(),
                        s.reason.clone().unwrap_or_default(),
                    )
                })
            }
        })
        .await
    }

    async fn submitted(&self, ns: &str, name: &str) {
        let api: Api<ProbeFinding> = Api::namespaced(self.admin.clone(), ns);
        self.until(&format!("finding {ns}/{name} delivered"), || {
            let api = api.clone();
            async move {
                let f = api.get_opt(name).await.ok()??;
                let s = f.status.as_ref()?;
                let ready = s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
                (s.observed_generation == f.metadata.generation && ready).then_some(())
            }
        })
        .await
    }

    async fn gone<K>(&self, api: Api<K>, name: &str)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        self.until(&format!("{name} deleted"), || {
            let api = api.clone();
            async move { api.get_opt(name).await.unwrap().is_none().then_some(()) }
        })
        .await
    }

    /// The indicator of `value` in `tenant`: (id, lastUpdateTime).
    fn indicator(&self, tenant: &str, value: &str) -> Option<(String, String)> {
        let all = self.emulator.indicators(tenant);
        let found: Vec<&Value> = all.iter().filter(|i| i["indicatorValue"].as_str() == Some(value)).collect();
        assert!(found.len() <= 1, "{value} is in Defender {} times", found.len());
        found.first().map(|i| (i["id"].to_string(), i["lastUpdateTime"].as_str().unwrap_or_default().to_string()))
    }

    fn writes(&self) -> usize {
        let writes = [Endpoint::SubmitIndicator, Endpoint::ImportIndicators];
        self.emulator.calls().iter().filter(|c| writes.contains(&c.endpoint)).count()
    }
}

fn sha(seed: u32) -> String {
    format!("{seed:08x}").repeat(8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_installed_with_helm_attaches_pushes_restarts_and_detaches() {
    let Some(mut e2e) = E2e::start().await else { return };
    e2e.install().await;
    let good = [("tenantId", sv::TENANT_ID), ("clientId", sv::GOOD_APP_ID), ("clientSecret", sv::GOOD_APP_SECRET)];

    // Attach.
    e2e.namespace("e2e").await;
    e2e.secret("e2e", "defender-credentials", &good).await;
    e2e.partner("e2e", "defender", "defender-credentials", "Delete").await;
    assert_eq!(e2e.verdict("e2e", "defender").await, ("Attached".into(), "Attached".into()), "{}", e2e.logs());

    // Each credential refusal, each in its own namespace.
    let refusals: [(&str, Vec<(&str, &str)>); 9] = [
        (
            "InvalidSecret",
            vec![("tenantId", sv::TENANT_ID), ("clientId", sv::GOOD_APP_ID), ("clientSecret", sv::GOOD_APP_SECRET_ID)],
        ),
        ("SecretKeyMissing", vec![("tenantId", sv::TENANT_ID), ("clientId", sv::GOOD_APP_ID)]),
        (
            "SecretExpired",
            vec![
                ("tenantId", sv::TENANT_ID),
                ("clientId", sv::EXPIRED_SECRET_APP_ID),
                ("clientSecret", sv::EXPIRED_SECRET_APP_SECRET),
            ],
        ),
        (
            "AppDisabled",
            vec![
                ("tenantId", sv::TENANT_ID),
                ("clientId", sv::DISABLED_APP_ID),
                ("clientSecret", sv::DISABLED_APP_SECRET),
            ],
        ),
        (
            "AppNotFound",
            vec![
                ("tenantId", sv::TENANT_ID),
                ("clientId", "a11ce000-5a4d-4b0c-8d3f-0000000000ff"),
                ("clientSecret", "x"),
            ],
        ),
        (
            "TenantNotFound",
            vec![
                ("tenantId", sv::UNKNOWN_TENANT_ID),
                ("clientId", sv::GOOD_APP_ID),
                ("clientSecret", sv::GOOD_APP_SECRET),
            ],
        ),
        (
            "WrongCloud",
            vec![("tenantId", sv::GOV_TENANT_ID), ("clientId", sv::GOV_APP_ID), ("clientSecret", sv::GOV_APP_SECRET)],
        ),
        (
            "DefenderNotProvisioned",
            vec![
                ("tenantId", sv::NO_DEFENDER_TENANT_ID),
                ("clientId", sv::NO_DEFENDER_APP_ID),
                ("clientSecret", sv::NO_DEFENDER_APP_SECRET),
            ],
        ),
        (
            "MissingPermission",
            vec![
                ("tenantId", sv::TENANT_ID),
                ("clientId", sv::NO_ROLES_APP_ID),
                ("clientSecret", sv::NO_ROLES_APP_SECRET),
            ],
        ),
    ];
    for (reason, data) in &refusals {
        let ns = format!("e2e-{}", reason.to_lowercase());
        e2e.namespace(&ns).await;
        e2e.secret(&ns, "creds", data).await;
        e2e.partner(&ns, "defender", "creds", "Retain").await;
    }
    e2e.namespace("e2e-secretnotfound").await;
    e2e.partner("e2e-secretnotfound", "defender", "absent", "Retain").await;
    for reason in refusals.iter().map(|r| r.0).chain(["SecretNotFound"]) {
        let verdict = e2e.verdict(&format!("e2e-{}", reason.to_lowercase()), "defender").await;
        assert_eq!(verdict, ("Detached".into(), reason.to_string()), "{reason}");
    }

    // Push.
    let first = sha(0xe2e0_0001);
    e2e.finding("e2e", "office-macro", &first).await;
    e2e.submitted("e2e", "office-macro").await;
    let before = e2e.indicator(sv::TENANT_ID, &first).expect("pushed to Defender");

    // Restart: the new operator reads Defender once and sends nothing already there.
    e2e.emulator.clear_calls();
    e2e.restart_operator().await;
    e2e.until("the restarted operator reading Defender's indicators", || async {
        e2e.emulator.calls().iter().any(|c| c.endpoint == Endpoint::ListIndicators && c.status == 200).then_some(())
    })
    .await;
    let second = sha(0xe2e0_0002);
    e2e.finding("e2e", "powershell", &second).await;
    e2e.submitted("e2e", "powershell").await;
    assert!(e2e.indicator(sv::TENANT_ID, &second).is_some());
    assert_eq!(
        e2e.indicator(sv::TENANT_ID, &first),
        Some(before),
        "the first indicator was sent again after the restart"
    );
    assert_eq!(e2e.writes(), 1, "only the new finding was written after the restart: {:?}", e2e.emulator.calls());

    // Deletion policy Delete: a deleted finding's indicator is withdrawn.
    let findings: Api<ProbeFinding> = Api::namespaced(e2e.admin.clone(), "e2e");
    findings.delete("office-macro", &DeleteParams::default()).await.unwrap();
    e2e.until("the deleted finding's indicator withdrawn (deletionPolicy: Delete)", || async {
        e2e.indicator(sv::TENANT_ID, &first).is_none().then_some(())
    })
    .await;

    // Deletion policy Retain: it stays, while the operator goes on (a later finding is pushed).
    e2e.namespace("e2e-retain").await;
    let tenant2 =
        [("tenantId", sv::TENANT2_ID), ("clientId", sv::TENANT2_APP_ID), ("clientSecret", sv::TENANT2_APP_SECRET)];
    e2e.secret("e2e-retain", "creds", &tenant2).await;
    e2e.partner("e2e-retain", "defender", "creds", "Retain").await;
    assert_eq!(e2e.verdict("e2e-retain", "defender").await.0, "Attached");
    let kept = sha(0xe2e0_0003);
    e2e.finding("e2e-retain", "kept", &kept).await;
    e2e.submitted("e2e-retain", "kept").await;
    let retained: Api<ProbeFinding> = Api::namespaced(e2e.admin.clone(), "e2e-retain");
    retained.delete("kept", &DeleteParams::default()).await.unwrap();
    e2e.gone(retained.clone(), "kept").await;
    let later = sha(0xe2e0_0004);
    e2e.finding("e2e-retain", "later", &later).await;
    e2e.submitted("e2e-retain", "later").await;
    assert!(e2e.indicator(sv::TENANT2_ID, &kept).is_some(), "Retain keeps a deleted finding's indicator");

    // Detach: deleting a partner withdraws its indicators with Delete, keeps them with Retain.
    for ns in ["e2e", "e2e-retain"] {
        let partners: Api<DefenderPartner> = Api::namespaced(e2e.admin.clone(), ns);
        partners.delete("defender", &DeleteParams::default()).await.unwrap();
        e2e.gone(partners, "defender").await;
    }
    assert!(e2e.indicator(sv::TENANT_ID, &second).is_none(), "detached with Delete: withdrawn");
    assert!(e2e.indicator(sv::TENANT2_ID, &later).is_some(), "detached with Retain: kept");
    assert!(e2e.indicator(sv::TENANT2_ID, &kept).is_some());

    // Leave the cluster as found: partners (the operator releases them), the release, the
    // namespaces. Helm keeps the CRDs.
    for reason in refusals.iter().map(|r| r.0).chain(["SecretNotFound"]) {
        let ns = format!("e2e-{}", reason.to_lowercase());
        let partners: Api<DefenderPartner> = Api::namespaced(e2e.admin.clone(), &ns);
        partners.delete("defender", &DeleteParams::default()).await.unwrap();
        e2e.gone(partners, "defender").await;
    }
    e2e.helm.uninstall(RELEASE, if e2e.is_sandbox() { 0 } else { 120 }).await.expect("helm uninstall");
    let namespaces: Api<Namespace> = Api::all(e2e.admin.clone());
    for reason in refusals.iter().map(|r| r.0.to_lowercase()).chain(["secretnotfound".into(), "retain".into()]) {
        let _ = namespaces.delete(&format!("e2e-{reason}"), &DeleteParams::default()).await;
    }
    let _ = namespaces.delete("e2e", &DeleteParams::default()).await;
    let _ = std::fs::remove_dir_all(Path::new(&e2e.dir));
}
