//! Watches: replays the resource's event log after the requested resourceVersion (or the
//! current objects as ADDED when none is given), then streams live events as chunked JSON
//! lines `{"type": ..., "object": ...}`. History that was compacted away answers an
//! `ERROR` event carrying a 410 Expired `Status`, as a real API server does.

use crate::Shared;
use crate::api::{stream_response, watch_timeout};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

/// Encodes watch events, as objects or as one-row Tables (column headers on the first).
struct Encoder {
    table_kind: Option<String>,
    first: bool,
}

impl Encoder {
    fn line(&mut self, kind: &str, object: &Value) -> Bytes {
        match &self.table_kind {
            Some(k) if kind != "ERROR" => {
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let t = crate::table::table(k, std::slice::from_ref(object), rv, self.first);
                self.first = false;
                line(kind, &t)
            }
            _ => line(kind, object),
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({ "type": kind, "object": object }).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// What a watch request asks for.
pub(crate) struct WatchRequest<'a> {
    pub key: String,
    pub ns: Option<String>,
    pub rv: Option<&'a str>,
    pub label_selector: Option<&'a str>,
    pub field_selector: Option<&'a str>,
    pub timeout: Option<&'a str>,
    /// Send each object as a one-row Table of this kind (`kubectl get -w`).
    pub table_kind: Option<String>,
}

pub(crate) fn watch(shared: &Arc<Shared>, w: WatchRequest<'_>) -> Result<Response, ApiError> {
    let WatchRequest {
        key,
        ns,
        rv,
        label_selector,
        field_selector,
        timeout,
        table_kind,
    } = w;
    let key = key.as_str();
    let ls = LabelSelector::parse(label_selector.unwrap_or(""))?;
    let fs = FieldSelector::parse(field_selector.unwrap_or(""))?;
    let timeout = watch_timeout(timeout)?;
    let since = match rv {
        None | Some("" | "0") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}")))?,
        ),
    };
    let mut enc = Encoder {
        table_kind,
        first: true,
    };
    let (backlog, mut live, mut last) = {
        let store = shared
            .store
            .lock()
            .map_err(|_| ApiError::new(500, "InternalError", "store lock poisoned"))?;
        let live = shared.events.subscribe();
        let backlog: Vec<Bytes> = match since {
            None => store
                .list(key, ns.as_deref())
                .filter(|o| ls.matches(o) && fs.matches(o))
                .map(|o| enc.line("ADDED", o))
                .collect(),
            Some(n) => match store.events_since(key, n) {
                Some(evs) => evs
                    .iter()
                    .filter_map(|e| {
                        e.seen_as(key, ns.as_deref(), &ls, &fs)
                            .map(|k| enc.line(k, &e.object))
                    })
                    .collect(),
                None => {
                    let gone =
                        ApiError::gone(format!("too old resource version: {n} ({})", store.rv));
                    vec![line("ERROR", &gone.status_json())]
                }
            },
        };
        (backlog, live, store.rv)
    };
    let expired =
        since.is_some() && backlog.len() == 1 && backlog[0].starts_with(b"{\"type\":\"ERROR\"");
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let key = key.to_string();
    tokio::spawn(async move {
        for b in backlog {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let deadline = timeout.map(|d| tokio::time::Instant::now() + d);
        loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, live.recv()).await.ok(),
                    None => Some(live.recv().await),
                }
            };
            tokio::select! {
                got = next => match got {
                    None => return,
                    Some(Ok(ev)) => {
                        let seen = ev.seen_as(&key, ns.as_deref(), &ls, &fs);
                        let Some(kind) = seen.filter(|_| ev.rv > last) else {
                            continue;
                        };
                        last = ev.rv;
                        if tx.send(Ok(enc.line(kind, &ev.object))).await.is_err() {
                            return;
                        }
                    }
                    // Lagged or closed: end the watch; the client watches again.
                    Some(Err(broadcast::error::RecvError::Lagged(_))) | Some(Err(broadcast::error::RecvError::Closed)) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(stream_response(Body::from_stream(stream)))
}
