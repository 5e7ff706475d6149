//! Air-gap import: OCI image-layout tarballs and `docker save` tarballs (plain, `.tar.gz` or
//! `.tar.zst`, detected from the bytes) found in a directory, as k3s does at agent start with
//! `<data-dir>/agent/images/`.
//!
//! Each tarball is read once, streaming: `blobs/sha256/<hex>` files go straight into the content
//! store (verified against the digest in their name), other files (`docker save`'s `<id>/layer.tar`)
//! are stored under what they hash to, JSON documents are kept in memory. Then the image names are
//! taken from `manifest.json` `RepoTags` (docker save; preferred when present) or from the
//! `io.containerd.image.name` / `org.opencontainers.image.ref.name` annotations of `index.json`,
//! layers are unpacked into snapshots (diff IDs verified) and records written.
//!
//! Skipping: `<root>/imports/` remembers each file's content digest (and, per path, its size and
//! mtime, so an unchanged directory is skipped with one `stat` per file, without reading anything).
//! A tarball that failed is remembered too and reported again without being re-read until it
//! changes. A corrupt tarball never stops the others. A tarball whose images were removed since
//! (`r3s-agent images rm`) is imported again, as k3s would at its next start.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::content::ContentError;
use crate::digest::{Digest, Hasher};
use crate::manifest::{self, DOCKER_MANIFEST, Descriptor, Parsed};
use crate::records::{ImageRecord, LayerRecord};
use crate::reference::ImageRef;
use crate::service::{ImageError, ImageService, Inner};
use crate::snapshot::write_atomic;
use crate::unpack;

/// Import failures (one tarball).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a readable tar archive: {source}")]
    Tar { path: PathBuf, source: io::Error },
    #[error("{path}: entry {entry:?} escapes the archive")]
    Traversal { path: PathBuf, entry: String },
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
}

/// What [`ImageService::import_dir`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// File → names imported.
    pub imported: Vec<(PathBuf, Vec<String>)>,
    /// Unchanged files already imported.
    pub skipped: Vec<PathBuf>,
    /// File → error (also for files that failed before and did not change).
    pub failed: Vec<(PathBuf, String)>,
}

#[derive(Serialize, Deserialize)]
struct ContentMarker {
    images: Vec<String>,
    error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StatMarker {
    size: u64,
    mtime_ns: i128,
    content: Digest,
}

/// Files an import directory may hold.
fn is_archive(p: &Path) -> bool {
    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst"]
        .iter()
        .any(|s| n.ends_with(s))
}

impl ImageService {
    /// Imports every tarball in `dir` (sorted by name), skipping unchanged ones. A missing
    /// directory imports nothing.
    pub async fn import_dir(&self, dir: &Path) -> Result<ImportReport, ImageError> {
        let _r = self.inner.lock(false).await?;
        let inner = self.inner.clone();
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || import_dir(&inner, &dir)).await?
    }

    /// The agent's start-up import of its air-gap directory (`<data-dir>/agent/images/`, see
    /// [`crate::airgap_dir`]): [`ImageService::import_dir`], with every outcome logged and nothing
    /// fatal (a node with a bad tarball still starts; the tarball is reported at each start until
    /// it changes).
    pub async fn import_airgap(&self, dir: &Path) -> ImportReport {
        let started = std::time::Instant::now();
        match self.import_dir(dir).await {
            Ok(rep) => {
                for (file, error) in &rep.failed {
                    tracing::warn!(file = %file.display(), %error, "air-gap image archive skipped");
                }
                if !rep.imported.is_empty() || !rep.failed.is_empty() {
                    tracing::info!(
                        dir = %dir.display(),
                        imported = rep.imported.len(),
                        unchanged = rep.skipped.len(),
                        failed = rep.failed.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "air-gap image import"
                    );
                }
                rep
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "air-gap image import failed");
                ImportReport::default()
            }
        }
    }

    /// Imports one tarball unconditionally; returns the records written.
    pub async fn import_file(&self, path: &Path) -> Result<Vec<ImageRecord>, ImageError> {
        let _r = self.inner.lock(false).await?;
        let inner = self.inner.clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || import_archive(&inner, &path)).await?
    }
}

