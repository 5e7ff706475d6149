//! An in-process `kube::Client` whose transport is the API router itself, as a tower service: no
//! socket and no TLS, yet every request runs through exactly the handlers, authorization and store
//! that kubectl reaches over HTTPS, so the controllers and the scheduler also exercise the API.
//!
//! Invariant: the TLS listener is the only place that turns a client certificate into a
//! [`PeerIdentity`]; here that identity is asserted by the server itself, for its own components, by
//! inserting the extension on every request. The in-process node agent is an ordinary node
//! ([`node_identity`]: `system:node:<name>` in `system:nodes`, authorized by the node authorizer
//! like any joined agent). The controllers and the scheduler keep their upstream user names
//! (`system:kube-controller-manager`, `system:kube-scheduler`) but still carry the interim
//! `system:masters` group, because the default RBAC has no roles for them yet.

use axum::extract::Request;

use crate::api::{ApiState, app};
use crate::tls::PeerIdentity;

/// The user the control loops act as (upstream's kube-controller-manager user).
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// The user the scheduler acts as.
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
/// The group that authorizes the control loops until RBAC has roles for them.
const INTERIM_GROUP: &str = "system:masters";

/// The identity of an in-process component with user name `user`.
pub fn identity(user: &str) -> PeerIdentity {
    PeerIdentity {
        common_name: user.to_string(),
        organizations: vec![INTERIM_GROUP.to_string()],
    }
}

/// The identity of a node agent named `node`, as its client certificate would carry it.
pub fn node_identity(node: &str) -> PeerIdentity {
    PeerIdentity {
        common_name: format!("system:node:{node}"),
        organizations: vec!["system:nodes".to_string()],
    }
}

/// The upstream component a user name belongs to, for its User-Agent (and so the field manager
/// of its writes).
fn product_of(user: &str) -> &'static str {
    match user {
        CONTROLLER_MANAGER_USER => "kube-controller-manager",
        SCHEDULER_USER => "kube-scheduler",
        u if u.starts_with("system:node:") => "kubelet",
        _ => "r3s-server",
    }
}

/// A client that sends every request straight into `app(state)` as `identity`.
///
/// Must be called inside a tokio runtime (the client buffers requests on a spawned task).
pub fn in_process(state: ApiState, identity: PeerIdentity) -> kube::Client {
    let router = app(state);
    let agent = axum::http::HeaderValue::from_str(&r3s_config::user_agent::user_agent(product_of(
        &identity.common_name,
    )))
    .ok();
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut request: Request<kube::client::Body>| {
            request.extensions_mut().insert(identity.clone());
            if let Some(agent) = &agent {
                request
                    .headers_mut()
                    .entry(axum::http::header::USER_AGENT)
                    .or_insert_with(|| agent.clone());
            }
            request
        })
        .service(router);
    kube::Client::new(service, "default")
}
