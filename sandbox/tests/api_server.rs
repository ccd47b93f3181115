//! The embedded Kubernetes API server, checked against what the Kubernetes API documentation says
//! the real kube-apiserver does, through kube-rs and raw HTTP.
#![recursion_limit = "256"]

use defender_sandbox::apiserver::{ApiServerConfig, KubeApiServer};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::time::Duration;

async fn server() -> KubeApiServer {
    KubeApiServer::start(ApiServerConfig::default()).await.expect("start server")
}

/// Raw HTTP against the server, answering (status, JSON body).
async fn raw(s: &KubeApiServer, token: &str, method: &str, path: &str, ct: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(m, format!("{}{}", s.url(), path));
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    if let Some(b) = body {
        req = req.header("content-type", ct).body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.dev"},
        "spec": {
            "group": "test.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "selectableFields": [{"jsonPath": ".spec.color"}],
                "additionalPrinterColumns": [
                    {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["color"],
                            "x-kubernetes-validations": [{"rule": "has(self.size) || has(self.label)", "message": "set spec.size or spec.label"}],
                            "properties": {
                                "color": {"type": "string", "enum": ["red", "green", "blue"]},
                                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                                "label": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
                                "mode": {"type": "string", "default": "auto"},
                                "when": {"type": "string", "format": "date-time"},
                                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                                "tags": {"type": "array", "maxItems": 3, "items": {"type": "string"}},
                                "indicators": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["type", "value"],
                                        "x-kubernetes-validations": [{
                                            "rule": "self.type != 'FileSha256' || self.value.matches('^[0-9a-fA-F]{64}$')",
                                            "message": "a FileSha256 value is 64 hex characters"
                                        }],
                                        "properties": {"type": {"type": "string"}, "value": {"type": "string"}}
                                    }
                                }
                            }
                        },
                        "status": {
                            "type": "object",
                            "properties": {
                                "phase": {"type": "string"},
                                "observedGeneration": {"type": "integer"},
                                "conditions": {
                                    "type": "array",
                                    "x-kubernetes-list-type": "map",
                                    "x-kubernetes-list-map-keys": ["type"],
                                    "items": {"type": "object", "properties": {
                                        "type": {"type": "string"}, "status": {"type": "string"}, "reason": {"type": "string"}
                                    }}
                                }
                            }
                        }
                    }
                }}
            }]
        }
    })
}

fn widget_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("test.dev", "v1", "Widget"), "widgets")
}

async fn with_crd(s: &KubeApiServer) -> Api<DynamicObject> {
    let (code, body) = raw(
        s,
        &s.admin_token(),
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "application/json",
        Some(widget_crd()),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let established = body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established, "{body}");
    Api::namespaced_with(s.admin_client(), "default", &widget_ar())
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": "test.dev/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

#[tokio::test]
async fn unauthenticated_requests_get_401() {
    let s = server().await;
    let (code, body) = raw(&s, "", "GET", "/api/v1/namespaces", "", None).await;
    assert_eq!(code, 401);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Unauthorized");
    let (code, _) = raw(&s, "not-a-token", "GET", "/api/v1/namespaces", "", None).await;
    assert_eq!(code, 401);
    let (code, body) = raw(&s, &s.admin_token(), "GET", "/api/v1/namespaces/default", "", None).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"]["phase"], "Active");
    // /version is public, like the real server's system:public-info-viewer
    let (code, body) = raw(&s, "", "GET", "/version", "", None).await;
    assert_eq!((code, body["major"].as_str()), (200, Some("1")));
    // unknown resources and wrong methods
    let (code, body) = raw(&s, &s.admin_token(), "GET", "/apis/nope.dev/v1/things", "", None).await;
    assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")));
    let (code, body) = raw(
        &s,
        &s.admin_token(),
        "POST",
        "/api/v1/namespaces/default/configmaps/x",
        "application/json",
        Some(json!({})),
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (405, Some("MethodNotAllowed")));
    let (code, body) = raw(
        &s,
        &s.admin_token(),
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        Some(json!([1])),
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")), "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn configmap_round_trip_conflicts_and_namespace_must_exist() {
    let s = server().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}})).unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some());
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    // AlreadyExists
    let e = api_err(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(e.message, "configmaps \"a\" already exists");
    // update with the current resourceVersion works, with a stale one is a Conflict
    let mut c2 = created.clone();
    c2.data.as_mut().unwrap().insert("k".into(), "w".into());
    let updated = cms.replace("a", &PostParams::default(), &c2).await.unwrap();
    assert_ne!(updated.metadata.resource_version, created.metadata.resource_version);
    let e = api_err(cms.replace("a", &PostParams::default(), &c2).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(e.message.contains("the object has been modified"), "{}", e.message);
    // generateName
    let g: ConfigMap = serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).unwrap();
    let g = cms.create(&PostParams::default(), &g).await.unwrap();
    assert!(g.metadata.name.unwrap().starts_with("gen-"));
    // namespace must exist
    let other: Api<ConfigMap> = Api::namespaced(s.admin_client(), "nope");
    let e = api_err(other.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert_eq!(e.message, "namespaces \"nope\" not found");
    // get of a missing object
    let e = api_err(cms.get("missing").await.unwrap_err());
    assert_eq!(e.message, "configmaps \"missing\" not found");
    // invalid name
    let bad: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "Bad_Name"}})).unwrap();
    let e = api_err(cms.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    // delete a built-in: Status Success, then 404
    let r = cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(r.is_right());
    assert_eq!(api_err(cms.get("a").await.unwrap_err()).code, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn label_and_field_selectors_limit_and_continue() {
    let s = server().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    for (i, tier) in ["web", "web", "db", "cache", "web"].iter().enumerate() {
        let mut labels = json!({"tier": tier});
        if i % 2 == 0 {
            labels["even"] = json!("yes");
        }
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("cm-{i}"), "labels": labels}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items.into_iter().map(|c| c.metadata.name.unwrap()).collect()
    };
    assert_eq!(names(cms.list(&ListParams::default().labels("tier=web")).await.unwrap()), ["cm-0", "cm-1", "cm-4"]);
    assert_eq!(names(cms.list(&ListParams::default().labels("tier!=web")).await.unwrap()), ["cm-2", "cm-3"]);
    assert_eq!(names(cms.list(&ListParams::default().labels("tier in (db,cache)")).await.unwrap()), ["cm-2", "cm-3"]);
    assert_eq!(names(cms.list(&ListParams::default().labels("tier notin (web),even")).await.unwrap()), ["cm-2"]);
    assert_eq!(names(cms.list(&ListParams::default().labels("!even")).await.unwrap()), ["cm-1", "cm-3"]);
    assert_eq!(names(cms.list(&ListParams::default().fields("metadata.name=cm-3")).await.unwrap()), ["cm-3"]);
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name!=cm-3,metadata.namespace=default").labels("even"))
                .await
                .unwrap()
        ),
        ["cm-0", "cm-2", "cm-4"]
    );
    // pagination
    let page1 = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let rv = page1.metadata.resource_version.clone().unwrap();
    assert!(!rv.is_empty());
    let token = page1.metadata.continue_.clone().unwrap();
    assert_eq!(page1.metadata.remaining_item_count, Some(3));
    assert_eq!(names(page1), ["cm-0", "cm-1"]);
    let page2 = cms.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    let token = page2.metadata.continue_.clone().unwrap();
    assert_eq!(names(page2), ["cm-2", "cm-3"]);
    let page3 = cms.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert!(page3.metadata.continue_.as_deref().unwrap_or("").is_empty());
    assert_eq!(names(page3), ["cm-4"]);
    // With a selector the remaining count is unknown, as a real API server says (it omits it);
    // the pages still go on.
    let selected = cms.list(&ListParams::default().labels("tier=web").limit(1)).await.unwrap();
    assert_eq!(selected.metadata.remaining_item_count, None);
    let token = selected.metadata.continue_.clone().unwrap();
    assert_eq!(names(selected), ["cm-0"]);
    let rest = cms.list(&ListParams::default().labels("tier=web").limit(5).continue_token(&token)).await.unwrap();
    assert_eq!(names(rest), ["cm-1", "cm-4"]);
    // unsupported field selector on a CR
    let w = with_crd(&s).await;
    let e = api_err(w.list(&ListParams::default().fields("spec.size=3")).await.unwrap_err());
    assert_eq!(e.code, 400);
    w.list(&ListParams::default().fields("spec.color=red")).await.unwrap();
    s.shutdown().await;
}

async fn read_events(mut resp: reqwest::Response, n: usize, within: Duration) -> Vec<Value> {
    let mut out = vec![];
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < n {
        let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            _ => break,
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                out.push(v);
            }
        }
    }
    out
}

async fn watch_req(s: &KubeApiServer, path: &str) -> reqwest::Response {
    reqwest::Client::new().get(format!("{}{}", s.url(), path)).bearer_auth(s.admin_token()).send().await.unwrap()
}

