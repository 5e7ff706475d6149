//! What the proxy serves, extracted from Services and Endpoints: one [`ServicePort`] per IPv4
//! Service port, with its ready backends. Pure: no I/O, so the rules can be unit-tested from
//! hand-made objects.
//!
//! Rules followed (as kube-proxy does): headless (`clusterIP: None`) and ExternalName Services
//! are not proxied; only `subsets[].addresses` (ready) are backends, `notReadyAddresses` never;
//! an Endpoints port belongs to the Service port with the same name and protocol; a backend is
//! local when its `nodeName` is this node; `externalIPs` are served like NodePorts (external
//! traffic, subject to `externalTrafficPolicy`); `loadBalancerSourceRanges` limit who may reach the
//! load-balancer addresses (not the NodePort). IPv6 addresses and ranges are skipped (the proxy is
//! IPv4-only). The output is sorted, so equal inputs give equal rules.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use k8s_openapi::api::core::v1::{Endpoints, Service};

/// Transport protocols a Service port can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One ready endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// On this node (`nodeName` matches).
    pub local: bool,
}

/// One port of one Service, as the proxy serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name, or its number when unnamed.
    pub port_name: String,
    pub proto: Proto,
    pub port: u16,
    pub cluster_ip: Ipv4Addr,
    pub node_port: Option<u16>,
    /// `type: LoadBalancer`: also served on the node's addresses at `port`.
    pub load_balancer: bool,
    /// `externalTrafficPolicy: Local`: NodePort/LoadBalancer/external-IP traffic only to local
    /// backends.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: ClusterIP traffic only to local backends.
    pub internal_local: bool,
    /// `spec.externalIPs`: also served at `<ip>:port`, as external traffic.
    pub external_ips: Vec<Ipv4Addr>,
    /// `spec.loadBalancerSourceRanges` (LoadBalancer only): when set, the load-balancer
    /// addresses answer only these sources (and the node itself).
    pub source_ranges: Vec<Ipv4Net>,
    /// `sessionAffinity: ClientIP` with this timeout.
    pub affinity_timeout_s: Option<u32>,
    /// Ready backends, sorted and without duplicates.
    pub backends: Vec<Backend>,
}

impl ServicePort {
    /// `<namespace>/<name>/<proto>/<port name>`: unique per Service port, used in chain names.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.proto.name(),
            self.port_name
        )
    }
}

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// The Service ports to proxy, from every Service and Endpoints object.
pub fn service_ports(
    services: &[Arc<Service>],
    endpoints: &[Arc<Endpoints>],
    node_name: &str,
) -> Vec<ServicePort> {
    let by_key: HashMap<(&str, &str), &Endpoints> = endpoints
        .iter()
        .filter_map(|e| {
            Some((
                (
                    e.metadata.namespace.as_deref()?,
                    e.metadata.name.as_deref()?,
                ),
                e.as_ref(),
            ))
        })
        .collect();
    let mut out = Vec::new();
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue; // headless, unallocated or IPv6
        };
        let affinity_timeout_s =
            (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|t| u32::try_from(t).ok())
                    .filter(|t| *t > 0)
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S)
            });
        let eps = by_key.get(&(ns, name));
        for p in spec.ports.iter().flatten() {
            let Some(proto) = Proto::parse(p.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let node_port = if ty == "NodePort" || ty == "LoadBalancer" {
                p.node_port.and_then(|n| u16::try_from(n).ok())
            } else {
                None
            };
            let external_ips = spec
                .external_ips
                .iter()
                .flatten()
                .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
                .collect();
            let source_ranges = if ty == "LoadBalancer" {
                spec.load_balancer_source_ranges
                    .iter()
                    .flatten()
                    .filter_map(|r| r.trim().parse::<Ipv4Net>().ok())
                    .map(|r| r.trunc())
                    .collect()
            } else {
                Vec::new()
            };
            let want_name = p.name.as_deref().unwrap_or("");
            let mut backends = Vec::new();
            for subset in eps.and_then(|e| e.subsets.as_ref()).into_iter().flatten() {
                let target = subset.ports.iter().flatten().find(|ep| {
                    ep.name.as_deref().unwrap_or("") == want_name
                        && Proto::parse(ep.protocol.as_deref()) == Some(proto)
                });
                let Some(target) = target.and_then(|t| u16::try_from(t.port).ok()) else {
                    continue;
                };
                for a in subset.addresses.iter().flatten() {
                    if let Ok(ip) = a.ip.parse::<Ipv4Addr>() {
                        backends.push(Backend {
                            ip,
                            port: target,
                            local: a.node_name.as_deref() == Some(node_name),
                        });
                    }
                }
            }
            backends.sort();
            backends.dedup();
            out.push(ServicePort {
                namespace: ns.to_string(),
                name: name.to_string(),
                port_name: p.name.clone().unwrap_or_else(|| p.port.to_string()),
                proto,
                port,
                cluster_ip,
                node_port,
                load_balancer: ty == "LoadBalancer",
                external_local: spec.external_traffic_policy.as_deref() == Some("Local")
                    && (ty == "NodePort" || ty == "LoadBalancer"),
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                external_ips,
                source_ranges,
                affinity_timeout_s,
                backends,
            });
        }
    }
    out.sort_by_key(|a| (a.id(), a.port));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn svc(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    pub(crate) fn eps(v: serde_json::Value) -> Arc<Endpoints> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn matches_ports_by_name_and_protocol_and_keeps_only_ready() {
        let s = svc(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.20", "externalTrafficPolicy": "Local",
                     "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }));
        let e = eps(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "subsets": [{
                "addresses": [{"ip": "10.42.0.5", "nodeName": "n1"}, {"ip": "10.42.1.5", "nodeName": "n2"}],
                "notReadyAddresses": [{"ip": "10.42.0.9", "nodeName": "n1"}],
                "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]
            }]
        }));
        let ports = service_ports(&[s], &[e], "n1");
        assert_eq!(ports.len(), 2);
        let http = ports.iter().find(|p| p.port == 80).unwrap();
        assert_eq!(http.id(), "default/web/tcp/http");
        assert_eq!(http.node_port, Some(30080));
        assert!(http.external_local);
        assert_eq!(http.affinity_timeout_s, Some(10_800));
        assert_eq!(
            http.backends,
            vec![
                Backend {
                    ip: "10.42.0.5".parse().unwrap(),
                    port: 8080,
                    local: true
                },
                Backend {
                    ip: "10.42.1.5".parse().unwrap(),
                    port: 8080,
                    local: false
                },
            ]
        );
        let dns = ports.iter().find(|p| p.port == 53).unwrap();
        assert_eq!(dns.proto, Proto::Udp);
        assert_eq!(dns.backends.len(), 2);
        assert!(dns.backends.iter().all(|b| b.port == 5353));
    }

    #[test]
    fn skips_headless_and_external_name_and_handles_missing_endpoints() {
        let headless = svc(json!({
            "metadata": {"namespace": "a", "name": "h"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        }));
        let ext = svc(json!({
            "metadata": {"namespace": "a", "name": "x"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}
        }));
        let lonely = svc(json!({
            "metadata": {"namespace": "a", "name": "l"},
            "spec": {"clusterIP": "10.43.0.30", "ports": [{"port": 80, "nodePort": 30001}]}
        }));
        let ports = service_ports(&[headless, ext, lonely], &[], "n1");
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port_name, "80");
        assert!(ports[0].backends.is_empty());
        // A ClusterIP Service's stray nodePort is not served.
        assert_eq!(ports[0].node_port, None);
    }
}
