//! Server-side field validation (`?fieldValidation=Strict|Warn|Ignore`; kubectl 1.32 sends
//! `Strict` on apply, create and replace): fields a built-in kind does not have are refused (400,
//! upstream's `strict decoding error: unknown field "spec.foo"`) or, with `Warn` (the default
//! without the parameter, as upstream) and `Ignore`, dropped, with `Warning` headers for `Warn`:
//! like upstream's typed decoding, unknown fields of built-in kinds are never stored.
//!
//! The schema is the k8s-openapi type of the kind: the object is decoded into it and encoded back,
//! and every non-null field of the request that did not survive is unknown. An object that does not
//! decode at all is left to validation (this check never refuses what it cannot read).
//! Custom resources are checked against their CRD's schema instead ([`super::crd_schema::pruned`]).
//! Not covered: duplicate fields (the JSON parser keeps the last).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;
use super::registry::Resource;

/// The `fieldValidation` directive of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Strict,
    Warn,
    Ignore,
}

impl Mode {
    pub fn parse(param: Option<&str>) -> Result<Mode, ApiError> {
        match param {
            None | Some("") | Some("Warn") => Ok(Mode::Warn),
            Some("Strict") => Ok(Mode::Strict),
            Some("Ignore") => Ok(Mode::Ignore),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation parameter unsupported: {other:?}, must be one of Ignore, Warn, Strict"
            ))),
        }
    }
}

/// Checks `obj` (a whole object of `res`'s kind) under `mode`, dropping its unknown fields unless
/// refused; returns the warnings to send.
pub fn check(res: &Resource, obj: &mut Value, mode: Mode) -> Result<Vec<String>, ApiError> {
    let Some(known) = round_trip(res, obj) else {
        return Ok(Vec::new());
    };
    let mut paths = Vec::new();
    compare(obj, &known, "", &mut paths);
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let unknown: Vec<String> = paths
        .into_iter()
        .map(|path| format!("unknown field {path:?}"))
        .collect();
    if mode != Mode::Strict {
        drop_unknown(obj, &known);
        return Ok(if mode == Mode::Warn {
            unknown
        } else {
            Vec::new()
        });
    }
    Err(ApiError::BadRequest(format!(
        "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
        unknown.join(", "),
        kind = res.kind,
        version = res.version,
    )))
}

/// The paths (`spec.template.spec.containers[0].foo`) of the fields of `obj` its kind lacks.
pub fn unknown_fields(res: &Resource, obj: &Value) -> Vec<String> {
    let Some(known) = round_trip(res, obj) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    compare(obj, &known, "", &mut out);
    out
}

