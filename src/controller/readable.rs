//! Partners and findings are watched as untyped objects and read one by one, so that one the API
//! server accepted but the operator cannot read (a CRD newer or older than the operator, a schema
//! looser than the types) is reported on its own — `UnsupportedSpec` for a partner,
//! `InvalidFinding` for a finding — instead of failing the list and stalling every other one.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;

use kube::api::{DynamicObject, ObjectMeta};
use kube::runtime::watcher::Event;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::finding::TestRef;
use crate::api::{ClusterDefenderPartner, DefenderPartner, ProbeFinding, ProbeFindingSpec};

/// A kind read one by one: what stands in for an object the operator cannot read.
pub trait Readable: DeserializeOwned {
    /// The object with its metadata and status, and a spec that does nothing harmful: it pushes
    /// nothing and withdraws nothing.
    fn stand_in(metadata: ObjectMeta, data: &Value) -> Self;
}

impl Readable for ProbeFinding {
    fn stand_in(metadata: ObjectMeta, data: &Value) -> Self {
        let spec = ProbeFindingSpec {
            test: TestRef { id: String::new(), name: String::new() },
            endpoint: None,
            state: None,
            code: None,
            observed_time: None,
            indicators: Vec::new(),
            partner_ref: None,
        };
        ProbeFinding { metadata, spec, status: readable_status(data) }
    }
}

impl Readable for ClusterDefenderPartner {
    /// As for a DefenderPartner, and no namespace is selected.
    fn stand_in(metadata: ObjectMeta, data: &Value) -> Self {
        let partner = DefenderPartner::stand_in(metadata.clone(), data);
        let selects_nothing = serde_json::json!({"matchExpressions": [
            {"key": "detect.dev/unreadable-partner", "operator": "Exists"},
            {"key": "detect.dev/unreadable-partner", "operator": "DoesNotExist"}
        ]});
        let spec = crate::api::ClusterDefenderPartnerSpec {
            partner: partner.spec,
            namespace_selector: serde_json::from_value(selects_nothing).ok(),
        };
        ClusterDefenderPartner { metadata, spec, status: partner.status }
    }
}

impl Readable for DefenderPartner {
    /// Keeps what can still be read on its own (which findings it selects, whether it is
    /// suspended, its deletion policy), so its findings and its deletion stay as they were.
    fn stand_in(metadata: ObjectMeta, data: &Value) -> Self {
        let spec = &data["spec"];
        let mut readable = serde_json::json!({"credentials": {"secretRef": {"name": ""}}});
        for field in ["findingSelector", "suspend", "deletionPolicy"] {
            let mut one = readable.clone();
            one[field] = spec[field].clone();
            if !spec[field].is_null() && serde_json::from_value::<crate::api::DefenderPartnerSpec>(one).is_ok() {
                readable[field] = spec[field].clone();
            }
        }
        let spec = serde_json::from_value(readable).expect("the stand-in spec reads");
        DefenderPartner { metadata, spec, status: readable_status(data) }
    }
}

/// The status the operator wrote is readable on its own; keeping it means an unchanged verdict is
/// not written again.
fn readable_status<S: DeserializeOwned>(data: &Value) -> Option<S> {
    serde_json::from_value(data["status"].clone()).ok()
}

/// Why each unreadable object (`namespace/name`) of kind `K` could not be read.
pub struct Unreadable<K>(Mutex<HashMap<String, String>>, PhantomData<fn() -> K>);

impl<K> Default for Unreadable<K> {
    fn default() -> Self {
        Self(Mutex::default(), PhantomData)
    }
}

impl<K: Readable + kube::Resource> Unreadable<K> {
    /// The watch event with its object read as a `K`.
    pub fn read(&self, event: Event<DynamicObject>) -> Event<K> {
        match event {
            Event::Apply(object) => Event::Apply(self.object(object)),
            Event::InitApply(object) => Event::InitApply(self.object(object)),
            Event::Delete(object) => {
                let object = self.object(object);
                self.0.lock().unwrap().remove(&key(object.meta()));
                Event::Delete(object)
            }
            Event::Init => Event::Init,
            Event::InitDone => Event::InitDone,
        }
    }

