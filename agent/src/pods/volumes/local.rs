//! Volumes on the node's own disk: `emptyDir` (a directory under the pod's volume directory, or a
//! tmpfs for `medium: Memory`, sized by `sizeLimit`) and `hostPath` (the host path itself, after
//! the checks its `type` asks for).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, HostPathVolumeSource};

use super::VolumeError;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the emptyDir at `target` (world-writable, as kubelet's) and mounts its tmpfs.
pub fn empty_dir(e: &EmptyDirVolumeSource, target: &Path) -> Result<PathBuf, VolumeError> {
    std::fs::create_dir_all(target).map_err(io("creating", target))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o777))
        .map_err(io("chmod", target))?;
    if e.medium.as_deref() == Some("Memory") && !is_mountpoint(target) {
        let size = e
            .size_limit
            .as_ref()
            .and_then(|q| crate::pods::quantity::bytes(&q.0).ok())
            .map(|b| format!("size={b},mode=1777"))
            .unwrap_or_else(|| "mode=1777".into());
        nix::mount::mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(size.as_str()),
        )
        .map_err(|e| VolumeError::Io {
            op: "mounting tmpfs at",
            path: target.to_path_buf(),
            source: e.into(),
        })?;
    }
    Ok(target.to_path_buf())
}

/// The hostPath, checked (and created for the `*OrCreate` types).
pub fn host_path(h: &HostPathVolumeSource) -> Result<PathBuf, VolumeError> {
    let p = PathBuf::from(&h.path);
    let failed = |what: &str| VolumeError::HostPathType(format!("{} {what}", p.display()));
    match h.type_.as_deref().unwrap_or("") {
        "DirectoryOrCreate" => std::fs::create_dir_all(&p).map_err(io("creating", &p))?,
        "Directory" if !p.is_dir() => return Err(failed("is not a directory")),
        "FileOrCreate" if !p.exists() => {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
            }
            std::fs::File::create(&p).map_err(io("creating", &p))?;
        }
        "File" if !p.is_file() => return Err(failed("is not a file")),
        "Socket" | "CharDevice" | "BlockDevice" if !p.exists() => {
            return Err(failed("does not exist"));
        }
        _ => {}
    }
    Ok(p)
}

fn is_mountpoint(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(4) == Some(&*p.to_string_lossy()))
    })
}
