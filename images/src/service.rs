//! [`ImageService`]: the one handle the agent (and its `images` CLI) uses. It owns the content
//! store, the snapshots, the image records and the registry clients under one root directory
//! (`<data-dir>/agent/images`-style; the air-gap tarball directory is a different one).
//!
//! Concurrency: pulls, imports and rootfs preparation hold a shared lock, GC and remove an exclusive
//! one (`flock` on `<root>/lock`, so this also holds between processes, e.g. an operator CLI and
//! the agent), so GC never deletes a blob or snapshot an operation in flight is about to reference.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_client::Client;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

use crate::auth::{self, AuthError, Keyring};
use crate::content::{ContentError, ContentStore};
use crate::digest::Digest;
use crate::manifest::ManifestError;
use crate::platform::Platform;
use crate::progress::Progress;
use crate::records::{ImageRecord, RecordError, RecordStore, ref_counts};
use crate::reference::{ImageRef, ReferenceError};
use crate::registries::{Endpoint, HostConfig, RegistriesConfig, RegistriesError};
use crate::snapshot::{OverlayMount, SnapshotError, SnapshotStore};

/// Image service failures.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Registries(#[from] RegistriesError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    #[error(transparent)]
    Flatten(#[from] crate::flatten::FlattenError),
    /// Every endpoint failed; `details` has each endpoint's error, the registry's message included.
    #[error("pull {image}: {details}")]
    Pull { image: String, details: String },
    /// A registry request failed; `message` is the client error with its whole source chain
    /// (TLS and connection causes are otherwise hidden behind "error sending request").
    #[error("{endpoint}: {message}")]
    Registry { endpoint: String, message: String },
    #[error("{endpoint}: manifest for {image} hashes to {actual}, not the requested digest")]
    ManifestDigest {
        endpoint: String,
        image: String,
        actual: Digest,
    },
    #[error("registry TLS config for {host}: {reason}")]
    Tls { host: String, reason: String },
    #[error("image {0} is not in the store")]
    NotFound(String),
    /// A prepared container rootfs still uses the image.
    #[error(
        "image {image} is in use by the container at {container}; stop its pod first (or force)"
    )]
    InUse { image: String, container: PathBuf },
    #[error("image config {digest}: {source}")]
    Config {
        digest: Digest,
        source: serde_json::Error,
    },
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// How to open an [`ImageService`].
#[derive(Debug, Clone)]
pub struct ImageServiceConfig {
    /// Root of the store (created if missing).
    pub root: PathBuf,
    /// Platform pulled from multi-arch images unless a pull says otherwise.
    pub platform: Platform,
    /// Parsed registries.yaml.
    pub registries: RegistriesConfig,
    /// Layers downloaded (and unpacked) at the same time per pull.
    pub max_concurrent_downloads: usize,
}

/// Where the agent keeps the image store under its data dir (`<data-dir>/agent/image-store`, next
/// to k3s's air-gap directory `<data-dir>/agent/images`, which [`airgap_dir`] names).
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent").join("image-store")
}

/// The air-gap tarball directory scanned at agent start (`<data-dir>/agent/images`, as in k3s).
pub fn airgap_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent").join("images")
}

impl ImageServiceConfig {
    /// Defaults: host platform, no registries.yaml, 3 concurrent layer downloads (containerd's default).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            platform: Platform::host(),
            registries: RegistriesConfig::default(),
            max_concurrent_downloads: 3,
        }
    }
}

/// Per-pull options.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Credentials from the pod's imagePullSecrets.
    pub keyring: Keyring,
    /// Overrides the service's platform.
    pub platform: Option<Platform>,
    pub progress: Progress,
}

/// An image with its parsed config.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub record: ImageRecord,
    pub config: oci_spec::image::ImageConfiguration,
}

/// What [`ImageService::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: Vec<Digest>,
    pub snapshots_removed: Vec<Digest>,
    pub bytes_freed: u64,
}

/// Disk usage figures (bytes; snapshots count allocated blocks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub images: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    pub snapshots: usize,
    pub snapshot_bytes: u64,
    /// What a GC would free now.
    pub reclaimable_bytes: u64,
}

