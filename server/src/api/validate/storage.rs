//! Validation of the quota and storage kinds: ResourceQuota (`hard` quantities), LimitRange
//! (item types, quantities, and `min` ≤ `defaultRequest` ≤ `default` ≤ `max`),
//! PersistentVolumeClaim and PersistentVolume (access modes, storage, one volume source) and
//! StorageClass (provisioner). Field paths and messages follow the apiserver's.

use serde_json::{Value, json};

use super::Cause;
use crate::api::quantity::Quantity;
use crate::api::registry::Resource;

const QUANTITY_MSG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

fn cause(reason: &'static str, field: String, message: String) -> Cause {
    Cause {
        reason,
        field,
        message,
    }
}

fn required(field: String, detail: &str, causes: &mut Vec<Cause>) {
    let message = if detail.is_empty() {
        "Required value".to_string()
    } else {
        format!("Required value: {detail}")
    };
    causes.push(cause("FieldValueRequired", field, message));
}

fn invalid(field: String, value: &Value, why: &str, causes: &mut Vec<Cause>) {
    causes.push(cause(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {value}: {why}"),
    ));
}

/// The quantities of a resource map, each checked (valid and not negative).
fn quantities(map: &Value, path: &str, causes: &mut Vec<Cause>) -> Vec<(String, Quantity)> {
    let mut out = Vec::new();
    for (name, value) in map.as_object().into_iter().flatten() {
        let field = format!("{path}[{name}]");
        match value.as_str().and_then(Quantity::parse) {
            None => invalid(field, value, QUANTITY_MSG, causes),
            Some(q) if q.milli < 0 => {
                invalid(field, value, "must be greater than or equal to 0", causes)
            }
            Some(q) => out.push((name.clone(), q)),
        }
    }
    out
}

/// Adds the causes of `obj` being invalid, for the kinds of this module.
pub fn check(res: &Resource, obj: &Value, causes: &mut Vec<Cause>) {
    if !(res.group.is_empty() || res.group == "storage.k8s.io") {
        return;
    }
    match res.kind {
        "ResourceQuota" => {
            quantities(&obj["spec"]["hard"], "spec.hard", causes);
        }
        "LimitRange" => limit_range(obj, causes),
        "PersistentVolumeClaim" => claim(obj, causes),
        "PersistentVolume" => volume(obj, causes),
        "StorageClass" if obj["provisioner"].as_str().is_none_or(str::is_empty) => {
            required("provisioner".into(), "", causes);
        }
        _ => {}
    }
}

fn limit_range(obj: &Value, causes: &mut Vec<Cause>) {
    let items = obj["spec"]["limits"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, item) in items.iter().enumerate() {
        let at = format!("spec.limits[{i}]");
        let kind = item["type"].as_str().unwrap_or("");
        if kind.is_empty() {
            required(format!("{at}.type"), "", causes);
        }
        let get = |field: &str, causes: &mut Vec<Cause>| {
            quantities(&item[field], &format!("{at}.{field}"), causes)
        };
        let (min, max) = (get("min", causes), get("max", causes));
        let (default, request) = (get("default", causes), get("defaultRequest", causes));
        get("maxLimitRequestRatio", causes);
        if kind == "Pod" {
            for field in ["default", "defaultRequest"] {
                if item[field].as_object().is_some_and(|m| !m.is_empty()) {
                    causes.push(cause(
                        "FieldValueForbidden",
                        format!("{at}.{field}"),
                        "Forbidden: may not be specified when `type` is 'Pod'".into(),
                    ));
                }
            }
        }
        let find = |list: &[(String, Quantity)], name: &str| {
            list.iter().find(|(n, _)| n == name).map(|(_, q)| *q)
        };
        for (name, lo) in &min {
            if let Some(hi) = find(&max, name)
                && *lo > hi
            {
                invalid(
                    format!("{at}.min[{name}]"),
                    &json!(lo.to_string()),
                    &format!("min value {lo} is greater than max value {hi}"),
                    causes,
                );
            }
            if let Some(req) = find(&request, name)
                && *lo > req
            {
                invalid(
                    format!("{at}.defaultRequest[{name}]"),
                    &json!(req.to_string()),
                    &format!("min value {lo} is greater than default request value {req}"),
                    causes,
                );
            }
        }
        for (name, def) in &default {
            if let Some(hi) = find(&max, name)
                && *def > hi
            {
                invalid(
                    format!("{at}.default[{name}]"),
                    &json!(def.to_string()),
                    &format!("default value {def} is greater than max value {hi}"),
                    causes,
                );
            }
            if let Some(req) = find(&request, name)
                && req > *def
            {
                invalid(
                    format!("{at}.defaultRequest[{name}]"),
                    &json!(req.to_string()),
                    &format!(
                        "default request value {req} is greater than default limit value {def}"
                    ),
                    causes,
                );
            }
        }
    }
}

