//! Per-kind validation of the fields people get wrong: pod specs (containers, names, images,
//! ports), workload selectors (required, matching the template, immutable), Service ports, and
//! ConfigMap/Secret keys. Messages and field paths follow the apiserver's.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::{Cause, LABEL_MSG, is_dns_label};
use crate::api::registry::Resource;
use crate::api::selector::LabelSelector;

fn required(field: String, causes: &mut Vec<Cause>) {
    causes.push(Cause {
        reason: "FieldValueRequired",
        field,
        message: "Required value".into(),
    });
}

fn invalid(field: String, value: &Value, message: &str, causes: &mut Vec<Cause>) {
    causes.push(Cause {
        reason: "FieldValueInvalid",
        field,
        message: format!("Invalid value: {value}: {message}"),
    });
}

/// Adds the causes of `obj` (an update of `old` when given) being invalid.
pub fn check(res: &Resource, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    match (res.group, res.kind) {
        ("", "Pod") => pod_spec(&obj["spec"], "spec", causes),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            workload(res, obj, old, causes)
        }
        ("", "Service") => service(&obj["spec"], causes),
        ("", "ConfigMap") => {
            data_keys(&obj["data"], "data", causes);
            data_keys(&obj["binaryData"], "binaryData", causes);
        }
        ("batch", "Job") => {
            name_length(obj, 63, causes);
            job_spec(&obj["spec"], old.map(|o| &o["spec"]), "spec", causes);
        }
        ("batch", "CronJob") => {
            name_length(obj, 52, causes);
            super::batch::cronjob(obj, causes);
            let template = &obj["spec"]["jobTemplate"]["spec"];
            let old_template = old.map(|o| &o["spec"]["jobTemplate"]["spec"]);
            job_spec(template, old_template, "spec.jobTemplate.spec", causes);
        }
        ("discovery.k8s.io", "EndpointSlice") => super::batch::endpoint_slice(obj, causes),
        ("policy", "PodDisruptionBudget") => super::batch::pod_disruption_budget(obj, causes),
        ("networking.k8s.io", "Ingress") => super::networking::ingress(obj, causes),
        ("networking.k8s.io", "IngressClass") => super::networking::ingress_class(obj, causes),
        ("networking.k8s.io", "NetworkPolicy") => super::networking::network_policy(obj, causes),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(obj, old, causes),
        ("", "Secret") => {
            data_keys(&obj["data"], "data", causes);
            data_keys(&obj["stringData"], "stringData", causes);
        }
        _ => {}
    }
}

fn port_ok(v: &Value) -> bool {
    v.as_i64().is_some_and(|p| (1..=65535).contains(&p))
}

fn pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let mut names = HashSet::new();
    let containers = spec["containers"].as_array().filter(|c| !c.is_empty());
    if containers.is_none() {
        required(format!("{path}.containers"), causes);
    }
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            match c["name"].as_str() {
                None | Some("") => required(format!("{at}.name"), causes),
                Some(name) if !is_dns_label(name) => {
                    invalid(format!("{at}.name"), &json!(name), LABEL_MSG, causes)
                }
                Some(name) if !names.insert(name.to_string()) => causes.push(Cause {
                    reason: "FieldValueDuplicate",
                    field: format!("{at}.name"),
                    message: format!("Duplicate value: {}", json!(name)),
                }),
                Some(_) => {}
            }
            if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
                required(format!("{at}.image"), causes);
            }
            for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                if !port_ok(&p["containerPort"]) {
                    let field = format!("{at}.ports[{j}].containerPort");
                    let msg = "must be between 1 and 65535, inclusive";
                    invalid(field, &p["containerPort"], msg, causes);
                }
            }
        }
    }
}

/// `LabelSelector` JSON as a selector expression.
fn selector_text(sel: &Value) -> String {
    crate::api::scale::selector_string(sel)
}

