//! Server-side apply and field ownership (`metadata.managedFields`).
//!
//! Every write records who set what: an update (create, PUT, patch) gives its manager the fields it
//! added or changed and takes them from every other manager ([`record_update`]); an apply
//! ([`apply`]) merges the manager's configuration into the live object, refuses (409) to change a
//! field another manager owns unless forced (then that manager loses it), removes the fields this
//! manager applied before but no longer applies when nobody else owns them, and makes the applied
//! configuration's field set the manager's Apply entry. Fields a write removes lose every owner.
//!
//! The merge uses the strategic-merge-patch merge keys ([`super::smp`]) for built-in kinds (keyed
//! lists merge by key, sets union, other lists are replaced); custom resources' lists are atomic.
//! Identity and server-set metadata (name, namespace, uid, resourceVersion, generation,
//! creationTimestamp, deletion fields, managedFields) are never owned.
//!
//! Not done (as upstream does it): the cap of ten Update entries, multi-field list keys
//! (`containerPort`+`protocol`), per-field atomic struct/map markers beyond label and node selectors.

pub mod fieldset;
pub mod managed;

use serde_json::{Value, json};

use self::fieldset::{FieldSet, Path, Shape};
use self::managed::{Entry, Operation};
use super::error::{ApiError, Cause};
use super::object;
use super::smp;

/// Metadata the server owns: never part of a field set.
const UNOWNED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The manager making a write.
#[derive(Clone, Debug)]
pub struct Manager {
    pub name: String,
    /// `apiVersion` of the write (the entry's `apiVersion`).
    pub api_version: String,
    /// Empty for the main resource; `status` or `scale` for those subresources.
    pub subresource: String,
    pub shape: Shape,
}

/// The part of `obj` field sets are about.
fn trackable(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Some(map) = out.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in UNOWNED_METADATA {
                meta.remove(*field);
            }
            if meta.is_empty() {
                map.remove("metadata");
            }
        }
    }
    out
}

/// The entries a write starts from: the client's if its body set `managedFields` (`[]` resets
/// them), else the stored object's.
fn base_entries(old: Option<&Value>, new: &Value) -> Vec<Entry> {
    if new["metadata"].get("managedFields").is_some() {
        return managed::read(new);
    }
    old.map(managed::read).unwrap_or_default()
}

/// Records an update by `who` from `old` (absent on create) to `new`, in `new`'s managedFields.
pub fn record_update(old: Option<&Value>, new: &mut Value, who: &Manager) {
    let mut entries = base_entries(old, new);
    let empty = json!({});
    let before = trackable(old.unwrap_or(&empty));
    let after = trackable(new);
    let changed = who.shape.changed(&before, &after);
    if !changed.is_empty() {
        for entry in entries.iter_mut() {
            if !entry.is(&who.name, Operation::Update, &who.subresource) {
                entry.fields = entry.fields.difference(&changed);
            }
        }
        let mine = match entries
            .iter()
            .position(|e| e.is(&who.name, Operation::Update, &who.subresource))
        {
            Some(i) => &mut entries[i],
            None => {
                entries.push(Entry {
                    manager: who.name.clone(),
                    operation: Operation::Update,
                    api_version: who.api_version.clone(),
                    time: None,
                    subresource: who.subresource.clone(),
                    fields: FieldSet::default(),
                });
                let last = entries.len() - 1;
                &mut entries[last]
            }
        };
        mine.fields.union(&changed);
        mine.time = Some(object::now());
        mine.api_version = who.api_version.clone();
    }
    for entry in entries.iter_mut() {
        entry.fields.retain_present(&after);
    }
    managed::write(new, entries);
}

/// One field another manager owns that an apply would change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager as upstream prints it (`"kubectl-edit" using v1 at <time>`).
    pub manager: String,
    pub path: Path,
}

