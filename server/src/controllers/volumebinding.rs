//! The PersistentVolume binder (kube-controller-manager's persistentvolume-binder): binds each
//! Pending claim to an Available volume that fits, provisions `local-path` volumes
//! (`localpath.rs`) for claims that fit none, and reclaims a volume whose claim is gone.
//!
//! A volume fits a claim when the storage class is the same (no class on either side = ""), the
//! volume mode is the same, the volume offers every access mode the claim asks for, its capacity
//! covers the request, the claim's selector matches its labels, and (for a WaitForFirstConsumer
//! claim) its node affinity admits the node of the claim's first scheduled pod. Of those the
//! smallest wins. A claim naming a volume (`spec.volumeName`) or named by one (`spec.claimRef`) is
//! bound to that volume only. Claims of a WaitForFirstConsumer class wait until a pod using them
//! is bound to a node: the scheduler does not wait for them (it places the pod, then the volume
//! is made for the pod's node), as upstream's delayed binding does in effect.
//!
//! Binding writes, in upstream's order, the volume's `claimRef`, the volume's phase, the claim's
//! `volumeName`, the claim's phase (with the volume's capacity and access modes), so a pass cut
//! short is completed by the next one from what was written. The volume's write is conditional on
//! its resourceVersion: two claims never both get one volume. Reclaim, once the claim is
//! confirmed gone by a read: Retain → Released; Delete → the local-path data is removed and the
//! volume deleted (other volumes cannot be deleted by r3s: Failed, with the reason); Recycle →
//! Failed. Claims without a class get the default class when one appears (upstream's retroactive
//! default).
//!
//! Invariant: level-triggered: every change of a claim, volume, class or pod re-reads the caches
//! and writes only what differs, so a quiet cluster writes nothing.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{
    Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::json;

use super::cache;
use super::events::{EventType, Recorder, reference};
use super::informer::Informers;
use super::localpath::{self, LocalPath};
use super::{pods, selector};
use crate::api::quantity::Quantity;

/// The component name on our events.
pub const COMPONENT: &str = "persistentvolume-controller";
/// The node a WaitForFirstConsumer claim's pod went to (upstream's scheduler annotation; read
/// when present).
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// How often everything is looked at again with no change (a failed write is retried then).
const RESYNC: Duration = Duration::from_secs(15);

/// Runs the binder until `shutdown`. With `local`, also the local-path provisioner: its class is
/// created at start.
pub async fn run(
    client: kube::Client,
    informers: &Informers,
    local: Option<LocalPath>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let config = watcher::Config::default;
    let (claims, c1) = cache::changes::<PersistentVolumeClaim>(&client, config());
    let (volumes, c2) = cache::changes::<PersistentVolume>(&client, config());
    let (classes, c3) = cache::changes::<StorageClass>(&client, config());
    let ticks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(RESYNC).await;
        Some(((), ()))
    });
    let mut changes = futures::stream::select_all([
        c1.boxed(),
        c2.boxed(),
        c3.boxed(),
        informers.pods.wakes().boxed(),
        informers.nodes.wakes().boxed(),
        ticks.boxed(),
    ]);
    let mut binder = Binder {
        recorder: Recorder::new(client.clone(), COMPONENT),
        client,
        local,
        noted: HashMap::new(),
        taken: HashMap::new(),
        class_ready: false,
    };
    let (pods, nodes) = (informers.pods.store(), informers.nodes.store());
    let work = async {
        while changes.next().await.is_some() {
            // A burst of changes (pods created by the hundred) makes one pass, not one each.
            while let Some(Some(())) = changes.next().now_or_never() {}
            binder.ensure_class().await;
            let all = [
                cache::is_synced(&claims),
                cache::is_synced(&volumes),
                cache::is_synced(&classes),
                cache::is_synced(&pods),
                cache::is_synced(&nodes),
            ];
            if all.contains(&false) {
                continue;
            }
            let (claim_list, volume_list) = (claims.state(), volumes.state());
            if claim_list.is_empty() && volume_list.is_empty() {
                continue;
            }
            let snapshot = Snapshot {
                claims: claim_list,
                volumes: volume_list,
                classes: classes.state(),
                pods: &pods,
                nodes: &nodes,
            };
            binder.pass(&snapshot).await;
        }
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown => {}
    }
}

