//! Pod garbage collection: removes pods bound to nodes that no longer exist, and the oldest
//! terminated (Succeeded/Failed) pods beyond `terminated_pod_gc_threshold`.
//!
//! Reads the shared Pod and Node caches and sweeps every `pod_gc_period`. A node is only taken to
//! be gone after a live GET says 404 (the node cache may lag a just-registered node).

use std::collections::HashSet;
use std::future::Future;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::reflector::Store;

use super::informer::Informers;
use super::{ControllerOptions, pods};

/// Runs pod GC until `shutdown`.
pub async fn run(
    client: kube::Client,
    informers: &Informers,
    opts: ControllerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (pod_store, node_store) = (informers.pods.store(), informers.nodes.store());
    let sweeps = async {
        if pod_store.wait_until_ready().await.is_err()
            || node_store.wait_until_ready().await.is_err()
        {
            return;
        }
        let mut tick = tokio::time::interval(opts.pod_gc_period);
        loop {
            tick.tick().await;
            sweep(&client, &opts, &pod_store, &node_store).await;
        }
    };
    tokio::select! {
        _ = sweeps => {}
        _ = shutdown => {}
    }
}

async fn delete(client: &kube::Client, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api
        .delete(pod.metadata.name.as_deref().unwrap_or(""), &params)
        .await
    {
        Ok(_) => tracing::info!(pod = pods::key(&pod.metadata), "garbage-collected pod"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(error) => tracing::info!(%error, "pod GC delete failed"),
    }
}

async fn sweep(
    client: &kube::Client,
    opts: &ControllerOptions,
    pod_store: &Store<Pod>,
    node_store: &Store<Node>,
) {
    let nodes: HashSet<String> = node_store
        .state()
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let all = pod_store.state();
    let node_api: Api<Node> = Api::all(client.clone());
    let mut confirmed_gone: HashSet<String> = HashSet::new();
    for pod in &all {
        let Some(node) = pods::node_name(pod) else {
            continue;
        };
        if nodes.contains(node) {
            continue;
        }
        if !confirmed_gone.contains(node) {
            match node_api.get_opt(node).await {
                Ok(None) => {
                    confirmed_gone.insert(node.to_string());
                }
                _ => continue,
            }
        }
        delete(client, pod).await;
    }
    let mut terminated: Vec<_> = all
        .iter()
        .filter(|p| {
            matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    let threshold = opts.terminated_pod_gc_threshold;
    if threshold > 0 && terminated.len() > threshold {
        terminated.sort_by_key(|p| p.metadata.creation_timestamp.clone());
        let excess = terminated.len() - threshold;
        for pod in terminated.into_iter().take(excess) {
            delete(client, pod).await;
        }
    }
}
