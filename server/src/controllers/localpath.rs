//! The `local-path` provisioner (k3s's local-path-provisioner, built in): the default
//! StorageClass `local-path` (provisioner `rancher.io/local-path`, `WaitForFirstConsumer`,
//! reclaim `Delete`), and the PersistentVolumes it makes for claims of that class once a pod
//! using the claim has a node: `pvc-<claim uid>`, a `hostPath` (`DirectoryOrCreate`) at
//! `<storage path>/pvc-<uid>_<namespace>_<claim>` on that node, and a node affinity to it. The
//! node's agent creates the directory when it mounts the volume.
//!
//! Not a loop of its own: the volume binder (`volumebinding.rs`) calls [`volume_for`] and
//! [`remove_data`]. Invariant: only a directory directly under the storage path whose name starts
//! with `pvc-<uid>_` of the volume being deleted is ever removed, and only on this process's own
//! node; elsewhere the data stays and the reason is reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

/// The class name, as k3s's.
pub const CLASS: &str = "local-path";
/// The provisioner name, as k3s's, so manifests naming it work unchanged.
pub const PROVISIONER: &str = "rancher.io/local-path";
/// Marks the default class (the DefaultStorageClass admission and the binder read it).
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// Which provisioner made a volume (upstream's annotation).
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The node a local-path volume lives on (local-path-provisioner's annotation).
pub const SELECTED_NODE: &str = "local.path.provisioner/selected-node";
/// The node label a volume's node affinity names.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Where local-path volumes live and which node's disk this process can reach.
#[derive(Clone, Debug)]
pub struct LocalPath {
    /// `--default-local-storage-path` (`<data-dir>/storage`, k3s's layout).
    pub path: PathBuf,
    /// The server's own node (its in-process agent), whose volume directories it may remove;
    /// `None` under `--disable-agent`.
    pub own_node: Option<String>,
}

/// Errors of the provisioner.
#[derive(Debug, thiserror::Error)]
pub enum LocalPathError {
    #[error("creating StorageClass local-path: {source}")]
    Class {
        #[source]
        source: kube::Error,
    },
    #[error("removing {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the data of {volume} is on node {node}; only the server's own node's is removed ({})",
        path.display()
    )]
    RemoteNode {
        volume: String,
        node: String,
        path: PathBuf,
    },
    #[error("{} is not a local-path volume directory of {volume} under {}", path.display(), root.display())]
    NotOurs {
        volume: String,
        path: PathBuf,
        root: PathBuf,
    },
}

