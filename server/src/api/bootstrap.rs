//! Objects every cluster starts with: the namespaces `default`, `kube-system`, `kube-public` and
//! `kube-node-lease`, created through the same metadata rules as API creates when absent.

use serde_json::json;

use super::error::ApiError;
use super::{object, registry, validate};
use crate::store::{Store, StoreError};

pub const NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates the built-in namespaces that do not exist yet. Idempotent.
pub async fn ensure_namespaces(store: &dyn Store) -> Result<(), ApiError> {
    let res = registry::find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::Internal("namespaces are not registered".into()))?;
    for name in NAMESPACES {
        let key = res.key(None, name);
        if store
            .get(&key)
            .map_err(|e| ApiError::from_store(e, &res.name(), name))?
            .is_some()
        {
            continue;
        }
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        object::prepare_create(res, &mut ns)?;
        validate::default_on_create(res, &mut ns);
        match store.create(&key, object::to_store(&ns)?).await {
            // Someone else (another start racing us) created it: that is the goal anyway.
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(ApiError::from_store(e, &res.name(), name)),
        }
    }
    Ok(())
}