fn access_modes(spec: &Value, causes: &mut Vec<Cause>) {
    if spec["accessModes"].as_array().is_none_or(Vec::is_empty) {
        required(
            "spec.accessModes".into(),
            "at least 1 access mode is required",
            causes,
        );
    }
}

fn claim(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    access_modes(spec, causes);
    let requests = &spec["resources"]["requests"];
    if requests["storage"].is_null() {
        required("spec.resources[storage]".into(), "", causes);
    }
    quantities(requests, "spec.resources.requests", causes);
}

/// The volume sources r3s knows a PersistentVolume can name.
const SOURCES: &[&str] = &[
    "hostPath",
    "local",
    "nfs",
    "csi",
    "iscsi",
    "fc",
    "rbd",
    "cephfs",
    "glusterfs",
];

fn volume(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    access_modes(spec, causes);
    if spec["capacity"]["storage"].is_null() {
        required("spec.capacity".into(), "", causes);
    }
    quantities(&spec["capacity"], "spec.capacity", causes);
    if !SOURCES.iter().any(|s| spec[*s].is_object()) {
        required("spec".into(), "must specify a volume type", causes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::find;

    fn messages(plural: &str, group: &str, obj: Value) -> Vec<String> {
        let res = find(group, "v1", plural).expect("registered");
        let mut causes = Vec::new();
        check(res, &obj, &mut causes);
        causes
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn quota_and_limit_range_quantities() {
        assert_eq!(
            messages(
                "resourcequotas",
                "",
                json!({"spec": {"hard": {"pods": "x", "cpu": "-1"}}})
            ),
            vec![
                "spec.hard[cpu]: Invalid value: \"-1\": must be greater than or equal to 0",
                format!("spec.hard[pods]: Invalid value: \"x\": {QUANTITY_MSG}").as_str(),
            ]
        );
        let lr = json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "1"},
            "default": {"cpu": "2"}, "defaultRequest": {"cpu": "3"}}]}});
        assert_eq!(
            messages("limitranges", "", lr),
            vec![
                "spec.limits[0].default[cpu]: Invalid value: \"2\": default value 2 is greater than max value 1",
                "spec.limits[0].defaultRequest[cpu]: Invalid value: \"3\": default request value 3 is greater than default limit value 2",
            ]
        );
    }

    #[test]
    fn claims_volumes_and_classes() {
        assert_eq!(
            messages("persistentvolumeclaims", "", json!({"spec": {}})),
            vec![
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: Required value",
            ]
        );
        assert_eq!(
            messages(
                "persistentvolumes",
                "",
                json!({"spec": {"accessModes": ["ReadWriteOnce"],
                "capacity": {"storage": "1Gi"}}})
            ),
            vec!["spec: Required value: must specify a volume type"]
        );
        assert_eq!(
            messages("storageclasses", "storage.k8s.io", json!({})),
            vec!["provisioner: Required value"]
        );
    }
}
