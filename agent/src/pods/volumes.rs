//! Pod volumes, prepared on the host before the first container starts and bind-mounted into
//! containers by `volumeMounts`: emptyDir (a directory, or a tmpfs for `medium: Memory`),
//! hostPath (with its `type` checks), configMap and secret (files written once, in kubelet's
//! atomic-writer layout: `..<timestamp>/` holding the files, `..data` pointing at it, and each
//! key a symlink through `..data`).
//!
//! Not yet: updates of configMap/secret volumes after the pod started, projected, downwardAPI
//! and persistentVolumeClaim volumes. A pod using one of those gets a clear error in its status
//! rather than a silently missing volume.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Pod, Secret, Volume};
use kube::Api;

/// A prepared volume: its host path, and whether it is always mounted read-only.
pub type Prepared = HashMap<String, (PathBuf, bool)>;

/// Prepares every volume of `pod` under `dir` (`<agent>/volumes/<uid>`); returns each volume's
/// host path by name.
pub async fn prepare(client: &kube::Client, pod: &Pod, dir: &Path) -> Result<Prepared, String> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut out = HashMap::new();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for v in volumes {
        let path = prepare_one(client, &ns, &v, &dir.join(&v.name))
            .await
            .map_err(|e| format!("volume {:?}: {e}", v.name))?;
        let readonly = v.config_map.is_some() || v.secret.is_some();
        out.insert(v.name.clone(), (path, readonly));
    }
    Ok(out)
}

async fn prepare_one(
    client: &kube::Client,
    ns: &str,
    v: &Volume,
    target: &Path,
) -> Result<PathBuf, String> {
    let io = |op: &str, p: &Path, e: std::io::Error| format!("{op} {}: {e}", p.display());
    if let Some(e) = &v.empty_dir {
        std::fs::create_dir_all(target).map_err(|e| io("creating", target, e))?;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| io("chmod", target, e))?;
        if e.medium.as_deref() == Some("Memory") && !is_mountpoint(target) {
            let size = e
                .size_limit
                .as_ref()
                .and_then(|q| super::quantity::bytes(&q.0).ok())
                .map(|b| format!("size={b},mode=1777"))
                .unwrap_or_else(|| "mode=1777".into());
            nix::mount::mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(size.as_str()),
            )
            .map_err(|e| format!("mounting tmpfs at {}: {e}", target.display()))?;
        }
        return Ok(target.to_path_buf());
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        match h.type_.as_deref().unwrap_or("") {
            "" => {}
            "DirectoryOrCreate" => {
                std::fs::create_dir_all(&p).map_err(|e| io("creating", &p, e))?;
            }
            "Directory" if !p.is_dir() => {
                return Err(format!(
                    "hostPath type check failed: {} is not a directory",
                    p.display()
                ));
            }
            "FileOrCreate" if !p.exists() => {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
                }
                std::fs::File::create(&p).map_err(|e| io("creating", &p, e))?;
            }
            "File" if !p.is_file() => {
                return Err(format!(
                    "hostPath type check failed: {} is not a file",
                    p.display()
                ));
            }
            "Socket" | "CharDevice" | "BlockDevice" if !p.exists() => {
                return Err(format!(
                    "hostPath type check failed: {} does not exist",
                    p.display()
                ));
            }
            _ => {}
        }
        return Ok(p);
    }
    if let Some(c) = &v.config_map {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let data = match api.get_opt(&c.name).await.map_err(|e| e.to_string())? {
            Some(cm) => {
                let mut d: HashMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                for (k, v) in cm.binary_data.unwrap_or_default() {
                    d.insert(k, v.0);
                }
                d
            }
            None if c.optional == Some(true) => HashMap::new(),
            None => return Err(format!("configmap {ns}/{} not found", c.name)),
        };
        write_atomic_dir(
            target,
            &data,
            c.items.as_deref(),
            c.default_mode.unwrap_or(0o644),
        )?;
        return Ok(target.to_path_buf());
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let data = match api.get_opt(&name).await.map_err(|e| e.to_string())? {
            Some(sec) => {
                let mut d: HashMap<String, Vec<u8>> = sec
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in sec.string_data.unwrap_or_default() {
                    d.insert(k, v.into_bytes());
                }
                d
            }
            None if s.optional == Some(true) => HashMap::new(),
            None => return Err(format!("secret {ns}/{name} not found")),
        };
        write_atomic_dir(
            target,
            &data,
            s.items.as_deref(),
            s.default_mode.unwrap_or(0o644),
        )?;
        return Ok(target.to_path_buf());
    }
    let kind = serde_json::to_value(v)
        .ok()
        .and_then(|j| {
            j.as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        })
        .unwrap_or_else(|| "unknown".into());
    Err(format!("{kind} volumes are not supported by r3s yet"))
}

