//! Helpers shared by the store's root-only tests: the prerequisite rule and a tmpfs mount guard.

#![allow(dead_code)] // each test crate uses a different subset

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Root-only prerequisites; Err(why) when missing.
pub fn prerequisites() -> Result<(), String> {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    if euid != "0" {
        return Err("root (to mount a read-only tmpfs)".into());
    }
    Ok(())
}

pub fn check_prerequisites() -> bool {
    match prerequisites() {
        Ok(()) => true,
        Err(missing) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("missing prerequisite: {missing}")
        }
        Err(missing) => {
            println!("skipped: needs {missing}");
            false
        }
    }
}

/// A tmpfs mounted for the test, unmounted on drop (also when the test fails).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "r3st-store"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs -o {options} failed");
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {options} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(self.dir.path())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: could not unmount {}", self.dir.path().display());
    }
}