fn import_dir(inner: &Inner, dir: &Path) -> Result<ImportReport, ImageError> {
    let mut report = ImportReport::default();
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && is_archive(p))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(source) => {
            return Err(ImportError::Io {
                path: dir.into(),
                source,
            }
            .into());
        }
    };
    files.sort();
    let markers = inner.root.join("imports");
    fs::create_dir_all(&markers).map_err(|source| ImportError::Io {
        path: markers.clone(),
        source,
    })?;
    for file in files {
        let io_fail = |source| ImportError::Io {
            path: file.clone(),
            source,
        };
        let meta = fs::metadata(&file).map_err(io_fail)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        let stat_path = markers.join(format!(
            "path-{}.json",
            Digest::of(file.as_os_str().as_encoded_bytes()).hex()
        ));
        let known: Option<StatMarker> = fs::read(&stat_path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok());
        let content = match known {
            Some(k) if k.size == meta.len() && k.mtime_ns == mtime_ns => k.content,
            _ => {
                let c = hash_file(&file).map_err(io_fail)?;
                let m = StatMarker {
                    size: meta.len(),
                    mtime_ns,
                    content: c.clone(),
                };
                if let Ok(body) = serde_json::to_vec(&m) {
                    let _ = write_atomic(&stat_path, &body);
                }
                c
            }
        };
        let content_path = markers.join(format!("{}.json", content.hex()));
        if let Some(m) = fs::read(&content_path)
            .ok()
            .and_then(|d| serde_json::from_slice::<ContentMarker>(&d).ok())
        {
            match m.error {
                Some(e) => {
                    report.failed.push((file, e));
                    continue;
                }
                // Unless an operator removed one of its images since: then import it again.
                None if m
                    .images
                    .iter()
                    .all(|n| matches!(inner.records.get(n), Ok(Some(_)))) =>
                {
                    report.skipped.push(file);
                    continue;
                }
                None => {}
            }
        }
        let (marker, outcome) = match import_archive(inner, &file) {
            Ok(recs) => {
                let names: Vec<String> = recs.into_iter().map(|r| r.name).collect();
                tracing::info!(file = %file.display(), images = ?names, "imported image archive");
                (
                    ContentMarker {
                        images: names.clone(),
                        error: None,
                    },
                    Ok(names),
                )
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "image archive import failed");
                (
                    ContentMarker {
                        images: vec![],
                        error: Some(e.to_string()),
                    },
                    Err(e.to_string()),
                )
            }
        };
        if let Ok(body) = serde_json::to_vec(&marker) {
            let _ = write_atomic(&content_path, &body);
        }
        match outcome {
            Ok(names) => report.imported.push((file, names)),
            Err(e) => report.failed.push((file, e)),
        }
    }
    Ok(report)
}

fn hash_file(p: &Path) -> io::Result<Digest> {
    let mut f = fs::File::open(p)?;
    let mut h = Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish().0);
        }
        h.update(&buf[..n]);
    }
}

/// What one pass over an archive collected.
#[derive(Default)]
struct Archive {
    /// Small files (JSON, oci-layout) by normalised path.
    docs: BTreeMap<String, Vec<u8>>,
    /// Other files by path → blob digest and size.
    blobs: BTreeMap<String, (Digest, u64)>,
    /// Symlinks: path → target path (normalised, inside the archive).
    links: BTreeMap<String, String>,
}

impl Archive {
    fn resolve<'a>(&'a self, mut p: &'a str) -> &'a str {
        for _ in 0..16 {
            match self.links.get(p) {
                Some(t) => p = t,
                None => break,
            }
        }
        p
    }

    fn doc(&self, p: &str) -> Option<&[u8]> {
        self.docs.get(self.resolve(p)).map(Vec::as_slice)
    }

    fn blob(&self, p: &str) -> Option<&(Digest, u64)> {
        self.blobs.get(self.resolve(p))
    }
}

const DOC_LIMIT: u64 = 16 << 20;

