//! Service admission: ClusterIP allocation from `--service-cidr` and NodePort allocation from
//! `--service-node-port-range`, with the apiserver's validation messages.
//!
//! Invariant: allocations are derived from the stored Services themselves (no separate bitmap), so
//! deleting a Service frees its addresses and ports with no extra bookkeeping, and a crash can never
//! leak one. Allocation and the write that stores it happen under one lock ([`ServiceNetwork`]'s),
//! so two concurrent creates cannot receive the same address. The first address of the range is
//! reserved for the `default/kubernetes` Service; dynamic allocation starts above a low band kept
//! for addresses users pick themselves (cluster DNS at `.10`), as upstream does.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

use super::error::{ApiError, Cause};
use super::object;
use super::registry::Resource;
use crate::store::{ListOptions, Store};

/// The service address range and node-port range, with the allocation lock.
#[derive(Debug)]
pub struct ServiceNetwork {
    base: u32,
    prefix: u8,
    node_ports: RangeInclusive<u16>,
    lock: Mutex<()>,
}

impl Default for ServiceNetwork {
    /// k3s's defaults: 10.43.0.0/16 and 30000-32767.
    fn default() -> Self {
        ServiceNetwork::new(Ipv4Addr::new(10, 43, 0, 0), 16, 30000..=32767)
    }
}

impl ServiceNetwork {
    /// `prefix` is clamped to 8..=30 (the CLI already rejects anything else).
    pub fn new(network: Ipv4Addr, prefix: u8, node_ports: RangeInclusive<u16>) -> ServiceNetwork {
        let prefix = prefix.clamp(8, 30);
        let mask = u32::MAX << (32 - u32::from(prefix));
        ServiceNetwork {
            base: u32::from(network) & mask,
            prefix,
            node_ports,
            lock: Mutex::new(()),
        }
    }

    fn size(&self) -> u32 {
        1 << (32 - u32::from(self.prefix))
    }

    /// The `kubernetes` Service's address: the first one after the network address.
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip > self.base && ip < self.base + self.size() - 1
    }

    fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }

    /// A free address: first above the static band, then inside it (never the first address).
    fn free_ip(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let last = self.size() - 2;
        let band = (self.size() / 16).clamp(16, 256).min(last);
        (band..=last)
            .chain(2..band)
            .map(|offset| Ipv4Addr::from(self.base + offset))
            .find(|ip| !used.contains(ip))
    }
}

/// Allocates for Services (create, or update when `old` is given); other kinds pass through.
/// The returned guard must be held until the object is stored.
pub async fn admit<'a>(
    network: &'a ServiceNetwork,
    store: &dyn Store,
    res: &Resource,
    old: Option<&Value>,
    obj: &mut Value,
) -> Result<Option<MutexGuard<'a, ()>>, ApiError> {
    if !(res.group.is_empty() && res.kind == "Service") {
        return Ok(None);
    }
    if let Some(old) = old {
        drop_type_dependent_fields(old, obj);
    }
    let guard = network.lock.lock().await;
    let (ips, ports) = in_use(store, res, obj)?;
    let mut causes = Vec::new();
    allocate_ip(network, &ips, old, obj, &mut causes);
    allocate_node_ports(network, &ports, old, obj, &mut causes);
    if !causes.is_empty() {
        return Err(ApiError::Invalid {
            group: String::new(),
            kind: "Service".into(),
            name: object::name(obj).into(),
            causes,
        });
    }
    Ok(Some(guard))
}

/// Addresses and node ports held by every stored Service except `obj` itself.
fn in_use(
    store: &dyn Store,
    res: &Resource,
    obj: &Value,
) -> Result<(HashSet<Ipv4Addr>, HashSet<u16>), ApiError> {
    let own_key = res.key(obj["metadata"]["namespace"].as_str(), object::name(obj));
    let list = store
        .list(&res.key_prefix(), &ListOptions::default())
        .map_err(|e| ApiError::from_store(e, &res.name(), ""))?;
    let (mut ips, mut ports) = (HashSet::new(), HashSet::new());
    for kv in list.items.iter().filter(|kv| kv.key != own_key) {
        let svc = object::from_store(kv)?;
        let spec = &svc["spec"];
        for ip in spec["clusterIPs"].as_array().into_iter().flatten() {
            if let Some(ip) = ip.as_str().and_then(|s| s.parse().ok()) {
                ips.insert(ip);
            }
        }
        if let Some(ip) = spec["clusterIP"].as_str().and_then(|s| s.parse().ok()) {
            ips.insert(ip);
        }
        for port in spec["ports"].as_array().into_iter().flatten() {
            if let Some(np) = port["nodePort"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
            {
                ports.insert(np);
            }
        }
    }
    Ok((ips, ports))
}

fn invalid(field: &str, value: &Value, message: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: format!("Invalid value: {value}: {message}"),
    }
}

