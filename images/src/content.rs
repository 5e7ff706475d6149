//! The content store: blobs (manifests, configs, layers) stored by digest under
//! `<root>/blobs/sha256/<hex>`.
//!
//! Invariants: a file under its digest always has exactly that digest and size. Blobs are written to
//! `<root>/ingest/<unique>` first, verified (digest AND size), fsynced and only then renamed into
//! place, so a crash or a bad download never leaves a partial or wrong blob visible; an abandoned
//! ingest file is removed when its [`Ingest`] is dropped (and those of dead processes by
//! [`ContentStore::new`]; ingest file names carry the writer's PID).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{Digest, Hasher};

/// Content store failures.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "blob {expected}: digest mismatch, received content hashes to {actual} ({size} bytes); blob discarded"
    )]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error(
        "blob {digest}: size mismatch, expected {expected} bytes, received {actual}; blob discarded"
    )]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} is not in the content store")]
    NotFound(Digest),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContentError + 'a {
    move |source| ContentError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

static INGEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// Whether a process with this PID exists (temp files carry their writer's PID).
pub(crate) fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Content-addressed blob storage rooted at a directory.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) the store under `root`, removing ingest files left by a crashed
    /// process.
    pub fn new(root: &Path) -> Result<Self, ContentError> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
        fs::create_dir_all(&ingest).map_err(io_err("create", &ingest))?;
        // Files of a process that died mid-write are garbage; a live process's are its own.
        for e in fs::read_dir(&ingest)
            .map_err(io_err("list", &ingest))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('.').nth(1).and_then(|p| p.parse().ok());
            if !pid.is_some_and(pid_alive) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(Self { blobs, ingest })
    }

    /// Where the blob lives (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the blob is present (with `size`, if given).
    pub fn has(&self, digest: &Digest, size: Option<u64>) -> bool {
        match fs::metadata(self.path(digest)) {
            Ok(m) => size.is_none_or(|s| s == m.len()),
            Err(_) => false,
        }
    }

    /// Reads a (small) blob, re-verifying its digest so on-disk corruption is not trusted.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let path = self.path(digest);
        let data = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ContentError::NotFound(digest.clone()),
            _ => ContentError::Io {
                op: "read",
                path: path.clone(),
                source: e,
            },
        })?;
        let actual = Digest::of(&data);
        if &actual != digest {
            return Err(ContentError::DigestMismatch {
                expected: digest.clone(),
                actual,
                size: data.len() as u64,
            });
        }
        Ok(data)
    }

    /// Stores `data` under `expected` after checking digest and size.
    pub fn write(
        &self,
        expected: &Digest,
        size: Option<u64>,
        data: &[u8],
    ) -> Result<(), ContentError> {
        if self.has(expected, Some(data.len() as u64))
            && size.is_none_or(|s| s == data.len() as u64)
        {
            return Ok(());
        }
        let mut ing = self.ingest(expected.clone(), size)?;
        ing.write(data)?;
        ing.commit().map(|_| ())
    }

    /// Starts writing a blob expected to have `digest` (and `size` if known).
    pub fn ingest(&self, digest: Digest, size: Option<u64>) -> Result<Ingest, ContentError> {
        self.start(Some(digest), size)
    }

    /// Starts writing a blob whose digest is not known in advance (air-gap import of `docker save`
    /// layers): it is stored under whatever it hashes to.
    pub fn ingest_any(&self) -> Result<Ingest, ContentError> {
        self.start(None, None)
    }

    fn start(&self, digest: Option<Digest>, size: Option<u64>) -> Result<Ingest, ContentError> {
        let seq = INGEST_SEQ.fetch_add(1, Ordering::Relaxed);
        let label = digest.as_ref().map_or("any", |d| d.hex());
        let tmp = self
            .ingest
            .join(format!("{label}.{}.{seq}", std::process::id()));
        let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        Ok(Ingest {
            file: Some(file),
            tmp,
            dir: self.blobs.clone(),
            digest,
            size,
            hasher: Hasher::default(),
        })
    }

    /// All blobs with their sizes.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, ContentError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs).map_err(io_err("list", &self.blobs))? {
            let entry = entry.map_err(io_err("list", &self.blobs))?;
            let name = entry.file_name();
            let Some(d) = name
                .to_str()
                .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
            else {
                continue;
            };
            let len = entry
                .metadata()
                .map_err(io_err("stat", &entry.path()))?
                .len();
            out.push((d, len));
        }
        out.sort();
        Ok(out)
    }

    /// Removes a blob (absent is fine).
    pub fn delete(&self, digest: &Digest) -> Result<(), ContentError> {
        let p = self.path(digest);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ContentError::Io {
                op: "remove",
                path: p,
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// A blob being written; verified and published by [`Ingest::commit`], discarded on drop.
pub struct Ingest {
    file: Option<File>,
    tmp: PathBuf,
    dir: PathBuf,
    digest: Option<Digest>,
    size: Option<u64>,
    hasher: Hasher,
}

impl Ingest {
    /// Appends bytes; fails early once more than the expected size arrived.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ContentError> {
        self.hasher.update(data);
        if let Some(expected) = self.size
            && self.hasher.len() > expected
        {
            return Err(ContentError::SizeMismatch {
                digest: self.digest.clone().unwrap_or_else(|| Digest::of(b"")),
                expected,
                actual: self.hasher.len(),
            });
        }
        match self.file.as_mut() {
            Some(f) => f.write_all(data).map_err(io_err("write", &self.tmp)),
            None => Ok(()),
        }
    }

    /// Discards what was written so far (a download restarting from byte 0).
    pub fn reset(&mut self) -> Result<(), ContentError> {
        use std::io::Seek;
        self.hasher = Hasher::default();
        if let Some(f) = self.file.as_mut() {
            f.set_len(0).map_err(io_err("truncate", &self.tmp))?;
            f.rewind().map_err(io_err("rewind", &self.tmp))?;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    /// Verifies digest and size, fsyncs and renames into place; returns the digest and size.
    pub fn commit(mut self) -> Result<(Digest, u64), ContentError> {
        let (actual, len) = std::mem::take(&mut self.hasher).finish();
        let expected = self.digest.clone().unwrap_or_else(|| actual.clone());
        if let Some(want) = self.size
            && want != len
        {
            return Err(ContentError::SizeMismatch {
                digest: expected,
                expected: want,
                actual: len,
            });
        }
        if actual != expected {
            return Err(ContentError::DigestMismatch {
                expected,
                actual,
                size: len,
            });
        }
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(io_err("fsync", &self.tmp))?;
        }
        let dest = self.dir.join(actual.hex());
        fs::rename(&self.tmp, &dest).map_err(io_err("rename", &self.tmp))?;
        // Make the rename durable too; failure to sync a directory is not fatal on all filesystems.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok((actual, len))
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // After a successful commit the temp path no longer exists; otherwise discard the partial blob.
        let _ = fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_before_publish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cs = ContentStore::new(dir.path()).expect("store");
        let good = Digest::of(b"hello");
        cs.write(&good, Some(5), b"hello").expect("write");
        assert_eq!(cs.read(&good).expect("read"), b"hello");
        assert!(matches!(
            cs.write(&good, Some(4), b"hello"),
            Err(ContentError::SizeMismatch { .. })
        ));

        let other = Digest::of(b"other");
        let err = cs.write(&other, Some(5), b"olleh").expect_err("mismatch");
        assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
        assert!(!cs.has(&other, None));
        assert_eq!(
            fs::read_dir(dir.path().join("ingest"))
                .expect("ingest")
                .count(),
            0
        );
        assert_eq!(cs.list().expect("list"), vec![(good.clone(), 5)]);

        // A pull interrupted mid-blob: the partial file is never visible; at open, files of dead
        // writers are removed, those of live ones (this process) kept.
        let mut live = cs.ingest(other.clone(), Some(5)).expect("ingest");
        live.write(b"oth").expect("write");
        let dead = dir
            .path()
            .join("ingest")
            .join(format!("{}.2147483646.0", other.hex()));
        fs::write(&dead, b"partial").expect("write");
        assert!(!cs.has(&other, None));
        let cs = ContentStore::new(dir.path()).expect("reopen");
        assert!(!dead.exists());
        assert_eq!(
            fs::read_dir(dir.path().join("ingest"))
                .expect("ingest")
                .count(),
            1
        );
        drop(live);
        assert_eq!(
            fs::read_dir(dir.path().join("ingest"))
                .expect("ingest")
                .count(),
            0
        );
        assert_eq!(cs.list().expect("list"), vec![(good, 5)]);
    }
}
