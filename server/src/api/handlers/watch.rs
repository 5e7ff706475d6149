//! `watch`: newline-delimited JSON events `{"type","object"}` streamed as they commit.
//!
//! Start: `resourceVersion` unset or `0` sends a synthetic ADDED per current object, then changes
//! after that snapshot; `N` sends changes after N, or answers 410 Expired before streaming when that
//! history is gone (a watcher that falls behind mid-stream gets an ERROR event with the 410 Status).
//! Selectors apply to both the old and the new object, so an object leaving the selection is a
//! DELETED and one entering it an ADDED, as upstream. Table Accept headers get one-row Tables.
//! The stream ends after `timeoutSeconds` (default 30 min) or when the client goes away.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Ctx;
use super::read::selectors;
use crate::api::codec;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::registry::Resource;
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::table::{self, IncludeObject};
use crate::store::{Event, EventType, ListOptions, Revision, WatchStream};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// How events are rendered for this watcher.
struct Encoder {
    resource: &'static Resource,
    labels: LabelSelector,
    fields: FieldSelector,
    table: Option<IncludeObject>,
    sent_definitions: bool,
}

pub fn watch(ctx: &Ctx) -> Result<Response, ApiError> {
    let res = ctx.target.resource;
    let (labels, fields) = selectors(ctx)?;
    let store = ctx.state.store.clone();
    let prefix = res.list_prefix(ctx.namespace());
    let start = match ctx.param("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(text) => Some(
            text.parse::<Revision>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {text:?}")))?,
        ),
    };
    // Initial state (for an unset RV) and the stream are both opened before answering, so a
    // too-old RV is a plain 410 response rather than an event.
    let (initial, after) = match start {
        Some(rv) => (Vec::new(), rv),
        None => {
            let list = store
                .list(&prefix, &ListOptions::default())
                .map_err(|e| ApiError::from_store(e, &res.name(), ""))?;
            let objects = list
                .items
                .iter()
                .map(object::from_store)
                .collect::<Result<Vec<_>, _>>()?;
            (objects, list.revision)
        }
    };
    let stream = store
        .watch(&prefix, after)
        .map_err(|e| ApiError::from_store(e, &res.name(), ""))?;
    let timeout = ctx
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let bookmarks = ctx.param("allowWatchBookmarks") == Some("true");
    let encoder = Encoder {
        resource: res,
        labels,
        fields,
        table: codec::wants_table(&ctx.headers)
            .then(|| IncludeObject::parse(ctx.param("includeObject"))),
        sent_definitions: false,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(pump(
        encoder, initial, after, stream, tx, timeout, bookmarks,
    ));
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// Forwards events to the client until the timeout, the client leaving, or the store failing.
async fn pump(
    mut enc: Encoder,
    initial: Vec<Value>,
    mut last: Revision,
    mut stream: WatchStream,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    timeout: Duration,
    bookmarks: bool,
) {
    for obj in initial {
        if enc.matches(&obj) && send(&tx, enc.event("ADDED", obj)).await.is_err() {
            return;
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
    ticker.tick().await;
    loop {
        let line = tokio::select! {
            () = &mut deadline => return,
            () = tx.closed() => return,
            _ = ticker.tick(), if bookmarks => Some(enc.bookmark(last)),
            next = stream.next() => match next {
                None => return,
                Some(Ok(event)) => {
                    last = event.revision();
                    match enc.translate(&event) {
                        Ok(line) => line,
                        Err(error) => Some(error_event(&error)),
                    }
                }
                Some(Err(error)) => {
                    let error = ApiError::from_store(error, &enc.resource.name(), "");
                    let _ = send(&tx, error_event(&error)).await;
                    return;
                }
            },
        };
        if let Some(line) = line
            && send(&tx, line).await.is_err()
        {
            return;
        }
    }
}

async fn send(tx: &mpsc::Sender<Result<Bytes, Infallible>>, event: Value) -> Result<(), ()> {
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    tx.send(Ok(Bytes::from(line))).await.map_err(|_| ())
}

fn error_event(error: &ApiError) -> Value {
    json!({"type": "ERROR", "object": error.status()})
}

impl Encoder {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event to send for a store event, if the selectors let it through.
    fn translate(&mut self, event: &Event) -> Result<Option<Value>, ApiError> {
        let mut obj = object::from_store(&event.kv)?;
        let now = self.matches(&obj);
        let before = match &event.prev {
            Some(prev) => self.matches(&object::from_store(prev)?),
            None => false,
        };
        let kind = match event.event_type {
            EventType::Added if now => "ADDED",
            EventType::Deleted if now || before => {
                object::set_resource_version(&mut obj, event.revision());
                "DELETED"
            }
            EventType::Modified if now && before => "MODIFIED",
            EventType::Modified if now => "ADDED",
            EventType::Modified if before => "DELETED",
            _ => return Ok(None),
        };
        Ok(Some(self.event(kind, obj)))
    }

    fn event(&mut self, kind: &str, obj: Value) -> Value {
        let object = match self.table {
            None => obj,
            Some(include) => {
                let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
                let first = !self.sent_definitions;
                self.sent_definitions = true;
                table::table(self.resource.columns, &[obj], include, meta, first)
            }
        };
        json!({"type": kind, "object": object})
    }

    fn bookmark(&self, revision: Revision) -> Value {
        json!({"type": "BOOKMARK", "object": {
            "kind": self.resource.kind, "apiVersion": self.resource.api_version(),
            "metadata": {"resourceVersion": revision.to_string()},
        }})
    }
}
