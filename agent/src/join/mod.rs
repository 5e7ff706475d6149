//! Joining a server the k3s way: from a URL and a token to a kubeconfig with this node's own
//! client certificate.
//!
//! Steps ([`join`]): parse the token → `GET /cacerts` without verifying the server → compare the
//! bundle's sha256 with the token's CA hash (a mismatch ends here, before any secret is sent) →
//! from now on verify the server against that CA → read or make the node password (and node id) →
//! `GET /v1-r3s/config` (basic auth, or a bootstrap bearer token) for the cluster's settings →
//! `GET /v1-r3s/client-ca.crt` (the kubelet API's trust root) → `GET /v1-r3s/client-kubelet.crt`
//! with the node name and password headers → write
//! `<data-dir>/agent/{server-ca.crt, client-kubelet.crt, client-kubelet.key, kubelet.kubeconfig}`.
//!
//! The agent joins at every start, so its client certificate (one year, from the server's client
//! CA, which rotation never changes) is fetched anew each time. While it runs, [`renewing_client`]
//! gives the node a `kube::Client` whose certificate [`renew`] replaces two thirds into its
//! lifetime (and rewrites the files above), and the kubelet API renews its serving certificate the
//! same way, so an agent that runs longer than its certificates never needs a restart.
//!
//! The server answers 401 for a wrong token and 403 when the node name belongs to another machine
//! (another node password); both end the join with one line naming the server. Module map:
//! [`token`] (the token format, shared with the server), [`https`] (the pre-kubeconfig HTTPS
//! requests), [`identity`] (node password and node id files), [`renew`] (certificates swapped
//! while in use), [`client`] (the node's `kube::Client` over a renewable certificate).

pub mod client;
pub mod https;
pub mod identity;
pub mod renew;
pub mod token;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::config::ServerUrl;
use https::{HttpError, Trust};
use identity::IdentityError;
use token::{JoinToken, TokenError};

/// The unauthenticated CA bundle (k3s's path).
pub const CACERTS_PATH: &str = "/cacerts";
/// The cluster settings an agent needs ([`ClusterSettings`]).
pub const CONFIG_PATH: &str = "/v1-r3s/config";
/// The node's client certificate and key (k3s: `/v1-k3s/client-kubelet.crt`).
pub const CLIENT_KUBELET_PATH: &str = "/v1-r3s/client-kubelet.crt";
/// The kubelet API's serving certificate and key for the node (k3s: `/v1-k3s/serving-kubelet.crt`),
/// with the node's addresses in [`NODE_IP_HEADER`] (comma-separated) as IP SANs.
pub const SERVING_KUBELET_PATH: &str = "/v1-r3s/serving-kubelet.crt";
/// The client CA bundle: the kubelet API accepts the API server's certificate from it.
pub const CLIENT_CA_PATH: &str = "/v1-r3s/client-ca.crt";
pub const NODE_IP_HEADER: &str = "r3s-Node-IP";
/// Request headers naming the node and proving it is the machine that first used the name.
pub const NODE_NAME_HEADER: &str = "r3s-Node-Name";
pub const NODE_PASSWORD_HEADER: &str = "r3s-Node-Password";

/// What the server tells a joining agent about the cluster (JSON at [`CONFIG_PATH`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSettings {
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub cluster_dns: String,
    pub cluster_domain: String,
}

/// Why joining failed. Each message is one line and names the server.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the join token: {0}")]
    Token(#[from] TokenError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(
        "{server} serves a CA certificate with sha256 {got}, but the token expects {want}: wrong server, or a token from another cluster; nothing secret was sent"
    )]
    CaMismatch {
        server: String,
        got: String,
        want: String,
    },
    #[error("{server} refused the join token (401 Unauthorized): check --token")]
    Unauthorized { server: String },
    #[error("{server} refused node {node}: {message}")]
    Refused {
        server: String,
        node: String,
        message: String,
    },
    #[error("{server}{path} answered {status}: {body}")]
    Unexpected {
        server: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("{server}{path}: {reason}")]
    BadAnswer {
        server: String,
        path: String,
        reason: String,
    },
    #[error("the node identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl JoinError {
    /// True when trying again later may succeed (the server is not up yet, or answered 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            JoinError::Http(HttpError::Connect { .. } | HttpError::Http { .. }) => true,
            JoinError::Unexpected { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// What joining needs.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub server: ServerUrl,
    pub token: String,
    pub data_dir: PathBuf,
    /// The node name before any node id.
    pub node_name: String,
    /// Append this machine's stable id to the node name (`--with-node-id`).
    pub with_node_id: bool,
}

/// The result of a successful join.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The name the node registers as (with its node id when asked for).
    pub node_name: String,
    /// `<data-dir>/agent/kubelet.kubeconfig`.
    pub kubeconfig: PathBuf,
    pub settings: ClusterSettings,
    /// The client CA (PEM) the kubelet API checks callers against.
    pub client_ca_pem: String,
    /// How to ask for the kubelet API's serving certificate once the node's addresses are known,
    /// and for new client certificates.
    pub serving: ServingRequest,
    /// The client certificate (PEM) and key the join fetched, also in the kubeconfig.
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