fn allocate_ip(
    network: &ServiceNetwork,
    used: &HashSet<Ipv4Addr>,
    old: Option<&Value>,
    obj: &mut Value,
    causes: &mut Vec<Cause>,
) {
    let spec = &mut obj["spec"];
    if spec["type"] == json!("ExternalName") {
        if let Some(map) = spec.as_object_mut() {
            map.remove("clusterIP");
            map.remove("clusterIPs");
        }
        return;
    }
    let old_ip = old
        .and_then(|o| o["spec"]["clusterIP"].as_str())
        .filter(|s| !s.is_empty());
    let asked = spec["clusterIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let ip = match (asked.as_deref(), old_ip) {
        (None, Some(old)) => old.to_string(),
        (Some(new), Some(old)) if new != old => {
            causes.push(invalid(
                "spec.clusterIPs[0]",
                &json!(new),
                "may not change once set".into(),
            ));
            return;
        }
        (Some(new), Some(_)) => new.to_string(),
        (Some("None"), None) => "None".to_string(),
        (Some(new), None) => match new.parse::<Ipv4Addr>() {
            Ok(ip) if !network.contains(ip) => {
                let msg = format!(
                    "failed to allocate IP {new}: the provided IP ({new}) is not in the valid range. The range of valid IPs is {}",
                    network.cidr()
                );
                causes.push(invalid("spec.clusterIPs", &json!([new]), msg));
                return;
            }
            Ok(ip) if used.contains(&ip) => {
                let msg = format!("failed to allocate IP {new}: provided IP is already allocated");
                causes.push(invalid("spec.clusterIPs", &json!([new]), msg));
                return;
            }
            Ok(_) => new.to_string(),
            Err(_) => {
                let msg = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into();
                causes.push(invalid("spec.clusterIPs[0]", &json!(new), msg));
                return;
            }
        },
        (None, None) => match network.free_ip(used) {
            Some(ip) => ip.to_string(),
            None => {
                let msg = format!(
                    "failed to allocate a serviceIP: range is full ({})",
                    network.cidr()
                );
                causes.push(invalid("spec.clusterIPs", &json!([]), msg));
                return;
            }
        },
    };
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if ip != "None" {
        if spec["ipFamilies"].is_null() {
            spec["ipFamilies"] = json!(["IPv4"]);
        }
        if spec["ipFamilyPolicy"].is_null() {
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
    }
}

/// On a type change, clears what only the old type needed when the request left it as it was
/// (as upstream): node ports leaving NodePort/LoadBalancer, and the LoadBalancer-only fields
/// (`healthCheckNodePort`, `allocateLoadBalancerNodePorts`, `loadBalancerClass`,
/// `externalTrafficPolicy` for ClusterIP). So `{"spec":{"type":"ClusterIP"}}` as a merge patch
/// turns a LoadBalancer into a ClusterIP Service instead of failing on its kept node ports.
fn drop_type_dependent_fields(old: &Value, new: &mut Value) {
    let kind = |svc: &Value| {
        svc["spec"]["type"]
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string()
    };
    let (was, now) = (kind(old), kind(new));
    if was == now {
        return;
    }
    let node_ports = |svc: &Value| -> Vec<Value> {
        svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["nodePort"].clone())
            .collect()
    };
    let needs_node_ports = |t: &str| matches!(t, "NodePort" | "LoadBalancer");
    if needs_node_ports(&was)
        && !needs_node_ports(&now)
        && node_ports(old) == node_ports(new)
        && let Some(ports) = new["spec"]["ports"].as_array_mut()
    {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.remove("nodePort");
        }
    }
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let mut lb_only = vec![
        "healthCheckNodePort",
        "allocateLoadBalancerNodePorts",
        "loadBalancerClass",
    ];
    if !needs_node_ports(&now) {
        lb_only.push("externalTrafficPolicy");
    }
    if was == "LoadBalancer" {
        for field in lb_only {
            if spec.get(field) == old["spec"].get(field) {
                spec.remove(field);
            }
        }
    }
}