/// The `local-path` StorageClass, marked default.
pub fn class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(CLASS.into()),
            annotations: Some(BTreeMap::from([(
                DEFAULT_CLASS_ANNOTATION.to_string(),
                "true".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        ..StorageClass::default()
    }
}

/// Creates the class unless it exists (a user's edits of it are kept, as k3s keeps an addon the
/// user changed until the next manifest write).
pub async fn ensure_class(client: &kube::Client) -> Result<(), LocalPathError> {
    let api: Api<StorageClass> = Api::all(client.clone());
    match api.create(&PostParams::default(), &class()).await {
        Ok(_) => {
            tracing::info!("created the default StorageClass {CLASS}");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(source) => Err(LocalPathError::Class { source }),
    }
}

/// `pvc-<claim uid>`, the volume's name (local-path-provisioner's and upstream's convention).
pub fn volume_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.metadata.uid.as_deref().unwrap_or(""))
}

/// `<root>/pvc-<uid>_<namespace>_<claim>`.
pub fn directory(root: &Path, claim: &PersistentVolumeClaim) -> PathBuf {
    let ns = claim.metadata.namespace.as_deref().unwrap_or("default");
    let name = claim.metadata.name.as_deref().unwrap_or("");
    root.join(format!("{}_{ns}_{name}", volume_name(claim)))
}

/// The volume for `claim` (of class `sc`) on `node` (whose `kubernetes.io/hostname` label is
/// `hostname`), pre-bound to the claim so the binder completes the binding.
pub fn volume_for(
    root: &Path,
    claim: &PersistentVolumeClaim,
    sc: &StorageClass,
    node: &str,
    hostname: &str,
) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned();
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume_name(claim)),
            annotations: Some(BTreeMap::from([
                (PROVISIONED_BY.to_string(), PROVISIONER.to_string()),
                (SELECTED_NODE.to_string(), node.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: storage.map(|q| BTreeMap::from([("storage".to_string(), q)])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
                field_path: None,
            }),
            host_path: Some(HostPathVolumeSource {
                path: directory(root, claim).to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.into(),
                            operator: "In".into(),
                            values: Some(vec![hostname.to_string()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            persistent_volume_reclaim_policy: Some(
                sc.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: sc.metadata.name.clone(),
            volume_mode: Some(spec.volume_mode.unwrap_or_else(|| "Filesystem".into())),
            mount_options: sc.mount_options.clone(),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

/// Whether `pv` was made by this provisioner.
pub fn is_ours(pv: &PersistentVolume) -> bool {
    pv.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .is_some_and(|p| p == PROVISIONER)
}

/// Removes a deleted local-path volume's directory (see the module's invariant). A directory
/// already gone is fine.
pub fn remove_data(local: &LocalPath, pv: &PersistentVolume) -> Result<(), LocalPathError> {
    let name = pv.metadata.name.clone().unwrap_or_default();
    let Some(path) = pv
        .spec
        .as_ref()
        .and_then(|s| s.host_path.as_ref())
        .map(|h| PathBuf::from(&h.path))
    else {
        return Ok(());
    };
    let under_root = path.parent() == Some(local.path.as_path())
        && path
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}_")));
    if !under_root || name.len() <= "pvc-".len() {
        return Err(LocalPathError::NotOurs {
            volume: name,
            path,
            root: local.path.clone(),
        });
    }
    let node = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SELECTED_NODE))
        .cloned()
        .unwrap_or_default();
    if local.own_node.as_deref() != Some(node.as_str()) {
        return Err(LocalPathError::RemoteNode {
            volume: name,
            node,
            path,
        });
    }
    match std::fs::remove_dir_all(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LocalPathError::Remove { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim() -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "web", "uid": "1234"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .expect("claim")
    }

    #[test]
    fn provisioned_volume_is_local_path_shaped() {
        let pv = volume_for(
            Path::new("/var/lib/r3s/storage"),
            &claim(),
            &class(),
            "n1",
            "n1",
        );
        let v = serde_json::to_value(&pv).expect("json");
        assert_eq!(v["metadata"]["name"], "pvc-1234");
        assert_eq!(
            v["spec"]["hostPath"],
            json!({"path": "/var/lib/r3s/storage/pvc-1234_web_data", "type": "DirectoryOrCreate"})
        );
        assert_eq!(v["spec"]["claimRef"]["uid"], "1234");
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(v["spec"]["storageClassName"], "local-path");
        assert_eq!(v["spec"]["capacity"]["storage"], "1Gi");
        assert_eq!(
            v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
            json!(["n1"])
        );
        assert!(is_ours(&pv));
    }

    #[test]
    fn removes_only_its_own_directory_on_its_own_node() {
        let root = tempfile::tempdir().expect("tmp");
        let local = LocalPath {
            path: root.path().to_path_buf(),
            own_node: Some("n1".into()),
        };
        let pv = volume_for(root.path(), &claim(), &class(), "n1", "n1");
        let dir = directory(root.path(), &claim());
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        remove_data(&local, &pv).expect("removed");
        assert!(!dir.exists());
        // Gone already: fine.
        remove_data(&local, &pv).expect("idempotent");

        let remote = volume_for(root.path(), &claim(), &class(), "n2", "n2");
        std::fs::create_dir_all(&dir).expect("mkdir");
        assert!(matches!(
            remove_data(&local, &remote),
            Err(LocalPathError::RemoteNode { .. })
        ));
        assert!(dir.exists());

        let mut odd = pv.clone();
        if let Some(h) = odd.spec.as_mut().and_then(|s| s.host_path.as_mut()) {
            h.path = root.path().to_string_lossy().into_owned();
        }
        assert!(matches!(
            remove_data(&local, &odd),
            Err(LocalPathError::NotOurs { .. })
        ));
        assert!(root.path().exists());
    }
}
