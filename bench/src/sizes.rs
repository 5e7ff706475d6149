//! Item 7: sizes of the stripped release binaries (`[profile.release] strip = true`), for the host
//! target and any other target whose release binaries exist here (`dist/`, `target/cross/` or
//! `target/<triple>/release`, made by `scripts/cross release`); none is built by the runner.

use std::path::{Path, PathBuf};

use crate::report::Report;

pub const SEC: &str = "7. Binary sizes";

fn candidates(root: &Path, target_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let host = format!("{}-linux (this build)", std::env::consts::ARCH);
    for b in ["r3s-server", "r3s-agent"] {
        out.push((format!("{b}, {host}"), target_dir.join("release").join(b)));
    }
    let mut dirs = Vec::new();
    for base in [
        root.join("dist"),
        root.join("target/cross"),
        target_dir.to_path_buf(),
    ] {
        if let Ok(rd) = std::fs::read_dir(&base) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains("-linux-") {
                    dirs.push((name, e.path()));
                }
            }
        }
    }
    for (triple, d) in dirs {
        for b in ["r3s-server", "r3s-agent"] {
            for p in [d.join("release").join(b), d.join(b)] {
                if p.is_file() {
                    out.push((format!("{b}, {triple}"), p));
                }
            }
        }
    }
    out
}

fn stripped(p: &Path) -> &'static str {
    match std::process::Command::new("file").arg(p).output() {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("not stripped") => "NOT stripped",
        Ok(o) if o.status.success() => "stripped",
        _ => "strip state unknown (`file` missing)",
    }
}

pub fn run(r: &mut Report, root: &Path, target_dir: &Path) {
    let mut found = 0;
    for (label, p) in candidates(root, target_dir) {
        if let Ok(m) = std::fs::metadata(&p) {
            found += 1;
            r.add(
                SEC,
                &label,
                m.len() as f64 / 1_048_576.0,
                "MiB",
                None,
                &format!(
                    "{}; {}",
                    stripped(&p),
                    p.strip_prefix(root).unwrap_or(&p).display()
                ),
            );
        }
    }
    if found <= 2 {
        r.note(SEC, "Only the host target's binaries exist on this machine: no cross-built release \
            binaries were found in dist/, target/cross/ or the target directory (`scripts/cross release` makes them).");
    }
}
