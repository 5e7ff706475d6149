//! Node passwords: the server remembers, per node name, a hash of the password of the machine that
//! first joined with that name, in the Secret `kube-system/<node>.node-password.r3s` (k3s keeps
//! the same in `<node>.node-password.k3s`).
//!
//! The hash is `sha256$<salt hex>$<sha256(salt ‖ password) hex>`. A fast hash is enough: agents
//! make their passwords from 16 random bytes, so there is nothing to gain from guessing them with
//! a slow one. Invariant: the Secret is created once (immutable) and never rewritten here; only
//! deleting it (the machine is gone) frees the name for another password.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::{ApiError, object, registry};
use crate::store::{Store, StoreError};

/// Where the password Secrets live.
pub const NAMESPACE: &str = "kube-system";

/// Why a node was not let in.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error(
        "node password rejected: node \"{node}\" already joined from another machine; start this agent with --with-node-id (or another --node-name), or, if that machine is gone, remove the secret {NAMESPACE}/{secret}",
        secret = secret_name(node)
    )]
    Mismatch { node: String },
    #[error("the node password secret of {node}: {source}")]
    Store {
        node: String,
        #[source]
        source: ApiError,
    },
}

/// `<node>.node-password.r3s`.
pub fn secret_name(node: &str) -> String {
    format!("{node}.node-password.r3s")
}

/// Accepts `password` for `node` if it matches the stored hash, or remembers it if there is none.
pub async fn verify_or_remember(
    store: &dyn Store,
    node: &str,
    password: &str,
) -> Result<(), PasswordError> {
    let fail = |source: ApiError| PasswordError::Store {
        node: node.to_owned(),
        source,
    };
    let secrets = registry::find("", "v1", "secrets")
        .ok_or_else(|| fail(ApiError::Internal("secrets are not registered".into())))?;
    let name = secret_name(node);
    let key = secrets.key(Some(NAMESPACE), &name);
    // Twice at most: a concurrent first join of the same name may create the Secret between our
    // read and our create; then the stored hash decides.
    for _ in 0..2 {
        let stored = store
            .get(&key)
            .map_err(|e| fail(ApiError::from_store(e, &secrets.name(), &name)))?;
        if let Some(kv) = stored {
            let secret = object::from_store(&kv).map_err(fail)?;
            return if matches(&secret, password) {
                Ok(())
            } else {
                Err(PasswordError::Mismatch {
                    node: node.to_owned(),
                })
            };
        }
        let mut secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "immutable": true,
            "type": "r3s.io/node-password",
            "data": {"hash": STANDARD.encode(hash(password))},
        });
        object::prepare_create(secrets, &mut secret).map_err(fail)?;
        let bytes = object::to_store(&secret).map_err(fail)?;
        match store.create(&key, bytes).await {
            Ok(_) => return Ok(()),
            Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(fail(ApiError::from_store(e, &secrets.name(), &name))),
        }
    }
    Err(fail(ApiError::Internal(
        "the secret changed while it was read".into(),
    )))
}

fn hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    format!("sha256${}${}", hex::encode(salt), digest(&salt, password))
}

fn digest(salt: &[u8], password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    hex::encode(h.finalize())
}

/// True if the Secret's `data.hash` is a hash of `password`.
fn matches(secret: &Value, password: &str) -> bool {
    let Some(stored) = secret["data"]["hash"]
        .as_str()
        .and_then(|b64| STANDARD.decode(b64).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
    else {
        return false;
    };
    let mut parts = stored.split('$');
    let (Some("sha256"), Some(salt), Some(want), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(salt) = hex::decode(salt) else {
        return false;
    };
    r3s_agent::join::token::secrets_equal(&digest(&salt, password), want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password() {
        let secret = json!({"data": {"hash": STANDARD.encode(hash("pw1"))}});
        assert!(matches(&secret, "pw1"));
        assert!(!matches(&secret, "pw2"));
        assert!(!matches(&json!({"data": {}}), "pw1"));
        let msg = PasswordError::Mismatch { node: "pi".into() }.to_string();
        assert!(msg.contains("--with-node-id") && msg.contains("kube-system/pi.node-password.r3s"));
    }
}
