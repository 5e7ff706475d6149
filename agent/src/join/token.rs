//! The join token, in k3s's format.
//!
//! Secure form: `K10<sha256 hex of the server's CA bundle>::<credentials>`, where the credentials
//! are `<user>:<password>` (the server's own token is `server:<secret>`) or a bootstrap token
//! `<6 chars>.<16 chars>` (`[a-z0-9]`). Short form: the credentials alone, with no CA hash; a node
//! joining with it trusts the CA the server presents the first time (k3s does the same).
//!
//! Invariant: a parsed token's `ca_hash` is 64 lowercase hex digits; its password or bootstrap
//! secret is never empty. The hash is taken over the exact bytes the server serves at `/cacerts`
//! (a single PEM certificate for r3s; k3s hashes the same for single-certificate bundles).

use std::fmt;

use sha2::{Digest, Sha256};

/// The prefix of a token that carries the CA hash (k3s's "version 1" tokens).
pub const PREFIX: &str = "K10";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error("a K10 token must be K10<CA hash>::<credentials>")]
    NoSeparator,
    #[error("the token's CA hash must be 64 hex digits (a sha256), got {got} characters")]
    BadHash { got: usize },
    #[error("the token has an empty password")]
    EmptyPassword,
}

/// What a joining node proves it knows.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `user:password`; the server compares only the password with its secret.
    Password { username: String, password: String },
    /// A bootstrap token `<id>.<secret>` (kubeadm's format), created by `r3s-server token create`.
    Bootstrap { id: String, secret: String },
}

/// Never prints a secret (tokens end up in logs through `{:?}` otherwise).
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Password { username, .. } => write!(f, "Password({username}:***)"),
            Credentials::Bootstrap { id, .. } => write!(f, "Bootstrap({id}.***)"),
        }
    }
}

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// sha256 (lowercase hex) of the CA bundle the server must present; `None` for a short token.
    pub ca_hash: Option<String>,
    pub credentials: Credentials,
}

impl JoinToken {
    /// Parses the secure or the short form.
    pub fn parse(text: &str) -> Result<JoinToken, TokenError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(TokenError::Empty);
        }
        let Some(rest) = text.strip_prefix(PREFIX) else {
            return Ok(JoinToken {
                ca_hash: None,
                credentials: credentials(text)?,
            });
        };
        let (hash, creds) = rest.split_once("::").ok_or(TokenError::NoSeparator)?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::BadHash { got: hash.len() });
        }
        Ok(JoinToken {
            ca_hash: Some(hash.to_ascii_lowercase()),
            credentials: credentials(creds)?,
        })
    }

    /// The secret part a server compares (the password, or the bootstrap token `id.secret`).
    pub fn secret(&self) -> String {
        match &self.credentials {
            Credentials::Password { password, .. } => password.clone(),
            Credentials::Bootstrap { id, secret } => format!("{id}.{secret}"),
        }
    }

    /// The value of an `Authorization` header carrying these credentials: HTTP basic auth for a
    /// password, a bearer token for a bootstrap token (as k3s sends them).
    pub fn authorization(&self) -> String {
        use base64::Engine;
        match &self.credentials {
            Credentials::Password { username, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            ),
            Credentials::Bootstrap { id, secret } => format!("Bearer {id}.{secret}"),
        }
    }
}

/// `K10<hash>::<username>:<password>`.
pub fn format_secure(ca_hash: &str, username: &str, password: &str) -> String {
    format!("{PREFIX}{ca_hash}::{username}:{password}")
}

/// The sha256 (lowercase hex) of a CA bundle, as tokens carry it.
pub fn ca_hash(bundle: &[u8]) -> String {
    hex::encode(Sha256::digest(bundle))
}

/// True for `[a-z0-9]{6}.[a-z0-9]{16}`, the bootstrap token shape.
pub fn is_bootstrap_token(s: &str) -> bool {
    let ok = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    s.split_once('.')
        .is_some_and(|(id, secret)| ok(id, 6) && ok(secret, 16))
}

fn credentials(text: &str) -> Result<Credentials, TokenError> {
    if is_bootstrap_token(text) {
        let (id, secret) = text.split_once('.').unwrap_or_default();
        return Ok(Credentials::Bootstrap {
            id: id.to_owned(),
            secret: secret.to_owned(),
        });
    }
    // A short token is a password; agents present it as user "node", as k3s agents do.
    let (username, password) = text.split_once(':').unwrap_or(("node", text));
    if password.is_empty() {
        return Err(TokenError::EmptyPassword);
    }
    Ok(Credentials::Password {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// Compares two secrets in time independent of where they differ.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_secure_short_and_bootstrap_forms() {
        let hash = ca_hash(b"pem");
        let t = JoinToken::parse(&format_secure(&hash, "server", "s3cret")).unwrap();
        assert_eq!(t.ca_hash.as_deref(), Some(hash.as_str()));
        assert_eq!(t.secret(), "s3cret");
        assert_eq!(
            t.authorization(),
            format!(
                "Basic {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "server:s3cret")
            )
        );
        let short = JoinToken::parse(" s3cret\n").unwrap();
        assert_eq!(short.ca_hash, None);
        assert_eq!(
            short.credentials,
            Credentials::Password {
                username: "node".into(),
                password: "s3cret".into()
            }
        );
        let boot = JoinToken::parse(&format!("K10{hash}::abcdef.0123456789abcdef")).unwrap();
        assert_eq!(boot.authorization(), "Bearer abcdef.0123456789abcdef");
        assert!(!format!("{boot:?}").contains("0123456789abcdef"));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn refuses_malformed_tokens() {
        assert_eq!(JoinToken::parse(" "), Err(TokenError::Empty));
        assert_eq!(JoinToken::parse("K10abc"), Err(TokenError::NoSeparator));
        assert_eq!(
            JoinToken::parse("K10abc::server:x"),
            Err(TokenError::BadHash { got: 3 })
        );
        let hash = ca_hash(b"x");
        assert_eq!(
            JoinToken::parse(&format!("K10{hash}::server:")),
            Err(TokenError::EmptyPassword)
        );
        assert!(is_bootstrap_token("abc123.0123456789abcdef"));
        assert!(!is_bootstrap_token("ABC123.0123456789abcdef"));
        assert!(!is_bootstrap_token("abc12.0123456789abcdef"));
        assert!(secrets_equal("abc", "abc") && !secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