pub(crate) struct Inner {
    pub(crate) content: ContentStore,
    pub(crate) snapshots: SnapshotStore,
    pub(crate) records: RecordStore,
    pub(crate) root: PathBuf,
    pub(crate) registries: RegistriesConfig,
    pub(crate) platform: Platform,
    pub(crate) max_downloads: usize,
    /// Keyed by scheme, host and a fingerprint of the credentials: the client caches the first
    /// credentials it sees per registry, so different pull secrets need different clients.
    /// A client for a registry with client certificates keeps its tunnel (see [`crate::mtls`]).
    clients: Mutex<HashMap<ClientKey, CachedClient>>,
    /// `<root>/lock`: flock'ed shared by pulls, imports and rootfs preparation, exclusively by
    /// remove and GC, so the guarantees hold across processes too (an operator CLI opening the
    /// store while the agent runs).
    lock_path: PathBuf,
    /// Per-blob locks: concurrent pulls sharing a layer download it once (the second waits, then
    /// finds it in the store).
    blob_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// Scheme (https?), host, credentials fingerprint.
type ClientKey = (bool, String, Digest);
/// A registry client and, for client certificates, the tunnel it goes through.
type CachedClient = (Client, Option<Arc<crate::mtls::Tunnel>>);

/// The image service (cheap to clone).
#[derive(Clone)]
pub struct ImageService {
    pub(crate) inner: Arc<Inner>,
}

impl ImageService {
    /// Opens the store under `cfg.root`.
    pub fn open(cfg: ImageServiceConfig) -> Result<Self, ImageError> {
        std::fs::create_dir_all(&cfg.root).map_err(|source| ContentError::Io {
            op: "create",
            path: cfg.root.clone(),
            source,
        })?;
        let inner = Inner {
            content: ContentStore::new(&cfg.root)?,
            snapshots: SnapshotStore::new(&cfg.root)?,
            records: RecordStore::new(&cfg.root)?,
            lock_path: cfg.root.join("lock"),
            root: cfg.root,
            registries: cfg.registries,
            platform: cfg.platform,
            max_downloads: cfg.max_concurrent_downloads.max(1),
            clients: Mutex::new(HashMap::new()),
            blob_locks: Mutex::new(HashMap::new()),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The platform pulls default to.
    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    /// All images, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.inner.records.list()?)
    }

    /// The record for `name` (any accepted spelling, e.g. `nginx`), if present.
    /// `name` may also be an image ID (`sha256:<hex>` of the config, what CRI reports as the image
    /// id) or a manifest/index digest; the first record (by name) with that digest is returned.
    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>, ImageError> {
        if let Ok(d) = Digest::parse(name) {
            return Ok(self.find_by_digest(&d)?.into_iter().next());
        }
        let r = ImageRef::parse(name)?;
        Ok(self.inner.records.get(&r.to_string())?)
    }

    /// Every record whose config (image ID), manifest or target digest is `d`.
    pub fn find_by_digest(&self, d: &Digest) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self
            .inner
            .records
            .list()?
            .into_iter()
            .filter(|r| &r.config == d || &r.manifest == d || &r.target == d)
            .collect())
    }

    /// Record plus parsed config (entrypoint, env, user, working dir for the agent).
    pub fn inspect(&self, name: &str) -> Result<ImageInfo, ImageError> {
        let record = self
            .get(name)?
            .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
        let raw = self.inner.content.read(&record.config)?;
        let config = serde_json::from_slice(&raw).map_err(|source| ImageError::Config {
            digest: record.config.clone(),
            source,
        })?;
        Ok(ImageInfo { record, config })
    }

    /// Removes the name (or, given an image ID / digest, every name with it); blobs and snapshots
    /// stay until [`ImageService::gc`]. `false` if nothing matched.
    pub async fn remove(&self, name: &str) -> Result<bool, ImageError> {
        let names = match Digest::parse(name) {
            Ok(d) => self
                .find_by_digest(&d)?
                .into_iter()
                .map(|r| r.name)
                .collect(),
            Err(_) => vec![ImageRef::parse(name)?.to_string()],
        };
        let _w = self.inner.lock(true).await?;
        let mut any = false;
        for n in names {
            any |= self.inner.records.remove(&n)?;
        }
        Ok(any)
    }

    /// Container directories whose prepared rootfs uses the image `name` (canonical name). A lease
    /// whose directory is gone (left by a crashed agent) does not count.
    pub fn users(&self, name: &str) -> Result<Vec<PathBuf>, ImageError> {
        Ok(self
            .inner
            .snapshots
            .lease_records()?
            .into_iter()
            .filter(|(dir, image, _)| image == name && dir.exists())
            .map(|(dir, _, _)| dir)
            .collect())
    }

