//! The fallback where overlayfs is unavailable (kernel without `overlay`, or a store on a filesystem
//! overlayfs cannot use): copy the layer snapshots, bottom first, into one plain directory,
//! interpreting overlay's on-disk format as overlayfs would.
//!
//! A character device 0/0 deletes the path below it; a directory with `trusted.overlay.opaque=y`
//! replaces (not merges with) the directory below; everything else is copied with mode, ownership,
//! mtime and xattrs (except `trusted.overlay.*`), symlinks as symlinks, device nodes with mknod, and
//! files hard-linked within a layer stay hard-linked. Costs the image's full size in disk and time
//! per container, which is why it is opt-in. Invariant: the result is only marked complete
//! (`<container_dir>/rootfs.complete`) once every layer was applied; an incomplete copy is redone.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Copy failures.
#[derive(Debug, thiserror::Error)]
#[error("flatten {path}: {op}: {source}")]
pub struct FlattenError {
    pub path: PathBuf,
    pub op: &'static str,
    pub source: io::Error,
}

fn err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> FlattenError + 'a {
    move |source| FlattenError {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// A `timespec` from the 64-bit seconds/nanoseconds `MetadataExt` reports. On 32-bit targets
/// (armv7 glibc) `time_t` and `c_long` are 32 bits: a time past 2038 is clamped to the largest one
/// the platform can set rather than wrapped; nanoseconds are always below 10^9 and fit.
// On 64-bit targets the conversions are identities, which clippy would flag there.
#[allow(clippy::unnecessary_fallible_conversions, clippy::useless_conversion)]
pub(crate) fn timespec(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(sec).unwrap_or(if sec < 0 {
            libc::time_t::MIN
        } else {
            libc::time_t::MAX
        }),
        tv_nsec: libc::c_long::try_from(nsec).unwrap_or(0),
    }
}

/// Copies `layers` (snapshot directories, bottom first) into `<container_dir>/rootfs`.
pub fn flatten(layers: &[PathBuf], container_dir: &Path) -> Result<PathBuf, FlattenError> {
    let target = container_dir.join("rootfs");
    let done = container_dir.join("rootfs.complete");
    if done.exists() {
        return Ok(target);
    }
    if target.exists() {
        fs::remove_dir_all(&target).map_err(err(&target, "remove incomplete copy"))?;
    }
    fs::create_dir_all(&target).map_err(err(&target, "create"))?;
    for layer in layers {
        let mut links = HashMap::new();
        apply_dir(layer, &target, &mut links)?;
        copy_meta(layer, &target)?;
    }
    fs::write(&done, b"").map_err(err(&done, "mark complete"))?;
    Ok(target)
}

/// Removes what [`flatten`] created.
pub fn remove(container_dir: &Path) -> Result<(), FlattenError> {
    let done = container_dir.join("rootfs.complete");
    let _ = fs::remove_file(&done);
    let target = container_dir.join("rootfs");
    match fs::remove_dir_all(&target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FlattenError {
            path: target,
            op: "remove",
            source: e,
        }),
        _ => Ok(()),
    }
}

fn apply_dir(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), FlattenError> {
    for entry in fs::read_dir(src).map_err(err(src, "list"))? {
        let entry = entry.map_err(err(src, "list"))?;
        let s = entry.path();
        let d = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&s).map_err(err(&s, "stat"))?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            remove_any(&d)?; // whiteout
            continue;
        }
        if ft.is_dir() {
            let opaque = get_xattr(&s, "trusted.overlay.opaque").as_deref() == Some(b"y");
            match fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() && !opaque => {}
                Ok(_) => {
                    remove_any(&d)?;
                    fs::create_dir(&d).map_err(err(&d, "mkdir"))?;
                }
                Err(_) => fs::create_dir(&d).map_err(err(&d, "mkdir"))?,
            }
            apply_dir(&s, &d, links)?;
            copy_meta(&s, &d)?;
            continue;
        }
        remove_any(&d)?;
        if ft.is_symlink() {
            let t = fs::read_link(&s).map_err(err(&s, "readlink"))?;
            std::os::unix::fs::symlink(&t, &d).map_err(err(&d, "symlink"))?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1
                && let Some(first) = links.get(&key)
            {
                fs::hard_link(first, &d).map_err(err(&d, "link"))?;
                continue;
            }
            fs::copy(&s, &d).map_err(err(&d, "copy"))?;
            if meta.nlink() > 1 {
                links.insert(key, d.clone());
            }
        } else {
            let c = cpath(&d)?;
            // SAFETY: valid C string; mknod does not retain it.
            let rc = unsafe {
                libc::mknod(
                    c.as_ptr(),
                    meta.mode() as libc::mode_t,
                    meta.rdev() as libc::dev_t,
                )
            };
            if rc != 0 {
                return Err(FlattenError {
                    path: d,
                    op: "mknod",
                    source: io::Error::last_os_error(),
                });
            }
        }
        copy_meta(&s, &d)?;
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<(), FlattenError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(err(p, "remove")),
        Ok(_) => fs::remove_file(p).map_err(err(p, "remove")),
        Err(_) => Ok(()),
    }
}

fn cpath(p: &Path) -> Result<CString, FlattenError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| FlattenError {
        path: p.into(),
        op: "path",
        source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"),
    })
}

/// Ownership, mode (not for symlinks), xattrs and mtime from `s` to `d`.
fn copy_meta(s: &Path, d: &Path) -> Result<(), FlattenError> {
    let meta = fs::symlink_metadata(s).map_err(err(s, "stat"))?;
    let c = cpath(d)?;
    // SAFETY: valid C string.
    if unsafe { libc::lchown(c.as_ptr(), meta.uid(), meta.gid()) } != 0 {
        return Err(FlattenError {
            path: d.into(),
            op: "lchown",
            source: io::Error::last_os_error(),
        });
    }
    if !meta.file_type().is_symlink() {
        // After chown, which clears setuid/setgid bits.
        // SAFETY: valid C string.
        if unsafe { libc::chmod(c.as_ptr(), (meta.mode() & 0o7777) as libc::mode_t) } != 0 {
            return Err(FlattenError {
                path: d.into(),
                op: "chmod",
                source: io::Error::last_os_error(),
            });
        }
    }
    for name in list_xattrs(s) {
        if name.starts_with(b"trusted.overlay.") {
            continue;
        }
        if let Ok(n) = CString::new(name)
            && let Some(v) = get_xattr_c(s, &n)
        {
            // SAFETY: valid C strings and buffer.
            unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        }
    }
    let times = [
        timespec(meta.atime(), meta.atime_nsec()),
        timespec(meta.mtime(), meta.mtime_nsec()),
    ];
    // SAFETY: valid C string and a two-element timespec array.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    Ok(())
}

fn list_xattrs(p: &Path) -> Vec<Vec<u8>> {
    let Ok(c) = cpath(p) else { return vec![] };
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C string and buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return vec![];
    }
    buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    get_xattr_c(p, &CString::new(name).ok()?)
}

fn get_xattr_c(p: &Path, name: &CString) -> Option<Vec<u8>> {
    let c = cpath(p).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid C strings and buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}
