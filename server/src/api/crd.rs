//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`) and the custom resources they define,
//! served at once by the same generic handlers as the built-in kinds.
//!
//! After every write to a CRD (and at start) [`sync`] rebuilds the server's custom resources from
//! the stored CRDs: one registry entry per served version, with the `status` subresource when the
//! version declares it. Resources whose CRD is gone have their objects deleted (upstream does this
//! behind the `customresourcecleanup` finalizer). Registry entries are `'static`; each distinct
//! definition is leaked once and reused, so repeated syncs do not grow memory.
//!
//! Each served version's `openAPIV3Schema` is registered with [`super::crd_schema`] (pruning,
//! defaults, value checks on every write).
//!
//! `additionalPrinterColumns` become the resource's table columns (JSONPath cells, `date` shown as
//! an age); the `scale` subresource maps through the CRD's replica and selector paths. Not yet:
//! version conversion (all versions share storage).

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::error::ApiError;
use super::registry::{self, Resource, VERBS};
use super::{ApiState, object, table};
use crate::store::{ListOptions, StoreError};

pub const GROUP: &str = "apiextensions.k8s.io";

/// Every definition leaked so far, by its canonical description.
static LEAKED: Mutex<Option<HashMap<String, &'static Resource>>> = Mutex::new(None);

fn leak_str(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_list(list: &Value) -> &'static [&'static str] {
    let items: Vec<&'static str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(leak_str)
        .collect();
    Box::leak(items.into_boxed_slice())
}

/// The registry entry for one served version of a CRD (reused when already leaked).
fn resource(crd: &Value, version: &Value) -> Option<&'static Resource> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let (group, plural, kind) = (
        spec["group"].as_str()?,
        names["plural"].as_str()?,
        names["kind"].as_str()?,
    );
    let version_name = version["name"].as_str()?;
    let singular = names["singular"]
        .as_str()
        .map_or_else(|| kind.to_lowercase(), str::to_string);
    let namespaced = spec["scope"] != json!("Cluster");
    let status = version["subresources"]["status"].is_object();
    let scale = version["subresources"]["scale"].is_object();
    let printer = &version["additionalPrinterColumns"];
    let key = json!([
        group,
        version_name,
        kind,
        plural,
        singular,
        namespaced,
        status,
        scale,
        names["shortNames"],
        names["categories"],
        printer
    ])
    .to_string();
    let mut leaked = LEAKED.lock().unwrap_or_else(|e| e.into_inner());
    let cache = leaked.get_or_insert_with(HashMap::new);
    if let Some(found) = cache.get(&key) {
        return Some(found);
    }
    let made: &'static Resource = Box::leak(Box::new(Resource {
        group: leak_str(group),
        version: leak_str(version_name),
        kind: leak_str(kind),
        plural: leak_str(plural),
        singular: leak_str(&singular),
        namespaced,
        short_names: leak_list(&names["shortNames"]),
        categories: leak_list(&names["categories"]),
        subresources: match (status, scale) {
            (true, true) => registry::STATUS_SCALE,
            (true, false) => registry::STATUS,
            (false, true) => registry::SCALE,
            (false, false) => &[],
        },
        columns: printer_columns(printer),
        generation: true,
        verbs: VERBS,
        review: None,
        after_write: None,
    }));
    cache.insert(key, made);
    Some(made)
}

/// The table columns of `additionalPrinterColumns` (upstream: without any, just `Age`).
fn printer_columns(printer: &Value) -> &'static [table::Column] {
    let Some(list) = printer.as_array().filter(|l| !l.is_empty()) else {
        return table::AGE_ONLY;
    };
    let columns: Vec<table::Column> = list
        .iter()
        .filter_map(|c| {
            Some(table::Column {
                name: leak_str(c["name"].as_str()?),
                kind: leak_str(c["type"].as_str().unwrap_or("string")),
                priority: c["priority"]
                    .as_u64()
                    .and_then(|p| u8::try_from(p).ok())
                    .unwrap_or(0),
                description: leak_str(c["description"].as_str().unwrap_or("")),
                cell: table::Cell::Path(leak_str(c["jsonPath"].as_str()?)),
            })
        })
        .collect();
    Box::leak(columns.into_boxed_slice())
}

/// Registry hook of the CRD resource: re-syncs after every write.
pub fn after_write(state: &ApiState) -> BoxFuture<'_, Result<(), ApiError>> {
    Box::pin(sync(state))
}

/// Rebuilds `state.custom` from the stored CRDs and deletes the objects of removed resources.
pub async fn sync(state: &ApiState) -> Result<(), ApiError> {
    let crds = registry::find(GROUP, "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::Internal("CRDs are not registered".into()))?;
    let stored = state
        .store
        .list(&crds.key_prefix(), &ListOptions::default())
        .map_err(|e| ApiError::from_store(e, &crds.name(), ""))?;
    let mut served = Vec::new();
    let mut schemas = Vec::new();
    for kv in &stored.items {
        let crd = object::from_store(kv)?;
        for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
            if version["served"] == json!(false) {
                continue;
            }
            if let Some(res) = resource(&crd, version) {
                served.push(res);
                let scale = &version["subresources"]["scale"];
                super::scale::register(
                    res,
                    scale.is_object().then(|| super::scale::Paths {
                        spec_replicas: scale["specReplicasPath"]
                            .as_str()
                            .unwrap_or(".spec.replicas")
                            .into(),
                        status_replicas: scale["statusReplicasPath"]
                            .as_str()
                            .unwrap_or(".status.replicas")
                            .into(),
                        label_selector: scale["labelSelectorPath"].as_str().map(Into::into),
                    }),
                );
                let schema = &version["schema"]["openAPIV3Schema"];
                if schema.is_object() {
                    schemas.push((
                        res.group.to_string(),
                        res.version.to_string(),
                        res.plural.to_string(),
                        schema.clone(),
                    ));
                }
            }
        }
    }
    super::crd_schema::register(schemas);
    let before = state.custom.snapshot();
    state.custom.replace(served.clone());
    for gone in before {
        let still = served.iter().any(|r| r.key_prefix() == gone.key_prefix());
        if !still {
            super::crd_schema::unregister(gone);
            delete_all(state, gone).await?;
        }
    }
    Ok(())
}

async fn delete_all(state: &ApiState, res: &Resource) -> Result<(), ApiError> {
    let objects = state
        .store
        .list(&res.key_prefix(), &ListOptions::default())
        .map_err(|e| ApiError::from_store(e, &res.name(), ""))?;
    for kv in objects.items {
        match state.store.delete(&kv.key, None).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(ApiError::from_store(e, &res.name(), &kv.key)),
        }
    }
    Ok(())
}

/// The status a new CRD starts with: its names accepted and established.
pub fn initial_status(crd: &mut Value) {
    let now = object::now();
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .map(|v| v["name"].clone())
        .collect();
    crd["status"] = json!({
        "acceptedNames": crd["spec"]["names"].clone(),
        "storedVersions": storage,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    });
}
