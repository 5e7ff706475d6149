//! The Kubernetes API server: HTTPS transport, authentication, authorization, discovery, OpenAPI and
//! generic handlers over the resource [`registry`], backed by the [`Store`].
//!
//! The request path reads straight through: `router` (routes and layers) → `handlers` (resolve the
//! URL → authorize → decode → default → validate → admit → store → encode). Only this module turns
//! errors into `Status` objects ([`error::ApiError`]).
//!
//! Entry points: [`app`] (the router alone, for in-process clients and tests) and [`serve`] (the
//! router behind the rustls listener).

pub mod auth;
pub mod bootstrap;
pub mod codec;
pub mod discovery;
pub mod error;
mod handlers;
pub mod lifecycle;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod registry;
mod router;
pub mod scale;
pub mod selector;
pub mod smp;
pub mod table;
pub mod target;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use error::ApiError;
pub use router::app;

use crate::store::Store;

/// Shared state of every request.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    /// `host:port` clients should use, announced in `/api`'s `serverAddressByClientCIDRs`.
    pub advertise_address: String,
}

/// How to serve the API.
#[derive(Clone)]
pub struct ApiOptions {
    /// `--bind-address`:`--https-listen-port`.
    pub listen: SocketAddr,
    /// Built by [`crate::tls::server_config`] from [`crate::tls::ensure_certificates`].
    pub tls: Arc<rustls::ServerConfig>,
    pub advertise_address: String,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the built-in namespaces: {0}")]
    Bootstrap(#[source] ApiError),
}

/// Creates the built-in namespaces, binds `opts.listen` and serves HTTPS until `shutdown`.
pub async fn serve(
    store: Arc<dyn Store>,
    opts: ApiOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.listen,
            source,
        })?;
    serve_listener(listener, store, opts, shutdown).await
}

/// Like [`serve`] on an already bound listener (tests bind port 0 and read the address back).
pub async fn serve_listener(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    opts: ApiOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    bootstrap::ensure_namespaces(store.as_ref())
        .await
        .map_err(ServeError::Bootstrap)?;
    let state = ApiState {
        store,
        advertise_address: opts.advertise_address,
    };
    tracing::info!(addr = ?listener.local_addr().ok(), "serving the Kubernetes API over HTTPS");
    crate::tls::serve_tls(listener, opts.tls, app(state), shutdown).await;
    Ok(())
}
