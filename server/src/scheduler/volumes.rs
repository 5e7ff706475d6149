//! The scheduler's view of a pod's PersistentVolumeClaims (upstream's VolumeBinding filter, the
//! part r3s needs): a claim that does not exist or is being deleted keeps the pod pending; an
//! unbound claim of an Immediate class (or of a class that does not exist) waits for the volume
//! binder ("pod has unbound immediate PersistentVolumeClaims"); a bound claim's volume must admit
//! the node through its node affinity (a local-path volume lives on one node, so the pod goes
//! back there). An unbound claim of a WaitForFirstConsumer class does not hold the pod: the pod is
//! placed and the binder then provisions or binds for the pod's node.
//!
//! Invariant: read from watch caches only; a claim or volume change wakes a scheduling cycle.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::controllers::cache;
use crate::controllers::volumebinding::{claim_class, node_admits};

/// The node-independent reason a pod cannot be placed, or the volumes whose node affinity every
/// candidate node must satisfy.
#[derive(Debug, Default)]
pub struct PodVolumes {
    pub unfit: Option<String>,
    pub bound: Vec<Arc<PersistentVolume>>,
}

impl PodVolumes {
    /// Why `node` does not fit the pod's volumes (upstream's wording), if it does not.
    pub fn reason(&self, node: &Node) -> Option<String> {
        if let Some(why) = &self.unfit {
            return Some(why.clone());
        }
        (!self.bound.iter().all(|pv| node_admits(pv, node)))
            .then(|| "node(s) had volume node affinity conflict".to_string())
    }
}

/// Caches of claims, volumes and classes.
#[derive(Clone)]
pub struct Volumes {
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
}

impl Volumes {
    /// The caches and the stream that fills them (poll it); it yields on every change.
    pub fn watch(client: &kube::Client) -> (Volumes, impl Stream<Item = ()> + Send + 'static) {
        let (claims, c1) = cache::changes(client, watcher::Config::default());
        let (volumes, c2) = cache::changes(client, watcher::Config::default());
        let (classes, c3) = cache::changes(client, watcher::Config::default());
        let changes = futures::stream::select_all([c1.boxed(), c2.boxed(), c3.boxed()]);
        (
            Volumes {
                claims,
                volumes,
                classes,
            },
            changes,
        )
    }

    /// True once every cache holds a complete list.
    pub fn synced(&self) -> bool {
        cache::is_synced(&self.claims)
            && cache::is_synced(&self.volumes)
            && cache::is_synced(&self.classes)
    }

    /// What `pod`'s claims ask of a node.
    pub fn of(&self, pod: &Pod) -> PodVolumes {
        let mut out = PodVolumes::default();
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref());
        for source in volumes
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.persistent_volume_claim.as_ref())
        {
            let name = &source.claim_name;
            let Some(claim) = self.claims.get(&ObjectRef::new(name).within(ns)) else {
                out.unfit = Some(format!("persistentvolumeclaim \"{name}\" not found"));
                return out;
            };
            if claim.metadata.deletion_timestamp.is_some() {
                out.unfit = Some(format!("persistentvolumeclaim \"{name}\" is being deleted"));
                return out;
            }
            let volume_name = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .filter(|v| !v.is_empty());
            match volume_name {
                Some(v) => match self.volumes.get(&ObjectRef::new(v)) {
                    Some(pv) => out.bound.push(pv),
                    None => {
                        out.unfit = Some(format!("persistentvolume \"{v}\" not found"));
                        return out;
                    }
                },
                None => {
                    let class = claim_class(&claim);
                    let delayed = self.classes.get(&ObjectRef::new(class)).is_some_and(|c| {
                        c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
                    });
                    if !delayed {
                        out.unfit =
                            Some("pod has unbound immediate PersistentVolumeClaims".to_string());
                        return out;
                    }
                }
            }
        }
        out
    }
}
