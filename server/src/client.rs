//! An in-process `kube::Client` whose transport is the API router itself, as a tower service: no
//! socket and no TLS, yet every request runs through exactly the handlers, authorization and store
//! that kubectl reaches over HTTPS, so the controllers and the scheduler also exercise the API.
//!
//! Invariant: the TLS listener is the only place that turns a client certificate into a
//! [`PeerIdentity`]; here that identity is asserted by the server itself, for its own components, by
//! inserting the extension on every request. Until RBAC exists those identities carry the
//! `system:masters` group (the only group authorization admits); once RBAC lands they keep their
//! upstream user names (`system:kube-controller-manager`, `system:kube-scheduler`) and drop it.

use axum::extract::Request;

use crate::api::{ApiState, app};
use crate::tls::PeerIdentity;

/// The user the control loops act as (upstream's kube-controller-manager user).
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// The user the scheduler acts as.
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
/// The group that authorizes everything until RBAC replaces it.
const INTERIM_GROUP: &str = "system:masters";

/// The identity of an in-process component with user name `user`.
pub fn identity(user: &str) -> PeerIdentity {
    PeerIdentity {
        common_name: user.to_string(),
        organizations: vec![INTERIM_GROUP.to_string()],
    }
}

/// A client that sends every request straight into `app(state)` as `identity`.
///
/// Must be called inside a tokio runtime (the client buffers requests on a spawned task).
pub fn in_process(state: ApiState, identity: PeerIdentity) -> kube::Client {
    let router = app(state);
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut request: Request<kube::client::Body>| {
            request.extensions_mut().insert(identity.clone());
            request
        })
        .service(router);
    kube::Client::new(service, "default")
}
