//! The kubelet API: the HTTPS endpoint on the node (port 10250, as k3s) through which the API
//! server reaches containers for `kubectl logs`, `exec`, `attach` and `port-forward`.
//!
//! Module map: [`server`] (listener, client-certificate check, routes), [`logs`]
//! (`/containerLogs`), [`exec`] (`/exec` and `/attach`, over WebSocket or SPDY), [`streams`]
//! (an exec/attach session's streams, whichever transport carries them, and the WebSocket
//! transport), [`remotecommand`] (the SPDY transport: `v4.channel.k8s.io` down to
//! `channel.k8s.io`), [`portforward`] (`/portForward` over SPDY/3.1, raw or tunnelled in a
//! WebSocket, or over `v4.channel.k8s.io`), [`spdy`] (SPDY/3.1 framing), [`channel`] (the
//! `channel.k8s.io` WebSocket framing).
//!
//! Invariants: only a client presenting a certificate from the cluster's client CA with the API
//! server's identity ([`APISERVER_USER`]) gets past the TLS layer and the first check; nothing
//! here trusts a path or query beyond looking the named pod up among this node's pods; errors are
//! `Status` objects the API server passes through unchanged.

pub mod channel;
pub mod exec;
pub mod logs;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod spdy;
pub mod streams;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::pods::Ctx;

/// k3s's (and kubelet's) port for the kubelet API.
pub const DEFAULT_PORT: u16 = 10250;

/// The common name of the client certificate the API server uses towards kubelets.
pub const APISERVER_USER: &str = "system:kube-apiserver";

/// A future yielding a serving certificate and key (PEM).
pub type ServingFuture = Pin<Box<dyn Future<Output = Result<(String, String), String>> + Send>>;

/// Obtains the kubelet's serving certificate for the node's name and addresses: the in-process
/// agent asks the server's CA directly, a joined agent fetches `/v1-r3s/serving-kubelet.crt`.
#[derive(Clone)]
pub struct ServingSource(pub Arc<dyn Fn(String, Vec<IpAddr>) -> ServingFuture + Send + Sync>);

impl std::fmt::Debug for ServingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServingSource")
    }
}

/// How to serve the kubelet API.
#[derive(Debug, Clone)]
pub struct KubeletOptions {
    pub port: u16,
    pub serving: ServingSource,
    /// The CA client certificates must chain to (the cluster's client CA).
    pub client_ca_pem: String,
}

/// Failures answering a kubelet request, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("pods \"{0}\" not found")]
    PodNotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

impl KubeletError {
    fn code(&self) -> StatusCode {
        match self {
            KubeletError::PodNotFound(_) | KubeletError::NotFound(_) => StatusCode::NOT_FOUND,
            KubeletError::BadRequest(_) => StatusCode::BAD_REQUEST,
            KubeletError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for KubeletError {
    fn into_response(self) -> Response {
        let code = self.code();
        let reason = match code {
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::BAD_REQUEST => "BadRequest",
            _ => "InternalError",
        };
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.to_string(), "reason": reason,
            "code": code.as_u16(),
        });
        (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// Looks the pod up through the API and checks it is bound to this node.
pub async fn find_pod(ctx: &Ctx, namespace: &str, name: &str) -> Result<Pod, KubeletError> {
    let api: kube::Api<Pod> = kube::Api::namespaced(ctx.client.clone(), namespace);
    let pod = api
        .get_opt(name)
        .await
        .map_err(|e| KubeletError::Internal(format!("looking up pod {namespace}/{name}: {e}")))?
        .ok_or_else(|| KubeletError::PodNotFound(name.to_owned()))?;
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if node != Some(ctx.node_name.as_str()) {
        return Err(KubeletError::PodNotFound(name.to_owned()));
    }
    Ok(pod)
}

/// The id of the running container `container` of `pod` (from `status.containerStatuses`).
pub fn running_container(pod: &Pod, container: &str) -> Result<String, KubeletError> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let in_spec = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == container));
    if !in_spec {
        return Err(KubeletError::BadRequest(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|l| l.iter().find(|c| c.name == container));
    let running = status
        .and_then(|s| s.state.as_ref())
        .is_some_and(|s| s.running.is_some());
    let id = status
        .and_then(|s| s.container_id.as_deref())
        .and_then(|id| id.split_once("://").map(|(_, id)| id.to_owned()));
    match (running, id) {
        (true, Some(id)) => Ok(id),
        _ => Err(KubeletError::BadRequest(format!(
            "container {container} is not running in pod {name}"
        ))),
    }
}

/// Decodes a query string into pairs, keeping repeated keys (`command=a&command=b`).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The last value of `key`, if any.
pub fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Whether `key` is set to a true value (`1`, `true`).
pub fn query_flag(pairs: &[(String, String)], key: &str) -> bool {
    matches!(query_get(pairs, key), Some("1" | "true" | "True"))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keeps_repeated_keys_and_decodes() {
        let q = query_pairs(Some(
            "command=sh&command=-c&command=echo%20hi+there&stdin=true&x",
        ));
        let cmd: Vec<_> = q
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cmd, ["sh", "-c", "echo hi there"]);
        assert!(query_flag(&q, "stdin"));
        assert!(!query_flag(&q, "tty"));
        assert_eq!(query_get(&q, "x"), Some(""));
        assert_eq!(percent_decode("%2F%zz%4"), "/%zz%4");
    }
}
