//! The manifest formats a pull or an import reads: OCI image index / Docker manifest list, OCI image
//! manifest / Docker schema 2 manifest, and the `rootfs.diff_ids` of an image config.
//!
//! Parsing is deliberately lenient about fields r3s does not use and strict about what it does:
//! digests must be valid sha256, layer media types must be ones r3s can unpack. Docker schema 1
//! (signed) manifests are refused with a clear error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// What a manifest request accepts.
pub const ACCEPTED: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Manifest problems.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {digest}: not valid JSON: {source}")]
    Json {
        digest: Digest,
        source: serde_json::Error,
    },
    #[error(
        "manifest {digest}: unsupported media type {media_type:?} (Docker schema 1 and non-image artifacts are not supported)"
    )]
    Unsupported { digest: Digest, media_type: String },
    #[error(
        "manifest {digest}: neither an image manifest (config+layers) nor an index (manifests)"
    )]
    Shape { digest: Digest },
    #[error(
        "manifest {manifest}: layer {layer} has media type {media_type:?}, which r3s cannot unpack"
    )]
    LayerType {
        manifest: Digest,
        layer: Digest,
        media_type: String,
    },
    #[error("index {digest}: no manifest for platform {wanted}; available: {available}")]
    NoPlatform {
        digest: Digest,
        wanted: Platform,
        available: String,
    },
    #[error("config {digest}: {reason}")]
    Config { digest: Digest, reason: String },
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The `platform` object of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformJson {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Parsed {
    Index { manifests: Vec<Descriptor> },
    Image(ImageManifest),
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone)]
pub struct ImageManifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Parses `bytes` (whose digest is `digest`); `header_type` is the Content-Type if known.
pub fn parse(
    digest: &Digest,
    bytes: &[u8],
    header_type: Option<&str>,
) -> Result<Parsed, ManifestError> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        digest: digest.clone(),
        source,
    })?;
    let media_type = raw
        .media_type
        .clone()
        .or_else(|| header_type.map(str::to_string));
    if raw.schema_version == Some(1) {
        return Err(ManifestError::Unsupported {
            digest: digest.clone(),
            media_type: media_type.unwrap_or_else(|| "schemaVersion 1".into()),
        });
    }
    if let Some(mt) = &media_type
        && !ACCEPTED.contains(&mt.as_str())
    {
        return Err(ManifestError::Unsupported {
            digest: digest.clone(),
            media_type: mt.clone(),
        });
    }
    match (raw.manifests, raw.config, raw.layers) {
        (Some(manifests), None, _) => Ok(Parsed::Index { manifests }),
        (None, Some(config), layers) => {
            let layers = layers.unwrap_or_default();
            for l in &layers {
                if !layer_supported(&l.media_type) {
                    return Err(ManifestError::LayerType {
                        manifest: digest.clone(),
                        layer: l.digest.clone(),
                        media_type: l.media_type.clone(),
                    });
                }
            }
            Ok(Parsed::Image(ImageManifest {
                media_type: media_type.unwrap_or_else(|| OCI_MANIFEST.into()),
                config,
                layers,
            }))
        }
        _ => Err(ManifestError::Shape {
            digest: digest.clone(),
        }),
    }
}

/// Layer media types r3s unpacks (compression is detected from the bytes).
pub fn layer_supported(media_type: &str) -> bool {
    media_type.is_empty()
        || media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

/// Picks the entry of an index for `platform`.
pub fn select_platform<'a>(
    index_digest: &Digest,
    manifests: &'a [Descriptor],
    platform: &Platform,
) -> Result<&'a Descriptor, ManifestError> {
    let found = manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| platform.matches(&p.os, &p.architecture, p.variant.as_deref()))
            && (d.media_type.is_empty()
                || d.media_type == OCI_MANIFEST
                || d.media_type == DOCKER_MANIFEST)
    });
    found.ok_or_else(|| ManifestError::NoPlatform {
        digest: index_digest.clone(),
        wanted: platform.clone(),
        available: manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| Platform::new(&p.os, &p.architecture, p.variant.as_deref()).to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: Rootfs,
}

#[derive(Deserialize)]
struct Rootfs {
    diff_ids: Vec<Digest>,
}

/// The uncompressed layer digests from an image config, checked against the manifest's layer count.
pub fn diff_ids(
    config_digest: &Digest,
    config: &[u8],
    layers: usize,
) -> Result<Vec<Digest>, ManifestError> {
    let c: ConfigRootfs = serde_json::from_slice(config).map_err(|e| ManifestError::Config {
        digest: config_digest.clone(),
        reason: e.to_string(),
    })?;
    if c.rootfs.diff_ids.len() != layers {
        return Err(ManifestError::Config {
            digest: config_digest.clone(),
            reason: format!("{} diff_ids for {layers} layers", c.rootfs.diff_ids.len()),
        });
    }
    Ok(c.rootfs.diff_ids)
}
