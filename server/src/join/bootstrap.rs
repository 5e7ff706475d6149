//! Bootstrap tokens (kubeadm's format, which k3s accepts for joining too): `<id>.<secret>`, six and
//! sixteen characters of `[a-z0-9]`, stored as the Secret `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token` with `token-id`, `token-secret`, optional `expiration`
//! (RFC 3339) and `description`, and `usage-bootstrap-authentication: "true"`.
//!
//! A token is valid while its Secret exists, its secret matches and it has not expired; expired
//! Secrets are not deleted here (upstream's token cleaner does that), just refused.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::api::{object, registry};
use crate::store::Store;

pub const NAMESPACE: &str = "kube-system";
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";

/// The Secret name of token `id`.
pub fn secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

/// The Secret for a new token, valid until `expiration` (RFC 3339) if given.
pub fn secret(id: &str, secret: &str, expiration: Option<&str>, description: &str) -> Value {
    let mut data = serde_json::Map::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_owned(), Value::String(STANDARD.encode(v)));
    };
    put("token-id", id);
    put("token-secret", secret);
    put("usage-bootstrap-authentication", "true");
    put("usage-bootstrap-signing", "true");
    if let Some(exp) = expiration {
        put("expiration", exp);
    }
    if !description.is_empty() {
        put("description", description);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name(id), "namespace": NAMESPACE},
        "type": SECRET_TYPE,
        "data": data,
    })
}

/// A field of a bootstrap token Secret, decoded.
pub fn field(secret: &Value, key: &str) -> Option<String> {
    secret["data"][key]
        .as_str()
        .and_then(|b64| STANDARD.decode(b64).ok())
        .and_then(|b| String::from_utf8(b).ok())
}

/// The token id if `token` is a live bootstrap token for authentication.
pub fn valid(store: &dyn Store, token: &str) -> Option<String> {
    if !r3s_agent::join::token::is_bootstrap_token(token) {
        return None;
    }
    let (id, given) = token.split_once('.')?;
    let secrets = registry::find("", "v1", "secrets")?;
    let kv = store
        .get(&secrets.key(Some(NAMESPACE), &secret_name(id)))
        .ok()??;
    let secret = object::from_store(&kv).ok()?;
    if secret["type"].as_str() != Some(SECRET_TYPE)
        || field(&secret, "usage-bootstrap-authentication").as_deref() != Some("true")
        || field(&secret, "token-id").as_deref() != Some(id)
        || !r3s_agent::join::token::secrets_equal(&field(&secret, "token-secret")?, given)
        || secret["metadata"]["deletionTimestamp"].is_string()
    {
        return None;
    }
    if let Some(exp) = field(&secret, "expiration") {
        let exp = chrono::DateTime::parse_from_rfc3339(&exp).ok()?;
        if exp <= chrono::Utc::now() {
            return None;
        }
    }
    Some(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_fields_round_trip() {
        let s = secret(
            "abcdef",
            "0123456789abcdef",
            Some("2030-01-01T00:00:00Z"),
            "pis",
        );
        assert_eq!(s["metadata"]["name"], "bootstrap-token-abcdef");
        assert_eq!(
            field(&s, "token-secret").as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(field(&s, "description").as_deref(), Some("pis"));
        assert_eq!(
            field(&s, "usage-bootstrap-authentication").as_deref(),
            Some("true")
        );
    }
}
