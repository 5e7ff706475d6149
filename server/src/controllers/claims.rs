//! A StatefulSet's PersistentVolumeClaims: one per `volumeClaimTemplates` entry and ordinal, named
//! `<template>-<set>-<ordinal>`, created before the pod that mounts it and kept across pod
//! restarts, so `<set>-<n>` always gets the same storage back.
//!
//! `persistentVolumeClaimRetentionPolicy` (default Retain/Retain): `whenDeleted: Delete` gives each
//! claim an ownerReference to the set, so the garbage collector removes it with the set;
//! `whenScaled: Delete` deletes the claims of ordinals at or above `replicas` once their pod is
//! gone. Retain keeps claims forever (a later scale-up reuses them).
//!
//! Invariant: a pod is only created after every claim it mounts exists (creating an existing
//! claim is not an error: the claim outlives pods by design).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, PodSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use super::ControllerError;
use super::events::{EventType, Recorder, reference};
use super::{pods, selector};

fn templates(sts: &StatefulSet) -> &[PersistentVolumeClaim] {
    sts.spec.volume_claim_templates.as_deref().unwrap_or(&[])
}

fn template_name(t: &PersistentVolumeClaim) -> &str {
    t.metadata.name.as_deref().unwrap_or("")
}

/// `<template>-<set>-<ordinal>`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

fn policy(sts: &StatefulSet) -> (bool, bool) {
    let p = sts
        .spec
        .persistent_volume_claim_retention_policy
        .clone()
        .unwrap_or_default();
    (
        p.when_deleted.as_deref() == Some("Delete"),
        p.when_scaled.as_deref() == Some("Delete"),
    )
}

/// Mounts the claims of `ordinal` in `spec`: a claim template replaces a pod volume of its name.
pub fn add_volumes(sts: &StatefulSet, spec: &mut PodSpec, ordinal: i32) {
    let set = sts.metadata.name.as_deref().unwrap_or("");
    for t in templates(sts) {
        let name = template_name(t).to_string();
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        volumes.retain(|v| v.name != name);
        volumes.push(Volume {
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&name, set, ordinal),
                read_only: None,
            }),
            name,
            ..Volume::default()
        });
    }
}

/// The labels of a set's claims: the template's plus the set's selector labels.
fn labels(sts: &StatefulSet, t: &PersistentVolumeClaim) -> BTreeMap<String, String> {
    let mut labels = t.metadata.labels.clone().unwrap_or_default();
    if let Some(m) = sts.spec.selector.match_labels.as_ref() {
        labels.extend(m.clone());
    }
    labels
}

/// Creates the claims `ordinal` needs (existing ones are left as they are).
pub async fn ensure(
    client: &kube::Client,
    recorder: &Recorder,
    sts: &StatefulSet,
    ordinal: i32,
) -> Result<(), ControllerError> {
    let namespace = sts.metadata.namespace.as_deref().unwrap_or("");
    let set = sts.metadata.name.as_deref().unwrap_or("");
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let (when_deleted, _) = policy(sts);
    for t in templates(sts) {
        let name = claim_name(template_name(t), set, ordinal);
        let mut owner = pods::controller_ref("apps/v1", "StatefulSet", &sts.metadata);
        owner.controller = None;
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: sts.metadata.namespace.clone(),
                labels: Some(labels(sts, t)),
                annotations: t.metadata.annotations.clone(),
                owner_references: when_deleted.then(|| vec![owner]),
                ..ObjectMeta::default()
            },
            spec: t.spec.clone(),
            status: None,
        };
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => {
                let msg =
                    format!("create Claim {name} Pod {set}-{ordinal} in StatefulSet {set} success");
                recorder
                    .record(
                        &reference("apps/v1", "StatefulSet", &sts.metadata),
                        EventType::Normal,
                        "SuccessfulCreate",
                        &msg,
                    )
                    .await;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(source) => {
                recorder
                    .record(
                        &reference("apps/v1", "StatefulSet", &sts.metadata),
                        EventType::Warning,
                        "FailedCreate",
                        &format!("create Claim {name} for Pod {set}-{ordinal} failed: {source}"),
                    )
                    .await;
                return Err(ControllerError::Write {
                    what: format!("claim {namespace}/{name}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Under `whenScaled: Delete`, deletes the claims of ordinals `>= replicas` whose pod is gone
/// (`present` tells whether an ordinal still has a pod, terminating or not).
pub async fn prune_scaled(
    client: &kube::Client,
    sts: &StatefulSet,
    replicas: i32,
    present: impl Fn(i32) -> bool,
) -> Result<(), ControllerError> {
    let (_, when_scaled) = policy(sts);
    if !when_scaled || templates(sts).is_empty() {
        return Ok(());
    }
    let namespace = sts.metadata.namespace.as_deref().unwrap_or("");
    let set = sts.metadata.name.as_deref().unwrap_or("");
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let query = selector::to_query(&sts.spec.selector);
    let list = api
        .list(&ListParams::default().labels(&query))
        .await
        .map_err(|source| ControllerError::Read {
            what: format!("claims of statefulset {namespace}/{set}"),
            source,
        })?;
    for claim in list.items {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let ordinal = templates(sts).iter().find_map(|t| {
            name.strip_prefix(&format!("{}-{set}-", template_name(t)))?
                .parse::<i32>()
                .ok()
        });
        let Some(ordinal) = ordinal else { continue };
        if ordinal < replicas || present(ordinal) || claim.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(source) => {
                return Err(ControllerError::Write {
                    what: format!("deleting claim {namespace}/{name}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_templates_replace_pod_volumes_of_their_name() {
        let sts: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {}, "template": {},
                "volumeClaimTemplates": [{"metadata": {"name": "www"}}]}
        }))
        .unwrap();
        let mut spec = PodSpec {
            volumes: Some(vec![Volume {
                name: "www".into(),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        };
        add_volumes(&sts, &mut spec, 2);
        let volumes = spec.volumes.unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("www-web-2")
        );
    }
}
