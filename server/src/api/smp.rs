//! Strategic merge patch (what `kubectl apply`, `patch`, `label`, `annotate` and `rollout restart`
//! send) for the built-in kinds.
//!
//! Maps merge recursively and `null` deletes a key. Lists merge by their *merge key* where the
//! built-in types declare one (containers, env, volumes... by `name`; container ports by
//! `containerPort`; Service ports by `port`; volumeMounts by `mountPath`; ownerReferences by `uid`;
//! conditions and node addresses by `type`; podIPs by `ip`), primitive lists with the merge
//! strategy (finalizers, podCIDRs) are sets, and every
//! other list is replaced. Directives: `$patch: replace|delete|merge` (maps and list elements),
//! `$retainKeys`, `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>`. The merge-key table
//! is keyed by field name (and, for `ports`, by whether the list sits in a container), which
//! matches upstream's struct tags for every kind in the registry.

use serde_json::{Map, Value};

use super::error::ApiError;

/// How a list field merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// Elements are maps identified by this key.
    Key(&'static str),
    /// A set of primitives.
    Set,
    /// The patch's list replaces the original.
    Replace,
}

const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

/// `parent` is the list the enclosing map is an element of (or the enclosing map's field name).
/// Server-side apply keys its list elements with the same table.
pub(crate) fn strategy(parent: Option<&str>, field: &str) -> Strategy {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates"
        | "secrets" => Strategy::Key("name"),
        "ports" if parent.is_some_and(|p| CONTAINER_LISTS.contains(&p)) => {
            Strategy::Key("containerPort")
        }
        "ports" if parent == Some("spec") => Strategy::Key("port"),
        "volumeMounts" => Strategy::Key("mountPath"),
        "volumeDevices" => Strategy::Key("devicePath"),
        "ownerReferences" => Strategy::Key("uid"),
        "conditions" => Strategy::Key("type"),
        "addresses" if parent == Some("status") => Strategy::Key("type"),
        "hostAliases" | "podIPs" | "hostIPs" => Strategy::Key("ip"),
        "topologySpreadConstraints" => Strategy::Key("topologyKey"),
        "taints" => Strategy::Key("key"),
        "finalizers" if parent == Some("metadata") => Strategy::Set,
        "podCIDRs" => Strategy::Set,
        _ => Strategy::Replace,
    }
}

/// Applies `patch` to `doc`.
pub fn apply(doc: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut out = doc.clone();
    let (Some(target), Some(patch)) = (out.as_object_mut(), patch.as_object()) else {
        return Err(ApiError::BadRequest(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    merge_map(target, patch, None)?;
    Ok(out)
}

fn directive(map: &Map<String, Value>) -> Option<&str> {
    map.get("$patch").and_then(Value::as_str)
}

/// Merges `patch` into `target`; `context` is the field or list that holds `target`.
fn merge_map(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    context: Option<&str>,
) -> Result<(), ApiError> {
    match directive(patch) {
        Some("replace") => {
            target.clear();
            return merge_map(target, &without_directive(patch), context);
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown patch type: {other:?} in a map"
            )));
        }
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(pm) => {
                if directive(pm) == Some("delete") {
                    target.remove(key);
                    continue;
                }
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(tm) = slot {
                    merge_map(tm, pm, Some(key))?;
                }
            }
            Value::Array(items) => {
                let existing = match target.remove(key) {
                    Some(Value::Array(list)) => list,
                    _ => Vec::new(),
                };
                let merged = merge_list(existing, items, strategy(context, key), key)?;
                target.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                target.insert(key.clone(), scalar.clone());
            }
        }
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let doomed = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = target.get_mut(field) {
                list.retain(|v| !doomed.contains(v));
            }
        } else if let Some(field) = key.strip_prefix("$setElementOrder/") {
            let order = value.as_array().cloned().unwrap_or_default();
            let strategy = strategy(context, field);
            if let Some(Value::Array(list)) = target.get_mut(field) {
                reorder(list, &order, strategy);
            }
        }
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        target.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    Ok(())
}

fn without_directive(patch: &Map<String, Value>) -> Map<String, Value> {
    let mut copy = patch.clone();
    copy.remove("$patch");
    copy
}

