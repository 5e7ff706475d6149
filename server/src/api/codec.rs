//! Request body decoding and response encoding.
//!
//! Accepted request bodies: JSON, YAML, and the Kubernetes protobuf envelope for the kinds
//! [`super::protobuf`] knows (kubectl 1.32's typed clients send protobuf for `create namespace|
//! configmap|secret|...`). Responses are always JSON; every client's Accept includes it.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::ApiError;

/// The body formats a client can send for create/update.
fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("application/json")
}

/// The media type of the request body, lowercased, without parameters.
pub fn media_type(headers: &HeaderMap) -> String {
    content_type(headers).to_ascii_lowercase()
}

/// Decodes a create/update/delete body into JSON.
pub fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    match media_type(headers).as_str() {
        "application/json" | "" | "*/*" => parse_json(body),
        "application/yaml" | "application/x-yaml" | "text/yaml" => parse_yaml(body),
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {other})"
        ))),
    }
}

pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding request body as JSON: {e}")))
}

pub fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    serde_yaml::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding request body as YAML: {e}")))
}

/// True if the client asked for a `meta.k8s.io` Table (`kubectl get` without `-o`).
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let params: Vec<&str> = range.split(';').map(str::trim).collect();
            params.contains(&"as=Table")
                && params.contains(&"g=meta.k8s.io")
                && (params.contains(&"v=v1") || params.contains(&"v=v1beta1"))
        })
}

/// The content type of a Table response.
pub const TABLE_CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// A JSON response with `code`.
pub fn respond(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A Table response.
pub fn respond_table(body: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, TABLE_CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}
