//! Pod volumes, prepared on the host before the first container starts and bind-mounted into
//! containers by `volumeMounts`. One module per kind: [`local`] (emptyDir, hostPath), [`objects`]
//! (configMap, secret), [`downward`] (downwardAPI), [`projected`] (token, configMap, secret and
//! downwardAPI sources in one directory, [`token`] for the ServiceAccount tokens); [`atomic`] is
//! kubelet's atomic-writer layout all API-backed kinds are written in.
//!
//! Updates after the start: [`refresh`] (called on every turn of the pod worker) rewrites a
//! projected volume holding a token when the token is due (see [`token::refresh_at`]; re-reading
//! its configMap/secret sources then too) and a downwardAPI volume whenever the pod's labels or
//! annotations change; each rewrite is atomic. Plain configMap and secret volumes are written once
//! (updates of those objects do not reach running pods yet). persistentVolumeClaim volumes
//! ([`claim`]) mount their bound hostPath or local PersistentVolume.
//!
//! Invariant: every API-backed volume directory either has no `..data` yet or a complete version.

pub mod atomic;
pub mod claim;
pub mod downward;
pub mod local;
pub mod objects;
pub mod projected;
pub mod token;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Volume};
use tokio::time::Instant;
use tracing::{info, warn};

use super::env::Facts;
use objects::Kind;

/// A prepared volume: its host path, and whether it is always mounted read-only.
pub type Prepared = HashMap<String, (PathBuf, bool)>;

/// How long to wait before trying a failed token refresh again.
const RETRY: Duration = Duration::from_secs(10);

