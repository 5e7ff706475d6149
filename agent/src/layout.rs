//! Where the agent keeps things. Invariant: everything persistent lives under
//! `<data-dir>/agent/`, everything that must vanish with a reboot (namespace bind mounts,
//! libcontainer state) under the run directory, so two agents with different directories never
//! touch each other's files.
//!
//! ```text
//! <data-dir>/agent/image-store/              image store (r3s-images: blobs, snapshots, records)
//! <data-dir>/agent/images/                   air-gap tarballs, imported at start (as in k3s)
//! <data-dir>/agent/containers/<id>/          bundle: config.json, rootfs (overlay), upper, work
//! <data-dir>/agent/pods/<ns>_<name>_<uid>/<container>/<restart>.log   CRI logs
//! <data-dir>/agent/cni/                      IPAM leases
//! <data-dir>/agent/volumes/<uid>/<volume>/   emptyDir, configMap and secret volumes
//! <run-dir>/containers/<id>/state.json       libcontainer state (runc's --root)
//! <run-dir>/shims/<id>/{exit.json,stdin,shim.log}   a container's shim (runtime::shim)
//! <run-dir>/pods/<uid>.json                  a pod worker's state, for re-adoption (pods::state)
//! <run-dir>/sandboxes/<uid>/{net,ipc,uts}    namespace bind mounts
//! <run-dir>/sandboxes/<uid>/{hosts,resolv.conf,hostname}
//! ```

use std::path::{Path, PathBuf};

/// The agent's directories.
#[derive(Debug, Clone)]
pub struct Layout {
    pub agent_dir: PathBuf,
    pub run_dir: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path, run_dir: &Path) -> Self {
        Self {
            agent_dir: data_dir.join("agent"),
            run_dir: run_dir.to_path_buf(),
        }
    }

    /// The image store (content, snapshots, records). Not k3s's `agent/images`: that directory
    /// is where operators drop air-gap tarballs ([`Layout::airgap_images`]).
    pub fn images(&self) -> PathBuf {
        self.agent_dir.join("image-store")
    }

    /// The air-gap directory: every image tarball in it is imported at agent start.
    pub fn airgap_images(&self) -> PathBuf {
        self.agent_dir.join("images")
    }

    pub fn containers(&self) -> PathBuf {
        self.agent_dir.join("containers")
    }

    pub fn bundle(&self, id: &str) -> PathBuf {
        self.containers().join(id)
    }

    pub fn pods(&self) -> PathBuf {
        self.agent_dir.join("pods")
    }

    /// The directory of one pod's logs, named as kubelet names `/var/log/pods` entries.
    pub fn pod_logs(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.pods().join(format!("{namespace}_{name}_{uid}"))
    }

    /// The log file of one run of a container.
    pub fn container_log(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        container: &str,
        restart: u32,
    ) -> PathBuf {
        self.pod_logs(namespace, name, uid)
            .join(container)
            .join(format!("{restart}.log"))
    }

    /// One pod's volumes (emptyDir, configMap and secret files).
    pub fn volumes(&self, uid: &str) -> PathBuf {
        self.agent_dir.join("volumes").join(uid)
    }

    pub fn cni(&self) -> PathBuf {
        self.agent_dir.join("cni")
    }

    pub fn runtime_state(&self) -> PathBuf {
        self.run_dir.join("containers")
    }

    pub fn sandboxes(&self) -> PathBuf {
        self.run_dir.join("sandboxes")
    }

    pub fn sandbox(&self, uid: &str) -> PathBuf {
        self.sandboxes().join(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_store_and_airgap_dir_are_apart() {
        let l = Layout::new(Path::new("/var/lib/r3s"), Path::new("/run/r3s"));
        assert_eq!(l.airgap_images(), Path::new("/var/lib/r3s/agent/images"));
        assert_eq!(l.images(), Path::new("/var/lib/r3s/agent/image-store"));
        assert_eq!(l.images(), r3s_images::store_dir(Path::new("/var/lib/r3s")));
        assert_eq!(
            l.airgap_images(),
            r3s_images::airgap_dir(Path::new("/var/lib/r3s"))
        );
        assert!(!l.images().starts_with(l.airgap_images()));
    }
}
