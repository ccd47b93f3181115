//! Just enough Kubernetes protobuf decoding for the typed requests `kubectl create` sends
//! (`application/vnd.kubernetes.protobuf`): Namespace, ConfigMap, Secret, ServiceAccount, RBAC
//! objects, SelfSubjectAccessReview and TokenRequest (`kubectl create token`).
//! Responses are always JSON (kubectl's Accept header allows it).

use base64::Engine;
use serde_json::{Map, Value, json};

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader { b, i: 0 }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.i)?;
            self.i += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn next(&mut self) -> Option<Option<(u64, Field<'a>)>> {
        if self.i >= self.b.len() {
            return Some(None);
        }
        let key = self.varint()?;
        let (num, wt) = (key >> 3, key & 7);
        let f = match wt {
            0 => Field::Varint(self.varint()?),
            2 => {
                let len = self.varint()? as usize;
                let s = self.b.get(self.i..self.i + len)?;
                self.i += len;
                Field::Bytes(s)
            }
            1 => {
                self.i += 8;
                Field::Varint(0)
            }
            5 => {
                self.i += 4;
                Field::Varint(0)
            }
            _ => return None,
        };
        Some(Some((num, f)))
    }

    fn fields(b: &'a [u8]) -> Option<Vec<(u64, Field<'a>)>> {
        let mut r = Reader::new(b);
        let mut out = vec![];
        while let Some(f) = r.next()? {
            out.push(f);
        }
        Some(out)
    }
}

fn string(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}

fn map_entry(b: &[u8], bytes_values: bool) -> Option<(String, Value)> {
    let mut k = String::new();
    let mut v = Value::String(String::new());
    for (n, f) in Reader::fields(b)? {
        if let Field::Bytes(x) = f {
            match n {
                1 => k = String::from_utf8_lossy(x).into_owned(),
                2 if bytes_values => v = json!(base64::engine::general_purpose::STANDARD.encode(x)),
                2 => v = string(x),
                _ => {}
            }
        }
    }
    Some((k, v))
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = vec![];
    for (n, f) in Reader::fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                m.insert("name".into(), string(x));
            }
            (2, Field::Bytes(x)) => {
                m.insert("generateName".into(), string(x));
            }
            (3, Field::Bytes(x)) => {
                m.insert("namespace".into(), string(x));
            }
            (6, Field::Bytes(x)) => {
                m.insert("resourceVersion".into(), string(x));
            }
            (11, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, false)?;
                labels.insert(k, v);
            }
            (12, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, false)?;
                annotations.insert(k, v);
            }
            (14, Field::Bytes(x)) => finalizers.push(string(x)),
            _ => {}
        }
    }
    m.retain(|_, v| v.as_str() != Some(""));
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Some(Value::Object(m))
}

/// authentication/v1 TokenRequestSpec: audiences = 1, boundObjectRef = 3, expirationSeconds = 4.
fn token_request_spec(b: &[u8]) -> Option<Value> {
    let mut audiences = vec![];
    let mut spec = Map::new();
    for (n, f) in Reader::fields(b)? {
        match (n, f) {
            (1, Field::Bytes(a)) => audiences.push(string(a)),
            (4, Field::Varint(v)) => {
                spec.insert("expirationSeconds".into(), json!(v as i64));
            }
            _ => {}
        }
    }
    spec.insert("audiences".into(), Value::Array(audiences));
    Some(Value::Object(spec))
}