#[tokio::test]
async fn watch_resumes_from_resource_version_and_expires_old_ones() {
    let config = ApiServerConfig { watch_history: 5, watch_history_fresh: Duration::ZERO, ..Default::default() };
    let s = KubeApiServer::start(config).await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    let first = cms
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "w0"}})).unwrap())
        .await
        .unwrap();
    let rv0 = first.metadata.resource_version.unwrap();
    cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "w1"}})).unwrap())
        .await
        .unwrap();
    cms.patch("w0", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": "b"}}))).await.unwrap();
    // resume after rv0: ADDED w1, MODIFIED w0
    let resp = watch_req(&s, &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv0}")).await;
    assert_eq!(resp.status(), 200);
    let evs = read_events(resp, 2, Duration::from_secs(3)).await;
    let got: Vec<(String, String)> = evs
        .iter()
        .map(|e| {
            (e["type"].as_str().unwrap().to_string(), e["object"]["metadata"]["name"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(got, [("ADDED".into(), "w1".into()), ("MODIFIED".into(), "w0".into())]);
    // a live event arrives on an open watch; the /watch/ path form works too
    let resp = watch_req(
        &s,
        &format!(
            "/api/v1/watch/namespaces/default/configmaps?resourceVersion={}",
            cms.get("w0").await.unwrap().metadata.resource_version.unwrap()
        ),
    )
    .await;
    let s2 = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cms: Api<ConfigMap> = Api::default_namespaced(s2.admin_client());
        cms.delete("w1", &DeleteParams::default()).await.unwrap();
    });
    let evs = read_events(resp, 1, Duration::from_secs(3)).await;
    assert_eq!(evs[0]["type"], "DELETED");
    assert_eq!(evs[0]["object"]["metadata"]["name"], "w1");
    // push rv0 out of the 5-event window: a 410 Expired ERROR event
    for i in 0..6 {
        cms.patch("w0", &PatchParams::default(), &Patch::Merge(json!({"data": {"i": i.to_string()}}))).await.unwrap();
    }
    let resp = watch_req(&s, &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv0}")).await;
    let evs = read_events(resp, 1, Duration::from_secs(3)).await;
    assert_eq!(evs[0]["type"], "ERROR");
    assert_eq!(evs[0]["object"]["code"], 410);
    assert_eq!(evs[0]["object"]["reason"], "Expired");
    // timeoutSeconds ends the stream
    let started = std::time::Instant::now();
    let resp = watch_req(&s, "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1").await;
    let _ = resp.bytes().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    s.shutdown().await;
}

#[tokio::test]
async fn watch_bookmarks_and_initial_events() {
    let s =
        KubeApiServer::start(ApiServerConfig { bookmark_interval: Duration::from_millis(200), ..Default::default() })
            .await
            .unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "b0"}})).unwrap())
        .await
        .unwrap();
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let resp = watch_req(
        &s,
        &format!("/api/v1/namespaces/default/configmaps?watch=1&allowWatchBookmarks=true&resourceVersion={rv}"),
    )
    .await;
    let evs = read_events(resp, 1, Duration::from_secs(3)).await;
    assert_eq!(evs[0]["type"], "BOOKMARK");
    assert_eq!(evs[0]["object"]["kind"], "ConfigMap");
    assert!(
        evs[0]["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap()
            >= rv.parse::<u64>().unwrap()
    );
    // streaming list: initial ADDED events then a bookmark marking their end
    let resp = watch_req(&s, "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true").await;
    let evs = read_events(resp, 2, Duration::from_secs(3)).await;
    assert_eq!(evs[0]["type"], "ADDED");
    assert_eq!(evs[1]["type"], "BOOKMARK");
    assert_eq!(evs[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    s.shutdown().await;
}

#[tokio::test]
async fn kube_watcher_sees_changes() {
    let s = server().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "pre"}})).unwrap())
        .await
        .unwrap();
    for cfg in [watcher::Config::default(), watcher::Config::default().streaming_lists()] {
        let stream = watcher(cms.clone(), cfg);
        let mut stream = Box::pin(stream);
        let mut seen_init = false;
        let c2 = cms.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = c2.delete("later", &DeleteParams::default()).await;
            c2.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "later"}})).unwrap())
                .await
                .unwrap();
        });
        let found = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(ev) = stream.try_next().await.unwrap() {
                match ev {
                    watcher::Event::InitApply(cm) if cm.metadata.name.as_deref() == Some("pre") => seen_init = true,
                    watcher::Event::Apply(cm) if cm.metadata.name.as_deref() == Some("later") => return true,
                    _ => {}
                }
            }
            false
        })
        .await
        .unwrap();
        writer.await.unwrap();
        assert!(seen_init && found);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn merge_and_json_patches() {
    let s = server().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "p"}, "data": {"a": "1", "b": "2"}})).unwrap(),
    )
    .await
    .unwrap();
    let cm =
        cms.patch("p", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": null, "c": "3"}}))).await.unwrap();
    let data = cm.data.unwrap();
    assert_eq!(data.keys().cloned().collect::<Vec<_>>(), ["b", "c"]);
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/b", "value": "2"},
        {"op": "replace", "path": "/data/b", "value": "20"},
        {"op": "add", "path": "/metadata/labels", "value": {"l": "v"}}
    ]))
    .unwrap();
    let cm = cms.patch("p", &PatchParams::default(), &Patch::<()>::Json(jp)).await.unwrap();
    assert_eq!(cm.data.unwrap()["b"], "20");
    assert_eq!(cm.metadata.labels.unwrap()["l"], "v");
    // a failing test op: 422, nothing changes
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/b", "value": "2"},
        {"op": "remove", "path": "/data/b"}
    ]))
    .unwrap();
    let e = api_err(cms.patch("p", &PatchParams::default(), &Patch::<()>::Json(jp)).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(cms.get("p").await.unwrap().data.unwrap()["b"], "20");
    // a resourceVersion in a merge patch is a precondition
    let e = api_err(
        cms.patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "data": {"x": "y"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    // patch of a missing object
    let e = api_err(cms.patch("nope", &PatchParams::default(), &Patch::Merge(json!({}))).await.unwrap_err());
    assert_eq!(e.code, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn strategic_merge_patch_for_builtins_and_415_for_custom_resources() {
    let s = server().await;
    let deps: Api<Deployment> = Api::default_namespaced(s.admin_client());
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "d", "finalizers": ["a/x"]},
        "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [
            {"name": "main", "image": "img:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "side:1"}
        ]}}}
    })).unwrap();
    let created = deps.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let patched = deps
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Strategic(json!({
                "metadata": {"finalizers": ["a/y"]},
                "spec": {"template": {"spec": {"containers": [
                    {"name": "main", "image": "img:2", "env": [{"name": "B", "value": "2"}]},
                    {"name": "side", "$patch": "delete"}
                ]}}}
            })),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    assert_eq!(patched.metadata.finalizers.unwrap(), ["a/x", "a/y"]);
    let c = &patched.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].image.as_deref(), Some("img:2"));
    let env: Vec<_> = c[0].env.as_ref().unwrap().iter().map(|e| e.name.clone()).collect();
    assert_eq!(env, ["A", "B"]);
    let w = with_crd(&s).await;
    w.create(&PostParams::default(), &widget("w", json!({"color": "red", "size": 1}))).await.unwrap();
    let e = api_err(
        w.patch("w", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"size": 2}}))).await.unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (415, "UnsupportedMediaType"));
    s.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_ownership_conflicts_force_and_removal() {
    let s = server().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    let apply = |data: Value| {
        Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": data}))
    };
    // create on apply
    let cm = cms.patch("ssa", &PatchParams::apply("alice"), &apply(json!({"a": "1", "b": "2"}))).await.unwrap();
    let mf = cm.metadata.managed_fields.unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("alice"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_value(&mf[0].fields_v1).unwrap();
    assert!(fields["f:data"]["f:a"].is_object(), "{fields}");
    // bob applies a different value for a field alice owns: conflict
    let e = api_err(cms.patch("ssa", &PatchParams::apply("bob"), &apply(json!({"a": "9"}))).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(e.message.contains("conflict with \"alice\""), "{}", e.message);
    assert!(e.message.contains(".data.a"), "{}", e.message);
    // the same value is shared ownership, not a conflict
    cms.patch("ssa", &PatchParams::apply("bob"), &apply(json!({"b": "2"}))).await.unwrap();
    // force takes the field
    let cm = cms.patch("ssa", &PatchParams::apply("bob").force(), &apply(json!({"a": "9", "b": "2"}))).await.unwrap();
    assert_eq!(cm.data.as_ref().unwrap()["a"], "9");
    let alice =
        cm.metadata.managed_fields.unwrap().into_iter().find(|m| m.manager.as_deref() == Some("alice")).unwrap();
    let af = serde_json::to_value(&alice.fields_v1).unwrap();
    assert!(af["f:data"].get("f:a").is_none(), "{af}");
    // alice stops applying b (bob still owns it: stays) and c (only hers: removed)
    cms.patch("ssa", &PatchParams::apply("alice"), &apply(json!({"b": "2", "c": "3"}))).await.unwrap();
    let cm = cms.patch("ssa", &PatchParams::apply("alice"), &apply(json!({}))).await.unwrap();
    let data = cm.data.unwrap_or_default();
    assert_eq!(data.get("c"), None);
    assert_eq!(data.get("b").map(String::as_str), Some("2"));
    assert_eq!(data.get("a").map(String::as_str), Some("9"));
    // a manager that stops applying its last fields: they go
    let cm = cms.patch("ssa", &PatchParams::apply("bob").force(), &apply(json!({}))).await.unwrap();
    assert!(cm.data.unwrap_or_default().is_empty());
    // an update (non-apply) by another manager takes ownership as operation Update
    cms.patch("ssa", &PatchParams::apply("alice"), &apply(json!({"x": "1"}))).await.unwrap();
    let cm = cms
        .patch(
            "ssa",
            &PatchParams { field_manager: Some("editor".into()), ..Default::default() },
            &Patch::Merge(json!({"data": {"x": "2"}})),
        )
        .await
        .unwrap();
    let editor =
        cm.metadata.managed_fields.unwrap().into_iter().find(|m| m.manager.as_deref() == Some("editor")).unwrap();
    assert_eq!(editor.operation.as_deref(), Some("Update"));
    let e = api_err(cms.patch("ssa", &PatchParams::apply("alice"), &apply(json!({"x": "3"}))).await.unwrap_err());
    assert!(e.message.contains("conflict with \"editor\" using v1"), "{}", e.message);
    // a no-op apply does not change the resourceVersion
    let a = cms.patch("ssa", &PatchParams::apply("alice").force(), &apply(json!({"x": "3"}))).await.unwrap();
    let b = cms.patch("ssa", &PatchParams::apply("alice"), &apply(json!({"x": "3"}))).await.unwrap();
    assert_eq!(a.metadata.resource_version, b.metadata.resource_version);
    s.shutdown().await;
}

#[tokio::test]
async fn status_subresource_isolation_and_generation() {
    let s = server().await;
    let w = with_crd(&s).await;
    let mut obj = widget("g", json!({"color": "red", "size": 2}));
    obj.data["status"] = json!({"phase": "Ignored"});
    let created = w.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.data.get("status").is_none(), "status is dropped on create");
    // status write: only status changes, generation stays
    let st = w
        .patch_status(
            "g",
            &PatchParams::apply("ctl").force(),
            &Patch::Apply(json!({
                "apiVersion": "test.dev/v1", "kind": "Widget",
                "spec": {"color": "blue"},
                "status": {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]}
            })),
        )
        .await
        .unwrap();
    assert_eq!(st.data["status"]["phase"], "Ready");
    assert_eq!(st.data["spec"]["color"], "red");
    assert_eq!(st.metadata.generation, Some(1));
    let mf = st.metadata.managed_fields.unwrap();
    assert!(mf.iter().any(|m| m.manager.as_deref() == Some("ctl") && m.subresource.as_deref() == Some("status")));
    // main resource write: status untouched, spec change bumps generation
    let mut cur = w.get("g").await.unwrap();
    cur.data["spec"]["size"] = json!(3);
    cur.data["status"] = json!({"phase": "Hacked"});
    let upd = w.replace("g", &PostParams::default(), &cur).await.unwrap();
    assert_eq!(upd.data["status"]["phase"], "Ready");
    assert_eq!(upd.metadata.generation, Some(2));
    // metadata-only change: no generation bump
    let upd = w
        .patch("g", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})))
        .await
        .unwrap();
    assert_eq!(upd.metadata.generation, Some(2));
    // status merge patch
    let upd = w
        .patch_status("g", &PatchParams::default(), &Patch::Merge(json!({"status": {"observedGeneration": 2}})))
        .await
        .unwrap();
    assert_eq!(upd.data["status"]["observedGeneration"], 2);
    assert_eq!(upd.data["status"]["phase"], "Ready");
    assert_eq!(upd.metadata.generation, Some(2));
    s.shutdown().await;
}

