//! The record rules over a hand-built view: one case per rule of the DNS specification, plus the
//! negative answers (NXDOMAIN vs NODATA) and the names left to the forwarder.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use hickory_proto::rr::{Name, RData, RecordType};

use super::*;
use crate::dns::view::{Address, PodEntry, Port, ServiceEntry, ServiceKind, View};

fn port(name: &str, proto: &str, port: u16) -> Port {
    Port {
        name: name.into(),
        protocol: proto.into(),
        port,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn k(ns: &str, name: &str) -> (String, String) {
    (ns.into(), name.into())
}

fn view() -> View {
    let mut v = View::synced();
    v.services.insert(
        k("default", "web"),
        ServiceEntry {
            kind: ServiceKind::ClusterIp(vec![ip("10.43.0.20")]),
            ports: vec![port("http", "tcp", 80), port("", "tcp", 8080)],
        },
    );
    v.services.insert(
        k("db", "pg"),
        ServiceEntry {
            kind: ServiceKind::Headless,
            ports: vec![port("sql", "tcp", 5432)],
        },
    );
    v.endpoints.insert(
        k("db", "pg"),
        vec![
            Address {
                ip: ip("10.42.1.5"),
                hostname: None,
                pod: Some("pg-0".into()),
                ports: vec![port("sql", "tcp", 5432)],
            },
            Address {
                ip: ip("10.42.2.7"),
                hostname: Some("explicit".into()),
                pod: None,
                ports: vec![port("sql", "tcp", 5432)],
            },
            Address {
                ip: ip("10.42.3.9"),
                hostname: None,
                pod: Some("other".into()),
                ports: vec![port("sql", "tcp", 5432)],
            },
        ],
    );
    v.pods.insert(
        k("db", "pg-0"),
        PodEntry {
            ips: vec![ip("10.42.1.5")],
            hostname: Some("pg-0".into()),
            subdomain: Some("pg".into()),
        },
    );
    v.pods.insert(
        k("db", "other"),
        PodEntry {
            ips: vec![ip("10.42.3.9")],
            hostname: Some("h".into()),
            subdomain: Some("not-pg".into()),
        },
    );
    v.services.insert(
        k("default", "ext"),
        ServiceEntry {
            kind: ServiceKind::ExternalName("example.org".into()),
            ports: vec![],
        },
    );
    v
}

fn zone() -> Zone {
    Zone::new("cluster.local", 5, Some(ip("10.43.0.10"))).unwrap()
}

fn ask(v: &View, name: &str, t: RecordType) -> Lookup {
    zone().lookup(v, &Name::from_ascii(name).unwrap(), t)
}

/// The answers' data, as text, sorted.
fn data(l: &Lookup) -> Vec<String> {
    match l {
        Lookup::Found { answers, .. } => {
            let mut d: Vec<String> = answers.iter().map(|r| r.data.to_string()).collect();
            d.sort();
            d
        }
        other => panic!("expected records, got {other:?}"),
    }
}

#[test]
fn cluster_ip_service_a_record() {
    let v = view();
    let l = ask(&v, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&l), ["10.43.0.20"]);
    let Lookup::Found { answers, .. } = &l else {
        unreachable!()
    };
    assert_eq!(answers[0].ttl, 5);
    assert_eq!(
        answers[0].name.to_string(),
        "web.default.svc.cluster.local."
    );
    // Case does not matter; the answer's owner is the question lower-cased.
    assert_eq!(
        data(&ask(&v, "WEB.Default.svc.cluster.local.", RecordType::A)),
        ["10.43.0.20"]
    );
}

#[test]
fn existing_name_without_the_type_is_nodata() {
    let v = view();
    assert_eq!(
        ask(&v, "web.default.svc.cluster.local.", RecordType::AAAA),
        Lookup::NoData
    );
    assert_eq!(
        ask(&v, "web.default.svc.cluster.local.", RecordType::MX),
        Lookup::NoData
    );
    // Empty non-terminals exist too.
    assert_eq!(ask(&v, "svc.cluster.local.", RecordType::A), Lookup::NoData);
    assert_eq!(
        ask(&v, "default.svc.cluster.local.", RecordType::A),
        Lookup::NoData
    );
    assert_eq!(
        ask(&v, "_tcp.web.default.svc.cluster.local.", RecordType::A),
        Lookup::NoData
    );
}

#[test]
fn missing_names_are_nxdomain() {
    let v = view();
    for name in [
        "nope.default.svc.cluster.local.",
        "web.nons.svc.cluster.local.",
        "nons.svc.cluster.local.",
        "x.y.z.w.v.svc.cluster.local.",
        "foo.cluster.local.",
        "_udp.web.default.svc.cluster.local.",
        // A ClusterIP Service has no per-endpoint names.
        "10-42-1-5.web.default.svc.cluster.local.",
    ] {
        assert_eq!(ask(&v, name, RecordType::A), Lookup::NxDomain, "{name}");
    }
}

#[test]
fn srv_for_named_ports_of_a_cluster_ip_service() {
    let v = view();
    let l = ask(
        &v,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(data(&l), ["0 100 80 web.default.svc.cluster.local."]);
    let Lookup::Found { additionals, .. } = &l else {
        unreachable!()
    };
    assert_eq!(additionals.len(), 1);
    assert_eq!(additionals[0].data.to_string(), "10.43.0.20");
    // Wrong protocol or unknown port: no such name. Right name, other type: no data.
    assert_eq!(
        ask(
            &v,
            "_http._udp.web.default.svc.cluster.local.",
            RecordType::SRV
        ),
        Lookup::NxDomain
    );
    assert_eq!(
        ask(
            &v,
            "_nope._tcp.web.default.svc.cluster.local.",
            RecordType::SRV
        ),
        Lookup::NxDomain
    );
    assert_eq!(
        ask(
            &v,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::A
        ),
        Lookup::NoData
    );
    // The bare Service name lists its named ports only.
    assert_eq!(
        data(&ask(&v, "web.default.svc.cluster.local.", RecordType::SRV)),
        ["0 100 80 web.default.svc.cluster.local."]
    );
}

#[test]
fn headless_service_answers_its_ready_endpoints() {
    let v = view();
    assert_eq!(
        data(&ask(&v, "pg.db.svc.cluster.local.", RecordType::A)),
        ["10.42.1.5", "10.42.2.7", "10.42.3.9"]
    );
    // Per-endpoint SRV targets: the pod's hostname when its subdomain is this Service, the
    // Endpoints hostname, or else the dashed address.
    assert_eq!(
        data(&ask(
            &v,
            "_sql._tcp.pg.db.svc.cluster.local.",
            RecordType::SRV
        )),
        [
            "0 33 5432 10-42-3-9.pg.db.svc.cluster.local.",
            "0 33 5432 explicit.pg.db.svc.cluster.local.",
            "0 33 5432 pg-0.pg.db.svc.cluster.local.",
        ]
    );
}

#[test]
fn statefulset_hostnames_and_dashed_endpoint_names() {
    let v = view();
    assert_eq!(
        data(&ask(&v, "pg-0.pg.db.svc.cluster.local.", RecordType::A)),
        ["10.42.1.5"]
    );
    assert_eq!(
        data(&ask(&v, "explicit.pg.db.svc.cluster.local.", RecordType::A)),
        ["10.42.2.7"]
    );
    assert_eq!(
        data(&ask(
            &v,
            "10-42-3-9.pg.db.svc.cluster.local.",
            RecordType::A
        )),
        ["10.42.3.9"]
    );
    // The pod whose subdomain is another Service gets no hostname under this one.
    assert_eq!(
        ask(&v, "h.pg.db.svc.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
}

#[test]
fn headless_without_ready_endpoints_is_nodata() {
    let mut v = view();
    v.endpoints.remove(&k("db", "pg"));
    assert_eq!(
        ask(&v, "pg.db.svc.cluster.local.", RecordType::A),
        Lookup::NoData
    );
    assert_eq!(
        ask(&v, "_sql._tcp.pg.db.svc.cluster.local.", RecordType::SRV),
        Lookup::NoData
    );
}

#[test]
fn external_name_is_a_cname_for_every_type() {
    let v = view();
    for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
        let l = ask(&v, "ext.default.svc.cluster.local.", t);
        assert_eq!(data(&l), ["example.org."]);
        let Lookup::Found { answers, .. } = &l else {
            unreachable!()
        };
        assert_eq!(answers[0].record_type(), RecordType::CNAME);
    }
}

#[test]
fn pod_records_exist_only_for_pod_addresses() {
    let v = view();
    assert_eq!(
        data(&ask(&v, "10-42-1-5.db.pod.cluster.local.", RecordType::A)),
        ["10.42.1.5"]
    );
    assert_eq!(
        ask(&v, "10-42-1-5.default.pod.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
    assert_eq!(
        ask(&v, "10-42-9-9.db.pod.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
    assert_eq!(
        ask(&v, "not-an-ip.db.pod.cluster.local.", RecordType::A),
        Lookup::NxDomain
    );
    assert_eq!(
        ask(&v, "10-42-1-5.db.pod.cluster.local.", RecordType::AAAA),
        Lookup::NoData
    );
}

#[test]
fn ptr_for_cluster_ips_and_headless_endpoints() {
    let v = view();
    assert_eq!(
        data(&ask(&v, "20.0.43.10.in-addr.arpa.", RecordType::PTR)),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        data(&ask(&v, "5.1.42.10.in-addr.arpa.", RecordType::PTR)),
        ["pg-0.pg.db.svc.cluster.local."]
    );
    // Anything else is the upstream's (CoreDNS's fallthrough for reverse zones).
    assert_eq!(
        ask(&v, "1.2.0.192.in-addr.arpa.", RecordType::PTR),
        Lookup::NotOurs
    );
    assert_eq!(
        ask(&v, "42.10.in-addr.arpa.", RecordType::PTR),
        Lookup::NotOurs
    );
}

#[test]
fn ipv6_reverse_names_and_dashes() {
    assert_eq!(
        reverse_ip(
            &"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa"
                .split('.')
                .map(String::from)
                .collect::<Vec<_>>()
        ),
        Some(ip("fd00::1"))
    );
    assert_eq!(dashed(ip("fd00::1")), "fd00--1");
    assert_eq!(undashed("fd00--1"), Some(ip("fd00::1")));
    assert_eq!(undashed("10-42-0-5"), Some(ip("10.42.0.5")));
    assert_eq!(undashed("10-42-0"), None);
}

#[test]
fn outside_names_are_not_ours() {
    let v = view();
    assert_eq!(ask(&v, "example.org.", RecordType::A), Lookup::NotOurs);
    // A name that merely ends like the domain is outside it.
    assert_eq!(ask(&v, "xcluster.local.", RecordType::A), Lookup::NotOurs);
    assert_eq!(ask(&v, "local.", RecordType::A), Lookup::NotOurs);
}

#[test]
fn apex_version_and_nameserver() {
    let v = view();
    let soa = data(&ask(&v, "cluster.local.", RecordType::SOA));
    assert_eq!(soa.len(), 1);
    assert!(
        soa[0].starts_with("ns.dns.cluster.local. hostmaster.cluster.local."),
        "{soa:?}"
    );
    assert_eq!(
        data(&ask(&v, "cluster.local.", RecordType::NS)),
        ["ns.dns.cluster.local."]
    );
    assert_eq!(
        data(&ask(&v, "ns.dns.cluster.local.", RecordType::A)),
        ["10.43.0.10"]
    );
    assert_eq!(
        data(&ask(&v, "dns-version.cluster.local.", RecordType::TXT)),
        ["1.1.0"]
    );
    assert_eq!(ask(&v, "cluster.local.", RecordType::A), Lookup::NoData);
}

#[test]
fn any_returns_every_record_of_the_name() {
    let v = view();
    let d = data(&ask(&v, "web.default.svc.cluster.local.", RecordType::ANY));
    assert_eq!(d, ["0 100 80 web.default.svc.cluster.local.", "10.43.0.20"]);
}

#[test]
fn soa_negative_ttl_is_the_zone_ttl() {
    let soa = zone().soa(42);
    assert_eq!(soa.ttl, 5);
    let RData::SOA(s) = soa.data else {
        unreachable!()
    };
    assert_eq!((s.serial, s.minimum), (42, 5));
}
