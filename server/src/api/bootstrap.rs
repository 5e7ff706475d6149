//! Objects every cluster starts with: the namespaces `default`, `kube-system`, `kube-public` and
//! `kube-node-lease`, and the `default` ServiceAccount in each, created through the same metadata
//! rules as API creates when absent. (The ServiceAccount controller keeps `default` in every
//! namespace; creating the built-in namespaces' ones here means pods can be admitted there as soon
//! as the API serves, controllers running or not.)

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
    ensure_default_accounts(store).await
}

/// Creates the `default` ServiceAccount of every built-in namespace where it is missing.
async fn ensure_default_accounts(store: &dyn Store) -> Result<(), ApiError> {
    let res = registry::find("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::Internal("serviceaccounts are not registered".into()))?;
    let account = super::serviceaccount::DEFAULT_ACCOUNT;
    for ns in NAMESPACES {
        let key = res.key(Some(ns), account);
        if store
            .get(&key)
            .map_err(|e| ApiError::from_store(e, &res.name(), account))?
            .is_some()
        {
            continue;
        }
        let mut sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                            "metadata": {"name": account, "namespace": ns}});
        object::prepare_create(res, &mut sa)?;
        validate::default_on_create(res, &mut sa);
        match store.create(&key, object::to_store(&sa)?).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(ApiError::from_store(e, &res.name(), account)),
        }
    }
    Ok(())
}
