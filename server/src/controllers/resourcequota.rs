//! The resource quota control loop: keeps each ResourceQuota's `status.hard` (a copy of
//! `spec.hard`) and `status.used` (what the namespace's objects count against each hard
//! resource, summed with the same [`crate::api::quota::usage`] admission uses) current, so
//! `kubectl describe quota` shows real usage.
//!
//! Watches ResourceQuotas, Pods, Services, ConfigMaps, Secrets and PersistentVolumeClaims; a
//! change marks its namespace, and every quota of a marked namespace is recomputed by listing
//! the kinds its `hard` names. `count/<resource>` of other kinds is caught by a full resync
//! every [`RESYNC`]. Invariant: status is written only when it changed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service,
};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::ControllerError;
use crate::api::quantity::Quantity;
use crate::api::quota;
use crate::api::registry;

/// How often every quota is recomputed even without a watched change.
pub const RESYNC: Duration = Duration::from_secs(30);

/// The namespaces of changed objects of one kind (`None`: recompute everything, after a
/// watch restart).
fn namespaces_of<K>(client: &kube::Client) -> impl Stream<Item = Option<String>> + Send + 'static
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .map(|event| event.ok().and_then(|obj| obj.namespace()))
}

/// The resource a quota's hard entry is computed from.
fn source_of(key: &str) -> Option<&'static registry::Resource> {
    let core = |plural| registry::find("", "v1", plural);
    if let Some(count) = key.strip_prefix("count/") {
        let (plural, group) = count.split_once('.').unwrap_or((count, ""));
        return registry::find(group, "v1", plural);
    }
    if key.contains(".storageclass.storage.k8s.io/") || key == "requests.storage" {
        return core("persistentvolumeclaims");
    }
    match key {
        "pods" | "cpu" | "memory" | "ephemeral-storage" => core("pods"),
        k if k.starts_with("requests.") || k.starts_with("limits.") => core("pods"),
        "services" | "services.loadbalancers" | "services.nodeports" => core("services"),
        "configmaps" | "secrets" | "resourcequotas" | "persistentvolumeclaims" => core(key),
        _ => None,
    }
}

/// Recomputes and, when it changed, writes the status of every quota in `namespace`.
async fn sync_namespace(client: &kube::Client, namespace: &str) -> Result<(), ControllerError> {
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), namespace);
    let list = quotas
        .list(&ListParams::default())
        .await
        .map_err(|source| ControllerError::Read {
            what: format!("resourcequotas in {namespace}"),
            source,
        })?;
    let mut objects: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    for rq in list.items {
        let rq_value = serde_json::to_value(&rq)
            .map_err(|e| ControllerError::Invalid(format!("encoding a quota: {e}")))?;
        let hard = rq_value["spec"]["hard"].clone();
        let mut used = serde_json::Map::new();
        for key in hard.as_object().into_iter().flatten().map(|(k, _)| k) {
            let Some(res) = source_of(key) else {
                continue;
            };
            if !objects.contains_key(res.plural) {
                objects.insert(res.plural, list_objects(client, res, namespace).await?);
            }
            let tracked = objects
                .get(res.plural)
                .into_iter()
                .flatten()
                .filter(|o| quota::applies(&rq_value, res, o));
            let amount = quota::total(res, tracked)
                .get(key)
                .copied()
                .unwrap_or(Quantity::ZERO);
            used.insert(key.clone(), json!(amount.to_string()));
        }
        let status = json!({"hard": hard, "used": used});
        let current = &rq_value["status"];
        if current["hard"] == status["hard"] && current["used"] == status["used"] {
            continue;
        }
        // Keys that left `hard` are removed from the status (merge patch: null deletes).
        let mut patch = status.clone();
        for field in ["hard", "used"] {
            for key in current[field]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                if patch[field].get(key).is_none() {
                    patch[field][key.as_str()] = Value::Null;
                }
            }
        }
        let name = rq.name_any();
        quotas
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": patch})),
            )
            .await
            .map_err(|source| ControllerError::Write {
                what: format!("resourcequota {namespace}/{name} status"),
                source,
            })?;
    }
    Ok(())
}

/// Every object of `res` in `namespace`, as JSON.
async fn list_objects(
    client: &kube::Client,
    res: &registry::Resource,
    namespace: &str,
) -> Result<Vec<Value>, ControllerError> {
    let api_resource = ApiResource {
        group: res.group.to_string(),
        version: res.version.to_string(),
        api_version: res.api_version(),
        kind: res.kind.to_string(),
        plural: res.plural.to_string(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &api_resource);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| ControllerError::Read {
            what: format!("{} in {namespace}", res.plural),
            source,
        })?;
    list.items
        .iter()
        .map(|o| {
            serde_json::to_value(o)
                .map_err(|e| ControllerError::Invalid(format!("encoding an object: {e}")))
        })
        .collect()
}

/// The namespaces that hold at least one quota.
async fn quota_namespaces(client: &kube::Client) -> Result<BTreeSet<String>, ControllerError> {
    let all: Api<ResourceQuota> = Api::all(client.clone());
    let list = all
        .list(&ListParams::default())
        .await
        .map_err(|source| ControllerError::Read {
            what: "resourcequotas".into(),
            source,
        })?;
    Ok(list.items.iter().filter_map(|q| q.namespace()).collect())
}

/// Runs the loop until `shutdown` resolves.
pub async fn run(client: kube::Client, shutdown: impl std::future::Future<Output = ()> + Send) {
    let changes = futures::stream::select_all([
        namespaces_of::<ResourceQuota>(&client).boxed(),
        namespaces_of::<Pod>(&client).boxed(),
        namespaces_of::<Service>(&client).boxed(),
        namespaces_of::<ConfigMap>(&client).boxed(),
        namespaces_of::<Secret>(&client).boxed(),
        namespaces_of::<PersistentVolumeClaim>(&client).boxed(),
    ]);
    let mut changes = std::pin::pin!(changes);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut resync = tokio::time::interval(RESYNC);
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    let mut everything = true;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = resync.tick() => everything = true,
            change = changes.next() => match change {
                Some(Some(ns)) => { dirty.insert(ns); }
                Some(None) => {}
                None => return,
            },
        }
        // Drain what else is ready so a burst of changes costs one pass per namespace.
        while let Some(Some(change)) = futures::FutureExt::now_or_never(changes.next()) {
            if let Some(ns) = change {
                dirty.insert(ns);
            }
        }
        if dirty.is_empty() && !everything {
            continue;
        }
        if everything {
            match quota_namespaces(&client).await {
                Ok(all) => {
                    dirty.extend(all);
                    everything = false;
                }
                Err(error) => tracing::warn!(%error, "listing resource quotas"),
            }
        }
        let with_quotas = match quota_namespaces(&client).await {
            Ok(set) => set,
            Err(error) => {
                tracing::warn!(%error, "listing resource quotas");
                continue;
            }
        };
        let work: Vec<String> = std::mem::take(&mut dirty)
            .into_iter()
            .filter(|ns| with_quotas.contains(ns))
            .collect();
        for ns in work {
            if let Err(error) = sync_namespace(&client, &ns).await {
                tracing::debug!(%error, namespace = ns, "resource quota sync failed; retrying");
                dirty.insert(ns);
                tokio::time::sleep(error.backoff()).await;
            }
        }
    }
}
