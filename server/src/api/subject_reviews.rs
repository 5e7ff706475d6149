//! The review kinds about someone else, which delegating servers and webhooks use:
//! `SubjectAccessReview` (may user U with groups G do this?), its namespaced form
//! `LocalSubjectAccessReview`, and `TokenReview` (whom does this bearer token authenticate?).
//!
//! Creating one is itself authorized by RBAC (`system:auth-delegator` grants the cluster-wide two;
//! `admin` grants local access reviews in a namespace). The answers come from the same
//! [`auth::explain`] and [`auth::token_user`] every request goes through, and nothing is stored.

use serde_json::{Value, json};

use super::ApiState;
use super::auth::{self, UserInfo};
use super::error::ApiError;
use super::reviews::{decide, decide_non_resource, invalid, resource_attributes};
use super::tokens;

/// The user a `SubjectAccessReview` asks about: `spec.user` and exactly `spec.groups` (upstream
/// adds nothing, not even `system:authenticated`).
fn subject(spec: &Value) -> UserInfo {
    UserInfo {
        username: spec["user"].as_str().unwrap_or("").to_string(),
        groups: spec["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        uid: spec["uid"].as_str().unwrap_or("").to_string(),
        extra: spec["extra"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let values = v.as_array().into_iter().flatten();
                let values = values.filter_map(Value::as_str).map(str::to_string);
                (k.clone(), values.collect())
            })
            .collect(),
    }
}

/// Upstream's spec checks shared by both access review kinds.
fn check_spec(kind: &str, spec: &Value) -> Result<(), ApiError> {
    let ra = spec.get("resourceAttributes").filter(|v| v.is_object());
    let nra = spec.get("nonResourceAttributes").filter(|v| v.is_object());
    if let (Some(_), Some(nra)) = (ra, nra) {
        return Err(invalid(
            kind,
            "spec.nonResourceAttributes",
            &format!(
                "Invalid value: {}: cannot be specified in combination with resourceAttributes",
                json!(nra.to_string())
            ),
        ));
    }
    if ra.is_none() && nra.is_none() {
        return Err(invalid(
            kind,
            "spec.resourceAttributes",
            "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    }
    let user = subject(spec);
    if user.username.is_empty() && user.groups.is_empty() {
        return Err(invalid(
            kind,
            "spec.user",
            "Invalid value: \"\": at least one of user or group must be specified",
        ));
    }
    Ok(())
}

/// `SubjectAccessReview`: whether `spec.user`/`spec.groups` may do `spec.resourceAttributes` (or
/// the non-resource URL of `spec.nonResourceAttributes`).
pub fn subject_access_review(
    state: &ApiState,
    _requester: &UserInfo,
    _namespace: Option<&str>,
    mut review: Value,
) -> Result<Value, ApiError> {
    let spec = review["spec"].clone();
    check_spec("SubjectAccessReview", &spec)?;
    let user = subject(&spec);
    review["status"] = match spec.get("resourceAttributes").filter(|v| v.is_object()) {
        Some(ra) => decide(state, &user, &resource_attributes(ra))?,
        None => decide_non_resource(state, &user, &spec["nonResourceAttributes"])?,
    };
    Ok(review)
}

/// `LocalSubjectAccessReview`: a `SubjectAccessReview` confined to the namespace of the URL,
/// which `spec.resourceAttributes.namespace` must name.
pub fn local_subject_access_review(
    state: &ApiState,
    _requester: &UserInfo,
    namespace: Option<&str>,
    mut review: Value,
) -> Result<Value, ApiError> {
    const KIND: &str = "LocalSubjectAccessReview";
    let namespace = namespace.unwrap_or("");
    let spec = review["spec"].clone();
    if let Some(nra) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Err(invalid(
            KIND,
            "spec.nonResourceAttributes",
            &format!(
                "Invalid value: {}: disallowed on this kind of request",
                json!(nra.to_string())
            ),
        ));
    }
    check_spec(KIND, &spec)?;
    let ra = &spec["resourceAttributes"];
    let asked = ra["namespace"].as_str().unwrap_or("");
    if asked != namespace {
        return Err(invalid(
            KIND,
            "spec.resourceAttributes.namespace",
            &format!(
                "Invalid value: {}: must match metadata.namespace",
                json!(asked)
            ),
        ));
    }
    review["status"] = decide(state, &subject(&spec), &resource_attributes(ra))?;
    Ok(review)
}

/// `TokenReview`: the user `spec.token` authenticates, for one of `spec.audiences` (the API's
/// own audiences when none are given). A token that does not authenticate is answered 201 with
/// `status.error`, as upstream.
pub fn token_review(
    state: &ApiState,
    _requester: &UserInfo,
    _namespace: Option<&str>,
    mut review: Value,
) -> Result<Value, ApiError> {
    let token = review["spec"]["token"].as_str().unwrap_or("").to_string();
    if token.is_empty() {
        return Err(ApiError::BadRequest(
            "token is required for TokenReview in authentication".into(),
        ));
    }
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let audiences: Vec<&str> = if wanted.is_empty() {
        tokens::API_AUDIENCES.to_vec()
    } else {
        wanted.iter().map(String::as_str).collect()
    };
    review["status"] = match auth::token_user(state, &token, &audiences) {
        Ok((user, uid)) => {
            let mut info = json!({"username": user.username, "groups": user.groups});
            if !uid.is_empty() {
                info["uid"] = json!(uid);
            }
            if !user.extra.is_empty() {
                info["extra"] = json!(user.extra);
            }
            json!({"authenticated": true, "user": info, "audiences": audiences})
        }
        Err(ApiError::Unauthorized) => json!({"user": {}, "error": "invalid bearer token"}),
        Err(other) => return Err(other),
    };
    Ok(review)
}