    /// The operator's remove (`crictl rmi`): `name` (or an image ID / digest: every name with it)
    /// must exist ([`ImageError::NotFound`]) and, unless `force`, no container may use it
    /// ([`ImageError::InUse`]). Returns the names removed; content stays until [`ImageService::gc`].
    pub async fn remove_image(&self, name: &str, force: bool) -> Result<Vec<String>, ImageError> {
        let _w = self.inner.lock(true).await?;
        let names: Vec<String> = match Digest::parse(name) {
            Ok(d) => self
                .find_by_digest(&d)?
                .into_iter()
                .map(|r| r.name)
                .collect(),
            Err(_) => self.get(name)?.into_iter().map(|r| r.name).collect(),
        };
        if names.is_empty() {
            return Err(ImageError::NotFound(name.to_string()));
        }
        if !force {
            for n in &names {
                if let Some(container) = self.users(n)?.into_iter().next() {
                    return Err(ImageError::InUse {
                        image: n.clone(),
                        container,
                    });
                }
            }
        }
        for n in &names {
            self.inner.records.remove(n)?;
        }
        Ok(names)
    }

    /// Deletes every blob and snapshot no image record (or prepared rootfs) references.
    pub async fn gc(&self) -> Result<GcReport, ImageError> {
        let _w = self.inner.lock(true).await?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let (blobs, snaps, leased) = inner.referenced()?;
            let mut rep = GcReport::default();
            for (d, size) in inner.content.list()? {
                if !blobs.contains(&d) {
                    inner.content.delete(&d)?;
                    rep.bytes_freed += size;
                    rep.blobs_removed.push(d);
                }
            }
            for (d, size) in inner.snapshots.list()? {
                if !snaps.contains(&d) && !leased.contains(&d) {
                    inner.snapshots.delete(&d)?;
                    rep.bytes_freed += size;
                    rep.snapshots_removed.push(d);
                }
            }
            tracing::info!(
                blobs = rep.blobs_removed.len(),
                snapshots = rep.snapshots_removed.len(),
                bytes = rep.bytes_freed,
                "image gc"
            );
            Ok(rep)
        })
        .await?
    }

    /// Frees space the way kubelet's image GC does: while the store (blobs + snapshots) is larger
    /// than `target_bytes`, removes the least recently used image (by `last_used`, else `created`)
    /// that no prepared rootfs uses and that is older than `min_age`, then collects its content.
    /// Returns the names removed and the combined GC report.
    pub async fn prune(
        &self,
        target_bytes: u64,
        min_age: std::time::Duration,
    ) -> Result<(Vec<String>, GcReport), ImageError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut removed = Vec::new();
        let mut total = self.gc().await?;
        loop {
            let du = self.disk_usage().await?;
            if du.blob_bytes + du.snapshot_bytes <= target_bytes {
                break;
            }
            let in_use: BTreeSet<String> = self
                .inner
                .snapshots
                .leases()?
                .into_iter()
                .map(|(image, _)| image)
                .collect();
            let victim = self
                .list()?
                .into_iter()
                .filter(|r| !in_use.contains(&r.name))
                .filter(|r| now.saturating_sub(r.created) >= min_age.as_secs())
                .min_by_key(|r| (r.last_used.max(r.created), r.name.clone()));
            let Some(victim) = victim else { break };
            self.remove(&victim.name).await?;
            let rep = self.gc().await?;
            total.bytes_freed += rep.bytes_freed;
            total.blobs_removed.extend(rep.blobs_removed);
            total.snapshots_removed.extend(rep.snapshots_removed);
            removed.push(victim.name);
        }
        Ok((removed, total))
    }

    /// Current disk usage.
    pub async fn disk_usage(&self) -> Result<DiskUsage, ImageError> {
        let _r = self.inner.lock(false).await?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let (blobs, snaps, leased) = inner.referenced()?;
            let mut du = DiskUsage {
                images: inner.records.list()?.len(),
                ..Default::default()
            };
            for (d, size) in inner.content.list()? {
                du.blobs += 1;
                du.blob_bytes += size;
                if !blobs.contains(&d) {
                    du.reclaimable_bytes += size;
                }
            }
            for (d, size) in inner.snapshots.list()? {
                du.snapshots += 1;
                du.snapshot_bytes += size;
                if !snaps.contains(&d) && !leased.contains(&d) {
                    du.reclaimable_bytes += size;
                }
            }
            Ok(du)
        })
        .await?
    }

    /// Mounts the image's layers plus `<container_dir>/{upper,work}` at `<container_dir>/rootfs`
    /// (root only). Missing snapshots are re-unpacked from their blobs first.
    #[cfg(target_os = "linux")]
    pub async fn prepare_rootfs(
        &self,
        name: &str,
        container_dir: &Path,
    ) -> Result<OverlayMount, ImageError> {
        // Lock first: a concurrent remove must not slip between lookup and use.
        let _r = self.inner.lock(false).await?;
        let record = self
            .get(name)?
            .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
        let inner = self.inner.clone();
        let dir = container_dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let diff_ids = record.diff_ids();
            for (i, l) in record.layers.iter().enumerate() {
                let lowers = inner.snapshots.lowers(&diff_ids[..i]);
                inner.snapshots.ensure(
                    &l.digest,
                    &inner.content.path(&l.digest),
                    &l.diff_id,
                    Some(&lowers),
                )?;
            }
            let m = inner
                .snapshots
                .mount(&record.name, &record.diff_ids(), &dir)?;
            inner.touch(record)?;
            Ok(m)
        })
        .await?
    }

    /// The fallback where overlayfs is unavailable: copies the image's layers into a plain
    /// `<container_dir>/rootfs` (see [`crate::flatten`]); returns its path. Costs a full copy of the
    /// image per container. Released with [`ImageService::release_rootfs`] too.
    pub async fn prepare_rootfs_copy(
        &self,
        name: &str,
        container_dir: &Path,
    ) -> Result<PathBuf, ImageError> {
        // Lock first: a concurrent remove must not slip between lookup and use.
        let _r = self.inner.lock(false).await?;
        let record = self
            .get(name)?
            .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
        let inner = self.inner.clone();
        let dir = container_dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut layers = Vec::new();
            let diff_ids = record.diff_ids();
            for (i, l) in record.layers.iter().enumerate() {
                let lowers = inner.snapshots.lowers(&diff_ids[..i]);
                inner.snapshots.ensure(
                    &l.digest,
                    &inner.content.path(&l.digest),
                    &l.diff_id,
                    Some(&lowers),
                )?;
                layers.push(inner.snapshots.path(&l.diff_id));
            }
            // The copy needs no snapshot after it is made, but the image counts as in use.
            inner.snapshots.write_lease(&dir, &record.name, &[])?;
            let rootfs = crate::flatten::flatten(&layers, &dir)?;
            inner.touch(record)?;
            Ok(rootfs)
        })
        .await?
    }

    /// Unmounts and removes what [`ImageService::prepare_rootfs`] (or
    /// [`ImageService::prepare_rootfs_copy`]) created, and drops its lease.
    #[cfg(target_os = "linux")]
    pub async fn release_rootfs(&self, container_dir: &Path) -> Result<(), ImageError> {
        let inner = self.inner.clone();
        let dir = container_dir.to_path_buf();
        tokio::task::spawn_blocking(move || Ok(inner.snapshots.unmount(&dir)?)).await?
    }
}

