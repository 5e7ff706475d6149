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

/// The name prefix reserved for [`BUILT_IN`].
pub const SYSTEM_PREFIX: &str = "system-";

/// Whether `name` is a built-in class, which no one may delete (the classes every system pod
/// names must always resolve).
pub fn is_built_in(name: &str) -> bool {
    BUILT_IN.iter().any(|(n, _, _)| *n == name)
}

/// Refuses the deletion of a built-in class with upstream's Forbidden. Only a single-object
/// delete is refused: upstream's deletecollection goes around this check, and r3s recreates
/// missing built-ins at the next start, as kube-apiserver does.
pub fn admit_delete(res: &Resource, name: &str) -> Result<(), ApiError> {
    if (res.group, res.kind) == ("scheduling.k8s.io", "PriorityClass") && is_built_in(name) {
        return Err(ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: this is a system priority class and cannot be deleted",
            res.name()
        )));
    }
    Ok(())
}

/// Whether a class named with the `system-` prefix is exactly a built-in one (name, value and
/// globalDefault; the description may differ); the error says what is wrong, as upstream's.
fn known_system_class(name: &str, obj: &Value) -> Result<(), String> {
    let Some((_, value, _)) = BUILT_IN.iter().find(|(n, _, _)| *n == name) else {
        return Err(format!("{name} is not a known system priority class"));
    };
    if obj["value"].as_i64() != Some(*value) {
        return Err(format!("value of {name} PriorityClass must be {value}"));
    }
    if obj["globalDefault"].as_bool().unwrap_or(false) {
        return Err(format!(
            "globalDefault of {name} PriorityClass must be false"
        ));
    }
    Ok(())
}

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
        // Upstream's update rules: the value is Forbidden to change, the preemption policy is an
        // immutable field (Invalid). The name prefix is not re-checked, so a built-in class may
        // still be relabelled or, like any class, become the (single) global default.
        let mut causes = Vec::new();
        if old["value"] != obj["value"] {
            causes.push(forbidden_cause("value", "may not be changed in an update."));
        }
        if old["preemptionPolicy"] != obj["preemptionPolicy"] {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                field: "preemptionPolicy".into(),
                message: format!(
                    "Invalid value: {}: field is immutable",
                    obj["preemptionPolicy"]
                ),
            });
        }
        if !causes.is_empty() {
            return Err(invalid(&name, causes));
        }
    } else if name.starts_with(SYSTEM_PREFIX) {
        if let Err(why) = known_system_class(&name, obj) {
            return Err(invalid(
                &name,
                vec![forbidden_cause(
                    "metadata.name",
                    &format!(
                        "priority class names with '{SYSTEM_PREFIX}' prefix are reserved for system use only. error: {why}"
                    ),
                )],
            ));
        }
    } else if obj["value"].as_i64().is_some_and(|v| v > USER_MAX) {
        return Err(invalid(
            &name,
            vec![forbidden_cause(
                "value",
                &format!("maximum allowed value of a user defined priority is {USER_MAX}"),
            )],
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_built_ins_take_the_system_prefix() {
        let class = |value: i64, default: bool| json!({"value": value, "globalDefault": default});
        assert_eq!(
            known_system_class("system-node-critical", &class(2_000_001_000, false)),
            Ok(())
        );
        assert_eq!(
            known_system_class("system-node-critical", &class(2_000_000_000, false)),
            Err("value of system-node-critical PriorityClass must be 2000001000".into())
        );
        assert_eq!(
            known_system_class("system-cluster-critical", &class(2_000_000_000, true)),
            Err("globalDefault of system-cluster-critical PriorityClass must be false".into())
        );
        assert_eq!(
            known_system_class("system-mine", &class(5, false)),
            Err("system-mine is not a known system priority class".into())
        );
    }

    #[test]
    fn built_in_classes_cannot_be_deleted() {
        let res = classes().expect("registered");
        let err = admit_delete(res, "system-node-critical").expect_err("refused");
        assert_eq!(
            err.to_string(),
            "priorityclasses.scheduling.k8s.io \"system-node-critical\" is forbidden: this is a system priority class and cannot be deleted"
        );
        assert!(admit_delete(res, "system-mine").is_ok());
        let pods = registry::find("", "v1", "pods").expect("pods");
        assert!(admit_delete(pods, "system-node-critical").is_ok());
    }
}
