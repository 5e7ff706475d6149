//! `persistentVolumeClaim` volumes: the claim (which must be Bound) names a PersistentVolume, and
//! the pod mounts that volume's storage on this node. Supported: `hostPath` volumes (the
//! `local-path` provisioner's and static ones; `DirectoryOrCreate` creates the directory, mode
//! 0777 as local-path-provisioner makes it, so non-root containers can write) and `local`
//! volumes (the path must exist). The pod's `readOnly` makes the mount read-only.
//!
//! Anything else (an unbound claim, a volume bound to another claim, another volume type) is an
//! error with the reason, which the pod worker retries and shows in the pod's status, and a
//! `FailedMount` event on the pod: never an empty directory in the volume's place.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimVolumeSource, Pod,
};
use kube::Api;

use super::{VolumeError, local};
use crate::pods::events::{self, Kind};

/// The host path of `source`'s volume for `pod`; a failure is also recorded as a `FailedMount`
/// event.
pub async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    source: &PersistentVolumeClaimVolumeSource,
) -> Result<PathBuf, VolumeError> {
    let result = resolve(client, pod, source).await;
    if let Err(e) = &result {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        let volume = source.claim_name.as_str();
        events::record(
            client,
            node,
            pod,
            None,
            Kind::Warning,
            "FailedMount",
            format!("Unable to attach or mount volumes: claim {volume:?}: {e}"),
        );
    }
    result
}

async fn resolve(
    client: &kube::Client,
    pod: &Pod,
    source: &PersistentVolumeClaimVolumeSource,
) -> Result<PathBuf, VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = source.claim_name.as_str();
    let api_error = |kind: &'static str, ns: &str, name: &str| {
        let (ns, name) = (ns.to_string(), name.to_string());
        move |source: kube::Error| VolumeError::Api {
            kind,
            namespace: ns,
            name,
            source: Box::new(source),
        }
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let claim = claims
        .get_opt(name)
        .await
        .map_err(api_error("persistentvolumeclaim", ns, name))?
        .ok_or_else(|| VolumeError::Missing {
            kind: "persistentvolumeclaim",
            namespace: ns.into(),
            name: name.into(),
        })?;
    let volume_name = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty());
    let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
    let Some(volume_name) = volume_name.filter(|_| phase == Some("Bound")) else {
        return Err(VolumeError::Claim(format!(
            "PersistentVolumeClaim {ns}/{name} is not bound (phase {})",
            phase.unwrap_or("Pending")
        )));
    };
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pv = volumes
        .get_opt(&volume_name)
        .await
        .map_err(api_error("persistentvolume", "", &volume_name))?
        .ok_or_else(|| VolumeError::Missing {
            kind: "persistentvolume",
            namespace: String::new(),
            name: volume_name.clone(),
        })?;
    let bound_here = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.uid.is_some()
                && r.uid == claim.metadata.uid
                && r.name.as_deref() == Some(name)
                && r.namespace.as_deref() == Some(ns)
        });
    if !bound_here {
        return Err(VolumeError::Claim(format!(
            "PersistentVolume {volume_name} is not bound to claim {ns}/{name}"
        )));
    }
    if let Some(required) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    {
        // The scheduler keeps such pods on the volume's node; this guards against a pod bound
        // by hand (`spec.nodeName`), which would otherwise get an empty directory here.
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let nodes: Api<Node> = Api::all(client.clone());
        let node = nodes
            .get(&node_name)
            .await
            .map_err(api_error("node", "", &node_name))?;
        if !admits(required, &node) {
            return Err(VolumeError::Claim(format!(
                "PersistentVolume {volume_name}'s node affinity does not admit node {node_name}"
            )));
        }
    }
    host_path_of(&pv)
}