struct Snapshot<'a> {
    claims: Vec<Arc<PersistentVolumeClaim>>,
    volumes: Vec<Arc<PersistentVolume>>,
    classes: Vec<Arc<StorageClass>>,
    pods: &'a Store<Pod>,
    nodes: &'a Store<Node>,
}

struct Binder {
    client: kube::Client,
    recorder: Recorder,
    local: Option<LocalPath>,
    /// The last message recorded per claim or volume uid: an event is written when it changes,
    /// not on every pass.
    noted: HashMap<String, String>,
    /// Volumes this loop bound, until the cache shows it: volume name → claim uid.
    taken: HashMap<String, String>,
    class_ready: bool,
}

/// A claim's storage class ("" for none).
pub fn claim_class(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn volume_class(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn request(claim: &PersistentVolumeClaim) -> Option<Quantity> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| Quantity::parse(&q.0))
}

fn capacity(pv: &PersistentVolume) -> Option<Quantity> {
    pv.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| Quantity::parse(&q.0))
}

/// True if `pv`'s claimRef names `claim` (by namespace and name, and by uid when it has one).
pub fn names_claim(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.name == claim.metadata.name
        && r.namespace.as_deref().unwrap_or("default")
            == claim.metadata.namespace.as_deref().unwrap_or("default")
        && r.uid
            .as_ref()
            .is_none_or(|u| Some(u) == claim.metadata.uid.as_ref())
}

/// True if `pv` satisfies `claim` (class, mode, access modes, size, selector); node affinity and
/// availability are checked by [`find_volume`].
pub fn fits(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let (Some(vs), Some(cs)) = (pv.spec.as_ref(), claim.spec.as_ref()) else {
        return false;
    };
    let mode = |m: &Option<String>| m.clone().unwrap_or_else(|| "Filesystem".into());
    let offered = vs.access_modes.as_deref().unwrap_or_default();
    let modes_ok = cs
        .access_modes
        .iter()
        .flatten()
        .all(|m| offered.contains(m));
    let size_ok = match (request(claim), capacity(pv)) {
        (Some(want), Some(have)) => have >= want,
        (None, _) => true,
        (Some(_), None) => false,
    };
    let selector_ok = cs
        .selector
        .as_ref()
        .is_none_or(|s| selector::matches(s, pv.metadata.labels.as_ref()));
    volume_class(pv) == claim_class(claim)
        && mode(&vs.volume_mode) == mode(&cs.volume_mode)
        && modes_ok
        && size_ok
        && selector_ok
}

/// True if `pv` may be used on `node` (no node affinity: anywhere).
pub fn node_admits(pv: &PersistentVolume, node: &Node) -> bool {
    let Some(required) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let fields: BTreeMap<String, String> = [(
        "metadata.name".to_string(),
        node.metadata.name.clone().unwrap_or_default(),
    )]
    .into();
    required.node_selector_terms.iter().any(|t| {
        let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
        let by_field = t.match_fields.as_deref().unwrap_or(&[]);
        (!exprs.is_empty() || !by_field.is_empty())
            && selector::node_requirements(exprs, labels)
            && selector::node_requirements(by_field, &fields)
    })
}

fn is_available(pv: &PersistentVolume) -> bool {
    pv.metadata.deletion_timestamp.is_none()
        && pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none())
        && !matches!(phase_of(pv), "Released" | "Failed")
}

