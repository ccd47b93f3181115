//! In-memory object storage: one global resourceVersion, a window of change events for watches
//! (sized as kube-apiserver's watch cache is), and a broadcast channel to live watchers.

use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

use super::registry::ResourceDef;

pub type ResKey = (String, String);
pub type ObjKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history window and sent to watchers.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub res: ResKey,
    pub namespace: String,
    pub kind: EventType,
    pub object: Value,
    pub old: Option<Value>,
}

pub struct Store {
    pub rv: u64,
    objects: HashMap<ResKey, BTreeMap<ObjKey, Value>>,
    pub history: VecDeque<Arc<Change>>,
    /// When each change of `history` was recorded.
    recorded: VecDeque<Instant>,
    /// The highest resourceVersion dropped from the history window (watches from below it get 410).
    pub compacted: u64,
    /// The highest resourceVersion storage compacted away (the compaction fault): lists continued
    /// or pinned (`Exact`) below it get 410.
    pub storage_compacted: u64,
    window: HistoryWindow,
    pub tx: broadcast::Sender<Arc<Change>>,
    /// Custom resources defined by CRDs, by (group, plural).
    pub custom: BTreeMap<ResKey, ResourceDef>,
}

/// How many changes the watch history keeps. kube-apiserver's watch cache keeps at least 100,
/// keeps every change younger than 75 s, and at most 102,400 (`eventFreshDuration`,
/// `lowerBoundCapacity`, `upperBoundCapacity` in k8s.io/apiserver's cacher).
#[derive(Debug, Clone, Copy)]
pub struct HistoryWindow {
    pub least: usize,
    pub fresh: Duration,
    pub most: usize,
}

pub fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

impl Store {
    pub fn new(window: HistoryWindow) -> Self {
        let (tx, _) = broadcast::channel(8192);
        Store {
            rv: 1,
            objects: HashMap::new(),
            history: VecDeque::new(),
            recorded: VecDeque::new(),
            compacted: 0,
            storage_compacted: 0,
            window: HistoryWindow { least: window.least.max(1), ..window },
            tx,
            custom: BTreeMap::new(),
        }
    }

    pub fn get(&self, res: &ResKey, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(res).and_then(|m| m.get(&(ns.to_string(), name.to_string())))
    }

    /// Objects of a resource in key order after `after` (a (namespace, name) key; none: from the
    /// first); `ns` None means all namespaces. A page of a long list costs its own length.
    pub fn list_after<'a>(
        &'a self,
        res: &ResKey,
        ns: Option<&'a str>,
        after: Option<&ObjKey>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        use std::ops::Bound;
        let from = match (after, ns) {
            (Some(after), _) => Bound::Excluded(after.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        self.objects
            .get(res)
            .into_iter()
            .flat_map(move |m| m.range((from.clone(), Bound::Unbounded)))
            .take_while(move |((n, _), _)| ns.is_none_or(|ns| n == ns))
            .map(|(_, v)| v)
    }

    /// Objects of a resource, in key order; `ns` None means all namespaces.
    pub fn list<'a>(&'a self, res: &ResKey, ns: Option<&'a str>) -> Vec<&'a Value> {
        self.list_after(res, ns, None).collect()
    }

    pub fn resources_with_objects_in(&self, ns: &str) -> Vec<ResKey> {
        self.objects.iter().filter(|(_, m)| m.keys().any(|(n, _)| n == ns)).map(|(k, _)| k.clone()).collect()
    }

    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Forgets the change history and compacts storage: watches from any earlier
    /// resourceVersion, and lists continued from one, get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.recorded.clear();
        self.compacted = self.rv;
        self.storage_compacted = self.rv;
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        let now = Instant::now();
        self.history.push_back(change.clone());
        self.recorded.push_back(now);
        // As the watch cache: a change leaves once the window holds more than its least size and
        // the change is older than the fresh duration, or the window is at its most.
        while self.history.len() > self.window.least
            && (self.history.len() > self.window.most
                || self.recorded.front().is_some_and(|at| now.duration_since(*at) >= self.window.fresh))
        {
            self.recorded.pop_front();
            if let Some(c) = self.history.pop_front() {
                self.compacted = c.rv;
            }
        }
        let _ = self.tx.send(change);
    }

    /// Store `obj` (whose metadata.resourceVersion is already set to a fresh rv) and record it.
    pub fn put(&mut self, res: &ResKey, obj: Value) {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let rv = rv_of(&obj);
        let old = self.objects.entry(res.clone()).or_default().insert((ns.clone(), name), obj.clone());
        let kind = if old.is_some() { EventType::Modified } else { EventType::Added };
        self.record(Change { rv, res: res.clone(), namespace: ns, kind, object: obj, old });
    }

    /// Remove an object; the DELETED event carries it with a fresh resourceVersion.
    pub fn remove(&mut self, res: &ResKey, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self.objects.get_mut(res)?.remove(&(ns.to_string(), name.to_string()))?;
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.record(Change {
            rv,
            res: res.clone(),
            namespace: ns.to_string(),
            kind: EventType::Deleted,
            object: obj.clone(),
            old: None,
        });
        Some(obj)
    }

    /// Objects with an ownerReference to `uid`, as (resource, namespace, name).
    pub fn dependents_of(&self, uid: &str) -> Vec<(ResKey, String, String)> {
        let mut out = vec![];
        for (res, m) in &self.objects {
            for ((ns, name), o) in m {
                let owned = o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)));
                if owned {
                    out.push((res.clone(), ns.clone(), name.clone()));
                }
            }
        }
        out
    }

    pub fn uid_exists(&self, uid: &str) -> bool {
        self.objects.values().any(|m| m.values().any(|o| o["metadata"]["uid"].as_str() == Some(uid)))
    }

    pub fn drop_resource(&mut self, res: &ResKey) {
        let keys: Vec<ObjKey> = self.objects.get(res).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        for (ns, name) in keys {
            self.remove(res, &ns, &name);
        }
        self.objects.remove(res);
    }
}
