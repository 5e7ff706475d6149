//! The namespace control loop: empties a terminating namespace, then finalizes it.
//!
//! Watches Namespaces. For one with `deletionTimestamp` and the `kubernetes` entry in
//! `spec.finalizers`, it deletes every namespaced resource that discovery lists as deletable
//! (`deletecollection`, background cascade), checks with a list that nothing is left (objects with
//! finalizers may linger), and only then removes `kubernetes` through the `finalize` subresource,
//! after which the API removes the namespace.
//!
//! Invariant: a namespace is never finalized while a list still shows content in it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::ApiResource;
use kube::discovery::{Scope, verbs};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tokio::sync::OnceCell;

use super::ControllerError;
use super::gc;

/// The `spec.finalizers` entry this loop is responsible for.
pub const FINALIZER: &str = "kubernetes";

pub struct Context {
    pub client: kube::Client,
    /// Namespaced, deletable resources, discovered once.
    resources: OnceCell<Vec<ApiResource>>,
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let ours = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    if ns.metadata.deletion_timestamp.is_none() || !ours {
        return Ok(Action::await_change());
    }
    let resources = ctx
        .resources
        .get_or_init(|| async {
            gc::discover_until_ready(&ctx.client)
                .await
                .into_iter()
                .filter(|(_, caps)| {
                    caps.scope == Scope::Namespaced
                        && caps.supports_operation(verbs::DELETE_COLLECTION)
                })
                .map(|(ar, _)| ar)
                .collect()
        })
        .await;
    let mut remaining = 0;
    for ar in resources {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, ar);
        if let Err(source) = api
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await
        {
            return Err(ControllerError::Write {
                what: format!("{} in namespace {name}", ar.plural),
                source,
            });
        }
        let left = api
            .list_metadata(&ListParams::default())
            .await
            .map_err(|source| ControllerError::Read {
                what: format!("{} in namespace {name}", ar.plural),
                source,
            })?;
        remaining += left.items.len();
    }
    if remaining > 0 {
        tracing::debug!(
            namespace = name,
            remaining,
            "waiting for namespace content to go"
        );
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let mut finalized = (*ns).clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(
            spec.finalizers
                .iter()
                .flatten()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect(),
        );
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
        Err(source) => Err(ControllerError::Write {
            what: format!("finalize of namespace {name}"),
            source,
        }),
    }
}

fn error_policy(_ns: Arc<Namespace>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::info!(%error, "namespace reconcile failed");
    Action::requeue(error.backoff())
}

/// Runs the namespace control loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        resources: OnceCell::new(),
    });
    Controller::new(Api::<Namespace>::all(client), watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