/// A held store lock (released when dropped: the descriptor closes).
pub(crate) struct StoreLock {
    _file: std::fs::File,
}

impl Inner {
    /// Takes the store lock, shared or exclusive; waits (off the async threads) while it conflicts.
    pub(crate) async fn lock(&self, exclusive: bool) -> Result<StoreLock, ImageError> {
        let path = self.lock_path.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd;
            let io = |source| ContentError::Io {
                op: "lock",
                path: path.clone(),
                source,
            };
            // A separate open per lock: flock locks belong to the open file description, so two
            // operations in one process exclude each other like two processes do.
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io)?;
            let op = if exclusive {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            };
            loop {
                // SAFETY: a valid open descriptor.
                if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                    return Ok(StoreLock { _file: file });
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(io(e).into());
                }
            }
        })
        .await?
    }

    /// Records that a container was just created from the image.
    fn touch(&self, mut record: ImageRecord) -> Result<(), ImageError> {
        record.last_used = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(self.records.put(&record)?)
    }

    /// Serialises work on one blob across concurrent pulls.
    pub(crate) async fn lock_blob(&self, d: &Digest) -> Result<BlobGuard<'_>, ImageError> {
        let m = self
            .blob_locks
            .lock()
            .map_err(|_| poisoned())?
            .entry(d.clone())
            .or_default()
            .clone();
        let guard = m.clone().lock_owned().await;
        Ok(BlobGuard {
            inner: self,
            digest: d.clone(),
            lock: m,
            _guard: Some(guard),
        })
    }

    /// Referenced blobs, referenced snapshots, leased snapshots.
    #[allow(clippy::type_complexity)]
    fn referenced(
        &self,
    ) -> Result<(BTreeSet<Digest>, BTreeSet<Digest>, BTreeSet<Digest>), ImageError> {
        let (b, s) = ref_counts(&self.records.list()?);
        let leased = self.snapshots.leased()?.into_iter().collect();
        Ok((b.into_keys().collect(), s.into_keys().collect(), leased))
    }

    /// registries.yaml settings for an endpoint: its host, else (for the default endpoint) the
    /// registry name, else `"*"`.
    fn host_config(&self, ep: &Endpoint, registry: &str) -> Option<&HostConfig> {
        let c = &self.registries.configs;
        match c.get(&ep.host) {
            Some(x) => x.as_ref(),
            None if ep.is_default && c.contains_key(registry) => {
                c.get(registry).and_then(Option::as_ref)
            }
            None => self.registries.host_config("*"),
        }
    }

    /// A registry client for the endpoint (cached: keeps its token cache across pulls).
    pub(crate) fn client(
        &self,
        ep: &Endpoint,
        registry: &str,
        auth: &RegistryAuth,
    ) -> Result<Client, ImageError> {
        let fingerprint = match auth {
            RegistryAuth::Anonymous => Digest::of(b"anonymous"),
            RegistryAuth::Basic(u, p) => Digest::of(format!("basic\0{u}\0{p}").as_bytes()),
            RegistryAuth::Bearer(t) => Digest::of(format!("bearer\0{t}").as_bytes()),
        };
        let key = (ep.https, ep.host.clone(), fingerprint);
        if let Some((c, _)) = self.clients.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(c.clone());
        }
        let tls_err = |reason: String| ImageError::Tls {
            host: ep.host.clone(),
            reason,
        };
        let mut cfg = ClientConfig {
            protocol: if ep.https {
                ClientProtocol::Https
            } else {
                ClientProtocol::Http
            },
            platform_resolver: None,
            max_concurrent_download: self.max_downloads,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            ..Default::default()
        };
        let mut tunnel = None;
        if let Some(tls) = self.host_config(ep, registry).and_then(|h| h.tls.as_ref()) {
            if tls.cert_file.is_some() || tls.key_file.is_some() {
                // The client speaks plain HTTP to the tunnel, which adds the identity.
                let t = crate::mtls::Tunnel::start(&ep.host, ep.https, tls)
                    .map_err(|e| tls_err(e.to_string()))?;
                cfg.protocol = ClientProtocol::Http;
                cfg.http_proxy = Some(t.proxy_url.clone());
                tunnel = Some(Arc::new(t));
            } else if let Some(ca) = &tls.ca_file {
                let data = std::fs::read(ca)
                    .map_err(|e| tls_err(format!("read ca_file {}: {e}", ca.display())))?;
                cfg.extra_root_certificates.push(Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                });
            }
            cfg.accept_invalid_certificates = tls.insecure_skip_verify;
        }
        let client = Client::new(cfg);
        self.clients
            .lock()
            .map_err(|_| poisoned())?
            .insert(key, (client.clone(), tunnel));
        Ok(client)
    }

    /// Credentials for an endpoint: pull secrets, then registries.yaml, then anonymous.
    pub(crate) fn auth(
        &self,
        ep: &Endpoint,
        registry: &str,
        keyring: &Keyring,
    ) -> Result<RegistryAuth, ImageError> {
        if let Some(c) = keyring.get(&ep.host).or_else(|| {
            if ep.is_default {
                keyring.get(registry)
            } else {
                None
            }
        }) {
            return Ok(c.to_registry_auth());
        }
        if let Some(a) = self.host_config(ep, registry).and_then(|h| h.auth.as_ref())
            && let Some(c) = auth::from_registries_auth(&ep.host, a)?
        {
            return Ok(c.to_registry_auth());
        }
        Ok(RegistryAuth::Anonymous)
    }
}

/// Held while a blob is being fetched; drops its map entry when nobody else waits on it.
pub(crate) struct BlobGuard<'a> {
    inner: &'a Inner,
    digest: Digest,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for BlobGuard<'_> {
    fn drop(&mut self) {
        self._guard.take();
        if let Ok(mut map) = self.inner.blob_locks.lock()
            // The map's reference plus ours: nobody else holds or waits for this lock.
            && Arc::strong_count(&self.lock) <= 2
        {
            map.remove(&self.digest);
        }
    }
}

/// `err: cause: cause...` on one line, skipping causes already contained in the previous text.
pub(crate) use r3s_config::exit::chain as error_chain;

fn poisoned() -> ImageError {
    ImageError::Tls {
        host: String::new(),
        reason: "client cache lock poisoned".into(),
    }
}
