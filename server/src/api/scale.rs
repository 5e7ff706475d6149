//! The `scale` subresource: an `autoscaling/v1 Scale` view of a workload's `spec.replicas`,
//! `status.replicas` and label selector. `kubectl scale` needs the response to be a Scale, not the
//! workload. Generic over every registered kind that declares the subresource.

use serde_json::{Value, json};

use super::error::ApiError;

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
