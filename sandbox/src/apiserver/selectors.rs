//! Label and field selectors, as in `?labelSelector=` and `?fieldSelector=`.

use serde_json::Value;

use super::error::ApiError;
use super::registry::ResourceDef;

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default)]
pub struct LabelSelector(Vec<LabelReq>);

fn split_top(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

fn parse_set(rest: &str, raw: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    if !rest.starts_with('(') || !rest.ends_with(')') {
        return Err(ApiError::bad_request(format!("unable to parse requirement: found '{raw}', expected: '('")));
    }
    Ok(rest[1..rest.len() - 1].split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = vec![];
        for part in split_top(s) {
            let lower = part.to_string();
            if let Some(k) = lower.strip_prefix('!') {
                reqs.push(LabelReq::NotExists(k.trim().to_string()));
            } else if let Some(i) = lower.find(" notin ") {
                reqs.push(LabelReq::NotIn(lower[..i].trim().into(), parse_set(&lower[i + 7..], &part)?));
            } else if let Some(i) = lower.find(" in ") {
                reqs.push(LabelReq::In(lower[..i].trim().into(), parse_set(&lower[i + 4..], &part)?));
            } else if let Some(i) = lower.find("!=") {
                reqs.push(LabelReq::NotEq(lower[..i].trim().into(), lower[i + 2..].trim().into()));
            } else if let Some(i) = lower.find("==") {
                reqs.push(LabelReq::Eq(lower[..i].trim().into(), lower[i + 2..].trim().into()));
            } else if let Some(i) = lower.find('=') {
                reqs.push(LabelReq::Eq(lower[..i].trim().into(), lower[i + 1..].trim().into()));
            } else if lower.contains(' ') || lower.contains('(') {
                return Err(ApiError::bad_request(format!("unable to parse requirement: {part}")));
            } else {
                reqs.push(LabelReq::Exists(lower.trim().into()));
            }
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(|v| v.as_str());
        self.0.iter().all(|r| match r {
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A parsed field selector (`=`, `==`, `!=` on supported fields).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str, def: &ResourceDef, version: &str) -> Result<Self, ApiError> {
        let mut reqs = vec![];
        for part in split_top(s) {
            let (k, eq, v) = if let Some(i) = part.find("!=") {
                (&part[..i], false, &part[i + 2..])
            } else if let Some(i) = part.find("==") {
                (&part[..i], true, &part[i + 2..])
            } else if let Some(i) = part.find('=') {
                (&part[..i], true, &part[i + 1..])
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{s}'; can't understand '{part}'")));
            };
            let k = k.trim().to_string();
            let supported = k == "metadata.name"
                || k == "metadata.namespace"
                || match def.crd_version(version) {
                    Some(cv) => cv.selectable_fields.contains(&k),
                    None => def.builtin,
                };
            if !supported {
                return Err(ApiError::bad_request(format!(
                    "Unable to find \"{}/{}, Resource={}\" that match label selector \"\", field selector \"{}\": field label not supported: {}",
                    def.group, version, def.plural, s, k
                )));
            }
            reqs.push((k, eq, v.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(k, eq, v)| {
            let mut cur = obj;
            for seg in k.split('.') {
                cur = &cur[seg];
            }
            let actual = match cur {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (actual == *v) == *eq
        })
    }

    /// The `metadata.name` the selector pins, if any (kubectl wait / get use it).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