/// True if `node` satisfies one of the selector's terms (label expressions and the
/// `metadata.name` field).
pub fn admits(selector: &NodeSelector, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let fields = BTreeMap::from([(
        "metadata.name".to_string(),
        node.metadata.name.clone().unwrap_or_default(),
    )]);
    let holds = |r: &NodeSelectorRequirement, map: &BTreeMap<String, String>| {
        let values = r.values.as_deref().unwrap_or_default();
        let have = map.get(&r.key);
        match r.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            op @ ("Gt" | "Lt") => {
                let parse = |s: &str| s.parse::<i64>().ok();
                match (
                    have.and_then(|v| parse(v)),
                    values.first().and_then(|v| parse(v)),
                ) {
                    (Some(h), Some(w)) => (op == "Gt" && h > w) || (op == "Lt" && h < w),
                    _ => false,
                }
            }
            _ => false,
        }
    };
    selector.node_selector_terms.iter().any(|t| {
        let exprs = t.match_expressions.as_deref().unwrap_or_default();
        let by_field = t.match_fields.as_deref().unwrap_or_default();
        (!exprs.is_empty() || !by_field.is_empty())
            && exprs.iter().all(|r| holds(r, labels))
            && by_field.iter().all(|r| holds(r, &fields))
    })
}

/// The directory a supported volume type gives the pod.
pub fn host_path_of(pv: &PersistentVolume) -> Result<PathBuf, VolumeError> {
    let name = pv.metadata.name.clone().unwrap_or_default();
    let Some(spec) = pv.spec.as_ref() else {
        return Err(VolumeError::Claim(format!(
            "PersistentVolume {name} has no spec"
        )));
    };
    if let Some(h) = &spec.host_path {
        let creates =
            h.type_.as_deref() == Some("DirectoryOrCreate") && !Path::new(&h.path).exists();
        let path = local::host_path(h)?;
        if creates {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).map_err(
                |source| VolumeError::Io {
                    op: "chmod",
                    path: path.clone(),
                    source,
                },
            )?;
        }
        return Ok(path);
    }
    if let Some(l) = &spec.local {
        let path = PathBuf::from(&l.path);
        if !path.exists() {
            return Err(VolumeError::Claim(format!(
                "local volume {name}: path {} does not exist on this node",
                path.display()
            )));
        }
        return Ok(path);
    }
    let kind = serde_json::to_value(spec)
        .ok()
        .and_then(|j| {
            j.as_object().and_then(|o| {
                o.keys()
                    .find(|k| {
                        !matches!(
                            k.as_str(),
                            "accessModes"
                                | "capacity"
                                | "claimRef"
                                | "mountOptions"
                                | "nodeAffinity"
                                | "persistentVolumeReclaimPolicy"
                                | "storageClassName"
                                | "volumeMode"
                                | "volumeAttributesClassName"
                        )
                    })
                    .cloned()
            })
        })
        .unwrap_or_else(|| "unknown".into());
    Err(VolumeError::Claim(format!(
        "PersistentVolume {name}: {kind} volumes are not supported by r3s (hostPath and local are)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(spec: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": "v"}, "spec": spec})).expect("pv")
    }

    #[test]
    fn node_affinity_is_checked() {
        let sel: NodeSelector = serde_json::from_value(json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}))
        .expect("selector");
        let node = |name: &str| -> Node {
            serde_json::from_value(json!({"metadata": {"name": name,
                "labels": {"kubernetes.io/hostname": name}}}))
            .expect("node")
        };
        assert!(admits(&sel, &node("n1")));
        assert!(!admits(&sel, &node("n2")));
    }

    #[test]
    fn host_path_is_created_world_writable() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("pvc-1_ns_c");
        let v = pv(
            json!({"hostPath": {"path": dir, "type": "DirectoryOrCreate"},
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}),
        );
        assert_eq!(host_path_of(&v).expect("path"), dir);
        let mode = std::fs::metadata(&dir).expect("dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o777);
    }

    #[test]
    fn local_must_exist_and_other_types_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ok = pv(json!({"local": {"path": tmp.path()}}));
        assert_eq!(host_path_of(&ok).expect("path"), tmp.path());
        let missing = pv(json!({"local": {"path": tmp.path().join("nope")}}));
        assert!(
            host_path_of(&missing)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        let nfs = pv(json!({"nfs": {"server": "203.0.113.1", "path": "/x"},
            "capacity": {"storage": "1Gi"}}));
        let err = host_path_of(&nfs).unwrap_err().to_string();
        assert!(err.contains("nfs volumes are not supported"), "{err}");
    }
}
