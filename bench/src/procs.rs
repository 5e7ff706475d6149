//! Per-process figures from /proc: resident memory, CPU time and bytes written to disk, for a
//! process and those of its descendants that run the same executable (helpers an r3s binary
//! forks), never container processes (whose executable is the image's).
//!
//! CPU time comes from `/proc/<pid>/stat` (utime + stime, in clock ticks), disk writes from
//! `/proc/<pid>/io` `write_bytes` (what the process caused to be written to storage, page cache
//! write-back included), memory from `VmRSS` in `/proc/<pid>/status` (the figure the targets are
//! judged on) and, beside it, `Pss` from `/proc/<pid>/smaps_rollup`: each page shared by n
//! processes counts 1/n, so the PSS sum of a group is what the group costs the machine, while
//! the RSS sum counts the executable's pages once per process that maps them.

use std::collections::HashMap;
use std::path::PathBuf;

/// One reading of a group of processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// RSS and PSS of `root` alone (the rest of the sums are its shims).
    pub root_rss_kib: u64,
    pub root_pss_kib: u64,
    pub cpu_ticks: u64,
    pub write_bytes: u64,
    pub processes: usize,
}

fn exe(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

fn ppid_map() -> HashMap<i32, i32> {
    let mut map = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return map;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse().ok())) {
            map.insert(pid, ppid);
        }
    }
    map
}

/// The fields of /proc/<pid>/stat after the command name (state is index 0, ppid index 1).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn status_kib(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn io_write_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `root` and its descendants running the same executable as `root`.
pub fn group(root: i32) -> Vec<i32> {
    let Some(root_exe) = exe(root) else {
        return Vec::new();
    };
    let parents = ppid_map();
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for (&child, &parent) in &parents {
            if parent == p && !out.contains(&child) {
                // Walk through other executables too (a shim between), but count only ours.
                out.push(child);
            }
        }
        i += 1;
    }
    out.into_iter()
        .filter(|&p| exe(p).as_ref() == Some(&root_exe))
        .collect()
}

/// Sums the group of `root` (see [`group`]).
pub fn sample(root: i32) -> Sample {
    let mut s = Sample::default();
    for pid in group(root) {
        let rss = status_kib(pid, "VmRSS:");
        let pss = smaps_rollup(pid)
            .iter()
            .find(|(k, _)| k == "Pss")
            .map_or(0, |(_, v)| *v);
        if pid == root {
            (s.root_rss_kib, s.root_pss_kib) = (rss, pss);
        }
        s.rss_kib += rss;
        s.pss_kib += pss;
        s.cpu_ticks += stat_fields(pid).map_or(0, |f| {
            // utime and stime are fields 14 and 15 of stat, 11 and 12 after the command name.
            f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        });
        s.write_bytes += io_write_bytes(pid);
        s.processes += 1;
    }
    s
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The number of threads of `pid` (a tokio runtime's workers and blocking pool show here).
pub fn threads(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `/proc/<pid>/smaps_rollup` fields in kB (Rss, Pss, Private_Dirty, Anonymous, ...).
pub fn smaps_rollup(pid: i32) -> Vec<(String, u64)> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some((k.trim().to_owned(), v))
        })
        .collect()
}
