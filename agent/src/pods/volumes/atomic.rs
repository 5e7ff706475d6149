//! kubelet's atomic-writer layout for volumes whose content comes from the API (configMap, secret,
//! downwardAPI, projected): each version is a hidden directory `..<timestamp>/` holding the files,
//! `..data` is a symlink to the current one, and every top-level path is a symlink through
//! `..data`. A new version is written completely beside the old one, then `..data` is swapped with
//! one `rename(2)`, so a reader in the container sees either the whole old or the whole new set,
//! never a mix.
//!
//! Invariants: paths are relative and never leave the volume (no `..` component, no absolute
//! path); after [`write`] returns `Ok`, `..data` names a complete version and only that version
//! directory remains.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One file of a volume version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    /// Relative path inside the volume (may contain `/`).
    pub path: String,
    pub data: Vec<u8>,
    /// Permission bits (`defaultMode`/`mode`, 0..=0o777).
    pub mode: u32,
}

/// Why a volume could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    #[error("invalid path {0:?}: must be relative and may not contain '..'")]
    InvalidPath(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AtomicError + 'a {
    move |source| AtomicError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `target` already holds a version.
pub fn has_version(target: &Path) -> bool {
    std::fs::symlink_metadata(target.join("..data")).is_ok()
}

/// Writes `files` as the new version of the volume at `target` unless the current version holds
/// exactly the same files (same paths, bytes and modes). Returns whether it wrote.
pub fn write(target: &Path, files: &[File]) -> Result<bool, AtomicError> {
    for f in files {
        let bad = f.path.is_empty()
            || f.path.starts_with('/')
            || f.path.split('/').any(|c| c == ".." || c.is_empty())
            || f.path.starts_with("..");
        if bad {
            return Err(AtomicError::InvalidPath(f.path.clone()));
        }
    }
    std::fs::create_dir_all(target).map_err(io("creating", target))?;
    let old = std::fs::read_link(target.join("..data")).ok();
    if let Some(old) = &old
        && same_content(&target.join(old), files)
    {
        return Ok(false);
    }
    let stamp = format!("..{}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S.%f"));
    let version = target.join(&stamp);
    std::fs::create_dir_all(&version).map_err(io("creating", &version))?;
    for f in files {
        let p = version.join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        std::fs::write(&p, &f.data).map_err(io("writing", &p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode & 0o777))
            .map_err(io("chmod", &p))?;
    }
    let tmp = target.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(io("linking", &tmp))?;
    std::fs::rename(&tmp, target.join("..data")).map_err(io("renaming", &tmp))?;
    // Top-level names: new ones get a link through `..data`, vanished ones lose theirs.
    let top = |files: &[File]| -> Vec<String> {
        let mut names: Vec<String> = files
            .iter()
            .map(|f| f.path.split('/').next().unwrap_or(&f.path).to_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let wanted = top(files);
    for name in &wanted {
        let link = target.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link)
                .map_err(io("linking", &link))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(target) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !wanted.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(old) = old
        && old.as_os_str() != std::ffi::OsStr::new(&stamp)
    {
        let _ = std::fs::remove_dir_all(target.join(old));
    }
    Ok(true)
}

/// Whether the version directory `dir` holds exactly `files`.
fn same_content(dir: &Path, files: &[File]) -> bool {
    let mut count = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            return false;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                count += 1;
            }
        }
    }
    count == files.len()
        && files.iter().all(|f| {
            let p = dir.join(&f.path);
            std::fs::read(&p).is_ok_and(|d| d == f.data)
                && std::fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o777 == f.mode)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &str, mode: u32) -> File {
        File {
            path: path.into(),
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn versions_swap_whole_and_old_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("vol");
        assert!(!has_version(&t));
        let v1 = vec![file("a", "1", 0o644), file("sub/b", "2", 0o600)];
        assert!(write(&t, &v1).unwrap());
        assert!(has_version(&t));
        assert_eq!(std::fs::read_to_string(t.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(t.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(t.join("a")).unwrap(),
            PathBuf::from("..data/a")
        );
        let mode = std::fs::metadata(t.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = std::fs::read_link(t.join("..data")).unwrap();

        // The same content: nothing written.
        assert!(!write(&t, &v1).unwrap());
        assert_eq!(std::fs::read_link(t.join("..data")).unwrap(), first);

        // New content: a new version, `a` changed, `sub` gone, `c` new, the old version removed.
        let v2 = vec![file("a", "one", 0o644), file("c", "3", 0o644)];
        assert!(write(&t, &v2).unwrap());
        assert_eq!(std::fs::read_to_string(t.join("a")).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(t.join("c")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(t.join("sub")).is_err());
        assert!(!t.join(&first).exists());
        let versions = std::fs::read_dir(&t)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(versions, 1);
        // A mode change alone is a change.
        assert!(write(&t, &[file("a", "one", 0o600), file("c", "3", 0o644)]).unwrap());
    }

    #[test]
    fn paths_may_not_escape() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "..data"] {
            assert!(
                matches!(
                    write(&dir.path().join("v"), &[file(bad, "x", 0o644)]),
                    Err(AtomicError::InvalidPath(_))
                ),
                "{bad}"
            );
        }
    }
}
