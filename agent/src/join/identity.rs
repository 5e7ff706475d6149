//! The node's lasting identity on disk: its password and, with `--with-node-id`, its node id.
//!
//! `<data-dir>/agent/node-password` holds 16 random bytes in hex (k3s keeps the same at
//! `/etc/rancher/node/password`); the server remembers a hash of it per node name, so another
//! machine claiming the same name is refused. `<data-dir>/agent/node-id` holds 8 random hex
//! characters appended to the node name with `--with-node-id`, so the suffix is stable across
//! restarts. Invariant: both files are created once (mode 0600, exclusively, so two starts cannot
//! write different values) and only ever read afterwards.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::RngCore;

/// Why the identity files could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is empty; remove it to make a new one", path.display())]
    Empty { path: PathBuf },
}

/// The node password file under `data_dir`.
pub fn password_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent").join("node-password")
}

/// The node id file under `data_dir`.
pub fn node_id_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent").join("node-id")
}

/// The node password, made on first use.
pub fn node_password(data_dir: &Path) -> Result<String, IdentityError> {
    read_or_create(&password_path(data_dir), 16)
}

/// `name` with this machine's stable id appended (`<name>-<8 hex>`), the id made on first use.
pub fn name_with_node_id(data_dir: &Path, name: &str) -> Result<String, IdentityError> {
    let id = read_or_create(&node_id_path(data_dir), 4)?;
    Ok(format!("{name}-{id}"))
}

fn read_or_create(path: &Path, random_bytes: usize) -> Result<String, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let value = text.trim().to_owned();
            if value.is_empty() {
                return Err(IdentityError::Empty {
                    path: path.to_owned(),
                });
            }
            return Ok(value);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut bytes = vec![0u8; random_bytes];
    rand::rng().fill_bytes(&mut bytes);
    let value = hex::encode(bytes);
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut file) => {
            file.write_all(format!("{value}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io)?;
            Ok(value)
        }
        // Another start made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_or_create(path, random_bytes)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn password_and_node_id_are_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_password(dir.path()).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(node_password(dir.path()).unwrap(), first);
        let mode = std::fs::metadata(password_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let named = name_with_node_id(dir.path(), "pi").unwrap();
        assert!(named.starts_with("pi-") && named.len() == "pi-".len() + 8);
        assert_eq!(name_with_node_id(dir.path(), "pi").unwrap(), named);
        std::fs::write(password_path(dir.path()), "\n").unwrap();
        assert!(matches!(
            node_password(dir.path()),
            Err(IdentityError::Empty { .. })
        ));
    }
}
