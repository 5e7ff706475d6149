//! Service load balancer status (k3s ServiceLB's role on the control-plane side): every Service
//! of type LoadBalancer gets `status.loadBalancer.ingress` = the addresses of the Ready nodes
//! (each node's ExternalIP, else its InternalIP), sorted; the node agents' service proxies serve
//! the Service's `port` on those addresses. A Service with `spec.loadBalancerClass` belongs to
//! another implementation and is left alone; a Service that stops being a LoadBalancer loses the
//! ingress this loop gave it.
//!
//! Invariant: level-triggered: every Service or Node change recomputes the ingress of every
//! Service from the watch caches, and writes only where it differs (so a quiet cluster writes
//! nothing).

use std::collections::BTreeSet;
use std::future::Future;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::json;

use super::cache;
use super::informer::Informers;

/// Runs the loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    informers: &Informers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (services, svc_changes) = cache::changes::<Service>(&client, watcher::Config::default());
    let (nodes, node_changes) = (informers.nodes.store(), informers.nodes.wakes());
    let mut changes = futures::stream::select(svc_changes, node_changes).boxed();
    let work = async {
        while changes.next().await.is_some() {
            // Both lists first: with the Nodes missing every ingress would be cleared. (Only
            // polling `changes` fills the stores, so this cannot wait here.)
            if !(cache::is_synced(&services) && cache::is_synced(&nodes)) {
                continue;
            }
            reconcile(&client, &services, &nodes).await;
        }
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown => {}
    }
}

/// The ingress addresses: each Ready node's ExternalIP, else its InternalIP, sorted.
pub fn ingress_ips<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<String> {
    let mut ips = BTreeSet::new();
    for n in nodes {
        let Some(status) = n.status.as_ref() else {
            continue;
        };
        let ready = status
            .conditions
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !ready {
            continue;
        }
        let addrs = status.addresses.as_deref().unwrap_or_default();
        let pick = |ty: &str| addrs.iter().find(|a| a.type_ == ty).map(|a| &a.address);
        if let Some(ip) = pick("ExternalIP").or_else(|| pick("InternalIP")) {
            ips.insert(ip.clone());
        }
    }
    ips.into_iter().collect()
}

/// What `svc`'s ingress should be: `Some(ips)` for a LoadBalancer Service of ours, `Some([])`
/// for another type (clear it), `None` for another implementation's Service (leave it).
pub fn desired(svc: &Service, ips: &[String]) -> Option<Vec<String>> {
    let spec = svc.spec.as_ref()?;
    if spec.load_balancer_class.is_some() {
        return None;
    }
    if spec.type_.as_deref() == Some("LoadBalancer") {
        Some(ips.to_vec())
    } else {
        Some(Vec::new())
    }
}

fn current(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

async fn reconcile(client: &kube::Client, services: &Store<Service>, nodes: &Store<Node>) {
    let node_list = nodes.state();
    let ips = ingress_ips(node_list.iter().map(|n| n.as_ref()));
    for svc in services.state() {
        let Some(want) = desired(&svc, &ips) else {
            continue;
        };
        if current(&svc) == want {
            continue;
        }
        let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
            continue;
        };
        let ingress = if want.is_empty() {
            serde_json::Value::Null
        } else {
            want.iter().map(|ip| json!({"ip": ip})).collect()
        };
        let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        if let Err(error) = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            // The next change of any Service or Node retries it.
            tracing::warn!(%error, service = %format!("{ns}/{name}"), "writing load balancer ingress");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).expect("node")
    }

    #[test]
    fn ready_nodes_external_ip_first() {
        let a = node(json!({"metadata": {"name": "a"}, "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}));
        let b = node(json!({"metadata": {"name": "b"}, "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.3"},
                          {"type": "ExternalIP", "address": "203.0.113.3"}]}}));
        let c = node(json!({"metadata": {"name": "c"}, "status": {
            "conditions": [{"type": "Ready", "status": "False"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}));
        assert_eq!(ingress_ips([&a, &b, &c]), vec!["10.0.0.2", "203.0.113.3"]);
    }

    #[test]
    fn other_classes_are_left_alone() {
        let svc = |spec: serde_json::Value| -> Service {
            serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": spec})).expect("svc")
        };
        let ips = vec!["10.0.0.2".to_owned()];
        assert_eq!(
            desired(&svc(json!({"type": "LoadBalancer"})), &ips),
            Some(ips.clone())
        );
        assert_eq!(
            desired(&svc(json!({"type": "ClusterIP"})), &ips),
            Some(vec![])
        );
        assert_eq!(
            desired(
                &svc(json!({"type": "LoadBalancer", "loadBalancerClass": "x.io/lb"})),
                &ips
            ),
            None
        );
    }
}
