//! `deploy/` as a platform team installs it: `kubectl kustomize` renders the default install and
//! the namespaced overlay without error, and the rendered manifests are hardened (least-privilege
//! RBAC, restricted pod, probes, two replicas with leader election, PDB, NetworkPolicy). The
//! namespaced overlay's RBAC is then applied to the sandbox and the operator works under it.
#![cfg(feature = "sandbox")] // the operator on the sandbox crate's API server and emulator

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const NAMESPACE: &str = "defender-operator";

/// `kubectl kustomize <dir>` parsed into objects.
fn render(dir: &str) -> Vec<Value> {
    let output =
        Command::new("kubectl").args(["kustomize", &format!("{ROOT}/{dir}")]).output().expect("kubectl is installed");
    assert!(output.status.success(), "kubectl kustomize {dir} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects.iter().map(|o| o["kind"].as_str().unwrap().to_string()).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind && o["metadata"]["name"] == name).collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name}");
    found[0]
}

fn strs(value: &Value) -> BTreeSet<String> {
    value.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// One rule: (role name, apiGroups, resources, verbs).
type Grant = (String, BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);

/// Every rule of the Roles or ClusterRoles of the render.
fn grants(objects: &[Value], kind: &str) -> Vec<Grant> {
    let mut out = Vec::new();
    for role in objects.iter().filter(|o| o["kind"] == kind) {
        let name = role["metadata"]["name"].as_str().unwrap().to_string();
        for rule in role["rules"].as_array().expect("rules") {
            out.push((name.clone(), strs(&rule["apiGroups"]), strs(&rule["resources"]), strs(&rule["verbs"])));
        }
    }
    out
}

/// Verbs a render grants on `resource` of `group`, over all roles of `kind`.
fn verbs_on(objects: &[Value], kind: &str, group: &str, resource: &str) -> BTreeSet<String> {
    grants(objects, kind)
        .into_iter()
        .filter(|(_, groups, resources, _)| groups.contains(group) && resources.contains(resource))
        .flat_map(|(_, _, _, verbs)| verbs)
        .collect()
}

/// No wildcard anywhere, and no verb beyond what the operator uses.
fn assert_least_privilege(objects: &[Value]) {
    for kind in ["Role", "ClusterRole"] {
        for (name, groups, resources, verbs) in grants(objects, kind) {
            for field in [&groups, &resources, &verbs] {
                assert!(!field.iter().any(|s| s.contains('*')), "{kind} {name} has a wildcard: {field:?}");
            }
            for verb in &verbs {
                assert!(
                    ["get", "list", "watch", "create", "patch"].contains(&verb.as_str()),
                    "{kind} {name} grants {verb} on {resources:?}"
                );
            }
            for forbidden in ["pods", "deployments", "configmaps", "serviceaccounts", "roles", "clusterroles"] {
                assert!(!resources.contains(forbidden), "{kind} {name} grants access to {forbidden}");
            }
        }
    }
}

/// The rules the operator needs, whichever kind holds them.
fn assert_operator_rules(objects: &[Value], kind: &str) {
    assert_eq!(verbs_on(objects, kind, "", "secrets"), set(&["get", "list", "watch"]), "Secrets are read-only");
    assert_eq!(verbs_on(objects, kind, "events.k8s.io", "events"), set(&["create", "patch"]), "events: create+patch");
    assert_eq!(verbs_on(objects, kind, "detect.dev", "defenderpartners"), set(&["get", "list", "watch", "patch"]));
    assert_eq!(verbs_on(objects, kind, "detect.dev", "probefindings"), set(&["get", "list", "watch", "patch"]));
    assert_eq!(verbs_on(objects, kind, "detect.dev", "defenderpartners/status"), set(&["patch"]));
    assert_eq!(verbs_on(objects, kind, "detect.dev", "probefindings/status"), set(&["patch"]));
    assert_eq!(verbs_on(objects, kind, "", "serviceaccounts/token"), set(&["create"]), "tokens for workload identity");
}

/// Leases only in a namespaced Role, in the operator's namespace, reading/renewing one Lease.
fn assert_lease_rules(objects: &[Value]) {
    assert!(
        verbs_on(objects, "ClusterRole", "coordination.k8s.io", "leases").is_empty(),
        "no cluster-wide lease rights"
    );
    let role = one(objects, "Role", "defender-operator-leader-election");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    let mut verbs = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(strs(&rule["resources"]), set(&["leases"]));
        let rule_verbs = strs(&rule["verbs"]);
        if rule_verbs.iter().any(|v| v != "create") {
            assert_eq!(strs(&rule["resourceNames"]), set(&["defender-operator"]), "get/patch name the Lease");
        }
        verbs.extend(rule_verbs);
    }
    assert_eq!(verbs, set(&["create", "get", "patch"]));
    let binding = one(objects, "RoleBinding", "defender-operator-leader-election");
    assert_eq!(binding["roleRef"]["name"], "defender-operator-leader-election");
    assert_bound_to_operator(binding);
}

