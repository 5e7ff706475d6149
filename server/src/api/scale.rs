//! The `scale` subresource: an `autoscaling/v1 Scale` view of a workload's `spec.replicas`,
//! `status.replicas` and label selector. `kubectl scale` needs the response to be a Scale, not the
//! workload. Generic over every registered kind that declares the subresource; custom resources
//! map it through their CRD's `specReplicasPath`, `statusReplicasPath` and `labelSelectorPath`
//! (registered by [`super::crd::sync`]).

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::error::ApiError;
use super::registry::Resource;

/// Where a custom resource keeps what its Scale shows (dotted paths, e.g. `.spec.replicas`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub spec_replicas: String,
    pub status_replicas: String,
    /// A string field holding the serialized selector.
    pub label_selector: Option<String>,
}

/// Scale paths of custom resources by `<group>/<version>/<plural>` (process-wide, like the
/// schemas).
static CUSTOM: Mutex<Option<HashMap<String, Paths>>> = Mutex::new(None);

fn key(res: &Resource) -> String {
    format!("{}/{}/{}", res.group, res.version, res.plural)
}

/// Registers (or forgets, with `None`) the scale paths of a custom resource.
pub fn register(res: &Resource, paths: Option<Paths>) {
    let mut all = CUSTOM.lock().unwrap_or_else(|e| e.into_inner());
    let map = all.get_or_insert_with(HashMap::new);
    match paths {
        Some(p) => map.insert(key(res), p),
        None => map.remove(&key(res)),
    };
}

fn custom(res: &Resource) -> Option<Paths> {
    if super::registry::find(res.group, res.version, res.plural).is_some() {
        return None;
    }
    CUSTOM
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()?
        .get(&key(res))
        .cloned()
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
}

fn get<'a>(obj: &'a Value, path: &str) -> &'a Value {
    segments(path).fold(obj, |o, s| &o[s])
}

fn set(obj: &mut Value, path: &str, value: Value) {
    let parts: Vec<&str> = segments(path).collect();
    let Some((last, parents)) = parts.split_last() else {
        return;
    };
    let mut at = obj;
    for s in parents {
        // Missing or non-object parents become objects (`IndexMut` needs objects).
        if !at[*s].is_object() {
            at[*s] = json!({});
        }
        at = &mut at[*s];
    }
    at[*last] = value;
}

/// The Scale view of `obj`, a `res`.
pub fn to_scale_of(res: &Resource, obj: &Value) -> Value {
    let Some(paths) = custom(res) else {
        return to_scale(obj);
    };
    let mut scale = to_scale(obj);
    scale["spec"]["replicas"] = json!(get(obj, &paths.spec_replicas).as_i64().unwrap_or(0));
    scale["status"]["replicas"] = json!(get(obj, &paths.status_replicas).as_i64().unwrap_or(0));
    scale["status"]["selector"] = json!(
        paths
            .label_selector
            .as_deref()
            .and_then(|p| get(obj, p).as_str())
            .unwrap_or("")
    );
    scale
}

/// `obj` (a `res`) with its replicas taken from `scale`.
pub fn apply_to(res: &Resource, obj: &Value, scale: &Value) -> Result<Value, ApiError> {
    let updated = apply(obj, scale)?;
    let Some(paths) = custom(res) else {
        return Ok(updated);
    };
    // `apply` checked the value; put it where the CRD says instead of `spec.replicas`.
    let mut out = obj.clone();
    set(
        &mut out,
        &paths.spec_replicas,
        updated["spec"]["replicas"].clone(),
    );
    Ok(out)
}

/// The Scale view of `obj`.
pub fn to_scale(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_string(&obj["spec"]["selector"]),
        },
    })
}

/// `obj` with `spec.replicas` taken from `scale`.
pub fn apply(obj: &Value, scale: &Value) -> Result<Value, ApiError> {
    let replicas = scale["spec"]["replicas"].as_i64().unwrap_or(0);
    if replicas < 0 {
        return Err(ApiError::Invalid {
            group: "autoscaling".into(),
            kind: "Scale".into(),
            name: obj["metadata"]["name"].as_str().unwrap_or("").into(),
            causes: vec![super::error::Cause {
                reason: "FieldValueInvalid",
                field: "spec.replicas".into(),
                message: format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            }],
        });
    }
    let mut out = obj.clone();
    out["spec"]["replicas"] = json!(replicas);
    Ok(out)
}

/// A LabelSelector in its string form (`a=b,c in (d,e)`).
pub fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(labels) = sel["matchLabels"].as_object() {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    for expr in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = expr["key"].as_str().unwrap_or("");
        let values: Vec<&str> = expr["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match expr["operator"].as_str().unwrap_or("") {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_resources_scale_through_their_paths() {
        let res: &'static Resource = Box::leak(Box::new(Resource {
            group: "example.com",
            version: "v1",
            kind: "Pool",
            plural: "pools-scale-test",
            singular: "pool",
            namespaced: true,
            short_names: &[],
            categories: &[],
            subresources: crate::api::registry::SCALE,
            columns: crate::api::table::AGE_ONLY,
            generation: true,
            verbs: crate::api::registry::VERBS,
            review: None,
            after_write: None,
        }));
        register(
            res,
            Some(Paths {
                spec_replicas: ".spec.size".into(),
                status_replicas: ".status.ready".into(),
                label_selector: Some(".status.selector".into()),
            }),
        );
        let obj = json!({"metadata": {"name": "p"}, "spec": {"size": 2},
                         "status": {"ready": 1, "selector": "app=p"}});
        let scale = to_scale_of(res, &obj);
        assert_eq!(scale["spec"]["replicas"], 2);
        assert_eq!(scale["status"], json!({"replicas": 1, "selector": "app=p"}));
        let scaled = apply_to(res, &obj, &json!({"spec": {"replicas": 5}})).expect("valid");
        assert_eq!(scaled["spec"], json!({"size": 5}));
        assert!(apply_to(res, &obj, &json!({"spec": {"replicas": -1}})).is_err());
        register(res, None);
        assert_eq!(
            to_scale_of(res, &obj)["spec"]["replicas"],
            1,
            "back to the built-in view"
        );
    }

    #[test]
    fn scale_view_and_apply() {
        let d = json!({"metadata":{"name":"web","namespace":"d"},"spec":{"replicas":2,
            "selector":{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"t","operator":"In","values":["a","b"]}]}},
            "status":{"replicas":1}});
        let s = to_scale(&d);
        assert_eq!(s["spec"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=web,t in (a,b)");
        let scaled = apply(&d, &json!({"spec":{"replicas":5}})).expect("scale");
        assert_eq!(scaled["spec"]["replicas"], 5);
        assert!(apply(&d, &json!({"spec":{"replicas":-1}})).is_err());
    }
}
