//! The self-review kinds kubectl uses: `SelfSubjectAccessReview` (`auth can-i`),
//! `SelfSubjectRulesReview` (`auth can-i --list`) and `SelfSubjectReview` (`auth whoami`).
//! They are computed from the requesting user through the same [`auth::explain`] as every
//! request, and never stored. The reviews about other users (`SubjectAccessReview`,
//! `TokenReview`) are in [`super::subject_reviews`].

use serde_json::{Value, json};

use super::ApiState;
use super::auth::{self, Attributes, UserInfo, Verdict};
use super::error::{ApiError, Cause};
use super::rbac;

/// `auth can-i VERB RESOURCE`: echoes the request with `status.allowed`.
pub fn self_subject_access_review(
    state: &ApiState,
    user: &UserInfo,
    _namespace: Option<&str>,
    mut review: Value,
) -> Result<Value, ApiError> {
    let spec = &review["spec"];
    let kind = "SelfSubjectAccessReview";
    let status = if let Some(ra) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        decide(state, user, &resource_attributes(ra))?
    } else if let Some(nra) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        decide_non_resource(state, user, nra)?
    } else {
        return Err(invalid(
            kind,
            "spec.resourceAttributes",
            "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    };
    review["status"] = status;
    Ok(review)
}

/// The authorization attributes of a review's `resourceAttributes` (verb defaults to `get`).
pub(crate) fn resource_attributes(ra: &Value) -> Attributes<'_> {
    let text = |k: &str| ra[k].as_str().filter(|s| !s.is_empty());
    Attributes {
        verb: text("verb").unwrap_or("get"),
        group: text("group").unwrap_or(""),
        resource: text("resource").unwrap_or(""),
        subresource: text("subresource"),
        namespace: text("namespace"),
        name: text("name"),
    }
}

/// `status` of an access review for resource attributes: `allowed`, and upstream's `reason`.
pub(crate) fn decide(
    state: &ApiState,
    user: &UserInfo,
    attrs: &Attributes<'_>,
) -> Result<Value, ApiError> {
    Ok(match auth::explain(state.store.as_ref(), user, attrs)? {
        Verdict::Allowed(reason) if reason.is_empty() => json!({"allowed": true}),
        Verdict::Allowed(reason) => json!({"allowed": true, "reason": reason}),
        Verdict::Denied { reason, .. } if reason.is_empty() => json!({"allowed": false}),
        Verdict::Denied { reason, .. } => json!({"allowed": false, "reason": reason}),
    })
}

/// `status` of an access review for a non-resource URL (`/healthz`, `/logs/*`).
pub(crate) fn decide_non_resource(
    state: &ApiState,
    user: &UserInfo,
    nra: &Value,
) -> Result<Value, ApiError> {
    if auth::is_master(user) {
        return Ok(json!({"allowed": true}));
    }
    let verb = nra["verb"].as_str().unwrap_or("get");
    let path = nra["path"].as_str().unwrap_or("");
    Ok(
        match rbac::non_resource_allowed_by(state.store.as_ref(), user, verb, path)? {
            Some(reason) => json!({"allowed": true, "reason": reason}),
            None => json!({"allowed": false}),
        },
    )
}

/// A 422 of a review kind (whose objects have no name).
pub(crate) fn invalid(kind: &str, field: &str, message: &str) -> ApiError {
    let group = if kind.ends_with("AccessReview") || kind.ends_with("RulesReview") {
        "authorization.k8s.io"
    } else {
        "authentication.k8s.io"
    };
    ApiError::Invalid {
        group: group.into(),
        kind: kind.into(),
        name: String::new(),
        causes: vec![Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: message.into(),
        }],
    }
}

/// `auth can-i --list`: every rule that applies to the user in `spec.namespace`.
pub fn self_subject_rules_review(
    state: &ApiState,
    user: &UserInfo,
    _namespace: Option<&str>,
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
    let rules = rbac::rules_for(state.store.as_ref(), user, namespace)?;
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
    _state: &ApiState,
    user: &UserInfo,
    _namespace: Option<&str>,
    mut review: Value,
) -> Result<Value, ApiError> {
    let mut info = json!({"username": user.username, "groups": user.groups});
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    if !user.extra.is_empty() {
        info["extra"] = json!(user.extra);
    }
    review["status"] = json!({ "userInfo": info });
    Ok(review)
}