#[tokio::test]
async fn schema_pruning_defaults_validation_and_cel() {
    let s = server().await;
    let w = with_crd(&s).await;
    let created = w
        .create(
            &PostParams::default(),
            &widget("v", json!({"color": "red", "size": 3, "unknown": 1, "extra": {"free": {"x": 1}}})),
        )
        .await
        .unwrap();
    assert!(created.data["spec"].get("unknown").is_none(), "pruned");
    assert_eq!(created.data["spec"]["extra"]["free"]["x"], 1, "preserved");
    assert_eq!(created.data["spec"]["mode"], "auto", "defaulted");
    // many problems at once, each with its field path
    let e = api_err(
        w.create(
            &PostParams::default(),
            &widget(
                "bad",
                json!({
                    "color": "purple", "size": 11, "label": "ABC", "when": "yesterday", "tags": ["a", "b", "c", "d"],
                    "indicators": [{"type": "FileSha256", "value": "zz"}]
                }),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    let fields: Vec<String> = e.details.as_ref().unwrap().causes.iter().map(|c| c.field.clone()).collect();
    for f in ["spec.color", "spec.size", "spec.label", "spec.when", "spec.tags", "spec.indicators[0]"] {
        assert!(fields.contains(&f.to_string()), "{f} missing in {fields:?}: {}", e.message);
    }
    assert!(e.message.starts_with("Widget.test.dev \"bad\" is invalid: ["), "{}", e.message);
    assert!(e.message.contains("a FileSha256 value is 64 hex characters"), "{}", e.message);
    // required + object-level CEL rule
    let e = api_err(w.create(&PostParams::default(), &widget("bad2", json!({"mode": "x"}))).await.unwrap_err());
    let causes = &e.details.as_ref().unwrap().causes;
    assert!(causes.iter().any(|c| c.field == "spec.color" && c.message == "Required value"), "{causes:?}");
    let e = api_err(w.create(&PostParams::default(), &widget("bad3", json!({"color": "red"}))).await.unwrap_err());
    assert!(e.message.contains("spec: Invalid value: \"object\": set spec.size or spec.label"), "{}", e.message);
    // type errors
    let e = api_err(
        w.create(&PostParams::default(), &widget("bad4", json!({"color": "red", "size": "big"}))).await.unwrap_err(),
    );
    assert!(e.message.contains("spec.size in body must be of type integer"), "{}", e.message);
    // updates are validated too
    let e =
        api_err(w.patch("v", &PatchParams::default(), &Patch::Merge(json!({"spec": {"size": 0}}))).await.unwrap_err());
    assert_eq!(e.code, 422);
    // strict field validation rejects unknown fields
    let (code, body) = raw(&s, &s.admin_token(), "POST", "/apis/test.dev/v1/namespaces/default/widgets?fieldValidation=Strict", "application/json",
        Some(json!({"apiVersion": "test.dev/v1", "kind": "Widget", "metadata": {"name": "strict"}, "spec": {"color": "red", "size": 1, "bogus": true}}))).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("unknown field \"spec.bogus\""));
    s.shutdown().await;
}

#[tokio::test]
async fn finalizers_delay_deletion_until_removed() {
    let s = server().await;
    let w = with_crd(&s).await;
    let mut obj = widget("f", json!({"color": "red", "size": 1}));
    obj.metadata.finalizers = Some(vec!["test.dev/cleanup".into()]);
    let created = w.create(&PostParams::default(), &obj).await.unwrap();
    let r = w.delete("f", &DeleteParams::default()).await.unwrap();
    let deleting = r.left().expect("the object, still there");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert_eq!(deleting.metadata.deletion_grace_period_seconds, Some(0));
    // as kube-apiserver does, so that controllers filtering on generation see the deletion
    assert_eq!(deleting.metadata.generation, created.metadata.generation.map(|g| g + 1));
    let still = w.get("f").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());
    // adding a finalizer while deleting is refused
    let e = api_err(
        w.patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["test.dev/cleanup", "x/y"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    // removing the last finalizer (as kube's finalizer helper does, with a JSON patch test) deletes it
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": ["test.dev/cleanup"]},
        {"op": "remove", "path": "/metadata/finalizers/0"}
    ]))
    .unwrap();
    w.patch("f", &PatchParams::default(), &Patch::<()>::Json(jp)).await.unwrap();
    let e = api_err(w.get("f").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert_eq!(e.message, "widgets.test.dev \"f\" not found");
    // without finalizers a CR delete returns the object and it is gone
    w.create(&PostParams::default(), &widget("g", json!({"color": "red", "size": 1}))).await.unwrap();
    assert!(w.delete("g", &DeleteParams::default()).await.unwrap().is_left());
    assert_eq!(api_err(w.get("g").await.unwrap_err()).code, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn namespace_deletion_removes_its_objects() {
    let s = server().await;
    let nss: Api<Namespace> = Api::all(s.admin_client());
    nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "tmp"}})).unwrap())
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(s.admin_client(), "tmp");
    cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap())
        .await
        .unwrap();
    nss.delete("tmp", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_err(cms.get("c").await.unwrap_err()).code, 404);
    assert_eq!(api_err(nss.get("tmp").await.unwrap_err()).code, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn rbac_for_service_accounts() {
    let s = server().await;
    let w = with_crd(&s).await;
    w.create(&PostParams::default(), &widget("r", json!({"color": "red", "size": 1}))).await.unwrap();
    let token = s.service_account_token("default", "op");
    let sa = s.client(&token);
    let sw: Api<DynamicObject> = Api::namespaced_with(sa.clone(), "default", &widget_ar());
    let e = api_err(sw.get("r").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "widgets.test.dev \"r\" is forbidden: User \"system:serviceaccount:default:op\" cannot get resource \"widgets\" in API group \"test.dev\" in the namespace \"default\""
    );
    let admin = s.admin_client();
    let apply = |v: Value| Patch::Apply(v);
    let roles: Api<DynamicObject> = Api::all_with(
        admin.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "ClusterRole"),
            "clusterroles",
        ),
    );
    roles.patch("widget-reader", &PatchParams::apply("test"), &apply(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "widget-reader"},
        "rules": [
            {"apiGroups": ["test.dev"], "resources": ["widgets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["test.dev"], "resources": ["widgets/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"], "resourceNames": ["only-this"]}
        ]
    }))).await.unwrap();
    let rbs: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "RoleBinding"),
            "rolebindings",
        ),
    );
    rbs.patch("op-reads", &PatchParams::apply("test"), &apply(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "op-reads", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "widget-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "default"}]
    }))).await.unwrap();
    sw.get("r").await.unwrap();
    sw.list(&ListParams::default()).await.unwrap();
    sw.patch_status("r", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "x"}}))).await.unwrap();
    let e =
        api_err(sw.patch("r", &PatchParams::default(), &Patch::Merge(json!({"spec": {"size": 2}}))).await.unwrap_err());
    assert_eq!(e.code, 403);
    assert!(e.message.contains("cannot patch resource \"widgets\""), "{}", e.message);
    // the RoleBinding grants nothing in another namespace
    let other: Api<DynamicObject> = Api::namespaced_with(sa.clone(), "kube-system", &widget_ar());
    let e = api_err(other.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(
        e.message,
        "widgets.test.dev is forbidden: User \"system:serviceaccount:default:op\" cannot list resource \"widgets\" in API group \"test.dev\" in the namespace \"kube-system\""
    );
    // resourceNames
    let scm: Api<ConfigMap> = Api::default_namespaced(sa.clone());
    admin_cm(&s, "only-this").await;
    admin_cm(&s, "other").await;
    scm.get("only-this").await.unwrap();
    assert_eq!(api_err(scm.get("other").await.unwrap_err()).code, 403);
    // cluster-scoped: no rights
    let nss: Api<Namespace> = Api::all(sa);
    let e = api_err(nss.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(
        e.message,
        "namespaces is forbidden: User \"system:serviceaccount:default:op\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
    );
    s.shutdown().await;
}

async fn admin_cm(s: &KubeApiServer, name: &str) {
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn discovery_and_tables() {
    let s = server().await;
    let _w = with_crd(&s).await;
    let t = s.admin_token();
    let (code, apis) = raw(&s, &t, "GET", "/apis", "", None).await;
    assert_eq!(code, 200);
    assert!(apis["groups"].as_array().unwrap().iter().any(|g| g["name"] == "test.dev"));
    let (_, rl) = raw(&s, &t, "GET", "/apis/test.dev/v1", "", None).await;
    let r = rl["resources"].as_array().unwrap().iter().find(|r| r["name"] == "widgets").unwrap().clone();
    assert_eq!(r["shortNames"], json!(["wd"]));
    assert_eq!(r["namespaced"], true);
    assert!(rl["resources"].as_array().unwrap().iter().any(|r| r["name"] == "widgets/status"));
    // kube's discovery finds it
    let discovery = kube::Discovery::new(s.admin_client()).run().await.unwrap();
    assert!(discovery.groups().any(|g| g.name() == "test.dev"));
    // Table with printer columns
    let w: Api<DynamicObject> = Api::namespaced_with(s.admin_client(), "default", &widget_ar());
    w.create(&PostParams::default(), &widget("t", json!({"color": "green", "size": 4}))).await.unwrap();
    w.patch_status(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await
    .unwrap();
    let resp = reqwest::Client::new()
        .get(format!("{}/apis/test.dev/v1/namespaces/default/widgets", s.url()))
        .bearer_auth(&t)
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
        .send()
        .await
        .unwrap();
    let table: Value = resp.json().await.unwrap();
    assert_eq!(table["kind"], "Table");
    let cols: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(cols, ["Name", "Color", "Size", "Ready", "Age"]);
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[0], "t");
    assert_eq!(cells[1], "green");
    assert_eq!(cells[2], 4);
    assert_eq!(cells[3], "True");
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    s.shutdown().await;
}

/// Manual exploration: `KUBE_SANDBOX_HOLD=60 cargo test --test kube_api_server hold -- --ignored --nocapture`
/// writes /tmp/sandbox-kubeconfig and serves for that many seconds.
#[tokio::test]
#[ignore]
async fn hold() {
    let s = server().await;
    std::fs::write("/tmp/sandbox-kubeconfig", s.kubeconfig_yaml(&s.admin_token())).unwrap();
    let secs: u64 = std::env::var("KUBE_SANDBOX_HOLD").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    println!("serving at {}", s.url());
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

/// Runs the real `kubectl` against a server, with its own kubeconfig and discovery cache.
struct Kubectl {
    dir: std::path::PathBuf,
}

impl Kubectl {
    fn new(s: &KubeApiServer, token: &str, tag: &str) -> Kubectl {
        let dir = std::env::temp_dir().join(format!("kube-api-server-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kubeconfig"), s.kubeconfig_yaml(token)).unwrap();
        Kubectl { dir }
    }

    fn file(&self, name: &str, content: &Value) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(content).unwrap()).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// (success, stdout, stderr)
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.dir.join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(args)
            .output()
            .await
            .expect("kubectl is installed");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed: {out}{err}");
        out
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn widget_json(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "test.dev/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_wait_delete() {
    let s = server().await;
    let k = Kubectl::new(&s, &s.admin_token(), "crud");
    let crd = k.file("crd.json", &widget_crd());
    assert!(
        k.ok(&["apply", "-f", &crd])
            .await
            .contains("customresourcedefinition.apiextensions.k8s.io/widgets.test.dev created")
    );
    let w1 = k.file("w1.json", &widget_json("w1", json!({"color": "green", "size": 2})));
    assert!(k.ok(&["apply", "-f", &w1]).await.contains("widget.test.dev/w1 created"));
    // printer columns through the Table API, by plural and by short name
    let out = k.ok(&["get", "widgets"]).await;
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["NAME", "COLOR", "SIZE", "READY", "AGE"], "{out}");
    assert_eq!(&lines[1][..3], ["w1", "green", "2"], "{out}");
    assert!(k.ok(&["get", "wd", "w1"]).await.contains("w1"));
    // -o yaml: the stored object, defaulted
    let y: Value = serde_yaml_ng::from_str(&k.ok(&["get", "wd", "w1", "-o", "yaml"]).await).unwrap();
    assert_eq!(y["kind"], "Widget");
    assert_eq!(y["spec"]["mode"], "auto");
    assert_eq!(y["metadata"]["generation"], 1);
    // client-side apply of a change (merge patch with the last-applied annotation)
    let w1b = k.file("w1.json", &widget_json("w1", json!({"color": "blue", "size": 3})));
    assert!(k.ok(&["apply", "-f", &w1b]).await.contains("widget.test.dev/w1 configured"));
    let y: Value = serde_yaml_ng::from_str(&k.ok(&["get", "wd", "w1", "-o", "yaml"]).await).unwrap();
    assert_eq!((y["spec"]["color"].as_str(), y["metadata"]["generation"].as_i64()), (Some("blue"), Some(2)));
    // then server-side apply takes over (the client-side → server-side upgrade path)
    let w1c = k.file("w1.json", &widget_json("w1", json!({"color": "red", "size": 3})));
    assert!(k.ok(&["apply", "--server-side", "-f", &w1c]).await.contains("serverside-applied"));
    assert_eq!(k.ok(&["get", "wd", "w1", "-o", "jsonpath={.spec.color}"]).await, "red");
    // schema validation errors reach kubectl
    let bad = k.file("bad.json", &widget_json("bad", json!({"color": "purple", "size": 1})));
    let (ok, _, err) = k.run(&["apply", "-f", &bad]).await;
    assert!(!ok && err.contains("spec.color") && err.contains("Unsupported value"), "{err}");
    // wait --for=condition=Ready while a controller sets the condition
    let w: Api<DynamicObject> = Api::namespaced_with(s.admin_client(), "default", &widget_ar());
    let setter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        w.patch_status(
            "w1",
            &PatchParams::apply("ctl"),
            &Patch::Apply(json!({
                "apiVersion": "test.dev/v1", "kind": "Widget",
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Done"}]}
            })),
        )
        .await
        .unwrap();
    });
    let out = k.ok(&["wait", "--for=condition=Ready", "widgets/w1", "--timeout=20s"]).await;
    assert!(out.contains("condition met"), "{out}");
    setter.await.unwrap();
    let out = k.ok(&["get", "wd"]).await;
    assert_eq!(out.lines().nth(1).unwrap().split_whitespace().nth(3), Some("True"), "{out}");
    // namespaces
    assert!(k.ok(&["create", "namespace", "team-a"]).await.contains("namespace/team-a created"));
    assert!(k.ok(&["get", "ns", "team-a"]).await.contains("Active"));
    k.ok(&["-n", "team-a", "apply", "-f", &w1]).await;
    let out = k.ok(&["get", "wd", "-A"]).await;
    assert!(out.lines().next().unwrap().starts_with("NAMESPACE"), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    // the operator's CRDs, by short names
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/detect.dev.yaml");
    assert!(k.ok(&["apply", "-f", crds]).await.contains("probefindings.detect.dev created"));
    let (ok, out, err) = k.run(&["get", "dp,pf", "-A"]).await;
    assert!(ok && format!("{out}{err}").contains("No resources found"), "{out}{err}");
    // delete
    assert!(k.ok(&["delete", "wd", "w1"]).await.contains("widget.test.dev \"w1\" deleted"));
    let (_, out, err) = k.run(&["get", "wd"]).await;
    assert!(format!("{out}{err}").contains("No resources found"), "{out}{err}");
    let (ok, _, err) = k.run(&["get", "wd", "w1"]).await;
    assert!(!ok && err.contains("NotFound") && err.contains("widgets.test.dev \"w1\" not found"), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_builtins_and_rbac() {
    let s = server().await;
    let k = Kubectl::new(&s, &s.admin_token(), "builtins");
    let dep = |image: &str, containers: Value| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers.as_array().unwrap().iter().cloned().chain([json!({"name": "main", "image": image})]).collect::<Vec<_>>()}
            }}
        })
    };
    let f = k.file("dep.json", &dep("nginx:1", json!([{"name": "side", "image": "busybox"}])));
    k.ok(&["apply", "-f", &f]).await;
    // a strategic merge patch from kubectl's client-side apply drops the side container
    let f = k.file("dep.json", &dep("nginx:2", json!([])));
    assert!(k.ok(&["apply", "-f", &f]).await.contains("deployment.apps/web configured"));
    let out = k
        .ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].name}={.spec.template.spec.containers[*].image}",
        ])
        .await;
    assert_eq!(out, "main=nginx:2");
    // the scale subresource
    assert!(k.ok(&["scale", "deploy", "web", "--replicas=5"]).await.contains("deployment.apps/web scaled"));
    assert_eq!(k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]).await, "5");
    let scale: Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/apis/apps/v1/namespaces/default/deployments/web/scale"]).await)
            .unwrap();
    assert_eq!((scale["kind"].as_str(), scale["spec"]["replicas"].as_i64()), (Some("Scale"), Some(5)));
    assert_eq!(scale["status"]["selector"], "app=web");
    // services' ports merge on port
    let svc = |target: i64| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": target}]}})
    };
    k.ok(&["apply", "-f", &k.file("svc.json", &svc(80))]).await;
    k.ok(&["apply", "-f", &k.file("svc.json", &svc(8080))]).await;
    let ports: Value =
        serde_json::from_str(&k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports}"]).await).unwrap();
    assert_eq!(ports, json!([{"name": "http", "port": 80, "targetPort": 8080}]));
    let out = k.ok(&["create", "configmap", "cfg", "--from-literal=a=b"]).await;
    assert!(out.contains("configmap/cfg created"), "{out}");
    let out = k.ok(&["get", "cm", "cfg", "-o", "jsonpath={.data.a}"]).await;
    assert_eq!(out, "b");
    // a service account sees only what RBAC grants
    let sa = Kubectl::new(&s, &s.service_account_token("default", "viewer"), "viewer");
    let (ok, _, err) = sa.run(&["get", "cm", "cfg"]).await;
    assert!(!ok, "{err}");
    assert!(err.contains("configmaps \"cfg\" is forbidden: User \"system:serviceaccount:default:viewer\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"default\""), "{err}");
    let role = k.file(
        "role.json",
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]
        }),
    );
    let binding = k.file(
        "rb.json",
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "viewer-reads"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": "default"}]
        }),
    );
    k.ok(&["apply", "-f", &role, "-f", &binding]).await;
    assert_eq!(sa.ok(&["get", "cm", "cfg", "-o", "jsonpath={.data.a}"]).await, "b");
    let (ok, _, err) = sa.run(&["delete", "cm", "cfg"]).await;
    assert!(!ok && err.contains("cannot delete resource \"configmaps\""), "{err}");
    assert_eq!(sa.ok(&["auth", "can-i", "list", "configmaps"]).await.trim(), "yes");
    // RBAC objects made by kubectl's typed (protobuf) create commands, checked by impersonation
    k.ok(&["create", "serviceaccount", "bot"]).await;
    k.ok(&["create", "clusterrole", "ns-lister", "--verb=list", "--resource=namespaces"]).await;
    k.ok(&["create", "clusterrolebinding", "bot-lists", "--clusterrole=ns-lister", "--serviceaccount=default:bot"])
        .await;
    k.ok(&["create", "role", "cm-getter", "--verb=get", "--resource=configmaps"]).await;
    k.ok(&["create", "rolebinding", "bot-gets", "--role=cm-getter", "--serviceaccount=default:bot"]).await;
    let as_bot = "--as=system:serviceaccount:default:bot";
    for (verb, res, want) in [
        ("get", "configmaps", "yes"),
        ("list", "configmaps", "no"),
        ("list", "namespaces", "yes"),
        ("delete", "namespaces", "no"),
    ] {
        let (_, out, _) = k.run(&["auth", "can-i", verb, res, as_bot]).await;
        assert_eq!(out.trim(), want, "{verb} {res}");
    }
    let (ok, _, err) = k.run(&["get", "cm", as_bot]).await;
    assert!(!ok && err.contains("cannot list resource \"configmaps\""), "{err}");
    // a service account may not impersonate
    let (ok, _, err) = sa.run(&["get", "cm", "cfg", as_bot]).await;
    assert!(!ok && err.contains("cannot impersonate resource \"serviceaccounts\""), "{err}");
    k.ok(&["delete", "deploy", "web"]).await;
    s.shutdown().await;
}

