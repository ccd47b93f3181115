//! The resource types served: the built-in ones and those defined by CustomResourceDefinitions.

use serde_json::{Value, json};
use std::sync::Arc;

/// One served resource (group + plural), with the facts discovery, routing and storage need.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    pub group: String,
    /// Served versions, the preferred (storage) one first.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub verbs: Vec<&'static str>,
    pub status_subresource: bool,
    /// Whether `metadata.generation` is maintained.
    pub generation: bool,
    /// Built-in kinds accept strategic merge patches; custom resources do not.
    pub builtin: bool,
    pub crd: Option<Arc<CrdInfo>>,
    /// The scale subresource (autoscaling/v1 Scale), if served.
    pub scale: Option<ScalePaths>,
}

/// Where a scale subresource reads and writes (`.spec.replicas`-style paths).
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// What a CRD says about its resource beyond names.
#[derive(Debug, Clone, Default)]
pub struct CrdInfo {
    pub versions: Vec<CrdVersion>,
}

#[derive(Debug, Clone, Default)]
pub struct CrdVersion {
    pub name: String,
    pub schema: Option<Value>,
    pub status: bool,
    pub columns: Vec<Value>,
    pub selectable_fields: Vec<String>,
}

pub const ALL_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

impl ResourceDef {
    /// `plural` for the core group, `plural.group` otherwise (as in error messages).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_string() } else { format!("{}/{}", self.group, version) }
    }

    /// Where the objects are stored: events.k8s.io/v1 Events are the core/v1 Events, as in the
    /// real server (one resource, two representations).
    pub fn key(&self) -> (String, String) {
        if self.group == "events.k8s.io" && self.plural == "events" {
            return (String::new(), "events".into());
        }
        (self.group.clone(), self.plural.clone())
    }

    /// Whether this is the events.k8s.io representation of core Events.
    pub fn is_events_v1(&self) -> bool {
        self.group == "events.k8s.io" && self.plural == "events"
    }

    pub fn crd_version(&self, version: &str) -> Option<&CrdVersion> {
        self.crd.as_ref().and_then(|c| c.versions.iter().find(|v| v.name == version))
    }

    pub fn schema(&self, version: &str) -> Option<&Value> {
        self.crd_version(version).and_then(|v| v.schema.as_ref())
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
    generation: bool,
) -> ResourceDef {
    ResourceDef {
        group: group.into(),
        versions: vec![version.into()],
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: vec![],
        verbs: ALL_VERBS.to_vec(),
        status_subresource: status,
        generation,
        builtin: true,
        crd: None,
        scale: None,
    }
}

/// The built-in resources this server stores.
pub fn builtins() -> Vec<ResourceDef> {
    let mut v = vec![
        builtin("", "v1", "namespaces", "Namespace", false, &["ns"], true, false),
        builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"], false, false),
        builtin("", "v1", "secrets", "Secret", true, &[], false, false),
        builtin("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], false, false),
        builtin("", "v1", "events", "Event", true, &["ev"], false, false),
        builtin("", "v1", "services", "Service", true, &["svc"], true, false),
        builtin("", "v1", "pods", "Pod", true, &["po"], true, false),
        builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"], false, false),
        builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[], false, false),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
            true,
        ),
        builtin("apps", "v1", "deployments", "Deployment", true, &["deploy"], true, true),
        builtin("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", true, &["netpol"], false, true),
        builtin("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, &["pdb"], true, true),
        builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", true, &[], false, false),
        builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false, &[], false, false),
        builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true, &[], false, false),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
            false,
            false,
        ),
    ];
    for d in v.iter_mut() {
        if d.plural == "pods" || d.plural == "deployments" || d.plural == "services" {
            d.categories = vec!["all".into()];
        }
        if d.plural == "deployments" {
            d.scale = Some(ScalePaths {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: None,
            });
        }
    }
    let mut ssar = builtin(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
        &[],
        false,
        false,
    );
    ssar.verbs = vec!["create"];
    v.push(ssar);
    v
}

