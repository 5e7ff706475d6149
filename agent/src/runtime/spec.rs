//! OCI runtime specs for pod containers, built from a [`ContainerConfig`] (already resolved from
//! the pod and the image by `pods::container`).
//!
//! Starts from oci-spec's runc-like default (mounts of /proc, /dev, /sys..., masked and read-only
//! paths) and changes what a pod needs: the sandbox's network, IPC and UTS namespaces joined by
//! path (or the host's), a fresh PID, mount and cgroup namespace per container, containerd's
//! default capability set, resources, bind mounts. Invariants: the cgroups path is absolute (plain
//! cgroupfs, never systemd) and there is never a seccomp profile (see [`super`]).

use std::path::PathBuf;
use std::str::FromStr;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

/// Where a container gets one of the pod-wide namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ns {
    /// The host's (hostNetwork, hostIPC, hostPID): no namespace entry at all.
    Host,
    /// Join the namespace held at this path (a sandbox bind mount).
    Path(PathBuf),
    /// A new one for this container only.
    New,
}

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub readonly: bool,
}

/// Everything the spec is made from.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub readonly_rootfs: bool,
    pub net: Ns,
    pub ipc: Ns,
    pub uts: Ns,
    pub pid: Ns,
    /// Absolute cgroup path, e.g. `/r3s/pod<uid>/<container>`.
    pub cgroups_path: PathBuf,
    pub memory_limit: Option<i64>,
    pub cpu_shares: Option<u64>,
    /// CPU quota in microseconds per [`CPU_PERIOD`].
    pub cpu_quota: Option<i64>,
    pub capabilities: Vec<Capability>,
    pub privileged: bool,
    pub no_new_privileges: bool,
    pub mounts: Vec<BindMount>,
}

/// The CFS period kubelet uses (100 ms).
pub const CPU_PERIOD: u64 = 100_000;

/// The capabilities containerd gives a container that asks for none (and so k3s's pods get).
pub fn default_capabilities() -> Vec<Capability> {
    use Capability::*;
    vec![
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
}

/// Every capability this crate knows, for privileged containers and `ALL`.
pub fn all_capabilities() -> Vec<Capability> {
    const NAMES: &[&str] = &[
        "AUDIT_CONTROL",
        "AUDIT_READ",
        "AUDIT_WRITE",
        "BLOCK_SUSPEND",
        "BPF",
        "CHECKPOINT_RESTORE",
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "IPC_LOCK",
        "IPC_OWNER",
        "KILL",
        "LEASE",
        "LINUX_IMMUTABLE",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "MKNOD",
        "NET_ADMIN",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_RAW",
        "PERFMON",
        "SETGID",
        "SETFCAP",
        "SETPCAP",
        "SETUID",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_CHROOT",
        "SYS_MODULE",
        "SYS_NICE",
        "SYS_PACCT",
        "SYS_PTRACE",
        "SYS_RAWIO",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "SYSLOG",
        "WAKE_ALARM",
    ];
    NAMES.iter().filter_map(|n| parse_capability(n)).collect()
}

/// `NET_ADMIN` or `CAP_NET_ADMIN` (any case) as Kubernetes and OCI spell them.
pub fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).ok()
}

fn ns(typ: LinuxNamespaceType, path: Option<PathBuf>) -> Result<LinuxNamespace, OciSpecError> {
    let mut b = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(p) = path {
        b = b.path(p);
    }
    b.build()
}

