//! The EndpointSlice control loop: for every Service with a selector, EndpointSlices listing the
//! selected pods, at most [`MAX_ENDPOINTS`] per slice, one group of slices per address type and
//! resolved port list (named `targetPort`s resolve per pod, so pods can differ).
//!
//! Each endpoint carries the pod's IP, `conditions` (`ready`: ready and not terminating, or always
//! with `publishNotReadyAddresses`; `serving`: ready; `terminating`: being deleted), `nodeName`
//! and a `targetRef` to the pod. Slices are labelled `kubernetes.io/service-name` and
//! `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`, named
//! `<service>-<random>`, and controlled by their Service (the garbage collector removes them with
//! it). A Service selecting nothing keeps one empty slice, as upstream does.
//!
//! Watches Services, Pods and its own EndpointSlices. Invariant: the desired slices are canonical
//! (groups and endpoints sorted), and an existing slice is rewritten only when its content
//! differs, so an unchanged set of pods never causes a write.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use super::cache;
use super::informer::Informers;
use super::{ControllerError, endpoints, pods};

/// Endpoints per slice (upstream's `--max-endpoints-per-slice` default).
pub const MAX_ENDPOINTS: usize = 100;
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub slices: Store<EndpointSlice>,
}

/// A slice's content: address type, ports, endpoints.
type Content = (String, Vec<EndpointPort>, Vec<Endpoint>);

fn content(slice: &EndpointSlice) -> Content {
    (
        slice.address_type.clone(),
        slice.ports.clone().unwrap_or_default(),
        slice.endpoints.clone().unwrap_or_default(),
    )
}

/// A Service port resolved for one pod: name, number, protocol.
type ResolvedPort = (String, i32, String);

/// The slices `svc` should have, in a canonical order.
fn desired(svc: &Service, selected: &[Arc<Pod>]) -> Vec<Content> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let svc_ports = spec.ports.unwrap_or_default();
    let mut groups: BTreeMap<(String, Vec<ResolvedPort>), Vec<Endpoint>> = BTreeMap::new();
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
        let ports: Vec<ResolvedPort> = svc_ports
            .iter()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    endpoints::target_port(p, pod)?,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            })
            .collect();
        if ports.is_empty() && !svc_ports.is_empty() {
            continue;
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = pods::is_ready(pod);
        let address_type = if ip.contains(':') { "IPv6" } else { "IPv4" };
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish_not_ready || (ready && !terminating)),
                serving: Some(ready),
                terminating: Some(terminating),
            }),
            node_name: pods::node_name(pod).map(String::from),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        };
        groups
            .entry((address_type.to_string(), ports))
            .or_default()
            .push(endpoint);
    }
    let mut out = Vec::new();
    for ((address_type, ports), mut list) in groups {
        list.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        let ports: Vec<EndpointPort> = ports
            .into_iter()
            .map(|(name, port, protocol)| EndpointPort {
                name: Some(name),
                port: Some(port),
                protocol: Some(protocol),
                app_protocol: None,
            })
            .collect();
        for chunk in list.chunks(MAX_ENDPOINTS) {
            out.push((address_type.clone(), ports.clone(), chunk.to_vec()));
        }
    }
    if out.is_empty() {
        out.push(("IPv4".into(), Vec::new(), Vec::new()));
    }
    out
}

fn labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels
}