/// The node's credentials at the server: everything [`fetch_serving_certificate`] and
/// [`fetch_client_certificate`] need.
#[derive(Clone)]
pub struct ServingRequest {
    server: ServerUrl,
    ca_pem: Vec<u8>,
    authorization: String,
    node_name: String,
    password: String,
}

impl std::fmt::Debug for ServingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingRequest")
            .field("server", &self.server.to_string())
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

/// `GET /v1-r3s/serving-kubelet.crt` for the node's addresses: `(certificate PEM, key PEM)`.
pub async fn fetch_serving_certificate(
    req: &ServingRequest,
    ips: &[std::net::IpAddr],
) -> Result<(String, String), JoinError> {
    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
    let headers = [
        ("authorization", req.authorization.clone()),
        (NODE_NAME_HEADER, req.node_name.clone()),
        (NODE_PASSWORD_HEADER, req.password.clone()),
        (NODE_IP_HEADER, ips.join(",")),
    ];
    let server = &req.server;
    let answer = https::get(
        server,
        SERVING_KUBELET_PATH,
        Trust::Ca(&req.ca_pem),
        &headers,
    )
    .await?;
    check_status(server, SERVING_KUBELET_PATH, &req.node_name, &answer)?;
    split_cert_and_key(&answer.text()).ok_or_else(|| JoinError::BadAnswer {
        server: server.to_string(),
        path: SERVING_KUBELET_PATH.into(),
        reason: "expected a PEM certificate followed by a PEM private key".into(),
    })
}

/// `GET /v1-r3s/client-kubelet.crt`: a new client certificate for the node, `(certificate PEM,
/// key PEM)`.
pub async fn fetch_client_certificate(req: &ServingRequest) -> Result<(String, String), JoinError> {
    let headers = [
        ("authorization", req.authorization.clone()),
        (NODE_NAME_HEADER, req.node_name.clone()),
        (NODE_PASSWORD_HEADER, req.password.clone()),
    ];
    let server = &req.server;
    let answer = https::get(
        server,
        CLIENT_KUBELET_PATH,
        Trust::Ca(&req.ca_pem),
        &headers,
    )
    .await?;
    check_status(server, CLIENT_KUBELET_PATH, &req.node_name, &answer)?;
    split_cert_and_key(&answer.text()).ok_or_else(|| JoinError::BadAnswer {
        server: server.to_string(),
        path: CLIENT_KUBELET_PATH.into(),
        reason: "expected a PEM certificate followed by a PEM private key".into(),
    })
}

/// The node's `kube::Client` with its client certificate kept renewed by a background task (see
/// [`renew`]); each new certificate is also written where the join wrote the first. The task
/// stops when the returned guard is dropped.
pub async fn renewing_client(
    joined: &Joined,
) -> Result<(kube::Client, renew::AbortOnDrop), client::ClientError> {
    let slot = renew::CertSlot::new("client", &joined.client_cert_pem, &joined.client_key_pem)
        .map_err(|e| client::ClientError {
            path: joined.kubeconfig.display().to_string(),
            reason: e.to_string(),
        })?;
    let slot = Arc::new(slot);
    let client = client::renewable_client(&joined.kubeconfig, slot.clone()).await?;
    let request = joined.serving.clone();
    let fetch_request = request.clone();
    let kubeconfig = joined.kubeconfig.clone();
    let task = tokio::spawn(renew::keep_renewed(
        slot,
        move || {
            let request = fetch_request.clone();
            async move {
                fetch_client_certificate(&request)
                    .await
                    .map_err(|e| e.to_string())
            }
        },
        move |cert, key| {
            if let Err(e) = write_client_files(&kubeconfig, &request, cert, key) {
                tracing::warn!("the renewed client certificate is in use but not saved: {e}");
            }
        },
    ));
    Ok((client, renew::AbortOnDrop(task)))
}

/// Writes the client certificate, its key and the kubeconfig holding them next to `kubeconfig`.
fn write_client_files(
    kubeconfig: &Path,
    request: &ServingRequest,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), JoinError> {
    let agent_dir = kubeconfig.parent().unwrap_or(Path::new("."));
    let ca_text = String::from_utf8_lossy(&request.ca_pem);
    write_private(&agent_dir.join("client-kubelet.crt"), cert_pem, 0o644)?;
    write_private(&agent_dir.join("client-kubelet.key"), key_pem, 0o600)?;
    write_private(
        kubeconfig,
        &render_kubeconfig(&request.server.to_string(), &ca_text, cert_pem, key_pem),
        0o600,
    )
}

