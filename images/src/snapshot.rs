//! The snapshotter: each layer unpacked once into `<root>/snapshots/<diff-id hex>/` (keyed by the
//! layer's uncompressed digest, so the same layer shared by many images, or compressed differently,
//! is stored once), and overlayfs mounts of a layer chain for containers.
//!
//! Invariants: a snapshot directory under its diff ID is complete and its content hashed to that
//! diff ID: unpacking happens in `<root>/snapshots/.tmp-*` and is renamed into place only after
//! the digest matched. Snapshots in use by a prepared container rootfs are recorded as leases
//! (`<root>/leases/<id>.json`) so GC never deletes a lower directory under a mounted overlay.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::unpack::{self, UnpackError};

/// Snapshot and mount failures.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("unpack layer {layer}: {source}")]
    Unpack { layer: Digest, source: UnpackError },
    #[error(
        "layer {layer}: uncompressed content hashes to {actual}, but the image config says {expected}; layer rejected"
    )]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("overlayfs is unavailable: {0} (load the `overlay` kernel module: `modprobe overlay`)")]
    NoOverlay(String),
    #[error(
        "mount overlay on {target}: {source} (options were {options} bytes long; the kernel limit is one page)"
    )]
    Mount {
        target: PathBuf,
        options: usize,
        source: io::Error,
    },
    #[error("mounting overlayfs needs root (CAP_SYS_ADMIN); running as uid {0}")]
    NotRoot(u32),
    #[error("lease {path}: {reason}")]
    Lease { path: PathBuf, reason: String },
}

impl SnapshotError {
    /// The layer hard-links a file of a lower layer: unpack it again with its lowers.
    pub fn needs_lowers(&self) -> bool {
        matches!(
            self,
            Self::Unpack {
                source: unpack::UnpackError::LowerLink { .. },
                ..
            }
        )
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Unpacked layers plus leases.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    leases: PathBuf,
}

/// A container's overlay mount, as prepared by [`SnapshotStore::mount`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayMount {
    /// Lower directories, topmost layer first (overlayfs's `lowerdir` order).
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: PathBuf,
    pub workdir: PathBuf,
    /// Where the merged rootfs is mounted.
    pub target: PathBuf,
}

impl OverlayMount {
    /// The `-o` option string of `mount -t overlay`.
    pub fn options(&self) -> String {
        let lower: Vec<String> = self
            .lowerdirs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            self.upperdir.display(),
            self.workdir.display()
        )
    }
}

#[derive(Serialize, Deserialize)]
struct Lease {
    container_dir: PathBuf,
    /// The image the rootfs was prepared from (in use, for LRU pruning).
    #[serde(default)]
    image: String,
    snapshots: Vec<Digest>,
}

