//! Server-side apply and `metadata.managedFields` tracking (fieldsV1 sets per manager).

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

use super::cause::Cause;
use super::patch::{ListType, child_schema, element_key, items_schema, list_type};

/// A field path in fieldsV1 notation: `f:spec`, `k:{"name":"a"}`, `v:"x"`.
pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// Which part of an object a write may touch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scope {
    /// Everything (no status subresource).
    All,
    /// Everything but status (main resource of a kind with a status subresource).
    NoStatus,
    /// Only status (the /status subresource).
    StatusOnly,
}

impl Scope {
    fn allows(self, p: &FieldPath) -> bool {
        let is_status = p.first().map(|s| s == "f:status").unwrap_or(false);
        match self {
            Scope::All => true,
            Scope::NoStatus => !is_status,
            Scope::StatusOnly => is_status,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ManagerEntry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

const META_TRACKED: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

/// The set of fields an object (or applied configuration) specifies.
pub fn fields_of(obj: &Value, schema: Option<&Value>, builtin: bool) -> FieldSet {
    let mut out = FieldSet::new();
    if let Some(m) = obj.as_object() {
        for (k, v) in m {
            match k.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" => {
                    if let Some(mm) = v.as_object() {
                        for (mk, mv) in mm {
                            if META_TRACKED.contains(&mk.as_str()) {
                                walk(
                                    mv,
                                    mk,
                                    child_schema(schema, "metadata").and_then(|s| child_schema(Some(s), mk)),
                                    builtin,
                                    vec!["f:metadata".into(), format!("f:{mk}")],
                                    &mut out,
                                );
                            }
                        }
                    }
                }
                _ => walk(v, k, child_schema(schema, k), builtin, vec![format!("f:{k}")], &mut out),
            }
        }
    }
    out
}

fn walk(v: &Value, name: &str, schema: Option<&Value>, builtin: bool, path: FieldPath, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, cv) in m {
                let mut p = path.clone();
                p.push(format!("f:{k}"));
                walk(cv, k, child_schema(schema, k), builtin, p, out);
            }
        }
        Value::Array(items) if !items.is_empty() => match list_type(schema, name, builtin) {
            ListType::Atomic => {
                out.insert(path);
            }
            ListType::Set => {
                for e in items {
                    let mut p = path.clone();
                    p.push(format!("v:{e}"));
                    out.insert(p);
                }
            }
            ListType::Map(keys) => {
                for e in items {
                    match element_key(e, &keys) {
                        Some(key) => {
                            let mut p = path.clone();
                            p.push(format!("k:{}", Value::Object(key)));
                            out.insert(p.clone());
                            if let Some(m) = e.as_object() {
                                for (k, cv) in m {
                                    let mut cp = p.clone();
                                    cp.push(format!("f:{k}"));
                                    walk(cv, k, child_schema(items_schema(schema), k), builtin, cp, out);
                                }
                            }
                        }
                        None => {
                            out.insert(path.clone());
                        }
                    }
                }
            }
        },
        _ => {
            out.insert(path);
        }
    }
}

/// The value at a field path.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for pe in path {
        cur = step(cur, pe)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, pe: &str) -> Option<&'a Value> {
    if let Some(f) = pe.strip_prefix("f:") {
        cur.get(f)
    } else if let Some(k) = pe.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        cur.as_array()?.iter().find(|e| key.iter().all(|(kk, kv)| e.get(kk) == Some(kv)))
    } else if let Some(v) = pe.strip_prefix("v:") {
        let val: Value = serde_json::from_str(v).ok()?;
        cur.as_array()?.iter().find(|e| **e == val)
    } else {
        None
    }
}

fn step_mut<'a>(cur: &'a mut Value, pe: &str) -> Option<&'a mut Value> {
    if let Some(f) = pe.strip_prefix("f:") {
        cur.get_mut(f)
    } else if let Some(k) = pe.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        cur.as_array_mut()?.iter_mut().find(|e| key.iter().all(|(kk, kv)| e.get(kk) == Some(kv)))
    } else {
        None
    }
}

