//! The desired nftables ruleset for a set of [`ServicePort`]s: a pure function, so every rule the
//! proxy installs can be checked without a kernel.
//!
//! Layout of table `ip r3s-proxy` (nft syntax; `<id>` is `<ns>/<name>/<proto>/<port>`):
//! ```text
//! chain nat-prerouting  { type nat hook prerouting priority dstnat;  jump services }
//! chain nat-output      { type nat hook output priority dstnat;      jump services }
//! chain nat-postrouting { type nat hook postrouting priority srcnat; jump masquerading }
//! chain filter-{input,forward,output} { type filter hook … priority -10;
//!     ct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services }
//! chain services { ip daddr . meta l4proto . th dport vmap @service-ips }
//! chain masquerading { meta mark & 0x4000 == 0 return; meta mark set meta mark & ~0x4000;
//!                      masquerade fully-random }
//! chain mark-for-masquerade { meta mark set meta mark | 0x4000 }
//! chain reject { reject with icmp port-unreachable }
//! map service-ips           # ClusterIP:port → goto svc-<id>; node IP:nodePort, externalIP:port
//!                           # and, for LoadBalancer, node IP:port → goto ext-<id> (fw-<id> when
//!                           # loadBalancerSourceRanges are set)
//! map no-endpoint-services  # the same keys of Services without ready endpoints → goto reject
//! chain svc-<id> {          # ClusterIP traffic, spread over every ready endpoint
//!     ip daddr <clusterIP> ip saddr != <clusterCIDR> jump mark-for-masquerade
//!     ip saddr @aff-<id>/<ep> goto ep-<id>/<ep>      # per endpoint, with sessionAffinity
//!     numgen random mod N == 0 goto ep-<id>/<ep1>; numgen random mod N-1 == 0 goto …; goto ep-<id>/<epN>
//!     (internalTrafficPolicy Local: over the local endpoints only, or drop when there are none)
//! }
//! chain all-<id> { spread over every endpoint }  # only with internalTrafficPolicy Local
//! chain ext-<id> {          # NodePort / LoadBalancer / externalIPs traffic
//!     Cluster policy: jump mark-for-masquerade; goto svc-<id> (all-<id>)
//!     Local policy:   ip saddr <clusterCIDR> goto svc-<id> (all-<id>)  # pods: the whole cluster
//!                     ip saddr <node IP> jump mark-for-masquerade; ip saddr <node IP> goto svc-<id>
//!                     spread over local endpoints (as above), or drop when there are none
//! }
//! chain fw-<id> {           # loadBalancerSourceRanges
//!     ip saddr <range> goto ext-<id>  (per range); ip saddr <node IP> goto ext-<id>; drop
//! }
//! chain ep-<id>/<ip>:<port> {
//!     ip saddr <ip> jump mark-for-masquerade           # hairpin: a pod reaching itself
//!     update @aff-<id>/<ip>:<port> { ip saddr }        # with sessionAffinity
//!     meta l4proto <proto> dnat to <ip>:<port>
//! }
//! ```
//! Spreading picks endpoint i with probability 1/(N-i) among those left, i.e. uniformly; the nat
//! chains see only a connection's first packet, conntrack carries the rest. Invariants: a key
//! appears once in a map (the first Service port in sorted order wins a clash, which is reported
//! in [`Ruleset::conflicts`]); a Service port is in exactly one of the two maps; every chain and
//! set referenced exists in the ruleset.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use r3s_cni::nft::expr::{self, CmpOp, Reject, ct_state, m};
use r3s_cni::nft::{Element, Expr, Hook, SetSpec, Verdict, concat_key, hooks, reg32, types};

use super::model::{Backend, ServicePort};

/// The packet mark bit asking for masquerade on the way out (the value kube-proxy and k3s use).
pub const MASQ_MARK: u32 = 0x4000;
pub const SERVICE_IPS: &str = "service-ips";
pub const NO_ENDPOINTS: &str = "no-endpoint-services";
const SERVICES: &str = "services";
const MASQUERADING: &str = "masquerading";
const MARK_MASQ: &str = "mark-for-masquerade";
const REJECT: &str = "reject";
const FILTER_PRIORITY: i32 = -10;