fn phase_of(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn claim_phase(claim: &PersistentVolumeClaim) -> &str {
    claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The volume `claim` should be bound to: one naming the claim, else the smallest available one
/// that fits (on `node`, when given); `taken` volumes are left out.
pub fn find_volume<'a>(
    claim: &PersistentVolumeClaim,
    volumes: &'a [Arc<PersistentVolume>],
    taken: &HashMap<String, String>,
    node: Option<&Node>,
) -> Option<&'a Arc<PersistentVolume>> {
    let usable = |pv: &&Arc<PersistentVolume>| {
        fits(pv, claim)
            && node.is_none_or(|n| node_admits(pv, n))
            && pv.metadata.deletion_timestamp.is_none()
            && !pv.metadata.name.as_ref().is_some_and(|n| {
                taken
                    .get(n)
                    .is_some_and(|u| Some(u) != claim.metadata.uid.as_ref())
            })
    };
    if let Some(pre) = volumes
        .iter()
        .filter(usable)
        .find(|pv| names_claim(pv, claim))
    {
        return Some(pre);
    }
    volumes
        .iter()
        .filter(usable)
        .filter(|pv| is_available(pv))
        .min_by_key(|pv| capacity(pv))
}

/// The default class: the newest marked default (upstream's rule when several are), if any.
pub fn default_class(classes: &[Arc<StorageClass>]) -> Option<&str> {
    classes
        .iter()
        .filter(|c| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(localpath::DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true")
        })
        .max_by_key(|c| c.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .and_then(|c| c.metadata.name.as_deref())
}

fn key(ns: Option<&str>, name: &str) -> (String, String) {
    (ns.unwrap_or("default").to_string(), name.to_string())
}

/// (namespace, claim) → the node of a scheduled, active pod that mounts the claim.
fn consumers(pods: &Store<Pod>) -> HashMap<(String, String), String> {
    let mut out = HashMap::new();
    for pod in pods.state() {
        let Some(node) = pods::node_name(&pod) else {
            continue;
        };
        if !pods::is_active(&pod) {
            continue;
        }
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref());
        for v in volumes.unwrap_or_default() {
            if let Some(c) = &v.persistent_volume_claim {
                out.insert(
                    key(pod.metadata.namespace.as_deref(), &c.claim_name),
                    node.to_string(),
                );
            }
        }
    }
    out
}

fn claim_ref(claim: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: claim.metadata.namespace.clone(),
        name: claim.metadata.name.clone(),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        field_path: None,
    }
}

fn name_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

impl Binder {
    async fn ensure_class(&mut self) {
        if self.class_ready || self.local.is_none() {
            return;
        }
        match localpath::ensure_class(&self.client).await {
            Ok(()) => self.class_ready = true,
            Err(error) => tracing::warn!(%error, "will retry"),
        }
    }

    async fn pass(&mut self, s: &Snapshot<'_>) {
        // Forget what the cache now shows (bound), or shows gone.
        self.taken.retain(|pv, _| {
            s.volumes
                .iter()
                .find(|v| v.metadata.name.as_ref() == Some(pv))
                .is_some_and(|v| v.spec.as_ref().is_some_and(|sp| sp.claim_ref.is_none()))
        });
        let default = default_class(&s.classes).map(str::to_string);
        let users = consumers(s.pods);
        for claim in &s.claims {
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Err(error) = self.sync_claim(claim, s, default.as_deref(), &users).await {
                tracing::info!(%error, claim = %pods::key(&claim.metadata), "will retry");
            }
        }
        let by_key: HashMap<(String, String), &Arc<PersistentVolumeClaim>> = s
            .claims
            .iter()
            .map(|c| (key(c.metadata.namespace.as_deref(), &name_of(&**c)), c))
            .collect();
        for pv in &s.volumes {
            if let Err(error) = self.sync_volume(pv, &by_key).await {
                tracing::info!(%error, volume = %name_of(&**pv), "will retry");
            }
        }
        let live: std::collections::HashSet<&str> = s
            .claims
            .iter()
            .filter_map(|c| c.metadata.uid.as_deref())
            .chain(s.volumes.iter().filter_map(|v| v.metadata.uid.as_deref()))
            .collect();
        self.noted.retain(|uid, _| live.contains(uid.as_str()));
    }

    /// Records `reason: message` about `obj` unless it was the last thing said about it.
    async fn note(&mut self, obj: ObjectReference, kind: EventType, reason: &str, message: &str) {
        let uid = obj.uid.clone().unwrap_or_default();
        let said = format!("{reason}: {message}");
        if self.noted.get(&uid) == Some(&said) {
            return;
        }
        self.recorder.record(&obj, kind, reason, message).await;
        self.noted.insert(uid, said);
    }

