//! Pod priority (`scheduling.k8s.io/v1` PriorityClass): the two built-in classes, the rules a
//! PriorityClass write must follow, and upstream's Priority admission for pods.
//!
//! Admission turns a pod's `priorityClassName` into `spec.priority` (and `preemptionPolicy`) at
//! create time, so the scheduler only ever reads the integer. A pod without a class gets the
//! class marked `globalDefault` (if any), else priority 0. Invariants: at most one class is the
//! global default; a class's value and preemption policy never change after creation; user classes
//! stay at or below [`USER_MAX`] and may not take the `system-` prefix, which is reserved for
//! [`BUILT_IN`].

use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::registry::{self, Resource};
use super::{object, validate};
use crate::store::{ListOptions, Store, StoreError};

/// The highest priority a user-defined class may have.
pub const USER_MAX: i64 = 1_000_000_000;
/// The preemption policy of pods whose class does not say.
pub const DEFAULT_PREEMPTION: &str = "PreemptLowerPriority";

/// The classes every cluster has: (name, value, description).
pub const BUILT_IN: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

fn classes() -> Result<&'static Resource, ApiError> {
    registry::find("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(|| ApiError::Internal("priorityclasses are not registered".into()))
}

/// Creates the built-in classes that do not exist yet. Idempotent.
pub async fn ensure_built_in(store: &dyn Store) -> Result<(), ApiError> {
    let res = classes()?;
    for (name, value, description) in BUILT_IN {
        let key = res.key(None, name);
        if store
            .get(&key)
            .map_err(|e| ApiError::from_store(e, &res.name(), name))?
            .is_some()
        {
            continue;
        }
        let mut class = json!({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "globalDefault": false,
            "description": description, "preemptionPolicy": DEFAULT_PREEMPTION,
        });
        object::prepare_create(res, &mut class)?;
        validate::default_on_create(res, &mut class);
        match store.create(&key, object::to_store(&class)?).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(ApiError::from_store(e, &res.name(), name)),
        }
    }
    Ok(())
}

fn list_classes(store: &dyn Store) -> Result<Vec<Value>, ApiError> {
    let res = classes()?;
    let list = store
        .list(&res.key_prefix(), &ListOptions::default())
        .map_err(|e| ApiError::from_store(e, &res.name(), ""))?;
    list.items.iter().map(object::from_store).collect()
}

fn invalid(name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid {
        group: "scheduling.k8s.io".into(),
        kind: "PriorityClass".into(),
        name: name.into(),
        causes,
    }
}

fn forbidden_cause(field: &str, message: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden",
        field: field.into(),
        message: format!("Forbidden: {message}"),
    }
}

/// Admission of a create (`old` is `None`) or update of a pod or PriorityClass; other kinds pass.
pub fn admit(
    store: &dyn Store,
    res: &Resource,
    old: Option<&Value>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    match (res.group, res.kind, old) {
        ("", "Pod", None) => admit_pod(store, obj),
        ("scheduling.k8s.io", "PriorityClass", old) => admit_class(store, old, obj),
        _ => Ok(()),
    }
}

fn admit_class(store: &dyn Store, old: Option<&Value>, obj: &mut Value) -> Result<(), ApiError> {
    let name = object::name(obj).to_string();
    if obj["preemptionPolicy"].is_null() {
        obj["preemptionPolicy"] = json!(DEFAULT_PREEMPTION);
    }
    if let Some(old) = old {
        let mut causes = Vec::new();
        for field in ["value", "preemptionPolicy"] {
            if old[field] != obj[field] {
                causes.push(forbidden_cause(field, "may not be changed in an update."));
            }
        }
        if !causes.is_empty() {
            return Err(invalid(&name, causes));
        }
    } else {
        let built_in = BUILT_IN
            .iter()
            .any(|(n, v, _)| *n == name && obj["value"].as_i64() == Some(*v));
        let mut causes = Vec::new();
        if name.starts_with("system-") && !built_in {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                field: "metadata.name".into(),
                message: format!(
                    "Invalid value: \"{name}\": priority class names with 'system-' prefix are reserved for system use only"
                ),
            });
        }
        if obj["value"].as_i64().is_some_and(|v| v > USER_MAX) && !built_in {
            causes.push(forbidden_cause(
                "value",
                &format!("maximum allowed value of a user defined priority is {USER_MAX}"),
            ));
        }
        if !causes.is_empty() {
            return Err(invalid(&name, causes));
        }
    }
    if obj["globalDefault"].as_bool() == Some(true) {
        let other = list_classes(store)?.into_iter().find(|c| {
            c["globalDefault"].as_bool() == Some(true) && object::name(c) != name.as_str()
        });
        if let Some(other) = other {
            return Err(ApiError::Forbidden(format!(
                "priorityclasses.scheduling.k8s.io \"{name}\" is forbidden: PriorityClass {} is already marked as default. Only one default can exist",
                object::name(&other)
            )));
        }
    }
    Ok(())
}

/// Upstream's Priority admission for a new pod.
fn admit_pod(store: &dyn Store, pod: &mut Value) -> Result<(), ApiError> {
    let name = object::name(pod).to_string();
    let spec = &pod["spec"];
    let class_name = spec["priorityClassName"].as_str().unwrap_or("").to_string();
    let (class_name, value, policy) = if class_name.is_empty() {
        let default = list_classes(store)?
            .into_iter()
            .filter(|c| c["globalDefault"].as_bool() == Some(true))
            // Two defaults can only come from a race: upstream takes the lowest.
            .min_by_key(|c| c["value"].as_i64().unwrap_or(0));
        match default {
            Some(c) => (
                object::name(&c).to_string(),
                c["value"].as_i64().unwrap_or(0),
                c["preemptionPolicy"].clone(),
            ),
            None => (String::new(), 0, Value::Null),
        }
    } else {
        let res = classes()?;
        let kv = store
            .get(&res.key(None, &class_name))
            .map_err(|e| ApiError::from_store(e, &res.name(), &class_name))?
            .ok_or_else(|| {
                ApiError::Forbidden(format!(
                    "pods \"{name}\" is forbidden: no PriorityClass with name {class_name} was found"
                ))
            })?;
        let class = object::from_store(&kv)?;
        (
            class_name,
            class["value"].as_i64().unwrap_or(0),
            class["preemptionPolicy"].clone(),
        )
    };
    if let Some(given) = spec["priority"].as_i64()
        && given != value
    {
        return Err(ApiError::Forbidden(format!(
            "pods \"{name}\" is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
        )));
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if !class_name.is_empty() {
        spec.insert("priorityClassName".into(), json!(class_name));
    }
    spec.insert("priority".into(), json!(value));
    if spec.get("preemptionPolicy").is_none_or(Value::is_null) {
        let policy = if policy.is_string() {
            policy
        } else {
            json!(DEFAULT_PREEMPTION)
        };
        spec.insert("preemptionPolicy".into(), policy);
    }
    Ok(())
}
