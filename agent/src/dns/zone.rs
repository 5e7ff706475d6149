//! The record rules of the Kubernetes DNS specification as a pure function over a [`View`]:
//! [`Zone::lookup`] turns a question into records, "no data", "no such name", or "not ours".
//!
//! Names under the cluster domain (`cluster.local`):
//! - `<svc>.<ns>.svc` A/AAAA → the ClusterIPs; headless → every ready endpoint address;
//!   ExternalName → a CNAME (for every type, as a CNAME owner has no other data);
//! - `_<port>._<proto>.<svc>.<ns>.svc` SRV for named ports → the Service name (ClusterIP) or one
//!   target per ready endpoint (headless); the bare Service name answers SRV for all of them;
//! - `<host>.<svc>.<ns>.svc` A/AAAA for a headless Service's endpoints, where `<host>` is the
//!   endpoint's hostname (StatefulSet pods: `spec.hostname` with `spec.subdomain` = the Service)
//!   or else its address with dashes (`10-42-0-5`);
//! - `<a-b-c-d>.<ns>.pod` A (AAAA with dashes for colons) when a pod in `<ns>` has that address
//!   (CoreDNS's `pods verified`: no name for an address that is no pod);
//! - `dns-version` TXT `1.1.0`; the apex has SOA and NS `ns.dns.<domain>`, which has the DNS IP.
//!
//! Reverse names (`in-addr.arpa`, `ip6.arpa`) answer PTR for ClusterIPs and headless endpoints;
//! any other address is not ours (forwarded, as CoreDNS's `fallthrough` does).
//!
//! Invariants: a name that exists with other types, or has names below it (`svc.<domain>`,
//! `<ns>.svc.<domain>` of a namespace with Services), is [`Lookup::NoData`], never NXDOMAIN;
//! every record has the zone TTL; owner names are the question's name, lower-cased.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::view::{Address, Port, ServiceKind, View};

/// The schema version of the Kubernetes DNS specification these rules follow.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// The answer to one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Records for the answer section, and helpful ones (SRV targets' addresses) for additional.
    Found {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name exists, with no record of the asked type.
    NoData,
    /// No such name in the zone.
    NxDomain,
    /// Not the cluster's to answer: forward it.
    NotOurs,
}

/// The cluster zone: its domain, TTL and the DNS server's own address.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Lower-case labels of the domain (`["cluster", "local"]`).
    labels: Vec<String>,
    origin: Name,
    pub ttl: u32,
    dns_ip: Option<IpAddr>,
}

/// Lower-case labels of a name, without the root.
fn labels_of(name: &Name) -> Vec<String> {
    name.iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect()
}

fn name(labels: &[&str]) -> Option<Name> {
    Name::from_ascii(format!("{}.", labels.join("."))).ok()
}

/// `10.42.0.5` → `10-42-0-5`; `fd00::1` → `fd00--1`.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn undashed(label: &str) -> Option<IpAddr> {
    if label.contains("--") || label.matches('-').count() != 3 {
        return label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6);
    }
    label
        .replace('-', ".")
        .parse::<Ipv4Addr>()
        .ok()
        .map(IpAddr::V4)
}