    async fn sync_claim(
        &mut self,
        claim: &PersistentVolumeClaim,
        s: &Snapshot<'_>,
        default: Option<&str>,
        users: &HashMap<(String, String), String>,
    ) -> Result<(), kube::Error> {
        let ns = claim.metadata.namespace.as_deref().unwrap_or("default");
        let name = name_of(claim);
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let spec = claim.spec.clone().unwrap_or_default();
        let volume_name = spec.volume_name.clone().filter(|v| !v.is_empty());
        let me = || reference("v1", "PersistentVolumeClaim", &claim.metadata);
        if spec.storage_class_name.is_none()
            && volume_name.is_none()
            && let Some(class) = default
        {
            let patch = json!({"spec": {"storageClassName": class}});
            claims
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(());
        }
        if let Some(vname) = volume_name {
            let Some(pv) = s.volumes.iter().find(|v| name_of(&***v) == vname) else {
                if claim_phase(claim) == "Bound" {
                    self.set_claim_phase(claim, "Lost").await?;
                    let msg =
                        "Bound claim has lost its PersistentVolume. Data on the volume is lost!";
                    self.note(me(), EventType::Warning, "ClaimLost", msg).await;
                }
                return Ok(());
            };
            let has_ref = pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_some());
            if has_ref && !names_claim(pv, claim) {
                let msg = format!("volume \"{vname}\" already bound to a different claim.");
                self.note(me(), EventType::Warning, "FailedBinding", &msg)
                    .await;
                return Ok(());
            }
            return self.bind(pv, claim).await;
        }

