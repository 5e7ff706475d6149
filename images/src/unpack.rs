//! Unpacks one layer tarball (gzip, zstd or uncompressed, detected from its first bytes) into an
//! empty directory in overlayfs's on-disk format, computing the uncompressed digest (diff ID) as it
//! reads.
//!
//! Conversions: an OCI whiteout `.wh.<name>` becomes a character device 0/0 named `<name>`; an opaque
//! marker `.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y` on its directory. Ownership,
//! modes, mtimes, xattrs (PAX `SCHILY.xattr.*`), hard links, symlinks, device nodes and FIFOs are
//! preserved. Invariant: nothing is ever written outside the destination: entries with `..`
//! components, and entries reached through a symlink (created by an earlier entry) are rejected
//! with an error, failing the unpack. Needs root (CAP_MKNOD, CAP_CHOWN, trusted.* xattrs).

use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::digest::{Digest, HashingReader};

/// Layer unpack failures.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer tar: {0}")]
    Io(#[from] io::Error),
    #[error("layer entry {path:?} escapes the snapshot ({reason}); layer rejected")]
    Traversal { path: String, reason: &'static str },
    /// A hard link to a file only a lower layer has, and the lower layers were not given.
    #[error("layer entry {path:?} hard-links {target:?} from a lower layer")]
    LowerLink { path: String, target: PathBuf },
    /// A hard link whose target exists in no layer (or was deleted).
    #[error(
        "layer entry {path:?}: hard link target {target:?} is not a file of this or a lower layer"
    )]
    LinkTarget { path: String, target: PathBuf },
    #[error("layer entry {path}: {op}: {source}")]
    Entry {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT_PREFIX: &str = ".wh.";

/// Wraps `r` in the right decompressor, by magic number.
pub fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    let head = br.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(br)?)
    } else {
        Box::new(br)
    })
}

/// Unpacks the (possibly compressed) layer `r` into `dest` (an existing empty directory) and returns
/// the diff ID and the uncompressed size.
///
/// `lowers` are the snapshots of the layers below, nearest first, for hard links to a file of a
/// lower layer (see [`link_target`]); `None` when they are not known (yet): such a link then fails
/// with [`UnpackError::LowerLink`] and the caller unpacks again once the lowers are there.
pub fn unpack_layer<R: Read>(
    r: R,
    dest: &Path,
    lowers: Option<&[PathBuf]>,
) -> Result<(Digest, u64), UnpackError> {
    let mut hashing = HashingReader::new(decompress(r)?);
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        for entry in archive.entries()? {
            unpack_entry(&mut entry?, dest, lowers)?;
        }
    }
    Ok(hashing.finish()?)
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    lowers: Option<&[PathBuf]>,
) -> Result<(), UnpackError> {
    let raw = entry.path()?.into_owned();
    let shown = raw.to_string_lossy().into_owned();
    let rel = clean_path(&raw).ok_or_else(|| UnpackError::Traversal {
        path: shown.clone(),
        reason: "'..' component",
    })?;
    let Some(name) = rel.file_name().map(|n| n.to_owned()) else {
        return Ok(()); // the root itself ("./")
    };
    let parent_rel = rel.parent().unwrap_or(Path::new(""));
    let parent = ensure_dirs(dest, parent_rel, &shown)?;
    let name_str = name.to_string_lossy();
    if name_str == OPAQUE {
        return set_xattr(&parent, "trusted.overlay.opaque", b"y");
    }
    if name_str.starts_with(".wh..wh.") {
        // Other aufs metadata (`.wh..wh.plnk`, `.wh..wh.aufs`): not content, skipped like containerd.
        return Ok(());
    }
    if let Some(target) = name_str.strip_prefix(WHITEOUT_PREFIX) {
        let path = parent.join(target);
        remove_existing(&path)?;
        return mknod(&path, libc::S_IFCHR, 0, 0);
    }
    let path = parent.join(&name);
    let header = entry.header();
    let kind = header.entry_type();
    if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
        let mode = header.mode()? & 0o7777;
        let ftype = if kind.is_character_special() {
            libc::S_IFCHR
        } else if kind.is_block_special() {
            libc::S_IFBLK
        } else {
            libc::S_IFIFO
        };
        // FIFOs carry no device numbers (often blank fields).
        let (major, minor) = if kind.is_fifo() {
            (0, 0)
        } else {
            (
                header.device_major()?.unwrap_or(0),
                header.device_minor()?.unwrap_or(0),
            )
        };
        remove_existing(&path)?;
        mknod(&path, ftype | mode, major, minor)?;
        let (uid, gid) = (header.uid()?, header.gid()?);
        return lchown(&path, uid, gid);
    }
    if kind.is_hard_link()
        && let Some(target) = entry.link_name()?
    {
        let target_rel = clean_path(&target).ok_or_else(|| UnpackError::Traversal {
            path: shown.clone(),
            reason: "hard link target has '..'",
        })?;
        if target_rel.file_name().is_none() {
            return Err(UnpackError::Traversal {
                path: shown,
                reason: "hard link to the root",
            });
        }
        let tpath = link_target(dest, lowers, &target_rel, &shown)?;
        remove_existing(&path)?;
        return fs::hard_link(&tpath, &path).map_err(|source| UnpackError::Entry {
            path,
            op: "link",
            source,
        });
    }
    // Replacing a directory with a non-directory (or the reverse) within a layer: drop the old one.
    if !kind.is_dir() {
        remove_existing(&path)?;
    }
    let inside = entry.unpack_in(dest).map_err(|source| UnpackError::Entry {
        path: path.clone(),
        op: "unpack",
        source,
    })?;
    if !inside {
        return Err(UnpackError::Traversal {
            path: shown,
            reason: "refused by the tar reader",
        });
    }
    Ok(())
}

