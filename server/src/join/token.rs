//! The server's join token: `<data-dir>/server/token` and `<data-dir>/server/node-token`, both
//! `K10<sha256 of the server CA>::server:<secret>` (mode 0600), as k3s writes them.
//!
//! Invariants: the secret is made once (16 random bytes, hex) and reused on every restart unless
//! `--token` gives one; a given full token must carry this server's CA hash, or the server refuses
//! to start (it could never be used to join this cluster). The files are rewritten on each start
//! so they always show the secret in use.

use std::path::{Path, PathBuf};

use r3s_agent::join::token::{self, Credentials, JoinToken, TokenError};
use rand::RngCore;

/// Why the token could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerTokenError {
    #[error("--token: {0}")]
    Parse(#[from] TokenError),
    #[error(
        "--token: the token's CA hash {given} does not match this server's CA ({ours}); give the secret alone or the token this server wrote"
    )]
    CaMismatch { given: String, ours: String },
    #[error("--token: a bootstrap token cannot be the server token; give a password")]
    Bootstrap,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the token: {0}")]
    Write(#[source] crate::tls::TlsError),
    #[error("{} holds no usable token: {source}", path.display())]
    Stored {
        path: PathBuf,
        #[source]
        source: TokenError,
    },
}

/// The join secret and the full token that carries it.
#[derive(Clone)]
pub struct ServerToken {
    pub secret: String,
    pub full: String,
}

impl std::fmt::Debug for ServerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerToken(***)")
    }
}

/// `<data-dir>/server/token`.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("token")
}

/// Chooses the secret (given, stored, or new), writes both token files and returns it.
pub fn ensure(
    data_dir: &Path,
    given: Option<&str>,
    ca_pem: &[u8],
) -> Result<ServerToken, ServerTokenError> {
    let ours = token::ca_hash(ca_pem);
    let path = token_path(data_dir);
    let secret = match given {
        Some(text) => secret_of(&JoinToken::parse(text)?, &ours)?,
        None => match std::fs::read_to_string(&path) {
            Ok(text) => {
                let parsed =
                    JoinToken::parse(&text).map_err(|source| ServerTokenError::Stored {
                        path: path.clone(),
                        source,
                    })?;
                // A stored token with another CA hash is from a CA that was replaced: keep its
                // secret (agents configured with the short form still join) under the new hash.
                match parsed.credentials {
                    Credentials::Password { password, .. } => password,
                    Credentials::Bootstrap { .. } => return Err(ServerTokenError::Bootstrap),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 16];
                rand::rng().fill_bytes(&mut bytes);
                hex::encode(bytes)
            }
            Err(source) => return Err(ServerTokenError::Io { path, source }),
        },
    };
    let full = token::format_secure(&ours, "server", &secret);
    for file in [path, data_dir.join("server").join("node-token")] {
        crate::tls::certs::write_file(&file, format!("{full}\n").as_bytes(), 0o600)
            .map_err(ServerTokenError::Write)?;
    }
    Ok(ServerToken { secret, full })
}

fn secret_of(given: &JoinToken, ours: &str) -> Result<String, ServerTokenError> {
    if let Some(hash) = &given.ca_hash
        && hash != ours
    {
        return Err(ServerTokenError::CaMismatch {
            given: hash.clone(),
            ours: ours.to_owned(),
        });
    }
    match &given.credentials {
        Credentials::Password { password, .. } => Ok(password.clone()),
        Credentials::Bootstrap { .. } => Err(ServerTokenError::Bootstrap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_reused_given_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("server")).unwrap();
        let ca = b"-----BEGIN CERTIFICATE-----\n";
        let first = ensure(dir.path(), None, ca).unwrap();
        assert_eq!(first.secret.len(), 32);
        assert!(
            first
                .full
                .starts_with(&format!("K10{}::server:", token::ca_hash(ca)))
        );
        let mode = std::fs::metadata(token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let node_token =
            std::fs::read_to_string(dir.path().join("server").join("node-token")).unwrap();
        assert_eq!(node_token.trim(), first.full);
        assert_eq!(ensure(dir.path(), None, ca).unwrap().secret, first.secret);

        assert_eq!(ensure(dir.path(), Some("mine"), ca).unwrap().secret, "mine");
        let full = format!("K10{}::server:other", token::ca_hash(ca));
        assert_eq!(ensure(dir.path(), Some(&full), ca).unwrap().secret, "other");
        let wrong = format!("K10{}::server:x", token::ca_hash(b"another CA"));
        let err = ensure(dir.path(), Some(&wrong), ca)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--token: the token's CA hash"), "{err}");
        assert!(!err.contains('\n'));
    }
}
