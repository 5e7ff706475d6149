//! The self-review kinds kubectl uses: `SelfSubjectAccessReview` (`auth can-i`),
//! `SelfSubjectRulesReview` (`auth can-i --list`) and `SelfSubjectReview` (`auth whoami`).
//! They are computed from the requesting user through the same [`auth::authorize`] as every
//! request, and never stored.

use serde_json::{Value, json};

use super::auth::{self, Attributes, UserInfo};
use super::error::ApiError;
use super::rbac;
use crate::store::Store;

/// `auth can-i VERB RESOURCE`: echoes the request with `status.allowed`.
pub fn self_subject_access_review(
    store: &dyn Store,
    user: &UserInfo,
    mut review: Value,
) -> Result<Value, ApiError> {
    let spec = &review["spec"];
    let allowed = if let Some(ra) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        let text = |k: &str| ra[k].as_str().filter(|s| !s.is_empty());
        let verb = text("verb").unwrap_or("get");
        let resource = text("resource").unwrap_or("");
        let attrs = Attributes {
            verb,
            group: text("group").unwrap_or(""),
            resource,
            subresource: text("subresource"),
            namespace: text("namespace"),
            name: text("name"),
        };
        match auth::authorize(store, user, &attrs) {
            Ok(()) => true,
            Err(ApiError::Forbidden(_)) => false,
            Err(other) => return Err(other),
        }
    } else if spec
        .get("nonResourceAttributes")
        .is_some_and(Value::is_object)
    {
        auth::is_master(user)
    } else {
        return Err(ApiError::Invalid {
            group: "authorization.k8s.io".into(),
            kind: "SelfSubjectAccessReview".into(),
            name: String::new(),
            causes: vec![super::error::Cause {
                reason: "FieldValueRequired",
                field: "spec.resourceAttributes".into(),
                message: "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
            }],
        });
    };
    review["status"] = if allowed {
        json!({"allowed": true, "reason": "allowed by the r3s authorizer"})
    } else {
        json!({"allowed": false})
    };
    Ok(review)
}

/// `auth can-i --list`: every rule that applies to the user in `spec.namespace`.
pub fn self_subject_rules_review(
    store: &dyn Store,
    user: &UserInfo,
    mut review: Value,
) -> Result<Value, ApiError> {
    if auth::is_master(user) {
        review["status"] = json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        });
        return Ok(review);
    }
    let namespace = review["spec"]["namespace"]
        .as_str()
        .filter(|n| !n.is_empty());
    let rules = rbac::rules_for(store, user, namespace)?;
    let (resource, non_resource): (Vec<Value>, Vec<Value>) = rules
        .into_iter()
        .partition(|r| r.get("nonResourceURLs").is_none_or(Value::is_null));
    review["status"] = json!({
        "resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false,
    });
    Ok(review)
}

/// `auth whoami`.
pub fn self_subject_review(
    _store: &dyn Store,
    user: &UserInfo,
    mut review: Value,
) -> Result<Value, ApiError> {
    review["status"] = json!({"userInfo": {"username": user.username, "groups": user.groups}});
    Ok(review)
}
