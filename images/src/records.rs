//! Image records: what a name points at, persisted as one small JSON file per name under
//! `<root>/images/<sha256(name) hex>.json` (written atomically).
//!
//! A record lists every blob and snapshot its image needs, so reference counts are derived from
//! the records ([`ref_counts`]) instead of being stored: they can never drift from the truth after a
//! crash, and GC removes exactly what no record mentions.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;
use crate::snapshot::write_atomic;

/// Record store failures.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("image record {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// Uncompressed digest: the snapshot key.
    pub diff_id: Digest,
}

/// An image known to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Canonical reference (`docker.io/library/nginx:latest`).
    pub name: String,
    /// Digest the name resolved to: the index/list for multi-arch images, else the manifest
    /// (Kubernetes' "repo digest").
    pub target: Digest,
    /// The platform manifest used.
    pub manifest: Digest,
    /// The index the manifest was chosen from, if any.
    pub index: Option<Digest>,
    pub config: Digest,
    pub layers: Vec<LayerRecord>,
    pub platform: Platform,
    /// Compressed size: config + layers (what a pull downloads).
    pub size: u64,
    /// Unix seconds of the pull or import.
    pub created: u64,
    /// Unix seconds a container rootfs was last prepared from it (0: never): for the agent's
    /// least-recently-used image GC, as kubelet does.
    #[serde(default)]
    pub last_used: u64,
}

impl ImageRecord {
    /// Blobs this image needs.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest, &self.config]
            .into_iter()
            .chain(self.index.iter())
            .chain(self.layers.iter().map(|l| &l.digest))
    }

    /// `<registry>/<repository>@<target digest>`: the "repo digest" CRI reports.
    pub fn repo_digest(&self) -> String {
        match crate::reference::ImageRef::parse(&self.name) {
            Ok(r) => format!("{}/{}@{}", r.registry(), r.repository(), self.target),
            Err(_) => format!("{}@{}", self.name, self.target),
        }
    }

    /// Snapshot keys, bottom layer first.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}

/// Reference counts: how many records use each blob and each snapshot.
pub fn ref_counts(records: &[ImageRecord]) -> (BTreeMap<Digest, usize>, BTreeMap<Digest, usize>) {
    let mut blobs = BTreeMap::new();
    let mut snaps = BTreeMap::new();
    for r in records {
        for b in r.blobs() {
            *blobs.entry(b.clone()).or_insert(0) += 1;
        }
        for l in &r.layers {
            *snaps.entry(l.diff_id.clone()).or_insert(0) += 1;
        }
    }
    (blobs, snaps)
}

/// The directory of records.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    pub fn new(root: &Path) -> Result<Self, RecordError> {
        let dir = root.join("images");
        fs::create_dir_all(&dir).map_err(|source| RecordError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    pub fn put(&self, r: &ImageRecord) -> Result<(), RecordError> {
        let path = self.path(&r.name);
        let body = serde_json::to_vec_pretty(r).map_err(|source| RecordError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &body).map_err(|source| RecordError::Io {
            op: "write",
            path,
            source,
        })
    }

    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>, RecordError> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(d) => serde_json::from_slice(&d)
                .map(Some)
                .map_err(|source| RecordError::Json { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RecordError::Io {
                op: "read",
                path,
                source,
            }),
        }
    }

    /// Removes the record; `false` if there was none.
    pub fn remove(&self, name: &str) -> Result<bool, RecordError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(RecordError::Io {
                op: "remove",
                path,
                source,
            }),
        }
    }

    /// All records, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>, RecordError> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(|source| RecordError::Io {
            op: "list",
            path: self.dir.clone(),
            source,
        })?;
        for e in rd.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                // Records are written atomically, so an unreadable one means disk damage: skip it
                // (its image is gone; GC may reclaim its content) rather than fail every listing.
                match fs::read(&path).map(|d| serde_json::from_slice::<ImageRecord>(&d)) {
                    Ok(Ok(r)) => out.push(r),
                    Ok(Err(e)) => {
                        tracing::warn!(path = %path.display(), error = %e, "skipping corrupt image record")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "skipping unreadable image record")
                    }
                }
            }
        }
        out.sort_by(|a: &ImageRecord, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