/// Where a hard link's target is, as a path inside `dest`. A target this layer has is used as is. A
/// target only a lower layer has (a layer that hard-links a file of an earlier layer, which
/// containerd handles by unpacking over a mount of the lowers) is copied up into `dest` first,
/// with its ownership, mode, mtime and xattrs and those of its missing parent directories, as
/// overlayfs's copy-up does: in the merged view the link and its target are then one file, as in
/// a flat unpack. Whiteouts and opaque directories of this and the lower layers are honoured.
fn link_target(
    dest: &Path,
    lowers: Option<&[PathBuf]>,
    rel: &Path,
    shown: &str,
) -> Result<PathBuf, UnpackError> {
    let not_found = || UnpackError::LinkTarget {
        path: shown.to_string(),
        target: rel.to_path_buf(),
    };
    let layers: Vec<&Path> = std::iter::once(dest)
        .chain(lowers.unwrap_or(&[]).iter().map(PathBuf::as_path))
        .collect();
    let parents: Vec<Component<'_>> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for (i, layer) in layers.iter().enumerate() {
        let mut cur = layer.to_path_buf();
        let mut opaque = false;
        let mut present = true;
        for c in &parents {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => opaque |= is_opaque(&cur),
                Ok(m) if m.file_type().is_symlink() && i == 0 => {
                    return Err(UnpackError::Traversal {
                        path: shown.to_string(),
                        reason: "hard link target below a symlink",
                    });
                }
                // A whiteout, file or symlink where the directory should be: deleted from here down.
                Ok(_) => return Err(not_found()),
                Err(_) => {
                    present = false;
                    break;
                }
            }
        }
        if present {
            let p = layer.join(rel);
            match fs::symlink_metadata(&p) {
                Ok(m) if is_whiteout(&m) => return Err(not_found()),
                Ok(_) if i == 0 => return Ok(p),
                Ok(m) if m.is_file() => return copy_up(layer, rel, dest),
                Ok(_) => return Err(not_found()),
                Err(_) => {}
            }
        }
        if opaque {
            return Err(not_found());
        }
        if i == 0 && lowers.is_none() {
            return Err(UnpackError::LowerLink {
                path: shown.to_string(),
                target: rel.to_path_buf(),
            });
        }
    }
    Err(not_found())
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let Ok(c) = cpath(dir) else { return false };
    let mut buf = [0u8; 2];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// Copies `lower/rel` (a regular file) to `dest/rel`, creating missing parents like the lower's.
fn copy_up(lower: &Path, rel: &Path, dest: &Path) -> Result<PathBuf, UnpackError> {
    let (mut from, mut to) = (lower.to_path_buf(), dest.to_path_buf());
    for c in rel.parent().map(Path::components).into_iter().flatten() {
        from.push(c);
        to.push(c);
        if fs::symlink_metadata(&to).is_err() {
            fs::create_dir(&to).map_err(|source| UnpackError::Entry {
                path: to.clone(),
                op: "copy-up mkdir",
                source,
            })?;
            copy_meta(&from, &to, false)?;
        }
    }
    let (from, to) = (lower.join(rel), dest.join(rel));
    fs::copy(&from, &to).map_err(|source| UnpackError::Entry {
        path: to.clone(),
        op: "copy-up",
        source,
    })?;
    copy_meta(&from, &to, true)?;
    Ok(to)
}

