//! Deletion lifecycle: finalizers, propagation policies, graceful pod deletion, `deletionTimestamp`,
//! and namespace termination.
//!
//! An object is *held* while `metadata.finalizers` is non-empty, and a Namespace also while
//! `spec.finalizers` is (the namespace controller removes `kubernetes` through the `finalize`
//! subresource once the namespace is empty). DELETE with `propagationPolicy: Foreground|Orphan`
//! adds the `foregroundDeletion`/`orphan` finalizer for the garbage collector to act on. DELETE on
//! a held object, or on a pod bound to a node (graceful: the node agent stops it, then deletes it
//! with grace 0), only starts deletion (`deletionTimestamp`, `deletionGracePeriodSeconds`, phase
//! `Terminating` for a Namespace). The object disappears when a delete or update leaves it unheld
//! with no grace period left. New finalizers cannot be added once deletion has started.

use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::registry::Resource;

fn is_namespace(res: &Resource) -> bool {
    res.group.is_empty() && res.kind == "Namespace"
}

fn non_empty(list: &Value) -> bool {
    list.as_array().is_some_and(|l| !l.is_empty())
}

/// True while something must run before `obj` may disappear.
pub fn held(res: &Resource, obj: &Value) -> bool {
    non_empty(&obj["metadata"]["finalizers"])
        || (is_namespace(res) && non_empty(&obj["spec"]["finalizers"]))
}

/// True if deletion has started.
pub fn deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

/// True if `obj` is being deleted, nothing holds it and no grace period is running: it must be
/// removed now.
pub fn finalized(res: &Resource, obj: &Value) -> bool {
    deleting(obj)
        && !held(res, obj)
        && obj["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            == 0
}

/// What a DELETE does to an object.
#[derive(Debug, PartialEq)]
pub enum Deletion {
    /// Remove it now.
    Now,
    /// Store this version (deletion started, or its grace period shortened).
    Mark(Value),
    /// Deletion is already under way; nothing changes.
    Unchanged,
}

/// Decides what DELETE with `options` (DeleteOptions JSON) does to `obj`, at time `now`.
pub fn plan_deletion(
    res: &Resource,
    obj: &Value,
    options: &Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Deletion {
    let grace = graceful_seconds(res, obj, options);
    let stamp = |seconds: i64| {
        (now + chrono::Duration::seconds(seconds))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    if deleting(obj) {
        let current = obj["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0);
        return match grace {
            Some(g) if g < current => {
                let mut out = obj.clone();
                out["metadata"]["deletionGracePeriodSeconds"] = json!(g);
                out["metadata"]["deletionTimestamp"] = json!(stamp(g));
                if g == 0 && !held(res, &out) {
                    Deletion::Now
                } else {
                    Deletion::Mark(out)
                }
            }
            _ => Deletion::Unchanged,
        };
    }
    let mut out = obj.clone();
    let finalizer = match options["propagationPolicy"].as_str() {
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        _ if options["orphanDependents"] == json!(true) => Some("orphan"),
        _ => None,
    };
    if let Some(f) = finalizer
        && let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut)
    {
        let list = meta.entry("finalizers").or_insert_with(|| json!([]));
        if let Some(list) = list.as_array_mut()
            && !list.contains(&json!(f))
        {
            list.push(json!(f));
        }
    }
    let grace = grace.unwrap_or(0);
    if grace == 0 && !held(res, &out) {
        return Deletion::Now;
    }
    out["metadata"]["deletionTimestamp"] = json!(stamp(grace));
    out["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    if is_namespace(res) {
        out["status"]["phase"] = json!("Terminating");
    }
    Deletion::Mark(out)
}

/// The grace period a pod bound to a node gets (`None` for everything else: deleted at once).
fn graceful_seconds(res: &Resource, obj: &Value, options: &Value) -> Option<i64> {
    let is_pod = res.group.is_empty() && res.kind == "Pod";
    let bound = obj["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        obj["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if !is_pod || !bound || finished {
        return None;
    }
    let grace = options["gracePeriodSeconds"]
        .as_i64()
        .or(obj["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30);
    Some(grace.max(0))
}

/// Rejects updates that add finalizers to an object already being deleted.
pub fn check_update(res: &Resource, old: &Value, new: &Value) -> Result<(), ApiError> {
    if !deleting(old) {
        return Ok(());
    }
    let before = old["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let added = new["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| !before.contains(f));
    if !added {
        return Ok(());
    }
    Err(ApiError::Invalid {
        group: res.group.into(),
        kind: res.kind.into(),
        name: old["metadata"]["name"].as_str().unwrap_or("").into(),
        causes: vec![Cause {
            reason: "FieldValueForbidden",
            field: "metadata.finalizers".into(),
            message: "Forbidden: no new finalizers can be added if the object is being deleted"
                .into(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::find;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time")
    }

    #[test]
    fn bound_pods_are_deleted_gracefully_then_at_once() {
        let pods = find("", "v1", "pods").expect("pods");
        let pod = json!({"metadata":{"name":"p"},"spec":{"nodeName":"n1","terminationGracePeriodSeconds":20}});
        let Deletion::Mark(marked) = plan_deletion(pods, &pod, &json!({}), now()) else {
            panic!("a bound pod is deleted gracefully");
        };
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 20);
        assert_eq!(
            marked["metadata"]["deletionTimestamp"],
            "2023-11-14T22:13:40Z"
        );
        assert!(
            !finalized(pods, &marked),
            "updates during the grace period keep it"
        );
        assert_eq!(
            plan_deletion(pods, &marked, &json!({}), now()),
            Deletion::Unchanged
        );
        assert_eq!(
            plan_deletion(pods, &marked, &json!({"gracePeriodSeconds": 0}), now()),
            Deletion::Now
        );
        let unbound = json!({"metadata":{"name":"q"},"spec":{}});
        assert_eq!(
            plan_deletion(pods, &unbound, &json!({}), now()),
            Deletion::Now
        );
    }

    #[test]
    fn propagation_policies_add_finalizers() {
        let deploys = find("apps", "v1", "deployments").expect("deployments");
        let d = json!({"metadata":{"name":"d"}});
        let Deletion::Mark(fg) = plan_deletion(
            deploys,
            &d,
            &json!({"propagationPolicy":"Foreground"}),
            now(),
        ) else {
            panic!("foreground keeps the owner");
        };
        assert_eq!(fg["metadata"]["finalizers"], json!(["foregroundDeletion"]));
        let Deletion::Mark(orphan) =
            plan_deletion(deploys, &d, &json!({"propagationPolicy":"Orphan"}), now())
        else {
            panic!("orphan keeps the owner");
        };
        assert_eq!(orphan["metadata"]["finalizers"], json!(["orphan"]));
        assert_eq!(
            plan_deletion(
                deploys,
                &d,
                &json!({"propagationPolicy":"Background"}),
                now()
            ),
            Deletion::Now
        );
    }
}
