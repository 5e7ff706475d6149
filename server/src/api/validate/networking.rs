//! Validation of the networking.k8s.io kinds for the fields people write: an Ingress's rules
//! (host, path, pathType, backend) and default backend, an IngressClass's controller, a
//! NetworkPolicy's policy types and ports. Messages follow upstream's field errors.

use serde_json::Value;

use super::batch::{invalid, not_supported, required};
use super::{Cause, is_dns_subdomain};

const PATH_TYPES: &[&str] = &["Exact", "ImplementationSpecific", "Prefix"];

/// An Ingress: every rule's host is a DNS name (a leading `*.` allowed), every HTTP path has a
/// supported pathType (and, for Exact and Prefix, an absolute path) and a backend; at least a
/// rule or a default backend.
pub fn ingress(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let rules = spec["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if rules.is_empty() && spec["defaultBackend"].is_null() {
        let msg = "either `defaultBackend` or `rules` must be specified";
        invalid("spec", spec, msg, causes);
    }
    if !spec["defaultBackend"].is_null() {
        backend(&spec["defaultBackend"], "spec.defaultBackend", causes);
    }
    for (i, rule) in rules.iter().enumerate() {
        let host = rule["host"].as_str().unwrap_or("");
        if !host.is_empty() {
            let name = host.strip_prefix("*.").unwrap_or(host);
            if !is_dns_subdomain(name) {
                let msg = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
                invalid(&format!("spec.rules[{i}].host"), &rule["host"], msg, causes);
            }
        }
        let http = &rule["http"];
        if http.is_null() {
            continue;
        }
        let paths = http["paths"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if paths.is_empty() {
            required(&format!("spec.rules[{i}].http.paths"), causes);
        }
        for (j, p) in paths.iter().enumerate() {
            let at = format!("spec.rules[{i}].http.paths[{j}]");
            match p["pathType"].as_str() {
                None => required(&format!("{at}.pathType"), causes),
                Some(t) if !PATH_TYPES.contains(&t) => not_supported(
                    &format!("{at}.pathType"),
                    &p["pathType"],
                    PATH_TYPES,
                    causes,
                ),
                Some("Exact" | "Prefix") => {
                    if !p["path"].as_str().is_some_and(|s| s.starts_with('/')) {
                        invalid(
                            &format!("{at}.path"),
                            &p["path"],
                            "must be an absolute path",
                            causes,
                        );
                    }
                }
                Some(_) => {}
            }
            backend(&p["backend"], &format!("{at}.backend"), causes);
        }
    }
}

/// A backend names exactly one of a Service (name and one of port number or name) or a resource.
fn backend(b: &Value, at: &str, causes: &mut Vec<Cause>) {
    let service = &b["service"];
    let resource = &b["resource"];
    match (service.is_null(), resource.is_null()) {
        (true, true) => required(&format!("{at}.service"), causes),
        (false, false) => {
            let msg = "cannot set both service and resource backends";
            invalid(at, b, msg, causes);
        }
        (false, true) => {
            if service["name"].as_str().is_none_or(str::is_empty) {
                required(&format!("{at}.service.name"), causes);
            }
            let port = &service["port"];
            let number = &port["number"];
            let name = &port["name"];
            match (number.is_null(), name.is_null()) {
                (true, true) => required(&format!("{at}.service.port"), causes),
                (false, false) => {
                    let msg = "cannot set both port name & port number";
                    invalid(&format!("{at}.service.port"), port, msg, causes);
                }
                (false, true) => {
                    if !number.as_i64().is_some_and(|n| (1..=65535).contains(&n)) {
                        let msg = "must be between 1 and 65535, inclusive";
                        invalid(&format!("{at}.service.port.number"), number, msg, causes);
                    }
                }
                (true, false) => {}
            }
        }
        (true, false) => {
            if resource["kind"].as_str().is_none_or(str::is_empty) {
                required(&format!("{at}.resource.kind"), causes);
            }
            if resource["name"].as_str().is_none_or(str::is_empty) {
                required(&format!("{at}.resource.name"), causes);
            }
        }
    }
}

/// An IngressClass names its controller (`example.com/name`).
pub fn ingress_class(obj: &Value, causes: &mut Vec<Cause>) {
    let controller = &obj["spec"]["controller"];
    match controller.as_str() {
        None | Some("") => required("spec.controller", causes),
        Some(c) if !c.contains('/') => {
            let msg = "must be a domain-prefixed path (such as \"acme.io/foo\")";
            invalid("spec.controller", controller, msg, causes);
        }
        Some(_) => {}
    }
}

const POLICY_TYPES: &[&str] = &["Egress", "Ingress"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// A NetworkPolicy: known policy types and port protocols, port ranges in order.
pub fn network_policy(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    for (i, t) in spec["policyTypes"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !t.as_str().is_some_and(|t| POLICY_TYPES.contains(&t)) {
            not_supported(&format!("spec.policyTypes[{i}]"), t, POLICY_TYPES, causes);
        }
    }
    for dir in ["ingress", "egress"] {
        for (i, rule) in spec[dir].as_array().into_iter().flatten().enumerate() {
            for (j, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                let at = format!("spec.{dir}[{i}].ports[{j}]");
                let protocol = &port["protocol"];
                if !protocol.is_null() && !protocol.as_str().is_some_and(|p| PROTOCOLS.contains(&p))
                {
                    not_supported(&format!("{at}.protocol"), protocol, PROTOCOLS, causes);
                }
                if let (Some(from), Some(to)) = (port["port"].as_i64(), port["endPort"].as_i64())
                    && to < from
                {
                    let msg = "must be greater than or equal to `port`";
                    invalid(&format!("{at}.endPort"), &port["endPort"], msg, causes);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(f: fn(&Value, &mut Vec<Cause>), obj: Value) -> Vec<String> {
        let mut causes = Vec::new();
        f(&obj, &mut causes);
        causes.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn ingress_rules_need_path_types_and_backends() {
        let good = json!({"spec": {"rules": [{"host": "*.example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}});
        assert!(fields(ingress, good).is_empty());
        let bad = json!({"spec": {"rules": [{"host": "Bad_Host", "http": {"paths": [
            {"path": "api", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {}}}},
            {"path": "/", "backend": {}}]}}]}});
        assert_eq!(
            fields(ingress, bad),
            [
                "spec.rules[0].host",
                "spec.rules[0].http.paths[0].path",
                "spec.rules[0].http.paths[0].backend.service.port",
                "spec.rules[0].http.paths[1].pathType",
                "spec.rules[0].http.paths[1].backend.service",
            ]
        );
        assert_eq!(fields(ingress, json!({"spec": {}})), ["spec"]);
    }

    #[test]
    fn network_policies_and_classes() {
        let bad = json!({"spec": {"podSelector": {}, "policyTypes": ["Ingress", "Sideways"],
            "ingress": [{"ports": [{"protocol": "ICMP", "port": 90, "endPort": 80}]}]}});
        assert_eq!(
            fields(network_policy, bad),
            [
                "spec.policyTypes[1]",
                "spec.ingress[0].ports[0].protocol",
                "spec.ingress[0].ports[0].endPort"
            ]
        );
        assert_eq!(
            fields(ingress_class, json!({"spec": {"controller": "nope"}})),
            ["spec.controller"]
        );
        assert!(
            fields(
                ingress_class,
                json!({"spec": {"controller": "r3s.io/none"}})
            )
            .is_empty()
        );
    }
}