/// Joins the server: see the module documentation for the steps.
pub async fn join(opts: &JoinOptions) -> Result<Joined, JoinError> {
    let server = &opts.server;
    let token = JoinToken::parse(&opts.token)?;

    let ca = https::get(server, CACERTS_PATH, Trust::Unverified, &[]).await?;
    if ca.status != 200 {
        return Err(unexpected(server, CACERTS_PATH, &ca));
    }
    let ca_pem = ca.body;
    let got = token::ca_hash(&ca_pem);
    match &token.ca_hash {
        Some(want) if *want != got => {
            return Err(JoinError::CaMismatch {
                server: server.to_string(),
                got,
                want: want.clone(),
            });
        }
        Some(_) => {}
        None => tracing::warn!(
            "the token has no CA hash: trusting the CA {server} presents (sha256 {got}); use the full K10 token to verify the server"
        ),
    }

    let node_name = if opts.with_node_id {
        identity::name_with_node_id(&opts.data_dir, &opts.node_name)?
    } else {
        opts.node_name.clone()
    };
    let password = identity::node_password(&opts.data_dir)?;
    let auth = ("authorization", token.authorization());

    let answer = https::get(
        server,
        CONFIG_PATH,
        Trust::Ca(&ca_pem),
        std::slice::from_ref(&auth),
    )
    .await?;
    check_status(server, CONFIG_PATH, &node_name, &answer)?;
    let settings: ClusterSettings =
        serde_json::from_slice(&answer.body).map_err(|e| JoinError::BadAnswer {
            server: server.to_string(),
            path: CONFIG_PATH.into(),
            reason: e.to_string(),
        })?;

    let answer = https::get(
        server,
        CLIENT_CA_PATH,
        Trust::Ca(&ca_pem),
        std::slice::from_ref(&auth),
    )
    .await?;
    check_status(server, CLIENT_CA_PATH, &node_name, &answer)?;
    let client_ca_pem = answer.text();

    let serving = ServingRequest {
        server: server.clone(),
        ca_pem: ca_pem.clone(),
        authorization: auth.1.clone(),
        node_name: node_name.clone(),
        password,
    };
    let (cert_pem, key_pem) = fetch_client_certificate(&serving).await?;

    let agent_dir = opts.data_dir.join("agent");
    let ca_text = String::from_utf8_lossy(&ca_pem).into_owned();
    write_private(&agent_dir.join("server-ca.crt"), &ca_text, 0o644)?;
    let kubeconfig = agent_dir.join("kubelet.kubeconfig");
    write_client_files(&kubeconfig, &serving, &cert_pem, &key_pem)?;
    Ok(Joined {
        node_name,
        kubeconfig,
        settings,
        client_ca_pem,
        serving,
        client_cert_pem: cert_pem,
        client_key_pem: key_pem,
    })
}

fn unexpected(server: &ServerUrl, path: &str, answer: &https::Answer) -> JoinError {
    JoinError::Unexpected {
        server: server.to_string(),
        path: path.into(),
        status: answer.status,
        body: answer.text().lines().next().unwrap_or("").to_owned(),
    }
}

fn check_status(
    server: &ServerUrl,
    path: &str,
    node: &str,
    answer: &https::Answer,
) -> Result<(), JoinError> {
    match answer.status {
        200 => Ok(()),
        401 => Err(JoinError::Unauthorized {
            server: server.to_string(),
        }),
        403 => Err(JoinError::Refused {
            server: server.to_string(),
            node: node.to_owned(),
            message: answer.text().lines().next().unwrap_or("").to_owned(),
        }),
        _ => Err(unexpected(server, path, answer)),
    }
}

/// Splits the server's answer (certificate PEM blocks, then the key) in two.
fn split_cert_and_key(text: &str) -> Option<(String, String)> {
    let at = text.find("-----BEGIN ")?;
    let key_at = text.find("-----BEGIN PRIVATE KEY-----").or_else(|| {
        text.find("-----BEGIN EC PRIVATE KEY-----")
            .or_else(|| text.find("-----BEGIN RSA PRIVATE KEY-----"))
    })?;
    let cert = text[at..key_at].trim();
    let key = text[key_at..].trim();
    (cert.contains("-----BEGIN CERTIFICATE-----") && !key.is_empty())
        .then(|| (format!("{cert}\n"), format!("{key}\n")))
}

/// A kubeconfig with everything embedded, in the shape `r3s-server` writes its admin one.
pub fn render_kubeconfig(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem.as_bytes());
    format!(
        "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {{}}
users:
- name: default
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}

/// Writes atomically (temporary file, fsync, rename) with `mode`, creating the directory.
fn write_private(path: &Path, data: &str, mode: u32) -> Result<(), JoinError> {
    let err = |source| JoinError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(data.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_certificate_and_key() {
        let text = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n";
        let (cert, key) = split_cert_and_key(text).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----") && cert.ends_with("-----\n"));
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(split_cert_and_key("-----BEGIN CERTIFICATE-----\nA"), None);
    }

    #[test]
    fn transient_errors_are_the_ones_worth_retrying() {
        let unexpected = |status| JoinError::Unexpected {
            server: "s".into(),
            path: "/p".into(),
            status,
            body: String::new(),
        };
        assert!(unexpected(503).is_transient());
        assert!(!unexpected(404).is_transient());
        assert!(!JoinError::Unauthorized { server: "s".into() }.is_transient());
    }
}
