//! `projected` volumes: several sources (serviceAccountToken, configMap, secret, downwardAPI) in one
//! directory, rendered into one atomic-writer version. Modes: an item's own `mode`, else the
//! volume's `defaultMode` (0644). `clusterTrustBundle` sources are refused with a clear error.
//!
//! The token must change on a schedule: the whole volume is rendered again when it is due. Between
//! renewals the configMap and secret sources are re-read every sync period, keeping the token
//! already in the volume (see [`render`]'s `keep_token_of`).

use k8s_openapi::api::core::v1::{Pod, ProjectedVolumeSource};

use super::atomic::File;
use super::objects::{self, Kind};
use super::{VolumeError, downward, token};
use crate::pods::env::Facts;

/// The volume's default file mode when it sets none.
pub const DEFAULT_MODE: i32 = 0o644;

/// The rendered volume and, if it holds a token, when (Unix seconds) to render it again.
pub struct Rendered {
    pub files: Vec<File>,
    pub refresh_at: Option<i64>,
}

/// Whether the volume holds a ServiceAccount token.
pub fn has_token(p: &ProjectedVolumeSource) -> bool {
    p.sources
        .iter()
        .flatten()
        .any(|s| s.service_account_token.is_some())
}

/// Whether the volume shows a configMap or a secret.
pub fn has_objects(p: &ProjectedVolumeSource) -> bool {
    p.sources
        .iter()
        .flatten()
        .any(|s| s.config_map.is_some() || s.secret.is_some())
}

/// Reads every source and renders the files. With `keep_token_of` (the volume's directory), a
/// token source reuses the token the current version holds instead of requesting a new one
/// (requesting one when that file cannot be read); `refresh_at` then stays `None`.
pub async fn render(
    client: &kube::Client,
    pod: &Pod,
    facts: &Facts,
    p: &ProjectedVolumeSource,
    keep_token_of: Option<&std::path::Path>,
) -> Result<Rendered, VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let default_mode = p.default_mode.unwrap_or(DEFAULT_MODE);
    let mut files = Vec::new();
    let mut refresh_at: Option<i64> = None;
    for source in p.sources.iter().flatten() {
        if let Some(c) = &source.config_map {
            let optional = c.optional.unwrap_or(false);
            if let Some(data) =
                objects::read(client, Kind::ConfigMap, ns, &c.name, optional).await?
            {
                files.extend(objects::select(
                    Kind::ConfigMap,
                    &data,
                    c.items.as_deref(),
                    default_mode,
                    optional,
                )?);
            }
        }
        if let Some(s) = &source.secret {
            let optional = s.optional.unwrap_or(false);
            if let Some(data) = objects::read(client, Kind::Secret, ns, &s.name, optional).await? {
                files.extend(objects::select(
                    Kind::Secret,
                    &data,
                    s.items.as_deref(),
                    default_mode,
                    optional,
                )?);
            }
        }
        if let Some(d) = &source.downward_api {
            files.extend(downward::files(
                pod,
                facts,
                d.items.as_deref().unwrap_or_default(),
                default_mode,
            )?);
        }
        if let Some(t) = &source.service_account_token {
            let kept = keep_token_of
                .and_then(|dir| std::fs::read(dir.join("..data").join(&t.path)).ok())
                .filter(|token| !token.is_empty());
            let data = match kept {
                Some(token) => token,
                None => {
                    let issued = token::request(client, pod, t).await?;
                    let at =
                        token::refresh_at(issued.issued_at, issued.expires_at, token::jitter());
                    refresh_at = Some(refresh_at.map_or(at, |r| r.min(at)));
                    issued.token.into_bytes()
                }
            };
            files.push(File {
                path: t.path.clone(),
                data,
                mode: (default_mode as u32) & 0o777,
            });
        }
        if source.cluster_trust_bundle.is_some() {
            return Err(VolumeError::Unsupported(
                "projected clusterTrustBundle".into(),
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = files.iter().find(|f| !seen.insert(f.path.as_str())) {
        return Err(VolumeError::Conflict(dup.path.clone()));
    }
    Ok(Rendered { files, refresh_at })
}
