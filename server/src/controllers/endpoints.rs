//! The Endpoints control loop: for every Service with a selector, an Endpoints object of the same
//! name listing the selected pods' IPs, ready ones under `addresses` and the rest under
//! `notReadyAddresses` (all under `addresses` with `publishNotReadyAddresses`), with each Service
//! port resolved against the pod (named `targetPort`s look up the container port of that name).
//!
//! Watches Services and Pods (one shared pod cache). Services without a selector are left alone:
//! their Endpoints are written by someone else (the API server's own `default/kubernetes`).
//! Endpoints carry a non-controller owner reference to their Service so the garbage collector
//! removes them with it. EndpointSlices are written by `endpointslice.rs`.
//!
//! Invariant: the written object is canonical (subsets grouped by port list, addresses sorted), so
//! an unchanged set of pods never causes a write.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::cache;
use super::informer::Informers;
use super::{ControllerError, pods};

pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    cache::synced(&ctx.pods).await?;
    let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.clone()) else {
        return Ok(Action::await_change());
    };
    if selector.is_empty() || svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let selected = selected_pods(&ctx.pods, &namespace, &selector);
    let subsets = subsets(&svc, &selected);
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &namespace);
    let current = api
        .get_opt(&name)
        .await
        .map_err(|source| ControllerError::Read {
            what: format!("endpoints {namespace}/{name}"),
            source,
        })?;
    let desired_subsets = (!subsets.is_empty()).then_some(subsets);
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: name.clone(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    };
    let result = match current {
        Some(ep)
            if ep.subsets == desired_subsets
                && ep.metadata.labels == svc.metadata.labels
                && ep.metadata.owner_references.as_deref()
                    == Some(std::slice::from_ref(&owner)) =>
        {
            return Ok(Action::await_change());
        }
        Some(mut ep) => {
            ep.subsets = desired_subsets;
            ep.metadata.labels = svc.metadata.labels.clone();
            ep.metadata.owner_references = Some(vec![owner]);
            api.replace(&name, &PostParams::default(), &ep).await
        }
        None => {
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    labels: svc.metadata.labels.clone(),
                    owner_references: Some(vec![owner]),
                    ..ObjectMeta::default()
                },
                subsets: desired_subsets,
            };
            api.create(&PostParams::default(), &ep).await
        }
    };
    result.map_err(|source| ControllerError::Write {
        what: format!("endpoints {namespace}/{name}"),
        source,
    })?;
    Ok(Action::await_change())
}

fn error_policy(_svc: Arc<Service>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::info!(%error, "endpoints reconcile failed");
    Action::requeue(error.backoff())
}

/// Runs the Endpoints control loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    informers: &Informers,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (pod_store, pod_events) = (informers.pods.store(), informers.pods.subscribe());
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pod_store,
    });
    let controller = Controller::new(Api::<Service>::all(client), watcher::Config::default());
    let mapper = services_of_pod_namespace(controller.store());
    controller
        .watches_shared_stream(pod_events, mapper)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// The pods in `namespace` whose labels include every pair of a Service's `selector`.
pub(super) fn selected_pods(
    pods: &Store<Pod>,
    namespace: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<Arc<Pod>> {
    pods.state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .collect()
}

/// Maps a pod to every Service of its namespace: a pod change may concern any of them (its
/// labels may have just changed, so the Services selecting it now are not enough).
pub(super) fn services_of_pod_namespace(
    services: Store<Service>,
) -> impl Fn(Arc<Pod>) -> Vec<ObjectRef<Service>> + Send + Sync + 'static {
    move |pod: Arc<Pod>| {
        let ns = &pod.metadata.namespace;
        services
            .state()
            .into_iter()
            .filter(|s| s.metadata.namespace == *ns)
            .map(|s| ObjectRef::from_obj(&*s))
            .collect()
    }
}

/// The port a Service port reaches on `pod`, if the pod has it.
pub(super) fn target_port(
    port: &k8s_openapi::api::core::v1::ServicePort,
    pod: &Pod,
) -> Option<i32> {
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(s)) => s.parse().ok().or_else(|| {
            pod.spec
                .iter()
                .flat_map(|sp| sp.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| p.container_port)
        }),
    }
}

/// Subsets grouped by identical resolved port lists, addresses sorted by IP.
fn subsets(svc: &Service, selected: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let svc_ports = spec.ports.unwrap_or_default();
    type Group = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Group> = BTreeMap::new();
    for pod in selected {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        if pod.metadata.deletion_timestamp.is_some() && !publish_not_ready {
            continue;
        }
        let ports: Vec<(String, i32, String)> = svc_ports
            .iter()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    target_port(p, pod)?,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            })
            .collect();
        if ports.is_empty() && !svc_ports.is_empty() {
            continue;
        }
        let address = EndpointAddress {
            ip,
            hostname: None,
            node_name: pods::node_name(pod).map(String::from),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
        };
        let group = groups.entry(ports).or_default();
        if publish_not_ready || pods::is_ready(pod) {
            group.0.push(address);
        } else {
            group.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: (!name.is_empty()).then_some(name),
                            port,
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect()
                }),
            }
        })
        .collect()
}