/// The address of a reverse name (`5.0.42.10.in-addr.arpa` → `10.42.0.5`), if it is a whole one.
pub fn reverse_ip(labels: &[String]) -> Option<IpAddr> {
    match labels {
        [rest @ .., a, b] if a == "in-addr" && b == "arpa" && rest.len() == 4 => {
            let mut octets = [0u8; 4];
            for (i, l) in rest.iter().rev().enumerate() {
                octets[i] = l.parse().ok()?;
            }
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        [rest @ .., a, b] if a == "ip6" && b == "arpa" && rest.len() == 32 => {
            let mut bytes = [0u8; 16];
            for (i, l) in rest.iter().rev().enumerate() {
                let nibble = u8::from_str_radix(l, 16).ok()?;
                if l.len() != 1 {
                    return None;
                }
                bytes[i / 2] |= if i % 2 == 0 { nibble << 4 } else { nibble };
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

fn addr_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn wants_addr(qtype: RecordType, ip: IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

/// Collects records for one owner name and turns "none matched" into NoData.
struct Builder<'a> {
    owner: &'a Name,
    ttl: u32,
    qtype: RecordType,
    answers: Vec<Record>,
    additionals: Vec<Record>,
}

impl Builder<'_> {
    /// Adds a record of type `rtype` if the question asks for it (once: duplicates are dropped).
    fn add(&mut self, rtype: RecordType, rdata: RData) {
        if (self.qtype == rtype || self.qtype == RecordType::ANY)
            && !self.answers.iter().any(|r| r.data == rdata)
        {
            self.answers
                .push(Record::from_rdata(self.owner.clone(), self.ttl, rdata));
        }
    }

    fn addr(&mut self, ip: IpAddr) {
        if wants_addr(self.qtype, ip) {
            let rtype = if ip.is_ipv4() {
                RecordType::A
            } else {
                RecordType::AAAA
            };
            self.add(rtype, addr_rdata(ip));
        }
    }

    /// An SRV record, with the target's address in the additional section.
    fn srv(&mut self, weight: u16, port: u16, target: Name, target_ips: &[IpAddr]) {
        if self.qtype != RecordType::SRV && self.qtype != RecordType::ANY {
            return;
        }
        for ip in target_ips {
            let extra = Record::from_rdata(target.clone(), self.ttl, addr_rdata(*ip));
            if !self.additionals.contains(&extra) {
                self.additionals.push(extra);
            }
        }
        self.add(
            RecordType::SRV,
            RData::SRV(SRV::new(0, weight, port, target)),
        );
    }

    fn done(self) -> Lookup {
        if self.answers.is_empty() {
            Lookup::NoData
        } else {
            Lookup::Found {
                answers: self.answers,
                additionals: self.additionals,
            }
        }
    }
}

fn matches_port(p: &Port, port: &str, proto: &str) -> bool {
    !p.name.is_empty() && p.name == port && p.protocol == proto
}

/// An equal share of 100 for each of `n` SRV targets (at least 1).
fn weight(n: usize) -> u16 {
    u16::try_from(100 / n.max(1)).unwrap_or(1).max(1)
}

impl Zone {
    /// The zone for `domain` (e.g. `cluster.local`); `dns_ip` is the address `ns.dns.<domain>`
    /// names. `None` if `domain` is not a valid name.
    pub fn new(domain: &str, ttl: u32, dns_ip: Option<IpAddr>) -> Option<Zone> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let origin = Name::from_ascii(format!("{domain}.")).ok()?;
        Some(Zone {
            labels: domain.split('.').map(String::from).collect(),
            origin,
            ttl,
            dns_ip,
        })
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    fn fqdn(&self, prefix: &[&str]) -> Option<Name> {
        let mut all: Vec<&str> = prefix.to_vec();
        all.extend(self.labels.iter().map(String::as_str));
        name(&all)
    }

    /// The zone's SOA record (for the authority section of negative answers); serial from the view.
    pub fn soa(&self, serial: u32) -> Record {
        let mname = self
            .fqdn(&["ns", "dns"])
            .unwrap_or_else(|| self.origin.clone());
        let rname = self
            .fqdn(&["hostmaster"])
            .unwrap_or_else(|| self.origin.clone());
        let soa = SOA::new(mname, rname, serial, 7200, 1800, 86400, self.ttl);
        Record::from_rdata(self.origin.clone(), self.ttl, RData::SOA(soa))
    }

    /// Whether `name` is in the zone (at or below the domain).
    pub fn contains(&self, name: &Name) -> bool {
        let l = labels_of(name);
        l.len() >= self.labels.len() && l[l.len() - self.labels.len()..] == self.labels[..]
    }

    /// Answers `qname`/`qtype` from `view`.
    pub fn lookup(&self, view: &View, qname: &Name, qtype: RecordType) -> Lookup {
        let labels = labels_of(qname);
        let owner = qname.to_lowercase();
        let mut b = Builder {
            owner: &owner,
            ttl: self.ttl,
            qtype,
            answers: Vec::new(),
            additionals: Vec::new(),
        };
        if let Some(ip) = reverse_ip(&labels) {
            return self.reverse(view, ip, b);
        }
        if !self.contains(qname) {
            return Lookup::NotOurs;
        }
        let rel: Vec<&str> = labels[..labels.len() - self.labels.len()]
            .iter()
            .map(String::as_str)
            .collect();
        match rel.as_slice() {
            [] => {
                b.add(RecordType::SOA, self.soa(view.serial).data.clone());
                if let Some(ns) = self.fqdn(&["ns", "dns"]) {
                    if let (Some(ip), true) = (self.dns_ip, qtype == RecordType::NS) {
                        b.additionals.push(Record::from_rdata(
                            ns.clone(),
                            self.ttl,
                            addr_rdata(ip),
                        ));
                    }
                    b.add(RecordType::NS, RData::NS(NS(ns)));
                }
                b.done()
            }
            ["dns-version"] => {
                b.add(
                    RecordType::TXT,
                    RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])),
                );
                b.done()
            }
            ["dns"] | ["svc"] | ["pod"] => Lookup::NoData,
            ["ns", "dns"] => match self.dns_ip {
                Some(ip) => {
                    b.addr(ip);
                    b.done()
                }
                None => Lookup::NxDomain,
            },
            [ns, "svc"] => {
                if view.services.keys().any(|(n, _)| n == ns) {
                    Lookup::NoData
                } else {
                    Lookup::NxDomain
                }
            }
            [svc, ns, "svc"] => self.service(view, ns, svc, b),
            [first, svc, ns, "svc"] => {
                if let Some(proto) = first.strip_prefix('_') {
                    // `_tcp.<svc>…` exists when some named port of that protocol does.
                    let has = view
                        .services
                        .get(&(ns.to_string(), svc.to_string()))
                        .is_some_and(|s| {
                            s.ports
                                .iter()
                                .any(|p| !p.name.is_empty() && p.protocol == proto)
                        });
                    if has {
                        Lookup::NoData
                    } else {
                        Lookup::NxDomain
                    }
                } else {
                    self.endpoint_host(view, ns, svc, first, b)
                }
            }
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv(view, ns, svc, &port[1..], &proto[1..], b)
            }
            [ip, ns, "pod"] => {
                let Some(ip) = undashed(ip) else {
                    return Lookup::NxDomain;
                };
                let exists = view
                    .pods
                    .iter()
                    .any(|((n, _), p)| n == ns && p.ips.contains(&ip));
                if !exists {
                    return Lookup::NxDomain;
                }
                b.addr(ip);
                b.done()
            }
            [ns, "pod"] => {
                if view.pods.keys().any(|(n, _)| n == ns) {
                    Lookup::NoData
                } else {
                    Lookup::NxDomain
                }
            }
            _ => Lookup::NxDomain,
        }
    }

    fn service(&self, view: &View, ns: &str, svc: &str, mut b: Builder<'_>) -> Lookup {
        let Some(entry) = view.services.get(&(ns.to_string(), svc.to_string())) else {
            return Lookup::NxDomain;
        };
        let Some(svc_name) = self.fqdn(&[svc, ns, "svc"]) else {
            return Lookup::NxDomain;
        };
        match &entry.kind {
            ServiceKind::ExternalName(target) => match name(&[target]) {
                Some(t) => {
                    b.answers.push(Record::from_rdata(
                        b.owner.clone(),
                        self.ttl,
                        RData::CNAME(CNAME(t)),
                    ));
                    b.done()
                }
                None => Lookup::NoData,
            },
            ServiceKind::ClusterIp(ips) => {
                for ip in ips {
                    b.addr(*ip);
                }
                for p in entry.ports.iter().filter(|p| !p.name.is_empty()) {
                    b.srv(100, p.port, svc_name.clone(), ips);
                }
                b.done()
            }
            ServiceKind::Headless => {
                let addrs = self.ready(view, ns, svc);
                let mut seen = Vec::new();
                for a in addrs {
                    if !seen.contains(&a.ip) {
                        seen.push(a.ip);
                        b.addr(a.ip);
                    }
                }
                let named = addrs
                    .iter()
                    .map(|a| a.ports.iter().filter(|p| !p.name.is_empty()).count())
                    .sum();
                // Per-endpoint names cost a pod lookup each: only when SRV records are asked for.
                let wants_srv = matches!(b.qtype, RecordType::SRV | RecordType::ANY);
                for a in addrs.iter().filter(|_| wants_srv) {
                    for p in a.ports.iter().filter(|p| !p.name.is_empty()) {
                        if let Some(target) = self.host_name(view, ns, svc, a) {
                            b.srv(weight(named), p.port, target, &[a.ip]);
                        }
                    }
                }
                b.done()
            }
        }
    }

    /// The ready addresses of `ns/svc`.
    fn ready<'v>(&self, view: &'v View, ns: &str, svc: &str) -> &'v [Address] {
        view.endpoints
            .get(&(ns.to_string(), svc.to_string()))
            .map_or(&[], Vec::as_slice)
    }

    /// `<host>.<svc>.<ns>.svc.<domain>` of an endpoint address.
    fn host_name(&self, view: &View, ns: &str, svc: &str, a: &Address) -> Option<Name> {
        let host = view.hostname_of(ns, svc, a).unwrap_or_else(|| dashed(a.ip));
        self.fqdn(&[&host, svc, ns, "svc"])
    }

    fn endpoint_host(
        &self,
        view: &View,
        ns: &str,
        svc: &str,
        host: &str,
        mut b: Builder<'_>,
    ) -> Lookup {
        let headless = view
            .services
            .get(&(ns.to_string(), svc.to_string()))
            .is_some_and(|s| s.kind == ServiceKind::Headless);
        if !headless {
            return Lookup::NxDomain;
        }
        let mut found = false;
        for a in self.ready(view, ns, svc) {
            let h = view.hostname_of(ns, svc, a);
            if h.as_deref() == Some(host) || dashed(a.ip) == host {
                found = true;
                b.addr(a.ip);
            }
        }
        if found { b.done() } else { Lookup::NxDomain }
    }

    fn srv(
        &self,
        view: &View,
        ns: &str,
        svc: &str,
        port: &str,
        proto: &str,
        mut b: Builder<'_>,
    ) -> Lookup {
        let Some(entry) = view.services.get(&(ns.to_string(), svc.to_string())) else {
            return Lookup::NxDomain;
        };
        let mut found = false;
        match &entry.kind {
            ServiceKind::ClusterIp(ips) => {
                for p in entry.ports.iter().filter(|p| matches_port(p, port, proto)) {
                    found = true;
                    if let Some(target) = self.fqdn(&[svc, ns, "svc"]) {
                        b.srv(100, p.port, target, ips);
                    }
                }
            }
            ServiceKind::Headless => {
                let addrs = self.ready(view, ns, svc);
                let n = addrs
                    .iter()
                    .filter(|a| a.ports.iter().any(|p| matches_port(p, port, proto)))
                    .count();
                for a in addrs {
                    for p in a.ports.iter().filter(|p| matches_port(p, port, proto)) {
                        found = true;
                        if let Some(target) = self.host_name(view, ns, svc, a) {
                            b.srv(weight(n), p.port, target, &[a.ip]);
                        }
                    }
                }
                // A headless port with no ready endpoint still names a port of the Service.
                found |= entry.ports.iter().any(|p| matches_port(p, port, proto));
            }
            ServiceKind::ExternalName(_) => {}
        }
        if found { b.done() } else { Lookup::NxDomain }
    }

    fn reverse(&self, view: &View, ip: IpAddr, mut b: Builder<'_>) -> Lookup {
        let mut found = false;
        for ((ns, svc), entry) in &view.services {
            match &entry.kind {
                ServiceKind::ClusterIp(ips) if ips.contains(&ip) => {
                    if let Some(n) = self.fqdn(&[svc, ns, "svc"]) {
                        found = true;
                        b.add(RecordType::PTR, RData::PTR(PTR(n)));
                    }
                }
                ServiceKind::Headless => {
                    for a in self.ready(view, ns, svc).iter().filter(|a| a.ip == ip) {
                        if let Some(n) = self.host_name(view, ns, svc, a) {
                            found = true;
                            b.add(RecordType::PTR, RData::PTR(PTR(n)));
                        }
                    }
                }
                _ => {}
            }
        }
        if found { b.done() } else { Lookup::NotOurs }
    }
}

#[cfg(test)]
#[path = "zone_tests.rs"]
mod tests;