/// Node-level facts the rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Pod addresses: traffic from elsewhere to a ClusterIP is masqueraded.
    pub cluster_cidr: Option<Ipv4Net>,
    /// Addresses NodePort and LoadBalancer Services are served on.
    pub node_ips: Vec<Ipv4Addr>,
}

/// A chain with its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDef {
    pub name: String,
    pub hook: Option<Hook>,
    pub rules: Vec<Vec<Expr>>,
}

/// A set or map with its (static) elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDef {
    pub spec: SetSpec,
    pub elements: Vec<Element>,
}

/// Everything the proxy's table holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub chains: Vec<ChainDef>,
    pub sets: Vec<SetDef>,
    /// Keys claimed by more than one Service port (the later ones are not served there).
    pub conflicts: Vec<String>,
}

impl Ruleset {
    pub fn chain(&self, name: &str) -> Option<&ChainDef> {
        self.chains.iter().find(|c| c.name == name)
    }

    pub fn set(&self, name: &str) -> Option<&SetDef> {
        self.sets.iter().find(|s| s.spec.name == name)
    }
}

/// `ip daddr . meta l4proto . th dport` key.
pub fn key(ip: Ipv4Addr, proto: u8, port: u16) -> Vec<u8> {
    concat_key(&[&ip.octets(), &[proto], &port.to_be_bytes()])
}

fn map_spec(name: &str) -> SetSpec {
    SetSpec {
        name: name.to_string(),
        key_type: types::concat(&[types::IPV4_ADDR, types::INET_PROTO, types::INET_SERVICE]),
        key_len: 12,
        verdict_map: true,
        dynamic_timeout_ms: None,
    }
}

fn base(name: &str, kind: &'static str, hooknum: u32, priority: i32, rule: Vec<Expr>) -> ChainDef {
    ChainDef {
        name: name.to_string(),
        hook: Some(Hook {
            kind,
            hooknum,
            priority,
        }),
        rules: vec![rule],
    }
}

fn chain(name: String, rules: Vec<Vec<Expr>>) -> ChainDef {
    ChainDef {
        name,
        hook: None,
        rules,
    }
}

fn with(mut exprs: Vec<Expr>, tail: Expr) -> Vec<Expr> {
    exprs.push(tail);
    exprs
}

fn jump(chain: &str) -> Expr {
    Expr::Verdict(Verdict::Jump(chain.to_string()))
}

fn goto(chain: &str) -> Expr {
    Expr::Verdict(Verdict::Goto(chain.to_string()))
}

fn saddr_is(ip: Ipv4Addr) -> Vec<Expr> {
    m::ip_in(12, ip.octets(), 32, true)
}

fn saddr_in(net: Ipv4Net, eq: bool) -> Vec<Expr> {
    m::ip_in(12, net.network().octets(), net.prefix_len(), eq)
}

fn lookup_vmap(set: &str) -> Expr {
    Expr::Lookup {
        set: set.to_string(),
        sreg: reg32(0),
        verdict_map: true,
        invert: false,
    }
}

fn ep_name(id: &str, b: &Backend) -> String {
    format!("{id}/{}:{}", b.ip, b.port)
}

/// Rules that pick one of `backends`: sticky first (with affinity), then uniformly at random.
fn spread(id: &str, backends: &[&Backend], affinity: bool) -> Vec<Vec<Expr>> {
    let mut rules = Vec::new();
    if affinity {
        for b in backends {
            let name = ep_name(id, b);
            let mut r = vec![Expr::Payload {
                base: expr::Base::Network,
                offset: 12,
                len: 4,
                dreg: reg32(0),
            }];
            r.push(Expr::Lookup {
                set: format!("aff-{name}"),
                sreg: reg32(0),
                verdict_map: false,
                invert: false,
            });
            r.push(goto(&format!("ep-{name}")));
            rules.push(r);
        }
    }
    let n = backends.len();
    for (i, b) in backends.iter().enumerate() {
        let target = goto(&format!("ep-{}", ep_name(id, b)));
        let left = (n - i) as u32;
        if left > 1 {
            rules.push(vec![
                Expr::Numgen {
                    dreg: reg32(0),
                    modulus: left,
                    random: true,
                },
                Expr::Cmp {
                    sreg: reg32(0),
                    op: CmpOp::Eq,
                    data: 0u32.to_ne_bytes().to_vec(),
                },
                target,
            ]);
        } else {
            rules.push(vec![target]);
        }
    }
    rules
}

