//! Watches: newline-delimited JSON `WatchEvent`s from a resourceVersion (or from the current
//! state), with BOOKMARK events, `timeoutSeconds`, `sendInitialEvents`, and an `ERROR` event with a
//! 410 `Expired` Status for resourceVersions older than the kept history (as the watch cache does).

use axum::body::Body;
use axum::body::Bytes;
use futures::SinkExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

use super::Inner;
use super::error::{ApiError, ApiResult};
use super::ops::present;
use super::registry::ResourceDef;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{Change, EventType};
use super::table;

struct Filter {
    def: ResourceDef,
    version: String,
    ns: String,
    ls: LabelSelector,
    fs: FieldSelector,
    table: Option<String>,
    metadata_only: bool,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let shown;
        let obj = if self.def.is_events_v1() {
            shown = present(obj, &self.def, &self.version);
            &shown
        } else {
            obj
        };
        self.ls.matches(obj) && self.fs.matches(obj)
    }

    fn render(&self, kind: &str, obj: &Value) -> Bytes {
        let object = match &self.table {
            Some(include) => {
                table::table(&self.def, &self.version, std::slice::from_ref(obj), include, json!({}), false)
            }
            None if self.metadata_only => table::partial_metadata(&present(obj, &self.def, &self.version)),
            None => present(obj, &self.def, &self.version),
        };
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn translate(&self, c: &Change) -> Option<Bytes> {
        if c.res != self.def.key() || (!self.ns.is_empty() && c.namespace != self.ns) {
            return None;
        }
        let now = self.matches(&c.object);
        let kind = match c.kind {
            EventType::Added => now.then_some("ADDED"),
            EventType::Deleted => now.then_some("DELETED"),
            EventType::Modified => {
                let before = c.old.as_ref().is_some_and(|o| self.matches(o));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    _ => None,
                }
            }
        }?;
        Some(self.render(kind, &c.object))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.def.kind, "apiVersion": self.def.api_version(&self.version), "metadata": meta});
        let mut line = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// Start a watch; the body streams until timeout, server shutdown or client disconnect.
pub(crate) fn watch(
    inner: Arc<Inner>,
    def: ResourceDef,
    version: String,
    ns: String,
    q: &HashMap<String, String>,
    table: Option<String>,
    metadata_only: bool,
) -> ApiResult<Body> {
    let get = |k: &str| q.get(k).map(|s| s.as_str());
    let ls = LabelSelector::parse(get("labelSelector").unwrap_or(""))?;
    let fs = FieldSelector::parse(get("fieldSelector").unwrap_or(""), &def, &version)?;
    let bookmarks = get("allowWatchBookmarks") == Some("true");
    let send_initial = get("sendInitialEvents") == Some("true");
    let timeout = get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).filter(|t| *t > 0).map(Duration::from_secs);
    if send_initial && get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::new(
            422,
            "Invalid",
            "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan",
        ));
    }
    let filter = Filter { def, version, ns, ls, fs, table, metadata_only };
    let mut first: Vec<Bytes> = vec![];
    let (rx, start_rv) = {
        let st = inner.lock();
        let rv_param = get("resourceVersion").filter(|r| !r.is_empty() && *r != "0");
        let from: Option<u64> = match rv_param {
            Some(r) if !send_initial => {
                Some(r.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {r}")))?)
            }
            _ => None,
        };
        match from {
            None => {
                let ns = if filter.def.namespaced && !filter.ns.is_empty() { Some(filter.ns.as_str()) } else { None };
                for o in st.list(&filter.def.key(), ns) {
                    if filter.matches(o) {
                        first.push(filter.render("ADDED", o));
                    }
                }
                if send_initial && bookmarks {
                    first.push(filter.bookmark(st.rv, true));
                }
            }
            Some(rv) if rv < st.compacted => {
                let status = ApiError::expired(rv, st.compacted + 1).to_status();
                let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": status})).unwrap_or_default();
                line.push(b'\n');
                return Ok(Body::from(line));
            }
            Some(rv) => {
                for c in st.history.iter().filter(|c| c.rv > rv) {
                    if let Some(b) = filter.translate(c) {
                        first.push(b);
                    }
                }
            }
        }
        (st.tx.subscribe(), st.rv)
    };
    let (mut tx, body_rx) = futures::channel::mpsc::channel::<Result<Bytes, Infallible>>(256);
    let cancel = inner.faults.watch_token();
    let interval = inner.config.bookmark_interval;
    let watch_id = format!("{}/{} from {start_rv}", filter.def.plural, filter.ns);
    tracing::debug!(watch = %watch_id, "watch started");
    tokio::spawn(async move {
        let ended = serve_watch(rx, first, &mut tx, filter, timeout, bookmarks, cancel, interval, start_rv).await;
        tracing::debug!(watch = %watch_id, ended, "watch ended");
    });
    Ok(Body::from_stream(body_rx))
}

/// Streams `first`, then the changes; returns why it ended.
#[allow(clippy::too_many_arguments)]
async fn serve_watch(
    rx: tokio::sync::broadcast::Receiver<Arc<Change>>,
    first: Vec<Bytes>,
    tx: &mut futures::channel::mpsc::Sender<Result<Bytes, Infallible>>,
    filter: Filter,
    timeout: Option<Duration>,
    bookmarks: bool,
    cancel: tokio_util::sync::CancellationToken,
    interval: Duration,
    start_rv: u64,
) -> &'static str {
    {
        let mut rx = rx;
        for b in first {
            if tx.send(Ok(b)).await.is_err() {
                return "client gone";
            }
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut last_rv = start_rv;
        loop {
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => futures::future::pending::<()>().await,
                }
            };
            let out = tokio::select! {
                _ = cancel.cancelled() => return "cut",
                _ = sleep => return "timeout",
                _ = ticker.tick(), if bookmarks => Some(filter.bookmark(last_rv, false)),
                r = rx.recv() => match r {
                    Ok(c) => {
                        if c.rv <= last_rv { None } else {
                            last_rv = c.rv;
                            tracing::trace!(rv = c.rv, name = %c.object["metadata"]["name"], "watch event");
                            filter.translate(&c)
                        }
                    }
                    Err(RecvError::Lagged(_)) => return "lagged",
                    Err(RecvError::Closed) => return "closed",
                },
            };
            if let Some(b) = out
                && tx.send(Ok(b)).await.is_err()
            {
                return "client gone";
            }
        }
    }
}
