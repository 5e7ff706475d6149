//! The join secret from `--token` or `--token-file`, shared by server and agent.
//!
//! Giving both is refused rather than letting one silently win: the two usually come from
//! different places (a flag in a unit file, a file from provisioning) and a mismatch would
//! otherwise surface only as a failed join much later. The token's inner format (k3s's
//! `K10<ca-hash>::<credentials>` or a bare password) is checked where it is used, not here.

use std::path::Path;

use crate::resolve::Sources;

/// Why no usable token could be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{token} and {token_file} are both set; give only one")]
    Both { token: String, token_file: String },
    #[error("{flag}: cannot read {}: {source}", path.display())]
    Unreadable {
        flag: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{flag}: {} is empty", path.display())]
    EmptyFile {
        flag: String,
        path: std::path::PathBuf,
    },
    #[error("{flag}: the token must be one word with no spaces or line breaks")]
    Malformed { flag: String },
}

/// The token from whichever of the two settings is given, `None` if neither is.
pub fn read_token(
    token: Option<&str>,
    token_file: Option<&Path>,
    sources: &Sources,
) -> Result<Option<String>, TokenError> {
    let (value, flag) = match (token, token_file) {
        (Some(_), Some(_)) => {
            return Err(TokenError::Both {
                token: sources.describe("token"),
                token_file: sources.describe("token-file"),
            });
        }
        (None, None) => return Ok(None),
        (Some(token), None) => (token.trim().to_owned(), sources.describe("token")),
        (None, Some(path)) => {
            let flag = sources.describe("token-file");
            let text = std::fs::read_to_string(path).map_err(|source| TokenError::Unreadable {
                flag: flag.clone(),
                path: path.to_owned(),
                source,
            })?;
            let text = text.trim().to_owned();
            if text.is_empty() {
                return Err(TokenError::EmptyFile {
                    flag,
                    path: path.to_owned(),
                });
            }
            (text, flag)
        }
    };
    if value.is_empty() || value.chars().any(char::is_whitespace) {
        return Err(TokenError::Malformed { flag });
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources() {
        let sources = Sources::default();
        assert_eq!(read_token(None, None, &sources).unwrap(), None);
        assert_eq!(
            read_token(Some("K10abc::server:pw"), None, &sources)
                .unwrap()
                .as_deref(),
            Some("K10abc::server:pw")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "secret\n").unwrap();
        assert_eq!(
            read_token(None, Some(&file), &sources).unwrap().as_deref(),
            Some("secret")
        );
        let both = read_token(Some("a"), Some(&file), &sources)
            .unwrap_err()
            .to_string();
        assert_eq!(both, "--token and --token-file are both set; give only one");
        std::fs::write(&file, " \n").unwrap();
        assert!(matches!(
            read_token(None, Some(&file), &sources),
            Err(TokenError::EmptyFile { .. })
        ));
        let missing = read_token(None, Some(&dir.path().join("none")), &sources)
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("--token-file: cannot read"),
            "{missing}"
        );
        assert!(matches!(
            read_token(Some("two words"), None, &sources),
            Err(TokenError::Malformed { .. })
        ));
    }
}
