//! Pulling an image: resolve the reference on each endpoint in turn (mirrors first, see
//! [`crate::registries`]), pick the platform's manifest from an index, then fetch config and layers
//! (layers concurrently, bounded) into the content store, unpack each layer into its snapshot, and
//! record the image.
//!
//! Invariants: every manifest, config and layer is checked against its digest and size before it
//! is stored or used (a mismatch discards it and fails the pull); a blob or snapshot already present
//! is not fetched or unpacked again; an interrupted pull leaves no partial blob or snapshot visible
//! and simply restarts the missing pieces next time; a connection lost mid-blob is resumed with a
//! Range request (at most 3 times per blob). Concurrent pulls sharing a blob fetch it once. Once a manifest resolved on an endpoint, its
//! blobs come from that same endpoint.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use oci_client::client::BlobResponse;
use oci_client::{Client, Reference};

use crate::digest::Digest;
use crate::manifest::{self, Descriptor, ImageManifest, Parsed};
use crate::platform::Platform;
use crate::progress::{Progress, PullEvent};
use crate::records::{ImageRecord, LayerRecord};
use crate::reference::ImageRef;
use crate::registries::Endpoint;
use crate::service::{ImageError, ImageService, Inner, PullOptions, error_chain};

const PROGRESS_STEP: u64 = 256 * 1024;
/// Range-request retries of one interrupted blob download.
const MAX_RESUMES: u32 = 3;

/// A manifest found on an endpoint.
struct Resolved {
    client: Client,
    /// Addresses the repository on the endpoint (blob requests only use registry + repository).
    oref: Reference,
    target: Digest,
    index: Option<Digest>,
    manifest_digest: Digest,
    manifest: ImageManifest,
}

impl ImageService {
    /// Pulls `image` (any spelling Docker accepts) and returns its record.
    pub async fn pull(&self, image: &str, opts: &PullOptions) -> Result<ImageRecord, ImageError> {
        let started = Instant::now();
        let r = ImageRef::parse(image)?;
        let platform = opts
            .platform
            .clone()
            .unwrap_or_else(|| self.inner.platform.clone());
        let _shared = self.inner.lock(false).await?;
        let endpoints = self.inner.registries.endpoints(&r)?;
        if endpoints.is_empty() {
            return Err(ImageError::Pull {
                image: r.to_string(),
                details:
                    "no endpoint to try (no mirror configured and the default endpoint is disabled)"
                        .into(),
            });
        }
        let mut failures = Vec::new();
        for ep in &endpoints {
            match resolve(&self.inner, &r, ep, &platform, opts).await {
                Ok(res) => {
                    opts.progress.send(PullEvent::Resolved {
                        image: r.to_string(),
                        endpoint: ep.url(),
                        manifest: res.manifest_digest.clone(),
                        layers: res
                            .manifest
                            .layers
                            .iter()
                            .map(|l| (l.digest.clone(), l.size))
                            .collect(),
                    });
                    let (rec, downloaded) =
                        fetch(&self.inner, &r, ep, res, &platform, &opts.progress).await?;
                    opts.progress.send(PullEvent::Done {
                        image: rec.name.clone(),
                        downloaded,
                        total: rec.size,
                        duration: started.elapsed(),
                    });
                    return Ok(rec);
                }
                Err(e) => {
                    tracing::warn!(image = %r, endpoint = %ep.url(), error = %e, "pull: endpoint failed");
                    opts.progress.send(PullEvent::EndpointFailed {
                        endpoint: ep.url(),
                        error: e.to_string(),
                    });
                    failures.push(e.to_string());
                }
            }
        }
        Err(ImageError::Pull {
            image: r.to_string(),
            details: failures.join("; "),
        })
    }
}

fn oci_ref(ep: &Endpoint, selector: &str) -> Reference {
    if selector.starts_with("sha256:") {
        Reference::with_digest(ep.host.clone(), ep.repository.clone(), selector.to_string())
    } else {
        Reference::with_tag(ep.host.clone(), ep.repository.clone(), selector.to_string())
    }
}