    /// Why this object could not be read, if it could not.
    pub fn why(&self, object: &K) -> Option<String> {
        self.why_meta(object.meta())
    }

    /// [`Self::why`] by the object's metadata.
    pub fn why_meta(&self, metadata: &ObjectMeta) -> Option<String> {
        self.0.lock().unwrap().get(&key(metadata)).cloned()
    }

    /// The object, or its stand-in.
    fn object(&self, object: DynamicObject) -> K {
        let key = key(&object.metadata);
        let DynamicObject { types, metadata, data } = object;
        // The object as the API server sent it, its data moved rather than copied: every finding
        // passes here, at a restart all of them at once.
        let mut whole = data;
        if let Value::Object(fields) = &mut whole {
            if let Some(types) = types {
                fields.insert("apiVersion".into(), Value::String(types.api_version));
                fields.insert("kind".into(), Value::String(types.kind));
            }
            fields.insert("metadata".into(), serde_json::to_value(&metadata).unwrap_or_default());
        }
        // The error names the field (`spec.code: invalid value …`).
        let read = serde_path_to_error::deserialize::<_, K>(&whole).map_err(|e| format!("{}: {}", e.path(), e.inner()));
        let mut unreadable = self.0.lock().unwrap();
        match read {
            Ok(read) => {
                unreadable.remove(&key);
                read
            }
            Err(error) => {
                unreadable.insert(key, error);
                K::stand_in(metadata, &whole)
            }
        }
    }
}

fn key(metadata: &ObjectMeta) -> String {
    format!("{}/{}", metadata.namespace.as_deref().unwrap_or_default(), metadata.name.as_deref().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "detect.dev/v1alpha1", "kind": "ProbeFinding",
            "metadata": {"name": "f", "namespace": "team", "generation": 2}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn an_unreadable_finding_becomes_a_stand_in_until_it_is_fixed_or_deleted() {
        let unreadable = Unreadable::<ProbeFinding>::default();
        let bad =
            object(serde_json::json!({"test": {"id": "x", "name": "y"}, "code": 4294967296u64, "indicators": []}));
        let Event::Apply(finding) = unreadable.read(Event::Apply(bad.clone())) else { panic!("an Apply") };
        assert_eq!(finding.metadata.generation, Some(2));
        assert!(finding.spec.indicators.is_empty());
        let why = unreadable.why(&finding).unwrap();
        assert!(why.starts_with("spec.code: invalid value"), "{why}");

        let good = object(serde_json::json!({"test": {"id": "x", "name": "y"}, "code": 101,
            "indicators": [{"type": "FileMd5", "value": "d41d8cd98f00b204e9800998ecf8427e"}]}));
        let Event::Apply(finding) = unreadable.read(Event::Apply(good)) else { panic!("an Apply") };
        assert_eq!(finding.spec.code, Some(101));
        assert_eq!(unreadable.why(&finding), None, "fixed");

        unreadable.read(Event::Apply(bad.clone()));
        let Event::Delete(finding) = unreadable.read(Event::Delete(bad)) else { panic!("a Delete") };
        assert_eq!(unreadable.why(&finding), None, "forgotten once deleted");
    }

    #[test]
    fn an_unreadable_partner_keeps_what_can_be_read_and_nothing_else() {
        let unreadable = Unreadable::<DefenderPartner>::default();
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
            "metadata": {"name": "p", "namespace": "team"},
            "spec": {"credentials": {"type": "ManagedIdentity", "managedIdentity": {"clientId": "c"}},
                     "findingSelector": {"matchLabels": {"team": "red"}}, "deletionPolicy": "Delete",
                     "suspend": "not a bool"},
            "status": {"state": "Attached", "reason": "Attached"}
        }))
        .unwrap();
        let Event::Apply(partner) = unreadable.read(Event::Apply(object)) else { panic!("an Apply") };
        let why = unreadable.why(&partner).unwrap();
        assert!(why.starts_with("spec.credentials"), "{why}");
        assert_eq!(partner.spec.deletion_policy, crate::api::DeletionPolicy::Delete);
        assert!(partner.spec.finding_selector.is_some());
        assert!(!partner.spec.suspend, "an unreadable field falls back to its default");
        assert_eq!(partner.status.and_then(|s| s.reason).as_deref(), Some("Attached"));
    }
}
