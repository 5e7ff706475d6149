//! The API's one error type and its rendering as a Kubernetes `Status` object.
//!
//! Invariant: every non-2xx answer of the API is built here, as `application/json` with a `Status`
//! body whose `reason`, `code`, `message` and `details` follow the apiserver's conventions
//! (kubectl prints `Error from server (<reason>): <message>` and builds `Invalid` output from
//! `details`). Server-side causes are logged once, when the response is built.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::StoreError;

/// A resource as named in messages: `configmaps`, `deployments.apps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceName {
    pub group: String,
    pub plural: String,
}

impl std::fmt::Display for ResourceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.plural)
        } else {
            write!(f, "{}.{}", self.plural, self.group)
        }
    }
}

/// One field-level problem of an `Invalid` error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        resource: ResourceName,
        name: String,
    },
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        resource: ResourceName,
        name: String,
    },
    #[error(
        "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict {
        resource: ResourceName,
        name: String,
    },
    #[error("{kind} \"{name}\" is invalid: {}", causes_text(.causes))]
    Invalid {
        group: String,
        kind: String,
        name: String,
        causes: Vec<Cause>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Expired(String),
    /// Server-side apply would change fields other managers own (causes name each field).
    #[error("{message}")]
    ApplyConflict { message: String, causes: Vec<Cause> },
    /// A Conflict whose message is not the optimistic-concurrency one (binding a bound pod).
    #[error("{0}")]
    AlreadyBound(String),
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("{0}")]
    Internal(String),
}

fn causes_text(causes: &[Cause]) -> String {
    causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ApiError {
    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Expired(_) => StatusCode::GONE,
            ApiError::AlreadyBound(_) | ApiError::ApplyConflict { .. } => StatusCode::CONFLICT,
            ApiError::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Expired(_) => "Expired",
            ApiError::AlreadyBound(_) | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::ServiceUnavailable(_) => "ServiceUnavailable",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// Maps a store failure on `name` of `resource` to the API error clients expect.
    pub fn from_store(err: StoreError, resource: &ResourceName, name: &str) -> ApiError {
        match err {
            StoreError::AlreadyExists { .. } => ApiError::AlreadyExists {
                resource: resource.clone(),
                name: name.to_string(),
            },
            StoreError::NotFound { .. } => ApiError::NotFound {
                resource: resource.clone(),
                name: name.to_string(),
            },
            StoreError::Conflict { .. } => ApiError::Conflict {
                resource: resource.clone(),
                name: name.to_string(),
            },
            StoreError::Expired {
                requested,
                compacted,
            } => ApiError::Expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            StoreError::FutureRevision { requested, current } => ApiError::Internal(format!(
                "Too large resource version: {requested}, current: {current}"
            )),
            other => ApiError::Internal(other.to_string()),
        }
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        let details = match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name } => Some(json!({
                "name": name, "group": resource.group, "kind": resource.plural,
            })),
            ApiError::Invalid {
                group,
                kind,
                name,
                causes,
            } => Some(json!({
                "name": name, "group": group, "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason, "message": c.message, "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::ApplyConflict { causes, .. } => Some(json!({
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason, "message": c.message, "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            _ => None,
        };
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code().is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request rejected");
        }
        (
            self.code(),
            [(header::CONTENT_TYPE, "application/json")],
            self.status().to_string(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_is_exactly_upstreams_status() {
        assert_eq!(
            ApiError::Unauthorized.status(),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"Unauthorized","reason":"Unauthorized","code":401})
        );
    }

    #[test]
    fn not_found_names_group_qualified_resource() {
        let err = ApiError::NotFound {
            resource: ResourceName {
                group: "apps".into(),
                plural: "deployments".into(),
            },
            name: "web".into(),
        };
        let status = err.status();
        assert_eq!(status["message"], "deployments.apps \"web\" not found");
        assert_eq!(
            status["details"],
            json!({"name":"web","group":"apps","kind":"deployments"})
        );
        assert_eq!(status["code"], 404);
    }
}
