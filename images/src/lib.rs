//! The r3s image service: pulls OCI images from registries into a content-addressed store and unpacks
//! their layers into snapshots that containers mount with overlayfs (containerd's image path in k3s).
//!
//! Entry point: [`ImageService`] (open a root directory, then `pull`, `list`, `inspect`, `remove`
//! (or the operator's `remove_image`, which refuses an image a container uses), `gc`, `prune`,
//! `disk_usage`, `prepare_rootfs` (or `prepare_rootfs_copy` without overlayfs) / `release_rootfs`,
//! `import_dir` / `import_airgap` (the agent's start-up import) / `import_file`). The agent keeps
//! the store at [`store_dir`] (`<data-dir>/agent/image-store`) and scans [`airgap_dir`]
//! (`<data-dir>/agent/images`, k3s's air-gap directory) at start. Pull progress arrives as [`PullEvent`]s on a channel, so the
//! operator CLI or the agent's event recorder stays a thin layer, e.g. a pull with a progress display:
//!
//! ```no_run
//! # async fn demo() -> Result<(), r3s_images::ImageError> {
//! use r3s_images::{ImageService, ImageServiceConfig, Progress, PullEvent, PullOptions, RegistriesConfig};
//! let mut cfg = ImageServiceConfig::new("/var/lib/r3s/agent/image-store");
//! cfg.registries = RegistriesConfig::load("/etc/r3s/registries.yaml".as_ref())?;
//! let svc = ImageService::open(cfg)?;
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let printer = tokio::spawn(async move {
//!     while let Some(ev) = rx.recv().await {
//!         if let PullEvent::LayerProgress { digest, done, total } = ev {
//!             eprintln!("{digest}: {done}/{total}");
//!         }
//!     }
//! });
//! let opts = PullOptions { progress: Progress::new(tx), ..Default::default() };
//! let image = svc.pull("nginx", &opts).await?; // docker.io/library/nginx:latest
//! drop(opts); // closes the channel so the printer ends
//! let _ = printer.await;
//! println!("{} {} {} bytes", image.name, image.config, image.size);
//! # Ok(()) }
//! ```
//!
//! Module layout (each module's `//!` states its invariants):
//! - [`reference`]: image references with Docker's defaulting rules.
//! - [`digest`]: sha256 digests and hashing helpers.
//! - [`platform`]: os/arch/variant and matching against index entries.
//! - [`manifest`]: index/manifest/config parsing and platform selection.
//! - [`registries`]: k3s `registries.yaml` (mirrors, rewrites, configs) and the endpoint list.
//! - [`auth`]: credentials from Docker config JSON (pull secrets) and registries.yaml.
//! - [`mtls`]: the tunnel that presents registries.yaml client certificates.
//! - [`content`]: content-addressed blobs, verified before they become visible.
//! - [`unpack`]: layer tar → overlayfs directory (whiteouts, opaque dirs, ownership, devices).
//! - [`snapshot`]: one unpacked directory per layer, overlay mounts, leases.
//! - [`flatten`]: the copy fallback where overlayfs is unavailable.
//! - [`records`]: image records (JSON) and derived reference counts.
//! - [`progress`]: pull events.
//! - [`service`]: [`ImageService`], list/inspect/remove/GC/disk usage/rootfs.
//! - [`pull`]: the registry pull.
//! - [`import`]: air-gap import of OCI-layout and `docker save` tarballs.
//!
//! On-disk layout under the root: `blobs/sha256/<hex>`, `ingest/` (temporary), `snapshots/<diff-id
//! hex>/`, `images/<sha256(name)>.json`, `leases/`, `imports/`, `lock` (cross-process flock).

pub mod auth;
pub mod content;
pub mod digest;
pub mod flatten;
pub mod import;
pub mod manifest;
pub mod mtls;
pub mod platform;
pub mod progress;
pub mod pull;
pub mod records;
pub mod reference;
pub mod registries;
pub mod service;
pub mod snapshot;
pub mod unpack;

pub use auth::{Credentials, Keyring};
pub use digest::Digest;
pub use import::ImportReport;
pub use platform::Platform;
pub use progress::{Progress, PullEvent};
pub use records::{ImageRecord, LayerRecord};
pub use reference::ImageRef;
pub use registries::RegistriesConfig;
pub use service::{
    DiskUsage, GcReport, ImageError, ImageInfo, ImageService, ImageServiceConfig, PullOptions,
    airgap_dir, store_dir,
};
pub use snapshot::OverlayMount;