fn merge_list(
    mut existing: Vec<Value>,
    items: &[Value],
    strategy: Strategy,
    field: &str,
) -> Result<Vec<Value>, ApiError> {
    let replace_marker = |v: &Value| {
        v.as_object()
            .is_some_and(|m| m.len() == 1 && directive(m) == Some("replace"))
    };
    if items.iter().any(replace_marker) {
        existing.clear();
        let rest: Vec<Value> = items
            .iter()
            .filter(|v| !replace_marker(v))
            .cloned()
            .collect();
        return merge_list(existing, &rest, Strategy::Replace, field);
    }
    match strategy {
        Strategy::Replace => items
            .iter()
            .map(|item| match item {
                Value::Object(m) => {
                    let mut fresh = Map::new();
                    merge_map(&mut fresh, m, Some(field))?;
                    Ok(Value::Object(fresh))
                }
                other => Ok(other.clone()),
            })
            .collect(),
        Strategy::Set => {
            for item in items {
                if !existing.contains(item) {
                    existing.push(item.clone());
                }
            }
            Ok(existing)
        }
        Strategy::Key(key) => {
            for item in items {
                let Value::Object(pm) = item else {
                    return Err(ApiError::BadRequest(format!(
                        "{field}: elements must be objects with merge key {key:?}"
                    )));
                };
                let id = pm.get(key);
                let position =
                    id.and_then(|id| existing.iter().position(|e| e.get(key) == Some(id)));
                match (directive(pm), position) {
                    (Some("delete"), Some(i)) => {
                        existing.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => {
                        if let Some(Value::Object(tm)) = existing.get_mut(i) {
                            merge_map(tm, pm, Some(field))?;
                        }
                    }
                    (_, None) => {
                        let mut fresh = Map::new();
                        merge_map(&mut fresh, &without_directive(pm), Some(field))?;
                        existing.push(Value::Object(fresh));
                    }
                }
            }
            Ok(existing)
        }
    }
}

/// Orders `list` as `order` says; elements it does not mention keep their relative order, after.
fn reorder(list: &mut [Value], order: &[Value], strategy: Strategy) {
    let rank = |v: &Value| {
        order.iter().position(|o| match strategy {
            Strategy::Key(key) => o.get(key).is_some() && o.get(key) == v.get(key),
            _ => o == v,
        })
    };
    list.sort_by_key(|v| rank(v).unwrap_or(usize::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(doc: Value, patch: Value, want: Value) {
        assert_eq!(apply(&doc, &patch).expect("patch applies"), want);
    }

    #[test]
    fn kubectl_apply_deployment_patch() {
        let doc = json!({"metadata":{"name":"d","labels":{"a":"1"}},"spec":{
            "strategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":"25%"}},
            "template":{"spec":{
                "containers":[
                    {"name":"a","image":"x","args":["old"],"env":[{"name":"X","value":"1"},{"name":"Y","value":"2"}]},
                    {"name":"b","image":"y"}],
                "volumes":[{"name":"v1","emptyDir":{}},{"name":"v2","emptyDir":{}}]}}}});
        let patch = json!({"metadata":{"labels":{"a":null,"b":"2"}},"spec":{
            "strategy":{"$retainKeys":["type"],"rollingUpdate":null,"type":"Recreate"},
            "template":{"spec":{
                "$setElementOrder/containers":[{"name":"a"}],
                "containers":[{"$setElementOrder/env":[{"name":"Y"}],"args":["a"],
                               "env":[{"name":"Y","value":"3"},{"$patch":"delete","name":"X"}],"name":"a"},
                              {"$patch":"delete","name":"b"}],
                "volumes":[{"$patch":"delete","name":"v1"}]}}}});
        check(
            doc,
            patch,
            json!({"metadata":{"name":"d","labels":{"b":"2"}},"spec":{
                "strategy":{"type":"Recreate"},
                "template":{"spec":{
                    "containers":[{"name":"a","image":"x","args":["a"],"env":[{"name":"Y","value":"3"}]}],
                    "volumes":[{"name":"v2","emptyDir":{}}]}}}}),
        );
    }

    #[test]
    fn service_ports_merge_by_port_and_container_ports_by_container_port() {
        check(
            json!({"spec":{"ports":[{"port":80,"targetPort":8080},{"port":443}]}}),
            json!({"spec":{"$setElementOrder/ports":[{"port":80}],
                           "ports":[{"port":80,"targetPort":9090},{"$patch":"delete","port":443}]}}),
            json!({"spec":{"ports":[{"port":80,"targetPort":9090}]}}),
        );
        check(
            json!({"spec":{"containers":[{"name":"c","ports":[{"containerPort":80,"name":"http"}]}]}}),
            json!({"spec":{"containers":[{"name":"c","ports":[{"containerPort":81}]}]}}),
            json!({"spec":{"containers":[{"name":"c","ports":[{"containerPort":80,"name":"http"},{"containerPort":81}]}]}}),
        );
    }

    #[test]
    fn lists_without_merge_key_are_replaced_and_finalizers_are_a_set() {
        check(
            json!({"metadata":{"finalizers":["a"]},"spec":{"tolerations":[{"key":"x"}],"args":["1","2"]}}),
            json!({"metadata":{"finalizers":["b","a"]},"spec":{"tolerations":[{"key":"y"}],"args":["3"]}}),
            json!({"metadata":{"finalizers":["a","b"]},"spec":{"tolerations":[{"key":"y"}],"args":["3"]}}),
        );
        check(
            json!({"metadata":{"finalizers":["a","b"]}}),
            json!({"metadata":{"$deleteFromPrimitiveList/finalizers":["a"]}}),
            json!({"metadata":{"finalizers":["b"]}}),
        );
    }

    #[test]
    fn replace_directives() {
        check(
            json!({"spec":{"selector":{"a":"1","b":"2"}}}),
            json!({"spec":{"selector":{"$patch":"replace","c":"3"}}}),
            json!({"spec":{"selector":{"c":"3"}}}),
        );
        check(
            json!({"spec":{"containers":[{"name":"a"},{"name":"b"}]}}),
            json!({"spec":{"containers":[{"$patch":"replace"},{"name":"c"}]}}),
            json!({"spec":{"containers":[{"name":"c"}]}}),
        );
    }

    #[test]
    fn kubelet_style_status_patches() {
        check(
            json!({"status":{"conditions":[{"type":"Ready","status":"False"},{"type":"MemoryPressure","status":"False"}],
                             "addresses":[{"type":"InternalIP","address":"198.51.100.2"}],
                             "podIPs":[{"ip":"10.42.0.5"}]}}),
            json!({"status":{"conditions":[{"type":"Ready","status":"True"}],
                             "addresses":[{"type":"Hostname","address":"n1"}],
                             "podIPs":[{"ip":"10.42.0.6"}]}}),
            json!({"status":{"conditions":[{"type":"Ready","status":"True"},{"type":"MemoryPressure","status":"False"}],
                             "addresses":[{"type":"InternalIP","address":"198.51.100.2"},{"type":"Hostname","address":"n1"}],
                             "podIPs":[{"ip":"10.42.0.5"},{"ip":"10.42.0.6"}]}}),
        );
    }
}
