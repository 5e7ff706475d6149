//! The garbage collector: deletes objects whose owners are gone, and carries out foreground and
//! orphan deletion of owners.
//!
//! Watches every resource the API lists as list+watch+delete (found once through discovery at
//! start) into one cache per resource; any change wakes a sweep over the caches:
//! - an object none of whose `ownerReferences` exists any more is deleted (background cascade);
//!   dangling references next to live owners are removed;
//! - an owner being deleted with the `orphan` finalizer has its reference removed from every
//!   dependent, then loses the finalizer;
//! - an owner being deleted with the `foregroundDeletion` finalizer has its dependents deleted
//!   (foreground, so the cascade recurses) and loses the finalizer once no dependent with
//!   `blockOwnerDeletion` is left.
//!
//! Resources are discovered once, at start: custom resources defined later are not collected
//! until the server restarts (re-running discovery when CRDs change is the fix).
//!
//! Invariants: an owner is only declared gone after a live GET (404 or another uid) confirms what
//! the cache says, since caches of different resources lag independently; every write is
//! conditional on the uid or resourceVersion the sweep saw.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::{ApiResource, Resource};
use kube::discovery::{ApiCapabilities, Discovery, Scope, verbs};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use super::cache;

/// The finalizer that asks for foreground cascading deletion.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer that asks for dependents to be orphaned.
pub const ORPHAN: &str = "orphan";

/// How often a sweep runs even without changes (retries failed writes and lookups).
const RESYNC: Duration = Duration::from_secs(5);

/// One watched resource.
pub struct Kind {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub store: Store<DynamicObject>,
}

/// Resources that can be listed, watched and deleted, as discovery reports them.
pub async fn discover(
    client: &kube::Client,
) -> Result<Vec<(ApiResource, ApiCapabilities)>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            let usable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| caps.supports_operation(v));
            if usable && !ar.plural.contains('/') {
                out.push((ar, caps));
            }
        }
    }
    Ok(out)
}

/// Discovery, retried until the API answers or `shutdown`.
pub async fn discover_until_ready(client: &kube::Client) -> Vec<(ApiResource, ApiCapabilities)> {
    loop {
        match discover(client).await {
            Ok(found) if !found.is_empty() => return found,
            Ok(_) => tracing::info!("discovery found no resources yet"),
            Err(error) => tracing::info!(%error, "discovery failed; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs the garbage collector until `shutdown`.
pub async fn run(client: kube::Client, shutdown: impl Future<Output = ()> + Send + 'static) {
    let work = async {
        let found = discover_until_ready(&client).await;
        let mut kinds = Vec::new();
        let mut streams = Vec::new();
        for (ar, caps) in found {
            // Events own nothing and are owned by nothing; watching them would only cost.
            if ar.group.is_empty() && ar.kind == "Event" {
                continue;
            }
            let writer = reflector::store::Writer::new(ar.clone());
            let store = writer.as_reader();
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let stream = cache::wakes(reflector::reflector(
                writer,
                // The collector reads metadata only: keep nothing else of any object.
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .modify(|obj| {
                        obj.data = serde_json::Value::Null;
                        obj.metadata.managed_fields = None;
                    }),
            ))
            .boxed();
            streams.push(stream);
            kinds.push(Kind {
                resource: ar,
                namespaced: caps.scope == Scope::Namespaced,
                store,
            });
        }
        let mut changes = futures::stream::select_all(streams);
        loop {
            // A sweep per burst of changes, and a periodic one that retries what failed.
            match tokio::time::timeout(RESYNC, changes.next()).await {
                Ok(None) => return,
                Ok(Some(())) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while let Some(Some(())) = changes.next().now_or_never() {}
                }
                Err(_) => {}
            }
            // A kind still listing would make every object it owns look orphaned (each one
            // then costs a GET to confirm).
            if kinds.iter().all(|k| cache::is_synced(&k.store)) {
                sweep(&client, &kinds).await;
            }
        }
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown => {}
    }
}

struct Entry<'a> {
    kind: &'a Kind,
    obj: std::sync::Arc<DynamicObject>,
}

fn api_for(client: &kube::Client, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
    match (kind.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &kind.resource),
        _ => Api::all_with(client.clone(), &kind.resource),
    }
}

/// One pass over every cached object.
pub async fn sweep(client: &kube::Client, kinds: &[Kind]) {
    let mut by_uid: HashMap<String, Entry<'_>> = HashMap::new();
    let mut dependents: HashMap<String, Vec<Entry<'_>>> = HashMap::new();
    for kind in kinds {
        for obj in kind.store.state() {
            for r in obj.metadata.owner_references.iter().flatten() {
                dependents.entry(r.uid.clone()).or_default().push(Entry {
                    kind,
                    obj: obj.clone(),
                });
            }
            if let Some(uid) = obj.metadata.uid.clone() {
                by_uid.insert(uid, Entry { kind, obj });
            }
        }
    }
    for entry in by_uid.values() {
        let meta = &entry.obj.metadata;
        let finalizers = meta.finalizers.clone().unwrap_or_default();
        let uid = meta.uid.clone().unwrap_or_default();
        let deps = dependents.get(&uid).map(Vec::as_slice).unwrap_or(&[]);
        if meta.deletion_timestamp.is_some() && finalizers.iter().any(|f| f == ORPHAN) {
            orphan(client, entry, deps).await;
        } else if meta.deletion_timestamp.is_some() && finalizers.iter().any(|f| f == FOREGROUND) {
            foreground(client, entry, deps).await;
        }
        if meta
            .owner_references
            .as_ref()
            .is_some_and(|r| !r.is_empty())
            && meta.deletion_timestamp.is_none()
        {
            collect_if_orphaned(client, kinds, entry, &by_uid).await;
        }
    }
}

/// Removes `finalizer` from `entry` (conditional on the resourceVersion seen).
async fn drop_finalizer(client: &kube::Client, entry: &Entry<'_>, finalizer: &str) {
    let meta = &entry.obj.metadata;
    let rest: Vec<String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": meta.resource_version}});
    let api = api_for(client, entry.kind, meta.namespace.as_deref());
    if let Err(error) = api
        .patch(
            meta.name.as_deref().unwrap_or(""),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::debug!(%error, finalizer, "could not remove a finalizer");
    }
}

async fn orphan(client: &kube::Client, owner: &Entry<'_>, deps: &[Entry<'_>]) {
    let uid = owner.obj.metadata.uid.clone().unwrap_or_default();
    for dep in deps {
        let meta = &dep.obj.metadata;
        let kept: Vec<_> = meta
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.uid != uid)
            .cloned()
            .collect();
        let patch = json!({"metadata": {"ownerReferences": kept, "resourceVersion": meta.resource_version}});
        let api = api_for(client, dep.kind, meta.namespace.as_deref());
        if let Err(error) = api
            .patch(
                meta.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            tracing::debug!(%error, "could not orphan a dependent; next sweep retries");
            return;
        }
    }
    drop_finalizer(client, owner, ORPHAN).await;
}

