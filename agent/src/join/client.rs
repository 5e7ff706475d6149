//! The node's `kube::Client`, built so its client certificate can be renewed while it runs.
//!
//! kube's own builder bakes the kubeconfig's client certificate into its TLS configuration for
//! the client's whole life. This one reads the kubeconfig the join wrote for the server's address
//! and CA, and takes the client certificate from a [`CertSlot`] at every TLS handshake instead, so
//! [`super::renew::keep_renewed`] can swap it. The rest of the stack is kube's: base URI, the
//! kubeconfig's other authentication (none for a joined node) and extra headers, over hyper's
//! HTTP/1.1 connection pool with kube's timeouts (connect 30 s, a request's write 295 s, read
//! unlimited: watches last minutes and kube's watcher has its own idle timeout) and TCP
//! keepalive, so a server that vanished without a FIN (a Pi on Wi-Fi) is noticed on an idle
//! pooled connection. Invariants: the server is always verified
//! against the kubeconfig's CA only, never the system roots; TLS sessions are never resumed, so
//! every new connection presents the certificate in use.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tower::{BoxError, ServiceBuilder};

use super::renew::CertSlot;

/// How long to wait for the TCP connection to the server (kube's default).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle time before TCP keepalive probes start on a connection to the server.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Why the client could not be built (the message names the kubeconfig).
#[derive(Debug, thiserror::Error)]
#[error("the kubeconfig {path}: {reason}")]
pub struct ClientError {
    pub path: String,
    pub reason: String,
}

/// A client for the server in the kubeconfig at `path`, presenting the certificate in `slot`.
pub async fn renewable_client(
    path: &std::path::Path,
    slot: Arc<CertSlot>,
) -> Result<kube::Client, ClientError> {
    let err = |reason: String| ClientError {
        path: path.display().to_string(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    // The agent is this node's kubelet: its writes are managed by `kubelet`, as on k3s.
    if let Ok(agent) = http::HeaderValue::from_str(&r3s_config::user_agent::user_agent("kubelet")) {
        config.headers.push((http::header::USER_AGENT, agent));
    }
    let mut roots = RootCertStore::empty();
    for der in config.root_cert.iter().flatten() {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| err(format!("the cluster CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate-authority-data".into()));
    }
    let mut tls = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err(e.to_string()))?
    .with_root_certificates(roots)
    .with_client_cert_resolver(slot);
    // A resumed TLS session carries the identity of the handshake that made it, so with
    // resumption the server would go on seeing the old certificate after a renewal (and after it
    // expired). The pool keeps connections open, so full handshakes are rare.
    tls.resumption = rustls::client::Resumption::disabled();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_keepalive(Some(KEEPALIVE));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let mut https = hyper_timeout::TimeoutConnector::new(https);
    https.set_connect_timeout(Some(config.connect_timeout.unwrap_or(CONNECT_TIMEOUT)));
    https.set_read_timeout(config.read_timeout);
    https.set_write_timeout(config.write_timeout);
    https.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, kube::client::Body>(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(|e| err(e.to_string()))?)
        .layer(
            config
                .extra_headers_layer()
                .map_err(|e| err(e.to_string()))?,
        )
        .map_err(BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}
