//! Status writes: by server-side apply, only when the status changed — as far as the API server
//! keeps it. An installed CRD older than the operator prunes the status fields it does not know;
//! without remembering which, the operator would see its write "not stick" and write the same
//! status on every pass, for ever (and a pruned timestamp would even look new each time).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Mutex;

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::object::HasStatus;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::warn;

use super::{Context, Error};
use crate::api::partner::DefenderPartnerStatus;
use crate::api::{CLUSTER_KIND, ClusterDefenderPartner, DefenderPartner, MANAGER};

/// Per kind, the status fields the API server dropped from the operator's writes, as paths
/// (`deliveries.*.submittedTime`).
#[derive(Default)]
pub struct Pruned(Mutex<HashMap<&'static str, BTreeSet<String>>>);

impl Pruned {
    /// Whether `intended` differs from `current` in what the API server keeps.
    fn needed<S: Serialize>(&self, kind: &'static str, intended: &S, current: Option<&S>) -> bool {
        let (Ok(mut intended), Ok(current)) = (serde_json::to_value(intended), serde_json::to_value(current)) else {
            return true;
        };
        if let Some(paths) = self.0.lock().unwrap().get(kind) {
            for path in paths {
                remove(&mut intended, &path.split('.').collect::<Vec<_>>());
            }
        }
        intended != current
    }

    /// Whether the API server was found not to keep this status field (`protectedTime`) of `kind`.
    pub fn drops(&self, kind: &str, path: &str) -> bool {
        self.0.lock().unwrap().get(kind).is_some_and(|paths| paths.contains(path))
    }

    /// Learns from what the server `kept` of a write; returns the paths newly found dropped.
    fn learn<S: Serialize>(&self, kind: &'static str, intended: &S, kept: Option<&S>) -> Vec<String> {
        let (Ok(intended), Ok(kept)) = (serde_json::to_value(intended), serde_json::to_value(kept)) else {
            return Vec::new();
        };
        let mut dropped = BTreeSet::new();
        missing(&intended, &kept, "", &mut dropped);
        let mut pruned = self.0.lock().unwrap();
        let known = pruned.entry(kind).or_default();
        // A field the server keeps again (the CRDs were upgraded) is written again.
        known.retain(|path| !present(&kept, &path.split('.').collect::<Vec<_>>()));
        dropped.into_iter().filter(|path| known.insert(path.clone())).collect()
    }
}

/// The paths of `intended`'s fields that `kept` lacks (arrays element by element, as `*`).
fn missing(intended: &Value, kept: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match (intended, kept) {
        (Value::Object(intended), Value::Object(kept)) => {
            for (key, value) in intended {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                match kept.get(key) {
                    None => {
                        out.insert(path);
                    }
                    Some(kept) => missing(value, kept, &path, out),
                }
            }
        }
        (Value::Array(intended), Value::Array(kept)) => {
            for (value, kept) in intended.iter().zip(kept) {
                missing(value, kept, &format!("{prefix}.*"), out);
            }
        }
        _ => {}
    }
}

fn remove(value: &mut Value, path: &[&str]) {
    match (value, path) {
        (Value::Object(object), [key]) => {
            object.remove(*key);
        }
        (Value::Object(object), [key, rest @ ..]) => {
            if let Some(inner) = object.get_mut(*key) {
                remove(inner, rest);
            }
        }
        (Value::Array(items), ["*", rest @ ..]) => items.iter_mut().for_each(|item| remove(item, rest)),
        _ => {}
    }
}

fn present(value: &Value, path: &[&str]) -> bool {
    match (value, path) {
        (_, []) => true,
        (Value::Object(object), [key, rest @ ..]) => object.get(*key).is_some_and(|inner| present(inner, rest)),
        (Value::Array(items), ["*", rest @ ..]) => items.iter().any(|item| present(item, rest)),
        _ => false,
    }
}

/// Writes `intended` as `object`'s status by server-side apply when it differs from the current
/// status in what the API server keeps; returns whether it wrote.
pub async fn write<K>(ctx: &Context, object: &K, intended: &K::Status) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + HasStatus
        + Clone
        + Debug
        + DeserializeOwned,
    K::Status: Serialize + DeserializeOwned + PartialEq + Clone,
{
    let kind = match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(_) => "Other",
    };
    let api = Api::namespaced_with(
        ctx.client.clone(),
        &object.namespace().unwrap_or_default(),
        &ApiResource::erase::<K>(&()),
    );
    write_to(ctx, api, kind, &object.name_any(), object.status(), intended).await
}