        let class_name = claim_class(claim);
        let class = s
            .classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(class_name));
        let delayed =
            class.is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
        let node_name = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SELECTED_NODE).cloned())
            .or_else(|| users.get(&key(Some(ns), &name)).cloned());
        if claim_phase(claim).is_empty() {
            self.set_claim_phase(claim, "Pending").await?;
        }
        let node = match (&node_name, delayed) {
            (None, true) => {
                let msg = "waiting for first consumer to be created before binding";
                self.note(me(), EventType::Normal, "WaitForFirstConsumer", msg)
                    .await;
                return Ok(());
            }
            (Some(n), true) => Some(
                s.nodes
                    .state()
                    .into_iter()
                    .find(|x| name_of(&**x) == *n)
                    .unwrap_or_else(|| {
                        // Not in the cache (yet): its hostname label is its name, as agents set it.
                        let mut node = Node::default();
                        node.metadata.name = Some(n.clone());
                        node.metadata.labels = Some(BTreeMap::from([(
                            "kubernetes.io/hostname".to_string(),
                            n.clone(),
                        )]));
                        Arc::new(node)
                    }),
            ),
            _ => None,
        };
        if let Some(pv) = find_volume(claim, &s.volumes, &self.taken, node.as_deref()) {
            return self.bind(pv, claim).await;
        }
        match class {
            Some(sc) if sc.provisioner == localpath::PROVISIONER && self.local.is_some() => {
                let Some(node) = node else {
                    let msg = "configuration error, no node was specified: local-path volumes need volumeBindingMode WaitForFirstConsumer";
                    self.note(me(), EventType::Warning, "ProvisioningFailed", msg)
                        .await;
                    return Ok(());
                };
                self.provision(claim, sc, &node).await
            }
            Some(sc) => {
                let msg = format!(
                    "waiting for a volume to be created by the external provisioner \"{}\" or manually by the system administrator",
                    sc.provisioner
                );
                self.note(me(), EventType::Normal, "ExternalProvisioning", &msg)
                    .await;
                Ok(())
            }
            None if !class_name.is_empty() => {
                let msg = format!("storageclass.storage.k8s.io \"{class_name}\" not found");
                self.note(me(), EventType::Warning, "ProvisioningFailed", &msg)
                    .await;
                Ok(())
            }
            None => {
                let msg =
                    "no persistent volumes available for this claim and no storage class is set";
                self.note(me(), EventType::Normal, "FailedBinding", msg)
                    .await;
                Ok(())
            }
        }
    }

    async fn provision(
        &mut self,
        claim: &PersistentVolumeClaim,
        sc: &StorageClass,
        node: &Node,
    ) -> Result<(), kube::Error> {
        let Some(local) = self.local.clone() else {
            return Ok(());
        };
        let node_name = name_of(node);
        let hostname = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/hostname"))
            .cloned()
            .unwrap_or_else(|| node_name.clone());
        let pv = localpath::volume_for(&local.path, claim, sc, &node_name, &hostname);
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        match api.create(&Default::default(), &pv).await {
            Ok(_) => {
                let msg = format!(
                    "Successfully provisioned volume {} on node {node_name}",
                    name_of(&pv)
                );
                let me = reference("v1", "PersistentVolumeClaim", &claim.metadata);
                self.note(me, EventType::Normal, "ProvisioningSucceeded", &msg)
                    .await;
                Ok(())
            }
            // Made by an earlier pass; the cache will show it.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Completes the binding of `pv` and `claim` (each step only if not done yet).
    async fn bind(
        &mut self,
        pv: &PersistentVolume,
        claim: &PersistentVolumeClaim,
    ) -> Result<(), kube::Error> {
        let vname = name_of(pv);
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        let spec = pv.spec.clone().unwrap_or_default();
        let full = spec
            .claim_ref
            .as_ref()
            .is_some_and(|r| r.uid.is_some() && r.uid == claim.metadata.uid);
        if !full {
            let mut patch = json!({
                "metadata": {"resourceVersion": pv.metadata.resource_version},
                "spec": {"claimRef": claim_ref(claim)},
            });
            if spec.claim_ref.is_none() {
                patch["metadata"]["annotations"] = json!({BOUND_BY_CONTROLLER: "yes"});
            }
            volumes
                .patch(&vname, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            if let Some(uid) = &claim.metadata.uid {
                self.taken.insert(vname.clone(), uid.clone());
            }
        }
        if phase_of(pv) != "Bound" {
            let patch = json!({"status": {"phase": "Bound"}});
            volumes
                .patch_status(&vname, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        let ns = claim.metadata.namespace.as_deref().unwrap_or("default");
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let cname = name_of(claim);
        let cspec = claim.spec.clone().unwrap_or_default();
        if cspec.volume_name.as_deref() != Some(vname.as_str()) {
            let mut annotations = json!({BIND_COMPLETED: "yes"});
            if cspec.volume_name.as_deref().is_none_or(str::is_empty) {
                annotations[BOUND_BY_CONTROLLER] = json!("yes");
            }
            let patch = json!({
                "metadata": {"annotations": annotations},
                "spec": {"volumeName": vname},
            });
            claims
                .patch(&cname, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        let status = claim.status.clone().unwrap_or_default();
        if status.phase.as_deref() != Some("Bound")
            || status.capacity != spec.capacity
            || status.access_modes != spec.access_modes
        {
            let patch = json!({"status": {
                "phase": "Bound",
                "capacity": spec.capacity,
                "accessModes": spec.access_modes,
            }});
            claims
                .patch_status(&cname, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Ok(())
    }

    async fn set_claim_phase(
        &self,
        claim: &PersistentVolumeClaim,
        phase: &str,
    ) -> Result<(), kube::Error> {
        let ns = claim.metadata.namespace.as_deref().unwrap_or("default");
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let patch = json!({"status": {"phase": phase}});
        claims
            .patch_status(
                &name_of(claim),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    async fn set_volume_phase(
        &self,
        pv: &PersistentVolume,
        phase: &str,
        message: Option<&str>,
    ) -> Result<(), kube::Error> {
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        let patch = json!({"status": {"phase": phase, "message": message}});
        volumes
            .patch_status(&name_of(pv), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn sync_volume(
        &mut self,
        pv: &PersistentVolume,
        claims: &HashMap<(String, String), &Arc<PersistentVolumeClaim>>,
    ) -> Result<(), kube::Error> {
        if pv.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let phase = phase_of(pv);
        let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
            if phase != "Available" {
                self.set_volume_phase(pv, "Available", None).await?;
            }
            return Ok(());
        };
        let Some(uid) = r.uid.clone() else {
            // Pre-bound by a user, its claim not bound yet.
            if phase != "Available" {
                self.set_volume_phase(pv, "Available", None).await?;
            }
            return Ok(());
        };
        let ns = r.namespace.clone().unwrap_or_else(|| "default".into());
        let cname = r.name.clone().unwrap_or_default();
        let cached = claims.get(&(ns.clone(), cname.clone()));
        if cached.is_some_and(|c| c.metadata.uid.as_deref() == Some(uid.as_str())) {
            return Ok(());
        }
        // Gone from the cache: confirm with a read before anything is released or deleted.
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        if let Some(live) = api.get_opt(&cname).await?
            && live.metadata.uid.as_deref() == Some(uid.as_str())
        {
            return Ok(());
        }
        self.reclaim(pv, phase).await
    }

    async fn reclaim(&mut self, pv: &PersistentVolume, phase: &str) -> Result<(), kube::Error> {
        if phase == "Failed" {
            return Ok(());
        }
        let vname = name_of(pv);
        let me = reference("v1", "PersistentVolume", &pv.metadata);
        let policy = pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.clone())
            .unwrap_or_else(|| "Retain".into());
        match policy.as_str() {
            "Delete" => {}
            "Retain" => {
                if phase != "Released" {
                    self.set_volume_phase(pv, "Released", None).await?;
                }
                return Ok(());
            }
            other => {
                let msg = format!("reclaim policy {other} is not supported by r3s");
                self.set_volume_phase(pv, "Failed", Some(&msg)).await?;
                self.note(me, EventType::Warning, "VolumeFailedRecycle", &msg)
                    .await;
                return Ok(());
            }
        }
        if phase != "Released" {
            self.set_volume_phase(pv, "Released", None).await?;
        }
        let removed = match &self.local {
            Some(local) if localpath::is_ours(pv) => {
                localpath::remove_data(local, pv).map_err(|e| e.to_string())
            }
            _ => Err(format!(
                "error getting deleter volume plugin for volume \"{vname}\": no deletable volume plugin matched"
            )),
        };
        match removed {
            Ok(()) => {
                let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
                match volumes.delete(&vname, &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(msg) => {
                self.set_volume_phase(pv, "Failed", Some(&msg)).await?;
                self.note(me, EventType::Warning, "VolumeFailedDelete", &msg)
                    .await;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pv(v: Value) -> Arc<PersistentVolume> {
        Arc::new(serde_json::from_value(v).expect("pv"))
    }

    fn claim(spec: Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "c", "namespace": "ns", "uid": "u1"}, "spec": spec}))
        .expect("claim")
    }

    fn volume(name: &str, size: &str, extra: Value) -> Arc<PersistentVolume> {
        let mut v = json!({"metadata": {"name": name, "labels": {"tier": "fast"}},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                     "hostPath": {"path": "/x"}, "storageClassName": "manual"},
            "status": {"phase": "Available"}});
        for (k, val) in extra.as_object().into_iter().flatten() {
            v["spec"][k] = val.clone();
        }
        pv(v)
    }

    fn want(size: &str) -> Value {
        json!({"storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
               "resources": {"requests": {"storage": size}}})
    }

    fn names(found: Option<&Arc<PersistentVolume>>) -> Option<String> {
        found.map(|p| name_of(&**p))
    }

    #[test]
    fn smallest_fitting_volume_wins() {
        let vols = vec![
            volume("big", "10Gi", json!({})),
            volume("small", "1Gi", json!({})),
            volume("tiny", "500Mi", json!({})),
        ];
        let c = claim(want("1Gi"));
        assert_eq!(
            names(find_volume(&c, &vols, &HashMap::new(), None)).as_deref(),
            Some("small")
        );
        let c = claim(want("20Gi"));
        assert_eq!(names(find_volume(&c, &vols, &HashMap::new(), None)), None);
    }

    #[test]
    fn class_modes_and_selector_must_match() {
        let vols = vec![volume("a", "1Gi", json!({}))];
        let none = HashMap::new();
        let mut spec = want("1Gi");
        spec["storageClassName"] = json!("other");
        assert!(find_volume(&claim(spec), &vols, &none, None).is_none());
        let mut spec = want("1Gi");
        if let Some(o) = spec.as_object_mut() {
            o.remove("storageClassName");
        }
        assert!(
            find_volume(&claim(spec), &vols, &none, None).is_none(),
            "no class only binds classless volumes"
        );
        let mut spec = want("1Gi");
        spec["accessModes"] = json!(["ReadWriteMany"]);
        assert!(find_volume(&claim(spec), &vols, &none, None).is_none());
        let mut spec = want("1Gi");
        spec["volumeMode"] = json!("Block");
        assert!(find_volume(&claim(spec), &vols, &none, None).is_none());
        let mut spec = want("1Gi");
        spec["selector"] = json!({"matchLabels": {"tier": "slow"}});
        assert!(find_volume(&claim(spec), &vols, &none, None).is_none());
        let mut spec = want("1Gi");
        spec["selector"] = json!({"matchLabels": {"tier": "fast"}});
        assert!(find_volume(&claim(spec), &vols, &none, None).is_some());
    }

    #[test]
    fn bound_prebound_and_taken_volumes() {
        let other = json!({"claimRef": {"namespace": "ns", "name": "someone"}});
        let mine = json!({"claimRef": {"namespace": "ns", "name": "c"}});
        let none = HashMap::new();
        // Pre-bound to another claim: not available; pre-bound to this one: preferred.
        let vols = vec![
            volume("theirs", "1Gi", other),
            volume("free", "5Gi", json!({})),
        ];
        assert_eq!(
            names(find_volume(&claim(want("1Gi")), &vols, &none, None)).as_deref(),
            Some("free")
        );
        let vols = vec![
            volume("free", "1Gi", json!({})),
            volume("mine", "5Gi", mine),
        ];
        assert_eq!(
            names(find_volume(&claim(want("1Gi")), &vols, &none, None)).as_deref(),
            Some("mine")
        );
        // Taken by another claim in this loop: skipped until the cache catches up.
        let vols = vec![volume("free", "1Gi", json!({}))];
        let taken = HashMap::from([("free".to_string(), "u2".to_string())]);
        assert!(find_volume(&claim(want("1Gi")), &vols, &taken, None).is_none());
        // A released volume is not available again.
        let released = pv(
            json!({"metadata": {"name": "r"}, "spec": {"capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"], "storageClassName": "manual", "hostPath": {"path": "/x"},
            "claimRef": {"namespace": "ns", "name": "old", "uid": "u0"}}, "status": {"phase": "Released"}}),
        );
        assert!(find_volume(&claim(want("1Gi")), &[released], &none, None).is_none());
    }

    #[test]
    fn node_affinity_limits_delayed_binding() {
        let affinity = json!({"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}});
        let vols = vec![volume("local", "1Gi", affinity)];
        let node = |name: &str| -> Node {
            serde_json::from_value(json!({"metadata": {"name": name,
                "labels": {"kubernetes.io/hostname": name}}}))
            .expect("node")
        };
        let none = HashMap::new();
        let c = claim(want("1Gi"));
        assert!(find_volume(&c, &vols, &none, Some(&node("n1"))).is_some());
        assert!(find_volume(&c, &vols, &none, Some(&node("n2"))).is_none());
        assert!(find_volume(&c, &vols, &none, None).is_some());
    }

    #[test]
    fn newest_default_class() {
        let class = |name: &str, default: bool, created: &str| -> Arc<StorageClass> {
            let mut v = json!({"metadata": {"name": name, "creationTimestamp": created}, "provisioner": "x"});
            if default {
                v["metadata"]["annotations"] =
                    json!({"storageclass.kubernetes.io/is-default-class": "true"});
            }
            Arc::new(serde_json::from_value(v).expect("class"))
        };
        let classes = vec![
            class("a", true, "2024-01-01T00:00:00Z"),
            class("b", true, "2024-02-01T00:00:00Z"),
            class("c", false, "2024-03-01T00:00:00Z"),
        ];
        assert_eq!(default_class(&classes), Some("b"));
        assert_eq!(default_class(&classes[2..]), None);
    }
}
