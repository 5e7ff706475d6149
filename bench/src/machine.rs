//! The machine a report was taken on: CPU model, cores, memory, kernel, load averages, date and the
//! git commit of the tree measured. Everything is read from /proc and `git`; a field that cannot be
//! read says "unknown" rather than failing the run.

use serde::Serialize;

/// What the report says about the machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub ram_mib: u64,
    pub kernel: String,
    pub arch: &'static str,
    pub load_start: String,
    pub load_end: String,
    pub date_start: String,
    pub date_end: String,
    pub git_commit: String,
}

fn first_field(text: &str, keys: &[&str]) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        keys.contains(&k.trim()).then(|| v.trim().to_owned())
    })
}

pub fn cpu_model() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    first_field(&text, &["model name", "Model", "Hardware"]).unwrap_or_else(|| "unknown".into())
}

pub fn ram_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    first_field(&text, &["MemTotal"])
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// The three load averages, as /proc/loadavg prints them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn git_commit() -> String {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output();
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    match out {
        Ok(o) if o.status.success() => {
            let c = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            if dirty {
                format!("{c} (with local changes)")
            } else {
                c
            }
        }
        _ => "unknown".into(),
    }
}

impl Machine {
    /// Reads everything except the end-of-run fields.
    pub fn at_start() -> Machine {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpu_model: cpu_model(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            ram_mib: ram_mib(),
            kernel,
            arch: std::env::consts::ARCH,
            load_start: loadavg(),
            load_end: String::new(),
            date_start: now_utc(),
            date_end: String::new(),
            git_commit: git_commit(),
        }
    }

    pub fn finish(&mut self) {
        self.load_end = loadavg();
        self.date_end = now_utc();
    }
}