fn assert_bound_to_operator(binding: &Value) {
    let subjects = binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], "defender-operator");
    assert_eq!(subjects[0]["namespace"], NAMESPACE);
}

fn pod_labels(deployment: &Value) -> &serde_json::Map<String, Value> {
    deployment["spec"]["template"]["metadata"]["labels"].as_object().unwrap()
}

fn selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    selector["matchLabels"].as_object().unwrap().iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn assert_hardened_deployment(objects: &[Value]) -> Vec<String> {
    let deployment = one(objects, "Deployment", "defender-operator");
    assert_eq!(deployment["metadata"]["namespace"], NAMESPACE);
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2, "two replicas");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "defender-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert!(pod["securityContext"]["runAsUser"].as_i64().unwrap() > 0);
    let grace = pod["terminationGracePeriodSeconds"].as_i64().expect("terminationGracePeriodSeconds");
    assert!(grace >= 20, "room to drain and release the lease: {grace}");

    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null(), "no capability added");
    assert_ne!(sc["privileged"], true);
    for (kind, resource) in [("requests", "cpu"), ("requests", "memory"), ("limits", "cpu"), ("limits", "memory")] {
        assert!(c["resources"][kind][resource].is_string(), "resources.{kind}.{resource} set");
    }
    let port = c["ports"].as_array().unwrap().iter().find(|p| p["name"] == "metrics").expect("a metrics port");
    assert_eq!(port["containerPort"], 8080);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");

    let args: Vec<String> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--leader-elect=true".to_string()), "leader election on: {args:?}");
    // The flags parse as the binary's own command line (env vars resolved as the kubelet would).
    let resolved: Vec<String> = args.iter().map(|a| a.replace("$(POD_NAMESPACE)", NAMESPACE)).collect::<Vec<_>>();
    let parsed = <defender_operator::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("defender-operator".to_string()).chain(resolved),
    )
    .unwrap_or_else(|e| panic!("the Deployment's args parse: {e}"));
    match parsed.command {
        defender_operator::cli::Command::Run(run) => {
            assert!(run.leader_elect);
            assert_eq!(run.metrics_addr.port(), 8080);
        }
        other => panic!("not run: {other:?}"),
    }

    let env = c["env"].as_array().unwrap();
    let pod_namespace = env.iter().find(|e| e["name"] == "POD_NAMESPACE").expect("POD_NAMESPACE");
    assert_eq!(pod_namespace["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");

    // The API token: not automounted; a projected, expiring token mounted read-only.
    assert_eq!(pod["automountServiceAccountToken"], false);
    let sa = one(objects, "ServiceAccount", "defender-operator");
    assert_eq!(sa["automountServiceAccountToken"], false);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| {
            v["projected"]["sources"].as_array().is_some_and(|s| s.iter().any(|s| s["serviceAccountToken"].is_object()))
        })
        .expect("a projected token volume");
    let token = volume["projected"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["serviceAccountToken"].is_object())
        .unwrap();
    assert!(token["serviceAccountToken"]["expirationSeconds"].as_i64().unwrap() <= 3600);
    let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == volume["name"]).expect("mounted");
    assert_eq!(mount["mountPath"], "/var/run/secrets/kubernetes.io/serviceaccount");
    assert_eq!(mount["readOnly"], true);

    // Namespace enforces the restricted Pod Security Standard.
    let namespace = one(objects, "Namespace", NAMESPACE);
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");

    // Metrics Service, PDB and NetworkPolicy select the operator's pods.
    let labels = pod_labels(deployment);
    let service = one(objects, "Service", "defender-operator-metrics");
    assert!(service["spec"]["selector"].as_object().unwrap().iter().all(|(k, v)| labels.get(k) == Some(v)));
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    let pdb = one(objects, "PodDisruptionBudget", "defender-operator");
    assert!(selects(&pdb["spec"]["selector"], labels));
    assert_eq!(pdb["spec"]["minAvailable"], 1, "one replica may go at a time, one stays");
    let policy = one(objects, "NetworkPolicy", "defender-operator");
    assert!(selects(&policy["spec"]["podSelector"], labels));
    assert_eq!(strs(&policy["spec"]["policyTypes"]), set(&["Ingress", "Egress"]));
    let mut egress = BTreeSet::new();
    for rule in policy["spec"]["egress"].as_array().unwrap() {
        for port in rule["ports"].as_array().expect("every egress rule names its ports") {
            egress.insert(format!("{}/{}", port["protocol"].as_str().unwrap(), port["port"]));
        }
    }
    assert_eq!(egress, set(&["UDP/53", "TCP/53", "TCP/443", "TCP/6443"]), "egress: DNS, API server, HTTPS only");
    let ingress: BTreeSet<String> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["ports"].as_array().unwrap().iter().map(|p| p["port"].to_string()))
        .collect();
    assert_eq!(ingress, set(&["8080"]), "ingress: metrics only");
    args
}

