//! Facts about this host that the Node object reports: capacity, nodeInfo, addresses and the
//! pressure conditions. Everything comes from /proc, /sys, /etc and syscalls; nothing here talks
//! to the API.

use std::net::IpAddr;
use std::path::Path;

/// The kubelet version r3s reports (the Kubernetes API version it serves, plus `-r3s`).
pub const KUBELET_VERSION: &str = "v1.32.0-r3s";
/// The runtime version in `nodeInfo.containerRuntimeVersion`.
pub const RUNTIME_VERSION: &str = "youki://0.7.0";
/// Memory available below which MemoryPressure is reported (kubelet's hard eviction default).
pub const MEMORY_PRESSURE_BYTES: u64 = 100 << 20;
/// Free share of the data directory's filesystem below which DiskPressure is reported (10 %).
pub const DISK_PRESSURE_PERCENT: u64 = 10;

/// What the host has, in Kubernetes quantity spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub cpu: u64,
    pub memory_kib: u64,
    pub ephemeral_storage_bytes: u64,
    pub pods: u32,
}

/// `nodeInfo` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    pub kernel_version: String,
    pub os_image: String,
    pub architecture: String,
    pub machine_id: String,
    pub boot_id: String,
    pub system_uuid: String,
}

/// Kubernetes' name for this machine's architecture (GOARCH spelling).
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `PRETTY_NAME` of an os-release file's text.
pub fn os_image(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| {
        l.strip_prefix("PRETTY_NAME=")
            .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_owned())
    })
}

pub fn system_info() -> SystemInfo {
    let kernel_version = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let os_release = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    SystemInfo {
        kernel_version,
        os_image: os_image(&os_release).unwrap_or_else(|| "Linux".into()),
        architecture: architecture().into(),
        machine_id: read_trim("/etc/machine-id"),
        boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
        system_uuid: read_trim("/sys/class/dmi/id/product_uuid"),
    }
}

/// A `/proc/meminfo` field in KiB.
pub fn meminfo_kib(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// (total, available) bytes of the filesystem holding `path`.
pub fn disk(path: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        // 32-bit targets report u32 counts: widen before multiplying so disks over 4 GiB don't overflow.
        #[allow(clippy::useless_conversion)]
        Ok(s) => {
            let frag = u64::from(s.fragment_size());
            (
                u64::from(s.blocks()) * frag,
                u64::from(s.blocks_available()) * frag,
            )
        }
        Err(_) => (0, 0),
    }
}

pub fn capacity(data_dir: &Path, pods: u32) -> Capacity {
    let cpu = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Capacity {
        cpu,
        memory_kib: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0),
        ephemeral_storage_bytes: disk(data_dir).0,
        pods,
    }
}

/// The pressure conditions' current truth: (memory, disk, pid).
pub fn pressure(data_dir: &Path) -> (bool, bool, bool) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory =
        meminfo_kib(&meminfo, "MemAvailable").is_some_and(|kib| kib * 1024 < MEMORY_PRESSURE_BYTES);
    let (total, avail) = disk(data_dir);
    let disk = total > 0 && avail * 100 < total * DISK_PRESSURE_PERCENT;
    let pid_max: u64 = read_trim("/proc/sys/kernel/pid_max").parse().unwrap_or(0);
    let running = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count() as u64
        })
        .unwrap_or(0);
    let pid = pid_max > 0 && running * 100 > pid_max * 90;
    (memory, disk, pid)
}

/// The IPv4 address of the interface holding the default route (what k3s advertises without
/// `--node-ip`); falls back to the first non-loopback address.
pub fn detect_node_ip() -> Option<IpAddr> {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let default_iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000")).then(|| f[0].to_owned())
    });
    let addrs: Vec<(String, IpAddr)> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            Some((a.interface_name, IpAddr::V4(ip)))
        })
        .filter(|(_, ip)| !ip.is_loopback())
        .collect();
    if let Some(iface) = default_iface
        && let Some((_, ip)) = addrs.iter().find(|(n, _)| *n == iface)
    {
        return Some(*ip);
    }
    addrs.first().map(|(_, ip)| *ip)
}

/// The host name, for the `Hostname` address.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_and_meminfo() {
        let text = "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_image(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        let mi = "MemTotal:       24000000 kB\nMemAvailable:   1000 kB\n";
        assert_eq!(meminfo_kib(mi, "MemTotal"), Some(24_000_000));
        assert_eq!(meminfo_kib(mi, "MemAvailable"), Some(1000));
        assert_eq!(meminfo_kib(mi, "Nope"), None);
    }

    #[test]
    fn this_host() {
        let c = capacity(Path::new("/"), 110);
        assert!(c.cpu >= 1 && c.memory_kib > 0 && c.ephemeral_storage_bytes > 0);
        let i = system_info();
        assert!(!i.kernel_version.is_empty());
        assert_eq!(i.architecture, architecture());
    }
}
