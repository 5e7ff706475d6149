//! The DNS server's in-memory view of the cluster: the few facts of Services, Endpoints and Pods
//! that DNS answers need, keyed by `(namespace, name)`, and the watch loops that keep it current.
//!
//! Invariants: an entry holds only what the record rules read (no whole API objects, so a node
//! with thousands of Services stays small); Endpoints entries hold *ready* addresses only (the
//! `notReadyAddresses` never get a name); a kind's table is replaced whole when its watcher
//! re-lists, so objects deleted while the watch was down do not linger. Until every kind has
//! finished its first list the view is not [`View::synced`], and the server answers in-zone
//! names with SERVFAIL rather than a negative answer a client would cache.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tracing::warn;

/// `(namespace, name)` of an API object.
pub type Key = (String, String);

/// A Service's port as DNS sees it (SRV records need a name; unnamed ports get none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The port's name, lower-case; empty for an unnamed port.
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub port: u16,
}

/// What a Service name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// A virtual IP per family (`spec.clusterIPs`).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the ready endpoints' addresses.
    Headless,
    /// `type: ExternalName`: a CNAME to this (lower-case, no trailing dot) name.
    ExternalName(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub kind: ServiceKind,
    pub ports: Vec<Port>,
}

/// One ready address of an Endpoints object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ip: IpAddr,
    /// `hostname` as written in the Endpoints object.
    pub hostname: Option<String>,
    /// The pod behind it (`targetRef`), to find a hostname the Endpoints object does not carry.
    pub pod: Option<String>,
    /// The ports of the subset the address is in (names are the Service's port names).
    pub ports: Vec<Port>,
}

/// The DNS-relevant facts of a Pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodEntry {
    pub ips: Vec<IpAddr>,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
}

/// Everything the record rules read. Mutated only by the watch loops (and tests).
#[derive(Debug, Default)]
pub struct View {
    pub services: HashMap<Key, ServiceEntry>,
    pub endpoints: HashMap<Key, Vec<Address>>,
    pub pods: HashMap<Key, PodEntry>,
    /// SOA serial: seconds since the epoch of the last change (as CoreDNS does).
    pub serial: u32,
    synced: [bool; 3],
}

impl View {
    /// A view that answers at once (for tests and benchmarks that fill it by hand).
    pub fn synced() -> View {
        View {
            synced: [true; 3],
            ..View::default()
        }
    }

    /// Whether every kind finished its first list.
    pub fn is_synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    /// The hostname of an endpoint address: its own, else the one its pod asks for when the pod's
    /// subdomain is this Service (the rule the Endpoints controller applies upstream).
    pub fn hostname_of(&self, ns: &str, service: &str, addr: &Address) -> Option<String> {
        if let Some(h) = &addr.hostname {
            return Some(h.to_ascii_lowercase());
        }
        let pod = self.pods.get(&(ns.to_string(), addr.pod.clone()?))?;
        if pod.subdomain.as_deref()?.eq_ignore_ascii_case(service) {
            pod.hostname.as_ref().map(|h| h.to_ascii_lowercase())
        } else {
            None
        }
    }
}

/// One of the kinds the view keeps.
pub trait Tracked:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug
where
    Self: Send + Sync + 'static,
{
    type Entry: Send;
    /// Which `synced` slot is this kind's.
    const SLOT: usize;
    /// The DNS facts of `obj`, or `None` if it contributes nothing.
    fn entry(obj: &Self) -> Option<Self::Entry>;
    fn table(view: &mut View) -> &mut HashMap<Key, Self::Entry>;
}

fn key<K: kube::Resource>(obj: &K) -> Option<Key> {
    let meta = obj.meta();
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn protocol(p: Option<&String>) -> String {
    p.map_or_else(|| "tcp".to_string(), |p| p.to_ascii_lowercase())
}

fn parse_ips<'a>(ips: impl Iterator<Item = &'a String>) -> Vec<IpAddr> {
    ips.filter_map(|ip| ip.parse().ok()).collect()
}

impl Tracked for Service {
    type Entry = ServiceEntry;
    const SLOT: usize = 0;

