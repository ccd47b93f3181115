//! Discovery (`/api`, `/apis`, `/api/v1`, `/apis/<g>[/<v>]`, aggregated `apidiscovery.k8s.io/v2`),
//! `/version`, and minimal OpenAPI v2/v3 documents.

use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::Inner;
use super::registry::ResourceDef;
use super::store::Store;

fn groups(defs: &[ResourceDef]) -> BTreeMap<String, Vec<String>> {
    // group -> versions (preferred first), in first-seen order of versions
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in defs {
        let e = m.entry(d.group.clone()).or_default();
        for v in &d.versions {
            if !e.contains(v) {
                e.push(v.clone());
            }
        }
    }
    m
}

/// ServiceAccounts serve the TokenRequest subresource (see `tokens`).
fn has_token_subresource(d: &ResourceDef) -> bool {
    d.group.is_empty() && d.plural == "serviceaccounts"
}

fn verbs_for(d: &ResourceDef) -> Vec<&'static str> {
    d.verbs.clone()
}

fn resource_list(defs: &[ResourceDef], group: &str, version: &str) -> Option<Value> {
    let mut resources = vec![];
    for d in defs.iter().filter(|d| d.group == group && d.versions.iter().any(|v| v == version)) {
        let mut r = json!({
            "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced, "kind": d.kind,
            "verbs": verbs_for(d),
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        if !d.categories.is_empty() {
            r["categories"] = json!(d.categories);
        }
        resources.push(r);
        if d.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                "kind": d.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if d.scale.is_some() {
            resources.push(json!({
                "name": format!("{}/scale", d.plural), "singularName": "", "namespaced": d.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"],
            }));
        }
        if has_token_subresource(d) {
            resources.push(json!({
                "name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

fn api_group(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
}

fn aggregated(defs: &[ResourceDef], core: bool) -> Value {
    let items: Vec<Value> = groups(defs)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = defs
                        .iter()
                        .filter(|d| d.group == g && d.versions.contains(v))
                        .map(|d| {
                            let mut r = json!({
                                "resource": d.plural,
                                "responseKind": {"group": d.group, "version": v, "kind": d.kind},
                                "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": d.singular,
                                "verbs": verbs_for(d),
                            });
                            if !d.short_names.is_empty() {
                                r["shortNames"] = json!(d.short_names);
                            }
                            if !d.categories.is_empty() {
                                r["categories"] = json!(d.categories);
                            }
                            let mut subs = vec![];
                            if d.status_subresource {
                                subs.push(json!({
                                    "subresource": "status",
                                    "responseKind": {"group": d.group, "version": v, "kind": d.kind},
                                    "verbs": ["get", "patch", "update"],
                                }));
                            }
                            if d.scale.is_some() {
                                subs.push(json!({
                                    "subresource": "scale",
                                    "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                                    "verbs": ["get", "patch", "update"],
                                }));
                            }
                            if has_token_subresource(d) {
                                subs.push(json!({
                                    "subresource": "token",
                                    "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"},
                                    "verbs": ["create"],
                                }));
                            }
                            if !subs.is_empty() {
                                r["subresources"] = Value::Array(subs);
                            }
                            r
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": vs})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// Answer a discovery / version / OpenAPI path: (content type, body), or None for 404.
pub(crate) fn handle(inner: &Inner, st: &Store, path: &str, accept: &str) -> Option<(String, Value)> {
    let defs = inner.all_defs(st);
    let json_ct = "application/json".to_string();
    // the first aggregated format the client accepts (v2, or v2beta1 for older clients)
    let aggregated_version = accept.split(',').find_map(|a| {
        if !a.contains("as=APIGroupDiscoveryList") {
            None
        } else if a.contains("v=v2;") {
            Some("v2")
        } else if a.contains("v=v2beta1;") {
            Some("v2beta1")
        } else {
            None
        }
    });
    let wants_aggregated = aggregated_version.is_some();
    let agg_ct = format!(
        "application/json;g=apidiscovery.k8s.io;v={};as=APIGroupDiscoveryList",
        aggregated_version.unwrap_or("v2")
    );
    let with_version = |mut v: Value| {
        v["apiVersion"] = json!(format!("apidiscovery.k8s.io/{}", aggregated_version.unwrap_or("v2")));
        v
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Some((
            json_ct,
            json!({
                "major": "1", "minor": inner.config.minor_version.to_string(),
                "gitVersion": format!("v1.{}.0-sandbox", inner.config.minor_version),
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
            }),
        )),
        ["api"] if wants_aggregated => Some((agg_ct, with_version(aggregated(&defs, true)))),
        ["apis"] if wants_aggregated => Some((agg_ct, with_version(aggregated(&defs, false)))),
        ["api"] => Some((
            json_ct,
            json!({"kind": "APIVersions", "versions": ["v1"],
                   "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": inner.addr.to_string()}]}),
        )),
        ["apis"] => {
            let gs: Vec<Value> =
                groups(&defs).into_iter().filter(|(g, _)| !g.is_empty()).map(|(g, v)| api_group(&g, &v)).collect();
            Some((json_ct, json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs})))
        }
        ["api", v] => resource_list(&defs, "", v).map(|r| (json_ct, r)),
        ["apis", g] => groups(&defs).get(*g).map(|vs| {
            let mut grp = api_group(g, vs);
            grp["kind"] = json!("APIGroup");
            grp["apiVersion"] = json!("v1");
            (json_ct, grp)
        }),
        ["apis", g, v] => resource_list(&defs, g, v).map(|r| (json_ct, r)),
        ["openapi", "v3"] => {
            let mut paths = serde_json::Map::new();
            for (g, vs) in groups(&defs) {
                for v in vs {
                    let p = if g.is_empty() { format!("api/{v}") } else { format!("apis/{g}/{v}") };
                    paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=0")}));
                }
            }
            Some((json_ct, json!({"paths": paths})))
        }
        ["openapi", "v3", rest @ ..] => {
            let (g, v) = match rest {
                ["api", v] => (String::new(), v.to_string()),
                ["apis", g, v] => (g.to_string(), v.to_string()),
                _ => return None,
            };
            let d: Vec<&ResourceDef> = defs.iter().filter(|d| d.group == g && d.versions.contains(&v)).collect();
            if d.is_empty() {
                return None;
            }
            Some((json_ct, openapi_v3(&d, &v)))
        }
        _ => None,
    }
}

fn gvk_ext(d: &ResourceDef, v: &str) -> Value {
    json!([{"group": d.group, "version": v, "kind": d.kind}])
}

/// A minimal OpenAPI v3 document for one group/version: object schemas for each kind (the CRD's
/// schema for custom resources), each tagged with x-kubernetes-group-version-kind.
fn openapi_v3(defs: &[&ResourceDef], v: &str) -> Value {
    let mut schemas = serde_json::Map::new();
    let mut paths = serde_json::Map::new();
    for d in defs {
        let mut s = d
            .schema(v)
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
        s["x-kubernetes-group-version-kind"] = gvk_ext(d, v);
        let prefix = if d.group.is_empty() {
            format!("io.k8s.api.core.{v}")
        } else {
            format!("{}.{v}", d.group.split('.').rev().collect::<Vec<_>>().join("."))
        };
        let name = format!("{prefix}.{}", d.kind);
        schemas.insert(name.clone(), s);
        let base = if d.group.is_empty() { format!("/api/{v}") } else { format!("/apis/{}/{v}", d.group) };
        let p = if d.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", d.plural)
        } else {
            format!("{base}/{}/{{name}}", d.plural)
        };
        let op = json!({
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
            "responses": {"200": {"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}}},
            "x-kubernetes-group-version-kind": gvk_ext(d, v)[0].clone(),
        });
        paths.insert(p, json!({"get": op.clone(), "put": op.clone(), "patch": op}));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}
