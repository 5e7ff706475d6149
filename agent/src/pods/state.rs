//! A pod worker's state on disk, `<run-dir>/pods/<uid>.json`: what a restarted agent needs to
//! re-adopt the pod (see [`crate::restart`]): its sandbox, prepared volumes, and per container
//! the start count, back-off, last terminations and the running instance (container id, init
//! and shim pids).
//!
//! Invariants: written (atomically: temporary file, then rename) by the pod's worker only, after
//! every change it makes to containers or the sandbox, and only when containers run under shims;
//! removed when the worker terminated the pod. Under the run directory, so a reboot (which ends
//! every container) forgets it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::status::Terminated;

/// The running instance of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunningState {
    pub id: String,
    pub pid: i32,
    pub shim_pid: i32,
    pub started_at: String,
}

/// One container of the pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotState {
    pub name: String,
    pub init: bool,
    pub starts: u32,
    pub done: bool,
    pub backoff_secs: Option<u64>,
    pub last: Option<Terminated>,
    pub prior: Option<Terminated>,
    pub running: Option<RunningState>,
    pub image: Option<String>,
    pub image_id: Option<String>,
}

/// The pod's sandbox (namespace bind mounts and /etc files under `dir`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxState {
    pub dir: PathBuf,
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pod_ip: Option<IpAddr>,
    pub cni: bool,
}

/// Everything saved of one pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub start_time: String,
    pub sandbox: Option<SandboxState>,
    pub volumes: HashMap<String, (PathBuf, bool)>,
    pub slots: Vec<SlotState>,
}

/// The directory of the state files.
pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("pods")
}

fn file(run_dir: &Path, uid: &str) -> PathBuf {
    dir(run_dir).join(format!("{uid}.json"))
}

/// Writes the state of pod `st.uid` atomically.
pub fn save(run_dir: &Path, st: &PodState) -> std::io::Result<()> {
    let path = file(run_dir, &st.uid);
    std::fs::create_dir_all(dir(run_dir))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec(st).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, &path)
}

/// The saved state of pod `uid`, if there is a readable one.
pub fn load(run_dir: &Path, uid: &str) -> Option<PodState> {
    serde_json::from_slice(&std::fs::read(file(run_dir, uid)).ok()?).ok()
}

/// Forgets pod `uid`.
pub fn remove(run_dir: &Path, uid: &str) {
    let _ = std::fs::remove_file(file(run_dir, uid));
}

/// Every readable state file (unreadable ones are removed: nothing can be adopted from them).
pub fn list(run_dir: &Path) -> Vec<PodState> {
    let Ok(entries) = std::fs::read_dir(dir(run_dir)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        match std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice::<PodState>(&b).ok())
        {
            Some(st) if p.extension().is_some_and(|x| x == "json") => out.push(st),
            _ => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let st = PodState {
            uid: "u1".into(),
            namespace: "default".into(),
            name: "p".into(),
            start_time: "2026-01-01T00:00:00Z".into(),
            sandbox: None,
            volumes: HashMap::new(),
            slots: vec![SlotState {
                name: "c".into(),
                init: false,
                starts: 3,
                done: false,
                backoff_secs: Some(20),
                last: Some(Terminated {
                    exit_code: 7,
                    signal: None,
                    reason: "Error".into(),
                    started_at: None,
                    finished_at: "2026-01-01T00:00:01Z".into(),
                    container_id: Some("abc".into()),
                }),
                prior: None,
                running: Some(RunningState {
                    id: "def".into(),
                    pid: 10,
                    shim_pid: 9,
                    started_at: "2026-01-01T00:00:02Z".into(),
                }),
                image: None,
                image_id: None,
            }],
        };
        save(d.path(), &st).unwrap();
        std::fs::write(dir(d.path()).join("junk.json"), "{").unwrap();
        let back = load(d.path(), "u1").unwrap();
        assert_eq!(back.slots[0].starts, 3);
        assert_eq!(back.slots[0].last.as_ref().unwrap().exit_code, 7);
        assert_eq!(back.slots[0].running.as_ref().unwrap().shim_pid, 9);
        let all = list(d.path());
        assert_eq!(all.len(), 1);
        assert!(!dir(d.path()).join("junk.json").exists());
        remove(d.path(), "u1");
        assert!(load(d.path(), "u1").is_none());
    }
}