/// The resource a CRD object defines, or a list of problems with it.
pub fn from_crd(crd: &Value) -> Result<ResourceDef, Vec<(String, String)>> {
    let spec = &crd["spec"];
    let mut errs = vec![];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    if group.is_empty() {
        errs.push(("spec.group".into(), "Required value".into()));
    }
    if plural.is_empty() {
        errs.push(("spec.names.plural".into(), "Required value".into()));
    }
    if kind.is_empty() {
        errs.push(("spec.names.kind".into(), "Required value".into()));
    }
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        errs.push((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let scope = spec["scope"].as_str().unwrap_or("");
    if scope != "Namespaced" && scope != "Cluster" {
        errs.push((
            "spec.scope".into(),
            format!("Unsupported value: \"{scope}\": supported values: \"Cluster\", \"Namespaced\""),
        ));
    }
    let mut versions = vec![];
    let mut served = vec![];
    let mut storage: Option<String> = None;
    for (i, v) in spec["versions"].as_array().cloned().unwrap_or_default().iter().enumerate() {
        let vname = v["name"].as_str().unwrap_or_default().to_string();
        if vname.is_empty() {
            errs.push((format!("spec.versions[{i}].name"), "Required value".into()));
            continue;
        }
        if v["storage"].as_bool() == Some(true) {
            storage = Some(vname.clone());
        }
        if v["served"].as_bool() != Some(false) {
            served.push(vname.clone());
        }
        let schema = v["schema"]["openAPIV3Schema"].clone();
        super::schema::check_rules(&schema, &format!("spec.versions[{i}].schema.openAPIV3Schema"), &mut errs);
        versions.push(CrdVersion {
            name: vname,
            schema: if schema.is_null() { None } else { Some(schema) },
            status: v["subresources"]["status"].is_object(),
            columns: v["additionalPrinterColumns"].as_array().cloned().unwrap_or_default(),
            selectable_fields: v["selectableFields"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|f| f["jsonPath"].as_str().map(|p| p.trim_start_matches('.').to_string()))
                .collect(),
        });
    }
    if versions.is_empty() {
        errs.push((
            "spec.versions".into(),
            "Invalid value: []: must have exactly one version marked as storage version".into(),
        ));
    } else if storage.is_none() {
        errs.push((
            "spec.versions".into(),
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let storage = storage.unwrap_or_default();
    let scale = spec["versions"].as_array().and_then(|vs| {
        let v = vs.iter().find(|v| v["name"].as_str() == Some(storage.as_str()))?;
        let sc = v["subresources"]["scale"].as_object()?;
        Some(ScalePaths {
            spec_replicas: sc.get("specReplicasPath")?.as_str()?.to_string(),
            status_replicas: sc.get("statusReplicasPath")?.as_str()?.to_string(),
            label_selector: sc.get("labelSelectorPath").and_then(|p| p.as_str()).map(String::from),
        })
    });
    served.sort_by_key(|v| if *v == storage { 0 } else { 1 });
    let status = versions.iter().any(|v| v.status);
    let strs = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    Ok(ResourceDef {
        group,
        versions: served,
        singular: names["singular"].as_str().map(String::from).unwrap_or_else(|| kind.to_lowercase()),
        list_kind: names["listKind"].as_str().map(String::from).unwrap_or_else(|| format!("{kind}List")),
        plural,
        kind,
        namespaced: scope == "Namespaced",
        short_names: strs(&names["shortNames"]),
        categories: strs(&names["categories"]),
        verbs: ALL_VERBS.to_vec(),
        status_subresource: status,
        generation: true,
        builtin: false,
        crd: Some(Arc::new(CrdInfo { versions })),
        scale,
    })
}

/// The status the apiextensions controllers would set on an accepted CRD.
pub fn crd_status(crd: &Value, now: &str) -> Value {
    let spec = &crd["spec"];
    let storage: Vec<Value> = spec["versions"]
        .as_array()
        .map(|a| a.iter().filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect())
        .unwrap_or_default();
    let mut accepted = spec["names"].clone();
    if accepted["singular"].is_null() {
        accepted["singular"] = json!(spec["names"]["kind"].as_str().unwrap_or_default().to_lowercase());
    }
    if accepted["listKind"].is_null() {
        accepted["listKind"] = json!(format!("{}List", spec["names"]["kind"].as_str().unwrap_or_default()));
    }
    let mut stored = crd["status"]["storedVersions"].as_array().cloned().unwrap_or_default();
    for s in storage {
        if !stored.contains(&s) {
            stored.push(s);
        }
    }
    json!({
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
        ],
        "acceptedNames": accepted,
        "storedVersions": stored,
    })
}
