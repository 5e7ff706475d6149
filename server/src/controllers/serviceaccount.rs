//! Per-namespace defaults: the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap
//! (key `ca.crt`, the cluster CA pods use to trust the API server) in every active namespace,
//! recreated if deleted and corrected if edited.
//!
//! Watches Namespaces, plus ServiceAccounts named `default` and ConfigMaps named
//! `kube-root-ca.crt`, each mapped to its namespace.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;

use super::{ControllerError, ControllerOptions};

pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

pub struct Context {
    pub client: kube::Client,
    pub root_ca_pem: Option<String>,
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_SERVICE_ACCOUNT.into()),
            namespace: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    let exists = sas
        .get_opt(DEFAULT_SERVICE_ACCOUNT)
        .await
        .map_err(|source| ControllerError::Read {
            what: format!("serviceaccount {name}/default"),
            source,
        })?
        .is_some();
    if !exists {
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            // Created meanwhile, or the namespace started terminating: both are fine.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => {}
            Err(source) => {
                return Err(ControllerError::Write {
                    what: format!("serviceaccount {name}/default"),
                    source,
                });
            }
        }
    }
    let Some(pem) = ctx.root_ca_pem.as_ref() else {
        return Ok(Action::await_change());
    };
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let current = cms
        .get_opt(ROOT_CA_CONFIGMAP)
        .await
        .map_err(|source| ControllerError::Read {
            what: format!("configmap {name}/{ROOT_CA_CONFIGMAP}"),
            source,
        })?;
    let data = BTreeMap::from([("ca.crt".to_string(), pem.clone())]);
    let result = match current {
        Some(cm) if cm.data.as_ref() == Some(&data) => Ok(()),
        Some(_) => cms
            .patch(
                ROOT_CA_CONFIGMAP,
                &PatchParams::default(),
                &Patch::Merge(&json!({"data": {"ca.crt": pem}})),
            )
            .await
            .map(|_| ()),
        None => cms
            .create(
                &PostParams::default(),
                &ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(ROOT_CA_CONFIGMAP.into()),
                        namespace: Some(name.clone()),
                        ..ObjectMeta::default()
                    },
                    data: Some(data),
                    ..ConfigMap::default()
                },
            )
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Ok(Action::await_change()),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => Ok(Action::await_change()),
        Err(source) => Err(ControllerError::Write {
            what: format!("configmap {name}/{ROOT_CA_CONFIGMAP}"),
            source,
        }),
    }
}

fn error_policy(_ns: Arc<Namespace>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::info!(%error, "serviceaccount reconcile failed");
    Action::requeue(error.backoff())
}

fn namespace_of(meta: &ObjectMeta) -> Option<ObjectRef<Namespace>> {
    meta.namespace.as_deref().map(ObjectRef::new)
}

/// Runs the per-namespace defaults loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    opts: ControllerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        root_ca_pem: opts.root_ca_pem,
    });
    let named = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<ServiceAccount>::all(client.clone()),
        named(DEFAULT_SERVICE_ACCOUNT),
        |sa| namespace_of(&sa.metadata),
    )
    .watches(
        Api::<ConfigMap>::all(client),
        named(ROOT_CA_CONFIGMAP),
        |cm| namespace_of(&cm.metadata),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}