/// Builds the spec for a bundle whose rootfs directory is `rootfs` (relative to the bundle or
/// absolute).
pub fn build(cfg: &ContainerConfig, rootfs: PathBuf) -> Result<Spec, OciSpecError> {
    let def = Spec::default();
    let def_linux = def.linux().clone().unwrap_or_default();

    let mut namespaces = vec![
        ns(LinuxNamespaceType::Mount, None)?,
        ns(LinuxNamespaceType::Cgroup, None)?,
    ];
    for (typ, mode) in [
        (LinuxNamespaceType::Network, &cfg.net),
        (LinuxNamespaceType::Ipc, &cfg.ipc),
        (LinuxNamespaceType::Uts, &cfg.uts),
        (LinuxNamespaceType::Pid, &cfg.pid),
    ] {
        match mode {
            Ns::Host => {}
            Ns::New => namespaces.push(ns(typ, None)?),
            Ns::Path(p) => namespaces.push(ns(typ, Some(p.clone()))?),
        }
    }

    let mut resources = LinuxResourcesBuilder::default();
    if let Some(limit) = cfg.memory_limit {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
    }
    if cfg.cpu_shares.is_some() || cfg.cpu_quota.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(s) = cfg.cpu_shares {
            cpu = cpu.shares(s);
        }
        if let Some(q) = cfg.cpu_quota {
            cpu = cpu.quota(q).period(CPU_PERIOD);
        }
        resources = resources.cpu(cpu.build()?);
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(cfg.cgroups_path.clone())
        .resources(resources.build()?);
    if !cfg.privileged {
        linux = linux
            .masked_paths(def_linux.masked_paths().clone().unwrap_or_default())
            .readonly_paths(def_linux.readonly_paths().clone().unwrap_or_default());
    }

    let caps: std::collections::HashSet<Capability> = if cfg.privileged {
        all_capabilities().into_iter().collect()
    } else {
        cfg.capabilities.iter().copied().collect()
    };
    // Root gets the set as effective and permitted; a non-root user keeps only the bounding set
    // (as containerd does: file capabilities and setuid binaries can still use it).
    let (effective, permitted) = if cfg.uid == 0 {
        (caps.clone(), caps.clone())
    } else {
        (
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
        )
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(effective)
        .permitted(permitted)
        .inheritable(std::collections::HashSet::<Capability>::new())
        .ambient(std::collections::HashSet::<Capability>::new())
        .build()?;

    let process = ProcessBuilder::default()
        .args(cfg.args.clone())
        .env(cfg.env.clone())
        .cwd(cfg.cwd.clone())
        .user(
            UserBuilder::default()
                .uid(cfg.uid)
                .gid(cfg.gid)
                .additional_gids(cfg.additional_gids.clone())
                .build()?,
        )
        .no_new_privileges(cfg.no_new_privileges)
        .capabilities(capabilities)
        // No rlimits: containers inherit the agent's, as containerd's do (oci-spec's default
        // would cap open files at 1024).
        .rlimits(Vec::new())
        .build()?;

    let mut mounts: Vec<Mount> = def.mounts().clone().unwrap_or_default();
    // A bind mount replaces a default mount at the same place (e.g. the pod's shared /dev/shm).
    for m in &cfg.mounts {
        mounts.retain(|d| d.destination() != &m.destination);
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        options.push(if m.readonly { "ro" } else { "rw" }.to_string());
        mounts.push(
            MountBuilder::default()
                .destination(m.destination.clone())
                .typ("bind")
                .source(m.source.clone())
                .options(options)
                .build()?,
        );
    }

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(cfg.readonly_rootfs)
                .build()?,
        )
        .mounts(mounts)
        .process(process)
        .linux(linux.build()?)
        .build()?;
    // The hostname belongs to the sandbox's UTS namespace (set when it was made); the builder's
    // default ("youki") would overwrite it, or fail with the host's UTS namespace.
    spec.set_hostname(None);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ContainerConfig {
        ContainerConfig {
            args: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            readonly_rootfs: false,
            net: Ns::Path("/run/x/net".into()),
            ipc: Ns::Path("/run/x/ipc".into()),
            uts: Ns::Host,
            pid: Ns::New,
            cgroups_path: "/r3s/podU/c".into(),
            memory_limit: Some(64 << 20),
            cpu_shares: Some(102),
            cpu_quota: Some(50_000),
            capabilities: default_capabilities(),
            privileged: false,
            no_new_privileges: false,
            mounts: vec![BindMount {
                source: "/tmp/hosts".into(),
                destination: "/etc/hosts".into(),
                readonly: false,
            }],
        }
    }

    #[test]
    fn namespaces_resources_and_no_seccomp() {
        let spec = build(&cfg(), "rootfs".into()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let nss = linux.namespaces().as_ref().unwrap();
        let find = |t| nss.iter().find(|n| n.typ() == t);
        assert_eq!(
            find(LinuxNamespaceType::Network).unwrap().path(),
            &Some(PathBuf::from("/run/x/net"))
        );
        assert!(find(LinuxNamespaceType::Uts).is_none(), "host UTS");
        assert!(find(LinuxNamespaceType::Pid).unwrap().path().is_none());
        assert_eq!(linux.cgroups_path(), &Some(PathBuf::from("/r3s/podU/c")));
        assert!(linux.seccomp().is_none());
        assert!(spec.hostname().is_none());
        let process = spec.process().as_ref().unwrap();
        assert!(process.rlimits().as_ref().is_none_or(|r| r.is_empty()));
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(102), Some(50_000), Some(CPU_PERIOD))
        );
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert!(
            caps.effective()
                .as_ref()
                .unwrap()
                .contains(&Capability::NetRaw)
        );
        assert!(
            !caps
                .bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
        let hosts = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == &PathBuf::from("/etc/hosts"))
            .count();
        assert_eq!(hosts, 1);
    }

    #[test]
    fn capability_names() {
        assert_eq!(parse_capability("NET_ADMIN"), Some(Capability::NetAdmin));
        assert_eq!(parse_capability("cap_sys_time"), Some(Capability::SysTime));
        assert_eq!(parse_capability("NOPE"), None);
        assert!(all_capabilities().len() >= 40);
    }
}