/// Ownership, mode (after chown, which clears set-id bits), xattrs except overlay's own (an
/// opaque marker copied to a new upper directory would hide the lower's other files), and for
/// files the mtime.
fn copy_meta(from: &Path, to: &Path, mtime: bool) -> Result<(), UnpackError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let err = |op| {
        let to = to.to_path_buf();
        move |source| UnpackError::Entry {
            path: to,
            op,
            source,
        }
    };
    let m = fs::symlink_metadata(from).map_err(err("copy-up stat"))?;
    lchown(to, u64::from(m.uid()), u64::from(m.gid()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(m.mode() & 0o7777))
        .map_err(err("copy-up chmod"))?;
    for name in list_xattrs(from).map_err(err("copy-up listxattr"))? {
        if name.to_bytes().starts_with(b"trusted.overlay.") {
            continue;
        }
        if let Some(value) = get_xattr(from, &name).map_err(err("copy-up getxattr"))? {
            set_xattr(to, &name.to_string_lossy(), &value)?;
        }
    }
    if mtime {
        let t = nix::sys::time::TimeSpec::from(crate::flatten::timespec(m.mtime(), m.mtime_nsec()));
        nix::sys::stat::utimensat(
            None,
            to,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| err("copy-up utimensat")(e.into()))?;
    }
    Ok(())
}

fn list_xattrs(path: &Path) -> io::Result<Vec<CString>> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C string and a buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| CString::new(n).ok())
        .collect())
}

fn get_xattr(path: &Path, name: &CString) -> io::Result<Option<Vec<u8>>> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// Strips leading `/` and `.`; `None` if a `..` component is present.
fn clean_path(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// Creates the missing directories of `rel` under `dest`, refusing any existing component that is
/// not a real directory (a symlink would let later entries escape).
fn ensure_dirs(dest: &Path, rel: &Path, shown: &str) -> Result<PathBuf, UnpackError> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::Traversal {
                    path: shown.to_string(),
                    reason: "parent is a symlink",
                });
            }
            Ok(_) => {
                return Err(UnpackError::Entry {
                    path: cur,
                    op: "create parent",
                    source: io::Error::new(io::ErrorKind::AlreadyExists, "not a directory"),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(|source| UnpackError::Entry {
                    path: cur.clone(),
                    op: "mkdir",
                    source,
                })?;
            }
            Err(source) => {
                return Err(UnpackError::Entry {
                    path: cur,
                    op: "stat",
                    source,
                });
            }
        }
    }
    Ok(cur)
}

fn remove_existing(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|source| UnpackError::Entry {
        path: path.to_path_buf(),
        op: "replace",
        source,
    })
}

fn cpath(path: &Path) -> Result<CString, UnpackError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| UnpackError::Entry {
        path: path.to_path_buf(),
        op: "path",
        source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"),
    })
}

fn mknod(path: &Path, mode: u32, major: u32, minor: u32) -> Result<(), UnpackError> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated path; mknod does not retain it.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            mode as libc::mode_t,
            libc::makedev(major, minor),
        )
    };
    if rc != 0 {
        return Err(UnpackError::Entry {
            path: path.into(),
            op: "mknod (needs root)",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn lchown(path: &Path, uid: u64, gid: u64) -> Result<(), UnpackError> {
    let c = cpath(path)?;
    // SAFETY: valid C string; lchown does not retain it.
    let rc = unsafe { libc::lchown(c.as_ptr(), uid as libc::uid_t, gid as libc::gid_t) };
    if rc != 0 {
        return Err(UnpackError::Entry {
            path: path.into(),
            op: "lchown",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Sets an xattr on `path` (not following symlinks).
pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), UnpackError> {
    let c = cpath(path)?;
    let n = CString::new(name).map_err(|_| UnpackError::Entry {
        path: path.into(),
        op: "xattr name",
        source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"),
    })?;
    // SAFETY: valid C strings and a buffer of the given length; the kernel copies them.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(UnpackError::Entry {
            path: path.into(),
            op: "setxattr (trusted.* needs root)",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean_path(Path::new("/a/./b")), Some(PathBuf::from("a/b")));
        assert_eq!(clean_path(Path::new("./")), Some(PathBuf::new()));
        assert_eq!(clean_path(Path::new("a/../../b")), None);
    }
}