mod controller {
    use super::*;
    use kube::Resource;
    use kube::runtime::controller::{Action, Controller};
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    use kube::runtime::finalizer::{Error as FinalizerError, Event as Finalized, finalizer};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Ctx {
        api: Api<DynamicObject>,
        recorder: Recorder,
        cleaned: AtomicUsize,
    }

    async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, FinalizerError<kube::Error>> {
        let api = ctx.api.clone();
        let fin_api = ctx.api.clone();
        finalizer(&fin_api, "test.dev/cleanup", obj, |ev| async move {
            match ev {
                Finalized::Apply(o) => {
                    let name = o.metadata.name.clone().unwrap();
                    api.patch_status(
                        &name,
                        &PatchParams::apply("widget-controller").force(),
                        &Patch::Apply(json!({
                            "apiVersion": "test.dev/v1", "kind": "Widget",
                            "status": {"phase": "Seen", "observedGeneration": o.metadata.generation,
                                       "conditions": [{"type": "Ready", "status": "True", "reason": "Seen"}]}
                        })),
                    )
                    .await?;
                    let reference = o.object_ref(&widget_ar());
                    ctx.recorder
                        .publish(
                            &Event {
                                type_: EventType::Normal,
                                reason: "Seen".into(),
                                note: Some("reconciled".into()),
                                action: "Reconcile".into(),
                                secondary: None,
                            },
                            &reference,
                        )
                        .await?;
                    Ok(Action::await_change())
                }
                Finalized::Cleanup(_) => {
                    ctx.cleaned.fetch_add(1, Ordering::SeqCst);
                    Ok(Action::await_change())
                }
            }
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kube_runtime_controller_with_finalizer_status_and_events() {
        let s = server().await;
        let w = with_crd(&s).await;
        w.create(&PostParams::default(), &widget("c1", json!({"color": "red", "size": 1}))).await.unwrap();
        let client = s.admin_client();
        let ctx = Arc::new(Ctx {
            api: w.clone(),
            recorder: Recorder::new(
                client.clone(),
                Reporter { controller: "widget-controller".into(), instance: None },
            ),
            cleaned: AtomicUsize::new(0),
        });
        let controller = Controller::new_with(w.clone(), watcher::Config::default(), widget_ar())
            .run(reconcile, |_, _, _| Action::requeue(Duration::from_millis(200)), ctx.clone())
            .for_each(|r| {
                if let Err(e) = r {
                    eprintln!("reconcile error: {e:?}");
                }
                futures::future::ready(())
            });
        let handle = tokio::spawn(controller);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let o = w.get("c1").await.unwrap();
            let has_finalizer =
                o.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == "test.dev/cleanup"));
            if has_finalizer && o.data["status"]["phase"] == "Seen" {
                assert_eq!(o.data["status"]["observedGeneration"], 1);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not reconciled: {o:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::default_namespaced(client);
        loop {
            let evs = events.list(&ListParams::default()).await.unwrap();
            if evs.items.iter().any(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("c1")
                    && e.reason.as_deref() == Some("Seen")
            }) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no event: {evs:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // events.k8s.io/v1 and core/v1 Events are one resource: kubectl describe finds it
        let core: Api<k8s_openapi::api::core::v1::Event> = Api::default_namespaced(s.admin_client());
        let listed = core.list(&ListParams::default().fields("involvedObject.name=c1")).await.unwrap();
        let ev = listed.items.first().expect("the event as core/v1");
        assert_eq!(ev.message.as_deref(), Some("reconciled"));
        assert_eq!(ev.reporting_component.as_deref(), Some("widget-controller"));
        let k = Kubectl::new(&s, &s.admin_token(), "events");
        let out = k.ok(&["get", "events"]).await;
        let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(header, ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], "{out}");
        assert!(out.contains("widget/c1") && out.contains("reconciled"), "{out}");
        let out = k.ok(&["describe", "widget", "c1"]).await;
        assert!(out.contains("Normal  Seen") && out.contains("reconciled"), "{out}");
        // delete: the finalizer runs cleanup, removes itself, and the object goes
        w.delete("c1", &DeleteParams::default()).await.unwrap();
        loop {
            match w.get("c1").await {
                Err(kube::Error::Api(e)) if e.code == 404 => break,
                _ => {}
            }
            assert!(tokio::time::Instant::now() < deadline, "not deleted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ctx.cleaned.load(Ordering::SeqCst), 1);
        handle.abort();
        s.shutdown().await;
    }
}

#[tokio::test]
async fn server_side_apply_merges_list_map_entries_per_manager() {
    let s = server().await;
    let w = with_crd(&s).await;
    w.create(&PostParams::default(), &widget("lm", json!({"color": "red", "size": 1}))).await.unwrap();
    let status = |conds: Value| {
        Patch::Apply(json!({"apiVersion": "test.dev/v1", "kind": "Widget", "status": {"conditions": conds}}))
    };
    let types = |o: &DynamicObject| -> Vec<String> {
        o.data["status"]["conditions"]
            .as_array()
            .map(|a| a.iter().map(|c| c["type"].as_str().unwrap_or("<none>").to_string()).collect())
            .unwrap_or_default()
    };
    w.patch_status("lm", &PatchParams::apply("a"), &status(json!([{"type": "Ready", "status": "True"}])))
        .await
        .unwrap();
    let o = w
        .patch_status("lm", &PatchParams::apply("b"), &status(json!([{"type": "Synced", "status": "False"}])))
        .await
        .unwrap();
    assert_eq!(types(&o), ["Ready", "Synced"]);
    // b may not flip a's condition without force
    let e = api_err(
        w.patch_status("lm", &PatchParams::apply("b"), &status(json!([{"type": "Ready", "status": "False"}])))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert!(e.message.contains(".status.conditions[type=\"Ready\"].status"), "{}", e.message);
    // a stops applying its condition: it goes, b's stays
    let o = w.patch_status("lm", &PatchParams::apply("a"), &status(json!([]))).await.unwrap();
    assert_eq!(types(&o), ["Synced"]);
    // a manager's own earlier Update (here: a create) is a different manager: a conflict
    let (code, _) = raw(
        &s,
        &s.admin_token(),
        "POST",
        "/apis/test.dev/v1/namespaces/default/widgets?fieldManager=op",
        "application/json",
        Some(widget_json("own", json!({"color": "red", "size": 1}))),
    )
    .await;
    assert_eq!(code, 201);
    let e = api_err(
        w.patch(
            "own",
            &PatchParams::apply("op"),
            &Patch::Apply(widget_json("own", json!({"color": "blue", "size": 1}))),
        )
        .await
        .unwrap_err(),
    );
    assert!(e.message.contains("conflict with \"op\" using test.dev/v1: .spec.color"), "{}", e.message);
    s.shutdown().await;
}

#[tokio::test]
async fn selector_watches_see_objects_enter_and_leave_and_deletecollection() {
    let s = server().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    let rv = cms.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let resp = watch_req(
        &s,
        &format!("/api/v1/namespaces/default/configmaps?watch=true&labelSelector=app%3Dx&resourceVersion={rv}"),
    )
    .await;
    let mk = |name: &str, app: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": app}}})).unwrap()
    };
    cms.create(&PostParams::default(), &mk("a", "y")).await.unwrap();
    cms.create(&PostParams::default(), &mk("b", "x")).await.unwrap();
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "x"}}})))
        .await
        .unwrap();
    cms.patch("b", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "z"}}})))
        .await
        .unwrap();
    let evs = read_events(resp, 3, Duration::from_secs(3)).await;
    let got: Vec<(String, String)> = evs
        .iter()
        .map(|e| (e["type"].as_str().unwrap().into(), e["object"]["metadata"]["name"].as_str().unwrap().into()))
        .collect();
    assert_eq!(got, [("ADDED".into(), "b".into()), ("ADDED".into(), "a".into()), ("DELETED".into(), "b".into())]);
    // DELETE on the collection deletes what the selector matches
    let (code, body) =
        raw(&s, &s.admin_token(), "DELETE", "/api/v1/namespaces/default/configmaps?labelSelector=app%3Dx", "", None)
            .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["kind"], "ConfigMapList");
    let left: Vec<String> =
        cms.list(&ListParams::default()).await.unwrap().items.into_iter().map(|c| c.metadata.name.unwrap()).collect();
    assert_eq!(left, ["b"]);
    s.shutdown().await;
}

