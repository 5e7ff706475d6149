//! Deletion lifecycle: finalizers, `deletionTimestamp`, and namespace termination.
//!
//! An object is *held* while `metadata.finalizers` is non-empty, and a Namespace also while
//! `spec.finalizers` is (the namespace controller removes `kubernetes` through the `finalize`
//! subresource once the namespace is empty). DELETE on a held object only starts deletion
//! (`deletionTimestamp`, and phase `Terminating` for a Namespace); the object disappears when an
//! update leaves it unheld. New finalizers cannot be added once deletion has started.

use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::registry::Resource;

fn is_namespace(res: &Resource) -> bool {
    res.group.is_empty() && res.kind == "Namespace"
}

fn non_empty(list: &Value) -> bool {
    list.as_array().is_some_and(|l| !l.is_empty())
}

/// True while something must run before `obj` may disappear.
pub fn held(res: &Resource, obj: &Value) -> bool {
    non_empty(&obj["metadata"]["finalizers"])
        || (is_namespace(res) && non_empty(&obj["spec"]["finalizers"]))
}

/// True if deletion has started.
pub fn deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

/// True if `obj` is being deleted and nothing holds it any more: it must be removed now.
pub fn finalized(res: &Resource, obj: &Value) -> bool {
    deleting(obj) && !held(res, obj)
}

/// Marks a held object as being deleted.
pub fn start_deletion(res: &Resource, obj: &mut Value, now: &str) {
    obj["metadata"]["deletionTimestamp"] = json!(now);
    obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    if is_namespace(res) {
        obj["status"]["phase"] = json!("Terminating");
    }
}

/// Rejects updates that add finalizers to an object already being deleted.
pub fn check_update(res: &Resource, old: &Value, new: &Value) -> Result<(), ApiError> {
    if !deleting(old) {
        return Ok(());
    }
    let before = old["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let added = new["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| !before.contains(f));
    if !added {
        return Ok(());
    }
    Err(ApiError::Invalid {
        group: res.group.into(),
        kind: res.kind.into(),
        name: old["metadata"]["name"].as_str().unwrap_or("").into(),
        causes: vec![Cause {
            reason: "FieldValueForbidden",
            field: "metadata.finalizers".into(),
            message: "Forbidden: no new finalizers can be added if the object is being deleted"
                .into(),
        }],
    })
}