/// [`write`] for a partner of either kind: a ClusterDefenderPartner's view writes to it.
pub async fn write_partner(
    ctx: &Context,
    partner: &DefenderPartner,
    intended: &DefenderPartnerStatus,
) -> Result<bool, Error> {
    let api = match &partner.metadata.namespace {
        Some(namespace) => {
            Api::namespaced_with(ctx.client.clone(), namespace, &ApiResource::erase::<DefenderPartner>(&()))
        }
        None => Api::all_with(ctx.client.clone(), &ApiResource::erase::<ClusterDefenderPartner>(&())),
    };
    let kind = if partner.is_cluster_wide() { CLUSTER_KIND } else { "DefenderPartner" };
    write_to(ctx, api, kind, &partner.name_any(), partner.status.as_ref(), intended).await
}

async fn write_to<S>(
    ctx: &Context,
    api: Api<DynamicObject>,
    kind: &'static str,
    name: &str,
    current: Option<&S>,
    intended: &S,
) -> Result<bool, Error>
where
    S: Serialize + DeserializeOwned + PartialEq,
{
    if current == Some(intended) || !ctx.pruned.needed(kind, intended, current) {
        return Ok(false);
    }
    // Untyped: the stored object is read back for its status only, so an object whose spec this
    // operator cannot read (see `readable`) still gets its status.
    let patch = serde_json::json!({"apiVersion": "detect.dev/v1alpha1", "kind": kind, "status": intended});
    let params = PatchParams::apply(MANAGER).force();
    let stored = api.patch_status(name, &params, &Patch::Apply(&patch)).await?;
    let kept: Option<S> = serde_json::from_value(stored.data["status"].clone()).ok();
    for path in ctx.pruned.learn(kind, intended, kept.as_ref()) {
        warn!(kind, field = %format!("status.{path}"), "the API server does not keep this status field: the installed \
              CRD is older than the operator (upgrade the CRDs); it is no longer written");
        ctx.metrics.status_writes_not_kept.get_or_create(&crate::telemetry::metrics::KindLabels { kind }).inc();
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_field_the_server_prunes_is_learned_and_no_longer_makes_a_write_needed() {
        let pruned = Pruned::default();
        let intended = json!({"state": "a", "deliveries": [{"id": "1", "submittedTime": "t1"}]});
        let kept = json!({"state": "a", "deliveries": [{"id": "1"}]});
        assert!(pruned.needed("K", &intended, Some(&kept)));
        assert_eq!(pruned.learn("K", &intended, Some(&kept)), ["deliveries.*.submittedTime"]);
        assert!(pruned.learn("K", &intended, Some(&kept)).is_empty(), "learned once");
        // The pruned timestamp moves on every pass: still nothing to write.
        let later = json!({"state": "a", "deliveries": [{"id": "1", "submittedTime": "t2"}]});
        assert!(!pruned.needed("K", &later, Some(&kept)));
        // A change the server keeps is written; other kinds are unaffected.
        assert!(pruned.needed("K", &json!({"state": "b", "deliveries": [{"id": "1"}]}), Some(&kept)));
        assert!(pruned.needed("Other", &later, Some(&kept)));
    }

    #[test]
    fn a_field_kept_again_after_a_crd_upgrade_is_written_again() {
        let pruned = Pruned::default();
        let intended = json!({"quota": {"used": 1}, "state": "a"});
        pruned.learn("K", &intended, Some(&json!({"state": "a"})));
        assert!(!pruned.needed("K", &intended, Some(&json!({"state": "a"}))));
        // Another write (a real change) comes back with the field: it is known again.
        let changed = json!({"quota": {"used": 2}, "state": "b"});
        assert!(pruned.learn("K", &changed, Some(&changed)).is_empty());
        assert!(pruned.needed("K", &intended, Some(&json!({"state": "a"}))));
    }

    #[test]
    fn an_unchanged_status_is_never_written() {
        let status = json!({"state": "a"});
        assert!(!Pruned::default().needed("K", &status, Some(&status)));
    }
}
