//! ControllerRevisions: the template history DaemonSets and StatefulSets keep, which `kubectl
//! rollout history` lists and `kubectl rollout undo` patches back into the owner.
//!
//! A revision is named `<owner>-<template hash>`, carries the template's labels (so the owner's
//! selector finds it, as kubectl's history viewer requires), a controller ownerReference, the owner's
//! annotations (`kubernetes.io/change-cause` shows up in the history), a `revision` number and, as
//! `data`, the patch upstream stores: `{"spec":{"template":{…,"$patch":"replace"}}}` with the
//! template serialised the way kubectl's Go code serialises it (keys sorted, `creationTimestamp:
//! null`, `resources: {}`), so kubectl's "already matches this revision" check compares equal.
//!
//! Invariants: the current template has exactly one revision and it holds the highest number (a
//! rollback renumbers the revision it returns to instead of writing a copy); revisions still used
//! by a pod (or named in `live`) are never pruned; at most `revisionHistoryLimit` others are kept,
//! the oldest deleted first. Every write is conditional (create fails on an existing name,
//! renumbering carries the resourceVersion it read), so a stale cache only costs a retry.

use std::collections::HashSet;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::Store;
use serde_json::{Value, json};

use super::{ControllerError, pods};

/// The owner whose template history is kept.
pub struct Owner<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub meta: &'a ObjectMeta,
    pub template: &'a PodTemplateSpec,
    /// The revision's name: `<owner>-<template hash>`.
    pub name: String,
    /// Extra labels on the revision (DaemonSets: `controller-revision-hash`; StatefulSets:
    /// `controller.kubernetes.io/hash`).
    pub extra_labels: Vec<(String, String)>,
    /// `spec.revisionHistoryLimit` (default 10).
    pub history_limit: i32,
}

/// Sorts keys recursively (Go marshals maps sorted) and adds the zero values Go's typed structs
/// always emit: `metadata.creationTimestamp: null` and `resources: {}` on every container.
fn go_like(template: &PodTemplateSpec) -> Value {
    fn sorted(v: Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<(String, Value)> =
                    map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
            other => other,
        }
    }
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(obj) = t.as_object_mut() {
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.entry("creationTimestamp").or_insert(Value::Null);
        }
        let spec = obj.entry("spec").or_insert_with(|| json!({}));
        for list in ["initContainers", "containers"] {
            if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in items.iter_mut().filter_map(Value::as_object_mut) {
                    c.entry("resources").or_insert_with(|| json!({}));
                }
            }
        }
        if let Some(spec) = spec.as_object_mut() {
            spec.entry("containers").or_insert_with(|| json!([]));
        }
        obj.insert("$patch".into(), json!("replace"));
    }
    sorted(t)
}

/// The `data` of a revision of `template`: the strategic merge patch that restores it.
pub fn patch_data(template: &PodTemplateSpec) -> Value {
    json!({"spec": {"template": go_like(template)}})
}

/// The template a revision's data restores, if it has one.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = revision.data.0.get("spec")?.get("template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// A revision's number (0 if unset).
pub fn revision(r: &ControllerRevision) -> i64 {
    r.revision.unwrap_or(0)
}

/// The revisions in `store` controlled by the object with `meta`.
pub fn owned(store: &Store<ControllerRevision>, meta: &ObjectMeta) -> Vec<ControllerRevision> {
    let uid = meta.uid.as_deref().unwrap_or("");
    store
        .state()
        .iter()
        .filter(|r| r.metadata.namespace == meta.namespace)
        .filter(|r| pods::controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
        .map(|r| (**r).clone())
        .collect()
}

fn write_err(what: String) -> impl FnOnce(kube::Error) -> ControllerError {
    move |source| ControllerError::Write { what, source }
}

/// Makes sure the owner's current template has the newest revision, and prunes old ones not in
/// `live` (revision names still used by pods or the owner's status). Returns the current
/// revision's number.
pub async fn sync(
    client: &kube::Client,
    existing: Vec<ControllerRevision>,
    owner: &Owner<'_>,
    live: &HashSet<String>,
) -> Result<i64, ControllerError> {
    let namespace = owner.meta.namespace.as_deref().unwrap_or("");
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let max = existing.iter().map(revision).max().unwrap_or(0);
    let current = existing
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(owner.name.as_str()));
    let number = match current {
        Some(r) if revision(r) == max => max,
        Some(r) => {
            // Back to an older template (rollback): it becomes the newest revision again.
            let patch = json!({"metadata": {"resourceVersion": r.metadata.resource_version},
                "revision": max + 1});
            api.patch(&owner.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(write_err(format!(
                    "renumbering revision {namespace}/{}",
                    owner.name
                )))?;
            max + 1
        }
        None => {
            let mut labels = owner
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.extend(owner.extra_labels.iter().cloned());
            let new = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(owner.name.clone()),
                    namespace: owner.meta.namespace.clone(),
                    labels: Some(labels),
                    annotations: owner.meta.annotations.clone(),
                    owner_references: Some(vec![pods::controller_ref(
                        owner.api_version,
                        owner.kind,
                        owner.meta,
                    )]),
                    ..ObjectMeta::default()
                },
                data: RawExtension(patch_data(owner.template)),
                revision: Some(max + 1),
            };
            match api.create(&PostParams::default(), &new).await {
                Ok(_) => max + 1,
                // Made by an earlier pass the cache does not show yet.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let found =
                        api.get(&owner.name)
                            .await
                            .map_err(|source| ControllerError::Read {
                                what: format!("revision {namespace}/{}", owner.name),
                                source,
                            })?;
                    revision(&found)
                }
                Err(source) => {
                    return Err(ControllerError::Write {
                        what: format!("revision {namespace}/{}", owner.name),
                        source,
                    });
                }
            }
        }
    };
    let mut old: Vec<&ControllerRevision> = existing
        .iter()
        .filter(|r| {
            let name = r.metadata.name.as_deref().unwrap_or("");
            name != owner.name && !live.contains(name)
        })
        .collect();
    let limit = usize::try_from(owner.history_limit.max(0)).unwrap_or(0);
    if old.len() > limit {
        old.sort_by_key(|r| revision(r));
        let excess = old.len() - limit;
        for r in old.into_iter().take(excess) {
            let name = r.metadata.name.clone().unwrap_or_default();
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: r.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(source) => {
                    return Err(ControllerError::Write {
                        what: format!("pruning revision {namespace}/{name}"),
                        source,
                    });
                }
            }
        }
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_a_replace_patch_shaped_like_kubectls() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))
        .unwrap();
        let data = patch_data(&t);
        assert_eq!(
            data.to_string(),
            r#"{"spec":{"template":{"$patch":"replace","metadata":{"creationTimestamp":null,"labels":{"app":"x"}},"spec":{"containers":[{"image":"i","name":"c","resources":{}}]}}}}"#
        );
        let revision = ControllerRevision {
            data: RawExtension(data),
            ..ControllerRevision::default()
        };
        let back = template_of(&revision).unwrap();
        assert_eq!(
            super::super::rollout::comparable(&back),
            super::super::rollout::comparable(&t)
        );
    }
}