/// Namespaced objects of the render all live in the operator's namespace.
fn assert_namespaced(objects: &[Value]) {
    for object in objects {
        let kind = object["kind"].as_str().unwrap();
        if ["Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"].contains(&kind) {
            assert!(object["metadata"]["namespace"].is_null(), "{kind} is cluster-scoped");
        } else {
            assert_eq!(object["metadata"]["namespace"], NAMESPACE, "{kind} {}", object["metadata"]["name"]);
        }
    }
}

#[test]
fn the_default_install_renders_hardened() {
    let objects = render("deploy");
    assert_eq!(
        kinds(&objects),
        set(&[
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Namespace",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ])
    );
    let crds: BTreeSet<_> = objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        crds,
        set(&["defenderpartners.detect.dev", "probefindings.detect.dev", "clusterdefenderpartners.detect.dev"])
    );
    assert_namespaced(&objects);
    assert_least_privilege(&objects);
    assert_operator_rules(&objects, "ClusterRole");
    assert_lease_rules(&objects);
    assert_bound_to_operator(one(&objects, "ClusterRoleBinding", "defender-operator"));
    assert_eq!(one(&objects, "ClusterRoleBinding", "defender-operator")["roleRef"]["kind"], "ClusterRole");
    let args = assert_hardened_deployment(&objects);
    assert!(!args.iter().any(|a| a.starts_with("--namespace")), "the default install watches all namespaces");

    // The sandbox runs the operator under deploy/base/rbac.yaml: the render holds the same rules.
    let base: Vec<Value> = serde_yaml_ng::Deserializer::from_str(include_str!("../deploy/base/rbac.yaml"))
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).unwrap())
        .collect();
    let rendered_rules = &one(&objects, "ClusterRole", "defender-operator")["rules"];
    assert_eq!(&one(&base, "ClusterRole", "defender-operator")["rules"], rendered_rules);
}

#[test]
fn the_namespaced_overlay_renders_with_a_role_only() {
    let objects = render("deploy/overlays/namespaced");
    let kinds = kinds(&objects);
    assert!(!kinds.contains("ClusterRole") && !kinds.contains("ClusterRoleBinding"), "no cluster-wide RBAC: {kinds:?}");
    assert_namespaced(&objects);
    assert_least_privilege(&objects);
    assert_operator_rules(&objects, "Role");
    assert_lease_rules(&objects);
    let binding = one(&objects, "RoleBinding", "defender-operator");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], "defender-operator");
    assert_bound_to_operator(binding);
    let args = assert_hardened_deployment(&objects);
    assert!(args.contains(&"--namespace=$(POD_NAMESPACE)".to_string()), "watches its own namespace: {args:?}");

    // The Role holds exactly the ClusterRole's rules of the default install but the cluster-wide
    // ones (ClusterDefenderPartners, namespaces), which a Role cannot grant.
    let cluster = render("deploy");
    let cluster_wide = |rule: &&Value| {
        strs(&rule["resources"]).iter().any(|r| r.starts_with("clusterdefenderpartners") || r == "namespaces")
    };
    let namespaced: Vec<&Value> = one(&cluster, "ClusterRole", "defender-operator")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| !cluster_wide(rule))
        .collect();
    assert_eq!(
        one(&objects, "Role", "defender-operator")["rules"].as_array().unwrap().iter().collect::<Vec<_>>(),
        namespaced
    );
}