async fn resolve(
    inner: &Inner,
    r: &ImageRef,
    ep: &Endpoint,
    platform: &Platform,
    opts: &PullOptions,
) -> Result<Resolved, ImageError> {
    let auth = inner.auth(ep, r.registry(), &opts.keyring)?;
    let client = inner.client(ep, r.registry(), &auth)?;
    let reg_err = |e: oci_client::errors::OciDistributionError| ImageError::Registry {
        endpoint: ep.url(),
        message: error_chain(&e),
    };
    let oref = oci_ref(ep, &r.manifest_selector());
    let (bytes, _) = client
        .pull_manifest_raw(&oref, &auth, &manifest::ACCEPTED)
        .await
        .map_err(reg_err)?;
    let target = Digest::of(&bytes);
    if let Some(want) = r.digest()
        && want != &target
    {
        return Err(ImageError::ManifestDigest {
            endpoint: ep.url(),
            image: r.to_string(),
            actual: target,
        });
    }
    let (index, manifest_digest, manifest) = match manifest::parse(&target, &bytes, None)? {
        Parsed::Image(m) => {
            inner.content.write(&target, None, &bytes)?;
            (None, target.clone(), m)
        }
        Parsed::Index { manifests } => {
            let desc = manifest::select_platform(&target, &manifests, platform)?.clone();
            let mref = oci_ref(ep, desc.digest.as_str());
            let (mbytes, _) = client
                .pull_manifest_raw(&mref, &auth, &manifest::ACCEPTED)
                .await
                .map_err(reg_err)?;
            // Verifies digest and size before anything is used.
            inner
                .content
                .write(&desc.digest, Some(desc.size), &mbytes)?;
            inner.content.write(&target, None, &bytes)?;
            match manifest::parse(&desc.digest, &mbytes, None)? {
                Parsed::Image(m) => (Some(target.clone()), desc.digest, m),
                Parsed::Index { .. } => {
                    return Err(manifest::ManifestError::Shape {
                        digest: desc.digest,
                    }
                    .into());
                }
            }
        }
    };
    Ok(Resolved {
        client,
        oref,
        target,
        index,
        manifest_digest,
        manifest,
    })
}