fn allocate_node_ports(
    network: &ServiceNetwork,
    used: &HashSet<u16>,
    old: Option<&Value>,
    obj: &mut Value,
    causes: &mut Vec<Cause>,
) {
    let wants = matches!(
        obj["spec"]["type"].as_str(),
        Some("NodePort" | "LoadBalancer")
    );
    let old_ports: Vec<Value> = old
        .and_then(|o| o["spec"]["ports"].as_array().cloned())
        .unwrap_or_default();
    let mut taken = used.clone();
    let Some(ports) = obj["spec"].get_mut("ports").and_then(Value::as_array_mut) else {
        return;
    };
    for (i, port) in ports.iter_mut().enumerate() {
        let field = format!("spec.ports[{i}].nodePort");
        let asked = port["nodePort"].as_u64();
        if !wants {
            if asked.is_some_and(|p| p != 0) {
                causes.push(Cause {
                    reason: "FieldValueForbidden",
                    field,
                    message: "Forbidden: may not be used when `type` is 'ClusterIP'".into(),
                });
            }
            continue;
        }
        let reuse = old_ports
            .iter()
            .find(|o| o["port"] == port["port"] && o["protocol"] == port["protocol"])
            .and_then(|o| o["nodePort"].as_u64());
        let chosen = match asked.filter(|p| *p != 0).or(reuse) {
            Some(p) => match u16::try_from(p) {
                Ok(p) if !network.node_ports.contains(&p) => {
                    let msg = format!(
                        "provided port is not in the valid range. The range of valid ports is {}-{}",
                        network.node_ports.start(),
                        network.node_ports.end()
                    );
                    causes.push(invalid(&field, &json!(p), msg));
                    continue;
                }
                Ok(p) if taken.contains(&p) => {
                    causes.push(invalid(
                        &field,
                        &json!(p),
                        "provided port is already allocated".into(),
                    ));
                    continue;
                }
                Ok(p) => p,
                Err(_) => {
                    causes.push(invalid(
                        &field,
                        &json!(p),
                        "must be a valid port number".into(),
                    ));
                    continue;
                }
            },
            None => match network.node_ports.clone().find(|p| !taken.contains(p)) {
                Some(p) => p,
                None => {
                    causes.push(invalid(&field, &json!(0), "range is full".into()));
                    continue;
                }
            },
        };
        taken.insert(chosen);
        port["nodePort"] = json!(chosen);
    }
}

/// The `default/kubernetes` Service (at the first address) and its Endpoints pointing at the
/// server, as the apiserver maintains them. Creates what is missing; never overwrites.
pub async fn ensure_kubernetes_service(
    store: &dyn Store,
    network: &ServiceNetwork,
    endpoint: Option<(Ipv4Addr, u16)>,
) -> Result<(), ApiError> {
    let services = super::registry::find("", "v1", "services")
        .ok_or_else(|| ApiError::Internal("services are not registered".into()))?;
    let mut svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": network.first_ip().to_string(),
                 "clusterIPs": [network.first_ip().to_string()],
                 "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                 "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                            "targetPort": endpoint.map_or(6443, |(_, port)| port)}]},
    });
    create_if_missing(store, services, &mut svc).await?;
    let Some((ip, port)) = endpoint else {
        return Ok(());
    };
    let endpoints = super::registry::find("", "v1", "endpoints")
        .ok_or_else(|| ApiError::Internal("endpoints are not registered".into()))?;
    let mut ep = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": ip.to_string()}],
                     "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    });
    create_if_missing(store, endpoints, &mut ep).await
}

async fn create_if_missing(
    store: &dyn Store,
    res: &Resource,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let key = res.key(obj["metadata"]["namespace"].as_str(), object::name(obj));
    if store
        .get(&key)
        .map_err(|e| ApiError::from_store(e, &res.name(), ""))?
        .is_some()
    {
        return Ok(());
    }
    object::prepare_create(res, obj)?;
    match store.create(&key, object::to_store(obj)?).await {
        Ok(_) | Err(crate::store::StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(ApiError::from_store(e, &res.name(), object::name(obj))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_addresses_avoid_the_first_and_the_static_band() {
        let net = ServiceNetwork::default();
        assert_eq!(net.first_ip(), Ipv4Addr::new(10, 43, 0, 1));
        let mut used = HashSet::new();
        let first = net.free_ip(&used).expect("free");
        assert_eq!(
            first,
            Ipv4Addr::new(10, 43, 1, 0),
            "above the 256-address static band"
        );
        used.insert(first);
        assert_eq!(net.free_ip(&used), Some(Ipv4Addr::new(10, 43, 1, 1)));
        assert!(net.contains(Ipv4Addr::new(10, 43, 0, 10)));
        assert!(!net.contains(Ipv4Addr::new(10, 44, 0, 1)));

        let tiny = ServiceNetwork::new(Ipv4Addr::new(10, 43, 0, 0), 29, 30000..=30001);
        let all: HashSet<_> = (2..=6).map(|o| Ipv4Addr::new(10, 43, 0, o)).collect();
        assert_eq!(tiny.free_ip(&all), None);
    }
}