/// The namespaced overlay's RBAC, as rendered, applied to the sandbox in place of the
/// ClusterRoleBinding: the operator (`--namespace defender-operator`) attaches a partner and
/// delivers a finding with those rights only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_works_under_the_namespaced_overlays_rbac() {
    use defender_operator::sandbox::{Sandbox, SandboxOptions};
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    use kube::Api;

    let options = SandboxOptions { watch_namespace: Some(NAMESPACE.into()), ..SandboxOptions::default() };
    let sandbox = Sandbox::start(options).await.expect("sandbox starts");
    let bindings: Api<ClusterRoleBinding> = Api::all(sandbox.admin.clone());
    bindings.delete("defender-operator", &Default::default()).await.expect("the cluster-wide binding is removed");

    let objects = render("deploy/overlays/namespaced");
    let rbac: Vec<&Value> =
        objects.iter().filter(|o| ["Role", "RoleBinding"].contains(&o["kind"].as_str().unwrap())).collect();
    let yaml = rbac.iter().map(|o| serde_yaml_ng::to_string(o).unwrap()).collect::<Vec<_>>().join("---\n");
    sandbox.apply_yaml(&yaml).await.expect("the overlay's Roles and RoleBindings apply");

    let world = common::World { operator: Some(sandbox.start_operator()), sandbox };
    world.good_secret(NAMESPACE, "defender-credentials").await;
    world.partner(NAMESPACE, "defender", "defender-credentials", serde_json::json!({})).await;
    world.attached(NAMESPACE, "defender").await;
    let hash = common::sha256(4242);
    world
        .finding(NAMESPACE, "office-macro", std::slice::from_ref(&hash), serde_json::json!({"state": "UNPROTECTED"}))
        .await;
    world.ready_finding(NAMESPACE, "office-macro").await;
    assert!(world.indicator_values(defender_sandbox::emulator::sandbox_values::TENANT_ID).contains(&hash));
}

/// The per-cloud examples are valid objects: the sandbox's API server (the CRD schema and its
/// CEL rules) accepts each Secret and DefenderPartner, and each names its cloud's API host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_examples_are_accepted_by_the_crd_schema() {
    use defender_operator::api::DefenderPartner;
    use defender_operator::sandbox::{Sandbox, SandboxOptions};

    let sandbox = Sandbox::start(SandboxOptions::default()).await.expect("sandbox starts");
    let expected = [
        ("commercial.yaml", "Commercial", "https://api.securitycenter.microsoft.com"),
        ("commercial-eu.yaml", "Commercial", "https://eu.api.security.microsoft.com"),
        ("gcc.yaml", "GCC", "https://api-gcc.securitycenter.microsoft.us"),
        ("gcc-high.yaml", "GCCHigh", "https://api-gov.securitycenter.microsoft.us"),
        ("dod.yaml", "DoD", "https://api-gov.securitycenter.microsoft.us"),
    ];
    for (file, cloud, api) in expected {
        let yaml = std::fs::read_to_string(format!("{ROOT}/deploy/cloud-examples/{file}")).unwrap();
        let applied = sandbox.apply_yaml(&yaml).await.unwrap_or_else(|e| panic!("{file} applies: {e:#}"));
        let partner = applied.iter().find(|o| o.types.as_ref().unwrap().kind == "DefenderPartner").expect("a partner");
        let partner: DefenderPartner = serde_json::from_value(serde_json::to_value(partner).unwrap()).unwrap();
        assert_eq!(serde_json::to_value(partner.spec.cloud).unwrap(), cloud, "{file}");
        assert_eq!(partner.spec.api.as_deref(), Some(api), "{file}");
    }
}

/// The whole rendered default install, applied with `kubectl apply --server-side` to the sandbox's
/// API server (every kind, including the NetworkPolicy and the PDB, is accepted), and the operator
/// attaching a partner under the RBAC it installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_install_applies_and_the_operator_works_under_it() {
    let world = common::world().await;
    let dir = std::env::temp_dir().join(format!("defender-operator-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, world.kubeconfig()).unwrap();
    let rendered = dir.join("install.yaml");
    let output = Command::new("kubectl").args(["kustomize", &format!("{ROOT}/deploy")]).output().unwrap();
    assert!(output.status.success());
    std::fs::write(&rendered, &output.stdout).unwrap();

    let (kc, file) = (kubeconfig.clone(), rendered.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(&file)
            .output()
            .expect("kubectl runs")
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "kubectl apply of the rendered install failed:\n{text}");
    for applied in [
        "deployment.apps/defender-operator",
        "networkpolicy.networking.k8s.io/defender-operator",
        "poddisruptionbudget.policy/defender-operator",
        "role.rbac.authorization.k8s.io/defender-operator-leader-election",
        "service/defender-operator-metrics",
    ] {
        assert!(text.contains(applied), "{applied} applied:\n{text}");
    }

    world.namespace("team").await;
    world.good_secret("team", "defender-credentials").await;
    world.partner("team", "defender", "defender-credentials", serde_json::json!({})).await;
    world.attached("team", "defender").await;
    let _ = std::fs::remove_dir_all(&dir);
}
