//! From a pod's container, its image's config and the pod sandbox to the runtime's
//! [`ContainerConfig`]: command (ENTRYPOINT/CMD versus command/args as upstream), working
//! directory, user and groups (securityContext over the image's `User`), capabilities,
//! privileged, read-only rootfs, no_new_privs, resources and the sandbox's files and namespaces.
//! Pure except for reading `/etc/passwd` and `/etc/group` inside the rootfs to resolve names.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, SecurityContext};
use oci_spec::image::ImageConfiguration;

use super::quantity;
use super::sandbox::Sandbox;
use crate::runtime::spec::{self, BindMount, ContainerConfig, Ns};

/// Why a container cannot be configured (kubelet: `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no command specified")]
    NoCommand,
    #[error("container has runAsNonRoot and image will run as root")]
    RunsAsRoot,
    #[error(
        "container has runAsNonRoot and image has non-numeric user ({0}), cannot verify user is non-root"
    )]
    NonNumericUser(String),
    #[error("unable to find user {0} in the image")]
    UnknownUser(String),
    #[error("unable to find group {0} in the image")]
    UnknownGroup(String),
    #[error("resources: {0}")]
    Quantity(#[from] quantity::QuantityError),
    #[error("unknown capability {0}")]
    Capability(String),
    #[error("volumeMount {0:?} names no volume of the pod")]
    UnknownVolume(String),
    #[error("volumeMount {name:?}: invalid subPath {sub_path:?}")]
    SubPath { name: String, sub_path: String },
}

/// The process arguments: `command` replaces ENTRYPOINT (and drops CMD), `args` replaces CMD.
pub fn command(c: &Container, image: &ImageConfiguration) -> Result<Vec<String>, ConfigError> {
    let cfg = image.config().as_ref();
    let entrypoint = cfg.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let cmd = cfg.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let args = match (&c.command, &c.args) {
        (Some(command), args) if !command.is_empty() => {
            let mut v = command.clone();
            v.extend(args.clone().unwrap_or_default());
            v
        }
        (_, Some(args)) if !args.is_empty() => {
            let mut v = entrypoint;
            v.extend(args.clone());
            v
        }
        _ => {
            let mut v = entrypoint;
            v.extend(cmd);
            v
        }
    };
    if args.is_empty() {
        return Err(ConfigError::NoCommand);
    }
    Ok(args)
}

/// The effective security context: the container's fields over the pod's.
fn merged_ids(pod: &Pod, sc: Option<&SecurityContext>) -> (Option<i64>, Option<i64>, Option<bool>) {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|p| p.run_as_user));
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|p| p.run_as_group));
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(psc.and_then(|p| p.run_as_non_root));
    (uid, gid, non_root)
}

fn lookup(file: &Path, name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.first() == Some(&name) {
            let id = f.get(2)?.parse().ok()?;
            let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
            Some((id, gid))
        } else {
            None
        }
    })
}

/// (uid, gid) from the image's `User` (`name`, `uid`, `name:group`, `uid:gid`).
pub fn image_user(user: &str, rootfs: &Path) -> Result<(u32, u32, bool), ConfigError> {
    if user.is_empty() {
        return Ok((0, 0, true));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let numeric = u.parse::<u32>().is_ok();
    let (uid, default_gid) = match u.parse::<u32>() {
        Ok(uid) => (
            uid,
            lookup_by_uid(&rootfs.join("etc/passwd"), uid).unwrap_or(0),
        ),
        Err(_) => lookup(&rootfs.join("etc/passwd"), u)
            .ok_or_else(|| ConfigError::UnknownUser(u.into()))?,
    };
    let gid = match g {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                lookup(&rootfs.join("etc/group"), g)
                    .ok_or_else(|| ConfigError::UnknownGroup(g.into()))?
                    .0
            }
        },
    };
    Ok((uid, gid, numeric))
}

fn lookup_by_uid(passwd: &Path, uid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f.get(3)?.parse().ok())?
    })
}

/// Everything besides the environment (resolved by [`super::env`]).
pub struct Inputs<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageConfiguration,
    pub env: Vec<String>,
    pub rootfs: &'a Path,
    pub sandbox: &'a Sandbox,
    pub cgroups_path: PathBuf,
    pub host_pid: bool,
    pub volumes: &'a super::volumes::Prepared,
}