/// Inserts `key → verdict` unless another Service port already claimed the key.
fn claim(
    map: &mut BTreeMap<Vec<u8>, (Verdict, String)>,
    conflicts: &mut Vec<String>,
    key: Vec<u8>,
    verdict: Verdict,
    owner: &str,
    what: String,
) {
    match map.get(&key) {
        Some((_, first)) => conflicts.push(format!("{what} of {owner} is already used by {first}")),
        None => {
            map.insert(key, (verdict, owner.to_string()));
        }
    }
}

/// The whole ruleset for these Service ports on a node.
pub fn desired(ports: &[ServicePort], cfg: &Config) -> Ruleset {
    let mut rs = Ruleset::default();
    let new_conn = || m::ct_state_any(ct_state::NEW);
    let lookup = |set: &str| {
        let mut r = m::daddr_proto_dport();
        r.push(lookup_vmap(set));
        r
    };
    rs.chains.extend([
        base(
            "nat-prerouting",
            "nat",
            hooks::PREROUTING,
            hooks::PRI_DSTNAT,
            vec![jump(SERVICES)],
        ),
        base(
            "nat-output",
            "nat",
            hooks::OUTPUT,
            hooks::PRI_DSTNAT,
            vec![jump(SERVICES)],
        ),
        base(
            "nat-postrouting",
            "nat",
            hooks::POSTROUTING,
            hooks::PRI_SRCNAT,
            vec![jump(MASQUERADING)],
        ),
    ]);
    for (name, hook) in [
        ("filter-input", hooks::INPUT),
        ("filter-forward", hooks::FORWARD),
        ("filter-output", hooks::OUTPUT),
    ] {
        let mut rule = new_conn();
        rule.extend(lookup(NO_ENDPOINTS));
        rs.chains
            .push(base(name, "filter", hook, FILTER_PRIORITY, rule));
    }
    rs.chains
        .push(chain(SERVICES.into(), vec![lookup(SERVICE_IPS)]));
    rs.chains.push(chain(
        MASQUERADING.into(),
        vec![
            with(
                m::mark_bit(MASQ_MARK, false),
                Expr::Verdict(Verdict::Return),
            ),
            vec![
                Expr::Meta {
                    key: expr::MetaKey::Mark,
                    dreg: reg32(0),
                },
                Expr::Bitwise {
                    sreg: reg32(0),
                    dreg: reg32(0),
                    mask: (!MASQ_MARK).to_ne_bytes().to_vec(),
                    xor: vec![0; 4],
                },
                Expr::MetaSet {
                    key: expr::MetaKey::Mark,
                    sreg: reg32(0),
                },
            ],
            vec![Expr::Masquerade],
        ],
    ));
    rs.chains
        .push(chain(MARK_MASQ.into(), vec![m::set_mark_bit(MASQ_MARK)]));
    rs.chains.push(chain(
        REJECT.into(),
        vec![vec![Expr::Reject(Reject::IcmpUnreach(3))]],
    ));

    let mut service_ips = BTreeMap::new();
    let mut no_endpoints = BTreeMap::new();
    for sp in ports {
        let id = sp.id();
        let proto = sp.proto.number();
        // (key, what, is a load-balancer address)
        let mut external = Vec::new();
        for ip in &cfg.node_ips {
            if let Some(np) = sp.node_port {
                external.push((key(*ip, proto, np), format!("node port {ip}:{np}"), false));
            }
            if sp.load_balancer {
                external.push((
                    key(*ip, proto, sp.port),
                    format!("load balancer port {ip}:{}", sp.port),
                    true,
                ));
            }
        }
        for ip in &sp.external_ips {
            external.push((
                key(*ip, proto, sp.port),
                format!("external IP {ip}:{}", sp.port),
                false,
            ));
        }
        let cluster = (
            key(sp.cluster_ip, proto, sp.port),
            format!("cluster IP {}:{}", sp.cluster_ip, sp.port),
        );
        if sp.backends.is_empty() {
            let keys = external.into_iter().map(|(k, what, _)| (k, what));
            for (k, what) in std::iter::once(cluster).chain(keys) {
                claim(
                    &mut no_endpoints,
                    &mut rs.conflicts,
                    k,
                    Verdict::Goto(REJECT.into()),
                    &id,
                    what,
                );
            }
            continue;
        }
        let affinity = sp.affinity_timeout_s;
        for b in &sp.backends {
            let name = ep_name(&id, b);
            let mut rules = vec![with(saddr_is(b.ip), jump(MARK_MASQ))];
            if let Some(t) = affinity {
                let set = format!("aff-{name}");
                rules.push(vec![
                    Expr::Payload {
                        base: expr::Base::Network,
                        offset: 12,
                        len: 4,
                        dreg: reg32(0),
                    },
                    Expr::DynsetUpdate {
                        set: set.clone(),
                        sreg: reg32(0),
                        timeout_ms: u64::from(t) * 1000,
                    },
                ]);
                rs.sets.push(SetDef {
                    spec: SetSpec {
                        name: set,
                        key_type: types::IPV4_ADDR,
                        key_len: 4,
                        verdict_map: false,
                        dynamic_timeout_ms: Some(u64::from(t) * 1000),
                    },
                    elements: Vec::new(),
                });
            }
            let mut dnat = m::l4proto(proto);
            dnat.extend(m::dnat(b.ip.octets(), b.port));
            rules.push(dnat);
            rs.chains.push(chain(format!("ep-{name}"), rules));
        }
        let svc_chain = format!("svc-{id}");
        let all: Vec<&Backend> = sp.backends.iter().collect();
        let local: Vec<&Backend> = sp.backends.iter().filter(|b| b.local).collect();
        let mut rules = Vec::new();
        if let Some(cidr) = cfg.cluster_cidr {
            let mut r = m::ip_in(16, sp.cluster_ip.octets(), 32, true);
            r.extend(saddr_in(cidr, false));
            r.push(jump(MARK_MASQ));
            rules.push(r);
        }
        if !sp.internal_local {
            rules.extend(spread(&id, &all, affinity.is_some()));
        } else if local.is_empty() {
            // internalTrafficPolicy Local without a local endpoint: dropped, as upstream.
            rules.push(vec![Expr::Verdict(Verdict::Drop)]);
        } else {
            rules.extend(spread(&id, &local, affinity.is_some()));
        }
        rs.chains.push(chain(svc_chain.clone(), rules));
        claim(
            &mut service_ips,
            &mut rs.conflicts,
            cluster.0,
            Verdict::Goto(svc_chain.clone()),
            &id,
            cluster.1,
        );
        if external.is_empty() {
            continue;
        }
        // External traffic the policy sends cluster-wide: the ClusterIP chain, unless that one
        // is node-local (internalTrafficPolicy), then a chain of its own over every endpoint.
        let cluster_wide = if sp.internal_local {
            let name = format!("all-{id}");
            rs.chains
                .push(chain(name.clone(), spread(&id, &all, affinity.is_some())));
            name
        } else {
            svc_chain.clone()
        };
        let ext_chain = format!("ext-{id}");
        let mut rules = Vec::new();
        if sp.external_local {
            if let Some(cidr) = cfg.cluster_cidr {
                rules.push(with(saddr_in(cidr, true), goto(&cluster_wide)));
            }
            for ip in &cfg.node_ips {
                rules.push(with(saddr_is(*ip), jump(MARK_MASQ)));
                rules.push(with(saddr_is(*ip), goto(&cluster_wide)));
            }
            if local.is_empty() {
                rules.push(vec![Expr::Verdict(Verdict::Drop)]);
            } else {
                rules.extend(spread(&id, &local, affinity.is_some()));
            }
        } else {
            rules.push(vec![jump(MARK_MASQ)]);
            rules.push(vec![goto(&cluster_wide)]);
        }
        rs.chains.push(chain(ext_chain.clone(), rules));
        // loadBalancerSourceRanges: the load-balancer addresses first pass a source check.
        let fw_chain = format!("fw-{id}");
        if !sp.source_ranges.is_empty() {
            let mut rules: Vec<Vec<Expr>> = sp
                .source_ranges
                .iter()
                .map(|r| with(saddr_in(*r, true), goto(&ext_chain)))
                .collect();
            for ip in &cfg.node_ips {
                rules.push(with(saddr_is(*ip), goto(&ext_chain)));
            }
            rules.push(vec![Expr::Verdict(Verdict::Drop)]);
            rs.chains.push(chain(fw_chain.clone(), rules));
        }
        for (k, what, lb) in external {
            let target = if lb && !sp.source_ranges.is_empty() {
                &fw_chain
            } else {
                &ext_chain
            };
            claim(
                &mut service_ips,
                &mut rs.conflicts,
                k,
                Verdict::Goto(target.clone()),
                &id,
                what,
            );
        }
    }
    let elements = |map: BTreeMap<Vec<u8>, (Verdict, String)>| {
        map.into_iter()
            .map(|(key, (verdict, _))| Element {
                key,
                verdict: Some(verdict),
            })
            .collect()
    };
    rs.sets.insert(
        0,
        SetDef {
            spec: map_spec(NO_ENDPOINTS),
            elements: elements(no_endpoints),
        },
    );
    rs.sets.insert(
        0,
        SetDef {
            spec: map_spec(SERVICE_IPS),
            elements: elements(service_ips),
        },
    );
    rs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::Proto;

    fn cfg() -> Config {
        Config {
            cluster_cidr: "10.42.0.0/16".parse().ok(),
            node_ips: vec!["203.0.113.1".parse().unwrap()],
        }
    }

    fn be(ip: &str, local: bool) -> Backend {
        Backend {
            ip: ip.parse().unwrap(),
            port: 8080,
            local,
        }
    }

    fn sp(name: &str, ip: &str, backends: Vec<Backend>) -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            name: name.into(),
            port_name: "http".into(),
            proto: Proto::Tcp,
            port: 80,
            cluster_ip: ip.parse().unwrap(),
            node_port: None,
            load_balancer: false,
            external_local: false,
            internal_local: false,
            external_ips: Vec::new(),
            source_ranges: Vec::new(),
            affinity_timeout_s: None,
            backends,
        }
    }

    fn targets(rs: &Ruleset, map: &str) -> Vec<(Vec<u8>, Verdict)> {
        rs.set(map)
            .unwrap()
            .elements
            .iter()
            .map(|e| (e.key.clone(), e.verdict.clone().unwrap()))
            .collect()
    }

    fn gotos(c: &ChainDef) -> Vec<String> {
        c.rules
            .iter()
            .filter_map(|r| match r.last() {
                Some(Expr::Verdict(Verdict::Goto(t))) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every jump, goto and set reference resolves inside the ruleset.
    fn assert_closed(rs: &Ruleset) {
        let mut refs = Vec::new();
        for c in &rs.chains {
            for r in &c.rules {
                for e in r {
                    match e {
                        Expr::Verdict(Verdict::Goto(t) | Verdict::Jump(t)) => refs.push(t.clone()),
                        Expr::Lookup { set, .. } | Expr::DynsetUpdate { set, .. } => {
                            assert!(rs.set(set).is_some(), "missing set {set}")
                        }
                        _ => {}
                    }
                }
            }
        }
        for s in &rs.sets {
            for e in &s.elements {
                if let Some(Verdict::Goto(t) | Verdict::Jump(t)) = &e.verdict {
                    refs.push(t.clone());
                }
            }
        }
        for r in refs {
            assert!(rs.chain(&r).is_some(), "missing chain {r}");
        }
    }

    #[test]
    fn cluster_ip_spreads_uniformly_over_ready_endpoints() {
        let rs = desired(
            &[sp(
                "web",
                "10.43.0.20",
                vec![
                    be("10.42.0.5", true),
                    be("10.42.0.6", true),
                    be("10.42.0.7", false),
                ],
            )],
            &cfg(),
        );
        assert_closed(&rs);
        assert_eq!(
            targets(&rs, SERVICE_IPS),
            vec![(
                key("10.43.0.20".parse().unwrap(), 6, 80),
                Verdict::Goto("svc-default/web/tcp/http".into())
            )]
        );
        assert!(targets(&rs, NO_ENDPOINTS).is_empty());
        let svc = rs.chain("svc-default/web/tcp/http").unwrap();
        assert_eq!(
            gotos(svc),
            vec![
                "ep-default/web/tcp/http/10.42.0.5:8080",
                "ep-default/web/tcp/http/10.42.0.6:8080",
                "ep-default/web/tcp/http/10.42.0.7:8080",
            ]
        );
        let moduli: Vec<u32> = svc
            .rules
            .iter()
            .filter_map(|r| match r.first() {
                Some(Expr::Numgen { modulus, .. }) => Some(*modulus),
                _ => None,
            })
            .collect();
        assert_eq!(moduli, vec![3, 2]);
        // Traffic from outside the pod network is masqueraded; hairpin too.
        assert!(svc.rules[0].contains(&jump(MARK_MASQ)));
        let ep = rs.chain("ep-default/web/tcp/http/10.42.0.5:8080").unwrap();
        assert_eq!(
            ep.rules[0],
            with(saddr_is("10.42.0.5".parse().unwrap()), jump(MARK_MASQ))
        );
        assert!(ep.rules[1].contains(&Expr::Dnat {
            addr_reg: reg32(0),
            port_reg: Some(reg32(1))
        }));
        assert!(rs.conflicts.is_empty());
    }

    #[test]
    fn no_endpoints_means_reject_and_no_service_chain() {
        let mut p = sp("empty", "10.43.0.21", vec![]);
        p.node_port = Some(30021);
        let rs = desired(&[p], &cfg());
        assert_closed(&rs);
        assert!(targets(&rs, SERVICE_IPS).is_empty());
        let rejects = targets(&rs, NO_ENDPOINTS);
        assert_eq!(rejects.len(), 2);
        assert!(
            rejects
                .iter()
                .all(|(_, v)| *v == Verdict::Goto(REJECT.into()))
        );
        assert!(rs.chains.iter().all(|c| !c.name.contains("empty")));
    }

    #[test]
    fn external_local_uses_only_local_endpoints_and_drops_without_them() {
        let mut p = sp(
            "np",
            "10.43.0.22",
            vec![be("10.42.0.5", true), be("10.42.1.5", false)],
        );
        p.node_port = Some(30022);
        p.load_balancer = true;
        p.external_local = true;
        let rs = desired(&[p.clone()], &cfg());
        assert_closed(&rs);
        let ext = rs.chain("ext-default/np/tcp/http").unwrap();
        let g = gotos(ext);
        assert!(g.contains(&"ep-default/np/tcp/http/10.42.0.5:8080".to_string()));
        assert!(!g.iter().any(|t| t.contains("10.42.1.5")));
        // NodePort and LoadBalancer port on the node IP both lead to the external chain.
        let ext_keys: Vec<_> = targets(&rs, SERVICE_IPS)
            .into_iter()
            .filter(|(_, v)| *v == Verdict::Goto("ext-default/np/tcp/http".into()))
            .map(|(k, _)| k)
            .collect();
        let node: Ipv4Addr = "203.0.113.1".parse().unwrap();
        assert_eq!(ext_keys, vec![key(node, 6, 80), key(node, 6, 30022)]);

        p.backends = vec![be("10.42.1.5", false)];
        let rs = desired(&[p.clone()], &cfg());
        let ext = rs.chain("ext-default/np/tcp/http").unwrap();
        assert_eq!(
            ext.rules.last().unwrap(),
            &vec![Expr::Verdict(Verdict::Drop)]
        );

        p.external_local = false;
        let rs = desired(&[p], &cfg());
        let ext = rs.chain("ext-default/np/tcp/http").unwrap();
        assert_eq!(
            ext.rules,
            vec![vec![jump(MARK_MASQ)], vec![goto("svc-default/np/tcp/http")]]
        );
    }

    #[test]
    fn internal_local_keeps_cluster_ip_traffic_on_the_node() {
        let mut p = sp(
            "itp",
            "10.43.0.23",
            vec![be("10.42.0.5", true), be("10.42.1.5", false)],
        );
        p.internal_local = true;
        p.node_port = Some(30023);
        let rs = desired(&[p.clone()], &cfg());
        assert_closed(&rs);
        let svc = rs.chain("svc-default/itp/tcp/http").unwrap();
        assert_eq!(gotos(svc), vec!["ep-default/itp/tcp/http/10.42.0.5:8080"]);
        // External traffic (policy Cluster) still reaches every endpoint.
        let ext = rs.chain("ext-default/itp/tcp/http").unwrap();
        assert_eq!(
            ext.rules,
            vec![
                vec![jump(MARK_MASQ)],
                vec![goto("all-default/itp/tcp/http")]
            ]
        );
        assert_eq!(
            gotos(rs.chain("all-default/itp/tcp/http").unwrap()).len(),
            2
        );
        // No local endpoint: ClusterIP traffic is dropped, not sent elsewhere.
        p.backends = vec![be("10.42.1.5", false)];
        let rs = desired(&[p], &cfg());
        let svc = rs.chain("svc-default/itp/tcp/http").unwrap();
        assert_eq!(
            svc.rules.last().unwrap(),
            &vec![Expr::Verdict(Verdict::Drop)]
        );
        assert!(gotos(svc).is_empty());
    }

    #[test]
    fn external_ips_are_external_traffic_and_source_ranges_guard_the_load_balancer() {
        let mut p = sp("lb", "10.43.0.24", vec![be("10.42.0.5", true)]);
        p.external_ips = vec!["198.51.100.7".parse().unwrap()];
        p.load_balancer = true;
        p.node_port = Some(30024);
        p.source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
        let rs = desired(&[p.clone()], &cfg());
        assert_closed(&rs);
        let node: Ipv4Addr = "203.0.113.1".parse().unwrap();
        let by_key: BTreeMap<Vec<u8>, Verdict> = targets(&rs, SERVICE_IPS).into_iter().collect();
        let ext = Verdict::Goto("ext-default/lb/tcp/http".into());
        let fw = Verdict::Goto("fw-default/lb/tcp/http".into());
        assert_eq!(by_key[&key("198.51.100.7".parse().unwrap(), 6, 80)], ext);
        assert_eq!(
            by_key[&key(node, 6, 30024)],
            ext,
            "NodePort is not range-limited"
        );
        assert_eq!(by_key[&key(node, 6, 80)], fw);
        let guard = rs.chain("fw-default/lb/tcp/http").unwrap();
        assert_eq!(
            guard.rules,
            vec![
                with(
                    saddr_in("198.51.100.0/24".parse().unwrap(), true),
                    goto("ext-default/lb/tcp/http")
                ),
                with(saddr_is(node), goto("ext-default/lb/tcp/http")),
                vec![Expr::Verdict(Verdict::Drop)],
            ]
        );
        // Without endpoints every one of those addresses rejects.
        p.backends.clear();
        let rs = desired(&[p], &cfg());
        assert_eq!(targets(&rs, NO_ENDPOINTS).len(), 4);
        assert!(rs.chain("fw-default/lb/tcp/http").is_none());
    }

    #[test]
    fn session_affinity_adds_sticky_lookups_and_updates() {
        let mut p = sp(
            "sticky",
            "10.43.0.23",
            vec![be("10.42.0.5", true), be("10.42.0.6", true)],
        );
        p.affinity_timeout_s = Some(60);
        let rs = desired(&[p], &cfg());
        assert_closed(&rs);
        let set = rs
            .set("aff-default/sticky/tcp/http/10.42.0.5:8080")
            .unwrap();
        assert_eq!(set.spec.dynamic_timeout_ms, Some(60_000));
        let svc = rs.chain("svc-default/sticky/tcp/http").unwrap();
        // masquerade rule, 2 sticky lookups, 2 spread rules
        assert_eq!(svc.rules.len(), 5);
        let ep = rs
            .chain("ep-default/sticky/tcp/http/10.42.0.6:8080")
            .unwrap();
        assert!(ep.rules.iter().any(|r| r.iter().any(|e| matches!(
            e,
            Expr::DynsetUpdate {
                timeout_ms: 60_000,
                ..
            }
        ))));
    }

    #[test]
    fn clashing_keys_are_served_once_and_reported() {
        let mut a = sp("a", "10.43.0.24", vec![be("10.42.0.5", true)]);
        a.load_balancer = true;
        a.node_port = Some(30024);
        let mut b = sp("b", "10.43.0.25", vec![be("10.42.0.6", true)]);
        b.load_balancer = true;
        b.node_port = Some(30025);
        let rs = desired(&[a, b], &cfg());
        assert_closed(&rs);
        assert_eq!(rs.conflicts.len(), 1, "{:?}", rs.conflicts);
        assert!(rs.conflicts[0].contains("203.0.113.1:80"));
        // 2 cluster IPs + 2 node ports + 1 load balancer port
        assert_eq!(targets(&rs, SERVICE_IPS).len(), 5);
    }

    #[test]
    fn equal_inputs_give_equal_rules() {
        let ports = vec![sp("web", "10.43.0.20", vec![be("10.42.0.5", true)])];
        assert_eq!(desired(&ports, &cfg()), desired(&ports, &cfg()));
    }
}