fn workload(res: &Resource, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let selector = &spec["selector"];
    let text = selector_text(selector);
    if selector.is_null() {
        required("spec.selector".into(), causes);
    } else if text.is_empty() {
        let msg = format!("empty selector is invalid for {}", res.singular);
        invalid("spec.selector".into(), selector, &msg, causes);
    } else {
        let labels = &spec["template"]["metadata"]["labels"];
        let template = json!({"metadata": {"labels": labels}});
        match LabelSelector::parse(&text) {
            Ok(sel) if sel.matches(&template) => {}
            Ok(_) => invalid(
                "spec.template.metadata.labels".into(),
                labels,
                "`selector` does not match template `labels`",
                causes,
            ),
            Err(_) => invalid(
                "spec.selector".into(),
                selector,
                "invalid label selector",
                causes,
            ),
        }
    }
    if let Some(old) = old
        && old["spec"]["selector"] != *selector
    {
        invalid(
            "spec.selector".into(),
            selector,
            "field is immutable",
            causes,
        );
    }
    if spec["replicas"].as_i64().is_some_and(|r| r < 0) {
        let msg = "must be greater than or equal to 0";
        invalid("spec.replicas".into(), &spec["replicas"], msg, causes);
    }
    pod_spec(&spec["template"]["spec"], "spec.template.spec", causes);
}

/// Names that become label values of the pods (Jobs) or prefixes of Job names (CronJobs).
fn name_length(obj: &Value, max: usize, causes: &mut Vec<Cause>) {
    let name = &obj["metadata"]["name"];
    if name.as_str().is_some_and(|n| n.len() > max) {
        let msg = format!("must be no more than {max} characters");
        invalid("metadata.name".into(), name, &msg, causes);
    }
}

fn non_negative(spec: &Value, field: &str, path: &str, causes: &mut Vec<Cause>) {
    if spec[field].as_i64().is_some_and(|v| v < 0) {
        let msg = "must be greater than or equal to 0";
        invalid(format!("{path}.{field}"), &spec[field], msg, causes);
    }
}

/// A Job spec (`path` is `spec` or `spec.jobTemplate.spec`): counts, restart policy, completion
/// mode, selector (when present, matching the template; immutable once set), the pod template.
pub(super) fn job_spec(spec: &Value, old: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(spec, field, path, causes);
    }
    if spec["activeDeadlineSeconds"].as_i64() == Some(0) {
        let msg = "must be greater than 0";
        let field = format!("{path}.activeDeadlineSeconds");
        invalid(field, &spec["activeDeadlineSeconds"], msg, causes);
    }
    // Accepted upstream, not carried out here: refused rather than silently ignored.
    for field in [
        "podFailurePolicy",
        "successPolicy",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        if !spec[field].is_null() {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                field: format!("{path}.{field}"),
                message: "Forbidden: not supported by r3s yet".into(),
            });
        }
    }
    let mode = &spec["completionMode"];
    if !mode.is_null() && !matches!(mode.as_str(), Some("NonIndexed" | "Indexed")) {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: format!("{path}.completionMode"),
            message: format!(
                "Unsupported value: {mode}: supported values: \"NonIndexed\", \"Indexed\""
            ),
        });
    }
    if mode.as_str() == Some("Indexed") && spec["completions"].is_null() {
        let field = format!("{path}.completions");
        let msg = "when completion mode is Indexed";
        causes.push(Cause {
            reason: "FieldValueRequired",
            field,
            message: format!("Required value: {msg}"),
        });
    }
    let policy = &spec["template"]["spec"]["restartPolicy"];
    if !matches!(policy.as_str(), Some("OnFailure" | "Never")) {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: format!("{path}.template.spec.restartPolicy"),
            message: format!(
                "Unsupported value: {policy}: supported values: \"OnFailure\", \"Never\""
            ),
        });
    }
    let selector = &spec["selector"];
    if !selector.is_null() {
        let labels = &spec["template"]["metadata"]["labels"];
        let template = json!({"metadata": {"labels": labels}});
        match LabelSelector::parse(&selector_text(selector)) {
            Ok(sel) if sel.matches(&template) => {}
            Ok(_) => invalid(
                format!("{path}.template.metadata.labels"),
                labels,
                "`selector` does not match template `labels`",
                causes,
            ),
            Err(_) => invalid(
                format!("{path}.selector"),
                selector,
                "invalid label selector",
                causes,
            ),
        }
    }
    if let Some(old) = old {
        for field in ["selector", "completionMode"] {
            if !old[field].is_null() && old[field] != spec[field] {
                invalid(
                    format!("{path}.{field}"),
                    &spec[field],
                    "field is immutable",
                    causes,
                );
            }
        }
    }
    pod_spec(
        &spec["template"]["spec"],
        &format!("{path}.template.spec"),
        causes,
    );
}