    fn entry(svc: &Service) -> Option<ServiceEntry> {
        let spec = svc.spec.as_ref()?;
        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            let target = spec.external_name.as_deref()?.trim_end_matches('.');
            ServiceKind::ExternalName(target.to_ascii_lowercase())
        } else if spec.cluster_ip.as_deref() == Some("None") {
            ServiceKind::Headless
        } else {
            let ips = match &spec.cluster_ips {
                Some(ips) if !ips.is_empty() => parse_ips(ips.iter()),
                _ => parse_ips(spec.cluster_ip.iter()),
            };
            if ips.is_empty() {
                // Not allocated yet: no name until it has an address.
                return None;
            }
            ServiceKind::ClusterIp(ips)
        };
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(Port {
                    name: p.name.clone().unwrap_or_default().to_ascii_lowercase(),
                    protocol: protocol(p.protocol.as_ref()),
                    port: u16::try_from(p.port).ok()?,
                })
            })
            .collect();
        Some(ServiceEntry { kind, ports })
    }

    fn table(view: &mut View) -> &mut HashMap<Key, ServiceEntry> {
        &mut view.services
    }
}

impl Tracked for Endpoints {
    type Entry = Vec<Address>;
    const SLOT: usize = 1;

    fn entry(ep: &Endpoints) -> Option<Vec<Address>> {
        let mut out = Vec::new();
        for subset in ep.subsets.iter().flatten() {
            let ports: Vec<Port> = subset
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(Port {
                        name: p.name.clone().unwrap_or_default().to_ascii_lowercase(),
                        protocol: protocol(p.protocol.as_ref()),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect();
            for a in subset.addresses.iter().flatten() {
                let Ok(ip) = a.ip.parse() else { continue };
                let pod = a
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone());
                out.push(Address {
                    ip,
                    hostname: a.hostname.clone().filter(|h| !h.is_empty()),
                    pod,
                    ports: ports.clone(),
                });
            }
        }
        Some(out)
    }

    fn table(view: &mut View) -> &mut HashMap<Key, Vec<Address>> {
        &mut view.endpoints
    }
}

impl Tracked for Pod {
    type Entry = PodEntry;
    const SLOT: usize = 2;

    fn entry(pod: &Pod) -> Option<PodEntry> {
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let mut ips = parse_ips(status.pod_ips.iter().flatten().map(|p| &p.ip));
        if ips.is_empty() {
            ips = parse_ips(status.pod_ip.iter());
        }
        if ips.is_empty() {
            return None;
        }
        let spec = pod.spec.as_ref();
        Some(PodEntry {
            ips,
            hostname: spec
                .and_then(|s| s.hostname.clone())
                .filter(|h| !h.is_empty()),
            subdomain: spec
                .and_then(|s| s.subdomain.clone())
                .filter(|h| !h.is_empty()),
        })
    }

    fn table(view: &mut View) -> &mut HashMap<Key, PodEntry> {
        &mut view.pods
    }
}

fn now_serial() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() as u32)
}

/// Applies one watch event of kind `K` to the view. `pending` collects a re-list until it is done.
pub fn apply_event<K: Tracked>(
    view: &RwLock<View>,
    pending: &mut Option<HashMap<Key, K::Entry>>,
    event: watcher::Event<K>,
) {
    let write = |f: &mut dyn FnMut(&mut View)| {
        let mut v = view.write().unwrap_or_else(|e| e.into_inner());
        f(&mut v);
        v.serial = now_serial();
    };
    match event {
        watcher::Event::Init => *pending = Some(HashMap::new()),
        watcher::Event::InitApply(obj) => {
            if let (Some(p), Some(k), Some(e)) = (pending.as_mut(), key(&obj), K::entry(&obj)) {
                p.insert(k, e);
            }
        }
        watcher::Event::InitDone => {
            let table = pending.take().unwrap_or_default();
            let mut table = Some(table);
            write(&mut |v| {
                if let Some(t) = table.take() {
                    *K::table(v) = t;
                }
                v.synced[K::SLOT] = true;
            });
        }
        watcher::Event::Apply(obj) => {
            let Some(k) = key(&obj) else { return };
            let mut entry = Some(K::entry(&obj));
            write(&mut |v| match entry.take().flatten() {
                Some(e) => {
                    K::table(v).insert(k.clone(), e);
                }
                None => {
                    K::table(v).remove(&k);
                }
            });
        }
        watcher::Event::Delete(obj) => {
            if let Some(k) = key(&obj) {
                write(&mut |v| {
                    K::table(v).remove(&k);
                });
            }
        }
    }
}

