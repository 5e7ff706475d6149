//! The pod sandbox: the network, IPC and UTS namespaces every container of a pod joins, held open
//! by bind mounts of their nsfs files (no pause process), plus the pod's `/etc/hosts`,
//! `/etc/resolv.conf` and `/etc/hostname`.
//!
//! Namespaces are made on a short-lived thread that `unshare`s them (a thread may do that in a
//! multi-threaded process for these three kinds), sets the hostname and the
//! `ping_group_range` sysctl (as containerd does, so unprivileged ping works), and bind-mounts
//! `/proc/thread-self/ns/<kind>` onto a file. The namespace lives as long as that mount.
//! Invariants: a host namespace (hostNetwork, hostIPC) is never unshared or mounted; teardown is
//! idempotent and tolerates a half-built sandbox.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// Sandbox failures.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox {dir}: {op}: {source}")]
    Io {
        dir: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox {dir}: the namespace thread panicked")]
    Thread { dir: PathBuf },
    #[error("sandbox {dir}: loopback: {message}")]
    Loopback { dir: PathBuf, message: String },
}

/// Which namespaces are the pod's own.
#[derive(Debug, Clone, Copy)]
pub struct Isolation {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

/// A built sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub dir: PathBuf,
    /// Namespace files; `None` = the host's.
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pod_ip: Option<IpAddr>,
    /// Attached to the pod network by CNI ADD (so teardown runs CNI DEL).
    pub cni: bool,
}

impl Sandbox {
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    pub fn hostname(&self) -> PathBuf {
        self.dir.join("hostname")
    }
    /// The pod's `/dev/shm` (a tmpfs shared by its containers, as with kubelet's sandbox).
    pub fn shm(&self) -> PathBuf {
        self.dir.join("shm")
    }
}

const KINDS: [(&str, CloneFlags); 3] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
];

/// Creates the namespaces at `dir/{net,ipc,uts}` for the kinds `iso` isolates.
pub fn create_namespaces(
    dir: &Path,
    iso: Isolation,
    hostname: &str,
) -> Result<Sandbox, SandboxError> {
    let io = |op| {
        move |source| SandboxError::Io {
            dir: dir.to_path_buf(),
            op,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create directory"))?;
    let wanted: Vec<(&str, CloneFlags)> = KINDS
        .iter()
        .copied()
        .filter(|(k, _)| match *k {
            "net" => iso.net,
            "ipc" => iso.ipc,
            _ => iso.uts,
        })
        .collect();
    let mut sb = Sandbox {
        dir: dir.to_path_buf(),
        net: None,
        ipc: None,
        uts: None,
        pod_ip: None,
        cni: false,
    };
    if wanted.is_empty() {
        return Ok(sb);
    }
    for (k, _) in &wanted {
        let f = dir.join(k);
        std::fs::File::create(&f).map_err(io("create namespace file"))?;
    }
    let flags = wanted
        .iter()
        .fold(CloneFlags::empty(), |acc, (_, f)| acc | *f);
    let hostname = hostname.to_owned();
    let d = dir.to_path_buf();
    let kinds: Vec<&str> = wanted.iter().map(|(k, _)| *k).collect();
    let result = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), SandboxError> {
            let errno = |op| {
                let d = d.clone();
                move |e: nix::Error| SandboxError::Io {
                    dir: d,
                    op,
                    source: e.into(),
                }
            };
            nix::sched::unshare(flags).map_err(errno("unshare"))?;
            if flags.contains(CloneFlags::CLONE_NEWUTS) {
                nix::unistd::sethostname(&hostname).map_err(errno("sethostname"))?;
            }
            if flags.contains(CloneFlags::CLONE_NEWNET) {
                // /proc/sys/net follows the opening thread's network namespace.
                std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647").map_err(
                    |source| SandboxError::Io {
                        dir: d.clone(),
                        op: "set ping_group_range",
                        source,
                    },
                )?;
            }
            for k in &kinds {
                let src = format!("/proc/thread-self/ns/{k}");
                nix::mount::mount(
                    Some(src.as_str()),
                    &d.join(k),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(errno("bind-mount namespace"))?;
            }
            Ok(())
        })
        .join()
    });
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            unmount_namespaces(dir);
            return Err(e);
        }
        Err(_) => {
            unmount_namespaces(dir);
            return Err(SandboxError::Thread {
                dir: dir.to_path_buf(),
            });
        }
    }
    for k in kinds {
        let p = Some(dir.join(k));
        match k {
            "net" => sb.net = p,
            "ipc" => sb.ipc = p,
            _ => sb.uts = p,
        }
    }
    Ok(sb)
}

/// Brings `lo` up in the sandbox's network namespace (a new namespace starts with it down).
pub async fn loopback_up(net: &Path) -> Result<(), SandboxError> {
    let err = |message: String| SandboxError::Loopback {
        dir: net.to_path_buf(),
        message,
    };
    let h = r3s_cni::netns::connect(Some(net)).map_err(|e| err(e.to_string()))?;
    let lo = r3s_cni::nl::require_link(&h, "lo")
        .await
        .map_err(|e| err(e.to_string()))?;
    r3s_cni::nl::set_up(&h, &lo)
        .await
        .map_err(|e| err(e.to_string()))
}

/// Mounts the pod's shared `/dev/shm` tmpfs (64 MiB, Docker's and containerd's default size).
pub fn mount_shm(dir: &Path) -> Result<PathBuf, SandboxError> {
    let shm = dir.join("shm");
    std::fs::create_dir_all(&shm).map_err(|source| SandboxError::Io {
        dir: dir.to_path_buf(),
        op: "create shm directory",
        source,
    })?;
    nix::mount::mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(|e| SandboxError::Io {
        dir: dir.to_path_buf(),
        op: "mount shm",
        source: e.into(),
    })?;
    Ok(shm)
}

/// Unmounts and removes the namespace files and the directory (idempotent).
pub fn unmount_namespaces(dir: &Path) {
    let _ = nix::mount::umount2(&dir.join("shm"), MntFlags::MNT_DETACH);
    for (k, _) in KINDS {
        let f = dir.join(k);
        let _ = nix::mount::umount2(&f, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&f);
    }
}

/// Removes the whole sandbox directory after [`unmount_namespaces`].
pub fn remove(dir: &Path) {
    unmount_namespaces(dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// `/etc/hosts` for a pod with its own network namespace.
pub fn hosts_file(
    pod_ip: Option<IpAddr>,
    hostname: &str,
    aliases: &[(String, Vec<String>)],
) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    if !aliases.is_empty() {
        s.push_str("\n# Entries added by HostAliases.\n");
        for (ip, names) in aliases {
            s.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
    }
    s
}

/// `/etc/resolv.conf` for dnsPolicy ClusterFirst.
pub fn cluster_resolv_conf(dns: IpAddr, namespace: &str, domain: &str) -> String {
    format!(
        "search {namespace}.svc.{domain} svc.{domain} {domain}\nnameserver {dns}\noptions ndots:5\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_resolv() {
        let h = hosts_file(
            Some("10.42.0.5".parse().unwrap()),
            "web",
            &[("1.2.3.4".into(), vec!["a".into(), "b".into()])],
        );
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("10.42.0.5\tweb\n"));
        assert!(h.ends_with("1.2.3.4\ta\tb\n"));
        let r = cluster_resolv_conf("10.43.0.10".parse().unwrap(), "default", "cluster.local");
        assert_eq!(
            r,
            "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
    }
}