/// kubelet's atomic-writer layout, written once.
fn write_atomic_dir(
    target: &Path,
    data: &HashMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
) -> Result<(), String> {
    let io = |op: &str, p: &Path, e: std::io::Error| format!("{op} {}: {e}", p.display());
    if target.join("..data").exists() {
        return Ok(());
    }
    let stamp = format!("..{}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S.%f"));
    let version = target.join(&stamp);
    std::fs::create_dir_all(&version).map_err(|e| io("creating", &version, e))?;
    let files: Vec<(String, &Vec<u8>, i32)> = match items {
        Some(items) => items
            .iter()
            .filter_map(|i| {
                data.get(&i.key)
                    .map(|d| (i.path.clone(), d, i.mode.unwrap_or(default_mode)))
            })
            .collect(),
        None => data
            .iter()
            .map(|(k, d)| (k.clone(), d, default_mode))
            .collect(),
    };
    let mut top = Vec::new();
    for (rel, body, mode) in files {
        if rel.split('/').any(|c| c == ".." || c.is_empty()) || rel.starts_with('/') {
            return Err(format!("invalid path {rel:?}"));
        }
        let p = version.join(&rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
        }
        std::fs::write(&p, body).map_err(|e| io("writing", &p, e))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode as u32 & 0o777))
            .map_err(|e| io("chmod", &p, e))?;
        let first = rel.split('/').next().unwrap_or(&rel).to_owned();
        if !top.contains(&first) {
            top.push(first);
        }
    }
    let tmp = target.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(|e| io("linking", &tmp, e))?;
    std::fs::rename(&tmp, target.join("..data")).map_err(|e| io("renaming", &tmp, e))?;
    for name in top {
        let link = target.join(&name);
        std::os::unix::fs::symlink(format!("..data/{name}"), &link)
            .map_err(|e| io("linking", &link, e))?;
    }
    Ok(())
}

fn is_mountpoint(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(4) == Some(&*p.to_string_lossy()))
    })
}

/// Unmounts (tmpfs) and removes every volume of a pod.
pub fn remove(dir: &Path) {
    crate::runtime::cleanup::unmount_below(dir);
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_layout() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("cfg");
        let mut data = HashMap::new();
        data.insert("a".to_string(), b"1".to_vec());
        data.insert("b".to_string(), b"2".to_vec());
        write_atomic_dir(&t, &data, None, 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(t.join("a")).unwrap(), "1");
        assert_eq!(
            std::fs::read_link(t.join("a")).unwrap(),
            PathBuf::from("..data/a")
        );
        assert!(
            std::fs::read_link(t.join("..data"))
                .unwrap()
                .to_string_lossy()
                .starts_with("..")
        );
        let t2 = dir.path().join("items");
        let items: Vec<KeyToPath> = vec![
            serde_json::from_value(serde_json::json!({"key": "b", "path": "sub/renamed"})).unwrap(),
        ];
        write_atomic_dir(&t2, &data, Some(&items), 0o600).unwrap();
        assert_eq!(
            std::fs::read_to_string(t2.join("sub/renamed")).unwrap(),
            "2"
        );
        assert!(!t2.join("a").exists());
        let bad: Vec<KeyToPath> =
            vec![serde_json::from_value(serde_json::json!({"key": "b", "path": "../x"})).unwrap()];
        assert!(write_atomic_dir(&dir.path().join("bad"), &data, Some(&bad), 0o600).is_err());
    }
}