async fn foreground(client: &kube::Client, owner: &Entry<'_>, deps: &[Entry<'_>]) {
    let uid = owner.obj.metadata.uid.clone().unwrap_or_default();
    let mut blocking = 0;
    for dep in deps {
        let meta = &dep.obj.metadata;
        let blocks = meta
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == uid && r.block_owner_deletion == Some(true));
        if blocks {
            blocking += 1;
        }
        if meta.deletion_timestamp.is_none() {
            delete(client, dep, DeleteParams::foreground()).await;
        }
    }
    if blocking == 0 {
        drop_finalizer(client, owner, FOREGROUND).await;
    }
}

async fn delete(client: &kube::Client, entry: &Entry<'_>, mut params: DeleteParams) {
    let meta = &entry.obj.metadata;
    params.preconditions = Some(Preconditions {
        uid: meta.uid.clone(),
        resource_version: None,
    });
    let api = api_for(client, entry.kind, meta.namespace.as_deref());
    match api
        .delete(meta.name.as_deref().unwrap_or(""), &params)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(error) => tracing::info!(%error, "garbage collection delete failed"),
    }
}

/// Deletes `entry` if none of its owners exists; drops references to owners that are gone.
async fn collect_if_orphaned(
    client: &kube::Client,
    kinds: &[Kind],
    entry: &Entry<'_>,
    by_uid: &HashMap<String, Entry<'_>>,
) {
    let meta = &entry.obj.metadata;
    let refs = meta.owner_references.clone().unwrap_or_default();
    let mut gone = Vec::new();
    for r in refs.iter().filter(|r| !by_uid.contains_key(&r.uid)) {
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", r.api_version.as_str()),
        };
        let Some(kind) = kinds.iter().find(|k| {
            k.resource.group == group && k.resource.version == version && k.resource.kind == r.kind
        }) else {
            // An owner kind we do not know: never guess that it is gone.
            return;
        };
        let api = api_for(client, kind, meta.namespace.as_deref());
        match api.get_opt(&r.name).await {
            Ok(Some(owner)) if owner.meta().uid.as_deref() == Some(r.uid.as_str()) => return,
            Ok(_) => gone.push(r.uid.clone()),
            Err(error) => {
                tracing::debug!(%error, "owner lookup failed; next sweep retries");
                return;
            }
        }
    }
    if gone.is_empty() {
        return;
    }
    if gone.len() == refs.len() {
        delete(client, entry, DeleteParams::background()).await;
        return;
    }
    let kept: Vec<_> = refs
        .into_iter()
        .filter(|r| !gone.contains(&r.uid))
        .collect();
    let patch =
        json!({"metadata": {"ownerReferences": kept, "resourceVersion": meta.resource_version}});
    let api = api_for(client, entry.kind, meta.namespace.as_deref());
    if let Err(error) = api
        .patch(
            meta.name.as_deref().unwrap_or(""),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::debug!(%error, "could not drop dangling owner references");
    }
}
