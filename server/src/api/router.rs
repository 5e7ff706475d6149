//! Every route and every layer of the API on one screen.
//!
//! Public (no credentials needed): `/version`, `/healthz`, `/livez`, `/readyz`. Everything else goes
//! through [`authenticate`] first (client certificate, else bearer token, then `Impersonate-*`
//! headers), so an anonymous request gets 401 before routing decides anything.
//! Each request runs in a `tracing` span (method, path); resource requests open a nested span with
//! verb, resource, namespace, name and user.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tracing::Instrument;

use super::auth;
use super::error::ApiError;
use super::{ApiState, discovery, handlers, impersonate, openapi};
use crate::tls::PeerIdentity;

/// The API as a router, without a socket: tests drive it with `oneshot`.
pub fn app(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/api", get(discovery::core_versions))
        .route("/api/", get(discovery::core_versions))
        .route("/apis", get(discovery::group_list))
        .route("/apis/", get(discovery::group_list))
        .route("/api/{*rest}", any(handlers::core))
        .route("/apis/{*rest}", any(handlers::named))
        .route("/openapi/v3", get(openapi::index))
        .route("/openapi/v3/api/v1", get(openapi::core))
        .route("/openapi/v3/apis/{group}/{version}", get(openapi::named))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/version", get(discovery::version))
        .route("/healthz", get(discovery::health))
        .route("/livez", get(discovery::health))
        .route("/readyz", get(discovery::health))
        .merge(protected)
        .layer(middleware::from_fn(trace))
        .with_state(state)
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NoRoute
}

async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = match request.extensions().get::<PeerIdentity>() {
        Some(identity) => auth::authenticate(Some(identity))?,
        None => auth::bearer(&state, request.headers())?,
    };
    let uri = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_string(), |p| p.to_string());
    let user = impersonate::apply(state.store.as_ref(), caller, request.headers(), &uri)?;
    impersonate::strip(request.headers_mut());
    request.extensions_mut().insert(user);
    Ok(next.run(request).await)
}

async fn trace(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = request.uri().path(),
    );
    async move {
        let response = next.run(request).await;
        tracing::debug!(code = response.status().as_u16(), "answered");
        response
    }
    .instrument(span)
    .await
}