async fn fetch(
    inner: &Inner,
    r: &ImageRef,
    ep: &Endpoint,
    res: Resolved,
    platform: &Platform,
    progress: &Progress,
) -> Result<(ImageRecord, u64), ImageError> {
    let Resolved {
        client,
        oref,
        target,
        index,
        manifest_digest,
        manifest,
    } = res;
    let quiet = Progress::none();
    let config_bytes = download(inner, &client, &oref, ep, &manifest.config, &quiet).await?;
    let config = inner.content.read(&manifest.config.digest)?;
    let diff_ids = manifest::diff_ids(&manifest.config.digest, &config, manifest.layers.len())?;

    let jobs = manifest
        .layers
        .iter()
        .cloned()
        .zip(diff_ids.clone())
        .map(|(layer, diff_id)| {
            let client = &client;
            let oref = &oref;
            async move {
                let fetched = download(inner, client, oref, ep, &layer, progress).await?;
                let snaps = inner.snapshots.clone();
                let blob = inner.content.path(&layer.digest);
                let (l, d) = (layer.digest.clone(), diff_id.clone());
                // Unpacked as soon as downloaded, without the lowers (they may not be there yet);
                // a layer hard-linking a lower layer's file is unpacked again below, in order.
                let deferred =
                    match tokio::task::spawn_blocking(move || snaps.ensure(&l, &blob, &d, None))
                        .await?
                    {
                        Ok(unpacked) => {
                            progress.send(PullEvent::LayerUnpacked {
                                digest: layer.digest.clone(),
                                diff_id: diff_id.clone(),
                                cached: !unpacked,
                            });
                            false
                        }
                        Err(e) if e.needs_lowers() => true,
                        Err(e) => return Err(e.into()),
                    };
                let rec = LayerRecord {
                    digest: layer.digest,
                    size: layer.size,
                    media_type: layer.media_type,
                    diff_id,
                };
                Ok::<_, ImageError>((rec, fetched, deferred))
            }
        });
    // `buffered` keeps the layer order while running up to N at once.
    let done: Vec<(LayerRecord, u64, bool)> = futures::stream::iter(jobs)
        .buffered(inner.max_downloads)
        .try_collect()
        .await?;
    for (i, (l, _, deferred)) in done.iter().enumerate() {
        if !deferred {
            continue;
        }
        let snaps = inner.snapshots.clone();
        let lowers = snaps.lowers(&diff_ids[..i]);
        let blob = inner.content.path(&l.digest);
        let (d, id) = (l.digest.clone(), l.diff_id.clone());
        let unpacked =
            tokio::task::spawn_blocking(move || snaps.ensure(&d, &blob, &id, Some(&lowers)))
                .await??;
        progress.send(PullEvent::LayerUnpacked {
            digest: l.digest.clone(),
            diff_id: l.diff_id.clone(),
            cached: !unpacked,
        });
    }
    let downloaded = config_bytes + done.iter().map(|(_, n, _)| n).sum::<u64>();
    let layers: Vec<LayerRecord> = done.into_iter().map(|(l, _, _)| l).collect();

    let size = manifest.config.size + layers.iter().map(|l| l.size).sum::<u64>();
    let record = ImageRecord {
        name: r.to_string(),
        target,
        manifest: manifest_digest,
        index,
        config: manifest.config.digest.clone(),
        layers,
        platform: platform.clone(),
        size,
        last_used: 0,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    inner.records.put(&record)?;
    Ok((record, downloaded))
}

/// Streams one blob into the content store unless present; returns the bytes downloaded.
async fn download(
    inner: &Inner,
    client: &Client,
    oref: &Reference,
    ep: &Endpoint,
    desc: &Descriptor,
    progress: &Progress,
) -> Result<u64, ImageError> {
    let _blob = inner.lock_blob(&desc.digest).await?;
    if inner.content.has(&desc.digest, Some(desc.size)) {
        progress.send(PullEvent::LayerDownloaded {
            digest: desc.digest.clone(),
            size: desc.size,
            cached: true,
        });
        return Ok(0);
    }
    let reg_err = |e: oci_client::errors::OciDistributionError| ImageError::Registry {
        endpoint: ep.url(),
        message: error_chain(&e),
    };
    let mut ingest = inner.content.ingest(desc.digest.clone(), Some(desc.size))?;
    let mut stream = client
        .pull_blob_stream(oref, desc.digest.as_str())
        .await
        .map_err(reg_err)?;
    let mut reported = 0;
    let mut resumes = 0;
    loop {
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => ingest.write(&c)?,
                // The client's own digest check fires at the end of the stream; our commit below
                // reports the same mismatch with digest and size, so prefer it when all bytes arrived.
                Err(_) if ingest.written() == desc.size => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            if ingest.written() - reported >= PROGRESS_STEP {
                reported = ingest.written();
                progress.send(PullEvent::LayerProgress {
                    digest: desc.digest.clone(),
                    done: reported,
                    total: desc.size,
                });
            }
        }
        if ingest.written() >= desc.size {
            break;
        }
        // The connection dropped mid-blob (slow, flaky links): continue from where it stopped
        // with a Range request; the digest is still checked over the whole blob at commit.
        let failure =
            failure.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        if resumes == MAX_RESUMES {
            let e = oci_client::errors::OciDistributionError::IoError(failure);
            return Err(ImageError::Registry {
                endpoint: ep.url(),
                message: format!(
                    "blob {}: connection lost at byte {}/{} after {MAX_RESUMES} resumes: {}",
                    desc.digest,
                    ingest.written(),
                    desc.size,
                    error_chain(&e)
                ),
            });
        }
        resumes += 1;
        tracing::warn!(digest = %desc.digest, offset = ingest.written(), error = %failure, "blob download interrupted; resuming");
        stream = match client
            .pull_blob_stream_partial(oref, desc.digest.as_str(), ingest.written(), None)
            .await
            .map_err(reg_err)?
        {
            BlobResponse::Partial(s) => s,
            // The server ignored the range: start over.
            BlobResponse::Full(s) => {
                ingest.reset()?;
                reported = 0;
                s
            }
        };
    }
    let done = ingest.written();
    progress.send(PullEvent::LayerProgress {
        digest: desc.digest.clone(),
        done,
        total: desc.size,
    });
    // fsync + rename off the async threads.
    tokio::task::spawn_blocking(move || ingest.commit()).await??;

    progress.send(PullEvent::LayerDownloaded {
        digest: desc.digest.clone(),
        size: desc.size,
        cached: false,
    });
    Ok(done)
}
