//! The `openAPIV3Schema` of custom resources, applied as upstream's apiextensions-apiserver does on
//! every write: unknown fields pruned (or refused under `fieldValidation=Strict`, through
//! [`super::strict`]), `default`s filled in, then the value checks (type, `enum`, `required`,
//! `minimum`/`maximum`, `minLength`/`maxLength`, `pattern`, `minItems`/`maxItems`, `nullable`,
//! `x-kubernetes-int-or-string`) each failing as a 422 cause with upstream's field path and wording.
//!
//! Structural schemas only, as upstream requires for v1 CRDs: `properties`, `additionalProperties`
//! (maps), `items`, `x-kubernetes-preserve-unknown-fields` and `x-kubernetes-embedded-resource`.
//! `apiVersion`, `kind` and `metadata` at the root are the server's, never pruned here.
//! Not checked: `format`, `uniqueItems`, `oneOf`/`anyOf`/`allOf`/`not`, CEL `x-kubernetes-validations`
//! (a CRD using them is served, with those rules not enforced).
//!
//! The schemas are registered by [`super::crd::sync`] per served version (and forgotten with it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::error::Cause;
use super::registry::Resource;

/// Served schemas by `<group>/<version>/<plural>`.
static SCHEMAS: Mutex<Option<HashMap<String, Arc<Value>>>> = Mutex::new(None);

fn key(group: &str, version: &str, plural: &str) -> String {
    format!("{group}/{version}/{plural}")
}

/// Registers (or replaces) the schemas of served versions: `(group, version, plural, schema)`.
/// Process-wide, so several API servers in one process (tests) each add their own.
pub fn register(all: Vec<(String, String, String, Value)>) {
    let mut schemas = SCHEMAS.lock().unwrap_or_else(|e| e.into_inner());
    let map = schemas.get_or_insert_with(HashMap::new);
    for (g, v, p, s) in all {
        map.insert(key(&g, &v, &p), Arc::new(s));
    }
}

/// Forgets the schema of a resource no longer served.
pub fn unregister(res: &Resource) {
    let mut schemas = SCHEMAS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(map) = schemas.as_mut() {
        map.remove(&key(res.group, res.version, res.plural));
    }
}

/// The schema of a custom resource (none for built-ins and for CRDs without one).
pub fn schema_for(res: &Resource) -> Option<Arc<Value>> {
    if super::registry::find(res.group, res.version, res.plural).is_some() {
        return None;
    }
    let schemas = SCHEMAS.lock().unwrap_or_else(|e| e.into_inner());
    schemas
        .as_ref()?
        .get(&key(res.group, res.version, res.plural))
        .cloned()
}

fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true)
}

/// `obj` with every field its schema does not know removed (what upstream stores).
pub fn pruned(schema: &Value, obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Value::Object(map) = &mut out {
        for (field, value) in map.iter_mut() {
            if matches!(field.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(sub) = schema["properties"].get(field) {
                prune(sub, value);
            }
        }
        if !preserves(schema) {
            let props = &schema["properties"];
            map.retain(|field, _| {
                matches!(field.as_str(), "apiVersion" | "kind" | "metadata")
                    || props.get(field).is_some()
            });
        }
    }
    out
}

fn prune(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            let embedded = schema["x-kubernetes-embedded-resource"] == Value::Bool(true);
            if let Some(props) = schema["properties"].as_object() {
                if !preserves(schema) {
                    map.retain(|field, _| {
                        props.contains_key(field)
                            || (embedded
                                && matches!(field.as_str(), "apiVersion" | "kind" | "metadata"))
                    });
                }
                for (field, v) in map.iter_mut() {
                    if let Some(sub) = props.get(field) {
                        prune(sub, v);
                    }
                }
            } else if let Some(sub) = schema["additionalProperties"].as_object() {
                let sub = Value::Object(sub.clone());
                for v in map.values_mut() {
                    prune(&sub, v);
                }
            } else if !preserves(schema) && schema["additionalProperties"] != Value::Bool(true) {
                // An object schema with no properties and no map values keeps nothing.
                if schema["type"] == "object" {
                    map.retain(|field, _| {
                        embedded && matches!(field.as_str(), "apiVersion" | "kind" | "metadata")
                    });
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for v in items {
                prune(&schema["items"], v);
            }
        }
        _ => {}
    }
}

/// Fills in the schema's `default`s for fields missing from objects that are present (and drops
/// nulls of non-nullable fields first, as upstream).
pub fn apply_defaults(schema: &Value, obj: &mut Value) {
    let Value::Object(map) = obj else {
        return;
    };
    if let Some(props) = schema["properties"].as_object() {
        for (field, sub) in props {
            if matches!(map.get(field), Some(Value::Null)) && sub["nullable"] != Value::Bool(true) {
                map.remove(field);
            }
            if !map.contains_key(field)
                && let Some(default) = sub.get("default")
            {
                map.insert(field.clone(), default.clone());
            }
            if let Some(v) = map.get_mut(field) {
                default_inside(sub, v);
            }
        }
    } else if let Some(sub) = schema["additionalProperties"].as_object() {
        let sub = Value::Object(sub.clone());
        for v in map.values_mut() {
            default_inside(&sub, v);
        }
    }
}

fn default_inside(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(_) => apply_defaults(schema, value),
        Value::Array(items) => {
            for v in items {
                default_inside(&schema["items"], v);
            }
        }
        _ => {}
    }
}