fn import_archive(inner: &Inner, path: &Path) -> Result<Vec<ImageRecord>, ImageError> {
    let f = fs::File::open(path).map_err(|source| ImportError::Io {
        path: path.into(),
        source,
    })?;
    let tar_err = |source| ImportError::Tar {
        path: path.into(),
        source,
    };
    let reader = unpack::decompress(f).map_err(tar_err)?;
    let mut ar = Archive::default();
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path().map_err(tar_err)?.into_owned();
        let name = normalize(&raw).ok_or_else(|| ImportError::Traversal {
            path: path.into(),
            entry: raw.display().to_string(),
        })?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name().map_err(tar_err)? else {
                continue;
            };
            // Symlink targets are relative to the link's directory, hard links to the archive root.
            let base = if kind.is_symlink() {
                Path::new(&name).parent().unwrap_or(Path::new(""))
            } else {
                Path::new("")
            };
            let joined = base.join(&target);
            let t = normalize(&joined).ok_or_else(|| ImportError::Traversal {
                path: path.into(),
                entry: target.display().to_string(),
            })?;
            ar.links.insert(name, t);
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry.header().size().map_err(tar_err)?;
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let digest =
                Digest::parse(&format!("sha256:{hex}")).map_err(|_| ImportError::Format {
                    path: path.into(),
                    what: format!("blob file name {name:?} is not a sha256 digest"),
                })?;
            if !inner.content.has(&digest, Some(size)) {
                let mut ing = inner.content.ingest(digest.clone(), Some(size))?;
                copy_into(&mut entry, &mut ing).map_err(tar_err)??;
                ing.commit()?;
            }
            if size <= DOC_LIMIT && !name.contains("layer") {
                // Small blobs may be manifests/configs: keep a copy for lookup by path.
                if let Ok(data) = inner.content.read(&digest)
                    && data.first() == Some(&b'{')
                {
                    ar.docs.insert(name.clone(), data);
                }
            }
            ar.blobs.insert(name, (digest, size));
        } else if (name.ends_with(".json") || name == "oci-layout" || name == "repositories")
            && size <= DOC_LIMIT
        {
            let mut data = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut data).map_err(tar_err)?;
            ar.docs.insert(name, data);
        } else {
            let mut ing = inner.content.ingest_any()?;
            copy_into(&mut entry, &mut ing).map_err(tar_err)??;
            let (digest, len) = ing.commit()?;
            ar.blobs.insert(name, (digest, len));
        }
    }
    let images = if ar.docs.contains_key("manifest.json") {
        docker_images(inner, path, &ar)?
    } else if ar.docs.contains_key("index.json") {
        oci_images(inner, path, &ar)?
    } else {
        return Err(ImportError::Format {
            path: path.into(),
            what: "neither manifest.json nor index.json found".into(),
        }
        .into());
    };
    if images.is_empty() {
        return Err(ImportError::Format {
            path: path.into(),
            what: "no named image in archive".into(),
        }
        .into());
    }
    let mut out = Vec::new();
    for (name, target, index, manifest_digest) in images {
        out.push(record_image(inner, &name, target, index, manifest_digest)?);
    }
    Ok(out)
}

fn copy_into<R: Read>(
    r: &mut R,
    ing: &mut crate::content::Ingest,
) -> io::Result<Result<(), ContentError>> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(Ok(()));
        }
        if let Err(e) = ing.write(&buf[..n]) {
            return Ok(Err(e));
        }
    }
}