/// Keeps kind `K`'s table of `view` current until the task is dropped. The watcher re-lists and
/// retries with back-off by itself; errors are only logged, the last view keeps answering.
pub async fn follow<K: Tracked>(client: kube::Client, view: Arc<RwLock<View>>) {
    let api: Api<K> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut pending = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(ev) => apply_event::<K>(&view, &mut pending, ev),
            Err(e) => warn!(kind = %K::kind(&()), "dns watch: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn obj<K: DeserializeOwned>(v: serde_json::Value) -> K {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn service_kinds_and_ports() {
        let svc: Service = obj(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20", "fd00::20"],
                     "ports": [{"name": "HTTP", "port": 80}, {"port": 53, "protocol": "UDP"}]}
        }));
        let e = Service::entry(&svc).unwrap();
        assert_eq!(
            e.kind,
            ServiceKind::ClusterIp(vec![
                "10.43.0.20".parse().unwrap(),
                "fd00::20".parse().unwrap()
            ])
        );
        assert_eq!(
            e.ports,
            vec![
                Port {
                    name: "http".into(),
                    protocol: "tcp".into(),
                    port: 80
                },
                Port {
                    name: String::new(),
                    protocol: "udp".into(),
                    port: 53
                },
            ]
        );
        let headless: Service = obj(json!({"metadata": {"name": "h", "namespace": "d"},
                                           "spec": {"clusterIP": "None"}}));
        assert_eq!(
            Service::entry(&headless).unwrap().kind,
            ServiceKind::Headless
        );
        let ext: Service = obj(json!({"metadata": {"name": "x", "namespace": "d"},
            "spec": {"type": "ExternalName", "externalName": "Example.ORG."}}));
        assert_eq!(
            Service::entry(&ext).unwrap().kind,
            ServiceKind::ExternalName("example.org".into())
        );
        // No address allocated yet: no name.
        let pending: Service = obj(json!({"metadata": {"name": "p", "namespace": "d"},
                                          "spec": {}}));
        assert_eq!(Service::entry(&pending), None);
    }

    #[test]
    fn endpoints_keep_ready_addresses_only() {
        let ep: Endpoints = obj(json!({
            "metadata": {"name": "db", "namespace": "d"},
            "subsets": [{
                "addresses": [{"ip": "10.42.0.5", "hostname": "db-0",
                               "targetRef": {"kind": "Pod", "name": "db-0"}}],
                "notReadyAddresses": [{"ip": "10.42.0.6"}],
                "ports": [{"name": "sql", "port": 5432}]
            }]
        }));
        let e = Endpoints::entry(&ep).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].ip, "10.42.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(e[0].hostname.as_deref(), Some("db-0"));
        assert_eq!(e[0].pod.as_deref(), Some("db-0"));
        assert_eq!(e[0].ports[0].port, 5432);
    }

    #[test]
    fn pods_need_an_address_and_a_live_phase() {
        let p: Pod = obj(json!({
            "metadata": {"name": "a", "namespace": "d"},
            "spec": {"hostname": "a", "subdomain": "s", "containers": []},
            "status": {"phase": "Running", "podIP": "10.42.0.9"}
        }));
        let e = Pod::entry(&p).unwrap();
        assert_eq!(e.ips, vec!["10.42.0.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(e.subdomain.as_deref(), Some("s"));
        let done: Pod = obj(json!({"metadata": {"name": "a", "namespace": "d"},
            "status": {"phase": "Succeeded", "podIP": "10.42.0.9"}}));
        assert_eq!(Pod::entry(&done), None);
        let pending: Pod = obj(json!({"metadata": {"name": "a", "namespace": "d"},
                                      "status": {"phase": "Pending"}}));
        assert_eq!(Pod::entry(&pending), None);
    }

    #[test]
    fn relist_replaces_the_table_and_marks_synced() {
        let view = RwLock::new(View::default());
        let svc = |name: &str| -> Service {
            obj(json!({"metadata": {"name": name, "namespace": "d"},
                       "spec": {"clusterIP": "10.43.0.1"}}))
        };
        let mut pending = None;
        apply_event(&view, &mut pending, watcher::Event::Apply(svc("old")));
        assert!(!view.read().unwrap().is_synced());
        apply_event::<Service>(&view, &mut pending, watcher::Event::Init);
        apply_event(&view, &mut pending, watcher::Event::InitApply(svc("new")));
        // Until the re-list is done the old table answers.
        assert!(
            view.read()
                .unwrap()
                .services
                .contains_key(&("d".into(), "old".into()))
        );
        apply_event::<Service>(&view, &mut pending, watcher::Event::InitDone);
        let v = view.read().unwrap();
        assert_eq!(
            v.services.keys().cloned().collect::<Vec<_>>(),
            vec![("d".into(), "new".into())]
        );
        assert!(v.synced[Service::SLOT]);
        drop(v);
        apply_event(&view, &mut pending, watcher::Event::Delete(svc("new")));
        assert!(view.read().unwrap().services.is_empty());
    }
}
