//! LimitRange admission (upstream's LimitRanger): on pod create, each container gets the
//! `default` limits and `defaultRequest` requests of the namespace's `Container` limit ranges it
//! does not set itself, then every `Container` and `Pod` item's `min`, `max` and
//! `maxLimitRequestRatio` is enforced, and a PersistentVolumeClaim's storage request is held to
//! `PersistentVolumeClaim` items. Violations are 403 with upstream's wording (`maximum cpu usage
//! per Container is 1, but limit is 2`; several are listed in brackets).
//!
//! A LimitRange item is defaulted when stored, as upstream: a `Container` item's missing
//! `default` comes from `max`, its missing `defaultRequest` from `default`, then from `min`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::error::ApiError;
use super::object;
use super::quantity::Quantity;
use super::registry::{self, Resource};
use crate::store::{ListOptions, Store};

/// Fills `default` and `defaultRequest` of each `Container` item (LimitRange defaulting).
pub fn default_items(obj: &mut Value) {
    let Some(items) = obj["spec"]["limits"].as_array_mut() else {
        return;
    };
    for item in items.iter_mut().filter(|i| i["type"] == json!("Container")) {
        let Some(map) = item.as_object_mut() else {
            continue;
        };
        let read = |map: &serde_json::Map<String, Value>, key: &str| {
            map.get(key)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let mut default = read(map, "default");
        for (k, v) in read(map, "max") {
            default.entry(k).or_insert(v);
        }
        let mut request = read(map, "defaultRequest");
        for (k, v) in default.iter().chain(read(map, "min").iter()) {
            request.entry(k.clone()).or_insert(v.clone());
        }
        if !default.is_empty() {
            map.insert("default".into(), Value::Object(default));
        }
        if !request.is_empty() {
            map.insert("defaultRequest".into(), Value::Object(request));
        }
    }
}

fn items_of<'a>(ranges: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    ranges
        .iter()
        .flat_map(|r| r["spec"]["limits"].as_array().into_iter().flatten())
        .filter(move |i| i["type"].as_str() == Some(kind))
}

fn quantities(map: &Value) -> BTreeMap<String, Quantity> {
    map.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), Quantity::parse(v.as_str()?)?)))
        .collect()
}

/// Applies the `Container` defaults of `ranges` to every container of `pod`.
fn apply_defaults(ranges: &[Value], pod: &mut Value) {
    let items: Vec<&Value> = items_of(ranges, "Container").collect();
    for list in ["initContainers", "containers"] {
        let Some(containers) = pod["spec"][list].as_array_mut() else {
            continue;
        };
        for container in containers.iter_mut().filter(|c| c.is_object()) {
            for item in &items {
                for (field, from) in [("limits", "default"), ("requests", "defaultRequest")] {
                    let Some(defaults) = item[from].as_object() else {
                        continue;
                    };
                    if !container["resources"].is_object() {
                        container["resources"] = json!({});
                    }
                    if !container["resources"][field].is_object() {
                        container["resources"][field] = json!({});
                    }
                    if let Some(set) = container["resources"][field].as_object_mut() {
                        for (name, value) in defaults {
                            set.entry(name.clone()).or_insert(value.clone());
                        }
                    }
                }
            }
        }
    }
}

/// Upstream's min/max/ratio checks of one item against observed requests and limits.
fn check(
    kind: &str,
    item: &Value,
    requests: &BTreeMap<String, Quantity>,
    limits: &BTreeMap<String, Quantity>,
    errors: &mut Vec<String>,
) {
    for (name, min) in quantities(&item["min"]) {
        match (requests.get(&name), limits.get(&name)) {
            (None, _) => errors.push(format!(
                "minimum {name} usage per {kind} is {min}.  No request is specified"
            )),
            (Some(req), _) if *req < min => errors.push(format!(
                "minimum {name} usage per {kind} is {min}, but request is {req}"
            )),
            (_, Some(lim)) if *lim < min => errors.push(format!(
                "minimum {name} usage per {kind} is {min}, but limit is {lim}"
            )),
            _ => {}
        }
    }
    for (name, max) in quantities(&item["max"]) {
        match (requests.get(&name), limits.get(&name)) {
            (_, None) => errors.push(format!(
                "maximum {name} usage per {kind} is {max}.  No limit is specified"
            )),
            (_, Some(lim)) if *lim > max => errors.push(format!(
                "maximum {name} usage per {kind} is {max}, but limit is {lim}"
            )),
            (Some(req), _) if *req > max => errors.push(format!(
                "maximum {name} usage per {kind} is {max}, but request is {req}"
            )),
            _ => {}
        }
    }
    for (name, ratio) in quantities(&item["maxLimitRequestRatio"]) {
        match (requests.get(&name), limits.get(&name)) {
            (_, None) => errors.push(format!(
                "{name} max limit to request ratio per {kind} is {ratio}, but no limit is specified"
            )),
            (None, _) => errors.push(format!(
                "{name} max limit to request ratio per {kind} is {ratio}, but no request is specified or request is 0"
            )),
            (Some(req), _) if req.milli == 0 => errors.push(format!(
                "{name} max limit to request ratio per {kind} is {ratio}, but no request is specified or request is 0"
            )),
            (Some(req), Some(lim)) => {
                // limit/request > ratio, compared exactly as lim*1000 > ratio*req (thousandths).
                if lim.milli * 1000 > ratio.milli * req.milli {
                    #[allow(clippy::cast_precision_loss)]
                    let observed = lim.milli as f64 / req.milli as f64;
                    errors.push(format!(
                        "{name} max limit to request ratio per {kind} is {ratio}, but provided ratio is {observed:.6}"
                    ));
                }
            }
        }
    }
}

