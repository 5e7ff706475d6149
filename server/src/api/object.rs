//! Object metadata rules shared by every kind: what the server sets on create (uid,
//! creationTimestamp, generation, name from generateName, namespace from the URL), what it keeps on
//! update (uid, creationTimestamp, status for kinds with a status subresource), generation bumps on
//! spec changes, and the `resourceVersion` ↔ store revision mapping.
//!
//! Invariant: stored bytes never contain `metadata.resourceVersion`; it is set from the key's
//! `mod_revision` when an object is read, so it always equals the store revision.

use bytes::Bytes;
use rand::Rng;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::registry::Resource;
use crate::store::{KeyValue, Revision};

/// The object stored in `kv`, with `metadata.resourceVersion` set from its revision.
pub fn from_store(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

pub fn set_resource_version(obj: &mut Value, rv: Revision) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
    }
}

/// The bytes to store for `obj` (without `resourceVersion`).
pub fn to_store(obj: &Value) -> Result<Bytes, ApiError> {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("encoding object: {e}")))
}

/// `metadata.name` (empty if absent).
pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// `metadata.resourceVersion` as a revision; `None` when absent or empty.
pub fn resource_version(obj: &Value) -> Result<Option<Revision>, ApiError> {
    match obj["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            ApiError::BadRequest(format!("invalid resourceVersion {text:?}: not an integer"))
        }),
    }
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the request body must be a JSON object".into()))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))
}

/// Checks `apiVersion`/`kind` (filling them in when absent) and the namespace against the URL.
pub fn check_type_and_namespace(
    res: &Resource,
    obj: &mut Value,
    url_namespace: Option<&str>,
) -> Result<(), ApiError> {
    let api_version = res.api_version();
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the request body must be a JSON object".into()))?;
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", res.kind)] {
        match map.get(field).and_then(Value::as_str) {
            None | Some("") => {
                map.insert(field.into(), json!(want));
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({}) does not match the expected API version ({api_version}) or kind ({got}) does not match {}",
                    map.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
                    res.kind
                )));
            }
        }
    }
    let meta = metadata_mut(obj)?;
    match (res.namespaced, url_namespace) {
        (true, Some(ns)) => match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), json!(ns));
            }
            Some(body_ns) if body_ns == ns => {}
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
        },
        _ => {
            meta.remove("namespace");
        }
    }
    Ok(())
}

/// Sets the server-owned fields of a new object.
pub fn prepare_create(res: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    let has_status = res.has_subresource("status");
    let meta = metadata_mut(obj)?;
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty()
        && let Some(prefix) = meta.get("generateName").and_then(Value::as_str)
    {
        let generated = format!("{prefix}{}", random_suffix());
        meta.insert("name".into(), json!(generated));
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now()));
    for server_owned in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        meta.remove(server_owned);
    }
    if res.generation {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    if has_status {
        // Status is written through the status subresource only.
        if let Some(map) = obj.as_object_mut() {
            map.remove("status");
        }
    }
    Ok(())
}

/// Carries server-owned fields from `old` into `new` for an update of the main resource or of
/// its `status` subresource, and bumps `generation` when the spec changed.
pub fn prepare_update(
    res: &Resource,
    new: &mut Value,
    old: &Value,
    subresource: Option<&str>,
) -> Result<(), ApiError> {
    if subresource == Some("finalize") {
        // Only spec.finalizers changes through /finalize (the namespace controller's last step).
        let finalizers = new["spec"]["finalizers"].clone();
        let rv = new["metadata"]["resourceVersion"].clone();
        *new = old.clone();
        new["spec"]["finalizers"] = finalizers;
        new["metadata"]["resourceVersion"] = rv;
        return Ok(());
    }
    if subresource == Some("status") {
        // Only status changes through /status: take everything else from the stored object.
        let status = new.get("status").cloned();
        let rv = new["metadata"]["resourceVersion"].clone();
        // Managed fields are computed for the whole write (server-side apply of status).
        let managed = new["metadata"].get("managedFields").cloned();
        *new = old.clone();
        if let (Some(managed), Some(meta)) = (managed, new["metadata"].as_object_mut()) {
            meta.insert("managedFields".into(), managed);
        }
        match status {
            Some(status) => new["status"] = status,
            None => {
                if let Some(map) = new.as_object_mut() {
                    map.remove("status");
                }
            }
        }
        new["metadata"]["resourceVersion"] = rv;
        return Ok(());
    }
    if !matches!(subresource, None | Some("scale")) {
        // Action subresources (binding) compute the whole new object from the stored one.
        return Ok(());
    }
    let meta = metadata_mut(new)?;
    for kept in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old["metadata"].get(kept) {
            Some(v) => meta.insert(kept.into(), v.clone()),
            None => meta.remove(kept),
        };
    }
    if res.generation {
        let old_gen = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let generation = if new.get("spec") != old.get("spec") {
            old_gen + 1
        } else {
            old_gen
        };
        new["metadata"]["generation"] = json!(generation);
    }
    if res.has_subresource("status") {
        match old.get("status") {
            Some(status) => new["status"] = status.clone(),
            None => {
                if let Some(map) = new.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    Ok(())
}

/// Now as RFC 3339 with second precision, as the apiserver writes timestamps.
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Five characters from the apiserver's generateName alphabet (no vowels, no confusables).
pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::find;

    #[test]
    fn create_sets_server_fields_and_update_keeps_them() {
        let deploy = find("apps", "v1", "deployments").expect("deployments");
        let mut obj = json!({"metadata":{"generateName":"web-","resourceVersion":"7"},
                             "spec":{"replicas":1},"status":{"replicas":9}});
        check_type_and_namespace(deploy, &mut obj, Some("default")).expect("type");
        prepare_create(deploy, &mut obj).expect("create");
        assert_eq!(obj["kind"], "Deployment");
        assert_eq!(obj["metadata"]["namespace"], "default");
        assert!(name(&obj).starts_with("web-") && name(&obj).len() == 9);
        assert_eq!(obj["metadata"]["generation"], 1);
        assert!(obj.get("status").is_none());
        assert!(obj["metadata"].get("resourceVersion").is_none());

        let mut stored = obj.clone();
        stored["status"] = json!({"replicas": 1});
        let mut new =
            json!({"metadata":{"name": name(&obj), "uid":"forged"},"spec":{"replicas":3}});
        prepare_update(deploy, &mut new, &stored, None).expect("update");
        assert_eq!(new["metadata"]["uid"], obj["metadata"]["uid"]);
        assert_eq!(new["metadata"]["generation"], 2);
        assert_eq!(new["status"], json!({"replicas": 1}));

        let mut status_only = json!({"spec":{"replicas":100},"status":{"replicas":3}});
        prepare_update(deploy, &mut status_only, &stored, Some("status")).expect("status");
        assert_eq!(status_only["spec"]["replicas"], 1);
        assert_eq!(status_only["status"]["replicas"], 3);
    }

    #[test]
    fn mismatched_namespace_is_rejected() {
        let cm = find("", "v1", "configmaps").expect("configmaps");
        let mut obj = json!({"metadata":{"name":"x","namespace":"other"}});
        let err = check_type_and_namespace(cm, &mut obj, Some("default")).expect_err("mismatch");
        assert_eq!(err.reason(), "BadRequest");
    }
}
