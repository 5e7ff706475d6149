//! The Kubernetes API server: HTTPS transport, authentication, authorization, discovery, OpenAPI and
//! generic handlers over the resource [`registry`], backed by the [`Store`].
//!
//! The request path reads straight through: `router` (routes and layers) → `handlers` (resolve the
//! URL → authorize → decode → default → validate → admit → store → encode). Only this module turns
//! errors into `Status` objects ([`error::ApiError`]). Admission on create, in order: namespace
//! lifecycle, LimitRange defaults and bounds ([`limitrange`]), priority, ServiceAccount and token
//! volume ([`serviceaccount`]), validation, Service addresses
//! ([`services`]), ResourceQuota ([`quota`], held until the object is stored).
//!
//! Entry points: [`app`] (the router alone, for in-process clients and tests) and [`serve`] /
//! [`serve_listener`] (the router behind the rustls listener, after creating the built-in objects:
//! namespaces, default RBAC roles, the `default/kubernetes` Service, and the custom resources of
//! stored CRDs).
//!
//! Not yet served: `fieldValidation` for custom resources (accepted, not enforced), CRD schemas/printer columns/scale, the streaming pod subresources (503 until the agent
//! connection exists), and the groups the registry does not list (batch, networking, storage,
//! policy, discovery, events.k8s.io...).

pub mod apply;
pub mod auth;
pub mod bootstrap;
pub mod codec;
pub mod crd;
pub mod crd_schema;
pub mod defaults;
pub mod discovery;
pub mod error;
mod handlers;
pub mod impersonate;
pub mod kubelet_proxy;
pub mod lifecycle;
pub mod limitrange;
pub mod metered_store;
pub mod metrics;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod podsub;
pub mod priority;
pub mod protobuf;
pub mod quantity;
pub mod quota;
pub mod rbac;
pub mod rbac_defaults;
pub mod rbac_node;
pub mod registry;
pub mod reviews;
mod router;
pub mod scale;
pub mod selector;
pub mod serviceaccount;
pub mod services;
pub mod smp;
pub mod storageclass;
pub mod strict;
pub mod subject_reviews;
pub mod table;
pub mod target;
pub mod tokens;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use error::ApiError;
pub use router::app;

use crate::store::Store;
pub use services::ServiceNetwork;
pub use tokens::TokenIssuer;

/// Shared state of every request.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    /// `host:port` clients should use, announced in `/api`'s `serverAddressByClientCIDRs`.
    pub advertise_address: String,
    /// Service address and node-port ranges, and the lock allocations happen under.
    pub services: Arc<ServiceNetwork>,
    /// Signs and checks ServiceAccount tokens; `None` disables bearer tokens and TokenRequests.
    pub tokens: Option<Arc<TokenIssuer>>,
    /// Request counters and latencies served at `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// Custom resources served from CRDs.
    pub custom: registry::Custom,
    /// How streaming pod subresources reach kubelets; `None` answers them 503.
    pub kubelet: Option<Arc<kubelet_proxy::KubeletClient>>,
}

impl ApiState {
    /// State with k3s's default service ranges (10.43.0.0/16, 30000-32767) and no token issuer.
    pub fn new(store: Arc<dyn Store>, advertise_address: impl Into<String>) -> ApiState {
        let metrics: Arc<metrics::Metrics> = Arc::default();
        ApiState {
            store: metered_store::MeteredStore::wrap(store, metrics.clone()),
            advertise_address: advertise_address.into(),
            services: Arc::new(ServiceNetwork::default()),
            tokens: None,
            metrics,
            custom: registry::Custom::default(),
            kubelet: None,
        }
    }
}

/// How to serve the API.
#[derive(Clone)]
pub struct ApiOptions {
    /// `--bind-address`:`--https-listen-port`.
    pub listen: SocketAddr,
    /// Built by [`crate::tls::server_config`] from [`crate::tls::ensure_certificates`].
    pub tls: Arc<rustls::ServerConfig>,
    /// `ip:port` of this server as pods reach it (the `default/kubernetes` Endpoints).
    pub advertise_address: String,
    /// `--service-cidr` and `--service-node-port-range`.
    pub services: Arc<ServiceNetwork>,
    /// From `TokenIssuer::from_pem(&certs.service_account_key_pem)`.
    pub tokens: Option<Arc<TokenIssuer>>,
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
    #[error("creating the built-in objects: {0}")]
    Bootstrap(#[source] ApiError),
}

/// Creates the built-in namespaces and the `default/kubernetes` Service, binds `opts.listen` and
/// serves HTTPS until `shutdown`.
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
    let metrics: Arc<metrics::Metrics> = Arc::default();
    let state = ApiState {
        store: metered_store::MeteredStore::wrap(store, metrics.clone()),
        advertise_address: opts.advertise_address,
        services: opts.services,
        tokens: opts.tokens,
        metrics,
        custom: registry::Custom::default(),
        kubelet: None,
    };
    prepare(&state).await?;
    serve_state(listener, state, opts.tls, shutdown).await
}

/// Creates the built-in objects (namespaces, default RBAC, the `default/kubernetes` Service) and
/// loads the custom resources. Run it before anything uses `state`: authorization of the
/// server's own components depends on the default RBAC objects.
pub async fn prepare(state: &ApiState) -> Result<(), ServeError> {
    bootstrap::ensure_namespaces(state.store.as_ref())
        .await
        .map_err(ServeError::Bootstrap)?;
    rbac_defaults::ensure(state.store.as_ref())
        .await
        .map_err(ServeError::Bootstrap)?;
    priority::ensure_built_in(state.store.as_ref())
        .await
        .map_err(ServeError::Bootstrap)?;
    let endpoint = match state.advertise_address.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(addr)) => Some((*addr.ip(), addr.port())),
        _ => None,
    };
    services::ensure_kubernetes_service(state.store.as_ref(), &state.services, endpoint)
        .await
        .map_err(ServeError::Bootstrap)?;
    crd::sync(state).await.map_err(ServeError::Bootstrap)?;
    Ok(())
}

/// Serves `state` (already [`prepare`]d) over HTTPS on `listener`. The server's in-process
/// clients (controllers, scheduler, agent) are built on clones of the same `state`, so they share
/// its custom resources, service allocator and metrics with what kubectl reaches over the network.
pub async fn serve_state(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    tracing::info!(addr = ?listener.local_addr().ok(), "serving the Kubernetes API over HTTPS");
    crate::tls::serve_tls(listener, tls, app(state), shutdown).await;
    Ok(())
}