fn build(svc: &Service, (address_type, ports, endpoints): Content) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                svc.metadata.name.as_deref().unwrap_or("service")
            )),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels(svc)),
            owner_references: Some(vec![pods::controller_ref("v1", "Service", &svc.metadata)]),
            ..ObjectMeta::default()
        },
        address_type,
        ports: Some(ports),
        endpoints: Some(endpoints),
    }
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    cache::synced(&ctx.pods).await?;
    cache::synced(&ctx.slices).await?;
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut existing: Vec<Arc<EndpointSlice>> = ctx
        .slices
        .state()
        .into_iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|s| {
            let l = s.metadata.labels.clone().unwrap_or_default();
            l.get(SERVICE_NAME_LABEL) == Some(&name)
                && l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        })
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .collect();
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty());
    let want = match selector {
        // Without a selector the slices are someone else's to write; ours go.
        None => Vec::new(),
        Some(selector) => desired(
            &svc,
            &endpoints::selected_pods(&ctx.pods, &namespace, &selector),
        ),
    };
    // Slices already showing a wanted content stay untouched; the rest are rewritten in place,
    // then created or deleted to make up the count.
    let mut unmatched_want = Vec::new();
    let mut free: Vec<Arc<EndpointSlice>> = existing.clone();
    for content_wanted in want {
        match free.iter().position(|s| content(s) == content_wanted) {
            Some(i) => {
                let slice = free.remove(i);
                let ours = slice.metadata.labels.as_ref() == Some(&labels(&svc))
                    && pods::controller_of(&slice.metadata).is_some_and(|r| r.uid == uid);
                if !ours {
                    unmatched_want.push((content_wanted, Some(slice)));
                }
            }
            None => unmatched_want.push((content_wanted, None)),
        }
    }
    let mut reusable = free.into_iter();
    for (wanted, slot) in unmatched_want {
        let target = slot.or_else(|| reusable.next());
        let mut slice = build(&svc, wanted);
        let result = match target {
            Some(old) => {
                slice.metadata.name = old.metadata.name.clone();
                slice.metadata.generate_name = None;
                slice.metadata.resource_version = old.metadata.resource_version.clone();
                let slice_name = old.metadata.name.clone().unwrap_or_default();
                api.replace(&slice_name, &PostParams::default(), &slice)
                    .await
            }
            None => api.create(&PostParams::default(), &slice).await,
        };
        result.map_err(|source| ControllerError::Write {
            what: format!("endpointslice for service {namespace}/{name}"),
            source,
        })?;
    }
    for old in reusable {
        let slice_name = old.metadata.name.clone().unwrap_or_default();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: old.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&slice_name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(source) => {
                return Err(ControllerError::Write {
                    what: format!("deleting endpointslice {namespace}/{slice_name}"),
                    source,
                });
            }
        }
    }
    Ok(Action::await_change())
}

fn error_policy(_svc: Arc<Service>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::info!(%error, "endpointslice reconcile failed");
    Action::requeue(error.backoff())
}

/// Runs the EndpointSlice control loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    informers: &Informers,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (pod_store, pod_events) = (informers.pods.store(), informers.pods.subscribe());
    let (slice_store, slice_writer) = reflector::store();
    let managed = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let slice_events = reflector(
        slice_writer,
        watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(&managed),
        ),
    )
    .default_backoff()
    .touched_objects();
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pod_store,
        slices: slice_store,
    });
    let controller = Controller::new(Api::<Service>::all(client), watcher::Config::default());
    let mapper = endpoints::services_of_pod_namespace(controller.store());
    controller
        .watches_shared_stream(pod_events, mapper)
        .owns_stream(slice_events)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus, ServicePort, ServiceSpec};

    fn pod(name: &str, ip: &str, ready: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        })
    }

    #[test]
    fn slices_hold_at_most_a_hundred_endpoints_with_conditions() {
        let svc = Service {
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        let pods: Vec<Arc<Pod>> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.42.{}.{}", i / 200, i % 200 + 2),
                    i != 0,
                )
            })
            .collect();
        let slices = desired(&svc, &pods);
        let sizes: Vec<usize> = slices.iter().map(|s| s.2.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert!(
            slices
                .iter()
                .all(|s| s.0 == "IPv4" && s.1[0].port == Some(80))
        );
        let first = slices
            .iter()
            .flat_map(|s| s.2.iter())
            .find(|e| e.addresses == ["10.42.0.2"])
            .expect("p0");
        let conditions = first.conditions.clone().expect("conditions");
        assert_eq!(conditions.ready, Some(false));
        assert_eq!(conditions.serving, Some(false));
        assert_eq!(
            desired(&svc, &[]),
            vec![("IPv4".to_string(), vec![], vec![])]
        );
    }
}