/// The requests and limits of one container.
fn container_resources(c: &Value) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    (
        quantities(&c["resources"]["requests"]),
        quantities(&c["resources"]["limits"]),
    )
}

fn sum_into(total: &mut BTreeMap<String, Quantity>, add: &BTreeMap<String, Quantity>) {
    for (k, v) in add {
        let entry = total.entry(k.clone()).or_insert(Quantity::ZERO);
        *entry = entry.plus(*v);
    }
}

/// Defaults and checks a pod or claim about to be created in `namespace` against its
/// LimitRanges; 403 with upstream's message on a violation.
pub fn admit(
    store: &dyn Store,
    res: &Resource,
    namespace: Option<&str>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let (Some(namespace), true) = (namespace, res.group.is_empty()) else {
        return Ok(());
    };
    if !matches!(res.plural, "pods" | "persistentvolumeclaims") {
        return Ok(());
    }
    let ranges_res = registry::find("", "v1", "limitranges")
        .ok_or_else(|| ApiError::Internal("limitranges are not registered".into()))?;
    let page = store
        .list(
            &ranges_res.list_prefix(Some(namespace)),
            &ListOptions::default(),
        )
        .map_err(|e| ApiError::from_store(e, &ranges_res.name(), ""))?;
    let mut ranges: Vec<Value> = page
        .items
        .iter()
        .map(object::from_store)
        .collect::<Result<_, _>>()?;
    if ranges.is_empty() {
        return Ok(());
    }
    ranges.iter_mut().for_each(default_items);
    let mut errors = Vec::new();
    if res.plural == "pods" {
        apply_defaults(&ranges, obj);
        let (mut pod_requests, mut pod_limits) = (BTreeMap::new(), BTreeMap::new());
        for list in ["initContainers", "containers"] {
            for c in obj["spec"][list].as_array().into_iter().flatten() {
                let (requests, limits) = container_resources(c);
                for item in items_of(&ranges, "Container") {
                    check("Container", item, &requests, &limits, &mut errors);
                }
                if list == "containers" {
                    sum_into(&mut pod_requests, &requests);
                    sum_into(&mut pod_limits, &limits);
                }
            }
        }
        for item in items_of(&ranges, "Pod") {
            check("Pod", item, &pod_requests, &pod_limits, &mut errors);
        }
    } else {
        let requests = quantities(&obj["spec"]["resources"]["requests"]);
        let limits = quantities(&obj["spec"]["resources"]["limits"]);
        for item in items_of(&ranges, "PersistentVolumeClaim") {
            check(
                "PersistentVolumeClaim",
                item,
                &requests,
                &limits,
                &mut errors,
            );
        }
    }
    let message = match errors.len() {
        0 => return Ok(()),
        1 => errors.remove(0),
        _ => format!("[{}]", errors.join(", ")),
    };
    Err(ApiError::Forbidden(format!(
        "{} \"{}\" is forbidden: {message}",
        res.name(),
        object::name(obj)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_default_from_max_and_min() {
        let mut lr = json!({"spec": {"limits": [{"type": "Container",
            "max": {"cpu": "1"}, "min": {"memory": "32Mi"}}]}});
        default_items(&mut lr);
        let item = &lr["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"cpu": "1"}));
        assert_eq!(
            item["defaultRequest"],
            json!({"cpu": "1", "memory": "32Mi"})
        );
    }

    #[test]
    fn checks_use_upstream_wording() {
        let item = json!({"max": {"cpu": "1"}, "min": {"memory": "64Mi"},
                          "maxLimitRequestRatio": {"cpu": "2"}});
        let mut errors = Vec::new();
        let req = quantities(&json!({"cpu": "500m", "memory": "32Mi"}));
        let lim = quantities(&json!({"cpu": "2"}));
        check("Container", &item, &req, &lim, &mut errors);
        assert_eq!(
            errors,
            vec![
                "minimum memory usage per Container is 64Mi, but request is 32Mi",
                "maximum cpu usage per Container is 1, but limit is 2",
                "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000",
            ]
        );
    }
}
