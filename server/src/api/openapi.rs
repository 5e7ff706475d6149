//! A minimal OpenAPI v3, exactly what kubectl's validation check reads: an index of group-version
//! documents, and per group-version the PATCH operation of each resource carrying
//! `x-kubernetes-group-version-kind` and a `fieldValidation` parameter. With it kubectl skips
//! client-side schema validation and sends `fieldValidation=Strict`. No schemas are published
//! (`kubectl explain` would need them); `/openapi/v2` is absent, which kubectl tolerates.

use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::ApiState;
use super::discovery::json_response;
use super::error::ApiError;
use super::registry;

/// `GET /openapi/v3`.
pub async fn index(State(state): State<ApiState>) -> Response {
    let custom = state.custom.snapshot();
    let mut paths = Map::new();
    let mut gvs = vec![(String::new(), "v1".to_string())];
    for (g, versions) in registry::groups(&custom) {
        gvs.extend(versions.iter().map(|v| (g.to_string(), v.to_string())));
    }
    for (group, version) in gvs {
        let path = doc_path(&group, &version);
        let hash = hash(&document(&custom, &group, &version));
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
    }
    json_response(json!({ "paths": paths }))
}

/// `GET /openapi/v3/api/v1`.
pub async fn core() -> Response {
    json_response(document(&[], "", "v1"))
}

/// `GET /openapi/v3/apis/<group>/<version>`.
pub async fn named(
    State(state): State<ApiState>,
    Path((group, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let custom = state.custom.snapshot();
    if registry::in_group_version(&custom, &group, &version).is_empty() {
        return Err(ApiError::NoRoute);
    }
    Ok(json_response(document(&custom, &group, &version)))
}

fn doc_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn document(custom: &[&'static registry::Resource], group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    for r in registry::in_group_version(custom, group, version) {
        let scope = if r.namespaced {
            "namespaces/{namespace}/"
        } else {
            ""
        };
        let path = format!("/{}/{scope}{}/{{name}}", doc_path(group, version), r.plural);
        paths.insert(
            path,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
                "parameters": [{"name": "fieldValidation", "in": "query",
                                "schema": {"type": "string", "uniqueItems": true}}],
                "responses": {},
            }}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "components": {"schemas": {}},
        "paths": paths,
    })
}

fn hash(doc: &Value) -> String {
    hex::encode(&Sha256::digest(doc.to_string().as_bytes())[..16])
}
