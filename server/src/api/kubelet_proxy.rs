//! The streaming pod subresources (`log`, `exec`, `attach`, `portforward`), proxied to the
//! kubelet API of the pod's node, as kube-apiserver does.
//!
//! The pod's node comes from `spec.nodeName`, its address from the Node's first `InternalIP`
//! and its port from `status.daemonEndpoints.kubeletEndpoint.Port`. The connection is HTTPS with
//! the server CA as the only trust root and the API server's kubelet-client certificate as the
//! client identity. A log is a streamed GET; exec, attach and port-forward are upgrades: the
//! client's upgrade request goes to the kubelet unchanged (so `Sec-WebSocket-Accept` computed
//! there is right for the client), and if the kubelet answers 101 the client gets that answer and
//! bytes are copied both ways until either side closes. Any other answer (a refused protocol, a
//! Status error) goes back to the client as it came, so kubectl can fall back or print it.
//!
//! Invariant: nothing from the client but the subresource's own query and the upgrade headers
//! reaches the kubelet; its credentials (`Authorization`) never do.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use super::ApiState;
use super::auth::{self, Attributes, UserInfo};
use super::error::ApiError;
use super::object;
use super::registry;
use super::target::Target;

/// The default kubelet port, when a Node does not say.
const KUBELET_PORT: u16 = 10250;
/// How long connecting to a kubelet may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Request headers forwarded to the kubelet (the upgrade handshake and content negotiation).
const FORWARDED: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
    "accept",
    "user-agent",
];

/// How the API server reaches kubelets: the TLS client configuration.
pub struct KubeletClient {
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeletClient")
    }
}

impl KubeletClient {
    /// Trusts only `server_ca_pem` and presents `cert_pem`/`key_pem`.
    pub fn new(server_ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(server_ca_pem.as_bytes()) {
            roots
                .add(ca.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: Arc::new(config),
        })
    }
}