#[tokio::test]
async fn garbage_collection_follows_owner_references() {
    let s = server().await;
    let w = with_crd(&s).await;
    let owner = w.create(&PostParams::default(), &widget("owner", json!({"color": "red", "size": 1}))).await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    let owned = |name: &str, uids: Vec<&str>| -> ConfigMap {
        let refs: Vec<Value> = uids
            .iter()
            .map(|u| json!({"apiVersion": "test.dev/v1", "kind": "Widget", "name": "x", "uid": u}))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": refs}})).unwrap()
    };
    let uid = owner.metadata.uid.clone().unwrap();
    let other = admin_cm_uid(&s, "other-owner").await;
    cms.create(&PostParams::default(), &owned("dep", vec![&uid])).await.unwrap();
    cms.create(&PostParams::default(), &owned("shared", vec![&uid, &other])).await.unwrap();
    w.delete("owner", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_err(cms.get("dep").await.unwrap_err()).code, 404);
    cms.get("shared").await.unwrap();
    // orphan propagation keeps dependents and drops the reference
    let owner2 = w.create(&PostParams::default(), &widget("owner2", json!({"color": "red", "size": 1}))).await.unwrap();
    cms.create(&PostParams::default(), &owned("kept", vec![owner2.metadata.uid.as_deref().unwrap()])).await.unwrap();
    w.delete("owner2", &DeleteParams::orphan()).await.unwrap();
    let kept = cms.get("kept").await.unwrap();
    assert!(kept.metadata.owner_references.is_none());
    s.shutdown().await;
}