fn compare(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(sent), Value::Object(kept)) => {
            for (field, value) in sent {
                let here = if path.is_empty() {
                    field.clone()
                } else {
                    format!("{path}.{field}")
                };
                match kept.get(field) {
                    Some(k) => compare(value, k, &here, out),
                    None if value.is_null() => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(sent), Value::Array(kept)) => {
            for (i, (s, k)) in sent.iter().zip(kept).enumerate() {
                compare(s, k, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Removes from `sent` every non-null field missing from `kept`.
fn drop_unknown(sent: &mut Value, kept: &Value) {
    match (sent, kept) {
        (Value::Object(sent), Value::Object(kept)) => {
            sent.retain(|field, value| value.is_null() || kept.contains_key(field));
            for (field, value) in sent.iter_mut() {
                if let Some(k) = kept.get(field) {
                    drop_unknown(value, k);
                }
            }
        }
        (Value::Array(sent), Value::Array(kept)) => {
            for (s, k) in sent.iter_mut().zip(kept) {
                drop_unknown(s, k);
            }
        }
        _ => {}
    }
}

fn rt<T: DeserializeOwned + Serialize>(obj: &Value) -> Option<Value> {
    let typed: T = serde_json::from_value(obj.clone()).ok()?;
    serde_json::to_value(typed).ok()
}

/// `obj` decoded into its kind's type and encoded back; `None` for kinds without a type here.
fn round_trip(res: &Resource, obj: &Value) -> Option<Value> {
    use k8s_openapi::api::{
        apps, batch, coordination, core, discovery, networking, policy, rbac, scheduling, storage,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
    // A custom resource's schema says what it keeps (what upstream prunes).
    if let Some(schema) = super::crd_schema::schema_for(res) {
        return Some(super::crd_schema::pruned(&schema, obj));
    }
    // Custom resources may reuse a built-in kind name in their own group: only built-ins here.
    super::registry::find(res.group, res.version, res.plural)?;
    match (res.group, res.kind) {
        ("", "Namespace") => rt::<core::v1::Namespace>(obj),
        ("", "ConfigMap") => rt::<core::v1::ConfigMap>(obj),
        ("", "Secret") => rt::<core::v1::Secret>(obj),
        ("", "Pod") => rt::<core::v1::Pod>(obj),
        ("", "Service") => rt::<core::v1::Service>(obj),
        ("", "ServiceAccount") => rt::<core::v1::ServiceAccount>(obj),
        ("", "Node") => rt::<core::v1::Node>(obj),
        ("", "Event") => rt::<core::v1::Event>(obj),
        ("", "Endpoints") => rt::<core::v1::Endpoints>(obj),
        ("", "PersistentVolume") => rt::<core::v1::PersistentVolume>(obj),
        ("", "PersistentVolumeClaim") => rt::<core::v1::PersistentVolumeClaim>(obj),
        ("", "ResourceQuota") => rt::<core::v1::ResourceQuota>(obj),
        ("", "LimitRange") => rt::<core::v1::LimitRange>(obj),
        ("apps", "Deployment") => rt::<apps::v1::Deployment>(obj),
        ("apps", "ReplicaSet") => rt::<apps::v1::ReplicaSet>(obj),
        ("apps", "DaemonSet") => rt::<apps::v1::DaemonSet>(obj),
        ("apps", "StatefulSet") => rt::<apps::v1::StatefulSet>(obj),
        ("apps", "ControllerRevision") => rt::<apps::v1::ControllerRevision>(obj),
        ("batch", "Job") => rt::<batch::v1::Job>(obj),
        ("batch", "CronJob") => rt::<batch::v1::CronJob>(obj),
        ("discovery.k8s.io", "EndpointSlice") => rt::<discovery::v1::EndpointSlice>(obj),
        ("policy", "PodDisruptionBudget") => rt::<policy::v1::PodDisruptionBudget>(obj),
        ("networking.k8s.io", "Ingress") => rt::<networking::v1::Ingress>(obj),
        ("networking.k8s.io", "IngressClass") => rt::<networking::v1::IngressClass>(obj),
        ("networking.k8s.io", "NetworkPolicy") => rt::<networking::v1::NetworkPolicy>(obj),
        ("scheduling.k8s.io", "PriorityClass") => rt::<scheduling::v1::PriorityClass>(obj),
        ("coordination.k8s.io", "Lease") => rt::<coordination::v1::Lease>(obj),
        ("rbac.authorization.k8s.io", "ClusterRole") => rt::<rbac::v1::ClusterRole>(obj),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            rt::<rbac::v1::ClusterRoleBinding>(obj)
        }
        ("rbac.authorization.k8s.io", "Role") => rt::<rbac::v1::Role>(obj),
        ("rbac.authorization.k8s.io", "RoleBinding") => rt::<rbac::v1::RoleBinding>(obj),
        ("storage.k8s.io", "StorageClass") => rt::<storage::v1::StorageClass>(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            rt::<apiextensions::v1::CustomResourceDefinition>(obj)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::find;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_with_their_paths() {
        let deploy = find("apps", "v1", "deployments").expect("deployments");
        let obj = json!({"apiVersion":"apps/v1","kind":"Deployment",
            "metadata":{"name":"web","bogus":1,"labels":{"a":"b"}},
            "spec":{"replicas":1,"foo":true,"paused":null,
                "selector":{"matchLabels":{"a":"b"}},
                "template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[
                    {"name":"c","image":"i","imagePullPolicy":"Always","resources":{"limits":{"cpu":"1"}}},
                    {"name":"d","image":"i","colour":"red"}]}}}});
        assert_eq!(
            unknown_fields(deploy, &obj),
            [
                "metadata.bogus",
                "spec.foo",
                "spec.template.spec.containers[1].colour"
            ]
        );
        let err = check(deploy, &mut obj.clone(), Mode::Strict).expect_err("strict");
        assert_eq!(err.reason(), "BadRequest");
        assert!(
            err.to_string().starts_with(
                "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"metadata.bogus\", unknown field \"spec.foo\""
            ),
            "{err}"
        );
        let mut warned = obj.clone();
        assert_eq!(
            check(deploy, &mut warned, Mode::Warn).expect("warn").len(),
            3
        );
        assert!(
            unknown_fields(deploy, &warned).is_empty(),
            "dropped: {warned}"
        );
        assert_eq!(warned["spec"]["replicas"], 1);
        let mut ignored = obj.clone();
        assert!(
            check(deploy, &mut ignored, Mode::Ignore)
                .expect("ignore")
                .is_empty()
        );
        assert_eq!(ignored, warned);
    }

    #[test]
    fn known_objects_pass_and_undecodable_ones_are_left_alone() {
        let cm = find("", "v1", "configmaps").expect("configmaps");
        let obj = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c",
            "managedFields":[{"manager":"m","operation":"Apply","fieldsType":"FieldsV1","fieldsV1":{"f:data":{}}}]},
            "data":{"a":"1"},"immutable":false});
        assert!(unknown_fields(cm, &obj).is_empty());
        let wrong_type =
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":7,"x":1});
        assert!(unknown_fields(cm, &wrong_type).is_empty());
        assert!(Mode::parse(Some("Loud")).is_err());
        assert_eq!(Mode::parse(None).expect("default"), Mode::Warn);
    }
}
