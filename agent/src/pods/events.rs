//! Events about pods, as kubelet records them (`kubectl describe pod` shows them): Pulling,
//! Pulled, Created, Started, Killing, BackOff, Failed. Each is a core/v1 Event from source
//! `kubelet` on this node, posted in the background: a lost event never blocks or fails a pod.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tracing::debug;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

/// Posts an event about `pod` (and, with `container`, about that container).
pub fn record(
    client: &kube::Client,
    node: &str,
    pod: &Pod,
    container: Option<&str>,
    kind: Kind,
    reason: &str,
    message: String,
) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = chrono::Utc::now();
    let ts = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let micro = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let nanos = now.timestamp_nanos_opt().unwrap_or_default();
    let mut involved = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "name": name,
        "namespace": ns,
        "uid": pod.metadata.uid,
        "resourceVersion": pod.metadata.resource_version,
    });
    if let Some(c) = container {
        let is_init = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|ics| ics.iter().any(|i| i.name == c));
        let list = if is_init {
            "initContainers"
        } else {
            "containers"
        };
        involved["fieldPath"] = json!(format!("spec.{list}{{{c}}}"));
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{name}.{nanos:x}"), "namespace": ns},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": match kind { Kind::Normal => "Normal", Kind::Warning => "Warning" },
        "source": {"component": "kubelet", "host": node},
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "eventTime": micro,
        "count": 1,
        "reportingComponent": "kubelet",
        "reportingInstance": node,
        "action": reason,
    });
    let Ok(event) = serde_json::from_value::<Event>(body) else {
        return;
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    tokio::spawn(async move {
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            debug!("posting event: {e}");
        }
    });
}