/// Serves one streaming subresource request (already authorized for its own verb).
pub async fn proxy(
    state: &ApiState,
    user: &UserInfo,
    target: &Target,
    query: &HashMap<String, String>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let sub = target.subresource.as_deref().unwrap_or("");
    let namespace = target.namespace.as_deref().unwrap_or("");
    let name = target.name.as_deref().unwrap_or("");
    // A WebSocket upgrade is a GET, but it runs commands: like kube-apiserver 1.31+, require the
    // `create` permission that the SPDY POST needs.
    if sub != "log" && request.method() == Method::GET {
        auth::authorize(
            state.store.as_ref(),
            user,
            &Attributes {
                verb: "create",
                group: "",
                resource: "pods",
                subresource: Some(sub),
                namespace: Some(namespace),
                name: Some(name),
            },
        )?;
    }
    let client = state.kubelet.as_ref().ok_or_else(|| {
        ApiError::ServiceUnavailable(format!(
            "pods/{sub}: this API server has no kubelet client (started without its TLS material)"
        ))
    })?;
    let pod = load(state, "pods", Some(namespace), name)?;
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let path = match sub {
        "portforward" => format!("/portForward/{namespace}/{name}"),
        _ => {
            let container = container(&pod, name, query.get("container").map(String::as_str))?;
            let kind = match sub {
                "log" => "containerLogs",
                other => other,
            };
            format!("/{kind}/{namespace}/{name}/{container}")
        }
    };
    let node = load(state, "nodes", None, node_name).map_err(|_| {
        ApiError::ServiceUnavailable(format!(
            "pod {name} is on node {node_name}, which is not registered"
        ))
    })?;
    let ip = internal_ip(&node).ok_or_else(|| {
        ApiError::ServiceUnavailable(format!("node {node_name} has no InternalIP address"))
    })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(KUBELET_PORT);

    let unreachable = |what: String| {
        ApiError::ServiceUnavailable(format!(
            "unable to reach the agent of node {node_name} at {ip}:{port}: {what}"
        ))
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((ip, port)))
        .await
        .map_err(|_| unreachable("connection timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(client.tls.clone())
        .connect(ServerName::IpAddress(ip.into()), tcp)
        .await
        .map_err(|e| unreachable(format!("TLS: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("kubelet connection: {e}");
        }
    });

    let path_and_query = match request.uri().query() {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path,
    };
    let mut out = http::Request::builder()
        .method(request.method().clone())
        .uri(path_and_query);
    for name in FORWARDED {
        for value in request.headers().get_all(*name) {
            out = out.header(*name, value.clone());
        }
    }
    let host = HeaderValue::from_str(&format!("{ip}:{port}"))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let out = out
        .header(header::HOST, host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let is_upgrade = request.headers().contains_key(header::UPGRADE);
    let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut request));
    let mut response = sender
        .send_request(out)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let kubelet_upgrade = hyper::upgrade::on(&mut response);
        let (parts, _) = response.into_parts();
        tokio::spawn(async move {
            let (client, kubelet) = match tokio::join!(client_upgrade, kubelet_upgrade) {
                (Ok(c), Ok(k)) => (c, k),
                (c, k) => {
                    tracing::debug!(
                        client = c.is_ok(),
                        kubelet = k.is_ok(),
                        "streaming upgrade did not complete"
                    );
                    return;
                }
            };
            tunnel(TokioIo::new(client), TokioIo::new(kubelet)).await;
        });
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// How long the client may keep its side open once the agent has finished its stream.
const TUNNEL_GRACE: Duration = Duration::from_secs(10);

/// Copies both directions of an upgraded stream, each to its own end. Unlike
/// `copy_bidirectional`, a failure of one direction does not cut the other: when the agent has
/// already closed and the client still sends (a terminal resize, stdin), the write towards the
/// agent fails, and the agent's last frames (the exit Status, the Close) must still reach the
/// client.
async fn tunnel<C, K>(client: C, kubelet: K)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    K: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    use tokio::io::AsyncWriteExt;
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut kubelet_rx, mut kubelet_tx) = tokio::io::split(kubelet);
    let up = async {
        let r = tokio::io::copy(&mut client_rx, &mut kubelet_tx).await;
        let _ = kubelet_tx.shutdown().await;
        r
    };
    let down = async {
        let r = tokio::io::copy(&mut kubelet_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
        r
    };
    tokio::pin!(up, down);
    let result = tokio::select! {
        // The client stopped sending (or its side failed): the agent's output may go on.
        r = &mut up => down.await.and(r),
        // The agent is done: the client gets a moment to finish its side, then the tunnel goes.
        r = &mut down => match tokio::time::timeout(TUNNEL_GRACE, &mut up).await {
            Ok(u) => r.and(u),
            Err(_) => r,
        },
    };
    if let Err(e) = result {
        tracing::debug!("streaming tunnel ended: {e}");
    }
}

fn load(
    state: &ApiState,
    plural: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let res = registry::find("", "v1", plural)
        .ok_or_else(|| ApiError::Internal(format!("no {plural} resource")))?;
    let kv = state
        .store
        .get(&res.key(namespace, name))
        .map_err(|e| ApiError::from_store(e, &res.name(), name))?
        .ok_or_else(|| ApiError::NotFound {
            resource: res.name(),
            name: name.to_string(),
        })?;
    object::from_store(&kv)
}

/// The container a request is for: the one named, or the pod's only (or default) container.
fn container(pod: &Value, pod_name: &str, named: Option<&str>) -> Result<String, ApiError> {
    let names = |key: &str| -> Vec<String> {
        pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let containers = names("containers");
    let init = names("initContainers");
    match named.filter(|n| !n.is_empty()) {
        Some(n) if containers.iter().chain(&init).any(|c| c == n) => Ok(n.to_owned()),
        Some(n) => Err(ApiError::BadRequest(format!(
            "container {n} is not valid for pod {pod_name}"
        ))),
        None => {
            if containers.len() == 1 {
                return Ok(containers[0].clone());
            }
            let default = pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"]
                .as_str()
                .filter(|d| containers.iter().any(|c| c == d));
            match default {
                Some(d) => Ok(d.to_owned()),
                None => Err(ApiError::BadRequest(format!(
                    "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                    containers.join(" ")
                ))),
            }
        }
    }
}

fn internal_ip(node: &Value) -> Option<IpAddr> {
    node["status"]["addresses"]
        .as_array()?
        .iter()
        .filter(|a| a["type"] == "InternalIP")
        .find_map(|a| a["address"].as_str()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn picks_the_container() {
        let one =
            json!({"spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(container(&one, "p", None).unwrap(), "a");
        assert_eq!(container(&one, "p", Some("i")).unwrap(), "i");
        let e = container(&one, "p", Some("x")).unwrap_err();
        assert_eq!(e.to_string(), "container x is not valid for pod p");
        let two = json!({"metadata": {}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let e = container(&two, "p", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        let dflt = json!({"metadata": {"annotations": {"kubectl.kubernetes.io/default-container": "b"}},
                          "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(container(&dflt, "p", None).unwrap(), "b");
    }

    #[test]
    fn node_address() {
        let node = json!({"status": {"addresses": [
            {"type": "Hostname", "address": "n1"},
            {"type": "InternalIP", "address": "198.51.100.7"}]}});
        assert_eq!(internal_ip(&node), Some("198.51.100.7".parse().unwrap()));
        assert_eq!(internal_ip(&json!({})), None);
    }
}
