//! The kubelet API listener: HTTPS on `<node IP>:<port>` with a client certificate required
//! (verified against the cluster's client CA), HTTP/1.1 with upgrades (WebSocket and SPDY need
//! them), and the routes kubelet serves for the API server's streaming subresources.
//!
//! Invariant: a request reaches a handler only if its connection's client certificate names
//! [`super::APISERVER_USER`]; any other identity from the same CA (a node's, the admin's) gets 403.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::sync::watch;
use tower::ServiceExt;
use tracing::{info, warn};
use x509_parser::prelude::FromDer;

use super::{APISERVER_USER, KubeletOptions, exec, logs, portforward};
use crate::join::renew::{AbortOnDrop, CertSlot, keep_renewed};
use crate::pods::Ctx;

/// The verified common name of the caller's certificate.
#[derive(Clone, Debug)]
struct Caller(Option<String>);

/// Errors setting the listener up (logged: the node runs on without the kubelet API).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("kubelet serving certificate: {0}")]
    Certificate(String),
    #[error("kubelet TLS configuration: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The kubelet API as a router (state: the pod workers' shared context).
pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(logs::handle),
        )
        .route("/exec/{namespace}/{pod}/{container}", any(exec::exec))
        .route("/attach/{namespace}/{pod}/{container}", any(exec::attach))
        .route("/portForward/{namespace}/{pod}", any(portforward::handle))
        .route("/healthz", get(|| async { "ok" }))
        .layer(middleware::from_fn(only_apiserver))
        .with_state(ctx)
}

async fn only_apiserver(request: Request, next: Next) -> Response {
    let caller = request
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.0.clone());
    if caller.as_deref() != Some(APISERVER_USER) {
        let who = caller.unwrap_or_else(|| "anonymous".into());
        return (
            StatusCode::FORBIDDEN,
            format!("Forbidden (user={who}): only the API server may use the kubelet API\n"),
        )
            .into_response();
    }
    next.run(request).await
}

/// Builds the TLS configuration: our serving certificate (from `cert`, which renewal swaps),
/// client certificates required.
pub fn tls_config(
    cert: Arc<CertSlot>,
    client_ca_pem: &str,
) -> Result<Arc<ServerConfig>, ServeError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = |e: &dyn std::fmt::Display| ServeError::Tls(e.to_string());
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(ca.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(&e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    // Upgrades (WebSocket, SPDY) are HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the kubelet API on `ip:opts.port` until `stop` turns true.
pub async fn serve(
    ctx: Arc<Ctx>,
    opts: KubeletOptions,
    ip: IpAddr,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let (cert, key) = (opts.serving.0)(ctx.node_name.clone(), vec![ip])
        .await
        .map_err(ServeError::Certificate)?;
    let slot = CertSlot::new("serving", &cert, &key).map_err(|e| ServeError::Tls(e.to_string()))?;
    let slot = Arc::new(slot);
    let config = tls_config(slot.clone(), &opts.client_ca_pem)?;
    // Renewed while serving (crate::join::renew): new connections get the new certificate.
    let (serving, node) = (opts.serving.clone(), ctx.node_name.clone());
    let _renewal = AbortOnDrop(tokio::spawn(keep_renewed(
        slot,
        move || (serving.0)(node.clone(), vec![ip]),
        |_, _| {},
    )));
    let addr = SocketAddr::new(ip, opts.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    info!(%addr, "kubelet API listening");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let app = router(ctx);
    loop {
        let (tcp, peer) = tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(%error, "kubelet API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(%peer, %error, "kubelet API: TLS handshake failed");
                    return;
                }
            };
            let caller = Caller(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(common_name),
            );
            let service = app.map_request(move |req: http::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(caller.clone());
                req
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
                .with_upgrades();
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "kubelet API connection ended with an error");
            }
        });
    }
}

fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