async fn admin_cm_uid(s: &KubeApiServer, name: &str) -> String {
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    let cm = cms
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
        .await
        .unwrap();
    cm.metadata.uid.unwrap()
}

#[tokio::test]
async fn unknown_fields_warn_and_bad_cel_rules_reject_the_crd() {
    let s = server().await;
    let _w = with_crd(&s).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/apis/test.dev/v1/namespaces/default/widgets", s.url()))
        .bearer_auth(s.admin_token())
        .header("content-type", "application/json")
        .body(widget_json("warned", json!({"color": "red", "size": 1, "bogus": 1})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let warnings: Vec<String> =
        resp.headers().get_all("warning").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(warnings, ["299 - \"unknown field \\\"spec.bogus\\\"\""]);
    // a rule that does not compile
    let mut crd = widget_crd();
    crd["metadata"]["name"] = json!("gizmos.test.dev");
    crd["spec"]["names"] = json!({"plural": "gizmos", "kind": "Gizmo"});
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] =
        json!([{"rule": "self.size >"}]);
    let (code, body) = raw(
        &s,
        &s.admin_token(),
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "application/json",
        Some(crd.clone()),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("compilation failed"), "{body}");
    // messageExpression
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] =
        json!([{"rule": "self.size < 5", "messageExpression": "'size ' + string(self.size) + ' is too big'"}]);
    let (code, body) = raw(
        &s,
        &s.admin_token(),
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "application/json",
        Some(crd),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = raw(
        &s,
        &s.admin_token(),
        "POST",
        "/apis/test.dev/v1/namespaces/default/gizmos",
        "application/json",
        Some(json!({"apiVersion": "test.dev/v1", "kind": "Gizmo", "metadata": {"name": "g"}, "spec": {"color": "red", "size": 7}})),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("size 7 is too big"), "{body}");
    s.shutdown().await;
}

/// `Accept: ...;as=PartialObjectMetadataList` (what kube's metadata watches send) gets metadata
/// only: a metadata watch on Secrets never sees their data.
#[tokio::test]
async fn metadata_only_requests_never_carry_the_data() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::core::PartialObjectMeta;
    let s = server().await;
    let secrets: Api<Secret> = Api::namespaced(s.admin_client(), "default");
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "creds"}, "stringData": {"k": "hidden"}})).unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();

    let client = reqwest::Client::new();
    let list: Value = client
        .get(format!("{}/api/v1/namespaces/default/secrets", s.url()))
        .bearer_auth(s.admin_token())
        .header("accept", "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["kind"], "PartialObjectMetadataList");
    assert_eq!(list["items"][0]["kind"], "PartialObjectMetadata");
    assert_eq!(list["items"][0]["metadata"]["name"], "creds");
    assert!(list["items"][0].get("data").is_none() && !list.to_string().contains("aGlkZGVu"), "{list}");

    let metadata: Api<PartialObjectMeta<Secret>> = Api::namespaced(s.admin_client(), "default");
    let mut events = watcher::watcher(metadata, watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_secs(5), events.try_next()).await.unwrap_or(Ok(None))
    {
        if let watcher::Event::InitApply(secret) | watcher::Event::Apply(secret) = event {
            seen.push(secret.metadata.name.unwrap_or_default());
            break;
        }
    }
    assert_eq!(seen, ["creds"]);
}

