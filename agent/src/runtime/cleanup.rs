//! Removing what containers leave behind: cgroup directories (libcontainer deletes a container's
//! own cgroup but not the per-pod parent) and, for a full stop of the agent (tests, uninstall),
//! every container under a state root.

use std::path::{Path, PathBuf};

use super::Runtime;

/// The cgroup root directories of this host: each v1 hierarchy, plus the v2 one.
fn hierarchies() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut out = vec![base.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(base) {
        for e in entries.flatten() {
            let p = e.path();
            // Symlinks like cpu -> cpu,cpuacct name the same hierarchy twice.
            if p.is_dir() && !p.is_symlink() {
                out.push(p);
            }
        }
    }
    out
}

/// Removes the cgroup `rel` (absolute cgroups path like `/r3s/pod<uid>`) and its empty children
/// in every hierarchy. Directories still holding processes stay (rmdir fails with EBUSY).
pub fn remove_cgroup(rel: &Path) {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    if rel.as_os_str().is_empty() {
        return;
    }
    for h in hierarchies() {
        rmdir_tree(&h.join(rel));
    }
}

fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Kills and deletes every container under `runtime`'s state root; returns their ids.
pub async fn delete_all(runtime: &Runtime) -> Vec<String> {
    let ids = runtime.list();
    for id in &ids {
        if let Err(e) = runtime.delete(id).await {
            tracing::warn!("{e}");
        }
    }
    ids
}

/// Detaches every mount at or below `dir` (deepest first), e.g. leftover rootfs overlays and
/// namespace bind mounts of a stopped agent.
pub fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut targets: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    targets.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for t in targets {
        let _ = nix::mount::umount2(&t, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_unescape() {
        assert_eq!(super::unescape("/a\\040b"), "/a b");
        assert_eq!(super::unescape("/plain"), "/plain");
    }
}
