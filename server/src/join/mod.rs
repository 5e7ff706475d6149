//! The supervisor endpoints agents join through, served on the API port beside the Kubernetes API
//! (k3s serves `/cacerts` and `/v1-k3s/*` the same way):
//!
//! - `GET /cacerts`, unauthenticated: the server CA bundle, whose sha256 join tokens carry.
//! - `GET /v1-r3s/config`: the cluster settings an agent needs (CIDRs, DNS).
//! - `GET /v1-r3s/client-kubelet.crt`: a new client certificate and key for the node named by the
//!   `r3s-Node-Name` header (CN `system:node:<name>`, O `system:nodes`, signed by the client CA,
//!   valid one year), issued only if the `r3s-Node-Password` header matches the password the name
//!   was first joined with ([`password`]).
//! - `GET /v1-r3s/serving-kubelet.crt`: the node's kubelet API serving certificate and key
//!   (signed by the server CA, SANs = node name and the addresses in `r3s-Node-IP`), with the same
//!   node name and password check.
//! - `GET /v1-r3s/client-ca.crt`: the client CA bundle (the kubelet API trusts the API server's
//!   client certificate through it).
//!
//! The last two need the join secret (HTTP basic auth, any user, as k3s's `node:<secret>` or
//! `server:<secret>`) or a valid bootstrap token (`Authorization: Bearer <id>.<secret>`,
//! [`bootstrap`]); otherwise 401. Answers are plain text; errors are one line.
//!
//! Module map: [`token`] (the server token files), [`password`] (node password Secrets),
//! [`bootstrap`] (bootstrap token Secrets), [`command`] (`r3s-server token`).

pub mod bootstrap;
pub mod command;
pub mod password;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use r3s_agent::join::{
    CACERTS_PATH, CLIENT_CA_PATH, CLIENT_KUBELET_PATH, CONFIG_PATH, ClusterSettings,
    NODE_IP_HEADER, NODE_NAME_HEADER, NODE_PASSWORD_HEADER, SERVING_KUBELET_PATH,
};

use crate::store::Store;

/// What the join endpoints need.
#[derive(Clone)]
pub struct JoinState {
    pub store: Arc<dyn Store>,
    /// The join secret (the password part of the server token).
    pub secret: Arc<str>,
    /// The server CA bundle as served at `/cacerts`.
    pub ca_pem: Arc<str>,
    /// `--data-dir`, where the client CA lives.
    pub data_dir: PathBuf,
    pub settings: Arc<ClusterSettings>,
}

/// The join routes, with their state; merge them into the API router.
pub fn routes(state: JoinState) -> Router {
    Router::new()
        .route(CACERTS_PATH, get(cacerts))
        .route(CONFIG_PATH, get(config))
        .route(CLIENT_KUBELET_PATH, get(client_kubelet))
        .route(SERVING_KUBELET_PATH, get(serving_kubelet))
        .route(CLIENT_CA_PATH, get(client_ca))
        .with_state(state)
}

async fn cacerts(State(state): State<JoinState>) -> Response {
    text(StatusCode::OK, state.ca_pem.to_string())
}

async fn config(State(state): State<JoinState>, headers: HeaderMap) -> Response {
    if !authenticate(&state, &headers, CONFIG_PATH) {
        return unauthorized();
    }
    match serde_json::to_vec(state.settings.as_ref()) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The node named by the request, after the credentials and node password checks; `Err` is
/// the answer to send.
async fn checked_node(
    state: &JoinState,
    headers: &HeaderMap,
    path: &str,
) -> Result<String, Response> {
    if !authenticate(state, headers, path) {
        return Err(unauthorized());
    }
    let header_value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let (Some(node), Some(password)) = (
        header_value(NODE_NAME_HEADER),
        header_value(NODE_PASSWORD_HEADER),
    ) else {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("the {NODE_NAME_HEADER} and {NODE_PASSWORD_HEADER} headers are required"),
        ));
    };
    if let Err(e) = node.parse::<r3s_config::DnsName>() {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("node name {node:?}: {e}"),
        ));
    }
    match password::verify_or_remember(state.store.as_ref(), node, password).await {
        Ok(()) => Ok(node.to_owned()),
        Err(e @ password::PasswordError::Mismatch { .. }) => {
            tracing::warn!("{e}");
            Err(text(StatusCode::FORBIDDEN, e.to_string()))
        }
        Err(e) => {
            tracing::error!("{e}");
            Err(text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
    }
}

async fn client_kubelet(State(state): State<JoinState>, headers: HeaderMap) -> Response {
    let node = match checked_node(&state, &headers, CLIENT_KUBELET_PATH).await {
        Ok(node) => node,
        Err(answer) => return answer,
    };
    let user = format!("system:node:{node}");
    match crate::tls::issue_client_certificate(&state.data_dir, &user, &["system:nodes"]) {
        Ok((cert, key)) => {
            tracing::info!(node, "issued a node client certificate");
            text(StatusCode::OK, format!("{cert}{key}"))
        }
        Err(e) => {
            tracing::error!(node, "issuing the node client certificate: {e}");
            text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

async fn serving_kubelet(State(state): State<JoinState>, headers: HeaderMap) -> Response {
    let node = match checked_node(&state, &headers, SERVING_KUBELET_PATH).await {
        Ok(node) => node,
        Err(answer) => return answer,
    };
    let mut ips = Vec::new();
    let listed = headers
        .get(NODE_IP_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for ip in listed.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("{NODE_IP_HEADER}: {ip:?} is not an IP address"),
                );
            }
        }
    }
    match crate::tls::kubelet::issue_kubelet_serving(&state.data_dir, &node, &ips) {
        Ok((cert, key)) => {
            tracing::info!(node, ?ips, "issued a kubelet serving certificate");
            text(StatusCode::OK, format!("{cert}{key}"))
        }
        Err(e) => {
            tracing::error!(node, "issuing the kubelet serving certificate: {e}");
            text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

async fn client_ca(State(state): State<JoinState>, headers: HeaderMap) -> Response {
    if !authenticate(&state, &headers, CLIENT_CA_PATH) {
        return unauthorized();
    }
    let path = state.data_dir.join("server/tls/client-ca.crt");
    match std::fs::read_to_string(&path) {
        Ok(pem) => text(StatusCode::OK, pem),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}: {e}", path.display()),
        ),
    }
}

/// True for the join secret as basic auth, or a live bootstrap token as a bearer token. Every
/// attempt is logged with its outcome (the token never is), so refused joins can be traced.
fn authenticate(state: &JoinState, headers: &HeaderMap, path: &str) -> bool {
    let ok = credentials_valid(state, headers);
    if ok {
        tracing::info!(path, "join request authenticated");
    } else {
        tracing::warn!(path, "join request refused: wrong or missing token (401)");
    }
    ok
}

fn credentials_valid(state: &JoinState, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(b64) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        return decoded
            .as_deref()
            .and_then(|d| d.split_once(':'))
            .is_some_and(|(_, given)| r3s_agent::join::token::secrets_equal(given, &state.secret));
    }
    value
        .strip_prefix("Bearer ")
        .is_some_and(|t| bootstrap::valid(state.store.as_ref(), t.trim()).is_some())
}

fn unauthorized() -> Response {
    text(StatusCode::UNAUTHORIZED, "Unauthorized".to_string())
}

fn text(status: StatusCode, body: String) -> Response {
    let body = if body.ends_with('\n') {
        body
    } else {
        format!("{body}\n")
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}