/// Remove the field at `path`; returns whether something was removed.
pub fn remove_at(obj: &mut Value, path: &[String]) -> bool {
    let Some((last, parent_path)) = path.split_last() else { return false };
    let mut cur = obj;
    for pe in parent_path {
        match step_mut(cur, pe) {
            Some(n) => cur = n,
            None => return false,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        cur.as_object_mut().map(|m| m.remove(f).is_some()).unwrap_or(false)
    } else if let Some(k) = last.strip_prefix("k:") {
        let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else { return false };
        let Some(a) = cur.as_array_mut() else { return false };
        let before = a.len();
        a.retain(|e| !key.iter().all(|(kk, kv)| e.get(kk) == Some(kv)));
        a.len() != before
    } else if let Some(v) = last.strip_prefix("v:") {
        let Ok(val) = serde_json::from_str::<Value>(v) else { return false };
        let Some(a) = cur.as_array_mut() else { return false };
        let before = a.len();
        a.retain(|e| *e != val);
        a.len() != before
    } else {
        false
    }
}

/// Encode a field set as fieldsV1.
pub fn encode(set: &FieldSet) -> Value {
    #[derive(Default)]
    struct Node {
        member: bool,
        children: BTreeMap<String, Node>,
    }
    let mut root = Node::default();
    for p in set {
        let mut n = &mut root;
        for pe in p {
            n = n.children.entry(pe.clone()).or_default();
        }
        n.member = true;
    }
    fn to_json(n: &Node) -> Value {
        let mut m = Map::new();
        if n.member && !n.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &n.children {
            m.insert(k.clone(), to_json(c));
        }
        Value::Object(m)
    }
    to_json(&root)
}

/// Decode fieldsV1 into a field set.
pub fn decode(v: &Value) -> FieldSet {
    fn rec(v: &Value, prefix: &FieldPath, out: &mut FieldSet) {
        if let Some(m) = v.as_object() {
            for (k, c) in m {
                if k == "." {
                    continue;
                }
                let mut p = prefix.clone();
                p.push(k.clone());
                let cm = c.as_object();
                if cm.is_none_or(|m| m.is_empty() || m.contains_key(".")) {
                    out.insert(p.clone());
                }
                rec(c, &p, out);
            }
        }
    }
    let mut out = FieldSet::new();
    rec(v, &vec![], &mut out);
    out
}

pub fn read_managers(obj: &Value) -> Vec<ManagerEntry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| ManagerEntry {
                    manager: e["manager"].as_str().unwrap_or_default().into(),
                    operation: e["operation"].as_str().unwrap_or("Update").into(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
                    time: e["time"].as_str().unwrap_or_default().into(),
                    subresource: e["subresource"].as_str().unwrap_or_default().into(),
                    fields: decode(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_managers(obj: &mut Value, managers: &[ManagerEntry]) {
    let list: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode(&m.fields),
            });
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn is_leaf_value(v: Option<&Value>) -> bool {
    !matches!(v, Some(Value::Object(m)) if !m.is_empty())
}

/// Render a field path as `.spec.list[name="a"].x` for conflict messages.
pub fn display_path(p: &FieldPath) -> String {
    let mut s = String::new();
    for pe in p {
        if let Some(f) = pe.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = pe.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// Record a non-apply write (create/update/patch) by `manager`.
#[allow(clippy::too_many_arguments)]
pub fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
    now: &str,
    schema: Option<&Value>,
    builtin: bool,
    scope: Scope,
) {
    // managedFields sent by the client replace the stored ones (as the real server allows)
    let mut managers = if new["metadata"]["managedFields"].as_array().is_some_and(|a| !a.is_empty()) {
        read_managers(new)
    } else {
        old.map(read_managers).unwrap_or_default()
    };
    let all_new = fields_of(new, schema, builtin);
    let empty = Value::Null;
    let old_v = old.unwrap_or(&empty);
    let changed: FieldSet = all_new
        .iter()
        .filter(|p| scope.allows(p))
        .filter(|p| {
            let nv = value_at(new, p);
            let ov = value_at(old_v, p);
            if is_leaf_value(nv) { nv != ov } else { ov.is_none() }
        })
        .cloned()
        .collect();
    for m in managers.iter_mut() {
        let own = m.manager == manager && m.operation == "Update" && m.subresource == subresource;
        m.fields.retain(|p| all_new.contains(p) && (own || !changed.contains(p)));
    }
    if !changed.is_empty() {
        match managers
            .iter_mut()
            .find(|m| m.manager == manager && m.operation == "Update" && m.subresource == subresource)
        {
            Some(m) => {
                m.fields.extend(changed);
                m.time = now.into();
                m.api_version = api_version.into();
            }
            None => managers.push(ManagerEntry {
                manager: manager.into(),
                operation: "Update".into(),
                api_version: api_version.into(),
                time: now.into(),
                subresource: subresource.into(),
                fields: changed,
            }),
        }
    }
    write_managers(new, &managers);
}

/// Merge an applied configuration into a live object.
fn merge_applied(live: &mut Value, applied: &Value, schema: Option<&Value>, name: &str, builtin: bool) {
    match (live.as_object_mut(), applied) {
        (Some(lm), Value::Object(am)) => {
            for (k, av) in am {
                let cs = child_schema(schema, k);
                match lm.get_mut(k) {
                    Some(lv) if lv.is_object() && av.is_object() => merge_applied(lv, av, cs, k, builtin),
                    Some(lv) if lv.is_array() && av.is_array() => merge_list(lv, av, cs, k, builtin),
                    _ => {
                        lm.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        _ => {
            let _ = name;
            *live = applied.clone();
        }
    }
}

fn merge_list(live: &mut Value, applied: &Value, schema: Option<&Value>, name: &str, builtin: bool) {
    let (Some(l), Some(a)) = (live.as_array_mut(), applied.as_array()) else { return };
    match list_type(schema, name, builtin) {
        ListType::Atomic => *l = a.clone(),
        ListType::Set => {
            for e in a {
                if !l.contains(e) {
                    l.push(e.clone());
                }
            }
        }
        ListType::Map(keys) => {
            for e in a {
                let key = element_key(e, &keys);
                let pos =
                    key.as_ref().and_then(|k| l.iter().position(|x| k.iter().all(|(kk, kv)| x.get(kk) == Some(kv))));
                match pos {
                    Some(i) => merge_applied(&mut l[i], e, items_schema(schema), "", builtin),
                    None => l.push(e.clone()),
                }
            }
        }
    }
}

/// A field owned by another manager with a different value.
pub struct ApplyConflict {
    pub causes: Vec<Cause>,
    pub message: String,
}

/// Server-side apply of `applied` by `manager` onto `live` (an empty skeleton on create).
#[allow(clippy::too_many_arguments)]
pub fn apply(
    live: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
    subresource: &str,
    api_version: &str,
    now: &str,
    schema: Option<&Value>,
    builtin: bool,
    scope: Scope,
) -> Result<Value, ApplyConflict> {
    let mut managers = read_managers(live);
    let s_new: FieldSet = fields_of(applied, schema, builtin).into_iter().filter(|p| scope.allows(p)).collect();
    // conflicts
    let mut conflicts: Vec<(FieldPath, usize)> = vec![];
    for (i, m) in managers.iter().enumerate() {
        // managers are (name, operation, subresource): an Update entry of the same name is another one
        if m.manager == manager && m.operation == "Apply" && m.subresource == subresource {
            continue;
        }
        for p in m.fields.intersection(&s_new) {
            let av = value_at(applied, p);
            if !is_leaf_value(av) {
                continue;
            }
            if value_at(live, p) != av {
                conflicts.push((p.clone(), i));
            }
        }
    }
    // the client-side → server-side apply upgrade path: fields listed in the last-applied
    // annotation transfer without conflicts (as the real server's lastAppliedManager does)
    let last_applied: FieldSet = live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .map(|v| fields_of(&v, schema, builtin))
        .unwrap_or_default();
    let upgrade = !conflicts.is_empty() && conflicts.iter().all(|(p, _)| last_applied.contains(p));
    if !conflicts.is_empty() {
        if !force && !upgrade {
            let mut by_mgr: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut causes = vec![];
            for (p, i) in &conflicts {
                let m = &managers[*i];
                let who = format!(
                    "conflict with \"{}\"{}",
                    m.manager,
                    if m.operation == "Update" { format!(" using {}", m.api_version) } else { String::new() }
                );
                by_mgr.entry(who.clone()).or_default().push(display_path(p));
                causes.push(Cause { reason: "FieldManagerConflict", message: who, field: display_path(p) });
            }
            let n = conflicts.len();
            let mut message = format!("Apply failed with {n} conflict{}: ", if n == 1 { "" } else { "s" });
            let parts: Vec<String> = by_mgr
                .iter()
                .map(|(who, paths)| {
                    if paths.len() == 1 {
                        format!("{who}: {}", paths[0])
                    } else {
                        let who = who.replacen("conflict with", "conflicts with", 1);
                        format!("{who}:\n- {}", paths.join("\n- "))
                    }
                })
                .collect();
            message.push_str(&parts.join("\n"));
            return Err(ApplyConflict { causes, message });
        }
        for (p, i) in &conflicts {
            managers[*i].fields.remove(p);
        }
    }
    // merge the applied configuration (restricted to the scope)
    let mut merged = live.clone();
    let mut scoped = applied.clone();
    if let Some(m) = scoped.as_object_mut() {
        match scope {
            Scope::All => {}
            Scope::NoStatus => {
                m.remove("status");
            }
            Scope::StatusOnly => m.retain(|k, _| k == "status"),
        }
        if let Some(meta) = m.get_mut("metadata").and_then(|x| x.as_object_mut()) {
            meta.retain(|k, _| META_TRACKED.contains(&k.as_str()));
        }
        m.remove("apiVersion");
        m.remove("kind");
    }
    merge_applied(&mut merged, &scoped, schema, "", builtin);
    // remove what this manager stopped applying, unless someone else owns it
    let own_old: FieldSet = managers
        .iter()
        .filter(|m| m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
        .flat_map(|m| m.fields.iter().cloned())
        .collect();
    let others: FieldSet = managers
        .iter()
        .filter(|m| !(m.manager == manager && m.operation == "Apply" && m.subresource == subresource))
        .flat_map(|m| m.fields.iter().cloned())
        .collect();
    let mut removals: Vec<&FieldPath> =
        own_old.iter().filter(|p| !s_new.contains(*p) && !others.contains(*p)).collect();
    // whole list elements first: their key fields must still be there to find them
    removals.sort_by_key(|p| p.len());
    for p in removals {
        // a list-map element another manager still owns fields in stays
        if others.iter().any(|o| o.len() > p.len() && o.starts_with(p)) || s_new.iter().any(|o| o.starts_with(p)) {
            continue;
        }
        remove_at(&mut merged, p);
    }
    managers.retain(|m| !(m.manager == manager && m.operation == "Apply" && m.subresource == subresource));
    managers.push(ManagerEntry {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version: api_version.into(),
        time: now.into(),
        subresource: subresource.into(),
        fields: s_new,
    });
    // fields that no longer exist are no longer owned
    let all = fields_of(&merged, schema, builtin);
    for m in managers.iter_mut() {
        m.fields.retain(|p| all.contains(p));
    }
    write_managers(&mut merged, &managers);
    Ok(merged)
}