fn crd(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let (group, plural) = (text(&spec["group"]), text(&spec["names"]["plural"]));
    for (field, value) in [
        ("spec.group", &spec["group"]),
        ("spec.names.plural", &spec["names"]["plural"]),
        ("spec.names.kind", &spec["names"]["kind"]),
    ] {
        if text(value).is_none() {
            required(field.into(), causes);
        }
    }
    if let (Some(group), Some(plural)) = (group, plural) {
        let want = format!("{plural}.{group}");
        if obj["metadata"]["name"].as_str() != Some(want.as_str()) {
            let msg = format!("must be spec.names.plural+\".\"+spec.group: {want}");
            invalid(
                "metadata.name".into(),
                &obj["metadata"]["name"],
                &msg,
                causes,
            );
        }
    }
    if !matches!(spec["scope"].as_str(), Some("Namespaced" | "Cluster")) {
        let msg = "supported values: \"Cluster\", \"Namespaced\"";
        invalid("spec.scope".into(), &spec["scope"], msg, causes);
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        required("spec.versions".into(), causes);
    } else if versions
        .iter()
        .filter(|v| v["storage"] == json!(true))
        .count()
        != 1
    {
        let msg = "must have exactly one version marked as storage version";
        invalid("spec.versions".into(), &spec["versions"], msg, causes);
    }
    if let Some(old) = old {
        for field in ["group", "scope"] {
            if old["spec"][field] != spec[field] {
                invalid(
                    format!("spec.{field}"),
                    &spec[field],
                    "field is immutable",
                    causes,
                );
            }
        }
    }
}

fn service(spec: &Value, causes: &mut Vec<Cause>) {
    if spec["type"] == json!("ExternalName") {
        return;
    }
    for field in ["internalTrafficPolicy", "externalTrafficPolicy"] {
        let v = &spec[field];
        if !v.is_null() && v != "Cluster" && v != "Local" {
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                field: format!("spec.{field}"),
                message: format!(
                    "Unsupported value: {v}: supported values: \"Cluster\", \"Local\""
                ),
            });
        }
    }
    for (i, ip) in spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if ip
            .as_str()
            .and_then(|s| s.parse::<std::net::IpAddr>().ok())
            .is_none()
        {
            let msg = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
            invalid(format!("spec.externalIPs[{i}]"), ip, msg, causes);
        }
    }
    let ranges = spec["loadBalancerSourceRanges"].as_array();
    if ranges.is_some_and(|r| !r.is_empty()) && spec["type"] != "LoadBalancer" {
        causes.push(Cause {
            reason: "FieldValueForbidden",
            field: "spec.loadBalancerSourceRanges".into(),
            message: "Forbidden: may only be used when `type` is 'LoadBalancer'".into(),
        });
    }
    for (i, r) in ranges.into_iter().flatten().enumerate() {
        if !r.as_str().is_some_and(|s| is_cidr(s.trim())) {
            let msg = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
            invalid(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                r,
                msg,
                causes,
            );
        }
    }
    for (i, p) in spec["ports"].as_array().into_iter().flatten().enumerate() {
        if !port_ok(&p["port"]) {
            let msg = "must be between 1 and 65535, inclusive";
            invalid(format!("spec.ports[{i}].port"), &p["port"], msg, causes);
        }
        if p["targetPort"].is_number() && !port_ok(&p["targetPort"]) {
            let msg = "must be between 1 and 65535, inclusive";
            invalid(
                format!("spec.ports[{i}].targetPort"),
                &p["targetPort"],
                msg,
                causes,
            );
        }
    }
}

/// `<ip>/<prefix>` with a prefix no longer than the address.
fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    let max = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => 32,
        Ok(std::net::IpAddr::V6(_)) => 128,
        Err(_) => return false,
    };
    prefix.parse::<u8>().is_ok_and(|p| p <= max)
}

