//! Authentication (bearer tokens) and RBAC authorisation from the stored
//! rbac.authorization.k8s.io/v1 objects.

use serde_json::Value;

use super::store::Store;

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub admin: bool,
}

impl User {
    pub fn admin() -> Self {
        User { name: "admin".into(), groups: vec!["system:masters".into(), "system:authenticated".into()], admin: true }
    }

    pub fn anonymous() -> Self {
        User { name: "system:anonymous".into(), groups: vec!["system:unauthenticated".into()], admin: false }
    }

    pub fn service_account(ns: &str, name: &str) -> Self {
        User {
            name: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
            admin: false,
        }
    }
}

/// A resource request, as RBAC sees it.
#[derive(Debug, Clone)]
pub struct Attrs {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl Attrs {
    /// The real server's Forbidden message.
    pub fn forbidden_message(&self, user: &User) -> String {
        let res = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let qualified =
            if self.group.is_empty() { self.resource.clone() } else { format!("{}.{}", self.resource, self.group) };
        let subject = if self.name.is_empty() { qualified } else { format!("{qualified} \"{}\"", self.name) };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        format!(
            "{subject} is forbidden: User \"{}\" cannot {} resource \"{res}\" in API group \"{}\" {scope}",
            user.name, self.verb, self.group
        )
    }
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str()).collect()).unwrap_or_default()
}

fn rule_allows(rule: &Value, a: &Attrs) -> bool {
    let verbs = strs(&rule["verbs"]);
    if !verbs.iter().any(|v| *v == "*" || *v == a.verb) {
        return false;
    }
    let groups = strs(&rule["apiGroups"]);
    if !groups.iter().any(|g| *g == "*" || *g == a.group) {
        return false;
    }
    let full = if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let resources = strs(&rule["resources"]);
    let res_ok = resources
        .iter()
        .any(|r| *r == "*" || *r == full || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource)));
    if !res_ok {
        return false;
    }
    let names = strs(&rule["resourceNames"]);
    names.is_empty() || (!a.name.is_empty() && names.contains(&a.name.as_str()))
}

fn subject_matches(subjects: &Value, user: &User, binding_ns: &str) -> bool {
    subjects.as_array().is_some_and(|subs| {
        subs.iter().any(|s| match s["kind"].as_str() {
            Some("ServiceAccount") => {
                let ns = s["namespace"].as_str().unwrap_or(binding_ns);
                let name = s["name"].as_str().unwrap_or_default();
                user.name == format!("system:serviceaccount:{ns}:{name}")
            }
            Some("User") => s["name"].as_str() == Some(user.name.as_str()),
            Some("Group") => s["name"].as_str().is_some_and(|g| user.groups.iter().any(|ug| ug == g)),
            _ => false,
        })
    })
}

fn role_rules<'a>(store: &'a Store, role_ref: &Value, binding_ns: &str) -> Vec<&'a Value> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let role = match role_ref["kind"].as_str() {
        Some("ClusterRole") => store.get(&("rbac.authorization.k8s.io".into(), "clusterroles".into()), "", name),
        Some("Role") => store.get(&("rbac.authorization.k8s.io".into(), "roles".into()), binding_ns, name),
        _ => None,
    };
    role.and_then(|r| r["rules"].as_array()).map(|a| a.iter().collect()).unwrap_or_default()
}

/// Whether RBAC allows the request.
pub fn authorize(store: &Store, user: &User, a: &Attrs) -> bool {
    if user.admin || user.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    // the bootstrap system:basic-user role: everyone authenticated may ask what they may do
    if a.group == "authorization.k8s.io"
        && a.verb == "create"
        && (a.resource == "selfsubjectaccessreviews" || a.resource == "selfsubjectrulesreviews")
        && user.groups.iter().any(|g| g == "system:authenticated")
    {
        return true;
    }
    let rbac = "rbac.authorization.k8s.io".to_string();
    for crb in store.list(&(rbac.clone(), "clusterrolebindings".into()), None) {
        if subject_matches(&crb["subjects"], user, "")
            && role_rules(store, &crb["roleRef"], "").iter().any(|r| rule_allows(r, a))
        {
            return true;
        }
    }
    if !a.namespace.is_empty() {
        for rb in store.list(&(rbac, "rolebindings".into()), Some(&a.namespace)) {
            if subject_matches(&rb["subjects"], user, &a.namespace)
                && role_rules(store, &rb["roleRef"], &a.namespace).iter().any(|r| rule_allows(r, a))
            {
                return true;
            }
        }
    }
    false
}

/// Whether a non-resource URL is readable (the default `system:discovery` / `system:public-info-viewer`).
pub fn non_resource_allowed(user: &User, path: &str, method: &http::Method) -> bool {
    if user.admin {
        return true;
    }
    method == http::Method::GET
        && ["/api", "/apis", "/version", "/openapi", "/healthz", "/livez", "/readyz"]
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}
