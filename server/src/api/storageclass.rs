//! Upstream's DefaultStorageClass admission on PersistentVolumeClaim create: a claim that does
//! not name a class (`spec.storageClassName` absent, and no legacy
//! `volume.beta.kubernetes.io/storage-class` annotation) gets the default class, the StorageClass
//! annotated `storageclass.kubernetes.io/is-default-class: "true"` (the newest, if several are).
//! An explicit `""` means "no class" and is kept. No default class: the claim is left as it is
//! (the volume binder gives it one if a default appears later).
//!
//! Also the phase a new claim or volume starts in, as upstream's strategies set it: `Pending`.

use serde_json::{Value, json};

use super::error::ApiError;
use super::object;
use super::registry::{self, Resource};
use crate::store::{ListOptions, Store};

/// The annotation marking the default class.
pub const DEFAULT_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const BETA_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// Admission of a create; kinds other than claims and volumes pass untouched.
pub fn admit(store: &dyn Store, res: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    match (res.group, res.kind) {
        ("", "PersistentVolumeClaim") => {
            let named = !obj["spec"]["storageClassName"].is_null()
                || !obj["metadata"]["annotations"][BETA_CLASS_ANNOTATION].is_null();
            if !named && let Some(class) = default_class(store)? {
                obj["spec"]["storageClassName"] = json!(class);
            }
            obj["status"] = json!({"phase": "Pending"});
            Ok(())
        }
        ("", "PersistentVolume") => {
            obj["status"] = json!({"phase": "Pending"});
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The default StorageClass's name: of those marked default, the newest (then by name).
pub fn default_class(store: &dyn Store) -> Result<Option<String>, ApiError> {
    let res = registry::find("storage.k8s.io", "v1", "storageclasses")
        .ok_or_else(|| ApiError::Internal("storageclasses are not registered".into()))?;
    let list = store
        .list(&res.key_prefix(), &ListOptions::default())
        .map_err(|e| ApiError::from_store(e, &res.name(), ""))?;
    let mut defaults = Vec::new();
    for kv in &list.items {
        let class = object::from_store(kv)?;
        if class["metadata"]["annotations"][DEFAULT_ANNOTATION].as_str() == Some("true") {
            let created = class["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .to_string();
            defaults.push((created, object::name(&class).to_string()));
        }
    }
    Ok(defaults.into_iter().max().map(|(_, name)| name))
}