fn data_keys(map: &Value, field: &str, causes: &mut Vec<Cause>) {
    for key in map.as_object().into_iter().flat_map(|m| m.keys()) {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            let msg = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
            invalid(format!("{field}[{key}]"), &json!(key), msg, causes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::find;

    fn causes(plural: &str, group: &str, obj: Value, old: Option<Value>) -> Vec<String> {
        let res = find(group, "v1", plural).expect("registered");
        let mut out = Vec::new();
        check(res, &obj, old.as_ref(), &mut out);
        out.into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn deployments_need_matching_selectors_and_valid_containers() {
        let good = json!({"spec":{"selector":{"matchLabels":{"app":"web"}},
            "template":{"metadata":{"labels":{"app":"web","tier":"x"}},
                        "spec":{"containers":[{"name":"a","image":"nginx","ports":[{"containerPort":80}]}]}}}});
        assert!(causes("deployments", "apps", good.clone(), None).is_empty());
        let mut bad = good.clone();
        bad["spec"]["template"]["metadata"]["labels"] = json!({"app":"other"});
        bad["spec"]["template"]["spec"]["containers"] = json!([{"name":"A_","image":""},{"name":"b","image":"x","ports":[{"containerPort":0}]}]);
        let got = causes("deployments", "apps", bad, None);
        assert!(
            got.iter()
                .any(|c| c.starts_with("spec.template.metadata.labels: Invalid value")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|c| c.starts_with("spec.template.spec.containers[0].name: Invalid value"))
        );
        assert!(
            got.iter()
                .any(|c| c == "spec.template.spec.containers[0].image: Required value")
        );
        assert!(
            got.iter()
                .any(|c| c.starts_with("spec.template.spec.containers[1].ports[0].containerPort"))
        );
        let mut moved = good.clone();
        moved["spec"]["selector"] = json!({"matchLabels":{"app":"web","tier":"x"}});
        let got = causes("deployments", "apps", moved, Some(good));
        assert!(
            got.iter().any(|c| c.ends_with("field is immutable")),
            "{got:?}"
        );
    }

    #[test]
    fn jobs_need_a_terminating_restart_policy() {
        let good = json!({"spec":{"completions":2,"template":{"spec":{"restartPolicy":"Never",
            "containers":[{"name":"a","image":"x"}]}}}});
        assert!(causes("jobs", "batch", good.clone(), None).is_empty());
        let mut bad = good.clone();
        bad["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        bad["spec"]["completions"] = json!(-1);
        bad["spec"]["podFailurePolicy"] = json!({"rules": []});
        let got = causes("jobs", "batch", bad, None);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got.iter()
                .any(|c| c.starts_with("spec.template.spec.restartPolicy: Unsupported"))
        );
        assert!(
            got.iter()
                .any(|c| c.starts_with("spec.podFailurePolicy: Forbidden"))
        );
    }

    #[test]
    fn pods_services_and_config_keys() {
        let got = causes(
            "pods",
            "",
            json!({"spec":{"containers":[{"name":"a","image":"x"},{"name":"a","image":"y"}]}}),
            None,
        );
        assert_eq!(got, ["spec.containers[1].name: Duplicate value: \"a\""]);
        assert_eq!(
            causes("pods", "", json!({"spec":{}}), None),
            ["spec.containers: Required value"]
        );
        let got = causes(
            "services",
            "",
            json!({"spec":{"ports":[{"port":70000,"targetPort":"http"}]}}),
            None,
        );
        assert_eq!(got.len(), 1);
        let got = causes(
            "services",
            "",
            json!({"spec":{"ports":[{"port":80}], "internalTrafficPolicy": "Nearby",
                "externalIPs": ["198.51.100.7", "not-an-ip"],
                "loadBalancerSourceRanges": ["10.0.0.0/8", "10.0.0.0/33"]}}),
            None,
        );
        assert_eq!(
            got,
            [
                "spec.internalTrafficPolicy: Unsupported value: \"Nearby\": supported values: \"Cluster\", \"Local\"",
                "spec.externalIPs[1]: Invalid value: \"not-an-ip\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                "spec.loadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'",
                "spec.loadBalancerSourceRanges[1]: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ]
        );
        let got = causes(
            "services",
            "",
            json!({"spec":{"type": "LoadBalancer", "ports":[{"port":80}],
                "loadBalancerSourceRanges": [" 203.0.113.0/24"]}}),
            None,
        );
        assert!(got.is_empty(), "{got:?}");
        let got = causes(
            "configmaps",
            "",
            json!({"data":{"ok.key":"1","bad key":"2"}}),
            None,
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("data[bad key]"));
    }
}