fn decode_kind(kind: &str, raw: &[u8]) -> Option<Value> {
    let mut obj = Map::new();
    let mut data = Map::new();
    let mut string_data = Map::new();
    for (n, f) in Reader::fields(raw)? {
        let Field::Bytes(x) = f else {
            if let (("ConfigMap", 4) | ("Secret", 5), Field::Varint(v)) = ((kind, n), &f) {
                obj.insert("immutable".into(), json!(*v != 0));
            }
            continue;
        };
        match (kind, n) {
            (_, 1) => {
                obj.insert("metadata".into(), object_meta(x)?);
            }
            ("Namespace", 2) => {
                let fins: Vec<Value> = Reader::fields(x)?
                    .into_iter()
                    .filter_map(|(n, f)| match (n, f) {
                        (1, Field::Bytes(s)) => Some(string(s)),
                        _ => None,
                    })
                    .collect();
                obj.insert("spec".into(), json!({"finalizers": fins}));
            }
            ("ConfigMap", 2) => {
                let (k, v) = map_entry(x, false)?;
                data.insert(k, v);
            }
            ("ConfigMap", 3) => {
                let (k, v) = map_entry(x, true)?;
                obj.entry("binaryData").or_insert_with(|| json!({}))[&k] = v;
            }
            ("SelfSubjectAccessReview", 2) => {
                let mut ra = Map::new();
                for (sn, sf) in Reader::fields(x)? {
                    if let (1, Field::Bytes(rab)) = (sn, sf) {
                        for (rn, rf) in Reader::fields(rab)? {
                            let key = match rn {
                                1 => "namespace",
                                2 => "verb",
                                3 => "group",
                                4 => "version",
                                5 => "resource",
                                6 => "subresource",
                                7 => "name",
                                _ => continue,
                            };
                            if let Field::Bytes(v) = rf {
                                ra.insert(key.into(), string(v));
                            }
                        }
                    }
                }
                obj.insert("spec".into(), json!({"resourceAttributes": ra}));
            }
            ("TokenRequest", 2) => {
                obj.insert("spec".into(), token_request_spec(x)?);
            }
            ("Role" | "ClusterRole", 2) => {
                let mut rule = Map::new();
                for (rn, rf) in Reader::fields(x)? {
                    let key = match rn {
                        1 => "verbs",
                        2 => "apiGroups",
                        3 => "resources",
                        4 => "resourceNames",
                        5 => "nonResourceURLs",
                        _ => continue,
                    };
                    if let Field::Bytes(v) = rf {
                        rule.entry(key).or_insert_with(|| json!([])).as_array_mut()?.push(string(v));
                    }
                }
                obj.entry("rules").or_insert_with(|| json!([])).as_array_mut()?.push(Value::Object(rule));
            }
            ("RoleBinding" | "ClusterRoleBinding", 2) => {
                let mut subject = Map::new();
                for (rn, rf) in Reader::fields(x)? {
                    let key = match rn {
                        1 => "kind",
                        2 => "apiGroup",
                        3 => "name",
                        4 => "namespace",
                        _ => continue,
                    };
                    if let Field::Bytes(v) = rf {
                        subject.insert(key.into(), string(v));
                    }
                }
                subject.retain(|_, v| v.as_str() != Some(""));
                obj.entry("subjects").or_insert_with(|| json!([])).as_array_mut()?.push(Value::Object(subject));
            }
            ("RoleBinding" | "ClusterRoleBinding", 3) => {
                let mut rr = Map::new();
                for (rn, rf) in Reader::fields(x)? {
                    let key = match rn {
                        1 => "apiGroup",
                        2 => "kind",
                        3 => "name",
                        _ => continue,
                    };
                    if let Field::Bytes(v) = rf {
                        rr.insert(key.into(), string(v));
                    }
                }
                obj.insert("roleRef".into(), Value::Object(rr));
            }
            ("Secret", 2) => {
                let (k, v) = map_entry(x, true)?;
                data.insert(k, v);
            }
            ("Secret", 3) => {
                obj.insert("type".into(), string(x));
            }
            ("Secret", 4) => {
                let (k, v) = map_entry(x, false)?;
                string_data.insert(k, v);
            }
            _ => {}
        }
    }
    obj.retain(|_, v| v.as_str() != Some(""));
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !string_data.is_empty() {
        obj.insert("stringData".into(), Value::Object(string_data));
    }
    Some(Value::Object(obj))
}

/// Decode a `k8s\0`-prefixed protobuf envelope into the JSON object, for the kinds known here.
pub fn decode(body: &[u8]) -> Option<Value> {
    let rest = body.strip_prefix(b"k8s\0")?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, f) in Reader::fields(rest)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in Reader::fields(tm)? {
                    if let Field::Bytes(s) = tf {
                        match tn {
                            1 => api_version = String::from_utf8_lossy(s).into_owned(),
                            2 => kind = String::from_utf8_lossy(s).into_owned(),
                            _ => {}
                        }
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    if ![
        "Namespace",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "SelfSubjectAccessReview",
        "TokenRequest",
        "Role",
        "ClusterRole",
        "RoleBinding",
        "ClusterRoleBinding",
    ]
    .contains(&kind.as_str())
    {
        return None;
    }
    let mut obj = decode_kind(&kind, raw)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Some(obj)
}
