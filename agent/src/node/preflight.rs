//! Preflight checks of the host (run at start and by `r3s-agent check-config`): each failure is
//! one actionable line. The checks read /proc and /sys only, so they are cheap and safe anywhere.

use std::path::Path;

/// Runs every check against the real host; an empty list means the host is fit.
pub fn check() -> Vec<String> {
    let mut out = Vec::new();
    let cgroups = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let v2_controllers =
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let v1 =
        Path::new("/sys/fs/cgroup/memory").is_dir() || Path::new("/sys/fs/cgroup/cpu").is_dir();
    if let Some(line) = cgroups_line(v1, v2) {
        out.push(line);
    }
    if let Some(line) = memory_line(&cgroups, v2, &v2_controllers) {
        out.push(line);
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !has_filesystem(&filesystems, "overlay") && !module_available("overlay") {
        out.push(
            "overlayfs is not available: load it with `modprobe overlay` (and add `overlay` to /etc/modules-load.d/r3s.conf); \
             without it every container gets a full copy of its image"
                .into(),
        );
    }
    if !module_available("vxlan") {
        out.push(
            "the vxlan kernel module is not available: install your distribution's extra kernel modules \
             (e.g. `apt-get install linux-modules-extra-$(uname -r)`) and run `modprobe vxlan`; pods on other nodes are unreachable without it"
                .into(),
        );
    }
    out
}

fn cgroups_line(v1: bool, v2: bool) -> Option<String> {
    (!v1 && !v2).then(|| {
        "no cgroup filesystem is mounted at /sys/fs/cgroup: mount cgroup2 there (`mount -t cgroup2 none /sys/fs/cgroup`) or boot with systemd".into()
    })
}

/// The memory controller: listed and enabled in /proc/cgroups, and on a pure v2 host delegated at
/// the root.
fn memory_line(proc_cgroups: &str, v2: bool, v2_controllers: &str) -> Option<String> {
    let enabled = proc_cgroups.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.first() == Some(&"memory") && f.get(3) == Some(&"1")
    });
    let on_v2 = v2_controllers.split_whitespace().any(|c| c == "memory");
    if enabled || on_v2 || (v2 && proc_cgroups.is_empty()) {
        return None;
    }
    Some(
        "the memory cgroup is not enabled: add `cgroup_memory=1 cgroup_enable=memory` to the kernel command line \
         (on a Raspberry Pi: the single line of /boot/firmware/cmdline.txt, or /boot/cmdline.txt on older images) and reboot"
            .into(),
    )
}

fn has_filesystem(proc_filesystems: &str, fs: &str) -> bool {
    proc_filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some(fs))
}

/// Loaded, built in, or loadable from /lib/modules of the running kernel.
fn module_available(name: &str) -> bool {
    if Path::new("/sys/module").join(name).exists() {
        return true;
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = Path::new("/lib/modules").join(release);
    for list in ["modules.builtin", "modules.dep"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(list))
            && text.lines().any(|l| {
                let path = l.split(':').next().unwrap_or("");
                let file = path.rsplit('/').next().unwrap_or("");
                file.split('.').next() == Some(name)
            })
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_cgroup_disabled_gives_the_pi_hint() {
        let off = "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t0\t1\t0\n";
        let line = memory_line(off, false, "").unwrap();
        assert!(
            line.contains("cgroup_memory=1 cgroup_enable=memory"),
            "{line}"
        );
        assert!(line.contains("/boot/firmware/cmdline.txt"));
        let on = "memory\t4\t39\t1\n";
        assert_eq!(memory_line(on, false, ""), None);
        assert_eq!(memory_line(off, true, "cpu memory pids"), None);
    }

    #[test]
    fn no_cgroups_at_all() {
        assert!(cgroups_line(false, false).unwrap().contains("cgroup2"));
        assert_eq!(cgroups_line(true, false), None);
    }

    #[test]
    fn filesystems() {
        assert!(has_filesystem("nodev\toverlay\n", "overlay"));
        assert!(!has_filesystem("nodev\ttmpfs\n", "overlay"));
    }

    #[test]
    fn every_finding_is_one_line() {
        for line in check() {
            assert!(!line.is_empty() && !line.contains('\n'), "{line:?}");
        }
    }
}