fn normalize(p: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str()?.to_string()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

type Found = (String, Digest, Option<Digest>, Digest);

#[derive(Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// `docker save`: synthesises a Docker schema 2 manifest per entry.
fn docker_images(inner: &Inner, path: &Path, ar: &Archive) -> Result<Vec<Found>, ImageError> {
    let fmt = |what: String| {
        ImageError::from(ImportError::Format {
            path: path.into(),
            what,
        })
    };
    let entries: Vec<DockerSaveEntry> =
        serde_json::from_slice(ar.doc("manifest.json").unwrap_or_default())
            .map_err(|e| fmt(format!("manifest.json: {e}")))?;
    let mut out = Vec::new();
    for e in entries {
        let config = ar
            .doc(&e.config)
            .ok_or_else(|| fmt(format!("config {} missing", e.config)))?;
        let config_digest = Digest::of(config);
        inner.content.write(&config_digest, None, config)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let (digest, size) = ar
                .blob(l)
                .ok_or_else(|| fmt(format!("layer {l} missing")))?;
            let head = fs::File::open(inner.content.path(digest)).and_then(|mut f| {
                let mut b = [0u8; 4];
                let n = f.read(&mut b)?;
                Ok(b[..n].to_vec())
            });
            let media_type = match head {
                Ok(h) if h.starts_with(&[0x1f, 0x8b]) => {
                    "application/vnd.docker.image.rootfs.diff.tar.gzip"
                }
                Ok(h) if h.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) => {
                    "application/vnd.oci.image.layer.v1.tar+zstd"
                }
                _ => "application/vnd.docker.image.rootfs.diff.tar",
            };
            layers
                .push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config_digest, "size": config.len()},
            "layers": layers,
        }))
        .map_err(|e| fmt(e.to_string()))?;
        let md = Digest::of(&manifest);
        inner.content.write(&md, None, &manifest)?;
        for tag in e.repo_tags.unwrap_or_default() {
            let name = ImageRef::parse(&tag)?.to_string();
            out.push((name, md.clone(), None, md.clone()));
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

/// OCI image layout: names from annotations.
fn oci_images(inner: &Inner, path: &Path, ar: &Archive) -> Result<Vec<Found>, ImageError> {
    let fmt = |what: String| {
        ImageError::from(ImportError::Format {
            path: path.into(),
            what,
        })
    };
    let index: OciIndex = serde_json::from_slice(ar.doc("index.json").unwrap_or_default())
        .map_err(|e| fmt(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    for d in index.manifests {
        let ann = d.annotations.clone().unwrap_or_default();
        let name = ann
            .get("io.containerd.image.name")
            .or_else(|| {
                ann.get("org.opencontainers.image.ref.name")
                    .filter(|n| n.contains('/'))
            })
            .ok_or_else(|| {
                fmt(format!(
                    "manifest {} has no full image name annotation",
                    d.digest
                ))
            })?;
        let name = ImageRef::parse(name)?.to_string();
        if !inner.content.has(&d.digest, Some(d.size)) {
            return Err(fmt(format!(
                "blob {} ({} bytes) missing from archive",
                d.digest, d.size
            )));
        }
        let bytes = inner.content.read(&d.digest)?;
        match manifest::parse(&d.digest, &bytes, Some(&d.media_type))? {
            Parsed::Image(_) => out.push((name, d.digest.clone(), None, d.digest.clone())),
            Parsed::Index { manifests } => {
                let m = manifest::select_platform(&d.digest, &manifests, &inner.platform)?;
                out.push((
                    name,
                    d.digest.clone(),
                    Some(d.digest.clone()),
                    m.digest.clone(),
                ));
            }
        }
    }
    Ok(out)
}

/// Checks the manifest's blobs are present, unpacks layers, writes the record.
fn record_image(
    inner: &Inner,
    name: &str,
    target: Digest,
    index: Option<Digest>,
    manifest_digest: Digest,
) -> Result<ImageRecord, ImageError> {
    let bytes = inner.content.read(&manifest_digest)?;
    let Parsed::Image(m) = manifest::parse(&manifest_digest, &bytes, None)? else {
        return Err(manifest::ManifestError::Shape {
            digest: manifest_digest,
        }
        .into());
    };
    let config = inner.content.read(&m.config.digest)?;
    let diff_ids = manifest::diff_ids(&m.config.digest, &config, m.layers.len())?;
    let mut layers = Vec::new();
    for (i, (l, diff_id)) in m.layers.iter().zip(&diff_ids).enumerate() {
        if !inner.content.has(&l.digest, Some(l.size)) {
            return Err(ContentError::NotFound(l.digest.clone()).into());
        }
        let lowers = inner.snapshots.lowers(&diff_ids[..i]);
        inner.snapshots.ensure(
            &l.digest,
            &inner.content.path(&l.digest),
            diff_id,
            Some(&lowers),
        )?;
        let diff_id = diff_id.clone();
        layers.push(LayerRecord {
            digest: l.digest.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
            diff_id,
        });
    }
    #[derive(Deserialize)]
    struct Arch {
        architecture: String,
        os: String,
        variant: Option<String>,
    }
    let platform = serde_json::from_slice::<Arch>(&config)
        .map(|a| crate::platform::Platform::new(&a.os, &a.architecture, a.variant.as_deref()))
        .unwrap_or_else(|_| inner.platform.clone());
    let record = ImageRecord {
        name: name.to_string(),
        target,
        manifest: manifest_digest,
        index,
        config: m.config.digest.clone(),
        size: m.config.size + layers.iter().map(|l| l.size).sum::<u64>(),
        layers,
        platform,
        last_used: 0,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    inner.records.put(&record)?;
    Ok(record)
}