/// Applies `config` (already checked for kind and name, without status when the main resource's
/// status is reset) by `who` to `live` (`None`: the object is created). Returns the new object
/// with its managedFields, before defaulting and validation.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    who: &Manager,
    force: bool,
) -> Result<Value, ApiError> {
    let mut config = config.clone();
    if let Some(meta) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    let base = live.cloned().unwrap_or_else(|| json!({}));
    let mut entries = managed::read(&base);
    if live.is_some() && entries.is_empty() {
        // Fields of an object nobody tracked belong to a synthetic manager, as upstream.
        entries.push(Entry {
            manager: "before-first-apply".into(),
            operation: Operation::Update,
            api_version: who.api_version.clone(),
            time: None,
            subresource: String::new(),
            fields: who.shape.of(&trackable(&base)),
        });
    }
    let applied = who.shape.of(&trackable(&config));
    let mut merged = smp::apply(&base, &config)?;
    let changed = who.shape.changed(&trackable(&base), &trackable(&merged));

    let is_me = |e: &Entry| e.is(&who.name, Operation::Apply, &who.subresource);
    let conflicts: Vec<Conflict> = entries
        .iter()
        .filter(|e| !is_me(e))
        .flat_map(|e| {
            e.fields
                .intersection(&changed)
                .paths()
                .into_iter()
                .map(|path| Conflict {
                    manager: e.describe(),
                    path,
                })
        })
        .collect();
    if !conflicts.is_empty() {
        if !force {
            return Err(conflict_error(&conflicts));
        }
        for entry in entries.iter_mut().filter(|e| !is_me(e)) {
            entry.fields = entry.fields.difference(&changed);
        }
    }

    let previous = entries
        .iter()
        .find(|e| is_me(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut others = FieldSet::default();
    for entry in entries.iter().filter(|e| !is_me(e)) {
        others.union(&entry.fields);
    }
    let mut dropped = previous.difference(&applied).paths();
    // Deepest first, so a list element's fields go before the element.
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in dropped {
        if others.has_at_or_below(&path) || applied.has_at_or_below(&path) || is_list_key(&path) {
            continue;
        }
        fieldset::remove(&mut merged, &path);
    }

    let now = object::now();
    match entries.iter_mut().find(|e| is_me(e)) {
        Some(mine) => {
            if mine.fields != applied {
                mine.time = Some(now);
            }
            mine.fields = applied;
            mine.api_version = who.api_version.clone();
        }
        None => entries.push(Entry {
            manager: who.name.clone(),
            operation: Operation::Apply,
            api_version: who.api_version.clone(),
            time: Some(now),
            subresource: who.subresource.clone(),
            fields: applied,
        }),
    }
    let after = trackable(&merged);
    for entry in entries.iter_mut() {
        entry.fields.retain_present(&after);
    }
    if merged.get("metadata").is_none() {
        merged["metadata"] = json!({});
    }
    managed::write(&mut merged, entries);
    Ok(merged)
}

/// True if `path` ends at the key field of a keyed list element (removed only with the element).
fn is_list_key(path: &[String]) -> bool {
    let [.., parent, last] = path else {
        return false;
    };
    let (Some(field), Some(keys)) = (last.strip_prefix("f:"), parent.strip_prefix("k:")) else {
        return false;
    };
    serde_json::from_str::<serde_json::Map<String, Value>>(keys)
        .is_ok_and(|keys| keys.contains_key(field))
}

/// The 409 upstream answers for apply conflicts (kubectl prints the message and its
/// `--force-conflicts` advice).
pub fn conflict_error(conflicts: &[Conflict]) -> ApiError {
    let causes = conflicts
        .iter()
        .map(|c| Cause {
            reason: "FieldManagerConflict",
            field: fieldset::display(&c.path),
            message: format!("conflict with {}", c.manager),
        })
        .collect();
    let message = match conflicts {
        [one] => format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            one.manager,
            fieldset::display(&one.path)
        ),
        many => {
            let mut managers: Vec<&str> = many.iter().map(|c| c.manager.as_str()).collect();
            managers.sort_unstable();
            managers.dedup();
            let mut lines = Vec::new();
            for manager in managers {
                lines.push(format!("conflicts with {manager}:"));
                for c in many.iter().filter(|c| c.manager == manager) {
                    lines.push(format!("- {}", fieldset::display(&c.path)));
                }
            }
            format!(
                "Apply failed with {} conflicts: {}",
                many.len(),
                lines.join("\n")
            )
        }
    };
    ApiError::ApplyConflict { message, causes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(name: &str) -> Manager {
        Manager {
            name: name.into(),
            api_version: "apps/v1".into(),
            subresource: String::new(),
            shape: Shape { builtin: true },
        }
    }

    fn deploy(replicas: i64, containers: Value) -> Value {
        json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
               "spec":{"replicas":replicas,"template":{"spec":{"containers":containers}}}})
    }

    fn owners(obj: &Value) -> Vec<(String, Value)> {
        managed::read(obj)
            .into_iter()
            .map(|e| (e.manager, e.fields.to_fields_v1()))
            .collect()
    }

    #[test]
    fn apply_creates_then_conflicts_then_force_takes_over() {
        let config = deploy(2, json!([{"name":"a","image":"x"}]));
        let created = apply(None, &config, &who("kubectl"), false).expect("create");
        assert_eq!(created["spec"]["replicas"], 2);
        assert_eq!(owners(&created)[0].0, "kubectl");

        // Another manager changes replicas through an update: it owns it now.
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(Some(&created), &mut scaled, &who("kubectl-scale"));
        let list = owners(&scaled);
        assert_eq!(
            list[1],
            ("kubectl-scale".into(), json!({"f:spec":{"f:replicas":{}}}))
        );
        assert!(
            !list[0].1["f:spec"]
                .as_object()
                .expect("spec")
                .contains_key("f:replicas")
        );

        // Re-applying replicas 2 conflicts; the same value as live would not.
        let err = apply(Some(&scaled), &config, &who("kubectl"), false).expect_err("conflict");
        let status = err.status();
        assert_eq!(status["code"], 409);
        assert_eq!(status["reason"], "Conflict");
        let message = status["message"].as_str().expect("message");
        assert!(
            message.starts_with(
                "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1 at "
            ),
            "{message}"
        );
        assert!(message.ends_with(": .spec.replicas"), "{message}");
        assert_eq!(
            status["details"]["causes"][0]["reason"],
            "FieldManagerConflict"
        );
        assert_eq!(status["details"]["causes"][0]["field"], ".spec.replicas");
        let same = deploy(5, json!([{"name":"a","image":"x"}]));
        let shared = apply(Some(&scaled), &same, &who("kubectl"), false).expect("no conflict");
        assert_eq!(owners(&shared).len(), 2);

        let forced = apply(Some(&scaled), &config, &who("kubectl"), true).expect("force");
        assert_eq!(forced["spec"]["replicas"], 2);
        assert_eq!(owners(&forced).len(), 1, "{:?}", owners(&forced));
    }

    #[test]
    fn fields_no_longer_applied_are_removed_unless_someone_else_owns_them() {
        let v1 = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","labels":{"a":"1","b":"2"}},
                        "data":{"x":"1","y":"2"}});
        let first = apply(None, &v1, &who("kubectl"), false).expect("create");
        let mut edited = first.clone();
        edited["data"]["z"] = json!("3");
        edited["metadata"]["labels"]["b"] = json!("changed");
        record_update(Some(&first), &mut edited, &who("kubectl-edit"));
        let v2 =
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"x":"1"}});
        let second = apply(Some(&edited), &v2, &who("kubectl"), false).expect("apply");
        assert_eq!(second["data"], json!({"x":"1","z":"3"}));
        assert_eq!(second["metadata"]["labels"], json!({"b":"changed"}));
    }

    #[test]
    fn dropped_list_elements_are_removed() {
        let two = deploy(
            1,
            json!([{"name":"a","image":"x"},{"name":"b","image":"y"}]),
        );
        let live = apply(None, &two, &who("kubectl"), false).expect("create");
        let one = deploy(1, json!([{"name":"a","image":"x"}]));
        let after = apply(Some(&live), &one, &who("kubectl"), false).expect("apply");
        assert_eq!(
            after["spec"]["template"]["spec"]["containers"],
            json!([{"name":"a","image":"x"}])
        );
    }

    #[test]
    fn untracked_objects_belong_to_before_first_apply() {
        let live =
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"x":"1"}});
        let config =
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"x":"2"}});
        let err = apply(Some(&live), &config, &who("kubectl"), false).expect_err("conflict");
        assert!(err.to_string().contains("\"before-first-apply\""), "{err}");
    }

    #[test]
    fn unchanged_updates_keep_managed_fields_identical() {
        let live = apply(
            None,
            &json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"x":"1"}}),
            &who("kubectl"),
            false,
        )
        .expect("create");
        let mut same = live.clone();
        record_update(Some(&live), &mut same, &who("controller"));
        assert_eq!(same, live);
    }

    #[test]
    fn multiple_conflicts_are_grouped_by_manager() {
        let conflicts = vec![
            Conflict {
                manager: "\"b\"".into(),
                path: vec!["f:x".into()],
            },
            Conflict {
                manager: "\"a\"".into(),
                path: vec!["f:y".into()],
            },
        ];
        assert_eq!(
            conflict_error(&conflicts).to_string(),
            "Apply failed with 2 conflicts: conflicts with \"a\":\n- .y\nconflicts with \"b\":\n- .x"
        );
    }
}
