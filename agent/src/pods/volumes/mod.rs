//! Pod volumes, prepared on the host before the first container starts and bind-mounted into
//! containers by `volumeMounts`. One module per kind: [`local`] (emptyDir, hostPath), [`objects`]
//! (configMap, secret), [`downward`] (downwardAPI), [`projected`] (token, configMap, secret and
//! downwardAPI sources in one directory, [`token`] for the ServiceAccount tokens); [`atomic`] is
//! kubelet's atomic-writer layout all API-backed kinds are written in.
//!
//! Updates after the start: [`refresh`] (called on every turn of the pod worker) rewrites
//! - a projected volume holding a token when the token is due (see [`token::refresh_at`]);
//! - a downwardAPI volume whenever the pod's labels or annotations change;
//! - configMap and secret volumes, and the configMap/secret sources of projected volumes, when
//!   their objects changed: they are read again every sync period (kubelet's `--sync-frequency`,
//!   one minute by default), as kubelet does, so an update reaches running pods within about that.
//!   A read that fails (the object deleted, the server away) keeps the current files.
//!
//! Each rewrite is atomic and only happens when a file's bytes or mode changed.
//! persistentVolumeClaim volumes ([`claim`]) mount their bound hostPath or local
//! PersistentVolume.
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
///
/// It also keeps when the pod's configMap and secret contents are next compared with the API.
#[derive(Debug)]
pub struct Rotation {
    due: HashMap<String, i64>,
    /// Next read of the configMaps and secrets the volumes show (Unix seconds); `None` when the
    /// pod has no such volume.
    objects_due: Option<i64>,
    /// The sync period between two such reads.
    resync: Duration,
}

impl Rotation {
    /// Nothing due yet; configMaps and secrets are read again every `resync`.
    pub fn new(resync: Duration) -> Self {
        Self {
            due: HashMap::new(),
            objects_due: None,
            resync,
        }
    }

    /// The earliest moment a volume is due, for the worker's wake-up.
    pub fn next(&self) -> Option<Instant> {
        let now = chrono::Utc::now().timestamp();
        self.due
            .values()
            .chain(self.objects_due.as_ref())
            .min()
            .map(|at| Instant::now() + Duration::from_secs((*at - now).max(0) as u64))
    }

    fn schedule_objects(&mut self, now: i64) {
        self.objects_due = Some(now + self.resync.as_secs().max(1) as i64);
    }
}

/// Whether the volume shows a configMap or secret, directly or as a projected source.
fn shows_objects(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.secret.is_some()
        || v.projected.as_ref().is_some_and(projected::has_objects)
}

/// The files of a configMap or secret volume (`None` for another kind).
async fn object_files(
    client: &kube::Client,
    ns: &str,
    v: &Volume,
) -> Option<Result<Vec<atomic::File>, VolumeError>> {
    let (kind, name, items, mode, optional) = if let Some(c) = &v.config_map {
        (
            Kind::ConfigMap,
            c.name.clone(),
            c.items.as_deref(),
            c.default_mode,
            c.optional,
        )
    } else if let Some(s) = &v.secret {
        (
            Kind::Secret,
            s.secret_name.clone().unwrap_or_default(),
            s.items.as_deref(),
            s.default_mode,
            s.optional,
        )
    } else {
        return None;
    };
    let optional = optional.unwrap_or(false);
    Some(
        async {
            let data = objects::read(client, kind, ns, &name, optional).await?;
            objects::select(
                kind,
                &data.unwrap_or_default(),
                items,
                mode.unwrap_or(0o644),
                optional,
            )
        }
        .await,
    )
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
    if volumes(pod).iter().any(shows_objects) {
        rotation.schedule_objects(chrono::Utc::now().timestamp());
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
    // A restarted worker finds the version it wrote; the sync period updates it.
    if let Some(files) = object_files(client, ns, v).await {
        if !atomic::has_version(target) {
            atomic::write(target, &files?)?;
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
        let rendered = projected::render(client, pod, facts, p, None).await?;
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
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let resync = rotation.objects_due.is_some_and(|at| at <= now);
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
            log_update(&v.name, "downwardAPI", written);
        }
        if resync && let Some(files) = object_files(client, ns, v).await {
            let written =
                files.and_then(|files| atomic::write(&target, &files).map_err(VolumeError::from));
            let kind = if v.config_map.is_some() {
                "configMap"
            } else {
                "secret"
            };
            log_update(&v.name, kind, written);
        }
        let Some(p) = &v.projected else {
            continue;
        };
        let token_due =
            projected::has_token(p) && rotation.due.get(&v.name).is_none_or(|at| *at <= now);
        if !token_due {
            if resync && projected::has_objects(p) {
                // Same token, fresh configMap/secret sources.
                let written = projected::render(client, pod, facts, p, Some(&target))
                    .await
                    .and_then(|r| atomic::write(&target, &r.files).map_err(VolumeError::from));
                log_update(&v.name, "projected", written);
            }
            continue;
        }
        match projected::render(client, pod, facts, p, None).await {
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
    if resync {
        rotation.schedule_objects(now);
    }
}

fn log_update(volume: &str, kind: &str, written: Result<bool, VolumeError>) {
    match written {
        Ok(true) => info!(volume, "{kind} volume updated"),
        Ok(false) => {}
        // The containers keep the current version; the next sync tries again.
        Err(e) => warn!(volume, "updating the {kind} volume: {e}"),
    }
}

/// Unmounts (tmpfs) and removes every volume of a pod.
pub fn remove(dir: &Path) {
    crate::runtime::cleanup::unmount_below(dir);
    let _ = std::fs::remove_dir_all(dir);
}
