//! The patch types: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch
//! ([`super::smp`]). Server-side apply (`application/apply-patch+yaml`) is recognised here and
//! carried out by [`super::apply`].

use serde_json::Value;

use super::codec;
use super::error::ApiError;
use super::smp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    /// Server-side apply: never passed to [`apply`].
    Apply,
}

impl PatchKind {
    pub fn from_content_type(media_type: &str) -> Result<PatchKind, ApiError> {
        match media_type {
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" => Ok(PatchKind::Apply),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other})"
            ))),
        }
    }
}

/// Parses a patch body (always JSON for the supported types).
pub fn parse(kind: PatchKind, body: &[u8]) -> Result<Value, ApiError> {
    let doc = codec::parse_json(body)?;
    match (kind, &doc) {
        (PatchKind::Json, Value::Array(_)) => Ok(doc),
        (PatchKind::Json, _) => Err(ApiError::BadRequest(
            "a JSON patch must be an array of operations".into(),
        )),
        (_, Value::Object(_)) => Ok(doc),
        _ => Err(ApiError::BadRequest(
            "a merge patch must be a JSON object".into(),
        )),
    }
}

/// Applies `patch` to `current` and returns the patched object.
pub fn apply(kind: PatchKind, current: &Value, patch: &Value) -> Result<Value, ApiError> {
    match kind {
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &ops.0).map_err(|e| {
                ApiError::BadRequest(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
            Ok(doc)
        }
        PatchKind::Merge => {
            let mut doc = current.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        PatchKind::Strategic => smp::apply(current, patch),
        PatchKind::Apply => Err(ApiError::Internal(
            "an apply patch reached the merge-patch path".into(),
        )),
    }
}
