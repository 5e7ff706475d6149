//! The VTEP MAC address, persisted so it survives restarts: peers hold it in their neighbour and
//! FDB entries (and the node annotation publishes it), so a new MAC after every restart would cut
//! the node off until every peer resynced (flannel #1795).
//!
//! Format: one line `aa:bb:cc:dd:ee:ff`. Written via a temporary file and rename, so a crash never
//! leaves a torn file. A generated MAC is unicast and locally administered.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Errors reading or writing the MAC file.
#[derive(Debug, thiserror::Error)]
pub enum MacError {
    #[error("reading or writing VTEP MAC file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VTEP MAC file {path} does not hold a MAC address: {content:?}")]
    Invalid { path: PathBuf, content: String },
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let mut s = String::with_capacity(17);
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A random unicast, locally administered MAC.
pub fn random_mac() -> [u8; 6] {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// Returns the MAC stored at `path`, generating and storing one on first use.
pub fn load_or_create(path: &Path) -> Result<[u8; 6], MacError> {
    let io = |source| MacError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(content) => parse_mac(&content).ok_or_else(|| MacError::Invalid {
            path: path.to_path_buf(),
            content,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mac = random_mac();
            store(path, &mac)?;
            Ok(mac)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes `mac` to `path` (temporary file + rename). The agent uses it to restore the MAC its Node
/// annotation still publishes when the file was lost (a wiped data dir), so peers stay valid.
pub fn store(path: &Path, mac: &[u8; 6]) -> Result<(), MacError> {
    let io = |source| MacError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", format_mac(mac))).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_reject_garbage() {
        let mac = [0x02, 0xab, 0, 0x10, 0xff, 0x7e];
        assert_eq!(format_mac(&mac), "02:ab:00:10:ff:7e");
        assert_eq!(parse_mac("02:AB:00:10:ff:7e\n"), Some(mac));
        assert_eq!(parse_mac("02:ab:00:10:ff"), None);
        assert_eq!(parse_mac("02:ab:00:10:ff:7e:01"), None);
        assert_eq!(parse_mac("zz:ab:00:10:ff:7e"), None);
    }

    #[test]
    fn generated_mac_is_local_unicast_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/vtep-mac");
        let mac = load_or_create(&path).unwrap();
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_eq!(load_or_create(&path).unwrap(), mac);
        let other = [0x02, 1, 2, 3, 4, 5];
        store(&path, &other).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), other);
        std::fs::write(&path, "nonsense").unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(MacError::Invalid { .. })
        ));
    }
}