/// Every way `obj` breaks its schema (the root's `apiVersion`, `kind` and `metadata` excepted).
pub fn validate(schema: &Value, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let Value::Object(map) = obj else {
        return out;
    };
    let mut root = Map::new();
    for (field, v) in map {
        if !matches!(field.as_str(), "apiVersion" | "kind" | "metadata") {
            root.insert(field.clone(), v.clone());
        }
    }
    check_object(schema, &root, "", &mut out);
    out
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn check_object(schema: &Value, map: &Map<String, Value>, path: &str, out: &mut Vec<Cause>) {
    for name in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = name.as_str()
            && !map.contains_key(name)
        {
            out.push(Cause {
                reason: "FieldValueRequired",
                field: join(path, name),
                message: "Required value".into(),
            });
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (field, v) in map {
            if let Some(sub) = props.get(field) {
                check(sub, v, &join(path, field), out);
            }
        }
    } else if let Some(sub) = schema["additionalProperties"].as_object() {
        let sub = Value::Object(sub.clone());
        for (field, v) in map {
            check(&sub, v, &join(path, field), out);
        }
    }
}

fn invalid(path: &str, value: &Value, detail: String, out: &mut Vec<Cause>) {
    out.push(Cause {
        reason: "FieldValueInvalid",
        field: path.to_string(),
        message: format!("Invalid value: {value}: {detail}"),
    });
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, v: &Value, path: &str, out: &mut Vec<Cause>) {
    if v.is_null() {
        if schema["nullable"] != Value::Bool(true) && schema.get("type").is_some() {
            let detail = format!(
                "{path} in body must be of type {}: \"null\"",
                schema["type"].as_str().unwrap_or("object")
            );
            invalid(path, v, detail, out);
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == Value::Bool(true);
    let actual = type_of(v);
    let ok = if int_or_string {
        matches!(actual, "integer" | "string")
    } else {
        match schema["type"].as_str() {
            None => true,
            Some("number") => matches!(actual, "integer" | "number"),
            Some(expected) => expected == actual,
        }
    };
    if !ok {
        let expected = if int_or_string {
            "integer,string"
        } else {
            schema["type"].as_str().unwrap_or("")
        };
        // Upstream reports the type it got as the invalid value.
        invalid(
            path,
            &Value::String(actual.into()),
            format!("{path} in body must be of type {expected}: \"{actual}\""),
            out,
        );
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        out.push(Cause {
            reason: "FieldValueNotSupported",
            field: path.to_string(),
            message: format!(
                "Unsupported value: {v}: supported values: {}",
                list.join(", ")
            ),
        });
    }
    match v {
        Value::Number(n) => check_number(schema, n.as_f64().unwrap_or(0.0), v, path, out),
        Value::String(s) => check_string(schema, s, v, path, out),
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(min) = schema["minItems"].as_u64()
                && len < min
            {
                invalid(
                    path,
                    v,
                    format!("{path} in body should have at least {min} items"),
                    out,
                );
            }
            if let Some(max) = schema["maxItems"].as_u64()
                && len > max
            {
                out.push(Cause {
                    reason: "FieldValueTooMany",
                    field: path.to_string(),
                    message: format!("Too many: {len}: must have at most {max} items"),
                });
            }
            if schema["items"].is_object() {
                for (i, item) in items.iter().enumerate() {
                    check(&schema["items"], item, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(map) => check_object(schema, map, path, out),
        _ => {}
    }
}

fn check_number(schema: &Value, n: f64, v: &Value, path: &str, out: &mut Vec<Cause>) {
    if let Some(min) = schema["minimum"].as_f64() {
        let exclusive = schema["exclusiveMinimum"] == Value::Bool(true);
        if n < min || (exclusive && n == min) {
            let rel = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            let min = &schema["minimum"];
            invalid(
                path,
                v,
                format!("{path} in body should be {rel} {min}"),
                out,
            );
        }
    }
    if let Some(max) = schema["maximum"].as_f64() {
        let exclusive = schema["exclusiveMaximum"] == Value::Bool(true);
        if n > max || (exclusive && n == max) {
            let rel = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            let max = &schema["maximum"];
            invalid(
                path,
                v,
                format!("{path} in body should be {rel} {max}"),
                out,
            );
        }
    }
}

fn check_string(schema: &Value, s: &str, v: &Value, path: &str, out: &mut Vec<Cause>) {
    let len = s.chars().count() as u64;
    if let Some(max) = schema["maxLength"].as_u64()
        && len > max
    {
        out.push(Cause {
            reason: "FieldValueTooLong",
            field: path.to_string(),
            message: format!("Too long: may not be more than {max} bytes"),
        });
    }
    if let Some(min) = schema["minLength"].as_u64()
        && len < min
    {
        invalid(
            path,
            v,
            format!("{path} in body should be at least {min} chars long"),
            out,
        );
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        match regex::Regex::new(pattern) {
            Ok(re) if !re.is_match(s) => {
                invalid(
                    path,
                    v,
                    format!("{path} in body should match '{pattern}'"),
                    out,
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%pattern, %error, "CRD pattern not checked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "mode": {"type": "string", "enum": ["fast", "safe"], "default": "safe"},
                "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"},
                "port": {"x-kubernetes-int-or-string": true},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "ratio": {"type": "number", "nullable": true}
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
        }})
    }

    /// The causes as `field: message`, sorted (object fields are visited in map order).
    fn messages(obj: Value) -> Vec<String> {
        let mut out: Vec<String> = validate(&schema(), &obj)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        out.sort();
        out
    }

    fn sorted<const N: usize>(list: [&str; N]) -> Vec<String> {
        let mut out: Vec<String> = list.iter().map(|s| (*s).to_string()).collect();
        out.sort();
        out
    }

    #[test]
    fn values_are_checked_with_upstream_wording() {
        assert!(messages(json!({"spec": {"size": 3, "port": "http", "ratio": null}})).is_empty());
        assert_eq!(
            messages(json!({"spec": {"size": "3"}})),
            [
                r#"spec.size: Invalid value: "string": spec.size in body must be of type integer: "string""#
            ]
        );
        assert_eq!(
            messages(json!({"spec": {"mode": "slow"}})),
            sorted([
                "spec.size: Required value",
                r#"spec.mode: Unsupported value: "slow": supported values: "fast", "safe""#
            ])
        );
        assert_eq!(
            messages(json!({"spec": {"size": 11, "name": "Abcdef", "tags": ["a", "b", 3]}})),
            sorted([
                "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10",
                "spec.name: Too long: may not be more than 5 bytes",
                r#"spec.name: Invalid value: "Abcdef": spec.name in body should match '^[a-z]+$'"#,
                "spec.tags: Too many: 3: must have at most 2 items",
                r#"spec.tags[2]: Invalid value: "integer": spec.tags[2] in body must be of type string: "integer""#,
            ])
        );
        assert_eq!(
            messages(json!({"spec": {"size": 0, "labels": {"a": 1}, "port": true}})),
            sorted([
                "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1",
                r#"spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean""#,
                r#"spec.labels.a: Invalid value: "integer": spec.labels.a in body must be of type string: "integer""#,
            ])
        );
    }

    #[test]
    fn unknown_fields_are_pruned_except_where_preserved() {
        let obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"size": 1, "bogus": 1, "extra": {"anything": {"goes": 1}},
                     "labels": {"k": "v"}},
            "top": 1});
        assert_eq!(
            pruned(&schema(), &obj),
            json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
                "spec": {"size": 1, "extra": {"anything": {"goes": 1}}, "labels": {"k": "v"}}})
        );
    }

    #[test]
    fn defaults_fill_missing_fields_of_present_objects() {
        let mut obj = json!({"spec": {"size": 1, "ratio": null}});
        apply_defaults(&schema(), &mut obj);
        assert_eq!(
            obj,
            json!({"spec": {"size": 1, "mode": "safe", "ratio": null}})
        );
        // No spec, no spec defaults.
        let mut empty = json!({});
        apply_defaults(&schema(), &mut empty);
        assert_eq!(empty, json!({}));
    }
}
