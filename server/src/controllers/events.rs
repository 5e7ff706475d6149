//! Recording core/v1 Events (what `kubectl describe` shows), aggregated: repeating the same reason
//! and message about the same object bumps `count` and `lastTimestamp` on one Event instead of
//! writing a new one, so a crash loop or an unschedulable pod does not write an Event per attempt.
//!
//! Events are best effort, as upstream: a failure to record is logged and never fails a reconcile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Normal or Warning, as `kubectl describe` prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Where an event's object lives: its reference and the namespace the Event goes to.
pub fn reference(api_version: &str, kind: &str, meta: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.to_string()),
        kind: Some(kind.to_string()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

/// (involved object uid, reason, message): what makes two events the same.
type EventId = (String, String, String);

#[derive(Clone)]
struct Seen {
    name: String,
    namespace: String,
    count: i32,
}

/// Writes Events as one component (`deployment-controller`, `default-scheduler`, …).
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: String,
    seen: Arc<Mutex<HashMap<EventId, Seen>>>,
}

impl Recorder {
    pub fn new(client: kube::Client, component: &str) -> Recorder {
        Recorder {
            client,
            component: component.to_string(),
            seen: Arc::default(),
        }
    }

    /// Records `reason: message` about `object`; never fails (errors are logged).
    pub async fn record(
        &self,
        object: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        if let Err(error) = self.try_record(object, kind, reason, message).await {
            tracing::debug!(%error, reason, "could not record an event");
        }
    }

    async fn try_record(
        &self,
        object: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let id = (
            object.uid.clone().unwrap_or_default(),
            reason.to_string(),
            message.to_string(),
        );
        let previous = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        if let Some(seen) = previous {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &seen.namespace);
            let patch = json!({"count": seen.count + 1, "lastTimestamp": now});
            match api
                .patch(&seen.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.remember(
                        id,
                        Seen {
                            count: seen.count + 1,
                            ..seen
                        },
                    );
                    return Ok(());
                }
                // Deleted (namespace cleanup, TTL): start a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let namespace = object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let nanos = now.0.as_nanosecond();
        let name = format!("{}.{:x}", object.name.as_deref().unwrap_or("object"), nanos);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: object.clone(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(kind.as_str().to_string()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &event).await?;
        self.remember(
            id,
            Seen {
                name,
                namespace,
                count: 1,
            },
        );
        Ok(())
    }

    fn remember(&self, id: EventId, seen: Seen) {
        let mut map = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded memory: aggregation only needs recent events.
        if map.len() > 4096 {
            map.clear();
        }
        map.insert(id, seen);
    }
}
