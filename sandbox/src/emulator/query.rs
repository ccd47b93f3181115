//! OData query options on the list endpoints (`$filter`, `$top`, `$skip`, `$select`, `$orderby`,
//! `$count`, `$expand`) and the paged list bodies (`@odata.context`, `@odata.count`,
//! `@odata.nextLink`, `value`). `$filter` itself is parsed and evaluated by `odata`.

use serde_json::{Value, json};

use super::odata::{self, Schema};
use super::store::ApiError;

/// Largest page and `$top` Defender allows.
pub(crate) const MAX_TOP: usize = 10_000;

/// How a list pages: its page size without `$top`, and whether `@odata.nextLink` is emitted when
/// the client gave `$top` (Defender omits it on `GET /api/machines` then).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Paging {
    pub default_page: usize,
    pub next_link_with_top: bool,
}

/// Indicators and alerts: pages of up to 10,000, a nextLink whenever rows remain.
pub(crate) const FULL_PAGES: Paging = Paging { default_page: MAX_TOP, next_link_with_top: true };

/// Parsed OData query options.
pub(crate) struct Query {
    filter: Option<(String, odata::Filter)>,
    top: Option<usize>,
    skip: usize,
    select: Option<Vec<String>>,
    orderby: Vec<(String, bool)>,
    count: bool,
    pub(crate) expand_evidence: bool,
    raw_orderby: Option<String>,
    raw_select: Option<String>,
    raw_expand: Option<String>,
}

fn odata_err(msg: impl Into<String>) -> ApiError {
    ApiError::new(400, "ODataError", msg)
}

impl Query {
    pub(crate) fn parse(query: &str, schema: &Schema, allow_expand: bool) -> Result<Query, ApiError> {
        let mut q = Query {
            filter: None,
            top: None,
            skip: 0,
            select: None,
            orderby: Vec::new(),
            count: false,
            expand_evidence: false,
            raw_orderby: None,
            raw_select: None,
            raw_expand: None,
        };
        let mut seen: Vec<String> = Vec::new();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let key = k.to_ascii_lowercase();
            if !key.starts_with('$') {
                continue;
            }
            if seen.contains(&key) {
                return Err(odata_err(format!(
                    "Query option '{k}' was specified more than once, but it must be specified at most once."
                )));
            }
            seen.push(key.clone());
            let int = |v: &str| {
                v.parse::<usize>().map_err(|_| {
                    odata_err(format!("Invalid value '{v}' for {k} query option found. The {k} query option requires a non-negative integer value."))
                })
            };
            match key.as_str() {
                "$filter" => {
                    let f = odata::parse(&v, schema).map_err(odata_err)?;
                    q.filter = Some((v.into_owned(), f));
                }
                "$top" => {
                    let n = int(&v)?;
                    if n > MAX_TOP {
                        return Err(odata_err(format!(
                            "The limit of '{MAX_TOP}' for Top query has been exceeded. The value from the incoming request is '{n}'."
                        )));
                    }
                    q.top = Some(n);
                }
                "$skip" => q.skip = int(&v)?,
                "$count" => {
                    q.count = match v.as_ref() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(odata_err(format!("'{v}' is not a valid count option."))),
                    }
                }
                "$select" => {
                    q.select = Some(v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect());
                    q.raw_select = Some(v.into_owned());
                }
                "$orderby" => {
                    for part in v.split(',') {
                        let mut words = part.split_whitespace();
                        let field = words.next().ok_or_else(|| odata_err("Empty $orderby clause."))?;
                        if !schema.fields.iter().any(|(f, _)| *f == field) {
                            return Err(odata_err(format!(
                                "Could not find a property named '{field}' on type '{}'.",
                                schema.entity
                            )));
                        }
                        let desc = match words.next() {
                            None | Some("asc") => false,
                            Some("desc") => true,
                            Some(o) => return Err(odata_err(format!("Syntax error at '{o}' in $orderby."))),
                        };
                        q.orderby.push((field.to_owned(), desc));
                    }
                    q.raw_orderby = Some(v.into_owned());
                }
                "$expand" if allow_expand => {
                    if !v.split(',').all(|e| e.trim() == "evidence") {
                        return Err(odata_err(format!("Could not find a property named '{v}' to expand.")));
                    }
                    q.expand_evidence = true;
                    q.raw_expand = Some(v.into_owned());
                }
                _ => return Err(odata_err(format!("The query parameter '{k}' is not supported."))),
            }
        }
        Ok(q)
    }

    /// Filters, orders, pages; adds `@odata.context`, `@odata.count`, `@odata.nextLink`.
    pub(crate) fn page(&self, rows: Vec<Value>, base: &str, path: &str, set: &str) -> Value {
        self.page_with(rows, base, path, set, FULL_PAGES)
    }

    /// [`Query::page`] with the list's own paging rules.
    pub(crate) fn page_with(&self, rows: Vec<Value>, base: &str, path: &str, set: &str, paging: Paging) -> Value {
        let mut rows: Vec<Value> = match &self.filter {
            Some((_, f)) => rows.into_iter().filter(|r| f.matches(r)).collect(),
            None => rows,
        };
        for (field, desc) in self.orderby.iter().rev() {
            rows.sort_by(|a, b| {
                let o = cmp_json(&a[field.as_str()], &b[field.as_str()]);
                if *desc { o.reverse() } else { o }
            });
        }
        let total = rows.len();
        let size = self.top.unwrap_or(paging.default_page).min(MAX_TOP);
        let page: Vec<Value> = rows
            .into_iter()
            .skip(self.skip)
            .take(size)
            .map(|r| match &self.select {
                Some(sel) => {
                    let o = r.as_object().cloned().unwrap_or_default();
                    Value::Object(o.into_iter().filter(|(k, _)| sel.iter().any(|s| s == k)).collect())
                }
                None => r,
            })
            .collect();
        let mut out = serde_json::Map::new();
        out.insert("@odata.context".into(), Value::String(format!("{base}/$metadata#{set}")));
        if self.count {
            out.insert("@odata.count".into(), json!(total));
        }
        let next_skip = self.skip + page.len();
        let link_allowed = self.top.is_none() || paging.next_link_with_top;
        if !page.is_empty() && next_skip < total && link_allowed {
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let mut params = Vec::new();
            if let Some((raw, _)) = &self.filter {
                params.push(format!("$filter={}", enc(raw)));
            }
            if let Some(s) = &self.raw_select {
                params.push(format!("$select={}", enc(s)));
            }
            if let Some(s) = &self.raw_orderby {
                params.push(format!("$orderby={}", enc(s)));
            }
            if let Some(s) = &self.raw_expand {
                params.push(format!("$expand={}", enc(s)));
            }
            if let Some(top) = self.top {
                params.push(format!("$top={top}"));
            }
            params.push(format!("$skip={next_skip}"));
            out.insert("@odata.nextLink".into(), Value::String(format!("{base}/{path}?{}", params.join("&"))));
        }
        out.insert("value".into(), Value::Array(page));
        Value::Object(out)
    }
}

fn cmp_json(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (Value::Null, Value::Null) => Equal,
        (Value::Null, _) => Less,
        (_, Value::Null) => Greater,
        (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(Equal),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) => {
            // Numeric ids sort numerically.
            match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(p), Ok(q)) => p.cmp(&q),
                _ => x.to_lowercase().cmp(&y.to_lowercase()),
            }
        }
        _ => Equal,
    }
}