#[tokio::test]
async fn injected_faults_cut_watches_expire_history_conflict_status_writes_and_restart() {
    let s = server().await;
    let widgets = with_crd(&s).await;
    let w = widgets.create(&PostParams::default(), &widget("w", json!({"color": "red", "size": 1}))).await.unwrap();
    let rv = w.metadata.resource_version.clone().unwrap();
    let path = format!("/apis/test.dev/v1/namespaces/default/widgets?watch=true&resourceVersion={rv}");

    // A cut ends the open watch cleanly; resuming from the same version works.
    let resp = watch_req(&s, &path).await;
    s.cut_watches();
    let body = tokio::time::timeout(Duration::from_secs(3), resp.bytes()).await;
    assert!(body.is_ok_and(|b| b.is_ok_and(|b| b.is_empty())), "the watch ended without events");
    let resumed = watch_req(&s, &path).await;
    widgets.patch("w", &PatchParams::default(), &Patch::Merge(json!({"spec": {"size": 2}}))).await.unwrap();
    assert_eq!(read_events(resumed, 1, Duration::from_secs(3)).await[0]["type"], "MODIFIED");

    // Expired history: the same resume now gets 410 Expired; a watch from now works.
    s.expire_watch_history();
    let events = read_events(watch_req(&s, &path).await, 1, Duration::from_secs(3)).await;
    assert_eq!((events[0]["type"].as_str(), events[0]["object"]["code"].as_i64()), (Some("ERROR"), Some(410)));

    // 409 on the next status writes only, with the real message.
    s.conflict_next_status_writes(1);
    let status = Patch::Merge(json!({"status": {"phase": "x"}}));
    let err = api_err(widgets.patch_status("w", &PatchParams::default(), &status).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(err.message.contains("the object has been modified"), "{}", err.message);
    widgets.patch_status("w", &PatchParams::default(), &status).await.unwrap();
    assert_eq!(s.status_conflicts_served(), 1);

    // Restart: connections refused while down, state kept, old versions expired.
    let restarting = {
        let s = s.clone();
        tokio::spawn(async move { s.restart(Duration::from_millis(500)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(reqwest::get(format!("{}/version", s.url())).await.is_err(), "refused while down");
    restarting.await.unwrap().unwrap();
    let kept = widgets.get("w").await.unwrap();
    assert_eq!(kept.data["spec"]["size"], 2);
    let events = read_events(watch_req(&s, &path).await, 1, Duration::from_secs(3)).await;
    assert_eq!(events[0]["object"]["code"], 410);
    s.shutdown().await;
}

#[tokio::test]
async fn a_paginated_list_is_one_list_and_its_watch_misses_nothing() {
    let s = server().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    for name in ["b", "c", "d"] {
        cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
            .await
            .unwrap();
    }
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let snapshot = first.metadata.resource_version.clone().unwrap();
    // Created between the pages, before the cursor: not in the next page, so the watch from the
    // list's version must bring it.
    cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap())
        .await
        .unwrap();
    let next_page = ListParams::default().limit(2).continue_token(first.metadata.continue_.as_deref().unwrap());
    let rest = cms.list(&next_page).await.unwrap();
    assert_eq!(rest.metadata.resource_version.as_deref(), Some(snapshot.as_str()), "every page is as of the first");
    let listed: Vec<String> = first.items.iter().chain(&rest.items).map(|c| c.metadata.name.clone().unwrap()).collect();
    assert_eq!(listed, ["b", "c", "d"]);
    let path = format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={snapshot}");
    let events = read_events(watch_req(&s, &path).await, 1, Duration::from_secs(3)).await;
    assert_eq!(
        (events[0]["type"].as_str(), events[0]["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("a"))
    );
    s.shutdown().await;
}

mod service_account_tokens {
    //! TokenRequest and the issuer's discovery, as kube-apiserver serves them.
    use super::*;
    use base64::Engine as _;

    const EXCHANGE: &str = "api://AzureADTokenExchange";

    fn token_path(ns: &str, name: &str) -> String {
        format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token")
    }

    fn token_request(audiences: &[&str], expiration_seconds: Option<i64>) -> Value {
        let mut spec = json!({"audiences": audiences});
        if let Some(e) = expiration_seconds {
            spec["expirationSeconds"] = json!(e);
        }
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    }

    async fn create_sa(s: &KubeApiServer, ns: &str, name: &str) -> String {
        let (code, sa) = raw(
            s,
            &s.admin_token(),
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            "application/json",
            Some(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})),
        )
        .await;
        assert_eq!(code, 201, "{sa}");
        sa["metadata"]["uid"].as_str().unwrap().to_string()
    }

    fn jwt_part(token: &str, i: usize) -> Value {
        let part = token.split('.').nth(i).unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    /// A client that trusts the server's self-signed certificate, as a relying party configured
    /// with it would.
    fn https_client(s: &KubeApiServer) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(s.certificate_pem().as_bytes()).unwrap();
        reqwest::Client::builder().tls_certs_only([ca]).no_proxy().build().unwrap()
    }

    #[tokio::test]
    async fn token_request_issues_kube_claims_that_the_issuer_discovery_verifies() {
        let s = server().await;
        let uid = create_sa(&s, "default", "partner").await;
        let (code, tr) = raw(
            &s,
            &s.admin_token(),
            "POST",
            &token_path("default", "partner"),
            "application/json",
            Some(token_request(&[EXCHANGE], Some(1200))),
        )
        .await;
        assert_eq!(code, 201, "{tr}");
        assert_eq!(
            (tr["kind"].as_str(), tr["apiVersion"].as_str()),
            (Some("TokenRequest"), Some("authentication.k8s.io/v1"))
        );
        assert_eq!(tr["spec"]["expirationSeconds"], 1200);
        let token = tr["status"]["token"].as_str().unwrap();
        let expires: jiff::Timestamp = tr["status"]["expirationTimestamp"].as_str().unwrap().parse().unwrap();
        let header = jwt_part(token, 0);
        let claims = jwt_part(token, 1);
        assert_eq!(header["alg"], "RS256");
        assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()), "{header}");
        assert_eq!(claims["iss"], s.service_account_issuer());
        assert_eq!(s.service_account_issuer(), s.https_url());
        assert_eq!(claims["sub"], "system:serviceaccount:default:partner");
        assert_eq!(claims["aud"], json!([EXCHANGE]));
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 1200);
        assert_eq!(claims["nbf"], claims["iat"]);
        assert_eq!(claims["exp"].as_i64().unwrap(), expires.as_second());
        assert!(claims["jti"].as_str().is_some_and(|j| uuid::Uuid::parse_str(j).is_ok()), "{claims}");
        assert_eq!(
            claims["kubernetes.io"],
            json!({"namespace": "default", "serviceaccount": {"name": "partner", "uid": uid}})
        );

        // As Entra does: discovery without credentials, then the keys, then the signature.
        let http = https_client(&s);
        let discovery: Value = http
            .get(format!("{}/.well-known/openid-configuration", s.service_account_issuer()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(discovery["issuer"], s.service_account_issuer());
        assert_eq!(discovery["response_types_supported"], json!(["id_token"]));
        assert_eq!(discovery["subject_types_supported"], json!(["public"]));
        assert_eq!(discovery["id_token_signing_alg_values_supported"], json!(["RS256"]));
        let jwks: jsonwebtoken::jwk::JwkSet =
            http.get(discovery["jwks_uri"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
        let jwk = jwks.find(header["kid"].as_str().unwrap()).expect("the token's kid is published");
        let raw_jwk = serde_json::to_value(jwk).unwrap();
        assert_eq!(
            (raw_jwk["kty"].as_str(), raw_jwk["use"].as_str(), raw_jwk["alg"].as_str()),
            (Some("RSA"), Some("sig"), Some("RS256"))
        );
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&[EXCHANGE]);
        validation.set_issuer(&[s.service_account_issuer()]);
        jsonwebtoken::decode::<Value>(token, &key, &validation).expect("verifies with the published key");
        s.shutdown().await;
    }

    #[tokio::test]
    async fn token_request_defaults_bounds_and_cap_are_kube_apiservers() {
        let s = server().await;
        create_sa(&s, "default", "partner").await;
        let admin = s.admin_token();
        let post = |body: Value| {
            let s = &s;
            let admin = &admin;
            async move { raw(s, admin, "POST", &token_path("default", "partner"), "application/json", Some(body)).await }
        };
        // no audiences: the API server's own (the issuer); no expiration: one hour
        let (code, tr) = post(token_request(&[], None)).await;
        assert_eq!(code, 201, "{tr}");
        assert_eq!(tr["spec"]["audiences"], json!([s.service_account_issuer()]));
        assert_eq!(tr["spec"]["expirationSeconds"], 3600);
        for (seconds, why) in [
            (599, "may not specify a duration less than 10 minutes"),
            ((1i64 << 32) + 1, "may not specify a duration larger than 2^32 seconds"),
        ] {
            let (code, status) = post(token_request(&[EXCHANGE], Some(seconds))).await;
            assert_eq!((code, status["reason"].as_str()), (422, Some("Invalid")), "{status}");
            assert_eq!(
                status["message"],
                format!(
                    "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: {seconds}: {why}"
                )
            );
            assert_eq!(status["details"]["causes"][0]["field"], "spec.expirationSeconds");
        }
        let (code, tr) = post(token_request(&[EXCHANGE], Some(600))).await;
        assert_eq!((code, tr["spec"]["expirationSeconds"].as_i64()), (201, Some(600)));
        // over the server's maximum (24 h by default): shortened, with a warning
        let r = reqwest::Client::new()
            .post(format!("{}{}", s.url(), token_path("default", "partner")))
            .bearer_auth(&admin)
            .json(&token_request(&[EXCHANGE], Some(48 * 3600)))
            .send()
            .await
            .unwrap();
        let warning = r.headers().get("warning").map(|w| w.to_str().unwrap().to_string());
        let tr: Value = r.json().await.unwrap();
        assert_eq!(tr["spec"]["expirationSeconds"], 86400);
        assert_eq!(
            warning.as_deref(),
            Some("299 - \"requested expiration of 172800 seconds shortened to 86400 seconds\"")
        );
        // the body's name must be the URL's
        let mut named = token_request(&[EXCHANGE], None);
        named["metadata"] = json!({"name": "other"});
        let (code, status) = post(named).await;
        assert_eq!(code, 422, "{status}");
        assert!(status["message"].as_str().unwrap().contains("must match the service account name if specified"));
        s.shutdown().await;
    }

    #[tokio::test]
    async fn token_request_is_rbac_checked_and_needs_the_service_account() {
        let s = server().await;
        create_sa(&s, "default", "partner").await;
        create_sa(&s, "default", "other").await;
        let operator = s.service_account_token("default", "operator");
        let body = token_request(&[EXCHANGE], None);
        let (code, status) =
            raw(&s, &operator, "POST", &token_path("default", "partner"), "application/json", Some(body.clone())).await;
        assert_eq!((code, status["reason"].as_str()), (403, Some("Forbidden")), "{status}");
        assert_eq!(
            status["message"],
            "serviceaccounts \"partner\" is forbidden: User \"system:serviceaccount:default:operator\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"default\""
        );
        let rbac = [
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "mint"},
                   "rules": [{"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"],
                              "resourceNames": ["partner"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "mint"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mint"},
                   "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": "default"}]}),
        ];
        for (object, plural) in rbac.iter().zip(["roles", "rolebindings"]) {
            let path = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/default/{plural}");
            let (code, _) = raw(&s, &s.admin_token(), "POST", &path, "application/json", Some(object.clone())).await;
            assert_eq!(code, 201);
        }
        let (code, _) =
            raw(&s, &operator, "POST", &token_path("default", "partner"), "application/json", Some(body.clone())).await;
        assert_eq!(code, 201, "allowed for the named ServiceAccount");
        let (code, _) =
            raw(&s, &operator, "POST", &token_path("default", "other"), "application/json", Some(body.clone())).await;
        assert_eq!(code, 403, "resourceNames limits it to that one");
        let (code, status) =
            raw(&s, &s.admin_token(), "POST", &token_path("default", "ghost"), "application/json", Some(body)).await;
        assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")), "{status}");
        assert_eq!(status["message"], "serviceaccounts \"ghost\" not found");
        assert_eq!(status["details"], json!({"name": "ghost", "kind": "serviceaccounts"}));
        s.shutdown().await;
    }

    #[tokio::test]
    async fn issued_tokens_authenticate_as_the_service_account_for_the_api_audience_only() {
        let s = server().await;
        create_sa(&s, "default", "partner").await;
        let mint = |audiences: Vec<&'static str>| {
            let s = &s;
            async move {
                let (code, tr) = raw(
                    s,
                    &s.admin_token(),
                    "POST",
                    &token_path("default", "partner"),
                    "application/json",
                    Some(token_request(&audiences, None)),
                )
                .await;
                assert_eq!(code, 201, "{tr}");
                tr["status"]["token"].as_str().unwrap().to_string()
            }
        };
        let api_token = mint(vec![]).await;
        let (code, status) = raw(&s, &api_token, "GET", "/api/v1/namespaces/default/secrets", "", None).await;
        assert_eq!(code, 403, "authenticated, not authorised: {status}");
        assert!(status["message"].as_str().unwrap().contains("User \"system:serviceaccount:default:partner\""));
        let exchange_token = mint(vec![EXCHANGE]).await;
        let (code, _) = raw(&s, &exchange_token, "GET", "/api/v1/namespaces/default/secrets", "", None).await;
        assert_eq!(code, 401, "a token for another audience is not for the API server");
        // an expired token, and one whose ServiceAccount is gone, no longer authenticate
        let issuer = s.service_account_issuer();
        let old = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
        let expired =
            s.service_account_jwt_at("default", "partner", &[&issuer], old, Duration::from_secs(600)).unwrap();
        let (code, _) = raw(&s, &expired, "GET", "/api/v1/namespaces/default/secrets", "", None).await;
        assert_eq!(code, 401);
        let (code, _) =
            raw(&s, &s.admin_token(), "DELETE", "/api/v1/namespaces/default/serviceaccounts/partner", "", None).await;
        assert_eq!(code, 200);
        let (code, _) = raw(&s, &api_token, "GET", "/api/v1/namespaces/default/secrets", "", None).await;
        assert_eq!(code, 401);
        s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kubectl_create_token() {
        let s = server().await;
        let k = Kubectl::new(&s, &s.admin_token(), "token");
        k.ok(&["create", "serviceaccount", "partner", "-n", "default"]).await;
        let token =
            k.ok(&["create", "token", "partner", "--audience", EXCHANGE, "--duration", "20m", "-n", "default"]).await;
        let claims = jwt_part(token.trim(), 1);
        assert_eq!(claims["aud"], json!([EXCHANGE]));
        assert_eq!(claims["sub"], "system:serviceaccount:default:partner");
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 1200);
        let (ok, _, err) = k.run(&["create", "token", "ghost", "-n", "default"]).await;
        assert!(!ok && err.contains("serviceaccounts \"ghost\" not found"), "{err}");
        s.shutdown().await;
    }
}