/// Why a volume could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{kind} {namespace}/{name} not found")]
    Missing {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{}", missing_key(.kind, .key))]
    MissingKey { kind: &'static str, key: String },
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Api {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("requesting a token for serviceaccount {namespace}/{account}: {message}")]
    Token {
        namespace: String,
        account: String,
        message: String,
    },
    #[error("downwardAPI item {path:?}: {message}")]
    Downward { path: String, message: String },
    #[error("two sources write {0:?}")]
    Conflict(String),
    #[error("hostPath type check failed: {0}")]
    HostPathType(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Atomic(#[from] atomic::AtomicError),
    #[error("{0}")]
    Claim(String),
    #[error("{0} volumes are not supported by r3s yet")]
    Unsupported(String),
}

/// kubelet's wording for an item naming a key the object lacks.
fn missing_key(kind: &str, key: &str) -> String {
    match kind {
        "configmap" => format!("configmap references non-existent config key: {key}"),
        _ => format!("references non-existent secret key: {key}"),
    }
}

/// When each token-holding projected volume of a pod is to be rendered again (Unix seconds), kept
/// by the pod worker. A volume missing here (after the agent restarted and re-adopted the pod) is
/// due at once, as kubelet renews every token when it starts.
#[derive(Debug, Default)]
pub struct Rotation {
    due: HashMap<String, i64>,
}

impl Rotation {
    /// The earliest moment a volume is due, for the worker's wake-up.
    pub fn next(&self) -> Option<Instant> {
        let now = chrono::Utc::now().timestamp();
        self.due
            .values()
            .min()
            .map(|at| Instant::now() + Duration::from_secs((*at - now).max(0) as u64))
    }
}

/// Prepares every volume of `pod` under `dir` (`<agent>/volumes/<uid>`); returns each volume's
/// host path by name and records token refresh times in `rotation`.
pub async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    dir: &Path,
    facts: &Facts,
    rotation: &mut Rotation,
) -> Result<Prepared, String> {
    let mut out = HashMap::new();
    for v in volumes(pod) {
        let target = dir.join(&v.name);
        let path = prepare_one(client, pod, facts, v, &target, rotation)
            .await
            .map_err(|e| format!("volume {:?}: {e}", v.name))?;
        let readonly = v.config_map.is_some()
            || v.secret.is_some()
            || v.projected.is_some()
            || v.downward_api.is_some()
            || v.persistent_volume_claim.as_ref().and_then(|c| c.read_only) == Some(true);
        out.insert(v.name.clone(), (path, readonly));
    }
    Ok(out)
}

fn volumes(pod: &Pod) -> &[Volume] {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
}

async fn prepare_one(
    client: &kube::Client,
    pod: &Pod,
    facts: &Facts,
    v: &Volume,
    target: &Path,
    rotation: &mut Rotation,
) -> Result<PathBuf, VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    if let Some(e) = &v.empty_dir {
        return local::empty_dir(e, target);
    }
    if let Some(h) = &v.host_path {
        return local::host_path(h);
    }
    if let Some(c) = &v.persistent_volume_claim {
        return claim::prepare(client, pod, c).await;
    }
    // Written once: a restarted worker finds the version it wrote.
    let once = atomic::has_version(target);
    if let Some(c) = &v.config_map {
        if !once {
            let optional = c.optional.unwrap_or(false);
            let data = objects::read(client, Kind::ConfigMap, ns, &c.name, optional).await?;
            let files = objects::select(
                Kind::ConfigMap,
                &data.unwrap_or_default(),
                c.items.as_deref(),
                c.default_mode.unwrap_or(0o644),
                optional,
            )?;
            atomic::write(target, &files)?;
        }
        return Ok(target.to_path_buf());
    }
    if let Some(s) = &v.secret {
        if !once {
            let name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional.unwrap_or(false);
            let data = objects::read(client, Kind::Secret, ns, &name, optional).await?;
            let files = objects::select(
                Kind::Secret,
                &data.unwrap_or_default(),
                s.items.as_deref(),
                s.default_mode.unwrap_or(0o644),
                optional,
            )?;
            atomic::write(target, &files)?;
        }
        return Ok(target.to_path_buf());
    }
    if let Some(d) = &v.downward_api {
        let files = downward::files(
            pod,
            facts,
            d.items.as_deref().unwrap_or_default(),
            d.default_mode.unwrap_or(0o644),
        )?;
        atomic::write(target, &files)?;
        return Ok(target.to_path_buf());
    }
    if let Some(p) = &v.projected {
        let rendered = projected::render(client, pod, facts, p).await?;
        atomic::write(target, &rendered.files)?;
        if let Some(at) = rendered.refresh_at {
            rotation.due.insert(v.name.clone(), at);
        }
        return Ok(target.to_path_buf());
    }
    let kind = serde_json::to_value(v)
        .ok()
        .and_then(|j| {
            j.as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        })
        .unwrap_or_else(|| "unknown".into());
    Err(VolumeError::Unsupported(kind))
}

/// Rewrites what changed since the volumes were prepared (see the module docs). Failures are
/// logged and retried (tokens after [`RETRY`]); the containers keep the previous version.
pub async fn refresh(
    client: &kube::Client,
    pod: &Pod,
    dir: &Path,
    facts: &Facts,
    rotation: &mut Rotation,
) {
    let now = chrono::Utc::now().timestamp();
    for v in volumes(pod) {
        let target = dir.join(&v.name);
        if !atomic::has_version(&target) {
            continue;
        }
        if let Some(d) = &v.downward_api {
            let written = downward::files(
                pod,
                facts,
                d.items.as_deref().unwrap_or_default(),
                d.default_mode.unwrap_or(0o644),
            )
            .and_then(|files| atomic::write(&target, &files).map_err(VolumeError::from));
            match written {
                Ok(true) => info!(volume = %v.name, "downwardAPI volume updated"),
                Ok(false) => {}
                Err(e) => warn!(volume = %v.name, "updating the downwardAPI volume: {e}"),
            }
        }
        let Some(p) = v.projected.as_ref().filter(|p| projected::has_token(p)) else {
            continue;
        };
        if rotation.due.get(&v.name).is_some_and(|at| *at > now) {
            continue;
        }
        match projected::render(client, pod, facts, p).await {
            Ok(rendered) => match atomic::write(&target, &rendered.files) {
                Ok(_) => {
                    info!(volume = %v.name, "projected volume's token renewed");
                    let at = rendered.refresh_at.unwrap_or(now + RETRY.as_secs() as i64);
                    rotation.due.insert(v.name.clone(), at);
                }
                Err(e) => {
                    warn!(volume = %v.name, "rewriting the projected volume: {e}");
                    rotation
                        .due
                        .insert(v.name.clone(), now + RETRY.as_secs() as i64);
                }
            },
            Err(e) => {
                warn!(volume = %v.name, "renewing the projected volume's token: {e}");
                rotation
                    .due
                    .insert(v.name.clone(), now + RETRY.as_secs() as i64);
            }
        }
    }
}

/// Unmounts (tmpfs) and removes every volume of a pod.
pub fn remove(dir: &Path) {
    crate::runtime::cleanup::unmount_below(dir);
    let _ = std::fs::remove_dir_all(dir);
}
