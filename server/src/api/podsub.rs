//! The pod subresources that are actions rather than views: `binding` (the scheduler assigns a
//! node), `eviction` (a policy-checked delete), and the streaming ones (`log`, `exec`, `attach`,
//! `portforward`), which need the connection to the node agent and answer 503 until it exists.

use serde_json::{Value, json};

use super::error::ApiError;

/// Applies a `Binding` to a pod: sets `spec.nodeName` and the `PodScheduled` condition.
pub fn bind(pod: &Value, binding: &Value) -> Result<Value, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let node = binding["target"]["name"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::Invalid {
            group: String::new(),
            kind: "Binding".into(),
            name: name.into(),
            causes: vec![super::error::Cause {
                reason: "FieldValueRequired",
                field: "target.name".into(),
                message: "Required value".into(),
            }],
        });
    }
    if pod["metadata"]["deletionTimestamp"].is_string() {
        return Err(ApiError::Conflict {
            resource: super::error::ResourceName {
                group: String::new(),
                plural: "pods".into(),
            },
            name: name.into(),
        });
    }
    if let Some(current) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Err(ApiError::AlreadyBound(format!(
            "pod {name} is already assigned to node \"{current}\""
        )));
    }
    let mut out = pod.clone();
    out["spec"]["nodeName"] = json!(node);
    let condition = json!({"type": "PodScheduled", "status": "True",
                           "lastTransitionTime": super::object::now()});
    let status = out
        .as_object_mut()
        .map(|o| o.entry("status").or_insert_with(|| json!({})));
    if let Some(Value::Object(status)) = status {
        let conditions = status.entry("conditions").or_insert_with(|| json!([]));
        if let Value::Array(list) = conditions {
            list.retain(|c| c["type"] != json!("PodScheduled"));
            list.push(condition);
        }
    }
    Ok(out)
}

/// Subresources that stream from the node agent.
pub const STREAMING: &[&str] = &["log", "exec", "attach", "portforward"];

/// The Status returned by successful action subresources (binding, eviction).
pub fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_once() {
        let pod = json!({"metadata":{"name":"p"},"spec":{"containers":[]}});
        let bound = bind(&pod, &json!({"target":{"kind":"Node","name":"n1"}})).expect("bind");
        assert_eq!(bound["spec"]["nodeName"], "n1");
        assert_eq!(bound["status"]["conditions"][0]["type"], "PodScheduled");
        let again = bind(&bound, &json!({"target":{"name":"n2"}})).expect_err("already bound");
        assert_eq!(again.code().as_u16(), 409);
        assert_eq!(
            again.to_string(),
            "pod p is already assigned to node \"n1\""
        );
    }
}