/// Events as kube-apiserver validates and prints them: an events.k8s.io/v1 Event needs its
/// `eventTime`, a type, a reporting controller and instance, an action and a reason, and may not
/// set the deprecated core fields (`deprecatedLastTimestamp`, …), which the server never fills
/// in; so its core/v1 view has no `lastTimestamp`/`firstTimestamp`/`count`/`source`, and
/// `kubectl get events` shows its times from `eventTime` and `series`, its count from the series
/// (1 for a single event) and its source from the reporting controller and instance. Through
/// events.k8s.io/v1 only the series of an Event may change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_validated_and_printed_as_kube_apiserver_does() {
    let s = server().await;
    let admin = s.admin_token();
    let v1 = "/apis/events.k8s.io/v1/namespaces/default/events";
    let event = |name: &str| {
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "default"},
            "eventTime": "2026-11-29T10:00:00.000000Z",
            "type": "Warning", "reason": "InvalidSecret", "action": "Validate",
            "note": "Entra rejected the client secret",
            "reportingController": "defender-operator", "reportingInstance": "defender-operator-7d9f",
            "regarding": {"apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner", "namespace": "default", "name": "defender"},
        })
    };
    let causes = |body: &Value| -> Vec<(String, String)> {
        body["details"]["causes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| (c["field"].as_str().unwrap().to_string(), c["message"].as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };

    // The deprecated fields may not be set through events.k8s.io/v1; nor may the new ones be
    // missing.
    let mut deprecated = event("deprecated");
    deprecated["deprecatedLastTimestamp"] = json!("2026-11-29T10:00:00Z");
    deprecated["deprecatedFirstTimestamp"] = json!("2026-11-29T10:00:00Z");
    deprecated["deprecatedCount"] = json!(3);
    deprecated["deprecatedSource"] = json!({"component": "kubelet"});
    let (code, body) = raw(&s, &admin, "POST", v1, "application/json", Some(deprecated)).await;
    assert_eq!(code, 422, "{body}");
    let got = causes(&body);
    for field in ["deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedCount", "deprecatedSource"] {
        assert!(got.contains(&(field.into(), "Invalid value: \"\": needs to be unset".into())), "{field}: {got:?}");
    }
    let mut untimed = event("untimed");
    untimed.as_object_mut().unwrap().remove("eventTime");
    untimed["type"] = json!("Info");
    let (code, body) = raw(&s, &admin, "POST", v1, "application/json", Some(untimed)).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        causes(&body),
        [
            ("eventTime".to_string(), "Required value".to_string()),
            ("type".to_string(), "Invalid value: \"\": has invalid value: Info".to_string())
        ]
    );
    let mut anonymous = event("anonymous");
    for field in ["reportingController", "reportingInstance", "action"] {
        anonymous.as_object_mut().unwrap().remove(field);
    }
    let (code, body) = raw(&s, &admin, "POST", v1, "application/json", Some(anonymous)).await;
    assert_eq!(code, 422, "{body}");
    let fields: Vec<String> = causes(&body).into_iter().map(|c| c.0).collect();
    assert_eq!(fields, ["reportingController", "reportingInstance", "action"], "{body}");
    let mut long = event("long");
    long["reason"] = json!("R".repeat(129));
    long["note"] = json!("n".repeat(1025));
    let (code, body) = raw(&s, &admin, "POST", v1, "application/json", Some(long)).await;
    assert_eq!(code, 422, "{body}");
    assert!(causes(&body).contains(&("reason".into(), "Invalid value: \"\": can have at most 128 characters".into())));
    assert!(
        causes(&body).contains(&("message".into(), "Invalid value: \"\": can have at most 1024 characters".into()))
    );

    // A valid one, and its core/v1 view: no deprecated fields filled in.
    let (code, body) = raw(&s, &admin, "POST", v1, "application/json", Some(event("single"))).await;
    assert_eq!(code, 201, "{body}");
    let (_, core) = raw(&s, &admin, "GET", "/api/v1/namespaces/default/events/single", "", None).await;
    for absent in ["firstTimestamp", "lastTimestamp", "count", "source"] {
        assert!(core[absent].is_null(), "{absent} in {core}");
    }
    assert_eq!(core["eventTime"], "2026-11-29T10:00:00.000000Z");
    assert_eq!(core["reportingComponent"], "defender-operator");
    assert_eq!(core["message"], "Entra rejected the client secret");

    // Through events.k8s.io/v1 only the series may change; and a series counts at least 2.
    let path = format!("{v1}/single");
    let merge = "application/merge-patch+json";
    let (code, body) = raw(&s, &admin, "PATCH", &path, merge, Some(json!({"note": "changed"}))).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(causes(&body), [("message".to_string(), "Invalid value: field is immutable".to_string())]);
    let series = |count: i64| json!({"series": {"count": count, "lastObservedTime": "2026-11-29T10:05:00.000000Z"}});
    let (code, body) = raw(&s, &admin, "PATCH", &path, merge, Some(series(1))).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(causes(&body)[0].0, "series.count");
    let (code, body) = raw(&s, &admin, "PATCH", &path, merge, Some(series(4))).await;
    assert_eq!(code, 200, "{body}");

    // A core/v1 Event as the kubelet writes it: with lastTimestamp, count and source.
    let kubelet = json!({
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "kubelet-pulled", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "default", "fieldPath": "spec.containers{web}"},
        "reason": "Pulled", "message": "Container image pulled", "type": "Normal",
        "firstTimestamp": "2026-11-29T09:00:00Z", "lastTimestamp": "2026-11-29T09:30:00Z", "count": 3,
        "source": {"component": "kubelet", "host": "node-1"},
    });
    let (code, body) =
        raw(&s, &admin, "POST", "/api/v1/namespaces/default/events", "application/json", Some(kubelet)).await;
    assert_eq!(code, 201, "{body}");

    let k = Kubectl::new(&s, &admin, "events-printer");
    let out = k.ok(&["get", "events", "-o", "wide"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "LAST",
            "SEEN",
            "TYPE",
            "REASON",
            "OBJECT",
            "SUBOBJECT",
            "SOURCE",
            "MESSAGE",
            "FIRST",
            "SEEN",
            "COUNT",
            "NAME"
        ],
        "{out}"
    );
    let row =
        |name: &str| out.lines().find(|l| l.trim_end().ends_with(name)).unwrap_or_else(|| panic!("{name}: {out}"));
    let single = row("single");
    assert!(single.contains("defenderpartner/defender"), "{single}");
    assert!(single.contains("defender-operator, defender-operator-7d9f"), "source from the reporting fields: {single}");
    assert!(single.contains("   4   "), "the series' count: {single}");
    let pulled = row("kubelet-pulled");
    assert!(pulled.contains("spec.containers{web}") && pulled.contains("kubelet, node-1"), "{pulled}");
    assert!(pulled.contains("   3   "), "{pulled}");

    // Sorting by lastTimestamp sorts the events that have one; the others (events.k8s.io/v1)
    // come first, with their LAST SEEN from eventTime or series, as on any cluster.
    let out = k.ok(&["get", "events", "--sort-by=.lastTimestamp"]).await;
    let reasons: Vec<&str> = out.lines().skip(1).map(|l| l.split_whitespace().nth(2).unwrap_or_default()).collect();
    assert_eq!(reasons, ["InvalidSecret", "Pulled"], "{out}");
    // `kubectl events` orders by the newest time of each, events.k8s.io/v1 ones included.
    let out = k.ok(&["events"]).await;
    assert!(out.contains("InvalidSecret") && out.contains("Pulled"), "{out}");
    s.shutdown().await;
}

/// As kube-apiserver's watch cache and etcd: a busy server keeps recent changes for resuming
/// watches beyond its least history size, and a list's continue token outlives the watch history
/// (it lasts until storage compaction), so a client that lists slowly under heavy writes still
/// finishes its list.
#[tokio::test]
async fn under_heavy_writes_watches_resume_and_paginated_lists_finish() {
    let config = ApiServerConfig { watch_history: 5, ..Default::default() };
    let s = KubeApiServer::start(config).await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(s.admin_client());
    let cm = |name: String| -> ConfigMap { serde_json::from_value(json!({"metadata": {"name": name}})).unwrap() };
    cms.create(&PostParams::default(), &cm("a-0".into())).await.unwrap();
    let first = cms.create(&PostParams::default(), &cm("a-1".into())).await.unwrap();
    let page1 = cms.list(&ListParams::default().limit(1)).await.unwrap();
    // Far more changes than the least history, within the fresh duration.
    for i in 1..50 {
        cms.create(&PostParams::default(), &cm(format!("c-{i}"))).await.unwrap();
    }
    let rv = first.metadata.resource_version.unwrap();
    let resumed =
        watch_req(&s, &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}")).await;
    let events = read_events(resumed, 49, Duration::from_secs(5)).await;
    assert_eq!(events.len(), 49);
    assert!(events.iter().all(|e| e["type"] == "ADDED"), "{events:?}");
    // The list begun before those changes goes on from its token, as of its first page.
    let token = page1.metadata.continue_.clone().unwrap();
    let page2 = cms.list(&ListParams::default().limit(100).continue_token(&token)).await.unwrap();
    assert_eq!(page2.metadata.resource_version, page1.metadata.resource_version);
    assert_eq!(page2.items[0].metadata.name.as_deref(), Some("a-1"));
    // Compacted storage expires the token.
    s.expire_watch_history();
    let e = api_err(cms.list(&ListParams::default().limit(1).continue_token(&token)).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
    s.shutdown().await;
}
