//! ServiceAccount tokens for `projected` volumes: requested through the TokenRequest API
//! (`POST serviceaccounts/<sa>/token`) bound to the pod (name and uid), for the source's audience
//! (none: the API server's) and `expirationSeconds` (default 3600, as upstream), and rewritten
//! before they expire on kubelet's schedule: once 80 % of the lifetime has passed, or the token is
//! older than 24 hours, less a random jitter of up to 10 s so pods started together do not all
//! ask at once.
//!
//! The issue time is derived as kubelet does: `expirationTimestamp - expirationSeconds`, both from
//! the server's answer, so a skewed node clock does not shift the schedule.

use k8s_openapi::api::core::v1::{Pod, ServiceAccount, ServiceAccountTokenProjection};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

use super::VolumeError;

/// The lifetime of a token whose source does not say.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// A token older than this is refreshed whatever its lifetime.
pub const MAX_AGE_SECONDS: i64 = 24 * 3600;
/// The largest random amount taken off a refresh time.
pub const MAX_JITTER_SECONDS: i64 = 10;

/// A token the API issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    /// Unix seconds, as the server reported them.
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Requests a token for the pod's ServiceAccount, bound to the pod.
pub async fn request(
    client: &kube::Client,
    pod: &Pod,
    source: &ServiceAccountTokenProjection,
) -> Result<Issued, VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let seconds = source
        .expiration_seconds
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    let audiences: Vec<&str> = source
        .audience
        .as_deref()
        .filter(|a| !a.is_empty())
        .into_iter()
        .collect();
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audiences,
            "expirationSeconds": seconds,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.metadata.name.as_deref().unwrap_or(""),
                "uid": pod.metadata.uid.as_deref().unwrap_or(""),
            },
        },
    });
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let error = |message: String| VolumeError::Token {
        namespace: ns.to_string(),
        account: account.to_string(),
        message,
    };
    let answer: Value = api
        .create_subresource("token", account, &PostParams::default(), &body)
        .await
        .map_err(|e| error(e.to_string()))?;
    let token = answer["status"]["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| error("the answer has no status.token".into()))?
        .to_string();
    let expires_at = answer["status"]["expirationTimestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp())
        .ok_or_else(|| error("the answer has no valid status.expirationTimestamp".into()))?;
    let granted = answer["spec"]["expirationSeconds"]
        .as_i64()
        .unwrap_or(seconds);
    Ok(Issued {
        token,
        issued_at: expires_at - granted,
        expires_at,
    })
}

/// When (Unix seconds) a token issued at `issued_at` expiring at `expires_at` must be replaced:
/// at 80 % of its lifetime or 24 h after issue, whichever is first, `jitter` seconds early.
pub fn refresh_at(issued_at: i64, expires_at: i64, jitter: i64) -> i64 {
    let lifetime = (expires_at - issued_at).max(0);
    let at_80_percent = expires_at - lifetime * 20 / 100;
    at_80_percent.min(issued_at + MAX_AGE_SECONDS) - jitter
}

/// A random jitter in `0..=MAX_JITTER_SECONDS`.
pub fn jitter() -> i64 {
    use rand::Rng;
    rand::rng().random_range(0..=MAX_JITTER_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_80_percent_or_a_day() {
        // The projected default: 3607 s, refreshed after 2886 s (80 % rounded as kubelet's
        // integer arithmetic: 20 % of 3607 is 721).
        assert_eq!(refresh_at(1000, 1000 + 3607, 0), 1000 + 3607 - 721);
        // An hour-long token at 48 min.
        assert_eq!(refresh_at(0, 3600, 0), 2880);
        // Jitter moves it earlier, never later.
        assert_eq!(refresh_at(0, 3600, 7), 2873);
        // A week-long token after a day, not after 5.6 days.
        assert_eq!(refresh_at(0, 7 * 86400, 0), 86400);
        // Exactly a day: 80 % comes first.
        assert_eq!(refresh_at(0, 86400, 0), 69120);
        // A nonsensical answer (expiry before issue) is due at once.
        assert!(refresh_at(100, 50, 0) <= 100);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            assert!((0..=MAX_JITTER_SECONDS).contains(&jitter()));
        }
    }
}
