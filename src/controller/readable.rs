//! Findings are watched as untyped objects and read one by one, so that one the API server
//! accepted but the operator cannot read (a CRD version skew, a schema looser than the types)
//! becomes an `InvalidFinding` of its own instead of failing the list and stalling every finding.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::DynamicObject;
use kube::runtime::watcher::Event;

use crate::api::finding::TestRef;
use crate::api::{ProbeFinding, ProbeFindingSpec};

/// Why each unreadable finding (`namespace/name`) could not be read.
#[derive(Default)]
pub struct Unreadable(Mutex<HashMap<String, String>>);

impl Unreadable {
    /// The watch event with its object read as a finding.
    pub fn read(&self, event: Event<DynamicObject>) -> Event<ProbeFinding> {
        match event {
            Event::Apply(object) => Event::Apply(self.finding(object)),
            Event::InitApply(object) => Event::InitApply(self.finding(object)),
            Event::Delete(object) => {
                let finding = self.finding(object);
                self.0.lock().unwrap().remove(&key(&finding.metadata));
                Event::Delete(finding)
            }
            Event::Init => Event::Init,
            Event::InitDone => Event::InitDone,
        }
    }

    /// Why this finding could not be read, if it could not.
    pub fn why(&self, finding: &ProbeFinding) -> Option<String> {
        self.0.lock().unwrap().get(&key(&finding.metadata)).cloned()
    }

    /// The finding, or a stand-in with its metadata and no indicators (which pushes nothing).
    fn finding(&self, object: DynamicObject) -> ProbeFinding {
        let key = key(&object.metadata);
        // The error names the field (`spec.code: invalid value …`).
        let read = serde_json::to_value(&object).map_err(|e| e.to_string()).and_then(|value| {
            serde_path_to_error::deserialize::<_, ProbeFinding>(value)
                .map_err(|e| format!("{}: {}", e.path(), e.inner()))
        });
        let mut unreadable = self.0.lock().unwrap();
        match read {
            Ok(finding) => {
                unreadable.remove(&key);
                finding
            }
            Err(error) => {
                unreadable.insert(key, error);
                let spec = ProbeFindingSpec {
                    test: TestRef { id: String::new(), name: String::new() },
                    endpoint: None,
                    state: None,
                    code: None,
                    observed_time: None,
                    indicators: Vec::new(),
                    partner_ref: None,
                };
                // The status the operator wrote is readable on its own; keeping it means an
                // unchanged verdict is not written again.
                let status = serde_json::from_value(object.data["status"].clone()).ok();
                ProbeFinding { metadata: object.metadata, spec, status }
            }
        }
    }
}

fn key(metadata: &kube::api::ObjectMeta) -> String {
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
        let unreadable = Unreadable::default();
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
}