pub fn config(i: Inputs<'_>) -> Result<ContainerConfig, ConfigError> {
    let c = i.container;
    let sc = c.security_context.as_ref();
    let args = command(c, i.image)?;
    let img = i.image.config().as_ref();
    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| {
            img.and_then(|c| c.working_dir().clone())
                .filter(|w| !w.is_empty())
        })
        .unwrap_or_else(|| "/".into());

    let (run_uid, run_gid, non_root) = merged_ids(i.pod, sc);
    let image_user_str = img.and_then(|c| c.user().clone()).unwrap_or_default();
    let (uid, gid) = match run_uid {
        Some(uid) => {
            let uid = u32::try_from(uid).map_err(|_| ConfigError::UnknownUser(uid.to_string()))?;
            let gid = lookup_by_uid(&i.rootfs.join("etc/passwd"), uid).unwrap_or(0);
            (uid, gid)
        }
        None => {
            let (uid, gid, numeric) = image_user(&image_user_str, i.rootfs)?;
            if non_root == Some(true) && !numeric && !image_user_str.is_empty() {
                return Err(ConfigError::NonNumericUser(image_user_str));
            }
            (uid, gid)
        }
    };
    if non_root == Some(true) && uid == 0 {
        return Err(ConfigError::RunsAsRoot);
    }
    let gid = run_gid.and_then(|g| u32::try_from(g).ok()).unwrap_or(gid);
    let psc = i
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref());
    let mut additional_gids: Vec<u32> = psc
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|g| u32::try_from(g).ok())
        .collect();
    if let Some(fs) = psc
        .and_then(|p| p.fs_group)
        .and_then(|g| u32::try_from(g).ok())
    {
        additional_gids.push(fs);
    }

    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let mut capabilities = spec::default_capabilities();
    if let Some(caps) = sc.and_then(|s| s.capabilities.as_ref()) {
        for name in caps.drop.iter().flatten() {
            if name.eq_ignore_ascii_case("ALL") {
                capabilities.clear();
            } else {
                let cap = spec::parse_capability(name)
                    .ok_or_else(|| ConfigError::Capability(name.clone()))?;
                capabilities.retain(|c| *c != cap);
            }
        }
        for name in caps.add.iter().flatten() {
            if name.eq_ignore_ascii_case("ALL") {
                capabilities = spec::all_capabilities();
            } else {
                let cap = spec::parse_capability(name)
                    .ok_or_else(|| ConfigError::Capability(name.clone()))?;
                if !capabilities.contains(&cap) {
                    capabilities.push(cap);
                }
            }
        }
    }

    let res = c.resources.as_ref();
    let get = |which: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
               name: &str| { which.and_then(|m| m.get(name)).map(|q| q.0.clone()) };
    let limits = res.and_then(|r| r.limits.as_ref());
    let requests = res.and_then(|r| r.requests.as_ref());
    let memory_limit = get(limits, "memory")
        .map(|q| quantity::bytes(&q))
        .transpose()?;
    let cpu_limit = get(limits, "cpu")
        .map(|q| quantity::milli_cpu(&q))
        .transpose()?;
    // A missing request defaults to the limit (API defaulting does that upstream).
    let cpu_request = match get(requests, "cpu") {
        Some(q) => Some(quantity::milli_cpu(&q)?),
        None => cpu_limit,
    };

    let sb = i.sandbox;
    let mounts = vec![
        BindMount {
            source: sb.hosts(),
            destination: "/etc/hosts".into(),
            readonly: false,
        },
        BindMount {
            source: sb.resolv_conf(),
            destination: "/etc/resolv.conf".into(),
            readonly: false,
        },
        BindMount {
            source: sb.hostname(),
            destination: "/etc/hostname".into(),
            readonly: false,
        },
    ];
    let mut mounts = mounts;
    // The pod's shared /dev/shm (not with hostIPC: the default per-container tmpfs stays).
    if sb.ipc.is_some() {
        mounts.push(BindMount {
            source: sb.shm(),
            destination: "/dev/shm".into(),
            readonly: false,
        });
    }
    for vm in c.volume_mounts.iter().flatten() {
        let (source, forced_ro) = i
            .volumes
            .get(&vm.name)
            .ok_or_else(|| ConfigError::UnknownVolume(vm.name.clone()))?;
        let mut source = source.clone();
        if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub.starts_with('/') || sub.split('/').any(|c| c == "..") {
                return Err(ConfigError::SubPath {
                    name: vm.name.clone(),
                    sub_path: sub.into(),
                });
            }
            source = source.join(sub);
            if !source.exists() {
                let _ = std::fs::create_dir_all(&source);
            }
        }
        mounts.push(BindMount {
            source,
            destination: vm.mount_path.clone().into(),
            readonly: *forced_ro || vm.read_only.unwrap_or(false),
        });
    }
    let ns = |p: &Option<PathBuf>| p.clone().map(Ns::Path).unwrap_or(Ns::Host);
    Ok(ContainerConfig {
        args,
        env: i.env,
        cwd,
        uid,
        gid,
        additional_gids,
        readonly_rootfs: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        net: ns(&sb.net),
        ipc: ns(&sb.ipc),
        uts: ns(&sb.uts),
        pid: if i.host_pid { Ns::Host } else { Ns::New },
        cgroups_path: i.cgroups_path,
        memory_limit,
        cpu_shares: Some(quantity::shares(cpu_request.unwrap_or(0))),
        cpu_quota: cpu_limit.map(quantity::quota),
        capabilities,
        privileged,
        no_new_privileges: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        mounts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfiguration {
        let mut cfg = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "config": {}});
        if let Some(e) = entrypoint {
            cfg["config"]["Entrypoint"] = serde_json::json!(e);
        }
        if let Some(c) = cmd {
            cfg["config"]["Cmd"] = serde_json::json!(c);
        }
        serde_json::from_value(cfg).unwrap()
    }

    fn container(command: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        Container {
            name: "c".into(),
            command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
            args: args.map(|c| c.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn entrypoint_cmd_command_args() {
        let img = image(Some(&["/ep"]), Some(&["cmd1"]));
        let check =
            |c, a, want: &[&str]| assert_eq!(command(&container(c, a), &img).unwrap(), want);
        check(None, None, &["/ep", "cmd1"]);
        check(None, Some(&["a1"]), &["/ep", "a1"]);
        check(Some(&["/c"]), None, &["/c"]);
        check(Some(&["/c"]), Some(&["a1"]), &["/c", "a1"]);
        assert_eq!(
            command(&container(None, None), &image(None, None)),
            Err(ConfigError::NoCommand)
        );
    }

    #[test]
    fn users_from_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\nwww:x:33:34::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(image_user("", dir.path()).unwrap(), (0, 0, true));
        assert_eq!(image_user("www", dir.path()).unwrap(), (33, 34, false));
        assert_eq!(image_user("33", dir.path()).unwrap(), (33, 34, true));
        assert_eq!(
            image_user("www:staff", dir.path()).unwrap(),
            (33, 50, false)
        );
        assert_eq!(
            image_user("1000:1000", dir.path()).unwrap(),
            (1000, 1000, true)
        );
        assert!(image_user("nobody", dir.path()).is_err());
    }
}