impl SnapshotStore {
    /// Opens `<root>/snapshots` and `<root>/leases`, removing unpacks of crashed processes.
    pub fn new(root: &Path) -> Result<Self, SnapshotError> {
        let dir = root.join("snapshots");
        let leases = root.join("leases");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        fs::create_dir_all(&leases).map_err(io_err("create", &leases))?;
        for e in fs::read_dir(&dir).map_err(io_err("list", &dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // `.tmp-<hex>-<pid>-<seq>`: only a dead process's unpack is garbage.
            let pid = name.split('-').nth(2).and_then(|p| p.parse().ok());
            if name.starts_with(".tmp-") && !pid.is_some_and(crate::content::pid_alive) {
                fs::remove_dir_all(e.path()).map_err(io_err("clean", &e.path()))?;
            }
        }
        Ok(Self { dir, leases })
    }

    /// The directory of a snapshot (whether or not it exists).
    pub fn path(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join(diff_id.hex())
    }

    pub fn has(&self, diff_id: &Digest) -> bool {
        self.path(diff_id).is_dir()
    }

    /// The snapshot directories of `below` (diff IDs, bottom layer first), nearest first: the
    /// `lowers` argument of [`SnapshotStore::ensure`] for the layer above them.
    pub fn lowers(&self, below: &[Digest]) -> Vec<PathBuf> {
        below.iter().rev().map(|d| self.path(d)).collect()
    }

    /// Unpacks the layer blob at `blob` into the snapshot `diff_id` unless it exists. Blocking.
    /// Returns `true` if it unpacked, `false` if the snapshot was already there. `lowers`: see
    /// [`unpack::unpack_layer`] (with `None`, a layer hard-linking a lower layer's file fails with
    /// an error for which [`SnapshotError::needs_lowers`] is true).
    ///
    /// Snapshots are keyed by diff ID alone, so such a layer's copied-up targets come from the
    /// chain it was first unpacked on; every real image with such links has one chain below it.
    pub fn ensure(
        &self,
        layer: &Digest,
        blob: &Path,
        diff_id: &Digest,
        lowers: Option<&[PathBuf]>,
    ) -> Result<bool, SnapshotError> {
        if self.has(diff_id) {
            return Ok(false);
        }
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}-{seq}",
            diff_id.hex(),
            std::process::id()
        ));
        fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
        let result = (|| {
            let f = fs::File::open(blob).map_err(io_err("open", blob))?;
            let (actual, _) =
                unpack::unpack_layer(f, &tmp, lowers).map_err(|source| SnapshotError::Unpack {
                    layer: layer.clone(),
                    source,
                })?;
            if &actual != diff_id {
                return Err(SnapshotError::DiffIdMismatch {
                    layer: layer.clone(),
                    expected: diff_id.clone(),
                    actual,
                });
            }
            sync_tree(&tmp);
            let dest = self.path(diff_id);
            match fs::rename(&tmp, &dest) {
                Ok(()) => Ok(true),
                // Another pull unpacked the same layer meanwhile: keep theirs.
                Err(_) if dest.is_dir() => Ok(false),
                Err(e) => Err(SnapshotError::Io {
                    op: "rename",
                    path: tmp.clone(),
                    source: e,
                }),
            }
        })();
        if !matches!(result, Ok(true)) {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Snapshots present, with their disk usage in bytes.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, SnapshotError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))? {
            let e = e.map_err(io_err("list", &self.dir))?;
            let name = e.file_name();
            if let Some(d) = name
                .to_str()
                .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
            {
                out.push((d, du(&e.path())));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes a snapshot directory.
    pub fn delete(&self, diff_id: &Digest) -> Result<(), SnapshotError> {
        let p = self.path(diff_id);
        match fs::remove_dir_all(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SnapshotError::Io {
                op: "remove",
                path: p,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Snapshots held by prepared container rootfs.
    pub fn leased(&self) -> Result<Vec<Digest>, SnapshotError> {
        Ok(self.leases()?.into_iter().flat_map(|(_, s)| s).collect())
    }

    /// Every lease: (image name, snapshots it holds).
    pub fn leases(&self) -> Result<Vec<(String, Vec<Digest>)>, SnapshotError> {
        Ok(self
            .lease_records()?
            .into_iter()
            .map(|(_, image, snaps)| (image, snaps))
            .collect())
    }

    /// Every lease: (container dir, image name, snapshots it holds).
    pub fn lease_records(&self) -> Result<Vec<(PathBuf, String, Vec<Digest>)>, SnapshotError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.leases)
            .map_err(io_err("list", &self.leases))?
            .flatten()
        {
            let path = e.path();
            let data = fs::read(&path).map_err(io_err("read", &path))?;
            let lease: Lease =
                serde_json::from_slice(&data).map_err(|err| SnapshotError::Lease {
                    path: path.clone(),
                    reason: err.to_string(),
                })?;
            out.push((lease.container_dir, lease.image, lease.snapshots));
        }
        Ok(out)
    }

    /// Records that `container_dir` uses `image` and holds `snapshots`.
    pub(crate) fn write_lease(
        &self,
        container_dir: &Path,
        image: &str,
        snapshots: &[Digest],
    ) -> Result<(), SnapshotError> {
        let lease = Lease {
            container_dir: container_dir.to_path_buf(),
            image: image.to_string(),
            snapshots: snapshots.to_vec(),
        };
        let lp = self.lease_path(container_dir);
        let body = serde_json::to_vec(&lease).map_err(|e| SnapshotError::Lease {
            path: lp.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&lp, &body).map_err(io_err("write", &lp))
    }

    fn lease_path(&self, container_dir: &Path) -> PathBuf {
        let key = Digest::of(container_dir.as_os_str().as_encoded_bytes());
        self.leases.join(format!("{}.json", key.hex()))
    }

    /// Mounts an overlay of `layers` (diff IDs, bottom layer first) at `<container_dir>/rootfs`
    /// with `<container_dir>/upper` and `/work`. Idempotent: an existing mount is kept.
    #[cfg(target_os = "linux")]
    pub fn mount(
        &self,
        image: &str,
        layers: &[Digest],
        container_dir: &Path,
    ) -> Result<OverlayMount, SnapshotError> {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            return Err(SnapshotError::NotRoot(uid));
        }
        let target = container_dir.join("rootfs");
        let upperdir = container_dir.join("upper");
        let workdir = container_dir.join("work");
        for d in [&target, &upperdir, &workdir] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        let mut lowerdirs: Vec<PathBuf> = layers.iter().rev().map(|d| self.path(d)).collect();
        if lowerdirs.is_empty() {
            // An image without layers still needs one lower directory.
            let empty = container_dir.join("empty");
            fs::create_dir_all(&empty).map_err(io_err("create", &empty))?;
            lowerdirs.push(empty);
        }
        let m = OverlayMount {
            lowerdirs,
            upperdir,
            workdir,
            target,
        };
        // Lease first: from now on GC keeps these snapshots.
        self.write_lease(container_dir, image, layers)?;
        if is_mountpoint(&m.target) {
            return Ok(m);
        }
        for l in &m.lowerdirs {
            if !l.is_dir() {
                return Err(SnapshotError::Io {
                    op: "lowerdir",
                    path: l.clone(),
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        "snapshot missing (image not unpacked?)",
                    ),
                });
            }
        }
        let opts = m.options();
        nix::mount::mount(
            Some("overlay"),
            &m.target,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| match e {
            // The kernel loads the module on demand, so only a failed mount says it is missing.
            nix::errno::Errno::ENODEV => match overlay_available() {
                Err(no) => no,
                Ok(()) => {
                    SnapshotError::NoOverlay("the kernel refused the overlay type (ENODEV)".into())
                }
            },
            e => SnapshotError::Mount {
                target: m.target.clone(),
                options: opts.len(),
                source: e.into(),
            },
        })?;
        Ok(m)
    }

    /// Unmounts `<container_dir>/rootfs`, removes rootfs/upper/work and the lease.
    #[cfg(target_os = "linux")]
    pub fn unmount(&self, container_dir: &Path) -> Result<(), SnapshotError> {
        let target = container_dir.join("rootfs");
        if is_mountpoint(&target) {
            nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
                SnapshotError::Io {
                    op: "unmount",
                    path: target.clone(),
                    source: e.into(),
                }
            })?;
        }
        for d in ["rootfs", "upper", "work", "empty"] {
            let p = container_dir.join(d);
            if let Err(e) = fs::remove_dir_all(&p)
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(SnapshotError::Io {
                    op: "remove",
                    path: p,
                    source: e,
                });
            }
        }
        let _ = fs::remove_file(container_dir.join("rootfs.complete"));
        let lp = self.lease_path(container_dir);
        match fs::remove_file(&lp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SnapshotError::Io {
                op: "remove",
                path: lp,
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// Checks /proc/filesystems for overlay (after a failed mount: the module may load on demand).
#[cfg(target_os = "linux")]
pub fn overlay_available() -> Result<(), SnapshotError> {
    let fss = fs::read_to_string("/proc/filesystems")
        .map_err(|e| SnapshotError::NoOverlay(format!("cannot read /proc/filesystems: {e}")))?;
    if fss
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        Ok(())
    } else {
        Err(SnapshotError::NoOverlay(
            "`overlay` is not listed in /proc/filesystems".into(),
        ))
    }
}

fn is_mountpoint(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(p), p.parent().map(fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Writes `data` to `path` via a temporary file, fsync and rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}.{seq}", std::process::id()));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Disk usage of a tree (allocated blocks, hard links counted once per tree walk is not attempted).
pub(crate) fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    let mut total = m.blocks() * 512;
    if m.is_dir()
        && let Ok(rd) = fs::read_dir(p)
    {
        for e in rd.flatten() {
            total += du(&e.path());
        }
    }
    total
}

/// Flushes an unpacked tree to disk before it becomes visible (one syncfs for the filesystem).
fn sync_tree(p: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = fs::File::open(p) {
        // SAFETY: a valid open fd; syncfs has no other preconditions.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
}
